"""The cluster pages of the dashboard (topics, groups, messages, dead letters) in headless Chromium after a known `dlq replay`,
the replay's exactly-once promise across processes, and the token that guards every route off loopback."""

import http.client, json, os, signal, subprocess
from base64 import b64decode
import pytest
from kafka import KafkaConsumer, TopicPartition
from playwright.sync_api import sync_playwright
from sales_prediction_kafka.clients import producer
from sales_prediction_kafka.clients import ensure_topic
from helpers import (
    SALES_KAFKA,
    launch_chromium,
    page_with_errors,
    read_all,
    start_dashboard,
    topics,
)

pytestmark = [pytest.mark.timeout(300), pytest.mark.kafka]
REASONS = [
    "missing_field",
    "unknown_category",
    "missing_field",
    "invalid_json",
    "missing_field",
    "unknown_category",
]
TOKEN = "s3cret-token-for-the-test-0123456789"


def end_offsets(settings, topic: str) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    try:
        return {
            tp.partition: o
            for tp, o in c.end_offsets([TopicPartition(topic, p) for p in (0, 1)]).items()
        }
    finally:
        c.close()


def dlq(*args, settings) -> str:
    "Run `sales-kafka dlq ...` against the test broker; its standard output."
    r = subprocess.run(
        [SALES_KAFKA, "dlq", *args, "--bootstrap-servers", settings.bootstrap_servers],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def replay_missing_fields(t: dict, settings) -> str:
    "`sales-kafka dlq replay` of the dead letters of `t` for a missing field back to its events topic; what it prints."
    return dlq(
        *("replay", "--topic", t["dlq"], "--to-topic", t["events"], "--reason", "missing_field"),
        settings=settings,
    )


@pytest.fixture(scope="module")
def replayed(broker_settings):
    "Six events and six dead letters (three reasons, one value not UTF-8), a group that read the events, then a replay of one reason."
    t = topics("browse")
    for topic in (t["events"], t["dlq"]):
        ensure_topic(broker_settings, topic, partitions=2)
    p = producer(broker_settings, key_serializer=None, value_serializer=None)
    for i in range(6):
        p.send(
            t["events"],
            key=f"e{i}".encode(),
            value=json.dumps({"event_id": i}).encode(),
            partition=i % 2,
        )
    for i, why in enumerate(REASONS):
        value = (
            b"\xff\xfe not json"
            if why == "invalid_json"
            else json.dumps({"event_id": 100 + i, "Sales": 1.5}).encode()
        )
        p.send(
            t["dlq"],
            key=f"d{i}".encode(),
            value=value,
            partition=i % 2,
            headers=[
                ("trace", f"t{i}".encode()),
                ("dlq.reason", why.encode()),
                ("dlq.detail", f"detail {i}".encode()),
            ],
        )
    p.flush()
    p.close()
    c = KafkaConsumer(
        t["events"],
        bootstrap_servers=broker_settings.bootstrap_servers,
        group_id=t["group"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        client_id="browse-test-reader",
    )
    got = []
    while len(got) < 4:
        got += [m for ms in c.poll(timeout_ms=500, max_records=4 - len(got)).values() for m in ms]
    c.commit()
    c.close()
    before = end_offsets(broker_settings, t["events"])
    out = replay_missing_fields(t, broker_settings)
    assert out.strip() == f"replayed 3 dead letters to {t['events']}: missing_field 3", out
    return t, before, {m.partition: m.offset + 1 for m in got}


def test_second_replay_sends_nothing(replayed, broker_settings):
    t, before, _ = replayed
    after = end_offsets(broker_settings, t["events"])
    back = [
        m for m in read_all(broker_settings, t["events"]) if dict(m.headers).get("replayed_from")
    ]
    assert sorted(m.key for m in back) == [b"d0", b"d2", b"d4"]
    for m in back:  # original key, value and headers; the dlq.* headers are gone
        assert m.value == json.dumps({"event_id": 100 + int(m.key[1:]), "Sales": 1.5}).encode()
        assert [k for k, _ in m.headers] == ["trace", "replayed_from"]
    # one transaction: its 3 records, and a commit marker in each partition it wrote
    touched = {m.partition for m in back}
    assert after == {
        p: before[p] + sum(m.partition == p for m in back) + (p in touched) for p in (0, 1)
    }
    assert (
        replay_missing_fields(t, broker_settings).strip()
        == f"replayed 0 dead letters to {t['events']} (none left to replay)"
    )
    assert end_offsets(broker_settings, t["events"]) == after
    listed = dlq("list", "--topic", t["dlq"], settings=broker_settings).splitlines()
    assert listed[0] == "missing_field: 3" and sum("(replayed)" in l for l in listed) == 3, listed


def start_browse_dashboard(settings, t, *extra, env=None):
    "`sales-kafka -v dashboard` on the dead letters and models of `t`; the process and the URL it prints."
    return start_dashboard(
        settings.bootstrap_servers,
        *("--topic", t["predictions"], "--dead-letter-topic", t["dlq"], "--baseline", "10"),
        *("--models-topic", f"models-{t['group']}", "--alerts-topic", f"alerts-{t['group']}"),
        *extra,
        flags=("-v",),
        env=env,
    )


def stop(proc) -> str:
    "Ctrl-C the dashboard; everything it printed."
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out + err


@pytest.mark.browser
def test_pages_in_chromium(chromium, replayed, broker_settings, tmp_path):
    t, before, committed = replayed
    end = end_offsets(broker_settings, t["events"])
    proc, url = start_browse_dashboard(broker_settings, t)
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw, chromium)
            page, errors = page_with_errors(
                browser, "console", "pageerror", viewport={"width": 1280, "height": 1200}
            )

            def load(path):
                page.goto(url + path)
                page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                assert page.locator("body[data-error]").count() == 0, page.locator(
                    "#error"
                ).inner_text()
                page.screenshot(
                    path=tmp_path / f"{path.split('?')[0] or 'live'}.png", full_page=True
                )

            cell = lambda row, col: page.locator(f"{row} td.{col}").inner_text()

            load("topics")
            for p in (0, 1):
                row = f"tr[data-topic='{t['events']}'][data-partition='{p}']"
                assert (
                    cell(row, "first-offset"),
                    cell(row, "last-offset"),
                    cell(row, "messages"),
                ) == ("0", str(end[p] - 1), str(end[p]))
            assert page.locator(f"tr[data-topic='{t['dlq']}']").count() == 2

            load("groups")
            group = page.locator("section.group", has_text=t["group"])
            for p in (0, 1):
                row = group.locator(f"tr[data-topic='{t['events']}'][data-partition='{p}']")
                assert row.locator("td").all_inner_texts()[2:] == [
                    str(committed[p]),
                    str(end[p]),
                    str(end[p] - committed[p]),
                ]

            load(f"messages?topic={t['events']}&limit=3")
            back = sorted(
                m
                for m in read_all(broker_settings, t["events"])
                if dict(m.headers).get("replayed_from")
            )
            rows = page.locator("tbody tr")
            shown = sorted(
                (int(r.get_attribute("data-partition")), int(r.get_attribute("data-offset")))
                for r in rows.all()
            )
            # the three newest are the replayed ones
            assert shown == sorted((m.partition, m.offset) for m in back)
            assert (
                "replayed_from: " + t["dlq"] + "/" in rows.first.locator("td.headers").inner_text()
            )
            # pretty-printed JSON
            assert '"event_id": 10' in rows.first.locator("td.value pre").first.inner_text()
            page.fill("input[name=partition]", "0")
            page.fill("input[name=before]", "2")
            page.click("button[type=submit]")
            page.wait_for_url("**partition=0**")
            page.wait_for_selector("body[data-ready='1']")
            assert [r.get_attribute("data-offset") for r in page.locator("tbody tr").all()] == [
                "1",
                "0",
            ]

            load(f"dead-letters?topic={t['dlq']}")
            reasons = page.locator("section.reason")
            assert [r.locator("h2").inner_text() for r in reasons.all()] == [
                "missing_field 3",
                "unknown_category 2",
                "invalid_json 1",
            ]
            assert (
                reasons.nth(0).locator(".replayed").count() == 3
                and reasons.nth(1).locator(".replayed").count() == 0
            )
            assert (
                b64decode(reasons.nth(2).locator("code.raw").text_content()) == b"\xff\xfe not json"
            )

            load("")
            page.wait_for_selector("#status.live", timeout=15_000)
            assert errors == [], errors
            browser.close()
    finally:
        stop(proc)


def get(url: str, path: str, **headers) -> http.client.HTTPResponse:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request("GET", path, headers=headers)
    return c.getresponse()


ROUTES = [
    "/",
    "/state",
    "/events",
    "/static/plotly.min.js",
    "/topics",
    "/messages",
    "/api/topics",
    "/api/groups",
    "/api/dead-letters",
    "/api/messages?topic=x",
]


def test_token_guards_every_route(replayed, broker_settings):
    t, _, _ = replayed
    proc, url = start_browse_dashboard(
        broker_settings, t, "--host", "127.0.0.2", env={"SALES_KAFKA_DASHBOARD_TOKEN": TOKEN}
    )
    try:
        assert url.startswith("http://127.0.0.2:") and TOKEN not in url
        for path in ROUTES:
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token-of-some-length"},
                {"Cookie": "sales_kafka_token=nope"},
            ):
                r = get(url, path, **headers)
                assert (r.status, r.read()) == (401, b""), (path, headers)
        r = get(url, f"/dead-letters?topic={t['dlq']}&token={TOKEN}")
        assert r.status == 302 and r.getheader("Location") == f"/dead-letters?topic={t['dlq']}"
        cookie = r.getheader("Set-Cookie").split(";")[0]
        assert "HttpOnly" in r.getheader("Set-Cookie")
        r = get(url, f"/api/dead-letters?topic={t['dlq']}", Cookie=cookie)
        assert r.status == 200 and json.loads(r.read())["reasons"][0]["reason"] == "missing_field"
        r = get(url, "/api/topics", Authorization=f"Bearer {TOKEN}")
        assert r.status == 200 and t["events"] in {x["topic"] for x in json.loads(r.read())}
    finally:
        printed = stop(proc)
    # the access log is on (-v) ...
    assert "GET /api/topics 200" in printed and "GET /events 401" in printed
    assert TOKEN not in printed  # ... and never shows the token


def test_refuses_other_address_without_token(broker_settings):
    r = subprocess.run(
        [
            SALES_KAFKA,
            "dashboard",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--bootstrap-servers",
            broker_settings.bootstrap_servers,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "SALES_KAFKA_DASHBOARD_TOKEN"},
    )
    assert (
        r.returncode == 2
        and "set SALES_KAFKA_DASHBOARD_TOKEN" in r.stderr
        and "dashboard at" not in r.stdout
    ), r

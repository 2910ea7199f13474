"The dashboard in real headless Chromium: it loads offline, updates live without a reload, and shows the right offsets."

import json, signal, socket, subprocess, time, urllib.request, uuid
import numpy as np
import pytest
from playwright.sync_api import sync_playwright
from sales_prediction_kafka.message import prediction_records
from sales_prediction_kafka.stream import stream_predictions
from helpers import launch_chromium, page_with_errors, start_dashboard

pytestmark = [pytest.mark.timeout(300), pytest.mark.kafka]


def predictions(lo: int, hi: int, shift: float = 0.0) -> list[dict]:
    "Predictions lo..hi-1 with errors ~ N(0, 12), plus `shift`."
    rng = np.random.default_rng(lo)
    predicted = rng.normal(1000, 200, hi - lo)
    return prediction_records(
        range(lo, hi), (predicted + rng.normal(0, 12, hi - lo) + shift).round(2), predicted.round(2)
    )


@pytest.fixture
def dashboard(broker_settings):
    "A `dashboard` command in its own process on a free loopback port, watching a new topic; stopped with Ctrl-C after the test."
    topic = f"dash_{uuid.uuid4().hex[:8]}"
    stream_predictions(
        predictions(0, 100), broker_settings, topic=topic, partitions=1, progress=False
    )
    proc, url = start_dashboard(
        broker_settings.bootstrap_servers,
        *("--topic", topic, "--from-beginning", "--window", "30", "--baseline", "10"),
        *("--rows", "10", "--alerts-topic", f"{topic}_alerts"),
        flags=("-q",),  # warnings only: nobody reads the pipe until the end
    )
    yield url, topic
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


def state(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "state", timeout=10).read())


def offsets(page) -> list[int]:
    "The offsets in the messages table, top to bottom."
    return [int(t) for t in page.locator("#records tbody td.offset").all_inner_texts()]


@pytest.mark.browser
def test_dashboard_live_in_chromium(chromium, dashboard, broker_settings, tmp_path):
    url, topic = dashboard
    deadline = time.monotonic() + 60
    while (st := state(url))["snapshot"] is None or st["snapshot"]["seen"] < 100:
        assert time.monotonic() < deadline, st
        time.sleep(0.2)
    with sync_playwright() as pw:
        browser = launch_chromium(pw, chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_function(
                "document.querySelectorAll('#records tbody tr').length === 10", timeout=30_000
            )
            assert offsets(page) == list(range(99, 89, -1))
            assert page.locator("#status").inner_text() == "live"
            assert page.evaluate("document.getElementById('pva').data[0].x.length") == 100
            page.evaluate("window.loadedOnce = true")  # lost on a reload

            stream_predictions(
                predictions(100, 160, shift=60.0),
                broker_settings,
                topic=topic,
                partitions=1,
                progress=False,
            )
            page.wait_for_function(
                "document.querySelector('#records tbody td.offset').textContent === '159'",
                timeout=30_000,
            )
            assert page.evaluate("window.loadedOnce") is True
            assert offsets(page) == list(range(159, 149, -1))
            page.wait_for_function(
                "document.getElementById('pva').data[0].x.length === 160", timeout=10_000
            )
            assert page.locator("#partitions tbody td.offset").all_inner_texts() == ["159"]
            assert page.locator("#partitions tbody td.lag").all_inner_texts() == ["0"]
            assert page.locator("#seen").inner_text() == "160"
            page.wait_for_selector("#alerts li", timeout=10_000)
            assert (
                page.locator("#alerts li").count() == 1
                and "mae" in page.locator("#alerts li").inner_text()
            )
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.evaluate("""addAlerts([{alert: "input_drift", reasons: ["Marketing_Spend"], features: {Marketing_Spend: 0.29}, limit: 0.25,
                                         partition: 0, offset: 160, raised_at: "t1"},
                                        {alert: "model_decision", reasons: ["promoted"], challenger: "f7084434d3f8aa", challenger_mae: 8120,
                                         champion_mae: 12893, raised_at: "t2"}])""")  # an input-drift alert has no 'last'
            assert errors == [] and page.locator("#alerts li").count() == 3, errors
            assert page.locator("#alerts li").all_inner_texts()[:2] == [
                "t2: model promoted f7084434d3f8 (MAE 8120.00 vs champion 12893.00)",
                "t1: input drift in Marketing_Spend at partition 0 offset 160 (PSI Marketing_Spend 0.29 > 0.25)",
            ]
            # joined records, as the monitor reports them
            page.evaluate(
                "showFigures(%s)"
                % json.dumps(
                    state(url)["snapshot"]
                    | {
                        "label_delay_ms": {"p50": 172_800_000, "p95": 12_600_000, "n": 30},
                        "newest_record_at": 1_764_806_400.0,
                        "waiting": {"predictions": 1234, "actuals": 5},
                    }
                )
            )
            figures = page.locator("#figures tbody").inner_text()
            assert "label delay p50\t2.0 d" in figures and "label delay p95\t3.5 h" in figures, (
                figures
            )
            assert "label delay p95\t3.5 h\t-\nwaiting for actual\t1234\t-" in figures, figures
            assert (
                page.locator("#newest").inner_text() == "error measured up to 2025-12-04T00:00:00Z"
            )
            assert errors == [], errors
            keys = page.locator("#records tbody td.key").all_inner_texts()
            assert keys == [str(i) for i in range(159, 149, -1)]  # the key is the prediction_index
            page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
            assert requests and all(r.startswith(url) for r in requests), [
                r for r in requests if not r.startswith(url)
            ]
        finally:
            browser.close()


def other_addresses() -> list[str]:
    "Addresses of this machine other than 127.0.0.1: always 127.0.0.2 (also loopback, so even a loopback-only host has one), then every non-loopback IPv4."
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return ["127.0.0.2"] + [
        l.split()[3].split("/")[0] for l in out.splitlines() if not l.split()[3].startswith("127.")
    ]


def test_dashboard_binds_to_loopback_by_default(dashboard):
    "Bound to 127.0.0.1 itself, not to every address: a socket bound to 0.0.0.0 would answer on 127.0.0.2 too."
    url, _ = dashboard
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # it does answer where it says
    for addr in other_addresses():
        with pytest.raises(OSError):
            socket.create_connection((addr, port), timeout=2).close()


def version_record(version: str, mae: float) -> dict:
    "A registry version record with test figures (no model bytes: the page shows only the figures)."
    return {
        "type": "version",
        "version": version,
        "run": f"run-{version}",
        "kind": "linear",
        "name": "linear",
        "features": [],
        "created_at": "2026-11-20T10:00:00.000+00:00",
        "figures": {"n": 80, "mae": mae, "rmse": mae * 1.3, "r2": 0.9, "bias": 0.5},
        "profile": {},
        "bytes": 0,
        "sha256": "",
        "model": "",
    }


@pytest.mark.browser
def test_model_swaps_and_versions_in_chromium(chromium, broker_settings):
    "Predictions scored by v1, then v2 (a swap), then v1 again (a rollback): the charts mark both swaps where they happened."
    from sales_prediction_kafka.registry import promote, publish

    topic, models = f"swap_{uuid.uuid4().hex[:8]}", f"models_{uuid.uuid4().hex[:8]}"
    for version, mae in (("v1-aaaa", 12.5), ("v2-bbbb", 9.25)):
        publish(broker_settings, version_record(version, mae), models)
    promote(broker_settings, "v2", topic=models)
    send = lambda lo, hi, v: stream_predictions(
        predictions(lo, hi),
        broker_settings,
        topic=topic,
        model_version=v,
        partitions=1,
        progress=False,
    )
    send(0, 60, "v1-aaaa")
    send(60, 120, "v2-bbbb")
    proc, url = start_dashboard(
        broker_settings.bootstrap_servers,
        *("--topic", topic, "--from-beginning", "--baseline", "10", "--models-topic", models),
        *("--alerts-topic", f"{topic}_alerts"),
        flags=("-q",),
    )
    marks = "document.getElementById('pva').layout.shapes.map(s => s.x0)"
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw, chromium)
            page, errors = page_with_errors(
                browser, "console", viewport={"width": 1280, "height": 1800}
            )
            page.goto(url)
            page.wait_for_function(
                "document.querySelectorAll('#models tbody tr').length === 2", timeout=30_000
            )
            page.wait_for_function(f"{marks}.length === 1", timeout=30_000)
            assert page.evaluate(marks) == [61]  # record 61 (offset 60) is the first v2 scored
            assert page.evaluate(
                "document.getElementById('err').layout.shapes.filter(s => s.xref === 'x').map(s => s.x0)"
            ) == [61]
            assert page.evaluate(
                "document.getElementById('pva').layout.annotations.map(a => a.text)"
            ) == ["model v2-bbbb"]
            assert page.locator("#version").inner_text() == "v2-bbbb"
            rows = page.locator("#models tbody tr")
            assert rows.nth(0).locator("td").all_inner_texts() == [
                "v2-bbbb",
                "linear",
                "run-v2-bbbb",
                "2026-11-20 10:00:00",
                "80",
                "9.25",
                "12.03",
                "0.900",
                "0.50",
                "champion",
                "",
            ]
            assert (
                rows.nth(0).get_attribute("class") == "scoring"
                and rows.nth(1).locator("td.mae").inner_text() == "12.50"
            )
            send(120, 150, "v1-aaaa")  # a rollback, live
            page.wait_for_function(f"{marks}.length === 2", timeout=30_000)
            assert (
                page.evaluate(marks) == [61, 121]
                and page.locator("#version").inner_text() == "v1-aaaa"
            )
            assert errors == [], errors
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()

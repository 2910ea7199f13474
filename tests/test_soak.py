"""Long runs stay flat: a million events through `replay` -> two `serve` workers -> `monitor` and `dashboard` (with a page open
in headless Chromium), every process's RSS sampled while it runs. The slow tier; CI runs it."""

import json, signal, subprocess, threading, time
from collections import Counter
import pytest
from kafka import KafkaConsumer, TopicPartition
from playwright.sync_api import sync_playwright
from sales_prediction_kafka.data import SAMPLE_CSV
from helpers import (
    SALES_KAFKA,
    landed,
    launch_chromium,
    metrics,
    page_with_errors,
    report,
    scored,
    start_worker,
    topics,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(2400)]

EVENTS = 1_000_000  # 2,000 replays of the 500-row sample
RATE = 4000  # events/s the replay is paced to: a steady load two workers keep up with on 2 shared cores, ~4 min in all
PARTITIONS = 6
WARM_UP = 0.3  # RSS before this share of the events is warm-up (75 s at the paced rate)
WINDOW_S = "10"  # the monitor's and dashboard's time window, in s: its bound (one entry per distinct millisecond, so 10,000)
# is reached within warm-up. With the default 60 s the bound is 60,000 entries (~16 MiB), reached only once a minute of
# arrivals spreads over nearly every millisecond: in a CI run the monitor sat at 140 MiB to 330,000 events, then stepped to
# 156 MiB by 480,000 and stayed there to the end (+11 %, a bounded window filling after warm-up, not a leak).
GROWTH = 0.10  # most RSS growth allowed after warm-up
BASELINE = "5000"  # baseline MAE for monitor and dashboard (the test model's is about this)


def rss_mib(pid: int) -> float | None:
    "The resident set size of process `pid` in MiB, None once it has ended."
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return None
    # none: a zombie
    return next(
        (int(l.split()[1]) / 1024 for l in status.splitlines() if l.startswith("VmRSS:")), None
    )


class RssSampler(threading.Thread):
    "Samples each named process's RSS every `every` seconds, with the events processed so far (`progress()`)."

    def __init__(self, procs: dict, progress, every: float = 2.0):
        super().__init__(daemon=True)
        self.procs, self.progress, self.every, self.samples, self.halt = (
            procs,
            progress,
            every,
            [],
            threading.Event(),
        )

    def run(self):
        while not self.halt.wait(self.every):
            done = self.progress()
            self.samples += [
                (name, done, r)
                for name, p in self.procs.items()
                if (r := rss_mib(p.pid)) is not None
            ]

    def growth(self) -> dict:
        "Per process: RSS at the end of warm-up, the peak after it (MiB), their ratio - 1, and the number of samples after warm-up."
        out = {}
        for name in self.procs:
            after = [r for n, done, r in self.samples if n == name and done >= WARM_UP * EVENTS]
            if after:
                out[name] = {
                    "warm": after[0],
                    "peak": max(after),
                    "growth": max(after) / after[0] - 1,
                    "samples": len(after),
                }
        return out


def read_keys(servers: str, topic: str, expect: int, timeout: float = 300) -> Counter:
    "How often each key occurs in `topic`, reading until `expect` records (or the topic's end) are in."
    c = KafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends, keys, deadline = c.end_offsets(tps), Counter(), time.monotonic() + timeout
        while any(c.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, (
                f"timed out reading {topic}: {sum(keys.values())} of {sum(ends.values())}"
            )
            for recs in c.poll(timeout_ms=500, max_records=50_000).values():
                keys.update(r.key for r in recs)
        return keys
    finally:
        c.close()


def command(*args, log) -> subprocess.Popen:
    "A `sales-kafka` command in its own process, stderr to `log`."
    return subprocess.Popen([SALES_KAFKA, *args], stdout=subprocess.PIPE, stderr=log, text=True)


def test_a_million_events_leave_every_process_flat(broker_settings, model_dir, chromium, tmp_path):
    servers, t = broker_settings.bootstrap_servers, topics("soak")
    log = open(tmp_path / "commands.log", "w")
    procs = {
        w: start_worker(tmp_path, model_dir, broker_settings, t, w, exactly_once=False)
        for w in ("w1", "w2")
    }
    try:
        wait_for(
            lambda: all(metrics(tmp_path, w).get("partitions") for w in ("w1", "w2")),
            120,
            "both workers to hold partitions",
        )
        watch = [
            "--bootstrap-servers",
            servers,
            "--topic",
            t["predictions"],
            "--from-beginning",
            "--baseline",
            BASELINE,
            "--dead-letter-topic",
            t["dlq"],
            "--events-topic",
            t["events"],
            "--seconds",
            WINDOW_S,
        ]
        procs["monitor"] = command(
            "monitor",
            *watch,
            "--alerts-topic",
            f"{t['predictions']}-alerts",
            "--every",
            "5",
            log=log,
        )
        procs["dashboard"] = dash = command(
            "dashboard",
            "--port",
            "0",
            *watch,
            "--alerts-topic",
            f"{t['predictions']}-dash",
            log=log,
        )
        url = dash.stdout.readline().split(" at ", 1)[1].strip()
        with sync_playwright() as pw:
            browser = launch_chromium(pw, chromium)
            page, errors = page_with_errors(browser, "console")
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            processed = lambda: scored(tmp_path, "w1") + scored(tmp_path, "w2")
            sampler = RssSampler(procs, processed)
            t0 = time.monotonic()
            procs["replay"] = replay = command(
                "replay",
                str(SAMPLE_CSV),
                "--bootstrap-servers",
                servers,
                "--topic",
                t["events"],
                "--partitions",
                str(PARTITIONS),
                "--repeat",
                str(EVENTS // 500),
                "--rate",
                str(RATE),
                log=log,
            )
            sampler.start()
            assert replay.wait(timeout=EVENTS / RATE * 3) == 0, (
                tmp_path / "commands.log"
            ).read_text()[-3000:]
            sent_s = time.monotonic() - t0
            wait_for(lambda: processed() >= EVENTS, 600, f"the workers to score {EVENTS} events")
            scored_s = time.monotonic() - t0
            wait_for(
                lambda: (
                    json.loads(page.locator("#seen").inner_text().replace(",", "") or "0") >= EVENTS
                ),
                300,
                "the dashboard page to count every prediction",
            )
            sampler.halt.set()
            sampler.join()
            traces = page.evaluate("document.getElementById('pva').data.map(t => t.x.length)")
            state = json.loads(page.evaluate("fetch('state').then(r => r.text())"))
            status = page.locator("#status").inner_text()
            browser.close()
        for p in (procs["monitor"], dash):
            p.send_signal(signal.SIGINT)
        monitor_out, _ = procs["monitor"].communicate(timeout=60)
        assert dash.wait(timeout=60) == 0 and procs["monitor"].returncode == 0, (
            tmp_path / "commands.log"
        ).read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()

    keys = read_keys(servers, t["predictions"], EVENTS)
    dead = landed(servers, t["dlq"], PARTITIONS)
    lost = EVENTS - len(keys) - dead
    duplicated = sum(keys.values()) - len(keys)
    growth = sampler.growth()
    (tmp_path / "rss.csv").write_text(
        "process,events_scored,rss_mib\n"
        + "".join(f"{n},{d},{r:.1f}\n" for n, d, r in sampler.samples)
    )
    report(
        "soak",
        sent=EVENTS,
        received=sum(keys.values()),
        dead_lettered=dead,
        lost=lost,
        duplicated=duplicated,
        replay_s=sent_s,
        scored_s=scored_s,
        **{
            f"{n}_mib": f"{g['warm']:.0f}->{g['peak']:.0f} ({g['growth']:+.1%})"
            for n, g in growth.items()
        },
    )
    assert lost == 0 and duplicated == 0 and dead == 0, (lost, duplicated, dead)
    assert set(growth) == set(procs), f"every process must live past warm-up: {sorted(growth)}"
    assert all(g["samples"] >= 10 for g in growth.values()), growth
    flat = {n: g for n, g in growth.items() if g["growth"] > GROWTH}
    assert not flat, f"RSS grew more than {GROWTH:.0%} after warm-up: {flat}"
    # the windows stay bounded: the page's charts and the dashboard's state keep at most max_points, the table max_rows
    assert status == "live" and not errors, (status, errors)
    assert state["snapshot"]["seen"] >= EVENTS and max(traces) <= state["max_points"], (
        traces,
        state["max_points"],
    )
    assert all(len(v) <= state["max_points"] for v in state["points"].values())
    assert len(state["rows"]) <= state["max_rows"]
    last = [l for l in monitor_out.splitlines() if l.startswith("seen ")][-1]
    assert f"seen {EVENTS}" in last.replace(",", "") and "last 100:" in last, last

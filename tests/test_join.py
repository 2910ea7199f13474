"""Forecasts first, truth later, against a real broker: a lagged replay scored by `serve` and joined by `sales-kafka join`;
joiners SIGKILLed and rebalanced mid-stream, each actual joined once. Each fault test prints a `RELIABILITY` line."""

import json, signal, subprocess, sys, threading, time, uuid
from collections import Counter
import pytest
from helpers import read_all, report, start_worker, topics, wait_for
from sales_prediction_kafka.data import generate_sales
from sales_prediction_kafka.join import JoinTopics, actual_message, ensure_join_topics
from sales_prediction_kafka.models import load_model
from sales_prediction_kafka.monitor import monitor
from sales_prediction_kafka.replay import replay, table_events
from sales_prediction_kafka.clients import producer
from sales_prediction_kafka.clients import ensure_topic

pytestmark = pytest.mark.kafka

JOIN = "import logging; logging.basicConfig(level=logging.INFO); from sales_prediction_kafka.join import join_command; join_command()"


def join_topics(predictions: str) -> JoinTopics:
    "Fresh topic names for one join reading `predictions`."
    u = uuid.uuid4().hex[:6]
    return JoinTopics(predictions, f"act-{u}", f"joined-{u}", f"state-{u}", f"jdlq-{u}")


def start_joiner(
    tmp, settings, t: JoinTopics, group: str, worker: str, exactly_once: bool
) -> subprocess.Popen:
    "A `sales-kafka join` process; its log goes to <tmp>/<worker>.log, its metrics to <tmp>/<worker>.json."
    args = [
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--group-id",
        group,
        "--worker-id",
        worker,
        "--predictions-topic",
        t.predictions,
        "--actuals-topic",
        t.actuals,
        "--joined-topic",
        t.joined,
        "--state-topic",
        t.state,
        "--dead-letter-topic",
        t.dead_letter,
        "--partitions",
        "6",
        "--max-records",
        "200",
        "--session-timeout",
        "6",
        "--join-window",
        "1h",
        "--metrics-file",
        str(tmp / f"{worker}.json"),
        "--metrics-every",
        "0.2",
    ] + (["--exactly-once"] if exactly_once else [])
    return subprocess.Popen(
        [sys.executable, "-c", JOIN, *args],
        stdout=subprocess.PIPE,
        stderr=open(tmp / f"{worker}.log", "ab"),
    )


def stop(*procs):
    "SIGTERM `procs` and check that each stopped cleanly."
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(timeout=60) == 0, f"process {p.args[-1]} exited {p.returncode}"


def owned(tmp, worker: str) -> list:
    "The partitions a joiner reports owning in its metrics file."
    try:
        return json.loads((tmp / f"{worker}.json").read_text()).get("partitions", [])
    except (OSError, ValueError):
        return []


@pytest.mark.slow
def test_lagged_actuals_are_joined_with_served_predictions(broker_settings, model_dir, tmp_path):
    "600 events replayed without their sales, each actual 50 events later; `serve` scores, `join` completes each once."
    s, t, n = broker_settings, topics("join"), 600
    jt = join_topics(t["predictions"])
    ensure_join_topics(s, jt, partitions=6)
    ensure_topic(s, t["events"], 6)
    df = generate_sales(n, seed=5, missing=0.0)
    scorer, joiner = (
        start_worker(tmp_path, model_dir, s, t, "w", False),
        start_joiner(tmp_path, s, jt, t["group"] + "-j", "j", False),
    )
    try:
        wait_for(
            lambda: len(owned(tmp_path, "w")) == 6 and len(owned(tmp_path, "j")) == 6,
            90,
            "the scorer and the joiner to start",
        )
        sent = replay(
            table_events(df),
            s,
            t["events"],
            rate=300,
            actuals_lag=100,
            actuals_topic=jt.actuals,
            progress=False,
        )
        assert (sent.total, sent.actuals.total) == (n, n)
        joined = read_all(s, jt.joined, until=lambda recs: len(recs) >= n, timeout=180)
    finally:
        stop(scorer, joiner)
    by_id = Counter(int(r.key) for r in joined)
    assert sorted(by_id) == list(range(n)) and max(by_id.values()) == 1, (
        "each event joined exactly once"
    )
    version = load_model(model_dir).version
    for r in joined:
        v, h = json.loads(r.value), {k: b.decode() for k, b in r.headers}
        assert v["actual_sales"] == df["Sales"][v["prediction_index"]]
        assert v["error"] == pytest.approx(v["actual_sales"] - v["predicted_sales"])
        assert (h["model_version"], h["actual"]) == (version, "joined")
    times = lambda topic: {int(r.key): r.timestamp for r in read_all(s, topic, "read_uncommitted")}
    forecast_at, actual_at = times(t["predictions"]), times(jt.actuals)
    delays = {int(r.key): int(dict(r.headers)["label_delay_ms"]) for r in joined}
    assert delays == {i: actual_at[i] - forecast_at[i] for i in range(n)}, (
        "label delay: from the forecast's record to its actual's"
    )
    pending = [json.loads(r.value) for r in read_all(s, t["predictions"], "read_uncommitted")]
    assert len(pending) == n and all(p["actual_sales"] is None for p in pending), (
        "the forecasts went out without the truth"
    )
    assert read_all(s, jt.dead_letter, "read_uncommitted") == []


N_PAIRS = 6000


def feed(
    settings, t: JoinTopics, n: int, lag: int, rate: float, pause_at: int, resume: threading.Event
):
    "Predictions 0..n-1 (predicted i, no actual) paced to `rate`, each actual (i + 0.5) `lag` predictions later; a pause at `pause_at` until `resume`."
    p = producer(settings, key_serializer=None, value_serializer=None, linger_ms=5)
    send = lambda topic, i, v: p.send(
        topic, key=str(i).encode(), value=json.dumps(v).encode(), headers=[("model_version", b"m1")]
    )
    t0 = time.monotonic()
    for i in range(n + lag):
        if i == pause_at:
            p.flush()
            resume.wait()
            t0 = time.monotonic() - i / rate
        if (ahead := t0 + i / rate - time.monotonic()) > 0:
            time.sleep(ahead)
        if i < n:
            send(
                t.predictions,
                i,
                {
                    "prediction_index": i,
                    "predicted_sales": float(i),
                    "actual_sales": None,
                    "error": None,
                },
            )
        if i >= lag:
            send(t.actuals, i - lag, actual_message(i - lag, i - lag + 0.5))
    p.flush()
    p.close()


@pytest.mark.slow
@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_joiner_sigkill_and_rebalances_join_every_actual_once(
    broker_settings, tmp_path, exactly_once
):
    "Two joiners share 6 partitions; one is SIGKILLed mid-stream (a rebalance) and restarted (another): 0 lost, 0 duplicated."
    t0, s, u = time.monotonic(), broker_settings, uuid.uuid4().hex[:6]
    t, group = join_topics(f"pred-{u}"), f"joiners-{u}"
    ensure_join_topics(s, t, partitions=6)
    j1, j2 = (start_joiner(tmp_path, s, t, group, w, exactly_once) for w in ("j1", "j2"))
    try:
        wait_for(
            lambda: len(owned(tmp_path, "j1")) + len(owned(tmp_path, "j2")) == 6,
            90,
            "the joiners to share 6 partitions",
        )
        # the second half of the pairs waits for the restart, so that it lands mid-stream
        resume = threading.Event()
        feeder = threading.Thread(
            target=feed, args=(s, t, N_PAIRS, 300, 600.0, N_PAIRS // 2, resume)
        )
        feeder.start()
        keys = lambda recs: {r.key for r in recs}
        isolation = "read_committed" if exactly_once else "read_uncommitted"
        read_all(s, t.joined, isolation, until=lambda recs: len(keys(recs)) >= 1000, timeout=120)
        j1.send_signal(signal.SIGKILL)
        j1.wait()
        t_kill = time.monotonic()
        wait_for(
            lambda: len(owned(tmp_path, "j2")) == 6,
            120,
            "the surviving joiner to take over all partitions",
        )
        # same id: an exactly-once joiner fences its predecessor
        (tmp_path / "j1.json").unlink()  # the killed joiner's last report
        j1 = start_joiner(tmp_path, s, t, group, "j1", exactly_once)
        # the second rebalance, before the rest of the stream: under load the survivor could otherwise join it all
        # while the new process still imports, and the SIGTERM at the end would find it before its handler
        wait_for(
            lambda: (
                owned(tmp_path, "j1") and len(owned(tmp_path, "j1") + owned(tmp_path, "j2")) == 6
            ),
            120,
            "the restarted joiner to take its share back",
        )
        resume.set()
        feeder.join()
        read_all(s, t.joined, isolation, until=lambda recs: len(keys(recs)) >= N_PAIRS, timeout=180)
        recovery = time.monotonic() - t_kill
    finally:
        stop(j1, j2)
    joined = Counter(int(r.key) for r in read_all(s, t.joined, isolation))
    lost, dupes = N_PAIRS - len(joined), sum(c - 1 for c in joined.values())
    dead = read_all(s, t.dead_letter, "read_uncommitted")
    report(
        f"join-crash {'exactly' if exactly_once else 'at-least'}-once",
        pairs=N_PAIRS,
        joined=len(joined),
        lost=lost,
        duplicated=dupes,
        dead_letters=len(dead),
        recovery_s=recovery,
        total_s=time.monotonic() - t0,
    )
    assert set(joined) == set(range(N_PAIRS)), f"{lost} actuals never joined"
    assert dupes == 0, f"{dupes} pairs joined twice"
    assert dead == [], (
        f"{len(dead)} dead letters: {[dict(d.headers).get('dlq.reason') for d in dead[:5]]}"
    )


MONITOR = "from sales_prediction_kafka.monitor import monitor_command; monitor_command()"


@pytest.mark.slow
@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_monitor_counts_predictions_waiting_for_their_actual(
    broker_settings, tmp_path, exactly_once
):
    "A real joiner gets 70 forecasts (10 with their actual inside) and 40 actuals, 10 of them first: the monitor counts the 20 forecasts still waiting, in its snapshot and its terminal line, and 0 once their actuals come."
    s, u = broker_settings, uuid.uuid4().hex[:6]
    t = join_topics(f"pred-{u}")
    ensure_join_topics(s, t, partitions=6)
    joiner = start_joiner(tmp_path, s, t, f"joiners-{u}", "j", exactly_once)
    p = producer(s, key_serializer=None, value_serializer=None)
    send = lambda topic, i, v: p.send(topic, key=str(i).encode(), value=json.dumps(v).encode())
    forecast = lambda i, actual=None: {
        "prediction_index": i,
        "predicted_sales": 100.0,
        "actual_sales": actual,
        "error": None,
    }
    snaps, stop_watch = [], threading.Event()
    watch = threading.Thread(
        target=monitor,
        kwargs=dict(
            settings=s,
            topic=t.joined,
            callback=lambda up: snaps.append(up.snapshot),
            every=0.2,
            from_beginning=True,
            dead_letter_topic=None,
            join_state_topic=t.state,
            stop=stop_watch,
        ),
        daemon=True,
    )
    shows = lambda seen, waiting: (
        bool(snaps)
        and (
            snaps[-1]["seen"],
            (snaps[-1]["waiting"] or {}).get("predictions"),  # None: the changelog not read yet
        )
        == (seen, waiting)
    )
    joiner_waits = lambda: json.loads((tmp_path / "j.json").read_text())["waiting_predictions"]
    try:
        wait_for(lambda: len(owned(tmp_path, "j")) == 6, 90, "the joiner to start")
        watch.start()
        for i in range(10):  # the truth before its forecast
            send(t.actuals, i, actual_message(i, 110.0))
        for i in range(70):  # 60 to 69 carry their actual: joined at once, never waiting
            send(t.predictions, i, forecast(i, 90.0 if i >= 60 else None))
        for i in range(10, 40):
            send(t.actuals, i, actual_message(i, 110.0))
        p.flush()
        wait_for(lambda: shows(50, 20), 60, f"the monitor to count 20 waiting: {snaps[-1:]}")
        assert snaps[-1]["waiting"] == {"predictions": 20, "actuals": 0}
        wait_for(lambda: joiner_waits() == 20, 30, "the joiner's own count to agree")
        cli = subprocess.run(
            [sys.executable, "-c", MONITOR, "--bootstrap-servers", s.bootstrap_servers]
            + ["--topic", t.joined, "--join-state-topic", t.state, "--from-beginning"]
            + ["--baseline", "10", "--dead-letter-topic", t.dead_letter, "--timeout", "8"]
            + ["--alerts-topic", f"alerts-{u}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stderr[-2000:]
        last = cli.stdout.splitlines()[-1]
        assert last.startswith("seen 50 |") and "| waiting for actual 20" in last, last
        for i in range(40, 60):
            send(t.actuals, i, actual_message(i, 120.0))
        p.flush()
        wait_for(lambda: shows(70, 0), 60, f"the count to drop to 0: {snaps[-1:]}")
        assert snaps[-1]["waiting"] == {"predictions": 0, "actuals": 0}
    finally:
        stop_watch.set()
        p.close()
        stop(joiner)
    watch.join(60)
    assert not watch.is_alive()

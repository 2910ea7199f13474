"""Per-series state in the scoring workers (chapter 08e). Two measurements:

1. Restore: a history topic holding 100,000 series' records (a monthly model with lags 1, 2 and 12: 13 rows each) and
   events of some of those series waiting; a fresh worker process joins, is given every partition, restores them and
   scores. Time from the assignment to the first prediction sent, the restore itself, and the worker's RSS.
2. Latency: the same dated stream (events keyed by series, actuals 50 events behind, history records beside them)
   replayed at 2,000 events/s to two workers: a lag model served with its per-series state, and the same model without
   lags (calendar and price only, no state). End-to-end p99 (prediction record time - event record time), in rounds
   with the two sides alternating, so a load burst on this shared machine hits both alike. The stream is encoded
   before the clock starts (as `replay` would send it, one continuous stream cut into rounds) and sent as bytes by one
   producer: three records per event at 2,000 events/s. Rates are per round (the median of the rounds): over all rounds
   they would count the other side's rounds in between.
3. Work: the same stream's batches scored in one process with nothing between (`serve.plan_batch`, the history's records
   held as they come, a real history consumer that is asked for more only when a batch lacks an actual), with lag state
   and without, alternating batch by batch: the Python work a lag batch adds, apart from Kafka and the network."""

from __future__ import annotations
import json, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import pandas as pd
from .common import cpu_seconds, kafka, load, log, tag, table, targets_line, write_result
from .live import Worker, read_timestamps, stats, total_records

NAME = "history"
TARGET_RATIO = 1.2  # serve with lag state: p99 at most this multiple of serve without
RESTORE_TARGET_S = 5.0  # a worker given partitions with 100,000 series' history scores within this
LAG = 50  # each actual follows its event by this many events: fewer than the stream's series, so a period's actuals come before the next period's events
KEEP = 13  # rows per history record in the restore: the monthly model reaches 12 periods back
STREAM_KEEP = 36  # rows per record in the latency stream: 2 years of slack, as the replay packs ~7-20 months into a second (chapter 08e)
WORK_BATCH = 16  # events per batch in the work phase: the live lag worker's mean batch at 2,000/s (12,000 events in 738 batches)
LINGER_MS = 5  # the sender batches what it sends within 5 ms, instead of one produce request per record (6,000/s)


def plan(quick: bool) -> dict:
    "Series in the restore, rounds and events per round of the latency phase (at 2,000/s), series in the stream."
    if quick:
        return {
            "restore_series": 5_000,
            "restore_rounds": 1,
            "rounds": 1,
            "events": 1_000,
            "stream_series": 50,
            "rate": 2000,
        }
    return {
        "restore_series": 100_000,
        "restore_rounds": 3,
        "rounds": 3,
        "events": 4_000,
        "stream_series": 100,
        "rate": 2000,
    }


def monthly_panel(
    series: int, months: int, seed: int = 5, start: str = "2000-01-31"
) -> pd.DataFrame:
    "A seeded monthly panel in time order (a row per store per month): a level per store, a yearly season, price and noise."
    rng = np.random.default_rng(seed)
    level, amp = rng.uniform(1_000, 5_000, series), rng.uniform(0.1, 0.3, series)
    dates = pd.date_range(start, periods=months, freq="ME").strftime("%Y-%m-%d")
    m = np.repeat(np.arange(months), series)
    s = np.tile(np.arange(series), months)
    price = rng.uniform(8, 12, len(m)).round(2)
    sales = (
        level[s] * (1 + amp[s] * np.sin(2 * np.pi * m / 12))
        - 50 * (price - 10)
        + rng.normal(0, 30, len(m))
    )
    return pd.DataFrame(
        {"Date": dates[m], "Store": [f"S{i}" for i in s], "Price": price, "Sales": sales.round(2)}
    )


def models(tmp: Path) -> dict:
    "The lag model (lags 1, 2, 12 and a 3-month mean, from the series' history) and the same without lags, saved; their folders."
    from sales_prediction_kafka.models import SalesModel, save_model
    from sales_prediction_kafka.timeseries import TimeAxis

    train = monthly_panel(40, 48, seed=11)
    lagged, plain_axis = TimeAxis("Date", "M", ["Store"]), TimeAxis("Date", "M", ["Store"], lags=[])
    lag = SalesModel("linear", features=["Price"], time=lagged.to_dict()).fit(
        lagged.derive(train, "Sales")
    )
    flat = SalesModel("linear", features=["Price"], time=plain_axis.to_dict()).fit(train)
    assert lag.needs_history and not flat.needs_history
    return {"state": save_model(lag, tmp / "lag"), "no_state": save_model(flat, tmp / "flat")}


def fill_history(settings, topic: str, n: int, rows: int = KEEP) -> dict:
    "One history record for each of `n` series S0..S<n-1> on `topic`; bytes and seconds."
    from sales_prediction_kafka.clients import producer

    # the project's defaults: zstd, 50 ms linger, 256 KiB batches
    p = producer(settings, key_serializer=None, value_serializer=None)
    dates = pd.date_range("2000-01-31", periods=rows, freq="ME").strftime("%Y-%m-%d").tolist()
    rng, size, t0 = np.random.default_rng(1), 0, time.monotonic()
    for i in range(n):
        v = json.dumps(
            {
                "series": {"Store": f"S{i}"},
                "rows": [
                    [d, round(float(y), 2)] for d, y in zip(dates, rng.uniform(1e3, 5e3, rows))
                ],
                "keep": rows,
            }
        ).encode()
        size += len(v)
        p.send(topic, key=f"S{i}".encode(), value=v)
    p.flush()
    p.close()
    return {"records": n, "bytes": size, "seconds": time.monotonic() - t0}


def restore(settings, model_dir: Path, n: int, rounds: int) -> dict:
    "Fill a history topic with `n` series, put events of 60 of them on the events topic, time `rounds` fresh workers taking it all over (median)."
    from sales_prediction_kafka.history import ensure_history_topic
    from sales_prediction_kafka.replay import replay, table_events
    from sales_prediction_kafka.clients import ensure_topic

    t = {k: tag(f"bench-hist-{k}") for k in ("events", "history", "out", "dlq")}
    ensure_topic(settings, t["events"], 3)
    ensure_history_topic(settings, t["history"], t["events"])
    filled = fill_history(settings, t["history"], n)
    waiting = pd.DataFrame(
        {
            "Date": "2001-02-28",
            "Store": [f"S{i}" for i in range(0, n, max(1, n // 60))][:60],
            "Price": 10.0,
        }
    )
    replay(
        table_events(waiting),
        settings,
        t["events"],
        progress=False,
        series=["Store"],
        time_column="Date",
        history_topic=tag("bench-hist-unused"),
    )
    # a fresh group each time: a worker taking it all over
    runs = [take_over(settings, model_dir, t, len(waiting)) for _ in range(rounds)]
    # a stuck run counts as never
    took = sorted(
        r["assigned_to_first_scored_s"] if r["scored"] == r["expected"] else float("inf")
        for r in runs
    )
    return {
        "filled": filled,
        "runs": runs,
        "assigned_to_first_scored_s": took[len(took) // 2],
        "series": runs[0]["series"],
        "scored": min(r["scored"] for r in runs),
        "expected": len(waiting),
        **{
            k: sorted(r[k] for r in runs)[len(runs) // 2]
            for k in ("rss_before_mib", "rss_after_mib", "max_rss_mib")
        },
    }


def take_over(settings, model_dir: Path, t: dict, expect: int) -> dict:
    "One `bench.history_worker` process in a fresh group: it is given every partition, restores them and scores; its figures."
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.history_worker",
            "--model",
            str(model_dir),
            "--bootstrap-servers",
            settings.bootstrap_servers,
            "--events-topic",
            t["events"],
            "--history-topic",
            t["history"],
            "--out-topic",
            t["out"],
            "--dlq-topic",
            t["dlq"],
            "--group",
            tag("bench-hist"),
            "--expect",
            str(expect),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent.parent,
    )
    if res.returncode:
        raise RuntimeError(f"history_worker failed:\n{res.stderr[-4000:]}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    if got["scored"] < got["expected"]:
        log.error(
            "a worker scored %d of %d events in 120 s after its restore:\n%s",
            got["scored"],
            got["expected"],
            res.stderr[-3000:],
        )
    return got


def event_times(settings, topic: str) -> dict:
    "event id -> record timestamp (ms) of every event on `topic` (keyed by series: the id is in the value)."
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends, out = c.end_offsets(tps), {}
        while any(c.position(tp) < ends[tp] for tp in tps):
            for recs in c.poll(timeout_ms=500).values():
                for r in recs:
                    out[json.loads(r.value)["event_id"]] = r.timestamp
        return out
    finally:
        c.close()


def start_side(side: str, settings, model_dir: Path, tmp: Path) -> tuple:
    "A `bench.live_worker` serving `side`'s model on topics of its own (history topic given either way); (worker, topics)."
    from sales_prediction_kafka.history import ensure_history_topic
    from sales_prediction_kafka.replay import replay, table_events
    from sales_prediction_kafka.clients import ensure_topic

    t = {
        k: tag(f"bench-hist-{side}-{k}")
        for k in ("backlog", "backlog_out", "events", "out", "dlq", "actuals", "history")
    }
    for k in ("backlog", "backlog_out", "events", "out", "dlq", "actuals"):
        ensure_topic(settings, t[k], 3)
    ensure_history_topic(settings, t["history"], t["events"])
    # the one event the worker drains before it serves
    replay(
        table_events(monthly_panel(1, 1).drop(columns="Sales"), first_id=10**9),
        settings,
        t["backlog"],
        progress=False,
        series=["Store"],
        time_column="Date",
        history_topic=t["history"],
    )
    w = Worker(
        [
            "--mode",
            "model",
            "--model",
            str(model_dir),
            "--bootstrap-servers",
            settings.bootstrap_servers,
            "--group",
            tag(f"bench-hist-{side}"),
            "--backlog-topic",
            t["backlog"],
            "--backlog-out",
            t["backlog_out"],
            "--backlog-n",
            "1",
            "--events-topic",
            t["events"],
            "--out-topic",
            t["out"],
            "--dlq-topic",
            t["dlq"],
            "--history-topic",
            t["history"],
            "--polled-file",
            str(tmp / f"polled-{side}.json"),
        ],
        tmp / f"worker-{side}.log",
    )
    w.expect("DRAIN", 120)
    w.expect("READY", 120)
    return w, t


def encoded_rounds(df: pd.DataFrame, t: dict, per_round: int, first: int = 0) -> list[list]:
    "`df` (dated, in time order) as one `replay --series Store --actuals-lag LAG` sends it to `t`, encoded, cut into rounds of `per_round` events."
    from sales_prediction_kafka.history import history_items, series_key
    from sales_prediction_kafka.replay import lag_actuals, table_events

    items = history_items(
        lag_actuals(table_events(df, first_id=first), LAG), ["Store"], "Date", keep=STREAM_KEEP
    )
    rounds, n = [], 0
    for kind, msg in items:
        if kind == "event" and n % per_round == 0:
            rounds.append([])
        n += kind == "event"
        topic, key, value = {
            "event": lambda: (t["events"], series_key(msg, ["Store"]), msg),
            "actual": lambda: (t["actuals"], str(msg["event_id"]), msg),
            "history": lambda: (t["history"], *msg),
        }[kind]()
        rounds[-1].append((topic, key.encode(), json.dumps(value).encode(), kind == "event"))
    return rounds


def send_round(settings, p, records: list, t: dict, rate: int) -> int:
    "Send encoded `records` with producer `p`, the events paced to `rate`; wait for every event's output; the events sent."
    before = total_records(settings, t["out"]) + total_records(settings, t["dlq"])
    t0, n = time.monotonic(), 0
    for topic, key, value, event in records:
        if event:
            if (ahead := t0 + n / rate - time.monotonic()) > 0:
                time.sleep(ahead)
            n += 1
        p.send(topic, key=key, value=value)
    p.flush()
    deadline = time.monotonic() + 120
    while total_records(settings, t["out"]) + total_records(settings, t["dlq"]) < before + n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{t['events']}: outputs missing after 120 s")
        time.sleep(0.2)
    return n


def round_rates(each: list[dict]) -> dict:
    "The offered and delivered rates (median and each) of the rounds' `stats`: a rate over all rounds would count the other side's rounds between them."
    return {
        f"{k}_per_s": float(np.median([x[f"{k}_per_s"] for x in each]))
        for k in ("offered", "throughput")
    } | {
        f"{k}_per_s_rounds": [round(x[f"{k}_per_s"]) for x in each]
        for k in ("offered", "throughput")
    }


def latency(settings, dirs: dict, p: dict, tmp: Path) -> dict:
    "The rounds at `p['rate']`, both sides alternating; a row of latency figures per side and the workers' metrics."
    from sales_prediction_kafka.replay import replay_tuning
    from sales_prediction_kafka.clients import producer

    months = p["events"] // p["stream_series"]
    stream = monthly_panel(p["stream_series"], months * (p["rounds"] + 1), seed=3)
    per_round = months * p["stream_series"]
    sides = {s: start_side(s, settings, dirs[s], tmp) for s in dirs}
    rounds = {s: encoded_rounds(stream, t, per_round) for s, (_, t) in sides.items()}
    # `replay`'s paced settings, batched within LINGER_MS
    send = producer(
        settings,
        tuning=replay_tuning(p["rate"], linger_ms=LINGER_MS),
        key_serializer=None,
        value_serializer=None,
    )
    ids = {s: [] for s in sides}
    # CPU seconds of each worker in its own counted rounds: (the whole process, its main thread)
    cpu = {s: np.zeros(2) for s in sides}
    used = lambda s: np.array([cpu_seconds(pid := sides[s][0].proc.pid), cpu_seconds(pid, pid)])
    try:
        # round 0 warms both up (and gives the lag side a year of history): not counted
        for r in range(p["rounds"] + 1):
            for s in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                before = used(s)
                n = send_round(settings, send, rounds[s][r], sides[s][1], p["rate"])
                if r:
                    ids[s].append(range(r * per_round, r * per_round + n))
                    cpu[s] += used(s) - before
            log.info("history round %d of %d done", r, p["rounds"])
    finally:
        send.close(5)
        for w, _ in sides.values():
            w.stop()
    rows, metrics = [], {}
    for s, (w, t) in sides.items():
        polled = (
            json.loads((tmp / f"polled-{s}.json").read_text())
            if (tmp / f"polled-{s}.json").exists()
            else {}
        )
        ev, out = event_times(settings, t["events"]), read_timestamps(settings, t["out"])
        each = [stats(list(got), ev, out) for got in ids[s]]
        sent = [i for got in ids[s] for i in got]  # the events of the counted rounds
        rows.append(
            {
                "side": s,
                **stats(sent, ev, out, {int(k): v for k, v in polled.items()}),
                **round_rates(each),
                "dead_letters": total_records(settings, t["dlq"]),
                # per event sent in the counted rounds; the other threads are kafka-python's
                "cpu_us_per_event": 1e6 * cpu[s][0] / len(sent),
                "main_thread_cpu_us_per_event": 1e6 * cpu[s][1] / len(sent),
            }
        )
        try:
            metrics[s] = json.loads(w.expect("DONE", 10))
        except RuntimeError:
            metrics[s] = None
        # over the live run, warm-up included: batches, and those that read on to the history's end
        rows[-1] |= {
            "batches": (metrics[s] or {}).get("batches"),
            "catch_ups": ((metrics[s] or {}).get("history") or {}).get("catch_ups"),
        }
    return {"rows": rows, "worker_metrics": metrics}


def batch_work(settings, dirs: dict, p: dict, batch: int = WORK_BATCH) -> dict:
    "ms per `plan_batch` of `batch` events of the latency stream (after its warm-up round), with lag state and without, alternating."
    from kafka.consumer.fetcher import ConsumerRecord
    from sales_prediction_kafka.history import SeriesHistory, ensure_history_topic
    from sales_prediction_kafka.models import load_model
    from sales_prediction_kafka.serve import EventValidator, event_schema, plan_batch

    months = p["events"] // p["stream_series"]
    stream = monthly_panel(p["stream_series"], months * (p["rounds"] + 1), seed=3)
    names = {"events": "events", "actuals": "actuals", "history": "history"}
    items = [x for r in encoded_rounds(stream, names, months * p["stream_series"]) for x in r]
    topic = tag("bench-hist-work")
    ensure_history_topic(settings, topic, tag("bench-hist-work-events"), partitions=1)
    h = SeriesHistory(settings, topic)
    h.sync([0])  # assigned, at its (empty) end: asked for more only when a batch lacks an actual
    models = {s: load_model(dirs[s]) for s in dirs}
    check = {s: EventValidator(event_schema(m)) for s, m in models.items()}
    # a consumed record of partition 0 at offset i
    record = lambda to, i, key, value: ConsumerRecord(
        to, 0, None, i, 0, 0, key, value, [], None, len(key), len(value), 0
    )
    ms, events, seen, warm = {s: [] for s in dirs}, [], 0, None
    for i, (t, key, value, is_event) in enumerate(items):
        if t == "history":
            h.hold([record(topic, i, key, value)])
        elif is_event:
            events.append(record("events", i, key, value))
        if len(events) == batch:
            seen += batch
            for s in list(dirs) if seen // batch % 2 else list(dirs)[::-1]:
                t0 = time.perf_counter()
                plan_batch(events, models[s], check[s], history=h if s == "state" else None)
                if seen > months * p["stream_series"]:  # the warm-up round is not counted
                    ms[s].append((time.perf_counter() - t0) * 1e3)
                    warm = h.catch_ups if warm is None else warm
            events = []
    h.close()
    row = lambda s: {
        "side": s,
        "batches": len(ms[s]),
        "events_per_batch": batch,
        "work_p50_ms": float(np.percentile(ms[s], 50)),
        "work_p99_ms": float(np.percentile(ms[s], 99)),
    }
    rows = [row(s) for s in dirs]
    # catch-ups after the warm-up, whose first year lacks lag 12 for good
    return {
        "rows": rows,
        "catch_ups": h.catch_ups - (warm or 0),
        "ratio_p50": rows[0]["work_p50_ms"] / rows[1]["work_p50_ms"],
    }


def run(
    quick: bool = False, bootstrap_servers: str | None = None, out: Path | None = None, **_
) -> dict:
    "Run the per-series state benchmark; write history.json; return its results."
    p, load_before = plan(quick), load()
    with (
        kafka(bootstrap_servers) as settings,
        tempfile.TemporaryDirectory(prefix="bench-history-") as tmp,
    ):
        dirs = models(Path(tmp))
        r = restore(settings, dirs["state"], p["restore_series"], p["restore_rounds"])
        lat = latency(settings, dirs, p, Path(tmp))
        work = batch_work(settings, dirs, p)
    by = {x["side"]: x for x in lat["rows"]}
    ratio = by["state"]["p99_ms"] / by["no_state"]["p99_ms"]
    took = r["assigned_to_first_scored_s"]
    targets = {
        f"p99 with lag state <= {TARGET_RATIO}x without at {p['rate']}/s": ratio <= TARGET_RATIO,
        f"scoring within {RESTORE_TARGET_S:.0f} s of taking over {p['restore_series']:,} series": took
        is not None
        and took <= RESTORE_TARGET_S,
        "every take-over scored every waiting event": r["scored"] == r["expected"],
    }
    result = {
        "quick": quick,
        "plan": p,
        "restore": r,
        "latency": lat,
        "work": work,
        "ratios": {
            f"p99_state_vs_no_state_{p['rate']}/s": ratio,
            "work_p50_state_vs_no_state_in_process": work["ratio_p50"],
            "cpu_per_event_state_vs_no_state": by["state"]["cpu_us_per_event"]
            / by["no_state"]["cpu_us_per_event"],
        },
        "targets": targets,
        "load_before": load_before,
        "load_after": load(),
        "notes": [
            "restore: median of `restore_rounds` worker processes, each (ScoringWorker, at-least-once) joins a fresh group on a 3-partition events topic "
            "whose compacted history topic holds one record per series (13 monthly rows, JSON); timed from the "
            "rebalance callback that assigns the partitions to the first batch's predictions flushed",
            "RSS from /proc/self/status (VmRSS) before the worker opens and after it scored; max_rss = ru_maxrss",
            "latency = prediction record timestamp - event record timestamp (CreateTime, set at send()); "
            f"rounds of {p['events']:,} events at {p['rate']}/s, the sides alternating, after a warm-up round; "
            f"both streams carry the actuals ({LAG} events behind) and the history records, as one continuous replay cut "
            f"into rounds, encoded before the clock starts and sent as bytes by one producer (a {LINGER_MS} ms linger); rates are per round (median)",
            "state side: linear model on price, calendar, lags 1, 2, 12 and a 3-month mean (TimeAxis.derive_from per batch); "
            "no-state side: the same model without lags (calendar and price)",
            "cpu_us_per_event: each worker process's user+system CPU (all threads; main_thread: the thread that polls, "
            "scores and sends) during its own counted rounds, from /proc/<pid>/stat and /proc/<pid>/task/<pid>/stat",
            f"work: serve.plan_batch of {WORK_BATCH}-event batches of the latency stream in this process, the sides alternating "
            "batch by batch, the history records held as the stream brings them; perf_counter around each call",
        ],
    }
    path = write_result(NAME, result, out)
    print("\n## Per-series state (restore; serve with lag state vs without)\n")
    print(
        table(
            [
                {
                    "series": r["series"],
                    "records": r["filled"]["records"],
                    "MB": r["filled"]["bytes"] / 1e6,
                    "restores": len(r["runs"]),
                    "restore_s (each)": " / ".join(
                        f"{x['restores'][0]['seconds']:.2f}" for x in r["runs"]
                    ),
                    "assigned_to_first_scored_s (each)": " / ".join(
                        f"{x['assigned_to_first_scored_s']:.2f}"
                        if x["scored"] == x["expected"]
                        else "stuck"
                        for x in r["runs"]
                    ),
                    "rss_before_mib": r["rss_before_mib"],
                    "rss_after_mib": r["rss_after_mib"],
                }
            ]
        )
    )
    print()
    print(
        table(
            lat["rows"],
            [
                "side",
                "events",
                "delivered",
                "dead_letters",
                "offered_per_s",
                "throughput_per_s",
                "p50_ms",
                "p99_ms",
                "max_ms",
                "wait_p99_ms",
                "work_p50_ms",
                "work_p99_ms",
                "batches",
                "catch_ups",
                "cpu_us_per_event",
                "main_thread_cpu_us_per_event",
            ],
        )
    )
    print(
        f"\np99 at {p['rate']}/s: with lag state / without {ratio:.2f} (target <= {TARGET_RATIO}); "
        f"CPU per event {result['ratios']['cpu_per_event_state_vs_no_state']:.2f}"
    )
    print("\nThe same batches' work in one process, no Kafka between:\n")
    print(table(work["rows"]))
    print(
        f"work p50 with lag state / without: {work['ratio_p50']:.2f} ({work['catch_ups']} catch-ups)"
    )
    print(targets_line(targets, path))
    return result

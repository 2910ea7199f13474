"""Live scoring: events replayed at fixed rates and as fast as possible through one serve worker (a subprocess), end-to-end
latency from the event's produce time to the prediction's produce time (both Kafka record timestamps), and throughput;
the same for a pass-through worker with no model, and Kafka's own `EndToEndLatency` (Java) as the broker's floor.
The latency phases run in rounds, the two workers alternating and the Java floor once per round, so a load burst on
this shared machine hits every side alike. Capacity is also measured by draining a pre-filled backlog."""

from __future__ import annotations
import gc, json, queue, re, signal, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path
import numpy as np
from .common import log, kafka, tag, table, write_result, load, targets_line

NAME = "live"
MODES = ("model", "passthrough")
TARGET_RATIO = 1.2  # serve p99 at most this multiple of the pass-through's p99 at each latency rate


def plan(quick: bool) -> dict:
    "Rounds, events per latency phase and round, throughput phases (label, rate or None, events), backlog, Java records per round."
    if quick:
        return {
            "rounds": 1,
            "latency": {500: 500, 2000: 1000},
            "throughput": [("max", None, 1000)],
            "backlog": 1000,
            "java_records": 200,
        }
    return {
        "rounds": 4,
        "latency": {500: 1000, 2000: 4000},
        "throughput": [("10000/s", 10000, 50000), ("max", None, 50000)],
        "backlog": 50_000,
        "java_records": 1000,
    }


def events_table(n: int, seed: int = 3):
    "`n` complete generated sales rows (every one scorable)."
    from sales_prediction_kafka.data import generate_sales

    return generate_sales(int(n * 1.3) + 10, seed).dropna().head(n).reset_index(drop=True)


def read_timestamps(settings, topic: str, timeout: float = 120) -> dict:
    "key -> record timestamp (ms) for every record of `topic` up to its end now."
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
        ends, out, deadline = c.end_offsets(tps), {}, time.monotonic() + timeout
        while any(c.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {len(out)} records in {timeout} s")
            for recs in c.poll(timeout_ms=500).values():
                for r in recs:
                    out[int(r.key)] = r.timestamp
        return out
    finally:
        c.close()


def total_records(settings, topic: str) -> int:
    "The number of records in `topic` now."
    from kafka import KafkaConsumer, TopicPartition

    # no group: nothing to commit
    c = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
        return sum(c.end_offsets(tps).values())
    finally:
        c.close()


class Worker:
    "A worker subprocess (`python -m module args`, `bench.live_worker` unless told) whose stdout lines arrive on a queue."

    def __init__(
        self, args: list, log_file: Path, module: str = "bench.live_worker", env: dict | None = None
    ):
        self.err = open(log_file, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            cwd=Path(__file__).parent.parent,
            env=env,
        )
        self.lines = queue.Queue()
        threading.Thread(
            target=lambda: [self.lines.put(l.strip()) for l in self.proc.stdout], daemon=True
        ).start()

    def expect(self, prefix: str, timeout: float) -> str:
        "The rest of the next stdout line starting with `prefix`."
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(
                    f"worker printed no {prefix!r} within {timeout:.0f} s; see {self.err.name}"
                )
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def stop(self):
        "SIGTERM the worker and wait for it."
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


# the latency figures of `stats`, in the order the tables show them
LATENCY_COLUMNS = [
    "p50_ms",
    "p99_ms",
    "max_ms",
    "wait_p50_ms",
    "wait_p99_ms",
    "work_p50_ms",
    "work_p99_ms",
]


def stats(ids: list, ev: dict, out: dict, polled: dict | None = None) -> dict:
    "Latency percentiles (ms) and rates of the events `ids`; with `polled`, split into waiting and working."
    got = [i for i in ids if i in out and i in ev]
    if not got:
        return {"events": len(ids), "delivered": 0}
    lat = np.array([out[i] - ev[i] for i in got], np.float64)
    t_in = np.array([ev[i] for i in got])
    t_out = np.array([out[i] for i in got])
    span_in, span = (t_in.max() - t_in.min()) / 1000, (t_out.max() - t_in.min()) / 1000
    return {
        "events": len(ids),
        "delivered": len(got),
        "offered_per_s": len(got) / span_in if span_in else None,
        "throughput_per_s": len(got) / span if span else None,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        **split(got, ev, out, polled or {}),
    }


def split(got: list, ev: dict, out: dict, polled: dict) -> dict:
    "p50/p99 of produce -> polled by the worker (waiting) and polled -> output produced (working), in ms."
    both = [i for i in got if i in polled]
    if not both:
        return {}
    wait = np.array([polled[i] - ev[i] for i in both])
    work = np.array([out[i] - polled[i] for i in both])
    return {
        "wait_p50_ms": float(np.percentile(wait, 50)),
        "wait_p99_ms": float(np.percentile(wait, 99)),
        "work_p50_ms": float(np.percentile(work, 50)),
        "work_p99_ms": float(np.percentile(work, 99)),
    }


_E2E = re.compile(
    r"Avg latency: ([\d.]+) ms\s+Percentiles: 50th = (\d+), 99th = (\d+), 99.9th = (\d+)"
)


def java_floor(settings, records: int, record_size: int) -> dict:
    "Kafka's `EndToEndLatency`: one record at a time, sent with acks=all and read back, on a fresh 1-partition topic (ms)."
    from sales_prediction_kafka.broker import kafka_jars, require_tool

    cmd = [
        require_tool("java"),
        "-Xmx256m",
        "-cp",
        ":".join(map(str, kafka_jars())),
        "org.apache.kafka.tools.EndToEndLatency",
        "--bootstrap-server",
        settings.bootstrap_servers,
        "--topic",
        tag("bench-live-java"),
        "--num-records",
        str(records),
        "--producer-acks",
        "all",
        "--record-size",
        str(record_size),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = _E2E.search(res.stdout)
    if res.returncode or not m:
        raise RuntimeError(
            f"EndToEndLatency failed ({res.returncode}):\n{res.stdout[-1500:]}{res.stderr[-1500:]}"
        )
    avg, p50, p99, p999 = m.groups()
    return {
        "records": records,
        "avg_ms": float(avg),
        "p50_ms": int(p50),
        "p99_ms": int(p99),
        "p99_9_ms": int(p999),
    }


def worker_args(
    mode: str, model_dir: Path, settings, group: str, backlog: str, n: int, t: dict, polled: Path
) -> list:
    "The options of a worker (bench.live_worker, bench.peer_quix) that drains `n` events of `backlog`, then serves the topics of `t`."
    return [
        *("--mode", mode, "--model", str(model_dir)),
        *("--bootstrap-servers", settings.bootstrap_servers, "--group", group),
        *("--backlog-topic", backlog, "--backlog-out", t["backlog_out"], "--backlog-n", str(n)),
        *("--events-topic", t["events"], "--out-topic", t["out"], "--dlq-topic", t["dlq"]),
        *("--polled-file", str(polled)),
    ]


def java_summary(r: dict) -> dict:
    "The Java floor runs of a latency result `r` (its `java` and `record_size`), with their median p50 and p99 (ms)."
    return {
        "runs": r["java"],
        "record_size": r["record_size"],
        "p50_ms": statistics.median(j["p50_ms"] for j in r["java"]),
        "p99_ms": statistics.median(j["p99_ms"] for j in r["java"]),
    }


def start_worker(mode: str, settings, model_dir: Path, df, backlog_n: int, tmp: Path) -> tuple:
    "A `mode` worker that drained a backlog of `backlog_n` events and serves its own live topic; (worker, topics, drain)."
    from sales_prediction_kafka.replay import replay, table_events
    from sales_prediction_kafka.clients import ensure_topic

    t = {
        k: tag(f"bench-live-{mode}-{k}") for k in ("backlog", "backlog_out", "events", "out", "dlq")
    }
    for topic in t.values():
        ensure_topic(settings, topic)
    replay(table_events(df.head(backlog_n), first_id=10**9), settings, t["backlog"], progress=False)
    w = Worker(
        worker_args(
            mode,
            model_dir,
            settings,
            tag(f"bench-{mode}"),
            t["backlog"],
            backlog_n,
            t,
            tmp / f"polled-{mode}.json",
        ),
        tmp / f"worker-{mode}.log",
    )
    drained = json.loads(w.expect("DRAIN", 300))
    w.expect("READY", 120)
    return w, t, {**drained, "per_s": drained["events"] / drained["seconds"]}


def send_phase(
    settings, df, topics: dict, first: int, n: int, rate: int | None, label: str
) -> dict:
    "Replay `n` events with ids from `first` at `rate` to a worker's topic and wait for all its outputs; ids and replay rate."
    from sales_prediction_kafka.replay import replay, table_events

    before = total_records(settings, topics["out"])
    s = replay(
        table_events(df.head(n), first_id=first),
        settings,
        topics["events"],
        rate=rate,
        progress=False,
    )
    deadline = time.monotonic() + 120
    while total_records(settings, topics["out"]) < before + n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topics['events']} {label}: outputs missing after 120 s")
        time.sleep(0.2)
    return {"ids": range(first, first + n), "replay_per_s": s.rate}


def run_all(settings, model_dir: Path, df, p: dict, tmp: Path) -> dict:
    "Start both workers, run the latency rounds (modes alternating, Java floor once a round), then the throughput phases."
    from sales_prediction_kafka.replay import table_events

    workers, sent, java, first = {}, {}, [], 0
    record_size = int(np.mean([len(json.dumps(e).encode()) for e in table_events(df.head(200))]))
    try:
        for m in MODES:
            workers[m] = start_worker(m, settings, model_dir, df, p["backlog"], tmp)
        phases = [(f"{rate}/s", rate, n) for rate, n in p["latency"].items()]
        for r in range(p["rounds"]):
            for label, rate, n in phases:
                for m in MODES if r % 2 == 0 else MODES[::-1]:
                    sent.setdefault((m, label), []).append(
                        send_phase(settings, df, workers[m][1], first, n, rate, label)
                    )
                    first += n
            java.append(java_floor(settings, p["java_records"], record_size))
            log.info(
                "live round %d of %d done; Java floor p99 %d ms",
                r + 1,
                p["rounds"],
                java[-1]["p99_ms"],
            )
        for label, rate, n in p["throughput"]:
            for m in MODES:
                sent[(m, label)] = [send_phase(settings, df, workers[m][1], first, n, rate, label)]
                first += n
    finally:
        for w, *_ in workers.values():
            w.stop()
    return {"workers": workers, "sent": sent, "java": java, "record_size": record_size}


def rows_of(settings, run: dict, tmp: Path) -> list[dict]:
    "One table row per (mode, phase): latency over every round's events, the mean replay rate."
    rows = []
    for m in MODES:
        w, t, _ = run["workers"][m]
        ev, out = read_timestamps(settings, t["events"]), read_timestamps(settings, t["out"])
        f = tmp / f"polled-{m}.json"
        polled = {int(k): v for k, v in json.loads(f.read_text()).items()} if f.exists() else {}
        for (mode, label), sends in run["sent"].items():
            if mode != m:
                continue
            ids = [i for s in sends for i in s["ids"]]
            # not across the gaps
            per_round = statistics.mean(
                stats(s["ids"], ev, out)["throughput_per_s"] or 0 for s in sends
            )
            rows.append(
                {
                    "mode": m,
                    "phase": label,
                    "rounds": len(sends),
                    "replay_per_s": statistics.mean(s["replay_per_s"] for s in sends),
                    **stats(ids, ev, out, polled),
                    "throughput_per_s": per_round,
                }
            )
    return rows


def run(
    quick: bool = False, bootstrap_servers: str | None = None, out: Path | None = None, **_
) -> dict:
    "Run the live-scoring benchmark; write live.json; return its results."
    from sales_prediction_kafka.models import save_model
    from .scoring import fit_model

    p = plan(quick)
    load_before = load()
    df = events_table(
        max(max(n for *_, n in p["throughput"]), max(p["latency"].values()), p["backlog"])
    )
    with (
        kafka(bootstrap_servers) as settings,
        tempfile.TemporaryDirectory(prefix="bench-live-") as tmp,
    ):
        model_dir = save_model(fit_model()[0], Path(tmp) / "model")
        gc.collect()
        gc.freeze()  # Keras' objects from the fit: no second-long full collections stalling the replay's clients
        r = run_all(settings, model_dir, df, p, Path(tmp))
        rows = rows_of(settings, r, Path(tmp))
        metrics = {
            m: json.loads(w.expect("DONE", 10)) if w.proc.returncode == 0 else None
            for m, (w, *_) in r["workers"].items()
        }
    by = {(x["mode"], x["phase"]): x for x in rows}
    cap = {m: r["workers"][m][2]["per_s"] for m in MODES}
    java = java_summary(r)
    java_p99 = java["p99_ms"]
    ratios = {
        "drain_model_vs_passthrough": cap["model"] / cap["passthrough"],
        "max_phase_model_vs_passthrough": by[("model", "max")]["throughput_per_s"]
        / by[("passthrough", "max")]["throughput_per_s"],
    }
    for rate in p["latency"]:
        lab = f"{rate}/s"
        ratios[f"p99_model_vs_passthrough_{lab}"] = (
            by[("model", lab)]["p99_ms"] / by[("passthrough", lab)]["p99_ms"]
        )
        ratios[f"p99_model_vs_java_{lab}"] = by[("model", lab)]["p99_ms"] / max(java_p99, 1)
        ratios[f"p99_passthrough_vs_java_{lab}"] = by[("passthrough", lab)]["p99_ms"] / max(
            java_p99, 1
        )
    targets = {
        f"serve p99 <= {TARGET_RATIO}x pass-through at {rate}/s": ratios[
            f"p99_model_vs_passthrough_{rate}/s"
        ]
        <= TARGET_RATIO
        for rate in p["latency"]
    }
    targets["drain throughput >= 0.5 pass-through"] = ratios["drain_model_vs_passthrough"] >= 0.5
    result = {
        "quick": quick,
        "plan": {**p, "latency": {str(k): v for k, v in p["latency"].items()}},
        "notes": [
            "latency = prediction record timestamp - event record timestamp (both CreateTime, set at send())",
            "latency phases: rounds of (500/s, 2000/s), the two workers alternating, each phase's row pools every round",
            "Java floor: org.apache.kafka.tools.EndToEndLatency once per round (one record at a time, acks=all, linger 0, "
            "fetch.max.wait.ms 0, record size = the mean event's JSON bytes, a fresh 1-partition topic); "
            "whole ms; median of the rounds' percentiles",
            "one worker process per mode (max_records 500, flush then commit per batch, at-least-once); replay in the benchmark process",
            "capacity = backlog drained by the worker, first polled record to last commit",
            "wait = event produce time -> the worker's poll returned it (wall clock); work = that -> output record timestamp (ms resolution, so 0 is possible)",
        ],
        "rows": rows,
        "java_floor": java,
        "capacity_per_s": cap,
        "ratios": ratios,
        "targets": targets,
        "worker_metrics": metrics,
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print(
        "\n## Live scoring (one worker; latency = prediction produce time - event produce time)\n"
    )
    print(
        table(
            rows,
            [
                "mode",
                "phase",
                "rounds",
                "events",
                "delivered",
                "replay_per_s",
                "throughput_per_s",
                *LATENCY_COLUMNS,
            ],
        )
    )
    print(
        f"\nJava EndToEndLatency floor ({len(r['java'])} runs of {p['java_records']} records, {r['record_size']} bytes, acks=all): "
        f"p50 {java['p50_ms']:.0f} ms, p99 {java_p99:.0f} ms (per run: {', '.join(str(j['p99_ms']) for j in r['java'])})"
    )
    for rate in p["latency"]:
        lab = f"{rate}/s"
        print(
            f"p99 at {lab}: serve / pass-through {ratios[f'p99_model_vs_passthrough_{lab}']:.2f} (target <= {TARGET_RATIO}), "
            f"serve / Java floor {ratios[f'p99_model_vs_java_{lab}']:.1f}, pass-through / Java floor {ratios[f'p99_passthrough_vs_java_{lab}']:.1f}"
        )
    print(
        f"capacity (drain {p['backlog']:,} backlog): model {cap['model']:,.0f}/s, pass-through {cap['passthrough']:,.0f}/s, "
        f"ratio {ratios['drain_model_vs_passthrough']:.2f} (target >= 0.5); max-phase ratio {ratios['max_phase_model_vs_passthrough']:.2f}"
    )
    print(targets_line(targets, path))
    return result

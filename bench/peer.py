"""A peer users pick instead: a Quix Streams application (librdkafka through confluent-kafka) doing `serve`'s job, beside
the project's `ScoringWorker` and the pass-through worker of bench/live, and a Quix pass-through, on one broker with the
same replayed events and the same model file. Capacity = a pre-filled backlog drained by a fresh worker process, in
rounds whose side order rotates; latency = prediction produce time - event produce time at a paced rate, in rounds
whose side order rotates, with Kafka's `EndToEndLatency` (Java) once per round as the broker's floor. Beside them, in
a process without TensorFlow, `plan_batch` on batches of one (what a Quix step runs per message) and on serve's
micro-batches."""

from __future__ import annotations
import gc, importlib.util, json, os, statistics, subprocess, sys, tempfile
from pathlib import Path
import numpy as np
from .common import (
    cpu_seconds,
    kafka,
    load,
    log,
    run_worker,
    tag,
    table,
    targets_line,
    write_result,
)
from .live import (
    LATENCY_COLUMNS,
    Worker,
    events_table,
    java_floor,
    java_summary,
    read_timestamps,
    send_phase,
    stats,
    worker_args,
)

NAME = "peer"
# serve and passthrough run bench.live_worker, quix and quix_passthrough bench.peer_quix
SIDES = ("serve", "passthrough", "quix", "quix_passthrough")


def plan(quick: bool) -> dict:
    "Capacity rounds and backlog, latency rounds, rate and events per round, Java records per round."
    if quick:
        return {
            "capacity_rounds": 1,
            "backlog": 2000,
            "rounds": 1,
            "rate": 2000,
            "events": 1000,
            "java_records": 200,
        }
    return {
        "capacity_rounds": 3,
        "backlog": 50_000,
        "rounds": 4,
        "rate": 2000,
        "events": 4000,
        "java_records": 1000,
    }


def quix_env() -> dict:
    "The environment of a `bench.peer_quix` worker: this one if quixstreams is installed here (`make bench`), else $BENCH_QUIX_SITE."
    if importlib.util.find_spec("quixstreams") is None and not os.environ.get("BENCH_QUIX_SITE"):
        raise RuntimeError(
            "quixstreams is not installed: `make bench` (the bench extra), or set BENCH_QUIX_SITE to a "
            "`pip install --target` folder holding it (BENCHMARKS.md section 13)"
        )
    return dict(os.environ)


def start(
    side: str, settings, model_dir: Path, backlog: str, n: int, tmp: Path, drain_only: bool = False
) -> tuple:
    "A `side` worker process that drained `n` events of `backlog` (a new group) and then serves its own live topic; (worker, topics, drain)."
    from sales_prediction_kafka.clients import ensure_topic

    t = {k: tag(f"bench-peer-{side}-{k}") for k in ("backlog_out", "events", "out", "dlq")}
    for topic in t.values():
        ensure_topic(settings, topic)
    mode = "passthrough" if side.endswith("passthrough") else "model"
    group, polled = tag(f"bench-peer-{side}"), tmp / f"polled-{side}.json"
    args = worker_args(mode, model_dir, settings, group, backlog, n, t, polled)
    quix = side.startswith("quix")
    args += ["--drain-only"] if quix and drain_only else []
    log_file = tmp / f"worker-{side}.log"
    w = Worker(args, log_file, "bench.peer_quix", quix_env()) if quix else Worker(args, log_file)
    d = json.loads(w.expect("DRAIN", 300))
    return w, t, {**d, "per_s": d["events"] / d["seconds"]}


def rotated(r: int) -> tuple:
    "The sides in round `r`'s order: each side goes first once every len(SIDES) rounds."
    return SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]


def capacity(settings, model_dir: Path, df, p: dict, tmp: Path) -> dict:
    "Rounds of drains of one pre-filled backlog, a fresh process and group per side and round; side -> drains."
    from sales_prediction_kafka.replay import replay, table_events
    from sales_prediction_kafka.clients import ensure_topic

    backlog = tag("bench-peer-backlog")
    ensure_topic(settings, backlog)
    replay(table_events(df.head(p["backlog"]), first_id=10**9), settings, backlog, progress=False)
    out = {s: [] for s in SIDES}
    for r in range(p["capacity_rounds"]):
        for side in rotated(r):
            w, _, d = start(side, settings, model_dir, backlog, p["backlog"], tmp / "cap", True)
            w.stop()
            out[side].append(d)
            log.info("peer capacity round %d: %s %.0f/s", r + 1, side, d["per_s"])
    return out


def latency(settings, model_dir: Path, df, p: dict, tmp: Path) -> dict:
    "One live worker per side; rounds at the paced rate, the side order rotating, the Java floor once a round."
    from sales_prediction_kafka.replay import replay, table_events
    from sales_prediction_kafka.clients import ensure_topic

    backlog = tag("bench-peer-warm")
    ensure_topic(settings, backlog)
    replay(table_events(df.head(200), first_id=10**9), settings, backlog, progress=False)
    workers, sent, java = {}, {}, []
    record_size = int(np.mean([len(json.dumps(e).encode()) for e in table_events(df.head(200))]))
    try:
        for side in SIDES:
            workers[side] = start(side, settings, model_dir, backlog, 200, tmp)
            w, t, _ = workers[side]
            if not side.startswith("quix"):
                w.expect("READY", 120)
            # Quix: READY at its first record
            send_phase(settings, df, t, 2 * 10**9, 100, p["rate"], "warm-up")
            if side.startswith("quix"):
                w.expect("READY", 10)
        label, n = f"{p['rate']}/s", p["events"]
        cpu = dict.fromkeys(workers, 0.0)  # CPU seconds of each worker during its own turns
        for r in range(p["rounds"]):
            for side in rotated(r):  # the same events, ids included, to each side's own topics
                c0 = cpu_seconds(workers[side][0].proc.pid)
                sent.setdefault(side, []).append(
                    send_phase(settings, df, workers[side][1], r * n, n, p["rate"], label)
                )
                cpu[side] += cpu_seconds(workers[side][0].proc.pid) - c0
            java.append(java_floor(settings, p["java_records"], record_size))
            log.info("peer round %d of %d; Java p99 %d ms", r + 1, p["rounds"], java[-1]["p99_ms"])
    finally:
        for w, *_ in workers.values():
            w.stop()
    metrics = {
        s: json.loads(w.expect("DONE", 10)) if w.proc.returncode == 0 else None
        for s, (w, *_) in workers.items()
    }
    rows = []
    for side, (w, t, _) in workers.items():
        ev, out = read_timestamps(settings, t["events"]), read_timestamps(settings, t["out"])
        f = tmp / f"polled-{side}.json"
        polled = {int(k): v for k, v in json.loads(f.read_text()).items()} if f.exists() else {}
        ids = [i for s in sent[side] for i in s["ids"]]
        rows.append(
            {
                "side": side,
                "rounds": len(sent[side]),
                "replay_per_s": statistics.mean(s["replay_per_s"] for s in sent[side]),
                **stats(ids, ev, out, polled),
                "p50_per_round": [stats(s["ids"], ev, out)["p50_ms"] for s in sent[side]],
                "p99_per_round": [stats(s["ids"], ev, out)["p99_ms"] for s in sent[side]],
                "cpu_us_per_event": 1e6 * cpu[side] / len(ids),
            }
        )
    same = {
        s: same_predictions(settings, workers["serve"][1]["out"], workers[s][1]["out"])
        for s in ("quix",)
    }
    return {
        "rows": rows,
        "java": java,
        "record_size": record_size,
        "metrics": metrics,
        "same": same,
    }


def same_predictions(settings, a: str, b: str) -> dict:
    "How the predictions on topics `a` and `b` compare, by event id: ids in both, the largest difference, header names."
    from sales_prediction_kafka.browse import records

    read = lambda t: {r.key: r for r in records(settings, t, "read_uncommitted")}
    ra, rb = read(a), read(b)
    both = sorted(set(ra) & set(rb))
    diff = max(
        (
            abs(
                json.loads(ra[k].value)["predicted_sales"]
                - json.loads(rb[k].value)["predicted_sales"]
            )
            for k in both
        ),
        default=None,
    )
    names = lambda r: sorted(h for h, _ in r.headers or [])
    return {
        "ids": [len(ra), len(rb), len(both)],
        "max_abs_diff": diff,
        "same_headers": all(names(ra[k]) == names(rb[k]) for k in both),
        "same_fields": all(
            json.loads(ra[k].value).keys() == json.loads(rb[k].value).keys() for k in both
        ),
    }


def run(
    quick: bool = False, bootstrap_servers: str | None = None, out: Path | None = None, **_
) -> dict:
    "Run the peer benchmark; write peer.json; return its results."
    from sales_prediction_kafka.models import save_model
    from .scoring import fit_model

    quix_env()  # fail before the broker starts if quixstreams is missing
    p = plan(quick)
    load_before = load()
    df = events_table(max(p["backlog"], p["events"]))
    with (
        kafka(bootstrap_servers) as settings,
        tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp,
    ):
        tmp = Path(tmp)
        (tmp / "cap").mkdir()
        model_dir = save_model(fit_model()[0], tmp / "model")
        gc.collect()
        gc.freeze()  # Keras' objects from the fit (see bench/live)
        # a process without TensorFlow, as the workers
        steps = run_worker("peer_quix", "--step-costs", model_dir)
        cap = capacity(settings, model_dir, df, p, tmp)
        lat = latency(settings, model_dir, df, p, tmp)
    by = {r["side"]: r for r in lat["rows"]}
    drain = {
        s: {
            "per_s_median": statistics.median(d["per_s"] for d in ds),
            "per_s": [d["per_s"] for d in ds],
            "runs": ds,
        }
        for s, ds in cap.items()
    }
    java = java_summary(lat)
    java_p99 = java["p99_ms"]
    dr = lambda a, b: drain[a]["per_s_median"] / drain[b]["per_s_median"]
    pr = lambda a, b: by[a]["p99_ms"] / by[b]["p99_ms"]
    ratios = {
        "drain_serve_vs_quix": dr("serve", "quix"),
        "drain_passthrough_vs_quix_passthrough": dr("passthrough", "quix_passthrough"),
        "drain_serve_vs_passthrough": dr("serve", "passthrough"),
        "drain_quix_vs_quix_passthrough": dr("quix", "quix_passthrough"),
        "p99_serve_vs_quix": pr("serve", "quix"),
        "p99_passthrough_vs_quix_passthrough": pr("passthrough", "quix_passthrough"),
        "p50_serve_vs_quix": by["serve"]["p50_ms"] / by["quix"]["p50_ms"],
        **{f"p99_{s}_vs_java": by[s]["p99_ms"] / max(java_p99, 1) for s in SIDES},
        "step_batch_1_vs_batch_20": steps["batch_1"]["us_per_event"]
        / steps["batch_20"]["us_per_event"],
    }
    targets = {
        "serve / Quix drain throughput >= 1.0": ratios["drain_serve_vs_quix"] >= 1.0,
        f"serve / Quix p99 at {p['rate']}/s <= 1.0": ratios["p99_serve_vs_quix"] <= 1.0,
    }
    result = {
        "quick": quick,
        "plan": p,
        "notes": [
            "sides: serve = the project's ScoringWorker (kafka-python; micro-batches of <= 500, flush then async "
            "commit per batch); passthrough = the same worker forwarding each event (bench/live_worker); quix = a "
            "quixstreams Application (librdkafka) running plan_batch on each message alone, its default 5 s "
            "commit interval, at-least-once; quix_passthrough = the same Application forwarding each event",
            "the same model file (a net, model.npz read with numpy), the same events, the same broker; serve's "
            "producer settings on every side (zstd, linger 5 ms, acks=all, idempotence)",
            "capacity = a fresh worker process and consumer group drains the same pre-filled backlog: serve from the "
            "first polled record to the last commit; Quix from the first record handed to the dataframe to the end "
            "of its final checkpoint (flush, commit) and close; rounds rotate the side order",
            "latency = prediction record timestamp - event record timestamp (both CreateTime; Quix's output "
            "timestamp set to the wall clock at produce); rounds rotate the side order; wait = produce -> handed to "
            "the worker's code, work = that -> output produced",
            "Java floor: org.apache.kafka.tools.EndToEndLatency once per round, as bench/live",
            "cpu_us_per_event: the worker process's user+system CPU (all threads) during its own turns of the "
            "latency rounds (from the replay's start to its last output), per event",
            "step costs: plan_batch in a fresh process without TensorFlow (bench.peer_quix --step-costs) on 500 events, interleaved",
        ],
        "capacity": drain,
        "rows": lat["rows"],
        "java_floor": java,
        "step_costs": steps,
        "serve_vs_quix_predictions": lat["same"]["quix"],
        "ratios": ratios,
        "targets": targets,
        "worker_metrics": lat["metrics"],
        "versions": versions(),
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print("\n## Peer: serve beside a Quix Streams application (librdkafka)\n")
    print(
        table(
            [
                {
                    "side": s,
                    **{k: drain[s][k] for k in ("per_s_median",)},
                    "runs": drain[s]["per_s"],
                }
                for s in SIDES
            ],
            ["side", "per_s_median", "runs"],
        )
    )
    print()
    print(
        table(
            lat["rows"],
            [
                "side",
                "rounds",
                "events",
                "delivered",
                "replay_per_s",
                *LATENCY_COLUMNS,
                "cpu_us_per_event",
            ],
        )
    )
    for r in lat["rows"]:
        print(f"{r['side']}: p50 / p99 per round {r['p50_per_round']} / {r['p99_per_round']} ms")
    print(
        f"\nJava EndToEndLatency floor: p50 {java['p50_ms']:.0f} ms, p99 {java_p99:.0f} ms "
        f"(per run: {', '.join(str(j['p99_ms']) for j in lat['java'])})"
    )
    print(
        "plan_batch per event: "
        + ", ".join(f"{k} {v['us_per_event']:.1f} us" for k, v in steps.items())
    )
    print(", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print(f"serve's and Quix's predictions of the same events: {lat['same']['quix']}")
    print(targets_line(targets, path))
    return result


def versions() -> dict:
    "quixstreams, confluent-kafka and librdkafka as a Quix worker imports them."
    code = (
        "import json, bench.peer_quix as q; qs = q.quixstreams(); import confluent_kafka as ck; "
        "print(json.dumps({'quixstreams': qs.__version__, 'confluent-kafka': ck.__version__, "
        "'librdkafka': ck.libversion()[0], 'from': qs.__file__}))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=quix_env(),
        cwd=Path(__file__).parent.parent,
    )
    return json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {}

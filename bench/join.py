"""The join of late actuals: predictions and their actuals sent at fixed rates (each actual `lag` pairs after its
prediction) through one `sales-kafka join` process; the join's latency from the actual's arrival (its record timestamp)
to the complete record (the joined record's timestamp), beside Kafka's own `EndToEndLatency` (Java) as the broker's floor.
Rates run in rounds, the Java floor once per round, so a load burst on this shared machine hits both alike."""

from __future__ import annotations
import json, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
from .common import kafka, load, tag, table, targets_line, write_result
from .live import java_floor, read_timestamps

NAME = "join"
LAG = 100  # each actual follows its prediction by this many pairs


def plan(quick: bool) -> dict:
    "Rounds, pairs per rate and round, Java records per round."
    if quick:
        return {"rounds": 1, "rates": {500: 500, 2000: 1000}, "java_records": 200}
    return {"rounds": 3, "rates": {500: 2000, 2000: 8000}, "java_records": 1000}


def start_joiner(settings, topics, tmp: Path) -> subprocess.Popen:
    "A `sales-kafka join` process (at-least-once) on `topics`; waits until it owns every partition."
    metrics = tmp / "join.json"
    cmd = [
        str(Path(sys.executable).parent / "sales-kafka"),
        "join",
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--group-id",
        tag("bench-join"),
        "--predictions-topic",
        topics.predictions,
        "--actuals-topic",
        topics.actuals,
        "--joined-topic",
        topics.joined,
        "--state-topic",
        topics.state,
        "--dead-letter-topic",
        topics.dead_letter,
        "--join-window",
        "1h",
        "--metrics-file",
        str(metrics),
        "--metrics-every",
        "0.5",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(tmp / "join.log", "ab"))
    deadline = time.monotonic() + 120
    while (
        len(json.loads(metrics.read_text()).get("partitions", [])) < 3 if metrics.exists() else True
    ):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the joiner did not start; see {tmp / 'join.log'}")
        time.sleep(0.2)
    return proc


def send_pairs(settings, topics, first: int, n: int, rate: float):
    "Pairs first..first+n-1 paced to `rate`: prediction i, and the actual of i - LAG."
    from sales_prediction_kafka.join import actual_message
    from sales_prediction_kafka.clients import producer

    p = producer(settings, key_serializer=None, value_serializer=None, linger_ms=0)
    t0 = time.monotonic()
    for k in range(n + LAG):
        if (ahead := t0 + k / rate - time.monotonic()) > 0:
            time.sleep(ahead)
        if k < n:
            i = first + k
            p.send(
                topics.predictions,
                key=str(i).encode(),
                headers=[("model_version", b"bench")],
                value=json.dumps(
                    {
                        "prediction_index": i,
                        "predicted_sales": 100.0,
                        "actual_sales": None,
                        "error": None,
                    }
                ).encode(),
            )
        if k >= LAG:
            i = first + k - LAG
            p.send(
                topics.actuals,
                key=str(i).encode(),
                value=json.dumps(actual_message(i, 101.0)).encode(),
            )
    p.flush()
    p.close()


def wait_joined(settings, topic: str, n: int, timeout: float = 300) -> dict:
    "key -> joined record timestamp, once `n` records are on `topic`."
    deadline = time.monotonic() + timeout
    while len(got := read_timestamps(settings, topic)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(got)} of {n} pairs joined in {timeout} s")
        time.sleep(0.5)
    return got


def run(
    quick: bool = False, bootstrap_servers: str | None = None, out: Path | None = None, **_
) -> dict:
    "Run the join benchmark; write join.json; return its results."
    from sales_prediction_kafka.join import JoinTopics, ensure_join_topics

    p, load_before = plan(quick), load()
    latencies, java, first = {r: [] for r in p["rates"]}, [], 0
    with (
        kafka(bootstrap_servers) as settings,
        tempfile.TemporaryDirectory(prefix="bench-join-") as tmp,
    ):
        t = JoinTopics(*(tag(f"bench-join-{x}") for x in ("pred", "act", "joined", "state", "dlq")))
        ensure_join_topics(settings, t, 3)
        proc = start_joiner(settings, t, Path(tmp))
        try:
            for _ in range(p["rounds"]):
                for rate, n in p["rates"].items():
                    send_pairs(settings, t, first, n, rate)
                    joined, actual = (
                        wait_joined(settings, t.joined, first + n),
                        read_timestamps(settings, t.actuals),
                    )
                    latencies[rate] += [joined[i] - actual[i] for i in range(first, first + n)]
                    first += n
                java.append(java_floor(settings, p["java_records"], 60))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        final = json.loads(proc.stdout.read().decode().strip().splitlines()[-1])
    java_p99 = statistics.median(j["p99_ms"] for j in java)
    rows = [
        {
            "rate": f"{r}/s",
            "pairs": len(ls),
            "p50_ms": float(np.percentile(ls, 50)),
            "p99_ms": float(np.percentile(ls, 99)),
            "max_ms": float(max(ls)),
            "p99_vs_java": float(np.percentile(ls, 99)) / max(java_p99, 1),
        }
        for r, ls in latencies.items()
    ]
    targets = {
        "every pair joined once, none waiting": final["joined"] == first
        and final["waiting_predictions"] == 0
        and final["waiting_actuals"] == 0
    }
    result = {
        "quick": quick,
        "plan": {**p, "rates": {str(k): v for k, v in p["rates"].items()}},
        "lag_pairs": LAG,
        "notes": [
            "latency = joined record timestamp - actual record timestamp (both CreateTime, set at send(), one machine)",
            "one `sales-kafka join` process, at-least-once (send, flush, commit per batch), 3 partitions",
            "Java floor: org.apache.kafka.tools.EndToEndLatency once per round (one record at a time, acks=all), "
            "60-byte records, median of the rounds' p99",
        ],
        "rows": rows,
        "java_floor": {"runs": java, "p99_ms": java_p99},
        "joiner": final,
        "targets": targets,
        "ratios": {f"p99_join_vs_java_{r['rate']}": r["p99_vs_java"] for r in rows},
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print("\n## The join (latency = complete record's time - the actual's arrival)\n")
    print(table(rows, ["rate", "pairs", "p50_ms", "p99_ms", "max_ms", "p99_vs_java"]))
    print(
        f"\nJava EndToEndLatency floor ({len(java)} runs of {p['java_records']} records): p99 {java_p99:.0f} ms "
        f"(per run: {', '.join(str(j['p99_ms']) for j in java)})"
    )
    print(targets_line(targets, path))
    return result

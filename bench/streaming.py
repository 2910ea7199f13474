"""Streaming throughput: the project's `stream_predictions` vs (a) a bare kafka-python `KafkaProducer` on its default
settings, in the project's environment and (a') as `pip install kafka-python` alone gives it, and (b) Kafka's Java
`ProducerPerformance`; all send the same JSON payloads with acks=all and idempotence to the same broker."""

from __future__ import annotations
import json, re, statistics, subprocess, sys, tempfile, time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
import numpy as np
from .common import log, kafka, tag, table, write_result, load

NAME = "streaming"
ROOT = Path(__file__).parent.parent


def make_records(n: int, seed: int = 42) -> list[dict]:
    "`n` valid prediction messages built from generated sales (the payloads every side sends)."
    from sales_prediction_kafka.data import generate_sales
    from sales_prediction_kafka.message import prediction_records

    actual = generate_sales(n, seed)["Sales"].to_numpy()
    predicted = np.round(actual * np.random.default_rng(seed).normal(1.0, 0.1, n), 2)
    return prediction_records(range(n), actual, predicted)


def headers(run_id: str, model_version: str) -> list[tuple[str, bytes]]:
    "The headers `stream_predictions` sends: run id, model version, produce time."
    meta = {
        "run_id": run_id,
        "model_version": model_version,
        "produced_at": datetime.now(timezone.utc).isoformat(),
    }
    return [(k, v.encode()) for k, v in meta.items()]


def run_project(records: list, settings, topic: str) -> dict:
    "The project's stream step, timed around the whole call (validation, topic check, connect, send, acks, close)."
    from sales_prediction_kafka.stream import stream_predictions

    t0 = time.perf_counter()
    s = stream_predictions(
        records, settings, topic, run_id="bench", model_version="bench", progress=False
    )
    wall = time.perf_counter() - t0
    if s.total != len(records):
        raise RuntimeError(f"project acknowledged {s.total} of {len(records)} records")
    return {"call_s": wall, "send_ack_s": s.elapsed}


def run_bare(records: list, settings, topic: str) -> dict:
    "A bare `KafkaProducer(bootstrap_servers=...)` (kafka-python's defaults) sending the same keys, JSON values and headers."
    from kafka import KafkaProducer
    from kafka.record.util import crc32c_c

    hdrs = headers("bench", "bench")
    t0 = time.perf_counter()
    p = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    try:
        t1 = time.perf_counter()
        futures = [
            p.send(
                topic,
                key=str(r["prediction_index"]).encode(),
                value=json.dumps(r).encode(),
                headers=hdrs,
            )
            for r in records
        ]
        p.flush(120)
        t2 = time.perf_counter()
        guarantees = {
            "acks": p.config["acks"],
            "enable_idempotence": p.config["enable_idempotence"],
        }
    finally:
        p.close()
    wall = time.perf_counter() - t0
    bad = sum(not f.succeeded() for f in futures)
    if bad:
        raise RuntimeError(f"bare producer: {bad} records not acknowledged")
    if guarantees != {"acks": -1, "enable_idempotence": True}:
        raise RuntimeError(f"bare producer defaults changed: {guarantees}")
    return {"call_s": wall, "send_ack_s": t2 - t1, "c_crc32c": crc32c_c is not None}


def run_bare_pip(records: list, settings, topic: str) -> dict:
    "`run_bare` in a child process that cannot import `crc32c`: kafka-python as installed alone (pure-Python CRC-32C)."
    code = (
        "import json, sys; sys.modules['crc32c'] = None\n"
        "from bench.streaming import make_records, run_bare\n"
        "from sales_prediction_kafka.config import KafkaSettings\n"
        "n, servers, topic = json.loads(sys.argv[1])\n"
        "print(json.dumps(run_bare(make_records(n), KafkaSettings(bootstrap_servers=servers), topic)))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps([len(records), settings.bootstrap_servers, topic])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode:
        raise RuntimeError(f"bare (pip) side failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["c_crc32c"]:
        raise RuntimeError("bare (pip) side used the C CRC-32C")
    return out


_PERF = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max latency"
)


def run_java(records: list, settings, topic: str, payload_file: Path) -> dict:
    "Kafka's `ProducerPerformance` with the same JSON values (from a payload file), acks=all and idempotence."
    from sales_prediction_kafka.broker import kafka_jars, require_tool

    cp = ":".join(map(str, kafka_jars()))
    cmd = [
        require_tool("java"),
        "-Xmx512m",
        "-cp",
        cp,
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(len(records)),
        "--throughput",
        "-1",
        "--payload-file",
        str(payload_file),
        "--bootstrap-server",
        settings.bootstrap_servers,
        "--command-property",
        "acks=all",
        "enable.idempotence=true",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = [x for x in _PERF.finditer(res.stdout)]
    if res.returncode or not m:
        raise RuntimeError(
            f"ProducerPerformance failed ({res.returncode}):\n{res.stdout[-1500:]}{res.stderr[-1500:]}"
        )
    n, rate, mb, avg, mx = m[-1].groups()
    return {
        "records": int(n),
        "rate": float(rate),
        "mb_per_s": float(mb),
        "avg_latency_ms": float(avg),
        "max_latency_ms": float(mx),
    }


# the Python sides, interleaved per repeat
SIDES = {"project": run_project, "bare": run_bare, "bare_pip": run_bare_pip}


def run(
    quick: bool = False,
    bootstrap_servers: str | None = None,
    out: Path | None = None,
    n: int | None = None,
    reps: int | None = None,
) -> dict:
    "Run the streaming benchmark; write streaming.json; return its results."
    from sales_prediction_kafka.config import producer_settings
    from sales_prediction_kafka.clients import ensure_topic

    n, reps = n or (2_000 if quick else 100_000), reps or (1 if quick else 5)
    records = make_records(n)
    values = [json.dumps(r).encode() for r in records]
    sizes = {
        "value_bytes_mean": statistics.fmean(map(len, values)),
        "key_bytes_mean": statistics.fmean(len(str(r["prediction_index"])) for r in records),
        "header_bytes": sum(len(k) + len(v) for k, v in headers("bench", "bench")),
    }
    load_before, runs = load(), {side: [] for side in (*SIDES, "java")}
    with kafka(bootstrap_servers) as settings, tempfile.TemporaryDirectory() as tmp:
        payload_file = Path(tmp) / "payloads.txt"
        payload_file.write_bytes(b"\n".join(values))
        for i in range(reps):
            # each side first once in 3 repeats
            names = list(SIDES)[i % len(SIDES) :] + list(SIDES)[: i % len(SIDES)]
            for side in names:
                topic = tag(f"bench-stream-{side}")
                if side != "project":
                    # the project creates its topic inside the timed call
                    ensure_topic(settings, topic)
                runs[side].append(SIDES[side](records, settings, topic))
                log.info("streaming rep %d %s: %s", i + 1, side, runs[side][-1])
            topic = tag("bench-stream-java")
            ensure_topic(settings, topic)
            runs["java"].append(run_java(records, settings, topic, payload_file))
            log.info("streaming rep %d java: %s", i + 1, runs["java"][-1])
    med = lambda side, k: statistics.median(r[k] for r in runs[side])
    rates = {f"{side}_{k}": n / med(side, f"{k}_s") for side in SIDES for k in ("call", "send_ack")}
    rates["java"] = statistics.median(r["rate"] for r in runs["java"])
    rate = lambda side, k, i: (
        runs[side][i]["rate"] if side == "java" else n / runs[side][i][f"{k}_s"]
    )
    # same repeat, same load
    paired = lambda a, b, k: statistics.median(rate(a, k, i) / rate(b, k, i) for i in range(reps))
    ratios = {
        "project_vs_bare_call": paired("project", "bare", "call"),
        "project_vs_bare_send_ack": paired("project", "bare", "send_ack"),
        "project_vs_bare_pip_call": paired("project", "bare_pip", "call"),
        "project_vs_bare_pip_send_ack": paired("project", "bare_pip", "send_ack"),
        "project_vs_java_call": paired("project", "java", "call"),
        "project_vs_java_send_ack": paired("project", "java", "send_ack"),
        "bare_vs_java": paired("bare", "java", "send_ack"),
    }
    tuning = asdict(producer_settings())
    result = {
        "quick": quick,
        "records": n,
        "repeats": reps,
        "payload": sizes,
        "acks": "all",
        "idempotence": True,
        "configs": {
            "project": f"stream_predictions: {tuning}, acks=all, idempotent, key=prediction_index, JSON value, 3 headers",
            "bare": "KafkaProducer(bootstrap_servers=...): kafka-python defaults (acks=all and idempotence are its defaults, "
            "linger_ms=0, batch_size=16384, no compression), same keys, values, headers; the project's environment (C CRC-32C)",
            "bare_pip": "the bare side in a child process that cannot import crc32c: kafka-python as `pip install kafka-python` "
            "alone gives it (pure-Python CRC-32C)",
            "java": "ProducerPerformance --payload-file (same JSON values, no keys or headers), acks=all, enable.idempotence=true, "
            "Java client defaults (linger.ms=5, batch.size=16384, no compression)",
        },
        "producer_settings": tuning,
        "rates_per_s": rates,
        "ratios": ratios,
        "targets": {
            "project_vs_bare_call >= 2.0": ratios["project_vs_bare_call"] >= 2.0,
            "project_vs_java_call >= 0.25": ratios["project_vs_java_call"] >= 0.25,
        },
        "runs": runs,
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print(f"\n## Streaming throughput ({n:,} records, acks=all, idempotent; median of {reps})\n")
    print(
        table(
            [
                {
                    "side": "project stream_predictions (whole call)",
                    "records/s": rates["project_call"],
                },
                {
                    "side": "project stream_predictions (send->ack)",
                    "records/s": rates["project_send_ack"],
                },
                {
                    "side": "(a) bare kafka-python defaults (connect->close)",
                    "records/s": rates["bare_call"],
                },
                {
                    "side": "(a) bare kafka-python defaults (send->ack)",
                    "records/s": rates["bare_send_ack"],
                },
                {
                    "side": "(a') bare, kafka-python alone, pure-Python CRC (connect->close)",
                    "records/s": rates["bare_pip_call"],
                },
                {
                    "side": "(a') bare, kafka-python alone, pure-Python CRC (send->ack)",
                    "records/s": rates["bare_pip_send_ack"],
                },
                {"side": "(b) Java ProducerPerformance", "records/s": rates["java"]},
            ]
        )
    )
    print(
        f"\nratios, median over repeats of each repeat's ratio: project/(a): {ratios['project_vs_bare_call']:.2f} whole call, {ratios['project_vs_bare_send_ack']:.2f} send->ack "
        f"(target >= 2.0); project/(a'): {ratios['project_vs_bare_pip_call']:.2f}, {ratios['project_vs_bare_pip_send_ack']:.2f}; "
        f"project/(b): {ratios['project_vs_java_call']:.2f} whole call, {ratios['project_vs_java_send_ack']:.2f} send->ack "
        f"(target >= 0.25); (a)/(b): {ratios['bare_vs_java']:.2f}; load {load_before[0]:.1f} -> {result['load_after'][0]:.1f}   -> {path}"
    )
    return result

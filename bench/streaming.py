"""Streaming throughput: the project's `stream_predictions` vs (a) a bare kafka-python producer and (b) Kafka's Java
`ProducerPerformance`, all sending the same JSON payloads with acks=all and idempotence to the same broker."""
from __future__ import annotations
import json, re, statistics, subprocess, tempfile, time
from datetime import datetime, timezone
from pathlib import Path
import numpy as np
from .common import log, kafka, tag, table, write_result, load

NAME = "streaming"


def make_records(n:int, seed:int=42) -> list[dict]:
    "`n` valid prediction messages built from generated sales (the payloads every side sends)."
    from sales_prediction_kafka.data import generate_sales
    from sales_prediction_kafka.stream import prediction_records
    actual = generate_sales(n, seed)["Sales"].to_numpy()
    predicted = np.round(actual * np.random.default_rng(seed).normal(1.0, 0.1, n), 2)
    return prediction_records(range(n), actual, predicted)


def headers(run_id:str, model_version:str) -> list[tuple[str, bytes]]:
    "The headers `stream_predictions` sends: run id, model version, produce time."
    meta = {"run_id": run_id, "model_version": model_version, "produced_at": datetime.now(timezone.utc).isoformat()}
    return [(k, v.encode()) for k, v in meta.items()]


def run_project(records:list, settings, topic:str) -> dict:
    "The project's stream step, timed around the whole call (validation, topic check, connect, send, acks, close)."
    from sales_prediction_kafka.stream import stream_predictions
    t0 = time.perf_counter()
    s = stream_predictions(records, settings, topic, run_id="bench", model_version="bench", progress=False)
    wall = time.perf_counter() - t0
    if s.total != len(records): raise RuntimeError(f"project acknowledged {s.total} of {len(records)} records")
    return {"call_s": wall, "send_ack_s": s.elapsed}


def run_bare(records:list, settings, topic:str) -> dict:
    "A bare KafkaProducer (acks=all, idempotent) sending the same keys, JSON values and headers; timed the same way."
    from kafka import KafkaProducer
    hdrs = headers("bench", "bench")
    t0 = time.perf_counter()
    p = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    try:
        t1 = time.perf_counter()
        futures = [p.send(topic, key=str(r["prediction_index"]).encode(), value=json.dumps(r).encode(), headers=hdrs) for r in records]
        p.flush(120)
        t2 = time.perf_counter()
    finally: p.close()
    wall = time.perf_counter() - t0
    bad = sum(not f.succeeded() for f in futures)
    if bad: raise RuntimeError(f"bare producer: {bad} records not acknowledged")
    return {"call_s": wall, "send_ack_s": t2 - t1}


_PERF = re.compile(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max latency")

def run_java(records:list, settings, topic:str, payload_file:Path) -> dict:
    "Kafka's `ProducerPerformance` with the same JSON values (from a payload file), acks=all and idempotence."
    from sales_prediction_kafka.broker import kafka_jars, require_tool
    cp = ":".join(map(str, kafka_jars()))
    cmd = [require_tool("java"), "-Xmx512m", "-cp", cp, "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
           "--num-records", str(len(records)), "--throughput", "-1", "--payload-file", str(payload_file),
           "--bootstrap-server", settings.bootstrap_servers, "--command-property", "acks=all", "enable.idempotence=true"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = [x for x in _PERF.finditer(res.stdout)]
    if res.returncode or not m: raise RuntimeError(f"ProducerPerformance failed ({res.returncode}):\n{res.stdout[-1500:]}{res.stderr[-1500:]}")
    n, rate, mb, avg, mx = m[-1].groups()
    return {"records": int(n), "rate": float(rate), "mb_per_s": float(mb), "avg_latency_ms": float(avg), "max_latency_ms": float(mx)}


def run(quick:bool=False, bootstrap_servers:str|None=None, out:Path|None=None, n:int|None=None, reps:int|None=None) -> dict:
    "Run the streaming benchmark; write streaming.json; return its results."
    from sales_prediction_kafka.stream import ensure_topic
    n, reps = n or (2_000 if quick else 100_000), reps or (1 if quick else 3)
    records = make_records(n)
    values = [json.dumps(r).encode() for r in records]
    sizes = {"value_bytes_mean": statistics.fmean(map(len, values)),
             "key_bytes_mean": statistics.fmean(len(str(r["prediction_index"])) for r in records),
             "header_bytes": sum(len(k) + len(v) for k, v in headers("bench", "bench"))}
    load_before, runs = load(), {"project": [], "bare": [], "java": []}
    with kafka(bootstrap_servers) as settings, tempfile.TemporaryDirectory() as tmp:
        payload_file = Path(tmp)/"payloads.txt"
        payload_file.write_bytes(b"\n".join(values))
        for i in range(reps):
            order = [("project", run_project), ("bare", run_bare)] if i % 2 == 0 else [("bare", run_bare), ("project", run_project)]
            for side, f in order:
                topic = tag(f"bench-stream-{side}")
                if side == "bare": ensure_topic(settings, topic)  # the project creates its topic inside the timed call
                runs[side].append(f(records, settings, topic))
                log.info("streaming rep %d %s: %s", i + 1, side, runs[side][-1])
            topic = tag("bench-stream-java"); ensure_topic(settings, topic)
            runs["java"].append(run_java(records, settings, topic, payload_file))
            log.info("streaming rep %d java: %s", i + 1, runs["java"][-1])
    med = lambda side, k: statistics.median(r[k] for r in runs[side])
    rates = {"project_call": n / med("project", "call_s"), "project_send_ack": n / med("project", "send_ack_s"),
             "bare_call": n / med("bare", "call_s"), "bare_send_ack": n / med("bare", "send_ack_s"),
             "java": statistics.median(r["rate"] for r in runs["java"])}
    ratios = {"project_vs_bare_call": rates["project_call"] / rates["bare_call"],
              "project_vs_bare_send_ack": rates["project_send_ack"] / rates["bare_send_ack"],
              "bare_vs_java": rates["bare_send_ack"] / rates["java"]}
    result = {"quick": quick, "records": n, "repeats": reps, "payload": sizes, "acks": "all", "idempotence": True,
              "configs": {"project": "stream_predictions: kafka-python defaults (linger_ms=0, batch_size=16384), acks=all, idempotent, key=prediction_index, JSON value, 3 headers",
                          "bare": "KafkaProducer(acks='all', enable_idempotence=True), same keys, values, headers",
                          "java": "ProducerPerformance --payload-file (same JSON values, no keys or headers), acks=all, enable.idempotence=true, Java client defaults (linger.ms=5, batch.size=16384)"},
              "rates_per_s": rates, "ratios": ratios,
              "targets": {"project_vs_bare_call >= 0.9": ratios["project_vs_bare_call"] >= 0.9},
              "runs": runs, "load_before": load_before, "load_after": load()}
    path = write_result(NAME, result, out)
    print(f"\n## Streaming throughput ({n:,} records, acks=all, idempotent; median of {reps})\n")
    print(table([{"side": "project stream_predictions (whole call)", "records/s": rates["project_call"]},
                 {"side": "project stream_predictions (send->ack)", "records/s": rates["project_send_ack"]},
                 {"side": "(a) bare kafka-python (connect->close)", "records/s": rates["bare_call"]},
                 {"side": "(a) bare kafka-python (send->ack)", "records/s": rates["bare_send_ack"]},
                 {"side": "(b) Java ProducerPerformance", "records/s": rates["java"]}]))
    print(f"\nproject/(a): {ratios['project_vs_bare_call']:.2f} whole call, {ratios['project_vs_bare_send_ack']:.2f} send->ack "
          f"(target >= 0.9); (a)/(b): {ratios['bare_vs_java']:.2f}   -> {path}")
    return result

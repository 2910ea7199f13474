"""Live scoring: events replayed at fixed rates and as fast as possible through one serve worker (a subprocess), end-to-end
latency from the event's produce time to the prediction's produce time (both Kafka record timestamps), and throughput;
the same for a pass-through worker with no model. Capacity is also measured by draining a pre-filled backlog."""
from __future__ import annotations
import json, queue, signal, subprocess, sys, tempfile, threading, time
from pathlib import Path
import numpy as np
from .common import log, kafka, tag, table, write_result, load

NAME = "live"
MODES = ("model", "passthrough")


def phases(quick:bool) -> list[tuple]:
    "(label, rate or None, events) per phase."
    if quick: return [("500/s", 500, 500), ("2000/s", 2000, 1000), ("max", None, 1000)]
    return [("500/s", 500, 4000), ("2000/s", 2000, 16000), ("10000/s", 10000, 50000), ("max", None, 50000)]


def events_table(n:int, seed:int=3):
    "`n` complete generated sales rows (every one scorable)."
    from sales_prediction_kafka.data import generate_sales
    return generate_sales(int(n * 1.3) + 10, seed).dropna().head(n).reset_index(drop=True)


def read_timestamps(settings, topic:str, timeout:float=120) -> dict:
    "key -> record timestamp (ms) for every record of `topic` up to its end now."
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False, max_poll_records=5000)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps); c.seek_to_beginning(*tps)
        ends, out, deadline = c.end_offsets(tps), {}, time.monotonic() + timeout
        while any(c.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline: raise TimeoutError(f"reading {topic}: {len(out)} records in {timeout} s")
            for recs in c.poll(timeout_ms=500).values():
                for r in recs: out[int(r.key)] = r.timestamp
        return out
    finally: c.close()


def total_records(settings, topic:str) -> int:
    "The number of records in `topic` now."
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
        return sum(c.end_offsets(tps).values())
    finally: c.close()


class Worker:
    "A `bench.live_worker` subprocess whose stdout lines arrive on a queue."
    def __init__(self, args:list, log_file:Path):
        self.err = open(log_file, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.live_worker", *args], stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, cwd=Path(__file__).parent.parent)
        self.lines = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(l.strip()) for l in self.proc.stdout], daemon=True).start()

    def expect(self, prefix:str, timeout:float) -> str:
        "The rest of the next stdout line starting with `prefix`."
        deadline = time.monotonic() + timeout
        while True:
            try: line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"worker printed no {prefix!r} within {timeout:.0f} s; see {self.err.name}")
            if line.startswith(prefix): return line[len(prefix):].strip()

    def stop(self):
        "SIGTERM the worker and wait for it."
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.err.close()


def stats(ids:range, ev:dict, out:dict, polled:dict|None=None) -> dict:
    "Latency percentiles (ms) and rates of the events `ids`; with `polled`, split into waiting and working."
    got = [i for i in ids if i in out and i in ev]
    if not got: return {"events": len(ids), "delivered": 0}
    lat = np.array([out[i] - ev[i] for i in got], np.float64)
    t_in = np.array([ev[i] for i in got]); t_out = np.array([out[i] for i in got])
    span_in, span = (t_in.max() - t_in.min()) / 1000, (t_out.max() - t_in.min()) / 1000
    return {"events": len(ids), "delivered": len(got), "offered_per_s": len(got) / span_in if span_in else None,
            "throughput_per_s": len(got) / span if span else None, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()), **split(got, ev, out, polled or {})}


def split(got:list, ev:dict, out:dict, polled:dict) -> dict:
    "p50/p99 of produce -> polled by the worker (waiting) and polled -> output produced (working), in ms."
    both = [i for i in got if i in polled]
    if not both: return {}
    wait = np.array([polled[i] - ev[i] for i in both]); work = np.array([out[i] - polled[i] for i in both])
    return {"wait_p50_ms": float(np.percentile(wait, 50)), "wait_p99_ms": float(np.percentile(wait, 99)),
            "work_p50_ms": float(np.percentile(work, 50)), "work_p99_ms": float(np.percentile(work, 99))}


def run_mode(mode:str, settings, model_dir:Path, df, plan:list, backlog_n:int, tmp:Path) -> dict:
    "Drain a backlog, then replay each phase, through one worker of `mode`; its results."
    from sales_prediction_kafka.replay import replay, table_events
    from sales_prediction_kafka.stream import ensure_topic
    t = {k: tag(f"bench-live-{mode}-{k}") for k in ("backlog", "backlog_out", "events", "out", "dlq")}
    for topic in t.values(): ensure_topic(settings, topic)
    replay(table_events(df.head(backlog_n), first_id=10**9), settings, t["backlog"], progress=False)
    w = Worker(["--mode", mode, "--model", str(model_dir), "--bootstrap-servers", settings.bootstrap_servers,
                "--group", tag(f"bench-{mode}"), "--backlog-topic", t["backlog"], "--backlog-out", t["backlog_out"],
                "--backlog-n", str(backlog_n), "--events-topic", t["events"], "--out-topic", t["out"], "--dlq-topic", t["dlq"], "--polled-file", str(tmp/f"polled-{mode}.json")],
               tmp/f"worker-{mode}.log")
    try:
        drained = json.loads(w.expect("DRAIN", 300))
        w.expect("READY", 120)
        res, first = [], 0
        for label, rate, n in plan:
            events = table_events(df.head(n), first_id=first)
            s = replay(events, settings, t["events"], rate=rate, progress=False)
            deadline = time.monotonic() + 120
            while total_records(settings, t["out"]) < first + n:
                if time.monotonic() > deadline: raise RuntimeError(f"{mode} {label}: outputs missing after 120 s")
                time.sleep(0.2)
            res.append({"phase": label, "rate": rate, "ids": range(first, first + n), "replay_per_s": s.rate})
            log.info("live %s %s: replayed %d at %.0f/s", mode, label, n, s.rate)
            first += n
    finally: w.stop()
    metrics = json.loads(w.expect("DONE", 10)) if w.proc.returncode == 0 else None
    ev, out = read_timestamps(settings, t["events"]), read_timestamps(settings, t["out"])
    polled_file = tmp/f"polled-{mode}.json"
    polled = {int(k): v for k, v in json.loads(polled_file.read_text()).items()} if polled_file.exists() else {}
    rows = [{"mode": mode, "phase": r["phase"], "replay_per_s": r["replay_per_s"], **stats(r["ids"], ev, out, polled)} for r in res]
    return {"drain": {**drained, "per_s": drained["events"] / drained["seconds"]}, "phases": rows,
            "worker_metrics": metrics}


def run(quick:bool=False, bootstrap_servers:str|None=None, out:Path|None=None, **_) -> dict:
    "Run the live-scoring benchmark; write live.json; return its results."
    from sales_prediction_kafka.models import save_model
    from .scoring import fit_model
    plan, backlog_n = phases(quick), 1000 if quick else 50_000
    load_before = load()
    df = events_table(max(max(n for *_, n in plan), backlog_n))
    with kafka(bootstrap_servers) as settings, tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        model_dir = save_model(fit_model()[0], Path(tmp)/"model")
        modes = {m: run_mode(m, settings, model_dir, df, plan, backlog_n, Path(tmp)) for m in MODES}
    rows = [r for m in MODES for r in modes[m]["phases"]]
    cap = {m: modes[m]["drain"]["per_s"] for m in MODES}
    by = {(r["mode"], r["phase"]): r for r in rows}
    p99_2k = by.get(("model", "2000/s"), {}).get("p99_ms")
    max_ratio = by[("model", "max")]["throughput_per_s"] / by[("passthrough", "max")]["throughput_per_s"]
    ratios = {"drain_model_vs_passthrough": cap["model"] / cap["passthrough"], "max_phase_model_vs_passthrough": max_ratio}
    result = {"quick": quick, "plan": [{"phase": l, "rate": r, "events": n} for l, r, n in plan], "backlog_events": backlog_n,
              "notes": ["latency = prediction record timestamp - event record timestamp (both CreateTime, set at send())",
                        "one worker process per mode (max_records 500, linger_ms 5, flush + commit per batch); replay in the benchmark process",
                        "capacity = backlog drained by the worker, first polled record to last commit",
                        "wait = event produce time -> the worker's poll returned it (wall clock); work = that -> output record timestamp (ms resolution, so 0 is possible)"],
              "rows": rows, "capacity_per_s": cap, "ratios": ratios,
              "targets": {"p99 < 25 ms at 2000/s": p99_2k is not None and p99_2k < 25,
                          "drain throughput >= 0.5 pass-through": ratios["drain_model_vs_passthrough"] >= 0.5},
              "worker_metrics": {m: modes[m]["worker_metrics"] for m in MODES}, "load_before": load_before, "load_after": load()}
    path = write_result(NAME, result, out)
    print("\n## Live scoring (one worker; latency = prediction produce time - event produce time)\n")
    print(table(rows, ["mode", "phase", "events", "delivered", "replay_per_s", "throughput_per_s", "p50_ms", "p99_ms", "max_ms",
                      "wait_p50_ms", "wait_p99_ms", "work_p50_ms", "work_p99_ms"]))
    print(f"\ncapacity (drain {backlog_n:,} backlog): model {cap['model']:,.0f}/s, pass-through {cap['passthrough']:,.0f}/s, "
          f"ratio {ratios['drain_model_vs_passthrough']:.2f} (target >= 0.5); max-phase ratio {max_ratio:.2f}")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in result["targets"].items()) + f"   -> {path}")
    return result

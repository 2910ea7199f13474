"""One scoring worker process for the live benchmark: the project's `ScoringWorker`, or the same worker with the model
taken out (a pass-through consumer->producer with the same clients, batches, flushes and commits).

It first drains a pre-filled backlog topic (capacity, timed from the first record to the last commit), prints
`DRAIN {json}`, then serves the live topic, prints `READY` once it owns partitions, and runs until SIGTERM, when it
prints `DONE {metrics json}`. With `--polled-file` it also writes {event key: wall-clock ms when poll returned it}
for the live topic, so the benchmark can split latency into waiting (produce -> polled) and working (polled -> output)."""

from __future__ import annotations
import argparse, json, logging, sys, time
from pathlib import Path
from collections import Counter


def passthrough_class():
    "A `ScoringWorker` whose batch step forwards each event's key and value unchanged: no parsing, validation or model."
    from sales_prediction_kafka.serve import Outgoing, ScoringWorker

    class PassThrough(ScoringWorker):
        def process(self, records: list) -> Counter:
            t0 = time.monotonic()
            out = [Outgoing(self.topics[1], r.key, r.value, []) for r in records]
            self._deliver_at_least_once(out, records)
            counts = Counter(scored=len(records))
            self.metrics.add(counts, time.monotonic() - t0)
            return counts

    return PassThrough


def _event_id(r) -> int:
    "The event id of a consumed event: its key, or (keyed by series) the event_id in its value."
    try:
        return int(r.key)
    except ValueError:
        return json.loads(r.value)["event_id"]


def polled_recorder(cls, seen: dict):
    "`cls` whose `poll` notes the wall-clock time (ms) at which each record was handed to the worker."

    class Recorded(cls):
        def poll(self, timeout: float = 0.5) -> list:
            records = super().poll(timeout)
            now = time.time() * 1000
            for r in records:
                seen[_event_id(r)] = now
            return records

    return Recorded


def drain(cls, model, settings, n: int, **kw) -> dict:
    "Score a backlog of `n` events; seconds from the first polled record to the last commit."
    done, t0 = 0, None
    with cls(model, settings, **kw) as w:
        while done < n:
            records = w.poll(0.5)
            if not records:
                continue
            t0 = t0 or time.perf_counter()
            done += sum(w.process(records).values())
        return {"events": done, "seconds": time.perf_counter() - t0, "batches": w.metrics.batches}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mode",
        choices=("model", "passthrough"),
        required=True,
        help="the project's worker or the pass-through",
    )
    ap.add_argument("--model", required=True, help="saved model folder")
    ap.add_argument("--bootstrap-servers", required=True, help="Kafka cluster")
    ap.add_argument("--group", required=True, help="consumer group prefix")
    ap.add_argument("--backlog-topic", required=True, help="pre-filled events to drain first")
    ap.add_argument("--backlog-out", required=True, help="where the drained events' outputs go")
    ap.add_argument("--backlog-n", type=int, required=True, help="events in the backlog")
    ap.add_argument("--events-topic", required=True, help="live events")
    ap.add_argument(
        "--out-topic", required=True, help="live outputs (predictions or forwarded events)"
    )
    ap.add_argument("--dlq-topic", required=True, help="dead letters")
    ap.add_argument(
        "--polled-file", help="write {key: ms when polled} of the live events here (JSON)"
    )
    ap.add_argument(
        "--history-topic", help="each series' recent actuals, for a lag model (bench/history.py)"
    )
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from sales_prediction_kafka.config import KafkaSettings
    from sales_prediction_kafka.cliutils import stop_on_signals
    from sales_prediction_kafka.models import load_model
    from sales_prediction_kafka.serve import ScoringWorker

    settings, model = KafkaSettings(bootstrap_servers=a.bootstrap_servers), load_model(a.model)
    cls = ScoringWorker if a.mode == "model" else passthrough_class()
    extra = {"history_topic": a.history_topic} if a.history_topic else {}
    d = drain(
        cls,
        model,
        settings,
        a.backlog_n,
        group_id=f"{a.group}-drain",
        worker_id="drain",
        events_topic=a.backlog_topic,
        predictions_topic=a.backlog_out,
        dead_letter_topic=a.dlq_topic,
        **extra,
    )
    print("DRAIN " + json.dumps(d), flush=True)
    seen = {}
    w = polled_recorder(cls, seen)(
        model,
        settings,
        group_id=f"{a.group}-live",
        worker_id="live",
        events_topic=a.events_topic,
        predictions_topic=a.out_topic,
        dead_letter_topic=a.dlq_topic,
        **extra,
    )
    with stop_on_signals(w.stopping), w:
        while not w.consumer.assignment() and not w.stopping.is_set():
            if records := w.poll(0.2):
                w.process(records)
        print("READY", flush=True)
        m = w.run()
    if a.polled_file:
        Path(a.polled_file).write_text(json.dumps(seen))
    print("DONE " + json.dumps(m), flush=True)


if __name__ == "__main__":
    main()

"""One Quix Streams worker process for the peer benchmark (bench/peer.py): a `quixstreams.Application` doing the job of
`serve` (JSON events in, the project's model, JSON predictions or dead letters out, at-least-once), or forwarding each
event unchanged (`--mode passthrough`), on librdkafka (confluent-kafka) instead of kafka-python.

Each message is scored on its own, as a StreamingDataFrame step is called: the project's `plan_batch` on a batch of
one (parse, validate, impute, predict, encode, headers: the same code `serve` runs on its micro-batches). The output
record's timestamp is the wall clock when it is produced (Quix otherwise copies the event's timestamp), so latency is
measured as for `serve`: prediction CreateTime - event CreateTime.

The same protocol as `bench.live_worker`: drain a pre-filled backlog (`DRAIN {json}`, from the first record handed to
the dataframe to the end of the final checkpoint: producer flushed, offsets committed, consumer closed), then serve the
live topic, print `READY` at its first live record and run until SIGTERM, then `DONE {json}`.

quixstreams is imported from this interpreter, or from `$BENCH_QUIX_SITE` (a `pip install --target` folder), which is
appended to `sys.path`, so every package this virtualenv already has is the one used."""

from __future__ import annotations
import argparse, gc, json, logging, os, sys, tempfile, time
from dataclasses import dataclass
from pathlib import Path

PRODUCER = {  # serve's producer (SERVE_TUNING and the project's fixed settings): zstd, linger 5 ms, acks=all, idempotence
    "compression.type": "zstd",
    "linger.ms": 5,
    "acks": "all",
    "enable.idempotence": True,
}


@dataclass(frozen=True)
class Record:
    "The fields of a consumed message that `plan_batch` reads."

    key: bytes | None
    value: bytes | None
    headers: list | None
    topic: str
    partition: int
    offset: int


def quixstreams():
    "The quixstreams package: this interpreter's, else the one in $BENCH_QUIX_SITE (appended, so nothing is shadowed)."
    site = os.environ.get("BENCH_QUIX_SITE")
    if site and site not in sys.path:
        sys.path.append(site)
    import quixstreams

    return quixstreams


def percentiles(xs: list) -> dict:
    "p50, p99 and max of `xs` seconds, in ms."
    if not xs:
        return {}
    xs = sorted(xs)
    at = lambda q: round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 3)
    return {"p50": at(0.5), "p99": at(0.99), "max": at(1.0), "n": len(xs)}


class QuixScorer:
    "A Quix Streams application on `events` -> `out` (and `dlq`): the project's model, or a pass-through."

    def __init__(self, a, model, validate, group: str, events: str, out: str, n_stop: int = 0):
        qs = quixstreams()
        from quixstreams.models.serializers import Serializer

        class OutgoingValue(
            Serializer
        ):  # an `Outgoing`'s value bytes as they are: serve encodes its JSON itself
            def __call__(self, value, ctx):
                return value.value

        self.a, self.model, self.validate, self.n_stop = a, model, validate, n_stop
        self.seen, self.times, self.polled, self.t0, self.t_last = 0, [], {}, None, None
        self.app = qs.Application(
            broker_address=a.bootstrap_servers,
            consumer_group=group,
            auto_offset_reset="earliest",
            processing_guarantee="at-least-once",
            producer_extra_config=PRODUCER,
            state_dir=tempfile.mkdtemp(prefix="bench-quix-state-"),
            use_changelog_topics=False,
            loglevel="WARNING",
        )
        self.context = qs.message_context
        src = self.app.topic(events, key_deserializer="bytes", value_deserializer="bytes")
        sdf = self.app.dataframe(src)
        now_ms = lambda v, k, ts, h: int(time.time() * 1000)
        if a.mode == "passthrough":
            sink = self.app.topic(out, key_serializer="bytes", value_serializer="bytes")
            sdf = sdf.update(self.forward, metadata=True).set_timestamp(now_ms)
            sdf.to_topic(sink)
            return
        topics = {
            name: self.app.topic(name, key_serializer="bytes", value_serializer=OutgoingValue())
            for name in (out, a.dlq_topic)
        }
        self.out = out
        sdf = sdf.apply(self.score, metadata=True)
        sdf = sdf.set_headers(lambda v, k, ts, h: v.headers).set_timestamp(now_ms)
        sdf.to_topic(lambda v, k, ts, h: topics[v.topic], key=lambda v: v.key)

    def note(self, key: bytes):
        "Count a record handed to the dataframe; note when (ms) for the latency split; stop once `n_stop` are seen."
        now = time.perf_counter()
        self.t0 = self.t0 or now
        self.seen += 1
        self.polled[int(key)] = time.time() * 1000
        if self.seen == 1 and not self.n_stop:
            print("READY", flush=True)
        if self.n_stop and self.seen >= self.n_stop:
            self.t_last = now
            self.app.stop()

    def score(self, value, key, timestamp, headers):
        "The `Outgoing` (prediction or dead letter) of one event: `plan_batch` on a batch of one."
        from sales_prediction_kafka.serve import plan_batch

        self.note(key)
        t0 = time.perf_counter()
        ctx = self.context()
        rec = Record(key, value, headers, ctx.topic, ctx.partition, ctx.offset)
        out, _, _ = plan_batch(
            [rec], self.model, self.validate, self.out, self.a.dlq_topic, worker="quix"
        )
        self.times.append(time.perf_counter() - t0)
        return out[0]

    def forward(self, value, key, timestamp, headers):
        self.note(key)

    def run(self) -> dict:
        "Run until stopped (SIGTERM, or `n_stop` records); the counts and timings."
        self.app.run()
        end = time.perf_counter()
        return {
            "events": self.seen,
            "seconds": end - self.t0 if self.t0 else None,
            "seconds_to_last_record": self.t_last - self.t0 if self.t_last else None,
            "record_step_ms": percentiles(self.times),
        }


def step_costs(model_dir: str) -> dict:
    "`plan_batch` on 500 events: one call per event (a Quix step) vs micro-batches of 20 and of 500 (serve); us per event."
    from sales_prediction_kafka.models import load_model
    from sales_prediction_kafka.replay import table_events
    from sales_prediction_kafka.serve import EventValidator, event_schema, plan_batch
    from .common import interleaved_rates
    from .live import events_table

    model = load_model(model_dir)
    validate = EventValidator(event_schema(model))
    recs = [
        Record(str(e["event_id"]).encode(), json.dumps(e).encode(), [], "events", 0, i)
        for i, e in enumerate(table_events(events_table(500)))
    ]
    gc.collect()
    gc.freeze()
    run = lambda size: (
        lambda: [
            plan_batch(recs[i : i + size], model, validate, worker="w") for i in range(0, 500, size)
        ]
    )
    sides = {"batch_1": run(1), "batch_20": run(20), "batch_500": run(500)}
    rates = interleaved_rates(sides, 500, min_time=2, min_rounds=15)
    return {k: {"us_per_event": 1e6 / v["rows_per_s"], **v} for k, v in rates.items()}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--step-costs"]:  # python -m bench.peer_quix --step-costs MODEL_DIR
        print(json.dumps(step_costs(argv[1])), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("model", "passthrough"), required=True)
    ap.add_argument("--model", required=True, help="saved model folder")
    ap.add_argument("--bootstrap-servers", required=True, help="Kafka cluster")
    ap.add_argument("--group", required=True, help="consumer group prefix")
    ap.add_argument("--backlog-topic", required=True, help="pre-filled events to drain first")
    ap.add_argument("--backlog-out", required=True, help="where the drained events' outputs go")
    ap.add_argument("--backlog-n", type=int, required=True, help="events in the backlog")
    ap.add_argument("--events-topic", required=True, help="live events")
    ap.add_argument("--out-topic", required=True, help="live outputs")
    ap.add_argument("--dlq-topic", required=True, help="dead letters")
    ap.add_argument(
        "--polled-file", help="write {key: ms when handed to the dataframe} here (JSON)"
    )
    ap.add_argument("--drain-only", action="store_true", help="exit after the drain")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from sales_prediction_kafka.models import load_model
    from sales_prediction_kafka.serve import EventValidator, event_schema

    model = load_model(a.model)
    validate = EventValidator(event_schema(model))
    gc.collect()
    gc.freeze()  # as `ScoringWorker.open` does: the model's objects leave the collector's view
    kw = dict(a=a, model=model, validate=validate)
    d = QuixScorer(
        **kw,
        group=f"{a.group}-drain",
        events=a.backlog_topic,
        out=a.backlog_out,
        n_stop=a.backlog_n,
    ).run()
    print("DRAIN " + json.dumps(d), flush=True)
    if a.drain_only:  # a SIGTERM before the next app's loop runs would be lost (Quix marks it running after its handler is set)
        return
    live = QuixScorer(**kw, group=f"{a.group}-live", events=a.events_topic, out=a.out_topic)
    m = live.run()
    if a.polled_file:
        Path(a.polled_file).write_text(json.dumps(live.polled))
    print("DONE " + json.dumps(m), flush=True)


if __name__ == "__main__":
    main()

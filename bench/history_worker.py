"""One scoring worker process for the state-restore benchmark: a lag model's `ScoringWorker` joins a fresh group, is given
every partition, restores the history of all of them and scores the waiting events. Prints one JSON line: the time from
the assignment to the first prediction sent, the restore itself (from `SeriesHistory.restores`) and the process's RSS."""

from __future__ import annotations
import argparse, json, logging, resource, sys, time


def rss_mib() -> float:
    "This process's resident set size now (MiB)."
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for a in (
        "--model",
        "--bootstrap-servers",
        "--events-topic",
        "--history-topic",
        "--out-topic",
        "--dlq-topic",
        "--group",
    ):
        ap.add_argument(a, required=True)
    ap.add_argument("--expect", type=int, required=True, help="events waiting on the events topic")
    a = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    from sales_prediction_kafka.config import KafkaSettings
    from sales_prediction_kafka.models import load_model
    from sales_prediction_kafka.serve import Metrics, ScoringWorker

    class Timed(
        Metrics
    ):  # notes when the group first gives the worker partitions (AssignmentReporter sets `partitions`)
        assigned_at = None

        @property
        def partitions(self):
            return self._partitions

        @partitions.setter
        def partitions(self, v):
            self._partitions = v
            if v and self.assigned_at is None:
                self.assigned_at = time.monotonic()

    model = load_model(a.model)
    w = ScoringWorker(
        model,
        KafkaSettings(bootstrap_servers=a.bootstrap_servers),
        group_id=a.group,
        worker_id="restore",
        events_topic=a.events_topic,
        predictions_topic=a.out_topic,
        dead_letter_topic=a.dlq_topic,
        history_topic=a.history_topic,
        metrics=Timed(worker="restore"),
    )
    rss_before, t0, first, scored = rss_mib(), time.monotonic(), None, 0
    with w:
        while scored < a.expect and time.monotonic() - t0 < 120:
            if records := w.poll(0.2):
                scored += w.process(records)["scored"]
                first = first or time.monotonic()
        h = w.history
        out = {
            "series": h.series,
            "restores": h.restores,
            "scored": scored,
            "expected": a.expect,
            "assigned_to_first_scored_s": first - w.metrics.assigned_at if first else None,
            "start_to_first_scored_s": first - t0 if first else None,
            "rss_before_mib": rss_before,
            "rss_after_mib": rss_mib(),
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

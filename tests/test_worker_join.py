"""A scoring worker joins its group in one rebalance (issue 22, the stuck take-overs of BENCHMARKS.md section 12).

kafka-python 3.0.12's leader re-joins its group when the topic metadata it assigned from differs from the metadata it
holds afterwards. A worker that read the events topic's metadata before it subscribed assigned from a snapshot taken
without its subscription, so the metadata refresh that follows every assignment started a second rebalance. If the
poll's timer ran out while that second JoinGroup/SyncGroup was in flight, the next poll no longer saw a reason to
rejoin and never collected the finished join: the consumer stayed `rebalancing` with every partition pending
revocation, polled nothing in a busy loop (its heartbeat deadline 0) and its membership expired on the broker. A
single rebalance leaves no second join to lose."""

import time
import pytest
from helpers import topics
from sales_prediction_kafka.models import load_model
from sales_prediction_kafka.serve import ScoringWorker
from sales_prediction_kafka.clients import ensure_topic

pytestmark = pytest.mark.kafka


def joined_generation(settings, model, t: dict, i: int) -> int:
    "The group generation a fresh worker (alone in a fresh group) scores in, once it has polled for a second after its assignment."
    w = ScoringWorker(
        model,
        settings,
        group_id=f"{t['group']}-{i}",
        worker_id=f"w{i}",
        events_topic=t["events"],
        predictions_topic=t["predictions"],
        dead_letter_topic=t["dlq"],
    )
    with w:
        deadline = time.monotonic() + 30
        while not w.consumer.assignment() and time.monotonic() < deadline:
            w.poll(0.2)
        assert w.consumer.assignment(), "no partitions assigned within 30 s"
        until = time.monotonic() + 1  # the metadata refresh after an assignment answers within this
        while time.monotonic() < until:
            w.poll(0.2)
        return w.consumer.group_metadata().generation_id


def test_a_fresh_worker_joins_in_one_rebalance(broker_settings, model_dir):
    t = topics("join")
    ensure_topic(broker_settings, t["events"], 3)
    model = load_model(model_dir)
    gens = [joined_generation(broker_settings, model, t, i) for i in range(6)]
    # before the fix about 3 in 5 fresh workers did (generation 2)
    assert gens == [1] * 6, f"generations {gens}: a worker re-joined after its first assignment"

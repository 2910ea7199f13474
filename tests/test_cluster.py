"""A real three-node Apache Kafka cluster (KRaft, `LocalCluster`): the project's topics replicated, a leader SIGKILLed
mid-stream, scorers across a broker loss, writes refused while two of three brokers are down and the stream resumed.
Each scenario prints a `RELIABILITY` line with its counts and times (see RELIABILITY.md)."""

import json, os, subprocess, time
from collections import Counter
from pathlib import Path
import pytest
from kafka import KafkaAdminClient
from sales_prediction_kafka.broker import LocalCluster
from sales_prediction_kafka.config import KafkaSettings
from sales_prediction_kafka.data import generate_sales
from sales_prediction_kafka.replay import table_events
from sales_prediction_kafka.clients import StreamError
from sales_prediction_kafka.clients import ensure_topic
from sales_prediction_kafka.stream import messages, run_values, stream_predictions, verify_run
from helpers import (
    SALES_KAFKA,
    describe,
    failed_stream,
    feed,
    index_counts,
    indexes,
    landed,
    lost_and_duplicated,
    metrics,
    prediction_counts,
    read_all,
    report,
    report_delivery,
    scored,
    start_stream,
    start_worker,
    stop_workers,
    stream_records,
    topics,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def in_sync(servers: str, topic: str) -> bool:
    "Every replica of every partition of `topic` is in sync (what a resume needs: no record hidden above a high watermark)."
    return all(set(p["isr_nodes"]) == set(p["replica_nodes"]) for p in describe(servers, topic))


def busiest(c: LocalCluster, topic: str) -> int:
    "The node that leads most of `topic`'s partitions."
    return Counter(c.leaders(topic).values()).most_common(1)[0][0]


def rss_mb(c: LocalCluster) -> list[int]:
    "Resident memory of each node's JVM, MB."
    return [
        round(
            int(Path(f"/proc/{n['pid']}/statm").read_text().split()[1])
            * os.sysconf("SC_PAGE_SIZE")
            / 2**20
        )
        for n in c.status()["nodes"]
        if n["running"]
    ]


def counts(settings: KafkaSettings, topic: str, n: int) -> tuple[Counter, int, int]:
    "How often each prediction_index is on `topic`, and how many of 0..n-1 are lost and duplicated."
    got = index_counts(settings, topic)
    return got, *lost_and_duplicated(got, n)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    "Three nodes in a temporary home for this module's scenarios; each scenario leaves all three running."
    c = LocalCluster(tmp_path_factory.mktemp("cluster")).start(timeout=180)
    yield c
    c.stop()


@pytest.fixture
def settings(cluster) -> KafkaSettings:
    c = cluster.start()  # a scenario that failed half-way may have left a node down
    return KafkaSettings(bootstrap_servers=c.bootstrap_servers)


def test_cli_starts_shows_and_stops_every_node(tmp_path):
    "`broker start --nodes 3` starts three nodes; `status` shows each (and a dead one); `start` restarts it; `stop` stops all."
    home, t0 = tmp_path / "cluster", time.monotonic()
    cli = lambda *a: subprocess.run(
        [SALES_KAFKA, "broker", *a, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    try:
        r = cli("start", "--nodes", "3")
        assert r.returncode == 0, r.stderr[-3000:]
        started, st = time.monotonic() - t0, json.loads(r.stdout)
        assert (
            st["running"]
            and [n["node_id"] for n in st["nodes"]] == [1, 2, 3]
            and st["bootstrap_servers"].count(",") == 2
        )
        assert len({n["data_dir"] for n in st["nodes"]}) == 3 and all(
            n["running"] for n in st["nodes"]
        )
        c = LocalCluster(home)
        memory = rss_mb(c)
        c.node(2).kill()
        r = cli("status")
        assert r.returncode == 1 and [n["running"] for n in json.loads(r.stdout)["nodes"]] == [
            True,
            False,
            True,
        ], r.stdout
        r = cli("start")  # the home says how many nodes
        assert r.returncode == 0 and json.loads(r.stdout)["nodes_running"] == 3, (
            r.stdout + r.stderr[-2000:]
        )
        t1 = time.monotonic()
        assert cli("stop").stdout.startswith("stopped Kafka at")
        stopped = time.monotonic() - t1
        r = cli("status")
        assert r.returncode == 1 and json.loads(r.stdout)["nodes_running"] == 0
        assert all(b.pid() is None for b in c.nodes)
    finally:
        LocalCluster(home).stop(timeout=10)
    report("cluster cli", start_s=started, stop_s=stopped, heap=c.nodes[0].heap, idle_rss_mb=memory)


def test_topics_get_the_clusters_replication(settings):
    "A topic created without a replication factor gets the cluster's (3); one the cluster cannot hold is refused with the numbers."
    ensure_topic(settings, "replicated", partitions=3)
    # once the broker asked knows the new topic (helpers.describe)
    parts = describe(settings.bootstrap_servers, "replicated")
    assert [len(p["replica_nodes"]) for p in parts] == [3, 3, 3] and all(
        len(p["isr_nodes"]) == 3 for p in parts
    ), parts
    with pytest.raises(
        StreamError,
        match="cannot create topic 'too_many' with replication factor 5: the cluster at .* has 3 broker",
    ):
        ensure_topic(settings, "too_many", replication=5)


N_PREDICTIONS = 100_000


def test_leader_failover_mid_stream(cluster, settings):
    "100,000 predictions on a topic with 3 replicas; the node leading most partitions is SIGKILLed mid-stream: each index once."
    topic, servers, t0 = "failover", settings.bootstrap_servers, time.monotonic()
    # append times on the records show when the stream stalled
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.create_topics(
            {topic: {"num_partitions": 3, "configs": {"message.timestamp.type": "LogAppendTime"}}}
        )
    finally:
        admin.close()
    wait_for(
        lambda: all(p["leader_id"] >= 0 for p in describe(servers, topic)),
        30,
        "leaders for the new topic",
    )
    victim = busiest(cluster, topic)
    led = [p for p, leader in cluster.leaders(topic).items() if leader == victim]
    proc = start_stream(N_PREDICTIONS, servers, topic, "failover")
    try:
        wait_for(
            lambda: landed(servers, topic, 3) >= N_PREDICTIONS // 10,
            120,
            "a tenth of the stream to land",
        )
        at_kill = landed(servers, topic, 3)
        cluster.node(victim).kill()
        assert at_kill < N_PREDICTIONS and proc.poll() is None, (
            f"{at_kill} records had landed: the kill came after the stream"
        )
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"the producer gave up:\n{out[-2000:]}{err[-3000:]}"
    summary = json.loads(out.strip().splitlines()[-1])
    new_leaders = cluster.leaders(topic)
    got, lost, dupes = counts(settings, topic, N_PREDICTIONS)
    appended = sorted(
        (m["timestamp"] / 1000, m["partition"]) for m in messages(settings, topic, idle_timeout=30)
    )
    gap = lambda ts: max((b - a for a, b in zip(ts, ts[1:])), default=0.0)
    stall = gap([t for t, _ in appended])
    leader_stall = gap([t for t, p in appended if p in led])
    t1 = time.monotonic()
    cluster.node(victim).start()
    wait_for(lambda: in_sync(servers, topic), 120, "the restarted node to catch up")
    memory = rss_mb(cluster)  # after 100,000 records and a failover
    report(
        "cluster leader failover",
        sent=N_PREDICTIONS,
        landed_before_kill=at_kill,
        received=sum(got.values()),
        lost=lost,
        duplicated=dupes,
        killed_node=victim,
        partitions_it_led=len(led),
        stall_s=stall,
        its_partitions_stall_s=leader_stall,
        stream_s=summary["elapsed"],
        rejoin_s=time.monotonic() - t1,
        rss_mb=memory,
        total_s=time.monotonic() - t0,
    )
    assert all(new_leaders[p] not in (victim, -1) for p in led), (
        f"the dead node's partitions moved: {new_leaders}"
    )
    assert summary["total"] == N_PREDICTIONS
    assert lost == 0, f"{lost} prediction indexes lost"
    assert dupes == 0, f"{dupes} duplicated records"


N_EVENTS = 10_000


def test_scorers_exactly_once_across_a_broker_loss(cluster, settings, model_dir, tmp_path):
    """Two exactly-once `serve` workers score 10,000 events while a broker is SIGKILLed for 10 s: never a duplicate for a
    read_committed reader, every event scored within 60 s of the broker's return, and both workers stop on SIGTERM. A worker
    that exits is restarted with its id, as a supervisor would (and counted)."""
    t0, t = time.monotonic(), topics("cluster")
    ensure_topic(settings, t["events"], partitions=6)
    df = generate_sales(N_EVENTS, seed=29, missing=0.0)
    workers = {w: start_worker(tmp_path, model_dir, settings, t, w, True) for w in ("w0", "w1")}
    total, crashes = lambda: sum(scored(tmp_path, w) for w in workers), []

    def supervise():
        for w, p in workers.items():
            if p.poll() is not None:
                crashes.append((w, p.returncode))
                workers[w] = start_worker(tmp_path, model_dir, settings, t, w, True)

    try:
        wait_for(
            lambda: all(len(metrics(tmp_path, w).get("partitions", [])) == 3 for w in workers),
            120,
            "the workers to share 6 partitions",
        )
        feeder = feed(table_events(df), settings, t["events"], 2000.0)  # 5 s of events
        wait_for(lambda: total() >= 2000, 120, "the workers to score 2,000 events")
        victim, at_kill, t_kill = busiest(cluster, t["events"]), total(), time.monotonic()
        cluster.node(victim).kill()
        feeder.join()
        time.sleep(max(0.0, 10 - (time.monotonic() - t_kill)))  # the broker stays down for 10 s
        cluster.node(victim).start()
        down = time.monotonic() - t_kill
        try:
            read_all(
                settings,
                t["predictions"],
                "read_committed",
                until=lambda recs: supervise() or len(indexes(recs)) >= N_EVENTS,
                timeout=60,
            )
        except AssertionError:
            pass  # what is missing is counted below
        complete = time.monotonic() - t_kill
    finally:
        codes = stop_workers(workers, grace=20)
    got = prediction_counts(settings, t["predictions"])
    unscored, dupes = report_delivery(
        "cluster scorers exactly-once, broker lost",
        got,
        N_EVENTS,
        killed_node=victim,
        scored_before_kill=at_kill,
        broker_down_s=down,
        waited_after_kill_s=complete,
        worker_crashes=len(crashes),
        exit_codes=codes,
        total_s=time.monotonic() - t0,
    )
    assert dupes == 0, f"{dupes} duplicate predictions seen by a read_committed reader"
    assert set(got) <= set(range(N_EVENTS)), "only the replayed events are scored"
    for internal in ("__consumer_offsets", "__transaction_state"):
        assert {
            len(p["replica_nodes"]) for p in describe(settings.bootstrap_servers, internal)
        } == {3}, internal
    assert unscored == 0 and not crashes and codes == {"w0": 0, "w1": 0}, (
        f"{unscored} events unscored 60 s after the broker returned, crashes {crashes}, exit codes {codes}; logs in {tmp_path}"
    )


N_REFUSED = 100_000  # at 36,000 records/s (tuned producer, quiet machine) 30,000 were all acknowledged before the kill


def test_writes_refused_while_two_brokers_are_down_then_resumed(cluster, settings):
    """Two of three nodes SIGKILLed mid-stream: acks=all writes fail with a counted, explained error; after they return,
    the resumed stream completes with each record once."""
    topic, run, servers, t0 = (
        "under_replicated",
        "run-under",
        settings.bootstrap_servers,
        time.monotonic(),
    )
    ensure_topic(settings, topic, partitions=3)

    def kill():
        "SIGKILL every node but the first partition's leader."
        leader = cluster.leaders(topic)[0]
        for b in cluster.nodes:
            if b.node_id != leader:
                cluster.node(b.node_id).kill()

    failure, _, failed_after = failed_stream(
        N_REFUSED, servers, topic, run, 15, N_REFUSED // 20, kill
    )
    assert "the producer retried on" in failure["error"] and "resume" in failure["error"]
    t1 = time.monotonic()
    cluster.start()
    wait_for(lambda: in_sync(servers, topic), 120, "every replica back in sync")
    back = time.monotonic() - t1
    recs = stream_records(N_REFUSED)
    resumed = stream_predictions(recs, settings, topic, run_id=run, progress=False, resume=True)
    got = run_values(settings, topic, run)
    lost, dupes = len(set(range(N_REFUSED)) - set(got)), sum(len(v) - 1 for v in got.values())
    report(
        "cluster two of three brokers down",
        sent=N_REFUSED,
        unacknowledged=failure["unacknowledged"],
        already_there=resumed.skipped,
        resent=resumed.total,
        received=sum(map(len, got.values())),
        lost=lost,
        duplicated=dupes,
        failed_after_s=failed_after,
        brokers_back_s=back,
        resume_s=resumed.elapsed,
        total_s=time.monotonic() - t0,
    )
    assert failure["unacknowledged"] > 0 and resumed.skipped + resumed.total == N_REFUSED
    assert verify_run(recs, settings, topic, run) == N_REFUSED

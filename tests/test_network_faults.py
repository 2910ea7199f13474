"""Network faults between clients and real brokers, injected with Toxiproxy (tests/toxiproxy.py): latency, connection resets,
a client-side partition of a leader, a replication partition, a half-open connection during a transaction's commit.

Every client byte goes through a proxy: the brokers advertise the proxies' ports (`LocalBroker.advertised_port`, `links`).
The single broker has three listeners: its client listener behind proxy `clients`, `SIDE` behind proxy `side` (a second
network, for the one client a scenario treats differently) and `CHECK`, unproxied, from which the test alone counts. The
three-node cluster has each node's client listener and its REPLICATION listener (the other nodes' replica fetches) behind
proxies, the controller quorum direct, plus a `CHECK` listener. Each scenario prints a `RELIABILITY` line (RELIABILITY.md)."""
import json, signal, subprocess, threading, time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
import pytest
from kafka import KafkaConsumer, TopicPartition
from sales_prediction_kafka.broker import LocalBroker, LocalCluster, free_port
from sales_prediction_kafka.config import KafkaSettings
from sales_prediction_kafka.data import generate_sales
from sales_prediction_kafka.replay import replay, table_events
from sales_prediction_kafka.stream import ensure_topic, messages, run_values, stream_predictions, verify_run
from helpers import describe, metrics, open_worker, read_all, report, scored, start_stream, start_worker, stream_records, topics, wait_for
from toxiproxy import Toxiproxy

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

@pytest.fixture(scope="module")
def toxiproxy(tmp_path_factory):
    "A Toxiproxy server for this module (installed by tools/install_toxiproxy.sh if missing)."
    with Toxiproxy(tmp_path_factory.mktemp("toxiproxy")/"toxiproxy.log") as t: yield t

@pytest.fixture(scope="module")
def net(toxiproxy, tmp_path_factory):
    "A single broker reached only through proxies `clients` and `side`, plus an unproxied CHECK listener for counting."
    b = LocalBroker(tmp_path_factory.mktemp("net-broker"))
    side_port, check_port = free_port(), free_port()
    clients, side = toxiproxy.proxy("clients", f"127.0.0.1:{b.port}"), toxiproxy.proxy("side", f"127.0.0.1:{side_port}")
    b.advertised_port, b.links = clients.port, {"SIDE": (side_port, side.port), "CHECK": (check_port, None)}
    b.start(timeout=180)
    yield SimpleNamespace(broker=b, clients=clients, side=side, settings=KafkaSettings(bootstrap_servers=b.bootstrap_servers),
                          side_settings=KafkaSettings(bootstrap_servers=b.link("SIDE")),
                          check=KafkaSettings(bootstrap_servers=b.link("CHECK")))
    b.stop()

@pytest.fixture
def healthy(net):
    "The single broker's links without toxics, before and after the test (a failed test must not leave its fault behind)."
    net.clients.clear(); net.side.clear()
    yield net
    net.clients.clear(); net.side.clear()

def finish(proc:subprocess.Popen, timeout:float=300) -> tuple[int, dict]:
    "Wait for a stream process; its exit code and the JSON of its last line."
    try: out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    assert out.strip(), f"the stream printed nothing (exit {proc.returncode}):\n{err[-3000:]}"
    return proc.returncode, json.loads(out.strip().splitlines()[-1])

def landed(servers:str, topic:str) -> int:
    "The number of records in `topic` now (sum of its end offsets)."
    c = KafkaConsumer(bootstrap_servers=servers, request_timeout_ms=5000)
    try: return sum(c.end_offsets([TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]).values())
    finally: c.close()

def index_counts(settings:KafkaSettings, topic:str) -> Counter:
    "How often each prediction_index is on `topic`."
    return Counter(m["value"]["prediction_index"] for m in messages(settings, topic, idle_timeout=30))

def prediction_counts(settings:KafkaSettings, topic:str, isolation:str="read_committed") -> Counter:
    "How often each event has a prediction on `topic`, for an `isolation` reader."
    return Counter(json.loads(r.value)["prediction_index"] for r in read_all(settings, topic, isolation))

def lost_and_duplicated(got:Counter, n:int) -> tuple[int, int]:
    "How many of 0..n-1 are missing from `got`, and how many beyond one per index it holds."
    return len(set(range(n)) - set(got)), sum(c - 1 for c in got.values())

def stop_workers(workers:dict) -> dict:
    "SIGTERM every worker; their exit codes ('hung' for one still running after 30 s, then SIGKILLed)."
    for p in workers.values(): p.send_signal(signal.SIGTERM)
    codes, deadline = {}, time.monotonic() + 30
    for w, p in workers.items():
        try: codes[w] = p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired: p.kill(); p.wait(); codes[w] = "hung"
    return codes

# --- 1. latency on every client link -------------------------------------------------------------------------------------

N_LATENCY, EVENTS_LATENCY, RATE = 30_000, 3_000, 500.0

def load(net, tmp:Path, t:dict, run:str, first_id:int) -> dict:
    """One round: `stream_predictions` of N_LATENCY records in its own process while EVENTS_LATENCY events are replayed at
    RATE/s to the two workers of `t`; the stream's summary, the most events waiting unscored (sampled every 0.2 s)."""
    proc = start_stream(N_LATENCY, net.broker.bootstrap_servers, f"{t['predictions']}-{run}", run)
    events = table_events(generate_sales(EVENTS_LATENCY, seed=31, missing=0.0), first_id)
    done, lag = threading.Event(), []
    def sample():
        while not done.is_set():
            lag.append(landed(net.check.bootstrap_servers, t["events"]) - sum(scored(tmp, w) for w in ("w0", "w1")))
            time.sleep(0.2)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        replay(events, net.settings, t["events"], RATE, progress=False)
        wait_for(lambda: sum(scored(tmp, w) for w in ("w0", "w1")) >= first_id + EVENTS_LATENCY, 120, "the workers to score the round")
        code, summary = finish(proc)
    finally:
        done.set(); sampler.join()
        if proc.poll() is None: proc.kill(); proc.wait()
    assert code == 0, summary
    return {"summary": summary, "max_lag": max(lag)}

def alone(net, topic:str) -> dict:
    "The summary of a stream of N_LATENCY predictions with nothing else running."
    code, summary = finish(start_stream(N_LATENCY, net.broker.bootstrap_servers, topic, "alone"))
    assert code == 0, summary
    return summary

def test_latency_on_every_client_link(healthy, model_dir, tmp_path):
    """100 ms +- 50 on every client link (replies, i.e. Toxiproxy's downstream): a stream of 30,000 predictions and two
    `serve` workers scoring 500 events/s lose and duplicate nothing, the workers keep up; the stream's rate, alone, falls."""
    net, t, t0 = healthy, topics("latency"), time.monotonic()
    ensure_topic(net.check, t["events"], partitions=6)
    before = alone(net, f"{t['predictions']}-alone-healthy")  # the same stream, back to back, healthy then slowed
    with net.clients.toxic("latency", latency=100, jitter=50): after = alone(net, f"{t['predictions']}-alone-latency")
    workers = {w: start_worker(tmp_path, model_dir, net.settings, t, w, False) for w in ("w0", "w1")}
    try:
        wait_for(lambda: all(len(metrics(tmp_path, w).get("partitions", [])) == 3 for w in workers), 120, "the workers to share 6 partitions")
        with net.clients.toxic("latency", latency=100, jitter=50):
            slow = load(net, tmp_path, t, "latency", 0)
    finally: codes = stop_workers(workers)
    got = index_counts(net.check, f"{t['predictions']}-latency")
    preds = prediction_counts(net.check, t["predictions"], "read_uncommitted")
    (lost, dupes), (unscored, scored_twice) = lost_and_duplicated(got, N_LATENCY), lost_and_duplicated(preds, EVENTS_LATENCY)
    report("network latency 100+-50 ms", sent=N_LATENCY, acknowledged=slow["summary"]["total"], received=sum(got.values()),
           lost=lost, duplicated=dupes, alone_healthy_rate=before["rate"], alone_latency_rate=after["rate"],
           throughput_drop_pct=100 * (1 - after["rate"] / before["rate"]), rate_beside_workers=slow["summary"]["rate"],
           events=EVENTS_LATENCY, event_rate=RATE, unscored=unscored, scored_twice=scored_twice, max_lag=slow["max_lag"],
           exit_codes=codes, total_s=time.monotonic() - t0)
    assert before["total"] == after["total"] == N_LATENCY
    assert slow["summary"]["total"] == N_LATENCY and lost == 0 and dupes == 0, (lost, dupes)
    assert unscored == 0 and scored_twice == 0, (unscored, scored_twice)
    # the backlog (max_lag) is reported, not asserted: on the shared machine it was as large without any toxic (RELIABILITY.md 8.1)
    assert codes == {"w0": 0, "w1": 0}, codes

# --- 2. connection resets ----------------------------------------------------------------------------------------------------

N_RESETS, EVENTS_RESETS, EVERY = 30_000, 4_000, 2.0

class Resetter(threading.Thread):
    "Every `every` seconds, a TCP reset of each connection through `proxy` that carries data in the next 0.3 s, alternating directions."
    def __init__(self, proxy, every:float):
        super().__init__(daemon=True)
        self.proxy, self.every, self.stop, self.count = proxy, every, threading.Event(), 0
    def run(self):
        while not self.stop.wait(self.every):
            name = self.proxy.add("reset_peer", "downstream" if self.count % 2 == 0 else "upstream", timeout=0)
            time.sleep(0.3)
            self.proxy.remove(name)
            self.count += 1

def test_connection_resets_duplicate_nothing(healthy, model_dir, tmp_path):
    """`reset_peer` every 2 s on the link of the producers and of two exactly-once workers (replies cut as often as requests):
    the idempotent stream writes each record once, and every event is scored once for a read_committed reader."""
    net, t, t0 = healthy, topics("resets"), time.monotonic()
    ensure_topic(net.check, t["events"], partitions=6)
    workers = {w: start_worker(tmp_path, model_dir, net.settings, t, w, True) for w in ("w0", "w1")}
    resets = Resetter(net.clients, EVERY)
    try:
        wait_for(lambda: all(len(metrics(tmp_path, w).get("partitions", [])) == 3 for w in workers), 120, "the workers to share 6 partitions")
        resets.start()
        proc = start_stream(N_RESETS, net.broker.bootstrap_servers, f"{t['predictions']}-stream", "resets")
        events = list(table_events(generate_sales(EVENTS_RESETS, seed=37, missing=0.0)))
        for k in range(4):  # a reset between each quarter of the events, however fast this machine replays them (a run of
            wait_for(lambda: resets.count >= k, 60, f"reset {k}")  # 3 s once saw only 2 resets at a fixed pace)
            replay(events[k * EVENTS_RESETS // 4:(k + 1) * EVENTS_RESETS // 4], net.settings, t["events"], 1000.0, progress=False)
        code, summary = finish(proc)
        ids = lambda recs: {json.loads(r.value)["prediction_index"] for r in recs}
        read_all(net.check, t["predictions"], "read_committed", until=lambda recs: len(ids(recs)) >= EVENTS_RESETS, timeout=180)
        complete = time.monotonic() - t0
    finally:
        resets.stop.set()
        if resets.is_alive(): resets.join()
        codes = stop_workers(workers)
    got = index_counts(net.check, f"{t['predictions']}-stream")
    preds = prediction_counts(net.check, t["predictions"])
    (lost, dupes), (unscored, scored_twice) = lost_and_duplicated(got, N_RESETS), lost_and_duplicated(preds, EVENTS_RESETS)
    report("connection resets every 2 s", sent=N_RESETS, acknowledged=summary.get("total"), received=sum(got.values()), lost=lost,
           duplicated=dupes, stream_s=summary.get("elapsed"), stream_rate=summary.get("rate"), events=EVENTS_RESETS, scored=sum(preds.values()),
           unscored=unscored, scored_twice=scored_twice, resets=resets.count, complete_s=complete, exit_codes=codes,
           total_s=time.monotonic() - t0)
    assert code == 0 and summary["total"] == N_RESETS, summary
    assert resets.count >= 3, "the resets must land during the run"
    assert lost == 0 and dupes == 0, (lost, dupes)
    assert unscored == 0 and scored_twice == 0, (unscored, scored_twice)
    assert codes == {"w0": 0, "w1": 0}, codes

# --- 6. a half-open connection during a transaction's commit ------------------------------------------------------------------

def test_half_open_commit_is_ended_and_the_worker_fenced(healthy, model_dir, tmp_path):
    """An exactly-once worker's link stops passing bytes, connection left open, just as it commits: its bounded waits end the
    commit, the abort and its producer; a new worker with the same transactional id fences it and scores each event once."""
    net, t, n = healthy, topics("halfopen"), 900
    for topic in (t["events"], t["predictions"], t["dlq"]): ensure_topic(net.check, topic, 3)
    replay(table_events(generate_sales(n, seed=41, missing=0.0)), net.check, t["events"], progress=False)
    old = open_worker(model_dir, net.side_settings, t, max_records=300, transaction_timeout_ms=4000)
    cut_at, within = {}, old._within
    def commit_into_silence(step, *args):
        "Cut the link (Toxiproxy `timeout` 0 both ways: bytes dropped, connection open) just before the first commit after the healthy one."
        if step == "begin_commit" and old.metrics.events and not cut_at:
            net.side.add("timeout", "upstream", timeout=0); net.side.add("timeout", "downstream", timeout=0)
            cut_at["t"] = time.monotonic()
        return within(step, *args)
    old._within = commit_into_silence
    ended, new = {}, None
    try:
        batch = lambda w: next(r for _ in range(100) if (r := w.poll(1.0)))
        healthy_batch = old.process(batch(old))["scored"]
        assert healthy_batch > 0
        cut, first = batch(old), old.producer
        def process_cut():
            ended["counts"] = old.process(cut)
            ended["t"] = time.monotonic()
        stuck = threading.Thread(target=process_cut, daemon=True)
        stuck.start()
        wait_for(lambda: first._closed, 60, "the bounded waits to give up the commit and close the producer")
        closed_s = time.monotonic() - cut_at["t"]
        new = open_worker(model_dir, net.settings, t, max_records=300, transaction_timeout_ms=4000)  # same group and worker id
        fenced_s = time.monotonic() - cut_at["t"]
        m = new.run(idle_exit=8)  # the old worker's partitions come to it once the old session times out (6-10 s)
    finally:
        old.stopping.set()  # the old worker keeps trying to renew its producer through the silent link until told to stop
        net.side.clear()
        if "stuck" in locals(): stuck.join(60)
        old.close()
        if new is not None: new.close()
    got = prediction_counts(net.check, t["predictions"])
    lost, dupes = lost_and_duplicated(got, n)
    report("half-open connection during a commit", sent=n, received=sum(got.values()), lost=lost, duplicated=dupes, healthy_batch=healthy_batch,
           cut_batch=len(cut), old_worker_counted=sum(ended.get("counts", Counter()).values()), producer_closed_after_s=closed_s,
           new_worker_ready_after_s=fenced_s, new_worker_scored=m["scored"])
    assert not stuck.is_alive(), "the old worker's process() ended once told to stop"
    assert ended["counts"] == Counter(), "the cut batch is not counted as scored by the old worker"
    assert lost == 0 and dupes == 0, f"{lost} lost, {dupes} duplicated"
    assert m["scored"] == n - healthy_batch, "the new worker scores the rest, the cut batch included, once"

# --- 3, 4. a three-node cluster: a leader cut off from its clients, or from its followers --------------------------------------

@pytest.fixture(scope="module")
def cluster(toxiproxy, tmp_path_factory):
    "Three nodes, each node's client and replication listeners behind proxies `client-N` and `repl-N`; replicas drop out of the ISR after 5 s."
    c = LocalCluster(tmp_path_factory.mktemp("net-cluster"), extra={"replica.lag.time.max.ms": 5000})
    proxies = {}
    for b in c.nodes:
        repl, check = free_port(), free_port()
        proxies[b.node_id] = SimpleNamespace(client=toxiproxy.proxy(f"client-{b.node_id}", f"127.0.0.1:{b.port}"),
                                             repl=toxiproxy.proxy(f"repl-{b.node_id}", f"127.0.0.1:{repl}"))
        b.advertised_port = proxies[b.node_id].client.port
        b.links = {"REPLICATION": (repl, proxies[b.node_id].repl.port), "CHECK": (check, None)}
    c.start(timeout=240)
    yield SimpleNamespace(cluster=c, proxies=proxies, settings=KafkaSettings(bootstrap_servers=c.bootstrap_servers),
                          check=KafkaSettings(bootstrap_servers=",".join(b.link("CHECK") for b in c.nodes)))
    c.stop()

@pytest.fixture
def mesh(cluster):
    "The cluster with every link healthy and every node running, before and after the test."
    clear = lambda: [p.clear() for n in cluster.proxies.values() for p in (n.client, n.repl)]
    clear(); cluster.cluster.start()
    yield cluster
    clear()

def leaders(servers:str, topic:str) -> dict:
    "{partition: leader node id} of `topic`."
    return {p["partition_index"]: p["leader_id"] for p in describe(servers, topic)}

def in_sync(servers:str, topic:str) -> bool:
    "Every replica of every partition of `topic` is in sync."
    return all(set(p["isr_nodes"]) == set(p["replica_nodes"]) for p in describe(servers, topic))

def log_end_offset(data_dir:Path, topic:str, partition:int) -> int:
    """The offset after the last complete record batch in a replica's log files (read from disk: the replica's own copy).
    A v2 batch starts with baseOffset (int64), batchLength (int32), then 11 bytes, then lastOffsetDelta (int32)."""
    end = 0
    for seg in sorted((data_dir/f"{topic}-{partition}").glob("*.log")):
        b, i = seg.read_bytes(), 0
        while i + 27 <= len(b):
            base, length = int.from_bytes(b[i:i + 8], "big"), int.from_bytes(b[i + 8:i + 12], "big")
            if length == 0 or i + 12 + length > len(b): break  # preallocated zeros or a batch still being written
            end = base + int.from_bytes(b[i + 23:i + 27], "big") + 1
            i += 12 + length
    return end

N_ISOLATED, DELIVERY = 20_000, 15

def test_leader_cut_off_from_its_followers(mesh, tmp_path):
    """The node leading most partitions loses its replication links (both ways; clients and the controller still reach it)
    while a stream writes with acks=all and min.insync.replicas=2: every acknowledged record was on a follower's disk too,
    the refused ones are reported, and after the heal each acknowledged record is on the topic once and `resume` sends the rest."""
    c, t0, topic, run = mesh, time.monotonic(), "isolated", "run-isolated"
    ensure_topic(c.check, topic, partitions=3)
    wait_for(lambda: in_sync(c.check.bootstrap_servers, topic), 60, "the new topic's replicas in sync")
    led = leaders(c.check.bootstrap_servers, topic)
    victim = Counter(led.values()).most_common(1)[0][0]
    parts, followers = [p for p, n in led.items() if n == victim], [b for b in c.cluster.nodes if b.node_id != victim]
    proc = start_stream(N_ISOLATED, c.settings.bootstrap_servers, topic, run, DELIVERY)
    try:
        wait_for(lambda: landed(c.check.bootstrap_servers, topic) >= N_ISOLATED // 20, 120, "a twentieth of the stream to land")
        for stream in ("upstream", "downstream"): c.proxies[victim].repl.add("timeout", stream, timeout=0)
        t_cut = time.monotonic()
        code, failure = finish(proc)
        failed_s = time.monotonic() - t_cut
        on_followers = {p: max(log_end_offset(b.data_dir, topic, p) for b in followers) for p in parts}  # before the heal
        shrunk = {p["partition_index"]: p["isr_nodes"] for p in describe(c.check.bootstrap_servers, topic) if p["partition_index"] in parts}
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
        c.proxies[victim].repl.clear()
    t_heal = time.monotonic()
    wait_for(lambda: in_sync(c.check.bootstrap_servers, topic), 120, "the followers to catch up after the heal")
    healed_s = time.monotonic() - t_heal
    assert code == 3, f"the stream should have been refused: {failure}"
    refused = set(failure["refused"])
    there = [m for m in messages(c.check, topic, idle_timeout=30) if m["headers"].get("run_id") == run]
    where = {m["value"]["prediction_index"]: (m["partition"], m["offset"]) for m in there}
    counts = Counter(m["value"]["prediction_index"] for m in there)
    acked = set(range(N_ISOLATED)) - refused
    only_leader = [i for i in acked if where.get(i, (None,))[0] in parts and where[i][1] >= on_followers[where[i][0]]]
    resumed = stream_predictions(stream_records(N_ISOLATED), c.settings, topic, run_id=run, progress=False, resume=True)
    final = run_values(c.check, topic, run)
    lost, dupes = len(set(range(N_ISOLATED)) - set(final)), sum(len(v) - 1 for v in final.values())
    report("replication partition of a leader", sent=N_ISOLATED, acknowledged=len(acked), refused=len(refused),
           written_not_acknowledged=len(refused & set(counts)), acknowledged_missing=len(acked - set(counts)),
           acknowledged_only_on_leader=len(only_leader), duplicated_before_resume=sum(v - 1 for v in counts.values()),
           isr_at_failure=shrunk, failed_after_s=failed_s, heal_s=healed_s, resent=resumed.total, already_there=resumed.skipped,
           received=sum(map(len, final.values())), lost=lost, duplicated=dupes, total_s=time.monotonic() - t0)
    assert refused and all(len(isr) == 1 for isr in shrunk.values()), f"the ISR shrank to the leader alone: {shrunk}"
    assert not acked - set(counts), f"{len(acked - set(counts))} acknowledged records missing after the heal"
    assert not only_leader, f"{len(only_leader)} records acknowledged while only the leader had them"
    assert max(counts.values()) == 1 and resumed.skipped + resumed.total == N_ISOLATED
    assert lost == 0 and dupes == 0 and verify_run(stream_records(N_ISOLATED), c.check, topic, run) == N_ISOLATED

N_PARTITIONED, SILENCE = 30_000, 30

def test_leader_silent_to_clients_for_30_s(mesh, tmp_path):
    """The node leading most partitions stops answering clients for 30 s (Toxiproxy `timeout` 0 on its client link's replies;
    the cluster itself stays healthy): the stream stalls, resumes by itself, and loses and duplicates nothing."""
    c, t0, topic = mesh, time.monotonic(), "silenced"
    ensure_topic(c.check, topic, partitions=3)
    wait_for(lambda: in_sync(c.check.bootstrap_servers, topic), 60, "the new topic's replicas in sync")
    led = leaders(c.check.bootstrap_servers, topic)
    victim = Counter(led.values()).most_common(1)[0][0]
    proc = start_stream(N_PARTITIONED, c.settings.bootstrap_servers, topic, "silenced")
    try:
        wait_for(lambda: landed(c.check.bootstrap_servers, topic) >= N_PARTITIONED // 10, 120, "a tenth of the stream to land")
        name, at_cut = c.proxies[victim].client.add("timeout", "downstream", timeout=0), landed(c.check.bootstrap_servers, topic)
        time.sleep(SILENCE)
        during = landed(c.check.bootstrap_servers, topic) - at_cut
        c.proxies[victim].client.remove(name)
        t_heal = time.monotonic()
        code, summary = finish(proc)
        after_heal = time.monotonic() - t_heal
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    got = index_counts(c.check, topic)
    lost, dupes = lost_and_duplicated(got, N_PARTITIONED)
    report("leader silent to clients for 30 s", sent=N_PARTITIONED, acknowledged=summary.get("total"), received=sum(got.values()),
           lost=lost, duplicated=dupes, landed_at_cut=at_cut, landed_during_silence=during, silence_s=SILENCE,
           finished_after_heal_s=after_heal, stream_s=summary.get("elapsed"), leaders_after=leaders(c.check.bootstrap_servers, topic),
           total_s=time.monotonic() - t0)
    assert code == 0 and summary["total"] == N_PARTITIONED, summary
    assert at_cut < N_PARTITIONED, "the silence began mid-stream"
    assert lost == 0 and dupes == 0, (lost, dupes)

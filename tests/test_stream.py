"Streaming predictions to the real broker: every record confirmed, read back field by field, offsets contiguous, faults refused."

import json, math, re, subprocess, time, uuid
from pathlib import Path
import numpy as np
import pytest
from click.testing import CliRunner
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from sales_prediction_kafka.broker import free_port, kafka_jars, require_tool
from sales_prediction_kafka.config import KafkaSettings, ProducerSettings
from sales_prediction_kafka.replay import replay_command
from sales_prediction_kafka.clients import BrokerUnreachable, StreamError
from sales_prediction_kafka.message import prediction_records
from sales_prediction_kafka.clients import ensure_topic
from sales_prediction_kafka.stream import consume_command, stream_predictions, verify_stream

# all but one use the broker; that one waits out the 10 s connect timeout
pytestmark = pytest.mark.kafka


def topic():
    return f"test_{uuid.uuid4().hex[:8]}"


def predictions(n=81, seed=0):
    rng = np.random.default_rng(seed)
    actual = rng.normal(1000, 200, n)
    return prediction_records(range(n), actual, actual + rng.normal(0, 50, n))


def consume_all(servers, name):
    "Every message in `name`, read by a plain kafka-python consumer (not our helpers)."
    c = KafkaConsumer(bootstrap_servers=servers, consumer_timeout_ms=3000, enable_auto_commit=False)
    tps = [TopicPartition(name, p) for p in c.partitions_for_topic(name)]
    c.assign(tps)
    c.seek_to_beginning()
    try:
        return list(c)
    finally:
        c.close()


def test_stream_read_back_field_by_field(kafka_broker, broker_settings):
    name, recs = topic(), predictions()
    s = stream_predictions(
        recs,
        broker_settings,
        topic=name,
        run_id="run-1",
        model_version="m1",
        partitions=3,
        progress=False,
    )
    assert (s.total, s.topic, s.bootstrap_servers) == (81, name, kafka_broker.bootstrap_servers)
    msgs = consume_all(kafka_broker.bootstrap_servers, name)
    assert len(msgs) == 81
    sent = {r["prediction_index"]: r for r in recs}
    for m in msgs:
        v = json.loads(m.value.decode("utf-8"))
        assert list(v) == ["prediction_index", "predicted_sales", "actual_sales", "error"]
        r = sent.pop(v["prediction_index"])
        assert m.key == str(r["prediction_index"]).encode()
        for f in r:
            assert v[f] == r[f] and type(v[f]) is type(r[f]), f
        assert math.isclose(v["error"], v["actual_sales"] - v["predicted_sales"])
        h = {k: x.decode() for k, x in m.headers}
        assert h["run_id"] == "run-1" and h["model_version"] == "m1" and "produced_at" in h
    assert not sent  # every prediction_index arrived
    assert verify_stream(s, recs, broker_settings) == 81


def test_offsets_contiguous_and_match_summary(kafka_broker, broker_settings):
    name = topic()
    s = stream_predictions(
        predictions(500), broker_settings, topic=name, partitions=3, progress=False
    )
    by_part = {}
    for m in consume_all(kafka_broker.bootstrap_servers, name):
        by_part.setdefault(m.partition, []).append(m.offset)
    assert sum(map(len, by_part.values())) == 500 and set(by_part) == set(s.offsets)
    for p, offs in by_part.items():
        assert offs == list(range(offs[0], offs[-1] + 1))  # no gaps
        assert s.offsets[p] == [offs[0], offs[-1]]


def test_second_stream_lands_after_first_without_loss(kafka_broker, broker_settings):
    name, first, second = topic(), predictions(81, 0), predictions(81, 1)
    a = stream_predictions(first, broker_settings, topic=name, progress=False)
    b = stream_predictions(second, broker_settings, topic=name, progress=False)
    for p, (lo, hi) in b.offsets.items():
        assert lo == a.offsets.get(p, [None, -1])[1] + 1
    assert (
        verify_stream(a, first, broker_settings) == 81
        and verify_stream(b, second, broker_settings) == 81
    )
    assert len(consume_all(kafka_broker.bootstrap_servers, name)) == 162


def test_unreachable_broker_clear_error_in_bounded_time():
    servers = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=f"no Kafka broker answered at {servers}"):
        stream_predictions(predictions(5), KafkaSettings(bootstrap_servers=servers), progress=False)
    assert time.monotonic() - t0 < 15


def test_invalid_topic_refused(broker_settings):
    with pytest.raises(StreamError, match="invalid topic name 'bad topic!'"):
        stream_predictions(predictions(5), broker_settings, topic="bad topic!", progress=False)


def test_non_finite_value_sends_nothing(kafka_broker, broker_settings):
    name, recs = topic(), predictions(10)
    recs[7] = {**recs[7], "predicted_sales": float("nan"), "error": float("nan")}
    with pytest.raises(StreamError, match="prediction_index=7\\): predicted_sales is nan"):
        stream_predictions(recs, broker_settings, topic=name, progress=False)
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        assert name not in admin.list_topics()  # not even created: nothing half-sent
    finally:
        admin.close()


def test_consume_command_prints_json_lines(broker_settings):
    name, recs = topic(), predictions(20)
    stream_predictions(recs, broker_settings, topic=name, run_id="cli", progress=False)
    consume = lambda *extra: CliRunner().invoke(
        consume_command,
        ["--bootstrap-servers", broker_settings.bootstrap_servers, "--topic", name, *extra],
    )
    r = consume("--from-beginning")
    assert r.exit_code == 0, r.output
    lines = [json.loads(l) for l in r.output.splitlines()]
    assert sorted(l["value"]["prediction_index"] for l in lines) == list(range(20))
    assert all(
        l["key"] == str(l["value"]["prediction_index"]) and l["headers"]["run_id"] == "cli"
        for l in lines
    )
    r = consume("--from-beginning", "--max-records", "5")
    assert len(r.output.splitlines()) == 5


def test_consume_follow_stops_after_timeout(broker_settings):
    name = topic()
    stream_predictions(predictions(3), broker_settings, topic=name, progress=False)
    t0 = time.monotonic()
    r = CliRunner().invoke(
        consume_command,
        [
            "--bootstrap-servers",
            broker_settings.bootstrap_servers,
            "--topic",
            name,
            "--follow",
            "--timeout",
            "2",
        ],
    )
    # follows from the end: nothing new
    assert r.exit_code == 0 and r.output == "" and time.monotonic() - t0 < 10


def test_10k_records_confirmed(broker_settings):
    recs = predictions(10_000)
    s = stream_predictions(recs, broker_settings, topic=topic(), progress=False)
    assert s.total == 10_000, s
    assert verify_stream(s, recs, broker_settings) == 10_000


def codecs(broker, name) -> set:
    "The compression codecs of topic `name`'s record batches as the broker stored them (Kafka's DumpLogSegments)."
    # kafka-python sends a batch that compression would not shrink (a lone record) as `none`
    files = sorted(Path(broker.data_dir).glob(f"{name}-*/*.log"))
    res = subprocess.run(
        [
            require_tool("java"),
            "-cp",
            ":".join(map(str, kafka_jars())),
            "org.apache.kafka.tools.DumpLogSegments",
            "--files",
            ",".join(map(str, files)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and files, res.stderr[-2000:]
    return set(re.findall(r"compresscodec: (\w+)", res.stdout))


def test_compression_default_environment_and_argument(kafka_broker, broker_settings, monkeypatch):
    "zstd by default; KAFKA_COMPRESSION_TYPE beats it, `tuning` beats the environment; what the broker stores says so."
    recs, names = predictions(300), {"default": topic(), "env": topic(), "arg": topic()}
    stream_predictions(recs, broker_settings, topic=names["default"], progress=False)
    monkeypatch.setenv("KAFKA_COMPRESSION_TYPE", "gzip")
    env = stream_predictions(recs, broker_settings, topic=names["env"], progress=False)
    arg = stream_predictions(
        recs,
        broker_settings,
        topic=names["arg"],
        progress=False,
        tuning=ProducerSettings(compression_type="none"),
    )
    got = {k: codecs(kafka_broker, n) for k, n in names.items()}
    assert {k: c - {"none"} for k, c in got.items()} == {
        "default": {"zstd"},
        "env": {"gzip"},
        "arg": set(),
    }, got
    assert (
        verify_stream(env, recs, broker_settings)
        == verify_stream(arg, recs, broker_settings)
        == 300
    )


def test_replay_command_takes_producer_options(kafka_broker, broker_settings, tmp_path):
    name = topic()
    (tmp_path / "e.csv").write_text(
        "Sales,Marketing_Spend\n" + "".join(f"{i},{i * 2}\n" for i in range(50))
    )
    r = CliRunner().invoke(
        replay_command,
        [
            str(tmp_path / "e.csv"),
            "--bootstrap-servers",
            broker_settings.bootstrap_servers,
            "--topic",
            name,
            "--compression-type",
            "gzip",
            "--linger-ms",
            "0",
        ],
    )
    assert r.exit_code == 0 and f"50 records to {name}" in r.output, r.output
    assert codecs(kafka_broker, name) - {"none"} == {"gzip"}


def test_records_land_where_the_default_partitioner_puts_them(kafka_broker, broker_settings):
    "stream_predictions places each key itself; kafka-python's own partitioner puts the same keys on the same partitions."
    ours, theirs, recs = topic(), topic(), predictions(300)
    stream_predictions(recs, broker_settings, topic=ours, progress=False)
    ensure_topic(broker_settings, theirs)
    p = KafkaProducer(bootstrap_servers=broker_settings.bootstrap_servers)
    for r in recs:
        p.send(theirs, key=str(r["prediction_index"]).encode(), value=b"{}")
    p.flush(30)
    p.close()
    where = lambda name: {
        m.key: m.partition for m in consume_all(kafka_broker.bootstrap_servers, name)
    }
    assert (
        where(ours) == where(theirs)
        and len(where(ours)) == 300
        and set(where(ours).values()) == {0, 1, 2}
    )

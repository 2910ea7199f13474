"The local broker across process boundaries: CLI start/status/stop, restarts on the same data, exact stop, persistence."

import json, os, signal, subprocess, sys
import pytest
from click.testing import CliRunner
from kafka import KafkaProducer
from sales_prediction_kafka.broker import BrokerError, LocalBroker, broker_command, kafka_jars
from sales_prediction_kafka.config import KafkaSettings
from helpers import read_all


def cli(*args):
    return CliRunner().invoke(broker_command, [str(a) for a in args])


def produce(servers, topic, values):
    p = KafkaProducer(bootstrap_servers=servers)
    for v in values:
        p.send(topic, v).get(timeout=30)
    p.close()


def values(servers, topic):
    "The values of every record of `topic` up to its end now."
    return [r.value for r in read_all(KafkaSettings(bootstrap_servers=servers), topic)]


@pytest.fixture
def home(tmp_path):
    yield tmp_path / "broker"
    LocalBroker(tmp_path / "broker").stop(timeout=10)  # never leave a broker behind


@pytest.mark.kafka
def test_cli_start_status_stop_and_data_survive_restart(home):
    r = cli("start", "--home", home)
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["running"] and st["data_dir"] == str(home / "data") and (home / "server.log").exists()
    servers = st["bootstrap_servers"]
    produce(servers, "kept", [b"a", b"b"])
    assert cli("status", "--home", home).exit_code == 0
    # reused
    assert (
        cli("start", "--home", home).exit_code == 0
        and json.loads(cli("status", "--home", home).output)["pid"] == st["pid"]
    )
    assert cli("stop", "--home", home).output.startswith("stopped")
    r = cli("status", "--home", home)
    assert r.exit_code == 1 and not json.loads(r.output)["running"]
    assert cli("start", "--home", home).exit_code == 0
    # same address
    assert json.loads(cli("status", "--home", home).output)["bootstrap_servers"] == servers
    assert values(servers, "kept") == [b"a", b"b"]


@pytest.mark.kafka
def test_restart_after_sigkill(home):
    b = LocalBroker(home).start()
    produce(b.bootstrap_servers, "crash", [b"x"])
    os.killpg(b.pid(), signal.SIGKILL)
    b._proc.wait(10)
    assert not b.status()["running"]
    b2 = LocalBroker(home).start()
    assert b2.bootstrap_servers == b.bootstrap_servers
    assert values(b2.bootstrap_servers, "crash") == [b"x"]


@pytest.mark.kafka
def test_stop_touches_only_our_broker(home):
    home.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "60"])
    try:
        # a stale pid file pointing at someone else's process
        (home / "broker.pid").write_text(str(other.pid))
        assert LocalBroker(home).stop() is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.kafka
def test_default_broker_outlives_the_process_that_started_it(home):
    code = "import logging, sys; logging.basicConfig(level=logging.INFO); from pathlib import Path; from sales_prediction_kafka.broker import ensure_broker; print(ensure_broker(home=Path(sys.argv[1])).bootstrap_servers)"
    r = subprocess.run(
        [sys.executable, "-c", code, str(home)], capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, r.stderr
    assert "starting local Kafka at" in r.stderr
    st = LocalBroker(home).status()
    assert st["running"] and st["bootstrap_servers"] == r.stdout.strip()
    produce(st["bootstrap_servers"], "later", [b"still here"])
    assert cli("stop", "--home", home).output.startswith("stopped")


def test_missing_maven_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="apt-get install maven.*KAFKA_BOOTSTRAP_SERVERS"):
        kafka_jars(cache=tmp_path)


@pytest.mark.kafka
def test_sasl_plain_listener(home):
    from sales_prediction_kafka.clients import AuthenticationFailed
    from sales_prediction_kafka.message import prediction_records
    from sales_prediction_kafka.stream import stream_predictions

    b = LocalBroker(home, sasl_users={"admin": "admin-pw", "app": "app-pw"}).start()
    assert b.status()["security_protocol"] == "SASL_PLAINTEXT"
    creds = dict(
        bootstrap_servers=b.bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="app",
    )
    recs = prediction_records(range(3), [1.0, 2.0, 3.0], [1.0, 2.0, 2.0])
    assert (
        stream_predictions(
            recs, KafkaSettings(**creds, sasl_plain_password="app-pw"), progress=False
        ).total
        == 3
    )
    with pytest.raises(
        AuthenticationFailed,
        match="refused user .app..*(Invalid username or password|wrong username or password)",
    ):
        stream_predictions(
            recs, KafkaSettings(**creds, sasl_plain_password="wrong"), progress=False
        )
    with pytest.raises(Exception):  # plaintext clients are not let in
        KafkaProducer(bootstrap_servers=b.bootstrap_servers, bootstrap_timeout_ms=3000)

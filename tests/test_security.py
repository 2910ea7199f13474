"""Security on the real broker: SASL/PLAIN credentials from the environment, a clear error for wrong ones, passwords never
written anywhere, and every listening socket on loopback unless told otherwise."""

import ipaddress, json, os, re, secrets, signal, time, uuid
from pathlib import Path
import pytest
from sales_prediction_kafka.broker import LocalBroker
from sales_prediction_kafka.config import kafka_settings, redacted
from sales_prediction_kafka.data import SAMPLE_CSV
from sales_prediction_kafka.message import prediction_records
from sales_prediction_kafka.stream import messages, stream_predictions
from helpers import (
    kafka_warnings,
    params,
    run_folder,
    sales_kafka,
    start_dashboard,
    start_worker,
    topics,
)

PASSWORD = "pw-" + secrets.token_urlsafe(12)  # random: if it shows up anywhere, this run wrote it
ADMIN_PASSWORD = "adm-" + secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    "A dedicated broker whose client listener demands SASL/PLAIN (users `admin` and `app`)."
    b = LocalBroker(
        tmp_path_factory.mktemp("sasl") / "broker",
        sasl_users={"admin": ADMIN_PASSWORD, "app": PASSWORD},
    ).start(timeout=120)
    yield b
    b.stop(timeout=10)


def sasl_env(broker: LocalBroker, user: str = "app", password: str = PASSWORD) -> dict:
    "The process environment plus the KAFKA_* variables that point a client at `broker` with these credentials."
    return os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_PLAIN_USERNAME": user,
        "KAFKA_SASL_PLAIN_PASSWORD": password,
    }


# --- settings ------------------------------------------------------------------------------------------------------------


def test_security_settings_come_from_arguments_then_environment(tmp_path):
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_PLAIN_USERNAME": "app",
        "KAFKA_SASL_PLAIN_PASSWORD": PASSWORD,
        "KAFKA_SSL_CAFILE": "/etc/ca.pem",
        "KAFKA_SSL_CERTFILE": "/etc/client.pem",
        "KAFKA_SSL_KEYFILE": "/etc/client.key",
        "KAFKA_SSL_PASSWORD": ADMIN_PASSWORD,
    }
    s = kafka_settings(env=env, sasl_plain_username="other", ssl_cafile=None)
    # an argument wins, None falls through to the environment
    assert (
        s.bootstrap_servers,
        s.security_protocol,
        s.sasl_mechanism,
        s.sasl_plain_username,
        s.sasl_plain_password,
    ) == ("kafka:9093", "SASL_SSL", "SCRAM-SHA-512", "other", PASSWORD)
    assert (s.ssl_cafile, s.ssl_certfile, s.ssl_keyfile, s.ssl_password) == (
        "/etc/ca.pem",
        "/etc/client.pem",
        "/etc/client.key",
        ADMIN_PASSWORD,
    )
    shown = json.dumps(redacted(s)) + repr(s) + str(s)
    assert PASSWORD not in shown and ADMIN_PASSWORD not in shown, shown
    assert redacted(s)["sasl_plain_password"] == "***" and redacted(s)["ssl_password"] == "***"


# --- SASL/PLAIN on the real broker -----------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_right_credentials_from_environment_stream(sasl_broker):
    "`sales-kafka replay` with nothing but KAFKA_* variables: the events arrive, readable with the same credentials."
    topic = f"sasl-{uuid.uuid4().hex[:6]}"
    r, took = sales_kafka(
        "replay", SAMPLE_CSV, "--topic", topic, "--limit", "40", env=sasl_env(sasl_broker)
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "40 records" in r.stdout and PASSWORD not in r.stdout + r.stderr
    got = list(messages(kafka_settings(env=sasl_env(sasl_broker)), topic, idle_timeout=10))
    assert sorted(m["value"]["event_id"] for m in got) == list(range(40))
    print(f"\nRELIABILITY sasl-right-credentials: sent=40, received={len(got)}, seconds={took:.1f}")


@pytest.mark.kafka
@pytest.mark.parametrize(
    "user,password",
    [("app", "not-the-password"), ("mallory", PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
def test_wrong_credentials_are_a_clear_authentication_error(sasl_broker, user, password):
    r, took = sales_kafka(
        "replay", SAMPLE_CSV, "--limit", "5", env=sasl_env(sasl_broker, user, password)
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert re.search(
        rf"refused user '{user}' \(SASL_PLAINTEXT/PLAIN\).*[Uu]sername or password", r.stderr
    ), r.stderr[-3000:]
    assert password not in r.stderr + r.stdout, "the error must not echo the password"
    assert took < 30, f"an authentication failure took {took:.0f} s"
    print(f"\nRELIABILITY sasl-{user}: exit_code={r.returncode}, seconds={took:.1f}")


@pytest.mark.kafka
def test_plaintext_client_is_refused_clearly(sasl_broker):
    "A client that speaks PLAINTEXT to a SASL listener fails within the connect timeout, without a traceback."
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": sasl_broker.bootstrap_servers}
    r, took = sales_kafka("replay", SAMPLE_CSV, "--limit", "5", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert sasl_broker.bootstrap_servers in r.stderr and took < 30, (took, r.stderr[-2000:])


@pytest.mark.kafka
def test_kafka_python_still_logs_what_stream_reads(sasl_broker):
    """`clients._Errors` tells a refused login from a dropped connection by the text kafka-python 3.0 logs while it retries
    ('... Authentication failed: Invalid username or password', '... socket disconnected'). A kafka-python upgrade that changes
    that text fails here, not silently in a user's error message."""
    base = dict(
        bootstrap_servers=sasl_broker.bootstrap_servers,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
    )
    wrong = kafka_warnings(
        **base, sasl_plain_username="app", sasl_plain_password="not-the-password"
    )
    assert any("Authentication failed: Invalid username or password" in m for m in wrong.seen), (
        wrong.seen
    )
    assert "Authentication" in wrong.why("nothing logged"), wrong.seen
    # a PLAINTEXT client: the SASL listener drops it
    plain = kafka_warnings(bootstrap_servers=sasl_broker.bootstrap_servers)
    assert plain.closed_by_broker() and "Authentication" not in plain.why("nothing logged"), (
        plain.seen
    )


@pytest.mark.kafka
@pytest.mark.slow
def test_pipeline_never_writes_the_password(sasl_broker, tmp_path):
    "The main job streams to the SASL broker with the password in the environment only; no file of the run and no log line holds it."
    r, took = sales_kafka(
        "-v",
        "run",
        *params(epochs=2, cv_folds=2),
        "--topic",
        "sasl_predictions",
        "--out",
        tmp_path / "runs",
        env=sasl_env(sasl_broker),
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / run_folder(r.stdout)  # (the runs folder also holds its index.html)
    stream = json.loads((run / "metrics.json").read_text())["stream"]
    # it really streamed through SASL
    assert stream["total"] > 0 and stream["verified"] is True, stream
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"params.json", "metrics.json", "report.ipynb", "report.html"} <= {p.name for p in files}
    for secret in (PASSWORD, ADMIN_PASSWORD):
        leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, f"the password was written to {leaks}"
        assert secret not in r.stdout + r.stderr, "the password was logged"
    nbs = Path(__file__).parent.parent / "nbs"
    assert not [p for p in nbs.rglob("*.ipynb") if PASSWORD in p.read_text(errors="replace")], (
        "the password is in a notebook"
    )
    print(
        f"\nRELIABILITY sasl-pipeline: streamed={stream['total']}, files_scanned={len(files)}, password_found=0, seconds={took:.1f}"
    )


# --- listening sockets ---------------------------------------------------------------------------------------------------


def _address(hexaddr: str) -> ipaddress._BaseAddress:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return ipaddress.ip_address(raw[::-1])
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening(pid: int) -> list[tuple[str, int]]:
    "The (address, port) of every TCP socket that process `pid` (and its threads) listens on, read from /proc."
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                host, port = f[1].split(":")
                out.append((str(_address(host)), int(port, 16)))
    return out


def is_loopback(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return a.is_loopback or (
        getattr(a, "ipv4_mapped", None) is not None and a.ipv4_mapped.is_loopback
    )


@pytest.mark.kafka
def test_broker_listens_on_loopback_only(sasl_broker, kafka_broker):
    for b in (sasl_broker, kafka_broker):
        socks = listening(b.pid())
        assert {p for _, p in socks} >= {b.port, b.controller_port}, socks
        assert all(is_loopback(a) for a, _ in socks), f"{b} listens beyond loopback: {socks}"


@pytest.mark.kafka
def test_dashboard_listens_on_loopback_only_by_default(broker_settings):
    "Extends test_dashboard's connection check: every socket the dashboard process listens on is a loopback one."
    topic = f"sec_{uuid.uuid4().hex[:6]}"
    stream_predictions(
        prediction_records(range(5), [1.0] * 5, [1.5] * 5),
        broker_settings,
        topic=topic,
        partitions=1,
        progress=False,
    )
    proc, url = start_dashboard(
        broker_settings.bootstrap_servers,
        *(
            "--topic",
            topic,
            "--from-beginning",
            "--baseline",
            "1",
            "--alerts-topic",
            f"{topic}_alerts",
        ),
    )
    try:
        socks = listening(proc.pid)
        assert socks and all(is_loopback(a) for a, _ in socks), socks
        assert int(url.rstrip("/").rsplit(":", 1)[1]) in {p for _, p in socks}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


@pytest.mark.kafka
def test_serve_worker_listens_on_nothing(broker_settings, tmp_path):
    "A scoring worker only connects out: it opens no listening socket (its metrics go to a file, not an endpoint)."
    from sales_prediction_kafka.data import generate_sales
    from sales_prediction_kafka.models import SalesModel, save_model

    model = save_model(
        SalesModel("linear").fit(generate_sales(200, seed=3).dropna()), tmp_path / "model"
    )
    proc = start_worker(tmp_path, model, broker_settings, topics("sec"), "w", False)
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "w.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "w.log").read_text()[-3000:]
                if proc.poll() is not None
                else "no metrics yet"
            )
            time.sleep(0.2)
        assert listening(proc.pid) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

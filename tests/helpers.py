"Plain helpers shared by the test files (`from helpers import ...`); fixtures live in conftest.py."

import json, os, signal, subprocess, sys, threading, time, uuid
from collections import Counter
from pathlib import Path
from kafka import KafkaConsumer, TopicPartition
from sales_prediction_kafka.models import load_model
from sales_prediction_kafka.replay import replay
from sales_prediction_kafka.stream import messages
from sales_prediction_kafka.serve import ScoringWorker

ROOT = Path(__file__).resolve().parent.parent  # the checkout
# the command of the virtualenv running the tests
SALES_KAFKA = str(Path(sys.executable).parent / "sales-kafka")
CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by tools/install_browser.sh
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVE = "import logging; logging.basicConfig(level=logging.INFO); from sales_prediction_kafka.serve import serve_command; serve_command()"


def launch_chromium(playwright, chromium: str):
    "Headless Chromium at `chromium`, started by `playwright` with the project's flags."
    return playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)


def page_with_errors(browser, *kinds: str, **page_options) -> tuple:
    """A new page of `browser`, and the list that collects its errors of `kinds`: "console" (console errors) and
    "pageerror" (uncaught exceptions)."""
    page, errors = browser.new_page(**page_options), []
    if "console" in kinds:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    if "pageerror" in kinds:
        page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def topics(tag: str) -> dict:
    "Fresh topic names and group id, so tests never see each other's records."
    u = f"{tag}-{uuid.uuid4().hex[:6]}"
    return {"events": f"ev-{u}", "predictions": f"pred-{u}", "dlq": f"dlq-{u}", "group": f"g-{u}"}


def read_all(
    settings, topic: str, isolation: str = "read_committed", until=None, timeout: float = 60
) -> list:
    "Every record of `topic` up to its end now (or until `until(records)` holds), read as `isolation`."
    c = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        isolation_level=isolation,
        enable_auto_commit=False,
    )
    try:
        deadline, out = time.monotonic() + timeout, []
        while not (parts := c.partitions_for_topic(topic)) and time.monotonic() < deadline:
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        while time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                out += recs
            if until is not None:
                if until(out):
                    return out
            elif all(c.position(tp) >= o for tp, o in c.end_offsets(tps).items()):
                return out
        raise AssertionError(f"timed out reading {topic}: {len(out)} records so far")
    finally:
        c.close()


def indexes(records) -> set[int]:
    "The events that the prediction records `records` score (their prediction_index)."
    return {json.loads(r.value)["prediction_index"] for r in records}


def wait_for_predictions(settings, topic: str, n: int, timeout: float = 60) -> list:
    "The committed records of `topic` once `n` events have a prediction there; fails after `timeout` seconds."
    return read_all(settings, topic, until=lambda recs: len(indexes(recs)) >= n, timeout=timeout)


def broker_and_topics(servers: str, t: dict) -> list[str]:
    "The options that point a `serve` command at the brokers `servers` and at the group and topics of `t`."
    return [
        *("--bootstrap-servers", servers, "--group-id", t["group"]),
        *("--events-topic", t["events"], "--predictions-topic", t["predictions"]),
        *("--dead-letter-topic", t["dlq"]),
    ]


def serve_until_idle(settings, t: dict, *options: str):
    "`sales-kafka serve OPTIONS` in this process on the group and topics of `t`, until no event has come for 2 s; click's result."
    from click.testing import CliRunner
    from sales_prediction_kafka.serve import serve_command

    return CliRunner().invoke(
        serve_command,
        [*broker_and_topics(settings.bootstrap_servers, t), "--idle-exit", "2", *options],
    )


def start_worker(
    tmp: Path,
    model_dir: Path | None,
    settings,
    t: dict,
    worker: str,
    exactly_once: bool,
    *extra: str,
    partitions: int = 6,
    max_records: int = 200,
    env: dict | None = None,
) -> subprocess.Popen:
    """A `serve` worker process on the group and topics of `t`, with more options `extra` and more environment `env`; its logs
    go to <tmp>/<worker>.log, its metrics to <tmp>/<worker>.json. No `model_dir`: `extra` says where its model comes from."""
    metrics_file = str(tmp / f"{worker}.json")
    args = [
        *(["--model", str(model_dir)] if model_dir else []),
        *broker_and_topics(settings.bootstrap_servers, t),
        *("--worker-id", worker, "--partitions", str(partitions)),
        *("--max-records", str(max_records), "--session-timeout", "6"),
        *("--metrics-file", metrics_file, "--metrics-every", "0.2"),
        *(["--exactly-once"] if exactly_once else []),
        *extra,
    ]
    return subprocess.Popen(
        [sys.executable, "-c", SERVE, *args],
        stdout=subprocess.PIPE,
        stderr=open(tmp / f"{worker}.log", "ab"),
        env=os.environ | (env or {}),
    )


def start_dashboard(
    servers: str,
    *options: str,
    flags: tuple[str, ...] = (),
    log: Path | None = None,
    cwd: Path | None = None,
    env: dict | None = None,
) -> tuple[subprocess.Popen, str]:
    """`sales-kafka FLAGS dashboard --port 0 --bootstrap-servers SERVERS OPTIONS` (on a free loopback port); the process and
    the URL it prints. Its stderr goes to the file `log`, else to a pipe."""
    proc = subprocess.Popen(
        [SALES_KAFKA, *flags, "dashboard", "--port", "0", "--bootstrap-servers", servers, *options],
        stdout=subprocess.PIPE,
        stderr=open(log, "ab") if log else subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=os.environ | (env or {}),
    )
    # the host it is told, else its default
    host = options[options.index("--host") + 1] if "--host" in options else "127.0.0.1"
    line = proc.stdout.readline()
    assert line.startswith(f"dashboard at http://{host}:"), (
        line,
        log.read_text()[-3000:] if log else proc.stderr.read() if proc.poll() is not None else "",
    )
    return proc, line.split(" at ", 1)[1].strip()


def open_worker(model_dir: Path, settings, t: dict, worker_id: str = "w1", **kw):
    "An opened exactly-once `ScoringWorker` in this process, on the topics and group of `t`; `kw` for the rest."
    return ScoringWorker(
        load_model(model_dir),
        settings,
        group_id=t["group"],
        worker_id=worker_id,
        exactly_once=True,
        events_topic=t["events"],
        predictions_topic=t["predictions"],
        dead_letter_topic=t["dlq"],
        **kw,
    ).open()


def wait_for(cond, timeout: float, what: str):
    "Poll `cond()` every 0.1 s; fail naming `what` after `timeout` seconds."
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def params(**values) -> list[str]:
    "The pipeline parameters `values` as a command line's `-p NAME VALUE` options."
    return [a for name, value in values.items() for a in ("-p", name, str(value))]


def sales_kafka(
    *args, timeout: float = 300, env: dict | None = None, cwd=None
) -> tuple[subprocess.CompletedProcess, float]:
    "Run `sales-kafka args` to its end; what it did and the seconds it took."
    t0 = time.monotonic()
    r = subprocess.run(
        [SALES_KAFKA, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
    return r, time.monotonic() - t0


def feed(events, settings, topic: str, rate: float, daemon: bool = False) -> threading.Thread:
    "A started thread that replays `events` to `topic` at `rate` events a second."
    feeder = threading.Thread(
        target=replay,
        args=(events, settings, topic, rate),
        kwargs={"progress": False},
        daemon=daemon,
    )
    feeder.start()
    return feeder


def stop_workers(workers: dict, grace: float = 30) -> dict:
    "SIGTERM every worker; their exit codes ('hung' for one still running after `grace` s, then SIGKILLed)."
    for p in workers.values():
        p.send_signal(signal.SIGTERM)
    codes, deadline = {}, time.monotonic() + grace
    for w, p in workers.items():
        try:
            codes[w] = p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes[w] = "hung"
    return codes


def index_counts(settings, topic: str) -> Counter:
    "How often each prediction_index is on `topic`."
    return Counter(
        m["value"]["prediction_index"] for m in messages(settings, topic, idle_timeout=30)
    )


def prediction_counts(settings, topic: str, isolation: str = "read_committed") -> Counter:
    "How often each event has a prediction on `topic`, for an `isolation` reader."
    return Counter(
        json.loads(r.value)["prediction_index"] for r in read_all(settings, topic, isolation)
    )


def lost_and_duplicated(got: Counter, n: int) -> tuple[int, int]:
    "How many of 0..n-1 are missing from `got`, and how many beyond one per index it holds."
    return len(set(range(n)) - set(got)), sum(c - 1 for c in got.values())


def report_delivery(scenario: str, got: Counter, n: int, **figures) -> tuple[int, int]:
    "`report` the scenario's events 0..n-1 sent, predictions `got` received, lost and duplicated, then `figures`; lost and duplicated."
    lost, duplicated = lost_and_duplicated(got, n)
    report(
        scenario, sent=n, received=sum(got.values()), lost=lost, duplicated=duplicated, **figures
    )
    return lost, duplicated


def metrics(tmp: Path, worker: str) -> dict:
    "The metrics file a worker started by `start_worker` writes ({} until it has written one)."
    try:
        return json.loads((tmp / f"{worker}.json").read_text())
    except (OSError, ValueError):
        return {}


def scored(tmp: Path, worker: str) -> int:
    return metrics(tmp, worker).get("scored", 0)


def kafka_warnings(**client):
    "What kafka-python logs (WARNING and up, collected by `clients._Errors`) while a producer with `client` settings fails to connect."
    import logging, pytest
    from kafka import KafkaProducer
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError
    from sales_prediction_kafka.clients import _Errors

    seen, log = _Errors(), logging.getLogger("kafka")
    log.addHandler(seen)
    try:
        # what clients._connect catches
        with pytest.raises((KafkaTimeoutError, KafkaConnectionError)):
            KafkaProducer(
                bootstrap_timeout_ms=4000, reconnect_backoff_max_ms=1000, **client
            ).close()
    finally:
        log.removeHandler(seen)
    return seen


def run_folder(stdout: str) -> Path:
    "The run folder that `sales-kafka run` names on its last line (`report: <folder>/report.html`)."
    return Path(stdout.strip().splitlines()[-1].removeprefix("report: ")).parent


def run_offline(out: Path, *args: str) -> Path:
    "`sales-kafka run --no-stream ARGS --out OUT`, which must succeed; the run folder it made."
    r = subprocess.run(
        [SALES_KAFKA, "run", "--no-stream", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return run_folder(r.stdout)


def report(scenario: str, **figures):
    "Print one line of measured figures; `pytest -s` shows them, RELIABILITY.md records them."
    print(
        f"\nRELIABILITY {scenario}: "
        + ", ".join(f"{k}={round(v, 1) if isinstance(v, float) else v}" for k, v in figures.items())
    )


def landed(servers: str, topic: str, partitions: int | None = None) -> int:
    "The number of records in `topic` now (sum of the end offsets of its first `partitions`, else of all it has now)."
    c = KafkaConsumer(bootstrap_servers=servers, request_timeout_ms=5000)
    try:
        parts = range(partitions) if partitions else c.partitions_for_topic(topic) or ()
        return sum(c.end_offsets([TopicPartition(topic, p) for p in parts]).values())
    finally:
        c.close()


RESUMABLE_STREAM = """
import json, sys
from sales_prediction_kafka.config import KafkaSettings
from sales_prediction_kafka.message import prediction_records
from sales_prediction_kafka.stream import StreamIncomplete, stream_predictions
n, servers, topic, run_id, timeout = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
recs = prediction_records(range(n), [float(i) for i in range(n)], [i + 0.25 for i in range(n)])
try: s = stream_predictions(recs, KafkaSettings(bootstrap_servers=servers), topic, run_id=run_id, progress=False, timeout=timeout)
except StreamIncomplete as e: print(json.dumps({"error": str(e), "unacknowledged": len(e.unacknowledged), "refused": sorted(e.unacknowledged)})); sys.exit(3)
print(json.dumps(s.as_dict()))
"""


def stream_records(n: int) -> list[dict]:
    "The records `start_stream` sends."
    from sales_prediction_kafka.message import prediction_records

    return prediction_records(range(n), [float(i) for i in range(n)], [i + 0.25 for i in range(n)])


def describe(servers: str, topic: str, timeout: float = 30) -> list[dict]:
    "The partitions of `topic`: partition_index, leader_id, replica_nodes, isr_nodes; asked again while a broker knows none."
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    while True:  # a new topic's metadata reaches the brokers asynchronously (KRaft): one that has not got it yet describes
        # it with no partitions, and all(...) over none is True (CI)
        admin = KafkaAdminClient(bootstrap_servers=servers)
        try:
            (t,) = admin.describe_topics([topic])
        finally:
            admin.close()
        if t["partitions"] or time.monotonic() > deadline:
            return t["partitions"]
        time.sleep(0.5)


def start_stream(
    n: int, servers: str, topic: str, run_id: str, timeout: float = 120
) -> subprocess.Popen:
    "`stream_predictions` of n records (index i: actual i, predicted i + 0.25) in its own process, as run `run_id`; on failure it prints the count and the indexes not acknowledged."
    return subprocess.Popen(
        [sys.executable, "-c", RESUMABLE_STREAM, str(n), servers, topic, run_id, str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def failed_stream(
    n: int, servers: str, topic: str, run_id: str, timeout: float, at: int, kill
) -> tuple[dict, int, float]:
    "Stream n records in a process and call `kill()` once `at` have landed; the stream's failure, records landed at the kill, seconds from the kill to the failure."
    proc = start_stream(n, servers, topic, run_id, timeout)
    try:
        wait_for(
            lambda: landed(servers, topic, 3) >= at, 120, f"{at} records of the stream to land"
        )
        at_kill = landed(servers, topic, 3)
        kill()
        t_kill = time.monotonic()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, f"the stream should have failed:\n{out[-2000:]}{err[-3000:]}"
    failure = json.loads(out.strip().splitlines()[-1])
    print("\n" + failure["error"][:600])
    assert (
        f"of {n} records to {topic}" in failure["error"]
        and "were not acknowledged" in failure["error"]
    )
    return failure, at_kill, time.monotonic() - t_kill

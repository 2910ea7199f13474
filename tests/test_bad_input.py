"""A catalogue of bad input: CSV files, pipeline parameters, events and command-line arguments. Each is refused with an error
that names what and where (or becomes a dead letter with its reason), and the good data around it is untouched."""

import json, math, os, re, subprocess, time
from pathlib import Path
import pytest
from click.testing import CliRunner
from kafka.serializer import DefaultSerializer
from sales_prediction_kafka.data import SAMPLE_CSV, DataError, generate_sales, load_table
from sales_prediction_kafka.models import load_model
from sales_prediction_kafka.pipeline import run_command
from sales_prediction_kafka.replay import table_events
from sales_prediction_kafka.serve import MAX_EVENT_BYTES
from sales_prediction_kafka.clients import producer
from sales_prediction_kafka.clients import ensure_topic
from helpers import SALES_KAFKA, broker_and_topics, params, read_all, run_folder, topics

# --- CSV files ------------------------------------------------------------------------------------------------------------

GOOD = "Sales,Marketing_Spend,Seasonality\n100.5,20,Winter\n200,35.5,Summer\n150,28,Spring\n"

CSV_CASES = {  # kind: (file bytes, or None for no file; what the error must say)
    "missing_file": (None, r"no such file"),
    "empty_file": (b"", r"the file is empty"),
    "wrong_delimiter": (GOOD.replace(",", ";").encode(), r"looks ';'-delimited, pass sep=';'"),
    "non_numeric": (
        GOOD.replace("35.5", "lots").encode(),
        r"column 'Marketing_Spend' has 1 value\(s\) that are not finite numbers: line 3 'lots'",
    ),
    "infinity": (
        GOOD.replace("200", "inf").encode(),
        r"column 'Sales' has 1 value\(s\) that are not finite numbers: line 3 'inf'",
    ),
    "all_empty_target": (
        re.sub(r"(?m)^[0-9.]+,", ",", GOOD).encode(),
        r"column 'Sales' \(the target\) is entirely empty",
    ),
    "duplicated_header": (
        GOOD.replace("Seasonality", "Marketing_Spend").encode(),
        r"duplicated column name\(s\).*'Marketing_Spend' in columns 2, 3",
    ),
    "not_utf8": (GOOD.replace("Winter", "Hiver \xe9t\xe9").encode("latin-1"), r"not UTF-8 text"),
    "header_only": (GOOD.splitlines(keepends=True)[0].encode(), r"no data rows"),
    "no_target_column": (
        GOOD.replace("Sales", "Revenue").encode(),
        r"no column(\(s\))? 'Sales'; the columns are Revenue",
    ),
    "extra_field_mid": (GOOD.replace("200,35.5,Summer", "200,35.5,Summer,9").encode(), r"line 3"),
    "extra_field_first_row": (
        GOOD.replace("100.5,20,Winter", "100.5,20,Winter,9").encode(),
        r"line 2",
    ),
}


def write_case(folder: Path, kind: str) -> Path:
    "The CSV file of `kind` in `folder` (not created for a missing file)."
    path = folder / f"{kind}.csv"
    content, _ = CSV_CASES[kind]
    if content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("kind", CSV_CASES)
def test_bad_csv_is_refused_by_load_table(kind, tmp_path):
    path = write_case(tmp_path, kind)
    with pytest.raises(DataError) as e:
        load_table(path)
    assert str(e.value).startswith(f"{path}: "), f"the error names the file: {e.value}"
    assert re.search(CSV_CASES[kind][1], str(e.value)), str(e.value)


@pytest.mark.parametrize("kind", CSV_CASES)
def test_bad_csv_is_refused_by_run_before_it_starts(kind, tmp_path):
    "`sales-kafka run --data bad.csv`: a usage error naming the file and the problem, no traceback, no run folder."
    path, out = write_case(tmp_path, kind), tmp_path / "runs"
    r = CliRunner().invoke(run_command, ["--data", str(path), "--no-stream", "--out", str(out)])
    assert isinstance(r.exception, SystemExit), f"a traceback instead of a message: {r.exception!r}"
    assert r.exit_code == 2, r.output
    assert path.name in r.output and re.search(CSV_CASES[kind][1], r.output.replace("\n", " ")), (
        r.output
    )
    assert not out.exists() or not any(out.iterdir()), "no run folder for a run that never started"


def test_utf8_bom_loads_like_plain_utf8(tmp_path):
    "A UTF-8 BOM (Excel's 'CSV UTF-8') is not part of the first column's name: the table loads exactly as without it."
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text(GOOD, encoding="utf-8")
    bom.write_text(GOOD, encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    a, b = load_table(plain), load_table(bom)
    assert list(b.columns) == ["Sales", "Marketing_Spend", "Seasonality"]
    assert a.equals(b)


@pytest.mark.slow
def test_run_on_bom_file_by_relative_path(tmp_path):
    "The main job on the 500-row sample saved with a BOM, named by a path relative to the working folder: it runs and reads every row."
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + SAMPLE_CSV.read_bytes())
    r = subprocess.run(
        [
            SALES_KAFKA,
            "run",
            "--data",
            "bom.csv",
            "--no-stream",
            *params(epochs=2, cv_folds=2, outliers="keep"),
            "--out",
            "runs",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / run_folder(r.stdout)
    assert json.loads((run / "metrics.json").read_text())["data"]["rows"] == 500


# --- pipeline parameters and command-line arguments (each through the real `sales-kafka` command) ------------------------

CLI_CASES = {  # kind: (arguments, exit code, what stderr must say)
    "unknown_feature": (
        ["run", "--features", "Marketing_Spend,Nope"],
        2,
        r"no column(\(s\))? 'Nope'; the columns are Sales, ",
    ),
    "unknown_target": (["run", "--target", "Revenue"], 2, r"no column(\(s\))? 'Revenue'"),
    "negative_epochs": (
        ["run", "-p", "epochs", "-5"],
        2,
        r"parameter 'epochs' must be an integer >= 1, got -5",
    ),
    "epochs_not_a_number": (
        ["run", "--epochs", "ten"],
        2,
        r"Invalid value for '--epochs': 'ten' is not a valid integer",
    ),
    "param_not_a_number": (
        ["run", "-p", "epochs", "ten"],
        2,
        r"parameter 'epochs': 'ten' is not a valid integer",
    ),
    "outliers_unknown": (
        ["run", "--outliers", "drop"],
        2,
        r"Invalid value for '--outliers': 'drop' is not one of 'auto', 'keep', 'remove'",
    ),
    "test_size_out_of_range": (
        ["run", "-p", "test_size", "1.5"],
        2,
        r"parameter 'test_size' must be a fraction between 0 and 1, got 1.5",
    ),
    "unknown_parameter": (
        ["run", "-p", "epoch", "5"],
        2,
        r"unknown parameter 'epoch'; known parameters: data_path",
    ),
    "two_bad_parameters_at_once": (
        ["run", "-p", "epochs", "0", "-p", "cv_folds", "1"],
        2,
        r"'epochs' must be .*; parameter 'cv_folds' must be an integer >= 2",
    ),
    "missing_data_file": (["run", "--data", "no/such.csv"], 2, r"no/such.csv"),
    "unknown_command": (["trian"], 2, r"No such command 'trian'"),
    "max_records_zero": (
        ["serve", "--max-records", "0"],
        2,
        r"Invalid value for '--max-records': 0 is not in the range x>=1",
    ),
    "serve_missing_model": (
        ["serve", "--model", "no/such/model"],
        2,
        r"'--model'.*no/such/model.*does not exist",
    ),
    "replay_missing_csv": (["replay", "no/such.csv"], 2, r"'CSV'.*no/such.csv.*does not exist"),
    "replay_rate_zero": (
        ["replay", str(SAMPLE_CSV), "--rate", "0"],
        2,
        r"Invalid value for '--rate'",
    ),
    "replay_bad_topic_name": (
        [
            "replay",
            str(SAMPLE_CSV),
            "--topic",
            "sales events!",
            "--bootstrap-servers",
            "127.0.0.1:9",
        ],
        1,
        r"invalid topic name 'sales events!'",
    ),
}


@pytest.mark.slow  # 14 `sales-kafka` processes, ~5 s each
@pytest.mark.parametrize("kind", CLI_CASES)
def test_bad_cli_input_is_a_clear_error(kind, tmp_path):
    args, code, what = CLI_CASES[kind]
    if args[0] == "run":
        # never the default local broker
        args = [*args, "--no-stream", "--out", str(tmp_path / "runs")]
    t0 = time.monotonic()
    r = subprocess.run(
        [SALES_KAFKA, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert (r.returncode, "Traceback" in r.stderr) == (code, False), r.stderr[-3000:]
    assert re.search(what, " ".join(r.stderr.split())), r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), (
        "no run folder for a refused run"
    )
    assert time.monotonic() - t0 < 30, "refused before any work is done"


# --- events (through the real broker and a real `serve` worker) ------------------------------------------------------------


def good_events(n: int, first_id: int = 0) -> list[dict]:
    return list(
        table_events(generate_sales(n, seed=8, missing=0.0).drop(columns="Sales"), first_id)
    )


BASE = good_events(1, first_id=10_000)[0]
enc = lambda **kw: json.dumps(BASE | kw).encode()

EVENT_CASES = {  # kind: (message value, dead-letter reason, field to blame or None)
    "invalid_json": (b'{"event_id": 10000, "schema_version": 1,', "invalid_json", None),
    "not_utf8": (b'{"event_id": 1, "Gender": "\xff"}', "invalid_json", None),
    "missing_field": (
        json.dumps({k: v for k, v in BASE.items() if k != "event_id"}).encode(),
        "missing_field",
        "event_id",
    ),
    "null_field": (enc(schema_version=None), "missing_field", "schema_version"),
    "wrong_type": (enc(Marketing_Spend="lots"), "wrong_type", "Marketing_Spend"),
    "event_id_as_string": (enc(event_id="10000"), "wrong_type", "event_id"),
    "boolean_as_number": (enc(Credit_Score=True), "wrong_type", "Credit_Score"),
    "oversized": (enc(note="x" * MAX_EVENT_BYTES), "oversized", None),
    "unknown_schema_version": (enc(schema_version=2), "schema_version", "schema_version"),
    "nan": (enc(Marketing_Spend=math.nan), "not_finite", "Marketing_Spend"),
    "infinity": (enc(Credit_Score=math.inf), "not_finite", "Credit_Score"),
    "empty_value": (b"", "empty", None),
    "json_array": (b"[1, 2, 3]", "not_an_object", None),
    "negative_event_id": (enc(event_id=-1), "out_of_range", "event_id"),
    "unknown_category": (enc(Seasonality="Monsoon"), "unknown_category", "Seasonality"),
    "most_features_missing": (
        json.dumps({"event_id": 10_001, "schema_version": 1, "Gender": "Male"}).encode(),
        "too_imputed",
        "Marketing_Spend",
    ),
}
GAPS = {  # a feature with a fill value that is absent or null: imputed with the training value and scored, not dead-lettered
    "absent_feature": (
        {k: v for k, v in BASE.items() if k != "Credit_Score"} | {"event_id": 20_000},
        "Credit_Score",
    ),
    "null_feature": (BASE | {"event_id": 20_001, "Spending_Score": None}, "Spending_Score"),
}
N_GOOD = 64  # a bad event after every fourth good one


@pytest.fixture(scope="module")
def served(broker_settings, model_dir, tmp_path_factory) -> dict:
    "Good events with every kind of bad event among them, scored by one `sales-kafka serve` process until idle."
    settings, t = broker_settings, topics("bad")
    ensure_topic(settings, t["events"], partitions=3)
    good = good_events(N_GOOD)
    p = producer(settings, value_serializer=DefaultSerializer())
    kinds = list(EVENT_CASES)
    for i, ev in enumerate(good):
        p.send(t["events"], key=str(ev["event_id"]), value=json.dumps(ev).encode())
        if i % 4 == 0 and kinds:
            kind = kinds.pop()
            p.send(
                t["events"], key=kind, value=EVENT_CASES[kind][0], headers=[("kind", kind.encode())]
            )
    assert not kinds
    for kind, (ev, _) in GAPS.items():
        p.send(t["events"], key=kind, value=json.dumps(ev).encode())
    p.flush()
    p.close()
    r = subprocess.run(
        [
            SALES_KAFKA,
            "serve",
            "--model",
            model_dir,
            *broker_and_topics(settings.bootstrap_servers, t),
            "--partitions",
            "3",
            "--max-records",
            "9",
            "--idle-exit",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    dead = {
        dict(m.headers)["kind"].decode(): m
        for m in read_all(settings, t["dlq"], "read_uncommitted")
    }
    return {
        "summary": json.loads(r.stdout.strip().splitlines()[-1]),
        "good": good,
        "dead": dead,
        "predictions": read_all(settings, t["predictions"], "read_uncommitted"),
    }


@pytest.mark.kafka
@pytest.mark.parametrize("kind", EVENT_CASES)
def test_bad_event_is_a_dead_letter_with_its_reason(served, kind):
    value, reason, field = EVENT_CASES[kind]
    m = served["dead"].get(kind)
    assert m is not None, f"no dead letter for {kind}"
    h = {k: v.decode() for k, v in m.headers}
    assert (h["dlq.reason"], h.get("dlq.field")) == (reason, field), h
    assert h["dlq.detail"] and h["dlq.offset"].isdigit() and h["dlq.partition"].isdigit(), h
    if field:
        assert repr(field) in h["dlq.detail"], f"the detail names the field: {h['dlq.detail']}"
    assert m.value == value, "the original bytes are kept for inspection and replay"


@pytest.mark.kafka
def test_good_events_among_bad_ones_are_scored_untouched(served, model_dir):
    s = served
    assert (s["summary"]["scored"], s["summary"]["dead_lettered"]) == (
        N_GOOD + len(GAPS),
        len(EVENT_CASES),
    ), s["summary"]
    got = {json.loads(m.value)["prediction_index"]: json.loads(m.value) for m in s["predictions"]}
    assert len(s["predictions"]) == N_GOOD + len(GAPS) and sorted(got)[:N_GOOD] == list(
        range(N_GOOD)
    )
    expected = load_model(model_dir).predict_records(s["good"])
    for i in range(N_GOOD):
        assert math.isclose(got[i]["predicted_sales"], expected[i], rel_tol=1e-6), (
            i,
            got[i],
            expected[i],
        )


@pytest.mark.kafka
@pytest.mark.parametrize("kind", GAPS)
def test_gap_in_a_feature_is_imputed_and_marked(served, model_dir, kind):
    "An absent or null feature gets the model's training fill value, as in the batch report, and the header names it."
    event, field = GAPS[kind]
    m = next(
        m
        for m in served["predictions"]
        if json.loads(m.value)["prediction_index"] == event["event_id"]
    )
    assert dict(m.headers)["imputed"].decode() == field
    model = load_model(model_dir)
    expected = model.predict_records([{**event, field: model.fill_values[field]}])[0]
    assert math.isclose(json.loads(m.value)["predicted_sales"], expected, rel_tol=1e-9)


BROKER_COMMANDS = {  # every command that talks to Kafka, with what keeps it from waiting for more records
    "serve": ["serve", "--idle-exit", "3"],
    "join": ["join", "--idle-exit", "3"],
    "replay": ["replay", str(SAMPLE_CSV)],
    "consume": ["consume", "--timeout", "3"],
    "monitor": ["monitor", "--timeout", "3"],
    "dashboard": ["dashboard", "--port", "0"],
    "learn": ["learn", "--max-retrains", "1"],
    "models-list": ["models", "list"],
    "dlq-list": ["dlq", "list"],
    "dlq-replay": ["dlq", "replay"],
    "run": ["run"],
}


def one_error_line(r: subprocess.CompletedProcess, pattern: str) -> bool:
    "Exit 1, exactly one `Error:` line on stderr, matching `pattern`, and no traceback."
    errors = [l for l in r.stderr.splitlines() if l.startswith("Error: ")]
    return (
        r.returncode == 1
        and len(errors) == 1
        and re.search(pattern, errors[0]) is not None
        and "Traceback" not in r.stderr
    )


@pytest.mark.parametrize(
    "args", [*BROKER_COMMANDS.values(), ["broker", "start"]], ids=[*BROKER_COMMANDS, "broker-start"]
)
def test_missing_java_is_one_error_line(args, tmp_path):
    "No Java (nor Maven) on PATH and no broker running: each command prints one `Error:` line saying what to install, no traceback."
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "JAVA"))}
    # an empty PATH and a home with no broker
    env |= {"PATH": str(tmp_path / "bin"), "SALES_KAFKA_HOME": str(tmp_path / "home")}
    r = subprocess.run(
        [SALES_KAFKA, *args], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert one_error_line(r, r"`(java|mvn)` not found"), (r.returncode, r.stderr[-3000:])


@pytest.mark.slow
def test_a_bad_bootstrap_address_is_one_error_line(tmp_path):
    "A bootstrap address where no broker listens: every command but the dashboard says so in one `Error:` line, exit 1."
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")} | {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"
    }
    # it stays up and shows the outage
    commands = {name: args for name, args in BROKER_COMMANDS.items() if name != "dashboard"}
    # all at once: each waits 10 s for a broker
    procs = {
        name: subprocess.Popen(
            [SALES_KAFKA, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for name, args in commands.items()
    }
    done = {
        name: subprocess.CompletedProcess(p.args, p.wait(timeout=180), *p.communicate())
        for name, p in procs.items()
    }
    wrong = {
        name: (r.returncode, r.stderr[-1500:])
        for name, r in done.items()
        if not one_error_line(r, r"no Kafka broker answered at 127\.0\.0\.1:1")
    }
    assert not wrong, wrong

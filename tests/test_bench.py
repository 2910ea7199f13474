"The benchmarks in quick mode against the real broker: every one runs and writes sane JSON. No timing assertions."

import json, math, subprocess, sys
import pytest

from helpers import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
# every benchmark but `loop`, whose shift scenario (with a real retrain, minutes) tests/test_loop.py runs through bench.loop,
# and `pipeline`, which runs the whole pipeline three times in git worktrees (90 s in quick mode at load 1.4, minutes under load)
QUICK = ("streaming", "scoring", "validation", "live", "history", "scale", "serving_start")
MACHINE = ("cores", "cpu", "python", "numpy", "tensorflow", "kafka-python", "java", "loadavg")


@pytest.fixture(scope="module")
def results(kafka_broker, tmp_path_factory) -> dict:
    "Run `python -m bench --quick` once on the test broker; the JSON documents by benchmark name."
    out = tmp_path_factory.mktemp("bench")
    only = [a for name in QUICK for a in ("--only", name)]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            *only,
            "--out",
            str(out),
            "--bootstrap-servers",
            kafka_broker.bootstrap_servers,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    docs = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    docs["_stdout"] = res.stdout
    return docs


def positive(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in xs)


def test_every_benchmark_writes_json_with_machine_info(results):
    assert {"streaming", "scoring", "live", "scale"} <= set(results)
    for name in ("streaming", "scoring", "live", "scale"):
        doc = results[name]
        assert doc["benchmark"] == name and doc["quick"] is True
        assert set(MACHINE) <= set(doc["machine"]), doc["machine"]
        assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu"] != "unknown"
        assert len(doc["load_before"]) == 3 and isinstance(doc["targets"], dict) and doc["targets"]
    for title in ("Streaming throughput", "Batch scoring", "Live scoring", "Scale"):
        assert f"## {title}" in results["_stdout"]


def test_validation_quick_checks_agree_and_are_timed(results):
    v = results["validation"]
    sides = {r["side"]: r["us_per_event"] for r in v["rows"]}
    assert positive(*sides.values()) and len(sides) == 8, sides
    assert set(v["ratios"]) == {
        "quick/jsonschema is_valid",
        "EventValidator good/bad",
        "check_records/jsonschema (prediction records)",
    }


def test_streaming_four_sides(results):
    s = results["streaming"]
    assert s["records"] == 2000 and s["acks"] == "all" and s["idempotence"] is True
    assert positive(*s["rates_per_s"].values(), *s["ratios"].values())
    assert set(s["rates_per_s"]) == {
        f"{side}_{k}" for side in ("project", "bare", "bare_pip") for k in ("call", "send_ack")
    } | {"java"}
    assert all(r["c_crc32c"] for r in s["runs"]["bare"]) and not any(
        r["c_crc32c"] for r in s["runs"]["bare_pip"]
    )
    assert set(s["producer_settings"]) == {
        "compression_type",
        "linger_ms",
        "batch_size",
        "max_in_flight_requests_per_connection",
    }
    assert set(s["targets"]) == {"project_vs_bare_call >= 2.0", "project_vs_java_call >= 0.25"}
    assert all(r["records"] == 2000 for r in s["runs"]["java"])
    assert 50 < s["payload"]["value_bytes_mean"] < 200


def test_scoring_rates_and_predictions_match_keras(results):
    s = results["scoring"]
    assert s["sizes"] == [1, 81, 1000]
    sides = {r["side"] for r in s["rows"]}
    assert {
        "project forward(layers, X)",
        "bare numpy forward",
        "keras model.predict",
        "keras model(x)",
    } <= sides
    assert all(positive(r["rows_per_s"], r["median_s"]) and r["rounds"] >= 7 for r in s["rows"])
    for c in s["checks"]:  # the project's inference path equals model.predict
        assert c["max_abs_diff_net_output"] <= 1e-5 and c["max_diff_predict"] <= 1e-5, c
        assert c["max_diff_predict_records"] <= 1e-5 and c["match_1e-5"] is True, c
    assert s["targets"]["predictions match model.predict to 1e-5"] is True


def test_live_latency_and_throughput(results):
    s = results["live"]
    assert {r["mode"] for r in s["rows"]} == {"model", "passthrough"}
    for r in s["rows"]:
        assert r["delivered"] == r["events"], r  # every event came out of the worker
        assert (
            positive(r["throughput_per_s"], r["replay_per_s"])
            and 0 <= r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        ), r
    assert positive(*s["capacity_per_s"].values(), *s["ratios"].values())
    # Kafka's EndToEndLatency, once per round, on the same broker with records of the events' size
    j = s["java_floor"]
    assert len(j["runs"]) == s["plan"]["rounds"] and all(
        x["records"] == s["plan"]["java_records"] for x in j["runs"]
    )
    assert 150 < j["record_size"] < 300 and 0 <= j["p50_ms"] <= j["p99_ms"], j
    assert {
        f"p99_model_vs_{side}_{rate}/s" for side in ("passthrough", "java") for rate in (500, 2000)
    } <= set(s["ratios"])


def test_history_restore_and_latency_sides(results):
    "The per-series state benchmark: the restored worker scores every waiting event; both sides score every event, none dead."
    h = results["history"]
    r = h["restore"]
    assert (
        r["series"] == r["filled"]["records"] == h["plan"]["restore_series"]
        and r["scored"] == r["expected"] == 60
    ), r
    assert all(
        sum(x["records"] for x in run["restores"]) == r["filled"]["records"] for run in r["runs"]
    )
    assert (
        positive(r["assigned_to_first_scored_s"], r["rss_before_mib"], r["rss_after_mib"])
        and len(r["runs"]) == h["plan"]["restore_rounds"]
    )
    rows = {x["side"]: x for x in h["latency"]["rows"]}
    assert set(rows) == {"state", "no_state"}
    for x in rows.values():
        assert (
            x["delivered"] == x["events"] == h["plan"]["events"] * h["plan"]["rounds"]
            and x["dead_letters"] == 0
        ), x
        assert 0 <= x["p50_ms"] <= x["p99_ms"] <= x["max_ms"], x
        assert 0 < x["main_thread_cpu_us_per_event"] < x["cpu_us_per_event"], x
    assert (
        h["latency"]["worker_metrics"]["state"]["history"]["series"] == h["plan"]["stream_series"]
    )
    work = {x["side"]: x for x in h["work"]["rows"]}
    p, k = h["plan"], work["state"]["events_per_batch"]
    # both sides scored the same batches: every whole batch but those that end within the warm-up round
    counted = p["events"] * (p["rounds"] + 1) // k - p["events"] // k
    assert work["state"]["batches"] == work["no_state"]["batches"] == counted, work
    assert positive(
        work["state"]["work_p50_ms"], work["no_state"]["work_p50_ms"], h["work"]["ratio_p50"]
    )
    assert "## Per-series state" in results["_stdout"] and "in one process" in results["_stdout"]


def test_scale_sizes_time_and_memory(results):
    s = results["scale"]
    assert [r["rows"] for r in s["rows"]] == [1000, 10000]
    for r in s["rows"]:
        assert positive(
            r["load_s"],
            r["clean_s"],
            r["train_1_epoch_s"],
            r["score_s"],
            r["total_s"],
            r["peak_mib"],
        )
        assert r["peak_mib"] >= r["base_mib"] > 50 and 0 < r["rows_clean"] <= r["rows"]
    assert math.isfinite(s["loglog_slope_all"])


def test_transactions_quick_chunked_equals_in_memory(tmp_path):
    "The transactions benchmark in quick mode (it needs no broker): chunked aggregation equals the in-memory one exactly."
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "transactions",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    doc = json.loads((tmp_path / "transactions.json").read_text())
    assert (
        doc["benchmark"] == "transactions"
        and doc["quick"] is True
        and set(MACHINE) <= set(doc["machine"])
    )
    # the check really cuts chunks
    assert doc["check"]["rows"] == 5000 and doc["check"]["chunksize"] < doc["check"]["rows"]
    assert {k: v for k, v in doc["check"]["equal"].items() if "==" in k} == {
        f"{by}: chunked == {other}": True
        for by in ("month", "customer")
        for other in ("one chunk", "DataFrame")
    }
    assert {(r["rows"], r["by"], r["how"]) for r in doc["rows"]} == {
        (5000, by, how) for by in ("month", "customer") for how in ("chunked", "in-memory")
    } | {(20000, "month", "chunked"), (20000, "customer", "chunked")}
    for r in doc["rows"]:
        assert positive(r["seconds"], r["rows_per_s"], r["peak_mib"]), r
        # 12 months; customers (10,000 of them)
        assert r["groups"] == 12 if r["by"] == "month" else r["groups"] > 100, r
    assert len(doc["targets"]) == 2 and "## Transactions larger than memory" in res.stdout


def test_serving_start_numpy_worker_has_no_tensorflow_and_scores_alike(results):
    s = results["serving_start"]
    by = {r["side"]: r for r in s["summary"]}
    assert set(by) == {"numpy (model.npz)", "keras (no model.npz)", "numpy, without rfc3987_syntax"}
    for r in s["summary"]:
        assert (
            positive(r["ready_s"], r["loaded_s"], r["rss_mb"]) and r["loaded_s"] <= r["ready_s"]
        ), r
        # every worker scored the test split like the Keras-loaded net
        assert r["max_abs_diff_vs_keras"] <= 1e-6, r
    # the old path loads TensorFlow ...
    assert by["keras (no model.npz)"]["tensorflow_mapped"] is True
    assert by["numpy (model.npz)"]["tensorflow_mapped"] is False  # ... the new one does not
    assert by["numpy (model.npz)"]["rss_mb"] < by["keras (no model.npz)"]["rss_mb"] / 2, by
    assert (
        s["events_checked"] == 100
        and s["targets"]["predictions equal the Keras model's to 1e-6"] is True
    )

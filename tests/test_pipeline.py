"The real pipeline, executed by papermill on the shipped sample, into real run folders."
import json, math, subprocess, sys
from pathlib import Path

import pytest

from sales_prediction_kafka.pipeline import run_pipeline, ParameterError

FAST = {"epochs": 8, "cv_folds": 3}  # few epochs keep the suite quick; the code path is the full one

EDA_PLOTS = {"sales_distribution", "sales_by_season", "correlations", "churn_by_gender", "credit_by_default"}
REPORT_PLOTS = {"predicted_vs_actual", "residuals", "training_curve", "feature_importance", "error_by_offset"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kafka_broker):
    "Two runs with the same seed, streaming to the test broker."
    out = tmp_path_factory.mktemp("runs")
    params = {**FAST, "bootstrap_servers": kafka_broker.bootstrap_servers, "topic": "pipeline_test"}
    return [run_pipeline(params, out_dir=out, progress=False) for _ in range(2)]


@pytest.mark.kafka
@pytest.mark.slow
def test_run_folder_holds_everything(runs):
    run = runs[0]
    for name in ("report.ipynb", "report.html", "params.json", "metrics.json"):
        assert (run/name).stat().st_size > 0, name
    plots = {p.stem for p in (run/"plots").glob("*.png")}
    assert EDA_PLOTS | REPORT_PLOTS <= plots, sorted(plots)
    assert (run/"model"/"model.json").exists() and {p.suffix for p in (run/"model").iterdir()} & {".keras", ".joblib"}
    assert (run/"seed_net"/"model.keras").exists() and (run/"seed_net"/"model.h5").exists(), "the seed's net, for its users"
    html = (run/"report.html").read_text()
    for heading in ("Cleaning", "Model comparison", "Error report", "Streaming"):
        assert heading in html, heading
    assert 'src="http' not in html, "the report must open offline"


@pytest.mark.kafka
@pytest.mark.slow
def test_metrics_are_sane(runs):
    m = json.loads((runs[0]/"metrics.json").read_text())
    c = m["cleaning"]
    assert c["rows_before"] == 500 and 300 < c["rows_after"] < 500
    test = m["test"]
    assert test["n"] == math.ceil(c["rows_after"] * 0.2) or abs(test["n"] - c["rows_after"] * 0.2) <= 1
    assert 0 < test["mae"] <= test["rmse"] and test["r2"] > 0.3
    assert m["selected"] in {row["model"] for row in m["comparison"]}
    assert {row["model"] for row in m["comparison"]} >= {"seed_net", "net", "linear", "trees"}
    assert all(row["folds"] == FAST["cv_folds"] for row in m["comparison"])
    assert test["rmse"] < m["seed_net_test"]["rmse"], "the selected model must beat the seed's two-feature net"
    s = m["stream"]
    assert s["total"] == test["n"] and s["verified"] is True


@pytest.mark.kafka
@pytest.mark.slow
def test_same_seed_same_numbers(runs):
    a, b = (json.loads((r/"metrics.json").read_text()) for r in runs)
    assert runs[0] != runs[1]
    for key in ("mae", "rmse", "mape_pct", "r2", "bias"):
        assert abs(a["test"][key] - b["test"][key]) <= 1e-6, key
    for ra, rb in zip(a["comparison"], b["comparison"]):
        assert abs(ra["rmse_mean"] - rb["rmse_mean"]) <= 1e-6, ra["model"]


@pytest.mark.kafka
@pytest.mark.slow
def test_params_json_records_inputs(runs):
    p = json.loads((runs[0]/"params.json").read_text())
    assert p["parameters"]["epochs"] == FAST["epochs"] and len(p["data"]["sha256"]) == 64
    assert p["versions"]["tensorflow"] and p["versions"]["kafka-python"]


def test_bad_parameter_fails_before_running(tmp_path):
    with pytest.raises(ParameterError, match="'epochs' must be an integer >= 1"):
        run_pipeline({"epochs": -1}, out_dir=tmp_path)
    with pytest.raises(ParameterError, match="no column.*'Nope'"):
        run_pipeline({"features": "Marketing_Spend,Nope"}, out_dir=tmp_path)
    assert not any(tmp_path.iterdir()), "no run folder for a run that never started"


def test_cli_reports_bad_parameter_without_traceback():
    r = subprocess.run([str(Path(sys.executable).parent/"sales-kafka"), "run", "-p", "epochs", "-5"], capture_output=True, text=True)
    assert r.returncode == 2 and "'epochs' must be an integer >= 1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.kafka
@pytest.mark.slow
def test_any_tabular_csv_runs_end_to_end(tmp_path, kafka_broker):
    "Other column names: a different target, a many-level categorical, an ID column and a constant column."
    import numpy as np, pandas as pd
    rng = np.random.default_rng(3)
    n = 240
    region = rng.choice([f"R{i:02d}" for i in range(30)], n)
    units = rng.integers(1, 50, n).astype(float)
    price = rng.normal(20, 4, n)
    revenue = units * price + 5 * (pd.Series(region).str[1:].astype(int).to_numpy() % 3) + rng.normal(0, 20, n)
    csv = tmp_path/"stores.csv"
    pd.DataFrame({"Store_ID": np.arange(1000, 1000 + n), "Region": region, "Units": units, "Price": price,
                  "Currency": "EUR", "Revenue": revenue}).to_csv(csv, index=False)
    run = run_pipeline({"data_path": str(csv), "target": "Revenue", "epochs": 5, "cv_folds": 2,
                        "bootstrap_servers": kafka_broker.bootstrap_servers, "topic": "other_csv"}, out_dir=tmp_path/"runs", progress=False)
    m = json.loads((run/"metrics.json").read_text())
    notes = " ".join(m["feature_notes"])
    assert "Store_ID" in notes and "Currency" in notes, notes
    assert "Store_ID" not in m["features"] and "Currency" not in m["features"] and "Region" in m["features"]
    assert {r["model"] for r in m["comparison"]} == {"net", "linear", "trees"}, "no seed net without its two columns"
    assert m["test"]["r2"] > 0.5 and m["stream"]["verified"] is True
    assert "Revenue" in (run/"report.html").read_text()

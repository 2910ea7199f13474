"The real pipeline, executed by papermill on the shipped sample, into real run folders."

import json, subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import SALES_KAFKA, params, run_folder
from sales_prediction_kafka.data import SAMPLE_CSV, generate_sales, load_table
from sales_prediction_kafka.evaluate import error_report
from sales_prediction_kafka.models import split
from sales_prediction_kafka.pipeline import run_pipeline, ParameterError

# few epochs keep the suite quick; the code path is the full one
FAST = {"epochs": 8, "cv_folds": 3}

EDA_PLOTS = {
    "sales_distribution",
    "sales_by_season",
    "correlations",
    "churn_by_gender",
    "credit_by_default",
}
REPORT_PLOTS = {
    "predicted_vs_actual",
    "residuals",
    "training_curve_original_net",
    "cv_training_curves",
    "feature_importance",
    "error_by_offset",
}
FIGURES = ("n", "bias", "mae", "rmse", "mape_pct", "r2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kafka_broker):
    "Two runs with the same seed, streaming to the test broker."
    out = tmp_path_factory.mktemp("runs")
    params = {**FAST, "bootstrap_servers": kafka_broker.bootstrap_servers, "topic": "pipeline_test"}
    return [run_pipeline(params, out_dir=out, progress=False) for _ in range(2)]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def load_features(run: Path) -> list:
    return json.loads((run / "model" / "model.json").read_text())["features"]


def assert_recomputes(run: Path, m: dict):
    "The report's figures on every held-out row, and on the typical ones, equal those recomputed from test_predictions.csv."
    rows = pd.read_csv(run / "test_predictions.csv")
    assert list(rows.columns) == ["row", "actual", "predicted", "error", "typical"]
    np.testing.assert_allclose(rows.error, rows.actual - rows.predicted, rtol=0, atol=1e-9)
    for key, part in (("test", rows), ("test_typical", rows[rows.typical])):
        again = error_report(part.actual, part.predicted, index=part.row)
        for f in FIGURES:
            assert again[f] == pytest.approx(m[key][f], rel=1e-12, abs=1e-9), (key, f)
        assert again["within"] == m[key]["within"] and again["worst"] == m[key]["worst"], key
    return rows


@pytest.mark.kafka
@pytest.mark.slow
def test_run_folder_holds_everything(runs):
    run = runs[0]
    for name in (
        "report.ipynb",
        "report.html",
        "params.json",
        "metrics.json",
        "test_predictions.csv",
    ):
        assert (run / name).stat().st_size > 0, name
    plots = {p.stem for p in (run / "plots").glob("*.png")}
    assert EDA_PLOTS | REPORT_PLOTS <= plots, sorted(plots)
    assert (run / "model" / "model.json").exists() and {
        p.suffix for p in (run / "model").iterdir()
    } & {".keras", ".joblib"}
    assert (run / "original_net" / "model.keras").exists() and (
        run / "original_net" / "model.h5"
    ).exists(), "the original net, for its users"
    html = (run / "report.html").read_text()
    for heading in (
        "Data and the held-out rows",
        "Columns and cleaning",
        "Model comparison",
        "Error report",
        "Streaming",
        "every held-out row",
        "typical rows only",
    ):
        assert heading in html, heading
    assert 'src="http' not in html, "the report must open offline"
    where = json.loads((run / "report.ipynb").read_text())["metadata"]["papermill"]
    assert (where["input_path"], where["output_path"]) == (
        "sales_prediction_kafka/pipelines/sales_pipeline.ipynb",
        "report.ipynb",
    )
    assert str(run.parent) not in (run / "report.ipynb").read_text(), (
        "a shared report keeps no machine's folders"
    )


@pytest.mark.kafka
@pytest.mark.slow
def test_every_held_out_row_is_scored(runs):
    m = metrics(runs[0])
    assert (runs[0] / m["data"]["path"]).resolve() == SAMPLE_CSV.resolve(), (
        "paths in a run are relative to its folder"
    )
    assert m["data"] | {"path": None} == {
        "path": None,
        "rows": 500,
        "rows_without_target": 0,
        "train_rows": 400,
        "test_rows": 100,
    }
    assert m["test"]["n"] == 100, "no held-out row may be removed"
    assert m["cleaning"]["rows_before"] == 400, "cleaning learns from the training rows only"
    assert m["test_typical"]["n"] < 100 and m["test"]["rmse"] > m["test_typical"]["rmse"], (
        "the atypical rows are the hard ones"
    )
    assert sum(m["cleaning"]["test_cells_imputed"].values()) > 0, (
        "held-out gaps are filled with training values"
    )
    rows = assert_recomputes(runs[0], m)
    raw = load_table(SAMPLE_CSV)
    # `row` is the CSV line
    np.testing.assert_array_equal(raw.loc[rows.row, "Sales"].to_numpy(), rows.actual.to_numpy())
    assert set(rows.row).isdisjoint(split(raw, 0.2, 42)[0].index), (
        "test rows are the split's held-out lines"
    )


@pytest.mark.kafka
@pytest.mark.slow
def test_comparison_tries_both_outlier_policies(runs):
    m = metrics(runs[0])
    tried = {(r["model"], r["outliers"]) for r in m["comparison"]}
    assert tried == {
        (c, p) for c in ("original_net", "net", "linear", "trees") for p in ("keep", "remove")
    }
    assert m["outliers"]["parameter"] == "auto" and m["outliers"]["chosen"] in ("keep", "remove")
    other = "remove" if m["outliers"]["chosen"] == "keep" else "keep"
    assert (
        f"outliers {'kept' if other == 'keep' else 'removed'} from training, {m['selected']} scored CV RMSE"
        in m["selection_reason"]
    )
    assert all(r["folds"] == FAST["cv_folds"] for r in m["comparison"])
    assert m["test"]["rmse"] < m["original_net_test"]["rmse"], (
        "the selected model must beat the original two-feature net"
    )
    assert m["stream"]["total"] == 100 and m["stream"]["verified"] is True


@pytest.mark.kafka
@pytest.mark.slow
def test_same_seed_same_numbers(runs):
    a, b = (metrics(r) for r in runs)
    assert runs[0] != runs[1]
    for key in ("mae", "rmse", "mape_pct", "r2", "bias"):
        assert abs(a["test"][key] - b["test"][key]) <= 1e-6, key
    for ra, rb in zip(a["comparison"], b["comparison"]):
        assert abs(ra["rmse_mean"] - rb["rmse_mean"]) <= 1e-6, ra["model"]


@pytest.mark.kafka
@pytest.mark.slow
def test_params_json_records_inputs(runs):
    p = json.loads((runs[0] / "params.json").read_text())
    assert p["parameters"]["epochs"] == FAST["epochs"] and len(p["data"]["sha256"]) == 64
    assert p["versions"]["tensorflow"] and p["versions"]["kafka-python"]


@pytest.mark.slow
def test_original_notebook_path_still_runs(tmp_path):
    "The original recipe: IQR removal on the training rows and the two-feature net, by name (its earlier name too)."
    r = subprocess.run(
        [
            SALES_KAFKA,
            "run",
            "--no-stream",
            "--out",
            str(tmp_path),
            *params(outliers="remove", model_override="seed_net", epochs=8, cv_folds=3),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = run_folder(r.stdout)
    m = metrics(run)
    assert m["selected"] == "original_net" and m["outliers"] == {
        "parameter": "remove",
        "chosen": "remove",
    }
    assert {r["outliers"] for r in m["comparison"]} == {"remove"}
    c = m["cleaning"]
    assert c["policy"] == "remove" and c["rows_after"] == c["rows_before"] - c["atypical"] < 400
    assert load_features(run) == ["Marketing_Spend", "Seasonality"]
    assert m["test"]["n"] == 100 and "chosen by override" in m["selection_reason"]
    assert_recomputes(run, m)


@pytest.mark.slow
def test_planted_extremes_in_the_test_rows_are_counted(tmp_path):
    "Extreme rows planted among the held-out lines stay in the test and dominate its worst predictions."
    csv = tmp_path / "planted.csv"
    generate_sales(300, seed=7).to_csv(csv, index=False)
    held_out = split(load_table(csv), 0.2, 42)[1].index[:4]  # the lines the pipeline will hold out
    table = pd.read_csv(csv)
    table.loc[held_out - 2, "Sales"] *= 20  # line = position + 2
    table.to_csv(csv, index=False)
    r = subprocess.run(
        [
            SALES_KAFKA,
            "run",
            "--no-stream",
            "--data",
            str(csv),
            "--out",
            str(tmp_path / "runs"),
            *params(candidates="linear,trees", cv_folds=3),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = run_folder(r.stdout)
    m = metrics(run)
    rows = assert_recomputes(run, m)
    planted = rows[rows.row.isin(held_out)]
    assert len(planted) == 4 and not planted.typical.any(), (
        "planted rows are scored and marked atypical"
    )
    assert {w["index"] for w in m["test"]["worst"]} <= set(held_out), (
        "the worst predictions are the planted rows"
    )
    assert m["test"]["rmse"] > 3 * m["test_typical"]["rmse"]


def test_bad_parameter_fails_before_running(tmp_path):
    with pytest.raises(ParameterError, match="'epochs' must be an integer >= 1"):
        run_pipeline({"epochs": -1}, out_dir=tmp_path)
    with pytest.raises(ParameterError, match="no column.*'Nope'"):
        run_pipeline({"features": "Marketing_Spend,Nope"}, out_dir=tmp_path)
    with pytest.raises(
        ParameterError, match="'outliers' must be 'auto', 'keep' or 'remove', got 'drop'"
    ):
        run_pipeline({"outliers": "drop"}, out_dir=tmp_path)
    assert not any(tmp_path.iterdir()), "no run folder for a run that never started"


@pytest.mark.slow
def test_cli_reports_bad_parameter_without_traceback():
    r = subprocess.run([SALES_KAFKA, "run", "-p", "epochs", "-5"], capture_output=True, text=True)
    assert (
        r.returncode == 2
        and "'epochs' must be an integer >= 1" in r.stderr
        and "Traceback" not in r.stderr
    )


@pytest.mark.kafka
@pytest.mark.slow
def test_any_tabular_csv_runs_end_to_end(tmp_path, kafka_broker):
    "Other column names: a different target, a many-level categorical, an ID column and a constant column."
    rng = np.random.default_rng(3)
    n = 240
    region = rng.choice([f"R{i:02d}" for i in range(30)], n)
    units = rng.integers(1, 50, n).astype(float)
    price = rng.normal(20, 4, n)
    revenue = (
        units * price
        + 5 * (pd.Series(region).str[1:].astype(int).to_numpy() % 3)
        + rng.normal(0, 20, n)
    )
    csv = tmp_path / "stores.csv"
    pd.DataFrame(
        {
            "Store_ID": np.arange(1000, 1000 + n),
            "Region": region,
            "Units": units,
            "Price": price,
            "Currency": "EUR",
            "Revenue": revenue,
        }
    ).to_csv(csv, index=False)
    run = run_pipeline(
        {
            "data_path": str(csv),
            "target": "Revenue",
            "epochs": 5,
            "cv_folds": 2,
            "outliers": "keep",
            "numeric": "Units",
            "bootstrap_servers": kafka_broker.bootstrap_servers,
            "topic": "other_csv",
        },
        out_dir=tmp_path / "runs",
        progress=False,
    )
    m = metrics(run)
    notes = " ".join(m["feature_notes"])
    assert "Store_ID" in notes and "Currency" in notes, notes
    assert (
        "Store_ID" not in m["features"]
        and "Currency" not in m["features"]
        and "Region" in m["features"]
    )
    assert (
        m["treatment"]["Units"] == "numeric (standardised), as asked"
        and m["treatment"]["Revenue"] == "target"
    )
    assert {r["model"] for r in m["comparison"]} == {"net", "linear", "trees"}, (
        "no original net without its two columns"
    )
    assert m["test"]["r2"] > 0.5 and m["stream"]["verified"] is True
    assert "Revenue" in (run / "report.html").read_text()

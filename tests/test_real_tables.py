"Honest figures on real public tables that ship inside installed packages, checked against a plain scikit-learn reference."

import json, math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.datasets import load_diabetes
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression

from helpers import run_offline
from sales_prediction_kafka.evaluate import error_report

pytestmark = pytest.mark.slow

TABLES = {  # name: (table, target); both are real data, bundled with the package (no download)
    "diabetes": (
        lambda: load_diabetes(as_frame=True).frame,
        "target",
    ),  # 442 patients, disease progression after a year
    "grunfeld": (
        lambda: sm.datasets.grunfeld.load_pandas().data,
        "invest",
    ),  # 11 US firms x 20 years, long-tailed investment
}


def reference_rmse(table: pd.DataFrame, target: str, test_rows: pd.Index, seed: int = 42) -> dict:
    "Test RMSE of plain scikit-learn models (defaults) trained on the other rows: one-hot text, mean-filled gaps, nothing removed."
    X = pd.get_dummies(table.drop(columns=target), dtype=float)
    train_rows = table.index.difference(test_rows)
    X = X.fillna(X.loc[train_rows].mean())
    out = {}
    for name, est in (
        ("linear", LinearRegression()),
        ("trees", HistGradientBoostingRegressor(random_state=seed)),
    ):
        p = est.fit(X.loc[train_rows], table.loc[train_rows, target]).predict(X.loc[test_rows])
        out[name] = float(np.sqrt(np.mean((table.loc[test_rows, target] - p) ** 2)))
    return out


@pytest.fixture(scope="module", params=list(TABLES))
def real_run(request, tmp_path_factory) -> tuple:
    "The pipeline with its defaults (every candidate, outliers chosen by CV) on one real table, and the table by CSV line."
    tmp = tmp_path_factory.mktemp(request.param)
    make, target = TABLES[request.param]
    table = make()
    table.to_csv(tmp / "table.csv", index=False)
    run = run_offline(tmp / "runs", "--data", str(tmp / "table.csv"), "--target", target)
    table.index = table.index + 2  # the CSV line of each row, as the pipeline names them
    return request.param, table, target, run, json.loads((run / "metrics.json").read_text())


def test_every_held_out_row_is_scored(real_run):
    name, table, target, run, m = real_run
    rows = pd.read_csv(run / "test_predictions.csv")
    assert len(rows) == m["test"]["n"] == m["data"]["test_rows"] == math.ceil(len(table) * 0.2), (
        name
    )
    np.testing.assert_array_equal(rows.actual.to_numpy(), table.loc[rows.row, target].to_numpy())
    again = error_report(rows.actual, rows.predicted)
    for f in ("rmse", "mae", "bias", "r2", "mape_pct"):
        assert again[f] == pytest.approx(m["test"][f], rel=1e-12), f


def test_within_ten_percent_of_a_plain_sklearn_reference(real_run):
    name, table, target, run, m = real_run
    test_rows = pd.Index(pd.read_csv(run / "test_predictions.csv").row)
    ref = reference_rmse(table, target, test_rows)
    print(
        f"{name}: pipeline {m['selected']} ({m['outliers']['chosen']}) test RMSE {m['test']['rmse']:.2f}; "
        f"sklearn reference {ref}"
    )
    assert m["test"]["rmse"] <= 1.1 * min(ref.values()), (m["selection_reason"], ref)

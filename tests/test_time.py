"Forecasts on real time series that ship inside statsmodels: a forward holdout, figures that recompute, baselines and a plain HGB as the bar."

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from statsmodels.datasets import co2, elec_equip

from helpers import ROOT, run_offline
from sales_prediction_kafka.evaluate import error_report

pytestmark = pytest.mark.slow

SERIES = {  # name: (table with a Date column, target, one season, the step between periods); real data, no download
    "elec_equip": (
        lambda: (
            elec_equip.load()
            .data.rename_axis("Date")
            .reset_index()
            .set_axis(["Date", "Turnover"], axis=1)
        ),
        "Turnover",
        12,
        pd.DateOffset(months=1),
    ),  # monthly EU electrical equipment turnover, 1995-2016
    "co2": (
        lambda: co2.load().data.rename_axis("Date").reset_index().set_axis(["Date", "co2"], axis=1),
        "co2",
        52,
        pd.DateOffset(weeks=1),
    ),  # weekly Mauna Loa CO2, 1958-2001, 59 weeks without a reading
}
FIGURES = ("n", "bias", "mae", "rmse", "mape_pct", "wape_pct", "r2")


@pytest.fixture(scope="module", params=list(SERIES))
def forecast(request, tmp_path_factory) -> tuple:
    "The pipeline with its defaults on one real series (its date column found by itself); the table by CSV line."
    tmp = tmp_path_factory.mktemp(request.param)
    make, target, season, step = SERIES[request.param]
    table = make()
    table.to_csv(tmp / "series.csv", index=False)
    run = run_offline(tmp / "runs", "--data", str(tmp / "series.csv"), "--target", target)
    table.index = table.index + 2  # the CSV line of each row, as the pipeline names them
    rows = pd.read_csv(run / "test_predictions.csv", parse_dates=["Date"])
    labelled = table[table[target].notna()]
    train = labelled.drop(index=rows.row)
    return (
        request.param,
        labelled,
        train,
        target,
        season,
        step,
        rows,
        json.loads((run / "metrics.json").read_text()),
    )


def by_date(table: pd.DataFrame, target: str) -> pd.Series:
    return table.set_index("Date")[target]


def seasonal_naive(history: pd.Series, dates: pd.Series, season: int, step) -> np.ndarray:
    "The value one season back, else the last value before the date: written here from the definition, not the project's code."
    back = history.reindex(dates - step * season).to_numpy()
    last = np.array([history[history.index < d].iloc[-1] for d in dates])
    return np.where(np.isnan(back), last, back)


def test_every_test_row_is_later_than_every_training_row(forecast):
    name, labelled, train, target, season, step, rows, m = forecast
    assert m["time"]["column"] == "Date" and m["time"]["detected"] is True, name
    assert m["time"]["frequency"] == {"elec_equip": "monthly", "co2": "weekly"}[name]
    assert rows["Date"].min() > train["Date"].max(), name
    # every labelled row is one or the other
    assert len(rows) == m["test"]["n"] and len(rows) + len(train) == len(labelled)
    np.testing.assert_array_equal(rows.actual.to_numpy(), labelled.loc[rows.row, target].to_numpy())


def test_report_figures_recompute_from_test_predictions(forecast):
    name, labelled, train, target, season, step, rows, m = forecast
    assert list(rows.columns) == ["row", "Date", "actual", "predicted", "error", "typical"]
    history = by_date(train, target)
    scale = np.nanmean(
        np.abs(history.to_numpy() - history.reindex(history.index - step * season).to_numpy())
    )
    again = error_report(rows.actual, rows.predicted, index=rows.row, mase_scale=scale)
    for f in (*FIGURES, "mase"):
        assert again[f] == pytest.approx(m["test"][f], rel=1e-9), (name, f)
    assert again["worst"] == m["test"]["worst"]


def test_no_worse_than_seasonal_naive_on_the_same_rows(forecast):
    name, labelled, train, target, season, step, rows, m = forecast
    naive = seasonal_naive(by_date(labelled, target), rows["Date"], season, step)
    rmse = lambda p: float(np.sqrt(np.mean((rows.actual.to_numpy() - p) ** 2)))
    assert m["baselines"]["seasonal_naive"]["rmse"] == pytest.approx(rmse(naive), rel=1e-9), name
    assert m["test"]["rmse"] <= rmse(naive) * (1 + 1e-9), (
        name,
        m["selected"],
        m["test"]["rmse"],
        rmse(naive),
    )


def test_within_ten_percent_of_a_plain_hgb_with_lags(forecast):
    "A plain scikit-learn HGB with lags 1, 2 and one season and the calendar, trained on the same training rows."
    name, labelled, train, target, season, step, rows, m = forecast
    history = by_date(labelled, target)

    def features(dates: pd.Series) -> pd.DataFrame:
        lags = {f"lag_{k}": history.reindex(dates - step * k).to_numpy() for k in (1, 2, season)}
        return pd.DataFrame(
            {
                **lags,
                "year": dates.dt.year,
                "month": dates.dt.month,
                **(
                    {"week": dates.dt.isocalendar().week.astype(int).to_numpy()}
                    if season == 52
                    else {}
                ),
            }
        )

    hgb = HistGradientBoostingRegressor(random_state=42).fit(features(train["Date"]), train[target])
    ref = float(
        np.sqrt(np.mean((rows.actual.to_numpy() - hgb.predict(features(rows["Date"]))) ** 2))
    )
    print(
        f"\n{name}: chosen {m['selected']} RMSE {m['test']['rmse']:.3f}, plain HGB with lags {ref:.3f}, "
        f"seasonal naive {m['baselines']['seasonal_naive']['rmse']:.3f}"
    )
    assert m["test"]["rmse"] <= 1.1 * ref, (name, m["selected"], m["test"]["rmse"], ref)


def test_the_default_path_gives_the_committed_example_figures(tmp_path):
    "The embedded sample has no time axis: its run gives outputs/example's figures, to rounding."
    m = json.loads((run_offline(tmp_path) / "metrics.json").read_text())
    example = json.loads((ROOT / "outputs" / "example" / "metrics.json").read_text())
    assert "time" not in m and "baselines" not in m and m["selected"] == example["selected"]
    for f in ("n", "bias", "mae", "rmse", "mape_pct", "r2"):
        assert m["test"][f] == pytest.approx(example["test"][f], rel=1e-9), f

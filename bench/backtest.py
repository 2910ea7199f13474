"""Rolling-origin backtest: the project's (`TimeAxis.derive` and `.folds`, a `SalesModel("trees")` refitted per fold) against
skforecast's `backtesting_forecaster` with a `TimeSeriesFold`, side by side in one run, on one real monthly series (statsmodels'
`elec_equip`, 257 months), the same lags and rolling mean, the same HistGradientBoostingRegressor and the same folds.
Needs the `bench` extra (`pip install -e '.[bench]'`: skforecast)."""

from __future__ import annotations
import math, time, warnings
from pathlib import Path
import numpy as np
import pandas as pd
from .common import log, table, write_result, load, targets_line

NAME = "backtest"
# lag features and one rolling mean of the 3 previous months: ForecasterRecursive's lags= and
LAGS, WINDOW = ([1, 2, 12], 3)
SEED = 42  # RollingFeatures('mean', 3) build the very same columns (checked below)


def series() -> pd.Series:
    "statsmodels' elec_equip (euro-area electrical equipment orders, monthly, 1995-2016) as a float Series with a monthly index."
    from statsmodels.datasets import elec_equip

    d = elec_equip.load().data
    y = d.iloc[:, 0].astype(np.float64)
    y.index = pd.DatetimeIndex(d.index, freq="MS")
    y.name = "orders"
    return y


def project_backtest(y: pd.Series, k: int, seed: int = SEED) -> dict:
    "The project's backtest: derive lags and the rolling mean, drop the first season (lags missing), k expanding folds, one tree fit each."
    from sales_prediction_kafka.models import SalesModel
    from sales_prediction_kafka.timeseries import TimeAxis

    target = y.name
    df = pd.DataFrame({"Date": y.index, target: y.to_numpy()})
    axis = TimeAxis("Date", "M", lags=LAGS, windows=[WINDOW])
    cols = axis.lag_columns(target)
    d = axis.derive(df, target)
    # skforecast drops these max(lag) rows too; SalesModel would fill them
    d = d[d[cols].notna().all(axis=1)].reset_index(drop=True)
    pred, folds = np.full(len(d), np.nan), []
    for tr, va in axis.folds(d, k):
        m = SalesModel("trees", target=target, features=cols, numeric=cols, seed=seed).fit(
            d.iloc[tr]
        )
        pred[va] = m.predict(d.iloc[va])
        folds.append((d.Date[tr[0]], d.Date[tr[-1]], d.Date[va[0]], d.Date[va[-1]]))
    done = ~np.isnan(pred)
    err = pred[done] - d[target].to_numpy()[done]
    return {
        "folds": folds,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "pred": pd.Series(pred[done], index=pd.DatetimeIndex(d.Date[done])),
        "X": d[cols].to_numpy(),
        "rows": int(len(d)),
        "features": cols,
    }


def skforecast_cv(y: pd.Series, first_train: int, block: int):
    "A ForecasterRecursive with the same features and HGB, and the TimeSeriesFold that reproduces the project's folds."
    from sklearn.ensemble import HistGradientBoostingRegressor
    from skforecast.model_selection import TimeSeriesFold
    from skforecast.preprocessing import RollingFeatures
    from skforecast.recursive import ForecasterRecursive

    f = ForecasterRecursive(
        estimator=HistGradientBoostingRegressor(random_state=SEED),
        lags=LAGS,
        window_features=RollingFeatures(stats="mean", window_sizes=WINDOW),
    )
    # one step ahead (lags from actuals), refit every `block` steps on everything before: the project's expanding folds
    cv = TimeSeriesFold(
        steps=1,
        initial_train_size=max(LAGS) + first_train,
        refit=block,
        fixed_train_size=False,
        verbose=False,
    )
    return f, cv


def skforecast_backtest(
    y: pd.Series, first_train: int, block: int, threads: int | None = 1
) -> dict:
    "skforecast's backtesting_forecaster on the same folds; `threads` OpenMP threads for the HGB (None: its default)."
    from skforecast.model_selection import backtesting_forecaster
    from threadpoolctl import threadpool_limits

    f, cv = skforecast_cv(y, first_train, block)
    with warnings.catch_warnings(), threadpool_limits(threads, user_api="openmp"):
        warnings.simplefilter("ignore")  # LongTrainingWarning for more than 50 refits
        metric, preds = backtesting_forecaster(
            f, y, cv=cv, metric="mean_squared_error", n_jobs=1, show_progress=False
        )
    return {
        "rmse": float(math.sqrt(metric.iloc[0, 0])),
        "pred": preds["pred"],
        "cv": cv,
        "forecaster": f,
    }


def skforecast_folds(y: pd.Series, first_train: int, block: int) -> list:
    "skforecast's folds as the project's: (first and last target fitted, first and last validated), merged over each refit block."
    f, cv = skforecast_cv(y, first_train, block)
    cv.set_params({"window_size": f.window_size})
    out, idx = [], y.index
    for fold in cv.split(y):
        (tr0, tr1), (te0, te1), fit = fold[1], fold[3], fold[-1]
        if fit or not out:
            # lags take the first window_size rows
            out.append([idx[tr0 + f.window_size], idx[tr1 - 1], idx[te0], idx[te1 - 1]])
        else:
            out[-1][3] = idx[te1 - 1]
    return [tuple(x) for x in out]


def timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def run(quick: bool = False, out: Path | None = None, **_) -> dict:
    "Run both backtests, check folds, features and RMSE agree, time them in interleaved rounds; write backtest.json."
    try:
        import skforecast
    except ImportError:
        raise RuntimeError(
            "needs skforecast, the `bench` extra: pip install -e '.[bench]' (make bench does)"
        ) from None
    import sklearn

    load_before = load()
    k, rounds = (3, 1) if quick else (10, 5)
    y = series()
    ours = project_backtest(y, k)
    block = (ours["rows"]) // (k + 1)
    first_train = ours["rows"] - k * block
    theirs = skforecast_backtest(y, first_train, block)
    # the same features: skforecast's training matrix on the whole series against the project's derived columns
    f, _ = skforecast_cv(y, first_train, block)
    X_sk, _ = f.create_train_X_y(y)
    feature_diff = (
        float(np.max(np.abs(X_sk.to_numpy() - ours["X"])))
        if X_sk.shape == ours["X"].shape
        else math.inf
    )
    folds_ours = [tuple(str(t.date()) for t in f4) for f4 in ours["folds"]]
    folds_sk = [tuple(str(t.date()) for t in f4) for f4 in skforecast_folds(y, first_train, block)]
    common = ours["pred"].index.intersection(theirs["pred"].index)
    pred_diff = float(
        np.max(np.abs(ours["pred"][common].to_numpy() - theirs["pred"][common].to_numpy()))
    )
    # wall time, each side once per round, the order alternating, from the raw series to the RMSE
    sides = {
        "project (TimeAxis + SalesModel trees)": lambda: project_backtest(y, k),
        "skforecast backtesting_forecaster (1 OpenMP thread, as the project's fits)": lambda: (
            skforecast_backtest(y, first_train, block)
        ),
        "skforecast backtesting_forecaster (default threads)": lambda: skforecast_backtest(
            y, first_train, block, None
        ),
    }
    times = {s: [] for s in sides}
    for r in range(rounds):
        names = list(sides)[r % 3 :] + list(sides)[: r % 3]
        for s in names:
            times[s].append(timed(sides[s]))
        log.info("backtest round %d: %s", r + 1, {s: round(v[-1], 2) for s, v in times.items()})
    med = {s: float(np.median(v)) for s, v in times.items()}
    p, s1, sd = list(sides)
    rows = [
        {
            "side": s,
            "median_s": med[s],
            "best_s": min(times[s]),
            "rounds": len(times[s]),
            "rmse": ours["rmse"] if s == p else theirs["rmse"],
        }
        for s in sides
    ]
    ratios = {
        "rmse project/skforecast": ours["rmse"] / theirs["rmse"],
        "wall project/skforecast (1 thread)": med[p] / med[s1],
        "wall project/skforecast (default threads)": med[p] / med[sd],
        "wall per round project/skforecast (1 thread)": [
            a / b for a, b in zip(times[p], times[s1])
        ],
    }
    targets = {
        "fold boundaries equal": folds_ours == folds_sk,
        "RMSE within 2 %": abs(ours["rmse"] / theirs["rmse"] - 1) <= 0.02,
        "project wall time <= 1.0x skforecast's": med[p] / med[s1] <= 1.0,
    }
    result = {
        "quick": quick,
        "series": "statsmodels elec_equip (monthly, 1995-01 to 2016-05)",
        "length": len(y),
        "lags": LAGS,
        "rolling_mean": WINDOW,
        "features": ours["features"],
        "seed": SEED,
        "folds_k": k,
        "block": block,
        "rows_after_first_season": ours["rows"],
        "first_train_rows": first_train,
        "validated": int(len(ours["pred"])),
        "validated_skforecast": int(len(theirs["pred"])),
        "skforecast_cv": {
            "steps": 1,
            "initial_train_size": theirs["cv"].initial_train_size,
            "refit": block,
            "fixed_train_size": False,
        },
        "versions": {"skforecast": skforecast.__version__, "scikit-learn": sklearn.__version__},
        "fold_boundaries": {"project": folds_ours, "skforecast": folds_sk},
        "max_abs_feature_diff": feature_diff,
        "max_abs_prediction_diff": pred_diff,
        "rmse": {"project": ours["rmse"], "skforecast": theirs["rmse"]},
        "times_s": times,
        "rows": rows,
        "ratios": ratios,
        "targets": targets,
        "notes": [
            "one-step-ahead: every validated month's lags are actuals; skforecast: TimeSeriesFold(steps=1, refit=block, "
            "fixed_train_size=False), i.e. a refit every block of months on all earlier months",
            "the first 12 months (lag 12 missing) are dropped before the project's folds; skforecast drops them itself",
            "fold = (first and last month whose target is fitted, first and last month validated)",
            "both sides fit HistGradientBoostingRegressor(random_state=42) with its defaults; the project standardises "
            "the features first (SalesModel's Preprocessor), which trees do not care about",
            "wall time: from the raw Series to the RMSE, each side once per round, the order rotating; medians",
            "the project fits with 1 OpenMP thread (threadpoolctl); the main skforecast side runs under the same limit, "
            "the default-threads side is for information",
        ],
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print(
        f"\n## Rolling-origin backtest (elec_equip, {k} folds of {block} months, lags {LAGS} + mean of {WINDOW}; seconds)\n"
    )
    print(table(rows))
    print(
        f"\nfold boundaries equal: {folds_ours == folds_sk} ({len(folds_ours)} folds; first {folds_ours[0]}, last {folds_ours[-1]}); "
        f"max |feature diff| {feature_diff:.2g}, max |prediction diff| {pred_diff:.2g}"
    )
    print(table([{k2: v for k2, v in ratios.items() if not isinstance(v, list)}]))
    print(targets_line(targets, path))
    return result

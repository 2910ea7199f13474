"""Batch scoring: the project's inference paths (numpy `forward`, `predict_records`, `predict`) vs a bare numpy forward
pass with the same weights, Keras `model.predict`, `model(x)` and `predict_on_batch`, at several batch sizes."""

from __future__ import annotations
from pathlib import Path
import numpy as np
from .common import log, interleaved_rates, table, write_result, load, targets_line

NAME = "scoring"


def bare_numpy(weights: list, X: np.ndarray) -> np.ndarray:
    "A hand-written forward pass of the dense relu net from Keras' own weight list [W1, b1, W2, b2, ...]."
    h = X.astype(np.float32)
    for i in range(0, len(weights) - 2, 2):
        h = np.maximum(h @ weights[i] + weights[i + 1], 0)
    return (h @ weights[-2] + weights[-1])[:, 0]


def fit_model(rows: int = 4000, seed: int = 7):
    "A small net (two epochs; its weights only need to be real) and the table it was trained on."
    from sales_prediction_kafka.data import generate_sales
    from sales_prediction_kafka.models import SalesModel

    df = generate_sales(rows, seed).dropna()
    return SalesModel("net", epochs=2, patience=0, seed=seed).fit(df), df


def inputs(model, n: int, seed: int = 11):
    "A table of `n` complete rows, its model matrix and its rows as event dicts."
    from sales_prediction_kafka.data import generate_sales

    df = generate_sales(int(n * 1.3) + 10, seed).dropna().head(n).reset_index(drop=True)
    return df, model.prep.transform(df)


def run(quick: bool = False, out: Path | None = None, sizes: list | None = None, **_) -> dict:
    "Run the batch-scoring benchmark; write scoring.json; return its results."
    from sales_prediction_kafka.models import forward
    from sales_prediction_kafka.replay import table_events

    sizes = sizes or ([1, 81, 1000] if quick else [1, 81, 10_000, 1_000_000])
    min_time = 0.05 if quick else 0.4
    load_before = load()
    model, _ = fit_model()
    net, layers = model.net, model.layers
    weights = [np.asarray(w, np.float32) for w in net.get_weights()]
    df, X = inputs(model, max(sizes))
    rows, checks = [], []
    for b in sizes:
        Xb, dfb = X[:b], df.iloc[:b]
        recs = list(table_events(dfb)) if b <= 10_000 else None
        Xf = Xb.astype(np.float32)
        # correctness first: the project's paths against Keras' model.predict
        ref = net.predict(Xf, verbose=0, batch_size=b)[:, 0]
        ours = forward(layers, Xb)
        sales_ref = ref.astype(np.float64) * model.y_scale + model.y_mean
        sales = model.predict(dfb)
        # in the net's own (standardised) output units: predicted sales are y_mean + y_scale * output
        std = lambda a: float(np.max(np.abs(a - sales_ref)) / model.y_scale)
        check = {
            "batch": b,
            "max_abs_diff_net_output": float(np.max(np.abs(ours - ref))),
            "max_abs_diff_bare_numpy": float(np.max(np.abs(bare_numpy(weights, Xb) - ref))),
            "max_diff_predict": std(sales),
            "max_diff_predict_records": std(model.predict_records(recs)) if recs else None,
            "max_abs_diff_predict_dollars": float(np.max(np.abs(sales - sales_ref))),
        }
        check["match_1e-5"] = all(
            v <= 1e-5
            for k, v in check.items()
            if k.startswith("max_diff") or k.endswith("net_output")
            if v is not None
        )
        checks.append(check)
        sides = {
            "project forward(layers, X)": lambda: forward(layers, Xb),
            "project predict(df)": lambda: model.predict(dfb),
            "project predict_records(events)": (lambda: model.predict_records(recs))
            if recs
            else None,
            "bare numpy forward": lambda: bare_numpy(weights, Xb),
            "keras model.predict": lambda: net.predict(Xf, verbose=0, batch_size=b),
            "keras model(x)": lambda: net(Xf, training=False),
            "keras predict_on_batch": lambda: net.predict_on_batch(Xf),
        }
        for side, r in interleaved_rates(
            {k: f for k, f in sides.items() if f is not None}, b, min_time
        ).items():
            rows.append({"batch": b, "side": side, **r})
            log.info("scoring batch %d %s: %.0f rows/s", b, side, r["rows_per_s"])
    rate = {(r["batch"], r["side"]): r["rows_per_s"] for r in rows}
    ratios, targets = [], {}
    for b in sizes:
        g = lambda s: rate.get((b, s))
        fw, npy, kp = (
            g("project forward(layers, X)"),
            g("bare numpy forward"),
            g("keras model.predict"),
        )
        rec = g("project predict_records(events)")
        ratios.append(
            {
                "batch": b,
                "forward/numpy": fw / npy,
                "forward/model.predict": fw / kp,
                "predict_records/model.predict": rec / kp if rec else None,
                "predict(df)/model.predict": g("project predict(df)") / kp,
                "forward/model(x)": fw / g("keras model(x)"),
            }
        )
        targets[f"batch {b}: forward >= 0.5 numpy"] = fw / npy >= 0.5
        if b <= 81:
            targets[f"batch {b}: forward >= 20x model.predict"] = fw / kp >= 20
            targets[f"batch {b}: predict_records >= 20x model.predict"] = bool(
                rec and rec / kp >= 20
            )
    targets["predictions match model.predict to 1e-5"] = all(c["match_1e-5"] for c in checks)
    import tensorflow as tf

    result = {
        "quick": quick,
        "sizes": sizes,
        "features": model.prep.width,
        "hidden_units": model.params["hidden_units"],
        "notes": [
            "keras runs with the project's settings: 1 intra-op and 1 inter-op thread, op determinism on",
            "model.predict gets batch_size = the whole batch (its default of 32 would be slower for batch 81 and up)",
            "predict_records is timed up to 10k rows (the serve path scores micro-batches of at most 500)",
            "rows/s = batch / median seconds per call; the sides are timed in interleaved rounds so load bursts hit them alike",
            "checks compare with model.predict in the net's standardised output units (sales = y_mean + y_scale * output)",
        ],
        "tf_threads": {
            "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "rows": rows,
        "ratios": ratios,
        "checks": checks,
        "targets": targets,
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print(
        f"\n## Batch scoring (rows/s; median call; net {model.prep.width}->{'->'.join(map(str, model.params['hidden_units']))}->1)\n"
    )
    sides = list(dict.fromkeys(r["side"] for r in rows))
    print(table([{"side": s, **{f"batch {b:,}": rate.get((b, s)) for b in sizes}} for s in sides]))
    print()
    print(table(ratios))
    print(
        f"\nmax |forward - model.predict| (net output): {max(c['max_abs_diff_net_output'] for c in checks):.2g}; "
        f"predict(df) and predict_records in the same units: {max(c['max_diff_predict'] for c in checks):.2g}; "
        f"in dollars: {max(c['max_abs_diff_predict_dollars'] for c in checks):.2g}"
    )
    print(targets_line(targets, path))
    return result

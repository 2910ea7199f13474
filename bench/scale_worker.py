"""A fresh process for one size of the scale benchmark.

`write N CSV` writes `generate_sales(N)` to CSV (not timed). `measure CSV` times load_table + clean + one training
epoch of the net + batch scoring of every clean row, and prints one JSON line with the seconds per step and the
process's peak resident memory (VmHWM) after the imports and after each step."""

from __future__ import annotations
import json, os, sys, time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def peak_mib() -> float:
    "This process's peak resident memory so far (VmHWM, the same as getrusage's ru_maxrss), in MiB."
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(n: int, path: str):
    from sales_prediction_kafka.data import generate_sales, write_table

    t0 = time.perf_counter()
    write_table(generate_sales(n, seed=42), path)
    print(
        json.dumps(
            {"rows": n, "write_s": time.perf_counter() - t0, "bytes": os.path.getsize(path)}
        ),
        flush=True,
    )


def measure(path: str):
    import numpy as np
    from sales_prediction_kafka.data import load_table
    from sales_prediction_kafka.clean import Cleaner
    from sales_prediction_kafka.models import SalesModel, _keras, plan_features

    _keras()  # import TensorFlow before the clock starts: its import is a constant, not a cost per row
    r = {"peak_mib": {"imports": peak_mib()}, "seconds": {}}

    def step(name, f):
        t0 = time.perf_counter()
        out = f()
        r["seconds"][name] = time.perf_counter() - t0
        r["peak_mib"][name] = peak_mib()
        return out

    df = step("load", lambda: load_table(path))
    plan = plan_features(df, "Sales")
    cleaned, _ = step(
        "clean",
        lambda table=df: (
            Cleaner("Sales", plan.numeric, plan.categorical).fit(table).apply(table, "remove")
        ),
    )
    del df
    # the model's own cleaning finds nothing left to do on the cleaned rows
    model = step(
        "train_1_epoch",
        lambda: SalesModel("net", epochs=1, patience=0, batch_size=32, seed=42).fit(cleaned),
    )
    y = step("score", lambda: model.predict(cleaned))
    if not np.all(np.isfinite(y)) or len(y) != len(cleaned):
        raise RuntimeError("scoring produced bad predictions")
    r |= {
        "rows_clean": len(cleaned),
        "total_s": sum(r["seconds"].values()),
        "maxrss_mib": peak_mib(),
    }
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    write(int(args[0]), args[1]) if cmd == "write" else measure(args[0])

"""A fresh process for one step of the transactions benchmark.

`write N CSV` writes N generated transactions (not timed: a numpy writer, 1M rows at a time). `chunked CSV BY [CHUNKSIZE]`
times `aggregate_transactions(CSV, by=BY)` streaming the file in chunks; `in-memory CSV BY` times the whole file read into
one DataFrame and aggregated. Both print one JSON line with the seconds and the process's peak resident memory (VmHWM).
`check CSV [CHUNKSIZE]` prints whether the chunked tables equal the in-memory ones exactly, by month and by customer."""

from __future__ import annotations
import json, sys, time
import numpy as np
from bench.scale_worker import peak_mib

MAX_CENTS = 1_000_000  # amounts are drawn below $10,000


def _strings(xs) -> np.ndarray:
    "The byte strings of `xs` as a numpy `S` array (shorter ones padded with NUL bytes, which the writer drops)."
    return np.array([str(x).encode() for x in xs])


def write(n: int, path: str, customers: int = 10_000, seed: int = 42, chunk: int = 1_000_000):
    "Write `n` transactions with `generate_transactions`' schema and model (a spending score and gender per customer, a monthly budget, Winter peaks)."
    import pandas as pd
    from sales_prediction_kafka.data import GENDERS, SEASONS

    t0 = time.perf_counter()
    r = np.random.default_rng(seed)
    score, gender = (
        np.clip(np.rint(r.beta(1.2, 1.2, customers) * 99 + 1), 1, 100),
        r.integers(0, 2, customers),
    )
    budget = np.round(r.lognormal(np.log(20000), 0.4, 12), 2)
    days = pd.date_range("2025-01-01", "2025-12-31")
    month, season = days.month.to_numpy() - 1, (days.month.to_numpy() % 12) // 3
    text = [
        _strings(days.strftime("%Y-%m-%d")),
        _strings(f"C{i + 1:05d}" for i in range(customers)),
        _strings(f"{c / 100:.2f}" for c in range(MAX_CENTS)),
        _strings(f"{b:.2f}" for b in budget),
        _strings(SEASONS),
        _strings(int(s) for s in score),
        _strings(GENDERS),
    ]
    with open(path, "wb") as f:
        f.write(b"Date,Customer_ID,Amount,Marketing_Spend,Seasonality,Spending_Score,Gender\n")
        for i in range(0, n, chunk):
            m, rr = min(chunk, n - i), np.random.default_rng([seed, i])
            cust, day = rr.choice(customers, m, p=score / score.sum()), rr.integers(0, len(days), m)
            amount = (
                rr.lognormal(np.log(4000), 0.5, m)
                * (0.5 + score[cust] / 50)
                * np.sqrt(budget[month[day]] / 20000)
                * (1 + 0.3 * (season[day] == 0))
            )
            codes = [
                day,
                cust,
                np.clip(np.rint(amount), 1, MAX_CENTS - 1).astype(np.int64),
                month[day],
                season[day],
                cust,
                gender[cust],
            ]
            cells = [t[c].view(np.uint8).reshape(m, -1) for t, c in zip(text, codes)]
            seps = [np.full((m, 1), ord(s), np.uint8) for s in "," * 6 + "\n"]
            rows = np.hstack([x for pair in zip(cells, seps) for x in pair]).ravel()
            f.write(rows[rows != 0].tobytes())
    import os

    print(
        json.dumps(
            {"rows": n, "write_s": time.perf_counter() - t0, "bytes": os.path.getsize(path)}
        ),
        flush=True,
    )


def measure(path: str, by: str, how: str, chunksize: str | None = None):
    "Time one aggregation, chunked or in memory, and print its seconds, peak memory and result size."
    import pandas as pd
    from sales_prediction_kafka.data import aggregate_transactions

    imports = peak_mib()
    t0 = time.perf_counter()
    if how == "chunked":
        out = aggregate_transactions(
            path, by=by, **({"chunksize": int(chunksize)} if chunksize else {})
        )
    else:
        out = aggregate_transactions(pd.read_csv(path, dtype={"Customer_ID": str}), by=by)
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - t0,
                "peak_mib": peak_mib(),
                "imports_mib": imports,
                "groups": len(out),
                "transactions": int(out.Transactions.sum()),
                "sales": float(out.Sales.sum()),
            }
        ),
        flush=True,
    )


def check(path: str, chunksize: str = "9973"):
    "Whether the chunked tables equal the in-memory ones exactly (every cell, every dtype), by month and by customer."
    import pandas as pd
    from sales_prediction_kafka.data import aggregate_transactions

    df, res = pd.read_csv(path, dtype={"Customer_ID": str}), {}
    for by in ("month", "customer"):
        chunked = aggregate_transactions(path, by=by, chunksize=int(chunksize))
        for name, other in {
            "one chunk": aggregate_transactions(path, by=by, chunksize=len(df) + 1),
            "DataFrame": aggregate_transactions(df, by=by),
        }.items():
            try:
                pd.testing.assert_frame_equal(chunked, other, check_exact=True)
                res[f"{by}: chunked == {name}"] = True
            except AssertionError:
                res[f"{by}: chunked == {name}"] = False
        res[f"{by}: groups"] = len(chunked)
    print(json.dumps({"rows": len(df), "chunksize": int(chunksize), "equal": res}), flush=True)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "write":
        write(int(args[0]), args[1])
    elif cmd == "check":
        check(*args)
    else:
        measure(args[0], args[1], cmd, *args[2:])

"""Transactions larger than memory: a generated transactions CSV aggregated by month and by customer, streamed in chunks,
each run in a fresh process (time and peak resident memory); the whole file read into memory at a smaller size, for the
contrast; and a check that the chunked tables equal the in-memory ones exactly."""

from __future__ import annotations
import tempfile
from pathlib import Path
from .common import log, run_worker, table, write_result, load

NAME = "transactions"
# chunksize None: the library's default
FULL = {"big": 50_000_000, "mid": 5_000_000, "check": 200_000, "chunksize": None}
QUICK = {"big": 20_000, "mid": 5_000, "check": 5_000, "chunksize": 2_000}
GIB = 2**30


def worker(*args, timeout: float = 3600) -> dict:
    "Run `bench.transactions_worker` in a fresh process; its JSON line."
    return run_worker("transactions_worker", *args, timeout=timeout)


def measure(csv: Path, rows: int, how: str, by: str, chunksize: int | None) -> dict:
    "One aggregation in a fresh process, as a table row."
    m = worker(how, csv, by, *([chunksize] if chunksize and how == "chunked" else []))
    if m["transactions"] != rows:
        raise RuntimeError(
            f"{how} by {by}: {m['transactions']} transactions counted, {rows} written"
        )
    log.info(
        "transactions %d rows, %s by %s: %.1f s, peak %.0f MiB",
        rows,
        how,
        by,
        m["seconds"],
        m["peak_mib"],
    )
    return {
        "rows": rows,
        "by": by,
        "how": how,
        "seconds": m["seconds"],
        "rows_per_s": rows / m["seconds"],
        "peak_mib": m["peak_mib"],
        "data_mib": m["peak_mib"] - m["imports_mib"],
        "groups": m["groups"],
        "sales": m["sales"],
    }


def run(quick: bool = False, out: Path | None = None, **_) -> dict:
    "Run the transactions benchmark; write transactions.json; return its results."
    size = QUICK if quick else FULL
    load_before, rows, written = load(), [], {}
    with tempfile.TemporaryDirectory(prefix="bench-transactions-", dir="/tmp") as tmp:
        csv = Path(tmp) / "check.csv"
        written["check"] = worker("write", size["check"], csv)
        check = worker("check", csv, *([size["chunksize"]] if size["chunksize"] else []))
        csv.unlink()
        for name, how in (("mid", ("chunked", "in-memory")), ("big", ("chunked",))):
            csv = Path(tmp) / f"{name}.csv"
            written[name] = w = worker("write", size[name], csv)
            log.info(
                "wrote %d transactions (%.2f GiB) in %.0f s",
                w["rows"],
                w["bytes"] / GIB,
                w["write_s"],
            )
            # chunked and in memory alternate, so load changes hit both
            for by in ("month", "customer"):
                rows += [measure(csv, size[name], h, by, size["chunksize"]) for h in how]
            csv.unlink()
    for r in rows:
        r["csv_gib"] = written["mid" if r["rows"] == size["mid"] else "big"]["bytes"] / GIB
    big = [r for r in rows if r["rows"] == size["big"]]
    mid = {(r["how"], r["by"]): r for r in rows if r["rows"] == size["mid"]}
    ratios = {
        f"in-memory/chunked peak MiB at {size['mid']:,} rows, by {by}": mid["in-memory", by][
            "peak_mib"
        ]
        / mid["chunked", by]["peak_mib"]
        for by in ("month", "customer")
    }
    ratios |= {
        f"in-memory/chunked seconds at {size['mid']:,} rows, by {by}": mid["in-memory", by][
            "seconds"
        ]
        / mid["chunked", by]["seconds"]
        for by in ("month", "customer")
    }
    in_memory_bytes_per_row = max(
        (mid["in-memory", by]["data_mib"] * 2**20 / size["mid"] for by in ("month", "customer"))
    )
    result = {
        "quick": quick,
        "sizes": size,
        "rows": rows,
        "check": check,
        "ratios": ratios,
        "in_memory_bytes_per_row": in_memory_bytes_per_row,
        "in_memory_peak_gib_estimate_at_big": in_memory_bytes_per_row * size["big"] / GIB,
        "targets": {
            f"peak RSS <= 2 GiB at {size['big']:,} rows (chunked, by month and by customer)": all(
                r["peak_mib"] <= 2048 for r in big
            ),
            f"chunked == in-memory exactly at {size['check']:,} rows (by month and by customer)": all(
                v for k, v in check["equal"].items() if "==" in k
            ),
        },
        "notes": [
            "each aggregation runs in a fresh process; peak = VmHWM of that process, including the imports (~70 MiB)",
            "chunked = aggregate_transactions(csv, by=...) (the file streamed in chunks of `chunksize` rows)",
            "in-memory = aggregate_transactions(pd.read_csv(csv), by=...) (the whole file in one DataFrame, one chunk)",
            "the check compares the chunked table with the one-chunk and the DataFrame tables with assert_frame_equal(check_exact=True)",
            "files are written by a numpy writer with generate_transactions' schema and model (10,000 customers), not timed",
        ],
        "written": written,
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print(
        "\n## Transactions larger than memory (fresh process per run; seconds and peak resident memory)\n"
    )
    print(
        table(
            rows,
            [
                "rows",
                "csv_gib",
                "by",
                "how",
                "seconds",
                "rows_per_s",
                "peak_mib",
                "data_mib",
                "groups",
            ],
        )
    )
    print(
        f"\nchunked == in-memory exactly at {check['rows']:,} rows (chunks of {check['chunksize']:,}): {check['equal']}"
    )
    print("ratios: " + "; ".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    print(
        f"in memory: {in_memory_bytes_per_row:,.0f} bytes/row above the imports -> about {result['in_memory_peak_gib_estimate_at_big']:.1f} GiB "
        f"for {size['big']:,} rows; load {load_before} -> {result['load_after']}   -> {path}"
    )
    return result

"""Scale: time and peak memory of load + clean + one training epoch + batch scoring on generated tables of growing size,
each size in a fresh process; the log-log slope of time against rows, and where memory would run out."""

from __future__ import annotations
import os, tempfile
from pathlib import Path
from .common import log, run_worker, loglog_slope, table, write_result, load

NAME = "scale"
SIZES = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]


def worker(*args, timeout: float = 3600) -> dict:
    "Run `bench.scale_worker` in a fresh process; its JSON line."
    return run_worker("scale_worker", *args, timeout=timeout)


def run(quick: bool = False, out: Path | None = None, max_rows: int | None = None, **_) -> dict:
    "Run the scale benchmark; write scale.json; return its results."
    max_rows = max_rows or (10_000 if quick else 1_000_000)
    sizes = [n for n in SIZES if n <= max_rows]
    load_before, rows = load(), []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for n in sizes:
            csv = Path(tmp) / f"sales_{n}.csv"
            w = worker("write", n, csv)
            m = worker("measure", csv)
            csv.unlink()
            rows.append(
                {
                    "rows": n,
                    "csv_mib": w["bytes"] / 2**20,
                    **{f"{k}_s": v for k, v in m["seconds"].items()},
                    "total_s": m["total_s"],
                    "rows_per_s": n / m["total_s"],
                    "base_mib": m["peak_mib"]["imports"],
                    "peak_mib": m["maxrss_mib"],
                    "data_mib": m["maxrss_mib"] - m["peak_mib"]["imports"],
                    "peak_after_mib": m["peak_mib"],
                    "rows_clean": m["rows_clean"],
                }
            )
            log.info("scale %d rows: %.1f s, peak %.0f MiB", n, m["total_s"], m["maxrss_mib"])
    xs, ts = [r["rows"] for r in rows], [r["total_s"] for r in rows]
    slope = loglog_slope(xs, ts)
    big = [r for r in rows if r["rows"] >= 100_000]
    slope_big = (
        loglog_slope([r["rows"] for r in big], [r["total_s"] for r in big])
        if len(big) >= 2
        else None
    )
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    a, b = rows[-2], rows[-1]
    # bytes per extra row at the top sizes
    per_row = (b["data_mib"] - a["data_mib"]) / (b["rows"] - a["rows"]) * 2**20
    limit = int((mem_gib * 1024 - b["base_mib"]) * 2**20 / per_row) if per_row > 0 else None
    steps = [k for k in rows[-1] if k.endswith("_s") and k not in ("total_s",)]
    step_slopes = (
        {k: loglog_slope([r["rows"] for r in big], [max(r[k], 1e-6) for r in big]) for k in steps}
        if len(big) >= 2
        else {}
    )
    result = {
        "quick": quick,
        "sizes": sizes,
        "rows": rows,
        "loglog_slope_all": slope,
        "loglog_slope_100k_up": slope_big,
        "loglog_slope_by_step_100k_up": step_slopes,
        "bytes_per_row_peak": per_row,
        "memory_gib": mem_gib,
        "rows_until_memory_runs_out": limit,
        "targets": {"log-log slope <= 1.1": (slope_big if slope_big is not None else slope) <= 1.1},
        "notes": [
            "each size measured in a fresh process; peak = VmHWM (ru_maxrss) of that process",
            "base = peak after importing pandas, the project and TensorFlow; data = peak - base",
            "train = SalesModel('net', epochs=1, patience=0, batch_size=32).fit(clean table)",
            "score = model.predict on every clean row",
        ],
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print("\n## Scale (fresh process per size; seconds and peak resident memory)\n")
    print(
        table(
            rows,
            [
                "rows",
                "csv_mib",
                "load_s",
                "clean_s",
                "train_1_epoch_s",
                "score_s",
                "total_s",
                "rows_per_s",
                "peak_mib",
                "data_mib",
            ],
        )
    )
    print(
        f"\nlog-log slope of time vs rows: {slope:.2f} over all sizes"
        + (f", {slope_big:.2f} from 100k up" if slope_big is not None else "")
        + " (target <= 1.1); "
        f"{per_row:,.0f} bytes/row at the peak -> memory ({mem_gib:.0f} GiB) runs out near {limit:,} rows   -> {path}"
    )
    return result

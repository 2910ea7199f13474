"""Run the benchmarks: `python -m bench [--quick] [--only NAME ...] [--bootstrap-servers HOST:PORT] [--out DIR]`."""

from __future__ import annotations
import argparse, importlib, logging, os, sys, time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# modules of this package, run in this order
BENCHMARKS = (
    "streaming",
    "scoring",
    "validation",
    "live",
    "join",
    "history",
    "scale",
    "loop",
    "serving_start",
    "pipeline",
    "transactions",
    "backtest",
    "peer",
)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split(":")[0] + ".")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: a smoke run of every path (seconds, not minutes)",
    )
    ap.add_argument(
        "--only", action="append", choices=BENCHMARKS, help="run only this benchmark (repeatable)"
    )
    ap.add_argument(
        "--bootstrap-servers",
        help="use this Kafka cluster instead of starting a LocalBroker in a temporary home",
    )
    ap.add_argument("--out", type=Path, help="folder for the JSON results (default: bench/results)")
    ap.add_argument(
        "--max-rows",
        type=int,
        help="scale: largest table size (default 1M full, 10k quick; 10M is possible)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    failed = []
    for name in args.only or BENCHMARKS:
        mod = importlib.import_module(f"bench.{name}")
        t0 = time.monotonic()
        kw = (
            {"max_rows": args.max_rows}
            if name == "scale"
            else {"bootstrap_servers": args.bootstrap_servers}
        )
        try:
            mod.run(quick=args.quick, out=args.out, **kw)
        except Exception as e:
            logging.getLogger("bench").exception("benchmark %s failed", name)
            failed.append(f"{name}: {e}")
        print(f"[{name}: {time.monotonic() - t0:.0f} s]", file=sys.stderr)
    if failed:
        sys.exit("failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Copy the papermill notebooks from `nbs/pipelines/` into the package, so that an installed wheel can run them.

    python tools/sync_pipelines.py          # copy nbs/pipelines/*.ipynb -> sales_prediction_kafka/pipelines/ (and drop stale copies)
    python tools/sync_pipelines.py --check  # write nothing; exit 1 naming every copy that differs from its source

`nbs/pipelines/` is the only place to edit a pipeline notebook. The copy is byte for byte, like `nbdev_export` for the
chapters: `make export` runs this after `nbdev_clean`, and `make check-export` runs it and fails when the committed copy
differs. `sales_prediction_kafka.runfolder.PIPELINE_NOTEBOOK` points at the package copy.
"""

from __future__ import annotations
import argparse, shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "nbs" / "pipelines", ROOT / "sales_prediction_kafka" / "pipelines"


def differences(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    "What a copy would change: copies that are missing, differ from their source, or have no source any more."
    out = []
    for src in sorted(source.glob("*.ipynb")):
        dst = target / src.name
        if not dst.exists():
            out.append(f"missing {dst.relative_to(ROOT)}")
        elif dst.read_bytes() != src.read_bytes():
            out.append(f"differs {dst.relative_to(ROOT)} from {src.relative_to(ROOT)}")
    out += [
        f"stale {p.relative_to(ROOT)}"
        for p in sorted(target.glob("*.ipynb"))
        if not (source / p.name).exists()
    ]
    return out


def sync(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    "Make `target` hold exactly the notebooks of `source`, byte for byte; return what changed."
    changed = differences(source, target)
    target.mkdir(exist_ok=True)
    for src in source.glob("*.ipynb"):
        shutil.copyfile(src, target / src.name)
    for p in target.glob("*.ipynb"):
        if not (source / p.name).exists():
            p.unlink()
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a copy differs from its source",
    )
    args = ap.parse_args(argv)
    if args.check:
        diff = differences()
        for d in diff:
            print(d, file=sys.stderr)
        if diff:
            print(
                "run `make export` (or python tools/sync_pipelines.py) and commit the copy",
                file=sys.stderr,
            )
        return 1 if diff else 0
    for d in sync():
        print(f"copied: {d}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

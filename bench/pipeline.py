"""The main job: the executed sample pipeline (`sales-kafka run --no-stream`, the model comparison end to end) timed side by
side for main when issue 16 was filed, the commit before the numpy validation loss, and the working tree; each side imports
its own package (PYTHONPATH and cwd at a `git worktree` of it) in the same venv, and the sides run interleaved."""

from __future__ import annotations
import json, os, subprocess, sys, tempfile, time
from pathlib import Path
from .common import log, table, write_result, load, targets_line

NAME = "pipeline"
ROOT = Path(__file__).resolve().parent.parent  # the working tree
SIDES = {
    "filed": "96aaf7f",  # main when issue 16 was filed
    "before_numpy_val_loss": "bd7036c^",  # the commit before the numpy validation loss: the same honest evaluation as HEAD
    "working_tree": None,
}
# these two must give the same selection and figures
SAME_AS = ("before_numpy_val_loss", "working_tree")
SALES_KAFKA = str(Path(sys.executable).parent / "sales-kafka")


def worktree(rev: str, home: Path) -> Path:
    "A detached `git worktree` of `rev` under `home`."
    path = home / rev.replace("^", "_parent")
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(path), rev], cwd=ROOT, check=True
    )
    return path


def package_file(tree: Path) -> str:
    "Which sales_prediction_kafka/__init__.py a process with the sides' environment imports."
    code = "import sales_prediction_kafka as p; print(p.__file__)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env=side_env(tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def side_env(tree: Path) -> dict:
    "The environment of a side: its tree first on the import path (the kernel papermill starts inherits it)."
    return {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}


def run_side(tree: Path, out: Path, args: list) -> float:
    "Seconds for `sales-kafka run --no-stream` in `tree`; the run folder lands in `out`."
    t0 = time.monotonic()
    res = subprocess.run(
        [SALES_KAFKA, "run", "--no-stream", "--out", str(out), *args],
        cwd=tree,
        env=side_env(tree),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.monotonic() - t0
    if res.returncode:
        raise RuntimeError(f"pipeline in {tree} failed: {res.stderr[-3000:]}")
    return seconds


def figures(run_folder: Path) -> dict:
    "What must not change between sides: metrics.json without the run's id and data path, and the saved models' versions."
    m = json.loads((run_folder / "metrics.json").read_text())
    m.pop("run_id", None)
    m.get("data", {}).pop("path", None)
    versions = {
        d.name: json.loads(p.read_text())["version"]
        for d in run_folder.iterdir()
        if (p := d / "model.json").exists()
    }
    return m | {"model_versions": versions}


def differences(a, b, path: str = "") -> list:
    "Where two JSON values differ, as paths."
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b), key=str)
            for d in differences(a.get(k), b.get(k), f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "."]


def run(quick: bool = False, out: Path | None = None, rounds: int | None = None, **_) -> dict:
    "Run the main-job benchmark; write pipeline.json; return its results."
    rounds = rounds or (1 if quick else 2)
    args = ["--seed", "42"] + (["--epochs", "3"] if quick else [])
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        trees = {side: (worktree(rev, tmp) if rev else ROOT) for side, rev in SIDES.items()}
        try:
            packages = {side: package_file(tree) for side, tree in trees.items()}
            for side, tree in trees.items():
                if not packages[side].startswith(str(tree) + "/"):
                    raise RuntimeError(f"{side} imported {packages[side]}, not its own tree {tree}")
            times, runs = {s: [] for s in SIDES}, {}
            for r in range(rounds):  # interleaved: each round runs every side, the order rotating
                order = list(SIDES)[r % len(SIDES) :] + list(SIDES)[: r % len(SIDES)]
                for side in order:
                    dest = tmp / f"out-{side}-{r}"
                    times[side].append(run_side(trees[side], dest, args))
                    runs[side] = next(d for d in dest.iterdir() if (d / "metrics.json").exists())
                    log.info("pipeline %s round %d: %.1f s", side, r + 1, times[side][-1])
            figs = {side: figures(folder) for side, folder in runs.items()}
        finally:
            for side, rev in SIDES.items():
                if rev:
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", str(trees[side])], cwd=ROOT
                    )
    best = {s: min(ts) for s, ts in times.items()}
    ratio = best["working_tree"] / best["filed"]
    # the same round: the closest in time
    per_round = [w / f for w, f in zip(times["working_tree"], times["filed"])]
    diff = differences(*(figs[s] for s in SAME_AS))
    selected = {s: f.get("selected") for s, f in figs.items()}
    rows = [
        {
            "side": s,
            "commit": SIDES[s] or "working tree",
            "seconds": ts,
            "best_s": best[s],
            "x filed": best[s] / best["filed"],
            "package": packages[s],
        }
        for s, ts in times.items()
    ]
    targets = {
        "working tree <= 0.5x filed": ratio <= 0.5,
        "working tree figures identical to bd7036c^ (metrics.json)": not diff,
    }
    result = {
        "quick": quick,
        "rounds": rounds,
        "args": args,
        "rows": rows,
        "ratio_working_tree_to_filed": ratio,
        "ratio_per_round": per_round,
        "metrics_differences": diff,
        "selection": selected,
        "targets": targets,
        "notes": [
            "each side: `sales-kafka run --no-stream` in a fresh process, cwd and PYTHONPATH at its own tree, same venv",
            "seconds are wall time of the whole command (imports, papermill, the comparison, refits, report)",
            "best_s is the fastest round; the sides run interleaved, the order rotating per round",
            "figures: metrics.json without run id, data path and timings",
        ],
        "load_before": load_before,
        "load_after": load(),
    }
    path = write_result(NAME, result, out)
    print(f"\n## The main job (`sales-kafka run --no-stream {' '.join(args)}`, seconds)\n")
    print(
        table(
            [
                {k: r[k] for k in ("side", "commit", "best_s", "x filed")}
                | {"rounds": ", ".join(f"{t:.1f}" for t in r["seconds"])}
                for r in rows
            ]
        )
    )
    print(
        "\nworking tree / filed: best of rounds "
        + f"{ratio:.2f}; per round "
        + ", ".join(f"{x:.2f}" for x in per_round)
    )
    print(
        f"metrics.json of {' and '.join(SAME_AS)}: "
        + ("identical" if not diff else f"differ at {diff[:8]}")
    )
    print(targets_line(targets, path))
    return result

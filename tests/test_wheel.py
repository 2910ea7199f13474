"""The library as users get it: an sdist, a wheel built from that sdist, installed into a fresh virtualenv outside the checkout,
runs the pipeline with `sales-kafka run` and with papermill from a folder that has no nbs/ anywhere near it."""

import json, os, subprocess, sys, tarfile, time, zipfile
from importlib.metadata import distributions
from pathlib import Path
import pytest
from helpers import ROOT, run_folder

SOURCE = ROOT / "nbs" / "pipelines" / "sales_pipeline.ipynb"
QUICK = ["-p", "epochs", "2", "-p", "cv_folds", "2"]  # the full code path, few epochs


def test_package_copy_of_the_pipeline_is_current():
    "sales_prediction_kafka/pipelines/ holds exactly nbs/pipelines/ (`make export` copies it with tools/sync_pipelines.py)."
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "sync_pipelines.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    "`python -m build` on a copy of the working tree (tracked and new files, as they are now): the sdist, the wheel and the log."
    tmp = tmp_path_factory.mktemp("build")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    files = [n for n in files.decode().split("\0") if n and (ROOT / n).is_file()]
    for name in files:
        src, dst = ROOT / name, tmp / "src" / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    r = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(tmp / "src")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("*.whl")
    (sdist,) = (tmp / "dist").glob("*.tar.gz")
    return {
        "wheel": wheel,
        "sdist": sdist,
        "log": r.stdout + r.stderr,
        "package_files": [n for n in files if n.startswith("sales_prediction_kafka/")],
    }


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> dict:
    "A fresh virtualenv (no system site-packages) with the wheel and the versions of its dependencies that this run uses."
    tmp = tmp_path_factory.mktemp("venv")
    pins = {d.metadata["Name"].lower(): d.version for d in distributions() if d.metadata["Name"]}
    pins.pop("sales-prediction-kafka", None)
    (tmp / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    bin = tmp / "venv" / "bin"
    r = subprocess.run(
        [
            str(bin / "pip"),
            "install",
            "-q",
            "-c",
            str(tmp / "constraints.txt"),
            str(built["wheel"]),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    print(
        f"\nWHEEL fresh virtualenv + pip install of the wheel and its dependencies: {time.monotonic() - t0:.0f} s"
    )
    path = os.pathsep.join(
        [str(bin)]
        + [
            p
            for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and not Path(p).is_relative_to(ROOT)
        ]
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KAFKA_BOOTSTRAP_SERVERS")
    } | {"PATH": path}
    work = tmp / "work"
    work.mkdir()  # outside the checkout: no nbs/ to fall back on
    return {"bin": bin, "env": env, "work": work}


def run(installed, *args, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    "A command of the fresh virtualenv, run in its environment from the work folder outside the checkout."
    r = subprocess.run(
        [str(installed["bin"] / args[0]), *map(str, args[1:])],
        cwd=cwd or installed["work"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"{args}:\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_wheel_ships_every_file_of_the_package(built):
    "Every file of the package folder (modules, the sample, the pipeline notebook, the dashboard page) is in the wheel."
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    assert {
        "sales_prediction_kafka/data/sales_sample.csv",
        "sales_prediction_kafka/pipelines/sales_pipeline.ipynb",
    } <= names, sorted(names)
    missing = sorted(set(built["package_files"]) - names)
    assert not missing, (
        f"in the package folder but not in the wheel (add them to package_data in setup.py): {missing}"
    )
    assert (
        zipfile.ZipFile(built["wheel"]).read(
            "sales_prediction_kafka/pipelines/sales_pipeline.ipynb"
        )
        == SOURCE.read_bytes()
    )
    assert any(n.endswith("/settings.ini") for n in tarfile.open(built["sdist"]).getnames()), (
        "the sdist must rebuild the wheel"
    )
    assert "absent from the `packages` configuration" not in built["log"], built["log"]


@pytest.mark.slow
def test_installed_library_is_not_the_checkout(installed):
    out = run(
        installed,
        "python",
        "-c",
        "import sales_prediction_kafka.runfolder as p; print(p.__file__); print(p.PIPELINE_NOTEBOOK)",
    ).stdout.split()
    assert all(Path(f).is_relative_to(installed["bin"].parent) for f in out), out
    assert Path(out[1]).is_file(), out


@pytest.mark.slow
def test_installed_sales_kafka_run(installed):
    "`sales-kafka run --no-stream` from a folder outside the checkout: a run folder with the report and metrics.json."
    r = run(installed, "sales-kafka", "run", "--no-stream", *QUICK, "--out", "runs")
    folder = installed["work"] / run_folder(r.stdout)
    assert {"report.html", "report.ipynb", "metrics.json", "params.json"} <= {
        p.name for p in folder.iterdir()
    }
    m = json.loads((folder / "metrics.json").read_text())
    # the embedded sample, not streamed
    assert m["data"]["rows"] == 500 and m["test"]["n"] > 0 and "stream" not in m, sorted(m)


@pytest.mark.slow
def test_installed_notebook_runs_in_papermill(installed):
    "papermill on the installed notebook, as a user of the package would call it."
    nb = run(
        installed,
        "python",
        "-c",
        "from sales_prediction_kafka.runfolder import PIPELINE_NOTEBOOK; print(PIPELINE_NOTEBOOK)",
    ).stdout.strip()
    out = installed["work"] / "pm"
    out.mkdir()
    run(
        installed,
        "papermill",
        "--no-progress-bar",
        nb,
        out / "report.ipynb",
        "-p",
        "stream",
        "False",
        "-p",
        "run_dir",
        out,
        *QUICK,
        "--cwd",
        out,
    )
    assert (out / "report.ipynb").stat().st_size > 0 and json.loads(
        (out / "metrics.json").read_text()
    )["test"]["n"] > 0

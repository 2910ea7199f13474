"JupyterLab as `make lab` starts it: it serves, offers the project's kernel, and that kernel runs a chapter on the checkout's library."

import json, os, secrets, signal, subprocess, sys, time, urllib.request
from pathlib import Path

import nbformat, pytest
from nbclient import NotebookClient
from sales_prediction_kafka.broker import free_port
from helpers import ROOT

KERNEL = "sales-prediction-kafka"
BIN = Path(sys.executable).parent


def get(url: str, token: str, timeout: float = 5):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A headless JupyterLab on a free loopback port with a random token; yields (base url, token); stops it after."
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    cmd = [
        str(BIN / "jupyter"),
        "lab",
        "--no-browser",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.root_dir={ROOT}",
        "--ServerApp.port_retries=0",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if get(f"{base}/api/status", token, 2)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (
                f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, (
                f"jupyter lab did not answer in 90 s:\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.5)
        yield base, token
    finally:
        # the server and anything it started, in the session we gave it
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.lab
def test_lab_serves(lab):
    base, token = lab
    status, body = get(f"{base}/api/status", token)
    assert status == 200 and "started" in json.loads(body)
    status, page = get(f"{base}/lab", token)
    assert status == 200 and "JupyterLab" in page


@pytest.mark.lab
def test_lab_refuses_without_token(lab):
    base, _ = lab
    with pytest.raises(urllib.error.HTTPError) as e:
        get(f"{base}/api/kernelspecs", "wrong")
    assert e.value.code == 403


@pytest.mark.lab
def test_project_kernel_offered(lab):
    base, token = lab
    specs = json.loads(get(f"{base}/api/kernelspecs", token)[1])["kernelspecs"]
    assert KERNEL in specs, sorted(specs)
    spec = specs[KERNEL]["spec"]
    assert spec["language"] == "python" and "sales-prediction-kafka" in spec["display_name"]


@pytest.mark.lab
def test_no_news_prompt(lab):
    "The project's Lab settings answer Jupyter's news question (never fetch), so Lab opens without asking it."
    base, token = lab
    got = json.loads(
        get(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification", token)[1]
    )
    # overrides.json
    defaults = {
        k: got["schema"]["properties"][k]["default"] for k in ("fetchNews", "checkForUpdates")
    }
    assert defaults == {"fetchNews": "false", "checkForUpdates": False}, defaults


def test_every_chapter_opens_on_the_project_kernel():
    "No chapter asks 'Select Kernel' in Lab: each names the project's kernel."
    names = {
        p.name: nbformat.read(p, as_version=4).metadata.get("kernelspec", {}).get("name")
        for p in (ROOT / "nbs").glob("*.ipynb")
    }
    assert set(names.values()) == {KERNEL}, names


@pytest.mark.lab
def test_chapter_runs_in_project_kernel():
    "nbs/00_config.ipynb runs top to bottom in the project kernel, which imports the library from this checkout."
    nb = nbformat.read(ROOT / "nbs" / "00_config.ipynb", as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import sys, sales_prediction_kafka\nprint(sys.executable)\nprint(sales_prediction_kafka.__file__)"
        )
    )
    NotebookClient(
        nb, kernel_name=KERNEL, timeout=120, resources={"metadata": {"path": str(ROOT / "nbs")}}
    ).execute()
    executable, lib = nb.cells[-1].outputs[0]["text"].split()
    assert Path(executable).parent == BIN, executable  # the kernel is the project's venv
    assert Path(lib).is_relative_to(ROOT / "sales_prediction_kafka"), lib


def test_library_is_this_checkout(tmp_path):
    """The dev loop: imported from elsewhere, the library is this checkout's folder, so an edit + nbdev_export shows at the next
    import. (How it got there is not asserted: an installed wheel, which has no checkout, is tests/test_wheel.py's job.)"""
    out = subprocess.run(
        [sys.executable, "-c", "import sales_prediction_kafka as m; print(m.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).is_relative_to(ROOT / "sales_prediction_kafka"), out


def test_kernelspec_survives_cleaning(tmp_path):
    "A notebook saved on the project's kernel keeps it through nbdev_clean (settings.ini allowed_metadata_keys), so Lab opens it there."
    nb = nbformat.read(ROOT / "nbs" / "08c_dlq.ipynb", as_version=4)
    assert nb.metadata["kernelspec"]["name"] == KERNEL
    nb.metadata["kernelspec"]["display_name"] = "Python (sales-prediction-kafka)"
    nbformat.write(nb, tmp_path / "x.ipynb")
    subprocess.run(
        [str(BIN / "nbdev_clean"), "--fname", str(tmp_path / "x.ipynb")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert (
        nbformat.read(tmp_path / "x.ipynb", as_version=4).metadata["kernelspec"]["name"] == KERNEL
    )

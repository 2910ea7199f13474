"Runs side by side: a `sales-kafka run --grid` of two papermill runs, their reports, the quiet console, `runs` and index.html."

import json, re, subprocess
import pytest
from helpers import ROOT, SALES_KAFKA, launch_chromium, params

pytestmark = [pytest.mark.slow]

GRID = [
    "run",
    "--no-stream",
    "--grid",
    *params(epochs="2,3", cv_folds=2, candidates="linear,original_net"),
]
NOISE = ("ERROR", "WARNING", "Traceback", "cuda", "absl", "without encryption", "ECONNREFUSED")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    "Two runs of a grid (epochs 2 and 3), with what the command printed."
    out = tmp_path_factory.mktemp("runs")
    r = subprocess.run(
        [SALES_KAFKA, *GRID, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_grid_ends_with_the_comparison(grid):
    out, r = grid
    lines = r.stdout.strip().splitlines()
    assert (
        lines[0].split()[:3] == ["time", "data", "rows"]
        and "parameters not at their default" in lines[0]
    )
    changed = [re.search(r"epochs=(\d)", l).group(1) for l in lines[1:3]]
    assert sorted(changed) == ["2", "3"], r.stdout
    assert lines[-1] == f"overview of every run: {out / 'index.html'}"


def test_console_is_quiet(grid):
    _, r = grid
    for noise in NOISE:
        assert noise not in r.stderr, (noise, r.stderr[-2000:])


def test_reports_read_like_reports(grid):
    out, _ = grid
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 2
    for run in runs:
        html = (run / "report.html").read_text()
        assert html.index('class="headline"') < html.index("Data and the held-out rows"), (
            "the headline box opens the report"
        )
        for shown in ("records streamed", "not streamed", "MAPE", " ± ", "CV RMSE"):
            assert shown in html, shown
        assert "rmse_mean" not in html and "mape_pct_std" not in html, "no raw column names"
        for noise in ("cuda", "absl", "without encryption", str(ROOT), str(out)):
            assert noise not in html, noise
        assert re.search(r"\d,\d{3}\.\d{2}", html), "thousands separators"
        assert {"training_curve_original_net"} <= {p.stem for p in (run / "plots").glob("*.png")}
        assert json.loads((run / "metrics.json").read_text())["data"]["path"].startswith(".."), (
            "paths relative to the run"
        )


def test_index_and_runs_command(grid):
    out, _ = grid
    page = (out / "index.html").read_text()
    assert page.count("/report.html") == 2 and "http" not in page
    r = subprocess.run(
        [SALES_KAFKA, "runs", "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 3, r.stdout + r.stderr


@pytest.mark.browser
def test_index_sorts_in_chromium(grid, chromium):
    "The runs index opens offline in headless Chromium without errors, and a click on a heading sorts the runs by it."
    from playwright.sync_api import sync_playwright

    out, _ = grid
    with sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        page, problems = browser.new_page(), []
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto((out / "index.html").as_uri())
        rmse = lambda: [
            float(v)
            for v in page.eval_on_selector_all(
                "#runs tbody tr td:nth-child(6)", "tds => tds.map(t => t.dataset.v)"
            )
        ]
        assert len(rmse()) == 2
        page.click("#runs th:nth-child(6)")
        assert (
            rmse() == sorted(rmse())
            and page.get_attribute("#runs th:nth-child(6)", "aria-sort") == "ascending"
        )
        page.click("#runs th:nth-child(6)")
        assert (
            rmse() == sorted(rmse(), reverse=True)
            and page.get_attribute("#runs th:nth-child(6)", "aria-sort") == "descending"
        )
        browser.close()
    assert not problems, problems

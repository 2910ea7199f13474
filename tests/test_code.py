"Static checks on every Python file the project runs: no undefined names (a `NameError` waiting on a rare path) and no unused ones."

import subprocess, sys
from pathlib import Path
from helpers import ROOT


def test_code_is_ruff_formatted_and_clean():
    "One formatter: `ruff format --check` and `ruff check` (pyflakes' names) pass over notebooks, library, tests, bench, tools."
    ruff = Path(sys.executable).parent / "ruff"
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, f"run `make export` (it formats):\n{fmt.stdout}{fmt.stderr}"
    library = [
        p for p in sorted((ROOT / "sales_prediction_kafka").glob("*.py")) if p.name != "_modidx.py"
    ]
    assert len(library) > 20, library
    check = subprocess.run([ruff, "check", ".", *library], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, f"ruff check found:\n{check.stdout}{check.stderr}"


def test_readme_is_what_make_readme_writes_and_holds_no_css():
    "README.md equals `make readme`'s output from nbs/index.ipynb, and a table in it is a table, not its <style> block as text."
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "readme", "-o", "setup"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    diff = subprocess.run(
        ["git", "diff", "--stat", "--", "README.md"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    text = (ROOT / "README.md").read_text()
    assert diff == "" and "<style" not in text and "<table" in text, diff


def test_every_benchmark_section_has_its_results_file_and_the_sections_are_in_order():
    "Each numbered BENCHMARKS.md section names its benchmark (`--only NAME`), whose results file is committed; 1, 2, 3 ... in order."
    import re

    sections = re.findall(
        r"(?ms)^## (\d+)\. (.*?)(?=^## |\Z)", (ROOT / "BENCHMARKS.md").read_text()
    )
    assert [int(n) for n, _ in sections] == list(range(1, len(sections) + 1)), [
        n for n, _ in sections
    ]
    results = lambda body: [
        ROOT / "bench" / "results" / f"{name}.json" for name in re.findall(r"--only (\w+)", body)
    ]
    missing = {
        n: [p.name for p in results(body) if not p.exists()] or "no `--only NAME`"
        for n, body in sections
        if not results(body) or not all(p.exists() for p in results(body))
    }
    assert not missing, f"sections without their committed results: {missing}"


def test_every_parameter_comment_stays_where_docments_reads_it():
    "A parameter's comment trails its own first line or stands alone above it (not on a continuation or the `):` line)."
    import ast, io, tokenize

    misplaced = []
    for path in sorted((ROOT / "sales_prediction_kafka").glob("*.py")):
        src = path.read_text()
        lines = src.splitlines()
        toks = tokenize.generate_tokens(io.StringIO(src).readline)
        trailing = {
            t.start[0]
            for t in toks
            if t.type == tokenize.COMMENT and lines[t.start[0] - 1][: t.start[1]].strip()
        }
        for d in ast.walk(ast.parse(src)):
            if not isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = d.args
            starts = {
                p.lineno for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p
            }
            header = range(d.lineno, d.body[0].lineno)
            returns = d.returns.lineno if d.returns else None
            misplaced += [
                f"{path.name}:{r}"
                for r in header
                if r in trailing and r not in starts and r != returns
            ]
    assert not misplaced, (
        f"comments fastcore.docments attributes to no parameter or the wrong one: {misplaced}"
    )


def unshown_methods(notebook: Path) -> list[str]:
    "The `@patch` methods of `notebook` whose export cell is not followed at once by a code cell that names them."
    import json, re

    export = lambda s: re.match(r"#\|\s*export", s)
    cells = [
        "".join(c["source"])
        for c in json.loads(notebook.read_text())["cells"]
        if c["cell_type"] == "code"
    ]
    unshown = []
    for s, after in zip(cells, [*cells[1:], ""]):
        if export(s) and re.search(r"^@patch", s, re.M):
            name = re.search(r"^def (\w+)", s, re.M)[1]
            if export(after) or not re.search(rf"\b{name}\b", after):
                unshown.append(f"{notebook.name}: {name}")
    return unshown


def test_unshown_methods_finds_a_method_without_its_example(tmp_path):
    "The check below can fail: a patched method followed by another export cell, or by a cell that never names it, is listed."
    import json

    cell = lambda s: {
        "cell_type": "code",
        "source": s,
        "metadata": {},
        "outputs": [],
        "execution_count": None,
    }
    nb = tmp_path / "x.ipynb"
    patched = lambda name: cell(f"#| export\n@patch\ndef {name}(self: A):\n    pass")
    cells = [
        patched("shown"),
        cell("a.shown()"),
        patched("alone"),
        patched("unnamed"),
        cell("a.other()"),
    ]
    nb.write_text(json.dumps({"cells": cells}))
    assert unshown_methods(nb) == ["x.ipynb: alone", "x.ipynb: unnamed"]


def test_every_patched_method_is_followed_by_the_cell_that_shows_it():
    "fastcore's rhythm: each `@patch` method's cell is followed at once by a cell that calls (or names) it."
    unshown = [m for nb in sorted((ROOT / "nbs").glob("*.ipynb")) for m in unshown_methods(nb)]
    assert not unshown, f"{len(unshown)} methods without the cell that shows them: {unshown}"

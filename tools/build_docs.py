#!/usr/bin/env python
"""Build the docs site from the notebooks: nbdev's processors turn each notebook into Markdown, mkdocs-material renders it.

    python tools/build_docs.py                  # writes the site into _docs/ (open _docs/index.html, works offline)
    python tools/build_docs.py --out /tmp/site  # somewhere else
    python tools/build_docs.py --run outputs/runs/<run>  # show that run instead of the committed example

nbdev normally renders through Quarto, which cannot be installed here. This keeps nbdev's notebook processing
(front matter, `#| hide`, `#| export` -> `show_doc`, directive stripping, magics, ANSI) and replaces Quarto by
mkdocs-material. Notebooks are NOT executed: pages show the committed outputs; only the `show_doc` cells (and the
exported definitions and imports they need) run, in-process, exactly as nbdev_docs runs them. Three pages are
generated from the code's single sources: the message schemas (the library's own dicts and renderer), the CLI reference and
the committed example pipeline run (`--run DIR` shows another).
"""

from __future__ import annotations
import argparse, ast, base64, functools, importlib, inspect, json, logging, os, pkgutil, re, shutil, subprocess, sys, time, warnings
from html.parser import HTMLParser
from pathlib import Path

import yaml
from markdown.extensions.toc import slugify  # mkdocs' default heading anchors
from execnb.nbio import read_nb
from tqdm.auto import tqdm
from nbdev.config import get_config
from nbdev.frontmatter import FrontmatterProc
from nbdev.process import NBProcessor
from nbdev.processors import _do_eval, _show_docs
from nbdev.processors import (
    populate_language,
    add_show_docs,
    insert_warning,
    strip_ansi,
    hide_line,
    filter_stream_,
    rm_header_dash,
    clean_show_doc,
    exec_show_docs,
    rm_export,
    ai_magics,
    clean_magics,
    hide_,
    mv_exports,
    strip_hidden_metadata,
)

log = logging.getLogger("build_docs")
ROOT = Path(__file__).resolve().parent.parent
LIB = "sales_prediction_kafka"
CLI_GROUP = f"{LIB}.cli:main"  # the `sales-kafka` click group
CLI_NAME = "sales-kafka"

_doc_dirs = {"export", "exports", "exporti", "exec_doc"}


class exec_docs(exec_show_docs):
    "nbdev's `exec_show_docs`, but of an example cell that imports only its imports run (nbdev would run it all: a broker start, a training)."

    def __call__(self, cell):
        if not getattr(self.nb, "has_docs_", None) or not hasattr(self, "k") or not _do_eval(cell):
            return
        if str(getattr(self.nb, "frontmatter_", {}).get("skip_showdoc", "")).lower() in (
            "true",
            "1",
            "yes",
        ):
            return
        trees = cell.parsed_()
        imports = [t for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]
        if cell.directives_.keys() & _doc_dirs or _show_docs(trees) or len(imports) == len(trees):
            self.k.cell(cell)
        else:
            self.k.run("\n".join(ast.unparse(t) for t in imports))
        if self.k.exc:
            raise RuntimeError(
                f"{self.nb.path_}: cell {cell.idx_} failed while preparing show_doc:\n{cell.source}"
            ) from self.k.exc
        if not (m := re.search(r"^show_doc\((\w+)\)", cell.source, re.M)):
            return
        obj = self.k.user_ns.get(m.group(1))
        if md := command_doc(m.group(1), obj):
            cell.outputs = [
                {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": md}}
            ]
        elif sig := class_signature(obj):
            for d in (o.get("data", {}) for o in cell.outputs):
                if "text/markdown" in d:
                    d["text/markdown"] = GENERIC_SIGNATURE.sub(
                        lambda _: f"```python\n{sig}\n```", _text(d["text/markdown"])
                    )


# what show_doc gives a class without __init__
GENERIC_SIGNATURE = re.compile(r"```python\ndef \w+\(\n\s*\*args, \*\*kwargs\n\):\n```")


def class_signature(obj) -> str | None:
    "A class as a person writes it: `class Record(partition: int, ...)` (its fields), or `class Error(LookupError)` (its bases)."
    if not inspect.isclass(obj):
        return None
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        params = []
    if params and {p.kind for p in params} != {
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    }:
        return f"class {obj.__name__}({', '.join(map(str, params))})"
    return (
        f"class {obj.__name__}({', '.join(b.__name__ for b in obj.__bases__ if b is not object)})"
    )


def readable_numbers(md: str) -> str:
    "Integer limits such as 9223372036854775807 in table rows written as people write them (2<sup>63</sup> − 1)."

    def sub(m):
        n = int(m.group(0))
        return (
            f"2<sup>{n.bit_length()}</sup> − 1"
            if n >= 2**31 - 1 and (n + 1) & n == 0
            else m.group(0)
        )

    return "\n".join(
        re.sub(r"(?<![\w.])\d{10,}(?![\w.])", sub, l) if l.startswith("|") else l
        for l in md.split("\n")
    )


def command_doc(name: str, obj) -> str | None:
    "A click command's API entry: its `--help` under its full `sales-kafka ...` name (show_doc only sees `Command.__call__`)."
    import click

    if not isinstance(obj, click.Command):
        return None
    same = lambda cmd: (
        (cmd.name, cmd.help, [p.name for p in cmd.params])
        == (obj.name, obj.help, [p.name for p in obj.params])
    )
    # the shell re-defines it
    path, ctx = next(
        ((p, c) for p, cmd, c in cli_commands() if same(cmd)),
        (obj.name, click.Context(obj, info_name=obj.name)),
    )
    ref = (
        f"[CLI reference](cli_reference.md#{_anchor(path)})"
        if path.startswith(CLI_NAME + " ")
        else "CLI command"
    )
    return f"---\n\n### {name}\n\n`{path}` ({ref}):\n\n{fence(obj.get_help(ctx))}"


# nbdev_docs' processors minus the Quarto-only ones (add_links -> doc_host URLs, add_fold -> code-fold)
PROCS = [
    FrontmatterProc,
    populate_language,
    add_show_docs,
    insert_warning,
    strip_ansi,
    hide_line,
    filter_stream_,
    rm_header_dash,
    clean_show_doc,
    exec_docs,
    rm_export,
    ai_magics,
    clean_magics,
    hide_,
    mv_exports,
    strip_hidden_metadata,
]

EXTRA_CSS = """
.nb-output pre, .nb-output code { background: var(--md-default-bg-color); }
.nb-output { border-left: 3px solid var(--md-default-fg-color--lightest); padding-left: .6em; margin: -.6em 0 1em; }
.nb-output img { max-width: 100%; }
.nb-output table { font-size: .7rem; border-collapse: collapse; }
.nb-output, .nb-html { max-width: 100%; overflow-x: auto; }  /* wide tables scroll inside the content column, not under the TOC */
.nb-html th, .nb-html td { padding: .2em .6em; border: 1px solid var(--md-default-fg-color--lightest); }
.lead { font-size: 1.05em; color: var(--md-default-fg-color--light); }
iframe.report { width: 100%; height: 80vh; border: 1px solid var(--md-default-fg-color--lightest); }
.md-typeset td code { word-break: normal; overflow-wrap: normal; white-space: nowrap; }  /* field names whole, not split mid-word */
"""


# ---------------------------------------------------------------- notebooks -> processed notebooks -> Markdown
def page_name(nb_path: Path) -> str:
    "Page file for a notebook, named as nbdev names it: `00_config.ipynb` -> `config.md`."
    return (
        "index.md" if nb_path.stem == "index" else re.sub(r"^\d+[a-z]?_", "", nb_path.stem) + ".md"
    )


def process_nb(nb_path: Path):
    "The notebook after nbdev's processors: hidden and exported cells gone, `show_doc` cells added and executed."
    nb = read_nb(nb_path)
    nb.path_ = str(nb_path)
    cwd = os.getcwd()
    os.chdir(nb_path.parent)  # as nbdev_test and nbdev_docs run them
    try:
        # nbdev's hint about cells mixing imports and code: exec_docs handles those
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Found cells containing imports")
            NBProcessor(nb=nb, procs=PROCS).process()
    finally:
        os.chdir(cwd)
    return nb


_re_quarto = re.compile(r"^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")
# show_doc's link to doc_host
_re_source_link = re.compile(r"^\[source\]\([^)]*\)\{[^}]*\}\s*$", re.MULTILINE)
_re_ansi = re.compile(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])")


def cell_options(source: str) -> tuple[dict, str]:
    "Quarto-style `#| key: value` options left by nbdev's processors, and the source without them."
    lines = source.splitlines()
    opts = {}
    while lines and (m := _re_quarto.match(lines[0])):
        opts[m.group(1)] = m.group(2).strip("'\"")
        lines.pop(0)
    return opts, "\n".join(lines).strip()


def _text(x) -> str:
    return "".join(x) if isinstance(x, list) else (x or "")


def fence(text: str, lang: str = "text") -> str:
    "`text` in a fenced code block that its own backticks cannot close."
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def output_markdown(out, asset: callable) -> str:
    "One cell output as Markdown; `asset(data:bytes, ext)` stores an image and returns its relative path."
    kind = out.get("output_type")
    if kind == "stream":
        return fence(_re_ansi.sub("", _text(out.get("text"))))
    if kind == "error":
        return fence(_re_ansi.sub("", "\n".join(out.get("traceback", []))))
    data = out.get("data", {})
    for mime, ext in (("image/png", "png"), ("image/jpeg", "jpg")):
        if mime in data:
            return f"![]({asset(base64.b64decode(_text(data[mime])), ext)})"
    if "image/svg+xml" in data:
        return f"![]({asset(_text(data['image/svg+xml']).encode(), 'svg')})"
    if "text/markdown" in data:
        return _re_source_link.sub("", _text(data["text/markdown"])).strip()
    if "text/html" in data:
        return f'<div class="nb-html" markdown="0">\n{_text(data["text/html"]).strip()}\n</div>'
    if "text/plain" in data:
        return fence(_text(data["text/plain"]))
    return ""


def cell_markdown(cell, asset: callable) -> str:
    "One processed cell as Markdown: prose as is, code fenced, outputs after it."
    if cell.cell_type == "markdown":
        return cell.source
    if cell.cell_type != "code":
        return ""
    opts, src = cell_options(cell.source)
    if opts.get("include") == "false":
        return ""
    parts = [fence(src, "python")] if src and opts.get("echo") != "false" else []
    outs = (
        [output_markdown(o, asset) for o in cell.get("outputs", [])]
        if opts.get("output") != "false"
        else []
    )
    outs = [o for o in outs if o]
    if outs and opts.get("output") == "asis":
        parts += outs
    elif outs:
        parts.append('<div class="nb-output" markdown="1">\n\n' + "\n\n".join(outs) + "\n\n</div>")
    return "\n\n".join(parts)


def page_header(fm: dict) -> str:
    "Front matter and heading from nbdev's notebook front matter (the `# Title` and `> description` cell)."
    meta = {k: fm[k] for k in ("title", "description") if fm.get(k)}
    head = f"---\n{yaml.safe_dump(meta, allow_unicode=True)}---\n\n" if meta else ""
    if fm.get("title"):
        head += f"# {fm['title']}\n\n"
    if fm.get("description"):
        head += f'<p class="lead" markdown="span">{fm["description"]}</p>\n\n'
    return head


def notebook_page(nb_path: Path, docs: Path) -> tuple[str, str, str]:
    "(page file, title, Markdown) for `nb_path`; its images are written into `docs`."
    name = page_name(nb_path)
    nb = process_nb(nb_path)
    assets = docs / f"{Path(name).stem}_files"

    def asset(data: bytes, ext: str) -> str:
        assets.mkdir(exist_ok=True)
        p = assets / f"output_{len(list(assets.iterdir()))}.{ext}"
        p.write_bytes(data)
        return f"{assets.name}/{p.name}"

    fm = getattr(nb, "frontmatter_", {}) or {}
    body = [
        cell_markdown(c, asset)
        for c in nb.cells
        if not (c.cell_type == "raw" and c.source.startswith("---"))
    ]
    return (
        name,
        fm.get("title") or Path(name).stem,
        page_header(fm) + "\n\n".join(b for b in body if b) + "\n",
    )


# ---------------------------------------------------------------- links from prose to API entries
def symbol_index(pages: dict[str, str] | None = None) -> dict:
    "Backticked name -> `page.md#anchor` of its `show_doc` entry in `pages` ({file: Markdown}; all of nbdev's `_modidx` if None)."
    modidx = importlib.import_module(f"{LIB}._modidx").d["syms"]
    shown = {h for md in (pages or {}).values() for h in re.findall(r"^### (\S+)\s*$", md, re.M)}
    res = {}
    for mod, syms in modidx.items():
        for qual, (doc, _) in syms.items():
            short = qual[len(mod) + 1 :]
            # a method without its own entry: its class
            entry = short if pages is None or short in shown else short.split(".")[0]
            if pages is not None and entry not in shown:
                continue
            target = f"{doc.split('.html')[0]}.md#{slugify(entry, '-')}"  # the anchor mkdocs gives show_doc's `### entry`
            res.setdefault(short, target)
            res[f"{mod.split('.')[-1]}.{short}"] = target
            res[qual] = target
    return res


def linker(index: dict) -> callable:
    "A function that links backticked API names in Markdown prose (not in code blocks or headings)."

    def sub(m):
        name = m.group(1)
        return (
            f"[`{name}`]({index[name.rstrip('()')]})" if name.rstrip("()") in index else m.group(0)
        )

    def link(md: str) -> str:
        out, in_fence = [], False
        for line in md.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                in_fence = not in_fence
            elif not (in_fence or line.startswith(("    ", "#"))):
                line = re.sub(r"(?<![\[`])`([\w.]+(?:\(\))?)`(?![\]`])", sub, line)
            out.append(line)
        return "\n".join(out)

    return link


# ---------------------------------------------------------------- generated pages
def _anchor(text: str) -> str:
    return re.sub(r"[^\w-]", "", re.sub(r"\s+", "-", text.strip().lower()))


@functools.cache
def cli_commands() -> list[tuple[str, object, object]]:
    "(full name, command, click context) for the `sales-kafka` group and every command under it, walked recursively."
    import click

    def walk(cmd, ctx):
        yield ctx.command_path, cmd, ctx
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))

    mod_name, attr = CLI_GROUP.split(":")
    try:
        group = getattr(importlib.import_module(mod_name), attr)
    # no CLI module yet: document every click command the library defines
    except (ImportError, AttributeError):
        log.warning(
            "no %s; documenting the click commands found in the library's modules", CLI_GROUP
        )
        group = click.Group(
            CLI_NAME, help="The library's commands (the assembled CLI is not built yet)."
        )
        for m in pkgutil.iter_modules(importlib.import_module(LIB).__path__):
            if m.name.startswith("_"):
                continue
            for o in vars(importlib.import_module(f"{LIB}.{m.name}")).values():
                if isinstance(o, click.Command) and o.name not in group.commands:
                    group.add_command(o)
    return list(
        walk(
            group,
            click.Context(group, info_name=CLI_NAME, terminal_width=100, max_content_width=100),
        )
    )


def cli_page() -> str:
    "The CLI reference: every command's `--help`, generated from the click group."
    cmds = cli_commands()
    md = [
        "# Command line",
        f'<p class="lead">Every <code>{CLI_NAME}</code> command and its <code>--help</code>, '
        "generated from the click group.</p>",
        "| command | what it does |\n|---|---|",
    ]
    md[-1] += "".join(
        f"\n| [`{path}`](#{_anchor(path)}) | {cmd.get_short_help_str(80)} |"
        for path, cmd, _ in cmds
    )
    for path, cmd, ctx in cmds:
        md += [f"## {path}", fence(cmd.get_help(ctx))]
    return "\n\n".join(md) + "\n"


def json_details(obj, summary: str) -> str:
    "`obj` as pretty JSON in a collapsed block."
    return f"<details><summary>{summary}</summary>\n\n{fence(json.dumps(obj, indent=2), 'json')}\n\n</details>"


def schema_section(title: str, source: str, schema: dict, example: dict | None = None) -> list[str]:
    "A JSON Schema's section: where it comes from, its field table (the library's renderer), an example, the schema itself."
    from sales_prediction_kafka.message import schema_markdown

    example = example or next(iter(schema.get("examples", [])), None)
    md = [f"## {title}", source, schema_markdown(schema)]
    if example is not None:
        md += ["Example:", fence(json.dumps(example, indent=2), "json")]
    return md + [json_details(schema, "JSON Schema")]


def names_section(title: str, source: str, names: dict, head: str) -> list[str]:
    "A name -> meaning table (headers, dead-letter reasons) under its own heading."
    from sales_prediction_kafka.message import names_markdown

    return [f"### {title}", source, names_markdown(names, head)]


def event_section(run: Path | None) -> list[str]:
    "The sales event: `serve.event_schema` of the documented run's model, with an example event."
    from sales_prediction_kafka.serve import event_schema, example_events
    from sales_prediction_kafka.models import load_model

    intro = (
        "The event schema depends on the model: its feature columns, their types and the categories it learned. "
        "`sales-kafka serve` derives it with `serve.event_schema` from whichever model it serves, and checks "
        "every event against it."
    )
    folder = run / "model" if run is not None else None
    if folder is None or not folder.is_dir():
        return [
            "## Sales event",
            intro,
            "No example run with a model is available here: `make example` writes one to `outputs/example/`.",
        ]
    model = load_model(folder)
    schema = event_schema(model)
    where = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    intro += (
        f" Below is the schema of the example run's model (`{where}`: a {model.kind} model, version `{model.version}`, "
        f"target `{model.target}`)."
    )
    return schema_section("Sales event", intro, schema, json.loads(example_events(schema)["good"]))


def schema_page(run: Path | None) -> str:
    "The message and event schemas, from the dicts the code validates and writes messages with."
    from sales_prediction_kafka import config, message, serve

    md = [
        "# Message schemas",
        '<p class="lead">What travels on the Kafka topics, generated from the schemas and header '
        "lists the code checks and writes messages with.</p>",
        "| topic | key | value | headers |\n|---|---|---|---|\n"
        f"| `{config.PREDICTIONS_TOPIC}` | prediction_index | [prediction message](#prediction-message) | [prediction headers](#prediction-headers) |\n"
        f"| `{config.EVENTS_TOPIC}` | event_id | [sales event](#sales-event) | any (kept on dead letters) |\n"
        f"| `{config.DEAD_LETTER_TOPIC}` | the event's key | the event's bytes, unchanged | the event's, plus [dead-letter headers](#dead-letter-headers) |",
    ]
    md += schema_section(
        "Prediction message",
        f"`message.PREDICTION_SCHEMA`: {message.PREDICTION_SCHEMA['description']}",
        message.PREDICTION_SCHEMA,
    )
    md += names_section(
        "Prediction headers",
        "`message.PREDICTION_HEADERS`: run metadata travels in Kafka headers, so the "
        "value stays the original notebook's four fields.",
        message.PREDICTION_HEADERS,
        "header",
    )
    md += event_section(run)
    md += [
        "## Dead letters",
        f"An event that cannot be scored goes to `{config.DEAD_LETTER_TOPIC}` with its key, value and "
        "headers unchanged, plus the headers below.",
    ]
    md += names_section(
        "Dead-letter headers", "`serve.DEAD_LETTER_HEADERS`:", serve.DEAD_LETTER_HEADERS, "header"
    )
    md += names_section(
        "Dead-letter reasons",
        "`serve.REASONS`: the values of `dlq.reason`, checked in this order; an "
        "event gets the first that applies.",
        serve.REASONS,
        "reason",
    )
    return "\n\n".join(md) + "\n"


def documented_run(outputs: Path, run: Path | None = None) -> Path | None:
    "The run the docs show: `run` if given, else the committed example (`outputs/example`), else the newest under `outputs/runs`."
    if run is not None:
        if not (run / "report.html").is_file():
            raise SystemExit(f"--run {run}: no report.html there; give a run folder")
        return run
    from sales_prediction_kafka.runfolder import REPORT_HTML, newest_run

    if (outputs / "example" / REPORT_HTML).is_file():
        return outputs / "example"
    return newest_run(outputs / "runs", REPORT_HTML)


class _Refs(HTMLParser):
    "Relative `src`/`href` targets of an HTML file."

    def __init__(self):
        super().__init__()
        self.refs = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v and not re.match(r"^([a-z][\w+.-]*:|#|//)", v):
                self.refs.add(v.split("#")[0].split("?")[0])


def copy_run(run: Path, dest: Path) -> list[str]:
    "Copy a run's report, the files it references, its executed notebook, metrics, parameters and model card into `dest`."
    refs = _Refs()
    refs.feed((run / "report.html").read_text(errors="replace"))
    names = [
        "report.html",
        *sorted(refs.refs),
        "report.ipynb",
        "metrics.json",
        "params.json",
        "model/model.json",
    ]
    copied = []
    for n in dict.fromkeys(names):
        src = (run / n).resolve()
        if src.is_file() and src.is_relative_to(run.resolve()):
            (dest / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / n)
            copied.append(n)
    return copied


def _num(x) -> str:
    return f"{x:,.2f}" if isinstance(x, (int, float)) else ""


def metrics_markdown(m: dict) -> list[str]:
    "The run's headline numbers from its metrics.json: the chosen model, test errors, the cross-validated comparison."
    md = []
    if m.get("selected"):
        md.append(f"**Chosen model: `{m['selected']}`.** {m.get('selection_reason', '')}")
    if tests := m.get("test_by_model"):
        md += [
            "## On the held-out test set",
            "| model | RMSE | MAE | MAPE % | R² |\n|---|---|---|---|---|"
            + "".join(
                f"\n| `{k}` | {_num(v.get('rmse'))} | {_num(v.get('mae'))} | {_num(v.get('mape_pct'))} | {_num(v.get('r2'))} |"
                for k, v in tests.items()
            ),
        ]
    if comp := m.get("comparison"):
        md += [
            f"## Cross-validated comparison ({comp[0].get('folds', '?')} folds, mean ± std)",
            "| model | RMSE | MAE | R² |\n|---|---|---|---|"
            + "".join(
                f"\n| `{c['model']}` | {_num(c.get('rmse_mean'))} ± {_num(c.get('rmse_std'))} | "
                f"{_num(c.get('mae_mean'))} ± {_num(c.get('mae_std'))} | {_num(c.get('r2_mean'))} ± {_num(c.get('r2_std'))} |"
                for c in comp
            ),
        ]
    if s := m.get("stream"):
        md.append(
            f"The test predictions were streamed to `{s.get('topic')}`: {s.get('total')} records, "
            + ("each read back and verified." if s.get("verified") else "not verified.")
        )
    return md


def run_page(run: Path | None, docs: Path) -> str:
    "The documented pipeline run: its headline numbers, its files, and its HTML report copied into the site and shown."
    md = [
        "# Example run",
        '<p class="lead">An executed pipeline run, committed in <code>outputs/example/</code> '
        "(<code>make example</code> refreshes it); <code>make run</code> writes new ones to <code>outputs/runs/&lt;run&gt;/</code>.</p>",
    ]
    if run is None:
        return (
            "\n\n".join(md + ["No run yet: `make example` writes one to `outputs/example/`."])
            + "\n"
        )
    copied = copy_run(run, docs / "run")
    metrics = json.loads((run / "metrics.json").read_text()) if "metrics.json" in copied else {}
    where = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run
    files = {
        "report.html": "the report",
        "report.ipynb": "executed notebook",
        "metrics.json": "metrics",
        "params.json": "parameters",
        "model/model.json": "model card",
    }
    md.append(
        f"Run `{metrics.get('run_id', run.name)}`, from `{where}`: "
        + " · ".join(f"[{what}](run/{n})" for n, what in files.items() if n in copied)
    )
    md += metrics_markdown(metrics)
    md += [
        "## Report",
        '<iframe class="report" src="run/report.html" title="pipeline report"></iframe>',
    ]
    return "\n\n".join(md) + "\n"


# ---------------------------------------------------------------- the site
def notebooks(nbs: Path) -> tuple[list[Path], list[Path]]:
    "(guides, chapters): notebooks without `#| default_exp` (besides index), and the library chapters."
    guides, chapters = [], []
    for p in sorted(nbs.glob("[0-9]*.ipynb")):
        code = "\n".join(c.source for c in read_nb(p).cells if c.cell_type == "code")
        (chapters if re.search(r"^\s*#\|\s*default_exp\s", code, re.M) else guides).append(p)
    return guides, chapters


def build(
    out: Path = ROOT / "_docs",
    work: Path = ROOT / "_proc" / "docs",
    strict: bool = True,
    run: Path | None = None,
) -> Path:
    "Render the site into `out` from the notebooks; the intermediate Markdown goes to `work`; `run`: the run to show (default: the committed example)."
    t0 = time.time()
    run = documented_run(ROOT / "outputs", run)  # first: a wrong --run fails before any work
    log.info("documenting run %s", run)
    cfg = get_config(cfg_name="settings.ini", path=ROOT)
    nbs = ROOT / cfg.get("nbs_path", "nbs")
    docs = work / "docs"
    shutil.rmtree(work, ignore_errors=True)
    docs.mkdir(parents=True)
    if (nbs / "images").is_dir():
        # pictures the notebooks' Markdown shows (images/x.png)
        shutil.copytree(nbs / "images", docs / "images")
    guides, chapters = notebooks(nbs)
    with tqdm(
        [nbs / "index.ipynb", *guides, *chapters], desc="notebooks", unit="nb", leave=False
    ) as bar:
        nbpages = [notebook_page(p, docs) for p in bar]
    generated = [
        ("schemas.md", "Message schemas", schema_page(run)),
        ("cli_reference.md", "CLI reference", cli_page()),
        ("example_run.md", "Example run", run_page(run, docs)),
    ]
    clash = {n for n, _, _ in nbpages} & {n for n, _, _ in generated}
    if clash:
        raise SystemExit(
            f"notebook pages {sorted(clash)} clash with generated pages; rename the notebook"
        )
    link = linker(symbol_index({n: md for n, _, md in nbpages}))
    for name, _, md in nbpages + generated:
        (docs / name).write_text(readable_numbers(link(md)))
    nav = [{"Home": home} for home, _, _ in nbpages[:1]] + [
        {t: n} for n, t, _ in nbpages[1 : 1 + len(guides)]
    ]
    nav += [
        {"Library": [{t: n} for n, t, _ in nbpages[1 + len(guides) :]]},
        {"Reference": [{t: n} for n, t, _ in generated]},
    ]
    (docs / "extra.css").write_text(EXTRA_CSS)
    (docs / "js").mkdir()
    shutil.copy(ROOT / "tools/vendor/iframe-worker-shim.js", docs / "js")
    site_cfg = {
        "INHERIT": str(ROOT / "mkdocs.yml"),
        "docs_dir": str(docs),
        "site_dir": str(out.resolve()),
        "nav": nav,
        "extra_css": ["extra.css"],
    }
    (work / "mkdocs.yml").write_text(yaml.safe_dump(site_cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "mkdocs", "build", "-q", "-f", str(work / "mkdocs.yml")] + (
        ["--strict"] if strict else []
    )
    r = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    if r.returncode:
        raise SystemExit(
            f"mkdocs build failed (config {work / 'mkdocs.yml'}, pages in {docs}):\n{r.stderr}"
        )
    if r.stderr.strip():
        log.warning("mkdocs: %s", r.stderr.strip())
    log.info("site built in %.1f s: %s", time.time() - t0, out / "index.html")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "_docs",
        help="folder that receives the site (default: _docs)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=ROOT / "_proc" / "docs",
        help="folder for the generated Markdown",
    )
    ap.add_argument(
        "--no-strict",
        dest="strict",
        action="store_false",
        help="do not fail on mkdocs warnings (broken links)",
    )
    ap.add_argument(
        "--run",
        type=Path,
        default=None,
        help="run folder shown on the Example run page and whose model's event "
        "schema is documented (default: the committed outputs/example)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    build(args.out, args.work, args.strict, args.run)


if __name__ == "__main__":
    main()

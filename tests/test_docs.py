"The docs site: built from the notebooks by tools/build_docs.py, checked in real headless Chromium and by a link checker."

import functools, http.server, importlib, importlib.util, re, subprocess, sys, threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from helpers import ROOT, launch_chromium


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build_docs = _load_builder()


class Page(HTMLParser):
    "The ids, links and resource references of one HTML file."

    def __init__(self, text):
        super().__init__()
        self.ids, self.refs = set(), []  # refs: (tag, attr, value, rel)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("id", "name") if tag == "a" else ("id",):
            if a.get(k):
                self.ids.add(a[k])
        for k in ("href", "src"):
            if a.get(k) is not None:
                self.refs.append((tag, k, a[k], a.get("rel") or ""))


@functools.cache
def parse(path: Path) -> Page:
    return Page(path.read_text(errors="replace"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site, built into a temporary folder exactly as `make docs` builds it."
    tmp = tmp_path_factory.mktemp("docs")
    r = subprocess.run(
        [
            sys.executable,
            "tools/build_docs.py",
            "--out",
            str(tmp / "site"),
            "--work",
            str(tmp / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return tmp / "site"


@pytest.fixture(scope="module")
def server(site):
    "A local HTTP server for the site; yields its base URL."

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(chromium):
    "Debian's headless Chromium (the `chromium` fixture installs it if missing) driven by playwright."
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p, chromium)
        yield b
        b.close()


@pytest.fixture
def page(browser, server, site):
    "A fresh page that records console errors, page errors, failed requests and requests to other hosts."
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.problems = []
    pg.on("console", lambda m: m.type == "error" and pg.problems.append(f"console: {m.text}"))
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on(
        "requestfailed",
        lambda r: (
            "ERR_ABORTED" not in (r.failure or "")
            and pg.problems.append(f"failed: {r.url} {r.failure}")
        ),
    )
    pg.on("response", lambda r: r.status >= 400 and pg.problems.append(f"HTTP {r.status}: {r.url}"))

    def route(r):
        if r.request.url.startswith((server, site.as_uri(), "data:", "blob:", "about:")):
            return r.continue_()
        pg.problems.append(f"external request: {r.request.url}")
        r.abort()

    pg.route("**/*", route)
    yield pg
    ctx.close()


def nav_pages(site: Path) -> list[str]:
    "Every page in the site's navigation, from the home page's sidebar."
    hrefs = [v for tag, k, v, rel in parse(site / "index.html").refs if tag == "a" and k == "href"]
    pages = {h.split("#")[0] for h in hrefs if h.endswith(".html") or ".html#" in h}
    return sorted(p for p in pages if "://" not in p and not p.startswith("run/"))


@pytest.mark.slow
def test_site_has_every_notebook(site):
    guides, chapters = build_docs.notebooks(ROOT / "nbs")
    names = ["index.md"] + [build_docs.page_name(p) for p in guides + chapters]
    for n in names:
        assert (site / n.replace(".md", ".html")).exists(), n
    assert set(n.replace(".md", ".html") for n in names) <= set(nav_pages(site))
    for n in ("schemas.html", "cli_reference.html", "example_run.html"):
        assert n in nav_pages(site)


@pytest.mark.slow
def test_no_external_resources(site):
    "Offline: no script, stylesheet, font, image or frame from another host (links to other sites are fine)."
    bad = [
        (f.name, v)
        for f in site.rglob("*.html")
        for tag, k, v, rel in parse(f).refs
        if (tag != "a") and re.match(r"^(https?:)?//", v)
    ]
    assert not bad, bad
    css = [
        f
        for f in site.rglob("*.css")
        if re.search(r"url\(\s*['\"]?(https?:)?//", f.read_text(errors="replace"))
    ]
    assert not css, css


def resolve(site: Path, page: Path, ref: str) -> tuple[Path, str]:
    "The file and anchor that a relative `ref` on `page` points to."
    u = urlsplit(ref)
    # root-relative links: the site is served at its root
    base = site if u.path.startswith("/") else page.parent
    target = (base / unquote(u.path).lstrip("/")).resolve() if u.path else page
    if target.is_dir():
        target = target / "index.html"
    return target, unquote(u.fragment)


def broken_links(site: Path) -> list[str]:
    "Every internal href/src in the site's HTML whose file, or anchor, does not exist."
    bad = []
    for f in sorted(site.rglob("*.html")):
        for tag, k, v, rel in parse(f).refs:
            if not v or re.match(r"^([a-z][\w+.-]*:|//)", v, re.I):
                continue  # other schemes and hosts
            target, anchor = resolve(site, f, v)
            where = f"{f.relative_to(site)}: {tag} {k}={v!r}"
            if not target.exists():
                bad.append(f"{where}: no file {target}")
            elif anchor and target.suffix == ".html" and anchor not in parse(target).ids:
                bad.append(f"{where}: no anchor #{anchor}")
    return bad


def test_link_checker_finds_broken_links(tmp_path):
    "The checker itself: a missing file and a missing anchor are both reported, good links are not."
    (tmp_path / "a.html").write_text(
        '<a href="b.html#x">ok</a><a href="b.html#nope">bad anchor</a><img src="gone.png">'
        '<a href="https://example.invalid/">outside</a><a href="#top" id="top">self</a>'
    )
    (tmp_path / "b.html").write_text('<h2 id="x">x</h2>')
    bad = broken_links(tmp_path)
    assert len(bad) == 2 and "no anchor #nope" in bad[0] and "gone.png" in bad[1], bad


@pytest.mark.slow
def test_no_broken_internal_links(site):
    bad = broken_links(site)
    assert not bad, "\n".join(bad[:30])


@pytest.mark.slow
def test_api_entries_present(site):
    "Every public function and class in nbdev's index has its show_doc entry on its chapter's page."
    modidx = importlib.import_module("sales_prediction_kafka._modidx").d["syms"]
    public = [
        (qual[len(mod) + 1 :], doc.split(".html")[0] + ".html")
        for mod, syms in modidx.items()
        for qual, (doc, _) in syms.items()
        if re.fullmatch(r"[A-Za-z]\w*", qual[len(mod) + 1 :])
    ]
    assert len(public) > 5
    missing = [
        (n, pg) for n, pg in public if build_docs.slugify(n, "-") not in parse(site / pg).ids
    ]
    assert not missing, missing


@pytest.mark.slow
def test_schema_page(site):
    "The prediction message, its headers, the example model's event schema and the dead letters, all from the library's dicts."
    from sales_prediction_kafka.serve import DEAD_LETTER_HEADERS, REASONS, event_schema
    from sales_prediction_kafka.message import FIELDS, PREDICTION_HEADERS
    from sales_prediction_kafka.models import load_model

    text = (site / "schemas.html").read_text()
    run = build_docs.documented_run(ROOT / "outputs")
    assert run is not None, "the committed example run is missing"
    event = event_schema(load_model(run / "model"))["properties"]
    names = [*FIELDS, *PREDICTION_HEADERS, *event, *DEAD_LETTER_HEADERS, *REASONS]
    missing = [n for n in names if f"<code>{n}</code>" not in text]
    assert not missing, missing
    assert "the example run" in text and "whichever model it serves" in text
    # the seasons, and null: a gap the model fills with its training mode
    for level in event["Seasonality"]["enum"]:
        assert (f'<code>"{level}"</code>' if level is not None else "<code>null</code>") in text, (
            level
        )
    assert not hasattr(build_docs, "schema_markdown"), (
        "one schema renderer: message.schema_markdown"
    )


def test_documented_run(tmp_path):
    "The committed example is shown unless a run is named; a named folder without a report is refused."
    (tmp_path / "example").mkdir()
    (tmp_path / "example" / "report.html").write_text("x")
    newer = tmp_path / "runs" / "20991231-000000-aaaaaa"
    newer.mkdir(parents=True)
    (newer / "report.html").write_text("y")
    assert build_docs.documented_run(tmp_path) == tmp_path / "example"
    assert build_docs.documented_run(tmp_path, newer) == newer
    with pytest.raises(SystemExit, match="no report.html"):
        build_docs.documented_run(tmp_path, tmp_path / "runs")
    (tmp_path / "example" / "report.html").unlink()
    assert build_docs.documented_run(tmp_path) == newer


@pytest.mark.slow
def test_cli_reference_has_every_command(site):
    ids = parse(site / "cli_reference.html").ids
    cmds = build_docs.cli_commands()
    assert len(cmds) >= 2
    for path, cmd, ctx in cmds:
        assert build_docs._anchor(path) in ids, path
        assert "--help" in (site / "cli_reference.html").read_text()


@pytest.mark.slow
def test_example_run_page(site):
    run = build_docs.documented_run(ROOT / "outputs")
    assert run == ROOT / "outputs" / "example", run
    text = (site / "example_run.html").read_text()
    assert 'href="run/report.html"' in text and "Chosen model" in text
    for name in ("report.html", "report.ipynb", "metrics.json", "params.json", "model/model.json"):
        assert (site / "run" / name).read_bytes() == (run / name).read_bytes(), name
        assert f'href="run/{name}"' in text, name


@pytest.mark.browser
@pytest.mark.slow
def test_example_report_in_browser(server, page):
    "The report shows inside the Example run page's frame, with its figures, without console errors or outside requests."
    page.goto(server + "example_run.html", wait_until="load")
    report = page.frame_locator("iframe.report")
    report.locator("h1#Sales-prediction-pipeline").wait_for(timeout=15_000)
    assert report.locator("img").count() >= 5
    assert not page.problems, page.problems


@pytest.mark.browser
@pytest.mark.slow
def test_pages_load_without_errors(site, server, page, tmp_path_factory):
    "Home, every chapter and every reference page load in Chromium without console errors or outside requests."
    pages = nav_pages(site)
    assert "config.html" in pages and "index.html" in pages
    for name in pages:
        page.goto(server + name, wait_until="load")
        assert page.locator("h1").first.inner_text().strip(), name
        assert not page.problems, (name, page.problems)
    page.goto(server + "index.html", wait_until="load")
    shot = tmp_path_factory.mktemp("screens") / "home.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    print(f"home page screenshot: {shot}")


@pytest.mark.browser
@pytest.mark.slow
def test_api_entry_in_browser(server, page):
    page.goto(server + "config.html", wait_until="load")
    entry = page.locator("h3#kafka_settings")
    assert entry.is_visible() and "kafka_settings" in entry.inner_text()
    assert "def kafka_settings(" in page.locator("#kafka_settings ~ div pre").first.inner_text()
    assert not page.problems, page.problems


@pytest.mark.browser
@pytest.mark.slow
def test_navigation(server, page):
    "Clicking a chapter in the sidebar and a symbol link lands on the right page and entry."
    page.goto(server + "index.html", wait_until="load")
    page.locator("nav.md-nav--primary a.md-nav__link", has_text="Configuration").first.click()
    page.wait_for_url("**/config.html")
    assert page.locator("h1").first.inner_text().strip("¶ \n") == "Configuration"
    page.locator("nav.md-nav--primary a.md-nav__link", has_text="CLI reference").first.click()
    page.wait_for_url("**/cli_reference.html")
    assert "sales-kafka" in page.locator("h1 ~ *").first.inner_text() + page.content()
    assert not page.problems, page.problems


@pytest.mark.browser
@pytest.mark.slow
def test_search_works_offline(site, page):
    "Opened from disk (file://), Material's search still finds a function: its index is inlined, its worker shimmed."
    page.goto((site / "index.html").as_uri(), wait_until="load")
    page.locator("label.md-search__icon, .md-search__input").first.click()
    page.locator("input.md-search__input").press_sequentially("kafka_settings", delay=20)
    hit = page.locator(".md-search-result a[href*='config.html'][href*='#kafka_settings']").first
    hit.wait_for(timeout=15_000)
    assert not page.problems, page.problems


def test_signatures_and_limits_read_as_people_write_them():
    "A class without its own __init__ is not `def X(*args, **kwargs)`, and 2**63 - 1 is not written out in a schema table."
    from typing import NamedTuple

    class Point(NamedTuple):
        x: int
        y: float = 0.0

    class Missing(LookupError):
        "A lookup failed."

    test = build_docs.class_signature
    assert (test(Point), test(Missing), test(len)) == (
        "class Point(x: int, y: float = 0.0)",
        "class Missing(LookupError)",
        None,
    )
    md = "| event_id | integer | yes | 0 to 9223372036854775807 | id |\n```\n9223372036854775807\n```\n| n | 1234567890 |"
    assert build_docs.readable_numbers(md).split("\n") == [
        "| event_id | integer | yes | 0 to 2<sup>63</sup> − 1 | id |",
        "```",
        "9223372036854775807",
        "```",
        "| n | 1234567890 |",
    ]
    shown = "---\n\n### Missing\n\n```python\ndef Missing(\n    *args, **kwargs\n):\n```\n\n*A lookup failed.*"
    assert (
        build_docs.GENERIC_SIGNATURE.sub("X", shown)
        == "---\n\n### Missing\n\nX\n\n*A lookup failed.*"
    )


@pytest.mark.slow
def test_no_generic_signatures_or_long_limits(site):
    "In the site's Markdown (built beside it): no `def X(*args, **kwargs)` signature and no 19-digit limit in a table."
    pages = list((site.parent / "work" / "docs").glob("*.md"))
    assert len(pages) > 10
    generic = [p.name for p in pages if build_docs.GENERIC_SIGNATURE.search(p.read_text())]
    long = [
        p.name
        for p in pages
        for l in p.read_text().split("\n")
        if l.startswith("|") and "9223372036854775807" in l
    ]
    assert (generic, long) == ([], [])


@pytest.mark.browser
@pytest.mark.slow
def test_wide_tables_stay_in_the_content_column(site, server, page):
    "At 1280 px every table (or the box it scrolls in) ends left of the table of contents."
    page.set_viewport_size({"width": 1280, "height": 900})
    for name in ("index.html", "data.html", "models.html"):
        page.goto(server + name)
        over = page.evaluate("""() => { const toc = document.querySelector('.md-sidebar--secondary');
            const edge = toc ? toc.getBoundingClientRect().left : document.querySelector('.md-content').getBoundingClientRect().right;
            return [...document.querySelectorAll('.md-content table')].filter(t => {
                let box = t; while (box && !(box.scrollWidth > box.clientWidth + 1 && getComputedStyle(box).overflowX !== 'visible')
                                     && box.tagName !== 'ARTICLE') box = box.parentElement;
                return Math.min(t.getBoundingClientRect().right, box.getBoundingClientRect().right) > edge + 1; }).length; }""")
        assert over == 0, (name, over)

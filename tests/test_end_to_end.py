"""End to end, offline: the default study in smoke mode through papermill, the strict book build, and
the built site in headless Chromium. Slow (minutes); part of `make test`.

Everything happens in a temporary project root (sources symlinked, see ``conftest.make_project``): the
user's ``results/``, ``book/results/``, ``book/_generated/`` and ``_build/`` are never touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_project

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


USER_FOLDERS = ("results", "book/results", "book/_generated", "_build")
USER_FOLDERS_BEFORE: dict = {}


def user_folders() -> dict[str, int]:
    """Every file under the checkout's output folders with its modification time."""
    return {str(p): p.stat().st_mtime_ns for f in USER_FOLDERS for p in (REPO / f).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The temporary project root and the environment that points the suite at it (weights: the real cache)."""
    root = make_project(tmp_path_factory.mktemp("e2e") / "project")
    global USER_FOLDERS_BEFORE
    USER_FOLDERS_BEFORE = user_folders()
    env = {**os.environ, "CONCEPTSIM_ROOT": str(root), "CONCEPTSIM_RESULTS": str(root / "results"),
           "CONCEPTSIM_CACHE": os.environ.get("CONCEPTSIM_CACHE", str(REPO / ".cache")),
           "CONCEPTSIM_BOOK_ALL": "1"}  # the smoke study is a rehearsal: listed in the book only with BOOK_ALL=1
    return root, env


@pytest.fixture(scope="module")
def smoke_study(project):
    """Run `conceptsim run studies/default.yml --smoke` in the temporary project."""
    root, env = project
    cmd = [str(VENV_BIN / "conceptsim"), "run", "studies/default.yml", "--smoke", "--jobs", "2", "--quiet"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root / "results" / "default-smoke", env


def test_smoke_study_writes_documented_results(smoke_study):
    out, _ = smoke_study
    for ds in ("shapes", "photo-colors", "coco-icons"):
        q = pd.read_csv(out / ds / "ssd_mobilenet_v2_coco" / "concept_quality.csv")
        for col in ("model", "layer", "relative_depth", "concept", "category", "method", "metric", "value",
                    "ci_low", "ci_high", "control_value", "random_init_value", "represented", "n_test"):
            assert col in q.columns
        assert q["random_init_value"].notna().any()  # joined from the twin
        sim = pd.read_csv(out / ds / "similarity.csv")
        assert {"seg", "cls", "cka"} <= set(sim["method"])
        assert {"ssd_mobilenet_v2_coco", "centernet_mobilenet_v3_coco", "mobilenet_v2_imagenet"} <= set(sim["model_a"])
        findings = json.loads((out / ds / "findings.json").read_text())
        assert findings
    executed = sorted((out.parents[1] / "book" / "results" / "default-smoke").rglob("*.ipynb"))
    assert len(executed) == 3 * (7 * 2 + 2)  # 3 trained models, one twin each, the pixels floor


def test_rerun_reuses_every_complete_run(smoke_study):
    out, env = smoke_study
    cmd = [str(VENV_BIN / "conceptsim"), "run", "studies/default.yml", "--smoke", "--quiet"]
    proc = subprocess.run(cmd, cwd=out.parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 run(s) executed, 48 reused" in proc.stdout


@pytest.fixture(scope="module")
def built_book(smoke_study, project):
    root, env = project
    cmd = [str(VENV_BIN / "jupyter-book"), "build", ".", "--toc", "book/_generated/_toc.yml", "-W", "-n",
           "--keep-going"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    index = root / "_build" / "html" / "index.html"
    assert index.exists()
    return index


def test_strict_book_build_contains_executed_notebooks(built_book):
    html = built_book.parent
    pages = list((html / "book" / "results" / "default-smoke").rglob("*.html"))
    assert any(p.name == "04_compare_models.html" for p in pages)
    assert (html / "_static" / "mathjax" / "tex-svg.js").exists()
    findings = (html / "book" / "results" / "default-smoke" / "findings.html").read_text()
    # the page opens with the answer, and every test has a verdict
    assert "What was tested" in findings and "What it found" in findings and "How sure" in findings
    assert "Verdicts at a glance" in findings and ("not testable here" in findings or "inconclusive" in findings)


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found on PATH: the browser test needs them. `make setup` installs "
                    "them when run as root; otherwise: sudo apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", "--allow-file-access-from-files"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


EXECUTED = "book/results/default-smoke/shapes"
FIGURES_EXPECTED = {  # executed notebooks and the least number of figures each must show
    f"{EXECUTED}/ssd_mobilenet_v2_coco/01_extract.html": 2,
    f"{EXECUTED}/ssd_mobilenet_v2_coco/02_concepts.html": 3,
    f"{EXECUTED}/03_compare_layers.html": 6,
    f"{EXECUTED}/04_compare_models.html": 4,
    "book/results/default-smoke/findings.html": 3,
}


@pytest.mark.parametrize("page", ["index.html", "book/methods.html", *FIGURES_EXPECTED])
def test_site_renders_in_chromium(built_book, page):
    import time

    shots = built_book.parents[1] / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    browser = _browser()
    try:
        browser.get((built_book.parent / page).as_uri())
        deadline = time.time() + 20
        while time.time() < deadline:  # MathJax typesets asynchronously
            if browser.execute_script("return document.readyState") == "complete" and browser.execute_script(
                    "return !window.MathJax || !MathJax.startup || MathJax.startup.promise === undefined"
                    " || document.querySelectorAll('mjx-container').length > 0"
                    " || !document.body.innerText.includes('$$')"):
                break
            time.sleep(0.5)
        title = browser.title
        assert "conceptsim" in title
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        assert broken == [], f"images that did not load on {page}: {broken}"
        text = browser.execute_script(
            "return document.querySelector('main') ? document.querySelector('main').innerText : document.body.innerText")
        for delim in ("$$", "\\(", "\\[", "\\begin{"):
            assert delim not in text, f"raw TeX {delim!r} left on {page}"
        if page.endswith("methods.html"):
            assert browser.execute_script("return document.querySelectorAll('mjx-container').length") > 0
        if page in FIGURES_EXPECTED:
            assert browser.execute_script("return document.images.length") >= FIGURES_EXPECTED[page]
        browser.save_screenshot(str(shots / (page.replace("/", "_").replace(".html", ".png"))))
    finally:
        browser.quit()


def test_user_folders_are_untouched(built_book):
    assert user_folders() == USER_FOLDERS_BEFORE


def _settled(browser, timeout: float = 20) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and browser.execute_script("return document.readyState") != "complete":
        time.sleep(0.2)


WARNING_TEXT = r"\b[A-Z][A-Za-z0-9]*Warning\b|warnings\.warn|Traceback \(most recent call last\)"


MIN_FIGURE_PT = 8.0  # the smallest figure text a reader is asked to read, as shown on the page


def small_figure_text(browser) -> list[str]:
    """Figures on the open page whose smallest text shows below ``MIN_FIGURE_PT``: read from the PNG's metadata
    (``conceptsim.atomic.figure_png`` writes the smallest font size in points and the dpi) and scaled by how
    wide the page draws the image against its natural width (96 CSS px to the inch). Images without that
    metadata are not judged."""
    from urllib.parse import unquote, urlparse

    from PIL import Image

    from conceptsim.atomic import FONT_FLOOR_KEY

    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('main img')).filter(i => i.complete && i.naturalWidth)"
        ".map(i => [i.currentSrc, i.naturalWidth, i.getBoundingClientRect().width]);")
    small = []
    for src, natural, width in shown:
        url = urlparse(src)
        if url.scheme != "file":
            continue
        with Image.open(unquote(url.path)) as im:
            meta = dict(getattr(im, "text", {}) or {})
        if FONT_FLOOR_KEY not in meta or not width:
            continue
        pt = float(meta[FONT_FLOOR_KEY]) * float(meta.get("conceptsim-dpi", 100)) / 96 * width / natural
        if pt < MIN_FIGURE_PT:
            small.append(f"{Path(url.path).name}: smallest text {pt:.1f} pt as shown ({meta[FONT_FLOOR_KEY]} pt in a "
                         f"{natural} px image drawn {width:.0f} px wide)")
    return small


def key_columns_beyond(browser) -> list[str]:
    """Verdict or target columns of the open page's tables that start beyond the window's right edge."""
    return browser.execute_script(
        "const re = new RegExp(arguments[0], 'i'); const out = [];"
        "document.querySelectorAll('main table').forEach((t, i) => {"
        "  const head = t.querySelectorAll('thead th, tr:first-child th');"
        "  head.forEach(th => { const r = th.getBoundingClientRect();"
        "    if (re.test(th.innerText.trim()) && r.left >= window.innerWidth)"
        "      out.push(`table ${i + 1}: '${th.innerText.trim()}' starts at ${Math.round(r.left)} px`); }); });"
        "return out;", KEY_COLUMNS)


def test_every_page_reads_clean_in_chromium(built_book):
    """Every built page: tables rendered as tables (no raw `|---|` pipe text), no warning text or stderr
    stream in notebook outputs, every navigation entry of an executed page names its model or dataset, no
    verdict or target column beyond the window (1,280 px) and no figure text shown below 8 pt (where the
    figure's metadata tells its font sizes); a screenshot of the Findings page is saved as
    `_build/findings.png` for a person to look at."""
    import re

    html = built_book.parent
    pages = sorted(p for p in html.rglob("*.html") if "_static" not in p.parts and p.name not in ("genindex.html", "search.html"))
    executed = [p for p in pages if "default-smoke" in p.parts and p.stem[:2].isdigit()]
    assert executed, "no executed notebook pages were built"
    problems = []
    browser = _browser()
    try:
        for page in pages:
            browser.get(page.as_uri())
            _settled(browser)
            rel = page.relative_to(html).as_posix()
            main = browser.execute_script("const m = document.querySelector('main'); return m ? m.innerText : ''")
            if re.search(r"\|\s*-{3,}\s*\|", main):
                problems.append(f"{rel}: raw Markdown table text")
            outputs = browser.execute_script(
                "return Array.from(document.querySelectorAll('.cell_output')).map(e => e.innerText).join('\\n')")
            found = re.search(WARNING_TEXT, outputs)
            if found:
                problems.append(f"{rel}: warning text in a notebook output: {found.group(0)!r}")
            if browser.execute_script("return document.querySelectorAll('.cell_output .stderr, .output.stderr').length"):
                problems.append(f"{rel}: a stderr stream in a notebook output")
            problems += [f"{rel}: {b} (window 1280 px)" for b in key_columns_beyond(browser)]
            problems += [f"{rel}: {s}" for s in small_figure_text(browser)]
            if page in executed:  # .../default-smoke/<dataset>[/<model dir>]/NN_stage.html
                nav = browser.execute_script(
                    "const a = document.querySelectorAll('.bd-sidebar-primary a.current, .bd-sidebar a.current');"
                    " return a.length ? a[a.length - 1].innerText : ''")
                where = page.relative_to(html / "book" / "results" / "default-smoke").parts[:-1]
                names = [where[0]] + [part.replace("__", ":") for part in where[1:]]
                if not all(n in nav for n in names):
                    problems.append(f"{rel}: navigation entry {nav!r} does not name {' and '.join(names)}")
            if rel == "book/results/default-smoke/findings.html":
                browser.set_window_size(1280, max(900, browser.execute_script("return document.body.scrollHeight")))
                browser.save_screenshot(str(html.parent / "findings.png"))  # the temporary project's _build/
                browser.set_window_size(1280, 900)
                wide = browser.execute_script(
                    "return Array.from(document.querySelectorAll('main table')).filter(t => t.scrollWidth > t.clientWidth + 1"
                    " && getComputedStyle(t).overflowX !== 'auto' && getComputedStyle(t.parentElement).overflowX !== 'auto').length")
                if wide:
                    problems.append(f"{rel}: {wide} wide table(s) cut off instead of scrolling")
    finally:
        browser.quit()
    assert (html.parent / "findings.png").exists()
    assert not problems, "\n".join(problems)


KEY_COLUMN_PAGES = ("book/performance.html", f"{EXECUTED}/ssd_mobilenet_v2_coco/02_concepts.html",
                    "book/results/default-smoke/findings.html")
KEY_COLUMNS = r"^(verdict|target|result|holds)\b"  # the columns a reader looks for first


def test_key_columns_on_screen_at_1000_and_1400_px(built_book):
    """At 1,000 and 1,400 px, no table of the Performance page or an executed concepts page has a verdict or
    target column that starts beyond the window's right edge; a full-page screenshot of each page (and of the
    Findings page, for a person to look at) is saved as ``_build/screens/<page>-<width>.png`` of the temporary
    project."""
    html = built_book.parent
    shots = html.parent / "screens"
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    browser = _browser()
    try:
        for width in (1000, 1400):
            for page in KEY_COLUMN_PAGES:
                browser.set_window_size(width, 900)
                browser.get((html / page).as_uri())
                _settled(browser)
                beyond = key_columns_beyond(browser)
                if page != KEY_COLUMN_PAGES[-1]:  # the Findings page's tables are checked by its own test
                    problems += [f"{page} at {width} px: {b} (window {width} px)" for b in beyond]
                height = browser.execute_script("return document.body.scrollHeight")
                browser.set_window_size(width, min(max(900, height), 12000))
                name = page.replace("book/results/default-smoke/", "").replace("/", "_").replace(".html", "")
                browser.save_screenshot(str(shots / f"{name}-{width}.png"))
    finally:
        browser.quit()
    assert len(list(shots.glob("*.png"))) == 2 * len(KEY_COLUMN_PAGES)
    assert not problems, "\n".join(problems)

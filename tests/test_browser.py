"""End to end in a real browser: JupyterLab in headless Chromium runs chapters 00-02, learner and solution copies.

For each notebook: Run All Cells (resuming below a cell whose error stopped the run), then check the saved
outputs and the page: learner copies show no error but the "not written yet" of unsolved exercises, solution
copies no error at all and a pass line under every visible check; matplotlib figures are decoded images;
moving an explorer's slider with the keyboard redraws its picture (so the kernel side of the widget ran).
nbgrader's Validate button and Assignment List are there. Screenshots go to $VITLAB_BROWSER_ARTIFACTS
(default: a pytest temporary folder, printed). The server runs on a temporary copy of the notebooks, with
VITLAB_PROFILE=grade in its (and so the kernels') environment.

Needs the system's Chromium (`apt-get install chromium`) and `pip install playwright`; skipped without them.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from lab_browser import CHROMIUM_ARGS, LabServer, NotebookPage, chromium_path

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = chromium_path()
if CHROMIUM is None:
    pytest.skip("no system Chromium (apt-get install chromium, or set VITLAB_CHROMIUM)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ["00_welcome", "01_attention", "02_patches"]
PASS, FAIL = "\u2714", "\u2718"
NOT_WRITTEN = "is not written yet"
# A visible check: a line calling check_x(...) or check_x.y(...) in a cell that is neither graded nor a solution.
CHECK_CALL = re.compile(r"^check_\w+(\.\w+)?\(", re.M)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("VITLAB_BROWSER_ARTIFACTS") or tmp_path_factory.mktemp("browser"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a copy of chapters/ and solutions/ 00-02 (the browser never writes into the repository)."""
    home = tmp_path_factory.mktemp("lab")
    root = home / "course"
    for kind in ("chapters", "solutions"):
        for name in CHAPTERS:
            shutil.copytree(ROOT / kind / name, root / kind / name)
    server = LabServer(root, home, env={"VITLAB_PROFILE": "grade", "OMP_NUM_THREADS": "1"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_notebook(request, lab, browser, artefacts):
    """open_notebook(kind, chapter) -> a NotebookPage with its kernel idle; the page and kernel close afterwards.

    A test that fails leaves a screenshot of its page, NAME-failed.png.
    """
    pages = []
    failed_before = request.session.testsfailed

    def open_(kind: str, chapter: str) -> NotebookPage:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        notebook = NotebookPage(page, lab, f"{kind}/{chapter}/{chapter}.ipynb", artefacts, f"{kind}-{chapter}")
        pages.append(notebook)
        notebook.open()
        return notebook

    yield open_
    for notebook in pages:
        if request.session.testsfailed > failed_before:
            notebook.screenshot("failed")
        notebook.page.close()
    lab.shutdown_kernels()


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def errors(cell: dict) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o["output_type"] == "error"]


def text_of(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append("".join(out["text"]))
        elif "data" in out:
            parts.append("".join(out["data"].get("text/plain", "")))
    return "".join(parts)


def is_visible_check(cell: dict) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return not meta.get("grade") and not meta.get("solution") and bool(CHECK_CALL.search("".join(cell["source"])))


def check_page(notebook: NotebookPage, nb: dict) -> None:
    """What every notebook must show: every cell run, decoded figures, an explorer that redraws on a key press."""
    cells = code_cells(nb)
    not_run = [i for i, c in enumerate(cells) if c["source"] and c["execution_count"] is None]
    assert not not_run, f"{notebook.path}: code cells {not_run} never ran"
    widths = notebook.images()
    assert widths and all(w > 0 for w in widths), f"{notebook.path}: figures (widths {widths}) not rendered"
    notebook.screenshot("figure", notebook.page.locator(".jp-NotebookPanel .jp-RenderedImage img").first)
    before, after = notebook.nudge_first_slider()
    notebook.screenshot("explorer-moved", notebook.page.locator(".jp-NotebookPanel .widget-slider").first)
    assert after["readout"] != before["readout"], f"{notebook.path}: ArrowRight did not move the slider {before}"
    assert after["image"] != before["image"] and after["loaded"], \
        f"{notebook.path}: moving the slider ({before['readout']} -> {after['readout']}) did not redraw the picture"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_learner_notebook_runs_in_the_browser(open_notebook, chapter):
    notebook = open_notebook("chapters", chapter)
    notebook.run_all()
    nb = notebook.save()
    cells = code_cells(nb)
    expected, unexpected = [], []
    for i, cell in enumerate(cells):
        for err in errors(cell):
            ok = err["ename"] == "NotImplementedError" or (err["ename"] == "CheckFailed" and NOT_WRITTEN in err["evalue"])
            (expected if ok else unexpected).append((i, err["ename"], err["evalue"][:300]))
    assert not unexpected, f"{notebook.path}: errors other than unsolved exercises: {unexpected}"
    assert expected, f"{notebook.path}: no exercise reported 'not written yet'; are the solutions still in it?"
    first_error = notebook.page.locator(".jp-NotebookPanel .jp-CodeCell").nth(expected[0][0])
    notebook.screenshot("not-written-yet", first_error)
    assert FAIL in first_error.locator(".jp-OutputArea-output").last.inner_text()
    check_page(notebook, nb)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_notebook_passes_its_checks_in_the_browser(open_notebook, chapter):
    notebook = open_notebook("solutions", chapter)
    resumed = notebook.run_all()
    nb = notebook.save()
    cells = code_cells(nb)
    failed = [(i, e["ename"], e["evalue"][:300]) for i, c in enumerate(cells) for e in errors(c)]
    assert not failed and not resumed, f"{notebook.path}: errors {failed}"
    checks = [i for i, c in enumerate(cells) if is_visible_check(c)]
    assert checks, f"{notebook.path}: no visible check cell found"
    silent = [i for i in checks if PASS not in text_of(cells[i])]
    assert not silent, f"{notebook.path}: check cells {silent} printed no pass line"
    shown = notebook.page.locator(".jp-NotebookPanel .jp-CodeCell").nth(checks[0])
    assert PASS in shown.locator(".jp-OutputArea-output").first.inner_text()
    notebook.screenshot("check-passes", shown)
    check_page(notebook, nb)


def test_nbgrader_validate_button_and_assignment_list(open_notebook):
    notebook = open_notebook("chapters", "00_welcome")
    page = notebook.page
    validate = page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-item:has-text('Validate')")
    assert validate.count() == 1 and validate.is_visible(), "nbgrader's Validate button is missing"
    notebook.menu("Nbgrader", "Assignment List")
    tab = page.locator(".lm-TabBar-tabLabel:text-is('Assignments')")
    tab.wait_for(state="visible")
    page.locator("text=Released assignments >> visible=true").first.wait_for(state="visible")
    page.wait_for_timeout(2000)  # the list asks the server for courses and assignments after it shows
    notebook.screenshot("nbgrader-assignment-list")
    text = page.locator("body").inner_text()
    # setup.sh gives Jupyter the course's nbgrader configuration, and with it an exchange folder that exists
    assert "does not exist" not in text and "Error fetching courses" not in text, text[:500]

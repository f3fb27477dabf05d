"""End to end in a real browser: JupyterLab in headless Chromium runs chapters 00-02, learner and solution copies.

For each notebook: Run All Cells, then check the saved outputs and the page: on a learner copy Run All reaches
the last cell with no error, the checks of unsolved exercises printing their "not written yet"; solution copies
show no error at all and a pass line under every visible check; matplotlib figures are decoded images; moving an
explorer's slider with the keyboard redraws its picture (so the kernel side of the widget ran). nbgrader's
Validate button fails on the untouched learner copy of 01, naming its exercises; the Assignment List is there
and nbgrader's instructor panels are not (the learner's view); a terminal finds `nbgrader`. Screenshots go to $VITLAB_BROWSER_ARTIFACTS
(default: a pytest temporary folder, printed). The server runs on a temporary copy of the notebooks, with
VITLAB_PROFILE=grade in its (and so the kernels') environment.

Needs the system's Chromium (`apt-get install chromium`) and `pip install playwright`; skipped without them.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
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
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir)
    server = LabServer(root, home, env={"VITLAB_PROFILE": "grade", "OMP_NUM_THREADS": "1", "PATH": path}).start()
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
    resumed = notebook.run_all()
    nb = notebook.save()
    cells = code_cells(nb)
    failed = [(i, e["ename"], e["evalue"][:300]) for i, c in enumerate(cells) for e in errors(c)]
    assert not failed and not resumed, f"{notebook.path}: Run All stopped (resumed {resumed} times): {failed}"
    unsolved = [i for i, c in enumerate(cells) if is_visible_check(c) and NOT_WRITTEN in text_of(c)]
    if chapter != "00_welcome":
        assert unsolved, f"{notebook.path}: no check reported 'not written yet'; are the solutions still in it?"
        shown = notebook.page.locator(".jp-NotebookPanel .jp-CodeCell").nth(unsolved[0])
        notebook.screenshot("not-written-yet", shown)
        assert FAIL in shown.locator(".jp-OutputArea-output").last.inner_text()
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


def test_validate_button_fails_on_the_untouched_learner_copy(open_notebook):
    notebook = open_notebook("chapters", "01_attention")
    page = notebook.page
    page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-item:has-text('Validate')").click()
    dialog = page.locator(".jp-Dialog:has-text('Validation Results')")
    dialog.wait_for(state="visible", timeout=300_000)
    notebook.screenshot("validate-fails")
    text = dialog.inner_text()
    assert text.count("The following cell failed") == 6, text[:1000]  # one per graded cell of 01
    for exercise in ("scaled_dot_product_attention", "score_variance", "MultiHeadAttention", "AdditiveAttention",
                     "linear_attention"):
        assert f"{exercise} is not written yet" in text or f"{exercise}(" in text, (exercise, text[:3000])
    dialog.locator(".jp-mod-accept").click()


def test_learner_view_assignment_list_and_terminal(open_notebook, lab):
    notebook = open_notebook("chapters", "00_welcome")
    page = notebook.page
    validate = page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-item:has-text('Validate')")
    assert validate.count() == 1 and validate.is_visible(), "nbgrader's Validate button is missing"
    # the learner's view: setup.sh switched off the instructor's panels and menu entries
    assert page.locator(".lm-TabBar-tab[title*='Create Assignment']").count() == 0, "Create Assignment panel shown"
    page.click(".lm-MenuBar-itemLabel:text-is('Nbgrader')")
    entries = page.locator(".lm-Menu-content .lm-Menu-item:visible .lm-Menu-itemLabel").all_inner_texts()
    page.keyboard.press("Escape")
    assert "Assignment List" in entries and not {"Formgrader", "Course List", "Create Assignment"} & set(entries), \
        entries
    notebook.menu("Nbgrader", "Assignment List")
    tab = page.locator(".lm-TabBar-tabLabel:text-is('Assignments')")
    tab.wait_for(state="visible")
    page.locator("text=Released assignments >> visible=true").first.wait_for(state="visible")
    page.wait_for_timeout(2000)  # the list asks the server for courses and assignments after it shows
    notebook.screenshot("nbgrader-assignment-list")
    text = page.locator("body").inner_text()
    # setup.sh gives Jupyter the course's nbgrader configuration, and with it an exchange folder that exists
    assert "does not exist" not in text and "Error fetching courses" not in text, text[:500]
    # a terminal of this JupyterLab (whose server started elsewhere, without .venv/bin on PATH) opens in the served
    # folder and finds nbgrader
    notebook.menu("File", "New")
    page.click(".lm-Menu-content .lm-Menu-itemLabel:text-is('Terminal')")
    page.locator(".jp-Terminal .xterm").first.wait_for(state="visible")
    page.wait_for_timeout(1000)
    page.locator(".jp-Terminal .xterm").first.click()
    probe = lab.home / "terminal-probe.txt"
    page.keyboard.type(f"{{ pwd; command -v nbgrader; }} > {probe}\n")
    for _ in range(60):
        if probe.exists() and len(probe.read_text().splitlines()) == 2:
            break
        page.wait_for_timeout(500)
    notebook.screenshot("terminal")
    cwd, nbgrader = probe.read_text().splitlines()
    assert Path(cwd).resolve() == lab.root_dir.resolve(), f"the terminal opened in {cwd}, not in the served folder"
    assert Path(nbgrader).parent.resolve() == Path(sys.executable).parent.resolve(), nbgrader

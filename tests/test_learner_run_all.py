"""Run All on an untouched learner copy reaches the last cell: failed checks print and the run goes on, and
experiments that need an unfinished exercise run with vitlab's reference (check.use), saying so.

nbclient stops at the first error, as JupyterLab's Run All does. 01 is run in the real browser
(tests/test_browser.py); 04, 08 and 09 are the chapters whose experiments (training, attention maps, the
segmenter, CLIP's retrieval) come after their exercises and use the learner's code.
"""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("chapter", ["04_vit", "08_segmentation", "09_clip"])
def test_run_all_on_the_learner_copy_reaches_the_last_cell(chapter, monkeypatch):
    monkeypatch.setenv("VITLAB_PROFILE", "grade")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    path = ROOT / "chapters" / chapter / f"{chapter}.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = ["".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("is not written yet" in text for text in outputs), "no check said 'not written yet'"
    assert any("has not passed its check yet" in text for text in outputs), "no experiment fell back on the reference"

"""Every instructor notebook runs top to bottom in the `grade` profile, hidden tests included.

A chapter with a tests/test_grading_NN.py is run there instead, once, through nbgrader and the sandbox: its
`solution` submission must score full points with no error in any cell (ChapterGrading). The rest run here.
"""
from pathlib import Path

import nbformat
import pytest
from conftest import SOLUTION_NOTEBOOKS
from nbclient import NotebookClient

# The autograder's per-cell limit (c.Execute.timeout in autograder/nbgrader_config.py): a cell slower than
# this here would time out when nbgrader grades the solution.
CELL_TIMEOUT = 60
GRADED_END_TO_END = {p.stem.removeprefix("test_grading_") for p in Path(__file__).parent.glob("test_grading_*.py")}
RUN_HERE = [p for p in SOLUTION_NOTEBOOKS if p.parent.name[:2] not in GRADED_END_TO_END]


@pytest.mark.parametrize("solution_notebook", RUN_HERE, ids=[p.parent.name for p in RUN_HERE])
def test_solution_notebook_runs_in_grade_profile(solution_notebook, monkeypatch):
    monkeypatch.setenv("VITLAB_PROFILE", "grade")
    nb = nbformat.read(solution_notebook, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(solution_notebook.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first error


def test_every_solution_notebook_is_run_here_or_graded_end_to_end(repo):
    names = {p.parent.name for p in SOLUTION_NOTEBOOKS}
    assert {"00_welcome", "01_attention", "04_vit", "09_clip"} <= names
    assert {name for name in names if name[:2] in GRADED_END_TO_END} | {p.parent.name for p in RUN_HERE} == names
    for number in GRADED_END_TO_END:
        module = (repo / "tests" / f"test_grading_{number}.py").read_text(encoding="utf-8")
        chapter = next(name for name in names if name[:2] == number)
        assert f'CHAPTER = "{chapter}"' in module, f"test_grading_{number}.py does not grade {chapter}"

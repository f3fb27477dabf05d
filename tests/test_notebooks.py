"""Every instructor notebook runs top to bottom in the `grade` profile, hidden tests included."""
import nbformat
from nbclient import NotebookClient

# The autograder's per-cell limit (c.Execute.timeout in autograder/nbgrader_config.py): a cell slower than
# this here would time out when nbgrader grades the solution.
CELL_TIMEOUT = 60


def test_solution_notebook_runs_in_grade_profile(solution_notebook, monkeypatch):
    monkeypatch.setenv("VITLAB_PROFILE", "grade")
    nb = nbformat.read(solution_notebook, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(solution_notebook.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first error


def test_the_promised_chapters_have_solution_notebooks(repo):
    """The parametrised test above runs once per notebook found; this makes sure it finds the ones promised."""
    names = {p.parent.name for p in repo.glob("solutions/*/*.ipynb") if p.stem == p.parent.name}
    assert {"00_welcome", "01_attention"} <= names

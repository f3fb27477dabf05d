"""The instructor's formgrader (in their JupyterLab on the hub) works on their grading folder, ~/grading: the
`--out` folder of `python -m autograder grade --exchange`, with its gradebook."""
from pathlib import Path

GRADING = Path.home() / "grading"

c = get_config()  # noqa: F821 - defined by traitlets when nbgrader loads this file
c.CourseDirectory.root = str(GRADING)
c.CourseDirectory.db_url = f"sqlite:///{GRADING / 'gradebook.db'}"

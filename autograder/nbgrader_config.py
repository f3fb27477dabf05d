"""nbgrader configuration of the vitlab course.

The course root is the repository root (this file's parent's parent): instructor notebooks live in
`solutions/`, the learner copies that `python -m autograder release` writes in `chapters/`.
`python -m autograder` passes this file to every nbgrader command it runs; to run nbgrader by hand from
the repository root, pass it the same way (without `.py`, which nbgrader adds):

    nbgrader generate_assignment 01_attention --NbGrader.config_file=autograder/nbgrader_config
"""
import contextlib
import os
from pathlib import Path

from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearHiddenTests, GetGrades, IgnorePattern,
                                    LimitOutput, SaveAutoGrades)

from autograder.preprocessors import GuardedExecute, HideHiddenTestTracebacks, RedactHiddenTests

ROOT = Path(__file__).resolve().parent.parent
# The exchange (nbgrader release_assignment / fetch / submit / collect): on a JupyterHub the folder shared by
# all users, which the hub gives every server as $VITLAB_EXCHANGE (deploy/jupyterhub); otherwise one in the
# user's cache directory, not in the repository.
EXCHANGE = Path(os.environ.get("VITLAB_EXCHANGE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "vitlab" / "nbgrader-exchange")

c = get_config()  # noqa: F821 - defined by traitlets when nbgrader loads this file

c.CourseDirectory.course_id = "vitlab"
c.CourseDirectory.root = str(ROOT)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "chapters"
# The gradebook of the repository itself (gitignored). `python -m autograder grade` grades in a folder of
# its own, with that folder's gradebook, so grading never writes into the repository.
c.CourseDirectory.db_url = f"sqlite:///{ROOT / 'gradebook.db'}"
c.CourseDirectory.ignore = [".ipynb_checkpoints", "__pycache__", "*.pyc", ".DS_Store", "feedback"]

with contextlib.suppress(OSError):  # an unwritable home only matters to the exchange commands
    EXCHANGE.mkdir(parents=True, exist_ok=True)
c.Exchange.root = str(EXCHANGE)

# Seconds per cell when autograding; a cell that runs longer is interrupted and fails, the rest still run.
# `python -m autograder grade` passes its --cell-timeout and --notebook-timeout over these.
c.Execute.timeout = 60
# nbgrader's autograde steps, with its Execute replaced by one that also keeps a budget for the whole
# notebook, caps each cell's output and survives a kernel that dies (autograder/preprocessors.py).
c.Autograde.autograde_preprocessors = [
    GuardedExecute,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
c.LimitOutput.max_lines = 300

# Feedback shows scores and the learner's code, never the hidden tests: neither their code
# (ClearHiddenTests), nor the traceback of an error they raised, which quotes that code, nor any output that
# quotes them (RedactHiddenTests).
c.GenerateFeedback.preprocessors = [
    GetGrades,
    CSSHTMLHeaderPreprocessor,
    HideHiddenTestTracebacks,
    RedactHiddenTests,
    ClearHiddenTests,
]
# The learner's markdown and HTML outputs are sanitised (no script, style or event handler) in the feedback
# and the formgrader's HTML, with a tag list that keeps ordinary markdown (nbconvert's own escapes headings):
# outputs by nbconvert's `sanitize_html`, markdown by our `markdown2html` filter (both exporters are HTMLExporters).
c.HTMLExporter.sanitize_html = True
c.HTMLExporter.filters = {"clean_html": "autograder.report.clean_html", "markdown2html": "autograder.report.CleanMarkdown"}

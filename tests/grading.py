"""Grading a chapter end to end, shared by the test_grading_* files.

A submission starts from the learner copy (chapters/, where the hidden tests are already gone) and pastes the
instructor's code into its solution cells, with one line replaced per typical mistake. A mistake is
(the function or class the solution cell defines, a line of the solution, its wrong version). A chapter's
SUBMISSIONS map a student to (mistakes, {check whose graded cell scores zero: what its feedback says},
{checks that score zero as a knock-on of those}).
"""
from __future__ import annotations

import copy
import csv
import html
import re
from pathlib import Path

import nbformat
import pytest

HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def chapter_notebooks(repo: Path, chapter: str) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """(the learner copy, the instructor's notebook) of a chapter."""
    release = nbformat.read(repo / "chapters" / chapter / f"{chapter}.ipynb", as_version=4)
    solution = nbformat.read(repo / "solutions" / chapter / f"{chapter}.ipynb", as_version=4)
    return release, solution


def solution_cell(nb, name: str):
    """The solution cell that defines the function or class `name`."""
    defines = re.compile(rf"^(def|class) {name}\b", re.M)
    cells = [c for c in nb.cells if nbgrader_meta(c).get("solution") and defines.search(c.source)]
    assert len(cells) == 1, f"no single solution cell defines {name}"
    return cells[0]


def learner_submission(release, solution, mistakes) -> nbformat.NotebookNode:
    """The learner copy with the instructor's code pasted into its solution cells, `mistakes` applied."""
    answers = {nbgrader_meta(c)["grade_id"]: "\n".join(line for line in c.source.splitlines()
                                                       if line.strip() not in SOLUTION_MARKERS)
               for c in solution.cells if nbgrader_meta(c).get("solution")}
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        if nbgrader_meta(cell).get("solution"):
            cell.source = answers[nbgrader_meta(cell)["grade_id"]]
    for name, line, wrong in mistakes:
        cell = solution_cell(nb, name)
        lines = cell.source.split("\n")
        assert lines.count(line) == 1, f"the solution of {name} no longer has the line {line!r}: update this test"
        lines[lines.index(line)] = wrong
        cell.source = "\n".join(lines)
    return nb


def points(solution) -> dict[str, float]:
    """Points of each graded cell, in notebook order."""
    graded = [nbgrader_meta(c) for c in solution.cells if nbgrader_meta(c).get("grade")]
    return {meta["grade_id"]: float(meta["points"]) for meta in graded}


def checks_of(solution, module: str) -> dict[str, list[str]]:
    """Graded cells by the `module` check their hidden tests call: {"sdpa": [grade_id, ...], ...}."""
    found: dict[str, list[str]] = {}
    for cell in solution.cells:
        if nbgrader_meta(cell).get("grade"):
            for check in sorted(set(re.findall(rf"{module}\.(\w+)\(", "".join(HIDDEN.findall(cell.source))))):
                found.setdefault(check, []).append(nbgrader_meta(cell)["grade_id"])
    return found


def executed(out: Path, student: str, chapter: str) -> nbformat.NotebookNode:
    """The notebook as nbgrader ran it for `student`, with its outputs."""
    return nbformat.read(out / "autograded" / student / chapter / f"{chapter}.ipynb", as_version=4)


def html_text(path: Path) -> str:
    """What a reader of the feedback sees: the HTML without styles, scripts and tags."""
    page = re.sub(r"<(style|script)\b.*?</\1>", "", path.read_text(encoding="utf-8"), flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def grade(autograder, tmp_path_factory, chapter: str, release, solution, submissions: dict, extra=None,
          notebook_name: str | None = None):
    """One `python -m autograder grade` run over the untouched release and every submission.

    Submissions are saved as `notebook_name` (default CHAPTER.ipynb); `extra(folder)` may add more student
    folders. Returns (the completed process, the grading folder,
    {student: row of grades.csv}).
    """
    subs = tmp_path_factory.mktemp("submissions")
    (subs / "untouched").mkdir()
    nbformat.write(release, subs / "untouched" / f"{chapter}.ipynb")
    for student, (mistakes, _, _) in submissions.items():
        (subs / student).mkdir()
        nbformat.write(learner_submission(release, solution, mistakes), subs / student / (notebook_name or f"{chapter}.ipynb"))
    if extra:
        extra(subs)
    out = tmp_path_factory.mktemp("graded")
    done = autograder("grade", str(subs), "--chapter", chapter, "--out", str(out))
    assert (out / "grades.csv").exists(), done.stdout + done.stderr
    with (out / "grades.csv").open(encoding="utf-8") as f:
        return done, out, {row["student"]: row for row in csv.DictReader(f)}


def assert_untouched_zero_solution_full(grades: dict, solution) -> None:
    full = points(solution)
    for grade_id, p in full.items():
        assert float(grades["untouched"][grade_id]) == 0, grade_id
        assert float(grades["solution"][grade_id]) == p, grade_id
    assert float(grades["untouched"]["total"]) == 0
    assert float(grades["solution"]["total"]) == float(grades["solution"]["max"]) == sum(full.values())


def assert_mistakes_scored_and_named(out: Path, grades: dict, solution, module: str, chapter: str,
                                     student: str, submission: tuple) -> None:
    """Each named mistake (and its knock-ons) scores zero on its exercise only; the feedback names it."""
    _, named, knock_on = submission
    checks = checks_of(solution, module)
    failing = {grade_id for check in [*named, *knock_on] for grade_id in checks[check]}
    for grade_id, p in points(solution).items():
        assert float(grades[student][grade_id]) == (0 if grade_id in failing else p), grade_id
    assert 0 < float(grades[student]["total"]) < float(grades[student]["max"])
    text = html_text(out / "feedback" / student / chapter / f"{chapter}.html")
    for message in named.values():
        assert message in text


def assert_no_hidden_code(out: Path, chapter: str, solution, pages_expected: int) -> None:
    """Neither the hidden tests' markers nor any of their lines, nor a traceback quoting them, in any feedback."""
    hidden = {line.strip() for cell in solution.cells for block in HIDDEN.findall(cell.source)
              for line in block.splitlines() if line.strip()}
    assert hidden
    pages = sorted((out / "feedback").glob(f"*/{chapter}/{chapter}.html"))
    assert len(pages) == pages_expected
    for page in pages:
        text = html_text(page)
        assert "HIDDEN TESTS" not in text and "graded=True" not in text, page
        for line in hidden:
            assert line not in text, f"{page} shows the hidden test line {line!r}"


class ChapterGrading:
    """The grading tests every chapter has, run by one `grade` batch: a test module subclasses this as
    `TestGrading` and sets CHAPTER, MODULE (its check module), SUBMISSIONS (see the top of this file),
    EXERCISES (the check functions its graded cells call) and TOTAL (the chapter's points)."""

    CHAPTER: str
    MODULE: str
    SUBMISSIONS: dict
    EXERCISES: list[str]
    TOTAL: float

    def pytest_generate_tests(self, metafunc):
        if "student" in metafunc.fixturenames:
            metafunc.parametrize("student", [s for s in self.SUBMISSIONS if s != "solution"])

    @pytest.fixture(scope="class")
    @classmethod
    def notebooks(cls, repo):
        return chapter_notebooks(repo, cls.CHAPTER)

    @pytest.fixture(scope="class")
    @classmethod
    def graded(cls, tmp_path_factory, notebooks, autograder):
        done, out, grades = grade(autograder, tmp_path_factory, cls.CHAPTER, *notebooks, cls.SUBMISSIONS)
        assert done.returncode == 0, done.stdout + done.stderr
        return out, grades

    def test_every_exercise_has_one_graded_cell(self, notebooks):
        checks = checks_of(notebooks[1], self.MODULE)
        assert sorted(checks) == sorted(self.EXERCISES)
        assert all(len(cells) == 1 for cells in checks.values())

    def test_the_solution_runs_without_an_error_and_a_mistake_does_not(self, graded):
        """Every cell of the graded solution ran without an error (so tests/test_notebooks.py need not run it again);
        a submission with mistakes shows the errors its hidden tests raised, so this can tell the two apart."""
        errors = {student: [(i, o.ename) for i, cell in enumerate(executed(graded[0], student, self.CHAPTER).cells)
                            for o in cell.get("outputs", []) if o.output_type == "error"]
                  for student in self.SUBMISSIONS}
        assert errors.pop("solution") == [], "the solution notebook raised errors under the autograder"
        assert all(errors.values()), f"a submission with mistakes shows no error: {errors}"

    def test_untouched_release_scores_zero_and_solution_full_points(self, graded, notebooks):
        assert sum(points(notebooks[1]).values()) == self.TOTAL
        assert_untouched_zero_solution_full(graded[1], notebooks[1])

    def test_a_mistake_scores_zero_on_its_exercise_only_and_is_named(self, graded, notebooks, student):
        assert_mistakes_scored_and_named(*graded, notebooks[1], self.MODULE, self.CHAPTER, student,
                                         self.SUBMISSIONS[student])

    def test_feedback_shows_no_hidden_test_code(self, graded, notebooks):
        assert_no_hidden_code(graded[0], self.CHAPTER, notebooks[1], 1 + len(self.SUBMISSIONS))

"""`python -m autograder grade` end to end on 01_attention, with submissions built as a learner would make them
(tests/grading.py), and the instructor CLI's other commands and errors. One grading run covers every case and two
broken student folders, so the whole file costs a single autograde.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from grading import (assert_mistakes_scored_and_named, assert_no_hidden_code, assert_untouched_zero_solution_full,
                     chapter_notebooks, grade, html_text, points)

CHAPTER = "01_attention"

# A typical mistake per exercise: (the object the solution cell defines, a line of the solution, its wrong version).
NO_SCALE = ("scaled_dot_product_attention",
            "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
            "    scores = q @ k.transpose(-2, -1)")
CALLS_BUILTIN = ("scaled_dot_product_attention",
                 "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
                 "    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)")
NO_PERMUTE = ("MultiHeadAttention",
              "        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)",
              "        q, k, v = (t.reshape(b, self.num_heads, n, dim // self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))")
NO_NORMALISER = ("linear_attention",
                 "    return num / (den + eps)",
                 "    return num")
SOFTMAX_OVER_QUERIES = ("AdditiveAttention",
                        "        weights = scores.masked_fill(dead, 0.0).softmax(dim=-1).masked_fill(dead, 0.0)",
                        "        weights = scores.masked_fill(dead, 0.0).softmax(dim=-2).masked_fill(dead, 0.0)")
RETURNS_STD = ("score_variance",
               "    return scores.var().item()",
               "    return scores.std().item()")

# student -> (mistakes, {graded check that scores zero: what its feedback says}, knock-ons)
SUBMISSIONS = {
    "solution": ([], {}, set()),
    # the solution's MultiHeadAttention calls torch's fused attention, so a mistake in exercise 1 costs nothing there
    "mistakes_a": ([NO_SCALE, SOFTMAX_OVER_QUERIES, RETURNS_STD], {
        "sdpa": "forgot the 1/sqrt(d_k) scale",
        "additive": "took the softmax over the queries instead of the keys",
        "score_variance": "returned the standard deviation",
    }, set()),
    "mistakes_b": ([CALLS_BUILTIN, NO_PERMUTE, NO_NORMALISER], {
        "sdpa": "calls torch's F.scaled_dot_product_attention, the very thing this exercise asks you to write",
        "multi_head": "without a permute",
        "linear": "forgot the normaliser",
    }, set()),
}
MODULE = "check_attention"


@pytest.fixture(scope="module")
def notebooks(repo):
    return chapter_notebooks(repo, CHAPTER)


def broken_folders(subs: Path) -> None:
    """A notebook that is not JSON, and a student folder with no notebook."""
    (subs / "garbled").mkdir()
    (subs / "garbled" / f"{CHAPTER}.ipynb").write_text('{"cells": [', encoding="utf-8")
    (subs / "nothing").mkdir()
    (subs / "nothing" / "notes.txt").write_text("forgot to attach it", encoding="utf-8")


@pytest.fixture(scope="module")
def graded(tmp_path_factory, notebooks, autograder):
    """One `grade` run over every submission (saved under a name of the student's choosing) and two broken folders."""
    return grade(autograder, tmp_path_factory, CHAPTER, *notebooks, SUBMISSIONS, extra=broken_folders,
                 notebook_name="my attempt.ipynb")


def test_grading_reports_bad_folders_in_one_line_and_grades_the_others(graded):
    done, out, grades = graded
    assert done.returncode == 2, done.stdout + done.stderr
    errors = done.stderr.splitlines()
    assert any(line.startswith("error: student garbled:") and "is not JSON" in line for line in errors), done.stderr
    assert any(line.startswith("error: student nothing: no notebook") for line in errors), done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(grades) == sorted(["untouched", *SUBMISSIONS])
    assert str(out) in done.stdout and "solution" in done.stdout  # the folder and the table are printed


def test_csv_has_a_column_per_graded_cell_in_notebook_order(graded, notebooks):
    _, out, _ = graded
    header = (out / "grades.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == ["student", "chapter", *points(notebooks[1]), "total", "max", "flags"]


def test_untouched_release_scores_zero_and_solution_full_points(graded, notebooks):
    assert_untouched_zero_solution_full(graded[2], notebooks[1])


@pytest.mark.parametrize("student", [s for s in SUBMISSIONS if s != "solution"])
def test_a_mistake_scores_zero_on_its_exercise_only_and_is_named(graded, notebooks, student):
    _, out, grades = graded
    assert_mistakes_scored_and_named(out, grades, notebooks[1], MODULE, CHAPTER, student, SUBMISSIONS[student])


def test_feedback_shows_no_hidden_test_code(graded, notebooks):
    assert_no_hidden_code(graded[1], CHAPTER, notebooks[1], 1 + len(SUBMISSIONS))


def test_export_and_feedback_can_be_rerun(graded, tmp_path, autograder):
    _, out, _ = graded
    done = autograder("export", str(out), "--chapter", CHAPTER, "--csv", str(tmp_path / "again.csv"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "again.csv").read_text() == (out / "grades.csv").read_text()
    page = out / "feedback" / "solution" / CHAPTER / f"{CHAPTER}.html"
    before = html_text(page)
    page.unlink()
    done = autograder("feedback", str(out), "--chapter", CHAPTER)
    assert done.returncode == 0, done.stderr
    assert html_text(page) == before


@pytest.mark.parametrize("command, message", [
    ("grade {missing} --chapter 01_attention", "error: submissions folder {missing} is not a folder"),
    ("grade {empty} --chapter 99_nothing", "error: unknown chapter '99_nothing'; known chapters: "),
    ("export {empty} --chapter 01_attention", "error: {empty} is not a grading folder (no gradebook.db)"),
    ("feedback {missing} --chapter 01_attention", "error: grading folder {missing} is not a folder"),
])
def test_bad_input_gives_one_clear_line(command, message, tmp_path, autograder):
    where = {"missing": tmp_path / "missing", "empty": tmp_path}
    done = autograder(*command.format(**where).split())
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message.format(**where) in done.stderr, done.stderr
    if "unknown chapter" in message:
        assert CHAPTER in done.stderr  # the known chapters are listed


def test_feedback_preprocessor_shortens_tracebacks_of_hidden_tests_only():
    """An error raised in a graded cell (a NameError, say) has a traceback quoting the hidden test; the
    feedback keeps only its last line. Errors elsewhere keep their traceback: it quotes the learner's code."""
    from autograder.preprocessors import HideHiddenTestTracebacks

    def cell(source, quoted, **meta):
        code = nbformat.v4.new_code_cell(source, metadata={"nbgrader": {"schema_version": 3, "grade_id": "x", **meta}})
        code.outputs = [nbformat.v4.new_output("error", ename="NameError", evalue="name 'f' is not defined",
                                               traceback=[f"----> {quoted}", "NameError: name 'f' is not defined"])]
        return code

    hidden = "# graded\n### BEGIN HIDDEN TESTS\nsecret_test(f, seed=4321)\n### END HIDDEN TESTS"
    nb = nbformat.v4.new_notebook(cells=[cell(hidden, "3 secret_test(f, seed=4321)", grade=True, points=1),
                                         cell("f(1)", "1 f(1)", grade=False)])
    nb, _ = HideHiddenTestTracebacks().preprocess(nb, {})
    assert nb.cells[0].outputs[0].traceback == ["NameError: name 'f' is not defined"]
    assert nb.cells[1].outputs[0].traceback == ["----> 1 f(1)", "NameError: name 'f' is not defined"]


def test_summary_shows_the_cohort_per_exercise_and_the_common_failures(graded):
    _, out, grades = graded
    page = html_text(out / "summary.html")
    assert f"{len(grades)} submissions" in page
    assert "sdpa-graded: " in page and "forgot the 1/sqrt(d_k) scale" in page
    assert (out / "summary.png").stat().st_size > 1000
    assert "data:image/png;base64," in (out / "summary.html").read_text(encoding="utf-8")

"""`python -m autograder grade` end to end on 01_attention, with submissions built as a learner would make them.

Each submission starts from the learner copy (chapters/, where the hidden tests are already gone) and pastes
the instructor's code into its solution cells, with one line replaced per typical mistake. One grading run
covers every case, and two broken student folders, so the whole file costs a single autograde.
"""
from __future__ import annotations

import copy
import csv
import html
import re
from pathlib import Path

import nbformat
import pytest

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

# student -> (mistakes, {graded check that scores zero: what its feedback says})
SUBMISSIONS = {
    "solution": ([], {}),
    # the solution's MultiHeadAttention calls torch's fused attention, so a mistake in exercise 1 costs nothing there
    "mistakes_a": ([NO_SCALE, SOFTMAX_OVER_QUERIES, RETURNS_STD], {
        "sdpa": "forgot the 1/sqrt(d_k) scale",
        "additive": "took the softmax over the queries instead of the keys",
        "score_variance": "returned the standard deviation",
    }),
    "mistakes_b": ([CALLS_BUILTIN, NO_PERMUTE, NO_NORMALISER], {
        "sdpa": "calls torch's F.scaled_dot_product_attention, the very thing this exercise asks you to write",
        "multi_head": "without a permute",
        "linear": "forgot the normaliser",
    }),
}
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def without_markers(source: str) -> str:
    markers = ("### BEGIN SOLUTION", "### END SOLUTION")
    return "\n".join(line for line in source.splitlines() if line.strip() not in markers)


def learner_submission(release, solution, mistakes) -> nbformat.NotebookNode:
    """The learner copy with the instructor's code pasted into its solution cells, `mistakes` applied."""
    answers = {nbgrader_meta(c)["grade_id"]: without_markers(c.source)
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


def solution_cell(nb, name: str):
    """The solution cell that defines the function or class `name`."""
    defines = re.compile(rf"^(def|class) {name}\b", re.M)
    cells = [c for c in nb.cells if nbgrader_meta(c).get("solution") and defines.search(c.source)]
    assert len(cells) == 1, f"no single solution cell defines {name}"
    return cells[0]


def checks_of(solution) -> dict[str, list[str]]:
    """Graded cells by the check_attention function their hidden tests call: {"sdpa": [grade_id, ...], ...}."""
    found: dict[str, list[str]] = {}
    for cell in solution.cells:
        if nbgrader_meta(cell).get("grade"):
            for check in sorted(set(re.findall(r"check_attention\.(\w+)\(", "".join(HIDDEN.findall(cell.source))))):
                found.setdefault(check, []).append(nbgrader_meta(cell)["grade_id"])
    return found


def html_text(path: Path) -> str:
    """What a reader of the feedback sees: the HTML without styles, scripts and tags."""
    page = re.sub(r"<(style|script)\b.*?</\1>", "", path.read_text(encoding="utf-8"), flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


@pytest.fixture(scope="module")
def notebooks(repo):
    release = nbformat.read(repo / "chapters" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4)
    solution = nbformat.read(repo / "solutions" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4)
    return release, solution


@pytest.fixture(scope="module")
def graded(tmp_path_factory, notebooks, autograder):
    """One `grade` run over every submission, plus a notebook that is not JSON and a folder with no notebook."""
    release, solution = notebooks
    subs = tmp_path_factory.mktemp("submissions")
    (subs / "untouched").mkdir()
    nbformat.write(release, subs / "untouched" / f"{CHAPTER}.ipynb")
    for student, (mistakes, _) in SUBMISSIONS.items():
        (subs / student).mkdir()
        nbformat.write(learner_submission(release, solution, mistakes), subs / student / "my attempt.ipynb")
    (subs / "garbled").mkdir()
    (subs / "garbled" / f"{CHAPTER}.ipynb").write_text('{"cells": [', encoding="utf-8")
    (subs / "nothing").mkdir()
    (subs / "nothing" / "notes.txt").write_text("forgot to attach it", encoding="utf-8")
    out = tmp_path_factory.mktemp("graded")
    done = autograder("grade", str(subs), "--chapter", CHAPTER, "--out", str(out))
    assert (out / "grades.csv").exists(), done.stdout + done.stderr
    with (out / "grades.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return done, out, {row["student"]: row for row in rows}


def points(solution) -> dict[str, float]:
    graded = [nbgrader_meta(c) for c in solution.cells if nbgrader_meta(c).get("grade")]
    return {meta["grade_id"]: float(meta["points"]) for meta in graded}


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
    assert header == ["student", "chapter", *points(notebooks[1]), "total", "max"]


def test_untouched_release_scores_zero_and_solution_full_points(graded, notebooks):
    _, _, grades = graded
    full = points(notebooks[1])
    for grade_id, p in full.items():
        assert float(grades["untouched"][grade_id]) == 0
        assert float(grades["solution"][grade_id]) == p, grade_id
    assert float(grades["untouched"]["total"]) == 0
    assert float(grades["solution"]["total"]) == float(grades["solution"]["max"]) == sum(full.values())


@pytest.mark.parametrize("student", [s for s in SUBMISSIONS if s != "solution"])
def test_a_mistake_scores_zero_on_its_exercise_only(graded, notebooks, student):
    _, _, grades = graded
    _, named = SUBMISSIONS[student]
    checks = checks_of(notebooks[1])
    failing = {grade_id for check in named for grade_id in checks[check]}
    for grade_id, p in points(notebooks[1]).items():
        assert float(grades[student][grade_id]) == (0 if grade_id in failing else p), grade_id
    assert 0 < float(grades[student]["total"]) < float(grades[student]["max"])


@pytest.mark.parametrize("student", [s for s in SUBMISSIONS if s != "solution"])
def test_feedback_names_each_mistake(graded, student):
    _, out, _ = graded
    text = html_text(out / "feedback" / student / CHAPTER / f"{CHAPTER}.html")
    for message in SUBMISSIONS[student][1].values():
        assert message in text


def test_feedback_shows_no_hidden_test_code(graded, notebooks):
    """Neither the hidden tests' markers nor any of their lines, nor a traceback quoting them."""
    _, out, _ = graded
    hidden = {line.strip() for cell in notebooks[1].cells for block in HIDDEN.findall(cell.source)
              for line in block.splitlines() if line.strip()}
    assert hidden
    pages = sorted((out / "feedback").glob(f"*/{CHAPTER}/{CHAPTER}.html"))
    assert len(pages) == 1 + len(SUBMISSIONS)
    for page in pages:
        text = html_text(page)
        assert "HIDDEN TESTS" not in text and "graded=True" not in text, page
        for line in hidden:
            assert line not in text, f"{page} shows the hidden test line {line!r}"


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

"""`python -m autograder grade` on 03_positions: the untouched release, the solution, submissions with typical mistakes.

The submissions are built as in test_autograder.py (whose helpers this file reuses): the learner copy with the
instructor's code pasted in and one line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

import csv
import re

import nbformat
import pytest
from test_autograder import HIDDEN, html_text, learner_submission, nbgrader_meta, points

CHAPTER = "03_positions"

# (the object the solution cell defines, a line of the solution, its wrong version)
SWAPPED_SIN_COS = ("sincos_1d",
                   "    return torch.cat([angles.sin(), angles.cos()], dim=1).float()",
                   "    return torch.cat([angles.cos(), angles.sin()], dim=1).float()")
ROWS_FIRST = ("sincos_2d",
              "    return torch.cat([col_table[cols], row_table[rows]], dim=1)",
              "    return torch.cat([row_table[rows], col_table[cols]], dim=1)")
NO_SHIFT = ("relative_position_index",
            "    return (offsets[..., 0] + h - 1) * (2 * w - 1) + (offsets[..., 1] + w - 1)",
            "    return offsets[..., 0] * (2 * w - 1) + offsets[..., 1]")
BIAS_NO_PERMUTE = ("RelativePositionBias",
                   "        return bias.reshape(n, n, -1).permute(2, 0, 1)",
                   "        return bias.reshape(-1, n, n)")
ROPE_BACKWARDS = ("apply_rope",
                  "    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)",
                  "    return torch.stack([even * cos + odd * sin, odd * cos - even * sin], dim=-1).flatten(-2)")
ROPE_CALLS_REFERENCE = ("apply_rope",
                        "    pos = positions[:, None] if positions.dim() == 1 else positions              # (N, k)",
                        "    return posenc.apply_rope(x, positions, temperature)")
NO_ANTIALIAS = ("resample_pos_embed",
                '    image = F.interpolate(image, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)',
                '    image = F.interpolate(image, size=(nh, nw), mode="bicubic", align_corners=False)')

# student -> (mistakes, {check_posenc function whose graded cell scores zero: what its feedback says},
#             checks that score zero as a knock-on: sincos_2d calls the learner's sincos_1d, and
#             RelativePositionBias the learner's relative_position_index)
SUBMISSIONS = {
    "solution": ([], {}, set()),
    "mistakes_a": ([SWAPPED_SIN_COS, NO_SHIFT, ROPE_BACKWARDS], {
        "sincos_1d": "swapped sin and cos",
        "relative_position_index": "forgot to shift the offsets by h - 1 and w - 1",
        "apply_rope": "rotated the wrong way (by minus the angle)",
    }, {"sincos_2d", "relative_position_bias"}),
    "mistakes_b": ([ROWS_FIRST, BIAS_NO_PERMUTE, ROPE_CALLS_REFERENCE, NO_ANTIALIAS], {
        "sincos_2d": "put the row table first and the column table second",
        "relative_position_bias": "reshaped the looked-up bias (N*N, heads) straight to (heads, N, N)",
        "apply_rope": "calls vitlab.posenc.apply_rope",
        "resample_pos_embed": "left antialias off",
    }, set()),
}


def checks_of(solution) -> dict[str, str]:
    """The graded cell of each check_posenc function, {"sincos_1d": "sincos-1d-graded", ...}."""
    found = {}
    for cell in solution.cells:
        if nbgrader_meta(cell).get("grade"):
            (check,) = set(re.findall(r"check_posenc\.(\w+)\(", "".join(HIDDEN.findall(cell.source))))
            found[check] = nbgrader_meta(cell)["grade_id"]
    return found


@pytest.fixture(scope="module")
def notebooks(repo):
    release = nbformat.read(repo / "chapters" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4)
    solution = nbformat.read(repo / "solutions" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4)
    return release, solution


@pytest.fixture(scope="module")
def graded(tmp_path_factory, notebooks, autograder):
    """One `grade` run: the untouched release and every submission."""
    release, solution = notebooks
    subs = tmp_path_factory.mktemp("submissions")
    (subs / "untouched").mkdir()
    nbformat.write(release, subs / "untouched" / f"{CHAPTER}.ipynb")
    for student, (mistakes, _, _) in SUBMISSIONS.items():
        (subs / student).mkdir()
        nbformat.write(learner_submission(release, solution, mistakes), subs / student / f"{CHAPTER}.ipynb")
    out = tmp_path_factory.mktemp("graded")
    done = autograder("grade", str(subs), "--chapter", CHAPTER, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    with (out / "grades.csv").open(encoding="utf-8") as f:
        return out, {row["student"]: row for row in csv.DictReader(f)}


def test_every_exercise_has_one_graded_cell(notebooks):
    assert sorted(checks_of(notebooks[1])) == sorted(
        ["sincos_1d", "sincos_2d", "relative_position_index", "relative_position_bias", "apply_rope",
         "resample_pos_embed"])


def test_untouched_release_scores_zero_and_solution_full_points(graded, notebooks):
    _, grades = graded
    full = points(notebooks[1])
    assert sum(full.values()) == 13
    for grade_id, p in full.items():
        assert float(grades["untouched"][grade_id]) == 0, grade_id
        assert float(grades["solution"][grade_id]) == p, grade_id
    assert float(grades["solution"]["total"]) == float(grades["solution"]["max"]) == 13


@pytest.mark.parametrize("student", [s for s in SUBMISSIONS if s != "solution"])
def test_a_mistake_scores_zero_on_its_exercise_only_and_is_named(graded, notebooks, student):
    out, grades = graded
    _, named, knock_on = SUBMISSIONS[student]
    sources = {c.id: c.source for c in notebooks[1].cells}
    if knock_on:
        assert "sincos_1d(" in sources["sincos-2d-solution"] and \
            "relative_position_index(h, w)" in sources["relative-bias-solution"], \
            "sincos_2d or RelativePositionBias no longer calls the learner's own function: update SUBMISSIONS"
    checks = checks_of(notebooks[1])
    failing = {checks[check] for check in [*named, *knock_on]}
    for grade_id, p in points(notebooks[1]).items():
        assert float(grades[student][grade_id]) == (0 if grade_id in failing else p), grade_id
    assert 0 < float(grades[student]["total"]) < float(grades[student]["max"])
    text = html_text(out / "feedback" / student / CHAPTER / f"{CHAPTER}.html")
    for message in named.values():
        assert message in text


def test_feedback_shows_no_hidden_test_code(graded, notebooks):
    out, _ = graded
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

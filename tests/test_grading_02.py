"""`python -m autograder grade` on 02_patches: the untouched release, the solution, submissions with typical mistakes.

The submissions are built as in test_autograder.py (whose helpers this file reuses): the learner copy with the
instructor's code pasted in and one line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

import csv
import re

import nbformat
import pytest
from test_autograder import HIDDEN, html_text, learner_submission, nbgrader_meta, points

CHAPTER = "02_patches"

# (the object the solution cell defines, a line of the solution, its wrong version)
CHANNEL_FIRST = ("patchify",
                 '    return rearrange(img, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch, p2=patch)',
                 '    return rearrange(img, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch, p2=patch)')
CALLS_REFERENCE = ("patchify",
                   '    return rearrange(img, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch, p2=patch)',
                   "    return patches.patchify(img, patch)")
UNFOLD_STRIDE_ONE = ("patchify_unfold",
                     "    cols = F.unfold(img, kernel_size=patch, stride=patch)             # (B, C*P*P, N), (c p1 p2) "
                     "down a column",
                     "    cols = F.unfold(img, kernel_size=patch)")
COLUMNS = ("unpatchify",
           '    return rearrange(tokens, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=rows, w=cols, p1=patch, p2=patch)',
           '    return rearrange(tokens, "b (w h) (p1 p2 c) -> b c (h p1) (w p2)", h=rows, w=cols, p1=patch, p2=patch)')
WEIGHT_NO_PERMUTE = ("conv_weight_to_linear",
                     '    return rearrange(weight, "d c p1 p2 -> d (p1 p2 c)")',
                     "    return weight.reshape(weight.shape[0], -1)")
NO_TRANSPOSE = ("PatchEmbed",
                "        return self.proj(x).flatten(2).transpose(1, 2)",
                "        return self.proj(x).reshape(x.shape[0], -1, self.proj.out_channels)")
NO_PLUS_ONE = ("num_patches",
               "    side = (img_size + 2 * padding - kernel) // stride + 1",
               "    side = (img_size + 2 * padding - kernel) // stride")

# student -> (mistakes, {check_patches function whose graded cell scores zero: what its feedback says})
SUBMISSIONS = {
    "solution": ([], {}),
    "mistakes_a": ([CHANNEL_FIRST, UNFOLD_STRIDE_ONE, NO_PLUS_ONE], {
        "patchify": "flattened each patch channel-first (c p1 p2), F.unfold's order",
        "patchify_unfold": "left F.unfold's stride at its default of 1, so the patches overlap",
        "num_patches": "forgot the + 1",
    }),
    "mistakes_b": ([CALLS_REFERENCE, COLUMNS, WEIGHT_NO_PERMUTE, NO_TRANSPOSE], {
        "patchify": "calls vitlab.patches.patchify, the very thing this exercise asks you to write",
        "unpatchify": "read the patches column by column",
        "conv_weight_to_linear": "flattened the conv weight without a permute",
        "patch_embed": "reshaped the conv output (B, D, h, w) to (B, N, D) without a transpose",
    }),
}


def checks_of(solution) -> dict[str, str]:
    """The graded cell of each check_patches function, {"patchify": "patchify-graded", ...}."""
    found = {}
    for cell in solution.cells:
        if nbgrader_meta(cell).get("grade"):
            (check,) = set(re.findall(r"check_patches\.(\w+)\(", "".join(HIDDEN.findall(cell.source))))
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
    for student, (mistakes, _) in SUBMISSIONS.items():
        (subs / student).mkdir()
        nbformat.write(learner_submission(release, solution, mistakes), subs / student / f"{CHAPTER}.ipynb")
    out = tmp_path_factory.mktemp("graded")
    done = autograder("grade", str(subs), "--chapter", CHAPTER, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    with (out / "grades.csv").open(encoding="utf-8") as f:
        return out, {row["student"]: row for row in csv.DictReader(f)}


def test_every_exercise_has_one_graded_cell(notebooks):
    assert sorted(checks_of(notebooks[1])) == sorted(
        ["patchify", "patchify_unfold", "unpatchify", "conv_weight_to_linear", "patch_embed", "num_patches"])


def test_untouched_release_scores_zero_and_solution_full_points(graded, notebooks):
    _, grades = graded
    full = points(notebooks[1])
    assert sum(full.values()) == 10
    for grade_id, p in full.items():
        assert float(grades["untouched"][grade_id]) == 0, grade_id
        assert float(grades["solution"][grade_id]) == p, grade_id
    assert float(grades["solution"]["total"]) == float(grades["solution"]["max"]) == 10


@pytest.mark.parametrize("student", [s for s in SUBMISSIONS if s != "solution"])
def test_a_mistake_scores_zero_on_its_exercise_only_and_is_named(graded, notebooks, student):
    out, grades = graded
    named = SUBMISSIONS[student][1]
    checks = checks_of(notebooks[1])
    failing = {checks[check] for check in named}
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
    pages = sorted((out / "feedback").glob(f"*/{CHAPTER}/{CHAPTER}.html"))
    assert len(pages) == 1 + len(SUBMISSIONS)
    for page in pages:
        text = html_text(page)
        assert "HIDDEN TESTS" not in text and "graded=True" not in text, page
        for line in hidden:
            assert line not in text, f"{page} shows the hidden test line {line!r}"

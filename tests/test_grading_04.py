"""`python -m autograder grade` on 04_vit: the untouched release, the solution, submissions with typical mistakes.

The submissions are built as in test_autograder.py (whose helpers this file reuses): the learner copy with the
instructor's code pasted in and one line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

import csv
import re

import nbformat
import pytest
from test_autograder import HIDDEN, html_text, learner_submission, nbgrader_meta, points

CHAPTER = "04_vit"

# (the object the solution cell defines, a line of the solution, its wrong version)
UNBIASED_VARIANCE = ("layer_norm",
                     "    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)",
                     "    var = x.var(dim=-1, keepdim=True)")
TANH_GELU = ("gelu",
             "    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))",
             "    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))")
POST_NORM = [("Block", "        x = x + self.attn(self.norm1(x))", "        x = self.norm1(x + self.attn(x))"),
             ("Block", "        x = x + self.mlp(self.norm2(x))", "        x = self.norm2(x + self.mlp(x))")]
NO_FINAL_NORM = ("VisionTransformer",
                 "        return self.head(self.norm(x)[:, 0])",
                 "        return self.head(x[:, 0])")
NO_CLS_ROW = ("vit_parameter_count",
              "    tokens = d + (n + 1) * d                                      # cls_token and pos_embed",
              "    tokens = d + n * d")
COUNTS_A_MODEL = ("vit_parameter_count",
                  "    return patch_embed + tokens + depth * block + 2 * d + d * num_classes + num_classes",
                  "    return vit.count_parameters(vit.VisionTransformer(img_size, patch_size, in_chans, num_classes, "
                  "embed_dim, depth, 1, mlp_ratio))")

# student -> (mistakes, {check_vit function whose graded cell scores zero: what its feedback says},
#             check_vit functions that score zero as a knock-on)
SUBMISSIONS = {
    "solution": ([], {}, set()),
    # the solution's VisionTransformer is built from the learner's Block: post-norm blocks fail it too
    "mistakes_a": ([UNBIASED_VARIANCE, *POST_NORM, NO_CLS_ROW], {
        "layer_norm": "used the unbiased variance (dividing by D - 1)",
        "block": "normalised after the residual sum (post-norm, the original Transformer)",
        "parameter_count": "left out D parameters: the CLS token, or its row in the position table",
    }, {"vision_transformer"}),
    "mistakes_b": ([TANH_GELU, NO_FINAL_NORM, COUNTS_A_MODEL], {
        "gelu": "used the tanh approximation of GELU",
        "vision_transformer": "forgot the final LayerNorm",
        "parameter_count": "count the parameters with the formula, layer by layer",
    }, set()),
}


def checks_of(solution) -> dict[str, str]:
    """The graded cell of each check_vit function, {"layer_norm": "layer-norm-graded", ...}."""
    found = {}
    for cell in solution.cells:
        if nbgrader_meta(cell).get("grade"):
            (check,) = set(re.findall(r"check_vit\.(\w+)\(", "".join(HIDDEN.findall(cell.source))))
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
        ["layer_norm", "gelu", "block", "vision_transformer", "parameter_count"])


def test_untouched_release_scores_zero_and_solution_full_points(graded, notebooks):
    _, grades = graded
    full = points(notebooks[1])
    assert sum(full.values()) == 11
    for grade_id, p in full.items():
        assert float(grades["untouched"][grade_id]) == 0, grade_id
        assert float(grades["solution"][grade_id]) == p, grade_id
    assert float(grades["solution"]["total"]) == float(grades["solution"]["max"]) == 11


@pytest.mark.parametrize("student", [s for s in SUBMISSIONS if s != "solution"])
def test_a_mistake_scores_zero_on_its_exercise_only_and_is_named(graded, notebooks, student):
    out, grades = graded
    _, named, knock_on = SUBMISSIONS[student]
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

"""`python -m autograder grade` on 07_detection: the untouched release, the solution, submissions with typical mistakes.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

import pytest
from grading import (assert_mistakes_scored_and_named, assert_no_hidden_code,
                     assert_untouched_zero_solution_full, chapter_notebooks, checks_of, grade, points)

CHAPTER = "07_detection"

# (the object the solution cell defines, a line of the solution, its wrong version)
WHOLE_WIDTH = ("box_cxcywh_to_xyxy",
               "    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)",
               "    return torch.stack([cx - w, cy - h, cx + w, cy + h], dim=-1)")
NO_CLAMP = ("box_iou", "    wh = (bottom_right - top_left).clamp(min=0)", "    wh = bottom_right - top_left")
HULL_OVER_UNION = ("generalized_box_iou", "    return inter / union - (hull - union) / hull",
                   "    return inter / union - (hull - union) / union")
PLUS_PROB = ("hungarian_match", "    cost = -1 * prob + 5 * l1 - 2 * giou", "    cost = prob + 5 * l1 - 2 * giou")
NO_EOS_WEIGHT = ("set_loss", "    weight[-1] = eos_coef", "    weight[-1] = 1.0")
NO_SIGMOID = ("DETRHead",
              '            outputs.append({"pred_logits": self.class_embed(hidden), '
              '"pred_boxes": self.bbox_embed(hidden).sigmoid()})',
              '            outputs.append({"pred_logits": self.class_embed(hidden), "pred_boxes": self.bbox_embed(hidden)})')

# student -> (mistakes, {check_detection function whose graded cell scores zero: what its feedback says},
#             check_detection functions that score zero as a knock-on)
SUBMISSIONS = {
    "solution": ([], {}, set()),
    "mistakes_a": ([WHOLE_WIDTH, HULL_OVER_UNION, NO_EOS_WEIGHT], {
        "box_formats": "went a whole width from the centre instead of half of it",
        "generalized_box_iou": "divided the empty part of the hull by the union instead of by the hull",
        "set_loss": "weighed the no-object class like the others (weight 1, not eos_coef)",
    }, set()),
    "mistakes_b": ([NO_CLAMP, PLUS_PROB, NO_SIGMOID], {
        "box_iou": "did not clamp the overlap's width and height at zero",
        "hungarian_match": "added the class probability to the cost instead of subtracting it",
        "detr_head": "forgot the sigmoid on the box outputs",
    }, set()),
}

MODULE = "check_detection"


@pytest.fixture(scope="module")
def notebooks(repo):
    return chapter_notebooks(repo, CHAPTER)


@pytest.fixture(scope="module")
def graded(tmp_path_factory, notebooks, autograder):
    done, out, grades = grade(autograder, tmp_path_factory, CHAPTER, *notebooks, SUBMISSIONS)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, grades


def test_every_exercise_has_one_graded_cell(notebooks):
    checks = checks_of(notebooks[1], MODULE)
    assert sorted(checks) == sorted(["box_formats", "box_iou", "generalized_box_iou", "hungarian_match", "set_loss",
                                     "detr_head"])
    assert all(len(cells) == 1 for cells in checks.values())


def test_untouched_release_scores_zero_and_solution_full_points(graded, notebooks):
    assert sum(points(notebooks[1]).values()) == 13
    assert_untouched_zero_solution_full(graded[1], notebooks[1])


@pytest.mark.parametrize("student", [s for s in SUBMISSIONS if s != "solution"])
def test_a_mistake_scores_zero_on_its_exercise_only_and_is_named(graded, notebooks, student):
    assert_mistakes_scored_and_named(*graded, notebooks[1], MODULE, CHAPTER, student, SUBMISSIONS[student])


def test_feedback_shows_no_hidden_test_code(graded, notebooks):
    assert_no_hidden_code(graded[0], CHAPTER, notebooks[1], 1 + len(SUBMISSIONS))

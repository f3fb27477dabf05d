"""`python -m autograder grade` on 07_detection: the untouched release, the solution, submissions with typical mistakes.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

from grading import ChapterGrading

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


class TestGrading(ChapterGrading):
    CHAPTER, MODULE, SUBMISSIONS = CHAPTER, MODULE, SUBMISSIONS
    EXERCISES = ["box_formats", "box_iou", "generalized_box_iou", "hungarian_match", "set_loss", "detr_head"]
    TOTAL = 13

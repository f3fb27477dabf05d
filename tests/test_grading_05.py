"""`python -m autograder grade` on 05_training: the untouched release, the solution, submissions with typical mistakes.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

from grading import ChapterGrading

CHAPTER = "05_training"

# (the object the solution cell defines, a line of the solution, its wrong version)
COSINE_RISES_AGAIN = ("cosine_lr", "    if step >= total_steps:", "    if False:")
CLIP_ALWAYS = ("clip_grad_norm",
               "    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)",
               "    scale = max_norm / (total + 1e-6)")
EMA_SWAPPED = ("ema_update",
               "            ema_v.mul_(decay).add_(model_v, alpha=1 - decay)",
               "            ema_v.mul_(1 - decay).add_(model_v, alpha=decay)")
SMOOTHING_K_MINUS_1 = ("label_smoothing_cross_entropy",
                       "    q = F.one_hot(target, k).to(logits.dtype) * (1 - smoothing) + smoothing / k",
                       "    q = F.one_hot(target, k).to(logits.dtype) * (1 - smoothing - smoothing / (k - 1)) "
                       "+ smoothing / (k - 1)")
CUTMIX_UNCORRECTED = ("cutmix", "    kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)", "    kept = lam")
KD_NO_T2 = ("soft_distillation_loss",
            "    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean() * t * t",
            "    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()")

# student -> (mistakes, {check_training function whose graded cell scores zero: what its feedback says},
#             check_training functions that score zero as a knock-on)
SUBMISSIONS = {
    "solution": ([], {}, set()),
    "mistakes_a": ([COSINE_RISES_AGAIN, CLIP_ALWAYS, EMA_SWAPPED], {
        "cosine_lr": "let the cosine run on past total_steps, so that the rate rises again",
        "clip_grad_norm": "scaled the gradients even when their norm was below max_norm",
        "ema_update": "swapped decay and 1 - decay",
    }, set()),
    "mistakes_b": ([SMOOTHING_K_MINUS_1, CUTMIX_UNCORRECTED, KD_NO_T2], {
        "label_smoothing_cross_entropy": "spread eps over the K - 1 wrong classes",
        "cutmix": "mixed the targets with the drawn lam, not the area actually kept",
        "soft_distillation_loss": "forgot the factor T^2",
    }, set()),
}

MODULE = "check_training"


class TestGrading(ChapterGrading):
    CHAPTER, MODULE, SUBMISSIONS = CHAPTER, MODULE, SUBMISSIONS
    EXERCISES = ["cosine_lr", "clip_grad_norm", "ema_update", "label_smoothing_cross_entropy", "cutmix", "soft_distillation_loss"]
    TOTAL = 12

"""`python -m autograder grade` on 03_positions: the untouched release, the solution, submissions with typical mistakes.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

from grading import ChapterGrading

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


MODULE = "check_posenc"


class TestGrading(ChapterGrading):
    CHAPTER, MODULE, SUBMISSIONS = CHAPTER, MODULE, SUBMISSIONS
    EXERCISES = ["sincos_1d", "sincos_2d", "relative_position_index", "relative_position_bias", "apply_rope", "resample_pos_embed"]
    TOTAL = 13

"""`python -m autograder grade` on 02_patches: the untouched release, the solution, submissions with typical mistakes.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

from grading import ChapterGrading

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

# student -> (mistakes, {check_patches function whose graded cell scores zero: what its feedback says}, knock-ons)
SUBMISSIONS = {
    "solution": ([], {}, set()),
    "mistakes_a": ([CHANNEL_FIRST, UNFOLD_STRIDE_ONE, NO_PLUS_ONE], {
        "patchify": "flattened each patch channel-first (c p1 p2), F.unfold's order",
        "patchify_unfold": "left F.unfold's stride at its default of 1, so the patches overlap",
        "num_patches": "forgot the + 1",
    }, set()),
    "mistakes_b": ([CALLS_REFERENCE, COLUMNS, WEIGHT_NO_PERMUTE, NO_TRANSPOSE], {
        "patchify": "calls vitlab.patches.patchify, the very thing this exercise asks you to write",
        "unpatchify": "read the patches column by column",
        "conv_weight_to_linear": "flattened the conv weight without a permute",
        "patch_embed": "reshaped the conv output (B, D, h, w) to (B, N, D) without a transpose",
    }, set()),
}


MODULE = "check_patches"


class TestGrading(ChapterGrading):
    CHAPTER, MODULE, SUBMISSIONS = CHAPTER, MODULE, SUBMISSIONS
    EXERCISES = ["patchify", "patchify_unfold", "unpatchify", "conv_weight_to_linear", "patch_embed", "num_patches"]
    TOTAL = 10

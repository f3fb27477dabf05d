"""`python -m autograder grade` on 04_vit: the untouched release, the solution, submissions with typical mistakes.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

from grading import ChapterGrading

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


MODULE = "check_vit"


class TestGrading(ChapterGrading):
    CHAPTER, MODULE, SUBMISSIONS = CHAPTER, MODULE, SUBMISSIONS
    EXERCISES = ["layer_norm", "gelu", "block", "vision_transformer", "parameter_count"]
    TOTAL = 11

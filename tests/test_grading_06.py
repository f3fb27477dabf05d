"""`python -m autograder grade` on 06_transfer_and_scale: the untouched release, the solution, two submissions
with typical mistakes (one per exercise), all in one grading run.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake.
"""
from __future__ import annotations

from grading import ChapterGrading

CHAPTER = "06_transfer_and_scale"

# (the object the solution cell defines, a line of the solution, its wrong version)
DECAY_REVERSED = ("layer_decay_groups",
                  '            groups[layer, decay] = {"params": [], "lr": lr * layer_decay ** (depth + 1 - layer),',
                  '            groups[layer, decay] = {"params": [], "lr": lr * layer_decay ** layer,')
DECAY_ON_BIASES = ("layer_decay_groups",
                   '        decay = p.ndim > 1 and name not in ("cls_token", "pos_embed")',
                   '        decay = name not in ("cls_token", "pos_embed")')
SCALED_BY_ALPHA = ("LoRALinear", "        self.scaling = alpha / r", "        self.scaling = alpha")
MERGE_UNSCALED = ("LoRALinear",
                  "            merged.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)",
                  "            merged.weight.copy_(self.base.weight + self.lora_B @ self.lora_A)")
HEADS_MAJOR = ("PrefixAttention",
               "            return prefix.reshape(-1, heads, head_dim).transpose(0, 1).expand(b, -1, -1, -1)",
               "            return prefix.reshape(heads, -1, head_dim).expand(b, -1, -1, -1)")
SUM_NOT_MEAN = ("average_gradients", "            p.grad /= world", "            pass")
CALLS_THE_REFERENCE = ("average_gradients", "    world = dist.get_world_size()",
                       "    return parallel.average_gradients(model)")
BIAS_ON_EVERY_DEVICE = [("tensor_parallel_mlp", "        partials.append(F.gelu(x @ w1_t.T + b1_t) @ w2_t.T)",
                         "        partials.append(F.gelu(x @ w1_t.T + b1_t) @ w2_t.T + b2)"),
                        ("tensor_parallel_mlp", "    return partials.sum(dim=0) + b2, partials",
                         "    return partials.sum(dim=0), partials")]

# student -> (mistakes, {check_transfer function whose graded cell scores zero: what its feedback says},
#             check_transfer functions that score zero as a knock-on)
SUBMISSIONS = {
    "solution": ([], {}, set()),
    "mistakes_a": ([DECAY_REVERSED, SCALED_BY_ALPHA, SUM_NOT_MEAN, *BIAS_ON_EVERY_DEVICE], {
        "layer_decay_groups": "decayed the learning rate the wrong way round",
        "lora_linear": "scaled the update by alpha instead of alpha / r",
        "average_gradients": "summed the gradients without dividing by the world size",
        "tensor_parallel_mlp": "added fc2's bias on every device",
    }, set()),
    "mistakes_b": ([DECAY_ON_BIASES, MERGE_UNSCALED, HEADS_MAJOR, CALLS_THE_REFERENCE], {
        "layer_decay_groups": "applied weight decay to biases and LayerNorm weights",
        "lora_linear": "forgot the scaling alpha / r in the merged weight",
        "prefix_attention": "split the prefix into heads the wrong way",
        "average_gradients": "the very thing this exercise asks you to write",
    }, set()),
}

MODULE = "check_transfer"


class TestGrading(ChapterGrading):
    CHAPTER, MODULE, SUBMISSIONS = CHAPTER, MODULE, SUBMISSIONS
    EXERCISES = ["layer_decay_groups", "lora_linear", "prefix_attention", "average_gradients", "tensor_parallel_mlp"]
    TOTAL = 13

"""`python -m autograder grade` on 09_clip: the untouched release, the solution, submissions with typical mistakes.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

from grading import ChapterGrading

CHAPTER = "09_clip"
POOL_EOT = "        x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]"
RETURN_RECALL = "    return (i2t_rank <= k).float().mean().item(), (t2i_rank <= k).float().mean().item()"

# (the object the solution cell defines, a line of the solution, its wrong version)
CLS_POOLING = ("TextTransformer", POOL_EOT, "        x = x[:, 0]")
NO_CAUSAL_MASK = ("TextTransformer", "        x = self.transformer(x, attn_mask=self.attn_mask)",
                  "        x = self.transformer(x)")
BOOK_TEMPERATURE = ("ClipHead", "        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))",
                    "        self.logit_scale = nn.Parameter(torch.tensor(math.log(0.07)))")
CALLS_NORMALIZE = ("ClipHead", "        image = image / image.norm(dim=-1, keepdim=True)",
                   "        image = F.normalize(image, dim=-1)")
ONE_DIRECTION = ("clip_loss", "    return (loss_i + loss_t) / 2", "    return loss_i")
DIVIDES_BY_SCALE = ("clip_loss", "    logits = logit_scale * image_features @ text_features.T",
                    "    logits = image_features @ text_features.T / logit_scale")
CALLS_REFERENCE = ("class_embeddings", "    return mean / mean.norm(dim=-1, keepdim=True)",
                   "    return clip.class_embeddings(text_features)")
SWAPPED = ("recall_at_k", RETURN_RECALL,
           "    return (t2i_rank <= k).float().mean().item(), (i2t_rank <= k).float().mean().item()")

# student -> (mistakes, {check_clip function whose graded cell scores zero: what its feedback says},
#             check_clip functions that score zero as a knock-on); each student keeps some exercises right
SUBMISSIONS = {
    "solution": ([], {}, set()),
    "mistakes_a": ([CLS_POOLING, BOOK_TEMPERATURE, ONE_DIRECTION, SWAPPED], {
        "text_transformer": "read the first token (SOT), as if it were a CLS token",
        "clip_head": "logit_scale starts at log(0.07)",
        "clip_loss": "used only the image -> text direction",
        "recall_at_k": "swapped the two directions",
    }, set()),
    "mistakes_b": ([NO_CAUSAL_MASK, CALLS_NORMALIZE, DIVIDES_BY_SCALE, CALLS_REFERENCE], {
        "text_transformer": "left out the causal mask",
        "clip_head": "your code calls F.normalize",
        "clip_loss": "divided the similarities by logit_scale",
        "class_embeddings": "your code calls vitlab.clip.class_embeddings",
    }, set()),
}

MODULE = "check_clip"


class TestGrading(ChapterGrading):
    CHAPTER, MODULE, SUBMISSIONS = CHAPTER, MODULE, SUBMISSIONS
    EXERCISES = ["text_transformer", "clip_head", "clip_loss", "class_embeddings", "recall_at_k"]
    TOTAL = 11

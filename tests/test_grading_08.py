"""`python -m autograder grade` on 08_segmentation: the untouched release, the solution, submissions with typical
mistakes (built by tests/grading.py from the learner copy, one line replaced per mistake), in one grading run."""
from __future__ import annotations

from grading import ChapterGrading

CHAPTER = "08_segmentation"

# (the object the solution cell defines, a line of the solution, its wrong version)
PLAIN_RESHAPE = ("tokens_to_grid",
                 "    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)",
                 "    return patches.reshape(tokens.shape[0], tokens.shape[2], h, w)")
DICE_NOT_LOSS = ("dice_loss",
                 "    return 1 - ((2 * overlap + smooth) / (total + smooth)).mean()",
                 "    return ((2 * overlap + smooth) / (total + smooth)).mean()")
TRANSPOSED = ("confusion_matrix",
              "    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()",
              "    index = pred.reshape(-1).long() * num_classes + target.reshape(-1).long()")
DECODER_RESHAPE = ("LinearDecoder",
                   "        return tokens_to_grid(self.head(x), grid, num_prefix_tokens=0)",
                   "        return self.head(x).reshape(x.shape[0], -1, *grid)")
NO_L2 = ("MaskTransformer",
         "        patches, classes = F.normalize(patches, dim=-1), F.normalize(classes, dim=-1)",
         "        patches, classes = patches, classes")
ABSENT_AS_ZERO = ("mean_iou",
                  "    return float((tp / union).nanmean())",
                  "    return float((tp / union).nan_to_num(0.0).mean())")

# student -> (mistakes, {check_segmentation function whose graded cell scores zero: what its feedback says},
#             check_segmentation functions that score zero as a knock-on)
SUBMISSIONS = {
    "solution": ([], {}, set()),
    # both decoders put their scores on the grid with the learner's tokens_to_grid: they fail with it
    "mistakes_a": ([PLAIN_RESHAPE, DICE_NOT_LOSS, TRANSPOSED], {
        "tokens_to_grid": "reshaped (B, N, D) straight to (B, D, h, w)",
        "dice_loss": "returned the Dice coefficient, not the loss",
        "confusion_matrix": "put the predicted class in the rows",
    }, {"linear_decoder", "mask_transformer"}),
    "mistakes_b": ([DECODER_RESHAPE, NO_L2, ABSENT_AS_ZERO], {
        "linear_decoder": "reshaped the (B, N, K) scores straight to (B, K, h, w)",
        "mask_transformer": "left out the L2 normalisation of the patch and class features",
        "mean_iou": "counted classes absent from both truth and prediction as IoU 0",
    }, set()),
}

MODULE = "check_segmentation"


class TestGrading(ChapterGrading):
    CHAPTER, MODULE, SUBMISSIONS = CHAPTER, MODULE, SUBMISSIONS
    EXERCISES = ["tokens_to_grid", "linear_decoder", "mask_transformer", "dice_loss", "confusion_matrix", "mean_iou"]
    TOTAL = 11

"""Checks for the exercises of 08_segmentation: each compares the learner's code with `vitlab.segmentation`.

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds float64, other grids,
prefix lengths, widths and class counts, classes missing from a mask, and confusion matrices with empty classes.
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from vitlab import segmentation, vit
from vitlab.check import CheckFailed, Mistake, check_function, check_module, randn, tolerance

from vitlab.check import exercise_check
GRID_BUILTINS = {segmentation.tokens_to_grid: "vitlab.segmentation.tokens_to_grid"}
DECODER_BUILTINS = {segmentation.LinearDecoder: "vitlab.segmentation.LinearDecoder",
                    segmentation.Segmenter: "vitlab.segmentation.Segmenter"}
MASK_BUILTINS = {segmentation.MaskTransformer: "vitlab.segmentation.MaskTransformer",
                 segmentation.Segmenter: "vitlab.segmentation.Segmenter"}
DICE_BUILTINS = {segmentation.dice_loss: "vitlab.segmentation.dice_loss",
                 segmentation.segmentation_loss: "vitlab.segmentation.segmentation_loss"}
CONFUSION_BUILTINS = {segmentation.confusion_matrix: "vitlab.segmentation.confusion_matrix",
                      segmentation.evaluate: "vitlab.segmentation.evaluate"}
MIOU_BUILTINS = {segmentation.mean_iou: "vitlab.segmentation.mean_iou",
                 segmentation.iou_per_class: "vitlab.segmentation.iou_per_class",
                 segmentation.dice_per_class: "vitlab.segmentation.dice_per_class"}


def _with_sklearn(forbidden: dict, *names: str) -> dict:
    """`forbidden` plus scikit-learn's metrics `names`, when the learner has imported scikit-learn's metrics."""
    metrics = sys.modules.get("sklearn.metrics")
    extra = {getattr(metrics, n): f"sklearn.metrics.{n}" for n in names if hasattr(metrics, n)} if metrics else {}
    return forbidden | extra


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Generic random values for every parameter (norm scales near 1), so that no mistake hides behind an init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim <= 1:
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))
    return module


# --------------------------------------------------------------------------------------- tokens_to_grid


def _grid_variant(mistake: str):
    def wrong(tokens, grid, num_prefix_tokens=1):
        b, _, d = tokens.shape
        h, w = grid
        if mistake == "drop_last":
            kept = tokens[:, : tokens.shape[1] - num_prefix_tokens]
        else:
            kept = tokens[:, num_prefix_tokens:]
        if mistake == "plain_reshape":
            return kept.reshape(b, d, h, w)
        if mistake == "column_major":
            return kept.transpose(1, 2).reshape(b, d, w, h).transpose(-1, -2)
        if mistake == "channels_last":
            return kept.reshape(b, h, w, d)
        return kept.transpose(1, 2).reshape(b, d, h, w)

    return wrong


GRID_MISTAKES = [
    Mistake("reshaped (B, N, D) straight to (B, D, h, w)",
            "A reshape keeps the order of the numbers in memory, so the features of one token get spread over "
            "several positions. Move D first with .transpose(1, 2), then reshape to (B, D, h, w).",
            _grid_variant("plain_reshape")),
    Mistake("laid the patches out column by column",
            "Patch tokens are in row-major order: token i sits in row i // w, column i % w. Reshape the token axis "
            "to (h, w), not (w, h).", _grid_variant("column_major")),
    Mistake("dropped tokens at the end instead of the prefix tokens at the start",
            "The CLS (and any other prefix) tokens come first: keep tokens[:, num_prefix_tokens:].",
            _grid_variant("drop_last")),
    Mistake("returned the grid channels-last, (B, h, w, D)",
            "The feature map is (B, D, h, w), channels first, as nn.Conv2d and F.interpolate want it.",
            _grid_variant("channels_last")),
]


def _grid_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    if not graded:
        return [dict(tokens=randn(gen, 2, 1 + 3 * 4, 5, dtype=dt), grid=(3, 4), num_prefix_tokens=1),
                dict(tokens=randn(gen, 1, 16, 3, dtype=dt), grid=(4, 4), num_prefix_tokens=0)]
    return [dict(tokens=randn(gen, 3, 2 + 2 * 5, 4, dtype=dt), grid=(2, 5), num_prefix_tokens=2),
            dict(tokens=randn(gen, 1, 1 + 6 * 2, 7, dtype=dt), grid=(6, 2), num_prefix_tokens=1),
            dict(tokens=randn(gen, 2, 1 + 1, 3, dtype=dt), grid=(1, 1), num_prefix_tokens=1),
            dict(tokens=randn(gen, 2, 5 * 5, 6, dtype=torch.float32), grid=(5, 5), num_prefix_tokens=0)]


@exercise_check
def tokens_to_grid(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `tokens_to_grid(tokens, grid, num_prefix_tokens=1)`: (B, prefix + h*w, D) -> (B, D, h, w)."""
    dt = torch.float64 if graded else torch.float32
    check_function(fn, segmentation.tokens_to_grid, _grid_cases(seed, graded), name="tokens_to_grid",
                   mistakes=GRID_MISTAKES, forbidden=GRID_BUILTINS, **tolerance(dt))


# ---------------------------------------------------------------------------------------- LinearDecoder


class _WrongLinearDecoder(segmentation.LinearDecoder):
    def __init__(self, embed_dim: int, num_classes: int, mistake: str):
        super().__init__(embed_dim, num_classes)
        self.mistake = mistake

    def forward(self, x, grid):
        return _grid_variant(self.mistake)(self.head(x), grid, 0)


DECODER_MISTAKES = [
    ("reshaped the (B, N, K) scores straight to (B, K, h, w)", "plain_reshape",
     "Apply the Linear to every token, giving (B, N, K); then move K first with .transpose(1, 2) before reshaping."),
    ("laid the patches out column by column", "column_major",
     "Token i belongs at row i // w, column i % w of the grid (row-major)."),
    ("returned the scores channels-last, (B, h, w, K)", "channels_last",
     "Return (B, K, h, w): one score map per class."),
]


def _decoder_inputs(seed: int, dim: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    inputs = [dict(x=randn(gen, 2, 3 * 4, dim, dtype=dt), grid=(3, 4))]
    if graded:
        inputs += [dict(x=randn(gen, 1, 5 * 2, dim, dtype=dt), grid=(5, 2)),
                   dict(x=randn(gen, 3, 1, dim, dtype=dt) * 3, grid=(1, 1))]
    return inputs


@exercise_check
def linear_decoder(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `LinearDecoder(embed_dim, num_classes)` (a Linear called `head`) with the reference's weights."""
    dt = torch.float64 if graded else torch.float32
    for dim, k in ([(24, 5), (16, 2)] if graded else [(32, 4)]):
        reference = _randomise(segmentation.LinearDecoder(dim, k), seed).to(dt)
        mistakes = [Mistake(label, hint, _WrongLinearDecoder(dim, k, key).to(dt)) for label, key, hint in
                    DECODER_MISTAKES]
        check_module(lambda: cls(dim, k).to(dt), reference, _decoder_inputs(seed, dim, graded),
                     name=f"LinearDecoder(embed_dim={dim}, num_classes={k})", mistakes=mistakes,
                     forbidden=DECODER_BUILTINS, **tolerance(dt))


# -------------------------------------------------------------------------------------- MaskTransformer


class _WrongMaskTransformer(segmentation.MaskTransformer):
    """The reference mask transformer with one known mistake in its forward pass."""

    def __init__(self, config: dict, mistake: str):
        super().__init__(**config)
        self.mistake = mistake

    def forward(self, x, grid):
        k, m = self.num_classes, self.mistake
        x = self.proj_dec(x)
        classes = self.cls_emb.expand(x.shape[0], -1, -1)
        if m == "classes_skip_blocks":
            for block in self.blocks:
                x = block(x)
            x = torch.cat([x, classes], dim=1)
        else:
            x = torch.cat([x, classes], dim=1)
            for block in self.blocks:
                x = block(x)
        if m != "no_decoder_norm":
            x = self.decoder_norm(x)
        p_proj, c_proj = (self.proj_classes, self.proj_patch) if m == "swapped_projections" else (
            self.proj_patch, self.proj_classes)
        patches, cls = x[:, :-k] @ p_proj, x[:, -k:] @ c_proj
        if m == "normalised_over_tokens":
            patches, cls = F.normalize(patches, dim=1), F.normalize(cls, dim=1)
        elif m != "no_l2":
            patches, cls = F.normalize(patches, dim=-1), F.normalize(cls, dim=-1)
        masks = patches @ cls.transpose(1, 2)
        if m == "softmax":
            masks = masks.softmax(-1)
        elif m != "no_mask_norm":
            masks = self.mask_norm(masks)
        return segmentation.tokens_to_grid(masks, grid, 0)


MASK_MISTAKES = [
    ("left out the L2 normalisation of the patch and class features", "no_l2",
     "Divide both by their norm along the feature dimension (x / x.norm(dim=-1, keepdim=True)) before the product: "
     "the masks are cosine similarities."),
    ("normalised the features over the tokens instead of over the feature dimension", "normalised_over_tokens",
     "Each patch feature and each class feature gets unit length: normalise along dim=-1."),
    ("left out mask_norm", "no_mask_norm",
     "After patches @ classes^T, apply self.mask_norm (a LayerNorm over the K classes) to the (B, N, K) scores."),
    ("applied a softmax over the classes instead of mask_norm", "softmax",
     "The decoder returns scores, not probabilities: apply self.mask_norm; the loss applies the softmax."),
    ("left out decoder_norm", "no_decoder_norm",
     "After the blocks, apply self.decoder_norm to the whole sequence, then split it into patches and classes."),
    ("swapped proj_patch and proj_classes", "swapped_projections",
     "Patch features are multiplied by self.proj_patch, class features by self.proj_classes."),
    ("ran only the patch tokens through the blocks", "classes_skip_blocks",
     "Append the class embeddings to the projected patch tokens first, then run the whole sequence through the "
     "blocks: the classes attend to the patches there."),
]


def _mask_configs(graded: bool) -> list[dict]:
    if graded:
        return [dict(embed_dim=20, num_classes=5, d_model=24, depth=2, num_heads=3, mlp_ratio=2.0),
                dict(embed_dim=8, num_classes=2, d_model=8, depth=1, num_heads=1, mlp_ratio=4.0)]
    return [dict(embed_dim=32, num_classes=4, d_model=16, depth=2, num_heads=2, mlp_ratio=4.0)]


def _mask_structure(module: nn.Module, reference: nn.Module, name: str) -> None:
    """Name the mistakes that show in the parameters before comparing outputs."""
    blocks = getattr(module, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and blocks and not all(isinstance(b, vit.Block) for b in blocks):
        raise CheckFailed(f"{name}: `blocks` should hold vitlab.vit.Block modules (imported above as Block).\n  "
                          f"Build them as nn.ModuleList(Block(d_model, num_heads, mlp_ratio) for _ in range(depth)).")
    cls_emb = module.state_dict().get("cls_emb")
    if cls_emb is not None and tuple(cls_emb.shape) != tuple(reference.cls_emb.shape):
        raise CheckFailed(f"{name}: cls_emb has shape {tuple(cls_emb.shape)}; it should be (1, num_classes, d_model), "
                          f"one learned embedding per class: {tuple(reference.cls_emb.shape)}.")


@exercise_check
def mask_transformer(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `MaskTransformer(embed_dim, num_classes, d_model, depth, num_heads, mlp_ratio=4.0)`.

    Its parameters are named as the reference's (proj_dec, cls_emb, blocks.i..., decoder_norm, proj_patch,
    proj_classes, mask_norm); it gets the reference's weights and must give the same masks and gradients.
    """
    dt = torch.float64 if graded else torch.float32
    gen = torch.Generator().manual_seed(seed)
    for config in _mask_configs(graded):
        name = "MaskTransformer(" + ", ".join(f"{k}={v}" for k, v in config.items()) + ")"
        reference = _randomise(segmentation.MaskTransformer(**config), seed).to(dt)
        mistakes = [Mistake(label, hint, _WrongMaskTransformer(config, key).to(dt)) for label, key, hint in
                    MASK_MISTAKES]
        args = list(config.values())

        def build():
            module = cls(*args[:5], mlp_ratio=config["mlp_ratio"])
            if isinstance(module, nn.Module):
                _mask_structure(module, reference, name)
            return module.to(dt)

        d = config["embed_dim"]
        inputs = [dict(x=randn(gen, 2, 3 * 4, d, dtype=dt), grid=(3, 4))]
        if graded:
            inputs += [dict(x=randn(gen, 1, 2 * 5, d, dtype=dt) * 2, grid=(2, 5)),
                       dict(x=randn(gen, 3, 1, d, dtype=dt), grid=(1, 1))]
        check_module(build, reference, inputs, name=name, mistakes=mistakes, forbidden=MASK_BUILTINS, **tolerance(dt))


# -------------------------------------------------------------------------------------------- dice_loss


def _dice_variant(mistake: str):
    def wrong(logits, target, smooth=1.0):
        k = logits.shape[1]
        if mistake == "no_softmax":
            probs = logits
        elif mistake == "sigmoid":
            probs = logits.sigmoid()
        elif mistake == "argmax":
            probs = F.one_hot(logits.argmax(1), k).movedim(-1, 1).to(logits.dtype)
        elif mistake == "softmax_last_axis":
            probs = logits.softmax(-1)
        else:
            probs = logits.softmax(1)
        onehot = F.one_hot(target, k).movedim(-1, 1).to(probs.dtype)
        dims = (2, 3) if mistake == "per_image" else (0, 2, 3)
        overlap = (probs * onehot).sum(dims)
        if mistake == "squared":
            total = (probs ** 2).sum(dims) + (onehot ** 2).sum(dims)
        else:
            total = probs.sum(dims) + onehot.sum(dims)
        s = 0.0 if mistake == "no_smooth" else smooth
        dice = (2 * overlap + (0.0 if mistake == "smooth_below_only" else s)) / (total + s)
        if mistake == "no_background":
            dice = dice[..., 1:]
        if mistake == "dice_not_loss":
            return dice.mean()
        return 1 - dice.mean()

    return wrong


DICE_MISTAKES = [
    Mistake("took the softmax over the last axis (the image width) instead of the classes",
            "logits are (B, K, H, W): the classes are dim=1, so softmax(dim=1).", _dice_variant("softmax_last_axis")),
    Mistake("returned the Dice coefficient, not the loss", "The loss is 1 - (mean Dice): it is 0 for a perfect "
            "prediction.", _dice_variant("dice_not_loss")),
    Mistake("used the raw logits as probabilities", "Turn the logits into probabilities with a softmax over the "
            "class dimension (dim=1) first.", _dice_variant("no_softmax")),
    Mistake("used a sigmoid instead of a softmax", "The classes are exclusive: a softmax over dim=1 makes each "
            "pixel's probabilities sum to 1.", _dice_variant("sigmoid")),
    Mistake("used hard argmax predictions", "argmax has no gradient: the soft Dice uses the probabilities "
            "themselves.", _dice_variant("argmax")),
    Mistake("computed one Dice per image and class, then averaged", "Sum each class's overlap and totals over the "
            "whole batch and all pixels (dims 0, 2, 3), then average over the classes.", _dice_variant("per_image")),
    Mistake("squared the probabilities and targets in the denominator (the V-Net variant)",
            "Use the plain sums: sum(p) + sum(g).", _dice_variant("squared")),
    Mistake("left out the smoothing term", "Add `smooth` to both the numerator (2 sum(p g) + s) and the denominator.",
            _dice_variant("no_smooth")),
    Mistake("added `smooth` to the denominator only", "Add it to both: (2 sum(p g) + s) / (sum(p) + sum(g) + s), "
            "so that an absent class predicted absent scores 1, not 0.", _dice_variant("smooth_below_only")),
    Mistake("left out the background class", "Average the Dice over all K classes, class 0 included.",
            _dice_variant("no_background")),
]


def _dice_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    cases = [dict(logits=randn(gen, 2, 3, 5, 6, dtype=dt) * 2, target=torch.randint(0, 3, (2, 5, 6), generator=gen))]
    if graded:
        target = torch.randint(0, 3, (1, 4, 4), generator=gen)         # class 3 of 4 never in the target
        cases += [dict(logits=randn(gen, 1, 4, 4, 4, dtype=dt), target=target),
                  dict(logits=randn(gen, 3, 2, 3, 7, dtype=dt) * 4, target=torch.randint(0, 2, (3, 3, 7),
                                                                                        generator=gen), smooth=0.0),
                  dict(logits=randn(gen, 2, 5, 8, 8, dtype=dt), target=torch.randint(0, 5, (2, 8, 8), generator=gen),
                       smooth=2.0)]
    return cases


@exercise_check
def dice_loss(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `dice_loss(logits, target, smooth=1.0)`, values and gradients."""
    dt = torch.float64 if graded else torch.float32
    check_function(fn, segmentation.dice_loss, _dice_cases(seed, graded), name="dice_loss", mistakes=DICE_MISTAKES,
                   forbidden=DICE_BUILTINS, **tolerance(dt))


# ------------------------------------------------------------------------------------- confusion_matrix


def _confusion_transposed(pred, target, num_classes):
    """The confusion matrix with predictions in the rows."""
    index = pred.reshape(-1).long() * num_classes + target.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


CONFUSION_MISTAKES = [
    Mistake("put the predicted class in the rows", "Row i counts the pixels whose *true* class is i, column j those "
            "*predicted* as j (scikit-learn's convention): index = target * K + pred.", _confusion_transposed),
]


def _confusion_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    cases = [dict(pred=torch.randint(0, 4, (2, 5, 7), generator=gen), target=torch.randint(0, 4, (2, 5, 7),
                                                                                           generator=gen),
                  num_classes=4)]
    if graded:
        cases += [dict(pred=torch.randint(0, 3, (30,), generator=gen), target=torch.randint(0, 3, (30,), generator=gen),
                       num_classes=5),                               # classes 3 and 4 never occur
                  dict(pred=torch.zeros(3, 3, dtype=torch.long), target=torch.randint(0, 2, (3, 3), generator=gen),
                       num_classes=2),
                  dict(pred=torch.randint(0, 6, (1, 8, 8), generator=gen).int(),
                       target=torch.randint(0, 6, (1, 8, 8), generator=gen).int(), num_classes=6)]
    return cases


@exercise_check
def confusion_matrix(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `confusion_matrix(pred, target, num_classes)` -> (K, K) int64, rows = true class."""
    forbidden = _with_sklearn(CONFUSION_BUILTINS, "confusion_matrix")
    check_function(fn, segmentation.confusion_matrix, _confusion_cases(seed, graded), name="confusion_matrix",
                   mistakes=CONFUSION_MISTAKES, forbidden=forbidden, grad=False)


# --------------------------------------------------------------------------------------------- mean_iou


def _iou_variant(mistake: str):
    def wrong(confusion):
        cm = confusion.double()
        tp, truth, predicted = cm.diagonal(), cm.sum(1), cm.sum(0)
        if mistake == "pixel_accuracy":
            return float(tp.sum() / cm.sum())
        denominator = {"recall": truth, "precision": predicted, "dice": (truth + predicted) / 2,
                       "no_minus_tp": truth + predicted}.get(mistake, truth + predicted - tp)
        iou = tp / denominator
        if mistake == "absent_as_zero":
            return float(iou.nan_to_num(0.0).mean())
        return float(iou.nanmean())

    return wrong


IOU_MISTAKES = [
    Mistake("counted classes absent from both truth and prediction as IoU 0",
            "A class with no pixels in the truth and none predicted has IoU 0/0: leave it out of the mean "
            "(torch.nanmean, or average over the classes whose union is > 0).", _iou_variant("absent_as_zero")),
    Mistake("computed the pixel accuracy", "mIoU averages one IoU per class, TP / (TP + FP + FN); the pixel accuracy "
            "is trace / total.", _iou_variant("pixel_accuracy")),
    Mistake("divided by the row sums (that is each class's recall)",
            "The union is row sum + column sum - diagonal: TP + FN + FP.", _iou_variant("recall")),
    Mistake("divided by the column sums (that is each class's precision)",
            "The union is row sum + column sum - diagonal: TP + FN + FP.", _iou_variant("precision")),
    Mistake("computed the Dice coefficient", "Dice = 2 TP / (2 TP + FP + FN) = 2 IoU / (1 + IoU); the IoU is "
            "TP / (TP + FP + FN).", _iou_variant("dice")),
    Mistake("counted the intersection twice in the union", "The union is row sum + column sum - diagonal: the "
            "true positives are in both sums.", _iou_variant("no_minus_tp")),
]


def _confusion(gen: torch.Generator, k: int, empty: tuple[int, ...] = (), dtype=torch.int64) -> torch.Tensor:
    cm = torch.randint(0, 20, (k, k), generator=gen) + torch.diag(torch.randint(20, 60, (k,), generator=gen))
    for c in empty:
        cm[c, :] = 0
        cm[:, c] = 0
    return cm.to(dtype)


def _iou_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    cases = [dict(confusion=_confusion(gen, 4)), dict(confusion=_confusion(gen, 5, empty=(4,)))]
    if graded:
        never_predicted = _confusion(gen, 3)
        never_predicted[:, 2] = 0                                    # class 2 is in the truth, never predicted
        cases += [dict(confusion=_confusion(gen, 6, empty=(0, 3))), dict(confusion=never_predicted),
                  dict(confusion=_confusion(gen, 2, dtype=torch.float64)),
                  dict(confusion=torch.tensor([[90, 0], [10, 0]]))]  # an all-background predictor
    return cases


def _as_float(fn):
    """Call fn; a 0-dim tensor result becomes a float (the check compares numbers)."""
    def call(confusion):
        out = fn(confusion)
        return float(out) if isinstance(out, torch.Tensor) and out.numel() == 1 else out

    return call


@exercise_check
def mean_iou(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `mean_iou(confusion)` -> the mean IoU over the classes present (a float)."""
    forbidden = _with_sklearn(MIOU_BUILTINS, "jaccard_score")
    check_function(_as_float(fn), segmentation.mean_iou, _iou_cases(seed, graded), name="mean_iou",
                   mistakes=IOU_MISTAKES, forbidden=forbidden, atol=1e-9, rtol=1e-7, grad=False)

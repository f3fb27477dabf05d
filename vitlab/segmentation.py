"""Semantic segmentation on a ViT backbone, with Segmenter's conventions (Strudel et al. 2021).

The backbone's patch tokens go back to their grid; a decoder turns them into one score map per class at the
patch grid's resolution (a linear decoder, or the mask transformer); the maps are upsampled bilinearly to the
input size. Inputs whose sides are not multiples of the patch size are padded on the right and bottom, and the
upsampled maps cropped back. Losses: cross-entropy and soft Dice. Metrics from a confusion matrix (rows: true
class, columns: predicted, as scikit-learn): IoU per class, mIoU, Dice = 2 IoU / (1 + IoU), pixel accuracy.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitlab import train, vit

Grid = tuple[int, int]


# ------------------------------------------------------------------------------------------- geometry


def tokens_to_grid(tokens: Tensor, grid: Grid, num_prefix_tokens: int = 1) -> Tensor:
    """Tokens (B, prefix + h*w, D), patches in row-major order -> feature map (B, D, h, w); prefix tokens dropped."""
    h, w = grid
    patches = tokens[:, num_prefix_tokens:]
    if patches.shape[1] != h * w:
        raise ValueError(f"{patches.shape[1]} patch tokens do not fill a {h} x {w} grid")
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def pad_to_multiple(images: Tensor, patch: int) -> Tensor:
    """Zero-pad images (B, C, H, W) on the right and bottom to sides that are multiples of `patch`."""
    h, w = images.shape[-2:]
    return F.pad(images, (0, -w % patch, 0, -h % patch))


def upsample_to(maps: Tensor, size: Grid, patch: int, mode: str = "bilinear") -> Tensor:
    """Score maps (B, K, h, w) on the patch grid of a padded image -> (B, K, H, W) for the unpadded size (H, W).

    The maps are resized to the padded image, (h*patch, w*patch) (align_corners=False), then cropped to the top
    left (H, W): padding added on the right and bottom is cut off again, and no pixel moves.
    """
    h, w = maps.shape[-2:]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    full = F.interpolate(maps, size=(h * patch, w * patch), mode=mode, **kwargs)
    return full[..., : size[0], : size[1]]


# -------------------------------------------------------------------------------------------- decoders


class LinearDecoder(nn.Module):
    """Segmenter's linear decoder: one Linear(D, K) per patch token, then back to the grid.

    Patch tokens (B, h*w, D) -> class scores (B, K, h, w). The same map as a 1x1 convolution on the feature grid
    (SETR-naive without its extra layers). Keys: head.weight (K, D), head.bias (K).
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        return tokens_to_grid(self.head(x), grid, num_prefix_tokens=0)


class MaskTransformer(nn.Module):
    """Segmenter's mask transformer: K learned class embeddings go through a few blocks with the patch tokens.

    Patch tokens (B, h*w, D) are projected to d_model (`proj_dec`), the class embeddings `cls_emb` (1, K, d_model)
    appended, the sequence run through `blocks` (vitlab.vit.Block) and `decoder_norm`. Patches and classes are
    then projected (`proj_patch`, `proj_classes`, (d_model, d_model) matrices) and L2-normalised; the masks are
    their cosine similarities, patches @ classes^T (B, h*w, K), normalised over the classes by `mask_norm`
    (LayerNorm(K)) and put back on the grid: (B, K, h, w).
    """

    def __init__(self, embed_dim: int, num_classes: int, d_model: int = 64, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.proj_dec = nn.Linear(embed_dim, d_model)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, d_model))
        self.blocks = nn.ModuleList(vit.Block(d_model, num_heads, mlp_ratio) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.proj_patch = nn.Parameter(torch.randn(d_model, d_model) * d_model ** -0.5)
        self.proj_classes = nn.Parameter(torch.randn(d_model, d_model) * d_model ** -0.5)
        self.mask_norm = nn.LayerNorm(num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Patch tokens (B, N, D) -> unit-length (patch features (B, N, d_model), class features (B, K, d_model))."""
        x = self.proj_dec(x)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches = x[:, : -self.num_classes] @ self.proj_patch
        classes = x[:, -self.num_classes:] @ self.proj_classes
        return F.normalize(patches, dim=-1), F.normalize(classes, dim=-1)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        patches, classes = self.features(x)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))
        return tokens_to_grid(masks, grid, num_prefix_tokens=0)


class PixelRefiner(nn.Module):
    """A light skip from the pixels: two 3x3 convolutions see the image and the upsampled scores together and add
    a correction to the scores, so that boundaries can follow the pixels instead of the patch grid.

    (scores (B, K, H, W), images (B, C, H, W)) -> refined scores (B, K, H, W).
    """

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes + in_chans, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, num_classes, 1)

    def forward(self, scores: Tensor, images: Tensor) -> Tensor:
        x = F.relu(self.conv1(torch.cat([scores, images], dim=1)))
        return scores + self.out(F.relu(self.conv2(x)))


class Segmenter(nn.Module):
    """A ViT backbone and a decoder: images (B, C, H, W) -> per-pixel class scores (B, K, H, W).

    The image is padded to multiples of the patch size; the padded size must be the backbone's `img_size`
    (its position table has one row per patch of that grid). Decoder scores are upsampled and cropped back,
    then corrected at full resolution by `refiner` (a `PixelRefiner`) when one is given.
    """

    def __init__(self, backbone: vit.VisionTransformer, decoder: nn.Module, refiner: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.refiner = refiner

    def no_weight_decay(self) -> list[str]:
        """Parameter names kept out of weight decay, timm's convention: positions, CLS token, class embeddings."""
        return ["backbone.pos_embed", "backbone.cls_token", "decoder.cls_emb"]

    def forward(self, images: Tensor, mode: str = "bilinear") -> Tensor:
        patch = self.backbone.patch_size
        padded = pad_to_multiple(images, patch)
        grid = (padded.shape[-2] // patch, padded.shape[-1] // patch)
        if grid != tuple(self.backbone.grid_size):
            raise ValueError(f"images of {tuple(images.shape[-2:])} pad to a {grid} grid; the backbone was built "
                             f"for {tuple(self.backbone.grid_size)}")
        tokens = self.backbone.forward_features(padded)[:, self.backbone.num_prefix_tokens:]
        scores = upsample_to(self.decoder(tokens, grid), images.shape[-2:], patch, mode)
        return scores if self.refiner is None else self.refiner(scores, images)


# ---------------------------------------------------------------------------------------------- losses


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss: 1 - mean over classes of (2 sum(p g) + s) / (sum(p) + sum(g) + s).

    logits (B, K, H, W), target (B, H, W) class indices; p = softmax over K, g = one-hot target; the sums run
    over the batch and all pixels, per class. Returns a scalar.
    """
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, logits.ndim))
    overlap = (probs * onehot).sum(dims)
    dice = (2 * overlap + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return 1 - dice.mean()


def segmentation_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0) -> Tensor:
    """Cross-entropy over all pixels plus `dice_weight` times the soft Dice loss. logits (B, K, H, W), target (B, H, W)."""
    return F.cross_entropy(logits.float(), target) + dice_weight * dice_loss(logits.float(), target)


# --------------------------------------------------------------------------------------------- metrics


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(K, K) int64 counts: entry [i, j] = pixels of true class i predicted as j. pred, target: same shape, ints."""
    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(confusion: Tensor) -> Tensor:
    """IoU of each class, TP / (TP + FP + FN), float64 (K,); NaN for a class absent from truth and prediction."""
    cm = confusion.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return tp / union.where(union > 0, torch.nan)


def mean_iou(confusion: Tensor) -> float:
    """mIoU: the mean of the IoUs of the classes present in the truth or the prediction."""
    return float(iou_per_class(confusion).nanmean())


def dice_per_class(confusion: Tensor) -> Tensor:
    """Dice of each class, 2 TP / (2 TP + FP + FN) = 2 IoU / (1 + IoU), float64 (K,); NaN where undefined."""
    iou = iou_per_class(confusion)
    return 2 * iou / (1 + iou)


def pixel_accuracy(confusion: Tensor) -> float:
    """The fraction of pixels whose predicted class is right: trace / total."""
    cm = confusion.double()
    return float(cm.diagonal().sum() / cm.sum())


# -------------------------------------------------------------------------------------------- training


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted classes (N, H, W) int64 of `model` (images -> scores (B, K, H, W)) for images (N, C, H, W), on CPU."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(images[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out)


def evaluate(model: nn.Module, images: Tensor, masks: Tensor, num_classes: int) -> Tensor:
    """The confusion matrix (K, K) of `model`'s predictions for images (N, C, H, W) against masks (N, H, W)."""
    return confusion_matrix(predict(model, images), masks, num_classes)


def fit(model: nn.Module, images: Tensor, masks: Tensor, *, epochs: int, lr: float, batch_size: int = 64,
        weight_decay: float = 0.05, warmup_steps: int = 0, dice_weight: float = 1.0, max_steps: int | None = None,
        max_seconds: float | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Train `model` on images (N, C, H, W) and masks (N, H, W) with cross-entropy + Dice, AdamW, warmup + cosine.

    The schedule spans `epochs`, or `max_steps` when fewer. With `max_seconds` it is a time budget: training stops
    when the time is up, and the cosine follows whichever is further along, the steps or the clock, so the
    learning rate reaches zero at the end either way. The device is the model's. Returns {"train_loss": per step,
    "seconds": training time, "steps"}.
    """
    dev = next(model.parameters()).device
    model.train()
    total = epochs * math.ceil(len(images) / batch_size)
    total = total if max_steps is None else min(total, max_steps)
    optimizer = torch.optim.AdamW(train.param_groups(model, weight_decay), lr=lr, fused=dev.type == "cuda")
    generator = torch.Generator().manual_seed(seed)
    history: dict = {"train_loss": [], "seconds": 0.0, "steps": 0}
    bar = tqdm(total=total, disable=not progress, unit="step")
    started = time.perf_counter()
    done = 0.0  # how far along the schedule is, in steps
    while done < total:
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), batch_size):
            elapsed = time.perf_counter() - started
            done = max(history["steps"], total * elapsed / max_seconds if max_seconds else 0.0)
            if done >= total:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * train.warmup_cosine(done, total, warmup_steps)
            batch = order[i:i + batch_size]
            x, y = images[batch].to(dev, non_blocking=True), masks[batch].to(dev, non_blocking=True)
            with train._autocast(dev):
                loss = segmentation_loss(model(x), y, dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history["train_loss"].append(loss.item())
            history["steps"] += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    history["seconds"] = time.perf_counter() - started
    bar.close()
    return history

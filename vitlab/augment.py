"""Augmentation on batches, in plain torch: mixup, cutmix, the Mixup/CutMix switcher with label smoothing
(timm's `Mixup` in batch mode, draw for draw), and RandAugment-style image operations.

Images are float (B, C, H, W) in [0, 1]. The partner of image i in a mixed batch is image B - 1 - i (the
batch flipped), as in timm.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.train import smooth_targets


def mixup(x: Tensor, targets: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """lam * x + (1 - lam) * flipped batch, and the soft targets (B, K) mixed the same way."""
    return lam * x + (1 - lam) * x.flip(0), lam * targets + (1 - lam) * targets.flip(0)


def cutmix_box(height: int, width: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The cutmix box (y0, y1, x0, x1) centred at (cy, cx): sides int(H sqrt(1 - lam)) and int(W sqrt(1 - lam)),
    clipped to the image (timm's rand_bbox), so that the box covers about 1 - lam of the image."""
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + (cut_h + 1) // 2, 0), height)
    x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + (cut_w + 1) // 2, 0), width)
    return y0, y1, x0, x1


def cutmix(x: Tensor, targets: Tensor, lam: float, cy: int, cx: int) -> tuple[Tensor, Tensor]:
    """Paste the box `cutmix_box(H, W, lam, cy, cx)` of the flipped batch into x, and mix the soft targets
    (B, K) with lam corrected to the area actually kept: 1 - box area / (H W)."""
    height, width = x.shape[-2:]
    y0, y1, x0, x1 = cutmix_box(height, width, lam, cy, cx)
    mixed = x.clone()
    mixed[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
    kept = 1 - (y1 - y0) * (x1 - x0) / (height * width)
    return mixed, kept * targets + (1 - kept) * targets.flip(0)


class Mixup:
    """Per batch: with probability `prob` mix, choosing cutmix with probability `switch_prob` (when both alphas
    are > 0); lam ~ Beta(alpha, alpha). Labels (B,) become label-smoothed soft targets (B, K) first.

    Random numbers come from numpy's RandomState(seed) in timm's order, so with the same seed this equals
    `timm.data.Mixup(..., mode="batch")` after `np.random.seed(seed)`. Call: (x, labels) -> (x, targets).
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, seed: int = 0) -> None:
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("one of mixup_alpha, cutmix_alpha must be > 0")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing
        self.rng = np.random.RandomState(seed)

    def draw(self) -> tuple[float, bool]:
        """(lam, use_cutmix) for the next batch; lam = 1 means no mixing."""
        if self.rng.rand() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(self.rng.rand() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(self.rng.beta(alpha, alpha)), use_cutmix

    def __call__(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if len(x) % 2:
            raise ValueError("Mixup needs an even batch size (each image is mixed with its mirror in the batch)")
        targets = smooth_targets(labels, self.num_classes, self.label_smoothing).to(x.dtype)
        lam, use_cutmix = self.draw()
        if lam == 1.0:
            return x, targets
        if use_cutmix:
            height, width = x.shape[-2:]
            cy, cx = self.rng.randint(0, height), self.rng.randint(0, width)
            return cutmix(x, targets, lam, cy, cx)
        return mixup(x, targets, lam)


# -------------------------------------------------------------------------------------------- RandAugment


def _affine(x: Tensor, theta: Tensor, fill: float = 0.5) -> Tensor:
    """Warp images (B, C, H, W) by per-image affine maps theta (B, 2, 3) in normalised coordinates; pixels
    from outside the image get `fill`."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill * (1 - inside)


def _grey(x: Tensor) -> Tensor:
    """Luminance (B, 1, H, W) of RGB images; grey images are their own."""
    if x.shape[1] == 3:
        return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:])
    return x


def _rotate(x, level):
    angle = math.radians(30) * level
    theta = torch.zeros(len(x), 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
    return _affine(x, theta)


def _shear(axis):
    def op(x, level):
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, axis, 1 - axis] = 0.3 * level
        return _affine(x, theta)
    return op


def _translate(axis):
    def op(x, level):
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, axis, 2] = -2 * 0.45 * level  # content moves by up to 45% of the side (coordinates span 2)
        return _affine(x, theta)
    return op


def _blend(x, other, factor):
    return (other + factor.view(-1, 1, 1, 1) * (x - other)).clamp(0, 1)


def _brightness(x, level):
    return _blend(x, torch.zeros_like(x), 1 + 0.9 * level)


def _contrast(x, level):
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), 1 + 0.9 * level)


def _sharpness(x, level):
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device, dtype=x.dtype) / 13
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(x.shape[1], 1, 3, 3),
                       groups=x.shape[1])
    return _blend(x, blurred, 1 + 0.9 * level)


def _solarize(x, level):
    threshold = (1 - level.abs()).view(-1, 1, 1, 1)
    return torch.where(x >= threshold, 1 - x, x)


def _posterize(x, level):
    bits = (8 - (4 * level.abs()).round()).view(-1, 1, 1, 1)
    step = 2 ** (8 - bits)
    return torch.floor(x * 255 / step) * step / 255


def _autocontrast(x, level):
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    return torch.where(high > low, (x - low) / (high - low).clamp_min(1e-8), x)


RAND_AUGMENT_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "identity": lambda x, level: x,
    "autocontrast": _autocontrast,
    "brightness": _brightness,
    "contrast": _contrast,
    "sharpness": _sharpness,
    "solarize": _solarize,
    "posterize": _posterize,
    "rotate": _rotate,
    "shear_x": _shear(0),
    "shear_y": _shear(1),
    "translate_x": _translate(0),
    "translate_y": _translate(1),
}


def rand_augment(x: Tensor, num_ops: int = 2, magnitude: float = 9.0, generator: torch.Generator | None = None,
                 ops: tuple[str, ...] | None = None) -> Tensor:
    """RandAugment (Cubuk et al. 2020): for each image, `num_ops` operations drawn uniformly from `ops`, all at
    the one global `magnitude` M in [0, 10] (level M / 10, with a random sign for the signed ones).

    The search space is just (N, M): one magnitude for every operation. x (B, C, H, W) in [0, 1] -> same.
    """
    names = ops or tuple(RAND_AUGMENT_OPS)
    level = magnitude / 10.0
    for _ in range(num_ops):
        choice = torch.randint(len(names), (len(x),), generator=generator)
        signs = torch.randint(2, (len(x),), generator=generator).float() * 2 - 1
        out = x.clone()
        for k, name in enumerate(names):
            picked = (choice == k).nonzero().flatten()
            if len(picked):
                levels = (signs[picked] * level).to(x.device)
                out[picked.to(x.device)] = RAND_AUGMENT_OPS[name](x[picked.to(x.device)], levels).to(x.dtype)
        x = out
    return x

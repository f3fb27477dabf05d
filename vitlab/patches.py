"""Patches: cutting images into tokens and back, patch embeddings, conv stems and patch-count arithmetic.

Token order is timm's and MAE's: patches row by row (row-major over the (H/P, W/P) grid), and inside a
patch the pixels row by row with the channels last, i.e. einops' `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Size = int | tuple[int, int]


def _pair(x: Size) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _grid_of(img: Tensor, patch: tuple[int, int]) -> tuple[int, int]:
    """The patch grid (H/P, W/P) of img (B, C, H, W); the sides must be multiples of the patch."""
    (h, w), (ph, pw) = img.shape[-2:], patch
    if h % ph or w % pw:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {ph}x{pw}")
    return h // ph, w // pw


def patchify(img: Tensor, patch: Size) -> Tensor:
    """img (B, C, H, W) -> tokens (B, N, P*P*C), N = (H/P)(W/P), row-major patches, (p1 p2 c) inside a patch."""
    b, c = img.shape[:2]
    ph, pw = _pair(patch)
    gh, gw = _grid_of(img, (ph, pw))
    x = img.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, ph, pw, C)
    return x.reshape(b, gh * gw, ph * pw * c)


def patchify_unfold(img: Tensor, patch: Size) -> Tensor:
    """patchify through F.unfold: same result. unfold gives (B, C*P*P, N) with (c p1 p2) inside a patch."""
    b, c = img.shape[:2]
    ph, pw = _pair(patch)
    _grid_of(img, (ph, pw))
    cols = F.unfold(img, kernel_size=(ph, pw), stride=(ph, pw))  # (B, C*ph*pw, N)
    return cols.reshape(b, c, ph, pw, -1).permute(0, 4, 2, 3, 1).reshape(b, -1, ph * pw * c)


def unpatchify(tokens: Tensor, patch: Size, grid: Size | None = None) -> Tensor:
    """tokens (B, N, P*P*C) -> img (B, C, gh*P, gw*P): the inverse of `patchify`.

    grid = (gh, gw) patches; None means a square grid. The channel count is D / (P*P).
    """
    b, n, d = tokens.shape
    ph, pw = _pair(patch)
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} tokens do not form a square grid: pass grid=(rows, cols)")
        grid = side
    gh, gw = _pair(grid)
    if gh * gw != n or d % (ph * pw):
        raise ValueError(f"tokens {tuple(tokens.shape)} do not fit a {gh}x{gw} grid of {ph}x{pw} patches")
    c = d // (ph * pw)
    x = tokens.reshape(b, gh, gw, ph, pw, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, ph, gw, pw)
    return x.reshape(b, c, gh * ph, gw * pw)


def conv_weight_to_linear(weight: Tensor) -> Tensor:
    """A Conv2d(kernel = stride = P) weight (D, C, P, P) as a Linear weight (D, P*P*C) acting on `patchify` tokens."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def grid_size(img_size: Size, kernel: Size, stride: Size | None = None, padding: Size = 0) -> tuple[int, int]:
    """Output grid of a conv over an image: floor((H + 2p - k) / s) + 1 per side (stride defaults to kernel)."""
    stride = kernel if stride is None else stride
    sides = zip(_pair(img_size), _pair(kernel), _pair(stride), _pair(padding))
    gh, gw = ((size + 2 * pad - k) // s + 1 for size, k, s, pad in sides)
    return gh, gw


def num_patches(img_size: Size, kernel: Size, stride: Size | None = None, padding: Size = 0) -> int:
    """Number of patches (tokens) a conv with this kernel, stride and padding cuts from an image."""
    gh, gw = grid_size(img_size, kernel, stride, padding)
    return gh * gw


class PatchEmbed(nn.Module):
    """timm's PatchEmbed: Conv2d(kernel = stride = P) then flatten, img (B, C, H, W) -> tokens (B, N, D).

    state_dict keys: proj.weight (D, C, P, P), proj.bias (D). `grid_size` and `num_patches` describe
    `img_size`; other sizes whose sides are multiples of P work too (timm would refuse them by default).
    """

    def __init__(self, img_size: Size = 224, patch_size: Size = 16, in_chans: int = 3, embed_dim: int = 768,
                 bias: bool = True) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.grid_size = grid_size(self.img_size, self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, (H/P)(W/P), D)."""
        _grid_of(x, self.patch_size)
        return self.proj(x).flatten(2).transpose(1, 2)


class LinearPatchEmbed(nn.Module):
    """patchify then one Linear (P*P*C -> D): the same map as PatchEmbed, written as the paper's equation."""

    def __init__(self, img_size: Size = 224, patch_size: Size = 16, in_chans: int = 3, embed_dim: int = 768,
                 bias: bool = True) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.grid_size = grid_size(self.img_size, self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Linear(self.patch_size[0] * self.patch_size[1] * in_chans, embed_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, N, D)."""
        return self.proj(patchify(x, self.patch_size))

    @classmethod
    def from_conv(cls, embed: PatchEmbed) -> LinearPatchEmbed:
        """A LinearPatchEmbed with `embed`'s weights, so that both give the same tokens."""
        conv = embed.proj
        new = cls(embed.img_size, embed.patch_size, conv.in_channels, conv.out_channels, bias=conv.bias is not None)
        new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.proj.weight.copy_(conv_weight_to_linear(conv.weight))
            if conv.bias is not None:
                new.proj.bias.copy_(conv.bias)
        return new


class ConvStem(nn.Module):
    """An overlapping convolutional stem (Xiao et al., 2021) in place of the patchify conv.

    log2(P) stages of 3x3 stride-2 Conv2d + BatchNorm + ReLU (each pixel feeds overlapping windows), then a
    1x1 Conv2d to embed_dim: img (B, C, H, W) -> (B, (H/P)(W/P), D), the same token grid as PatchEmbed.
    `channels` (one per stage) defaults to embed_dim / 2^(stages-1), ..., embed_dim / 2, embed_dim.
    """

    def __init__(self, img_size: Size = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 channels: tuple[int, ...] | None = None) -> None:
        super().__init__()
        stages = int(math.log2(patch_size))
        if 2 ** stages != patch_size:
            raise ValueError(f"a stride-2 stem needs a power-of-two patch size, got {patch_size}")
        channels = channels or tuple(max(embed_dim >> (stages - 1 - i), 1) for i in range(stages))
        if len(channels) != stages:
            raise ValueError(f"patch size {patch_size} needs {stages} stem channels, got {len(channels)}")
        self.img_size = _pair(img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = grid_size(self.img_size, self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(in_chans, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            in_chans = out
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, (H/P)(W/P), D)."""
        _grid_of(x, self.patch_size)
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)

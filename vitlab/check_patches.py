"""Checks for the exercises of 02_patches: each compares the learner's code with `vitlab.patches`.

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds float64,
other patch sizes and channel counts, non-square images and the edge cases P = 1 and P = H.
Learner signatures (as the reference's):
- patchify(img, patch) -> (B, N, P*P*C), written with reshape/permute or einops (F.unfold is refused: it is
  the other exercise);
- patchify_unfold(img, patch) -> the same tokens, and it must call F.unfold;
- unpatchify(tokens, patch, grid) -> (B, C, H, W), grid = (rows, cols) of patches;
- conv_weight_to_linear(weight (D, C, P, P)) -> (D, P*P*C);
- num_patches(img_size, kernel, stride, padding=0) -> int;
- PatchEmbed(img_size, patch_size, in_chans, embed_dim) with self.proj = nn.Conv2d(...), self.grid_size and
  self.num_patches; forward(x) -> (B, N, D).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab import patches
from vitlab.check import (CheckFailed, Mistake, PASS, call_learner, check_function, check_module, describe, forbid,
                          randn, tolerance)
from vitlab.check import exercise_check

REFERENCE = {
    patches.patchify: "vitlab.patches.patchify",
    patches.patchify_unfold: "vitlab.patches.patchify_unfold",
    patches.unpatchify: "vitlab.patches.unpatchify",
}
UNFOLD = {F.unfold: "F.unfold", nn.Unfold: "nn.Unfold"}
EMBED_REFERENCE = REFERENCE | {
    patches.PatchEmbed: "vitlab.patches.PatchEmbed",
    patches.LinearPatchEmbed: "vitlab.patches.LinearPatchEmbed",
    patches.ConvStem: "vitlab.patches.ConvStem",
}


# ------------------------------------------------------------------------------------------ patchify


def _blocks(img: Tensor, patch: int, strided: bool = False) -> Tensor:
    """img (B, C, H, W) viewed as (B, C, h, P, w, P); `strided` splits each side as (P, h) by mistake."""
    b, c, height, width = img.shape
    h, w = height // patch, width // patch
    if strided:
        return img.reshape(b, c, patch, h, patch, w).permute(0, 1, 3, 2, 5, 4)
    return img.reshape(b, c, h, patch, w, patch)


def _tokens(x: Tensor, order: tuple[int, ...]) -> Tensor:
    """Permute (B, C, h, P, w, P) by `order`, then flatten to (B, N, P*P*C)."""
    b, c, h, p, w, _ = x.shape
    return x.permute(order).reshape(b, h * w, p * p * c)


PATCHIFY_MISTAKES = [
    Mistake("reshaped the image to (B, N, P*P*C) without a permute",
            "A plain reshape cuts the memory in order: rows of pixels, not square patches. View the image as "
            "(B, C, H/P, P, W/P, P), permute to (B, H/P, W/P, P, P, C), then reshape to (B, N, P*P*C).",
            lambda img, patch: img.reshape(img.shape[0], -1, patch * patch * img.shape[1])),
    Mistake("flattened each patch channel-first (c p1 p2), F.unfold's order",
            "This course's order (timm's and MAE's) puts the channels last inside a patch: (p1 p2 c). Move the "
            "channel axis to the end before the final reshape.",
            lambda img, patch: _tokens(_blocks(img, patch), (0, 2, 4, 1, 3, 5))),
    Mistake("ordered the patches column by column",
            "Patches go row by row (row-major): the patch-row index h varies slowest, so the order is (h w).",
            lambda img, patch: _tokens(_blocks(img, patch), (0, 4, 2, 3, 5, 1))),
    Mistake("swapped the pixel rows and columns inside each patch (p2 p1 c)",
            "Inside a patch the pixels go row by row too: (p1 p2 c), with p1 the row within the patch.",
            lambda img, patch: _tokens(_blocks(img, patch), (0, 2, 4, 5, 3, 1))),
    Mistake("split each side as (P, H/P) instead of (H/P, P), so your 'patches' are strided samples",
            "Reshaping H into (P, H/P) groups pixels that are H/P apart. Split H as (H/P, P): the patch index "
            "first, the pixel within the patch second.",
            lambda img, patch: _tokens(_blocks(img, patch, strided=True), (0, 2, 4, 3, 5, 1))),
]


def _unfold_tokens(img: Tensor, patch: int, stride: int | None = None) -> Tensor:
    """F.unfold reordered to (p1 p2 c): patchify with any stride."""
    b, c = img.shape[:2]
    cols = F.unfold(img, kernel_size=patch, stride=patch if stride is None else stride)
    return cols.reshape(b, c, patch, patch, -1).permute(0, 4, 2, 3, 1).reshape(b, -1, patch * patch * c)


UNFOLD_MISTAKES = [
    Mistake("returned F.unfold's output as it is, (B, C*P*P, N)",
            "F.unfold puts one patch per column: transpose to (B, N, C*P*P), then reorder each patch from "
            "(c p1 p2) to (p1 p2 c).",
            lambda img, patch: F.unfold(img, kernel_size=patch, stride=patch)),
    Mistake("transposed F.unfold's output but kept its channel-first (c p1 p2) order inside a patch",
            "F.unfold flattens a patch as (C, P, P). Reshape each token to (C, P, P), permute to (P, P, C) and "
            "flatten again (or use einops).",
            lambda img, patch: F.unfold(img, kernel_size=patch, stride=patch).transpose(1, 2)),
    Mistake("left F.unfold's stride at its default of 1, so the patches overlap",
            "Pass stride=P as well as kernel_size=P: non-overlapping patches.",
            lambda img, patch: _unfold_tokens(img, patch, stride=1)),
    Mistake("permuted F.unfold's (c p1 p2) to (p2 p1 c) instead of (p1 p2 c)",
            "After reshaping each column to (C, P, P), the order you want is (P_row, P_col, C): permute the axes "
            "(c, p1, p2) -> (p1, p2, c), keeping p1 before p2.",
            lambda img, patch: F.unfold(img, kernel_size=patch, stride=patch).reshape(
                img.shape[0], img.shape[1], patch, patch, -1).permute(0, 4, 3, 2, 1).flatten(2)),
]


def _image_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    shapes = [((2, 3, 8, 8), 4), ((1, 3, 6, 9), 3), ((2, 2, 4, 4), 2)]
    if graded:
        shapes += [((3, 2, 12, 8), 4), ((2, 3, 5, 5), 1), ((2, 4, 6, 6), 6), ((1, 1, 10, 15), 5)]
    return [dict(img=randn(gen, *shape, dtype=dt), patch=p) for shape, p in shapes]


@exercise_check
def patchify(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `patchify(img, patch)` -> (B, N, P*P*C), row-major patches, (p1 p2 c) inside a patch."""
    dt = torch.float64 if graded else torch.float32
    check_function(fn, patches.patchify, _image_cases(seed, graded), name="patchify", mistakes=PATCHIFY_MISTAKES,
                   forbidden=REFERENCE | UNFOLD, **tolerance(dt))


@exercise_check
def patchify_unfold(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `patchify_unfold(img, patch)`: the same tokens as patchify, computed with F.unfold."""
    cases = _image_cases(seed, graded)
    with forbid(UNFOLD) as used:
        call_learner("patchify_unfold", fn, dict(cases[0]), "the first case")
    if not used:
        raise CheckFailed("patchify_unfold: this exercise is the F.unfold way: call F.unfold(img, kernel_size=P, "
                          "stride=P) and reorder its output.")
    dt = torch.float64 if graded else torch.float32
    check_function(fn, patches.patchify, cases, name="patchify_unfold", mistakes=UNFOLD_MISTAKES,
                   forbidden=REFERENCE, **tolerance(dt))


# ---------------------------------------------------------------------------------------- unpatchify


def _untokens(tokens: Tensor, patch: int, grid: tuple[int, int], mistake: str) -> Tensor:
    b, _, d = tokens.shape
    (h, w), p = grid, patch
    c = d // (p * p)
    if mistake == "no_permute":
        return tokens.reshape(b, c, h * p, w * p)
    if mistake == "channel_first":
        x = tokens.reshape(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5)
    elif mistake == "columns":
        x = tokens.reshape(b, w, h, p, p, c).permute(0, 5, 2, 3, 1, 4)
    else:  # "grid_then_pixels": (B, C, h, w, P, P) reshaped without interleaving
        x = tokens.reshape(b, h, w, p, p, c).permute(0, 5, 1, 2, 3, 4)
    return x.reshape(b, c, h * p, w * p)


UNPATCHIFY_MISTAKES = [
    Mistake("reshaped the tokens straight to (B, C, H, W) without a permute",
            "Undo patchify step by step: reshape to (B, h, w, P, P, C), permute to (B, C, h, P, w, P), then reshape "
            "to (B, C, h*P, w*P).", lambda tokens, patch, grid: _untokens(tokens, patch, grid, "no_permute")),
    Mistake("read each token as channel-first (c p1 p2)",
            "patchify flattened each patch as (p1 p2 c): the channels are the last, fastest-varying axis.",
            lambda tokens, patch, grid: _untokens(tokens, patch, grid, "channel_first")),
    Mistake("read the patches column by column",
            "Tokens are row-major over the grid: reshape to (B, rows, cols, ...), with rows = grid[0].",
            lambda tokens, patch, grid: _untokens(tokens, patch, grid, "columns")),
    Mistake("reshaped (B, C, h, w, P, P) to an image without interleaving the grid and pixel axes",
            "Each image row is (patch row, pixel row within the patch): permute to (B, C, h, P, w, P) so that each "
            "grid axis sits next to its pixel axis before the last reshape.",
            lambda tokens, patch, grid: _untokens(tokens, patch, grid, "grid_then_pixels")),
]


@exercise_check
def unpatchify(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `unpatchify(tokens, patch, grid)` -> (B, C, grid[0]*P, grid[1]*P), the inverse of patchify."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    shapes = [(2, (2, 2), 4, 3), (1, (2, 3), 3, 3), (2, (3, 2), 2, 1)]
    if graded:
        shapes += [(3, (4, 1), 2, 2), (2, (2, 5), 1, 3), (1, (1, 1), 4, 4)]
    cases = [dict(tokens=randn(gen, b, h * w, p * p * c, dtype=dt), patch=p, grid=(h, w))
             for b, (h, w), p, c in shapes]
    check_function(fn, patches.unpatchify, cases, name="unpatchify", mistakes=UNPATCHIFY_MISTAKES,
                   forbidden=REFERENCE, **tolerance(dt))


# ------------------------------------------------------------------------------- conv weight to linear


CONV_TO_LINEAR_MISTAKES = [
    Mistake("flattened the conv weight without a permute, in its (c p1 p2) order",
            "The Linear acts on patchify's tokens, flattened (p1 p2 c): permute the weight (D, C, P, P) to "
            "(D, P, P, C) before flattening.", lambda weight: weight.reshape(weight.shape[0], -1)),
    Mistake("returned the weight as (P*P*C, D)",
            "nn.Linear stores its weight as (out_features, in_features) = (D, P*P*C).",
            lambda weight: weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).T),
    Mistake("permuted the weight to (D, P, P, C) with the two P axes swapped",
            "Keep the pixel row before the pixel column: permute(0, 2, 3, 1).",
            lambda weight: weight.permute(0, 3, 2, 1).reshape(weight.shape[0], -1)),
]


@exercise_check
def conv_weight_to_linear(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `conv_weight_to_linear(weight (D, C, P, P)) -> (D, P*P*C)` for a Linear on patchify's tokens."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    shapes = [(8, 3, 4, 4), (5, 2, 3, 3)] + ([(16, 1, 2, 2), (4, 3, 5, 5)] if graded else [])
    cases = [dict(weight=randn(gen, *shape, dtype=dt)) for shape in shapes]
    check_function(fn, patches.conv_weight_to_linear, cases, name="conv_weight_to_linear",
                   mistakes=CONV_TO_LINEAR_MISTAKES, forbidden={
                       patches.conv_weight_to_linear: "vitlab.patches.conv_weight_to_linear",
                       patches.LinearPatchEmbed.from_conv: "vitlab.patches.LinearPatchEmbed.from_conv"},
                   **tolerance(dt))


# -------------------------------------------------------------------------------------- num_patches


def _count(img_size, kernel, stride, padding=0, plus_one=True, pad_sides=2, floor=True, square=True):
    side = (img_size + pad_sides * padding - kernel)
    side = side // stride if floor else side / stride
    side = side + 1 if plus_one else side
    return side * side if square else side


NUM_PATCHES_MISTAKES = [
    Mistake("forgot the + 1", "A window fits at offsets 0, s, 2s, ...: floor((H + 2p - k) / s) + 1 positions.",
            lambda img_size, kernel, stride, padding=0: _count(img_size, kernel, stride, padding, plus_one=False)),
    Mistake("left out the padding", "Padding p adds p pixels on each side: H + 2p.",
            lambda img_size, kernel, stride, padding=0: _count(img_size, kernel, stride, padding, pad_sides=0)),
    Mistake("added the padding once instead of on both sides", "Padding p adds p pixels on each side: H + 2p.",
            lambda img_size, kernel, stride, padding=0: _count(img_size, kernel, stride, padding, pad_sides=1)),
    Mistake("used / instead of //", "A window that does not fit is dropped: floor division (H + 2p - k) // s.",
            lambda img_size, kernel, stride, padding=0: _count(img_size, kernel, stride, padding, floor=False)),
    Mistake("returned the patches along one side", "A square image has that many rows and as many columns: square it.",
            lambda img_size, kernel, stride, padding=0: _count(img_size, kernel, stride, padding, square=False)),
]


@exercise_check
def num_patches(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `num_patches(img_size, kernel, stride, padding=0)` for square images: ((H + 2p - k) // s + 1)^2."""
    sizes = [(224, 16, 16, 0), (32, 5, 1, 2), (224, 7, 4, 3), (30, 4, 4, 0), (31, 8, 3, 2)]
    if graded:
        sizes += [(384, 16, 16, 0), (224, 14, 14, 0), (64, 7, 2, 3), (10, 10, 1, 0), (57, 5, 7, 1)]
    cases = [dict(img_size=h, kernel=k, stride=s, padding=p) for h, k, s, p in sizes]
    check_function(fn, patches.num_patches, cases, name="num_patches", mistakes=NUM_PATCHES_MISTAKES,
                   forbidden={patches.num_patches: "vitlab.patches.num_patches",
                              patches.grid_size: "vitlab.patches.grid_size"}, grad=False)


# --------------------------------------------------------------------------------------- PatchEmbed


class _WrongPatchEmbed(patches.PatchEmbed):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, mistake: str):
        super().__init__(img_size, patch_size, in_chans, embed_dim)
        self.mistake = mistake

    def forward(self, x: Tensor) -> Tensor:
        stride = 1 if self.mistake == "stride_one" else self.patch_size
        y = F.conv2d(x, self.proj.weight, self.proj.bias, stride=stride)  # (B, D, h, w)
        if self.mistake == "no_transpose":
            return y.reshape(y.shape[0], -1, y.shape[1])
        if self.mistake == "channels_first":
            return y.flatten(2)
        if self.mistake == "columns":
            y = y.transpose(2, 3)
        return y.flatten(2).transpose(1, 2)


PATCH_EMBED_MISTAKES = [
    ("reshaped the conv output (B, D, h, w) to (B, N, D) without a transpose", "no_transpose",
     "flatten(2) gives (B, D, N); then .transpose(1, 2) makes (B, N, D). A reshape keeps the memory order, so it "
     "mixes channels and positions."),
    ("returned (B, D, N): the tokens must be the middle axis", "channels_first",
     "After flatten(2), transpose(1, 2) to get (B, N, D)."),
    ("flattened the patch grid column by column", "columns",
     "Flatten the (h, w) grid row by row, as patchify does: x.flatten(2) on (B, D, h, w)."),
    ("used stride 1: the patches overlap", "stride_one",
     "A patch embedding cuts non-overlapping patches: Conv2d(kernel_size=P, stride=P)."),
]


@exercise_check
def patch_embed(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `PatchEmbed(img_size, patch_size, in_chans, embed_dim)` with the reference's weights."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    configs = [(16, 4, 3, 8)] + ([(24, 8, 1, 12), (12, 2, 3, 6)] if graded else [])
    for img_size, patch, chans, dim in configs:
        name = f"PatchEmbed(img_size={img_size}, patch_size={patch}, in_chans={chans}, embed_dim={dim})"
        args = (img_size, patch, chans, dim)
        module = call_learner(name, lambda args=args: cls(*args), {}, "construction")
        torch.manual_seed(seed)
        reference = patches.PatchEmbed(img_size, patch, chans, dim).to(dt)
        for attr in ("num_patches", "grid_size"):
            got, expected = getattr(module, attr, None), getattr(reference, attr)
            if got is None or (tuple(got) if attr == "grid_size" else got) != expected:
                raise CheckFailed(f"{name}: self.{attr} should be {expected!r}, got {describe(got)}.\n  The grid has "
                                  f"img_size // patch_size patches per side; num_patches is their product.")
        mistakes = [Mistake(label, hint, _WrongPatchEmbed(img_size, patch, chans, dim, key).to(dt))
                    for label, key, hint in PATCH_EMBED_MISTAKES]
        inputs = [dict(x=randn(gen, 2, chans, img_size, img_size, dtype=dt))]
        if graded:
            inputs.append(dict(x=randn(gen, 1, chans, img_size, img_size, dtype=dt) * 10))
        check_module(lambda args=args: cls(*args).to(dt), reference, inputs, name=name, mistakes=mistakes,
                     forbidden=EMBED_REFERENCE, **tolerance(dt))
    print(f"{PASS} PatchEmbed: grid_size and num_patches are right.")

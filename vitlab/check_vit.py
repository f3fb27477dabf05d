"""Checks for the exercises of 04_vit: each compares the learner's code with torch or `vitlab.vit`.

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds float64, other
shapes and widths, a one-token sequence, constant rows and other model configurations.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from vitlab import vit
from vitlab.check import (CheckFailed, Mistake, PASS, call_learner, check_function, check_module, describe, forbid,
                          randn, tolerance)
from vitlab.check import exercise_check

LAYER_NORM_BUILTINS = {
    F.layer_norm: "torch's F.layer_norm",
    torch.layer_norm: "torch.layer_norm",
    torch.native_layer_norm: "torch.native_layer_norm",
    nn.LayerNorm: "nn.LayerNorm",
    F.group_norm: "torch's F.group_norm",
}
GELU_BUILTINS = {F.gelu: "torch's F.gelu", nn.GELU: "nn.GELU"}
BLOCK_BUILTINS = {
    vit.Block: "vitlab.vit.Block",
    vit.Mlp: "vitlab.vit.Mlp",
    nn.TransformerEncoderLayer: "nn.TransformerEncoderLayer",
}
VIT_BUILTINS = {vit.VisionTransformer: "vitlab.vit.VisionTransformer"}
COUNT_BUILTINS = VIT_BUILTINS | {vit.count_parameters: "vitlab.vit.count_parameters"}


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter, LayerNorm scales and shifts and the CLS token included, generic random values.

    Default initialisations (LayerNorm weight 1 and bias 0, a CLS token of size 1e-6) would hide mistakes
    such as swapping two norms or pooling the wrong token.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim <= 1 or name.endswith(("cls_token", "pos_embed")):
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return module


# ------------------------------------------------------------------------------------- LayerNorm


def _layer_norm_reference(x, weight, bias, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _layer_norm_variant(dims=(-1,), unbiased=False, eps_outside=False, affine=True, sqrt=True, use_eps=True,
                        centre=True, mean_dims=None):
    """A layer norm that is wrong in the ways the keyword arguments say."""

    def wrong(x, weight, bias, eps=1e-6):
        mean = x.mean(dim=mean_dims or dims, keepdim=True) if centre else torch.zeros_like(x)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True) if mean_dims else \
            x.var(dim=dims, keepdim=True, unbiased=unbiased)
        eps = eps if use_eps else 0.0
        if eps_outside:
            denominator = var.sqrt() + eps
        else:
            denominator = (var + eps).sqrt() if sqrt else var + eps
        y = (x - mean) / denominator
        return y * weight + bias if affine else y

    return wrong


LAYER_NORM_MISTAKES = [
    Mistake("divided x by the standard deviation without subtracting the mean first",
            "Normalise the centred values: (x - mean) / sqrt(var + eps), then scale and shift.",
            _layer_norm_variant(centre=False)),
    Mistake("used the unbiased variance (dividing by D - 1)",
            "LayerNorm divides by D, the number of features: x.var(dim=-1, unbiased=False), or "
            "((x - mean) ** 2).mean(dim=-1). torch's .var() divides by D - 1 unless told otherwise.",
            _layer_norm_variant(unbiased=True)),
    Mistake("normalised over the wrong axis (across tokens, dim=-2)",
            "LayerNorm normalises each token on its own: mean and variance over the last dim (features), "
            "with keepdim=True so that they broadcast back.", _layer_norm_variant(dims=(-2,))),
    Mistake("normalised over every axis at once",
            "Take the mean and variance over the last dim only (dim=-1, keepdim=True): each token gets its own "
            "statistics.", _layer_norm_variant(dims=None)),
    *[Mistake(f"took the mean over the wrong axis (dim={d}), the variance over the features",
              "The mean, like the variance, is each token's own: x.mean(dim=-1, keepdim=True).",
              _layer_norm_variant(mean_dims=(d,))) for d in (0, -2)],
    Mistake("put eps outside the square root",
            "The denominator is sqrt(var + eps), not sqrt(var) + eps; the two differ when the variance is small.",
            _layer_norm_variant(eps_outside=True)),
    Mistake("divided by the variance instead of the standard deviation",
            "Divide x - mean by sqrt(var + eps).", _layer_norm_variant(sqrt=False)),
    Mistake("forgot the learned scale and shift",
            "After normalising, multiply by `weight` and add `bias` (both of shape (D,), broadcast over tokens).",
            _layer_norm_variant(affine=False)),
    Mistake("left eps out",
            "A token whose features are all equal has variance 0, and 0 / 0 is NaN: eps inside the square root "
            "keeps the division finite.", _layer_norm_variant(use_eps=False)),
]


def _layer_norm_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(*shape, scale=1.0, shift=0.0, **extra):
        d = shape[-1]
        return dict(x=randn(gen, *shape, dtype=dt) * scale + shift, weight=1 + 0.3 * randn(gen, d, dtype=dt),
                    bias=0.3 * randn(gen, d, dtype=dt), **extra)

    cases = [case(4, 16), case(2, 5, 8, scale=3.0, shift=1.5), case(2, 6, 32, scale=1e-3),
             case(2, 7, 12, eps=0.1)]
    if graded:
        constant = case(3, 4, 6)
        constant["x"][1, 2] = 0.7  # a token whose features are all equal: variance 0
        cases += [case(10), case(2, 3, 4, 5, scale=0.01, eps=1e-5), case(1, 1, 3, shift=-4.0), constant]
    return cases


@exercise_check
def layer_norm(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `layer_norm(x, weight, bias, eps=1e-6)`: normalise x (..., D) over its last dim, then scale and shift."""
    dt = torch.float64 if graded else torch.float32
    check_function(fn, _layer_norm_reference, _layer_norm_cases(seed, graded), name="layer_norm",
                   mistakes=LAYER_NORM_MISTAKES, forbidden=LAYER_NORM_BUILTINS, **tolerance(dt))


# ------------------------------------------------------------------------------------------ GELU


def _gelu_reference(x):
    return F.gelu(x)


GELU_MISTAKES = [
    Mistake("used the tanh approximation of GELU",
            "ViT's GELU is the exact one, x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))) (torch.erf). The tanh "
            "formula is an approximation (GPT-2, BERT); close, but not equal.",
            lambda x: F.gelu(x, approximate="tanh")),
    Mistake("wrote ReLU",
            "The book writes ReLU; ViT uses GELU: 0.5 * x * (1 + erf(x / sqrt(2))), smooth and slightly negative "
            "for negative x.", torch.relu),
    Mistake("used the sigmoid approximation x * sigmoid(1.702 x)",
            "Write the exact GELU with torch.erf: 0.5 * x * (1 + erf(x / sqrt(2))).",
            lambda x: x * torch.sigmoid(1.702 * x)),
    Mistake("forgot to divide by sqrt(2) inside erf",
            "Phi(x), the standard normal CDF, is 0.5 * (1 + erf(x / sqrt(2))).",
            lambda x: 0.5 * x * (1 + torch.erf(x))),
    Mistake("forgot the factor 0.5",
            "Phi(x) = 0.5 * (1 + erf(x / sqrt(2))) goes from 0 to 1; without the 0.5 it goes to 2.",
            lambda x: x * (1 + torch.erf(x / math.sqrt(2)))),
]


@exercise_check
def gelu(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `gelu(x)`: the exact GELU, x * Phi(x), elementwise on any shape."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    cases = [dict(x=torch.linspace(-6, 6, 121, dtype=dt)), dict(x=randn(gen, 3, 4, 5, dtype=dt) * 2)]
    if graded:
        cases += [dict(x=randn(gen, 2, 3, 4, 5, dtype=dt) * 0.1), dict(x=torch.tensor([-30.0, -8.5, 0.0, 8.5, 30.0],
                                                                                        dtype=dt))]
    check_function(fn, _gelu_reference, cases, name="gelu", mistakes=GELU_MISTAKES, forbidden=GELU_BUILTINS,
                   **tolerance(dt))


# ----------------------------------------------------------------------------------------- Block


class _WrongBlock(vit.Block):
    """The reference block with one known mistake in its forward pass (for naming the learner's)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, mistake: str):
        super().__init__(dim, num_heads, mlp_ratio)
        self.mistake = mistake

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        act = {"relu": F.relu, "tanh_gelu": lambda h: F.gelu(h, approximate="tanh")}.get(self.mistake, F.gelu)
        return self.mlp.fc2(act(self.mlp.fc1(x)))

    def _norm(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if self.mistake == "eps" else norm.eps
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm1, norm2 = (self.norm2, self.norm1) if self.mistake == "swapped_norms" else (self.norm1, self.norm2)
        if self.mistake == "post_norm":
            x = self._norm(norm1, x + self.attn(x))
            return self._norm(norm2, x + self._mlp(x))
        if self.mistake == "post_norm_attn":
            x = self._norm(norm1, x + self.attn(x))
            return x + self._mlp(self._norm(norm2, x))
        if self.mistake == "post_norm_mlp":
            x = x + self.attn(self._norm(norm1, x))
            return self._norm(norm2, x + self._mlp(x))
        h = self.attn(self._norm(norm1, x))
        x = h if self.mistake in ("no_residual", "no_attn_residual") else x + h
        h = self._mlp(self._norm(norm2, x))
        return h if self.mistake in ("no_residual", "no_mlp_residual") else x + h


BLOCK_MISTAKES = [
    ("normalised after the residual sum (post-norm, the original Transformer)", "post_norm",
     "ViT is pre-norm: x = x + attn(norm1(x)), then x = x + mlp(norm2(x)). The residual path itself is never "
     "normalised."),
    ("normalised after the residual sum around attention (post-norm there)", "post_norm_attn",
     "ViT is pre-norm: x = x + attn(norm1(x)). The residual path itself is never normalised."),
    ("normalised after the residual sum around the MLP (post-norm there)", "post_norm_mlp",
     "ViT is pre-norm: x = x + mlp(norm2(x)). The residual path itself is never normalised."),
    ("left out both residual connections", "no_residual",
     "Add each sublayer's output to its input: x = x + attn(norm1(x)); x = x + mlp(norm2(x))."),
    ("left out the residual connection around attention", "no_attn_residual",
     "The first line is x = x + attn(norm1(x)), not x = attn(norm1(x))."),
    ("left out the residual connection around the MLP", "no_mlp_residual",
     "The second line is x = x + mlp(norm2(x)), not x = mlp(norm2(x))."),
    ("used ReLU in the MLP", "relu",
     "ViT's MLP is fc1 -> GELU -> fc2, with the exact GELU (nn.GELU())."),
    ("used the tanh approximation of GELU in the MLP", "tanh_gelu",
     "Use the exact GELU: nn.GELU() (approximate='none')."),
    ("used LayerNorm's default eps (1e-5); timm's ViT uses 1e-6", "eps",
     "Build the norms as nn.LayerNorm(dim, eps=1e-6)."),
    ("swapped the two norms", "swapped_norms",
     "norm1 comes before attention, norm2 before the MLP."),
]


def _block_inputs(seed: int, dim: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    inputs = [dict(x=randn(gen, 2, 5, dim, dtype=dt)), dict(x=randn(gen, 2, 7, dim, dtype=dt) * 0.05)]
    if graded:
        inputs += [dict(x=randn(gen, 1, 1, dim, dtype=dt) * 3), dict(x=randn(gen, 3, 4, dim, dtype=dt) + 2)]
    return inputs


@exercise_check
def block(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True)` with the reference's weights.

    Its submodules must be named as the reference's: norm1, attn (with qkv and proj), norm2, mlp (fc1, fc2).
    Graded checks also pass mlp_ratio=2.0 by keyword.
    """
    configs = [(48, 6, 2.0), (24, 2, 4.0)] if graded else [(32, 4, 4.0)]
    dt = torch.float64 if graded else torch.float32
    for dim, heads, ratio in configs:
        reference = _randomise(vit.Block(dim, heads, ratio), seed).to(dt)
        mistakes = [Mistake(label, hint, _WrongBlock(dim, heads, ratio, key).to(dt))
                    for label, key, hint in BLOCK_MISTAKES]
        kwargs = {"mlp_ratio": ratio} if ratio != 4.0 else {}
        check_module(lambda: cls(dim, heads, **kwargs).to(dt), reference, _block_inputs(seed, dim, graded),
                     name=f"Block(dim={dim}, num_heads={heads}{', mlp_ratio=2.0' if kwargs else ''})",
                     mistakes=mistakes, forbidden=BLOCK_BUILTINS, **tolerance(dt))


# ------------------------------------------------------------------------------ VisionTransformer


class _WrongViT(vit.VisionTransformer):
    """The reference ViT (CLS pooling) with one known mistake in its forward pass."""

    def __init__(self, config: dict, mistake: str):
        super().__init__(**config)
        self.mistake = mistake
        if mistake in ("post_norm", "relu"):
            dim, heads = config["embed_dim"], config["num_heads"]
            self.blocks = nn.ModuleList(_WrongBlock(dim, heads, 4.0, mistake) for _ in self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        if self.mistake == "cls_without_position":
            x = torch.cat([cls, x + self.pos_embed[:, 1:]], dim=1)
        elif self.mistake == "no_position":
            x = torch.cat([cls, x], dim=1)
        elif self.mistake == "cls_last":
            x = torch.cat([x, cls], dim=1) + self.pos_embed
        else:
            x = torch.cat([cls, x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        if self.mistake != "no_final_norm":
            x = self.norm(x)
        pooled = {"mean_all": lambda t: t.mean(1), "mean_patches": lambda t: t[:, 1:].mean(1),
                  "last_token": lambda t: t[:, -1]}.get(self.mistake, lambda t: t[:, 0])(x)
        return self.head(pooled)


VIT_MISTAKES = [
    ("forgot the final LayerNorm (or did not apply it)", "no_final_norm",
     "After the last block, apply self.norm to the tokens, then take the CLS token: logits = head(norm(x)[:, 0])."),
    ("averaged the tokens when the CLS token was asked for", "mean_all",
     "With CLS pooling the classifier reads one token, the first: x[:, 0]."),
    ("averaged the patch tokens when the CLS token was asked for", "mean_patches",
     "With CLS pooling the classifier reads one token, the first: x[:, 0] (mean pooling is global_pool='avg')."),
    ("read the last token instead of the CLS token", "last_token",
     "The CLS token is prepended, so it is x[:, 0]."),
    ("appended the CLS token after the patch tokens", "cls_last",
     "Prepend it: torch.cat([cls_token, patches], dim=1). Row 0 of pos_embed is the CLS token's, and the "
     "classifier reads x[:, 0]."),
    ("added no position embedding to the CLS token", "cls_without_position",
     "pos_embed has N + 1 rows: concatenate the CLS token first, then add the whole table."),
    ("forgot to add the position embedding", "no_position",
     "Concatenate the CLS token with the patch tokens, then add self.pos_embed (shape (1, N + 1, D))."),
    ("built blocks that normalise after the residual (post-norm)", "post_norm",
     "ViT's blocks are pre-norm: x = x + attn(norm1(x)); x = x + mlp(norm2(x))."),
    ("used ReLU in the blocks' MLP", "relu", "ViT's MLP uses the exact GELU (nn.GELU())."),
]


def _vit_structure(module: nn.Module, reference: nn.Module, name: str) -> None:
    """Name the mistakes that show in the parameter shapes before comparing outputs."""
    mine, theirs = module.state_dict(), reference.state_dict()
    n_patches = reference.patch_embed.num_patches
    dim = reference.embed_dim
    pos = mine.get("pos_embed")
    if pos is not None and tuple(pos.shape) == (1, n_patches, dim):
        raise CheckFailed(f"{name}: looks like you forgot the CLS slot in pos_embed: it has {n_patches} rows, one per "
                          f"patch.\n  The CLS token gets a position too: nn.Parameter(torch.zeros(1, num_patches + 1, "
                          f"embed_dim)).")
    if "cls_token" not in mine:
        raise CheckFailed(f"{name}: looks like you forgot the CLS token.\n  Add self.cls_token = "
                          f"nn.Parameter(torch.zeros(1, 1, embed_dim)) and prepend it to the patch tokens.")
    if "norm.weight" not in mine and "norm.weight" in theirs:
        raise CheckFailed(f"{name}: looks like you forgot the final LayerNorm: there is no `norm`.\n  Add "
                          f"self.norm = nn.LayerNorm(embed_dim, eps=1e-6) and apply it after the last block.")


def _vit_configs(graded: bool) -> list[dict]:
    if graded:
        return [dict(img_size=24, patch_size=6, in_chans=1, num_classes=7, embed_dim=24, depth=3, num_heads=3),
                dict(img_size=8, patch_size=8, in_chans=2, num_classes=3, embed_dim=16, depth=1, num_heads=2)]
    return [dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4)]


@exercise_check
def vision_transformer(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `VisionTransformer(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads)`.

    The learner's model uses CLS pooling, exact GELU, LayerNorm eps 1e-6 and timm's parameter names
    (patch_embed.proj, cls_token, pos_embed, blocks.i..., norm, head); it gets the reference's weights and must
    give the same logits and gradients.
    """
    dt = torch.float64 if graded else torch.float32
    gen = torch.Generator().manual_seed(seed)
    for config in _vit_configs(graded):
        name = "VisionTransformer(" + ", ".join(f"{k}={v}" for k, v in config.items()) + ")"
        reference = _randomise(vit.VisionTransformer(**config), seed).to(dt)
        module = call_learner(name, lambda: cls(**config), {}, "construction")
        if not isinstance(module, nn.Module):
            raise CheckFailed(f"{name} should build an nn.Module, got {describe(module)}")
        _vit_structure(module, reference, name)
        mistakes = [Mistake(label, hint, _WrongViT(config, key).to(dt)) for label, key, hint in VIT_MISTAKES]
        size, chans = config["img_size"], config["in_chans"]
        inputs = [dict(x=randn(gen, 2, chans, size, size, dtype=dt))]
        if graded:
            inputs.append(dict(x=randn(gen, 1, chans, size, size, dtype=dt) * 3))
        check_module(lambda: module.to(dt), reference, inputs, name=name, mistakes=mistakes, forbidden=VIT_BUILTINS,
                     **tolerance(dt))


# ------------------------------------------------------------------------------- parameter count


def _count_variant(cls_row=True, biases=True, norms=True, final_norm=True, head=True,
                   norms_per_block=2):
    """A closed-form parameter count that forgets what the keyword arguments say."""

    def count(img_size, patch_size, in_chans, num_classes, embed_dim, depth, mlp_ratio=4.0):
        d, hidden, n = embed_dim, int(embed_dim * mlp_ratio), (img_size // patch_size) ** 2
        b = int(biases)
        total = in_chans * patch_size ** 2 * d + b * d  # patch embedding
        total += d + (n + int(cls_row)) * d  # cls_token and pos_embed
        per_block = 3 * d * d + b * 3 * d + d * d + b * d + d * hidden + b * hidden + hidden * d + b * d
        per_block += norms_per_block * 2 * d * int(norms)
        total += depth * per_block + 2 * d * int(norms and final_norm)
        return total + (d * num_classes + b * num_classes) * int(head)

    return count


COUNT_MISTAKES = [
    Mistake("left out D parameters: the CLS token, or its row in the position table",
            "The CLS token is a learned (1, 1, D) parameter, and pos_embed has N + 1 rows of D numbers (one for it).",
            _count_variant(cls_row=False)),
    Mistake("forgot the biases", "Every Linear (qkv, proj, fc1, fc2, head) and the patch Conv2d have a bias.",
            _count_variant(biases=False)),
    Mistake("forgot the LayerNorms", "Each LayerNorm has a weight and a bias of D numbers: two per block, one at "
            "the end.", _count_variant(norms=False)),
    Mistake("forgot the final LayerNorm", "After the last block comes one more LayerNorm: 2 * D parameters.",
            _count_variant(final_norm=False)),
    Mistake("counted one LayerNorm per block", "A pre-norm block has two: norm1 and norm2.",
            _count_variant(norms_per_block=1)),
    Mistake("forgot the classification head", "The head is a Linear(D, num_classes) with a bias.",
            _count_variant(head=False)),
]


def _count_effect(config: dict, got, truth: int) -> str:
    """Which parameters a wrong count misses or counts twice, when the difference is exactly one group of them
    (a tensor of every block, such as the qkv biases, or one tensor such as the CLS token)."""
    if not isinstance(got, int) or isinstance(got, bool):
        return ""
    groups: dict[str, list[int]] = {}
    with torch.device("meta"):
        model = vit.VisionTransformer(**config)
    for name, p in model.named_parameters():
        groups.setdefault(re.sub(r"blocks\.\d+\.", "blocks.N.", name), []).append(p.numel())
    gap = abs(truth - got)
    way = "short by" if got < truth else "over by"
    for name, sizes in groups.items():
        if gap == sum(sizes):
            each = f" ({len(sizes)} blocks x {sizes[0]:,})" if len(sizes) > 1 else ""
            return (f"\n  Your count is {way} {gap:,}: exactly {name}{each}. Count every parameter tensor once: "
                    "weights and biases of qkv, proj, fc1, fc2, both norms of each block, then the patch embedding, "
                    "cls_token, pos_embed (N + 1 rows), the final norm and the head.")
        if len(sizes) > 1 and gap == sizes[0]:
            return f"\n  Your count is {way} {gap:,}: the size of one {name}. Is a range over the blocks off by one?"
    if gap == config["embed_dim"]:
        return (f"\n  Your count is {way} {gap:,} = embed_dim: one token's worth, the cls_token or one row of "
                "pos_embed (which has N + 1 rows, the CLS token's included).")
    return ""


@exercise_check
def parameter_count(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `vit_parameter_count(img_size, patch_size, in_chans, num_classes, embed_dim, depth, mlp_ratio=4.0)`.

    The truth is the number of parameters of the reference model (CLS token, qkv bias, CLS pooling), built on
    the meta device so that no memory is allocated.
    """
    configs = [dict(img_size=224, in_chans=3, num_classes=1000, **vit.VIT_CONFIGS[name])
               for name in ("vit_base_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224")]
    if graded:
        gen = torch.Generator().manual_seed(seed)
        for _ in range(3):
            heads, patch = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(2, 9, (1,), generator=gen))
            configs.append(dict(img_size=patch * int(torch.randint(1, 9, (1,), generator=gen)), patch_size=patch,
                                in_chans=int(torch.randint(1, 4, (1,), generator=gen)),
                                num_classes=int(torch.randint(2, 50, (1,), generator=gen)),
                                embed_dim=heads * 8, depth=int(torch.randint(1, 7, (1,), generator=gen)),
                                num_heads=heads, mlp_ratio=2.0))
    truths = []
    for config in configs:
        with torch.device("meta"):
            truth = vit.count_parameters(vit.VisionTransformer(**config))
        truths.append(truth)
        args = {k: v for k, v in config.items() if k != "num_heads"}
        where = ", ".join(f"{k}={v}" for k, v in args.items())
        with forbid(COUNT_BUILTINS) as called:
            got = call_learner("vit_parameter_count", fn, args, where)
        if called:
            raise CheckFailed(f"vit_parameter_count: your code calls {' and '.join(called)}; count the parameters "
                              "with the formula, layer by layer. A graded check gives zero when it does.")
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if got == truth:
            continue
        for mistake in COUNT_MISTAKES:
            if got == mistake.impl(**args):
                raise CheckFailed(f"vit_parameter_count: looks like you {mistake.label}.\n  {mistake.hint}")
        raise CheckFailed(f"vit_parameter_count({where}) = {got!r}, expected {truth:,}."
                          + _count_effect(config, got, truth))
    print(f"{PASS} vit_parameter_count: exact on {len(configs)} configurations (ViT-B/16 = {truths[0]:,}, "
          f"ViT-L/16 = {truths[1]:,}, ViT-H/14 = {truths[2]:,}).")

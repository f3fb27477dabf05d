"""Checks for the exercises of 01_attention: each compares the learner's code with `vitlab.attention`.

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds other shapes,
float64, Lq != Lk, five-dimensional inputs and rows whose keys are all masked.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitlab import attention
from vitlab.check import CheckFailed, Mistake, call_learner, check_function, check_module, randn, tolerance

from vitlab.check import exercise_check
SDPA_BUILTINS = {
    F.scaled_dot_product_attention: "torch's F.scaled_dot_product_attention",
    attention.scaled_dot_product_attention: "vitlab.attention.scaled_dot_product_attention",
    attention.attention_weights: "vitlab.attention.attention_weights",
    nn.MultiheadAttention: "nn.MultiheadAttention",
}
MHA_BUILTINS = {
    nn.MultiheadAttention: "nn.MultiheadAttention",
    F.multi_head_attention_forward: "F.multi_head_attention_forward",
    attention.MultiHeadAttention: "vitlab.attention.MultiHeadAttention",
}


# ------------------------------------------------------------------- scaled dot-product attention


def _safe_softmax(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax whose rows of all -inf give zeros."""
    dead = scores.amax(dim, keepdim=True) == float("-inf")
    return scores.masked_fill(dead, 0).softmax(dim).masked_fill(dead, 0)


def _sdpa_variant(scale_of=lambda dk, dv: dk ** -0.5, dim=-1, flip=False, naive_softmax=False,
                  mask_after=False, upper_causal=False, mask_fill=None, diagonal_blocked=False):
    """A scaled dot-product attention that is wrong in the ways the keyword arguments say."""

    def wrong(q, k, v, mask=None, causal=False):
        scores = q @ k.transpose(-2, -1) * scale_of(q.shape[-1], v.shape[-1])
        lq, lk = scores.shape[-2:]
        blocked = torch.zeros(lq, lk, dtype=torch.bool)
        if causal:
            ones = torch.ones(lq, lk, dtype=torch.bool)
            blocked = ones.tril(-1) if upper_causal else ones.triu(0 if diagonal_blocked else 1)
        if mask_fill is not None and mask is not None and mask.dtype == torch.bool:  # a finite fill for the mask
            if not (mask.any(-1) & ~mask.all(-1)).any():
                raise ValueError("no row is partly blocked: a finite fill looks like a row that sees nothing")
            scores = torch.where(mask, scores.masked_fill(blocked, float("-inf")), mask_fill)
            return _safe_softmax(scores, dim) @ v
        if mask is not None and mask.dtype == torch.bool:
            blocked = blocked | (mask if flip else ~mask)
        elif mask is not None:
            scores = scores + mask
        if mask_after:
            return scores.softmax(dim) * ~blocked @ v
        scores = scores.masked_fill(blocked, float("-inf"))
        weights = scores.softmax(dim) if naive_softmax else _safe_softmax(scores, dim)
        return weights @ v

    return wrong


SDPA_MISTAKES = [
    Mistake("forgot the 1/sqrt(d_k) scale",
            "Multiply the scores q @ k^T by 1/sqrt(d_k) (d_k = q.shape[-1]) before the softmax.",
            _sdpa_variant(scale_of=lambda dk, dv: 1.0)),
    Mistake("divided the scores by d_k instead of sqrt(d_k)",
            "The scale is 1/sqrt(d_k): it makes Var(q.k) equal 1, dividing by d_k shrinks it to 1/d_k.",
            _sdpa_variant(scale_of=lambda dk, dv: 1 / dk)),
    Mistake("scaled by the value dimension instead of the key dimension",
            "Use d_k = q.shape[-1] (= k.shape[-1]) in the scale, not v.shape[-1].",
            _sdpa_variant(scale_of=lambda dk, dv: 1 / math.sqrt(dv))),
    Mistake("took the softmax over the wrong axis (over queries)",
            "Each query's weights must sum to 1 over the keys: softmax(dim=-1), not dim=-2.",
            _sdpa_variant(dim=-2)),
    Mistake("flipped the mask: True should mean 'may attend'",
            "With a bool mask, fill the scores with -inf where the mask is False (`~mask`), as torch does; "
            "a float mask is added to the scores.",
            _sdpa_variant(flip=True)),
    Mistake("masked the weights after the softmax",
            "Put -inf into the scores before the softmax, so that each row is renormalised over the keys it may "
            "see; zeroing weights afterwards leaves rows that no longer sum to 1.",
            _sdpa_variant(mask_after=True)),
    Mistake("let rows whose keys are all masked become NaN",
            "softmax over a row of -inf is 0/0 = NaN. Find such rows (their max score is -inf), give them "
            "weights 0, and make sure no NaN reaches the output.",
            _sdpa_variant(naive_softmax=True)),
    Mistake("used the wrong triangle for the causal mask",
            "Query i may see keys j <= i: keep the lower triangle (torch.tril), block the upper one.",
            _sdpa_variant(upper_causal=True)),
    Mistake("filled the blocked scores with 0 instead of -inf",
            "exp(0) = 1: a score of 0 still gets weight. Blocked scores must be -inf before the softmax "
            "(torch.where(mask, scores, float('-inf'))), so that their weight is exactly 0.",
            _sdpa_variant(mask_fill=0.0)),
    Mistake("blocked the diagonal too: under your causal mask a query may not see itself",
            "Query i may see keys j <= i, its own position included: keep torch.ones(L, L).tril() "
            "(diagonal 0), not tril(-1).", _sdpa_variant(diagonal_blocked=True)),
]


def _sdpa_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    cases = [
        dict(q=randn(gen, 2, 5, 8), k=randn(gen, 2, 5, 8), v=randn(gen, 2, 5, 8)),
        dict(q=randn(gen, 2, 3, 4, 16), k=randn(gen, 2, 3, 6, 16), v=randn(gen, 2, 3, 6, 5)),
        dict(q=randn(gen, 3, 6, 8), k=randn(gen, 3, 6, 8), v=randn(gen, 3, 6, 8), causal=True),
    ]
    pad = torch.ones(2, 1, 7, dtype=torch.bool)
    pad[0, :, 5:] = False
    pad[1, :, 3:] = False
    cases.append(dict(q=randn(gen, 2, 4, 8), k=randn(gen, 2, 7, 8), v=randn(gen, 2, 7, 8), mask=pad))
    additive = torch.zeros(5, 5)
    additive[:, 0] = -2.0
    additive[2:, 4] = float("-inf")
    cases.append(dict(q=randn(gen, 5, 8), k=randn(gen, 5, 8), v=randn(gen, 5, 3), mask=additive))
    blocked_row = torch.ones(4, 4, dtype=torch.bool)
    blocked_row[2] = False  # query 2 may see no key at all: its output row must be zeros, not NaN
    cases.append(dict(q=randn(gen, 4, 8), k=randn(gen, 4, 8), v=randn(gen, 4, 8), mask=blocked_row))
    if graded:
        dead = torch.rand(2, 6, 6, generator=gen) > 0.4
        dead[:, 1] = False  # a query that may see no key at all
        cases += [
            dict(q=randn(gen, 2, 6, 4), k=randn(gen, 2, 6, 4), v=randn(gen, 2, 6, 4), mask=dead),
            dict(q=randn(gen, 2, 2, 2, 5, 6), k=randn(gen, 2, 2, 2, 5, 6), v=randn(gen, 2, 2, 2, 5, 6),
                 causal=True, mask=torch.rand(5, 5, generator=gen) > 0.3),
            dict(q=randn(gen, 1, 9, 32) * 3, k=randn(gen, 1, 11, 32) * 3, v=randn(gen, 1, 11, 7)),
        ]
        for case in cases:
            for key in ("q", "k", "v"):
                case[key] = case[key].to(dt)
            if "mask" in case and case["mask"].is_floating_point():
                case["mask"] = case["mask"].to(dt)
    return cases


@exercise_check
def sdpa(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `scaled_dot_product_attention(q, k, v, mask=None, causal=False)` against the reference."""
    dt = torch.float64 if graded else torch.float32
    check_function(fn, attention.scaled_dot_product_attention, _sdpa_cases(seed, graded),
                   name="scaled_dot_product_attention", mistakes=SDPA_MISTAKES, forbidden=SDPA_BUILTINS,
                   **tolerance(dt))


# ------------------------------------------------------------------------------ score variance


@exercise_check
def score_variance(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `score_variance(d_k, n_samples, scaled, seed)`: a Monte Carlo estimate of Var(q.k) = d_k.

    The truth is the closed form: Var(q.k) = d_k for q, k with independent N(0, 1) entries, and 1 after
    dividing by sqrt(d_k). The sample variance of n draws has a relative standard error of about
    sqrt(2/n), so the tolerance is five of those.
    """
    dims = [4, 64, 256] if graded else [16, 128]
    n = 20_000
    tolerance = 5 * math.sqrt(2 / n)
    for d_k in dims:
        for scaled in (False, True):
            truth = 1.0 if scaled else float(d_k)
            got = _call_score_variance(fn, d_k, n, scaled, seed)
            if abs(got - math.sqrt(truth)) < tolerance * math.sqrt(truth) and abs(got - truth) > tolerance * truth:
                raise CheckFailed("score_variance: you returned the standard deviation (about sqrt(d_k)), not the "
                                  "variance.\n  Use .var() (or .std() ** 2) of the dot products.")
            if scaled is False and d_k > 4 and abs(got - 1.0) < tolerance:
                raise CheckFailed("score_variance: with scaled=False you got about 1: you divided by sqrt(d_k) "
                                  "when you should not have.")
            if scaled and abs(got - d_k) < tolerance * d_k and d_k > 4:
                raise CheckFailed("score_variance: with scaled=True you got about d_k: divide each dot product "
                                  "by sqrt(d_k) before taking the variance.")
            if scaled and abs(got * d_k - 1) < tolerance:
                raise CheckFailed("score_variance: with scaled=True you got about 1/d_k: you divided the dot "
                                  "products by d_k.\n  Divide by sqrt(d_k): the variance then shrinks by d_k, "
                                  "from d_k to 1.")
            if abs(got - truth) > tolerance * truth:
                raise CheckFailed(f"score_variance(d_k={d_k}, scaled={scaled}) = {got:.4g}, expected about "
                                  f"{truth:g} (within {100 * tolerance:.0f}%).\n  Draw q and k of shape "
                                  f"(n_samples, d_k) from N(0, 1), take (q * k).sum(-1), then its variance.")
    if graded:
        a = _call_score_variance(fn, 32, n, False, seed)
        b = _call_score_variance(fn, 32, n, False, seed + 1)
        if a == b or a == 32.0:
            raise CheckFailed("score_variance: the result does not depend on the random draws (different "
                              "seeds give the same value): estimate it by sampling, do not return d_k.")
    print(f"\u2714 score_variance: within {100 * tolerance:.0f}% of the closed form Var(q.k) = d_k "
          f"(and 1 when scaled) for d_k in {dims}.")


def _call_score_variance(fn, d_k, n, scaled, seed):
    got = call_learner("score_variance", fn, dict(d_k=d_k, n_samples=n, scaled=scaled, seed=seed),
                f"d_k={d_k}, n_samples={n}, scaled={scaled}")
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float)):
        raise CheckFailed(f"score_variance should return a float, got {type(got).__name__}")
    return float(got)


# ----------------------------------------------------------------------------- multi-head attention


class _WrongMultiHead(attention.MultiHeadAttention):
    """The reference module with one known mistake in its forward pass (for naming the learner's)."""

    def __init__(self, dim: int, num_heads: int, mistake: str):
        super().__init__(dim, num_heads)
        self.mistake = mistake

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h, dh = self.num_heads, c // self.num_heads
        qkv = self.qkv(x)
        if self.mistake == "interleaved":
            q, k, v = qkv.reshape(b, n, h, 3, dh).permute(3, 0, 2, 1, 4)
        elif self.mistake == "no_permute":
            q, k, v = (t.reshape(b, h, n, dh) for t in qkv.chunk(3, dim=-1))
        else:
            q, k, v = qkv.reshape(b, n, 3, h, dh).permute(2, 0, 3, 1, 4)
        scale = c ** -0.5 if self.mistake == "full_dim_scale" else dh ** -0.5
        out = attention.scaled_dot_product_attention(q, k, v, mask=mask, scale=scale)
        out = out.reshape(b, n, c) if self.mistake == "merge_no_permute" else out.transpose(1, 2).reshape(b, n, c)
        return out if self.mistake == "no_proj" else self.proj(out)


MHA_MISTAKES = [
    ("reshaped q, k, v to (B, H, N, head_dim) without a permute", "no_permute",
     "A (B, N, dim) tensor must be viewed as (B, N, H, head_dim) and then transposed to (B, H, N, head_dim); "
     "reshaping straight to (B, H, N, head_dim) mixes tokens and channels."),
    ("merged the heads back without moving the head axis", "merge_no_permute",
     "Turn (B, H, N, head_dim) into (B, N, H, head_dim) with .transpose(1, 2) before reshaping to (B, N, dim)."),
    ("split the fused qkv output per head first ((B, N, H, 3, head_dim))", "interleaved",
     "timm's layout is (B, N, 3, H, head_dim): the first dim outputs of qkv are all of q, then all of k, "
     "then all of v. Reshape to (B, N, 3, H, head_dim) and permute to (3, B, H, N, head_dim)."),
    ("scaled by 1/sqrt(dim) instead of 1/sqrt(head_dim)", "full_dim_scale",
     "Each head attends with vectors of size head_dim = dim // num_heads: the scale is head_dim ** -0.5."),
    ("forgot the output projection", "no_proj",
     "After merging the heads, apply self.proj (the W_O of the equations)."),
]


def _mha_inputs(seed: int, dim: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    pad = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    pad[1, ..., 4:] = False
    inputs = [dict(x=randn(gen, 2, 5, dim, dtype=dt)), dict(x=randn(gen, 2, 6, dim, dtype=dt), mask=pad)]
    if graded:
        causal = torch.ones(7, 7, dtype=torch.bool).tril()
        inputs += [dict(x=randn(gen, 1, 7, dim, dtype=dt), mask=causal), dict(x=randn(gen, 3, 1, dim, dtype=dt))]
    return inputs


@exercise_check
def multi_head(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `MultiHeadAttention(dim, num_heads, qkv_bias=True)` with the reference's weights."""
    dims = [(24, 3), (32, 8)] if graded else [(16, 4)]
    for dim, heads in dims:
        torch.manual_seed(seed)
        dt = torch.float64 if graded else torch.float32
        reference = attention.MultiHeadAttention(dim, heads).to(dt)
        mistakes = [Mistake(label, hint, _WrongMultiHead(dim, heads, key).to(dt)) for label, key, hint in MHA_MISTAKES]
        check_module(lambda: cls(dim, heads).to(dt), reference, _mha_inputs(seed, dim, graded),
                     name=f"MultiHeadAttention(dim={dim}, num_heads={heads})", mistakes=mistakes,
                     forbidden=MHA_BUILTINS, **tolerance(dt))


# -------------------------------------------------------------------------------- additive attention


class _WrongAdditive(attention.AdditiveAttention):
    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int, mistake: str):
        super().__init__(query_dim, key_dim, hidden_dim)
        self.mistake = mistake

    def forward(self, q, k, v, mask=None):
        features = self.w_q(q).unsqueeze(-2) + self.w_k(k).unsqueeze(-3)
        if self.mistake in ("relu", "sigmoid"):
            features = getattr(torch, self.mistake)(features)
        elif self.mistake != "no_tanh":
            features = torch.tanh(features)
        scores = self.v(features).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = _safe_softmax(scores, -2 if self.mistake == "wrong_axis" else -1)
        return weights @ v, weights


ADDITIVE_MISTAKES = [
    ("took the softmax over the queries instead of the keys", "wrong_axis",
     "scores has shape (..., Lq, Lk): each query's weights sum to 1 over the keys, softmax(dim=-1)."),
    ("left out the tanh", "no_tanh",
     "The score is v^T tanh(W_q q + W_k k): without the tanh it collapses to a sum of two linear terms."),
    ("used ReLU instead of tanh", "relu", "Bahdanau's score is v^T tanh(W_q q + W_k k): torch.tanh."),
    ("used a sigmoid instead of tanh", "sigmoid", "Bahdanau's score is v^T tanh(W_q q + W_k k): torch.tanh."),
]


@exercise_check
def additive(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `AdditiveAttention(query_dim, key_dim, hidden_dim)` with the reference's weights."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    qd, kd, hd = (6, 10, 12) if graded else (8, 8, 16)
    torch.manual_seed(seed)
    reference = attention.AdditiveAttention(qd, kd, hd).to(dt)
    mistakes = [Mistake(label, hint, _WrongAdditive(qd, kd, hd, key).to(dt)) for label, key, hint in ADDITIVE_MISTAKES]
    pad = torch.ones(2, 1, 5, dtype=torch.bool)
    pad[0, :, 3:] = False
    inputs = [dict(q=randn(gen, 2, 4, qd, dtype=dt), k=randn(gen, 2, 5, kd, dtype=dt), v=randn(gen, 2, 5, 3, dtype=dt)),
              dict(q=randn(gen, 2, 4, qd, dtype=dt), k=randn(gen, 2, 5, kd, dtype=dt), v=randn(gen, 2, 5, 3, dtype=dt),
                   mask=pad)]
    if graded:
        inputs.append(dict(q=randn(gen, 3, 2, 1, qd, dtype=dt), k=randn(gen, 3, 2, 7, kd, dtype=dt),
                           v=randn(gen, 3, 2, 7, 4, dtype=dt)))
    check_module(lambda: cls(qd, kd, hd).to(dt), reference, inputs, name="AdditiveAttention", mistakes=mistakes,
                 forbidden=SDPA_BUILTINS | {attention.AdditiveAttention: "vitlab.attention.AdditiveAttention"},
                 **tolerance(dt))


# ---------------------------------------------------------------------------------- linear attention


def _linear_variant(phi=attention.elu_feature_map, normalise=True, causal_sums=True, sum_axis=-2):
    def wrong(q, k, v, causal=False, eps=1e-6):
        fq, fk = phi(q), phi(k)
        if sum_axis != -2:  # the normaliser's running sum taken along another axis than the sequence
            z = fk.cumsum(sum_axis) if causal else fk.sum(sum_axis, keepdim=True)
            num = ((fq @ fk.transpose(-2, -1)).tril() if causal else fq @ fk.transpose(-2, -1)) @ v
            return num / ((fq * z).sum(-1, keepdim=True) + eps)
        if causal and causal_sums:
            weights = (fq @ fk.transpose(-2, -1)).tril()
        else:
            weights = fq @ fk.transpose(-2, -1)
        if normalise:
            weights = weights / (weights.sum(-1, keepdim=True) + eps)
        return weights @ v

    return wrong


LINEAR_MISTAKES = [
    Mistake("summed the normaliser's phi(k_j) over the features instead of over the keys",
            "z_i = sum_{j <= i} phi(k_j) runs along the sequence: torch.cumsum(phi_k, dim=-2) (dim=-2 for the "
            "full sum too), a vector of Dk features per query.", _linear_variant(sum_axis=-1)),
    Mistake("forgot the normaliser phi(q)^T sum_j phi(k_j)",
            "Without it the weights do not sum to 1 and the output grows with the sequence length: divide "
            "phi(q) (phi(K)^T V) by phi(q) . (sum_j phi(k_j)).", _linear_variant(normalise=False)),
    Mistake("used elu(x) as the feature map without the + 1",
            "phi(x) = elu(x) + 1 keeps every feature positive, so every weight is positive.",
            _linear_variant(phi=F.elu)),
    Mistake("used relu as the feature map", "The feature map of this exercise is phi(x) = elu(x) + 1.",
            _linear_variant(phi=F.relu)),
    Mistake("let causal queries see the future",
            "With causal=True query i may only use keys j <= i: use running (prefix) sums, torch.cumsum along "
            "the sequence, instead of sums over every key.", _linear_variant(causal_sums=False)),
]
LINEAR_BUILTINS = {attention.linear_attention: "vitlab.attention.linear_attention"}


@exercise_check
def linear(fn, *, seed: int = 0, graded: bool = False, causal: bool = False) -> None:
    """Check `linear_attention(q, k, v, causal=False, eps=1e-6)` (phi = elu + 1, with its normaliser)."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    shapes = [((2, 6, 8), (2, 6, 5)), ((2, 3, 9, 4), (2, 3, 9, 4))]
    if graded:
        shapes += [((1, 2, 2, 17, 6), (1, 2, 2, 17, 3)), ((33, 16), (33, 16))]
    cases = [dict(q=randn(gen, *qs, dtype=dt), k=randn(gen, *qs, dtype=dt), v=randn(gen, *vs, dtype=dt),
                  causal=causal) for qs, vs in shapes]
    check_function(fn, attention.linear_attention, cases, name=f"linear_attention(causal={causal})",
                   mistakes=LINEAR_MISTAKES, forbidden=LINEAR_BUILTINS | SDPA_BUILTINS, **tolerance(dt))

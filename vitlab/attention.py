"""Attention: scaled dot-product, multi-head, additive, linear and local attention, and its memory cost.

Masks follow torch's `F.scaled_dot_product_attention`: a bool mask is True where a query may attend to a
key; a float mask is added to the scores (-inf blocks). Masks broadcast to (..., Lq, Lk). `causal=True`
lets query i see key j iff j <= i (top-left aligned). A query whose keys are all blocked gets zeros, and
finite gradients, instead of NaN.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _with_causal(mask: Tensor | None, causal: bool, lq: int, lk: int, device: torch.device) -> Tensor | None:
    """`mask` with the causal constraint folded in: bool (True = attend), float (added), or None."""
    if not causal:
        return mask
    tril = torch.ones(lq, lk, dtype=torch.bool, device=device).tril()
    if mask is None:
        return tril
    if mask.dtype == torch.bool:
        return mask & tril
    return torch.where(tril, mask, float("-inf"))


def _masked_softmax(scores: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Softmax over the last dim of scores (..., Lq, Lk) after masking; fully blocked rows give zeros."""
    mask = _with_causal(mask, causal, scores.shape[-2], scores.shape[-1], scores.device)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = torch.where(mask, scores, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    dead = scores.amax(dim=-1, keepdim=True) == float("-inf")
    weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1)
    return weights.masked_fill(dead, 0.0)


def attention_weights(
    q: Tensor, k: Tensor, mask: Tensor | None = None, causal: bool = False, scale: float | None = None
) -> Tensor:
    """softmax(q k^T * scale) for q (..., Lq, Dk), k (..., Lk, Dk) -> (..., Lq, Lk); scale defaults to 1/sqrt(Dk).

    Each row sums to 1, or is all zeros when the mask blocks every key of that query.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _masked_softmax(q @ k.transpose(-2, -1) * scale, mask, causal)


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False, scale: float | None = None
) -> Tensor:
    """softmax(q k^T * scale) v for q (..., Lq, Dk), k (..., Lk, Dk), v (..., Lk, Dv) -> (..., Lq, Dv).

    The explicit math, for reading and for checking; `MultiHeadAttention` calls torch's fused kernel.
    """
    return attention_weights(q, k, mask, causal, scale) @ v


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, dropout_p: float) -> Tensor:
    """`F.scaled_dot_product_attention` with our mask rules, zeros for fully blocked rows on every backend.

    q (B, H, Lq, Dk), k (B, H, Lk, Dk), v (B, H, Lk, Dv) -> (B, H, Lq, Dv).
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    mask = _with_causal(mask, causal, q.shape[-2], k.shape[-2], q.device)
    if mask.dtype == torch.bool:
        dead = ~mask.any(dim=-1, keepdim=True)
        mask = mask | dead
    else:
        dead = ~(mask > float("-inf")).any(dim=-1, keepdim=True)
        mask = mask.masked_fill(dead, 0.0).to(q.dtype)  # some torch versions reject a float32 mask with bf16 q
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out.masked_fill(dead, 0.0)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with timm's layout: a fused `qkv` Linear and an output `proj` Linear.

    state_dict keys: qkv.weight, qkv.bias (if qkv_bias), proj.weight, proj.bias.
    """

    def __init__(
        self, dim: int, num_heads: int = 8, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, causal: bool = False, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, N, dim) -> (B, N, dim), and the weights (B, H, N, N) if return_attention.

        mask broadcasts to (B, H, N, N); a key padding mask `keep` (B, N) is passed as keep[:, None, None, :].
        """
        b, n, dim = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if return_attention:
            weights = attention_weights(q, k, mask, causal)
            out = self.attn_drop(weights) @ v
        else:
            out = _fused_attention(q, k, v, mask, causal, self.attn_drop.p if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, dim)))
        return (out, weights) if return_attention else out

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy of `mha` whose forward(x) equals mha(x, x, x, need_weights=False)[0] with batch_first=True.

        torch's key_padding_mask kpm (True = ignore) becomes mask=~kpm[:, None, None, :] (True = attend).
        """
        if mha.in_proj_weight is None or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("only plain self-attention (one in_proj, no bias_k/bias_v, no add_zero_attn) is copied")
        weight = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, qkv_bias=mha.in_proj_bias is not None, attn_drop=mha.dropout)
        new = new.to(device=weight.device, dtype=weight.dtype).train(mha.training)
        with torch.no_grad():
            new.qkv.weight.copy_(mha.in_proj_weight)
            if mha.in_proj_bias is not None:
                new.qkv.bias.copy_(mha.in_proj_bias)
            new.proj.weight.copy_(weight)
            if mha.out_proj.bias is None:
                new.proj.bias.zero_()
            else:
                new.proj.bias.copy_(mha.out_proj.bias)
        return new


class AdditiveAttention(nn.Module):
    """Bahdanau's additive attention: score_ij = v^T tanh(W_q q_i + W_k k_j)."""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_k = nn.Linear(key_dim, hidden_dim, bias=True)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q (..., Lq, Dq), k (..., Lk, Dk), v (..., Lk, Dv) -> out (..., Lq, Dv), weights (..., Lq, Lk)."""
        hidden = torch.tanh(self.w_q(q).unsqueeze(-2) + self.w_k(k).unsqueeze(-3))  # (..., Lq, Lk, hidden)
        weights = _masked_softmax(self.v(hidden).squeeze(-1), mask)
        return weights @ v, weights


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1, a positive feature map (any shape)."""
    return F.elu(x) + 1


def linear_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, eps: float = 1e-6) -> Tensor:
    """Linear attention, O(L) in sequence length: q (..., Lq, Dk), k (..., Lk, Dk), v (..., Lk, Dv) -> (..., Lq, Dv).

    out_i = phi(q_i)^T sum_j phi(k_j) v_j^T / (phi(q_i)^T sum_j phi(k_j) + eps), with phi = elu + 1;
    with causal=True (needs Lq == Lk) the sums run over j <= i, as running prefix sums.
    """
    phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
    if not causal:
        kv = phi_k.transpose(-2, -1) @ v  # (..., Dk, Dv)
        z = phi_k.sum(dim=-2).unsqueeze(-1)  # (..., Dk, 1)
        return (phi_q @ kv) / (phi_q @ z + eps)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal linear attention needs Lq == Lk, got {q.shape[-2]} and {k.shape[-2]}")
    kv = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)  # (..., L, Dk, Dv)
    z = torch.cumsum(phi_k, dim=-2)  # (..., L, Dk)
    num = (phi_q.unsqueeze(-2) @ kv).squeeze(-2)  # (..., L, Dv)
    den = (phi_q * z).sum(dim=-1, keepdim=True)  # (..., L, 1)
    return num / (den + eps)


def band_mask(n: int, window: int, device: torch.device | str | None = None) -> Tensor:
    """Bool (n, n) mask, True where |i - j| <= window."""
    idx = torch.arange(n, device=device)
    return (idx[:, None] - idx[None, :]).abs() <= window


def local_attention(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Self-attention where query i sees keys |i - j| <= window: q, k (..., L, Dk), v (..., L, Dv) -> (..., L, Dv).

    Equals scaled_dot_product_attention(q, k, v, band_mask(L, window)), but works on blocks of `window` queries,
    each against its 3 * window neighbouring keys, so the scores take O(L * window) memory instead of O(L^2).
    """
    n = q.shape[-2]
    if k.shape[-2] != n or v.shape[-2] != n:
        raise ValueError("local attention needs q, k and v of the same length")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    window = min(window, max(n - 1, 0))  # a wider band sees every key anyway
    block = max(window, 1)
    n_blocks = -(-n // block)
    tail = n_blocks * block - n
    span = block + 2 * window  # keys seen by one block: [start - window, start + block - 1 + window]
    q_blocks = F.pad(q, (0, 0, 0, tail)).unflatten(-2, (n_blocks, block))  # (..., nb, block, Dk)
    k_blocks = F.pad(k, (0, 0, window, window + tail)).unfold(-2, span, block).transpose(-2, -1)  # (..., nb, span, Dk)
    v_blocks = F.pad(v, (0, 0, window, window + tail)).unfold(-2, span, block).transpose(-2, -1)  # (..., nb, span, Dv)
    row = torch.arange(block, device=q.device)[:, None]  # query offset a in its block
    col = torch.arange(span, device=q.device)[None, :]  # key offset c: key j = start - window + c
    start = (torch.arange(n_blocks, device=q.device) * block)[:, None, None]
    key = start - window + col
    mask = (col >= row) & (col <= row + 2 * window) & (key >= 0) & (key < n)  # (nb, block, span)
    out = scaled_dot_product_attention(q_blocks, k_blocks, v_blocks, mask)  # (..., nb, block, Dv)
    return out.flatten(-3, -2)[..., :n, :]


def attention_memory_bytes(n_tokens: int, num_heads: int = 1, batch: int = 1, bytes_per_value: int = 4) -> int:
    """Bytes of the (batch, num_heads, n_tokens, n_tokens) score matrix."""
    return batch * num_heads * n_tokens * n_tokens * bytes_per_value


def score_variance(d_k: int, n_samples: int = 20000, scaled: bool = False, seed: int = 0) -> float:
    """Monte Carlo estimate of Var(q . k) (or of Var(q . k / sqrt(d_k)) when `scaled`), q, k ~ N(0, I_{d_k})."""
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randn(n_samples, d_k, generator=gen) * torch.randn(n_samples, d_k, generator=gen)).sum(-1)
    return (scores / math.sqrt(d_k) if scaled else scores).var().item()

"""Position encodings: sin-cos tables, a learned table, relative position bias, 2-D RoPE and resampling.

Conventions, each the one of the library named:
- `sincos_1d` is MAE's: frequency omega_i = 1 / T^(2i/D) for i = 0 .. D/2 - 1, and the table is the two
  halves [sin(p omega) | cos(p omega)] (not Vaswani's interleaved sin, cos, sin, cos, ...).
- `sincos_2d` is MAE's `get_2d_sincos_pos_embed`: tokens row-major over an (h, w) grid, the first D/2
  channels encode the column, the last D/2 the row.
- `RelativePositionBias` is Swin's (timm keys `relative_position_bias_table`, index buffer not saved).
- `apply_rope` rotates adjacent channel pairs (x_2i, x_2i+1), as RoFormer and timm's `rot`; with k position
  axes (2 for images) the channels split into k equal blocks, block a rotated by axis a (axial RoPE).
- `resample_pos_embed` is timm's `resample_abs_pos_embed`: bicubic, align_corners=False, antialias=True
  (which also switches the cubic kernel from a = -0.75 to PIL's a = -0.5), prefix rows untouched.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _inverse_frequencies(dim: int, temperature: float) -> Tensor:
    """omega_i = 1 / T^(2i/dim) for i = 0 .. dim/2 - 1, float64 on the CPU."""
    return 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))


# --------------------------------------------------------------------------------------- sin-cos


def sincos_1d(n: int | Tensor, dim: int, temperature: float = 10000.0, *, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """(n, dim) table [sin(p omega) | cos(p omega)], omega_i = T^(-2i/dim), i < dim/2; n: a count or positions (n,)."""
    if dim % 2:
        raise ValueError(f"a sin-cos table needs an even dim, got {dim}")
    pos = torch.arange(n) if isinstance(n, int) else n.detach().cpu().reshape(-1)
    angles = pos.to(torch.float64)[:, None] * _inverse_frequencies(dim, temperature)[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).to(device=device, dtype=dtype)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0, *, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """(h*w, dim) table, row-major tokens: [sincos_1d(column, dim/2) | sincos_1d(row, dim/2)], as MAE."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos table needs dim divisible by 4, got {dim}")
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    table = torch.cat([sincos_1d(cols, dim // 2, temperature, dtype=torch.float64),
                       sincos_1d(rows, dim // 2, temperature, dtype=torch.float64)], dim=1)
    return table.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------ learned


class LearnedPositionEmbedding(nn.Module):
    """A learned table pos_embed (1, num_prefix_tokens + num_patches, D), timm's init: trunc_normal std 0.02.

    Row 0 (with one prefix token) belongs to the CLS token, the other rows to the patches, row-major.
    """

    def __init__(self, num_patches: int, embed_dim: int, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.empty(1, num_prefix_tokens + num_patches, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, prefix + N, D) -> x + pos_embed."""
        return x + self.pos_embed


# ------------------------------------------------------------------------------- relative position


def relative_position_index(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Swin's (h*w, h*w) long table: token pair (i, j) -> row of the bias table for their 2-D offset.

    offset (dr, dc) = position_i - position_j, shifted to dr + h - 1 in [0, 2h-2] and dc + w - 1 in [0, 2w-2];
    index = (dr + h - 1) * (2w - 1) + (dc + w - 1), in [0, (2h-1)(2w-1)).
    """
    pos = grid_positions(h, w, device=device)
    offsets = pos[:, None, :] - pos[None, :, :]  # (N, N, 2)
    return (offsets[..., 0] + h - 1) * (2 * w - 1) + (offsets[..., 1] + w - 1)


class RelativePositionBias(nn.Module):
    """Swin's learned relative position bias for a window of h x w tokens: forward() -> (heads, N, N), N = h*w.

    One learned scalar per head and 2-D offset, `relative_position_bias_table` ((2h-1)(2w-1), heads),
    trunc_normal std 0.02, looked up through the `relative_position_index` buffer (not in the state_dict).
    """

    def __init__(self, window_size: int | tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.window_size = _pair(window_size)
        h, w = self.window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * h - 1) * (2 * w - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(h, w), persistent=False)

    def forward(self) -> Tensor:
        """The bias to add to the attention scores: (heads, N, N)."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)].reshape(n, n, -1)
        return bias.permute(2, 0, 1)


# ----------------------------------------------------------------------------------------------- RoPE


def grid_positions(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """(h*w, 2) long (row, column) of each token of an h x w grid, row-major."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def rope_angles(positions: Tensor, dim: int, temperature: float = 10000.0, *,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Rotation angles (N, dim/2) for positions (N,) or (N, k): pair i of block a turns by p_a / T^(2i/(dim/k)).

    With k axes the dim channels form k blocks of dim/k; block a holds dim/(2k) pairs driven by axis a.
    """
    pos = positions[:, None] if positions.dim() == 1 else positions
    axes = pos.shape[-1]
    if dim % (2 * axes):
        raise ValueError(f"RoPE over {axes} axes needs dim divisible by {2 * axes}, got {dim}")
    freqs = _inverse_frequencies(dim // axes, temperature).to(device=pos.device, dtype=dtype)
    return torch.cat([pos[:, a, None].to(dtype) * freqs[None, :] for a in range(axes)], dim=1)


def apply_rope(x: Tensor, positions: Tensor, temperature: float = 10000.0) -> Tensor:
    """Rotate each adjacent channel pair of x (..., N, D) by its position's angle: RoPE for q or k.

    positions (N,) or (N, k), e.g. `grid_positions(h, w)`; returns x's shape and dtype. Afterwards
    <apply_rope(q, m), apply_rope(k, n)> depends on the positions only through m - n.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    angles = rope_angles(positions.to(x.device), x.shape[-1], temperature, dtype=compute)  # (N, D/2)
    cos, sin = angles.cos(), angles.sin()
    pairs = x.to(compute).unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


# ----------------------------------------------------------------------------------------- resampling


def resample_pos_embed(pos_embed: Tensor, new_grid: int | tuple[int, int], num_prefix_tokens: int = 1,
                       old_grid: int | tuple[int, int] | None = None, interpolation: str = "bicubic",
                       antialias: bool = True) -> Tensor:
    """pos_embed (B, prefix + gh*gw, D) -> (B, prefix + nh*nw, D): the grid rows resampled in 2-D, prefix kept.

    old_grid None means square; interpolation "bicubic" or "bilinear". Numerics of timm's
    resample_abs_pos_embed (computed in float32 for half types; float64 stays float64).
    """
    b, n, dim = pos_embed.shape
    if old_grid is None:
        side = math.isqrt(n - num_prefix_tokens)
        if side * side != n - num_prefix_tokens:
            raise ValueError(f"{n - num_prefix_tokens} grid rows are not a square: pass old_grid=(rows, cols)")
        old_grid = side
    (gh, gw), (nh, nw) = _pair(old_grid), _pair(new_grid)
    if gh * gw + num_prefix_tokens != n:
        raise ValueError(f"pos_embed has {n} rows, not {num_prefix_tokens} + {gh}x{gw}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    compute = pos_embed.dtype if pos_embed.dtype == torch.float64 else torch.float32
    grid = grid.to(compute).reshape(b, gh, gw, dim).permute(0, 3, 1, 2)  # (B, D, gh, gw)
    grid = F.interpolate(grid, size=(nh, nw), mode=interpolation, align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(b, nh * nw, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)

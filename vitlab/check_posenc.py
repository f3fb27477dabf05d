"""Checks for the exercises of 03_positions: each compares the learner's code with `vitlab.posenc`.

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds float64,
other sizes and temperatures, grids of one row and one column, extra prefix tokens and downsampling.
Learner signatures (as the reference's):
- sincos_1d(n, dim, temperature=10000.0) -> (n, dim): [sin | cos] halves, omega_i = 1/T^(2i/dim);
- sincos_2d(h, w, dim, temperature=10000.0) -> (h*w, dim): [column table | row table] (MAE), each dim/2 wide;
  vitlab.posenc.sincos_1d may be used here;
- relative_position_index(h, w) -> (h*w, h*w) long, Swin's;
- RelativePositionBias(window_size, num_heads) with relative_position_bias_table and a non-persistent
  relative_position_index buffer; forward() -> (heads, N, N);
- apply_rope(x, positions, temperature=10000.0): positions (N,) or (N, 2), adjacent channel pairs rotated;
- resample_pos_embed(pos_embed, new_grid, num_prefix_tokens=1, old_grid=None): bicubic, antialias=True.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab import posenc
from vitlab.check import CheckFailed, Mistake, PASS, call_learner, check_function, check_module, randn

from vitlab.check import exercise_check
TABLE_TOL = {"atol": 1e-4, "rtol": 1e-4}  # tables may be computed in float32 at any precision of the angle
ROPE_TOL = {"atol": 2e-5, "rtol": 1e-4}


def _as_float32(fn: Callable) -> Callable:
    """The learner's table function, its result cast to float32 (a float64 table is right too)."""
    def table(**kwargs):
        out = fn(**kwargs)
        return out.float() if isinstance(out, Tensor) and out.is_floating_point() else out
    return table


# -------------------------------------------------------------------------------------------- sin-cos


def _sincos(pos: Tensor, omega: Tensor, layout: str = "halves") -> Tensor:
    angles = pos.double()[:, None] * omega.double()[None, :]
    if layout == "interleaved":
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).float()
    first, second = (angles.cos(), angles.sin()) if layout == "swapped" else (angles.sin(), angles.cos())
    return torch.cat([first, second], dim=1).float()


def _omega(dim: int, temperature: float, exponent: str = "2i/D") -> Tensor:
    i = torch.arange(dim // 2, dtype=torch.float64)
    if exponent == "i/D":
        return temperature ** (-i / dim)
    if exponent == "linspace":
        return temperature ** -torch.linspace(0, 1, dim // 2, dtype=torch.float64)
    if exponent == "multiply":
        return temperature ** (2 * i / dim)
    return temperature ** (-2 * i / dim)


def _one_frequency_per_channel(n: int, dim: int, temperature: float = 10000.0) -> Tensor:
    angles = torch.arange(n, dtype=torch.float64)[:, None] * temperature ** (-torch.arange(dim) / dim)[None, :]
    return torch.cat([angles[:, : dim // 2].sin(), angles[:, dim // 2:].cos()], dim=1).float()


SINCOS_1D_MISTAKES = [
    Mistake("let i run over all D channels (0..D-1) instead of 0..D/2-1",
            "There are D/2 frequencies, one per (sin, cos) pair: omega_i = 1/T^(2i/D) for i = 0 .. D/2 - 1, and "
            "each is used twice, once in the sin half and once in the cos half.", _one_frequency_per_channel),
    Mistake("used the exponent i/D instead of 2i/D",
            "omega_i = 1/T^(2i/D): with i/D the frequencies only reach 1/sqrt(T), half the range.",
            lambda n, dim, temperature=10000.0: _sincos(torch.arange(n), _omega(dim, temperature, "i/D"))),
    Mistake("swapped sin and cos",
            "The first D/2 columns are sin(p omega_i), the last D/2 are cos(p omega_i).",
            lambda n, dim, temperature=10000.0: _sincos(torch.arange(n), _omega(dim, temperature), "swapped")),
    Mistake("interleaved sin and cos (Vaswani's sin, cos, sin, cos, ... layout)",
            "This course follows MAE and timm: two halves, [sin(p omega) | cos(p omega)], joined with torch.cat.",
            lambda n, dim, temperature=10000.0: _sincos(torch.arange(n), _omega(dim, temperature), "interleaved")),
    Mistake("multiplied the position by T^(2i/D) instead of dividing",
            "The angle is p / T^(2i/D) = p * omega_i with omega_i = T^(-2i/D) <= 1.",
            lambda n, dim, temperature=10000.0: _sincos(torch.arange(n), _omega(dim, temperature, "multiply"))),
    Mistake("spread the exponents from 0 to 1 inclusive (torch.linspace)",
            "The exponents are 2i/D for i = 0 .. D/2 - 1: the last is (D - 2)/D, not 1. Use torch.arange(D // 2).",
            lambda n, dim, temperature=10000.0: _sincos(torch.arange(n), _omega(dim, temperature, "linspace"))),
    Mistake("counted the positions from 1", "Positions are 0, 1, ..., n - 1 (torch.arange(n)).",
            lambda n, dim, temperature=10000.0: _sincos(torch.arange(1, n + 1), _omega(dim, temperature))),
    Mistake("ignored the temperature argument", "Use `temperature` where you wrote 10000.",
            lambda n, dim, temperature=10000.0: _sincos(torch.arange(n), _omega(dim, 10000.0))),
]


@exercise_check
def sincos_1d(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `sincos_1d(n, dim, temperature=10000.0)` -> (n, dim) = [sin(p omega) | cos(p omega)]."""
    sizes = [(10, 16, 10000.0), (7, 6, 10000.0), (50, 64, 100.0)]
    if graded:
        sizes += [(1, 2, 10000.0), (33, 128, 10000.0), (20, 10, 500.0)]
    cases = [dict(n=n, dim=d, temperature=t) for n, d, t in sizes]
    check_function(_as_float32(fn), posenc.sincos_1d, cases, name="sincos_1d", mistakes=SINCOS_1D_MISTAKES,
                   forbidden={posenc.sincos_1d: "vitlab.posenc.sincos_1d", posenc.sincos_2d: "vitlab.posenc.sincos_2d"},
                   grad=False, **TABLE_TOL)


def _table_2d(h: int, w: int, dim: int, temperature: float, mistake: str) -> Tensor:
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    if mistake == "columns_major":
        rows, cols = torch.arange(h).repeat(w), torch.arange(w).repeat_interleave(h)
    half = lambda pos: posenc.sincos_1d(pos, dim // 2, temperature)  # noqa: E731
    if mistake == "rows_first":
        return torch.cat([half(rows), half(cols)], dim=1)
    if mistake == "flat_index":
        return posenc.sincos_1d(h * w, dim, temperature)
    if mistake == "wide_frequencies":
        omega = _omega(dim, temperature)[: dim // 4]
        return torch.cat([_sincos(cols, omega), _sincos(rows, omega)], dim=1)
    if mistake == "added":
        return posenc.sincos_1d(rows, dim, temperature) + posenc.sincos_1d(cols, dim, temperature)
    return torch.cat([half(cols), half(rows)], dim=1)


SINCOS_2D_MISTAKES = [
    Mistake("put the row table first and the column table second",
            "MAE's layout (the one of the course) is [column (x) table | row (y) table], each dim/2 wide.",
            lambda h, w, dim, temperature=10000.0: _table_2d(h, w, dim, temperature, "rows_first")),
    Mistake("ordered the tokens column by column",
            "Token k = row * w + col (row-major, as patchify): rows = arange(h).repeat_interleave(w), "
            "cols = arange(w).repeat(h).",
            lambda h, w, dim, temperature=10000.0: _table_2d(h, w, dim, temperature, "columns_major")),
    Mistake("used a 1-D table over the flattened index 0 .. h*w - 1",
            "That encodes the reading order, not the 2-D place: tokens above each other end up w positions apart. "
            "Encode the column and the row separately, dim/2 channels each.",
            lambda h, w, dim, temperature=10000.0: _table_2d(h, w, dim, temperature, "flat_index")),
    Mistake("used the frequencies of a dim-wide table in each dim/2 half",
            "Each axis gets its own 1-D table of width dim/2, so its frequencies are omega_i = 1/T^(2i/(dim/2)) "
            "for i = 0 .. dim/4 - 1: build it with sincos_1d(..., dim // 2).",
            lambda h, w, dim, temperature=10000.0: _table_2d(h, w, dim, temperature, "wide_frequencies")),
    Mistake("added a dim-wide row table to a dim-wide column table",
            "Concatenate instead: [sincos_1d(col, dim/2) | sincos_1d(row, dim/2)]. A sum mixes the two axes "
            "in every channel.", lambda h, w, dim, temperature=10000.0: _table_2d(h, w, dim, temperature, "added")),
]


@exercise_check
def sincos_2d(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `sincos_2d(h, w, dim, temperature=10000.0)` -> (h*w, dim), MAE's 2-D table."""
    sizes = [(3, 4, 8, 10000.0), (5, 2, 16, 10000.0), (4, 4, 32, 100.0)]
    if graded:
        sizes += [(1, 6, 8, 10000.0), (7, 3, 64, 1000.0), (14, 14, 16, 10000.0), (6, 1, 4, 10000.0)]
    cases = [dict(h=h, w=w, dim=d, temperature=t) for h, w, d, t in sizes]
    check_function(_as_float32(fn), posenc.sincos_2d, cases, name="sincos_2d", mistakes=SINCOS_2D_MISTAKES,
                   forbidden={posenc.sincos_2d: "vitlab.posenc.sincos_2d"}, grad=False, **TABLE_TOL)


# ------------------------------------------------------------------------------- relative position


def _index(h: int, w: int, mistake: str) -> Tensor:
    pos = posenc.grid_positions(h, w)
    off = pos[None, :, :] - pos[:, None, :] if mistake == "reversed" else pos[:, None, :] - pos[None, :, :]
    dr, dc = off[..., 0], off[..., 1]
    if mistake == "no_shift":
        return dr * (2 * w - 1) + dc
    if mistake == "flat":
        n = torch.arange(h * w)
        return n[:, None] - n[None, :] + h * w - 1
    if mistake == "no_multiply":
        return (dr + h - 1) + (dc + w - 1)
    row_stride = 2 * h - 1 if mistake == "height_stride" else 2 * w - 1
    return (dr + h - 1) * row_stride + (dc + w - 1)


INDEX_MISTAKES = [
    Mistake("forgot to shift the offsets by h - 1 and w - 1",
            "Offsets run from -(h-1) to h-1: add h - 1 (and w - 1) so that they start at 0, or the index is "
            "negative and Python indexing wraps around silently.", lambda h, w: _index(h, w, "no_shift")),
    Mistake("used the 1-D offset of the flattened index (i - j + N - 1, or a row stride of w)",
            "Tokens side by side and tokens one row apart then share offsets in a way that depends on the grid "
            "width, so the table means something else as soon as the grid changes. Use the 2-D offset (dr, dc).",
            lambda h, w: _index(h, w, "flat")),
    Mistake("added the shifted row and column offsets without multiplying",
            "(dr, dc) = (1, 0) and (0, 1) then share a bias. Give each row offset its own block of 2w - 1 "
            "column offsets: (dr + h - 1) * (2w - 1) + (dc + w - 1).", lambda h, w: _index(h, w, "no_multiply")),
    Mistake("multiplied the row offset by 2h - 1 instead of 2w - 1",
            "The column offset takes 2w - 1 values, so each row offset needs a block of 2w - 1 entries.",
            lambda h, w: _index(h, w, "height_stride")),
    Mistake("subtracted the other way round (position of key minus position of query)",
            "Swin's offset is position_i - position_j for query i and key j: coords[:, :, None] - coords[:, None, :].",
            lambda h, w: _index(h, w, "reversed")),
]


@exercise_check
def relative_position_index(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `relative_position_index(h, w)` -> (h*w, h*w) long: Swin's index into the bias table."""
    sizes = [(3, 2), (2, 3), (4, 4)] + ([(1, 4), (5, 1), (7, 7), (2, 6)] if graded else [])

    def learner(h, w):
        out = fn(h=h, w=w)
        if isinstance(out, Tensor) and out.dtype != torch.long:
            raise CheckFailed(f"relative_position_index should return a long (int64) tensor, to index the bias "
                              f"table; got {out.dtype}. Use .long() if you need to.")
        return out

    check_function(learner, posenc.relative_position_index, [dict(h=h, w=w) for h, w in sizes],
                   name="relative_position_index", mistakes=INDEX_MISTAKES, grad=False,
                   forbidden={posenc.relative_position_index: "vitlab.posenc.relative_position_index",
                              posenc.RelativePositionBias: "vitlab.posenc.RelativePositionBias"})


class _WrongBias(posenc.RelativePositionBias):
    def __init__(self, window_size: tuple[int, int], num_heads: int, mistake: str):
        super().__init__(window_size, num_heads)
        self.mistake = mistake

    def forward(self) -> Tensor:
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        if self.mistake == "no_permute":
            return bias.reshape(-1, n, n)
        return bias.reshape(n, n, -1).permute(2, 1, 0)


BIAS_MISTAKES = [
    ("reshaped the looked-up bias (N*N, heads) straight to (heads, N, N)", "no_permute",
     "The lookup gives (N*N, heads): reshape to (N, N, heads), then permute(2, 0, 1) to (heads, N, N)."),
    ("put the key axis before the query axis ((heads, key, query))", "transposed",
     "bias[h, i, j] belongs to query i and key j: permute(2, 0, 1), not permute(2, 1, 0)."),
]


@exercise_check
def relative_position_bias(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `RelativePositionBias(window_size, num_heads)` with the reference's bias table."""
    dt = torch.float64 if graded else torch.float32
    configs = [((2, 3), 2)] + ([((3, 3), 4), ((1, 4), 1)] if graded else [])
    for window, heads in configs:
        name = f"RelativePositionBias(window_size={window}, num_heads={heads})"
        module = call_learner(name, lambda args=(window, heads): cls(*args), {}, "construction")
        if "relative_position_index" in module.state_dict():
            raise CheckFailed(f"{name}: relative_position_index is in the state_dict. It is computed, not learned: "
                              "register it with self.register_buffer(..., persistent=False), as timm does.")
        torch.manual_seed(seed)
        reference = posenc.RelativePositionBias(window, heads).to(dt)
        with torch.no_grad():  # a table with a clear pattern makes mix-ups show
            reference.relative_position_bias_table.normal_()
        mistakes = [Mistake(label, hint, _WrongBias(window, heads, key).to(dt)) for label, key, hint in BIAS_MISTAKES]
        check_module(lambda args=(window, heads): cls(*args).to(dt), reference, [{}], name=name, mistakes=mistakes,
                     forbidden={posenc.RelativePositionBias: "vitlab.posenc.RelativePositionBias"}, atol=1e-6)


# ----------------------------------------------------------------------------------------------- RoPE


def _rope_variant(x: Tensor, positions: Tensor, temperature: float = 10000.0, *, mistake: str) -> Tensor:
    """apply_rope with one known mistake (see ROPE_MISTAKES)."""
    pos = positions[:, None] if positions.dim() == 1 else positions
    axes, dim = pos.shape[-1], x.shape[-1]
    width = dim // axes
    if mistake == "no_temperature":
        temperature = 10000.0
    if mistake == "sum_axes":
        angles = pos.sum(-1).double()[:, None] * _omega(dim, temperature)[None, :]
    elif mistake == "first_axis_only":
        angles = pos[:, 0].double()[:, None] * _omega(dim, temperature)[None, :]
    else:
        omega = _omega(width, temperature, {"i_over_d": "i/D", "multiply": "multiply"}.get(mistake, "2i/D"))
        angles = torch.cat([pos[:, a].double()[:, None] * omega[None, :] for a in range(axes)], dim=1)
    if mistake == "backwards":
        angles = -angles
    angles = angles.to(x.dtype)
    cos, sin = angles.cos(), angles.sin()
    if mistake == "cos_only":
        return x * cos.repeat_interleave(2, dim=-1)
    if mistake == "halves":  # pair channel i with i + width/2 inside each block (GPT-NeoX's rotate_half)
        blocks = x.unflatten(-1, (axes, 2, width // 2))
        first, second = blocks[..., 0, :], blocks[..., 1, :]
        c, s = cos.unflatten(-1, (axes, width // 2)), sin.unflatten(-1, (axes, width // 2))
        return torch.stack([first * c - second * s, first * s + second * c], dim=-2).flatten(-3)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


ROPE_MISTAKES = [Mistake(label, hint, lambda x, positions, temperature=10000.0, _m=key: _rope_variant(
    x, positions, temperature, mistake=_m)) for label, key, hint in [
    ("multiplied x by cos(angle) without the sin term", "cos_only",
     "A rotation of the pair (a, b) by t is (a cos t - b sin t, a sin t + b cos t): both terms are needed, and "
     "without them the score depends on the absolute positions."),
    ("rotated channel i with channel i + D/2 (rotate-half) instead of adjacent pairs", "halves",
     "This course (like RoFormer and timm's rot) pairs neighbours: (x0, x1), (x2, x3), ... Take x[..., 0::2] and "
     "x[..., 1::2]. (Rotate-half is also relative, but a different layout.)"),
    ("rotated the wrong way (by minus the angle)", "backwards",
     "The even channel becomes a cos t - b sin t and the odd one a sin t + b cos t."),
    ("used the exponent i/d instead of 2i/d", "i_over_d",
     "Pair i of a block of d channels turns at omega_i = 1/T^(2i/d), i = 0 .. d/2 - 1, as in the sin-cos table; "
     "with 2 axes each block has d = D/2 channels."),
    ("multiplied the angle by T^(2i/d) instead of dividing", "multiply",
     "omega_i = 1 / T^(2i/d) <= 1: the angle is position * omega_i, so low channel pairs turn fastest."),
    ("added the row and column into one position for every channel", "sum_axes",
     "Axial RoPE splits the channels: the first half turns with the row, the second half with the column."),
    ("used only the first position axis", "first_axis_only",
     "With positions (N, 2) the first D/2 channels turn with positions[:, 0] and the last D/2 with positions[:, 1]."),
    ("ignored the temperature argument", "no_temperature", "Use `temperature` where you wrote 10000."),
]]
def _pairs_adjacent(t: Tensor, axes: int) -> Tensor:
    """Channels laid out as halves in each block, (x0..x_{w/2-1} | x_{w/2}..), reordered to adjacent pairs."""
    return t.unflatten(-1, (axes, 2, -1)).transpose(-2, -1).flatten(-3)


def _pairs_halves(t: Tensor, axes: int) -> Tensor:
    """The inverse of _pairs_adjacent: adjacent pairs (x0, x1), (x2, x3), ... back to two halves per block."""
    return t.unflatten(-1, (axes, -1, 2)).transpose(-2, -1).flatten(-3)


def _rope_pairing(x: Tensor, positions: Tensor, temperature: float = 10000.0, *, take: str, give: str) -> Tensor:
    """RoPE whose pairs are read (`take`) and written (`give`) as "halves" or "adjacent": any implementation
    of such a pairing gives this output, however it is written."""
    axes = 1 if positions.dim() == 1 else positions.shape[-1]
    if take == "halves":
        x = _pairs_adjacent(x, axes)
    out = _rope_variant(x, positions, temperature, mistake="none")  # right, without calling the reference
    return _pairs_halves(out, axes) if give == "halves" else out


ROPE_MISTAKES += [Mistake(label, hint, lambda x, positions, temperature=10000.0, _t=take, _g=give: _rope_pairing(
    x, positions, temperature, take=_t, give=_g)) for label, take, give, hint in [
    ("paired channel i with channel i + D/2 (the two halves) but wrote the results as adjacent pairs", "halves",
     "adjacent", "The pairs are neighbours: a, b = x[..., 0::2], x[..., 1::2], and the rotated pair goes back to "
     "the same two places (torch.stack([..., ...], dim=-1).flatten(-2))."),
    ("rotated adjacent pairs but wrote the results as two halves (torch.cat instead of stack-and-flatten)",
     "adjacent", "halves", "Each rotated pair goes back to the places it came from: "
     "torch.stack([a cos - b sin, a sin + b cos], dim=-1).flatten(-2), not torch.cat([...], dim=-1)."),
]]
ROPE_REFERENCE = {posenc.apply_rope: "vitlab.posenc.apply_rope", posenc.rope_angles: "vitlab.posenc.rope_angles"}


def _rope_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    cases = [dict(x=randn(gen, 2, 6, 8, dtype=dt), positions=torch.arange(6)),
             dict(x=randn(gen, 1, 2, 12, 8, dtype=dt), positions=posenc.grid_positions(3, 4)),
             dict(x=randn(gen, 5, 16, dtype=dt), positions=torch.arange(5) * 3)]
    if graded:
        cases += [dict(x=randn(gen, 2, 3, 9, 12, dtype=dt), positions=posenc.grid_positions(3, 3) - 1),
                  dict(x=randn(gen, 4, 32, dtype=dt), positions=torch.randint(0, 50, (4, 2), generator=gen),
                       temperature=100.0),
                  dict(x=randn(gen, 7, 4, dtype=dt), positions=torch.arange(7), temperature=10.0)]
    return cases


def _relative_gap(fn: Callable, positions: Tensor, dim: int, gen: torch.Generator) -> tuple[float, float, str]:
    """How <R_m q, R_n k> varies: the largest change between position pairs with the same offset m - n, the
    spread over all pairs, and an example of the first."""
    n = positions.shape[0]
    q, k = randn(gen, dim), randn(gen, dim)
    rq = call_learner("apply_rope", fn, dict(x=q.expand(n, dim).clone(), positions=positions), f"q at {n} positions")
    rk = call_learner("apply_rope", fn, dict(x=k.expand(n, dim).clone(), positions=positions), f"k at {n} positions")
    if not all(isinstance(r, Tensor) and r.shape == (n, dim) for r in (rq, rk)):
        return 0.0, 1.0, ""  # the comparison with the reference explains a wrong shape
    scores = (rq @ rk.T).double()
    pos = positions[:, None] if positions.dim() == 1 else positions
    first: dict[tuple, tuple[float, int, int]] = {}
    worst, example = 0.0, ""
    for i in range(n):
        for j in range(n):
            offset = tuple((pos[i] - pos[j]).tolist())
            s0, i0, j0 = first.setdefault(offset, (scores[i, j].item(), i, j))
            gap = abs(scores[i, j].item() - s0)
            if gap > worst:
                worst = gap
                example = (f"positions {pos[i0].tolist()}, {pos[j0].tolist()} give {s0:.4f} but "
                           f"{pos[i].tolist()}, {pos[j].tolist()} (same offset) give {scores[i, j].item():.4f}")
    return worst, (scores.max() - scores.min()).item(), example


@exercise_check
def apply_rope(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `apply_rope(x, positions, temperature=10000.0)`: the score depends only on m - n, and the values."""
    gen = torch.Generator().manual_seed(seed + 1)
    cases = _rope_cases(seed, graded)
    grids = [torch.arange(7), posenc.grid_positions(3, 3)] + ([posenc.grid_positions(2, 4) * 5] if graded else [])
    for positions in grids:
        gap, spread, example = _relative_gap(fn, positions, 8, gen)
        if gap > 1e-4 or spread < 1e-4:
            try:  # a known mistake, when the values show one, says more than the property
                check_function(fn, posenc.apply_rope, cases, name="apply_rope", mistakes=ROPE_MISTAKES,
                               forbidden=ROPE_REFERENCE, **ROPE_TOL)
            except CheckFailed as failure:
                if "looks like you" in str(failure):
                    raise
            if spread < 1e-4:
                raise CheckFailed("apply_rope: <R_m q, R_n k> is the same for every pair of positions: nothing is "
                                  "rotated.\n  Turn each pair (x_2i, x_2i+1) by the angle p * omega_i of its position.")
            raise CheckFailed(f"apply_rope: the score <R_m q, R_n k> does not depend on m - n alone: {example}.\n"
                              "  Rotate each pair (x_2i, x_2i+1) by the angle p * omega_i; a rotation by m then one "
                              "by -n leaves a rotation by m - n.")
    print(f"{PASS} apply_rope: <R_m q, R_n k> changes with the offset m - n and with nothing else (all pairs of "
          "positions in a sequence and on a grid).")
    check_function(fn, posenc.apply_rope, cases, name="apply_rope", mistakes=ROPE_MISTAKES, forbidden=ROPE_REFERENCE,
                   **ROPE_TOL)


# ------------------------------------------------------------------------------------------ resampling


def _resample_variant(pos_embed: Tensor, new_grid, num_prefix_tokens: int = 1, old_grid=None, *,
                      mistake: str) -> Tensor:
    b, n, dim = pos_embed.shape
    if old_grid is None:
        side = int(round((n - num_prefix_tokens) ** 0.5))
        old_grid = (side, side)
    (gh, gw), (nh, nw) = old_grid, ((new_grid, new_grid) if isinstance(new_grid, int) else new_grid)
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if mistake == "swapped":
        (gh, gw), (nh, nw) = (gw, gh), (nw, nh)
    if mistake == "sequence_with_prefix":
        return F.interpolate(pos_embed.transpose(1, 2), size=num_prefix_tokens + nh * nw, mode="linear",
                             align_corners=False).transpose(1, 2)
    if mistake == "sequence":
        grid = F.interpolate(grid.transpose(1, 2), size=nh * nw, mode="linear", align_corners=False).transpose(1, 2)
        return torch.cat([prefix, grid], dim=1)
    if mistake in ("no_permute", "no_permute_in"):
        image = grid.reshape(b, dim, gh, gw)
    else:
        image = grid.reshape(b, gh, gw, dim).permute(0, 3, 1, 2)
    kwargs = dict(mode="bicubic", align_corners=False, antialias=True)
    kwargs.update({"bilinear": dict(mode="bilinear"), "no_antialias": dict(antialias=False),
                   "align_corners": dict(align_corners=True)}.get(mistake, {}))
    image = F.interpolate(image, size=(nh, nw), **kwargs)
    no_permute_out = mistake in ("no_permute", "no_permute_out")
    grid = image.reshape(b, nh * nw, dim) if no_permute_out else image.permute(0, 2, 3, 1).reshape(b, -1, dim)
    if mistake == "dropped_prefix":
        return grid
    return torch.cat([grid, prefix] if mistake == "prefix_last" else [prefix, grid], dim=1)


RESAMPLE_MISTAKES = [Mistake(label, hint, lambda pos_embed, new_grid, num_prefix_tokens=1, old_grid=None, _m=key:
                             _resample_variant(pos_embed, new_grid, num_prefix_tokens, old_grid, mistake=_m))
                     for label, key, hint in [
    ("reshaped the (N, D) grid rows straight to (D, H, W) without a permute", "no_permute",
     "Row k of the table is the vector of patch k: reshape to (B, H, W, D), then permute(0, 3, 1, 2) so that the "
     "D channels become image channels; undo both afterwards."),
    ("reshaped the grid rows straight to (B, D, H, W) without a permute (and permuted back afterwards)",
     "no_permute_in", "Row k of the table is the vector of patch k: reshape to (B, H, W, D), then permute(0, 3, 1, 2) "
     "so that the D channels become image channels."),
    ("reshaped the resampled (B, D, H, W) image straight back to (B, H*W, D) without a permute", "no_permute_out",
     "Undo the way in: permute(0, 2, 3, 1) to (B, H, W, D), then reshape to (B, H*W, D)."),
    ("interpolated the whole table, prefix (CLS) rows included, as a 1-D sequence", "sequence_with_prefix",
     "The CLS row has no place on the grid: split it off, resample only the H*W grid rows, then put it back."),
    ("interpolated the grid rows as a 1-D sequence instead of on the 2-D grid", "sequence",
     "Neighbours on the grid are also w rows apart in the table: reshape to (B, D, H, W) and resample in 2-D."),
    ("dropped the prefix (CLS) rows", "dropped_prefix",
     "Keep pos_embed[:, :num_prefix_tokens] unchanged and concatenate it in front of the resampled grid."),
    ("put the prefix rows after the grid", "prefix_last", "The prefix rows come first: torch.cat([prefix, grid], 1)."),
    ("swapped the grid's height and width", "swapped",
     "new_grid = (rows, cols) = (height, width): F.interpolate(size=(rows, cols)) on a (B, D, rows, cols) tensor."),
    ("used bilinear instead of bicubic interpolation", "bilinear", "mode='bicubic', as timm."),
    ("left antialias off", "no_antialias",
     "timm resamples with antialias=True; for bicubic that also switches the cubic kernel (a = -0.5, as PIL, "
     "instead of -0.75), so the values differ even when upsampling. Pass antialias=True."),
    ("set align_corners=True", "align_corners", "timm uses align_corners=False (pixel centres, not corners)."),
]]


@exercise_check
def resample_pos_embed(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `resample_pos_embed(pos_embed, new_grid, num_prefix_tokens=1, old_grid=None)` (bicubic, antialias)."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    cases = [dict(pos_embed=randn(gen, 1, 1 + 16, 8, dtype=dt), new_grid=(6, 6)),
             dict(pos_embed=randn(gen, 1, 1 + 9, 4, dtype=dt), new_grid=(5, 7)),
             dict(pos_embed=randn(gen, 1, 1 + 14 * 14, 16, dtype=dt), new_grid=(24, 24))]
    if graded:
        cases += [dict(pos_embed=randn(gen, 1, 2 + 15, 6, dtype=dt), new_grid=(6, 4), num_prefix_tokens=2,
                       old_grid=(3, 5)),
                  dict(pos_embed=randn(gen, 1, 25, 8, dtype=dt), new_grid=(7, 7), num_prefix_tokens=0),
                  dict(pos_embed=randn(gen, 1, 1 + 16, 8, dtype=dt), new_grid=(4, 4)),
                  dict(pos_embed=randn(gen, 1, 1 + 36, 8, dtype=dt), new_grid=(3, 4))]
    forbidden = {posenc.resample_pos_embed: "vitlab.posenc.resample_pos_embed"}
    timm_layers = sys.modules.get("timm.layers")
    if timm_layers is not None and hasattr(timm_layers, "resample_abs_pos_embed"):
        forbidden[timm_layers.resample_abs_pos_embed] = "timm's resample_abs_pos_embed"
    check_function(fn, posenc.resample_pos_embed, cases, name="resample_pos_embed", mistakes=RESAMPLE_MISTAKES,
                   forbidden=forbidden, atol=1e-5, rtol=1e-4)

"""vitlab.posenc against closed forms at hand-picked entries, MAE's numpy code, double loops, explicit rotation
matrices, brute force over position pairs and F.interpolate; and vitlab.check_posenc: each check passes code
written differently and names each known mistake."""
import functools
import math
import re

import einops
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab import check_posenc as C
from vitlab import posenc as P
from vitlab.check import CheckFailed


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ----------------------------------------------------------------------------------------- sin-cos


def test_sincos_1d_closed_form_at_picked_entries():
    table = P.sincos_1d(12, 8, dtype=torch.float64)  # D = 8: omega = 1, 10^-1, 10^-2, 10^-3
    assert table.shape == (12, 8)
    assert table[5, 0].item() == pytest.approx(math.sin(5.0), abs=1e-15)
    assert table[3, 1].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 8)), abs=1e-15)
    assert table[3, 4 + 1].item() == pytest.approx(math.cos(3 / 10000 ** (2 / 8)), abs=1e-15)
    assert table[11, 3].item() == pytest.approx(math.sin(11 / 10000 ** (6 / 8)), abs=1e-15)  # i = D/2 - 1 = 3
    assert table[11, 7].item() == pytest.approx(math.cos(11 / 1000), abs=1e-15)
    assert torch.equal(table[0], torch.tensor([0.0] * 4 + [1.0] * 4, dtype=torch.float64))
    other = P.sincos_1d(4, 6, temperature=100.0, dtype=torch.float64)
    assert other[2, 2].item() == pytest.approx(math.sin(2 / 100 ** (4 / 6)), abs=1e-15)


def test_sincos_1d_dot_product_depends_only_on_the_offset():
    table = P.sincos_1d(20, 16, dtype=torch.float64)
    omega = 10000.0 ** (-torch.arange(8, dtype=torch.float64) / 8)
    for m in range(20):
        for n in range(20):  # sin a sin b + cos a cos b = cos(a - b)
            assert (table[m] @ table[n]).item() == pytest.approx(torch.cos(omega * (m - n)).sum().item(), abs=1e-12)


def test_sincos_1d_positions_device_dtype():
    positions = torch.tensor([0.0, 2.5, 7.0])
    table = P.sincos_1d(positions, 4)
    assert table.dtype == torch.float32
    torch.testing.assert_close(table[1], torch.tensor([math.sin(2.5), math.sin(0.025), math.cos(2.5), math.cos(0.025)]))
    assert torch.equal(P.sincos_1d(8, 6)[7], P.sincos_1d(torch.tensor([7]), 6)[0])
    assert P.sincos_1d(3, 4, device="meta").device.type == "meta"
    with pytest.raises(ValueError):
        P.sincos_1d(3, 5)


def mae_1d(embed_dim, pos):
    """MAE's get_1d_sincos_pos_embed_from_grid (util/pos_embed.py), transcribed."""
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def mae_2d(embed_dim, grid_size):
    """MAE's get_2d_sincos_pos_embed (without the cls_token row), transcribed."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([mae_1d(embed_dim // 2, grid[0]), mae_1d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid,dim", [(14, 64), (4, 8), (1, 4)])
def test_sincos_2d_equals_mae(grid, dim):
    ours = P.sincos_2d(grid, grid, dim, dtype=torch.float64)
    torch.testing.assert_close(ours, torch.from_numpy(mae_2d(dim, grid)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("h,w,dim", [(3, 5, 8), (6, 2, 16), (1, 4, 4)])
def test_sincos_2d_is_two_1d_tables(h, w, dim):
    table = P.sincos_2d(h, w, dim)
    one_d = P.sincos_1d(max(h, w), dim // 2)
    assert table.shape == (h * w, dim)
    for i in range(h):
        for j in range(w):  # token i*w + j: [column j | row i]
            assert torch.equal(table[i * w + j], torch.cat([one_d[j], one_d[i]]))
    with pytest.raises(ValueError):
        P.sincos_2d(2, 2, 6)


def test_learned_table_has_the_cls_row_and_timm_init():
    torch.manual_seed(0)
    table = P.LearnedPositionEmbedding(num_patches=196, embed_dim=64)
    assert table.pos_embed.shape == (1, 197, 64) and list(table.state_dict()) == ["pos_embed"]
    assert table.pos_embed.std().item() == pytest.approx(0.02, rel=0.05)
    assert table.pos_embed.abs().max() <= 2.0
    x = torch.randn(3, 197, 64)
    assert torch.equal(table(x), x + table.pos_embed)
    assert P.LearnedPositionEmbedding(16, 8, num_prefix_tokens=0).pos_embed.shape == (1, 16, 8)


# ------------------------------------------------------------------------------- relative position


def index_by_double_loop(h, w):
    """Number the 2-D offsets in the order (dr, dc) = (-(h-1), -(w-1)), ..., then look each pair up."""
    number = {}
    for dr in range(-(h - 1), h):
        for dc in range(-(w - 1), w):
            number[(dr, dc)] = len(number)
    index = torch.empty(h * w, h * w, dtype=torch.long)
    for i in range(h * w):
        for j in range(h * w):
            index[i, j] = number[(i // w - j // w, i % w - j % w)]
    return index


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (3, 2), (4, 4), (1, 5), (7, 7)])
def test_relative_position_index_equals_a_double_loop(h, w):
    index = P.relative_position_index(h, w)
    assert index.dtype == torch.long
    assert torch.equal(index, index_by_double_loop(h, w))
    assert index.min() >= 0 and index.max() == (2 * h - 1) * (2 * w - 1) - 1
    assert (index.diagonal() == (h - 1) * (2 * w - 1) + (w - 1)).all()  # offset (0, 0)


def test_relative_position_index_matches_timm(timm):
    swin = timm.models.swin_transformer
    for h, w in [(2, 3), (7, 7)]:
        assert torch.equal(P.relative_position_index(h, w), swin.get_relative_position_index(h, w))


def test_relative_position_bias_looks_up_the_table():
    torch.manual_seed(0)
    bias = P.RelativePositionBias((2, 3), num_heads=4)
    assert list(bias.state_dict()) == ["relative_position_bias_table"]  # the index is not saved, as timm
    assert bias.relative_position_bias_table.shape == (3 * 5, 4)
    out = bias()
    assert out.shape == (4, 6, 6)
    index = index_by_double_loop(2, 3)
    for head in range(4):
        for i in range(6):
            for j in range(6):
                assert out[head, i, j] == bias.relative_position_bias_table[index[i, j], head]
    out.sum().backward()
    counts = torch.bincount(index.reshape(-1), minlength=15).float()  # each entry is used once per pair
    assert torch.equal(bias.relative_position_bias_table.grad, counts[:, None].expand(15, 4))


# ----------------------------------------------------------------------------------------------- RoPE


def rotation_matrix(position, dim, temperature=10000.0):
    """Block-diagonal (D, D) rotation for one position (a tuple of k axes), built pair by pair."""
    position = position if isinstance(position, tuple) else (position,)
    width = dim // len(position)
    rot = torch.zeros(dim, dim, dtype=torch.float64)
    for a, p in enumerate(position):
        for i in range(width // 2):
            t = p / temperature ** (2 * i / width)
            c = a * width + 2 * i
            rot[c:c + 2, c:c + 2] = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]],
                                                 dtype=torch.float64)
    return rot


@pytest.mark.parametrize("axes", [1, 2, 3])
def test_rope_equals_explicit_rotation_matrices(axes):
    dim = 12
    positions = torch.randint(-5, 20, (7, axes), generator=torch.Generator().manual_seed(axes))
    positions = positions[:, 0] if axes == 1 else positions
    x = randn(2, 7, dim, dtype=torch.float64)
    out = P.apply_rope(x, positions, temperature=100.0)
    for n in range(7):
        pos = tuple(positions[n].reshape(-1).tolist())
        expected = x[:, n] @ rotation_matrix(pos if axes > 1 else pos[0], dim, 100.0).T
        torch.testing.assert_close(out[:, n], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("positions", [torch.arange(-3, 9), P.grid_positions(3, 4)], ids=["1d", "2d"])
def test_rope_score_depends_only_on_the_offset(positions):
    dim = 16
    q, k = randn(dim, dtype=torch.float64, seed=1), randn(dim, dtype=torch.float64, seed=2)
    n = positions.shape[0]
    rq = P.apply_rope(q.expand(n, dim), positions)
    rk = P.apply_rope(k.expand(n, dim), positions)
    scores = rq @ rk.T
    pos = positions.reshape(n, -1)
    by_offset = {}
    for i in range(n):
        for j in range(n):
            offset = tuple((pos[i] - pos[j]).tolist())
            by_offset.setdefault(offset, []).append(scores[i, j].item())
    assert len(by_offset) < n * n  # several pairs share each offset
    for offset, values in by_offset.items():
        assert max(values) - min(values) < 1e-12, offset
    # and the score is the one of q with k moved by n - m: <R_m q, R_n k> = <q, R_(n-m) k>
    for i in range(n):
        for j in range(n):
            offset = pos[j] - pos[i]
            moved = P.apply_rope(k[None], offset if positions.dim() == 1 else offset[None])
            assert scores[i, j].item() == pytest.approx((q @ moved[0]).item(), abs=1e-12)


def test_rope_keeps_norm_shape_and_dtype():
    x = randn(2, 3, 9, 8)
    positions = P.grid_positions(3, 3)
    out = P.apply_rope(x, positions)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    assert torch.equal(P.apply_rope(x, torch.zeros(9, 2, dtype=torch.long)), x)  # position 0 turns nothing
    half = P.apply_rope(x.bfloat16(), positions)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), out, atol=3e-2, rtol=3e-2)
    assert P.rope_angles(positions, 8).shape == (9, 4)
    with pytest.raises(ValueError):
        P.apply_rope(randn(9, 6), positions)


def test_rope_matches_timm_pair_convention():
    layers = pytest.importorskip("timm.layers.pos_embed_sincos", exc_type=ImportError,
                                 reason="timm is not installed (optional: pip install --no-deps timm)")
    x, positions = randn(5, 8), torch.arange(5)
    angles = P.rope_angles(positions, 8)
    theirs = layers.apply_rot_embed(x, angles.sin().repeat_interleave(2, -1), angles.cos().repeat_interleave(2, -1))
    torch.testing.assert_close(P.apply_rope(x, positions), theirs)


# ------------------------------------------------------------------------------------------ resampling


def test_resample_identity_and_prefix():
    table = randn(1, 2 + 5 * 5, 8)
    torch.testing.assert_close(P.resample_pos_embed(table, (5, 5), num_prefix_tokens=2), table, atol=1e-7, rtol=0)
    out = P.resample_pos_embed(table, (9, 7), num_prefix_tokens=2)
    assert out.shape == (1, 2 + 63, 8)
    assert torch.equal(out[:, :2], table[:, :2])


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("old,new,prefix", [((14, 14), (24, 24), 1), ((3, 5), (6, 4), 2), ((6, 6), (3, 4), 0)])
def test_resample_equals_bicubic_on_the_grid(old, new, prefix, antialias):
    dim = 6
    table = randn(1, prefix + old[0] * old[1], dim, dtype=torch.float64)
    image = table[:, prefix:].reshape(1, *old, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=new, mode="bicubic", align_corners=False, antialias=antialias)
    expected = torch.cat([table[:, :prefix], resized.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    out = P.resample_pos_embed(table, new, prefix, old_grid=old if old[0] != old[1] else None, antialias=antialias)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_resample_is_two_dimensional():
    rows = torch.arange(4, dtype=torch.float64).repeat_interleave(6)  # a table that depends on the row only
    table = torch.cat([torch.zeros(1, 1, 3, dtype=torch.float64),
                       torch.stack([rows.sin(), rows.cos(), rows], dim=-1)[None]], dim=1)
    out = P.resample_pos_embed(table, (7, 9), old_grid=(4, 6))[0, 1:].reshape(7, 9, 3)
    assert torch.allclose(out, out[:, :1], atol=1e-12)  # it still depends on the row only
    constant = torch.full((1, 1 + 16, 2), 0.3)
    torch.testing.assert_close(P.resample_pos_embed(constant, 7), torch.full((1, 50, 2), 0.3))


def test_resample_dtypes_and_errors():
    table = randn(1, 1 + 16, 4)
    half = P.resample_pos_embed(table.bfloat16(), (6, 6))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, P.resample_pos_embed(table.bfloat16().float(), (6, 6)).bfloat16())
    assert P.resample_pos_embed(randn(3, 1 + 4, 2), 3).shape == (3, 10, 2)
    with pytest.raises(ValueError, match="square"):
        P.resample_pos_embed(randn(1, 1 + 6, 4), (3, 3))
    with pytest.raises(ValueError):
        P.resample_pos_embed(randn(1, 1 + 6, 4), (3, 3), old_grid=(2, 2))


def test_resample_matches_timm(timm):
    layers = timm.layers
    table = randn(1, 1 + 14 * 14, 16)
    for new in [(24, 24), (7, 9)]:
        torch.testing.assert_close(P.resample_pos_embed(table, new),
                                   layers.resample_abs_pos_embed(table, list(new), num_prefix_tokens=1), atol=0, rtol=0)
    table = randn(1, 2 + 15, 8)
    torch.testing.assert_close(P.resample_pos_embed(table, (6, 4), 2, old_grid=(3, 5)),
                               layers.resample_abs_pos_embed(table, [6, 4], old_size=[3, 5], num_prefix_tokens=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_posenc_on_cuda():
    assert P.sincos_2d(4, 4, 16, device="cuda").device.type == "cuda"
    bias = P.RelativePositionBias(3, 2).cuda()
    assert bias().device.type == "cuda"
    x = randn(2, 2, 9, 8).cuda()
    positions = P.grid_positions(3, 3, device="cuda")
    torch.testing.assert_close(P.apply_rope(x, positions).cpu(), P.apply_rope(x.cpu(), positions.cpu()))
    table = randn(1, 17, 8).cuda()
    torch.testing.assert_close(P.resample_pos_embed(table, 6).cpu(), P.resample_pos_embed(table.cpu(), 6),
                               atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------- the checks


def sincos_1d_exp(n, dim, temperature=10000.0):
    angles = torch.arange(n, dtype=torch.float32)[:, None] * torch.exp(
        -math.log(temperature) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_lookup(h, w, dim, temperature=10000.0):
    cols = sincos_1d_exp(w, dim // 2, temperature).repeat(h, 1)
    rows = sincos_1d_exp(h, dim // 2, temperature).repeat_interleave(w, dim=0)
    return torch.cat([cols, rows], dim=1).double()  # a float64 table is right too


def index_loop(h, w):
    return index_by_double_loop(h, w)


class EinopsBias(nn.Module):
    def __init__(self, window_size, num_heads):
        super().__init__()
        h, w = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), num_heads))
        self.register_buffer("relative_position_index", index_by_double_loop(h, w), persistent=False)

    def forward(self):
        return einops.rearrange(self.relative_position_bias_table[self.relative_position_index], "i j h -> h i j")


def rope_complex(x, positions, temperature=10000.0):
    pos = positions.reshape(positions.shape[0], -1)
    axes, dim = pos.shape[1], x.shape[-1]
    width = dim // axes
    freqs = temperature ** (-torch.arange(0, width, 2, dtype=torch.float64) / width)
    angles = torch.cat([pos[:, a, None] * freqs for a in range(axes)], dim=1)
    turned = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous()) * torch.polar(
        torch.ones_like(angles), angles)
    return torch.view_as_real(turned).flatten(-2).to(x.dtype)


def resample_timm_style(pos_embed, new_grid, num_prefix_tokens=1, old_grid=None):
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = old_grid or (int(math.sqrt(grid.shape[1])),) * 2
    image = einops.rearrange(grid.float(), "b (h w) d -> b d h w", h=old[0])
    image = F.interpolate(image, size=new_grid, mode="bicubic", antialias=True)
    return torch.cat([prefix, einops.rearrange(image, "b d h w -> b (h w) d").to(pos_embed.dtype)], dim=1)


RIGHT = [(C.sincos_1d, sincos_1d_exp), (C.sincos_2d, sincos_2d_lookup), (C.relative_position_index, index_loop),
         (C.relative_position_bias, EinopsBias), (C.apply_rope, rope_complex),
         (C.resample_pos_embed, resample_timm_style)]


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("check,learner", RIGHT, ids=lambda x: getattr(x, "__name__", ""))
def test_checks_pass_code_written_differently(check, learner, graded, capsys):
    check(learner, seed=1234 if graded else 0, graded=graded)
    assert "\u2714" in capsys.readouterr().out


def test_sincos_2d_may_use_the_reference_1d():
    C.sincos_2d(lambda h, w, dim, temperature=10000.0: torch.cat(
        [P.sincos_1d(torch.arange(w).repeat(h), dim // 2, temperature),
         P.sincos_1d(torch.arange(h).repeat_interleave(w), dim // 2, temperature)], dim=1))


MISTAKES = [(C.sincos_1d, m.label, m.impl) for m in C.SINCOS_1D_MISTAKES] + \
    [(C.sincos_2d, m.label, m.impl) for m in C.SINCOS_2D_MISTAKES] + \
    [(C.relative_position_index, m.label, m.impl) for m in C.INDEX_MISTAKES] + \
    [(C.relative_position_bias, label, functools.partial(C._WrongBias, mistake=key))
     for label, key, _ in C.BIAS_MISTAKES] + \
    [(C.apply_rope, m.label, m.impl) for m in C.ROPE_MISTAKES] + \
    [(C.resample_pos_embed, m.label, m.impl) for m in C.RESAMPLE_MISTAKES]
GRADED_ONLY = {"ignored the temperature argument"}  # sincos checks pass temperatures in visible cases too


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("check,label,learner", MISTAKES, ids=[m[1][:40] for m in MISTAKES])
def test_checks_name_each_mistake(check, label, learner, graded):
    if check is C.apply_rope and label in GRADED_ONLY and not graded:
        C.apply_rope(learner)  # the visible cases all use the default temperature
        return
    with pytest.raises(CheckFailed, match="looks like you " + re.escape(label)):
        check(learner, seed=1234 if graded else 0, graded=graded)


def test_rope_check_explains_a_broken_relative_property():
    def absolute(x, positions, temperature=10000.0):
        return x + P.sincos_1d(positions.reshape(positions.shape[0], -1)[:, 0], x.shape[-1], dtype=x.dtype)

    with pytest.raises(CheckFailed, match="does not depend on m - n alone"):
        C.apply_rope(absolute)
    with pytest.raises(CheckFailed, match="nothing is rotated"):
        C.apply_rope(lambda x, positions, temperature=10000.0: x * 1)


@pytest.mark.parametrize("check,learner", [
    (C.sincos_1d, P.sincos_1d), (C.sincos_2d, P.sincos_2d), (C.relative_position_index, P.relative_position_index),
    (C.apply_rope, P.apply_rope), (C.resample_pos_embed, P.resample_pos_embed),
    (C.apply_rope, lambda x, positions, temperature=10000.0: rope_complex(x, positions, temperature)
     + 0 * P.rope_angles(positions, x.shape[-1]).sum()),
])
def test_checks_refuse_the_reference(check, learner):
    with pytest.raises(CheckFailed, match="the very thing this exercise asks you to write"):
        check(learner)


def test_bias_check_wants_a_non_persistent_index():
    class Saved(EinopsBias):
        def __init__(self, window_size, num_heads):
            super().__init__(window_size, num_heads)
            self.register_buffer("relative_position_index", index_by_double_loop(*window_size))

    with pytest.raises(CheckFailed, match="persistent=False"):
        C.relative_position_bias(Saved)


def test_index_check_wants_long():
    with pytest.raises(CheckFailed, match="long"):
        C.relative_position_index(lambda h, w: index_by_double_loop(h, w).float())

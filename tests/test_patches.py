"""vitlab.patches against loops over patches, F.unfold, einops, a Conv2d's own output shape and gradients;
and vitlab.check_patches: each check passes code written differently and names each known mistake."""
import functools
import math
import re

import einops
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab import check_patches as C
from vitlab import patches as P
from vitlab.check import CheckFailed

SHAPES = [((2, 3, 8, 8), 4), ((1, 3, 6, 9), 3), ((2, 1, 5, 5), 1), ((1, 2, 6, 6), 6), ((3, 4, 4, 10), 2)]


def image(shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def patches_by_loop(img, p):
    """Token k = patch (k // w, k % w), its pixels row by row with the channels last."""
    b, c, height, width = img.shape
    tokens = []
    for i in range(height // p):
        for j in range(width // p):
            block = img[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (B, C, P, P)
            tokens.append(torch.stack([block[:, :, r, s] for r in range(p) for s in range(p)], dim=1).reshape(b, -1))
    return torch.stack(tokens, dim=1)


# ------------------------------------------------------------------------------------- patchify


@pytest.mark.parametrize("shape,p", SHAPES)
def test_patchify_equals_a_loop_over_patches(shape, p):
    img = image(shape)
    assert torch.equal(P.patchify(img, p), patches_by_loop(img, p))


@pytest.mark.parametrize("shape,p", SHAPES)
def test_patchify_equals_einops_and_unfold(shape, p):
    img = image(shape, torch.float64)
    tokens = P.patchify(img, p)
    assert torch.equal(tokens, einops.rearrange(img, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p))
    assert torch.equal(P.patchify_unfold(img, p), tokens)
    # F.unfold's own order is (c p1 p2): the same numbers, channels first inside each patch
    unfolded = F.unfold(img, kernel_size=p, stride=p).transpose(1, 2)
    assert torch.equal(unfolded, einops.rearrange(tokens, "b n (p1 p2 c) -> b n (c p1 p2)", p1=p, p2=p))


def test_patchify_rectangular_patches_and_errors():
    img = image((2, 3, 6, 8))
    tokens = P.patchify(img, (3, 2))
    assert torch.equal(tokens, einops.rearrange(img, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=3, p2=2))
    assert torch.equal(P.unpatchify(tokens, (3, 2), grid=(2, 4)), img)
    with pytest.raises(ValueError, match="multiple"):
        P.patchify(image((1, 3, 7, 8)), 4)
    with pytest.raises(ValueError, match="square"):
        P.unpatchify(torch.zeros(1, 6, 12), 2)


@pytest.mark.parametrize("shape,p", SHAPES)
def test_unpatchify_round_trip_is_exact(shape, p):
    img = image(shape)
    b, c, h, w = shape
    tokens = P.patchify(img, p)
    assert torch.equal(P.unpatchify(tokens, p, grid=(h // p, w // p)), img)
    assert torch.equal(P.patchify(P.unpatchify(tokens, p, grid=(h // p, w // p)), p), tokens)
    if h == w:
        assert torch.equal(P.unpatchify(tokens, p), img)  # square grid by default


def test_patchify_gradient_is_a_permutation():
    img = image((2, 3, 8, 8)).requires_grad_()
    weights = torch.randn(2, 4, 48)
    (P.patchify(img, 4) * weights).sum().backward()
    assert torch.equal(img.grad, P.unpatchify(weights, 4))


# ------------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_patch_embed_equals_unfold_plus_linear(dtype):
    torch.manual_seed(0)
    conv = P.PatchEmbed(img_size=16, patch_size=4, in_chans=3, embed_dim=10).to(dtype)
    img = image((2, 3, 16, 16), dtype)
    by_hand = patches_by_loop(img, 4) @ P.conv_weight_to_linear(conv.proj.weight).T + conv.proj.bias
    linear = P.LinearPatchEmbed.from_conv(conv)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    torch.testing.assert_close(conv(img), by_hand, **tol)
    torch.testing.assert_close(linear(img), conv(img), **tol)
    assert linear.proj.weight.dtype == dtype and linear.num_patches == conv.num_patches == 16


def test_patch_embed_is_timm_shaped():
    embed = P.PatchEmbed(img_size=(32, 48), patch_size=8, in_chans=1, embed_dim=6)
    assert list(embed.state_dict()) == ["proj.weight", "proj.bias"]
    assert embed.proj.weight.shape == (6, 1, 8, 8)
    assert embed.grid_size == (4, 6) and embed.num_patches == 24
    assert embed(torch.zeros(2, 1, 32, 48)).shape == (2, 24, 6)
    assert embed(torch.zeros(1, 1, 16, 16)).shape == (1, 4, 6)  # other sizes work, as multiples of P
    with pytest.raises(ValueError):
        embed(torch.zeros(1, 1, 30, 48))
    vit_b = P.PatchEmbed()
    assert vit_b.num_patches == 196 and sum(p.numel() for p in vit_b.parameters()) == 3 * 16 * 16 * 768 + 768


def test_patch_embed_matches_timm(timm):
    torch.manual_seed(0)
    theirs = timm.layers.PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=12)
    ours = P.PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=12)
    ours.load_state_dict(theirs.state_dict())
    x = image((2, 3, 32, 32))
    torch.testing.assert_close(ours(x), theirs(x), atol=0, rtol=0)


def test_each_token_sees_only_its_patch_but_a_conv_stem_overlaps():
    torch.manual_seed(0)
    img = image((1, 3, 16, 16)).requires_grad_()
    P.PatchEmbed(16, 4, 3, 8)(img)[0, 5].sum().backward()  # token 5 = patch (1, 1): rows 4..7, cols 4..7
    seen = img.grad.abs().sum(1)[0] > 0
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:8, 4:8] = True
    assert torch.equal(seen, expected)
    stem = P.ConvStem(16, 4, 3, 8).eval()
    img.grad = None
    stem(img)[0, 5].sum().backward()
    seen = img.grad.abs().sum(1)[0] > 0
    assert seen[4:8, 4:8].all() and seen.sum() > 16  # its receptive field spills over the patch border


def test_conv_stem_shapes():
    stem = P.ConvStem(img_size=32, patch_size=8, in_chans=3, embed_dim=64)
    assert stem.grid_size == (4, 4) and stem.num_patches == 16
    assert stem(torch.randn(2, 3, 32, 32)).shape == (2, 16, 64)
    assert [m.out_channels for m in stem.stem if isinstance(m, nn.Conv2d)] == [16, 32, 64]
    assert P.ConvStem(16, 2, 1, 8, channels=(5,))(torch.randn(1, 1, 16, 16)).shape == (1, 64, 8)
    with pytest.raises(ValueError):
        P.ConvStem(224, 14)


@pytest.mark.parametrize("size", [7, 16, 30, 33])
@pytest.mark.parametrize("kernel,stride,padding", [(4, 4, 0), (3, 1, 1), (7, 4, 3), (5, 2, 0), (4, 3, 2)])
def test_patch_count_equals_the_conv_output(size, kernel, stride, padding):
    if size + 2 * padding < kernel:
        return
    out = F.conv2d(torch.zeros(1, 1, size, size + 3), torch.zeros(1, 1, kernel, kernel), stride=stride,
                   padding=padding)
    assert P.grid_size((size, size + 3), kernel, stride, padding) == tuple(out.shape[-2:])
    assert P.num_patches((size, size + 3), kernel, stride, padding) == out.shape[-1] * out.shape[-2]


def test_patch_counts_worked_by_hand():
    assert P.num_patches(224, 16) == 196 and P.num_patches(384, 16) == 576 and P.num_patches(224, 14) == 256
    assert P.num_patches(224, 7, 4, 3) == 56 * 56  # (224 + 6 - 7) // 4 + 1 = 56
    assert P.grid_size(30, 4) == (7, 7)  # floor(26 / 4) + 1: the last 2 pixels are dropped


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_patches_on_cuda():
    img = image((2, 3, 32, 32)).cuda()
    tokens = P.patchify(img, 8)
    assert torch.equal(P.unpatchify(tokens, 8), img) and torch.equal(P.patchify_unfold(img, 8), tokens)
    embed = P.PatchEmbed(32, 8, 3, 16).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert embed(img).shape == (2, 16, 16)
    torch.testing.assert_close(P.LinearPatchEmbed.from_conv(embed)(img), embed(img), atol=1e-4, rtol=1e-3)


# ------------------------------------------------------------------------------------- the checks


def patchify_einops(img, patch):
    return einops.rearrange(img, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch, p2=patch)


def patchify_tensor_unfold(img, patch):
    blocks = img.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, h, w, P, P)
    return blocks.permute(0, 2, 3, 4, 5, 1).reshape(img.shape[0], -1, patch * patch * img.shape[1])


def patchify_with_unfold(img, patch):
    cols = F.unfold(img, kernel_size=patch, stride=patch)
    return einops.rearrange(cols, "b (c p1 p2) n -> b n (p1 p2 c)", p1=patch, p2=patch)


def unpatchify_with_fold(tokens, patch, grid):
    c = tokens.shape[-1] // (patch * patch)
    cols = einops.rearrange(tokens, "b n (p1 p2 c) -> b (c p1 p2) n", p1=patch, p2=patch)
    return F.fold(cols, output_size=(grid[0] * patch, grid[1] * patch), kernel_size=patch, stride=patch).reshape(
        tokens.shape[0], c, grid[0] * patch, grid[1] * patch)


def conv_weight_to_linear_einops(weight):
    return einops.rearrange(weight, "d c p1 p2 -> d (p1 p2 c)")


def num_patches_by_counting(img_size, kernel, stride, padding=0):
    per_side = len(range(0, img_size + 2 * padding - kernel + 1, stride))
    return per_side ** 2


class EinopsPatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x):
        return einops.rearrange(self.proj(x), "b d h w -> b (h w) d")


RIGHT = [
    (C.patchify, patchify_einops), (C.patchify, patchify_tensor_unfold), (C.patchify_unfold, patchify_with_unfold),
    (C.unpatchify, unpatchify_with_fold), (C.conv_weight_to_linear, conv_weight_to_linear_einops),
    (C.num_patches, num_patches_by_counting), (C.patch_embed, EinopsPatchEmbed),
]


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("check,learner", RIGHT, ids=lambda x: getattr(x, "__name__", ""))
def test_checks_pass_code_written_differently(check, learner, graded, capsys):
    check(learner, seed=1234 if graded else 0, graded=graded)
    assert "\u2714" in capsys.readouterr().out


MISTAKES = [(C.patchify, m.label, m.impl) for m in C.PATCHIFY_MISTAKES] + \
    [(C.patchify_unfold, m.label, m.impl) for m in C.UNFOLD_MISTAKES] + \
    [(C.unpatchify, m.label, m.impl) for m in C.UNPATCHIFY_MISTAKES] + \
    [(C.conv_weight_to_linear, m.label, m.impl) for m in C.CONV_TO_LINEAR_MISTAKES] + \
    [(C.num_patches, m.label, m.impl) for m in C.NUM_PATCHES_MISTAKES] + \
    [(C.patch_embed, label, functools.partial(C._WrongPatchEmbed, mistake=key))
     for label, key, _ in C.PATCH_EMBED_MISTAKES]


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("check,label,learner", MISTAKES, ids=[m[1][:40] for m in MISTAKES])
def test_checks_name_each_mistake(check, label, learner, graded):
    with pytest.raises(CheckFailed, match="looks like you " + re.escape(label)):
        check(learner, seed=1234 if graded else 0, graded=graded)


@pytest.mark.parametrize("check,learner", [
    (C.patchify, P.patchify), (C.patchify, patchify_with_unfold), (C.patchify_unfold, P.patchify_unfold),
    (C.unpatchify, P.unpatchify), (C.conv_weight_to_linear, P.conv_weight_to_linear),
    (C.num_patches, P.num_patches), (C.patch_embed, P.PatchEmbed),
    (C.patch_embed, lambda *a: P.LinearPatchEmbed.from_conv(P.PatchEmbed(*a))),
])
def test_checks_refuse_the_reference_and_the_taught_builtin(check, learner):
    if check is C.patch_embed and learner is not P.PatchEmbed:
        with pytest.raises(CheckFailed):  # a Linear instead of proj Conv2d does not even load the weights
            check(learner)
        return
    with pytest.raises(CheckFailed, match="the very thing this exercise asks you to write"):
        check(learner)


def test_unfold_check_requires_unfold_and_stubs_say_not_written():
    with pytest.raises(CheckFailed, match="F.unfold way"):
        C.patchify_unfold(patchify_einops)

    def stub(img, patch):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not written yet"):
        C.patchify(stub)


def test_patch_embed_check_wants_grid_attributes():
    class NoCount(EinopsPatchEmbed):
        def __init__(self, *args):
            super().__init__(*args)
            del self.num_patches

    with pytest.raises(CheckFailed, match="self.num_patches should be 16"):
        C.patch_embed(NoCount)


def test_num_patches_check_accepts_math_floor():
    C.num_patches(lambda img_size, kernel, stride, padding=0: math.floor((img_size + 2 * padding - kernel) / stride
                                                                        + 1) ** 2)

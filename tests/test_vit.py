"""vitlab.vit against timm (same weights, same logits), exact parameter counts, hand-worked rollout and distance
cases, DropPath's expectation; and vitlab.check_vit: right learner code passes, each known mistake is named."""
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab import check_vit, vit
from vitlab.check import CheckFailed

TINY = dict(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=64, depth=2, num_heads=4)


def images(b=2, c=3, size=32, seed=0, dtype=torch.float32):
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def timm_vit(timm):
    """timm's VisionTransformer class."""
    return timm.models.vision_transformer.VisionTransformer


def test_the_torchvision_stub_does_not_outlive_the_import(timm_vit):
    from torchvision_stub import StubModule, TorchvisionStub

    assert timm_vit.__module__ == "timm.models.vision_transformer"
    assert not any(isinstance(m, TorchvisionStub) for m in sys.meta_path)
    assert all(not isinstance(m, StubModule) for m in sys.modules.values())


POOLS = [dict(class_token=True, global_pool="token"), dict(class_token=True, global_pool="avg"),
         dict(class_token=False, global_pool="avg")]


@pytest.mark.parametrize("pool", POOLS, ids=["cls-token", "cls-avg", "no-cls-avg"])
def test_timm_weights_load_strictly_and_give_the_same_outputs(timm_vit, pool):
    torch.manual_seed(0)
    theirs = timm_vit(**TINY, **pool).eval()
    ours = vit.VisionTransformer(**TINY, **pool).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                   theirs.forward_head(theirs.forward_features(x), pre_logits=True),
                                   atol=1e-5, rtol=1e-5)


def test_our_weights_load_into_timm(timm_vit):
    torch.manual_seed(1)
    ours = vit.VisionTransformer(**TINY, global_pool="avg").eval()
    theirs = timm_vit(**TINY, global_pool="avg").eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(images(seed=1)), theirs(images(seed=1)), atol=1e-5, rtol=1e-5)


def test_drop_path_rates_grow_with_depth_as_in_timm(timm_vit):
    config = {**TINY, "depth": 5}
    ours = vit.VisionTransformer(**config, drop_path_rate=0.2)
    theirs = timm_vit(**config, drop_path_rate=0.2)
    timm_rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in theirs.blocks]  # rate 0: an nn.Identity
    assert [b.drop_path.p for b in ours.blocks] == pytest.approx(timm_rates)
    assert [b.drop_path.p for b in ours.blocks] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_load_timm_state_dict_from_safetensors_and_torch_files(timm_vit, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    theirs = timm_vit(**TINY).eval()
    save_file(theirs.state_dict(), str(tmp_path / "model.safetensors"))
    torch.save(theirs.state_dict(), tmp_path / "model.pth")
    x = images(seed=2)
    with torch.no_grad():
        expected = theirs(x)
        for source in (tmp_path / "model.safetensors", str(tmp_path / "model.pth"), theirs.state_dict()):
            ours = vit.load_timm_state_dict(vit.VisionTransformer(**TINY), source).eval()
            torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
        ours = vit.VisionTransformer(**TINY).load_timm_state_dict(tmp_path / "model.safetensors").eval()
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pos_embed"):
        vit.load_timm_state_dict(vit.VisionTransformer(**{**TINY, "img_size": 16}), tmp_path / "model.safetensors")


# --------------------------------------------------------------------------- modules, without timm


def test_state_dict_keys_and_shapes_are_timms():
    model = vit.VisionTransformer(img_size=8, patch_size=4, in_chans=3, num_classes=5, embed_dim=8, depth=1,
                                  num_heads=2)
    block = {"norm1.weight": (8,), "norm1.bias": (8,), "attn.qkv.weight": (24, 8), "attn.qkv.bias": (24,),
             "attn.proj.weight": (8, 8), "attn.proj.bias": (8,), "norm2.weight": (8,), "norm2.bias": (8,),
             "mlp.fc1.weight": (32, 8), "mlp.fc1.bias": (32,), "mlp.fc2.weight": (8, 32), "mlp.fc2.bias": (8,)}
    expected = {"cls_token": (1, 1, 8), "pos_embed": (1, 5, 8), "patch_embed.proj.weight": (8, 3, 4, 4),
                "patch_embed.proj.bias": (8,), **{f"blocks.0.{k}": v for k, v in block.items()},
                "norm.weight": (8,), "norm.bias": (8,), "head.weight": (5, 8), "head.bias": (5,)}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, nn.LayerNorm))
    avg = vit.VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, class_token=False,
                                global_pool="avg", num_classes=0)
    assert "cls_token" not in avg.state_dict() and avg.pos_embed.shape == (1, 4, 8)
    assert {"fc_norm.weight", "fc_norm.bias"} <= set(avg.state_dict()) and "norm.weight" not in avg.state_dict()
    assert avg(images(2, 3, 8)).shape == (2, 8)  # no head: pooled, normalised features


def test_bad_pooling_options_are_refused():
    with pytest.raises(ValueError, match="class_token"):
        vit.VisionTransformer(**TINY, class_token=False, global_pool="token")
    with pytest.raises(ValueError, match="global_pool"):
        vit.VisionTransformer(**TINY, global_pool="max")


def test_mlp_is_fc1_exact_gelu_fc2():
    torch.manual_seed(0)
    mlp = vit.Mlp(6, 10)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    mlp = mlp.double()
    h = mlp.fc1(x)
    torch.testing.assert_close(mlp(x), mlp.fc2(0.5 * h * (1 + torch.erf(h / math.sqrt(2)))))


def test_block_is_pre_norm_with_two_residuals():
    torch.manual_seed(0)
    blk = vit.Block(16, 4).double().eval()
    x = torch.randn(2, 5, 16, dtype=torch.float64)

    def ln(norm, t):  # written out: mean and biased variance over the features
        mu = t.mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(((t - mu) ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight + norm.bias

    q, k, v = blk.attn.qkv(ln(blk.norm1, x)).reshape(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 16)
    y = x + blk.attn.proj(attn)
    h = blk.mlp.fc1(ln(blk.norm2, y))
    y = y + blk.mlp.fc2(h * 0.5 * (1 + torch.erf(h / math.sqrt(2))))
    torch.testing.assert_close(blk(x), y)
    out, weights = blk(x, return_attention=True)
    torch.testing.assert_close(out, y)
    assert weights.shape == (2, 4, 5, 5)


def test_attention_maps_are_the_softmax_of_each_block_and_leave_the_logits_alone():
    torch.manual_seed(0)
    model = vit.VisionTransformer(**TINY).eval()
    x = images()
    with torch.no_grad():
        logits, maps = model(x, return_attention=True)
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)
        assert len(maps) == 2 and all(m.shape == (2, 4, 65, 65) for m in maps)
        torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 65))
        tokens = model.embed(x)
        blk = model.blocks[0]
        q, k, _ = blk.attn.qkv(blk.norm1(tokens)).reshape(2, 65, 3, 4, 16).permute(2, 0, 3, 1, 4)
        torch.testing.assert_close(maps[0], torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1))
        for got, want in zip(model.get_attention_maps(x), maps):
            torch.testing.assert_close(got, want)


def test_embed_prepends_cls_then_adds_positions():
    torch.manual_seed(0)
    model = vit.VisionTransformer(**TINY)
    x = images(1)
    tokens = model.embed(x)
    patches = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=4)
    patches = patches.flatten(2).transpose(1, 2)  # row-major patch order
    torch.testing.assert_close(tokens[:, 0], model.cls_token[:, 0] + model.pos_embed[:, 0])
    torch.testing.assert_close(tokens[:, 1:], patches + model.pos_embed[:, 1:])


# ------------------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize("name, expected", [("vit_base_patch16_224", 86_567_656),
                                            ("vit_large_patch16_224", 304_326_632),
                                            ("vit_huge_patch14_224", 632_045_800)])
def test_exact_parameter_counts_on_the_meta_device(name, expected):
    with torch.device("meta"):
        model = vit.VisionTransformer(**vit.VIT_CONFIGS[name])
    assert model.pos_embed.is_meta
    assert vit.count_parameters(model) == expected


def test_count_parameters_by_hand_and_trainable_only():
    model = vit.VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=4, depth=1,
                                  num_heads=2, mlp_ratio=2.0)
    d, n = 4, 4
    by_hand = (16 * d + d) + d + (n + 1) * d + (3 * d * d + 3 * d + d * d + d + 2 * d * 8 + 8 + d + 4 * d) \
        + 2 * d + (d * 3 + 3)
    assert vit.count_parameters(model) == by_hand
    model.head.requires_grad_(False)
    assert vit.count_parameters(model, trainable_only=True) == by_hand - 15


# -------------------------------------------------------------------------------------- DropPath


def test_drop_path_keeps_the_expectation_and_is_identity_at_eval():
    torch.manual_seed(0)
    layer = vit.DropPath(0.3).train()
    x = torch.ones(20_000, 3, 2)
    y = layer(x)
    per_sample = y.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # a whole sample is kept or dropped
    assert per_sample[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    standard_error = math.sqrt(0.3 / 0.7 / 20_000)
    assert abs(y.mean().item() - 1.0) < 5 * standard_error
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.3) < 0.02
    layer.eval()
    assert layer(x) is x
    assert vit.DropPath(0.0).train()(x) is x


def test_block_with_drop_path_is_deterministic_at_eval():
    torch.manual_seed(0)
    plain, dropping = vit.Block(8, 2), vit.Block(8, 2, drop_path=0.5)
    dropping.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 8)
    torch.testing.assert_close(dropping.eval()(x), plain.eval()(x))


# ------------------------------------------------------------------- rollout and attention distance


def test_attention_rollout_two_layers_by_hand():
    # layer 1: two heads whose mean is [[1, 0], [0.5, 0.5]]; layer 2: one map [[0.5, 0.5], [0, 1]]
    layer1 = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]]])
    layer2 = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]], [[0.5, 0.5], [0.0, 1.0]]]])
    # (A + I) / 2: [[1, 0], [.25, .75]] then [[.75, .25], [0, 1]]; rollout = second @ first
    expected = torch.tensor([[[0.8125, 0.1875], [0.25, 0.75]]])
    torch.testing.assert_close(vit.attention_rollout([layer1, layer2]), expected)
    torch.testing.assert_close(vit.attention_rollout(torch.stack([layer1, layer2])), expected)


def test_attention_rollout_discards_the_smallest_weights_then_renormalises():
    a = torch.tensor([[[[0.9, 0.1], [0.3, 0.7]]]])
    # floor(0.25 * 4) = 1 entry dropped (0.1); + I -> [[1.9, 0], [0.3, 1.7]]; rows / 1.9 and / 2.0
    torch.testing.assert_close(vit.attention_rollout([a], discard_ratio=0.25), torch.tensor([[[1.0, 0.0],
                                                                                               [0.15, 0.85]]]))


def test_rollout_of_a_real_model_has_rows_that_sum_to_one():
    torch.manual_seed(0)
    model = vit.VisionTransformer(**TINY).eval()
    with torch.no_grad():
        rollout = vit.attention_rollout(model.get_attention_maps(images()), discard_ratio=0.5)
    assert rollout.shape == (2, 65, 65)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 65))


def brute_force_mean_distance(h, w, patch):
    """Mean Euclidean distance between all (query, key) pairs of patch centres, by two loops."""
    cells = [(r, c) for r in range(h) for c in range(w)]
    total = sum(math.dist(a, b) for a in cells for b in cells)
    return patch * total / len(cells) ** 2


def test_mean_attention_distance_of_uniform_attention_is_the_mean_pairwise_distance():
    h, w, patch = 3, 4, 16
    t = 1 + h * w
    uniform = torch.full((2, 5, t, t), 1.0 / t)  # CLS included: dropped and renormalised away
    got = vit.mean_attention_distance([uniform, uniform], (h, w), patch)
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, torch.full((2, 5), brute_force_mean_distance(h, w, patch), dtype=torch.float64))


def test_mean_attention_distance_hand_cases_per_layer_and_head():
    eye = torch.eye(4).expand(1, 1, 4, 4)  # 2 x 2 grid, no CLS: every patch looks at itself
    neighbour = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0.0]]).expand(1, 1, 4, 4)
    uniform = torch.full((1, 1, 4, 4), 0.25)  # distances 0, 1, 1, sqrt(2) from each patch
    maps = [torch.cat([eye, neighbour], dim=1), torch.cat([uniform, eye], dim=1)]
    got = vit.mean_attention_distance(maps, 2, patch_size=8, num_prefix_tokens=0)
    expected = torch.tensor([[0.0, 8.0], [8 * (2 + math.sqrt(2)) / 4, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="patch tokens"):
        vit.mean_attention_distance(maps, 3, patch_size=8, num_prefix_tokens=0)


def test_position_similarity_is_the_cosine_similarity():
    pos = torch.randn(1, 1 + 6, 5, generator=torch.Generator().manual_seed(0))
    sim = vit.position_similarity(pos)
    brute = torch.tensor([[F.cosine_similarity(a, b, dim=0).item() for b in pos[0, 1:]] for a in pos[0, 1:]])
    torch.testing.assert_close(sim, brute)


# ===================================================================== learner checks (check_vit)


def learner_layer_norm(x, weight, bias, eps=1e-6):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps) * weight + bias


def learner_gelu(x):
    return x * torch.special.ndtr(x)


@pytest.mark.parametrize("graded", [False, True])
def test_right_layer_norm_and_gelu_pass(graded, capsys):
    check_vit.layer_norm(learner_layer_norm, seed=7 * graded, graded=graded)
    check_vit.gelu(learner_gelu, seed=7 * graded, graded=graded)
    out = capsys.readouterr().out
    assert "\u2714 layer_norm" in out and "\u2714 gelu" in out


def _ln_wrong(kind):
    def wrong(x, weight, bias, eps=1e-6):
        if kind == "unbiased":
            y = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps)
        elif kind == "tokens":
            y = (x - x.mean(-2, keepdim=True)) / torch.sqrt(x.var(-2, unbiased=False, keepdim=True) + eps)
        elif kind == "everything":
            y = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps)
        elif kind == "eps_outside":
            centred = x - x.mean(-1, keepdim=True)
            y = centred / (centred.pow(2).mean(-1, keepdim=True).sqrt() + eps)
        elif kind == "no_sqrt":
            centred = x - x.mean(-1, keepdim=True)
            y = centred / (centred.pow(2).mean(-1, keepdim=True) + eps)
        elif kind == "no_affine":
            return learner_layer_norm(x, torch.ones_like(weight), torch.zeros_like(bias), eps)
        else:  # no eps
            centred = x - x.mean(-1, keepdim=True)
            y = centred / centred.pow(2).mean(-1, keepdim=True).sqrt()
        return y * weight + bias

    return wrong


@pytest.mark.parametrize("kind, label, graded", [
    ("unbiased", "unbiased variance", False), ("tokens", "wrong axis", False),
    ("everything", "every axis at once", False), ("eps_outside", "eps outside the square root", False),
    ("no_sqrt", "variance instead of the standard deviation", False),
    ("no_affine", "learned scale and shift", False), ("no_eps", "left eps out", True)])
def test_layer_norm_mistakes_are_named(kind, label, graded):
    with pytest.raises(CheckFailed, match=label):
        check_vit.layer_norm(_ln_wrong(kind), graded=graded, seed=3)


@pytest.mark.parametrize("wrong, label", [
    (lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))), "tanh approximation"),
    (lambda x: x.clamp(min=0), "ReLU"),
    (lambda x: x / (1 + torch.exp(-1.702 * x)), "sigmoid approximation"),
    (lambda x: x * (1 + torch.erf(x)) / 2, "sqrt\\(2\\) inside erf"),
    (lambda x: x * torch.special.ndtr(x) * 2, "factor 0.5"),
])
def test_gelu_mistakes_are_named(wrong, label):
    with pytest.raises(CheckFailed, match=label):
        check_vit.gelu(wrong)


@pytest.mark.parametrize("check, fn, builtin", [
    (check_vit.layer_norm, lambda x, weight, bias, eps=1e-6: F.layer_norm(x, x.shape[-1:], weight, bias, eps),
     "F.layer_norm"),
    (check_vit.layer_norm, lambda x, weight, bias, eps=1e-6: torch.layer_norm(x, x.shape[-1:], weight, bias, eps),
     "torch.layer_norm"),
    (check_vit.gelu, lambda x: F.gelu(x), "F.gelu"),
    (check_vit.gelu, lambda x: nn.GELU()(x), "nn.GELU"),
])
def test_calling_the_builtin_scores_zero(check, fn, builtin):
    with pytest.raises(CheckFailed, match=f"calls .*{builtin}.*the very thing"):
        check(fn)


def test_nn_layer_norm_is_refused():
    def with_module(x, weight, bias, eps=1e-6):
        norm = nn.LayerNorm(x.shape[-1], eps=eps).to(x.dtype)
        with torch.no_grad():
            norm.weight.copy_(weight)
            norm.bias.copy_(bias)
        return norm(x)

    with pytest.raises(CheckFailed, match="nn.LayerNorm"):
        check_vit.layer_norm(with_module)


# --- a learner's block and ViT, written differently from the reference (einsum attention, own norm, unfold)


class LearnerLayerNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        return learner_layer_norm(x, self.weight, self.bias, self.eps)


class LearnerAttention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).unbind(dim=2)  # each (B, N, H, Dh)
        scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
        out = torch.einsum("bhnm,bmhd->bnhd", scores.softmax(dim=-1), v)
        return self.proj(out.flatten(2))


class LearnerMlp(nn.Module):
    def __init__(self, dim, hidden, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LearnerBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, mistake=None):
        super().__init__()
        eps = 1e-5 if mistake == "eps" else 1e-6
        self.norm1, self.norm2 = LearnerLayerNorm(dim, eps), LearnerLayerNorm(dim, eps)
        self.attn = LearnerAttention(dim, num_heads, qkv_bias)
        act = {"relu": torch.relu, "tanh": lambda h: F.gelu(h, approximate="tanh")}.get(mistake, learner_gelu)
        self.mlp = LearnerMlp(dim, int(dim * mlp_ratio), act)
        self.mistake = mistake

    def forward(self, x):
        if self.mistake == "post_norm":
            x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.mlp(x))
        if self.mistake == "swapped":
            x = x + self.attn(self.norm2(x))
            return x + self.mlp(self.norm1(x))
        a = self.attn(self.norm1(x))
        x = a if self.mistake in ("no_residual", "no_attn_residual") else a + x
        m = self.mlp(self.norm2(x))
        return m if self.mistake in ("no_residual", "no_mlp_residual") else x + m


def learner_block(mistake=None):
    return lambda dim, num_heads, mlp_ratio=4.0, qkv_bias=True: LearnerBlock(dim, num_heads, mlp_ratio, qkv_bias,
                                                                              mistake)


@pytest.mark.parametrize("graded", [False, True])
def test_right_block_passes(graded, capsys):
    check_vit.block(LearnerBlock, seed=5 * graded, graded=graded)
    assert "\u2714 Block(dim=" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, label", [
    ("post_norm", "post-norm"), ("no_residual", "both residual connections"),
    ("no_attn_residual", "residual connection around attention"),
    ("no_mlp_residual", "residual connection around the MLP"), ("relu", "ReLU in the MLP"),
    ("tanh", "tanh approximation"), ("eps", "default eps"), ("swapped", "swapped the two norms")])
def test_block_mistakes_are_named(mistake, label):
    with pytest.raises(CheckFailed, match=label):
        check_vit.block(learner_block(mistake))


def test_block_built_on_the_reference_is_refused():
    class Renamed(vit.Block):  # the reference under another name, with its keys
        pass

    with pytest.raises(CheckFailed, match="vitlab.vit.Block"):
        check_vit.block(Renamed)


class LearnerPatchEmbed(nn.Module):
    def __init__(self, patch, chans, dim):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(chans, dim, patch, stride=patch)

    def forward(self, x):  # unfold + matmul: the same map as the convolution
        cols = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (B, N, C*P*P)
        return cols @ self.proj.weight.flatten(1).T + self.proj.bias


class LearnerViT(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mistake=None):
        super().__init__()
        n = (img_size // patch_size) ** 2
        self.mistake = mistake
        self.patch_embed = LearnerPatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n if mistake == "no_cls_slot" else n + 1, embed_dim))
        block_mistake = mistake if mistake in ("post_norm", "relu") else None
        self.blocks = nn.Sequential(*[LearnerBlock(embed_dim, num_heads, mistake=block_mistake)
                                      for _ in range(depth)])
        if mistake != "no_norm_module":
            self.norm = LearnerLayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        tokens = self.patch_embed(x)
        cls = self.cls_token.repeat(tokens.shape[0], 1, 1)
        if self.mistake == "cls_without_position":
            tokens = torch.cat([cls, tokens + self.pos_embed[:, 1:]], dim=1)
        elif self.mistake == "no_position":
            tokens = torch.cat([cls, tokens], dim=1)
        else:
            tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        tokens = self.blocks(tokens)
        if self.mistake not in ("no_final_norm", "no_norm_module"):
            tokens = self.norm(tokens)
        if self.mistake == "mean":
            return self.head(tokens.mean(dim=1))
        if self.mistake == "mean_patches":
            return self.head(tokens[:, 1:].mean(dim=1))
        if self.mistake == "last":
            return self.head(tokens[:, tokens.shape[1] - 1])
        return self.head(tokens[:, 0])


def learner_vit(mistake=None):
    return lambda **config: LearnerViT(**config, mistake=mistake)


@pytest.mark.parametrize("graded", [False, True])
def test_right_vit_passes(graded, capsys):
    check_vit.vision_transformer(LearnerViT, seed=4 * graded, graded=graded)
    assert "\u2714 VisionTransformer(" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, label", [
    ("no_cls_slot", "forgot the CLS slot in pos_embed"), ("no_final_norm", "forgot the final LayerNorm"),
    ("no_norm_module", "forgot the final LayerNorm"), ("mean", "averaged the tokens when the CLS token"),
    ("mean_patches", "averaged the patch tokens"), ("cls_without_position", "no position embedding to the CLS"),
    ("no_position", "forgot to add the position embedding"), ("post_norm", "post-norm"),
    ("relu", "ReLU in the blocks"), ("last", "last token")])
def test_vit_mistakes_are_named(mistake, label):
    with pytest.raises(CheckFailed, match=label):
        check_vit.vision_transformer(learner_vit(mistake))


def test_vit_built_on_the_reference_is_refused():
    def lazy(**config):
        return vit.VisionTransformer(**config)

    with pytest.raises(CheckFailed, match="vitlab.vit.VisionTransformer"):
        check_vit.vision_transformer(lazy)


def learner_count(img_size, patch_size, in_chans, num_classes, embed_dim, depth, mlp_ratio=4.0):
    d, hidden = embed_dim, int(embed_dim * mlp_ratio)
    linear = lambda i, o: i * o + o  # noqa: E731
    block = 2 * 2 * d + linear(d, 3 * d) + linear(d, d) + linear(d, hidden) + linear(hidden, d)
    tokens = (img_size // patch_size) ** 2 + 1
    return linear(in_chans * patch_size ** 2, d) + d + tokens * d + depth * block + 2 * d + linear(d, num_classes)


@pytest.mark.parametrize("graded", [False, True])
def test_right_parameter_count_passes(graded, capsys):
    check_vit.parameter_count(learner_count, seed=2 * graded, graded=graded)
    assert "ViT-B/16 = 86,567,656" in capsys.readouterr().out


@pytest.mark.parametrize("offset, label", [
    (lambda c: -c["embed_dim"], "the CLS token, or its row in the position table"),
    (lambda c: -2 * c["embed_dim"], "final LayerNorm"),
    (lambda c: -2 * c["embed_dim"] * c["depth"], "one LayerNorm per block"),
    (lambda c: -c["embed_dim"] * (4 * c["depth"] + 2), "forgot the LayerNorms"),
    (lambda c: -c["num_classes"] * (c["embed_dim"] + 1), "classification head"),
    (lambda c: -c["embed_dim"] * (1 + 5 * c["depth"]) - int(c["embed_dim"] * c.get("mlp_ratio", 4.0)) * c["depth"]
     - c["num_classes"], "forgot the biases"),
])
def test_parameter_count_mistakes_are_named(offset, label):
    def wrong(**config):
        return learner_count(**config) + offset(config)

    with pytest.raises(CheckFailed, match=label):
        check_vit.parameter_count(wrong)


def test_parameter_count_by_building_the_model_is_refused():
    def lazy(img_size, patch_size, in_chans, num_classes, embed_dim, depth, mlp_ratio=4.0):
        with torch.device("meta"):
            return vit.count_parameters(vit.VisionTransformer(img_size, patch_size, in_chans, num_classes, embed_dim,
                                                              depth, num_heads=1, mlp_ratio=mlp_ratio))

    with pytest.raises(CheckFailed, match="count_parameters|VisionTransformer"):
        check_vit.parameter_count(lazy)

"""vitlab.peft against independent truths: LoRA merged vs unmerged outputs (and timm loading the merged weights),
the identity at initialisation, torch's nn.MultiheadAttention with bias_k/bias_v as a one-slot prefix, closed
forms for the trainable parameters; and the learner checks of LoRALinear, PrefixAttention."""
import copy
import math

import pytest
import torch
from torch import nn

from vitlab import check_transfer, peft, transfer
from vitlab.attention import MultiHeadAttention
from vitlab.check import CheckFailed
from vitlab.vit import VisionTransformer

SMALL = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=3, num_heads=4)


def images(b=4, seed=0):
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def randomise_(params, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_lora_linear_is_base_plus_scaled_low_rank_product():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    lora = peft.LoRALinear(copy.deepcopy(base), r=3, alpha=6.0)
    assert torch.equal(lora.lora_B, torch.zeros(6, 3)) and lora.lora_A.abs().sum() > 0
    x = torch.randn(4, 10)
    torch.testing.assert_close(lora(x), base(x), rtol=0, atol=0)   # B = 0: the pretrained layer exactly
    randomise_([lora.lora_B])
    by_hand = x @ (base.weight + 2.0 * lora.lora_B @ lora.lora_A).T + base.bias
    torch.testing.assert_close(lora(x), by_hand, atol=1e-6, rtol=1e-5)
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]


@pytest.mark.parametrize("targets", [("attn.qkv",), ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")])
def test_lora_on_a_vit_merges_into_plain_timm_weights_with_the_same_outputs(timm, targets):
    torch.manual_seed(0)
    plain = VisionTransformer(**SMALL).eval()
    model = peft.add_lora(copy.deepcopy(plain), r=2, alpha=4.0, targets=targets).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images()), plain(images()), rtol=0, atol=0)
    randomise_([p for n, p in model.named_parameters() if "lora_B" in n])
    with torch.no_grad():
        unmerged = model(images())
        assert (unmerged - plain(images())).abs().max() > 1e-3
        merged = peft.merge_lora(model)
        torch.testing.assert_close(merged(images()), unmerged, atol=1e-5, rtol=1e-4)
    assert list(merged.state_dict()) == list(plain.state_dict())
    theirs = timm.models.vision_transformer.VisionTransformer(**SMALL).eval()
    theirs.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs(images()), unmerged, atol=1e-5, rtol=1e-4)


def closed_form(method, d, depth, k, mlp_ratio=4.0, r=0, bottleneck=0, length=0):
    """Trainable parameters of each method on a ViT of width d and depth L with a k-class head."""
    head = d * k + k
    hidden = int(d * mlp_ratio)
    return head + depth * {"probe": 0, "lora_qkv": r * (d + 3 * d), "lora_all": r * ((d + 3 * d) + (d + d)
                                                                                       + (d + hidden) + (hidden + d)),
                           "adapter": d * bottleneck + bottleneck + bottleneck * d + d, "prefix": 2 * length * d}[method]


@pytest.mark.parametrize("method", ["probe", "lora_qkv", "lora_all", "adapter", "prefix"])
def test_trainable_parameters_match_the_closed_form(method):
    model = transfer.replace_head(VisionTransformer(**SMALL), 7)
    total_before = sum(p.numel() for p in model.parameters())
    settings = dict(r=4, bottleneck=6, length=5)
    if method == "probe":
        transfer.freeze(model, ("head",))
    elif method.startswith("lora"):
        targets = ("attn.qkv",) if method == "lora_qkv" else ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
        peft.add_lora(model, r=4, targets=targets)
    elif method == "adapter":
        peft.add_adapters(model, bottleneck=6)
    else:
        peft.add_prefix(model, length=5)
    trainable, total = transfer.trainable_parameters(model)
    expected = closed_form(method, SMALL["embed_dim"], SMALL["depth"], 7, **settings)
    assert trainable == expected
    assert total == total_before + expected - (SMALL["embed_dim"] * 7 + 7)


def test_adapters_start_as_the_identity_and_then_change_the_model():
    torch.manual_seed(0)
    plain = VisionTransformer(**SMALL).eval()
    model = peft.add_adapters(copy.deepcopy(plain), bottleneck=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images()), plain(images()), rtol=0, atol=0)
        model.blocks[1].mlp.adapter.up.weight.normal_(0, 0.1)
        assert (model(images()) - plain(images())).abs().max() > 1e-3
    h = torch.randn(2, 5, 32)
    adapter = model.blocks[1].mlp.adapter
    torch.testing.assert_close(adapter(h), h + adapter.up(torch.nn.functional.gelu(adapter.down(h))))


def test_a_one_slot_prefix_is_torchs_multihead_attention_with_bias_k_and_bias_v():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, add_bias_kv=True, batch_first=True)
    randomise_([mha.bias_k, mha.bias_v, mha.in_proj_bias, mha.out_proj.bias], seed=1)
    attn = MultiHeadAttention.from_torch(nn.MultiheadAttention(32, 4, batch_first=True))
    with torch.no_grad():
        attn.qkv.weight.copy_(mha.in_proj_weight)
        attn.qkv.bias.copy_(mha.in_proj_bias)
        attn.proj.weight.copy_(mha.out_proj.weight)
        attn.proj.bias.copy_(mha.out_proj.bias)
    prefix = peft.PrefixAttention(attn, length=1)
    with torch.no_grad():
        prefix.prefix_k.copy_(mha.bias_k[0])
        prefix.prefix_v.copy_(mha.bias_v[0])
        x = torch.randn(3, 6, 32)
        torch.testing.assert_close(prefix(x), mha(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-4)


def test_prefix_keys_are_seen_by_every_query_and_only_the_prefixes_learn():
    torch.manual_seed(0)
    model = peft.add_prefix(VisionTransformer(**SMALL), length=3)
    assert {n.split(".")[-1] for n, p in model.named_parameters() if p.requires_grad} == {"prefix_k", "prefix_v",
                                                                                         "weight", "bias"}
    assert all(n.startswith("head") or "prefix" in n for n, p in model.named_parameters() if p.requires_grad)
    model(images()).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "prefix" in n)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


# ------------------------------------------------------------------------------------------- checks

class LoRACopy(peft.LoRALinear):
    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling


class PrefixCopy(peft.PrefixAttention):
    def forward(self, x):
        b, n, dim = x.shape
        h, hd = self.attn.num_heads, self.attn.head_dim
        q, k, v = self.attn.qkv(x).reshape(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)
        k = torch.cat([self.prefix_k.reshape(-1, h, hd).transpose(0, 1).expand(b, -1, -1, -1), k], dim=2)
        v = torch.cat([self.prefix_v.reshape(-1, h, hd).transpose(0, 1).expand(b, -1, -1, -1), v], dim=2)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(hd)).softmax(-1)
        return self.attn.proj((weights @ v).transpose(1, 2).reshape(b, n, dim))


def test_checks_accept_right_modules_and_refuse_the_references():
    for graded in (False, True):
        check_transfer.lora_linear(LoRACopy, seed=2, graded=graded)
        check_transfer.prefix_attention(PrefixCopy, seed=2, graded=graded)
    with pytest.raises(CheckFailed, match="the very thing"):
        check_transfer.lora_linear(peft.LoRALinear)
    with pytest.raises(CheckFailed, match="the very thing"):
        check_transfer.prefix_attention(peft.PrefixAttention)


class RandomB(LoRACopy):
    def __init__(self, base, r=4, alpha=4.0):
        super().__init__(base, r, alpha)
        nn.init.normal_(self.lora_B)


class TrainableBase(LoRACopy):
    def __init__(self, base, r=4, alpha=4.0):
        super().__init__(base, r, alpha)
        self.base.requires_grad_(True)


class AlphaOnly(LoRACopy):
    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.alpha


class MergeWithoutScaling(LoRACopy):
    def merge(self):
        merged = copy.deepcopy(self.base)
        with torch.no_grad():
            merged.weight += self.lora_B @ self.lora_A
        return merged


class MergeWithoutBias(LoRACopy):
    def merge(self):
        merged = nn.Linear(self.base.in_features, self.base.out_features).to(self.base.weight)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.delta_weight())
            merged.bias.zero_()
        return merged


class MergeInPlace(LoRACopy):
    def merge(self):
        with torch.no_grad():
            self.base.weight += self.delta_weight()
        return self.base


@pytest.mark.parametrize("cls, says", [
    (RandomB, "initialised B randomly"), (TrainableBase, "left the pretrained weights trainable"),
    (AlphaOnly, "scaled the update by alpha instead of alpha / r"),
    (MergeWithoutScaling, "forgot the scaling alpha / r in the merged weight"),
    (MergeWithoutBias, "forgot to copy the bias"), (MergeInPlace, "changed the LoRA layer itself")])
def test_lora_check_names_the_mistake(cls, says):
    with pytest.raises(CheckFailed, match=says):
        check_transfer.lora_linear(cls)


@pytest.mark.parametrize("label, key, hint", check_transfer.PREFIX_MISTAKES, ids=[m[1] for m in
                                                                                  check_transfer.PREFIX_MISTAKES])
def test_prefix_check_names_each_mistake(label, key, hint):
    class Wrong(check_transfer._WrongPrefix):
        def __init__(self, attn, length):
            super().__init__(attn, length, key)

    with pytest.raises(CheckFailed) as failed:
        check_transfer.prefix_attention(Wrong, graded=True)
    assert label in str(failed.value)


def test_prefix_check_wants_the_attention_frozen():
    class Unfrozen(PrefixCopy):
        def __init__(self, attn, length):
            super().__init__(attn, length)
            self.attn.requires_grad_(True)

    with pytest.raises(CheckFailed, match="left the pretrained attention trainable"):
        check_transfer.prefix_attention(Unfrozen)

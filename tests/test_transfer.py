"""vitlab.transfer against timm (layer-wise lr decay groups) and closed forms (trainable parameters); the
fine-tuning loop; and vitlab.check_transfer: right learner code passes, each known mistake is named."""
import math
import types

import pytest
import torch

from vitlab import check_transfer, transfer
from vitlab.check import CheckFailed
from vitlab.vit import VisionTransformer

SMALL = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=16, depth=3, num_heads=2)


def by_name(model, groups, key):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g[key] for g in groups for p in g["params"]}


def copy_of(fn):
    """The same function under another code object, so that the checks' guard does not take it for the reference."""
    code = fn.__code__.replace(co_name=fn.__name__ + "_copy")
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_layer_decay_groups_equal_timms_param_groups_layer_decay_but_for_the_final_norm(timm, depth):
    """timm 1.0 groups the final `norm` with the last block (layer L); BEiT, and this course, with the head (L + 1)."""
    from timm.optim import param_groups_layer_decay

    timm_vit = timm.models.vision_transformer.VisionTransformer(**dict(SMALL, depth=depth))
    ours = VisionTransformer(**dict(SMALL, depth=depth))
    lr, decay = 1e-3, 0.7
    theirs = param_groups_layer_decay(timm_vit, weight_decay=0.05, layer_decay=decay,
                                      no_weight_decay_list=timm_vit.no_weight_decay())
    groups = transfer.layer_decay_groups(ours, lr=lr, weight_decay=0.05, layer_decay=decay)
    scale = by_name(timm_vit, theirs, "lr_scale")
    mine = {k: v / lr for k, v in by_name(ours, groups, "lr").items()}
    assert mine.keys() == scale.keys() == dict(ours.named_parameters()).keys()
    for name in mine:
        if name.startswith("norm."):
            assert math.isclose(scale[name], decay) and mine[name] == 1.0
        else:
            assert math.isclose(mine[name], scale[name], rel_tol=1e-12), name
    assert by_name(ours, groups, "weight_decay") == by_name(timm_vit, theirs, "weight_decay")
    assert mine["head.weight"] == 1.0
    assert math.isclose(mine["pos_embed"], decay ** (depth + 1))


def test_layer_decay_groups_hand_worked_depth_two():
    model = VisionTransformer(**dict(SMALL, depth=2, global_pool="avg"))
    lrs = by_name(model, transfer.layer_decay_groups(model, 1.0, 0.1, 0.5), "lr")
    wds = by_name(model, transfer.layer_decay_groups(model, 1.0, 0.1, 0.5), "weight_decay")
    assert lrs["cls_token"] == lrs["patch_embed.proj.weight"] == 0.125
    assert lrs["blocks.0.attn.qkv.weight"] == 0.25 and lrs["blocks.1.norm2.bias"] == 0.5
    assert lrs["fc_norm.weight"] == lrs["head.bias"] == 1.0
    assert wds["blocks.0.attn.qkv.weight"] == wds["patch_embed.proj.weight"] == wds["head.weight"] == 0.1
    assert wds["cls_token"] == wds["pos_embed"] == wds["blocks.0.norm1.weight"] == wds["head.bias"] == 0.0


def test_linear_probe_trains_only_a_new_head_closed_form():
    model = transfer.linear_probe(VisionTransformer(**SMALL), num_classes=7)
    trainable, total = transfer.trainable_parameters(model)
    d = SMALL["embed_dim"]
    assert trainable == d * 7 + 7
    assert total == sum(p.numel() for p in VisionTransformer(**dict(SMALL, num_classes=7)).parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert transfer.layer_decay_groups(model, 1.0, 0.1, 0.5) == [
        {"params": [model.head.weight], "lr": 1.0, "weight_decay": 0.1, "layer": SMALL["depth"] + 1},
        {"params": [model.head.bias], "lr": 1.0, "weight_decay": 0.0, "layer": SMALL["depth"] + 1}][::-1]


def test_finetune_learns_and_leaves_frozen_weights_alone():
    torch.manual_seed(0)
    model = transfer.linear_probe(VisionTransformer(**SMALL), num_classes=2)
    x = torch.randn(64, 3, 16, 16)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    x[:, 0] += y[:, None, None] * 2.0
    frozen = model.blocks[0].attn.qkv.weight.clone()
    history = transfer.finetune(model, (x, y), (x, y), epochs=30, lr=1e-2, batch_size=32, progress=False)
    assert history["steps"] == 60 and len(history["train_loss"]) == 60
    assert sum(history["train_loss"][-5:]) < sum(history["train_loss"][:5])
    assert history["val_acc"] > 0.8
    assert torch.equal(model.blocks[0].attn.qkv.weight, frozen)


def test_finetune_uses_the_groups_learning_rates():
    model = VisionTransformer(**dict(SMALL, depth=1))
    groups = transfer.layer_decay_groups(model, lr=0.1, weight_decay=0.0, layer_decay=0.0)  # only layer 2 moves
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = (torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,)))
    transfer.finetune(model, data, None, epochs=2, groups=groups, batch_size=4, progress=False, warmup_steps=1)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"norm.weight", "norm.bias", "head.weight", "head.bias"}


# ------------------------------------------------------------------------------------------- checks

def test_check_accepts_a_copy_of_the_reference_and_refuses_the_reference():
    for graded in (False, True):
        check_transfer.layer_decay_groups(copy_of(transfer.layer_decay_groups), seed=5, graded=graded)
    with pytest.raises(CheckFailed, match="the very thing"):
        check_transfer.layer_decay_groups(transfer.layer_decay_groups)


@pytest.mark.parametrize("mistake", check_transfer.GROUP_MISTAKES, ids=lambda m: m.label[:40])
def test_check_names_each_layer_decay_mistake(mistake):
    with pytest.raises(CheckFailed) as failed:
        check_transfer.layer_decay_groups(mistake.impl, graded=True)
    assert mistake.label in str(failed.value)


def test_check_says_which_parameter_is_off():
    reference = copy_of(transfer.layer_decay_groups)

    def off(model, lr, weight_decay, layer_decay):
        groups = reference(model, lr, weight_decay, layer_decay)
        groups[0]["lr"] *= 2
        return groups

    with pytest.raises(CheckFailed, match="gets lr"):
        check_transfer.layer_decay_groups(copy_of(off))


def test_layer_decay_explorer_counts_each_layer_by_the_closed_form():
    from vitlab import widgets
    from vitlab.vit import VIT_CONFIGS

    explorer = widgets.LayerDecayExplorer({"B/16": VIT_CONFIGS["vit_base_patch16_224"]}, decay=0.5)
    counts, scale = explorer.layers()
    d, n = 768, 14 * 14
    assert counts[0] == 16 * 16 * 3 * d + d + d + (n + 1) * d
    assert list(counts[1:13]) == [12 * d * d + 13 * d] * 12
    assert counts[13] == 2 * d + d * 1000 + 1000
    assert list(scale) == [0.5 ** (13 - j) for j in range(14)]
    explorer.decay.value = 1.0
    assert list(explorer.layers()[1]) == [1.0] * 14 and explorer.png().startswith(b"\x89PNG")

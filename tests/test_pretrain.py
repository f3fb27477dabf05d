"""vitlab.pretrain: the script reproduces its backbone, the backbone loads strictly, and pretraining learns."""
import sys

import torch

from vitlab import data, pretrain, vit

TINY = dict(n=64, steps=3, batch_size=16, lr=2e-3, warmup_steps=1, weight_decay=0.05, seed=0)


def test_patch_targets_are_the_class_shares_of_each_patch():
    masks = torch.zeros(1, 4, 4, dtype=torch.int64)
    masks[0, :2, :2] = torch.tensor([[1, 1], [2, 0]])   # top-left patch: half class 1, a quarter class 2
    masks[0, 2:, 2:] = 3                                 # bottom-right patch: all class 3
    shares = pretrain.patch_targets(masks, 4, 2)
    assert shares.shape == (1, 4, 4)
    torch.testing.assert_close(shares[0, 0], torch.tensor([0.25, 0.5, 0.25, 0.0]))
    torch.testing.assert_close(shares[0, 1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(shares[0, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_the_script_reproduces_a_backbone_that_loads_strictly(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    written = []
    for run in ("a", "b"):
        out = tmp_path / run / "scenes_vit.pt"  # torch.save writes the file's name into it
        args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()] + [f"--out={out}"]
        monkeypatch.setattr(sys, "argv", ["vitlab.pretrain", *args])
        pretrain.main()
        written.append(out)
    torch.set_num_threads(threads)
    assert pretrain.sha256(written[0]) == pretrain.sha256(written[1]), "the same arguments gave other weights"
    state = torch.load(written[0], weights_only=True)
    model = vit.VisionTransformer(**pretrain.CONFIG)
    before = model.blocks[0].attn.qkv.weight.clone()
    model.load_state_dict(state, strict=True)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, before)


def test_backbone_is_pretrained_once_then_loaded_from_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITLAB_PROFILE", "cpu")
    monkeypatch.setattr(pretrain, "RECIPE", TINY)
    monkeypatch.setattr(pretrain, "weights_path", lambda: tmp_path / "pretrained" / "scenes_vit.pt")
    first = pretrain.backbone(progress=False)
    assert "pretraining the course's backbone once" in capsys.readouterr().out
    second = pretrain.backbone(progress=False)
    assert "pretraining" not in capsys.readouterr().out
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_pretraining_learns_what_lies_under_each_patch():
    """At a smaller size (1,000 scenes, 120 steps, about 10 s of CPU) the loss ends well below that of the best
    prediction that ignores the pixels: the same class shares for every patch, the average ones."""
    torch.set_num_threads(1)
    _, history = pretrain.pretrain(**dict(TINY, n=1000, steps=120, batch_size=32), progress=False)
    _, masks = pretrain.pretraining_data(1000)
    shares = pretrain.patch_targets(masks, len(data.SCENE_CLASSES) + 1, pretrain.CONFIG["patch_size"])
    prior = shares.mean(dim=(0, 1))
    blind = -(shares * prior.log()).sum(-1).mean().item()
    final = sum(history["loss"][-10:]) / 10
    assert final < 0.6 * blind, f"final loss {final:.3f}, blind guess {blind:.3f}"

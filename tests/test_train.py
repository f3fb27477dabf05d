"""vitlab.train: the schedule against its closed form, evaluate against a hand count, fit learning a
separable problem, its history, its stopping rules, its weight-decay groups and its live plot."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import vitlab.train as T


def separable(n: int, dim: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points labelled by the side of a fixed hyperplane they lie on, with a margin of 0.5."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=torch.Generator().manual_seed(123))
    w = w / w.norm()
    x = torch.randn(n, dim, generator=g)
    side = (x @ w > 0).long()
    x = x + (0.5 * (2 * side - 1)).unsqueeze(1) * w  # push each point 0.5 away from the plane
    return x, side


@pytest.mark.parametrize("step,expected", [(0, 0.0), (5, 0.5), (10, 1.0), (40, 0.75), (55, 0.5), (70, 0.25),
                                           (100, 0.0), (150, 0.0)])
def test_warmup_cosine_at_hand_picked_steps(step, expected):
    # 10 warmup steps of 100: linear 0 -> 1, then 0.5 (1 + cos(pi (s - 10) / 90))
    assert T.warmup_cosine(step, 100, 10) == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_floor_and_no_warmup():
    assert T.warmup_cosine(0, 50) == 1.0
    assert T.warmup_cosine(25, 50, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert T.warmup_cosine(50, 50, min_ratio=0.1) == pytest.approx(0.1)


def test_evaluate_against_a_hand_count():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.2, 0.1], [-1.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1, 1])  # argmax is 0, 1, 0, 0, 1: rows 0, 1 and 4 are right
    model = nn.Identity()
    assert T.evaluate(model, (logits, labels)) == pytest.approx(3 / 5)
    loader = DataLoader(TensorDataset(logits, labels), batch_size=2)
    assert T.evaluate(model, loader) == pytest.approx(3 / 5)


def test_evaluate_leaves_the_training_mode_as_it_was():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    T.evaluate(model, (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)))
    assert model.training
    T.evaluate(model.eval(), (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)))
    assert not model.training


def test_fit_learns_a_linearly_separable_set():
    torch.manual_seed(0)
    train, val = separable(800, seed=0), separable(400, seed=1)
    model = nn.Linear(10, 2)
    history = T.fit(model, train, val, epochs=5, lr=0.05, batch_size=64, warmup_steps=5, device="cpu",
                    plot=False, progress=False)
    assert history["val_acc"][-1] > 0.95
    assert T.evaluate(model, val) == history["val_acc"][-1]
    assert history["steps"] == 5 * math.ceil(800 / 64) == len(history["train_loss"]) == len(history["lr"])
    assert len(history["val_acc"]) == 5 and history["seconds"] > 0
    assert sum(history["train_loss"][-10:]) < sum(history["train_loss"][:10])


def test_fit_takes_dataloaders_and_follows_the_schedule_per_step():
    x, y = separable(160)
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)  # 10 steps per epoch
    history = T.fit(nn.Linear(10, 2), train, None, epochs=3, lr=0.2, warmup_steps=4, device="cpu",
                    plot=False, progress=False)
    total = 30
    expected = [0.2 * (s / 4 if s < 4 else 0.5 * (1 + math.cos(math.pi * (s - 4) / (total - 4))))
                for s in range(total)]
    assert history["lr"] == pytest.approx(expected, abs=1e-12)
    assert history["val_acc"] == []


def test_first_loss_is_the_untrained_models_cross_entropy_with_smoothing():
    x, y = separable(64)
    model = nn.Linear(10, 2)
    expected = F.cross_entropy(model(x[:32]), y[:32], label_smoothing=0.1).item()
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)
    history = T.fit(model, train, None, epochs=1, lr=0.1, label_smoothing=0.1, device="cpu", plot=False,
                    progress=False)
    assert history["train_loss"][0] == pytest.approx(expected, rel=1e-6)


def test_fit_stops_early_with_a_last_validation():
    train, val = separable(320), separable(100, seed=1)
    by_steps = T.fit(nn.Linear(10, 2), train, val, epochs=10, lr=0.1, batch_size=32, max_steps=15, device="cpu",
                     plot=False, progress=False)
    assert by_steps["steps"] == 15 and len(by_steps["val_acc"]) == 2  # 10 steps of epoch 1, 5 of epoch 2
    assert by_steps["lr"][-1] == pytest.approx(0.1 * T.warmup_cosine(14, 100))  # the schedule spans 10 epochs
    by_time = T.fit(nn.Linear(10, 2), train, val, epochs=10, lr=0.1, batch_size=32, max_seconds=0.0,
                    device="cpu", plot=False, progress=False)
    assert by_time["steps"] == 1 and len(by_time["val_acc"]) == 1


def test_fit_applies_the_augmentation_to_training_batches_only():
    seen = []

    def augment(batch):
        seen.append(len(batch))
        return batch.flip(0) * 0 + batch

    T.fit(nn.Linear(10, 2), separable(50), separable(30, seed=1), epochs=2, lr=0.1, batch_size=20,
          augment=augment, device="cpu", plot=False, progress=False)
    assert seen == [20, 20, 10, 20, 20, 10]


def test_weight_decay_skips_biases_norms_and_named_parameters():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.fc = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)

        def no_weight_decay(self):
            return {"pos_embed"}

    model = Tiny()
    decay, no_decay = T.param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.fc.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in (model.pos_embed, model.fc.bias,
                                                                    model.norm.weight, model.norm.bias)}


def test_live_plot_only_in_a_notebook(monkeypatch):
    import IPython.display

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(obj)

    def fake_display(obj, display_id=False):
        shown.append(obj)
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    args = dict(epochs=2, lr=0.1, batch_size=20, device="cpu", progress=False)
    T.fit(nn.Linear(10, 2), separable(40), separable(20, seed=1), **args)
    assert shown == []  # not in a notebook: no figure
    monkeypatch.setattr(T, "_in_notebook", lambda: True)
    T.fit(nn.Linear(10, 2), separable(40), separable(20, seed=1), plot=False, **args)
    assert shown == []
    T.fit(nn.Linear(10, 2), separable(40), separable(20, seed=1), **args)
    assert len(shown) >= 3  # shown once, then redrawn at least at the end of each epoch
    assert all(isinstance(obj, IPython.display.Image) and obj.data[:4] == b"\x89PNG" for obj in shown)

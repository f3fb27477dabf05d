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


# ---------------------------------------------------------------- schedules against timm and torch


def timm_cosine(timm, optimizer_lr=1.0, **kwargs):
    """timm's CosineLRScheduler on a one-parameter SGD, stepped per update: its lr at each step."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=optimizer_lr)
    sched = timm.scheduler.CosineLRScheduler(opt, t_in_epochs=False, **kwargs)
    return lambda step: sched._get_lr(step)[0]


@pytest.mark.parametrize("warmup_steps,warmup_lr_init,min_lr,prefix", [(0, 0.0, 0.0, False), (10, 1e-4, 1e-5, False),
                                                                       (7, 0.0, 0.02, True), (25, 0.3, 0.0, False)])
def test_cosine_lr_equals_timms_cosine_scheduler(timm_training, warmup_steps, warmup_lr_init, min_lr, prefix):
    truth = timm_cosine(timm_training, 0.5, t_initial=100, warmup_t=warmup_steps, warmup_lr_init=warmup_lr_init,
                        lr_min=min_lr, warmup_prefix=prefix)
    for step in range(0, 260):
        assert T.cosine_lr(step, 0.5, 100, warmup_steps, warmup_lr_init, min_lr, prefix) == pytest.approx(
            truth(step), abs=1e-12), step


def test_cosine_has_no_restart_it_stays_at_the_floor():
    lrs = [T.cosine_lr(s, 1.0, 50, 5, 0.0, 0.1) for s in range(200)]
    assert max(lrs[50:]) == min(lrs[50:]) == 0.1
    assert all(b <= a for a, b in zip(lrs[5:], lrs[6:]))  # never rises after the warm-up


def test_warmup_cosine_equals_timms_scheduler_with_the_warmup_as_a_prefix(timm_training):
    truth = timm_cosine(timm_training, 1.0, t_initial=90, warmup_t=10, lr_min=0.1, warmup_prefix=True)
    for step in range(130):  # (timm warms up to the base lr 1.0 from warmup_lr_init = 0, as warmup_cosine does)
        assert T.warmup_cosine(step, 100, 10, min_ratio=0.1) == pytest.approx(truth(step), abs=1e-12), step


def test_step_and_exponential_equal_torchs_schedulers():
    for make, ours in [(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.3),
                        lambda s: T.step_lr(s, 0.2, 7, 0.3)),
                       (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95),
                        lambda s: T.exponential_lr(s, 0.2, 0.95))]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
        sched = make(opt)
        for step in range(40):
            assert ours(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
            opt.step()
            sched.step()


def test_plot_schedules_draws_one_curve_per_schedule():
    import matplotlib.pyplot as plt

    fig = T.plot_schedules({"a": lambda s: 1.0, "b": lambda s: s / 10}, 11)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and list(lines[1].get_ydata()) == [s / 10 for s in range(11)]
    plt.close(fig)


def test_param_groups_skip_position_tables_and_tokens_by_name():
    from vitlab.distill import DistilledVisionTransformer

    model = DistilledVisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=1,
                                       num_heads=2)
    decay, no_decay = T.param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "dist_token", "pos_embed", "norm.weight", "head.bias"} <= skipped
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ------------------------------------------------------------------------------- clipping and AMP


def grads_of(seed, shapes, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


@pytest.mark.parametrize("scale,max_norm,norm_type", [(3.0, 1.0, 2.0), (0.01, 1.0, 2.0), (2.0, 0.5, 1.0),
                                                      (2.0, 0.5, float("inf"))])
def test_clip_grad_norm_equals_torch(scale, max_norm, norm_type):
    ours, theirs = grads_of(0, [(3, 4), (5,), (2, 2, 2)], scale), grads_of(0, [(3, 4), (5,), (2, 2, 2)], scale)
    total = T.clip_grad_norm(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert torch.allclose(total, expected)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.grad, b.grad, atol=1e-7)
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad, norm_type) for p in ours]),
                                     norm_type)
    assert after <= max_norm + 1e-5


def test_clip_grad_value_equals_torch():
    ours, theirs = grads_of(1, [(4, 4), (3,)], 2.0), grads_of(1, [(4, 4), (3,)], 2.0)
    T.clip_grad_value(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs))
    assert max(p.grad.abs().max() for p in ours) == pytest.approx(0.7)


def test_grad_scaler_step_unscales_before_clipping():
    """With a GradScaler (scale 2^10) the clipped update equals the one without scaling: the clipping threshold
    applies to the true gradients. Clipping the scaled gradients would shrink the step by the scale."""
    x, y = separable(32)
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)):
        torch.manual_seed(0)
        model = nn.Linear(10, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        norm = T.optimizer_step(F.cross_entropy(model(x), y) * 50, opt, scaler=scaler, clip_grad=0.1)
        results.append((norm, [p.detach().clone() for p in model.parameters()]))
    (norm_plain, plain), (norm_scaled, scaled) = results
    assert norm_plain > 0.1 and torch.allclose(norm_plain, norm_scaled, rtol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, scaled))


def test_optimizer_step_clips_by_value_and_rejects_other_modes():
    model = nn.Linear(3, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.weight.detach().clone()
    T.optimizer_step((model(torch.full((1, 3), 100.0))).sum(), opt, clip_grad=0.01, clip_mode="value")
    assert torch.allclose(before - model.weight.detach(), torch.full((1, 3), 0.01))
    with pytest.raises(ValueError):
        T.optimizer_step(model(torch.ones(1, 3)).sum(), opt, clip_grad=1.0, clip_mode="max")


# --------------------------------------------------------------------------------------------- EMA


def test_ema_decay_and_update_equal_timms_model_ema_v3(timm_training):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    theirs = timm_training.utils.model_ema.ModelEmaV3(model, decay=0.99, use_warmup=True, foreach=False)
    ours = T.ModelEma(model, decay=0.99)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(1, 40):
        model.train()
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert ours.update(model) == pytest.approx(theirs.get_decay(step), abs=1e-12)
        theirs.update(model, step=step)
    for (name, a), b in zip(ours.module.state_dict().items(), theirs.module.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert not any(p.requires_grad for p in ours.module.parameters())


def test_ema_decay_warms_up_from_a_copy():
    assert T.ema_decay(1, 0.999) == 0.0  # the first update copies the weights
    assert T.ema_decay(2, 0.999) == pytest.approx(1 - 2 ** (-2 / 3))
    assert T.ema_decay(10 ** 6, 0.999) == 0.999 and T.ema_decay(5, 0.9, warmup=False) == 0.9


# ------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_label_smoothing_equals_torch_and_timm(timm_training, smoothing):
    g = torch.Generator().manual_seed(3)
    logits, target = torch.randn(16, 7, generator=g) * 3, torch.randint(7, (16,), generator=g)
    ours = T.label_smoothing_cross_entropy(logits, target, smoothing)
    assert ours == pytest.approx(F.cross_entropy(logits, target, label_smoothing=smoothing).item(), rel=1e-6)
    if smoothing:
        timm_loss = timm_training.loss.LabelSmoothingCrossEntropy(smoothing)(logits, target)
        assert ours == pytest.approx(timm_loss.item(), rel=1e-6)


def test_smoothed_targets_are_eps_over_k_and_soft_ce_matches_timm(timm_training):
    q = T.smooth_targets(torch.tensor([2, 0]), 4, 0.2)
    assert torch.allclose(q, torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]]))
    logits = torch.randn(2, 4)
    expected = timm_training.loss.SoftTargetCrossEntropy()(logits, q)
    assert T.soft_target_cross_entropy(logits, q) == pytest.approx(expected.item(), rel=1e-6)
    assert T.soft_target_cross_entropy(logits, q) == pytest.approx(
        T.label_smoothing_cross_entropy(logits, torch.tensor([2, 0]), 0.2).item(), rel=1e-6)


# ---------------------------------------------------------------------------- fit with the tricks


def test_fit_with_mixup_ema_clipping_and_a_loss_of_its_own():
    from vitlab.augment import Mixup

    train, val = separable(256), separable(128, seed=1)
    torch.manual_seed(0)
    model = nn.Linear(10, 2)
    ema = T.ModelEma(model, decay=0.9)
    history = T.fit(model, train, val, epochs=4, lr=0.05, batch_size=32, device="cpu", plot=False, progress=False,
                    mix=Mixup(2, mixup_alpha=0.4, cutmix_alpha=0.0, seed=0), clip_grad=1.0, ema=ema)
    assert history["val_acc"][-1] > 0.9 and len(history["ema_val_acc"]) == 4
    assert history["ema_val_acc"][-1] == T.evaluate(ema.module, val) > 0.9
    seen = []

    def loss_fn(outputs, inputs, targets):
        seen.append((outputs.shape, inputs.shape, targets.shape))
        return F.cross_entropy(outputs, targets)

    T.fit(nn.Linear(10, 2), train, None, epochs=1, lr=0.05, batch_size=64, device="cpu", plot=False, progress=False,
          loss_fn=loss_fn)
    assert seen == [((64, 2), (64, 10), (64,))] * 4



def test_fit_with_mixup_leaves_out_the_odd_image_of_a_last_batch():
    from vitlab.augment import Mixup
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    data = (torch.randn(7, 1, 2, 2), torch.randint(0, 3, (7,)))  # batches of 4 and 3: the 3 cannot pair up
    history = T.fit(model, data, None, epochs=1, lr=1e-2, batch_size=4, plot=False, progress=False,
                    mix=Mixup(3, mixup_alpha=0.2, cutmix_alpha=0.0, prob=1.0, seed=0))
    assert history["steps"] == 2 and all(math.isfinite(v) for v in history["train_loss"])

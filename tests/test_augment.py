"""vitlab.augment: mixup, cutmix and the Mixup switcher against timm's Mixup (the same random draws), the
cutmix box against timm's rand_bbox and hand-worked cases, and the RandAugment operations' invariants."""
import math

import numpy as np
import pytest
import torch

from vitlab import augment
from vitlab.train import smooth_targets


def batch(b=6, c=3, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g), torch.randint(5, (b,), generator=g)


def test_cutmix_box_equals_timms_rand_bbox(timm_training):
    mixup = timm_training.data.mixup
    for seed in range(30):
        lam = float(np.random.RandomState(seed + 100).uniform())
        h, w = (8, 8) if seed % 2 else (12, 20)
        np.random.seed(seed)
        expected = mixup.rand_bbox((3, h, w), lam)
        rng = np.random.RandomState(seed)
        cy, cx = rng.randint(0, h), rng.randint(0, w)
        assert augment.cutmix_box(h, w, lam, cy, cx) == tuple(int(v) for v in expected)


def test_cutmix_box_side_is_w_sqrt_one_minus_lambda():
    assert augment.cutmix_box(100, 100, 0.75, 50, 50) == (25, 75, 25, 75)  # sqrt(0.25) = 0.5: a 50 x 50 box
    assert augment.cutmix_box(100, 60, 0.36, 0, 59) == (0, 40, 35, 60)  # 80 x 48 box clipped at the corner


def test_cutmix_pastes_the_flipped_batch_and_corrects_lambda():
    x, labels = batch()
    targets = smooth_targets(labels, 5)
    mixed, mixed_targets = augment.cutmix(x, targets, 0.36, 0, 0)  # an 9 x 8 box, clipped to rows 0-4, cols 0-4
    y0, y1, x0, x1 = augment.cutmix_box(12, 10, 0.36, 0, 0)
    assert (y0, y1, x0, x1) == (0, 5, 0, 4)
    assert torch.equal(mixed[:, :, :5, :4], x.flip(0)[:, :, :5, :4])
    inside = torch.zeros(12, 10, dtype=torch.bool)
    inside[:5, :4] = True
    assert torch.equal(mixed[:, :, ~inside], x[:, :, ~inside])
    kept = 1 - 20 / 120
    assert torch.allclose(mixed_targets, kept * targets + (1 - kept) * targets.flip(0))
    assert torch.allclose(mixed_targets.sum(-1), torch.ones(6))


def test_mixup_is_a_convex_combination_with_the_flipped_batch():
    x, labels = batch()
    targets = smooth_targets(labels, 5, 0.1)
    mixed, mixed_targets = augment.mixup(x, targets, 0.3)
    assert torch.allclose(mixed[0], 0.3 * x[0] + 0.7 * x[-1])
    assert torch.allclose(mixed_targets[2], 0.3 * targets[2] + 0.7 * targets[3])


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha,prob,switch_prob", [(0.8, 1.0, 1.0, 0.5), (0.4, 0.0, 1.0, 0.5),
                                                                       (0.0, 1.0, 0.6, 0.5), (1.0, 1.0, 0.8, 0.3)])
def test_mixup_switcher_equals_timms_mixup_draw_for_draw(timm_training, mixup_alpha, cutmix_alpha, prob, switch_prob):
    kwargs = dict(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                  label_smoothing=0.1, num_classes=5)
    ours = augment.Mixup(seed=7, **kwargs)
    theirs = timm_training.data.Mixup(mode="batch", **kwargs)
    np.random.seed(7)
    for step in range(25):
        x, labels = batch(seed=step)
        got_x, got_t = ours(x, labels)
        want_x, want_t = theirs(x.clone(), labels)
        assert torch.allclose(got_x, want_x, atol=1e-6), step
        assert torch.allclose(got_t, want_t, atol=1e-6), step


def test_mixup_wants_an_even_batch_and_an_alpha():
    with pytest.raises(ValueError):
        augment.Mixup(3)(*batch(b=5))
    with pytest.raises(ValueError):
        augment.Mixup(3, mixup_alpha=0.0, cutmix_alpha=0.0)


def test_rand_augment_keeps_shape_and_range_and_is_seeded():
    x, _ = batch(b=16)
    a = augment.rand_augment(x, 2, 9, torch.Generator().manual_seed(1))
    b = augment.rand_augment(x, 2, 9, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(augment.rand_augment(x, 2, 9, ops=("identity",)), x)


def test_rand_augment_magnitude_zero_leaves_the_level_dependent_ops_alone():
    x, _ = batch(b=4)
    zero = torch.zeros(4)
    for name in ("brightness", "contrast", "sharpness", "rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        assert torch.allclose(augment.RAND_AUGMENT_OPS[name](x, zero), x, atol=1e-5), name
    posterized = augment.RAND_AUGMENT_OPS["posterize"](x, zero)  # 8 bits: only the rounding to 1/255 steps
    assert torch.allclose(posterized, x, atol=1 / 255) and torch.equal(posterized, (x * 255).floor() / 255)


def test_rand_augment_ops_against_hand_worked_cases():
    ops = augment.RAND_AUGMENT_OPS
    x = torch.linspace(0, 1, 16).view(1, 1, 4, 4)
    assert torch.allclose(ops["solarize"](x, torch.tensor([0.5])), torch.where(x >= 0.5, 1 - x, x))
    assert torch.allclose(ops["brightness"](x, torch.tensor([-0.5])), x * 0.55)
    shifted = ops["translate_x"](x, torch.tensor([0.5 / 0.45 / 2]))  # by a quarter of the width: one column
    assert torch.allclose(shifted[..., 1:], x[..., :-1], atol=1e-6)
    assert torch.allclose(shifted[..., 0], torch.full((1, 1, 4), 0.5))  # the uncovered column is grey
    quarter = ops["rotate"](x, torch.tensor([3.0]))  # 90 degrees: a square image rotates exactly
    assert torch.allclose(quarter[0, 0], x[0, 0].rot90(-1), atol=1e-5) or torch.allclose(quarter[0, 0],
                                                                                          x[0, 0].rot90(1), atol=1e-5)
    assert math.isclose(ops["autocontrast"](x * 0.5 + 0.2, torch.tensor([1.0])).max().item(), 1.0, rel_tol=1e-6)

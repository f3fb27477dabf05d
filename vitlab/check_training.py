"""Checks for the exercises of 05_training: each compares the learner's code with torch, timm's convention or a
closed form (through the references in `vitlab.train`, `vitlab.augment` and `vitlab.distill`).

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds float64, other
shapes, boxes clipped at the border, steps past the end of the schedule and other configurations.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from vitlab import augment, distill, train
from vitlab.check import CheckFailed, Mistake, PASS, _difference, call_learner, check_function, forbid, randn, tolerance

from vitlab.check import exercise_check
SCHEDULE_BUILTINS = {
    train.cosine_lr: "vitlab.train.cosine_lr",
    train.warmup_cosine: "vitlab.train.warmup_cosine",
    torch.optim.lr_scheduler.CosineAnnealingLR: "torch's CosineAnnealingLR",
    torch.optim.lr_scheduler.LambdaLR: "torch's LambdaLR",
}
CLIP_BUILTINS = {
    torch.nn.utils.clip_grad_norm_: "torch.nn.utils.clip_grad_norm_",
    torch.nn.utils.get_total_norm: "torch.nn.utils.get_total_norm",
    torch.nn.utils.clip_grads_with_norm_: "torch.nn.utils.clip_grads_with_norm_",
    train.clip_grad_norm.__wrapped__: "vitlab.train.clip_grad_norm",  # the function under @torch.no_grad()
}
SMOOTHING_BUILTINS = {
    F.cross_entropy: "torch's F.cross_entropy",
    nn.CrossEntropyLoss: "nn.CrossEntropyLoss",
    train.label_smoothing_cross_entropy: "vitlab.train.label_smoothing_cross_entropy",
    train.soft_target_cross_entropy: "vitlab.train.soft_target_cross_entropy",
}
CUTMIX_BUILTINS = {
    augment.cutmix: "vitlab.augment.cutmix",
    augment.cutmix_box: "vitlab.augment.cutmix_box",
    augment.Mixup.__call__: "vitlab.augment.Mixup",
}
KD_BUILTINS = {
    F.kl_div: "torch's F.kl_div",
    nn.KLDivLoss: "nn.KLDivLoss",
    distill.soft_distillation_loss: "vitlab.distill.soft_distillation_loss",
}
EMA_BUILTINS = {
    train.ema_update.__wrapped__: "vitlab.train.ema_update",  # the function under @torch.no_grad()
    train.ModelEma.update: "vitlab.train.ModelEma",
    torch.optim.swa_utils.AveragedModel: "torch's AveragedModel",
}


# ------------------------------------------------------------------------------------ cosine schedule


def _cosine_variant(restart=False, from_zero=False, prefix=False, no_floor=False, no_end=False, half=0.5):
    """A cosine schedule that is wrong in the ways the keyword arguments say."""

    def wrong(step, base_lr, total_steps, warmup_steps=0, warmup_lr_init=0.0, min_lr=0.0):
        start = 0.0 if from_zero else warmup_lr_init
        if step < warmup_steps:
            return start + step * (base_lr - start) / warmup_steps
        t = step - warmup_steps if prefix else step
        if restart:
            t = t % total_steps
        elif t >= total_steps and not no_end:
            return 0.0 if no_floor else min_lr
        floor = 0.0 if no_floor else min_lr
        return floor + half * (base_lr - floor) * (1 + math.cos(math.pi * t / total_steps))

    return wrong


COSINE_MISTAKES = [
    Mistake("restarted the cosine after total_steps (that is SGDR, warm restarts)",
            "One cycle only: for step >= total_steps the rate stays at min_lr. A cosine schedule without restarts "
            "never rises again.", _cosine_variant(restart=True)),
    Mistake("let the cosine run on past total_steps, so that the rate rises again",
            "Once step >= total_steps the cycle is over: return min_lr. cos(pi t / T) climbs back up for t > T.",
            _cosine_variant(no_end=True)),
    Mistake("warmed up from 0 instead of from warmup_lr_init",
            "During warm-up the rate goes linearly from warmup_lr_init (at step 0) towards base_lr: "
            "warmup_lr_init + step * (base_lr - warmup_lr_init) / warmup_steps.", _cosine_variant(from_zero=True)),
    Mistake("started the cosine's clock at the end of the warm-up",
            "timm's default (warmup_prefix=False) counts t = step from the start of training: the cosine is "
            "cos(pi * step / total_steps), and the warm-up simply overrides its first warmup_steps values.",
            _cosine_variant(prefix=True)),
    Mistake("decayed to 0 instead of to min_lr",
            "The cosine goes from base_lr down to min_lr: min_lr + 0.5 * (base_lr - min_lr) * (1 + cos(pi t / T)).",
            _cosine_variant(no_floor=True)),
    Mistake("forgot the 0.5 in front of the cosine term (the rate starts at 2 * base_lr - min_lr)",
            "(1 + cos) runs from 2 down to 0: min_lr + 0.5 * (base_lr - min_lr) * (1 + cos(pi t / T)).",
            _cosine_variant(half=1.0)),
]


@exercise_check
def cosine_lr(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `cosine_lr(step, base_lr, total_steps, warmup_steps=0, warmup_lr_init=0.0, min_lr=0.0)`."""
    gen = torch.Generator().manual_seed(seed)
    configs = [dict(base_lr=1e-3, total_steps=100, warmup_steps=10, warmup_lr_init=1e-5, min_lr=1e-5)]
    if graded:
        configs += [dict(base_lr=0.5, total_steps=37, warmup_steps=0, min_lr=0.01),
                    dict(base_lr=2.0, total_steps=20, warmup_steps=7, warmup_lr_init=0.1, min_lr=0.3)]
    cases = []
    for config in configs:
        total = config["total_steps"]
        steps = sorted({0, 1, config["warmup_steps"], total // 2, total - 1, total, total + 1, 2 * total - 3,
                        *torch.randint(0, 2 * total, (6,), generator=gen).tolist()})
        cases += [dict(step=s, **config) for s in steps]
    check_function(fn, train.cosine_lr, cases, name="cosine_lr", mistakes=COSINE_MISTAKES,
                   forbidden=SCHEDULE_BUILTINS, atol=1e-12, rtol=1e-9, grad=False)


# ------------------------------------------------------------------------------------ gradient clipping


def _with_grads(gen: torch.Generator, shapes, scale: float, dtype: torch.dtype, no_grad: int | None = None):
    """Fresh leaf parameters of the given shapes whose .grad is random (times `scale`); one without grad."""
    params = []
    for i, shape in enumerate(shapes):
        p = randn(gen, *shape, dtype=dtype).requires_grad_(True)
        grad = randn(gen, *shape, dtype=dtype) * scale
        if i != no_grad:
            p.grad = grad
        params.append(p)
    return params


def _clip_variant(kind: str):
    """Gradient clipping done wrong: per tensor, without the clamp at 1, by value, or reporting the norm after."""

    @torch.no_grad()
    def wrong(parameters, max_norm):
        grads = [p.grad for p in parameters if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        if kind == "per_tensor":
            for g in grads:
                g.mul_((max_norm / (g.norm() + 1e-6)).clamp(max=1.0))
        elif kind == "always":
            for g in grads:
                g.mul_(max_norm / (total + 1e-6))
        elif kind == "value":
            for g in grads:
                g.clamp_(-max_norm, max_norm)
        elif kind in ("after", "sum"):
            if kind == "sum":
                total = torch.stack([g.norm() for g in grads]).sum()
            for g in grads:
                g.mul_((max_norm / (total + 1e-6)).clamp(max=1.0))
            if kind == "after":
                total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        return total

    return wrong


CLIP_MISTAKES = [
    Mistake("clipped each tensor's gradient on its own",
            "Clip by the norm of *all* gradients together: total = sqrt(sum over tensors of ||g||^2), then scale "
            "every gradient by the same factor min(1, max_norm / (total + 1e-6)).", _clip_variant("per_tensor")),
    Mistake("scaled the gradients even when their norm was below max_norm",
            "The factor is min(1, max_norm / (total + 1e-6)): small gradients are left alone, never scaled up.",
            _clip_variant("always")),
    Mistake("clipped by value (clamping each entry) instead of by norm",
            "Clipping by norm rescales the whole gradient and keeps its direction; clamping entries changes it.",
            _clip_variant("value")),
    Mistake("returned the norm after clipping",
            "Return the total norm from *before* clipping (it is what gets logged to spot exploding gradients).",
            _clip_variant("after")),
    Mistake("added the tensors' norms instead of combining them as a 2-norm",
            "total = sqrt(||g_1||^2 + ... + ||g_n||^2), the norm of all gradients flattened into one vector.",
            _clip_variant("sum")),
]


def _clip_outcome(total, params) -> list:
    """What a clipping call leaves behind: the returned norm (float64, 0-d) and every gradient."""
    if isinstance(total, torch.Tensor) and total.numel() == 1:
        total = total.detach().double().reshape(())
    elif isinstance(total, (int, float)):
        total = torch.tensor(float(total), dtype=torch.float64)
    return [total] + [p.grad for p in params]


@exercise_check
def clip_grad_norm(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `clip_grad_norm(parameters, max_norm)`: scale all .grad in place to a joint 2-norm of at most
    max_norm; return the norm before. The truth is torch.nn.utils.clip_grad_norm_ on copies."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    cases = [([(4, 3), (3,), (2, 2, 2)], 2.0, 1.0, None), ([(5, 5), (5,)], 0.05, 1.0, None)]
    if graded:
        cases += [([(7,), (3, 4), (2,), (6, 1)], 3.0, 0.5, 2), ([(10,)], 1.0, 100.0, None),
                  ([(2, 3), (3,)], 5.0, 2.5, None)]
    for i, (shapes, scale, max_norm, no_grad) in enumerate(cases):
        params = _with_grads(gen, shapes, scale, dt, no_grad)
        where = f"case {i + 1}: {len(shapes)} tensors of shapes {shapes}, max_norm={max_norm}" + (
            f", tensor {no_grad} without a gradient" if no_grad is not None else "")
        truth_params = [p.detach().clone().requires_grad_(True) for p in params]
        for t, p in zip(truth_params, params):
            t.grad = None if p.grad is None else p.grad.clone()
        expected = _clip_outcome(torch.nn.utils.clip_grad_norm_(truth_params, max_norm), truth_params)
        mine = [p.detach().clone().requires_grad_(True) for p in params]
        for m, p in zip(mine, params):
            m.grad = None if p.grad is None else p.grad.clone()
        with forbid(CLIP_BUILTINS) as called:
            returned = call_learner("clip_grad_norm", fn, dict(parameters=mine, max_norm=max_norm), where)
        if called:
            raise CheckFailed(f"clip_grad_norm: your code calls {' and '.join(called)}, the very thing this exercise "
                              "asks you to write.\nA graded check gives zero for this exercise when it does.")
        if returned is None:
            raise CheckFailed("clip_grad_norm: it returns None; return the total norm of the gradients before "
                              f"clipping (a 0-d tensor).\n  on {where}")
        got = _clip_outcome(returned, mine)
        problem = _difference(got, expected, **tolerance(dt), what="(returned norm, gradients...)")
        if problem:
            for mistake in CLIP_MISTAKES:
                wrong = [p.detach().clone().requires_grad_(True) for p in params]
                for w, p in zip(wrong, params):
                    w.grad = None if p.grad is None else p.grad.clone()
                if _difference(got, _clip_outcome(mistake.impl(wrong, max_norm), wrong), **tolerance(dt), what="") is None:
                    raise CheckFailed(f"clip_grad_norm: looks like you {mistake.label}.\n  {mistake.hint}")
            raise CheckFailed(f"clip_grad_norm: {problem} (item 0 is the returned norm, then the gradients)\n"
                              f"  on {where}")
    print(f"{PASS} clip_grad_norm: matches torch.nn.utils.clip_grad_norm_ on {len(cases)} cases (returned norm and "
          "clipped gradients).")


# ------------------------------------------------------------------------------------ label smoothing


def _smoothing_variant(kind: str):
    def wrong(logits, target, smoothing=0.1):
        k = logits.shape[-1]
        logp = F.log_softmax(logits, dim=0 if kind == "batch_axis" else -1)
        onehot = F.one_hot(target, k).to(logits.dtype)
        if kind == "k_minus_1":
            q = onehot * (1 - smoothing) + (1 - onehot) * smoothing / (k - 1)
        elif kind == "none":
            q = onehot
        elif kind == "no_keep":
            q = onehot * (1 - smoothing) + smoothing / k * (1 - onehot)
        else:
            q = onehot * (1 - smoothing) + smoothing / k
        loss = -(q * logp).sum(-1)
        return loss.sum() if kind == "sum" else loss.mean()

    return wrong


SMOOTHING_MISTAKES = [
    Mistake("spread eps over the K - 1 wrong classes (eps / (K - 1) each)",
            "The convention of torch, timm and the Inception-v3 paper: q = (1 - eps) * onehot + eps / K, so the "
            "right class gets 1 - eps + eps / K and each wrong one eps / K.", _smoothing_variant("k_minus_1")),
    Mistake("left the smoothing out", "Mix the one-hot target with the uniform distribution: "
            "(1 - eps) * onehot + eps / K.", _smoothing_variant("none")),
    Mistake("gave the right class only 1 - eps (the targets do not sum to 1)",
            "Every class, the right one included, gets eps / K on top of (1 - eps) * onehot.",
            _smoothing_variant("no_keep")),
    Mistake("summed the loss over the batch instead of averaging",
            "Return the mean over the batch of -sum_k q_k log p_k.", _smoothing_variant("sum")),
    Mistake("took the log-softmax over the batch (dim=0) instead of the classes",
            "logits are (N, K): each sample's distribution is over its K classes, log_softmax(logits, dim=-1).",
            _smoothing_variant("batch_axis")),
]


def _smoothing_effect(got, args) -> str | None:
    """Name the target distribution a wrong loss implies, whatever code built it.

    A loss -mean_n sum_k q_k log softmax(z_n)_k, with q_k = q_on for the true class and q_off for the others,
    has gradient (S softmax(z_n)_k - q_k) / B with respect to the logits (S = sum_k q_k): a least-squares fit
    of B * grad on the probabilities recovers S, q_on and q_off.
    """
    logits, target, eps = args["logits"], args["target"], args["smoothing"]
    if not (isinstance(got, torch.Tensor) and got.numel() == 1 and got.requires_grad and logits.requires_grad):
        return None
    (grad,) = torch.autograd.grad(got, logits, retain_graph=True)
    b, k = logits.shape
    if k < 3:
        return None
    probs = logits.detach().double().softmax(-1).flatten()
    on = torch.nn.functional.one_hot(target, k).double().flatten()
    design = torch.stack([probs, -(1 - on), -on], dim=1)
    y = (b * grad).double().flatten()
    solution = torch.linalg.lstsq(design, y[:, None]).solution.flatten()
    if (design @ solution - y).abs().max() > 1e-4:
        return None  # not a cross-entropy against one fixed target distribution
    total, off, on_value = solution.tolist()
    if abs(total - (on_value + (k - 1) * off)) > 1e-3:
        return None
    if abs(total - 1) > 1e-3 and abs(on_value / total - (1 - eps + eps / k)) < 1e-3:
        return (f"Your loss is label smoothing's times {total:.4g}{' (= 1/K)' if abs(total * k - 1) < 1e-3 else ''}."
                "\n  Sum -q_k log p_k over the classes, then average over the batch: a .mean() over every entry "
                "also divides by the number of classes K.")
    return (f"Your loss is a cross-entropy against a target of {on_value:.4g} on the true class and {off:.4g} on "
            f"each other class (summing to {total:.4g}); label smoothing with eps = {eps:g} and K = {k} gives "
            f"{1 - eps + eps / k:.4g} and {eps / k:.4g} (summing to 1).\n  q = (1 - eps) * onehot + eps / K: every "
            "class gets eps/K (the true class too), and the true class keeps 1 - eps on top. (Spreading eps over "
            "the K - 1 other classes is another convention, not torch's or timm's.)")


@exercise_check
def label_smoothing_cross_entropy(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `label_smoothing_cross_entropy(logits, target, smoothing=0.1)` against F.cross_entropy's
    label_smoothing (timm's LabelSmoothingCrossEntropy is the same)."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(b, k, smoothing, scale=1.0):
        return dict(logits=randn(gen, b, k, dtype=dt) * scale, target=torch.randint(k, (b,), generator=gen),
                    smoothing=smoothing)

    cases = [case(8, 5, 0.1), case(4, 10, 0.3, 3.0)]
    if graded:
        cases += [case(1, 2, 0.2), case(16, 7, 0.0), case(5, 100, 0.1, 10.0), case(3, 3, 0.9)]
    check_function(fn, lambda logits, target, smoothing: F.cross_entropy(logits, target, label_smoothing=smoothing),
                   cases, name="label_smoothing_cross_entropy", mistakes=SMOOTHING_MISTAKES,
                   forbidden=SMOOTHING_BUILTINS, explain=_smoothing_effect, **tolerance(dt))


# ---------------------------------------------------------------------------------------------- cutmix


def _cutmix_variant(kind: str):
    def wrong(x, targets, lam, cy, cx):
        h, w = x.shape[-2:]
        if kind == "linear_side":
            ch, cw = int(h * (1 - lam)), int(w * (1 - lam))
        elif kind == "swapped_sides":
            ch, cw = int(w * math.sqrt(1 - lam)), int(h * math.sqrt(1 - lam))
        else:
            ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        y0, y1 = min(max(cy - ch // 2, 0), h), min(max(cy + (ch + 1) // 2, 0), h)
        x0, x1 = min(max(cx - cw // 2, 0), w), min(max(cx + (cw + 1) // 2, 0), w)
        partner = x.roll(1, 0) if kind == "roll" else x.flip(0)
        t_partner = targets.roll(1, 0) if kind == "roll" else targets.flip(0)
        mixed = x.clone()
        mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        kept = lam if kind == "uncorrected" else 1 - (y1 - y0) * (x1 - x0) / (h * w)
        if kind == "reversed":
            kept = 1 - kept
        return mixed, kept * targets + (1 - kept) * t_partner

    return wrong


CUTMIX_MISTAKES = [
    Mistake("made the box sides H * (1 - lam) instead of H * sqrt(1 - lam)",
            "The box should cover a fraction 1 - lam of the *area*, so each side is scaled by sqrt(1 - lam): "
            "int(H * sqrt(1 - lam)) by int(W * sqrt(1 - lam)).", _cutmix_variant("linear_side")),
    Mistake("mixed the targets with the drawn lam, not the area actually kept",
            "Where the box is cut by the border it covers less: recompute lam = 1 - (y1 - y0)(x1 - x0) / (H W) from "
            "the clipped box and mix the targets with that.", _cutmix_variant("uncorrected")),
    Mistake("mixed the targets the wrong way round",
            "The image keeps a fraction lam of its own pixels: targets * lam + flipped targets * (1 - lam).",
            _cutmix_variant("reversed")),
    Mistake("took the partners from a rolled batch instead of the flipped one",
            "Image i gets its patch from image B - 1 - i: x.flip(0) (and targets.flip(0)), as timm does.",
            _cutmix_variant("roll")),
    Mistake("swapped the box's height and width",
            "The box's height is int(H * sqrt(1 - lam)) (rows, dim -2), its width int(W * sqrt(1 - lam)) (dim -1).",
            _cutmix_variant("swapped_sides")),
]


@exercise_check
def cutmix(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `cutmix(x, targets, lam, cy, cx)` -> (mixed images, mixed soft targets), timm's box and convention."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(b, c, h, w, k, lam, cy, cx):
        targets = train.smooth_targets(torch.randint(k, (b,), generator=gen), k, 0.1).to(dt)
        return dict(x=torch.rand(b, c, h, w, generator=gen, dtype=torch.float64).to(dt), targets=targets,
                    lam=lam, cy=cy, cx=cx)

    cases = [case(4, 3, 16, 16, 5, 0.7, 8, 8), case(6, 1, 12, 12, 3, 0.4, 1, 10)]
    if graded:
        cases += [case(2, 3, 8, 20, 4, 0.5, 4, 3), case(5, 2, 10, 6, 7, 0.9, 9, 0), case(4, 1, 16, 16, 2, 0.05, 0, 15),
                  case(3, 3, 9, 9, 3, 1.0, 4, 4)]
    check_function(fn, augment.cutmix, cases, name="cutmix", mistakes=CUTMIX_MISTAKES, forbidden=CUTMIX_BUILTINS,
                   **tolerance(dt))


# ------------------------------------------------------------------------------------ soft distillation


def _kd_variant(kind: str):
    def wrong(student_logits, teacher_logits, temperature=1.0):
        t = temperature
        s_t = student_logits / t
        teacher = teacher_logits if kind == "teacher_unsoftened" else teacher_logits / t
        p, logp = F.softmax(teacher, -1), F.log_softmax(teacher, -1)
        logq = F.log_softmax(s_t, -1)
        if kind == "reversed":
            per_row = (logq.exp() * (logq - logp)).sum(-1)
        else:
            per_row = (p * (logp - logq)).sum(-1)
        loss = per_row.mean()
        if kind == "numel":
            loss = per_row.sum() / student_logits.numel()
        return loss if kind == "no_t2" else loss * t * t

    return wrong


KD_MISTAKES = [
    Mistake("forgot the factor T^2",
            "Multiply the KL by T * T: softening by T shrinks the gradient by 1 / T^2, and T^2 restores its size so "
            "that the distillation term keeps its weight when T changes.", _kd_variant("no_t2")),
    Mistake("computed KL(student || teacher), the wrong direction",
            "The teacher's softened distribution p is the target: KL(p || q) = sum_k p_k (log p_k - log q_k).",
            _kd_variant("reversed")),
    Mistake("softened only the student (the teacher's logits were not divided by T)",
            "Divide both logits by T before the softmax.", _kd_variant("teacher_unsoftened")),
    Mistake("divided by the number of logits (B * K) instead of the batch size",
            "Average the per-image KL over the batch (reduction 'batchmean'), not over every logit.",
            _kd_variant("numel")),
]


@exercise_check
def soft_distillation_loss(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `soft_distillation_loss(student_logits, teacher_logits, temperature=1.0)` = T^2 KL(p_T || q_T)."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(b, k, temperature, scale=3.0):
        return dict(student_logits=randn(gen, b, k, dtype=dt) * scale,
                    teacher_logits=randn(gen, b, k, dtype=dt) * scale, temperature=temperature)

    cases = [case(8, 10, 4.0), case(4, 5, 2.0)]
    if graded:
        cases += [case(1, 3, 1.0), case(6, 7, 10.0, 8.0), case(3, 100, 0.5, 1.0)]
    check_function(fn, distill.soft_distillation_loss, cases, name="soft_distillation_loss", mistakes=KD_MISTAKES,
                   forbidden=KD_BUILTINS, **tolerance(dt))


# ---------------------------------------------------------------------------------------------- EMA


def _ema_net(seed: int, dtype: torch.dtype) -> nn.Module:
    """A small net with parameters, float buffers (BatchNorm statistics) and an integer buffer, all random."""
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.copy_(randn(gen, *v.shape, dtype=dtype).abs() if v.ndim == 1 else randn(gen, *v.shape, dtype=dtype))
            else:
                v.fill_(int(torch.randint(1, 100, (1,), generator=gen)))
    return net


def _ema_variant(kind: str):
    @torch.no_grad()
    def wrong(ema_model, model, decay):
        for (name, e), m in zip(ema_model.state_dict().items(), model.state_dict().values()):
            if not e.is_floating_point():
                if kind != "ints_left":
                    e.copy_(m)
            elif kind == "swapped":
                e.mul_(1 - decay).add_(m, alpha=decay)
            elif kind == "params_only" and name.split(".")[-1] in ("running_mean", "running_var"):
                continue
            elif kind == "copy":
                e.copy_(m)
            elif kind == "unchanged":
                continue
            else:
                e.mul_(decay).add_(m, alpha=1 - decay)

    return wrong


EMA_MISTAKES = [
    Mistake("left the EMA's floating-point weights unchanged",
            "`ema_v = decay * ema_v + ...` only rebinds the loop's name to a new tensor; the model keeps its old "
            "one. Update the tensor in place: ema_v.mul_(decay).add_(model_v, alpha=1 - decay).",
            _ema_variant("unchanged")),
    Mistake("swapped decay and 1 - decay",
            "The average keeps most of itself: ema = decay * ema + (1 - decay) * model, with decay close to 1.",
            _ema_variant("swapped")),
    Mistake("averaged the parameters but left the float buffers (BatchNorm's running statistics) alone",
            "Average every floating-point entry of the state_dict, buffers included; copy the integer ones.",
            _ema_variant("params_only")),
    Mistake("copied the model's weights instead of averaging", "ema = decay * ema + (1 - decay) * model.",
            _ema_variant("copy")),
    Mistake("left the integer buffers (BatchNorm's num_batches_tracked) as they were",
            "An integer entry cannot be averaged, but the EMA model must not keep a stale one: copy it, "
            "ema_v.copy_(model_v).", _ema_variant("ints_left")),
]


@exercise_check
def ema_update(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `ema_update(ema_model, model, decay)`: in place, ema = decay * ema + (1 - decay) * model on every
    floating entry of the state_dict; integer buffers copied; returns nothing needed."""
    dt = torch.float64 if graded else torch.float32
    decays = [0.9, 0.5] + ([0.0, 0.999, 0.25] if graded else [])
    for i, decay in enumerate(decays):
        model, start = _ema_net(seed + 2 * i, dt), _ema_net(seed + 2 * i + 1, dt)
        truth = copy.deepcopy(start)
        train.ema_update(truth, model, decay)
        mine = copy.deepcopy(start)
        where = f"case {i + 1}: decay={decay}, a Linear-BatchNorm-Linear net in {str(dt).replace('torch.', '')}"
        with forbid(EMA_BUILTINS) as called:
            call_learner("ema_update", fn, dict(ema_model=mine, model=model, decay=decay), where)
        if called:
            raise CheckFailed(f"ema_update: your code calls {' and '.join(called)}, the very thing this exercise asks "
                              "you to write.\nA graded check gives zero for this exercise when it does.")
        got, expected = list(mine.state_dict().items()), list(truth.state_dict().items())
        for (name, g), (_, e) in zip(got, expected):
            problem = _difference(g.detach(), e, **tolerance(dt), what=f"`{name}` of the EMA model")
            if problem:
                for mistake in EMA_MISTAKES:
                    wrong = copy.deepcopy(start)
                    mistake.impl(wrong, model, decay)
                    if all(_difference(a.detach(), b, **tolerance(dt), what="") is None
                           for (_, a), (_, b) in zip(got, wrong.state_dict().items())):
                        raise CheckFailed(f"ema_update: looks like you {mistake.label}.\n  {mistake.hint}")
                raise CheckFailed(f"ema_update: {problem}\n  on {where}")
        if any(p.requires_grad and p.grad is not None for p in mine.parameters()):
            raise CheckFailed("ema_update: the EMA model's parameters got gradients; do the update under "
                              "torch.no_grad().")
    print(f"{PASS} ema_update: matches the closed form on {len(decays)} cases (parameters, BatchNorm statistics, "
          "the integer counter).")

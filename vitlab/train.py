"""Training: learning-rate schedules, AdamW groups, gradient clipping, the AMP step, weight EMA, the losses, and
`fit`, the small loop the chapters share (augmentation in `vitlab.augment`, distillation in `vitlab.distill`).

`fit` uses AdamW (fused on CUDA; no weight decay on biases, norm weights, position tables, tokens and the
model's `no_weight_decay()` names, as timm), a per-step linear warmup + cosine schedule, bf16 autocast on CUDA, a
tqdm progress bar, and in a notebook a live loss / accuracy plot. Optional: mixup / cutmix (soft targets),
gradient clipping, a weight EMA and a loss of your own (distillation).
"""
from __future__ import annotations

import copy
import io
import math
import time
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from vitlab.device import autocast_dtype, device as best_device

Data = DataLoader | tuple[Tensor, Tensor]


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """The lr multiplier at `step` (0-based): step / warmup_steps while step < warmup_steps, then a half cosine
    from 1 at step = warmup_steps down to min_ratio at step = total_steps (Hugging Face's cosine schedule)."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_lr(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr_init: float = 0.0,
              min_lr: float = 0.0, warmup_prefix: bool = False) -> float:
    """The learning rate at `step` of timm's CosineLRScheduler (one cycle, stepped per update).

    Linear warmup from warmup_lr_init to base_lr over warmup_steps; then
    min_lr + (base_lr - min_lr) (1 + cos(pi t / total_steps)) / 2 with t = step (t = step - warmup_steps when
    warmup_prefix), and min_lr for every t >= total_steps: no restart.
    """
    if step < warmup_steps:
        return warmup_lr_init + step * (base_lr - warmup_lr_init) / warmup_steps
    t = step - warmup_steps if warmup_prefix else step
    if t >= total_steps:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t / total_steps))


def step_lr(step: int, base_lr: float, step_size: int, gamma: float = 0.1) -> float:
    """torch's StepLR: base_lr * gamma ** (step // step_size)."""
    return base_lr * gamma ** (step // step_size)


def exponential_lr(step: int, base_lr: float, gamma: float) -> float:
    """torch's ExponentialLR: base_lr * gamma ** step."""
    return base_lr * gamma ** step


def plot_schedules(schedules: Mapping[str, Callable[[int], float]], steps: int, *, ax=None,
                   title: str = "learning-rate schedules") -> Figure:
    """One curve per schedule (name -> function of the step returning the lr) over steps 0 .. steps - 1."""
    from vitlab import viz

    xs = list(range(steps))
    return viz.line_plot(xs, {name: [fn(s) for s in xs] for name, fn in schedules.items()}, ax=ax,
                         markers=False, xlabel="step", ylabel="learning rate", title=title)


# ------------------------------------------------------------------------------------------- clipping


def _grads(parameters: Iterable[Tensor] | Tensor) -> list[Tensor]:
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p.grad for p in params if p.grad is not None]


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[Tensor] | Tensor, max_norm: float, norm_type: float = 2.0) -> Tensor:
    """Scale all gradients together so that their joint norm is at most max_norm; returns the norm before.

    As torch.nn.utils.clip_grad_norm_: total = ||(||g_1||, ..., ||g_n||)||, every g *= min(1, max_norm /
    (total + 1e-6)). The direction of the whole gradient is kept.
    """
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, norm_type) for g in grads]), norm_type)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total


@torch.no_grad()
def clip_grad_value(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """Clamp every gradient entry to [-clip_value, clip_value] (torch.nn.utils.clip_grad_value_); the direction
    changes."""
    for g in _grads(parameters):
        g.clamp_(-clip_value, clip_value)


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, *, scaler: torch.amp.GradScaler | None = None,
                   clip_grad: float | None = None, clip_mode: str = "norm") -> Tensor | None:
    """Backward, optional clipping, step. With an fp16 GradScaler the gradients are unscaled *before* clipping
    (else the threshold would apply to scaled gradients), and the step is skipped when they overflowed.

    Returns the gradient norm before clipping (clip_mode "norm"), else None. Zeroes the gradients first.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    norm = None
    if clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip_mode == "norm":
            norm = clip_grad_norm(params, clip_grad)
        elif clip_mode == "value":
            clip_grad_value(params, clip_grad)
        else:
            raise ValueError(f"clip_mode must be 'norm' or 'value', got {clip_mode!r}")
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norm


# ------------------------------------------------------------------------------------------------ EMA


def ema_decay(step: int, decay: float = 0.9998, warmup: bool = True, gamma: float = 1.0, power: float = 2 / 3,
              min_decay: float = 0.0) -> float:
    """The EMA decay for update number `step` (1-based), as timm's ModelEmaV3: 0 at step 1 (a plain copy),
    then min(decay, 1 - (1 + (step - 1) / gamma) ** -power) with warmup, else `decay`."""
    t = max(0, step - 1)
    if t == 0:
        return 0.0
    if not warmup:
        return decay
    return max(min(decay, 1 - (1 + t / gamma) ** -power), min_decay)


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every floating tensor of the state_dict (parameters and
    buffers); integer buffers (counters) are copied."""
    for ema_v, model_v in zip(ema_model.state_dict().values(), model.state_dict().values()):
        if ema_v.is_floating_point():
            ema_v.mul_(decay).add_(model_v.to(ema_v.dtype), alpha=1 - decay)
        else:
            ema_v.copy_(model_v)


class ModelEma(nn.Module):
    """A frozen copy of `model` kept as an exponential moving average of its weights (timm's ModelEmaV3 with
    use_warmup): call `update(model)` after each optimizer step; evaluate `ema.module`."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True, gamma: float = 1.0,
                 power: float = 2 / 3) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.gamma, self.power = decay, warmup, gamma, power
        self.updates = 0

    def update(self, model: nn.Module) -> float:
        """One EMA update from `model`'s current weights; returns the decay used."""
        self.updates += 1
        decay = ema_decay(self.updates, self.decay, self.warmup, self.gamma, self.power)
        ema_update(self.module, model, decay)
        return decay

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# --------------------------------------------------------------------------------------------- losses


def smooth_targets(target: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Labels (B,) -> soft targets (B, K): (1 - eps) one-hot + eps / K (each wrong class gets eps / K)."""
    off = smoothing / num_classes
    return torch.full((target.shape[0], num_classes), off, device=target.device).scatter_(
        1, target.long().view(-1, 1), 1 - smoothing + off)


def soft_target_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy with soft targets: mean over the batch of -sum_k q_k log softmax(logits)_k. (B, K) x2 -> ()."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def label_smoothing_cross_entropy(logits: Tensor, target: Tensor, smoothing: float = 0.1) -> Tensor:
    """Cross-entropy against (1 - eps) one-hot + eps / K; equal to F.cross_entropy(..., label_smoothing=eps)
    and to timm's LabelSmoothingCrossEntropy. logits (B, K), target (B,) -> ()."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
    return ((1 - smoothing) * nll - smoothing * logp.mean(dim=-1)).mean()


def as_loader(data: Data, batch_size: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """`data` itself if it is a DataLoader, else a DataLoader over the (inputs, labels) tensor pair."""
    if isinstance(data, DataLoader):
        return data
    inputs, labels = data
    return DataLoader(TensorDataset(inputs, labels), batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed))


def _autocast(dev: torch.device) -> torch.autocast:
    """bf16 autocast on a CUDA device that supports it; a disabled context elsewhere."""
    enabled = dev.type == "cuda" and autocast_dtype(dev) == torch.bfloat16
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Data, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in [0, 1] of `model` (inputs -> logits (B, classes)) over a loader or (inputs, labels)."""
    dev = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    correct = total = 0
    with _autocast(dev):
        for inputs, labels in as_loader(loader, batch_size=512):
            labels = labels.to(dev)
            correct += (model(inputs.to(dev)).argmax(dim=-1) == labels).sum().item()
            total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1)


NO_DECAY_SUFFIXES = ("pos_embed", "_token")  # position tables; cls_token, dist_token, reg_token, mask_token


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay for matrices and kernels; none for biases and norm weights (1-D), position tables
    and learned tokens (names ending in "pos_embed" or "_token"), and the names the model lists in
    `no_weight_decay()` (timm's convention). Decay would pull these towards zero for no gain in regularisation."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            no = p.ndim <= 1 or name in skip or name.endswith(NO_DECAY_SUFFIXES)
            (no_decay if no else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where figures can be displayed and updated)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class LivePlot:
    """A loss-per-step / accuracy-per-epoch figure shown once, then redrawn in place (IPython display_id).

    The figure is sent as a PNG, so it shows whatever matplotlib backend the notebook has.
    """

    def __init__(self, every: float = 2.0):
        from IPython.display import display

        self.every, self.last = every, 0.0
        self.fig = Figure(figsize=(9, 3))
        self.loss_ax, self.acc_ax = self.fig.subplots(1, 2)
        self.handle = display(self._png(), display_id=True)

    def _png(self):
        from IPython.display import Image

        buffer = io.BytesIO()
        self.fig.savefig(buffer, format="png", dpi=80)
        return Image(data=buffer.getvalue(), format="png")

    def update(self, history: dict, force: bool = False) -> None:
        """Redraw from `history`, at most once every `every` seconds unless `force`."""
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        self.loss_ax.clear()
        self.loss_ax.plot(history["train_loss"], lw=0.8)
        self.loss_ax.set(xlabel="step", ylabel="train loss", title="loss")
        self.acc_ax.clear()
        self.acc_ax.plot(range(1, len(history["val_acc"]) + 1), history["val_acc"], "o-")
        self.acc_ax.set(xlabel="epoch", ylabel="val accuracy", title="accuracy", ylim=(0, 1.02))
        self.fig.tight_layout()
        self.handle.update(self._png())


def _postfix(history: dict, train_acc: float) -> dict:
    """The progress bar's loss / running train accuracy / last validation accuracy."""
    shown = {"loss": f"{history['train_loss'][-1]:.3f}", "acc": f"{train_acc:.3f}"}
    if history["val_acc"]:
        shown["val"] = f"{history['val_acc'][-1]:.3f}"
    return shown


def fit(model: nn.Module, train: Data, val: Data | None, *, epochs: int, lr: float, weight_decay: float = 0.05,
        warmup_steps: int = 0, device: torch.device | str | None = None, plot: bool | None = None,
        label_smoothing: float = 0.0, max_seconds: float | None = None, max_steps: int | None = None,
        batch_size: int = 128, augment: Callable[[Tensor], Tensor] | None = None, seed: int = 0,
        progress: bool = True, mix: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        clip_grad: float | None = None, ema: ModelEma | None = None,
        loss_fn: Callable[[Tensor | tuple, Tensor, Tensor], Tensor] | None = None) -> dict:
    """Train `model` (inputs -> logits) with cross-entropy, AdamW and a per-step warmup + cosine schedule.

    `train` and `val` are DataLoaders or (inputs, labels) pairs (batched by `batch_size`, train shuffled with
    `seed`). `augment` maps a training batch (on the device) to an augmented one. Training stops early after
    `max_seconds` or `max_steps` (the schedule still spans `epochs`), with a last validation. `plot`: None or
    True shows the live plot in a notebook (never elsewhere), False never. `mix` maps (inputs, labels) to
    (mixed inputs, soft targets (B, K)), trained with soft-target cross-entropy (`vitlab.augment.Mixup`);
    `clip_grad` clips the gradient norm; `ema` (a ModelEma) is updated after every step and validated per epoch;
    `loss_fn(outputs, inputs, targets)` replaces the cross-entropy (distillation; outputs may be a tuple whose
    first item is the class logits). Returns the history: "train_loss" and "lr" per step, "val_acc" (and
    "ema_val_acc") per epoch, "seconds" (training time, validation excluded), "steps".
    """
    dev = torch.device(device) if device is not None else best_device()
    model.to(dev).train()
    if ema is not None:
        ema.module.to(dev)
    train_loader = as_loader(train, batch_size, shuffle=True, seed=seed)
    total = epochs * len(train_loader)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, fused=dev.type == "cuda")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup_steps))
    history: dict = {"train_loss": [], "lr": [], "val_acc": [], "seconds": 0.0, "steps": 0}
    if ema is not None:
        history["ema_val_acc"] = []
    bar = tqdm(total=total if max_steps is None else min(total, max_steps), disable=not progress, unit="step")
    live = LivePlot() if plot is not False and _in_notebook() else None
    stop = False
    for _ in range(epochs):
        correct = seen = 0
        started = time.perf_counter()
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            if augment is not None:
                inputs = augment(inputs)
            targets = labels
            if mix is not None:
                if len(inputs) % 2:  # mixup pairs each image with its mirror: leave out the odd one (a last batch)
                    inputs, labels = inputs[:-1], labels[:-1]
                inputs, targets = mix(inputs, labels)
            with _autocast(dev):
                outputs = model(inputs)
                logits = outputs[0] if isinstance(outputs, tuple) else outputs
                if loss_fn is not None:
                    loss = loss_fn(outputs, inputs, targets)
                elif targets.ndim == 2:
                    loss = soft_target_cross_entropy(logits.float(), targets)
                else:
                    loss = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
            optimizer_step(loss, optimizer, clip_grad=clip_grad)
            if ema is not None:
                ema.update(model)
            history["lr"].append(schedule.get_last_lr()[0])
            schedule.step()
            history["train_loss"].append(loss.item())
            history["steps"] += 1
            correct += (logits.argmax(dim=-1) == labels).sum().item()  # against the unmixed labels
            seen += labels.numel()
            bar.set_postfix(_postfix(history, correct / seen), refresh=False)
            bar.update()
            if live:
                live.update(history)
            elapsed = history["seconds"] + time.perf_counter() - started
            stop = (max_steps is not None and history["steps"] >= max_steps) or (
                max_seconds is not None and elapsed >= max_seconds)
            if stop:
                break
        history["seconds"] += time.perf_counter() - started
        if val is not None:
            history["val_acc"].append(evaluate(model, val, dev))
            if ema is not None:
                history["ema_val_acc"].append(evaluate(ema.module, val, dev))
            bar.set_postfix(_postfix(history, correct / max(seen, 1)))
        if live:
            live.update(history, force=True)
        if stop:
            break
    bar.close()
    return history

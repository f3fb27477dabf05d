"""Training: the warmup + cosine schedule, `evaluate` (accuracy) and `fit`, the small loop the chapters share.

`fit` uses AdamW (fused on CUDA; no weight decay on biases, norm weights and the model's
`no_weight_decay()` names, as timm), a per-step linear warmup + cosine schedule, bf16 autocast on CUDA, a
tqdm progress bar, and in a notebook a live loss / accuracy plot.
"""
from __future__ import annotations

import io
import math
import time
from typing import Callable

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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay for matrices and kernels; none for biases, norm weights (1-D) and the names the
    model lists in `no_weight_decay()` (timm's convention: cls_token, pos_embed)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
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
        progress: bool = True) -> dict:
    """Train `model` (inputs -> logits) with cross-entropy, AdamW and a per-step warmup + cosine schedule.

    `train` and `val` are DataLoaders or (inputs, labels) pairs (batched by `batch_size`, train shuffled with
    `seed`). `augment` maps a training batch (on the device) to an augmented one. Training stops early after
    `max_seconds` or `max_steps` (the schedule still spans `epochs`), with a last validation. `plot`: None or
    True shows the live plot in a notebook (never elsewhere), False never. Returns the history: "train_loss"
    and "lr" per step, "val_acc" per epoch, "seconds" (training time, validation excluded), "steps".
    """
    dev = torch.device(device) if device is not None else best_device()
    model.to(dev).train()
    train_loader = as_loader(train, batch_size, shuffle=True, seed=seed)
    total = epochs * len(train_loader)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, fused=dev.type == "cuda")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup_steps))
    history: dict = {"train_loss": [], "lr": [], "val_acc": [], "seconds": 0.0, "steps": 0}
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
            with _autocast(dev):
                logits = model(inputs)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history["lr"].append(schedule.get_last_lr()[0])
            schedule.step()
            history["train_loss"].append(loss.item())
            history["steps"] += 1
            correct += (logits.argmax(dim=-1) == labels).sum().item()
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
            bar.set_postfix(_postfix(history, correct / max(seen, 1)))
        if live:
            live.update(history, force=True)
        if stop:
            break
    bar.close()
    return history

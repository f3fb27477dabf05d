"""Transfer learning: a new head, freezing, linear probing, layer-wise lr decay and a fine-tuning loop.

Layer ids follow BEiT and timm for a ViT of depth L: 0 for the stem (patch_embed, cls_token, pos_embed),
i + 1 for block i, L + 1 for what comes after the blocks (norm, fc_norm, head). With layer decay d, layer j
trains at lr * d ** (L + 1 - j): the head at the full rate, each layer below it d times slower.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vitlab.train import Data, as_loader, evaluate, param_groups, warmup_cosine

STEM = ("patch_embed", "cls_token", "pos_embed")
NO_DECAY_NAMES = ("cls_token", "pos_embed")  # timm's `no_weight_decay()` for a ViT


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give `model` a fresh `head`, Linear(embed_dim, num_classes) initialised as timm does. Returns model."""
    model.head = nn.Linear(model.embed_dim, num_classes, device=model.pos_embed.device, dtype=model.pos_embed.dtype)
    nn.init.trunc_normal_(model.head.weight, std=0.02)
    nn.init.zeros_(model.head.bias)
    return model


def freeze(model: nn.Module, train_also: Sequence[str] = ()) -> nn.Module:
    """Set requires_grad=False on every parameter except those whose name starts with one of `train_also`."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(tuple(train_also)))
    return model


def linear_probe(model: nn.Module, num_classes: int) -> nn.Module:
    """A frozen backbone with a new trainable head: only the head's D * K + K parameters learn."""
    return freeze(replace_head(model, num_classes), ("head",))


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(number of trainable parameters, number of all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def layer_id(name: str, depth: int) -> int:
    """The layer of a ViT parameter: 0 for the stem, i + 1 for `blocks.i.*`, depth + 1 for everything after."""
    if name.startswith(STEM):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with layer-wise lr decay for a ViT (BEiT; timm's `param_groups_layer_decay`).

    One group per (layer, decay or not): {"params", "lr": lr * layer_decay ** (depth + 1 - layer), "weight_decay",
    "layer"}. No weight decay on 1-D parameters (biases, norm weights), cls_token and pos_embed. Frozen
    parameters are left out.
    """
    depth = len(model.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_id(name, depth)
        decay = p.ndim > 1 and name not in NO_DECAY_NAMES
        group = groups.setdefault((layer, decay), {"params": [], "lr": lr * layer_decay ** (depth + 1 - layer),
                                                   "weight_decay": weight_decay if decay else 0.0, "layer": layer})
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def finetune(model: nn.Module, train: Data, val: Data | None, *, epochs: int, lr: float = 1e-3,
             groups: list[dict] | None = None, weight_decay: float = 0.05, warmup_steps: int = 0,
             batch_size: int = 64, label_smoothing: float = 0.0, max_steps: int | None = None, seed: int = 0,
             device: torch.device | str | None = None, progress: bool = True, desc: str = "fine-tune") -> dict:
    """Train the trainable parameters of `model` with AdamW and a per-step warmup + cosine schedule.

    `groups` are AdamW parameter groups with their own "lr" (layer_decay_groups); without them, one lr for all,
    decay on matrices only (`vitlab.train.param_groups`). Returns {"train_loss", "val_acc" (at the end),
    "seconds", "steps"}.
    """
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev).train()
    loader = as_loader(train, batch_size, shuffle=True, seed=seed)
    total = epochs * len(loader)
    if groups is None:
        groups = [dict(g, lr=lr) for g in param_groups(model, weight_decay)]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup_steps))
    history: dict = {"train_loss": [], "val_acc": None, "seconds": 0.0, "steps": 0}
    steps = total if max_steps is None else min(total, max_steps)
    started = time.perf_counter()
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress) as bar:
        while history["steps"] < steps:
            for inputs, labels in loader:
                logits = model(inputs.to(dev))
                loss = F.cross_entropy(logits.float(), labels.to(dev), label_smoothing=label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                history["train_loss"].append(loss.item())
                history["steps"] += 1
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
                if history["steps"] >= steps:
                    break
    history["seconds"] = time.perf_counter() - started
    if val is not None:
        history["val_acc"] = evaluate(model, val, dev)
    return history


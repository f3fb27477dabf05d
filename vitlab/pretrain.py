"""The course's own pretrained backbone (chapter 8 trains on it): a small ViT that learned, on scenes of its own,
which shape lies under each patch.

Real detectors and segmenters start from a backbone pretrained on much more data than the task has. Ours is
pretrained on `vitlab.data.scenes` drawn with a seed (`PRETRAIN_SEED`) that no chapter uses, half of them with
chapter 7's object sizes and half with chapter 8's, with a dense objective: for every patch, the share of its
pixels that each class (background, circle, square, triangle) covers, learned by a linear map on the patch token
with a soft-target cross-entropy. The head is dropped afterwards; what is kept is `VisionTransformer(**CONFIG)`
with no classifier, which loads with `load_state_dict`.

    python -m vitlab.pretrain            # trains (a few CPU minutes, with a progress bar) and writes the weights

`backbone()` returns the pretrained ViT: from `data/pretrained/`, or trained there on first use.
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitlab import data, train, vit
from vitlab.device import profile

CONFIG = dict(img_size=64, patch_size=8, num_classes=0, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
PRETRAIN_SEED = 1  # the chapters draw their scenes with seed 0
RECIPE = dict(n=8000, steps=1500, batch_size=64, lr=2e-3, warmup_steps=100, weight_decay=0.05, seed=0)
NAME = "scenes_vit"


def patch_targets(masks: Tensor, num_classes: int, patch: int) -> Tensor:
    """Masks (B, H, W) int -> the share of each class in every patch, (B, h*w, K), rows summing to 1."""
    shares = F.avg_pool2d(F.one_hot(masks, num_classes).permute(0, 3, 1, 2).float(), patch)
    return shares.flatten(2).transpose(1, 2)


def pretraining_data(n: int) -> tuple[Tensor, Tensor]:
    """n 64 x 64 scenes (images, masks): half with chapter 7's object sizes, half with chapter 8's."""
    small = data.scenes(n - n // 2, seed=PRETRAIN_SEED)
    large = data.scenes(n // 2, seed=PRETRAIN_SEED, max_objects=3, radius=(0.15, 0.3))
    return torch.cat([small[0], large[0]]), torch.cat([small[2], large[2]])


def pretrain(n: int, steps: int, batch_size: int, lr: float, warmup_steps: int, weight_decay: float, seed: int,
             progress: bool = True) -> tuple[vit.VisionTransformer, dict]:
    """Train `VisionTransformer(**CONFIG)` and a linear patch head on the dense objective; deterministic in its
    arguments on one thread. Returns (the backbone, {"loss": per step, "seconds", "cpu_seconds"})."""
    images, masks = pretraining_data(n)
    num_classes = len(data.SCENE_CLASSES) + 1
    torch.manual_seed(seed)
    backbone = vit.VisionTransformer(**CONFIG)
    head = nn.Linear(backbone.embed_dim, num_classes)
    model = nn.ModuleDict({"backbone": backbone, "head": head})
    optimizer = torch.optim.AdamW(train.param_groups(model, weight_decay), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history: dict = {"loss": []}
    started, cpu_started = time.perf_counter(), time.process_time()
    order = torch.empty(0, dtype=torch.int64)
    for step in tqdm(range(steps), desc="pretraining the backbone", disable=not progress):
        if len(order) < batch_size:
            order = torch.randperm(len(images), generator=generator)
        batch, order = order[:batch_size], order[batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = lr * train.warmup_cosine(step, steps, warmup_steps)
        tokens = backbone.forward_features(images[batch])[:, backbone.num_prefix_tokens:]
        target = patch_targets(masks[batch], num_classes, backbone.patch_size)
        loss = torch.sum(-target * F.log_softmax(head(tokens), -1), -1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history["loss"].append(loss.item())
    history["seconds"] = time.perf_counter() - started
    history["cpu_seconds"] = time.process_time() - cpu_started
    return backbone.eval(), history


def weights_path() -> Path:
    return data.data_dir() / "pretrained" / f"{NAME}.pt"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backbone(progress: bool = True) -> vit.VisionTransformer:
    """The pretrained backbone: `VisionTransformer(**CONFIG)` with the weights of `data/pretrained/scenes_vit.pt`,
    made on first use by `pretrain(**RECIPE)` (a few minutes on one CPU thread; cached after that).

    In the `grade` profile it is pretrained for a few steps only, not cached: enough to run the code path."""
    if profile() == "grade":
        return pretrain(**dict(RECIPE, n=64, steps=3), progress=False)[0]
    path = weights_path()
    if not path.exists():
        print(f"pretraining the course's backbone once ({RECIPE['steps']} steps); it is cached at {path}")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one thread: the same weights on every machine's CPU
        try:
            save(pretrain(**RECIPE, progress=progress)[0], path)
        finally:
            torch.set_num_threads(threads)
    model = vit.VisionTransformer(**CONFIG)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def save(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key, value in RECIPE.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=None, help="where to write the weights (default: the cache)")
    args = vars(parser.parse_args())
    out = args.pop("out") or weights_path()
    torch.set_num_threads(1)  # one thread: the same weights on every machine's CPU
    model, history = pretrain(**args)
    save(model, out)
    tail = history["loss"][-50:]
    print(f"{out}: sha256 {sha256(out)}; final loss {sum(tail) / len(tail):.4f}; "
          f"{history['seconds']:.0f} s wall, {history['cpu_seconds']:.0f} s CPU")


if __name__ == "__main__":
    main()

"""Training-step speed of vitlab's VisionTransformer against timm's, same configuration and the same weights.

    python bench/vit_speed.py                          # every model below, default batch sizes
    python bench/vit_speed.py --models vit_tiny --batch 16 --repeats 20 --threads 2

Models: `vit_tiny` is ViT-Ti/16 at 224 x 224 (1000 classes); `04_digits` and `04_shapes` are the two ViTs that
chapter 04 trains in its `cpu` profile (the configurations in solutions/04_vit/04_vit.ipynb). For each, vitlab's
model is built with seed 0, its state_dict is loaded into timm's `VisionTransformer` (strict), and the two must
give the same logits before anything is timed. A training step is forward, cross-entropy, backward and an AdamW
step, on one fixed random batch, under bf16 autocast on CUDA (fp32 on CPU, as vitlab.train does).

Timing: one warm-up step each, then --repeats rounds, each timing one step of each model, the order alternating
from round to round so that a change in machine load hits both. `ratio` is the median over rounds of
(timm's step time / vitlab's step time) of the same round: vitlab's speed relative to timm's, 1.0 = as fast,
above 1 = faster. `cpu ratio` is the same with the process's CPU time (time.process_time) instead of wall time:
on a shared machine it is much less disturbed by other processes, and with --threads 1 it counts only the
work done. Step times and images/s are medians of wall time. timm needs torchvision only at import time; where
torchvision does not import, it is stubbed while timm imports.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitlab import train, vit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from torchvision_stub import torchvision_stubbed  # noqa: E402

# name: (VisionTransformer kwargs, batch on CPU, batch on CUDA)
MODELS = {
    "vit_tiny": (dict(vit.VIT_CONFIGS["vit_tiny_patch16_224"], img_size=224, in_chans=3, num_classes=1000), 8, 128),
    "04_digits": (dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4,
                       mlp_ratio=2.0), 64, 64),
    "04_shapes": (dict(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=64, depth=4, num_heads=4,
                       mlp_ratio=2.0), 64, 64),
}


def import_timm_vit():
    """timm.models.vision_transformer, with torchvision stubbed while timm imports if torchvision is unusable."""
    with torchvision_stubbed():
        import timm.models.vision_transformer as timm_vit
    return timm_vit


def train_step(model, optimizer, images, labels, device: torch.device):
    """One step as vitlab.train.fit takes it: forward (bf16 autocast where CUDA has it), cross-entropy, backward,
    AdamW."""
    with train._autocast(device):
        loss = F.cross_entropy(model(images).float(), labels)
    train.optimizer_step(loss, optimizer)


def bench_model(name: str, config: dict, batch: int, repeats: int, device: torch.device, timm_vit) -> dict:
    torch.manual_seed(0)
    ours = vit.VisionTransformer(**config).to(device)
    theirs = timm_vit.VisionTransformer(**config).to(device)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, config["in_chans"], config["img_size"], config["img_size"], generator=g).to(device)
    labels = torch.randint(0, config["num_classes"], (batch,), generator=g).to(device)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(images), theirs.eval()(images), atol=1e-4, rtol=1e-4,
                                   msg=f"{name}: vitlab and timm disagree with the same weights")
    ours.train(), theirs.train()
    fused = device.type == "cuda"
    steps = {
        "vitlab": (ours, torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=fused)),
        "timm": (theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-4, fused=fused)),
    }
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for key, (model, opt) in steps.items():  # warm-up
        train_step(model, opt, images, labels, device)
    sync()
    for r in range(repeats):
        for key in (("vitlab", "timm") if r % 2 == 0 else ("timm", "vitlab")):
            model, opt = steps[key]
            start, start_cpu = time.perf_counter(), time.process_time()
            train_step(model, opt, images, labels, device)
            sync()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    ratio = statistics.median(t / o for t, o in zip(times["timm"], times["vitlab"]))
    cpu_ratio = statistics.median(t / o for t, o in zip(cpu["timm"], cpu["vitlab"]))
    median = {k: statistics.median(v) for k, v in times.items()}
    return dict(model=name, batch=batch, params=vit.count_parameters(ours), vitlab=median["vitlab"],
                timm=median["timm"], ratio=ratio, cpu_ratio=cpu_ratio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch", type=int, help="batch size for every model (default: per model and device)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (one step of each model per round)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads on CPU (default: torch's choice)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    timm_vit = import_timm_vit()
    import timm

    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"training step (forward, cross-entropy, backward, AdamW), {precision} on {device} "
          f"({torch.get_num_threads()} CPU threads); torch {torch.__version__}, timm {timm.__version__}; "
          f"median of {args.repeats} interleaved rounds")
    header = (f"{'model':>10} {'params':>9} {'batch':>5} {'vitlab ms':>10} {'timm ms':>9} {'vitlab img/s':>13} "
              f"{'timm img/s':>11} {'ratio':>6} {'cpu ratio':>9}")
    print(header)
    print("-" * len(header))
    worst = float("inf")
    for name in args.models:
        config, cpu_batch, cuda_batch = MODELS[name]
        batch = args.batch or (cuda_batch if device.type == "cuda" else cpu_batch)
        row = bench_model(name, config, batch, args.repeats, device, timm_vit)
        worst = min(worst, row["ratio"])
        print(f"{name:>10} {row['params'] / 1e6:>8.2f}M {batch:>5} {row['vitlab'] * 1e3:>10.1f} {row['timm'] * 1e3:>9.1f} "
              f"{batch / row['vitlab']:>13.1f} {batch / row['timm']:>11.1f} {row['ratio']:>6.3f} {row['cpu_ratio']:>9.3f}",
              flush=True)
    print(f"ratio = vitlab's speed / timm's (paired per round); target >= 0.95: "
          f"{'met' if worst >= 0.95 else 'NOT met'} (lowest {worst:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scaling out with torch.distributed: data parallelism by hand and with DDP, a tensor-parallel MLP, ZeRO memory.

Run as a program under torchrun, this module is the data-parallel experiment of chapter 6:

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m vitlab.parallel --out result.pt

Every rank builds the same small ViT and the same global batch; each computes the gradient of its own shard,
averages it with `average_gradients` (or with the function in `--average-from FILE`), and the result is
compared with the full-batch gradient and with DistributedDataParallel after one SGD step. gloo on CPU;
`--backend nccl` on GPUs (one per process).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def average_gradients(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Replace every parameter's .grad by its mean over the ranks of `group`: all-reduce (sum), divide by world size."""
    world = dist.get_world_size(group)
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
            p.grad /= world


def shard(x: Tensor, rank: int, world: int) -> Tensor:
    """This rank's contiguous slice of a batch (B, ...) -> (about B / world, ...)."""
    return x.tensor_split(world)[rank]


def tensor_parallel_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, parts: int
                        ) -> tuple[Tensor, Tensor]:
    """The MLP fc2(GELU(fc1(x))) split Megatron-style over `parts` devices: returns (output, partials).

    fc1 (w1 (H, D), b1 (H,)) is split by output rows (column parallel): device i holds hidden units
    [i H / parts, (i + 1) H / parts) and applies GELU to them alone. fc2 (w2 (D_out, H)) is split by input
    columns (row parallel): device i multiplies its hidden units by its slice of w2. partials (parts, ..., D_out)
    are what the devices hold before the all-reduce; output = their sum + b2 (the bias added once).
    """
    partials = torch.stack([F.gelu(F.linear(x, w1_i, b1_i)) @ w2_i.T
                            for w1_i, b1_i, w2_i in zip(w1.chunk(parts, 0), b1.chunk(parts, 0), w2.chunk(parts, 1))])
    return partials.sum(0) + b2, partials


def zero_bytes_per_device(params: int, devices: int, stage: int) -> dict[str, float]:
    """Bytes per device for mixed-precision Adam (ZeRO paper): bf16 weights (2), bf16 grads (2), fp32 master
    weights + two moments (12 bytes per parameter). Stage 0 is plain data parallelism; ZeRO-1 shards the optimizer
    states over the devices, ZeRO-2 the gradients too, ZeRO-3 the weights too."""
    shard_of = {"weights": stage >= 3, "gradients": stage >= 2, "optimizer states": stage >= 1}
    size = {"weights": 2, "gradients": 2, "optimizer states": 12}
    return {k: params * size[k] / (devices if shard_of[k] else 1) for k in size}


# ------------------------------------------------------------------------------------------ the experiment


def _load_average(path: str) -> Callable[[nn.Module], None]:
    """`average_gradients` from a Python file (the learner's, written out by the notebook)."""
    spec = importlib.util.spec_from_file_location("learner_average_gradients", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.average_gradients


def _flat_grads(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()]).detach()


def data_parallel_experiment(average: Callable[[nn.Module], None], batch: int = 32, seed: int = 0) -> dict:
    """On every rank of the initialised default group: shard gradients averaged by `average` vs the full-batch
    gradient, and one SGD step by hand vs one with DDP. Returns the measurements (the same on every rank)."""
    from torch.nn.parallel import DistributedDataParallel

    from vitlab.vit import VisionTransformer

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", rank % torch.cuda.device_count()) if dist.get_backend() == "nccl" else torch.device("cpu")
    torch.manual_seed(seed)  # the same on every rank: the same model and the same global batch
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=32, depth=2,
                              num_heads=4).to(dev)
    images, labels = torch.rand(batch, 3, 16, 16, device=dev), torch.randint(0, 3, (batch,), device=dev)
    mine = shard(images, rank, world), shard(labels, rank, world)

    full = copy.deepcopy(model)  # every rank computes the full-batch gradient, only to compare with
    F.cross_entropy(full(images), labels).backward()

    manual = copy.deepcopy(model)
    F.cross_entropy(manual(mine[0]), mine[1]).backward()
    local = _flat_grads(manual)
    started = time.perf_counter()
    average(manual)
    seconds = time.perf_counter() - started

    ddp = DistributedDataParallel(copy.deepcopy(model))
    F.cross_entropy(ddp(mine[0]), mine[1]).backward()
    grad_gap_ddp = (_flat_grads(ddp.module) - _flat_grads(manual)).abs().max().item()
    for m in (manual, ddp.module):
        torch.optim.SGD(m.parameters(), lr=0.5).step()
    weight_gap = max((a - b).abs().max().item() for a, b in zip(manual.parameters(), ddp.module.parameters()))

    shards = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(shards, local)
    return {"world": world, "backend": dist.get_backend(), "batch": batch,
            "grad_gap_full": (_flat_grads(manual) - _flat_grads(full)).abs().max().item(),
            "grad_gap_ddp": grad_gap_ddp, "weight_gap_ddp": weight_gap, "all_reduce_seconds": seconds,
            "full": _flat_grads(full).cpu(), "averaged": _flat_grads(manual).cpu(),
            "shards": torch.stack(shards).cpu()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where rank 0 saves the measurements (torch.save)")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--average-from", help="a Python file defining average_gradients(model)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group(args.backend)
    try:
        average = _load_average(args.average_from) if args.average_from else average_gradients
        result = data_parallel_experiment(average, args.batch)
        if dist.get_rank() == 0:
            torch.save(result, Path(args.out))
            print(f"{result['world']} ranks ({result['backend']}): |averaged - full-batch gradient| <= "
                  f"{result['grad_gap_full']:.1e}; |DDP - by hand| <= {result['grad_gap_ddp']:.1e} (gradients), "
                  f"{result['weight_gap_ddp']:.1e} (weights after a step)")
        dist.barrier()  # no rank tears gloo down while another still uses it (that aborts the process)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

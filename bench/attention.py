"""Time and peak memory of self-attention: the naive formula, vitlab's fused path and a chapter-01 notebook's own.

    python bench/attention.py                           # N = 64 ... 2048 on CPU, 64 ... 4096 on CUDA
    python bench/attention.py --sizes 256 1024 4096 --plot attention.png
    python bench/attention.py --notebook chapters/01_attention/01_attention.ipynb   # your own solution

Rows, for q, k, v of shape (batch, heads, N, head_dim) (ViT-B's 12 heads of 64 by default):
- `naive`: softmax(q k^T / sqrt(d)) v, the (N, N) score matrix materialised;
- `vitlab`: what `vitlab.attention.MultiHeadAttention` runs, torch's fused `F.scaled_dot_product_attention`;
- `notebook`: `scaled_dot_product_attention` as defined in the notebook's solution cell (executed on its own).

Time: median over --repeats calls after one warm-up call (CUDA synchronised). Peak memory: what the call
needs above what was in use before it. CUDA: torch.cuda.max_memory_allocated() after resetting the peak
counter, minus memory_allocated() before. CPU (Linux only; `-` elsewhere): the resident-set high-water mark
(VmHWM), reset to the current resident set by writing 5 to /proc/self/clear_refs just before the call, minus
VmRSS before it; tracemalloc does not see torch's allocations, hence /proc. These are measured in a second
process started with MALLOC_MMAP_THRESHOLD_=65536, so that glibc maps every buffer of 64 KiB or more afresh
and unmaps it when freed (by default it keeps freed buffers up to 32 MiB for reuse, and the resident set
would not grow); the times come from this process, with the default allocator. Figures under about
0.1 MiB are noise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitlab import attention

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "01_attention" / "01_attention.ipynb"
MIB = 2 ** 20


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the scores materialised: (..., N, d) -> (..., N, d)."""
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def vitlab_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The path of vitlab.attention.MultiHeadAttention.forward (no mask, no dropout)."""
    return attention._fused_attention(q, k, v, None, False, 0.0)


def notebook_attention(path: Path) -> Callable | None:
    """`scaled_dot_product_attention` from the notebook's code cell that defines it, or None if none does."""
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and re.search(r"^def scaled_dot_product_attention\(", source, re.M):
            namespace = {"math": math, "torch": torch, "F": F, "nn": nn}
            exec(compile(source, f"{path.name}: scaled_dot_product_attention cell", "exec"), namespace)
            return namespace["scaled_dot_product_attention"]
    return None


def _proc_kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def peak_memory(fn: Callable[[], object], device: torch.device) -> float | None:
    """MiB that fn() needs above what was in use before the call (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / MIB
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _proc_kib("VmRSS")
    except OSError:
        return None
    fn()
    return max(_proc_kib("VmHWM") - before, 0) * 1024 / MIB


def seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls after one warm-up call."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step(impl: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backward: bool) -> Callable[[], None]:
    """A closure running impl(q, k, v), and its backward with a fixed upstream gradient if asked."""
    grad = torch.ones_like(q)

    def run() -> None:
        out = impl(q, k, v)
        if backward:
            out.backward(grad)
            q.grad = k.grad = v.grad = None

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="token counts N (default 64 ... 2048 on CPU, ... 4096 on CUDA)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell, after one warm-up (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads on CPU (default: torch's choice)")
    parser.add_argument("--notebook", type=Path, default=SOLUTION, help="a chapter-01 notebook (default: the solution)")
    parser.add_argument("--plot", type=Path, help="save time and memory against N to this image file")
    parser.add_argument("--memory-json", action="store_true", help=argparse.SUPPRESS)  # the CPU memory pass
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or [2 ** i for i in range(6, 13 if device.type == "cuda" else 12)]
    impls: dict[str, Callable] = {"naive": naive_attention, "vitlab": vitlab_attention}
    learner = notebook_attention(args.notebook)
    small = [torch.randn(args.batch, args.heads, 16, args.head_dim, device=device, dtype=dtype) for _ in range(3)]
    try:
        if learner is None:
            raise LookupError("defines no scaled_dot_product_attention")
        learner(*small)
        impls["notebook"] = learner
    except (NotImplementedError, LookupError) as exc:
        print(f"notebook {args.notebook}: skipped ({type(exc).__name__}: {exc or 'not written yet'})")
    expected = naive_attention(*[t.double() for t in small])
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for name, impl in impls.items():  # a fast wrong answer is no answer
        torch.testing.assert_close(impl(*small).double(), expected, atol=tol, rtol=tol, msg=f"{name} is wrong")

    if args.memory_json:
        print(json.dumps({f"{name} {n} {mode}": mib for (name, n, mode), mib in
                          measure(impls, sizes, args, device, dtype, timing=False).items()}))
        return 0
    print(f"attention, q k v ({args.batch}, {args.heads}, N, {args.head_dim}) {args.dtype} on {device}"
          f" ({torch.get_num_threads()} CPU threads), median of {args.repeats}; torch {torch.__version__}")
    times = measure(impls, sizes, args, device, dtype, timing=True)
    memory = measure(impls, sizes, args, device, dtype, timing=False) if device.type == "cuda" else cpu_memory(argv)
    header = f"{'N':>6} {'impl':>9} {'fwd ms':>10} {'fwd MiB':>9} {'fwd+bwd ms':>11} {'fwd+bwd MiB':>12} {'scores MiB':>11}"
    print(header)
    print("-" * len(header))
    rows = []
    for n in sizes:
        scores = attention.attention_memory_bytes(n, args.heads, args.batch, dtype.itemsize) / MIB
        for name in impls:
            row = {"n": n, "impl": name}
            for mode in ("fwd", "fwd+bwd"):
                row[mode] = times[name, n, mode]
                row[mode + " mem"] = memory.get((name, n, mode))
            rows.append(row)
            mem = [f"{row[m]:.1f}" if row[m] is not None else "-" for m in ("fwd mem", "fwd+bwd mem")]
            print(f"{n:>6} {name:>9} {row['fwd'] * 1e3:>10.2f} {mem[0]:>9} {row['fwd+bwd'] * 1e3:>11.2f} "
                  f"{mem[1]:>12} {scores:>11.1f}", flush=True)
    if args.plot:
        plot(rows, args.plot, f"{args.heads} heads x {args.head_dim}, batch {args.batch}, {args.dtype}, {device}")
        print(f"plot: {args.plot}")
    return 0


def measure(impls: dict[str, Callable], sizes: list[int], args, device: torch.device, dtype: torch.dtype,
            timing: bool) -> dict[tuple[str, int, str], float | None]:
    """{(impl, N, "fwd" or "fwd+bwd"): median seconds if timing, else peak MiB}."""
    results = {}
    for n in sizes:
        g = torch.Generator(device=device).manual_seed(n)
        q, k, v = (torch.randn(args.batch, args.heads, n, args.head_dim, device=device, dtype=dtype, generator=g)
                   .requires_grad_() for _ in range(3))
        for name, impl in impls.items():
            for mode, backward in (("fwd", False), ("fwd+bwd", True)):
                run = step(impl, q, k, v, backward)
                with torch.set_grad_enabled(backward):
                    if timing:
                        results[name, n, mode] = seconds(run, device, args.repeats)
                    else:
                        run()  # warm-up: lazy initialisation is not the call's memory
                        results[name, n, mode] = peak_memory(run, device)
    return results


def cpu_memory(argv: list[str] | None) -> dict[tuple[str, int, str], float | None]:
    """The CPU memory pass, run in a child process with a fixed mmap threshold (see the module docstring)."""
    if not Path("/proc/self/clear_refs").exists():
        return {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    argv = sys.argv[1:] if argv is None else argv
    out = subprocess.run([sys.executable, __file__, *argv, "--memory-json"], env=env, capture_output=True, text=True,
                         check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    return {(name, int(n), mode): mib for key, mib in found.items() for name, n, mode in [key.split(" ", 2)]}


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Time and peak memory against N, forward and forward+backward, one line per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for name in dict.fromkeys(r["impl"] for r in rows):
        mine = [r for r in rows if r["impl"] == name]
        ns = [r["n"] for r in mine]
        for mode, style in (("fwd", "--"), ("fwd+bwd", "-")):
            line, = axes[0].loglog(ns, [r[mode] * 1e3 for r in mine], style, marker="o", label=f"{name} {mode}")
            mem = [(r["n"], r[mode + " mem"]) for r in mine if r[mode + " mem"]]
            if mem:
                axes[1].loglog(*zip(*mem), style, marker="o", color=line.get_color(), label=f"{name} {mode}")
    axes[0].set(xlabel="tokens N", ylabel="ms per call (median)", title="time")
    axes[1].set(xlabel="tokens N", ylabel="MiB above the baseline", title="peak memory")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"self-attention: {title}")
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

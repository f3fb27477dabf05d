"""The payoff chapters' held-out figures (issue 14): the one-time cost of the course's pretrained backbone, then
each chapter run in the `cpu` profile, with the lines it prints that start with "held-out", its wall time and
the CPU time of its kernel (this machine is shared: the CPU time is the steadier number).

    python bench/payoff.py                      # pretraining, then 08_segmentation
    python bench/payoff.py --no-pretrain 08_segmentation --markdown
"""
from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import nbformat
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks import OUT, find_notebooks, run_notebook, within_budget  # noqa: E402

from vitlab import pretrain  # noqa: E402

CHAPTERS = ["08_segmentation"]  # the chapters that train on the pretrained backbone and print held-out figures


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # a kernel counts here once it has exited
    return usage.ru_utime + usage.ru_stime


def held_out_lines(path: Path) -> list[str]:
    """The printed lines of an executed notebook that start with "held-out"."""
    lines = []
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            if output.get("name") == "stdout":
                lines += [line for line in output["text"].splitlines() if line.startswith("held-out")]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", default=CHAPTERS)
    parser.add_argument("--no-pretrain", action="store_true", help="skip timing the backbone's pretraining")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    sep = " | " if args.markdown else "   "
    if not args.no_pretrain:
        torch.set_num_threads(1)
        _, history = pretrain.pretrain(**pretrain.RECIPE)
        print(f"pretraining {pretrain.RECIPE}: {history['seconds']:.0f} s wall, {history['cpu_seconds']:.0f} s CPU, "
              f"final loss {sum(history['loss'][-50:]) / 50:.4f}")
    print(sep.join(["notebook", "wall s", "kernel CPU s", "in budget", "status", "held-out figures"]))
    if args.markdown:
        print(" | ".join(["---"] * 6))
    for path in find_notebooks(args.notebooks):
        before = children_cpu_seconds()
        run = run_notebook(path, "cpu", timeout=600)
        cpu = children_cpu_seconds() - before
        figures = "; ".join(held_out_lines(OUT / "cpu" / path.name)) or "none printed"
        print(sep.join([run.notebook, f"{run.seconds or 0:.1f}", f"{cpu:.1f}", within_budget(run), run.status,
                        figures]))


if __name__ == "__main__":
    main()

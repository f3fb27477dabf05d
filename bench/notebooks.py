"""Run the solution notebooks in a chosen profile and print how long each took and how much memory it used.

    python bench/notebooks.py                                  # every solution notebook, vitlab.profile()
    python bench/notebooks.py 01_attention --profile grade --profile cpu --markdown

Each notebook runs in a fresh kernel started in the notebook's own folder, with VITLAB_PROFILE set in the
kernel's environment. The executed copies (outputs included) and the kernel's own log go to bench/out/PROFILE/.
Exit status: 0 when every run was ok, 1 when any failed, 2 for a name that matches no notebook.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

import vitlab
from vitlab.device import PROFILES

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
OUT = ROOT / "bench" / "out"


@dataclass
class Run:
    notebook: str
    profile: str
    seconds: float | None  # running the cells, kernel start excluded
    seconds_total: float | None  # kernel start and running the cells
    peak_mib: float | None  # high-water mark of the kernel's resident memory
    status: str


def find_notebooks(names: list[str]) -> list[Path]:
    """The notebooks named (a chapter folder name such as 01_attention, or a path), or every solution notebook.

    Raises LookupError for a name that leads to no notebook."""
    if not names:
        return sorted(p for p in SOLUTIONS.glob("*/*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    found = []
    for name in names:
        path = Path(name)
        if path.suffix != ".ipynb":
            folder = path if path.is_dir() else SOLUTIONS / name
            path = folder / f"{folder.name}.ipynb"
        if not path.is_file():
            raise LookupError(f"no notebook for {name!r} (looked for {path})")
        found.append(path.resolve())
    return found


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a live process in MiB, from /proc (Linux); None where that is not available."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def error_line(exc: Exception) -> str:
    """One line that says what went wrong."""
    if isinstance(exc, CellExecutionError):
        text = f"{exc.ename}: {exc.evalue}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def run_notebook(path: Path, profile: str, timeout: int) -> Run:
    """Execute one notebook in a fresh kernel and measure it; never raises for a failing notebook."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    env = {**os.environ, "VITLAB_PROFILE": profile}
    out = OUT / profile / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds = seconds_total = peak = None
    status = "ok"
    started = time.perf_counter()
    try:
        # the kernel process's own output (start-up warnings, why it died) goes to a log beside the executed copy
        with open(out.with_suffix(".log"), "w") as log, client.setup_kernel(env=env, stdout=log, stderr=log):
            ready = time.perf_counter()
            try:
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
            except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
                status = "error: " + error_line(exc)
            finished = time.perf_counter()
            seconds, seconds_total = finished - ready, finished - started
            if client.km.provisioner is not None and client.km.provisioner.pid is not None:
                peak = peak_rss_mib(client.km.provisioner.pid)
    except Exception as exc:  # a kernel that does not start is one failed row, not the end of the bench
        status = "error: " + error_line(exc)
    nbformat.write(nb, out)
    return Run(path.stem, profile, seconds, seconds_total, peak, status)


# Seconds each notebook may take to run its cells on a 2-core CPU machine (issue 8); the gpu profile has none.
BUDGET_S = {"grade": 20, "cpu": 120}


def within_budget(r: Run) -> str:
    budget = BUDGET_S.get(r.profile)
    if budget is None or r.seconds is None:
        return "-"
    return f"yes (< {budget})" if r.seconds < budget else f"NO (>= {budget})"


def table(runs: list[Run], markdown: bool) -> str:
    """The runs as an aligned plain-text table, or as a Markdown table; a total row per profile."""
    header = ["notebook", "profile", "run s", "with kernel start s", "peak MiB", "in budget", "status"]
    rows = [
        [
            r.notebook,
            r.profile,
            "-" if r.seconds is None else f"{r.seconds:.1f}",
            "-" if r.seconds_total is None else f"{r.seconds_total:.1f}",
            "-" if r.peak_mib is None else f"{r.peak_mib:.0f}",
            within_budget(r),
            r.status,
        ]
        for r in runs
    ]
    for profile in dict.fromkeys(r.profile for r in runs):
        mine = [r for r in runs if r.profile == profile]
        peaks = [r.peak_mib for r in mine if r.peak_mib is not None]
        rows.append([f"total ({len(mine)})", profile,
                     f"{sum(r.seconds or 0 for r in mine):.1f}", f"{sum(r.seconds_total or 0 for r in mine):.1f}",
                     f"max {max(peaks):.0f}" if peaks else "-",
                     f"{sum(within_budget(r).startswith('yes') for r in mine)} of {len(mine)}",
                     f"{sum(r.status == 'ok' for r in mine)} ok"])
    if markdown:
        lines = [header, ["---"] * len(header), *rows]
        return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*",
                        help="chapter names (01_attention) or notebook paths; default: all of solutions/")
    parser.add_argument("--profile", action="append", choices=PROFILES,
                        help="repeatable; default: vitlab.profile() (VITLAB_PROFILE, else gpu with CUDA, else cpu)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    profiles = args.profile or [vitlab.profile()]
    try:
        paths = find_notebooks(args.notebooks)
    except LookupError as exc:
        parser.error(str(exc))
    runs = []
    for path in paths:
        for profile in profiles:
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            print(f"running {shown} [{profile}] ...", file=sys.stderr, flush=True)
            runs.append(run_notebook(path, profile, args.timeout))
            print(f"  {runs[-1].status}", file=sys.stderr, flush=True)
    print(table(runs, args.markdown))
    return 1 if any(r.status != "ok" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())

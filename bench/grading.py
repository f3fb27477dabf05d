"""Cohort benchmark: grade N synthetic submissions per chapter with 1 and 2 local workers and on 2 Dask workers.

    python bench/grading.py                               # 2 submissions of every graded chapter
    python bench/grading.py --students 4 --workers 1 --workers 2 --dask 2 --chapter 01_attention
    python bench/grading.py --dask 0                      # local workers only
    python bench/grading.py --no-sandbox                  # where bubblewrap is missing

A synthetic cohort: for each chapter, half the students hand in the solution, the other half the solution
with its first exercise left undone (the release's stub). Each run grades the whole cohort from scratch in its
own folder (bench/out/grading/RUN/) with `python -m autograder grade`, with `--workers W`, or with `--scheduler`
on a Dask cluster of W one-thread workers started on loopback for the run (its start not timed). The table gives
wall-clock seconds, submissions per minute, the speed-up over the first run, and CPU seconds per submission
(user + sys of every process the run started, kernels and the Dask cluster included); then where the time of
the first run went, from its nbgrader.log: nbgrader's autograde per submission, generate_assignment and
generate_feedback once per chapter, and the rest (start-up, intake, flags, gradebook, grades.csv).
"""
from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import nbformat
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from dask_cluster import Cluster  # noqa: E402
from grading import chapter_notebooks, learner_submission, nbgrader_meta  # noqa: E402


def graded_chapters() -> list[str]:
    names = sorted(p.parent.name for p in ROOT.glob("solutions/*/*.ipynb") if p.stem == p.parent.name)
    return [n for n in names if any(nbgrader_meta(c).get("grade") for c in nbformat.read(
        ROOT / "solutions" / n / f"{n}.ipynb", as_version=4).cells)]


def cohort(folder: Path, chapters: list[str], students: int) -> int:
    """Write the synthetic submissions under `folder`; returns how many."""
    count = 0
    for chapter in chapters:
        release, solution = chapter_notebooks(ROOT, chapter)
        full = learner_submission(release, solution, [])
        first = next(c for c in release.cells if nbgrader_meta(c).get("solution"))
        partial = learner_submission(release, solution, [])
        for cell in partial.cells:
            if nbgrader_meta(cell).get("grade_id") == nbgrader_meta(first)["grade_id"]:
                cell.source = first.source
        for i in range(students):
            student = folder / f"student{i:03d}"
            student.mkdir(parents=True, exist_ok=True)
            nbformat.write(full if i % 2 == 0 else partial, student / f"{chapter}.ipynb")
            count += 1
    return count


KINDS = (("kernels", ("ipykernel_launcher",)), ("nbgrader", ("nbgrader",)), ("dask", ("dask", "multiprocessing")))


class CpuMeter:
    """CPU seconds (user + sys) of every process descending from this one while it runs, sandboxed kernels
    included (their exit is not reaped up a chain that `getrusage` could see), by kind (KINDS, by command line;
    "grade" for the rest): each process is sampled every 0.2 s and counted with its last sample, so up to 0.2 s
    of each process's end is missed."""

    def __init__(self) -> None:
        self.last: dict[tuple[int, float], tuple[str, float]] = {}  # (pid, start time) -> (kind, CPU seconds)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.done.wait(0.2):
            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    times, command = child.cpu_times(), " ".join(child.cmdline())
                    kind = next((kind for kind, words in KINDS if any(w in command for w in words)), "grade")
                    self.last[child.pid, child.create_time()] = kind, times.user + times.system

    def __enter__(self) -> CpuMeter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def seconds(self, kind: str | None = None) -> float:
        return sum(cpu for k, cpu in self.last.values() if kind in (None, k))


def grade_run(subs: Path, dest: Path, workers: int, dask: bool, sandbox: bool) -> tuple[float, CpuMeter, str]:
    """Grade the cohort once; (wall seconds, its CPU, status)."""
    subprocess.run(["rm", "-rf", str(dest)], check=True)
    dest.mkdir(parents=True)
    with CpuMeter() as cpu, Cluster.on_loopback(dest / "dask", workers) if dask else nullcontext() as cluster:
        where = ["--scheduler", cluster.address] if dask else ["--workers", str(workers)]
        start = time.monotonic()
        command = [sys.executable, "-m", "autograder", "grade", str(subs), "--out", str(dest / "grading"), *where]
        done = subprocess.run(command + ([] if sandbox else ["--no-sandbox"]), cwd=ROOT, capture_output=True, text=True)
        seconds = time.monotonic() - start
    status = "ok" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    return seconds, cpu, status


def breakdown(log: Path, seconds: float, n: int) -> list[tuple[str, float]]:
    """Where a run's wall time went, from the `(exit code C, S s)` lines of its nbgrader.log."""
    spent = {"autograde": 0.0, "generate_assignment": 0.0, "generate_feedback": 0.0}
    for command, s in re.findall(r"^\$ nbgrader (\w+) .*?\(exit code -?\d+, ([\d.]+) s\)", log.read_text(), re.M):
        if command in spent:
            spent[command] += float(s)
    rest = seconds - sum(spent.values())
    return [("autograde, per submission", spent["autograde"] / n),
            ("generate_assignment, all", spent["generate_assignment"]),
            ("generate_feedback, all", spent["generate_feedback"]), ("the rest of `grade`", rest)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=2, help="submissions per chapter (default 2)")
    p.add_argument("--chapter", action="append", default=[], help="chapter (repeat; default: every graded one)")
    p.add_argument("--workers", action="append", type=int, default=[], help="local worker counts (default: 1 and 2)")
    p.add_argument("--dask", type=int, default=2, help="Dask workers on loopback for the last run (default 2; 0: none)")
    p.add_argument("--no-sandbox", action="store_true")
    args = p.parse_args()
    chapters = args.chapter or graded_chapters()
    out = ROOT / "bench" / "out" / "grading"
    subs = out / "submissions"
    if subs.exists():
        subprocess.run(["rm", "-rf", str(subs)], check=True)
    n = cohort(subs, chapters, args.students)
    runs = [(w, False) for w in args.workers or [1, 2]] + ([(args.dask, True)] if args.dask else [])
    rows = []
    for workers, dask in runs:
        name = f"{workers}-dask-workers" if dask else f"{workers}-workers"
        rows.append((name, *grade_run(subs, out / name, workers, dask, not args.no_sandbox)))
    base = rows[0][1]
    print(f"{n} submissions ({args.students} per chapter) of {len(chapters)} chapters: {', '.join(chapters)}")
    print(f"{'run':>16}  {'wall s':>7}  {'s/submission':>12}  {'per minute':>10}  {'speed-up':>8}  "
          f"{'CPU s/submission':>16}  status")
    for name, seconds, cpu, status in rows:
        print(f"{name:>16}  {seconds:>7.1f}  {seconds / n:>12.1f}  {60 * n / seconds:>10.2f}  {base / seconds:>8.2f}  "
              f"{cpu.seconds() / n:>16.1f}  {status}")
    kinds = [kind for kind, _ in KINDS] + ["grade"]
    print(f"\nCPU s per submission, by process\n{'run':>16}  " + "  ".join(f"{k:>8}" for k in kinds))
    for name, _, cpu, _ in rows:
        print(f"{name:>16}  " + "  ".join(f"{cpu.seconds(k) / n:>8.1f}" for k in kinds))
    print(f"\nwhere the wall time of {rows[0][0]} went (from its nbgrader.log):")
    for what, seconds in breakdown(out / rows[0][0] / "grading" / "nbgrader.log", rows[0][1], n):
        print(f"  {what:<28} {seconds:>6.1f} s")


if __name__ == "__main__":
    main()

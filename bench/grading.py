"""Cohort benchmark: grade N synthetic submissions per chapter with 1 and with 2 workers (or those given).

    python bench/grading.py                               # 2 submissions of every graded chapter, 1 and 2 workers
    python bench/grading.py --students 4 --workers 1 --workers 2 --chapter 01_attention
    python bench/grading.py --no-sandbox                  # where bubblewrap is missing

A synthetic cohort: for each chapter, half the students hand in the solution, the other half the solution
with its first exercise left undone (the release's stub). Each worker count grades the whole cohort from
scratch in its own folder (bench/out/grading/W-workers/) with `python -m autograder grade`; the table gives
wall-clock seconds, seconds per submission and the speed-up over the first worker count.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=2, help="submissions per chapter (default 2)")
    p.add_argument("--chapter", action="append", default=[], help="chapter (repeat; default: every graded one)")
    p.add_argument("--workers", action="append", type=int, default=[], help="worker counts (default: 1 and 2)")
    p.add_argument("--no-sandbox", action="store_true")
    args = p.parse_args()
    chapters = args.chapter or graded_chapters()
    out = ROOT / "bench" / "out" / "grading"
    subs = out / "submissions"
    if subs.exists():
        subprocess.run(["rm", "-rf", str(subs)], check=True)
    n = cohort(subs, chapters, args.students)
    rows = []
    for workers in args.workers or [1, 2]:
        dest = out / f"{workers}-workers"
        subprocess.run(["rm", "-rf", str(dest)], check=True)
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "autograder", "grade", str(subs), "--out", str(dest),
                               "--workers", str(workers), *(["--no-sandbox"] if args.no_sandbox else [])],
                              cwd=ROOT, capture_output=True, text=True)
        seconds = time.monotonic() - start
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        rows.append((workers, seconds, status))
    base = rows[0][1]
    print(f"{n} submissions ({args.students} per chapter) of {len(chapters)} chapters: {', '.join(chapters)}")
    print(f"{'workers':>7}  {'seconds':>8}  {'s/submission':>12}  {'speed-up':>8}  status")
    for workers, seconds, status in rows:
        print(f"{workers:>7}  {seconds:>8.1f}  {seconds / n:>12.1f}  {base / seconds:>8.2f}  {status}")


if __name__ == "__main__":
    main()

"""The instructor's command line over nbgrader: release, grade, feedback, export.

    python -m autograder release [CHAPTER ...]
    python -m autograder grade SUBMISSIONS --chapter NAME [--out DIR]
    python -m autograder feedback DIR --chapter NAME
    python -m autograder export DIR --chapter NAME [--csv PATH]

`release` writes `chapters/` from `solutions/` in this repository. The other commands work in a grading
folder DIR that is an nbgrader course of its own (its `solutions/`, `submitted/`, `autograded/`,
`feedback/`, `gradebook.db`, and `nbgrader.log` with nbgrader's output), so grading never writes into the
repository.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().with_name("nbgrader_config.py")
IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc")


class Problem(Exception):
    """Something wrong with what the instructor asked for: reported as one line, exit code 2."""


# ------------------------------------------------------------------------------------------- nbgrader


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `nbgrader ARGS` on the course rooted at `course` with our config; output captured.

    The environment's bin/ goes first on PATH: nbgrader runs the `alembic` executable by name when it
    creates a gradebook. VITLAB_PROFILE is dropped so that graded notebooks run in the "grade" profile.
    """
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("VITLAB_PROFILE", None)
    command = [
        sys.executable, "-m", "nbgrader", *args,
        f"--NbGrader.config_file={CONFIG.with_suffix('')}",
        f"--CourseDirectory.root={course}",
        f"--CourseDirectory.db_url=sqlite:///{course / 'gradebook.db'}",
    ]
    return subprocess.run(command, cwd=course, env=env, capture_output=True, text=True)


def nbgrader_logged(course: Path, *args: str) -> bool:
    """Run nbgrader in a grading folder, appending its output to nbgrader.log; True when it succeeded."""
    start = time.monotonic()
    done = nbgrader(course, *args)
    with (course / "nbgrader.log").open("a", encoding="utf-8") as log:
        log.write(f"$ nbgrader {' '.join(args)}  (exit code {done.returncode}, {time.monotonic() - start:.0f} s)\n"
                  f"{done.stdout}{done.stderr}\n")
    return done.returncode == 0


def errors_of(done: subprocess.CompletedProcess) -> str:
    """nbgrader's error lines, or its last lines when it printed none."""
    lines = (done.stdout + done.stderr).splitlines()
    return "\n".join([line for line in lines if "[ERROR]" in line] or lines[-10:])


# ------------------------------------------------------------------------------------------- chapters


def chapters(course: Path) -> list[str]:
    """The chapters of a course: folders of solutions/ that hold a notebook named like the folder."""
    return sorted(p.parent.name for p in (course / "solutions").glob("*/*.ipynb") if p.stem == p.parent.name)


def known(chapter: str, course: Path) -> str:
    """`chapter`, checked against the course's chapters."""
    chapter = chapter.rstrip("/\\")
    names = chapters(course)
    if chapter not in names:
        raise Problem(f"unknown chapter {chapter!r}; known chapters: {', '.join(names) or 'none'}")
    return chapter


def graded_cells(notebook: Path) -> list[str]:
    """The grade_id of each graded cell, in notebook order."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [c["metadata"]["nbgrader"]["grade_id"] for c in cells if c["metadata"].get("nbgrader", {}).get("grade")]


def release(names: list[str]) -> None:
    """Regenerate chapters/NAME from solutions/NAME (every chapter when `names` is empty)."""
    for name in [known(n, ROOT) for n in names] or chapters(ROOT):
        done = nbgrader(ROOT, "generate_assignment", name, "--force", "--no-db")
        if done.returncode != 0:
            raise SystemExit(f"nbgrader generate_assignment {name} failed:\n{errors_of(done)}")
        print(f"released {name} -> {(ROOT / 'chapters' / name).relative_to(ROOT)}")


# ------------------------------------------------------------------------------------------ grading


def folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise Problem(f"{what} {path} is not a folder")
    return path.resolve()


def grading_folder(path: Path) -> Path:
    """A folder `grade` wrote into (it holds a gradebook)."""
    path = folder(path, "grading folder")
    if not (path / "gradebook.db").exists():
        raise Problem(f"{path} is not a grading folder (no gradebook.db): run `grade` first")
    return path


def submission_of(student: Path, chapter: str) -> Path:
    """The student's notebook: the only *.ipynb in their folder (or, of several, the one named CHAPTER)."""
    found = sorted(p for p in student.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if len(found) > 1:
        found = [p for p in found if p.stem == chapter] or found
    if not found:
        raise Problem(f"student {student.name}: no notebook (*.ipynb) in {student}")
    if len(found) > 1:
        raise Problem(f"student {student.name}: {len(found)} notebooks and none named {chapter}.ipynb in {student}")
    try:
        nb = json.loads(found[0].read_bytes())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise Problem(f"student {student.name}: {found[0].name} is not JSON ({exc})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise Problem(f"student {student.name}: {found[0].name} is JSON but not a notebook (it has no cells)")
    return found[0]


def grade(submissions: Path, chapter: str, out: Path | None) -> int:
    """Autograde every student's notebook, then write feedback and grades.csv. Exit code 2 if any was skipped."""
    submissions = folder(submissions, "submissions folder")
    chapter = known(chapter, ROOT)
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise Problem(f"submissions folder {submissions} has no student folders")
    course = Path(tempfile.mkdtemp(prefix=f"vitlab-{chapter}-")) if out is None else out.resolve()
    print(f"grading {chapter} in {course}")
    course.mkdir(parents=True, exist_ok=True)

    source = course / "solutions" / chapter
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(ROOT / "solutions" / chapter, source, ignore=IGNORE)
    if not nbgrader_logged(course, "generate_assignment", chapter, "--force"):
        raise SystemExit(f"nbgrader generate_assignment {chapter} failed: see {course / 'nbgrader.log'}")

    problems, graded = [], []
    for student in students:
        try:
            notebook = submission_of(student, chapter)
        except Problem as problem:
            problems.append(f"{problem}: not graded")
            continue
        dest = course / "submitted" / student.name / chapter
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        shutil.copyfile(notebook, dest / f"{chapter}.ipynb")
        graded.append(student.name)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not graded:
        return 2

    print(f"autograding {len(graded)} submission{'s' * (len(graded) != 1)} "
          f"(nbgrader's output: {course / 'nbgrader.log'})")
    nbgrader_logged(course, "autograde", chapter, "--force")
    for name in graded:
        if not (course / "autograded" / name / chapter / f"{chapter}.ipynb").exists():
            problems.append(f"student {name}: nbgrader could not grade the notebook (see {course / 'nbgrader.log'})")
            print(f"error: {problems[-1]}", file=sys.stderr)
    if not nbgrader_logged(course, "generate_feedback", chapter, "--force"):
        problems.append(f"nbgrader generate_feedback failed (see {course / 'nbgrader.log'})")
        print(f"error: {problems[-1]}", file=sys.stderr)
    header, rows = export(course, chapter, course / "grades.csv")
    print_table(header, rows)
    print(f"feedback: {course / 'feedback'}\ngrades:   {course / 'grades.csv'}")
    return 2 if problems else 0


def feedback(course: Path, chapter: str) -> None:
    """(Re)generate the feedback HTML of a graded chapter under DIR/feedback/STUDENT/CHAPTER/."""
    course = grading_folder(course)
    chapter = known(chapter, course)
    done = nbgrader(course, "generate_feedback", chapter, "--force")
    if done.returncode != 0:
        raise SystemExit(f"nbgrader generate_feedback {chapter} failed:\n{errors_of(done)}")
    print(f"feedback: {course / 'feedback'}")


def export(course: Path, chapter: str, path: Path | None = None) -> tuple[list[str], list[list[str]]]:
    """Write the chapter's grades from DIR's gradebook to a CSV: student, chapter, one column per graded
    cell (notebook order), total, max. Returns the header and rows."""
    course = grading_folder(course)
    chapter = known(chapter, course)
    from nbgrader.api import Gradebook, MissingEntry  # a slow import (sqlalchemy): only once the input is fine

    cells = graded_cells(course / "solutions" / chapter / f"{chapter}.ipynb")
    header = ["student", "chapter", *cells, "total", "max"]
    rows = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        try:
            assignment = gb.find_assignment(chapter)
        except MissingEntry:
            raise Problem(f"the gradebook in {course} has no grades for {chapter}") from None
        for submission in sorted(assignment.submissions, key=lambda s: s.student_id):
            notebook = gb.find_submission_notebook(chapter, chapter, submission.student_id)
            scores = {g.name: g.score for g in notebook.grades}
            rows.append([submission.student_id, chapter, *(number(scores[c]) for c in cells),
                         number(submission.score), number(assignment.max_score)])
    path = path or course / "grades.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return header, rows


def number(x: float) -> str:
    return f"{x:g}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).rjust(w) if i > 1 else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths))))


# ------------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autograder", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("release", help="regenerate chapters/ from solutions/")
    r.add_argument("chapters", nargs="*", metavar="CHAPTER", help="chapters to release (default: all)")
    g = sub.add_parser("grade", help="autograde a folder of submissions, write feedback and grades.csv")
    g.add_argument("submissions", type=Path, help="folder with one sub-folder per student holding their notebook")
    g.add_argument("--chapter", required=True)
    g.add_argument("--out", type=Path, help="grading folder (default: a new temporary folder, printed)")
    f = sub.add_parser("feedback", help="(re)generate feedback HTML in a grading folder")
    f.add_argument("dir", type=Path)
    f.add_argument("--chapter", required=True)
    e = sub.add_parser("export", help="(re)write the grades CSV from a grading folder's gradebook")
    e.add_argument("dir", type=Path)
    e.add_argument("--chapter", required=True)
    e.add_argument("--csv", type=Path, help="where to write (default: DIR/grades.csv)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "release":
            release(args.chapters)
        elif args.command == "grade":
            return grade(args.submissions, args.chapter, args.out)
        elif args.command == "feedback":
            feedback(args.dir, args.chapter)
        else:
            print_table(*export(args.dir, args.chapter, args.csv))
            print(f"grades: {args.csv or args.dir.resolve() / 'grades.csv'}")
    except Problem as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0

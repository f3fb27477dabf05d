"""The instructor's command line over nbgrader: release, grade, feedback, export.

    python -m autograder release [CHAPTER ...]
    python -m autograder grade (SUBMISSIONS | --exchange) [--chapter NAME ...] [--out DIR]
                               [--workers N | --scheduler tcp://HOST:8786]
                               [--student ID ...] [--force] [--no-sandbox] [--cell-timeout S] [--notebook-timeout S]
                               [--due TIME]
    python -m autograder feedback DIR [--chapter NAME ...]
    python -m autograder export DIR [--chapter NAME ...] [--csv PATH] [--format canvas|moodle --roster ROSTER.csv]

`release` writes `chapters/` from `solutions/` in this repository. The other commands work in a grading
folder DIR that is an nbgrader course of its own (its `solutions/`, `submitted/`, `autograded/`,
`feedback/`, `gradebook.db`, `flags/`, and `nbgrader.log` with nbgrader's output), so grading never writes
into the repository. Grading again in the same DIR skips what was graded and not resubmitted since.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import nbformat
from tqdm import tqdm

from autograder import integrity, intake, report, sandbox

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().with_name("nbgrader_config.py")
IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc")


class Problem(Exception):
    """Something wrong with what the instructor asked for: reported as one line, exit code 2."""


# ------------------------------------------------------------------------------------------- nbgrader


def db_url(course: Path) -> str:
    """The grading folder's gradebook; parallel graders wait up to two minutes for its lock."""
    return f"sqlite:///{course / 'gradebook.db'}?timeout=120"


def nbgrader(course: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `nbgrader ARGS` on the course rooted at `course` with our config; output captured.

    The environment's bin/ goes first on PATH: nbgrader runs the `alembic` executable by name when it
    creates a gradebook. VITLAB_PROFILE is dropped so that graded notebooks run in the "grade" profile.
    """
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               **(env or {}))
    env.pop("VITLAB_PROFILE", None)
    command = [
        sys.executable, "-m", "nbgrader", *args,
        f"--NbGrader.config_file={CONFIG.with_suffix('')}",
        f"--CourseDirectory.root={course}",
        f"--CourseDirectory.db_url={db_url(course)}",
    ]
    return subprocess.run(command, cwd=course, env=env, capture_output=True, text=True)


def nbgrader_logged(course: Path, *args: str) -> bool:
    """Run nbgrader in a grading folder, appending its output to nbgrader.log; True when it succeeded."""
    start = time.monotonic()
    done = nbgrader(course, *args)
    with (course / "nbgrader.log").open("a", encoding="utf-8") as log:
        log.write(f"$ nbgrader {' '.join(args)}  (exit code {done.returncode}, {time.monotonic() - start:.1f} s)\n"
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


def graded_cells(notebook: Path, every: bool = False) -> list[str]:
    """The grade_id of each graded cell (of every nbgrader cell if `every`), in notebook order."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [c["metadata"]["nbgrader"]["grade_id"] for c in cells
            if c["metadata"].get("nbgrader", {}).get("grade" if not every else "grade_id")]


def release(names: list[str]) -> None:
    """Regenerate chapters/NAME from solutions/NAME (every chapter when `names` is empty)."""
    for name in [known(n, ROOT) for n in names] or chapters(ROOT):
        done = nbgrader(ROOT, "generate_assignment", name, "--force", "--no-db")
        if done.returncode != 0:
            raise SystemExit(f"nbgrader generate_assignment {name} failed:\n{errors_of(done)}")
        print(f"released {name} -> {(ROOT / 'chapters' / name).relative_to(ROOT)}")


# ------------------------------------------------------------------------------------------ grading


@dataclass
class Options:
    workers: int = os.cpu_count() or 1
    force: bool = False
    students: tuple[str, ...] = ()
    sandboxed: bool = True
    cell_timeout: int = 60
    notebook_timeout: int = 900
    limits: sandbox.Limits = sandbox.Limits()
    due: datetime | None = None  # UTC
    scheduler: str | None = None  # a Dask scheduler's address: grade on its workers (autograder.cluster)


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


def chapter_cells(course: Path) -> dict[str, set[str]]:
    """{chapter: the grade_ids of its nbgrader cells}, from the course's instructor notebooks."""
    return {name: set(graded_cells(course / "solutions" / name / f"{name}.ipynb", every=True))
            for name in chapters(course)}


def set_up_chapter(course: Path, chapter: str) -> None:
    """Copy the instructor notebook into the grading folder (hidden tests guarded) and generate its release."""
    source = course / "solutions" / chapter
    nb = integrity.guard_hidden_tests(nbformat.read(ROOT / "solutions" / chapter / f"{chapter}.ipynb", as_version=4))
    text = nbformat.writes(nb)
    notebook = source / f"{chapter}.ipynb"
    if notebook.exists() and notebook.read_text(encoding="utf-8") == text and \
            (course / "chapters" / chapter / f"{chapter}.ipynb").exists():
        return  # set up by an earlier run: its gradebook entries stay as they are
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(ROOT / "solutions" / chapter, source, ignore=IGNORE)
    notebook.write_text(text, encoding="utf-8")
    if not nbgrader_logged(course, "generate_assignment", chapter, "--force"):
        raise SystemExit(f"nbgrader generate_assignment {chapter} failed: see {course / 'nbgrader.log'}")


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_path(course: Path, student: str, chapter: str) -> Path:
    return course / "flags" / student / f"{chapter}.json"


def read_record(course: Path, student: str, chapter: str) -> dict:
    path = record_path(course, student, chapter)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def stage(course: Path, sub: intake.Submission) -> tuple[list[str], int | None, list[str]]:
    """Write the submission, rebuilt on its release, where nbgrader looks for it.

    Returns (flags, index of the first tampering cell or None, what that cell does)."""
    release = nbformat.read(course / "chapters" / sub.chapter / f"{sub.chapter}.ipynb", as_version=4)
    rebuilt, flags = integrity.restore(json.loads(sub.notebook.read_bytes()), release)
    dest = course / "submitted" / sub.student / sub.chapter
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    nbformat.write(rebuilt, dest / f"{sub.chapter}.ipynb")
    first, found = integrity.tampering(rebuilt)
    return flags, first, found


def late(course: Path, sub: intake.Submission, due: datetime | None) -> list[str]:
    """["late:2h05m10s"] for a submission collected from the exchange whose time stamp is after `due`, else []."""
    from nbgrader.utils import parse_utc

    stamp = course / "collected" / sub.student / sub.chapter / "timestamp.txt"
    if due is None or not stamp.exists():
        return []
    seconds = round((parse_utc(stamp.read_text(encoding="utf-8").strip()) - due).total_seconds())
    return [f"late:{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"] if seconds > 0 else []


def kernel_threads(workers: int) -> dict[str, str]:
    """The kernel's OMP_NUM_THREADS: this machine's cores shared among the notebooks graded at once (torch's
    default, a thread per core in every kernel, oversubscribes the cores), unless the environment sets it. Given
    to the sandboxed kernel explicitly: its environment is a fixed set."""
    if "OMP_NUM_THREADS" in os.environ:
        return {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}


def autograde_one(course: Path, sub: intake.Submission, options: Options) -> tuple[bool, str]:
    """Run `nbgrader autograde` for one student and chapter (in the sandbox); (succeeded, its output)."""
    args = ["autograde", sub.chapter, f"--student={sub.student}", "--force",
            f"--Execute.timeout={options.cell_timeout}",
            f"--GuardedExecute.notebook_timeout={options.notebook_timeout}"]
    start = time.monotonic()
    env = kernel_threads(options.workers)
    if options.sandboxed:
        with sandbox.kernel_uid() as uid:
            settings = sandbox.prepare(course, sub.student, sub.chapter, uid, options.limits, kernel_env=env)
            args += [f"{k}={v}" for k, v in settings.items() if k.startswith("--")]
            env.update({k: v for k, v in settings.items() if not k.startswith("--")})
            done = nbgrader(course, *args, env=env)
        shutil.rmtree(course / ".sandbox" / f"{sub.student}-{sub.chapter}", ignore_errors=True)
        shutil.rmtree(Path(settings["--KernelManager.ip"]).parent, ignore_errors=True)
    else:
        done = nbgrader(course, *args, env=env)
    log = (f"$ nbgrader {' '.join(args)}  (exit code {done.returncode}, {time.monotonic() - start:.1f} s)\n"
           f"{done.stdout}{done.stderr}\n")
    ok = done.returncode == 0 and (course / "autograded" / sub.student / sub.chapter / f"{sub.chapter}.ipynb").exists()
    return ok, log


def zero_from(course: Path, sub: intake.Submission, grade_ids: list[str]) -> None:
    """Score these graded cells zero (as a manual grade, which the formgrader shows and can change)."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url(course)) as gb:
        for grade_id in grade_ids:
            grade = gb.find_grade(grade_id, sub.chapter, sub.chapter, sub.student)
            grade.manual_score = 0.0
        gb.db.commit()


def finish_one(course: Path, sub: intake.Submission, flags: list[str], tamper: tuple[int | None, list[str]]) -> list[str]:
    """Flags from the executed notebook; zero for tampered and reference-calling cells. Returns all flags."""
    graded = nbformat.read(course / "autograded" / sub.student / sub.chapter / f"{sub.chapter}.ipynb", as_version=4)
    flags = flags + integrity.from_outputs(graded)
    first, found = tamper
    if first is not None:
        flags.append(f"patches:{','.join(found)}")
        zero_from(course, sub, integrity.graded_after(graded, first))
    calls = [f.split(":", 1)[1] for f in flags if f.startswith(("calls-reference:", "tampering:"))]
    if calls:
        zero_from(course, sub, calls)
    return list(dict.fromkeys(flags))


def grade(submissions: Path | None, wanted: list[str], out: Path | None, options: Options) -> int:
    """Autograde every submission found (in parallel, sandboxed), then write feedback, grades.csv and a
    summary. Exit code 2 if anything could not be graded."""
    wanted = [known(name, ROOT) for name in wanted]
    if options.sandboxed and not options.scheduler and sandbox.missing():
        raise Problem(f"the kernel sandbox cannot run: {sandbox.missing()}. Install it, or pass --no-sandbox "
                      "to grade without it (learners' code then runs with your permissions)")
    course = Path(tempfile.mkdtemp(prefix="vitlab-grading-")) if out is None else out.resolve()
    course.mkdir(parents=True, exist_ok=True)
    print(f"grading in {course}")
    if submissions is None:  # the nbgrader exchange
        if not wanted:
            raise Problem("--exchange needs --chapter: which assignments to collect")
        for chapter in wanted:
            set_up_chapter(course, chapter)
            nbgrader_logged(course, "collect", chapter, "--update",
                            "--CourseDirectory.submitted_directory=collected")
        submissions = course / "collected"
        submissions.mkdir(exist_ok=True)
    submissions = folder(submissions, "submissions folder")
    staging = Path(tempfile.mkdtemp(prefix="unpacked-", dir=course))
    found, problems = intake.intake(submissions, staging, chapter_cells(ROOT), wanted)
    if options.students:
        found = [s for s in found if s.student in options.students]
        missing = sorted(set(options.students) - {s.student for s in found})
        problems += [f"student {name}: no submission found" for name in missing]
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not found:
        if not problems:
            raise Problem(f"submissions folder {submissions} has no student submissions")
        return 2
    for chapter in sorted({s.chapter for s in found}):
        set_up_chapter(course, chapter)

    todo, tampers, flags_of = [], {}, {}
    for sub in found:
        digest = fingerprint(sub.notebook)
        record = read_record(course, sub.student, sub.chapter)
        if not options.force and record.get("fingerprint") == digest and record.get("graded"):
            continue  # graded by an earlier run and not resubmitted since
        try:
            flags, first, what = stage(course, sub)
        except Exception as exc:  # noqa: BLE001 - one notebook's problem is its student's, not the whole run's
            problems.append(f"student {sub.student}: {sub.notebook.name} could not be staged ({type(exc).__name__})")
            print(f"error: {problems[-1]}", file=sys.stderr)
            continue
        flags += late(course, sub, options.due)
        flags_of[sub.student, sub.chapter] = flags
        tampers[sub.student, sub.chapter] = (first, what)
        write_record(course, sub, {"fingerprint": digest, "graded": False, "flags": flags})
        todo.append(sub)
    skipped = len(found) - len(todo)
    where = f"on the Dask cluster at {options.scheduler}" if options.scheduler else \
        f"with {options.workers} worker{'s' * (options.workers != 1)}"
    print(f"autograding {len(todo)} submission{'s' * (len(todo) != 1)} {where}"
          f"{f' ({skipped} already graded: --force to redo)' if skipped else ''}"
          f"{'' if options.sandboxed else ', WITHOUT the sandbox'}")
    with tqdm(total=len(todo), unit="notebook", desc="autograding", file=sys.stderr, disable=not todo) as bar:
        for sub, ok, log in autograded(course, todo, options):
            with (course / "nbgrader.log").open("a", encoding="utf-8") as f:
                f.write(log)
            if ok:
                flags = finish_one(course, sub, flags_of[sub.student, sub.chapter], tampers[sub.student, sub.chapter])
                write_record(course, sub, {"fingerprint": fingerprint(sub.notebook), "graded": True, "flags": flags})
            else:
                problems.append(f"student {sub.student}: nbgrader could not grade {sub.chapter} "
                                f"(see {course / 'nbgrader.log'})")
                print(f"error: {problems[-1]}", file=sys.stderr)
            bar.update()

    graded_chapters = sorted({s.chapter for s in found})
    for chapter in graded_chapters:
        if not nbgrader_logged(course, "generate_feedback", chapter, "--force"):
            # nbgrader goes on past a notebook it cannot render: name the students left without a page
            missing = [s.student for s in found if s.chapter == chapter and
                       (course / "autograded" / s.student / chapter / f"{chapter}.ipynb").exists() and
                       not (course / "feedback" / s.student / chapter / f"{chapter}.html").exists()]
            problems += [f"student {student}: no feedback page for {chapter} (see {course / 'nbgrader.log'})"
                         for student in missing] or [f"nbgrader generate_feedback {chapter} failed "
                                                     f"(see {course / 'nbgrader.log'})"]
            for line in problems[-max(1, len(missing)):]:
                print(f"error: {line}", file=sys.stderr)
        report.flag_feedback(course, chapter, {s.student: read_record(course, s.student, chapter).get("flags", [])
                                                for s in found if s.chapter == chapter})
    header, rows = export(course, graded_chapters, course / "grades.csv")
    print_table(header, rows)
    summary = report.summary(course, header, rows)
    print(f"feedback: {course / 'feedback'}\ngrades:   {course / 'grades.csv'}\nsummary:  {summary}")
    return 2 if problems else 0


def autograded(course: Path, todo: list[intake.Submission],
               options: Options) -> Iterator[tuple[intake.Submission, bool, str]]:
    """Autograde the staged submissions, here with `options.workers` at once or on a Dask cluster; yields
    (submission, graded, nbgrader's log) as each one finishes."""
    if options.scheduler:
        from autograder import cluster

        yield from cluster.autograde(options.scheduler, course, todo, options)
        return
    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        futures = {pool.submit(autograde_one, course, sub, options): sub for sub in todo}
        for future in as_completed(futures):
            yield futures[future], *future.result()


def write_record(course: Path, sub: intake.Submission, record: dict) -> None:
    path = record_path(course, sub.student, sub.chapter)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1), encoding="utf-8")


def course_chapters(course: Path, names: list[str]) -> list[str]:
    """The named chapters (checked against the grading folder), or every chapter graded there."""
    graded = [name for name in chapters(course) if any((course / "autograded").glob(f"*/{name}/{name}.ipynb"))]
    return [known(name, course) for name in names] or graded


def feedback(course: Path, names: list[str]) -> None:
    """(Re)generate the feedback HTML of graded chapters under DIR/feedback/STUDENT/CHAPTER/."""
    course = grading_folder(course)
    for chapter in course_chapters(course, names):
        done = nbgrader(course, "generate_feedback", chapter, "--force")
        if done.returncode != 0:
            raise SystemExit(f"nbgrader generate_feedback {chapter} failed:\n{errors_of(done)}")
        students = [p.parent.name for p in (course / "flags").glob(f"*/{chapter}.json")]
        report.flag_feedback(course, chapter, {s: read_record(course, s, chapter).get("flags", []) for s in students})
    print(f"feedback: {course / 'feedback'}")


def export(course: Path, names: list[str], path: Path | None = None) -> tuple[list[str], list[list[str]]]:
    """Write the grades from DIR's gradebook to a CSV (default DIR/grades.csv); returns its header and rows."""
    course = grading_folder(course)
    header, rows = gradebook_rows(course, names)
    path = path or course / "grades.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return header, rows


def gradebook_rows(course: Path, names: list[str]) -> tuple[list[str], list[list[str]]]:
    """The grades in a grading folder's gradebook: one row per student and chapter; columns student,
    chapter, one per graded cell (chapter and notebook order; empty for other chapters' rows), total, max,
    flags (see `autograder.integrity`). Returns the header and rows."""
    names = course_chapters(course, names)
    from nbgrader.api import Gradebook, MissingEntry  # a slow import (sqlalchemy): only once the input is fine

    cells = {chapter: graded_cells(course / "solutions" / chapter / f"{chapter}.ipynb") for chapter in names}
    columns = list(dict.fromkeys(c for chapter in names for c in cells[chapter]))
    header = ["student", "chapter", *columns, "total", "max", "flags"]
    rows = []
    with Gradebook(db_url(course)) as gb:
        for chapter in names:
            try:
                assignment = gb.find_assignment(chapter)
            except MissingEntry:
                raise Problem(f"the gradebook in {course} has no grades for {chapter}") from None
            for submission in sorted(assignment.submissions, key=lambda s: s.student_id):
                notebook = gb.find_submission_notebook(chapter, chapter, submission.student_id)
                scores = {g.name: g.score for g in notebook.grades}
                flags = read_record(course, submission.student_id, chapter).get("flags", [])
                rows.append([submission.student_id, chapter,
                             *(number(scores[c]) if c in cells[chapter] else "" for c in columns),
                             number(submission.score), number(assignment.max_score), " ".join(flags)])
    rows.sort(key=lambda row: (row[0], row[1]))
    return header, rows


def lms_export(course: Path, names: list[str], fmt: str, roster: Path, identifier: str, path: Path | None) -> int:
    """Write DIR's grades as the LMS `fmt` imports them (see `autograder.lms`); exit code 2 when a student is
    missing from the roster or a roster student has no submission (each reported)."""
    from autograder import lms

    course = grading_folder(course)
    try:
        people = lms.read_roster(roster)
        header, rows = gradebook_rows(course, names)
        scores = lms.totals(header, rows)
        chapters_ = course_chapters(course, names)
        lms_header, lms_rows, problems = lms.lms_table(fmt, people, chapters_, scores, identifier)
    except lms.RosterProblem as problem:
        raise Problem(str(problem)) from None
    path = path or course / f"{fmt}.csv"
    lms.write(path, lms_header, lms_rows)
    strays = lms.unmatched(people, scores)
    if strays:
        stray_path = path.with_suffix(".unmatched.csv")
        lms.write(stray_path, header, [row for row in rows if row[0] in strays])
        problems.append(f"{len(strays)} graded student{'s' * (len(strays) != 1)} not on the roster "
                        f"({', '.join(strays)}): their grades are in {stray_path}, not in the import file")
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    print(f"{fmt}: {path} ({len(lms_rows)} students, {len(chapters_)} chapter{'s' * (len(chapters_) != 1)})")
    return 2 if problems else 0


def number(x: float) -> str:
    return f"{x:g}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    header = header[:-1]  # the flags are in the CSV; the table says how many
    rows = [[*row[:-1]] for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).rjust(w) if i > 1 else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths))))


# ------------------------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autograder", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("release", help="regenerate chapters/ from solutions/")
    r.add_argument("chapters", nargs="*", metavar="CHAPTER", help="chapters to release (default: all)")
    g = sub.add_parser("grade", help="autograde submissions; write feedback, grades.csv and a summary")
    g.add_argument("submissions", type=Path, nargs="?",
                   help="a folder of student folders, LMS downloads (notebooks or zips named with the student id)")
    g.add_argument("--exchange", action="store_true", help="collect the submissions from nbgrader's exchange")
    g.add_argument("--chapter", action="append", default=[], help="chapter to grade (repeat; default: all found)")
    g.add_argument("--out", type=Path, help="grading folder (default: a new temporary folder, printed)")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="notebooks graded at once (default: cores)")
    g.add_argument("--scheduler", metavar="tcp://HOST:8786",
                   help="grade on the workers of this Dask cluster instead of here (see the README)")
    g.add_argument("--student", action="append", default=[], help="grade only this student (repeat)")
    g.add_argument("--force", action="store_true", help="grade again what an earlier run in --out graded")
    g.add_argument("--no-sandbox", action="store_true", help="run learners' code without bubblewrap (not advised)")
    g.add_argument("--cell-timeout", type=int, default=60, help="seconds per cell (default 60)")
    g.add_argument("--notebook-timeout", type=int, default=900, help="seconds per notebook (default 900)")
    g.add_argument("--due", help="with --exchange: flag submissions handed in after this time as late, "
                   "e.g. '2027-01-15 18:00 Europe/Paris' (default UTC)")
    g.add_argument("--memory", type=float, default=6, help="GiB of memory per kernel (default 6)")
    for name, help_ in (("feedback", "(re)generate feedback HTML in a grading folder"),
                        ("export", "(re)write the grades CSV from a grading folder's gradebook")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("dir", type=Path)
        c.add_argument("--chapter", action="append", default=[], help="chapter (repeat; default: all graded)")
        if name == "export":
            c.add_argument("--csv", type=Path, help="where to write (default: DIR/grades.csv, DIR/FORMAT.csv)")
            c.add_argument("--format", choices=["nbgrader", "canvas", "moodle"], default="nbgrader",
                           help="nbgrader's CSV (default), or the grade import CSV of Canvas or Moodle")
            c.add_argument("--roster", type=Path, help="for canvas/moodle: a CSV mapping LMS identities to students")
            c.add_argument("--identifier", default="Email address",
                           help="for moodle: the roster column Moodle identifies users by (default: Email address)")
    return p


def parse_due(text: str | None) -> datetime | None:
    """--due as a UTC time."""
    from nbgrader.utils import parse_utc

    try:
        return None if text is None else parse_utc(text)
    except (ValueError, OverflowError) as e:
        raise Problem(f"--due {text!r} is not a date and time: {e}") from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "release":
            release(args.chapters)
        elif args.command == "grade":
            if (args.submissions is None) == (not args.exchange):
                raise Problem("give a SUBMISSIONS folder or --exchange (one of them)")
            if args.due and not args.exchange:
                raise Problem("--due needs --exchange: only nbgrader's exchange records when a notebook was handed in")
            if args.workers < 1:
                raise Problem("--workers must be at least 1")
            options = Options(workers=args.workers, force=args.force, students=tuple(args.student),
                              sandboxed=not args.no_sandbox, cell_timeout=args.cell_timeout,
                              notebook_timeout=args.notebook_timeout,
                              limits=sandbox.Limits(memory_bytes=int(args.memory * 1024**3)),
                              scheduler=args.scheduler, due=parse_due(args.due))
            return grade(args.submissions, args.chapter, args.out, options)
        elif args.command == "feedback":
            feedback(args.dir, args.chapter)
        elif args.format != "nbgrader":
            if args.roster is None:
                raise Problem(f"--format {args.format} needs --roster ROSTER.csv (see the README)")
            return lms_export(args.dir, args.chapter, args.format, args.roster, args.identifier, args.csv)
        else:
            print_table(*export(args.dir, args.chapter, args.csv))
            print(f"grades: {args.csv or args.dir.resolve() / 'grades.csv'}")
    except Problem as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0

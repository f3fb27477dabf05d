"""Grading on a Dask cluster: each submission goes to a worker as data and comes back as an autograded notebook.

A worker (`dask worker tcp://HOST:8786` on a machine with the course environment and bubblewrap) grades in a
course folder of its own, under its Dask local directory, set up from its own copy of the course, with the same
`cli.autograde_one` and kernel sandbox as grading on one machine. It sends back the autograded notebook and
nbgrader's log; the instructor's machine writes the notebook into its grading folder and records its scores in
the one gradebook as `nbgrader autograde` does (nbgrader's SaveAutoGrades on that notebook).

A worker that dies with a submission (killed, out of memory, connection lost) loses nothing: the scheduler runs
that submission again on another worker, and a result is recorded once, when it arrives here.
"""
from __future__ import annotations

import hashlib
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import nbformat

from autograder import cli, intake, sandbox

SETUP = threading.Lock()  # a worker with several threads sets up each chapter once


class WorkerProblem(Exception):
    """A worker that cannot grade (no sandbox, another version of the course): the message says which and why."""


@dataclass(frozen=True)
class Job:
    """One submission, as data: its staged notebook (rebuilt on its release) and what to grade it against."""
    student: str
    chapter: str
    notebook: bytes
    source: str  # sha256 of the instructor notebook on the instructor's machine
    options: cli.Options


@dataclass(frozen=True)
class Graded:
    ok: bool
    log: str
    notebook: bytes | None  # the autograded notebook, when `ok`
    worker: str


def source_digest(chapter: str) -> str:
    """sha256 of this machine's instructor notebook of `chapter` (workers must grade against the same one)."""
    return hashlib.sha256((cli.ROOT / "solutions" / chapter / f"{chapter}.ipynb").read_bytes()).hexdigest()


def unfit() -> str | None:
    """Why this worker cannot grade sandboxed, or None (run on every worker before a batch)."""
    why = sandbox.missing()
    return f"the kernel sandbox cannot run there: {why}" if why else None


def grade_job(job: Job) -> Graded:
    """On a worker: autograde one submission in this worker's own course folder."""
    from distributed import get_worker

    worker = get_worker()
    why = unfit() if job.options.sandboxed else None
    if why:
        raise WorkerProblem(f"worker {worker.address}: {why}")
    if source_digest(job.chapter) != job.source:
        raise WorkerProblem(f"worker {worker.address} has another version of {job.chapter}'s instructor notebook "
                            "than the instructor's machine: install the same course there")
    course = Path(worker.local_directory) / "vitlab-course"
    with SETUP:
        course.mkdir(exist_ok=True)
        try:
            cli.set_up_chapter(course, job.chapter)
        except SystemExit as failed:
            raise WorkerProblem(f"worker {worker.address}: {failed}") from None
    submitted = course / "submitted" / job.student / job.chapter
    shutil.rmtree(submitted, ignore_errors=True)
    submitted.mkdir(parents=True)
    (submitted / f"{job.chapter}.ipynb").write_bytes(job.notebook)
    sub = intake.Submission(job.student, job.chapter, submitted / f"{job.chapter}.ipynb")
    ok, log = cli.autograde_one(course, sub, replace(job.options, workers=worker.state.nthreads))
    autograded = course / "autograded" / job.student / job.chapter
    notebook = (autograded / f"{job.chapter}.ipynb").read_bytes() if ok else None
    shutil.rmtree(autograded, ignore_errors=True)  # the worker keeps nothing of the learner's but its gradebook rows
    shutil.rmtree(submitted, ignore_errors=True)
    return Graded(ok, log, notebook, worker.address)


def record(course: Path, sub: intake.Submission, notebook: bytes) -> None:
    """Write a worker's autograded notebook into the grading folder and its scores into the gradebook."""
    from nbgrader.api import Gradebook
    from nbgrader.preprocessors import SaveAutoGrades

    dest = course / "autograded" / sub.student / sub.chapter
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / f"{sub.chapter}.ipynb").write_bytes(notebook)
    with Gradebook(cli.db_url(course)) as gb:
        gb.update_or_create_student(sub.student)
        gb.update_or_create_submission(sub.chapter, sub.student)
    SaveAutoGrades().preprocess(nbformat.reads(notebook.decode("utf-8"), as_version=4), {"nbgrader": {
        "notebook": sub.chapter, "assignment": sub.chapter, "student": sub.student, "db_url": cli.db_url(course)}})


def autograde(scheduler: str, course: Path, todo: list[intake.Submission],
              options: cli.Options) -> Iterator[tuple[intake.Submission, bool, str]]:
    """Autograde the staged submissions on the Dask cluster at `scheduler`; yields (submission, graded, log) as
    each comes back, its notebook and scores already recorded in `course`."""
    from distributed import Client, as_completed

    try:
        client = Client(scheduler, timeout=30)
    except OSError as error:
        raise cli.Problem(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    with client:
        workers = client.scheduler_info()["workers"]
        if not workers:
            raise cli.Problem(f"the Dask cluster at {scheduler} has no workers: start some with "
                              f"`dask worker {scheduler}`")
        if options.sandboxed:
            unfit_workers = {address: why for address, why in client.run(unfit).items() if why}
            if unfit_workers:
                raise cli.Problem("; ".join(f"worker {a}: {why}" for a, why in sorted(unfit_workers.items())) +
                                  ". Install bubblewrap there, or take that worker out of the cluster")
        digests = {chapter: source_digest(chapter) for chapter in {s.chapter for s in todo}}
        futures = {}
        for sub in todo:
            staged = course / "submitted" / sub.student / sub.chapter / f"{sub.chapter}.ipynb"
            job = Job(sub.student, sub.chapter, staged.read_bytes(), digests[sub.chapter], options)
            futures[client.submit(grade_job, job, pure=False)] = sub
        for future in as_completed(futures):
            sub = futures.pop(future)
            try:
                graded = future.result()
            except Exception as error:  # a worker's error is reported for its submission, the others go on
                yield sub, False, f"$ on the Dask cluster: {type(error).__name__}: {error}\n"
                continue
            if graded.ok:
                record(course, sub, graded.notebook)
            yield sub, graded.ok, f"[on worker {graded.worker}]\n{graded.log}"

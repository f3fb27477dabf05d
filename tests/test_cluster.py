"""Grading on a Dask cluster (`grade --scheduler`) with real processes: a `dask scheduler` and two `dask worker`s
on loopback, each worker in a temporary folder of its own; and the LMS export of what was graded.

One batch of 01_attention (an honest solution, one with a mistake, the untouched release) is graded once here
(2 local workers) and once on the cluster, where one worker is killed while it grades: the cluster's grades.csv
must equal the local one, every submission in it once. The file takes about 1 minute on 2 free cores (3 to 4
minutes measured on 2 cores shared with five other sessions).
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from grading import chapter_notebooks, learner_submission

pytest.importorskip("distributed")
from dask_cluster import Cluster  # noqa: E402
from distributed import Client  # noqa: E402

CHAPTER = "01_attention"
NO_SCALE = ("scaled_dot_product_attention",
            "    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])",
            "    scores = q @ k.transpose(-2, -1)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster.on_loopback(tmp_path_factory.mktemp("dask"), workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def submissions(tmp_path_factory, repo):
    release, solution = chapter_notebooks(repo, CHAPTER)
    folder = tmp_path_factory.mktemp("submissions")
    for student, nb in {"honest": learner_submission(release, solution, []),
                        "mistake": learner_submission(release, solution, [NO_SCALE]),
                        "untouched": release}.items():
        (folder / student).mkdir()
        nbformat.write(nb, folder / student / f"{CHAPTER}.ipynb")
    return folder


def grades(folder: Path) -> list[list[str]]:
    with (folder / "grades.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def local(tmp_path_factory, submissions, autograder):
    out = tmp_path_factory.mktemp("local") / "grading"
    done = autograder("grade", str(submissions), "--out", str(out), "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_a_batch_graded_on_the_cluster_while_a_worker_dies_matches_the_local_grades(cluster, submissions, local,
                                                                                     tmp_path):
    out = tmp_path / "grading"
    command = [sys.executable, "-m", "autograder", "grade", str(submissions), "--out", str(out),
               "--scheduler", cluster.address]
    with (tmp_path / "cli.log").open("w+") as log:
        cli = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, stdout=log,
                               stderr=subprocess.STDOUT)
        killed = None
        with Client(cluster.address, timeout=30) as client:
            names = {address: info["name"] for address, info in client.scheduler_info()["workers"].items()}
            deadline = time.monotonic() + 300
            while killed is None and cli.poll() is None and time.monotonic() < deadline:
                busy = [address for address, keys in client.processing().items() if keys]
                if busy:
                    killed = names[busy[0]]
                    cluster.kill(killed)  # the whole worker, nanny included: its submission is in flight
                time.sleep(0.2)
        cli.wait(timeout=600)
        log.seek(0)
        output = log.read()
    assert killed is not None, f"no worker was ever seen grading:\n{output}"
    assert cli.returncode == 0, output
    assert len({row[-3] for row in grades(local)[1:]}) == 3, "the three submissions should score differently"
    assert grades(out) == grades(local)
    students = [row[0] for row in grades(out)[1:]]
    assert sorted(students) == ["honest", "mistake", "untouched"]
    feedback = out / "feedback" / "honest" / CHAPTER / f"{CHAPTER}.html"
    assert feedback.exists()


def test_lms_exports_put_each_total_under_the_roster_identity_and_report_who_is_missing(local, autograder, tmp_path):
    totals = {row[0]: row[-3] for row in grades(local)[1:]}  # student -> total, from nbgrader's own CSV
    roster = tmp_path / "roster.csv"
    roster.write_text("Student,ID,SIS User ID,SIS Login ID,Section,Email address\n"
                      "\"Doe, Jane\",honest,s1,jdoe,A,jane@uni.example\n"
                      "\"Roe, Rich\",mistake,s2,rroe,B,rich@uni.example\n"
                      "\"Poe, Ed\",absent,s3,epoe,A,ed@uni.example\n", encoding="utf-8")
    done = autograder("export", str(local), "--format", "canvas", "--roster", str(roster))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "absent" in done.stderr and "no graded submission" in done.stderr
    assert "untouched" in done.stderr and "not on the roster" in done.stderr
    with (local / "canvas.csv").open(newline="") as f:
        canvas = list(csv.reader(f))
    assert canvas == [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", CHAPTER],
                      ["Doe, Jane", "honest", "s1", "jdoe", "A", totals["honest"]],
                      ["Roe, Rich", "mistake", "s2", "rroe", "B", totals["mistake"]],
                      ["Poe, Ed", "absent", "s3", "epoe", "A", ""]]
    with (local / "canvas.unmatched.csv").open(newline="") as f:
        assert [row[0] for row in csv.reader(f)] == ["student", "untouched"]

    done = autograder("export", str(local), "--format", "moodle", "--roster", str(roster),
                      "--csv", str(tmp_path / "moodle.csv"))
    assert done.returncode == 2, done.stdout + done.stderr
    with (tmp_path / "moodle.csv").open(newline="") as f:
        assert list(csv.reader(f)) == [["Email address", CHAPTER], ["jane@uni.example", totals["honest"]],
                                       ["rich@uni.example", totals["mistake"]], ["ed@uni.example", ""]]
    done = autograder("export", str(local), "--format", "moodle", "--roster", str(roster), "--identifier", "Username")
    assert done.returncode == 2 and "no 'Username' column" in done.stderr
    done = autograder("export", str(local), "--format", "canvas")
    assert done.returncode == 2 and "--format canvas needs --roster" in done.stderr


def test_a_worker_without_bubblewrap_is_refused_by_name(cluster, submissions, tmp_path, autograder):
    bare = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no /usr/bin: no bwrap, no prlimit
    cluster.start_worker("bare", env=bare)
    try:
        bare_address = cluster.address_of("bare")
        done = autograder("grade", str(submissions), "--out", str(tmp_path / "grading"), "--scheduler",
                          cluster.address)
    finally:
        cluster.kill("bare")
    assert done.returncode == 2
    assert f"worker {bare_address}: the kernel sandbox cannot run there: `bwrap` is not installed" in done.stderr
    assert not (tmp_path / "grading" / "autograded").exists()


def test_kernels_share_the_cores_among_the_notebooks_graded_at_once(monkeypatch):
    from autograder import cli

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [cli.kernel_threads(w) for w in (1, 2, 3, 8, 16)] == [{"OMP_NUM_THREADS": t} for t in "84211"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cli.kernel_threads(2) == {"OMP_NUM_THREADS": "3"}  # the instructor's (or the worker's) own setting wins


def test_the_sandboxed_kernel_gets_its_thread_count_through_the_fixed_environment(tmp_path):
    from autograder import sandbox

    argv = sandbox.bwrap_argv(tmp_path, tmp_path, tmp_path, sandbox.Limits(), None, {"OMP_NUM_THREADS": "1"})
    settings = argv[argv.index("--clearenv"):]
    assert ["--setenv", "OMP_NUM_THREADS", "1"] in [settings[i:i + 3] for i in range(len(settings))]

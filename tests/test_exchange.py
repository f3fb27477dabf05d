"""The JupyterHub path: the instructor releases to nbgrader's exchange, a learner fetches and submits there,
and `python -m autograder grade --exchange` collects and grades it."""
from __future__ import annotations

import csv
import getpass
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import nbformat
import pytest
from grading import chapter_notebooks, learner_submission

from autograder import cli, integrity, sandbox

CHAPTER = "01_attention"


def nbgrader(*args, cwd, env):
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.skipif(sandbox.missing() is not None, reason=f"no sandbox here: {sandbox.missing()}")
def test_grade_collects_from_the_exchange(repo, tmp_path, autograder, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the exchange lives under it
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))  # nbgrader's record of what the student submitted
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    config = f"--NbGrader.config_file={repo / 'autograder' / 'nbgrader_config'}"
    course = tmp_path / "course"
    shutil.copytree(repo / "chapters" / CHAPTER, course / "chapters" / CHAPTER)
    nbgrader("release_assignment", CHAPTER, config, f"--CourseDirectory.root={course}",
             f"--CourseDirectory.db_url=sqlite:///{course / 'gradebook.db'}", cwd=course, env=env)

    home = tmp_path / "learner"
    home.mkdir()
    nbgrader("fetch_assignment", CHAPTER, "--course=vitlab", config, cwd=home, env=env)
    release, solution = chapter_notebooks(repo, CHAPTER)
    nbformat.write(learner_submission(release, solution, []), home / CHAPTER / f"{CHAPTER}.ipynb")
    nbgrader("submit", CHAPTER, "--course=vitlab", config, cwd=home, env=env)

    out = tmp_path / "graded"
    done = autograder("grade", "--exchange", "--chapter", CHAPTER, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    with (out / "grades.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["student"], r["total"], r["max"], r["flags"]) for r in rows] == [(getpass.getuser(), "12", "12", "")]
    assert (out / "feedback" / getpass.getuser() / CHAPTER / f"{CHAPTER}.html").exists()


def test_exchange_needs_a_chapter_and_not_a_folder(tmp_path, autograder):
    done = autograder("grade", str(tmp_path), "--exchange", "--chapter", CHAPTER)
    assert done.returncode == 2 and "error: give a SUBMISSIONS folder or --exchange (one of them)" in done.stderr
    done = autograder("grade", "--exchange", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "error: --exchange needs --chapter" in done.stderr
    done = autograder("grade", str(tmp_path), "--due", "2027-01-15 18:00")
    assert done.returncode == 2 and "error: --due needs --exchange" in done.stderr


def test_late_is_the_exchange_time_stamp_past_the_due_date(tmp_path):
    stamp = tmp_path / "collected" / "ada" / CHAPTER / "timestamp.txt"
    stamp.parent.mkdir(parents=True)
    stamp.write_text("2026-12-04 18:02:05.000000 UTC")  # as nbgrader's submit writes it
    ada, bob = SimpleNamespace(student="ada", chapter=CHAPTER), SimpleNamespace(student="bob", chapter=CHAPTER)
    due = cli.parse_due("2026-12-04 19:00 Europe/Paris")  # 18:00 UTC
    assert cli.late(tmp_path, ada, due) == ["late:0h02m05s"]
    assert cli.late(tmp_path, ada, cli.parse_due("2026-12-03 16:59:00")) == ["late:25h03m05s"]
    assert cli.late(tmp_path, ada, cli.parse_due("2026-12-04 18:02:05")) == []  # on the dot is on time
    assert cli.late(tmp_path, ada, None) == [] and cli.late(tmp_path, bob, due) == []  # bob: not from the exchange
    assert integrity.describe("late:0h02m05s") == "handed in 0h02m05s after the due date"

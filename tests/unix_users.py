"""Helpers for tests that run the course as other local Unix users: a copy of the course that every user can
read, and a way for those users to reach the Python it was built from."""
from __future__ import annotations

import contextlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)
COURSE_PARTS = ("autograder", "chapters", "deploy", "solutions", "vitlab", "pyproject.toml")


def sh(*cmd: str, **kwargs) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
    return done.stdout


@contextlib.contextmanager
def traversable(path: Path):
    """Let every user walk through (not list) the folders above `path` while the block runs, then put their modes
    back: CI's Python may live in root's home (pyenv), which the course's environment needs to run."""
    changed = [(p, p.stat().st_mode) for p in [path, *path.parents] if not p.stat().st_mode & stat.S_IXOTH]
    try:
        for folder, mode in changed:
            folder.chmod(mode | stat.S_IXOTH)
        yield
    finally:
        for folder, mode in changed:
            folder.chmod(mode)


def copy_course(dest: Path) -> Path:
    """A copy of the course and its environment in `dest` (as an admin would install it in /srv/vitlab); returns
    its environment. The environment is hard-linked where it can be (same file system), and the few files that
    name the repository's path are rewritten (not in place: they are hard links)."""
    for part in COURSE_PARTS:
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy2)(ROOT / part, dest / part)
    if subprocess.run(["cp", "-al", str(VENV), str(dest / ".venv")], capture_output=True).returncode != 0:
        shutil.rmtree(dest / ".venv", ignore_errors=True)
        sh("cp", "-a", str(VENV), str(dest / ".venv"))
    venv = dest / ".venv"
    naming = [p for p in (venv / "bin").iterdir() if p.is_file() and not p.is_symlink() and p.stat().st_size < 65536]
    naming += list(venv.glob("lib/python*/site-packages/__editable__*")) + list((venv / "etc").rglob("*.py"))
    for path in naming:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if str(ROOT) in text:
            mode = path.stat().st_mode
            path.unlink()
            path.write_text(text.replace(str(VENV), str(venv)).replace(str(ROOT), str(dest)))
            path.chmod(mode)
    return venv

"""Shared fixtures: the repository root, the solution notebooks, and a runner for `python -m autograder`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_NOTEBOOKS = sorted(p for p in ROOT.glob("solutions/*/*.ipynb") if p.stem == p.parent.name)


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(params=SOLUTION_NOTEBOOKS, ids=[p.parent.name for p in SOLUTION_NOTEBOOKS])
def solution_notebook(request) -> Path:
    """Each instructor notebook, solutions/NAME/NAME.ipynb."""
    return request.param


def run_autograder(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m autograder ARGS` in `cwd` (whose autograder/ package runs).

    The environment's bin/ is taken off PATH: the CLI must find nbgrader's tools (alembic) by itself.
    """
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir)
    env = dict(os.environ, PATH=path or os.defpath)
    return subprocess.run([sys.executable, "-m", "autograder", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def autograder():
    """`autograder(*args, cwd=...)` runs the instructor CLI in a subprocess and returns the CompletedProcess."""
    return run_autograder

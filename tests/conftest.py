"""Shared fixtures: the repository root, the solution notebooks, a runner for `python -m autograder`, and timm
imported with torchvision stubbed (timm imports torchvision, whose wheels do not import beside torch's CPU build)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torchvision_stub import torchvision_stubbed

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_NOTEBOOKS = sorted(p for p in ROOT.glob("solutions/*/*.ipynb") if p.stem == p.parent.name)


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return ROOT


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


def installed(package: str, pip: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install --no-deps {pip}, as `bash setup.sh --test` does)")


@pytest.fixture(scope="session")
def timm():
    """The timm package (installed --no-deps by the test set-up); torchvision is stubbed only while it imports."""
    installed("timm", "timm==1.0.31")
    with torchvision_stubbed():
        import timm
        import timm.layers
        import timm.models.swin_transformer
        import timm.models.vision_transformer
    return timm


@pytest.fixture(scope="session")
def timm_training(timm):
    """timm with timm.data (Mixup), timm.loss, timm.scheduler and its EMA imported (timm.data imports
    torchvision.transforms at import time)."""
    with torchvision_stubbed():
        import timm.data
        import timm.loss
        import timm.scheduler
        import timm.utils.model_ema
    return timm


@pytest.fixture(scope="session")
def open_clip():
    """The open_clip package (installed --no-deps by the test set-up); torchvision is stubbed while it imports."""
    installed("open_clip", "open_clip_torch==3.3.0")
    with torchvision_stubbed():
        import open_clip
        import open_clip.loss
        import open_clip.model
    return open_clip

"""Shared fixtures: the repository root, the solution notebooks, a runner for `python -m autograder`, and timm
imported with torchvision stubbed (timm imports torchvision, whose wheels do not import beside torch's CPU build)."""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

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


class Placeholder(type):
    """Any attribute of a stub class is a string, so that timm's import-time tables (InterpolationMode.X) build."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class StubModule(types.ModuleType):
    """A torchvision module whose every attribute is an empty class: enough for `import timm` to succeed."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = Placeholder(name, (), {})
        setattr(self, name, value)
        return value


class TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `import torchvision...` with stub modules; the parts of timm we compare with never use it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@contextlib.contextmanager
def torchvision_stubbed():
    """While the block runs, `import torchvision...` gives stub modules (unless a real torchvision is installed);
    afterwards the stubs are gone from sys.modules, so nothing else sees them."""
    stub = TorchvisionStub() if importlib.util.find_spec("torchvision") is None else None
    if stub is not None:
        sys.meta_path.insert(0, stub)
    try:
        yield
    finally:
        if stub is not None:
            sys.meta_path.remove(stub)
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]


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

"""A stand-in for torchvision while timm or open_clip imports: its wheels here are CUDA-linked and do not import
beside torch's CPU build, and the ViT and CLIP parts we compare with never use it. Used by tests/conftest.py
and bench/vit_speed.py."""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import types


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
    """While the block runs, `import torchvision...` gives stub modules (unless a working torchvision is installed);
    afterwards the stubs are gone from sys.modules, so nothing else sees them."""
    stub = None
    try:
        importlib.import_module("torchvision")
    except Exception:  # missing, or a CUDA-linked wheel that fails beside torch's CPU build
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        stub = TorchvisionStub()
        sys.meta_path.insert(0, stub)
    try:
        yield
    finally:
        if stub is not None:
            sys.meta_path.remove(stub)
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]

"""What the autograder runs inside a learner's kernel around the hidden tests, outside the cells' own code.

The grader calls these as IPython user expressions (`autograder.preprocessors.GuardedExecute`), which IPython
evaluates without its input or AST transformers, so a transformer the learner installed cannot rewrite them:

- `snapshot()` once the kernel has started, before any learner cell: records IPython's transformers and hooks,
  the methods of the shell and kernel classes, and every function of vitlab, torch's namespaces and the
  builtins (with their code objects), by identity;
- `reset()` before each hidden-test cell: puts the transformers, hooks and methods back as recorded, pops
  torch's function and dispatch modes, switches tracing and profiling off; returns what it had to undo;
- `verify()` after each hidden-test cell: what differs from the snapshot (a module attribute swapped,
  through `vars(module)` too; a `functools.partial` or wrapper in place of a function; a swapped `__code__`).

`torch_watch` and `private_calls` widen the reference guard of `vitlab.check.forbid` to paths that
`sys.setprofile` does not see. Everything here runs in the learner's own process, so it is one layer of
three: the grader also reads the learner's code for these attack surfaces (`autograder.integrity`) and
checks the execute replies itself.
"""
from __future__ import annotations

import builtins
import importlib
import json
import linecache
import math
import pkgutil
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

PACKAGE = Path(__file__).resolve().parent
TORCH = Path(torch.__file__).resolve().parent
HIDDEN = "BEGIN HIDDEN TESTS"
_WATCHED = (builtins, math, torch, torch.Tensor, torch._C.TensorBase, F, torch.testing, nn.Module, nn.modules.module,
            torch.linalg, torch.autograd, json)
KERNEL_BUILTINS = {"exit", "quit", "input", "get_ipython", "display"}  # IPython swaps these while a cell runs
_SNAPSHOT: dict[str, Any] = {}
_SHELL_HOOKS = ("input_transformers_post", "ast_transformers")
_MANAGER_HOOKS = ("cleanup_transforms", "line_transforms", "token_transformers")


def _vitlab_modules() -> list[types.ModuleType]:
    return [m for name, m in list(sys.modules.items()) if (name == "vitlab" or name.startswith("vitlab.")) and m]


def _parts(value: Any) -> tuple | None:
    """What a function runs (its code, defaults and closure's contents), or a container's items, by identity."""
    func = getattr(value, "__func__", value)
    if isinstance(func, types.FunctionType):
        cells = tuple(id(c.cell_contents) for c in func.__closure__ or () if _filled(c))
        return func.__code__, func.__defaults__, func.__kwdefaults__, cells
    if isinstance(value, dict):
        return tuple((id(k), id(v)) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(id(v) for v in value)
    return None


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _namespace(owner: Any, everything: bool) -> dict[str, tuple[Any, tuple | None]]:
    """{attribute: (value, its parts)} for the callables of `owner` (and its upper-case constants when
    `everything`); for a vitlab module, also the methods of the classes it defines, as "Class.method"."""
    found = {}
    for attr, value in list(vars(owner).items()):
        if isinstance(value, types.ModuleType) or (owner is builtins and attr in KERNEL_BUILTINS):
            continue
        if callable(value) or isinstance(value, (classmethod, staticmethod)) or (everything and attr.isupper() and not attr.startswith("_")):
            found[attr] = (value, _parts(value))
        if everything and isinstance(value, type) and value.__module__ == owner.__name__:
            found.update({f"{attr}.{name}": (method, _parts(method)) for name, method in vars(value).items()
                          if isinstance(method, types.FunctionType)})
    return found


def _shell():
    from IPython import get_ipython

    return get_ipython()


def snapshot() -> str:
    """Record the clean state (see the module docstring); imports every vitlab check module first."""
    for info in pkgutil.iter_modules([str(PACKAGE)]):
        if info.name.startswith("check"):
            try:
                importlib.import_module(f"vitlab.{info.name}")
            except ImportError:  # an optional dependency missing here: that chapter's checks are not in the snapshot
                continue
    ip = _shell()
    kernel = getattr(ip, "kernel", None)
    classes = [c for obj in (ip, kernel) if obj is not None for c in type(obj).__mro__ if c is not object]
    _SNAPSHOT.clear()
    _SNAPSHOT.update(
        shell=ip,
        hooks={name: list(getattr(ip, name)) for name in _SHELL_HOOKS},
        manager=ip.input_transformer_manager,
        manager_hooks={name: list(getattr(ip.input_transformer_manager, name, [])) for name in _MANAGER_HOOKS},
        events=ip.events,
        callbacks={name: list(found) for name, found in ip.events.callbacks.items()},
        classes={c: dict(vars(c)) for c in classes},
        instances={obj: _shadowing(obj) for obj in (ip, kernel) if obj is not None},
        kernel=kernel,
        handlers=dict(getattr(kernel, "shell_handlers", {})),
        modules={id(owner): (owner, _namespace(owner, False)) for owner in _WATCHED},
        vitlab={m.__name__: (m, _namespace(m, True)) for m in _vitlab_modules()},
    )
    return "[]"


METHODS = (types.FunctionType, property, classmethod, staticmethod)


def _shadowing(obj: Any) -> set[str]:
    """Attributes of an instance that hide a method of its class."""
    return {a for a in vars(obj) if isinstance(getattr(type(obj), a, None), (types.FunctionType, types.MethodType))}


def _trusted(callback: Any) -> bool:
    """A hook that installed code (matplotlib's inline backend, say) registered: a plain function or method."""
    func = getattr(callback, "__func__", callback)
    if not isinstance(func, types.FunctionType):
        return False
    file = Path(func.__code__.co_filename)
    return file.is_absolute() and any(file.is_relative_to(p) for p in {sys.prefix, sys.base_prefix, str(PACKAGE)})


def reset() -> str:
    """Undo what the cells did to IPython and torch since `snapshot` (see the module docstring); returns a JSON
    list of what was undone that installed code would not have done."""
    if not _SNAPSHOT:
        return json.dumps(["the grader's snapshot is missing"])
    undone: list[str] = []
    ip = _SNAPSHOT["shell"]
    for cls, attrs in _SNAPSHOT["classes"].items():
        for attr in set(attrs) | set(vars(cls)):
            before, after = attrs.get(attr), vars(cls).get(attr)
            if before is not after and isinstance(before if attr in attrs else after, METHODS):
                setattr(cls, attr, before) if attr in attrs else delattr(cls, attr)
                undone.append(f"{cls.__name__}.{attr}")
    for obj, shadowing in _SNAPSHOT["instances"].items():
        for attr in _shadowing(obj) - shadowing:
            del obj.__dict__[attr]
            undone.append(f"{type(obj).__name__}.{attr} (on the instance)")
    handlers = getattr(_SNAPSHOT["kernel"], "shell_handlers", None)
    if handlers is not None and handlers != _SNAPSHOT["handlers"]:
        handlers.clear()
        handlers.update(_SNAPSHOT["handlers"])
        undone.append("kernel.shell_handlers")
    if ip.input_transformer_manager is not _SNAPSHOT["manager"]:
        ip.input_transformer_manager = _SNAPSHOT["manager"]
        undone.append("input_transformer_manager")
    for owner, names, saved in ((ip, _SHELL_HOOKS, _SNAPSHOT["hooks"]),
                                (_SNAPSHOT["manager"], _MANAGER_HOOKS, _SNAPSHOT["manager_hooks"])):
        for name in names:
            if name in saved and list(getattr(owner, name)) != saved[name]:
                setattr(owner, name, list(saved[name]))
                undone.append(name)
    if ip.events is not _SNAPSHOT["events"]:
        ip.events = _SNAPSHOT["events"]
        undone.append("events")
    for name, found in ip.events.callbacks.items():
        keep = [c for c in found if c in _SNAPSHOT["callbacks"].get(name, []) or _trusted(c)]
        if keep != found:
            undone.append(f"events.{name}")
            found[:] = keep
    while torch._C._len_torch_function_stack():
        torch._C._pop_torch_function_stack()
        undone.append("a TorchFunctionMode")
    while torch._C._len_torch_dispatch_stack():
        torch._C._pop_torch_dispatch_stack()
        undone.append("a TorchDispatchMode")
    if sys.gettrace() is not None or sys.getprofile() is not None:
        undone.append("sys.settrace/setprofile")
    sys.settrace(None)
    sys.setprofile(None)
    return json.dumps(list(dict.fromkeys(undone)))


def _changed(name: str, saved: Mapping[str, tuple[Any, tuple | None]], owner: Any) -> list[str]:
    problems = []
    current = vars(owner)
    for attr, (value, parts) in saved.items():
        now = current.get(attr, None)
        if now is value or (isinstance(value, (int, float, str, bytes, bool)) and now == value):
            if parts is not None and _parts(now) != parts:
                problems.append(f"{name}.{attr} (its code or contents)")
            continue
        if not name.startswith("vitlab") and _by_torch(now):
            continue  # replaced by torch itself (torch._dynamo wraps torch.manual_seed and Module.__init__)
        problems.append(f"{name}.{attr}")
    return problems


def _by_torch(value: Any) -> bool:
    """Whether `value` is a plain function written in torch's own package."""
    func = getattr(value, "__func__", value)
    return isinstance(func, types.FunctionType) and Path(func.__code__.co_filename).is_relative_to(TORCH)


def verify() -> str:
    """A JSON list of what differs from the snapshot among vitlab's, torch's and the builtins' functions.

    Also forgets the source of the hidden-test cells that IPython keeps for tracebacks (linecache), so that
    later cells cannot print it."""
    for name, entry in list(linecache.cache.items()):
        if len(entry) > 2 and any(HIDDEN in line for line in entry[2]):
            del linecache.cache[name]
    if not _SNAPSHOT:
        return json.dumps(["the grader's snapshot is missing"])
    problems: list[str] = []
    for owner, saved in _SNAPSHOT["modules"].values():
        problems += _changed(getattr(owner, "__name__", str(owner)), saved, owner)
    for name, (module, saved) in _SNAPSHOT["vitlab"].items():
        if sys.modules.get(name) is not module:
            problems.append(f"the module {name}")
        problems += _changed(name, {a: v for a, v in saved.items() if "." not in a}, module)
        for attr, (value, parts) in saved.items():
            if "." in attr:
                cls, method = attr.split(".")
                now = vars(vars(module).get(cls, object)).get(method)
                if now is not value or _parts(now) != parts:
                    problems.append(f"{name}.{attr}")
    return json.dumps(problems)


# ----------------------------------------------------------------------------------- the reference guard

# torch's modules that a check forbids, by the functional they run; the aten operators behind a functional
FUNCTIONAL = {"MultiheadAttention": "multi_head_attention_forward", "Conv3d": "conv3d", "Unfold": "unfold"}
ATEN = {"scaled_dot_product_attention": ("_scaled_dot_product", "_fused_sdp"), "unfold": ("im2col",),
        "multi_head_attention_forward": ("_native_multi_head_attention",), "conv3d": ("slow_conv3d",)}


class _TorchWatch(TorchFunctionMode):
    def __init__(self, functions: Mapping[Any, str], seen: list[str]) -> None:
        super().__init__()
        self.functions, self.seen = functions, seen
        self.ops = {name: label for fn, label in functions.items() for name in (fn.__name__, *ATEN.get(fn.__name__, ()))}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        label = self.functions.get(func)
        if label is None and isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
            name = func.__name__.split(".")[0]  # torch.ops.aten.x.default is named x.default
            label = next((label for prefix, label in self.ops.items() if name.startswith(prefix)), None)
        if label is not None and label not in self.seen:
            self.seen.append(label)
        return func(*args, **(kwargs or {}))


@contextmanager
def torch_watch(forbidden: Mapping[Any, str], seen: list[str]) -> Iterator[None]:
    """Record in `seen` the label of a forbidden torch built-in called inside the block, however Python reached
    it (`torch.ops.aten`, `functools.partial`, `map`): torch itself hands every call to the mode."""
    functions = {}
    for target, label in forbidden.items():
        name = getattr(target, "__name__", "")
        if str(getattr(target, "__module__", "")).startswith("torch"):
            functions[getattr(F, FUNCTIONAL[name]) if name in FUNCTIONAL else target] = label
    if not functions:
        yield
        return
    with _TorchWatch(functions, seen):
        yield


def private_calls(forbidden: Mapping[Any, str]) -> dict[types.CodeType, str]:
    """{code: label} of the private helpers (`_name`) of the vitlab modules a check forbids a function of:
    calling one from the learner's code is calling the reference."""
    found = {}
    for target in forbidden:
        module = sys.modules.get(getattr(target, "__module__", "") or "")
        if module is None or not module.__name__.startswith("vitlab."):
            continue
        for attr, value in vars(module).items():
            if attr.startswith("_") and isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
                found[value.__code__] = f"{module.__name__}.{attr}"
    return found


def from_learner(frame: Any) -> bool:
    """Whether `frame` runs code outside the installed packages and vitlab (a notebook cell, say)."""
    if frame is None:
        return False
    file = Path(frame.f_code.co_filename)
    return not (file.is_absolute() and any(file.is_relative_to(p) for p in {sys.prefix, sys.base_prefix, str(PACKAGE)}))

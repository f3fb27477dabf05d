"""Learner checks: compare an exercise with the reference, name the likely mistake, refuse shortcuts.

Every chapter's checks are built from three pieces:

- `check_function(fn, reference, cases, ...)` runs the learner's function and the reference on the same
  random cases and compares values and gradients;
- `check_module(make_module, reference, inputs, ...)` loads the reference's weights into the learner's
  module and compares outputs and parameter gradients;
- `Mistake(label, hint, impl)` is a known wrong implementation: when the learner's output matches one,
  the failure message names that mistake instead of printing a bare difference.

A call of anything in `forbidden` (the reference itself, or torch's built-in for the thing taught) while
the learner's code runs fails the check. Failures raise `CheckFailed`, an AssertionError whose message is
all that a learner, or nbgrader's feedback, sees.
"""
from __future__ import annotations

import builtins
import functools
import math
import os
import sys
import sysconfig
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from vitlab import diagnose

PASS = "\u2714"  # check mark
FAIL = "\u2718"  # cross


class CheckFailed(AssertionError):
    """A failed check. Jupyter shows only its message (no traceback, so hidden tests stay hidden)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{FAIL} {line}" if i == 0 else f"  {line}" for i, line in enumerate(str(self).splitlines())]


@dataclass(frozen=True)
class Mistake:
    """A known wrong implementation: `impl` has the reference's signature (or, for modules, is a module)."""

    label: str
    hint: str
    impl: Callable


# ------------------------------------------------------------------------------------------ verdicts

_VERDICTS: dict[int, bool] = {}  # id(learner object) -> whether its last check passed


def grading() -> bool:
    """Whether nbgrader runs this notebook (autograde or Validate): then a failed check must raise."""
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def _learner_run() -> bool:
    """Whether a learner runs the check in their own notebook kernel (IPython, not nbgrader)."""
    return bool(getattr(builtins, "__IPYTHON__", False)) and not grading()


def exercise_check(check: Callable) -> Callable:
    """Make a chapter's check learner-friendly: in a learner's own notebook a failure prints its message and
    Run All goes on; under nbgrader (Validate, autograde), with `graded=True`, or outside IPython (a script,
    the tests) it raises CheckFailed.

    The verdict is remembered for the learner's objects (the positional arguments), so that `use` can pick
    the learner's code for an experiment once its check has passed.
    """
    @functools.wraps(check)
    def run(*learner: Any, graded: bool = False, **kwargs: Any) -> None:
        try:
            check(*learner, graded=graded, **kwargs)
        except CheckFailed as failure:
            for obj in learner:
                _VERDICTS[id(obj)] = False
            if graded or not _learner_run():
                raise
            print("".join(line + "\n" for line in failure._render_traceback_()), end="", file=sys.stderr)
            return
        for obj in learner:
            _VERDICTS[id(obj)] = True

    return run


def use(learner: Any, reference: Any, name: str | None = None) -> Any:
    """`learner` when its check passed in this kernel, else `reference` with one line saying so.

    For experiments that should run with the learner's code once it works, and run at all before that.
    """
    if _VERDICTS.get(id(learner)):
        return learner
    name = name or getattr(learner, "__name__", type(learner).__name__)
    print(f"\u24d8 {name} has not passed its check yet: this cell uses vitlab's reference instead.")
    return reference


# ---------------------------------------------------------------------------------------------- guard


def _code_of(target: Any) -> Any:
    """The code object to watch for `target`: a function's, or a Module class's forward."""
    if isinstance(target, type) and issubclass(target, nn.Module):
        target = target.forward
    target = getattr(target, "__func__", target)
    return getattr(target, "__code__", None)


@contextmanager
def forbid(forbidden: Mapping[Any, str]) -> Iterator[list[str]]:
    """Record calls of the `forbidden` callables (functions, builtins, Module classes) inside the block.

    Yields the list of readable names called; `sys.setprofile` sees a call however the learner got hold of
    the callable (an alias, `from ... import ... as ...`, a bound method).
    """
    codes = {}
    builtins = {}
    methods = {}  # C methods such as torch.Tensor.softmax: each call binds a fresh object, so match by name and class
    for target, label in forbidden.items():
        code = _code_of(target)
        if code is not None:
            codes[code] = label
        elif hasattr(target, "__objclass__"):
            methods[target.__name__] = (target.__objclass__, label)
        else:
            builtins[id(target)] = label
    from vitlab import guard  # here, not at the top: vitlab.guard is the grader's, imported when a check runs

    seen: list[str] = []
    private = guard.private_calls(forbidden)  # the reference modules' helpers, when the learner's code calls them

    def watch(frame, event, arg):
        if event == "call":
            label = codes.get(frame.f_code) or (private.get(frame.f_code) if guard.from_learner(frame.f_back) else None)
        elif event == "c_call":
            label = builtins.get(id(arg))
            owner, method_label = methods.get(getattr(arg, "__name__", None), (None, None))
            if label is None and owner is not None and isinstance(getattr(arg, "__self__", None), owner):
                label = method_label
        else:
            return
        if label is not None and label not in seen:
            seen.append(label)

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        with guard.torch_watch(forbidden, seen):  # the built-ins however Python reached them (partial, torch.ops)
            yield seen
    finally:
        if sys.getprofile() is not watch:  # the learner's code switched the watch off
            seen.append("sys.setprofile")
        sys.setprofile(previous)


def _refuse(name: str, called: list[str]) -> None:
    if "sys.setprofile" in called:
        raise CheckFailed(f"{name}: your code calls sys.setprofile, which switches off this check's watch: "
                          f"it {TAMPERED}, and a graded check gives zero for that.")
    if called:
        raise CheckFailed(
            f"{name}: your code calls {' and '.join(called)}, the very thing this exercise asks you to write.\n"
            "A graded check gives zero for this exercise when it does. Write it from tensor operations."
        )


# ---------------------------------------------------------------------------------------- integrity

TAMPERED = "changed the course's checking code"
_WATCHED = (builtins, math, torch, torch.Tensor, torch.nn.functional, torch.testing)
_TRUSTED = tuple({str(Path(__file__).resolve().parent), *(sysconfig.get_paths()[k] for k in ("stdlib", "purelib",
                  "platlib")), sys.prefix, sys.base_prefix})


def _callables() -> dict[tuple[str, str], Any]:
    found = {}
    for owner in _WATCHED:
        for attr in dir(owner):
            value = getattr(owner, attr, None)
            if callable(value):
                found[(getattr(owner, "__name__", str(owner)), attr)] = value
    return found


_ORIGINALS = _callables()


def _foreign(value: Any) -> bool:
    """Whether `value` is a function or class written outside installed code (in a notebook, say)."""
    code = getattr(getattr(value, "__func__", value), "__code__", None)
    if code is not None:
        return not str(Path(code.co_filename).resolve()).startswith(_TRUSTED)
    return isinstance(value, type) and value.__module__ == "__main__"


def verify_integrity() -> None:
    """Fail when code run in this kernel replaced a function of vitlab, a builtin, or torch's functions.

    The autograder ends every hidden test with this call, so a notebook that patches the checks to make
    them pass scores zero (and is flagged).
    """
    from vitlab.guard import KERNEL_BUILTINS

    owners = {getattr(o, "__name__", str(o)): o for o in _WATCHED}
    problems = []
    for (owner, attr), original in _ORIGINALS.items():
        if owner == "builtins" and attr in KERNEL_BUILTINS:
            continue
        current = getattr(owners[owner], attr, None)
        if current is original or current == original:  # a classmethod binds anew on each access
            continue
        if getattr(current, "__wrapped__", None) is original and not _foreign(current):
            continue  # wrapped by torch itself (torch._dynamo wraps torch.manual_seed when first imported)
        problems.append(f"{owner}.{attr}")
    package = Path(__file__).resolve().parent
    for name, module in list(sys.modules.items()):
        if name != "vitlab" and not name.startswith("vitlab."):
            continue
        file = getattr(module, "__file__", None)
        if file is None or not Path(file).resolve().is_relative_to(package):
            problems.append(f"the module {name}")
            continue
        problems += [f"{name}.{attr}" for attr, value in list(vars(module).items()) if _foreign(value)]
    if sys.getprofile() is not None:
        problems.append("sys.setprofile")
    if problems:
        shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckFailed(f"integrity: this notebook {TAMPERED}: {shown} was replaced.\n"
                          "  A graded check gives zero when the checks, torch or Python's builtins are patched.")


# ------------------------------------------------------------------------------------------ running


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal values drawn in float64 from `gen`, then cast: the same numbers whatever `dtype`."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """atol and rtol for comparing with a reference in `dtype`."""
    return {"atol": 1e-10, "rtol": 1e-8} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}


def describe(value: Any) -> str:
    """A short description of an argument: tensors by shape and dtype, the rest by repr."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        return f"{dtype}{tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    return repr(value)


def describe_case(case: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={describe(value)}" for key, value in case.items())


def _learner_frames(exc: BaseException) -> str:
    """The traceback lines that point into the learner's own code (not torch, not vitlab)."""
    skip = (str(Path(torch.__file__).parent), str(Path(__file__).parent))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(skip)]
    return "".join(f"    line {f.lineno}: {f.line}\n" for f in frames[-2:] if f.line)


def call_learner(name: str, fn: Callable, args: Mapping[str, Any], where: str) -> Any:
    """Call learner code, turning any exception into a CheckFailed that says where it happened."""
    try:
        return fn(**args)
    except NotImplementedError:
        raise CheckFailed(f"{name} is not written yet: replace `raise NotImplementedError()` with your code.") from None
    except CheckFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - any learner error becomes a readable failure
        hint = diagnose.error_hint(exc)
        raise CheckFailed(
            f"{name} raised {type(exc).__name__}: {exc}\n  on {where}\n{_learner_frames(exc)}".rstrip()
            + (f"\n  {hint}" if hint else "")
        ) from None


def _clone_case(case: Mapping[str, Any], grad: bool) -> dict[str, Any]:
    """Fresh leaf copies of the tensors in `case` (floating ones require grad when `grad`)."""
    out = {}
    for key, value in case.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().clone()
            if grad and value.is_floating_point():
                value.requires_grad_(True)
        out[key] = value
    return out


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in an output (a tensor, or a tuple/list of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _backward(output: Any, leaves: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor | None]:
    """Gradients of a fixed random projection of the output with respect to `leaves`."""
    outs = [t for t in _tensors(output) if t.requires_grad]
    if not outs or not leaves:
        return [None] * len(leaves)
    gen = torch.Generator().manual_seed(seed)
    total = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum() for o in outs)
    grads = torch.autograd.grad(total, list(leaves), allow_unused=True)
    return list(grads)


# ---------------------------------------------------------------------------------------- comparing


def _difference(got: Any, expected: Any, atol: float, rtol: float, what: str) -> str | None:
    """None when `got` matches `expected`, else a sentence saying how it differs."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{what} should be a tuple of {len(expected)} items, got {describe(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = _difference(g, e, atol, rtol, f"{what}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{what} should be a tensor of shape {tuple(expected.shape)}, got {describe(got)}"
        if got.shape != expected.shape:
            return f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype != expected.dtype:
            return f"{what} has dtype {got.dtype}, expected {expected.dtype} (keep the inputs' dtype)"
        got, expected = got.detach(), expected.detach()
        if torch.isnan(got).any() and not torch.isnan(expected).any():
            return f"{what} contains NaN where the reference has none"
        if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
            err = (got - expected).abs().nan_to_num(float("inf"))
            return f"{what} differs from the reference: largest error {err.max().item():.3g} (tolerance {atol:g})"
        return None
    if isinstance(expected, float):
        if not isinstance(got, (int, float)) or not abs(got - expected) <= atol + rtol * abs(expected):  # NaN too
            return f"{what} is {got!r}, expected about {expected:.6g}"
        return None
    return None if got == expected else f"{what} is {got!r}, expected {expected!r}"


def _matches(got: Any, other: Any, atol: float, rtol: float, expected: Any = None) -> bool:
    """Whether `got` equals `other`; for a tuple, whether the items of `got` that differ from `expected` equal
    `other`'s (a mistake made in one item only, one tower of two, say)."""
    if isinstance(got, (tuple, list)) and isinstance(other, (tuple, list)) and isinstance(expected, (tuple, list)) \
            and len(got) == len(other) == len(expected):
        wrong = [i for i in range(len(got)) if _difference(got[i], expected[i], atol, rtol, "output") is not None]
        return bool(wrong) and all(_difference(got[i], other[i], atol, rtol, "output") is None for i in wrong)
    return _difference(got, other, atol, rtol, "output") is None


def _diagnose(name: str, got: Any, mistakes: Sequence[Mistake], run_mistake: Callable[[Mistake], Any],
              atol: float, rtol: float, expected: Any = None) -> str | None:
    """The message of the first known mistake whose whole output equals the learner's, else of the first that
    equals it where the learner's differs from `expected` (see _matches)."""
    outputs = []
    for mistake in mistakes:
        try:
            outputs.append((mistake, run_mistake(mistake)))
        except Exception:  # noqa: BLE001 - a mistake that cannot run on this case just does not match
            continue
    for matches in (lambda wrong: _difference(got, wrong, atol, rtol, "output") is None,
                    lambda wrong: _matches(got, wrong, atol, rtol, expected)):
        for mistake, wrong in outputs:
            if matches(wrong):
                return f"{name}: looks like you {mistake.label}.\n  {mistake.hint}"
    return None


def _outcomes(fn: Callable, reference: Callable, cases: Sequence[Mapping[str, Any]], atol: float, rtol: float,
              ) -> tuple[Sequence[Mapping[str, Any]], list[bool]]:
    """The cases and whether the learner's output fails each (an error counts as failing), for a diagnosis."""
    failed = []
    for case in cases:
        try:
            got = fn(**_clone_case(case, False))
        except Exception:  # noqa: BLE001 - a case that raises fails
            failed.append(True)
            continue
        failed.append(_difference(got, reference(**_clone_case(case, False)), atol, rtol, "output") is not None)
    return cases, failed


def _passed(name: str, cases: int, what: str) -> None:
    print(f"{PASS} {name}: matches the reference on {cases} case{'s' * (cases != 1)} ({what}).")


def _compare_gradients(name: str, keys: Sequence[str], got: Sequence[torch.Tensor | None],
                       expected: Sequence[torch.Tensor | None], atol: float, rtol: float, where: str, *,
                       what: str, of: str, cut: str) -> None:
    """Raise CheckFailed at the first gradient that is missing (`cut`) or differs (`of`) from the reference's."""
    for key, g, e in zip(keys, got, expected):
        if e is None:
            continue
        if g is None:
            raise CheckFailed(f"{name}: {cut.format(key)}\n  on {where}")
        problem = _difference(g, e, atol * 10, rtol * 10, of.format(key))
        if problem:
            raise CheckFailed(f"{name}: the {what} match but {problem}\n  on {where}")


# ----------------------------------------------------------------------------------------- checks


def check_function(fn: Callable, reference: Callable, cases: Sequence[Mapping[str, Any]], *, name: str,
                   mistakes: Sequence[Mistake] = (), forbidden: Mapping[Any, str] | None = None,
                   atol: float = 1e-5, rtol: float = 1e-4, grad: bool = True,
                   explain: Callable[[Any, dict[str, Any]], str | None] | None = None) -> None:
    """Compare `fn` with `reference` on every case (keyword arguments), values and input gradients.

    Prints one pass line, or raises CheckFailed naming the first matching `Mistake`, else what `explain(output,
    learner's arguments)` says about the wrong output (a mistake named by its effect), else how the output
    relates to the reference's (vitlab.diagnose). Calls of anything in `forbidden` inside `fn` fail the check.
    """
    for i, case in enumerate(cases):
        where = f"case {i + 1}: {describe_case(case)}"
        args = _clone_case(case, grad)
        expected = reference(**_clone_case(case, False))
        with forbid(forbidden or {}) as called:
            got = call_learner(name, fn, args, where)
        _refuse(name, called)
        problem = _difference(got, expected, atol, rtol, "your output")
        if problem:
            message = _diagnose(name, got, mistakes, lambda m: m.impl(**_clone_case(case, False)), atol, rtol,
                                expected)
            effect = explain(got, args) if explain is not None and message is None else None
            if effect:
                message = f"{name}: {effect}\n  on {where}"
            raise CheckFailed(message or diagnose.explain(
                name, problem, where, got, expected, case, atol=atol, rtol=rtol, reference=reference,
                outcomes=lambda: _outcomes(fn, reference, cases, atol, rtol)))
        if not grad:
            continue
        keys = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]
        ref_args = _clone_case(case, True)
        ref_grads = _backward(reference(**ref_args), [ref_args[k] for k in keys], seed=i)
        got_grads = _backward(got, [args[k] for k in keys], seed=i)
        _compare_gradients(name, keys, got_grads, ref_grads, atol, rtol, where, what="values",
                           of="the gradient with respect to `{}`",
                           cut="no gradient reaches `{}`; the values are right, so something cuts the graph "
                               "(.detach(), .item(), .numpy(), torch.tensor(...) of a result?)")
    _passed(name, len(cases), "values and gradients" if grad else "values")


def load_reference_weights(module: nn.Module, reference: nn.Module, name: str) -> None:
    """Load the reference's state_dict into the learner's module, explaining any key or shape mismatch."""
    mine = module.state_dict()
    theirs = reference.state_dict()
    missing = [k for k in theirs if k not in mine]
    unexpected = [k for k in mine if k not in theirs]
    if missing or unexpected:
        lines = [f"{name}: its parameters are not named like the reference's, so the reference weights do not load."]
        if missing:
            lines.append("  missing: " + ", ".join(f"{k} {tuple(theirs[k].shape)}" for k in missing))
        if unexpected:
            lines.append("  unexpected: " + ", ".join(f"{k} {tuple(mine[k].shape)}" for k in unexpected))
        raise CheckFailed("\n".join(lines))
    wrong = [f"{k}: yours {tuple(mine[k].shape)}, reference {tuple(v.shape)}"
             + (f"\n    {hint}" if (hint := diagnose.parameter_shape_hint(tuple(mine[k].shape), tuple(v.shape))) else "")
             for k, v in theirs.items() if mine[k].shape != v.shape]
    if wrong:
        raise CheckFailed(f"{name}: parameters have the wrong shape:\n  " + "\n  ".join(wrong))
    module.load_state_dict(theirs)


def check_module(make_module: Callable[[], nn.Module], reference: nn.Module,
                 inputs: Sequence[Mapping[str, Any]], *, name: str, mistakes: Sequence[Mistake] = (),
                 forbidden: Mapping[Any, str] | None = None, atol: float = 1e-5, rtol: float = 1e-4,
                 grad: bool = True) -> None:
    """Build the learner's module, load the reference's weights into it, compare outputs and parameter grads.

    `mistakes` hold modules (or callables) that are wrong in a known way; their state is loaded from the
    reference too when they are modules.
    """
    module = call_learner(name, make_module, {}, "construction")
    if not isinstance(module, nn.Module):
        raise CheckFailed(f"{name} should build an nn.Module, got {describe(module)}")
    load_reference_weights(module, reference, name)
    module.eval()
    reference.eval()
    for m in mistakes:
        if isinstance(m.impl, nn.Module):
            m.impl.load_state_dict(reference.state_dict())
            m.impl.eval()
    for i, case in enumerate(inputs):
        where = f"input {i + 1}: {describe_case(case)}"
        module.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        with forbid(forbidden or {}) as called:
            got = call_learner(name, module, _clone_case(case, False), where)
        _refuse(name, called)
        expected = reference(**_clone_case(case, False))
        problem = _difference(got, expected, atol, rtol, "your output")
        if problem:
            with torch.no_grad():
                message = _diagnose(name, got, mistakes, lambda m: m.impl(**_clone_case(case, False)), atol, rtol,
                                    expected)
                raise CheckFailed(message or diagnose.explain(
                    name, problem, where, got, expected, case, atol=atol, rtol=rtol,
                    outcomes=lambda: _outcomes(module, reference, inputs, atol, rtol)))
        if not grad:
            continue
        names = [k for k, p in reference.named_parameters() if p.requires_grad]
        mine = dict(module.named_parameters())
        ref_grads = _backward(expected, [dict(reference.named_parameters())[k] for k in names], seed=i)
        got_grads = _backward(got, [mine[k] for k in names], seed=i)
        _compare_gradients(name, names, got_grads, ref_grads, atol, rtol, where, what="outputs",
                           of="the gradient of `{}`",
                           cut="no gradient reaches parameter `{}`; is it used in forward, and is the graph cut "
                               "somewhere (.detach(), .data)?")
    _passed(name, len(inputs), "outputs and gradients with the reference's weights" if grad else
            "outputs with the reference's weights")


def check_value(got: Any, expected: Any, *, name: str, atol: float = 1e-6, rtol: float = 1e-6,
                hint: str = "") -> None:
    """Compare a learner's result (a number or tensor) with an independently computed value."""
    problem = _difference(got, expected, atol, rtol, "your result")
    if problem:
        raise CheckFailed(f"{name}: {problem}" + (f"\n  {hint}" if hint else ""))
    print(f"{PASS} {name}: {describe(got) if isinstance(got, torch.Tensor) else got!r} is right.")

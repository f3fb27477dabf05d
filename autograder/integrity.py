"""What a submission did that it should not have: edited or deleted locked cells, code that changes the
checking machinery, calls of the reference, and what went wrong while it ran.

Each finding is a flag, a short string such as `edited:sdpa_test` that goes into grades.csv's `flags`
column and the feedback. Three layers catch tampering with the checks:
1. `restore` rebuilds the notebook as released, keeping only the learner's answers and own cells, so an
   edited or deleted locked cell is graded as released (and flagged);
2. `tampering` reads the learner's code for assignments to attributes of vitlab, torch, builtins or sys
   (and settrace/setprofile, sys.modules, reload), flagged and scored zero from that cell on;
3. at grading time every hidden test ends with `vitlab.check.verify_integrity()`, which fails when a
   function of vitlab, of torch's comparison functions or a builtin was replaced at run time.
No in-process check can stop a determined attacker who knows all three; together they stop the usual ways.
"""
from __future__ import annotations

import ast
import copy
import re

import nbformat

GUARD = '__import__("vitlab.check", fromlist=["check"]).verify_integrity()'
HIDDEN_END = "### END HIDDEN TESTS"
PROTECTED = ("vitlab", "torch", "builtins", "__builtins__", "sys", "numpy", "math", "importlib", "einops")
CALLS_REFERENCE = "the very thing this exercise asks you to write"
TAMPERED = "changed the course's checking code"
ERRORS = {"CellTimeoutError": "timeout", "NotebookTimeout": "notebook-timeout", "KernelDied": "kernel-died",
          "MemoryError": "memory", "OutOfMemoryError": "memory"}
ALLOCATION_FAILED = re.compile(r"can't allocate memory|out of memory", re.I)  # torch's RuntimeError


def meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def guard_hidden_tests(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The instructor's notebook with the integrity check added at the end of every hidden-test block."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if meta(cell).get("grade") and HIDDEN_END in cell.source and GUARD not in cell.source:
            cell.source = cell.source.replace(HIDDEN_END, f"{GUARD}\n{HIDDEN_END}")
    return nb


def restore(submitted: dict, release: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The release with the learner's answers in its solution cells and the learner's own cells kept in
    place; flags for locked cells edited or deleted, answers deleted, and cells reordered."""
    flags: list[str] = []
    cells = [c for c in submitted.get("cells", []) if isinstance(c, dict)]
    by_id = {meta(c)["grade_id"]: c for c in cells if meta(c).get("grade_id")}
    released_ids = {c.get("id") for c in release.cells}
    released_grade_ids = [meta(c)["grade_id"] for c in release.cells if meta(c).get("grade_id")]
    order = [meta(c)["grade_id"] for c in cells if meta(c).get("grade_id") in set(released_grade_ids)]
    if order != [g for g in released_grade_ids if g in by_id]:
        flags.append("reordered")
    # the learner's own cells, by the released cell they follow
    extra: dict[str | None, list[dict]] = {}
    anchor = None
    for cell in cells:
        if meta(cell).get("grade_id") in by_id and meta(cell).get("grade_id") in released_grade_ids:
            anchor = meta(cell)["grade_id"]
        elif cell.get("id") in released_ids and not meta(cell):
            anchor = cell["id"]
        elif not meta(cell):
            extra.setdefault(anchor, []).append(cell)
    out = copy.deepcopy(release)
    out.cells = [own_cell(c) for c in extra.get(None, [])]
    for cell in release.cells:
        cell = copy.deepcopy(cell)
        grade_id = meta(cell).get("grade_id")
        mine = by_id.get(grade_id) if grade_id else None
        if grade_id and mine is None:
            flags.append(f"deleted:{grade_id}")
        elif grade_id and meta(cell).get("solution"):
            cell.source = source_of(mine)
            if cell.cell_type == "markdown" and mine.get("attachments"):
                cell.attachments = copy.deepcopy(mine["attachments"])
        elif grade_id and source_of(mine).strip() != cell.source.strip():
            flags.append(f"edited:{grade_id}")
        out.cells.append(cell)
        out.cells += [own_cell(c) for c in extra.get(grade_id or cell.get("id"), [])]
    return out, flags


def own_cell(cell: dict) -> nbformat.NotebookNode:
    """A cell the learner added, as a clean code or markdown cell (outputs are dropped: they are re-made)."""
    if cell.get("cell_type") == "code":
        return nbformat.v4.new_code_cell(source_of(cell))
    own = nbformat.v4.new_markdown_cell(source_of(cell))
    if cell.get("attachments"):  # a pasted picture
        own.attachments = copy.deepcopy(cell["attachments"])
    return own


def source_of(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _python(source: str) -> str:
    """Cell source without IPython's magics and shell escapes, which are not Python."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


# What a learner's code has no reason to touch, and what reaches the grading machinery through it: IPython's
# transformers and hooks, torch's override protocols and modes, a function's insides, other threads, the
# interpreter's frames and objects, code run from text, and torch's back doors to its operators.
SURFACES = {"input_transformers_cleanup", "input_transformers_post", "input_transformer_manager", "ast_transformers",
            "shell_handlers", "showtraceback", "_showtraceback", "user_expressions", "user_ns", "user_global_ns",
            "run_cell", "transform_cell", "get_ipython", "__torch_function__", "__torch_dispatch__", "TorchFunctionMode",
            "TorchDispatchMode", "_python_dispatch", "_make_subclass", "as_subclass", "__code__", "__globals__",
            "__closure__", "__wrapped__", "__builtins__", "__subclasses__", "__dict__", "_getframe", "f_back",
            "f_globals", "f_locals", "get_referrers", "get_referents", "get_objects", "linecache", "ctypes", "threading",
            "_thread", "concurrent", "multiprocessing", "setprofile", "settrace"}
DYNAMIC = {"exec", "eval", "compile", "__import__", "breakpoint"}  # code run from text hides from this reading
TORCH_BACK_DOORS = {"ops", "jit", "_C", "library", "overrides"}


def surfaces_in(tree: ast.AST, modules: dict[str, str]) -> list[str]:
    """The attack surfaces (see SURFACES) a learner's code names, as names, attributes, imports or strings."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
            root = modules.get(_root_name(node) or "", "")
            if root.split(".")[0] == "torch" and node.attr in TORCH_BACK_DOORS and isinstance(node.value, ast.Name):
                found.append(f"{ast.unparse(node)}")
            if root.startswith("vitlab") and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{ast.unparse(node)} (a private helper)")
            if node.attr in ("register", "unregister") and isinstance(node.value, ast.Attribute) and \
                    node.value.attr == "events":
                found.append(ast.unparse(node))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = getattr(node, "module", None) or ""
            names = [*(a.name for a in node.names), *module.split(".")]
            if module.startswith("vitlab"):
                found += [f"{module}.{a.name} (a private helper)" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            if module.split(".")[0] == "torch" or any(a.name.split(".")[0] == "torch" for a in node.names):
                parts = {p for a in node.names for p in a.name.split(".")} | set(module.split("."))
                found += [f"torch.{p}" for p in sorted(parts & TORCH_BACK_DOORS)]
            names = [p for n in names for p in n.split(".")]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [node.name]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if node.value in SURFACES else []
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in DYNAMIC:
            found.append(f"{node.func.id}()")
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            for target in getattr(node, "targets", [getattr(node, "target", None)]):
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Call) and \
                        isinstance(target.value.func, ast.Name) and target.value.func.id in ("vars", "globals"):
                    found.append(ast.unparse(target).replace(" ", ""))
        found += [name for name in names if name in SURFACES]
    return list(dict.fromkeys(found))


def tampering_in(source: str, modules: dict[str, str]) -> list[str]:
    """What this code changes of the checking machinery (`check_attention.sdpa`, `setattr(torch)`,
    `sys.setprofile()`). `modules` maps names bound to protected modules (by this or earlier cells) to
    the module; it is updated with the cell's own imports."""
    try:
        tree = ast.parse(_python(source))
    except SyntaxError:
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROTECTED:
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                        alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROTECTED:
            for alias in node.names:
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                root = _root_name(t)
                if isinstance(t, (ast.Attribute, ast.Subscript)) and (root in modules or root == "__builtins__"):
                    found.append(ast.unparse(t).replace(" ", ""))
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("setattr", "delattr") and node.args and (
                    _root_name(node.args[0]) in modules or _root_name(node.args[0]) == "__builtins__"):
                found.append(f"{name}({ast.unparse(node.args[0])})".replace(" ", ""))
            elif name.split(".")[-1] in ("setprofile", "settrace", "reload") and _root_name(node.func) in modules:
                found.append(f"{name}()".replace(" ", ""))
    return list(dict.fromkeys(found + surfaces_in(tree, modules)))


def tampering(nb: nbformat.NotebookNode) -> tuple[int | None, list[str]]:
    """(index of the first cell of learner code that tampers, what it does), or (None, [])."""
    modules: dict[str, str] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        found = tampering_in(cell.source, modules)
        learner = meta(cell).get("solution") or not meta(cell)
        if found and learner:
            return index, found
    return None, []


def from_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """Flags read from an executed notebook: timeouts, a dead kernel, truncated output, calls of the
    reference and tampering caught at run time (by graded cell, else by cell number)."""
    flags: list[str] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = meta(cell).get("grade_id") or f"cell{index + 1}"
        for output in cell.get("outputs", []):
            text = output.get("text", "") + output.get("evalue", "") + "".join(output.get("traceback", []))
            failed_to_allocate = ALLOCATION_FAILED.search(output.get("evalue", ""))
            kind = ERRORS.get(output.get("ename", "")) or ("memory" if failed_to_allocate else None)
            if kind:
                flags.append(f"{kind}:{where}" if kind != "notebook-timeout" else kind)
            if "[output truncated" in text:
                flags.append(f"output-truncated:{where}")
            if meta(cell).get("grade") and CALLS_REFERENCE in text:
                flags.append(f"calls-reference:{where}")
            if TAMPERED in text:
                flags.append(f"tampering:{where}")
    return list(dict.fromkeys(flags))


def graded_after(nb: nbformat.NotebookNode, index: int) -> list[str]:
    """grade_ids of the graded cells from `index` on."""
    return [meta(c)["grade_id"] for c in nb.cells[index:] if meta(c).get("grade")]


FLAG_LINES = {
    "reordered": "cells were moved: graded in the order released",
    "deleted": "a cell of the release was deleted and has been put back as released: {}",
    "edited": "a locked cell was edited and has been graded as released: {}",
    "timeout": "a cell ran past its time limit and was stopped: {}",
    "notebook-timeout": "the notebook used up its time budget: the cells after that were not run",
    "kernel-died": "the kernel died (out of memory, a crash or an exit) in {}: later cells ran in a fresh kernel",
    "output-truncated": "a cell printed too much; its output was cut: {}",
    "memory": "a cell ran out of its memory limit: {}",
    "calls-reference": "the answer calls the reference or the built-in it should replace: zero for {}",
    "tampering": "the notebook changes the checking code: zero for {}",
    "patches": "the notebook's code changes or reaches into the checking machinery, vitlab, torch or builtins "
               "({}): zero from that cell on",
    "late": "handed in {} after the due date",
}


def describe(flag: str) -> str:
    """One sentence for a flag, for the feedback."""
    kind, _, where = flag.partition(":")
    return FLAG_LINES.get(kind, flag).format(re.sub(r"^cell", "cell ", where))

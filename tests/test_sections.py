"""Each `## ` section of a solution notebook runs on its own after the set-up cells.

A learner who restarts the kernel, runs the set-up cells (the code before the first `## ` heading) and jumps to
section N must not meet a NameError on a name that only another section's code defines. Read statically: a name a
section uses must come from the set-up cells or the section's own cells, or be declared at the section's top
("This section uses the `detector` trained in section 8: run section 8 first.") and defined in an earlier section;
a learner's exercise from an earlier section too ("This section uses your `Block` from section 4: ...").
"""
import ast
import builtins
import re

import nbformat
import pytest
from conftest import SOLUTION_NOTEBOOKS

DECLARED = re.compile(r"This section uses\b[^.:]*")  # the clause that says what the section uses
BACKTICKED = re.compile(r"`([A-Za-z_]\w*)`")


SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp, ast.DictComp,
          ast.GeneratorExp)


def bound_and_read(nodes) -> tuple[set[str], set[str]]:
    """The names one scope binds, and the names it reads that it does not bind (nested scopes' free names too)."""
    bound, read, nested = set(), set(), []
    todo = list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, SCOPES):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
                todo += node.decorator_list  # evaluated where the def stands
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                todo += node.args.defaults + [d for d in node.args.kw_defaults if d]
            nested.append(node)
            continue
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        todo += ast.iter_child_nodes(node)
    for scope in nested:
        if isinstance(scope, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            inner_bound, inner_read = bound_and_read(ast.iter_child_nodes(scope))
        else:
            body = scope.body if isinstance(scope.body, list) else [scope.body]
            inner_bound, inner_read = bound_and_read(body)
            if not isinstance(scope, ast.ClassDef):
                a = scope.args
                inner_bound |= {arg.arg for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if arg}
        read |= inner_read - inner_bound
    return bound, read - bound


def defined_and_used(source: str) -> tuple[set[str], set[str]]:
    """The names a cell binds at its top level (assignments, defs, imports), and the names it reads from outside."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics
        return set(), set()
    return bound_and_read(tree.body)


def sections(nb) -> list[tuple[str, str, list]]:
    """(heading, top markdown, code cells) per section; the first is the set-up, headed ''.

    A heading may stand inside a markdown cell, after the closing words of the section before.
    """
    parts = [("", "", [])]
    for cell in nb.cells:
        if cell.cell_type == "code":
            parts[-1][2].append(cell)
            continue
        for number, chunk in enumerate(re.split(r"^(?=## )", cell.source, flags=re.MULTILINE)):
            if chunk.startswith("## "):
                parts.append((chunk.splitlines()[0], chunk, []))
            elif number == 0 and not parts[-1][2]:  # prose at the top of a section, before its first code cell
                heading, top, code = parts[-1]
                parts[-1] = (heading, top + "\n" + chunk, code)
    return parts


def declared_uses(markdown: str) -> set[str]:
    """The names a section's top says it uses from an earlier section."""
    return {name for clause in DECLARED.findall(markdown) for name in BACKTICKED.findall(clause)}


def names_from_elsewhere(nb) -> list[str]:
    """One line per (section, name) the section reads but neither it, the set-up nor its top gives."""
    parts = sections(nb)
    setup = set().union(*(defined_and_used(cell.source)[0] for cell in parts[0][2]))
    defined_in = [set().union(*(defined_and_used(cell.source)[0] for cell in cells)) for _, _, cells in parts]
    problems = []
    for index, (heading, top, cells) in enumerate(parts[1:], start=1):
        elsewhere = set().union(*(d for i, d in enumerate(defined_in) if i != index)) - setup
        used = set().union(*(defined_and_used(cell.source)[1] for cell in cells))
        declared = declared_uses(top)
        earlier = set().union(*defined_in[:index])
        problems += [f"{heading}: `{name}` is declared but no earlier section defines it"
                     for name in sorted(declared - earlier)]
        problems += [f"{heading}: `{name}` comes from another section"
                     for name in sorted((used & elsewhere) - defined_in[index] - declared - set(dir(builtins)))]
    return problems


@pytest.mark.parametrize("solution_notebook", SOLUTION_NOTEBOOKS, ids=[p.parent.name for p in SOLUTION_NOTEBOOKS])
def test_each_section_runs_after_the_setup_cells(solution_notebook):
    problems = names_from_elsewhere(nbformat.read(solution_notebook, as_version=4))
    assert not problems, ("a section uses a name defined only in another section: move it to the set-up cells, "
                          "or say at the section's top 'This section uses the `NAME` ... of section N: run it "
                          "first.'\n" + "\n".join(problems))


def test_a_name_from_another_section_is_found_and_a_declaration_covers_it():
    cells = [nbformat.v4.new_code_cell("import torch\nsize = 4"),
             nbformat.v4.new_markdown_cell("## 1. Training"), nbformat.v4.new_code_cell("model = torch.zeros(size)"),
             nbformat.v4.new_markdown_cell("Closing words.\n\n## 2. Testing"),  # a heading inside a cell
             nbformat.v4.new_code_cell("print(model.sum())")]
    nb = nbformat.v4.new_notebook(cells=cells)
    assert names_from_elsewhere(nb) == ["## 2. Testing: `model` comes from another section"]
    cells[3].source += "\n\nThis section uses the `model` trained in section 1: run section 1 first."
    assert names_from_elsewhere(nb) == []
    cells[3].source = "## 2. Testing\n\nThis section uses the `modle` of section 1: run it first."
    assert names_from_elsewhere(nb) == ["## 2. Testing: `modle` is declared but no earlier section defines it",
                                        "## 2. Testing: `model` comes from another section"]


def test_an_exercise_from_another_section_is_declared_too():
    exercise = nbformat.v4.new_code_cell("def block(x):\n    return x", metadata={"nbgrader": {"solution": True}})
    cells = [nbformat.v4.new_code_cell("import torch"), nbformat.v4.new_markdown_cell("## 1. The block"), exercise,
             nbformat.v4.new_markdown_cell("## 2. The model"), nbformat.v4.new_code_cell("y = block(torch.ones(2))")]
    nb = nbformat.v4.new_notebook(cells=cells)
    assert names_from_elsewhere(nb) == ["## 2. The model: `block` comes from another section"]
    cells[3].source += "\n\nThis section uses your `block` from section 1: after a restart, run section 1 first."
    assert names_from_elsewhere(nb) == []


def test_arguments_and_locals_stay_in_their_function():
    defined, used = defined_and_used("def f(model, k=size):\n    n = model(k)\n    return n + top\n"
                                     "squares = [i * i for i in range(n_max)]\n")
    assert defined == {"f", "squares"}
    assert used == {"size", "top", "range", "n_max"}

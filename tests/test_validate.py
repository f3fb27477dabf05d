"""nbgrader's Validate tells the truth: every graded cell of a released chapter runs its exercise's visible check
before the hidden tests, so Validate fails on an unfinished, wrong or shortcut answer and passes on a solved copy.

The browser test presses the Validate button on the untouched learner copy of 01; here the command line covers a
shortcut answer and a solved copy, and every graded chapter is read for the check call in its graded cells.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p for p in ROOT.glob("chapters/*/*.ipynb") if p.stem == p.parent.name)
CHECK_CALL = re.compile(r"^check_\w+\.\w+\(.*\)$", re.M)


def meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def graded_cells(nb) -> list[tuple[object, object]]:
    """(check cell, graded cell) pairs: each graded cell follows the check cell of its exercise."""
    return [(nb.cells[i - 1], cell) for i, cell in enumerate(nb.cells) if meta(cell).get("grade")]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.parent.name for p in CHAPTERS])
def test_every_graded_cell_runs_the_visible_check(chapter):
    nb = nbformat.read(chapter, as_version=4)
    pairs = graded_cells(nb)
    if chapter.parent.name == "00_welcome":
        assert not pairs
        return
    assert pairs, f"{chapter.parent.name} has no graded cell"
    for check_cell, graded in pairs:
        calls = CHECK_CALL.findall(check_cell.source)
        assert calls, f"{meta(graded)['grade_id']}: the cell above holds no check call"
        code = [line for line in graded.source.splitlines() if line.strip() and not line.startswith("#")]
        assert code == calls, f"{meta(graded)['grade_id']} runs {code}, its check cell {calls}"
        assert "graded=True" not in graded.source and "HIDDEN" not in graded.source


def validate(nb, tmp_path: Path) -> str:
    """`nbgrader validate` on `nb` saved in tmp_path: its output."""
    path = tmp_path / "01_attention.ipynb"
    nbformat.write(nb, path)
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    env.pop("VITLAB_PROFILE", None)
    run = subprocess.run([str(Path(bin_dir) / "nbgrader"), "validate", str(path),
                          f"--NbGrader.config_file={ROOT / 'autograder' / 'nbgrader_config'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return run.stdout + run.stderr


def answered(answers: dict[str, str]):
    """The learner copy of 01 with the solution's answers, `answers` (grade_id -> source) replacing some."""
    learner = nbformat.read(ROOT / "chapters/01_attention/01_attention.ipynb", as_version=4)
    solution = nbformat.read(ROOT / "solutions/01_attention/01_attention.ipynb", as_version=4)
    solved = {meta(c)["grade_id"]: c.source for c in solution.cells if meta(c).get("solution")}
    for cell in learner.cells:
        if meta(cell).get("solution"):
            cell.source = answers.get(meta(cell)["grade_id"], solved[meta(cell)["grade_id"]])
    return learner


SHORTCUT = '''def scaled_dot_product_attention(q, k, v, mask=None, causal=False):
    if mask is not None and mask.dtype == torch.bool:
        mask = mask.masked_fill(~mask.any(-1, keepdim=True), True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
'''


def test_validate_passes_a_solved_copy_and_fails_a_shortcut(tmp_path):
    solved = validate(answered({}), tmp_path)
    assert "Success! Your notebook passes all the tests." in solved, solved[-2000:]
    shortcut = validate(answered({"sdpa-solution": SHORTCUT}), tmp_path)
    assert "VALIDATION FAILED ON 1 CELL(S)!" in shortcut, shortcut[-2000:]
    assert "check_attention.sdpa(scaled_dot_product_attention)" in shortcut
    assert "your code calls" in shortcut, shortcut[-2000:]

"""The autograder's intake (student folders, LMS files, zips, bad inputs), its restoring of released cells,
its reading of tampering, and its execution guards, without a grading run."""
from __future__ import annotations

import copy
import json
import os
import stat
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
from grading import chapter_notebooks, learner_submission

from autograder import integrity, intake
from autograder.preprocessors import GuardedExecute

CHAPTER = "01_attention"


@pytest.fixture(scope="module")
def notebooks(repo):
    return chapter_notebooks(repo, CHAPTER)


@pytest.fixture(scope="module")
def chapters(repo):
    return {name: intake.grade_ids(json.loads((repo / "solutions" / name / f"{name}.ipynb").read_text()))
            for name in ("01_attention", "02_patches")}


@pytest.mark.parametrize("name, student", [
    ("smithjane_4321_998877_01_attention.ipynb", "4321"),          # Canvas
    ("smithjane_late_4321_998877_01_attention-1.ipynb", "4321"),   # Canvas, late
    ("Jane Smith_4321_assignsubmission_file_", "4321"),            # Moodle folder
    ("Jane Smith_4321_assignsubmission_file_01_attention.ipynb", "4321"),
    ("01_attention.ipynb", None),
    ("alice", None),
])
def test_lms_names_give_the_student_id(name, student):
    assert intake.lms_student(name) == student


def write(path: Path, nb) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nb if isinstance(nb, str) else nbformat.writes(nb), encoding="utf-8")
    return path


def test_intake_reads_folders_lms_files_and_zips(tmp_path, notebooks, chapters):
    release, solution = notebooks
    other = nbformat.read(Path(__file__).parent.parent / "chapters" / "02_patches" / "02_patches.ipynb", as_version=4)
    subs = tmp_path / "subs"
    write(subs / "alice" / "my attempt.ipynb", release)
    write(subs / "alice" / "02_patches.ipynb", other)                               # a second chapter
    write(subs / "smithjane_4321_998877_01_attention.ipynb", release)               # Canvas
    write(subs / "Bo Li_77_assignsubmission_file_" / "01_attention.ipynb", release)  # Moodle
    write(subs / "carol_01_attention.ipynb", release)                               # named with the id
    write(tmp_path / "z" / "01_attention.ipynb", release)
    with zipfile.ZipFile(subs / "dave.zip", "w") as zf:                             # one student's zip
        zf.write(tmp_path / "z" / "01_attention.ipynb", "work/01_attention.ipynb")
    with zipfile.ZipFile(subs / "class.zip", "w") as zf:                            # a whole-class download
        zf.write(tmp_path / "z" / "01_attention.ipynb", "erin/01_attention.ipynb")
        zf.write(tmp_path / "z" / "01_attention.ipynb", "Fay Wu_88_assignsubmission_file_/01_attention.ipynb")
    found, problems = intake.intake(subs, tmp_path / "staging", chapters, [])
    assert problems == []
    assert sorted((s.student, s.chapter) for s in found) == sorted([
        ("alice", "01_attention"), ("alice", "02_patches"), ("4321", "01_attention"), ("77", "01_attention"),
        ("carol", "01_attention"), ("dave", "01_attention"), ("erin", "01_attention"), ("88", "01_attention")])


def test_intake_reports_each_bad_input_on_one_line(tmp_path, notebooks, chapters, monkeypatch):
    release, _ = notebooks
    other = nbformat.read(Path(__file__).parent.parent / "chapters" / "02_patches" / "02_patches.ipynb", as_version=4)
    subs = tmp_path / "subs"
    write(subs / "garbled" / "a.ipynb", '{"cells": [')
    write(subs / "notjson" / "a.ipynb", "\x00\xff binary")
    write(subs / "list" / "a.ipynb", "[1, 2]")
    write(subs / "empty" / "a.ipynb", json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    write(subs / "zero" / "a.ipynb", "")
    write(subs / "wrong" / "02_patches.ipynb", other)
    write(subs / "stranger" / "a.ipynb", nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]))
    write(subs / "twice" / "a.ipynb", release)
    write(subs / "twice" / "b.ipynb", release)
    huge = copy.deepcopy(release)
    huge.cells.append(nbformat.v4.new_markdown_cell("x" * 5000))
    write(subs / "huge" / "01_attention.ipynb", huge)
    (subs / "nothing").mkdir()
    (subs / "bad id!").mkdir()
    write(subs / "bad id!" / "01_attention.ipynb", release)
    with zipfile.ZipFile(subs / "mallory.zip", "w") as zf:
        zf.writestr("../../evil.ipynb", "{}")
    with zipfile.ZipFile(subs / "linker.zip", "w") as zf:
        info = zipfile.ZipInfo("01_attention.ipynb")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    (subs / "broken.zip").write_bytes(b"PK not really")
    # cells the grader could not use, and files that are not regular files
    listed = json.loads(nbformat.writes(release))
    listed["cells"][0]["metadata"] = []
    write(subs / "listmeta" / "01_attention.ipynb", json.dumps(listed))
    write(subs / "surrogate" / "01_attention.ipynb", nbformat.writes(release).replace('"cells": [', '"cells": [{"cell_type": "markdown", "metadata": {}, "source": "\\ud800"}, ', 1))
    write(subs / "deep" / "01_attention.ipynb", '{"cells": [' + "[" * 5000 + "]" * 5000 + "]}")
    write(subs / "badgrade" / "01_attention.ipynb", nbformat.writes(release).replace('"grade_id": "setup"', '"grade_id": 7', 1))
    (subs / "linked").mkdir()
    (subs / "linked" / "01_attention.ipynb").symlink_to(write(tmp_path / "elsewhere.ipynb", release))
    (subs / "fifo").mkdir()
    os.mkfifo(subs / "fifo" / "01_attention.ipynb")
    monkeypatch.setattr(intake, "MAX_NOTEBOOK_BYTES", len(nbformat.writes(release)) + 1000)
    found, problems = intake.intake(subs, tmp_path / "staging", chapters, [CHAPTER])
    assert found == []
    expected = {
        "garbled": "a.ipynb is not JSON", "notjson": "a.ipynb is not JSON", "list": "is JSON but not a notebook",
        "empty": "a notebook with no cells", "zero": "an empty file",
        "wrong": "02_patches.ipynb is chapter 02_patches's notebook, not 01_attention's",
        "stranger": "is not the notebook of any vitlab chapter", "twice": "2 notebooks of 01_attention",
        "huge": "MB (at most", "nothing": "no notebook", "'bad id!'": "not usable as a student id",
        "mallory": "mallory.zip has a path outside its folder (../../evil.ipynb): refused",
        "linker": "linker.zip holds a link", "broken": "broken.zip is not a readable zip",
        "listmeta": "cell 1 has metadata that is not an object", "surrogate": "not valid Unicode",
        "deep": "nested too deeply", "badgrade": "grade_id that is not text",
        "linked": "01_attention.ipynb is a link", "fifo": "01_attention.ipynb is not a regular file",
    }
    assert len(problems) == len(expected), "\n".join(problems)
    for student, message in expected.items():
        assert any(p.startswith(f"student {student}: ") and message in p for p in problems), (student, problems)
    assert not list(tmp_path.rglob("evil.ipynb"))


def cell_of(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def test_restore_puts_back_locked_cells_keeps_answers_and_own_cells_and_flags(notebooks):
    release, solution = notebooks
    nb = learner_submission(release, solution, [])
    answer = cell_of(nb, "sdpa-solution").source
    cell_of(nb, "sdpa-graded").source = "print('all good')"
    nb.cells.remove(cell_of(nb, "mha-graded"))
    nb.cells.remove(next(c for c in nb.cells if "nbgrader" not in c.metadata))  # an explanation: no flag
    mine = nbformat.v4.new_code_cell("my_own = 1")
    nb.cells.insert(nb.cells.index(cell_of(nb, "sdpa-solution")) + 1, mine)
    rebuilt, flags = integrity.restore(json.loads(nbformat.writes(nb)), release)
    assert flags == ["edited:sdpa-graded", "deleted:mha-graded"]
    assert cell_of(rebuilt, "sdpa-graded").source == cell_of(release, "sdpa-graded").source
    assert cell_of(rebuilt, "mha-graded").source == cell_of(release, "mha-graded").source
    assert cell_of(rebuilt, "sdpa-solution").source == answer
    assert len(rebuilt.cells) == len(release.cells) + 1
    assert rebuilt.cells[rebuilt.cells.index(cell_of(rebuilt, "sdpa-solution")) + 1].source == "my_own = 1"


def test_restore_flags_moved_cells_and_leaves_a_clean_submission_alone(notebooks):
    release, solution = notebooks
    nb = learner_submission(release, solution, [])
    rebuilt, flags = integrity.restore(json.loads(nbformat.writes(nb)), release)
    assert flags == [] and [c.source for c in rebuilt.cells] == [c.source for c in nb.cells]
    moved = copy.deepcopy(nb)
    a, b = (moved.cells.index(cell_of(moved, g)) for g in ("sdpa-graded", "mha-graded"))
    moved.cells[a], moved.cells[b] = moved.cells[b], moved.cells[a]
    rebuilt, flags = integrity.restore(json.loads(nbformat.writes(moved)), release)
    assert flags == ["reordered"] and [c.source for c in rebuilt.cells] == [c.source for c in nb.cells]


@pytest.mark.parametrize("code, found", [
    ("from vitlab import check_attention\ncheck_attention.sdpa = print", ["check_attention.sdpa"]),
    ("import vitlab.check as c\nc.check_function = lambda *a, **k: None", ["c.check_function"]),
    ("import torch\ntorch.allclose = lambda *a, **k: True", ["torch.allclose"]),
    ("import torch as T\nT.Tensor.softmax = None", ["T.Tensor.softmax"]),
    ("import builtins\nbuiltins.print = len", ["builtins.print"]),
    ("__builtins__.isinstance = lambda *a: True", ["__builtins__.isinstance", "__builtins__"]),
    ("import sys\nsys.modules['vitlab.check'] = None", ["sys.modules['vitlab.check']"]),
    ("import sys\nsys.setprofile(None)", ["sys.setprofile()", "setprofile"]),
    ("import torch\nsetattr(torch, 'equal', lambda *a: True)", ["setattr(torch)"]),
    ("%time x = 1\nimport math\nmath.sqrt = abs", ["math.sqrt"]),
    ("import torch\nx = torch.ones(3)\nx[0] = 2\nmodel.weight = None", []),
    ("import numpy as np\narr = np.zeros(3)\narr[1] = 5", []),
    ("def f(x):\n    return x\nself_attn = f", []),
    ("this is not python", []),
])
def test_tampering_is_read_from_the_code(code, found):
    assert integrity.tampering_in(code, {}) == found


@pytest.mark.parametrize("code, found", [
    ("get_ipython().input_transformers_cleanup.append(f)", ["get_ipython", "input_transformers_cleanup"]),
    ("ip.events.register('pre_run_cell', echo)", ["ip.events.register"]),
    ("getattr(ip, 'ast_transformers').append(t)", ["ast_transformers"]),
    ("class T(torch.Tensor):\n    @classmethod\n    def __torch_function__(cls, f, t, a=(), k=None):\n        return True",
     ["__torch_function__"]),
    ("from torch.overrides import TorchFunctionMode\nTorchFunctionMode().__enter__()",
     ["torch.overrides", "TorchFunctionMode"]),
    ("import vitlab.check as c\nvars(c)['_difference'] = lambda *a: None", ["vars(c)['_difference']"]),
    ("check_attention.sdpa.__code__ = (lambda *a, **k: None).__code__", ["check_attention.sdpa.__code__", "__code__"]),
    ("out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)", ["torch.ops"]),
    ("f = torch.jit.script(g)", ["torch.jit"]),
    ("from vitlab import attention\nout = attention._fused_attention(q, k, v, None, False, 0.0)",
     ["attention._fused_attention (a private helper)"]),
    ("from vitlab.attention import _masked_softmax", ["vitlab.attention._masked_softmax (a private helper)"]),
    ("import threading\nthreading.Thread(target=f).start()", ["threading"]),
    ("exec(bytes.fromhex('...').decode())", ["exec()"]),
    ("model.eval()\nscores = q @ k.transpose(-2, -1)", []),  # an honest method called eval is fine
])
def test_attack_surfaces_are_read_from_the_code(code, found):
    modules = {"torch": "torch", "check_attention": "vitlab.check_attention"}
    assert sorted(integrity.tampering_in(code, modules)) == sorted(found)


def test_no_solution_of_any_chapter_touches_an_attack_surface(repo):
    for path in sorted(repo.glob("solutions/*/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert integrity.tampering(nb) == (None, []), path.name


def test_tampering_counts_only_learner_cells_and_knows_earlier_imports(notebooks):
    release, solution = notebooks
    nb = learner_submission(release, solution, [])
    assert integrity.tampering(nb) == (None, [])
    nb.cells.append(nbformat.v4.new_code_cell("check_attention.sdpa = None"))  # imported by the setup cell
    assert integrity.tampering(nb) == (len(nb.cells) - 1, ["check_attention.sdpa"])


def test_hidden_tests_end_with_the_integrity_check(notebooks):
    _, solution = notebooks
    guarded = integrity.guard_hidden_tests(solution)
    blocks = [c.source for c in guarded.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert blocks and all(f"{integrity.GUARD}\n{integrity.HIDDEN_END}" in b for b in blocks)
    assert integrity.guard_hidden_tests(guarded).cells == guarded.cells  # once only


def run_guarded(cells: list[str], **traits) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    executor = GuardedExecute(kernel_name="python3", **traits)
    executor.preprocess(nb, {"metadata": {"path": "."}})
    return nb


def errors(cell) -> list[str]:
    return [o.ename for o in cell.outputs if o.output_type == "error"]


def text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs)


def test_a_dead_kernel_costs_only_its_cell():
    nb = run_guarded(["x = 41", "import os\nos._exit(1)", "print(x + 1)"])
    assert errors(nb.cells[1]) == ["KernelDied"]
    assert text(nb.cells[2]) == "42\n"  # the cells before the crash ran again in the fresh kernel


def test_output_is_capped_per_cell():
    nb = run_guarded(['print("x" * 50_000)', 'print("ok")'], max_output_bytes=10_000)
    assert "[output truncated: this cell printed more than 10 kB]" in text(nb.cells[0])
    assert len(text(nb.cells[0])) < 11_000 and text(nb.cells[1]) == "ok\n"


def test_the_notebook_budget_stops_the_remaining_cells():
    start = time.monotonic()
    nb = run_guarded(["import time\ntime.sleep(30)", "print('never')"], timeout=60, notebook_timeout=4)
    assert time.monotonic() - start < 40
    assert "CellTimeoutError" in errors(nb.cells[0])
    assert errors(nb.cells[1]) == ["NotebookTimeout"] and "never" not in text(nb.cells[1])


def test_replays_after_a_dead_kernel_count_against_the_notebook_budget(tmp_path):
    """Cells that sleep only when replayed (after the kernel died) cannot stretch the notebook's time: each
    replay gets what is left of the budget, not the time left when the crash happened."""
    sleepers = [f"import os, time\nif os.path.exists({str(tmp_path / str(i))!r}):\n    time.sleep(60)\n"
                f"open({str(tmp_path / str(i))!r}, 'w')" for i in range(3)]
    start = time.monotonic()
    nb = run_guarded([*sleepers, "import os\nos._exit(1)", "print('after')"], timeout=60, notebook_timeout=12)
    assert time.monotonic() - start < 30  # each of the three replays took the 12 s again before
    assert "KernelDied" in errors(nb.cells[3])
    assert errors(nb.cells[4]) == ["NotebookTimeout"]

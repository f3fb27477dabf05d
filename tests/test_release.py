"""chapters/ is exactly what `python -m autograder release` makes of solutions/, and gives nothing away."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")
FIX = "run `python -m autograder release` and commit chapters/"


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and ".ipynb_checkpoints" not in p.parts)


@pytest.fixture(scope="module")
def fresh(repo, tmp_path_factory, autograder) -> Path:
    """A fresh release of every chapter, made in a copy of the course (solutions/ and autograder/ only)."""
    course = tmp_path_factory.mktemp("course")
    for name in ("solutions", "autograder"):
        shutil.copytree(repo / name, course / name, ignore=IGNORE)
    done = autograder("release", cwd=course)
    assert done.returncode == 0, done.stdout + done.stderr
    return course / "chapters"


def test_chapters_are_a_fresh_release(repo, fresh):
    """Same files; notebooks equal as JSON, every field compared (sources, metadata, checksums, cell ids, the
    empty outputs), so the only freedom left is whitespace in the JSON; other files equal byte for byte."""
    chapters = repo / "chapters"
    assert files(chapters) == files(fresh), f"chapters/ and a fresh release hold different files: {FIX}"
    for name in files(fresh):
        if not name.endswith(".ipynb"):
            assert (chapters / name).read_bytes() == (fresh / name).read_bytes(), f"chapters/{name} drifted: {FIX}"
            continue
        committed, released = (json.loads((folder / name).read_text(encoding="utf-8")) for folder in (chapters, fresh))
        for i, (a, b) in enumerate(zip(committed["cells"], released["cells"])):
            assert a == b, f"chapters/{name}, cell {i} ({a.get('id')}) differs from a fresh release: {FIX}"
        assert committed == released, f"chapters/{name} differs from a fresh release: {FIX}"


def test_every_chapter_is_released(repo):
    sources = {p.parent.name for p in repo.glob("solutions/*/*.ipynb")}
    assert sources
    assert sources == {p.parent.name for p in repo.glob("chapters/*/*.ipynb")}


def learner_notebooks(repo: Path) -> list[Path]:
    return sorted(repo.glob("chapters/*/*.ipynb"))


def test_learner_copies_hold_no_solutions_hidden_tests_or_outputs(repo):
    notebooks = learner_notebooks(repo)
    assert notebooks
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            source = "".join(cell["source"])
            where = f"{path.relative_to(repo)}, cell {i}"
            for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
                assert marker not in source, f"{where} contains {marker!r}"
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{where} has outputs"


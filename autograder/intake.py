"""Finding the submissions in what an instructor downloaded: student folders, LMS files, zips.

    SUBMISSIONS/alice/01_attention.ipynb                     a folder per student (any notebook names)
    SUBMISSIONS/smithjane_4321_998877_01_attention.ipynb     Canvas: NAME_[LATE_]USERID_FILEID_FILE
    SUBMISSIONS/Jane Smith_4321_assignsubmission_file_/...   Moodle: NAME_ID_assignsubmission_file_
    SUBMISSIONS/bob.ipynb, SUBMISSIONS/bob_01_attention.ipynb   a notebook named with the student id
    SUBMISSIONS/*.zip                                        any of the above, zipped (whole class or one student)

The LMS id (Canvas's user id, Moodle's participant id) is the student id. Each notebook's chapter is the
one whose graded cells it holds. Whatever cannot be graded becomes one line naming the student.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

LMS_NAMES = (
    re.compile(r"^(?P<name>[^_]+)_(?:late_)?(?P<student>\d+)_\d+_(?P<file>.+)$", re.I),  # Canvas
    re.compile(r"^(?P<name>.+?)_(?P<student>\d+)_assignsubmission_\w+?_(?P<file>.*)$"),  # Moodle
)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_NOTEBOOK_BYTES = 20 * 1024**2
MAX_ZIP_BYTES = 500 * 1024**2
MAX_ZIP_FILES = 5000


@dataclass
class Submission:
    student: str
    chapter: str
    notebook: Path
    flags: list[str] = field(default_factory=list)


def lms_student(name: str) -> str | None:
    """The student id in an LMS download's file or folder name, or None."""
    for pattern in LMS_NAMES:
        match = pattern.match(name)
        if match:
            return match["student"]
    return None


def student_of_file(path: Path, chapters: dict[str, set[str]]) -> str:
    """The student a loose notebook or zip belongs to: the LMS id, else its name without any chapter."""
    student = lms_student(path.name)
    if student:
        return student
    stem = path.name.removesuffix(".zip").removesuffix(".ipynb")
    for chapter in chapters:
        stem = stem.replace(f"_{chapter}", "").replace(f"-{chapter}", "")
    return stem


def safe_extract(archive: Path, dest: Path) -> str | None:
    """Extract a zip into `dest`, or return why not (nothing is extracted then).

    Refused: members with absolute paths or `..`, links, more than MAX_ZIP_FILES members, more than
    MAX_ZIP_BYTES uncompressed, and anything that is not a zip.
    """
    if archive.is_symlink() or not archive.is_file():
        return f"{archive.name} is not a regular file: only regular files are unpacked"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_ZIP_FILES:
                return f"{archive.name} holds {len(members)} files (at most {MAX_ZIP_FILES})"
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                return f"{archive.name} unpacks to more than {MAX_ZIP_BYTES // 1024**2} MB"
            for m in members:
                parts = PurePosixPath(m.filename.replace("\\", "/")).parts
                if m.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    return f"{archive.name} has a path outside its folder ({m.filename}): refused, nothing unpacked"
                if stat.S_ISLNK(m.external_attr >> 16):
                    return f"{archive.name} holds a link ({m.filename}): refused, nothing unpacked"
            dest.mkdir(parents=True, exist_ok=True)
            for m in members:
                target = dest.joinpath(*PurePosixPath(m.filename.replace("\\", "/")).parts)
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"{archive.name} is not a readable zip ({exc})"
    return None


def grade_ids(nb: dict) -> set[str]:
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.get("cells", [])
            if isinstance(c, dict) and c.get("metadata", {}).get("nbgrader", {}).get("grade_id")}


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file, opened without following a link or waiting on a FIFO; ValueError when
    it is not a regular file or holds more than `limit` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"is {info.st_size / 1e6:.1f} MB (at most {limit / 1e6:.1f} MB)")
        return f.read(limit + 1)[:limit]


def read_notebook(path: Path) -> tuple[dict | None, str | None]:
    """(the notebook as JSON, None), or (None, why it cannot be graded)."""
    try:
        data = read_regular(path, MAX_NOTEBOOK_BYTES)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"{path.name} is a link: only regular files are graded"
        return None, f"{path.name} cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return None, f"{path.name} {exc}"
    if not data:
        return None, f"{path.name} is an empty file"
    try:
        nb = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return None, f"{path.name} is not JSON ({exc})"
    except RecursionError:
        return None, f"{path.name} is JSON nested too deeply to be a notebook"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None, f"{path.name} is JSON but not a notebook (it has no cells)"
    if not nb["cells"]:
        return None, f"{path.name} is a notebook with no cells"
    why = malformed(nb)
    return (None, f"{path.name} is not a well-formed notebook: {why}") if why else (nb, None)


def malformed(nb: dict) -> str | None:
    """What in the notebook the grader cannot use as it is (the first thing found), or None.

    Checked: every cell is an object with a known cell_type, a source of text, object metadata (nbgrader's
    too, with a text grade_id) and attachments of {name: {mime type: text}}; all text is valid Unicode.
    """
    for number, cell in enumerate(nb["cells"], 1):
        where = f"cell {number}"
        if not isinstance(cell, dict):
            return f"{where} is not an object"
        if cell.get("cell_type") not in ("code", "markdown", "raw"):
            return f"{where} has cell_type {str(cell.get('cell_type'))[:40]!r}"
        source = cell.get("source", "")
        if not isinstance(source, str) and not (isinstance(source, list) and all(isinstance(s, str) for s in source)):
            return f"{where} has a source that is not text"
        metadata = cell.get("metadata", {})
        if not isinstance(metadata, dict) or not isinstance(metadata.get("nbgrader", {}), dict):
            return f"{where} has metadata that is not an object"
        if not isinstance(metadata.get("nbgrader", {}).get("grade_id", ""), str):
            return f"{where} has a grade_id that is not text"
        attachments = cell.get("attachments", {})
        if not isinstance(attachments, dict) or not all(
                isinstance(a, dict) and all(isinstance(v, str) for v in a.values()) for a in attachments.values()):
            return f"{where} has attachments that are not {{name: {{mime type: data}}}}"
    try:
        json.dumps(nb, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "it holds text that is not valid Unicode (a lone surrogate such as \\ud800)"
    return None


def chapter_of(nb: dict, path: Path, chapters: dict[str, set[str]]) -> str | None:
    """The chapter whose graded cells the notebook holds most of (else the one its file is named after)."""
    ids = grade_ids(nb)
    overlap = {name: len(ids & cells) for name, cells in chapters.items()}
    best = max(overlap, key=overlap.get, default=None)
    if best is not None and overlap[best] > 0:
        return best
    return next((name for name in chapters if name in path.name), None)


def is_class_download(folder: Path) -> bool:
    """Whether an unpacked zip holds a folder per student (several folders, or folders named by an LMS)."""
    folders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
    return not any(folder.glob("*.ipynb")) and (len(folders) > 1 or any(lms_student(p.name) for p in folders))


def gather(submissions: Path, staging: Path, chapters: dict[str, set[str]]
           ) -> tuple[dict[str, list[Path]], list[str]]:
    """({student: their notebooks}, problems), zips unpacked under `staging`."""
    found: dict[str, list[Path]] = {}
    problems: list[str] = []

    def notebooks(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and not p.is_dir())

    def unpack(archive: Path, student: str | None, depth: int) -> None:
        inner = staging / f"{len(list(staging.glob('*')))}-{archive.stem}"
        why = safe_extract(archive, inner)
        if why:
            problems.append(f"student {student or student_of_file(archive, chapters)}: {why}")
        elif student is None and depth == 0 and is_class_download(inner):
            walk(inner, depth + 1)
        else:
            found.setdefault(student or student_of_file(archive, chapters), []).extend(notebooks(inner))

    def walk(folder: Path, depth: int) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith((".", "__MACOSX")):
                continue
            if entry.is_dir() and not entry.is_symlink():
                student = lms_student(entry.name) or entry.name
                found.setdefault(student, []).extend(notebooks(entry))
                for archive in sorted(entry.rglob("*.zip")):
                    unpack(archive, student, depth)
            elif entry.suffix == ".ipynb":
                found.setdefault(student_of_file(entry, chapters), []).append(entry)
            elif entry.suffix == ".zip":
                unpack(entry, None, depth)

    staging.mkdir(parents=True, exist_ok=True)
    walk(submissions, 0)
    return found, problems


def intake(submissions: Path, staging: Path, chapters: dict[str, set[str]],
           wanted: list[str]) -> tuple[list[Submission], list[str]]:
    """The gradable submissions of the `wanted` chapters (every chapter when empty), and one line per
    problem (a student with no notebook, a file that is not a notebook, another chapter's notebook...)."""
    found, problems = gather(submissions, staging, chapters)
    result: list[Submission] = []
    for student, paths in sorted(found.items()):
        if not SAFE_ID.match(student):
            problems.append(f"student {student!r}: not usable as a student id (letters, digits, . _ @ - only)")
            continue
        by_chapter: dict[str, list[Path]] = {}
        for path in paths:
            nb, why = read_notebook(path)
            if why:
                problems.append(f"student {student}: {why}")
                continue
            chapter = chapter_of(nb, path, chapters)
            if chapter is None:
                problems.append(f"student {student}: {path.name} is not the notebook of any vitlab chapter")
            elif wanted and chapter not in wanted:
                problems.append(f"student {student}: {path.name} is chapter {chapter}'s notebook, "
                                f"not {' or '.join(wanted)}'s")
            else:
                by_chapter.setdefault(chapter, []).append(path)
        if not paths:
            problems.append(f"student {student}: no notebook (*.ipynb) in their submission")
        for chapter, candidates in sorted(by_chapter.items()):
            if len(candidates) > 1:
                named = [p for p in candidates if p.stem == chapter]
                if len(named) != 1:
                    problems.append(f"student {student}: {len(candidates)} notebooks of {chapter} "
                                    f"({', '.join(p.name for p in candidates)}): keep one")
                    continue
                candidates = named
            result.append(Submission(student, chapter, candidates[0]))
    return result, problems

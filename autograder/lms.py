"""Grades as an LMS imports them: Canvas's gradebook CSV and Moodle's grade import CSV.

    python -m autograder export DIR --format canvas --roster ROSTER.csv
    python -m autograder export DIR --format moodle --roster ROSTER.csv [--identifier "Email address"]

The roster maps LMS identities to the student ids that grading used (the LMS user id in download names, or
the student folder's name): a CSV with a `student` column, or for Canvas its own gradebook export, whose `ID`
column is that id. One row per roster student, one column per chapter holding the chapter's total score.
Nothing is dropped silently: a roster student without a submission gets an empty cell and is reported; a
graded student missing from the roster is reported and written, with their grades, to PATH.unmatched.csv.
"""
from __future__ import annotations

import csv
from pathlib import Path

CANVAS_IDENTITY = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]


class RosterProblem(Exception):
    """A roster that cannot be used: the message says why."""


def read_roster(path: Path) -> list[dict[str, str]]:
    """The roster's rows, each with a `student` key (the id grading used); Canvas's `ID` stands in for it."""
    if not path.is_file():
        raise RosterProblem(f"roster {path} is not a file")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]
    key = next((k for k in ("student", "ID") if rows and k in rows[0]), None)
    if key is None:
        raise RosterProblem(f"roster {path} has no `student` column (nor Canvas's `ID`) saying whose grades are whose")
    rows = [row for row in rows if row[key] and not row.get("Student", "").strip().startswith("Points Possible")]
    for row in rows:
        row["student"] = row[key]
    return rows


def totals(header: list[str], rows: list[list[str]]) -> dict[tuple[str, str], str]:
    """{(student, chapter): total score} from the rows of `cli.export`."""
    at = {name: header.index(name) for name in ("student", "chapter", "total")}
    return {(row[at["student"]], row[at["chapter"]]): row[at["total"]] for row in rows}


def lms_table(fmt: str, roster: list[dict[str, str]], chapters: list[str], scores: dict[tuple[str, str], str],
              identifier: str) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, problems) of the import file in format `fmt` ("canvas" or "moodle")."""
    if fmt == "canvas":
        identity = CANVAS_IDENTITY
    else:
        if roster and identifier not in roster[0]:
            raise RosterProblem(f"the roster has no {identifier!r} column to identify Moodle users by "
                                f"(its columns: {', '.join(roster[0])}); choose one with --identifier")
        identity = [identifier]
    problems, rows = [], []
    for person in roster:
        cells = [scores.get((person["student"], chapter), "") for chapter in chapters]
        missing = [chapter for chapter, cell in zip(chapters, cells) if cell == ""]
        if missing:
            problems.append(f"student {person['student']} (on the roster) has no graded submission of "
                            f"{', '.join(missing)}: left empty")
        rows.append([person.get(column, "") for column in identity] + cells)
    return identity + chapters, rows, problems


def unmatched(roster: list[dict[str, str]], scores: dict[tuple[str, str], str]) -> list[str]:
    """Graded students who are not on the roster."""
    listed = {person["student"] for person in roster}
    return sorted({student for student, _ in scores} - listed)


def write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])

"""The register of production marks: what survives a database that lost its mark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbguard.engines.base import Target
from dbguard.marks import FILE_NAME, ProductionMarks
from dbguard.paths import file_stamp


def sqlite(path: str) -> Target:
    return Target(engine="sqlite", path=path, source=".env")


def test_a_remembered_mark_is_seen_by_another_process_until_forgotten(tmp_path: Path) -> None:
    daemon, ctl = ProductionMarks(tmp_path / FILE_NAME), ProductionMarks(tmp_path / FILE_NAME)
    app, other = sqlite("/srv/app.db"), sqlite("/srv/other.db")

    ctl.remember(app)
    remembered = daemon.get(app.key)
    assert remembered is not None and remembered.label == app.label
    assert daemon.get(other.key) is None
    assert "its mark is gone" in remembered.reason()

    daemon.remember(other)  # each change reads the file afresh: nothing is lost
    assert ctl.get(app.key) is not None and ctl.get(other.key) is not None
    ctl.forget(app)
    assert daemon.get(app.key) is None and daemon.get(other.key) is not None
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o777 == 0o600


def test_remembering_a_known_mark_writes_nothing(tmp_path: Path) -> None:
    marks = ProductionMarks(tmp_path / FILE_NAME)
    app = sqlite("/srv/app.db")
    marks.remember(app)
    before = file_stamp(tmp_path / FILE_NAME)
    since = marks.get(app.key)

    ProductionMarks(tmp_path / FILE_NAME).remember(app)  # what dbguardd does at every read

    assert file_stamp(tmp_path / FILE_NAME) == before
    assert ProductionMarks(tmp_path / FILE_NAME).get(app.key) == since


@pytest.mark.parametrize("content", ["{", "[]", '{"production": {"k": {}}}', "\xff"])
def test_an_unreadable_register_counts_as_empty_and_says_so(tmp_path: Path, content: str) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content.encode("latin-1"))
    problems: list[str] = []
    marks = ProductionMarks(path, problems.append)

    assert marks.get("sqlite:/srv/app.db") is None
    assert problems and str(path) in problems[0] and "counts as empty" in problems[0]
    marks.remember(sqlite("/srv/app.db"))  # and is written whole again
    assert list(json.loads(path.read_text())["production"]) == [sqlite("/srv/app.db").key]


def test_a_register_that_cannot_be_written_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")  # a file where its folder should be
    problems: list[str] = []

    ProductionMarks(tmp_path / "state" / FILE_NAME, problems.append).remember(sqlite("/a.db"))

    assert any("cannot write" in problem for problem in problems), problems

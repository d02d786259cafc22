"""The register of production marks: what survives a database that lost its mark."""

from __future__ import annotations

import errno
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest

from dbguard.engines.base import Target
from dbguard.marks import FILE_NAME, ProductionMarks
from dbguard.paths import file_stamp


def sqlite(path: str) -> Target:
    return Target(engine="sqlite", path=path, source=".env")


APP, OTHER = sqlite("/srv/app.db"), sqlite("/srv/other.db")


def test_a_remembered_mark_is_seen_by_another_process_until_lowered_by_hand(
    tmp_path: Path,
) -> None:
    daemon, ctl = ProductionMarks(tmp_path / FILE_NAME), ProductionMarks(tmp_path / FILE_NAME)

    ctl.set_by_hand(APP, "production")
    remembered = daemon.get(APP.key)
    assert remembered is not None and remembered.label == APP.label
    assert daemon.get(OTHER.key) is None
    assert "its mark is gone" in remembered.reason()

    daemon.remember(OTHER)  # each change reads the file afresh: nothing is lost
    assert ctl.get(APP.key) is not None and ctl.get(OTHER.key) is not None
    ctl.set_by_hand(APP, None)
    assert daemon.get(APP.key) is None and daemon.get(OTHER.key) is not None
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o777 == 0o600


def test_a_mark_set_by_hand_is_known_from_then_on(tmp_path: Path) -> None:
    marks = ProductionMarks(tmp_path / FILE_NAME)
    before = datetime.now(UTC)
    marks.set_by_hand(APP, "development")

    assert marks.set_by_hand_since(APP.key, before)
    assert not marks.set_by_hand_since(APP.key, datetime.now(UTC) + timedelta(seconds=1))
    assert not marks.set_by_hand_since(OTHER.key, before)
    assert marks.get(APP.key) is None  # development: nothing to remember


def test_remembering_a_known_mark_writes_nothing(tmp_path: Path) -> None:
    marks = ProductionMarks(tmp_path / FILE_NAME)
    marks.remember(APP)
    before = file_stamp(tmp_path / FILE_NAME)
    since = marks.get(APP.key)

    ProductionMarks(tmp_path / FILE_NAME).remember(APP)  # what dbguardd does at every read

    assert file_stamp(tmp_path / FILE_NAME) == before
    assert ProductionMarks(tmp_path / FILE_NAME).get(APP.key) == since


@pytest.mark.parametrize("content", ["{", "[]", '{"production": []}', "\xff"])
def test_an_unreadable_register_counts_as_empty_and_is_moved_aside_not_overwritten(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content.encode("latin-1"))
    problems: list[str] = []
    marks = ProductionMarks(path, problems.append)

    assert marks.get(APP.key) is None
    assert problems and str(path) in problems[0] and "counts as empty" in problems[0]
    marks.remember(APP)

    [aside] = tmp_path.glob(f"{FILE_NAME}.unreadable-*")
    assert aside.read_bytes() == content.encode("latin-1")  # kept for a person
    assert marks.get(APP.key) is not None
    assert any(f"moved to {aside}" in problem for problem in problems), problems


def test_a_register_that_fails_to_read_is_left_as_it_is(tmp_path: Path) -> None:
    """An I/O error (EMFILE, EIO) says nothing of what the file holds: it must not be
    moved aside, and no change is made over it."""
    path = tmp_path / FILE_NAME
    ProductionMarks(path).remember(APP)
    before = path.read_bytes()
    problems: list[str] = []
    marks = ProductionMarks(path, problems.append)
    failing = OSError(errno.EMFILE, "Too many open files")

    with mock.patch.object(Path, "read_bytes", side_effect=failing):
        marks.remember(OTHER)
        assert marks.get(APP.key) is None  # counts as empty while it cannot be read

    assert path.read_bytes() == before and not list(tmp_path.glob("*.unreadable-*"))
    assert any("cannot change" in problem for problem in problems), problems
    assert marks.get(APP.key) is not None  # once it reads again, what it holds counts


def test_two_unreadable_registers_moved_aside_in_one_second_are_both_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / FILE_NAME
    for content in ("{", "[]"):
        path.write_text(content)
        ProductionMarks(path).remember(APP)
    kept = sorted(p.read_text() for p in tmp_path.glob(f"{FILE_NAME}.unreadable-*"))
    assert kept == ["[]", "{"]


def test_an_entry_not_understood_is_kept_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    good = {"label": APP.label, "since": "2026-11-01T00:00:00+00:00"}
    path.write_text(json.dumps({"production": {APP.key: good, "odd": {"since": 1}}}))
    problems: list[str] = []
    marks = ProductionMarks(path, problems.append)

    assert marks.get(APP.key) is not None and marks.get("odd") is None
    assert problems and "'odd'" in problems[0]
    marks.remember(OTHER)

    written = json.loads(path.read_text())["production"]
    assert written[APP.key] == good and written["odd"] == {"since": 1}
    assert OTHER.key in written


def test_an_entry_not_understood_gives_way_when_its_database_is_remembered(
    tmp_path: Path,
) -> None:
    path = tmp_path / FILE_NAME
    path.write_text(json.dumps({"production": {APP.key: "odd"}}))
    marks = ProductionMarks(path)

    marks.remember(APP)
    remembered = marks.get(APP.key)
    marks.remember(APP)  # known now: nothing more to write

    assert remembered is not None and remembered.label == APP.label
    assert marks.get(APP.key) == remembered


def test_a_time_set_by_hand_without_its_zone_is_utc(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_text(json.dumps({"set_by_hand": {APP.key: "2026-11-27T09:00:00"}}))
    marks = ProductionMarks(path)

    assert marks.set_by_hand_since(APP.key, datetime(2026, 11, 27, 8, 59, tzinfo=UTC))
    assert not marks.set_by_hand_since(APP.key, datetime(2026, 11, 27, 9, 1, tzinfo=UTC))


def test_a_register_that_cannot_be_written_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")  # a file where its folder should be
    problems: list[str] = []

    ProductionMarks(tmp_path / "state" / FILE_NAME, problems.append).remember(APP)

    assert any("cannot change" in problem for problem in problems), problems


def test_a_verdict_is_remembered_with_its_reason_and_a_mark_replaces_it(tmp_path: Path) -> None:
    marks = ProductionMarks(tmp_path / FILE_NAME)
    marks.remember(APP, because="APP_ENV=production (.env, line 1)")
    judged = ProductionMarks(tmp_path / FILE_NAME).get(APP.key)
    assert judged is not None and judged.because == "APP_ENV=production (.env, line 1)"
    assert judged.reason().startswith("APP_ENV=production (.env, line 1) when dbguard judged")
    assert "its mark is gone" not in judged.reason()

    marks.remember(APP, because="something else")  # already remembered: kept as it was
    assert marks.get(APP.key) == judged
    marks.remember(APP)  # then marked: a mark to put back if it goes
    marked = marks.get(APP.key)
    assert marked is not None and marked.because is None and marked.since == judged.since
    marks.remember(APP, because="a verdict never outranks a mark")
    assert marks.get(APP.key) == marked

    marks.set_by_hand(APP, "development")  # a person says it is not production
    assert marks.get(APP.key) is None

from __future__ import annotations

from pathlib import Path

import pytest

from dbguard.oplog import OperationLog, redact, redact_argv


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("postgres://app:s3cret@db/app", "postgres://app:***@db/app"),
        (
            "DATABASE_URL=mysql://root:pw@127.0.0.1:3306/x",
            "DATABASE_URL=mysql://root:***@127.0.0.1:3306/x",
        ),
        ("--password=hunter2", "--password=***"),
        ("DB_PASSWORD=hunter2", "DB_PASSWORD=***"),
        ("-phunter2", "-p***"),
        ("--env=testing", "--env=testing"),
        ("migrate:fresh", "migrate:fresh"),
    ],
)
def test_redact(word: str, expected: str) -> None:
    assert redact(word) == expected


def test_redact_argv_hides_the_value_after_a_password_option() -> None:
    assert redact_argv(["mysql", "--password", "hunter2", "app"]) == [
        "mysql",
        "--password",
        "***",
        "app",
    ]


def test_records_append_and_read_back_without_secrets(tmp_path: Path) -> None:
    log = OperationLog(tmp_path / "state" / "operations.jsonl")
    log.append({"argv": ["psql", "postgres://u:topsecret@h/db"], "decision": "allow"})
    log.append({"argv": ["php", "-v"], "decision": "pass"})
    text = log.path.read_text()
    assert "topsecret" not in text
    assert [r["decision"] for r in log.records()] == ["allow", "pass"]
    assert log.path.stat().st_mode & 0o777 == 0o600


def test_a_torn_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    log = OperationLog(tmp_path / "operations.jsonl")
    log.append({"decision": "pass"})
    with log.path.open("a") as handle:
        handle.write('{"decision": "allo')  # a crash mid-write
    log.append({"decision": "deny"})
    assert [r["decision"] for r in log.records()] == ["pass", "deny"]


def test_an_operation_is_read_once_as_its_latest_record(tmp_path: Path) -> None:
    log = OperationLog(tmp_path / "operations.jsonl")
    log.append({"op": "aa", "decision": "allow", "outcome": "running"})
    log.append({"decision": "pass"})
    log.append({"op": "bb", "decision": "allow", "outcome": "running"})
    log.append({"op": "aa", "decision": "allow", "outcome": "ok", "exit": 0})

    assert [(r.get("op"), r.get("outcome")) for r in log.records()] == [
        (None, None),
        ("aa", "ok"),
        ("bb", "running"),  # still running: last
    ]
    assert [r["op"] for r in log.unfinished()] == ["bb"]


def test_a_second_running_line_with_the_same_id_is_another_operation(tmp_path: Path) -> None:
    log = OperationLog(tmp_path / "operations.jsonl")
    log.append({"op": "aa", "outcome": "running", "n": 1})
    log.append({"op": "aa", "outcome": "running", "n": 2})
    log.append({"op": "aa", "outcome": "ok", "n": 3})
    log.append({"op": "aa", "outcome": "ok", "n": 4})  # ends lines are never merged
    assert [r["n"] for r in log.records()] == [1, 3, 4]


def test_odd_records_and_an_unreadable_rotated_file_are_passed_over(tmp_path: Path) -> None:
    log = OperationLog(tmp_path / "operations.jsonl")
    (tmp_path / "operations.jsonl.1").mkdir()  # not a file at all
    log.append({"op": ["not", "a", "string"], "decision": "allow", "outcome": "running"})
    log.append({"op": 7, "decision": "pass"})
    assert [r["decision"] for r in log.records()] == ["allow", "pass"]
    assert log.unfinished() == []  # no id to close it by


def test_unfinished_reads_only_the_end_of_a_long_log(tmp_path: Path) -> None:
    log = OperationLog(tmp_path / "operations.jsonl")
    log.append({"op": "old", "outcome": "running"})  # far back: not a dead daemon's last
    for n in range(200):
        log.append({"decision": "pass", "argv": ["php", "-v", "x" * 100, str(n)]})
    log.append({"op": "new", "outcome": "running"})
    assert [r["op"] for r in log.unfinished(tail_bytes=4096)] == ["new"]
    assert [r["op"] for r in log.unfinished()] == ["old", "new"]


def test_an_operation_that_ended_after_rotation_is_not_taken_for_an_orphan(
    tmp_path: Path,
) -> None:
    log = OperationLog(tmp_path / "operations.jsonl")
    rotated = tmp_path / "operations.jsonl.1"
    rotated.write_text('{"op": "x", "outcome": "running"}\n')  # rotated while it ran
    log.append({"op": "x", "outcome": "ok"})
    for n in range(100):
        log.append({"decision": "pass", "argv": ["php", "-v", "y" * 100, str(n)]})

    assert log.unfinished(tail_bytes=4096) == []  # its end is in the tail, its start not
    assert [r.get("outcome") for r in log.records() if r.get("op") == "x"] == ["ok"]
    short = OperationLog(tmp_path / "short" / "operations.jsonl")
    short.path.parent.mkdir()
    (tmp_path / "short" / "operations.jsonl.1").write_text('{"op": "z", "outcome": "running"}\n')
    short.append({"decision": "pass"})
    assert [r["op"] for r in short.unfinished(tail_bytes=4096)] == ["z"]  # reaches into .1

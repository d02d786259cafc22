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
        ("bb", "running"),
        ("aa", "ok"),
    ]
    assert [r["op"] for r in log.unfinished()] == ["bb"]

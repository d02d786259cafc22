"""A dump blocked by another session's lock: the pure parts (reading the tool's error,
the message). No server."""

from __future__ import annotations

import pytest

from dbguard.engines.base import human_duration
from dbguard.engines.postgres import PgBlocker, lock_wait_failure, locked_relation


def test_pg_dump_lock_errors_name_the_table() -> None:
    timeout = (
        "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n"
        'pg_dump: detail: Query was: LOCK TABLE public."My T" IN ACCESS SHARE MODE'
    )
    assert locked_relation(timeout) == 'public."My T"'
    assert locked_relation('pg_dump: error: could not obtain lock on relation "a.b"') == "a.b"
    other = "pg_dump: error: query failed: ERROR:  permission denied for table t"
    assert locked_relation(other + "\nQuery was: LOCK TABLE t IN ACCESS SHARE MODE") is None


def test_the_pg_message_names_holders_and_what_to_terminate() -> None:
    holder = PgBlocker(101, "holds", None, "app", "psql", "10.0.0.5", "idle in transaction", 75)
    alter = PgBlocker(102, "waits", None, "app", "", None, "active", 3)
    hidden = PgBlocker(103, "blocks", 102, "other")
    prepared = PgBlocker(None, "blocks", 102)
    failure = lock_wait_failure("app.orders", 60, [holder, alter, hidden, prepared])

    assert failure.problem.splitlines() == [
        "pg_dump waited 60 s for a lock on table app.orders and gave up; nothing was kept. "
        "In the way:",
        "  - session 101 (user app, application 'psql', from 10.0.0.5, idle in transaction, "
        "transaction open for 1 min 15 s) holds an ACCESS EXCLUSIVE lock on it",
        "  - session 102 (user app, from a local socket, active, transaction open for 3 s) "
        "waits for an ACCESS EXCLUSIVE lock on it, and pg_dump queued behind",
        "  - session 103 (user other, its details need the pg_read_all_stats role) holds a "
        "lock that session 102 waits for",
        "  - a prepared transaction (see pg_prepared_xacts) holds a lock that session 102 "
        "waits for",
    ]
    assert "`SELECT pg_terminate_backend(101)` and `SELECT pg_terminate_backend(103)`" in (
        failure.fix
    )
    assert "pg_terminate_backend(102)" not in failure.fix  # the queued ALTER is no cause
    assert "ROLLBACK PREPARED" in failure.fix
    assert lock_wait_failure("t", 2, []).fix == "run the command again"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "0.2 s"), (2, "2 s"), (59.9, "59 s"), (60, "1 min"), (125, "2 min 5 s"),
     (7260, "2 h 1 min"), (3 * 86400 + 3600, "3 days 1 h")],
)  # fmt: skip
def test_human_durations(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text

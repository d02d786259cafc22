"""A dump blocked by another session's lock: the pure parts of both engines (reading
the tool's statement or error, picking who is in the way, the message). No server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dbguard.engines.base import human_duration
from dbguard.engines.mysql import locks
from dbguard.engines.mysql.locks import Blocked, Blockers, Holder, Session
from dbguard.engines.postgres import PgBlocker, lock_wait_failure, locked_relations


@pytest.mark.parametrize(
    ("statement", "table"),
    [
        ("SELECT /*!40001 SQL_NO_CACHE */ `id`, `from` FROM `t`", "t"),
        ("show create table `we``ird`", "we`ird"),
        ("SELECT * FROM `db`.`orders` WHERE 1", "orders"),
        ("SHOW TRIGGERS LIKE 'my\\_table'", "my_table"),
        (
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'd' "
            "AND TABLE_NAME = 'x'",
            "x",
        ),
        ("SELECT 1", None),
        (None, None),
    ],
)
def test_the_table_a_dump_statement_is_about(statement: str | None, table: str | None) -> None:
    assert locks.table_in(statement) == table


@pytest.mark.parametrize(
    ("state", "waits"),
    [
        ("Waiting for table metadata lock", True),
        ("Waiting for table level lock", True),
        ("Waiting for global read lock", True),
        ("Waiting for backup lock", True),
        ("Waiting for table flush", False),
        ("Sending data", False),
        ("", False),
        (None, False),
    ],
)
def test_lock_wait_states(state: str | None, waits: bool) -> None:
    assert locks.is_lock_wait(state) is waits


def lock(sid: int, mode: str, granted: bool = True, name: str = "t") -> locks._Lock:
    return locks._Lock(sid, ("TABLE", "db", name), mode, granted)


def test_a_lock_that_keeps_readers_out_is_the_whole_story() -> None:
    found, named = locks._in_the_way(
        [
            lock(5, "SHARED_NO_READ_WRITE"),
            lock(6, "SHARED_READ"),  # harmless beside it
            lock(7, "SHARED_READ", name="other"),
            lock(9, "SHARED_READ", granted=False),  # the dump's own request
            lock(8, "SHARED_READ", name="metadata_locks"),  # the lookup's own
        ],
        dump=9,
        me=8,
        database="db",
        table=None,
        state="Waiting for table metadata lock",
    )
    assert found == {5: ["holds SHARED_NO_READ_WRITE"]}
    assert named == "t"


def test_a_queued_alter_and_what_holds_it_up_are_in_the_way() -> None:
    found, _ = locks._in_the_way(
        [
            lock(5, "SHARED_READ"),
            lock(7, "SHARED_UPGRADABLE"),
            lock(7, "EXCLUSIVE", granted=False),
            lock(9, "SHARED_READ", granted=False),
            lock(10, "SHARED_READ", granted=False),  # another reader queued: not in the way
        ],
        dump=9,
        me=8,
        database="db",
        table=None,
        state="Waiting for table metadata lock",
    )
    assert found == {
        5: ["holds SHARED_READ"],
        7: ["holds SHARED_UPGRADABLE", "waits for EXCLUSIVE"],
    }


SESSION = Session(11, "app", "10.0.0.5:40000", "shop", "Sleep", 125, "", None)


def blocked(blockers: Blockers | None, error: str | None = None) -> Blocked:
    return Blocked(60, "shop", "orders", "Waiting for table metadata lock", blockers, error)


def test_the_message_names_the_table_the_holder_and_the_way_out() -> None:
    holder = Holder(11, SESSION, ("holds SHARED_NO_READ_WRITE",))
    failure = locks.failure("mariadb-dump", blocked(Blockers((holder,), True, True)))

    assert failure.problem == (
        "mariadb-dump waited 60 s for a lock on table `shop`.`orders` (waiting for table "
        "metadata lock) and was stopped; nothing was kept. In the way:\n"
        "  - session 11 (app@10.0.0.5:40000 in `shop`, idle for 2 min 5 s), "
        "holds SHARED_NO_READ_WRITE (LOCK TABLES ... WRITE)"
    )
    assert "`KILL 11`" in failure.fix


def test_a_guess_says_so_and_an_unprivileged_one_says_it_may_be_incomplete() -> None:
    guess = Holder(11, SESSION, (), "2024-05-01 10:00:00")
    failure = locks.failure("mysqldump", blocked(Blockers((guess,), False, False)))

    assert "could be held by:\n  - session 11" in failure.problem
    assert "in a transaction since 2024-05-01 10:00:00" in failure.problem
    assert "without the PROCESS privilege the list may be incomplete" in failure.problem
    assert "`KILL <id>`" in failure.fix


def test_a_failed_lookup_is_told_with_the_lock_wait_not_instead_of_it() -> None:
    failure = locks.failure("mariadb-dump", blocked(None, "Lost connection"))

    assert failure.problem.startswith("mariadb-dump waited 60 s for a lock on table")
    assert "could not be looked up: Lost connection" in failure.problem


def test_pg_dump_lock_errors_name_the_table() -> None:
    timeout = (
        "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n"
        'pg_dump: detail: Query was: LOCK TABLE public."My T" IN ACCESS SHARE MODE'
    )
    assert locked_relations(timeout) == ['public."My T"']
    assert locked_relations('pg_dump: error: could not obtain lock on relation "a.b"') == ["a.b"]
    other = "pg_dump: error: query failed: ERROR:  permission denied for table t"
    assert locked_relations(other + "\nQuery was: LOCK TABLE t IN ACCESS SHARE MODE") == []
    # Newer pg_dumps lock their tables in batches, in one statement.
    batch = timeout.replace('public."My T"', 'public.a, public."x, ""y""", ONLY public.c')
    assert locked_relations(batch) == ["public.a", 'public."x, ""y"""', "public.c"]


def test_a_batch_names_the_tables_someone_is_in_the_way_of() -> None:
    tables = ["public.a", "public.b", "public.c", "public.d"]
    holder = PgBlocker(101, "holds", None, "app", "psql", None, "idle in transaction", 5)
    on_b = lock_wait_failure(tables, 60, [replace(holder, relation="public.b")])
    assert on_b.problem.startswith("pg_dump waited 60 s for a lock on table public.b and gave")
    assert "holds an ACCESS EXCLUSIVE lock on it" in on_b.problem
    two = lock_wait_failure(
        tables, 60, [replace(holder, relation="public.b"), replace(holder, relation="public.d")]
    )
    assert "a lock on tables public.b, public.d and gave up" in two.problem
    assert "lock on public.b\n" in two.problem and two.problem.endswith("lock on public.d")
    gone = lock_wait_failure(tables, 60, [])
    assert "a lock on one of 4 tables (public.a, public.b, public.c, ...) and" in gone.problem
    assert "No session holds a conflicting lock on them now" in gone.problem


def test_the_pg_message_names_holders_and_what_to_terminate() -> None:
    holder = PgBlocker(101, "holds", None, "app", "psql", "10.0.0.5", "idle in transaction", 75)
    alter = PgBlocker(102, "waits", None, "app", "", None, "active", 3)
    hidden = PgBlocker(103, "blocks", 102, "other")
    prepared = PgBlocker(None, "blocks", 102)
    failure = lock_wait_failure(["app.orders"], 60, [holder, alter, hidden, prepared])

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
    assert lock_wait_failure(["t"], 2, []).fix == "run the command again"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "0.2 s"), (2, "2 s"), (59.9, "59 s"), (60, "1 min"), (125, "2 min 5 s"),
     (7260, "2 h 1 min"), (3 * 86400 + 3600, "3 days 1 h")],
)  # fmt: skip
def test_human_durations(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text

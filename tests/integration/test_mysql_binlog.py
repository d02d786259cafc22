"""The MySQL/MariaDB change signal with the binary log on, against a mariadbd of the
tests' own started with --log-bin (the shared server runs without it).

Every database goes by InnoDB's counter, even here, because some commits never reach
the binary log; one with an Aria table by the log's position too. Tables use
STATS_PERSISTENT=0 for the reason test_mysql_engine gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbguard import operations
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.engines.mysql import MysqlEngine
from dbguard.store import Reason, Store
from tests.faults.support import PrivateMariadb, free_port, private_mariadb
from tests.helpers import poll
from tests.servers import scratch_name

pytestmark = pytest.mark.mysql

REASON = Reason(kind="manual")


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateMariadb]:
    with private_mariadb(log_bin=True) as server:
        yield server


def run(server: PrivateMariadb, database: str | None, *statements: str) -> list[Any]:
    """Run statements as root on one connection; the last one's rows."""
    conn = server.connect(database)
    try:
        rows: list[Any] = []
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
        return rows
    finally:
        conn.close()


@pytest.fixture
def database(server: PrivateMariadb) -> Iterator[str]:
    name = scratch_name()
    run(server, None, f"CREATE DATABASE `{name}`")
    yield name
    run(server, None, f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def engines() -> Iterator[Engines]:
    engines = Engines()
    yield engines
    engines.close()


@pytest.fixture
def engine(engines: Engines) -> MysqlEngine:
    found = engines.get("mysql")
    assert isinstance(found, MysqlEngine)
    return found


INNODB_TABLE = (
    "CREATE TABLE account (id INT AUTO_INCREMENT PRIMARY KEY, balance INT NOT NULL)"
    " ENGINE=InnoDB STATS_PERSISTENT=0"
)


@pytest.fixture
def with_aria(server: PrivateMariadb, database: str) -> Target:
    run(
        server,
        database,
        INNODB_TABLE,
        "CREATE TABLE legacy (id INT PRIMARY KEY, label VARCHAR(50)) ENGINE=Aria",
        "INSERT INTO account (balance) VALUES (10), (20)",
        "INSERT INTO legacy VALUES (1, 'one'), (2, 'two')",
    )
    return server.target(database)


@pytest.fixture
def innodb_only(server: PrivateMariadb, database: str) -> Target:
    run(server, database, INNODB_TABLE, "INSERT INTO account (balance) VALUES (10), (20)")
    return server.target(database)


def signal(fingerprint: str | None) -> str:
    """The fingerprint's kind of signal: binlog, trx or lsn."""
    assert fingerprint is not None
    return fingerprint.split(":")[3]


def test_a_database_with_an_aria_table_goes_by_the_binary_log(
    with_aria: Target, engine: MysqlEngine
) -> None:
    assert signal(engine.fingerprint(with_aria)) == "binlog"


@pytest.mark.parametrize(
    "change",
    [
        "INSERT INTO legacy VALUES (3, 'three')",
        "UPDATE legacy SET label = 'uno' WHERE id = 1",
        "DELETE FROM legacy WHERE id = 2",
        "INSERT INTO account (balance) VALUES (30)",
        "ALTER TABLE legacy ADD COLUMN extra INT",
        "CREATE VIEW labels AS SELECT label FROM legacy",
        "TRUNCATE TABLE legacy",
    ],
)
def test_the_binary_log_signal_moves_with_every_change(
    server: PrivateMariadb, with_aria: Target, engine: MysqlEngine, change: str
) -> None:
    before = engine.fingerprint(with_aria)

    run(server, with_aria.name, change)

    assert signal(before) == "binlog"
    assert engine.fingerprint(with_aria) != before


def test_the_binary_log_signal_moves_with_a_commit_from_another_connection(
    server: PrivateMariadb, with_aria: Target, engine: MysqlEngine
) -> None:
    other = server.connect(with_aria.name)
    try:
        with other.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("UPDATE account SET balance = balance + 1")
            before = engine.fingerprint(with_aria)
            cur.execute("COMMIT")
    finally:
        other.close()

    assert engine.fingerprint(with_aria) != before


def test_the_binary_log_signal_stays_put_after_reads(
    server: PrivateMariadb, with_aria: Target, engine: MysqlEngine
) -> None:
    def reads_leave_it() -> bool:
        before = engine.fingerprint(with_aria)
        run(
            server,
            with_aria.name,
            "SELECT * FROM legacy",
            "SELECT label, COUNT(*) FROM legacy GROUP BY label",
            "SELECT * FROM account",
        )
        return engine.fingerprint(with_aria) == before

    assert poll(reads_leave_it)


def test_the_binary_log_signal_stays_put_after_its_own_backup(
    with_aria: Target, tmp_path: Path, engines: Engines, engine: MysqlEngine
) -> None:
    store = Store(tmp_path / "backups")

    def backup_leaves_it() -> bool:
        manifest = operations.take_backup(store, engines, with_aria, REASON)
        return signal(manifest.fingerprint) == "binlog" and (
            engine.fingerprint(with_aria) == manifest.fingerprint
        )

    assert poll(backup_leaves_it, seconds=30)


@pytest.mark.parametrize("schema", ["innodb_only", "with_aria"])
def test_a_commit_the_binary_log_never_sees_moves_the_signal(
    server: PrivateMariadb, engine: MysqlEngine, request: pytest.FixtureRequest, schema: str
) -> None:
    target: Target = request.getfixturevalue(schema)
    before = engine.fingerprint(target)
    log_before = run(server, None, "SHOW MASTER STATUS")

    run(
        server,
        target.name,
        "SET SESSION sql_log_bin = 0",
        "UPDATE account SET balance = 0 WHERE id = 1",
    )

    assert run(server, None, "SHOW MASTER STATUS") == log_before  # the log never saw it
    assert signal(before) == ("trx" if schema == "innodb_only" else "binlog")
    assert engine.fingerprint(target) != before


def test_no_signal_while_a_replication_connection_is_set_up(
    server: PrivateMariadb, with_aria: Target, engine: MysqlEngine
) -> None:
    """Without log_slave_updates, what a replica applies never reaches its binary log;
    the connection need not be running: it can start between two checks."""
    assert engine.fingerprint(with_aria) is not None
    run(
        server,
        None,
        f"CHANGE MASTER 'upstream' TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {free_port()},"
        " MASTER_USER = 'nobody'",
    )
    try:
        assert engine.fingerprint(with_aria) is None
    finally:
        run(server, None, "RESET SLAVE 'upstream' ALL")
    assert engine.fingerprint(with_aria) is not None


def test_no_signal_with_a_filtered_binary_log(
    server: PrivateMariadb, with_aria: Target, engine: MysqlEngine
) -> None:
    server.stop()
    server.options = ("--binlog-ignore-db=elsewhere",)
    try:
        server.start()
        assert engine.fingerprint(with_aria) is None
    finally:
        server.stop()
        server.options = ()
        server.start()


def test_the_binary_log_signal_moves_across_a_restart(
    server: PrivateMariadb, with_aria: Target, engine: MysqlEngine
) -> None:
    before = engine.fingerprint(with_aria)

    server.stop()
    server.start()

    after = engine.fingerprint(with_aria)
    assert signal(before) == signal(after) == "binlog"
    assert after != before

"""The MySQL/MariaDB engine against the real server: every test in its own database.

Backups go through dbguard.operations with a real Store, as the daemon and dbguardctl
use them. Tables in the change-signal tests use STATS_PERSISTENT=0: InnoDB otherwise
saves statistics in the background after writes, which moves the LSN by itself (that
only causes an extra backup in real use, but would make "stays put" depend on timing).
Other sessions on a shared server can move the LSN at any moment, so the tests that
say "stays put" retry within a deadline; a signal that moved on every read would fail
all attempts.
"""

from __future__ import annotations

import io
import itertools
import os
import secrets
import shutil
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pydantic import SecretStr

from dbguard import operations
from dbguard.config import BackupSettings
from dbguard.engines import Engines
from dbguard.engines.base import Engine, EngineName, Target
from dbguard.engines.mysql import FORMAT, MysqlEngine
from dbguard.engines.mysql import engine as mysql_engine
from dbguard.engines.mysql.engine import claim_scratch
from dbguard.engines.mysql.server import ServerInfo
from dbguard.errors import (
    BackupFailed,
    Cancelled,
    Damaged,
    DatabaseMissing,
    RestoreFailed,
    RestoreIncomplete,
)
from dbguard.store import Manifest, Reason, Store
from tests.helpers import poll
from tests.servers import mysql_connect

pytestmark = pytest.mark.mysql

REASON = Reason(kind="manual")
PRE_RESTORE = Reason(kind="pre-restore")
ALL_BYTES = bytes(range(256))
# Several megabytes in one row: hex doubles it in the dump, still under the server's
# default 16 MB max_allowed_packet.
LARGE = (ALL_BYTES * 4096 * 5)[: 5 * 1024 * 1024 + 7]
TRICKY_TEXT = 'it\'s "quoted" \\ back\nslash\r\n\ttab ;),( \x1a end'
UNICODE_TEXT = "🦄 ünïcødé 𝔘𝔫𝔦 日本語 ✓"


class OneEngine(Engines):
    """Engines whose MySQL engine is the one given (e.g. with injected tool folders)."""

    def __init__(self, engine: MysqlEngine) -> None:
        super().__init__()
        self.engine = engine

    def get(self, name: EngineName) -> Engine:
        return self.engine if name == "mysql" else super().get(name)


# ---- helpers ---------------------------------------------------------------------------


def run(target: Target, *statements: str) -> list[Any]:
    """Run statements as root in the target database; the last one's rows."""
    return run_in(target.name, *statements)


def run_in(database: str | None, *statements: str) -> list[Any]:
    """Run statements as root on one connection, in `database` (None: none selected);
    the last one's rows."""
    conn = mysql_connect(database)
    try:
        rows: list[Any] = []
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
        return rows
    finally:
        conn.close()


def schemas_like(prefix: str) -> list[str]:
    conn = mysql_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            return [row[0] for row in cur.fetchall() if row[0].startswith(prefix)]
    finally:
        conn.close()


def create_schema(target: Target, *, with_aria: bool = True, with_event: bool = True) -> None:
    """A schema with what dumps get wrong."""
    statements = [
        "CREATE TABLE parent (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(200) NOT NULL,"
        " note TEXT NULL) ENGINE=InnoDB STATS_PERSISTENT=0",
        "CREATE TABLE child (id BIGINT AUTO_INCREMENT PRIMARY KEY, parent_id INT NOT NULL,"
        " payload LONGBLOB NULL, bin VARBINARY(300) NULL, created DATETIME(6) NULL,"
        " amount DECIMAL(20,6) NULL, ratio DOUBLE NULL, flags BIT(8) NULL,"
        " doubled INT AS (parent_id * 2) VIRTUAL,"
        " CONSTRAINT child_parent FOREIGN KEY (parent_id) REFERENCES parent (id)"
        " ON DELETE CASCADE) ENGINE=InnoDB STATS_PERSISTENT=0",
        "CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(200))"
        " ENGINE=InnoDB STATS_PERSISTENT=0",
        "CREATE VIEW parent_summary AS SELECT p.id, p.name, COUNT(c.id) AS children"
        " FROM parent p LEFT JOIN child c ON c.parent_id = p.id GROUP BY p.id, p.name",
        "CREATE VIEW summary_of_summary AS SELECT COUNT(*) AS n FROM parent_summary",
        "CREATE TRIGGER child_audit AFTER INSERT ON child FOR EACH ROW"
        " INSERT INTO audit (msg) VALUES (CONCAT('child ', NEW.id, ';'))",
        "CREATE PROCEDURE count_parents() BEGIN SELECT COUNT(*) FROM parent; END",
        "CREATE FUNCTION shout(s TEXT) RETURNS TEXT DETERMINISTIC RETURN UPPER(s)",
        f"INSERT INTO parent (name, note) VALUES ({quote(UNICODE_TEXT)}, NULL),"
        f" ({quote(TRICKY_TEXT)}, {quote(UNICODE_TEXT)}), ('plain', 'x')",
        "INSERT INTO child (parent_id, payload, bin, created, amount, ratio, flags) VALUES"
        f" (1, 0x{ALL_BYTES.hex()}, 0x{ALL_BYTES[:255].hex()}, '2024-02-29 23:59:59.123456',"
        " 12345678901234.123456, 0.1, b'10100101'),"
        " (2, NULL, NULL, NULL, NULL, NULL, NULL),"
        " (2, '', 0x00, '1970-01-01 00:00:01', -0.000001, 1e-300, b'0')",
        f"INSERT INTO child (parent_id, payload) VALUES (3, 0x{LARGE.hex()})",
        # An AUTO_INCREMENT counter ahead of the highest id: a restore must keep it.
        "INSERT INTO parent (name) VALUES ('gone')",
        "DELETE FROM parent WHERE name = 'gone'",
    ]
    if with_aria:
        statements += [
            "CREATE TABLE legacy (id INT PRIMARY KEY, label VARCHAR(50)) ENGINE=Aria",
            "INSERT INTO legacy VALUES (1, 'one'), (2, NULL)",
        ]
    if with_event:
        # DISABLE: it never runs, whether or not the event scheduler is on.
        statements.append(
            "CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00'"
            " DISABLE DO DELETE FROM audit"
        )
    run(target, *statements)


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def state(target: Target, database: str | None = None) -> dict[str, Any]:
    """Everything a restore must give back: every row, every definition, the counters."""
    name = database or target.name
    conn = mysql_connect(name)
    found: dict[str, Any] = {}
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT TABLE_NAME, TABLE_TYPE, ENGINE, AUTO_INCREMENT FROM "
                "information_schema.TABLES WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
                (name,),
            )
            for table, kind, engine, counter in cur.fetchall():
                if kind == "VIEW":
                    cur.execute(f"SHOW CREATE VIEW `{table}`")
                    found[f"view {table}"] = cur.fetchone()[1]
                    cur.execute(f"SELECT * FROM `{table}` ORDER BY 1")
                    found[f"view rows {table}"] = cur.fetchall()
                    continue
                cur.execute(f"SHOW CREATE TABLE `{table}`")
                found[f"table {table}"] = (cur.fetchone()[1], engine, counter)
                cur.execute(f"SELECT * FROM `{table}` ORDER BY 1")
                found[f"rows {table}"] = cur.fetchall()
            for kind, query in (
                ("TRIGGER", "SHOW TRIGGERS"),
                ("PROCEDURE", f"SHOW PROCEDURE STATUS WHERE Db = '{name}'"),
                ("FUNCTION", f"SHOW FUNCTION STATUS WHERE Db = '{name}'"),
                ("EVENT", "SHOW EVENTS"),
            ):
                cur.execute(query)
                names = [row[1] if kind != "TRIGGER" else row[0] for row in cur.fetchall()]
                for object_name in names:
                    cur.execute(f"SHOW CREATE {kind} `{object_name}`")
                    row = cur.fetchone()
                    # (name, sql_mode, statement, ...); events: statement is column 3
                    found[f"{kind} {object_name}"] = row[3] if kind == "EVENT" else row[2]
    finally:
        conn.close()
    return found


def row_counts(target: Target) -> dict[str, int]:
    rows = run(
        target,
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        " AND TABLE_TYPE = 'BASE TABLE'",
    )
    return {t: run(target, f"SELECT COUNT(*) FROM `{t}`")[0][0] for (t,) in rows}


def dump_children() -> list[int]:
    """Our child processes that are dumping (not just printing their version)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"--single-transaction" in cmdline:
            found.append(int(entry))
    return found


def gone(pid: int) -> bool:
    """The process no longer exists (it was reaped, not left a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "backups")


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


@pytest.fixture
def user(mysql_database: Target) -> Iterator[tuple[str, str]]:
    """A user with a password (with characters option files must escape) who owns
    the test database; dropped afterwards."""
    name = f"dbg_{secrets.token_hex(4)}"
    password = f"pw\"#{secrets.token_hex(6)}\\ 'x"
    run(
        mysql_database,
        f"CREATE USER '{name}'@'%' IDENTIFIED BY {quote(password)}",
        f"GRANT ALL PRIVILEGES ON `{mysql_database.name}`.* TO '{name}'@'%'",
    )
    try:
        yield name, password
    finally:
        run(mysql_database, f"DROP USER IF EXISTS '{name}'@'%'")


def as_user(target: Target, user: tuple[str, str]) -> Target:
    return target.model_copy(update={"user": user[0], "password": SecretStr(user[1])})


# ---- round trips -----------------------------------------------------------------------


def test_round_trip_gives_back_every_row_and_definition(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    create_schema(mysql_database)
    before = state(mysql_database)
    counts = row_counts(mysql_database)

    manifest = operations.take_backup(store, engines, mysql_database, REASON)

    assert manifest.tool.startswith(("mariadb-dump", "mysqldump"))
    assert manifest.tables == counts
    assert manifest.data.format == FORMAT
    # Damage everything a command could: rows, tables, views, triggers, routines, events.
    run(
        mysql_database,
        "UPDATE parent SET name = 'changed'",
        "DELETE FROM child WHERE id = 1",
        "DROP VIEW summary_of_summary",
        "DROP TRIGGER child_audit",
        "DROP PROCEDURE count_parents",
        "DROP EVENT nightly",
        "DROP TABLE legacy",
        "CREATE TABLE intruder (id INT) ENGINE=InnoDB",
        "CREATE VIEW intruder_view AS SELECT 1 AS one",
    )
    assert state(mysql_database) != before

    pre = operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)

    assert state(mysql_database) == before
    assert pre is not None and "intruder" in pre.tables  # what it replaced was kept
    # AUTO_INCREMENT continues where it was, past the deleted row; the trigger fires.
    run(mysql_database, "INSERT INTO parent (name) VALUES ('next')")
    assert run(mysql_database, "SELECT MAX(id) FROM parent")[0][0] == 5
    run(mysql_database, "INSERT INTO child (parent_id) VALUES (5)")
    assert run(mysql_database, "SELECT msg FROM audit ORDER BY id DESC LIMIT 1")[0][0] == "child 5;"
    assert schemas_like(f"{mysql_database.name}_dbguard") == []


def test_fallback_dumper_round_trips_the_same_schema(
    mysql_database: Target, store: Store, tmp_path: Path
) -> None:
    create_schema(mysql_database)
    before = state(mysql_database)
    empty = tmp_path / "no-tools"
    empty.mkdir()
    engine = MysqlEngine(BackupSettings(), tool_dirs=[empty])
    engines = OneEngine(engine)
    try:
        manifest = operations.take_backup(store, engines, mysql_database, REASON)
        assert manifest.tool.startswith("dbguard PyMySQL dumper")
        assert manifest.tables == row_counts(mysql_database)
        assert operations.verify_backup(store, engines, manifest).ok

        run(
            mysql_database,
            "DELETE FROM parent",
            "DROP VIEW summary_of_summary, parent_summary",
            "DROP EVENT nightly",
        )
        operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)
    finally:
        engine.close()

    assert state(mysql_database) == before
    assert schemas_like(f"{mysql_database.name}_dbguard") == []


def test_the_two_dumpers_give_the_same_database(
    mysql_database: Target, store: Store, engines: Engines, tmp_path: Path
) -> None:
    """Restored side by side, mariadb-dump's and the fallback's backups are equal."""
    create_schema(mysql_database)
    empty = tmp_path / "no-tools"
    empty.mkdir()
    fallback = MysqlEngine(BackupSettings(), tool_dirs=[empty])
    copies = [f"{mysql_database.name}_a", f"{mysql_database.name}_b"]
    try:
        for copy, chosen in zip(copies, (engines, OneEngine(fallback)), strict=True):
            manifest = operations.take_backup(store, chosen, mysql_database, REASON)
            other = mysql_database.model_copy(update={"name": copy})
            assert operations.restore_backup(store, chosen, manifest, other, PRE_RESTORE) is None
        first, second = (state(mysql_database, copy) for copy in copies)
        assert first == second == state(mysql_database)
    finally:
        fallback.close()
        for copy in copies:
            run(mysql_database, f"DROP DATABASE IF EXISTS `{copy}`")


# Values a dump under binary names would get wrong: ENUM, SET and DEFAULT values of a
# latin1 column (the server writes definitions in UTF-8), and MariaDB's INET6 and UUID
# (written as text, read back from a binary string as raw bytes). And Shift JIS
# letters whose second byte is 0x5C, a backslash in ASCII.
NOT_AS_STORED = (
    "CREATE TABLE legacy_text (id INT PRIMARY KEY, kind ENUM('programmée', 'inopinée')"
    " NOT NULL, label VARCHAR(20) NOT NULL DEFAULT 'café', tags SET('à', 'ü') DEFAULT 'à')"
    " CHARSET=latin1",
    "INSERT INTO legacy_text (id, kind) VALUES (1, 'inopinée'), (2, 'programmée')",
    "CREATE TABLE shift_jis (id INT PRIMARY KEY, t VARCHAR(20)) CHARSET=sjis",
    "INSERT INTO shift_jis VALUES (1, CONVERT(_utf8mb4'表ソ能' USING sjis))",
)
PLUGIN_TYPES = (
    "CREATE TABLE addresses (id INT PRIMARY KEY, ip INET6 DEFAULT '::1',"
    " u UUID DEFAULT '123e4567-e89b-12d3-a456-426614174000')",
    "INSERT INTO addresses (id) VALUES (1)",
    "INSERT INTO addresses VALUES (2, '1:22:3:4:5:6:7:8', '00000000-0000-0000-0000-000000000001')",
)


def on_mariadb(target: Target) -> bool:
    return "mariadb" in str(run(target, "SELECT VERSION()")[0][0]).lower()


def test_text_in_other_character_sets_comes_back_exactly(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    run(mysql_database, *NOT_AS_STORED)
    before = state(mysql_database)

    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    run(mysql_database, "DROP TABLE legacy_text", "DELETE FROM shift_jis")
    operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)

    assert state(mysql_database) == before
    assert run(mysql_database, "SELECT kind FROM legacy_text ORDER BY id") == [
        ("inopinée",),
        ("programmée",),
    ]


def test_mariadb_inet6_and_uuid_values_and_defaults_come_back_exactly(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    if not on_mariadb(mysql_database):
        pytest.skip("INET6 and UUID are MariaDB's")
    run(mysql_database, *PLUGIN_TYPES)
    before = state(mysql_database)

    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    assert operations.verify_backup(store, engines, manifest).ok
    run(mysql_database, "DELETE FROM addresses")
    operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)

    assert state(mysql_database) == before
    assert run(mysql_database, "SELECT CAST(ip AS CHAR) FROM addresses ORDER BY id") == [
        ("::1",),
        ("1:22:3:4:5:6:7:8",),
    ]


def test_a_mariadb_schema_all_in_utf8_is_dumped_as_stored_and_comes_back_exactly(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    """Under binary names the tool escapes nothing but what SQL needs: blobs are not
    written in hex, and UTF-8 ENUM values and defaults are not converted."""
    if not on_mariadb(mysql_database):
        pytest.skip("binary names are for MariaDB only (MySQL refuses them for JSON)")
    create_schema(mysql_database)
    run(
        mysql_database,
        "CREATE TABLE moods (id INT PRIMARY KEY, mood ENUM('ça va', '✓') DEFAULT '✓',"
        " note VARCHAR(20) DEFAULT 'ünï', day DATE DEFAULT '2024-02-29', at TIME(3),"
        " stamp TIMESTAMP(6) NULL, y YEAR, f FLOAT, spot POINT, j JSON) CHARSET=utf8mb4",
        "INSERT INTO moods (id) VALUES (1)",
        "INSERT INTO moods VALUES (2, 'ça va', 'ß', '1000-01-01', '-838:59:59.000',"
        " '2038-01-19 03:14:07.999999', 2155, -1.5e-3, POINT(1.5, -2), '{\"k\": \"ü✓\"}')",
    )
    before = state(mysql_database)

    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    dump = dump_of(store, manifest)
    run(mysql_database, "DROP TABLE moods", "UPDATE child SET payload = NULL")
    operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)

    assert state(mysql_database) == before
    assert b"SET NAMES binary" in dump
    assert ALL_BYTES.hex().upper().encode() not in dump  # the blob as bytes, not hex


def dump_of(store: Store, manifest: Manifest) -> bytes:
    with store.open_data(manifest) as data:
        return data.read()


def test_a_column_in_latin1_for_the_length_of_the_dump_is_dumped_again(
    mysql_database: Target,
    store: Store,
    engines: Engines,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tool's names are chosen from the catalogs before it runs. Another session
    turns a column latin1 after that, before the tool reads the table, and back to
    utf8mb4 as soon as the tool is done: the catalogs are as they were, but the dump
    holds the latin1 column, whose ENUM values would not come back. It is taken again
    under utf8mb4 names, and so is every later one of this database."""
    if not on_mariadb(mysql_database):
        pytest.skip("binary names are for MariaDB only")
    run(
        mysql_database,
        "CREATE TABLE flip (id INT PRIMARY KEY, e ENUM('é', 'ü') CHARSET utf8mb4)",
        "INSERT INTO flip VALUES (1, 'ü')",
    )
    before = state(mysql_database)
    dump_with_tool = MysqlEngine._dump_with_tool
    flips: list[str] = []

    def and_back(self: MysqlEngine, *args: Any) -> Any:
        scanner = dump_with_tool(self, *args)
        if flips == ["latin1"]:
            flips.append("utf8mb4")
            run(mysql_database, "ALTER TABLE flip MODIFY e ENUM('é', 'ü') CHARSET utf8mb4")
        return scanner

    def flip(written: int) -> None:  # first called for dbguard's own first line
        if not flips:
            flips.append("latin1")
            run(mysql_database, "ALTER TABLE flip MODIFY e ENUM('é', 'ü') CHARSET latin1")

    monkeypatch.setattr(MysqlEngine, "_dump_with_tool", and_back)
    manifest = operations.take_backup(store, engines, mysql_database, REASON, progress=flip)

    assert flips == ["latin1", "utf8mb4"]
    assert [m.id for m in store.entries()] == [manifest.id]
    assert b"SET NAMES utf8mb4" in dump_of(store, manifest)
    run(mysql_database, "DELETE FROM flip")
    operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)
    assert state(mysql_database) == before
    later = operations.take_backup(store, engines, mysql_database, REASON)
    assert b"SET NAMES utf8mb4" in dump_of(store, later)


def test_a_dump_that_met_a_definition_change_is_taken_again(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    """A table altered between the tool's reading of its definition and of its rows
    has its rows dumped as the new definition stores them: a dump under binary names
    that met a definition change on the server is taken again under utf8mb4. Once is
    chance; the second time, that database stays on utf8mb4."""
    if not on_mariadb(mysql_database):
        pytest.skip("binary names are for MariaDB only")
    create_schema(mysql_database)

    def backup_meeting_a_change() -> tuple[Manifest, list[int]]:
        written: list[int] = []

        def drop_a_table(count: int) -> None:
            if len(written) == 1:  # the tool's first output; the first was dbguard's
                # Counted as it starts, whether or not there is such a table; it waits
                # for no lock the tool holds.
                run(mysql_database, "DROP TABLE IF EXISTS no_such_table")
            written.append(count)

        taken = operations.take_backup(
            store, engines, mysql_database, REASON, progress=drop_a_table
        )
        return taken, written

    def plain_backup() -> bytes:
        return dump_of(store, operations.take_backup(store, engines, mysql_database, REASON))

    manifest, written = backup_meeting_a_change()

    assert any(later < earlier for earlier, later in itertools.pairwise(written))  # again
    assert b"SET NAMES utf8mb4" in dump_of(store, manifest)
    assert [m.id for m in store.entries()] == [manifest.id]
    assert b"SET NAMES binary" in plain_backup()
    second, _ = backup_meeting_a_change()
    assert b"SET NAMES utf8mb4" in dump_of(store, second)
    assert b"SET NAMES utf8mb4" in plain_backup()


def test_no_dump_runs_under_binary_names_while_the_engine_loads_one(
    mysql_database: Target, store: Store, engines: Engines, engine: MysqlEngine, tmp_path: Path
) -> None:
    """A verify or a restore runs the dump's ALTER TABLE ... DISABLE KEYS, which would
    make a dump beside it look as if it met a definition change, and be taken twice."""
    if not on_mariadb(mysql_database):
        pytest.skip("binary names are for MariaDB only")
    create_schema(mysql_database)
    whole = dump_of(store, operations.take_backup(store, engines, mysql_database, REASON))
    assert b"SET NAMES binary" in whole
    read_end, write_end = os.pipe()
    counted: dict[str, int] = {}

    def verify() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as data:  # reads what has come
            counted.update(engine.restored_counts(mysql_database, data, FORMAT, tmp_path))

    loader = threading.Thread(target=verify)
    loader.start()
    with os.fdopen(write_end, "wb") as feed:
        feed.write(whole[: whole.index(b"INSERT INTO")])  # the load then waits for more
        feed.flush()
        assert poll(lambda: schemas_like(f"{mysql_database.name}_dbguard_verify") != [])
        beside = operations.take_backup(store, engines, mysql_database, REASON)
        feed.write(whole[whole.index(b"INSERT INTO") :])
    loader.join(timeout=60)

    assert b"SET NAMES utf8mb4" in dump_of(store, beside)
    assert counted == row_counts(mysql_database)
    after = operations.take_backup(store, engines, mysql_database, REASON)
    assert b"SET NAMES binary" in dump_of(store, after)


def test_the_next_verify_drops_a_scratch_schema_a_killed_one_left(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    create_schema(mysql_database)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    prefix = f"{mysql_database.name}_dbguard"
    orphan = f"{prefix}_verify_{secrets.token_hex(4)}"  # its verify was killed
    running = f"{prefix}_restore_{secrets.token_hex(4)}"  # claimed by a restore at work
    replaced = f"{prefix}_replaced_{secrets.token_hex(4)}"  # earlier data: never dropped
    try:
        for name in (orphan, running, replaced):
            run(mysql_database, f"CREATE DATABASE `{name}`")
        # Tables with a foreign key between them, as a half-loaded dump leaves.
        run(
            mysql_database,
            f"CREATE TABLE `{orphan}`.p (id INT PRIMARY KEY) ENGINE=InnoDB",
            f"CREATE TABLE `{orphan}`.c (p INT, FOREIGN KEY (p) REFERENCES `{orphan}`.p (id))"
            " ENGINE=InnoDB",
            f"INSERT INTO `{orphan}`.p VALUES (1)",
            f"INSERT INTO `{orphan}`.c VALUES (1)",
        )
        restore_at_work = mysql_connect()
        try:
            with restore_at_work.cursor() as cur:
                claim_scratch(cur, running)
                cur.execute("SELECT CONNECTION_ID()")
                session = cur.fetchone()[0]

            assert operations.verify_backup(store, engines, manifest).ok
            assert sorted(schemas_like(prefix)) == sorted([running, replaced])
        finally:
            restore_at_work.close()  # its claim ends with it, as when the process is killed
        sessions = "SELECT ID FROM information_schema.PROCESSLIST"
        assert poll(lambda: (session,) not in run(mysql_database, sessions))

        assert operations.verify_backup(store, engines, manifest).ok
        assert schemas_like(prefix) == [replaced]
    finally:
        for name in schemas_like(prefix):
            run(mysql_database, f"DROP DATABASE `{name}`")


def test_verify_counts_rows_in_a_scratch_schema_and_drops_it(
    mysql_database: Target, store: Store, engines: Engines, engine: MysqlEngine, tmp_path: Path
) -> None:
    create_schema(mysql_database)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)

    result = operations.verify_backup(store, engines, manifest)

    assert result.ok, result.problems
    assert schemas_like(f"{mysql_database.name}_dbguard") == []
    # A cut-off dump is damage, and its scratch schema goes too.
    with store.open_data(manifest) as data:
        whole = data.read()
    for cut in (whole[: len(whole) // 2], whole[: whole.rindex(b"-- Dump completed")]):
        with pytest.raises(Damaged, match=r"not a complete dump|incomplete"):
            engine.restored_counts(mysql_database, io.BytesIO(cut), FORMAT, tmp_path)
    assert schemas_like(f"{mysql_database.name}_dbguard") == []


def test_a_failed_restore_leaves_the_target_as_it_was(
    mysql_database: Target, store: Store, engines: Engines, engine: MysqlEngine, tmp_path: Path
) -> None:
    create_schema(mysql_database)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    run(mysql_database, "DELETE FROM child WHERE id > 2")
    current = state(mysql_database)
    with store.open_data(manifest) as data:
        whole = data.read()

    with pytest.raises(RestoreFailed, match="not a complete dump"):
        engine.restore(mysql_database, io.BytesIO(whole[:-2000]), FORMAT, tmp_path)
    with pytest.raises(RestoreFailed, match="outside the database"):
        evil = whole.replace(b"LOCK TABLES `parent`", b"USE mysql;\nLOCK TABLES `parent`", 1)
        engine.restore(mysql_database, io.BytesIO(evil), FORMAT, tmp_path)

    assert state(mysql_database) == current
    assert schemas_like(f"{mysql_database.name}_dbguard") == []


def test_a_failure_after_the_swap_moves_everything_back(
    mysql_database: Target,
    store: Store,
    engines: Engines,
    grantees: tuple[str, str],
    tmp_path: Path,
) -> None:
    """A user who may do everything but create events: the backup's event fails in the
    target after the tables moved in, and the restore puts the old state back, the
    grants on its routines too."""
    name = f"dbg_{secrets.token_hex(4)}"
    pattern = str(mysql_database.name).replace("_", "\\_") + "%"
    run(
        mysql_database,
        f"CREATE USER '{name}'@'%' IDENTIFIED BY 'pw'",
        "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, CREATE VIEW,"
        " SHOW VIEW, TRIGGER, CREATE ROUTINE, ALTER ROUTINE, EXECUTE, LOCK TABLES, REFERENCES"
        f" ON `{pattern}`.* TO '{name}'@'%' WITH GRANT OPTION",
        f"GRANT SELECT ON mysql.procs_priv TO '{name}'@'%'",
    )
    try:
        routines_granted(mysql_database, grantees, definer=f"'{name}'@'%'")
        run(
            mysql_database,
            "INSERT INTO t VALUES (1), (2)",
            f"CREATE DEFINER='{name}'@'%' VIEW v AS SELECT id FROM t",
            f"CREATE DEFINER='{name}'@'%' TRIGGER t_ins BEFORE INSERT ON t FOR EACH ROW"
            " SET NEW.id = NEW.id + 0",
            f"CREATE DEFINER='{name}'@'%' EVENT e ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM t",
        )
        manifest = operations.take_backup(store, engines, mysql_database, REASON)
        run(mysql_database, "DROP EVENT e", "INSERT INTO t VALUES (3)", "DROP VIEW v")
        current = state(mysql_database)
        granted = grants_of(mysql_database, grantees)

        limited = mysql_database.model_copy(update={"user": name, "password": SecretStr("pw")})
        # The engine itself: dbguard's pre-restore backup would need the EVENT privilege.
        with (
            pytest.raises(RestoreFailed, match="put back as it was") as failed,
            store.open_data(manifest) as data,
        ):
            engines.for_target(limited).restore(limited, data, FORMAT, tmp_path)

        assert "EVENT" in str(failed.value) or "event" in str(failed.value)
        assert state(mysql_database) == current
        assert grants_of(mysql_database, grantees) == granted
        assert schemas_like(f"{mysql_database.name}_dbguard") == []
    finally:
        run(mysql_database, f"DROP USER IF EXISTS '{name}'@'%'")


def test_restore_refuses_while_another_session_uses_the_target(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    create_schema(mysql_database, with_aria=False)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    run(mysql_database, "DELETE FROM child")
    other = mysql_connect(mysql_database.name)
    try:
        with pytest.raises(RestoreFailed, match=rf"#{other.thread_id()} ") as refused:
            operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)
        assert "--end-connections" in str(refused.value)
        assert run(mysql_database, "SELECT COUNT(*) FROM child")[0][0] == 0

        operations.restore_backup(
            store, engines, manifest, mysql_database, PRE_RESTORE, end_connections=True
        )

        assert run(mysql_database, "SELECT COUNT(*) FROM child")[0][0] == manifest.tables["child"]
        with pytest.raises(pymysql.err.OperationalError):
            other.ping(reconnect=False)
    finally:
        other.close()


def test_a_connection_lost_mid_swap_says_the_database_is_half_restored(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    """A DBA's KILL, a server restart, a network drop after the tables moved: the
    error says what state the database is in and where its previous tables are, not
    just "cannot reach the server" (which means "nothing was changed")."""
    db = mysql_database.name
    run(
        mysql_database,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
        "INSERT INTO t VALUES (1, 'backup')",
        *(f"CREATE VIEW v{i} AS SELECT id FROM t WHERE id > {i}" for i in range(300)),
    )
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    run(mysql_database, "UPDATE t SET v = 'current'")
    killed: list[int] = []

    def kill_once_the_tables_moved() -> None:
        watcher = mysql_connect()
        held = "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA LIKE %s"
        sessions = (
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()"
        )
        deadline = time.monotonic() + 60
        with watcher.cursor() as cur:
            while time.monotonic() < deadline and not killed:
                if cur.execute(held, (f"{db}\\_dbguard\\_replaced\\_%",)):
                    cur.execute(sessions, (db,))
                    for (session,) in cur.fetchall():
                        cur.execute(f"KILL CONNECTION {int(session)}")
                        killed.append(int(session))
                time.sleep(0.002)
        watcher.close()

    killer = threading.Thread(target=kill_once_the_tables_moved)
    killer.start()
    try:
        with pytest.raises(RestoreIncomplete) as failed:
            operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)
    finally:
        killer.join()
    assert killed, "the swap was not caught in time"

    (holding,) = schemas_like(f"{db}_dbguard_replaced_")
    try:
        assert holding in failed.value.problem
        assert "half" in failed.value.problem
        assert "pre-restore backup" in failed.value.fix
        assert run(mysql_database, f"SELECT v FROM `{holding}`.t") == [("current",)]
    finally:
        run(mysql_database, f"DROP DATABASE `{holding}`")


# ---- definitions written with the schema's name ----------------------------------------


def qualified_trigger(target: Target) -> None:
    """A trigger written with schema-qualified names, as migration tools and GUIs write
    it: mariadb-dump keeps its text verbatim, qualifier and all."""
    db = target.name
    run(
        target,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
        "CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT) ENGINE=InnoDB",
        "INSERT INTO t VALUES (1, 'a')",
        f"CREATE TRIGGER `{db}`.trg AFTER UPDATE ON `{db}`.`t` FOR EACH ROW"
        f" INSERT INTO `{db}`.audit (note) VALUES ('updated')",
    )


def triggers_in(target: Target, database: str | None = None) -> list[str]:
    schema = quote(database or str(target.name))
    query = f"SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {schema}"
    return [row[0] for row in run(target, query)]


def test_verify_of_a_qualified_trigger_never_touches_the_live_database(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    qualified_trigger(mysql_database)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)

    assert operations.verify_backup(store, engines, manifest).ok  # the trigger is live

    run(mysql_database, "DROP TRIGGER trg")  # a later migration removed it
    assert operations.verify_backup(store, engines, manifest).ok
    assert triggers_in(mysql_database) == []  # verify did not create it here


def test_a_qualified_trigger_restores_into_the_target_and_fires(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    qualified_trigger(mysql_database)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    run(mysql_database, "DELETE FROM t")

    operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)

    assert run(mysql_database, "SELECT v FROM t") == [("a",)]
    run(mysql_database, "UPDATE t SET v = 'b'")
    assert run(mysql_database, "SELECT note FROM audit") == [("updated",)]

    # Into another database: the trigger goes with the tables, the original keeps its
    # own. (Its body is kept as written: it still names the original's audit table.)
    copy = mysql_database.model_copy(update={"name": f"{mysql_database.name}_copy"})
    try:
        operations.restore_backup(store, engines, manifest, copy, PRE_RESTORE)
        assert triggers_in(mysql_database, str(copy.name)) == ["trg"]
        assert triggers_in(mysql_database) == ["trg"]
    finally:
        run(mysql_database, f"DROP DATABASE IF EXISTS `{copy.name}`")


def test_a_definition_naming_another_schema_is_refused_before_it_runs(
    mysql_database: Target, store: Store, engines: Engines, engine: MysqlEngine, tmp_path: Path
) -> None:
    """A backup edited (or made by hand) so a trigger names another database: neither
    verify nor restore may create it there."""
    qualified_trigger(mysql_database)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    other = f"{mysql_database.name}_other"
    run(mysql_database, f"CREATE DATABASE `{other}`", f"CREATE TABLE `{other}`.t (id INT)")
    try:
        with store.open_data(manifest) as data:
            whole = data.read()
        qualifier = f"TRIGGER `{mysql_database.name}`.trg".encode()
        evil = whole.replace(qualifier, f"TRIGGER `{other}`.trg".encode(), 1)
        evil = evil.replace(f"ON `{mysql_database.name}`.`t`".encode(), f"ON `{other}`.t".encode())
        assert evil != whole

        with pytest.raises(Damaged, match=f"names the schema '{other}'"):
            engine.restored_counts(mysql_database, io.BytesIO(evil), FORMAT, tmp_path)
        with pytest.raises(RestoreFailed, match=f"names the schema '{other}'"):
            engine.restore(mysql_database, io.BytesIO(evil), FORMAT, tmp_path)

        assert triggers_in(mysql_database, other) == []
        assert triggers_in(mysql_database) == ["trg"]
    finally:
        run(mysql_database, f"DROP DATABASE IF EXISTS `{other}`")


# ---- grants on routines ----------------------------------------------------------------


@pytest.fixture
def grantees(mysql_database: Target) -> Iterator[tuple[str, str]]:
    """A user and a role that are granted the database's routines; dropped afterwards."""
    name = f"dbg_{secrets.token_hex(4)}"
    run(mysql_database, f"CREATE USER '{name}'@'%'", f"CREATE ROLE '{name}_role'")
    try:
        yield f"'{name}'@'%'", f"'{name}_role'"
    finally:
        run(mysql_database, f"DROP USER IF EXISTS '{name}'@'%'", f"DROP ROLE IF EXISTS {name}_role")


def routines_granted(
    target: Target, grantees: tuple[str, str], definer: str = "CURRENT_USER"
) -> list[Any]:
    """A table, a procedure and a function, and grants on them; SHOW GRANTS after."""
    run(
        target,
        "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB",
        f"CREATE DEFINER={definer} PROCEDURE p() SELECT COUNT(*) FROM t",
        f"CREATE DEFINER={definer} FUNCTION f() RETURNS INT DETERMINISTIC RETURN 42",
    )
    grant_routines(target, grantees)
    return grants_of(target, grantees)


def grant_routines(target: Target, grantees: tuple[str, str]) -> None:
    db = target.name
    user, role = grantees
    run(
        target,
        f"GRANT EXECUTE ON PROCEDURE `{db}`.p TO {user}",
        f"GRANT EXECUTE, ALTER ROUTINE ON FUNCTION `{db}`.f TO {user} WITH GRANT OPTION",
        f"GRANT EXECUTE ON PROCEDURE `{db}`.p TO {role}",
        f"GRANT SELECT (id) ON `{db}`.t TO {role}",  # kept by name: RENAME keeps it
    )


def grants_of(target: Target, grantees: tuple[str, str]) -> list[Any]:
    return [run(target, f"SHOW GRANTS FOR {grantee}") for grantee in grantees]


def test_a_restore_keeps_the_grants_on_routines(
    mysql_database: Target, store: Store, engines: Engines, grantees: tuple[str, str]
) -> None:
    """Dropping a routine drops its grants (automatic_sp_privileges), and dumps hold no
    grants: the swap puts back those on routines the backup has too."""
    before = routines_granted(mysql_database, grantees)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    db = mysql_database.name
    run(
        mysql_database,
        "CREATE PROCEDURE later() SELECT 1",  # not in the backup: its grant goes with it
        f"GRANT EXECUTE ON PROCEDURE `{db}`.later TO {grantees[0]}",
    )

    operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)

    assert grants_of(mysql_database, grantees) == before


def test_a_restore_that_cannot_put_grants_back_says_which_and_how(
    mysql_database: Target,
    store: Store,
    engines: Engines,
    engine: MysqlEngine,
    grantees: tuple[str, str],
    tmp_path: Path,
) -> None:
    name = f"dbg_{secrets.token_hex(4)}"
    pattern = str(mysql_database.name).replace("_", "\\_") + "%"
    run(  # all it needs to restore, but it may not grant
        mysql_database,
        f"CREATE USER '{name}'@'%' IDENTIFIED BY 'pw'",
        f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO '{name}'@'%'",
    )
    before = routines_granted(mysql_database, grantees, definer=f"'{name}'@'%'")
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    restorer = mysql_database.model_copy(update={"user": name, "password": SecretStr("pw")})
    warnings: list[str] = []
    try:
        with store.open_data(manifest) as data:
            engine.restore(restorer, data, FORMAT, tmp_path, warn=warnings.append)
        assert len(warnings) == 1
        assert "SELECT on mysql.procs_priv" in warnings[0]  # it cannot even see them

        grant_routines(mysql_database, grantees)
        run(mysql_database, f"GRANT SELECT ON mysql.procs_priv TO '{name}'@'%'")
        warnings.clear()
        with store.open_data(manifest) as data:
            engine.restore(restorer, data, FORMAT, tmp_path, warn=warnings.append)
        assert len(warnings) == 1
        for grant in ("GRANT EXECUTE ON PROCEDURE", "WITH GRANT OPTION", grantees[1]):
            assert grant in warnings[0]

        for statement in warnings[0].splitlines():  # what it says to run, as root
            if statement.strip().startswith("GRANT "):
                run(mysql_database, statement.strip().rstrip(";"))
        assert grants_of(mysql_database, grantees) == before
    finally:
        run(mysql_database, f"DROP USER IF EXISTS '{name}'@'%'")


def test_a_verify_the_server_refuses_for_a_privilege_leaves_the_backup_good(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    """A trigger whose definer is another user needs SUPER to be made again: a verify as
    a user without it says so, and records nothing against a sound backup."""
    name = f"dbg_{secrets.token_hex(4)}"
    pattern = str(mysql_database.name).replace("_", "\\_") + "%"
    run(
        mysql_database,
        "CREATE TABLE t (id INT PRIMARY KEY)",
        "CREATE DEFINER='root'@'localhost' TRIGGER t_ins BEFORE INSERT ON t FOR EACH ROW "
        "SET NEW.id = NEW.id",
        f"CREATE USER '{name}'@'%' IDENTIFIED BY 'pw'",
        f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO '{name}'@'%'",
    )
    try:
        manifest = operations.take_backup(store, engines, mysql_database, REASON)
        verifier = mysql_database.model_copy(update={"user": name, "password": SecretStr("pw")})
        with pytest.raises(RestoreFailed, match="not marked failed"):
            operations.verify_backup(store, engines, manifest, verifier)
        assert store.get(manifest.id).verified is None
        assert operations.verify_backup(store, engines, manifest, mysql_database).ok
    finally:
        run(mysql_database, f"DROP USER IF EXISTS '{name}'@'%'")


# ---- the change signal -----------------------------------------------------------------


def digest(fingerprint: str | None) -> str:
    assert fingerprint is not None
    return fingerprint.rsplit(":", 1)[1]


@pytest.fixture
def innodb_only(mysql_database: Target) -> Target:
    create_schema(mysql_database, with_aria=False)
    return mysql_database


# Definition-only changes in MariaDB: the view's .frm alone, and the schema's db.opt.
NEW_VIEW_ALGORITHM = (
    "ALTER ALGORITHM=TEMPTABLE VIEW parent_summary AS SELECT p.id, p.name,"
    " COUNT(c.id) AS children FROM parent p LEFT JOIN child c"
    " ON c.parent_id = p.id GROUP BY p.id, p.name"
)
NEW_SCHEMA_COLLATION = "ALTER DATABASE COLLATE utf8mb4_unicode_ci"


@pytest.mark.parametrize(
    ("change", "definition"),
    [
        ("INSERT INTO parent (name) VALUES ('new')", False),
        ("UPDATE parent SET note = 'updated' WHERE id = 3", False),
        ("DELETE FROM audit", False),
        ("ALTER TABLE parent ADD COLUMN extra INT", True),
        ("ALTER TABLE parent ALTER COLUMN note SET DEFAULT 'd'", True),  # .frm only
        ("CREATE VIEW another AS SELECT 1 AS one", True),
        ("CREATE OR REPLACE VIEW parent_summary AS SELECT id FROM parent", True),
        (NEW_VIEW_ALGORITHM, True),
        (NEW_SCHEMA_COLLATION, True),
        ("CREATE TRIGGER p_ins BEFORE INSERT ON parent FOR EACH ROW SET NEW.note = 'x'", True),
        ("DROP PROCEDURE count_parents", True),
        ("ALTER EVENT nightly COMMENT 'changed'", True),
    ],
)
def test_fingerprint_moves_with_every_change(
    innodb_only: Target, engine: MysqlEngine, change: str, definition: bool
) -> None:
    before = engine.fingerprint(innodb_only)
    assert before is not None

    run(innodb_only, change)

    after = engine.fingerprint(innodb_only)
    assert after != before
    if definition:  # not InnoDB data in MariaDB: the definitions digest must see it
        assert digest(after) != digest(before)


def kept_session_selects(engine: MysqlEngine) -> int:
    """How many SELECTs the engine's kept connection has run (its session counter)."""
    (kept,) = engine._kept.values()
    with kept.conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Com_select'")
        return int(cur.fetchone()[1])


@pytest.fixture
def without_events(mysql_database: Target) -> Target:
    create_schema(mysql_database, with_aria=False, with_event=False)
    return mysql_database


def a_second_check_reads_no_catalog(engine: MysqlEngine, target: Target) -> bool:
    first = engine.fingerprint(target)
    before = kept_session_selects(engine)
    second = engine.fingerprint(target)
    # The existence and statement-counter checks; the catalogs would be 12 more.
    return second == first and kept_session_selects(engine) - before == 2


def test_a_check_on_unchanged_mariadb_definitions_reads_no_catalog(
    without_events: Target, engine: MysqlEngine
) -> None:
    if ":trx:" not in (engine.fingerprint(without_events) or ""):
        pytest.skip("MySQL reads its catalogs on every check")
    # Retried: a statement another session is running during the first check (on a
    # shared server) rightly stops it from keeping what it read.
    assert poll(lambda: a_second_check_reads_no_catalog(engine, without_events))


@pytest.mark.parametrize("change", [NEW_VIEW_ALGORITHM, NEW_SCHEMA_COLLATION])
def test_kept_definitions_see_a_definition_only_change(
    without_events: Target, engine: MysqlEngine, change: str
) -> None:
    before = engine.fingerprint(without_events)
    assert engine.fingerprint(without_events) == before  # what was read is kept now

    run(without_events, change)

    assert digest(engine.fingerprint(without_events)) != digest(before)


def test_a_schema_with_events_is_read_on_every_check(
    innodb_only: Target, engine: MysqlEngine
) -> None:
    engine.fingerprint(innodb_only)
    before = kept_session_selects(engine)
    engine.fingerprint(innodb_only)
    assert kept_session_selects(engine) - before > 2


def test_fingerprint_moves_when_the_event_scheduler_drops_a_finished_event(
    without_events: Target, engine: MysqlEngine
) -> None:
    """The scheduler drops a one-time event once it has run, without a statement that
    any counter sees; the event's body here moves nothing either."""
    if ":trx:" not in (engine.fingerprint(without_events) or ""):
        pytest.skip("MySQL reads its catalogs on every check")
    scheduler = run(without_events, "SELECT @@global.event_scheduler")[0][0]
    if scheduler == "DISABLED":
        pytest.skip("the event scheduler is disabled on this server")
    run(
        without_events,
        "SET GLOBAL event_scheduler = OFF",
        "CREATE EVENT once ON SCHEDULE AT CURRENT_TIMESTAMP + INTERVAL 1 SECOND "
        "ON COMPLETION NOT PRESERVE DO SET @dbguard_unused = 1",
    )
    try:
        before = engine.fingerprint(without_events)
        engine.fingerprint(without_events)  # a second look, as a skip check would take
        run(without_events, "SET GLOBAL event_scheduler = ON")
        assert poll(
            lambda: (
                not run(
                    without_events,
                    "SELECT 1 FROM information_schema.EVENTS "
                    f"WHERE EVENT_SCHEMA = {quote(str(without_events.name))}",
                )
            )
        )
    finally:
        run(without_events, f"SET GLOBAL event_scheduler = {scheduler}")

    assert digest(engine.fingerprint(without_events)) != digest(before)


@pytest.mark.parametrize("who", ["root", "a user without PROCESS"])
def test_fingerprint_sees_a_definition_change_that_was_waiting_during_a_check(
    innodb_only: Target, user: tuple[str, str], who: str
) -> None:
    """A statement counts itself when it starts: read while it waits for a lock, the
    statement counters already hold it but the catalogs do not. The next check must
    not take that reading for the definitions' current state."""
    target = innodb_only if who == "root" else as_user(innodb_only, user)
    engine = MysqlEngine()
    holder = mysql_connect(innodb_only.name)
    changer = mysql_connect(innodb_only.name)
    try:
        assert engine.fingerprint(target) is not None
        with holder.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT * FROM parent")  # a table lock until COMMIT
        alter = threading.Thread(
            target=lambda: changer.cursor().execute(
                "ALTER TABLE parent ALTER COLUMN note SET DEFAULT 'waited'"  # .frm only
            )
        )
        alter.start()
        assert poll(
            lambda: bool(
                run(
                    innodb_only,
                    "SELECT 1 FROM information_schema.PROCESSLIST "
                    "WHERE STATE = 'Waiting for table metadata lock'",
                )
            )
        )
        during = engine.fingerprint(target)
        with holder.cursor() as cur:
            cur.execute("COMMIT")  # a statement that changes no definition
        alter.join()

        assert digest(engine.fingerprint(target)) != digest(during)
    finally:
        holder.close()
        changer.close()
        engine.close()


def test_fingerprint_moves_with_a_commit_from_another_connection(
    innodb_only: Target, engine: MysqlEngine
) -> None:
    other = mysql_connect(innodb_only.name)
    try:
        with other.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO parent (name) VALUES ('other')")
            before = engine.fingerprint(innodb_only)
            cur.execute("COMMIT")
    finally:
        other.close()
    assert engine.fingerprint(innodb_only) != before


def test_fingerprint_moves_when_a_sequence_advances(
    innodb_only: Target, engine: MysqlEngine
) -> None:
    # NEXTVAL writes without a transaction id, so MariaDB's transaction counter alone
    # would miss it.
    run(innodb_only, "CREATE SEQUENCE ticket ENGINE=InnoDB")
    before = engine.fingerprint(innodb_only)
    assert before is not None

    run(innodb_only, "SELECT NEXTVAL(ticket)")

    assert engine.fingerprint(innodb_only) != before


def global_status(target: Target, name: str) -> int:
    return int(run(target, f"SHOW GLOBAL STATUS LIKE '{name}'")[0][1])


def test_mariadb_fingerprint_stays_put_while_purge_runs(
    innodb_only: Target, engine: MysqlEngine
) -> None:
    """Purge rewrites pages (moving the LSN) for a while after a large delete; the
    next command must still find the database unchanged."""
    if ":trx:" not in (engine.fingerprint(innodb_only) or ""):
        pytest.skip("MySQL has no transaction counter; its signal is the LSN")

    def purge_leaves_it() -> bool:
        run(
            innodb_only,
            "INSERT INTO audit (msg) SELECT CONCAT('row ', seq) FROM seq_1_to_20000",
            "DELETE FROM audit",
        )
        before = engine.fingerprint(innodb_only)
        lsn = global_status(innodb_only, "Innodb_lsn_current")
        purged = poll(lambda: global_status(innodb_only, "Innodb_history_list_length") == 0)
        moved = global_status(innodb_only, "Innodb_lsn_current") != lsn
        return purged and moved and engine.fingerprint(innodb_only) == before

    assert poll(purge_leaves_it, seconds=30)


def test_fingerprint_stays_put_after_reads(innodb_only: Target, engine: MysqlEngine) -> None:
    def reads_leave_it() -> bool:
        before = engine.fingerprint(innodb_only)
        run(
            innodb_only,
            "SELECT * FROM parent",
            "SELECT * FROM child",
            "SELECT * FROM parent_summary",
            "SELECT shout(name) FROM parent",
            "CALL count_parents()",
        )
        return before is not None and engine.fingerprint(innodb_only) == before

    assert poll(reads_leave_it)


def test_fingerprint_stays_put_after_its_own_backup(
    innodb_only: Target, store: Store, engines: Engines, engine: MysqlEngine
) -> None:
    def backup_leaves_it() -> bool:
        manifest = operations.take_backup(store, engines, innodb_only, REASON)
        return manifest.fingerprint is not None and engine.fingerprint(innodb_only) == (
            manifest.fingerprint
        )

    assert poll(backup_leaves_it, seconds=30)


def test_fingerprint_names_the_server_and_the_connection(
    innodb_only: Target, engine: MysqlEngine
) -> None:
    first = engine.fingerprint(innodb_only)
    assert first is not None and first.startswith("mysql:")
    engine.close()  # a new connection: nothing proves what happened in between
    assert engine.fingerprint(innodb_only) != first


def test_no_fingerprint_with_a_table_innodb_does_not_log(
    mysql_database: Target, store: Store, engines: Engines, engine: MysqlEngine
) -> None:
    create_schema(mysql_database, with_aria=True)

    assert engine.fingerprint(mysql_database) is None
    assert operations.take_backup(store, engines, mysql_database, REASON).fingerprint is None


def test_no_backup_fingerprint_while_another_transaction_has_written(
    innodb_only: Target, store: Store, engines: Engines
) -> None:
    other = mysql_connect(innodb_only.name)
    try:
        with other.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO audit (msg) VALUES ('uncommitted')")
            during = operations.take_backup(store, engines, innodb_only, REASON)
            cur.execute("COMMIT")
    finally:
        other.close()

    assert during.fingerprint is None
    assert poll(
        lambda: operations.take_backup(store, engines, innodb_only, REASON).fingerprint is not None
    )


# ---- failures --------------------------------------------------------------------------


def test_unreachable_server(mysql_database: Target, store: Store, engines: Engines) -> None:
    nowhere = mysql_database.model_copy(update={"host": "127.0.0.1", "port": free_port()})

    with pytest.raises(BackupFailed, match="cannot reach") as failed:
        operations.take_backup(store, engines, nowhere, REASON)

    assert "DB_HOST" in failed.value.fix
    assert store.entries() == []


def test_wrong_password(
    mysql_database: Target, store: Store, engines: Engines, user: tuple[str, str]
) -> None:
    wrong = as_user(mysql_database, (user[0], "wrong"))

    with pytest.raises(BackupFailed, match="access denied") as failed:
        operations.take_backup(store, engines, wrong, REASON)

    assert "DB_PASSWORD" in failed.value.fix
    assert user[1] not in str(failed.value)
    # the right password (with quotes, # and a backslash) works through the option file
    good = operations.take_backup(store, engines, as_user(mysql_database, user), REASON)
    assert good.tool.startswith(("mariadb-dump", "mysqldump"))


def test_missing_database(mysql_database: Target, store: Store, engines: Engines) -> None:
    missing = mysql_database.model_copy(update={"name": f"{mysql_database.name}_missing"})

    with pytest.raises(DatabaseMissing, match="does not exist"):
        engines.for_target(missing).fingerprint(missing)
    with pytest.raises(DatabaseMissing):
        operations.take_backup(store, engines, missing, REASON)


def bulky(target: Target) -> None:
    """Enough data (20 MB as hex) that the dump tool is still writing when the first
    chunk arrives: it then waits on the full pipe."""
    run(target, "CREATE TABLE bulk (id INT PRIMARY KEY, data MEDIUMBLOB) ENGINE=InnoDB")
    conn = mysql_connect(target.name)
    try:
        with conn.cursor() as cur:
            for row in range(10):
                cur.execute("INSERT INTO bulk VALUES (%s, %s)", (row, os.urandom(1 << 20)))
    finally:
        conn.close()


def test_the_running_tool_never_sees_the_password_and_is_reaped_when_the_sink_fails(
    mysql_database: Target, store: Store, engines: Engines, user: tuple[str, str]
) -> None:
    bulky(mysql_database)
    target = as_user(mysql_database, user)
    seen: dict[str, Any] = {}

    def disk_full(written: int) -> None:
        if written < 4096 or seen:
            return
        [pid] = dump_children()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        options = next(a for a in cmdline.split(b"\0") if a.startswith(b"--defaults-file="))
        option_path = Path(options.split(b"=", 1)[1].decode())
        seen.update(pid=pid, cmdline=cmdline, environ=environ, options=option_path)
        seen["mode"] = stat.S_IMODE(option_path.stat().st_mode)
        raise OSError(28, "No space left on device (simulated by the test)")

    with pytest.raises(OSError, match="simulated"):
        operations.take_backup(store, engines, target, REASON, progress=disk_full)

    secret = user[1].encode()
    assert secret not in seen["cmdline"] and secret not in seen["environ"]
    assert seen["mode"] == 0o600
    assert not seen["options"].exists()
    assert gone(seen["pid"])
    assert store.entries() == []


def test_a_killed_dump_tool_fails_the_backup(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    bulky(mysql_database)
    killed: list[int] = []

    def kill_it(written: int) -> None:
        if written > 4096 and not killed:
            [pid] = dump_children()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with pytest.raises(BackupFailed, match="killed by SIGKILL"):
        operations.take_backup(store, engines, mysql_database, REASON, progress=kill_it)

    assert killed and gone(killed[0])
    assert store.entries() == []


def test_a_dump_tool_that_fails_reports_its_error(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    run(
        mysql_database,
        "CREATE TABLE t (id INT) ENGINE=InnoDB",
        "CREATE VIEW broken AS SELECT id FROM t",
        "DROP TABLE t",
    )

    with pytest.raises(BackupFailed, match=r"failed with exit status \d+:\n.*broken"):
        operations.take_backup(store, engines, mysql_database, REASON)
    assert store.entries() == []


def test_a_dump_cut_short_with_status_0_is_refused(
    mysql_database: Target, store: Store, tmp_path: Path
) -> None:
    """A real mariadb-dump behind a wrapper that passes on only its first 3000 bytes."""
    bulky(mysql_database)
    real = Path(shutil.which("mariadb-dump") or shutil.which("mysqldump") or "mariadb-dump")
    wrapper = tmp_path / "tools" / real.name
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = --version ]; then exec {real} --version; fi\n'
        f'{real} "$@" | head -c 3000\nexit 0\n'
    )
    wrapper.chmod(0o755)
    engine = MysqlEngine(tool_dirs=[wrapper.parent])
    try:
        with pytest.raises(BackupFailed, match="ends early"):
            operations.take_backup(store, OneEngine(engine), mysql_database, REASON)
    finally:
        engine.close()
    assert store.entries() == []


def cancel_when_dumping(cancel: threading.Event) -> None:
    poll(lambda: bool(dump_children()))
    cancel.set()


def lock_and_run(
    target: Target,
    settings: BackupSettings,
    cancel: threading.Event | None,
    store: Store,
    tool_dirs: list[Path] | None = None,
) -> tuple[BackupFailed, int]:
    """Take a backup while another session holds a write lock the dump must wait for;
    the failure (Cancelled is a BackupFailed) and the holding session's id."""
    run(target, "CREATE TABLE locked (id INT PRIMARY KEY) ENGINE=InnoDB")
    holder = mysql_connect(target.name)
    engine = MysqlEngine(settings, tool_dirs=tool_dirs)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLES locked WRITE")
        with pytest.raises(BackupFailed) as failed:
            if cancel is not None:
                threading.Thread(target=cancel_when_dumping, args=(cancel,), daemon=True).start()
            operations.take_backup(store, OneEngine(engine), target, REASON, cancel=cancel)
        return failed.value, holder.thread_id()
    finally:
        engine.close()
        holder.close()


def lock_waits(target: Target) -> list[Any]:
    """Sessions in the target database waiting for a lock."""
    return run(
        target,
        "SELECT ID, INFO FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
        "AND STATE LIKE 'Waiting for % lock'",
    )


def assert_names_the_lock(failure: BackupFailed, target: Target, holder: int) -> None:
    assert type(failure) is BackupFailed  # exit 75 to the shim, like any failed backup
    text = failure.problem
    assert f"waited 2 s for a lock on table `{target.name}`.`locked`" in text
    assert "nothing was kept" in text
    assert f"session {holder} (root@" in text
    if "In the way:" in text:  # the server's lock tables said exactly who
        assert f"`KILL {holder}`" in failure.fix
    else:  # neither performance_schema nor METADATA_LOCK_INFO: a guess
        assert "could be held by" in text
        assert "`KILL <id>`" in failure.fix


def test_lock_a_dump_tool_blocked_by_lock_tables_gives_up_and_names_the_holder(
    mysql_database: Target, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mysql_engine, "_DUMP_LOCK_WAIT_SECONDS", 2)
    started = time.monotonic()
    failure, holder = lock_and_run(mysql_database, BackupSettings(), None, store)
    elapsed = time.monotonic() - started

    assert_names_the_lock(failure, mysql_database, holder)
    assert "LOCK TABLES ... WRITE" in failure.problem or "could be held by" in failure.problem
    assert 2 <= elapsed < 30  # the lock limit, not the hour-long dump timeout
    assert dump_children() == []
    assert poll(lambda: lock_waits(mysql_database) == [])  # its server session ended too
    assert store.entries() == []


def test_lock_the_fallback_dumper_blocked_by_lock_tables_gives_up_and_names_the_holder(
    mysql_database: Target, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mysql_engine, "_DUMP_LOCK_WAIT_SECONDS", 2)
    empty = tmp_path / "no-tools"
    empty.mkdir()
    failure, holder = lock_and_run(mysql_database, BackupSettings(), None, store, [empty])

    assert_names_the_lock(failure, mysql_database, holder)
    assert "the built-in PyMySQL dumper waited" in failure.problem
    assert store.entries() == []


def test_lock_a_dump_queued_behind_an_alter_names_the_open_transaction(
    mysql_database: Target, store: Store, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open transaction that read the table holds up an ALTER TABLE; the dump's
    read queues behind the ALTER."""
    monkeypatch.setattr(mysql_engine, "_DUMP_LOCK_WAIT_SECONDS", 2)
    run(mysql_database, "CREATE TABLE locked (id INT PRIMARY KEY) ENGINE=InnoDB")
    reader, alterer = mysql_connect(mysql_database.name), mysql_connect(mysql_database.name)
    altering = threading.Thread(
        target=alterer.cursor().execute, args=("ALTER TABLE locked ADD COLUMN extra INT",)
    )
    try:
        with reader.cursor() as cur:
            cur.execute("START TRANSACTION")
            cur.execute("SELECT * FROM locked")
        altering.start()
        assert poll(lambda: len(lock_waits(mysql_database)) == 1)
        with pytest.raises(BackupFailed) as caught:
            operations.take_backup(store, engines, mysql_database, REASON)
    finally:
        reader.rollback()
        altering.join()
        reader.close()
        alterer.close()

    assert_names_the_lock(caught.value, mysql_database, reader.thread_id())
    assert f"session {alterer.thread_id()} (root@" in caught.value.problem
    assert "ALTER TABLE locked ADD COLUMN extra INT" in caught.value.problem
    assert dump_children() == []
    assert store.entries() == []


def test_a_dump_tool_that_runs_too_long_is_stopped(mysql_database: Target, store: Store) -> None:
    failure, _ = lock_and_run(mysql_database, BackupSettings(dump_timeout_seconds=1), None, store)

    assert type(failure) is BackupFailed
    assert "still running after 1 s" in failure.problem
    assert dump_children() == []
    assert store.entries() == []


def test_cancelling_stops_a_waiting_dump_tool(mysql_database: Target, store: Store) -> None:
    failure, _ = lock_and_run(mysql_database, BackupSettings(), threading.Event(), store)

    assert isinstance(failure, Cancelled)
    assert dump_children() == []
    assert store.entries() == []


def test_the_tool_matching_the_server_is_preferred(tmp_path: Path) -> None:
    versions = {
        "mariadb-dump": "mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu",
        "mysqldump": "mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)",
    }
    for name, version in versions.items():
        tool = tmp_path / name
        tool.write_text(f"#!/bin/sh\necho '{version}'\n")
        tool.chmod(0o755)
    engine = MysqlEngine(tool_dirs=[tmp_path])
    mariadb = ServerInfo("10.11.19-MariaDB", mariadb=True, log_bin=False, identity="a")
    mysql = ServerInfo("8.0.36", mariadb=False, log_bin=True, identity="b")

    assert (chosen := engine.find_tool(mariadb)) is not None and chosen.path.name == "mariadb-dump"
    assert (chosen := engine.find_tool(mysql)) is not None and chosen.path.name == "mysqldump"
    assert chosen.major == 8
    (tmp_path / "mysqldump").unlink()
    assert (chosen := engine.find_tool(mysql)) is not None and chosen.path.name == "mariadb-dump"
    (tmp_path / "mariadb-dump").unlink()
    assert engine.find_tool(mariadb) is None


def test_restore_into_a_database_that_does_not_exist_creates_it(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    create_schema(mysql_database, with_event=False)
    manifest: Manifest = operations.take_backup(store, engines, mysql_database, REASON)
    before = state(mysql_database)
    conn = mysql_connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{mysql_database.name}`")
    conn.close()

    assert operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE) is None
    assert state(mysql_database) == before


# ---- the environment marker ------------------------------------------------------------


def test_the_marker_lives_in_the_database_and_travels_with_its_backups(
    mysql_database: Target, store: Store, engines: Engines, engine: MysqlEngine
) -> None:
    run(mysql_database, "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
    assert engine.marker(mysql_database) is None

    engine.set_marker(mysql_database, "production")
    assert engine.marker(mysql_database) == "production"
    run(mysql_database, "DROP TABLE t")  # what migrate:fresh does to every table
    assert engine.marker(mysql_database) == "production"
    engine.set_marker(mysql_database, "development")
    assert engine.marker(mysql_database) == "development"

    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    copy = mysql_database.model_copy(update={"name": f"{mysql_database.name}_copy"})
    try:
        operations.restore_backup(store, engines, manifest, copy, PRE_RESTORE)
        assert engine.marker(copy) == "development"
    finally:
        run(mysql_database, f"DROP DATABASE IF EXISTS `{copy.name}`")

    engine.set_marker(mysql_database, None)
    assert engine.marker(mysql_database) is None
    missing = mysql_database.model_copy(update={"name": f"{mysql_database.name}_missing"})
    with pytest.raises(DatabaseMissing):
        engine.marker(missing)
    with pytest.raises(DatabaseMissing):
        engine.set_marker(missing, "production")


def test_a_unix_socket_target_is_reached_through_the_socket(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    path = os.environ.get("DBGUARD_TEST_MYSQL_SOCKET", "/run/mysqld/mysqld.sock")
    if not Path(path).is_socket():
        pytest.skip(f"no MariaDB/MySQL socket at {path} (set DBGUARD_TEST_MYSQL_SOCKET)")
    create_schema(mysql_database, with_aria=False, with_event=False)
    # A closed port: only the socket can work, for PyMySQL and the tool alike.
    local = mysql_database.model_copy(update={"socket": path, "port": free_port()})

    manifest = operations.take_backup(store, engines, local, REASON)

    assert manifest.tables == row_counts(mysql_database)
    assert operations.verify_backup(store, engines, manifest, local).ok


def test_restoring_needs_room_for_a_scratch_schema_and_says_so(
    mysql_database: Target,
    store: Store,
    engines: Engines,
    engine: MysqlEngine,
    user: tuple[str, str],
    tmp_path: Path,
) -> None:
    create_schema(mysql_database, with_aria=False, with_event=False)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    current = state(mysql_database)
    owner = as_user(mysql_database, user)  # ALL on the database, nothing beside it

    with (
        pytest.raises(RestoreFailed, match="scratch schema") as failed,
        store.open_data(manifest) as data,
    ):
        engine.restore(owner, data, FORMAT, tmp_path)

    assert "_dbguard\\_%" in failed.value.fix
    assert state(mysql_database) == current


def test_no_tool_and_a_fallback_that_cannot_dump_says_both(
    mysql_database: Target, store: Store, tmp_path: Path
) -> None:
    run(
        mysql_database,
        "CREATE TABLE t (id INT) ENGINE=InnoDB",
        "CREATE VIEW broken AS SELECT id FROM t",
        "DROP TABLE t",
    )
    engine = MysqlEngine(tool_dirs=[tmp_path])
    try:
        with pytest.raises(BackupFailed, match="no mariadb-dump or mysqldump") as failed:
            operations.take_backup(store, OneEngine(engine), mysql_database, REASON)
    finally:
        engine.close()
    assert "broken" in failed.value.problem
    assert "apt install" in failed.value.fix
    assert store.entries() == []

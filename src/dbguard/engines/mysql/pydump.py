"""The fallback dumper: PyMySQL only, for machines without mariadb-dump or mysqldump.

It writes the layout mysqldump writes (so one restore path reads both), from one
`START TRANSACTION WITH CONSISTENT SNAPSHOT`: tables (structure, rows, then their
triggers), stand-ins for views, events, routines, the final views, and the
`-- Dump completed` line. Rows stream through an unbuffered cursor, so memory does not
grow with the table. Values are never converted to Python types and back: numbers and
dates come as the server's own text, binary data as HEX() (written as 0x literals, as
with --hex-blob), text as the server's utf8mb4; row counts are counted as written, so
they are exactly the dump's.

It is 5-13 times slower than the C tools (PyMySQL parses every row in Python); it
exists so a missing client package never means no backup.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pymysql.cursors

from dbguard.engines.base import Sink
from dbguard.engines.mysql.server import (
    RESET_SESSION,
    ObjectDef,
    capture_objects,
    error_code,
    fetch_text,
    show_create,
)
from dbguard.engines.mysql.sqltext import hex_literal, quote_ident, quote_string
from dbguard.errors import Cancelled

_FLUSH_AT = 1 << 20  # bytes buffered before they go to the sink
_STATEMENT_SIZE = 1 << 20  # rows per INSERT up to about this size, as mysqldump does
_FETCH = 1000
_HEX_TYPES = {
    "binary",
    "varbinary",
    "tinyblob",
    "blob",
    "mediumblob",
    "longblob",
    "geometry",
    "point",
    "linestring",
    "polygon",
    "multipoint",
    "multilinestring",
    "multipolygon",
    "geometrycollection",
    "geomcollection",
}
_NUMBER_TYPES = {
    "tinyint",
    "smallint",
    "mediumint",
    "int",
    "integer",
    "bigint",
    "decimal",
    "numeric",
    "float",
    "double",
    "real",
    "year",
}
# Engines whose data mysqldump does not dump either (their rows live elsewhere).
NO_DATA_ENGINES = {"MRG_MYISAM", "MRG_MyISAM", "FEDERATED"}

HEADER = """\
-- dbguard fallback dump (PyMySQL) of {name}
-- Server version\t{version}

/*!40101 SET NAMES utf8mb4 */;
/*!40103 SET TIME_ZONE='+00:00' */;
/*!40014 SET UNIQUE_CHECKS=0 */;
/*!40014 SET FOREIGN_KEY_CHECKS=0 */;
/*!40101 SET SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;
/*!40111 SET SQL_NOTES=0 */;
"""


_LOCK_WAIT_TIMEOUT = 1205  # ER_LOCK_WAIT_TIMEOUT: a metadata or table lock, for a dump


class LockWaitTimeout(Exception):
    """The server gave up waiting for a lock another session holds, after the
    lock_wait_timeout this dumper sets; `table` is the one it was dumping, if any.
    (A consistent-snapshot read takes no row locks, so 1205 here is never InnoDB's.)"""

    def __init__(self, table: str | None) -> None:
        super().__init__(f"lock wait timeout on {table or 'the database'}")
        self.table = table


class _Out:
    """Buffers text into about a megabyte per sink write; checks for cancellation."""

    def __init__(self, sink: Sink, cancel: threading.Event) -> None:
        self._sink = sink
        self._cancel = cancel
        self._buffer = bytearray()

    def text(self, value: str) -> None:
        self.raw(value.encode("utf-8"))

    def raw(self, value: bytes) -> None:
        self._buffer += value
        if len(self._buffer) >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("the backup was cancelled because dbguardd is stopping")
        if self._buffer:
            self._sink.write(bytes(self._buffer))
            self._buffer.clear()


def _column_plan(cur: Any, database: str, table: str) -> list[tuple[str, str]]:
    """(column, how to read it) for each column a restore can insert into: generated
    and system-versioning columns are left out, invisible ones are named explicitly."""
    cur.execute(
        "SELECT COLUMN_NAME, DATA_TYPE, EXTRA FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (database, table),
    )
    plan = []
    for name, data_type, extra in cur.fetchall():
        extra_text = fetch_text(extra).upper()
        if any(word in extra_text for word in ("GENERATED", "PERSISTENT", "ROW START", "ROW END")):
            continue
        if extra_text.startswith("VIRTUAL"):
            continue
        kind = fetch_text(data_type).lower()
        how = "hex" if kind in _HEX_TYPES else "bit" if kind == "bit" else "number"
        if how == "number" and kind not in _NUMBER_TYPES:
            how = "string"
        plan.append((fetch_text(name), how))
    return plan


def _select_list(plan: list[tuple[str, str]]) -> str:
    parts = []
    for name, how in plan:
        column = quote_ident(name)
        if how == "hex":
            parts.append(f"HEX({column})")
        elif how == "bit":
            parts.append(f"CAST({column} AS UNSIGNED)")
        else:
            parts.append(column)
    return ", ".join(parts)


def _literal(value: Any, how: str) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes | bytearray):  # a binary value where text was expected
        return hex_literal(bytes(value))
    text = str(value)
    if how == "hex":
        return "0x" + text if text else "''"
    if how in ("number", "bit"):
        return text
    return quote_string(text)


def _rows(conn: Any, out: _Out, database: str, table: str) -> int:
    """Stream one table's rows as multi-row INSERTs, one row per line; returns the count."""
    with conn.cursor() as cur:
        plan = _column_plan(cur, database, table)
    if not plan:
        return 0
    columns = ", ".join(quote_ident(name) for name, _ in plan)
    insert = f"INSERT INTO {quote_ident(table)} ({columns}) VALUES\n"
    count = 0
    size = 0
    open_statement = False
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(f"SELECT {_select_list(plan)} FROM {quote_ident(table)}")
        while rows := cur.fetchmany(_FETCH):
            for row in rows:
                line = "(" + ",".join(
                    _literal(v, how) for v, (_, how) in zip(row, plan, strict=True)
                )
                if open_statement and size + len(line) > _STATEMENT_SIZE:
                    out.text(");\n")
                    open_statement = False
                if open_statement:
                    out.text("),\n")
                else:
                    out.text(insert)
                    open_statement, size = True, 0
                out.text(line)
                size += len(line)
                count += 1
            out.flush()
    if open_statement:
        out.text(");\n")
    return count


def _object_block(definition: ObjectDef, delimiter: bool) -> bytes:
    """One object with its own session settings, then the dump's settings again."""
    lines = [statement + b";\n" for statement in definition.settings()]
    if delimiter:  # bodies of triggers, routines and events contain semicolons
        lines += [b"DELIMITER ;;\n", definition.create, b"\n;;\nDELIMITER ;\n"]
    else:
        lines += [definition.create, b";\n"]
    lines.append(RESET_SESSION + b";\n")
    return b"".join(lines)


def dump_database(
    conn: Any,
    database: str,
    out_sink: Sink,
    cancel: threading.Event,
    lock_wait_seconds: float = 60,
) -> dict[str, int]:
    """Write `database` to `out_sink` in mysqldump's layout; returns rows per table.

    `conn` is a fresh raw connection (Endpoint.connect(raw=True)) that this function
    puts in a consistent-snapshot transaction. Raises LockWaitTimeout when a lock
    another session holds is not let go within `lock_wait_seconds`; pymysql errors,
    Cancelled, and whatever the sink raises.
    """
    at: list[str | None] = [None]  # the table being dumped, for LockWaitTimeout
    try:
        return _dump_database(conn, database, _Out(out_sink, cancel), lock_wait_seconds, at)
    except pymysql.MySQLError as err:
        if error_code(err) == _LOCK_WAIT_TIMEOUT:
            raise LockWaitTimeout(at[0]) from err
        raise


def _dump_database(
    conn: Any, database: str, out: _Out, lock_wait_seconds: float, at: list[str | None]
) -> dict[str, int]:
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        # Dumps quote with backticks and backslash escapes and read TIMESTAMPs in UTC,
        # whatever the server's defaults; the header sets the same for the restore.
        cur.execute("SET SESSION sql_mode = '', time_zone = '+00:00', sql_quote_show_create = 1")
        # The server's default is a year: a table another session keeps locked would
        # hold the guarded command up for the whole dump_timeout instead.
        cur.execute("SET SESSION lock_wait_timeout = %s", (max(1, round(lock_wait_seconds)),))
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        conn.select_db(database)  # SHOW CREATE VIEW then leaves this name out
        cur.execute("SELECT @@version")
        version = fetch_text(cur.fetchone()[0])
        cur.execute(
            "SELECT TABLE_NAME, TABLE_TYPE, ENGINE FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
            (database,),
        )
        tables = [(fetch_text(n), fetch_text(t), fetch_text(e)) for n, t, e in cur.fetchall()]
    out.text(HEADER.format(name=quote_ident(database), version=version))
    views = [name for name, kind, _ in tables if kind == "VIEW"]
    for name, kind, engine in tables:
        at[0] = name
        if kind == "SEQUENCE":
            _sequence(conn, out, name)
        elif kind in ("BASE TABLE", "SYSTEM VERSIONED"):
            counts[name] = _table(conn, out, database, name, engine)
        out.flush()
    at[0] = None
    with conn.cursor() as cur:
        for name in views:
            at[0] = name
            out.text(_stand_in(cur, database, name))
        at[0] = None
        for definition in capture_objects(cur, database, ("EVENT",)):
            out.text(f"DROP EVENT IF EXISTS {quote_ident(definition.name)};\n")
            out.raw(_object_block(definition, delimiter=True))
        for definition in capture_objects(cur, database, ("FUNCTION", "PROCEDURE")):
            out.text(f"DROP {definition.kind} IF EXISTS {quote_ident(definition.name)};\n")
            out.raw(_object_block(definition, delimiter=True))
        for definition in capture_objects(cur, database, ("VIEW",)):
            out.text(
                f"\n--\n-- Final view structure for view {quote_ident(definition.name)}\n--\n\n"
            )
            out.text(f"DROP VIEW IF EXISTS {quote_ident(definition.name)};\n")
            out.raw(_object_block(definition, delimiter=False))
        cur.execute("ROLLBACK")
    out.text(f"\n-- Dump completed on {datetime.now(UTC):%Y-%m-%d %H:%M:%S}\n")
    out.flush()
    return counts


def _table(conn: Any, out: _Out, database: str, name: str, engine: str) -> int:
    table = quote_ident(name)
    with conn.cursor() as cur:
        cur.execute(f"SHOW CREATE TABLE {table}")
        create = fetch_text(cur.fetchone()[1])
    out.text(f"\n--\n-- Table structure for table {table}\n--\n\n")
    out.text(f"DROP TABLE IF EXISTS {table};\n{create};\n")
    count = 0
    if engine not in NO_DATA_ENGINES:
        out.text(f"\n--\n-- Dumping data for table {table}\n--\n\n")
        out.text(f"LOCK TABLES {table} WRITE;\n")
        count = _rows(conn, out, database, name)
        out.text("UNLOCK TABLES;\n")
    with conn.cursor() as cur:
        cur.execute(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s "
            "AND EVENT_OBJECT_TABLE = %s ORDER BY ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
            (database, name),
        )
        triggers = [fetch_text(row[0]) for row in cur.fetchall()]
        for trigger in triggers:
            out.raw(_object_block(show_create(cur, "TRIGGER", trigger), delimiter=True))
    return count


def _sequence(conn: Any, out: _Out, name: str) -> None:
    sequence = quote_ident(name)
    with conn.cursor() as cur:
        cur.execute(f"SHOW CREATE SEQUENCE {sequence}")
        create = fetch_text(cur.fetchone()[1])
        cur.execute(f"SELECT next_not_cached_value FROM {sequence}")
        next_value = fetch_text(cur.fetchone()[0])
    out.text(f"\n--\n-- Sequence structure for {sequence}\n--\n\n")
    out.text(f"DROP SEQUENCE IF EXISTS {sequence};\n{create};\n")
    out.text(f"DO SETVAL({sequence}, {next_value}, 0);\n")


def _stand_in(cur: Any, database: str, view: str) -> str:
    """A placeholder view with the real one's columns, so views that use each other can
    be created in any order (mysqldump does the same). A view whose tables are gone
    fails here, as it fails mysqldump: such a backup could not be restored."""
    cur.execute(f"SELECT * FROM {quote_ident(view)} LIMIT 0")
    cur.execute(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
        "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (database, view),
    )
    columns = [fetch_text(row[0]) for row in cur.fetchall()]
    name = quote_ident(view)
    text = f"\n--\n-- Temporary table structure for view {name}\n--\n\n"
    select = ", ".join(f"NULL AS {quote_ident(c)}" for c in columns)
    return (
        text
        + f"DROP TABLE IF EXISTS {name};\nDROP VIEW IF EXISTS {name};\n"
        + (f"CREATE VIEW {name} AS SELECT {select};\n")
    )

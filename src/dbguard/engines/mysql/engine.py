"""MysqlEngine: fingerprint, dump, restore and verify for MySQL and MariaDB.

See the package docstring (dbguard/engines/mysql/__init__.py) for the design.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pymysql
import structlog

from dbguard.config import BackupSettings
from dbguard.engines.base import DumpInfo, EngineName, Marker, Sink, Target, signals_held
from dbguard.engines.mysql import locks, pydump
from dbguard.engines.mysql.server import (
    RESET_SESSION,
    SERVER_STATUS_NO_BACKSLASH_ESCAPES,
    Endpoint,
    ObjectDef,
    ObjectKind,
    ServerInfo,
    capture_objects,
    error_code,
    error_text,
    explain,
    fetch_text,
    object_names,
    option_file,
    routine_grants,
    server_info,
)
from dbguard.engines.mysql.sqltext import (
    DumpReader,
    DumpScanner,
    DumpSyntaxError,
    Kind,
    RoutineGrant,
    classify,
    meta_line,
    not_as_stored,
    qualifiers,
    quote_ident,
    quote_string,
    scrub,
    statement_head,
    type_word,
    without_database_name,
    without_schema,
)
from dbguard.engines.pipe import stdout_chunks
from dbguard.errors import (
    BackupFailed,
    Cancelled,
    Damaged,
    DatabaseMissing,
    DbguardError,
    DumpAgain,
    RestoreFailed,
    RestoreIncomplete,
)
from dbguard.shims import is_shim

log = structlog.get_logger("dbguard.mysql")

FORMAT = "mysql-sql"  # SQL in mysqldump's layout, from either dumper
_KEPT_CONNECTIONS = 16
_KEPT_READ_TIMEOUT = 30  # seconds a skip check waits for a stuck server
_LOCK_WAIT_SECONDS = 30  # a restore's RENAME gives up on tables another session holds
# A backup gives up on a table another session keeps locked after this long (the
# server's own lock_wait_timeout is a year by default); see locks.py.
_DUMP_LOCK_WAIT_SECONDS = 60
_SESSIONS_GONE_SECONDS = 10.0  # how long killed sessions may take to go away
_TRX_CACHE_SECONDS = 0.11  # InnoDB refreshes INNODB_TRX at most every 0.1 s
_STDERR_TAIL = 4000
_DEFAULT_TOOL_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/local/mysql/bin", "/opt/homebrew/bin")
_UNREACHABLE_DURING_USE = {2006, 2013, 2055, 0}  # the kept connection was lost
_CONNECTION_LOST = _UNREACHABLE_DURING_USE | {1927}  # 1927: this session was killed
_ALL_OBJECTS: tuple[ObjectKind, ...] = ("TRIGGER", "VIEW", "PROCEDURE", "FUNCTION", "EVENT")
_MARKER_ROUTINE = "dbguard_environment"
_MARKER_PREFIX = "dbguard environment: "
_TABLE_TYPES = "('BASE TABLE', 'SYSTEM VERSIONED', 'SEQUENCE')"  # what RENAME TABLE moves
_NAME = re.compile(r"[A-Za-z0-9_]+")  # a character set or collation name
# Server errors on a dump's statement that prove the dump bad: it does not parse, or
# its rows do not fit the tables it made. Any other error is the server's.
_DUMP_FAULTS = {
    1048,  # a NULL in a NOT NULL column
    1054,  # an unknown column
    1062,  # a duplicate key
    1064,  # a syntax error
    1136,  # a row with the wrong number of values
    1146,  # a table that does not exist
    1265,  # data truncated
    1292,  # an incorrect value
    1366,  # an incorrect string value
    1406,  # data too long
}

# Columns only MariaDB's catalogs have. ALTER ALGORITHM=... VIEW rewrites only the
# view's .frm; MySQL keeps views in its InnoDB data dictionary, and has no such column.
_MARIADB_COLUMNS = {"VIEWS": ("ALGORITHM",)}

# The change signal's second half: a digest of everything in the schema that InnoDB's
# redo log does not see in MariaDB (views and triggers live in .frm/.TRG files,
# routines and events in Aria tables, and some ALTERs only rewrite the .frm). Only
# columns that come from the definition files are read: nothing here opens a table's
# data or statistics, so reading it never moves the LSN itself. Plain SELECTs, hashed
# here: the first version folded them with GROUP_CONCAT on the server, and MariaDB
# 10.11.19 once died (signal 11, in GROUP_CONCAT's temporary-table cleanup) running it.
_DIGEST_PARTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "TABLES",
        "TABLE_SCHEMA",
        (
            "TABLE_NAME",
            "TABLE_TYPE",
            "ENGINE",
            "TABLE_COLLATION",
            "CREATE_OPTIONS",
            "TABLE_COMMENT",
        ),
    ),
    (
        "COLUMNS",
        "TABLE_SCHEMA",
        (
            "TABLE_NAME",
            "COLUMN_NAME",
            "ORDINAL_POSITION",
            "COLUMN_DEFAULT",
            "IS_NULLABLE",
            "COLUMN_TYPE",
            "CHARACTER_SET_NAME",
            "COLLATION_NAME",
            "COLUMN_KEY",
            "EXTRA",
            "COLUMN_COMMENT",
            "GENERATION_EXPRESSION",
        ),
    ),
    (
        "STATISTICS",
        "TABLE_SCHEMA",
        (
            "TABLE_NAME",
            "INDEX_NAME",
            "SEQ_IN_INDEX",
            "COLUMN_NAME",
            "NON_UNIQUE",
            "SUB_PART",
            "INDEX_TYPE",
            "INDEX_COMMENT",
        ),
    ),
    (
        "VIEWS",
        "TABLE_SCHEMA",
        (
            "TABLE_NAME",
            "VIEW_DEFINITION",
            "CHECK_OPTION",
            "DEFINER",
            "SECURITY_TYPE",
            "CHARACTER_SET_CLIENT",
            "COLLATION_CONNECTION",
        ),
    ),
    (
        "TRIGGERS",
        "EVENT_OBJECT_SCHEMA",  # the same as TRIGGER_SCHEMA, and the catalog's lookup key
        (
            "TRIGGER_NAME",
            "EVENT_MANIPULATION",
            "EVENT_OBJECT_TABLE",
            "ACTION_ORDER",
            "ACTION_TIMING",
            "ACTION_STATEMENT",
            "CREATED",
            "SQL_MODE",
            "DEFINER",
            "CHARACTER_SET_CLIENT",
            "COLLATION_CONNECTION",
        ),
    ),
    (
        "ROUTINES",
        "ROUTINE_SCHEMA",
        (
            "SPECIFIC_NAME",
            "ROUTINE_TYPE",
            "DTD_IDENTIFIER",
            "ROUTINE_DEFINITION",
            "IS_DETERMINISTIC",
            "SQL_DATA_ACCESS",
            "SECURITY_TYPE",
            "CREATED",
            "LAST_ALTERED",
            "SQL_MODE",
            "ROUTINE_COMMENT",
            "DEFINER",
            "CHARACTER_SET_CLIENT",
            "COLLATION_CONNECTION",
        ),
    ),
    (
        "PARAMETERS",
        "SPECIFIC_SCHEMA",
        (
            "SPECIFIC_NAME",
            "ROUTINE_TYPE",
            "ORDINAL_POSITION",
            "PARAMETER_MODE",
            "PARAMETER_NAME",
            "DTD_IDENTIFIER",
        ),
    ),
    (
        "EVENTS",
        "EVENT_SCHEMA",
        (
            "EVENT_NAME",
            "DEFINER",
            "TIME_ZONE",
            "EVENT_DEFINITION",
            "EVENT_TYPE",
            "EXECUTE_AT",
            "INTERVAL_VALUE",
            "INTERVAL_FIELD",
            "SQL_MODE",
            "STARTS",
            "ENDS",
            "STATUS",
            "ON_COMPLETION",
            "CREATED",
            "LAST_ALTERED",
            "EVENT_COMMENT",
            "CHARACTER_SET_CLIENT",
            "COLLATION_CONNECTION",
        ),
    ),
    (
        "CHECK_CONSTRAINTS",
        "CONSTRAINT_SCHEMA",
        ("CONSTRAINT_NAME", "CHECK_CLAUSE"),
    ),
)


def _catalog_field(table: str, column: str) -> tuple[int, int]:
    """Where a catalog column is in _definitions' results: (result set, field)."""
    at = [part[0] for part in _DIGEST_PARTS].index(table)
    return 1 + at, _DIGEST_PARTS[at][2].index(column)  # 1 +: after _SCHEMA_SQL


# What decides whether a dump can run under binary names (sqltext.not_as_stored).
_TABLE_COLLATION = _catalog_field("TABLES", "TABLE_COLLATION")
_COLUMN_TYPE = _catalog_field("COLUMNS", "COLUMN_TYPE")
_COLUMN_CHARSET = _catalog_field("COLUMNS", "CHARACTER_SET_NAME")

# mariadb-dump reads a table's definition, then its rows, each in a statement of its
# own: a table altered in between (into latin1, say) has its rows dumped as the new
# definition stores them, after the old definition. Under utf8mb4 names the server
# converts them to fit; under binary names they are written as stored, and a restore
# would read them wrong. So a dump under binary names is kept only if no table was
# altered, dropped or renamed anywhere on the server while it ran (the statement
# counters, which count a statement as it starts; not CREATE TABLE, which a verify's
# scratch schema runs for every table, and which changes no table the tool has read
# unless it is CREATE OR REPLACE), and starts only if no such statement (CREATE too)
# is running then in a session this user can see.
_DDL_SQL = (
    "SELECT SUM(VARIABLE_VALUE) FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME"
    " IN ('COM_ALTER_TABLE', 'COM_DROP_TABLE', 'COM_RENAME_TABLE'); "
    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()"
    " AND COMMAND <> 'Sleep' AND INFO REGEXP '(ALTER|CREATE|RENAME|DROP)[^;]*[[:space:]]TABLE'"
    " AND INFO NOT REGEXP '^[[:space:]]*SHOW'"  # another dump tool's SHOW CREATE TABLE
)

_SCHEMA_SQL = (
    "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME, "
    "(SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %(db)s "
    "AND TABLE_TYPE <> 'VIEW' AND COALESCE(ENGINE, '') <> 'InnoDB'), "
    "(SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %(db)s "
    "AND TABLE_TYPE = 'SEQUENCE'), "
    "(SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %(db)s) "
    "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %(db)s"
)


# What lets a skip check on MariaDB reuse the digest it read last time instead of
# reading every catalog again (some milliseconds per check, most of a skip's cost):
#
# - The server counts every statement it runs in its Com_* status counters, at the
#   start of the statement, and the global values sum the live sessions' own. Every
#   statement that can change a definition counts in one of them (the event scheduler
#   changes some without a statement: see below); the ones left out
#   here cannot (reads, SHOW, session settings, transaction control, USE), and they
#   are all that these checks and the dump tools issue. Equal sums: no definition
#   changed, unless a statement counted earlier was still running when the catalogs
#   were read (a CREATE TRIGGER waiting for a table lock, say).
# - So the digest is kept only when, after the sum was read and before the catalogs
#   were, no other session was running a statement: every statement counted by then
#   had finished, and the catalogs show what it did. Only a user with the PROCESS
#   privilege sees every session; without it nothing is kept. Nor on a Galera node,
#   whose appliers may not show as running the statements they apply.
# - The event scheduler disables and drops its events without running a statement
#   (an event that has run its course): a schema with events is read every time. One
#   without cannot get one without CREATE EVENT, which counts.
# - FLUSH STATUS may reset global counters on some servers (MariaDB 10.11 keeps the
#   Com_* ones): the moment of the last one is part of the key.
#
# MySQL 8 keeps every definition in InnoDB, so this would rarely matter there; it reads
# the catalogs every time (no MySQL server has run these tests).
_STATEMENT_KINDS_THAT_CHANGE_NOTHING = (
    "COM_SELECT",
    "COM_SET_OPTION",
    "COM_BEGIN",
    "COM_COMMIT",
    "COM_ROLLBACK",
    "COM_SAVEPOINT",
    "COM_ROLLBACK_TO_SAVEPOINT",
    "COM_RELEASE_SAVEPOINT",
    "COM_CHANGE_DB",
    "COM_UNLOCK_TABLES",
)
_STATEMENTS_COUNTED = (
    "LEFT(VARIABLE_NAME, 4) = 'COM_' AND LEFT(VARIABLE_NAME, 9) <> 'COM_SHOW_' "
    "AND VARIABLE_NAME NOT IN ("
    + ", ".join(f"'{name}'" for name in _STATEMENT_KINDS_THAT_CHANGE_NOTHING)
    + ")"
)
# The WHERE matters: the server then computes only the status values asked for.
_UNCHANGED_SQL = (
    "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %(db)s; "
    f"SELECT SUM(CASE WHEN {_STATEMENTS_COUNTED} THEN VARIABLE_VALUE END), "
    "MAX(CASE VARIABLE_NAME WHEN 'UPTIME' THEN VARIABLE_VALUE END) "
    "- MAX(CASE VARIABLE_NAME WHEN 'UPTIME_SINCE_FLUSH_STATUS' THEN VARIABLE_VALUE END) "
    "FROM information_schema.GLOBAL_STATUS "
    f"WHERE ({_STATEMENTS_COUNTED}) OR VARIABLE_NAME IN ('UPTIME', 'UPTIME_SINCE_FLUSH_STATUS')"
)
# Other sessions in the middle of a statement; read after the counters and (in the same
# batch) before the catalogs.
_BUSY_SQL = (
    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
    "AND COMMAND <> 'Sleep' AND NOT (USER = 'event_scheduler' AND COMMAND = 'Daemon')"
)


def _digest_parts(mariadb: bool) -> list[tuple[str, str, tuple[str, ...]]]:
    """_DIGEST_PARTS, with the columns only MariaDB has."""
    if not mariadb:
        return list(_DIGEST_PARTS)
    return [(t, s, cols + _MARIADB_COLUMNS.get(t, ())) for t, s, cols in _DIGEST_PARTS]


def _catalog_batch(parts: Sequence[tuple[str, str, tuple[str, ...]]]) -> str:
    """One round trip (a multi-statement batch): the schema's defaults and how many of
    its tables are not InnoDB, then each catalog's rows for the digest."""
    selects = [
        f"SELECT {', '.join(columns)} FROM information_schema.{table} "
        f"WHERE {schema_column} = %(db)s"
        for table, schema_column, columns in parts
    ]
    return "; ".join([_SCHEMA_SQL, *selects])


def _definition_changes(kept: _Kept) -> tuple[Any, int]:
    """_DDL_SQL: the server's count of CREATE, ALTER and RENAME TABLE statements, and
    how many of them are running now."""
    with kept.conn.cursor() as cur:
        counted, running = _run_batch(cur, _DDL_SQL, "")
    return counted[0][0], int(running[0][0])


def _catalogs_not_as_stored(results: Sequence[Sequence[tuple[Any, ...]]]) -> list[str]:
    """sqltext.not_as_stored for the catalogs read by _definitions: each table's default
    character set (its collation's first word) and each column's, and the columns'
    types."""

    def values(where: tuple[int, int]) -> list[str]:
        result, field = where
        return [fetch_text(row[field]) for row in results[result] if row[field] is not None]

    return not_as_stored(
        [collation.split("_")[0] for collation in values(_TABLE_COLLATION)]
        + values(_COLUMN_CHARSET),
        [type_word(column_type) for column_type in values(_COLUMN_TYPE)],
    )


def _digest(catalogs: Sequence[Sequence[tuple[Any, ...]]]) -> str:
    """A hash of the catalog rows, independent of the order the server returns them in."""
    digest = hashlib.sha256()
    for rows in catalogs:
        lines = sorted(json.dumps(list(row), default=str, ensure_ascii=False) for row in rows)
        digest.update(json.dumps(lines, ensure_ascii=False).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class DumpTool:
    path: Path
    version: str  # the first line of `--version`
    mariadb: bool

    @property
    def major(self) -> int:
        for word in self.version.replace(",", " ").split():
            head = word.split(".")[0]
            if "." in word and head.isdigit():
                return int(head)
        return 0


@dataclass(frozen=True)
class _Definitions:
    """The schema's defaults and a digest of its definitions (see _DIGEST_PARTS)."""

    charset: Any
    collation: Any
    foreign_tables: int  # tables InnoDB does not log
    sequences: int
    events: int
    digest: str
    as_stored: bool  # a dump under binary names gives back every value exactly


@dataclass
class _Kept:
    """A connection kept open per server and user for skip checks."""

    conn: Any
    info: ServerInfo
    batch: str  # _catalog_batch: the schema, then its definitions
    where: str
    keeps_definitions: bool  # MariaDB, and this user sees every session (_UNCHANGED_SQL)
    # A fresh value per connection: after a reconnect (server restart, a new daemon)
    # nothing matches an older fingerprint, because nothing proves the data was not
    # replaced while nobody was looking.
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    lock: threading.Lock = field(default_factory=threading.Lock)
    # database -> (the statement counters they were read at, what was read)
    definitions: dict[str, tuple[tuple[Any, ...], _Definitions]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Signal:
    fingerprint: str | None
    charset: str
    collation: str
    as_stored: bool


T = TypeVar("T")

# As for PostgreSQL (postgres.claim_scratch): a scratch schema in use carries a named
# lock (GET_LOCK), taken by the connection that creates it before it does; named locks
# are server-wide and end with their session, however it ends. So a later verify or
# restore can tell the scratch schema of one that was killed, and drop it. Holding
# schemas (a restore's earlier tables, kept until its swap is done) are never dropped
# this way.
_LEFT_BEHIND = re.compile(r"_dbguard_(verify|restore)_[0-9a-f]{8}\Z")
_LEFT_BEHIND_LOCK_WAIT = 5  # seconds a drop waits for a table someone has open


def scratch_lock(schema: str) -> str:
    """The named lock of a scratch schema (at most 64 characters, as MySQL requires)."""
    return "dbguard-scratch-" + hashlib.sha256(schema.encode()).hexdigest()[:40]


def claim_scratch(cur: Any, schema: str) -> None:
    """Mark `schema` as in use for as long as the session lives; call before creating it."""
    cur.execute("SELECT GET_LOCK(%s, 0)", (scratch_lock(schema),))
    cur.fetchall()


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("the verify was stopped because dbguardd is stopping")


class _Watchdog:
    """Kills the dump tool when the deadline passes or `cancel` is set."""

    def __init__(
        self, proc: subprocess.Popen[bytes], seconds: float, cancel: threading.Event
    ) -> None:
        self.fired: str | None = None
        self._proc = proc
        self._deadline = time.monotonic() + seconds
        self._cancel = cancel
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mysql-dump-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Polls `cancel` a few times a second: a stalled tool (waiting on a lock) writes
        # nothing, so the sink never gets the chance to raise Cancelled.
        while not self._done.wait(min(0.1, max(0.0, self._deadline - time.monotonic()))):
            if self._cancel.is_set():
                self.fired = "cancel"
            elif time.monotonic() >= self._deadline:
                self.fired = "timeout"
            if self.fired:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _missing(kept: _Kept, database: str) -> DatabaseMissing:
    return DatabaseMissing(
        f"the MySQL/MariaDB database {database!r} on {kept.where} does not exist"
    )


def _has_process_privilege(cur: Any) -> bool:
    """Whether this user sees every session in PROCESSLIST (INNODB_TRX needs the same
    PROCESS privilege, and says so by refusing)."""
    try:
        cur.execute("SELECT COUNT(*) FROM information_schema.INNODB_TRX")
        cur.fetchall()
    except pymysql.err.OperationalError as err:
        if error_code(err) in _UNREACHABLE_DURING_USE:
            raise
        return False
    return True


def _galera(cur: Any) -> bool:
    """Whether this server replicates with Galera (wsrep)."""
    try:
        cur.execute("SELECT @@wsrep_on")
        row = cur.fetchone()
    except pymysql.MySQLError as err:
        if error_code(err) in _UNREACHABLE_DURING_USE:
            raise
        return False  # a build without wsrep has no such variable
    return bool(row and int(row[0] or 0))


def _replicates(cur: Any, info: ServerInfo) -> bool:
    """Whether changes can arrive from another server: a replication connection is
    set up (running or not: it can start between two checks), or this is a Galera
    node. True too when the server will not say."""
    if _galera(cur):
        return True
    statements = (
        ("SHOW ALL SLAVES STATUS",)
        if info.mariadb
        else ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS")  # before 8.0.22
    )
    row = _first_that_runs(cur, *statements)
    return row != ()


def _first_that_runs(cur: Any, *statements: str) -> tuple[Any, ...] | None:
    """The first row of the first statement the server runs; () when it returns no
    rows, None when it runs none of them (unknown to this version, or a privilege
    missing)."""
    for statement in statements:
        try:
            cur.execute(statement)
        except pymysql.MySQLError as err:
            if error_code(err) in _UNREACHABLE_DURING_USE:
                raise
            continue
        row = cur.fetchone()
        cur.fetchall()
        return () if row is None else tuple(row)
    return None


def _run_batch(cur: Any, batch: str, database: str) -> list[tuple[tuple[Any, ...], ...]]:
    """Every result set of a multi-statement batch, read to the end."""
    cur.execute(batch, {"db": database})
    results = [cur.fetchall()]
    while cur.nextset():
        results.append(cur.fetchall())
    return results


# ---- restore: what the swap decides before it touches anything ---------------------------

# Foreign keys of other databases' tables that reference the target's: one
# information_schema query (two catalogs joined, each filtered by the schema).
_FOREIGN_KEYS_IN_SQL = (
    "SELECT k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.COLUMN_NAME, "
    "k.REFERENCED_TABLE_NAME, k.REFERENCED_COLUMN_NAME, r.UPDATE_RULE, r.DELETE_RULE "
    "FROM information_schema.KEY_COLUMN_USAGE k "
    "JOIN information_schema.REFERENTIAL_CONSTRAINTS r "
    "ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.TABLE_NAME = k.TABLE_NAME "
    "AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME "
    "WHERE k.REFERENCED_TABLE_SCHEMA = %(db)s AND k.TABLE_SCHEMA <> %(db)s "
    "AND r.UNIQUE_CONSTRAINT_SCHEMA = %(db)s "
    "ORDER BY k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION"
)


@dataclass(frozen=True)
class _ForeignKeyIn:
    """A foreign key of another database's table that references one of the target's
    tables. InnoDB keeps a foreign key on the table it references through RENAME
    TABLE: the swap would leave it pointing into the schema of replaced tables, which
    it then drops."""

    schema: str
    table: str
    name: str
    columns: tuple[str, ...]
    referenced: str  # the target's table
    referenced_columns: tuple[str, ...]
    on_update: str
    on_delete: str

    @property
    def where(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    def drop(self) -> str:
        return f"ALTER TABLE {self.where} DROP FOREIGN KEY {quote_ident(self.name)}"

    def add(self, database: str) -> str:
        columns = ", ".join(map(quote_ident, self.columns))
        referenced = ", ".join(map(quote_ident, self.referenced_columns))
        return (
            f"ALTER TABLE {self.where} ADD CONSTRAINT {quote_ident(self.name)} "
            f"FOREIGN KEY ({columns}) REFERENCES {quote_ident(database)}."
            f"{quote_ident(self.referenced)} ({referenced}) "
            f"ON DELETE {self.on_delete} ON UPDATE {self.on_update}"
        )


def _foreign_keys_in(rows: Sequence[Sequence[str]]) -> list[_ForeignKeyIn]:
    """_FOREIGN_KEYS_IN_SQL's rows (one per column, in order), one entry per key."""
    keys: dict[tuple[str, str, str], list[Sequence[str]]] = {}
    for row in rows:
        keys.setdefault((row[0], row[1], row[2]), []).append(row)
    return [
        _ForeignKeyIn(
            schema,
            table,
            name,
            tuple(column[3] for column in columns),
            columns[0][4],
            tuple(column[5] for column in columns),
            columns[0][6],
            columns[0][7],
        )
        for (schema, table, name), columns in keys.items()
    ]


def _refuse_foreign_keys_in(database: str, keys: Sequence[_ForeignKeyIn]) -> RestoreFailed:
    """Why a restore of `database` does not start while other databases' foreign keys
    reference it, and the statements to run around it."""
    listed = "\n".join(
        f"  - {key.where} constraint {quote_ident(key.name)} references "
        f"{quote_ident(database)}.{quote_ident(key.referenced)}"
        for key in keys
    )
    before = "\n".join(f"  {key.drop()};" for key in keys)
    after = "\n".join(f"  {key.add(database)};" for key in keys)
    return RestoreFailed(
        f"{len(keys)} foreign key(s) of other databases reference {database!r}:\n{listed}\n"
        "A restore moves the database's tables out and the backup's in; InnoDB would "
        "take these keys along with the tables moved out, which the restore then drops, "
        "and leave the other database pointing at nothing",
        "the database was not changed. Drop the keys, restore, then add them again. "
        f"Before:\n{before}\nAfter (this checks the rows against the restored tables; "
        "SET foreign_key_checks = 0 first to add them without checking):\n" + after,
    )


def _schema_clause(meta: dict[str, str]) -> str | None:
    """The dump's default character set and collation (its first line) as a clause of
    CREATE/ALTER DATABASE; None when the dump does not record them (not one of
    dbguard's) or names something that is not a plain name."""
    charset = meta.get("charset", "")
    collation = meta.get("collation", "")
    if _NAME.fullmatch(charset) and _NAME.fullmatch(collation):
        return f"CHARACTER SET {charset} COLLATE {collation}"
    return None


def _defaults_to_set(existing: dict[str, str], meta: dict[str, str]) -> str | None:
    """The ALTER DATABASE clause that gives an existing target the backup's defaults,
    which the views, triggers and routines created next take as their own; None when
    they are already the backup's, or the backup does not record them."""
    wanted = _schema_clause(meta)
    if wanted is None:
        return None
    keys = ("charset", "collation")
    same = all(existing.get(key, "").lower() == meta[key].lower() for key in keys)
    return None if same else wanted


_ASIDE = "dbguard_aside_"


def _aside_state(new: str) -> str:
    """Where things are while the target's tables are set aside, for a message."""
    return (
        f"its tables and views are in it, named {_ASIDE}*, and some of their triggers may "
        f"be dropped; the backup's tables are in {new!r}"
    )


def _aside_names(names: Sequence[str], tag: str, taken: Sequence[str]) -> dict[str, str]:
    """A name in the target for each of its tables and views while the swap sets them
    aside (`dbguard_aside_<tag>_<n>`, well within the 64-character limit), none of
    them one in `taken` (compared without case, as some servers compare names)."""
    used = {name.lower() for name in taken}
    numbers = itertools.count(1)
    aside: dict[str, str] = {}
    for name in names:
        candidate = f"{_ASIDE}{tag}_{next(numbers)}"
        while candidate.lower() in used:
            candidate = f"{_ASIDE}{tag}_{next(numbers)}"
        aside[name] = candidate
    return aside


class MysqlEngine:
    """MySQL and MariaDB, through mariadb-dump/mysqldump (or PyMySQL) and PyMySQL."""

    name: EngineName = "mysql"
    data_suffix = "data.sql"

    def __init__(
        self,
        settings: BackupSettings | None = None,
        tool_dirs: Sequence[Path] | None = None,
    ) -> None:
        """`tool_dirs`: where to look for mariadb-dump and mysqldump (default: PATH and
        the usual install folders); an empty folder forces the PyMySQL fallback."""
        self.settings = settings or BackupSettings()
        self._tool_dirs = list(tool_dirs) if tool_dirs is not None else None
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._kept_lock = threading.Lock()
        self._tools: dict[tuple[str, int], DumpTool | None] = {}
        # (server, database) dumped under utf8mb4 names for as long as the daemon runs:
        # a dump under binary names showed what it cannot give back, or met a
        # definition change (_DDL_SQL) a second time. And for the next dump only: the
        # one taken again (see _check_as_stored).
        self._not_as_stored: set[tuple[str, str]] = set()
        self._not_as_stored_next: set[tuple[str, str]] = set()
        self._met_changes: Counter[tuple[str, str]] = Counter()
        # Verifies and restores loading a dump now: their ALTER TABLE ... DISABLE KEYS
        # move the counters of _DDL_SQL, so no dump starts under binary names meanwhile.
        self._loads = 0
        self._loads_lock = threading.Lock()

    # ---- connections ---------------------------------------------------------------

    @staticmethod
    def _name(target: Target, kind: type[DbguardError] = BackupFailed) -> str:
        if not target.name:
            raise kind(f"{target.label}: no database name", "set DB_DATABASE (or the URL path)")
        return target.name

    def _open_kept(self, endpoint: Endpoint, database: str) -> _Kept:
        try:
            conn = endpoint.connect(read_timeout=_KEPT_READ_TIMEOUT, multi_statements=True)
        except pymysql.MySQLError as err:
            raise explain(err, endpoint, database) from None
        try:
            info = server_info(conn, endpoint)
            parts = _digest_parts(info.mariadb)
            with conn.cursor() as cur:
                try:
                    _run_batch(cur, _catalog_batch(parts), database)
                except pymysql.MySQLError:
                    # Servers older than MariaDB 10.2 / MySQL 8.0.16 have no CHECK_CONSTRAINTS.
                    parts = [p for p in parts if p[0] != "CHECK_CONSTRAINTS"]
                keeps_definitions = (
                    info.mariadb and _has_process_privilege(cur) and not _galera(cur)
                )
            return _Kept(conn, info, _catalog_batch(parts), endpoint.where, keeps_definitions)
        except pymysql.MySQLError as err:
            conn.close()
            raise explain(err, endpoint, database) from None

    def _with_kept(self, target: Target, action: Callable[[_Kept], T]) -> T:
        """Run `action` on the kept connection for the target's server, reconnecting
        once if the connection was lost (server restart, wait_timeout)."""
        endpoint = Endpoint.of(target)
        database = self._name(target)
        for attempt in (1, 2):
            with self._kept_lock:
                kept = self._kept.get(endpoint.key)
                if kept is not None:
                    self._kept.move_to_end(endpoint.key)
            if kept is None:
                opened = self._open_kept(endpoint, database)
                with self._kept_lock:
                    kept = self._kept.setdefault(endpoint.key, opened)
                    while len(self._kept) > _KEPT_CONNECTIONS:
                        self._kept.popitem(last=False)[1].conn.close()
                if kept is not opened:  # another thread opened one meanwhile
                    opened.conn.close()
            with kept.lock:
                try:
                    return action(kept)
                except pymysql.MySQLError as err:
                    # Closed whatever went wrong: a batch cut short by an error can
                    # leave unread results behind.
                    self._forget(endpoint.key, kept)
                    lost = isinstance(err, pymysql.err.InterfaceError) or (
                        error_code(err) in _UNREACHABLE_DURING_USE
                    )
                    if not lost or attempt == 2:
                        raise explain(err, endpoint, database) from None
        raise AssertionError("unreachable")

    def _forget(self, key: str, kept: _Kept) -> None:
        with self._kept_lock:
            if self._kept.get(key) is kept:
                del self._kept[key]
        with contextlib.suppress(Exception):
            kept.conn.close()

    def close(self) -> None:
        with self._kept_lock:
            kept = list(self._kept.values())
            self._kept.clear()
        for entry in kept:
            with contextlib.suppress(Exception):
                entry.conn.close()

    # ---- change signal ---------------------------------------------------------------

    def fingerprint(self, target: Target) -> str | None:
        """The change signal (see the package docstring); None when there is no sound
        one. Raises DatabaseMissing when the database does not exist, BackupFailed when
        the server cannot be reached or refuses the user."""
        database = self._name(target)
        return self._with_kept(target, lambda kept: self._signal(kept, database, False)).fingerprint

    def _signal(self, kept: _Kept, database: str, for_dump: bool) -> _Signal:
        with kept.conn.cursor() as cur:
            defined = self._definitions(cur, kept, database)
            # InnoDB's counter always, even with the binary log on: a session with
            # sql_log_bin = 0 (or a replica's applier, without log_slave_updates)
            # commits without moving the log's position, never without drawing from
            # InnoDB's counters. MyISAM and Aria writes leave no trace in InnoDB: where
            # the database has such a table, the log's position too.
            signal_ = self._innodb_counter(cur, kept.info, sequences=defined.sequences > 0)
            if signal_ is not None and defined.foreign_tables:
                logged = self._binlog_position(cur, kept.info) if kept.info.log_bin else None
                signal_ = None if logged is None else f"{logged}:{signal_}"
            # No signal: a table is not InnoDB and the binlog is off, filtered or
            # misses what a replica applies; or the server would not tell. Always back up.
            fingerprint = None
            if signal_ is not None:
                fingerprint = f"mysql:{kept.info.identity}:{kept.epoch}:{signal_}:{defined.digest}"
            if fingerprint is not None and for_dump and not self._no_writers(cur):
                fingerprint = None
        return _Signal(
            fingerprint,
            fetch_text(defined.charset),
            fetch_text(defined.collation),
            defined.as_stored,
        )

    @staticmethod
    def _definitions(cur: Any, kept: _Kept, database: str) -> _Definitions:
        """The schema's definitions: read from the catalogs, or, where the statement
        counters prove nothing changed since the last read, as read then (see
        _UNCHANGED_SQL). Raises DatabaseMissing."""
        batch = kept.batch
        counters: tuple[Any, ...] | None = None
        if kept.keeps_definitions:
            exists, read = _run_batch(cur, _UNCHANGED_SQL, database)
            if not exists[0][0]:
                raise _missing(kept, database)
            counters = tuple(read[0])
            known = kept.definitions.get(database)
            if known is not None and known[0] == counters:
                return known[1]
            batch = f"{_BUSY_SQL}; {batch}"
        results = _run_batch(cur, batch, database)
        keep = counters is not None
        if keep:
            busy, *results = results
            keep = not busy[0][0]  # else a statement counted may not have finished
        if not results[0]:
            raise _missing(kept, database)
        charset, collation, foreign_tables, sequences, events = results[0][0]
        defined = _Definitions(
            charset,
            collation,
            int(foreign_tables),
            int(sequences),
            int(events),
            # The defaults too: mariadb-dump writes them, and ALTER DATABASE moves no
            # InnoDB counter in MariaDB.
            _digest([[(charset, collation)], *results[1:]])[:24],
            not _catalogs_not_as_stored(results),
        )
        if counters is not None and keep and not defined.events:
            kept.definitions[database] = (counters, defined)
        else:
            kept.definitions.pop(database, None)
        return defined

    @staticmethod
    def _binlog_position(cur: Any, info: ServerInfo) -> str | None:
        """File and offset of the binary log, which every change logged moves (any
        engine, DDL included). None where changes can reach the database unlogged: with
        binlog-do-db or binlog-ignore-db, and on a replica that does not log what it
        applies (log_slave_updates off). None too when the server will not tell."""
        if not info.logs_replicated and _replicates(cur, info):
            return None
        row = _first_that_runs(cur, "SHOW MASTER STATUS", "SHOW BINARY LOG STATUS")  # 8.4
        if not row or row[2] or row[3]:
            return None
        return f"binlog:{fetch_text(row[0])}:{row[1]}"

    @staticmethod
    def _innodb_counter(cur: Any, info: ServerInfo, *, sequences: bool) -> str | None:
        """An InnoDB counter that every committed change to InnoDB data moves.

        On MariaDB, without sequences: the transaction id counter (Innodb_max_trx_id).
        Every read-write transaction draws from it when it first writes and again when
        it commits (its serialisation number), DDL included; purge, page flushing and
        change-buffer merges draw nothing. So unlike the log sequence number, which
        purge keeps moving for seconds after a large write (the benchmark saw it move
        during every backup of a freshly written 329 MB database), it stays put on a
        quiet server and the next command can reuse the backup. Sequences are the
        exception: NEXTVAL and SETVAL write without a transaction id, so a database
        with a sequence uses the log sequence number.

        Otherwise InnoDB's current log sequence number: every change to InnoDB data
        (and, in MySQL 8, its data dictionary) writes redo and moves it. Both are
        cluster-wide, so other databases' writes (and, for the LSN, purge and
        statistics) only cause extra backups."""
        try:
            if info.mariadb:
                kind, name = (
                    ("lsn", "Innodb_lsn_current") if sequences else ("trx", "Innodb_max_trx_id")
                )
                cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
                row = cur.fetchone()
                return f"{kind}:{int(row[1])}" if row else None
            cur.execute(
                "SELECT COUNT FROM information_schema.INNODB_METRICS "
                "WHERE NAME = 'log_lsn_current' AND STATUS = 'enabled'"
            )
            row = cur.fetchone()
            if row:
                return f"lsn:{int(row[0])}"
            cur.execute("SHOW ENGINE INNODB STATUS")
            status = fetch_text(cur.fetchone()[2])
        except pymysql.err.OperationalError as err:
            if error_code(err) in _UNREACHABLE_DURING_USE:
                raise
            return None
        for line in status.splitlines():
            if line.startswith("Log sequence number"):
                return f"lsn:{int(line.split()[-1])}"
        return None

    @staticmethod
    def _no_writers(cur: Any) -> bool:
        """True when, right after the position was read, no other transaction had
        written anything.

        A commit moves the position (it writes its redo and draws its serialisation
        number) a moment before it becomes visible to new snapshots. Read in that
        moment, the position would claim a change the snapshot opened next does not
        hold, and a later equal position would wrongly say "unchanged". So the
        backup's fingerprint is kept only when no transaction with modified rows exists
        once the position is known: every earlier commit has then finished, and is in
        the snapshot. (A transaction that has modified nothing yet moves the position
        again, if ever, when it commits after the read.)

        INNODB_TRX is a cache that InnoDB refills only when nobody has read it for 0.1 s
        (so under frequent reads it does not change at all), and a stale answer could
        predate the position read. The answer is trusted only if it shows this very
        query, marked with a fresh nonce, running in our own transaction begun after
        the read; otherwise it is asked again after a cache period, twice, and then
        there is no fingerprint.
        """
        try:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            try:
                for attempt in range(3):
                    if attempt:
                        time.sleep(_TRX_CACHE_SECONDS)
                    nonce = secrets.token_hex(8)
                    cur.execute(
                        f"SELECT /* dbguard {nonce} */ trx_mysql_thread_id = CONNECTION_ID(), "
                        "trx_query, trx_rows_modified FROM information_schema.INNODB_TRX"
                    )
                    rows = cur.fetchall()
                    if any(mine and nonce in fetch_text(query) for mine, query, _ in rows):
                        return not any(not mine and modified for mine, _, modified in rows)
                return False
            finally:
                cur.execute("COMMIT")
        except pymysql.err.OperationalError as err:
            if error_code(err) in _UNREACHABLE_DURING_USE:
                raise
            return False  # no PROCESS privilege: INNODB_TRX is not readable

    # ---- the environment marker --------------------------------------------------------
    # A stored procedure in the database, `dbguard_environment`, whose comment holds the
    # mark. A routine travels with the data (every dump with --routines, dbguard's own
    # included), survives commands that drop all tables (migrate:fresh, db:wipe), is in
    # no table list that Prisma, Rails or Django compare, works on MySQL and MariaDB
    # alike, and needs only CREATE ROUTINE on the database. A procedure, not a
    # function: with the binary log on, MySQL lets only SUPER create functions.

    def marker(self, target: Target) -> Marker | None:
        """'production' or 'development' as set by `set_marker`, else None. Raises
        DatabaseMissing when the database does not exist, BackupFailed when the server
        cannot be reached or refuses the user."""
        database = self._name(target)

        def read(kept: _Kept) -> str:
            with kept.conn.cursor() as cur:
                cur.execute(
                    "SELECT r.ROUTINE_COMMENT FROM information_schema.SCHEMATA s "
                    "LEFT JOIN information_schema.ROUTINES r ON r.ROUTINE_SCHEMA = s.SCHEMA_NAME "
                    "AND r.ROUTINE_NAME = %s AND r.ROUTINE_TYPE = 'PROCEDURE' "
                    "WHERE s.SCHEMA_NAME = %s",
                    (_MARKER_ROUTINE, database),
                )
                row = cur.fetchone()
            if row is None:
                raise _missing(kept, database)
            return fetch_text(row[0])

        value = self._with_kept(target, read).removeprefix(_MARKER_PREFIX)
        if value == "production":
            return "production"
        if value == "development":
            return "development"
        return None

    def set_marker(self, target: Target, marker: Marker | None) -> None:
        """Mark the database (None removes the mark). Raises DatabaseMissing when it
        does not exist, BackupFailed when the server cannot be reached or the user may
        not create routines in it."""
        database = self._name(target)
        endpoint = Endpoint.of(target)
        conn = self._connect(endpoint, database, BackupFailed)
        routine = quote_ident(_MARKER_ROUTINE)
        try:
            with conn.cursor() as cur:
                if self._schema_defaults(cur, database) is None:
                    raise DatabaseMissing(
                        f"the MySQL/MariaDB database {database!r} on {endpoint.where} "
                        "does not exist"
                    )
                conn.select_db(database)
                if marker is None:
                    cur.execute(f"DROP PROCEDURE IF EXISTS {routine}")
                    return
                comment = quote_string(_MARKER_PREFIX + marker)
                body = (
                    f"PROCEDURE {routine}() SQL SECURITY INVOKER COMMENT {comment} "
                    f"SELECT {quote_string(marker)} AS dbguard_environment"
                )
                if "mariadb" in str(conn.get_server_info()).lower():
                    cur.execute(f"CREATE OR REPLACE {body}")  # never unmarked in between
                else:
                    cur.execute(f"DROP PROCEDURE IF EXISTS {routine}")
                    cur.execute(f"CREATE {body}")
        except pymysql.MySQLError as err:
            if error_code(err) in _UNREACHABLE_DURING_USE:
                raise explain(err, endpoint, database) from None
            raise BackupFailed(
                f"cannot mark {database!r} on {endpoint.where}: "
                f"{scrub(error_text(err), endpoint.password)}",
                "the mark is a stored procedure: run the command as a user with the "
                "CREATE ROUTINE and ALTER ROUTINE privileges on the database",
            ) from None
        finally:
            conn.close()

    # ---- backup ----------------------------------------------------------------------

    def dump(self, target: Target, out: Sink, scratch: Path, cancel: threading.Event) -> DumpInfo:
        """Dump with mariadb-dump/mysqldump (the one matching the server first), else
        with the PyMySQL fallback. Raises DatabaseMissing, BackupFailed (unreachable,
        access denied, missing tools and failed fallback, tool failure, timeout,
        truncated output) or Cancelled; the sink's own errors pass through."""
        database = self._name(target)
        if cancel.is_set():
            raise Cancelled("the backup was cancelled because dbguardd is stopping")
        # The signal is read before the dump's snapshot opens: a commit after this point
        # either is in the dump or moves the signal, so an equal signal later is proof.
        signal, info = self._with_kept(
            target, lambda kept: (self._signal(kept, database, True), kept.info)
        )
        endpoint = Endpoint.of(target)
        out.write(meta_line({"charset": signal.charset, "collation": signal.collation}))
        tool = self.find_tool(info)
        if tool is not None:
            watch = None
            limit = _DUMP_LOCK_WAIT_SECONDS
            if self.settings.dump_timeout_seconds > limit:  # else the timeout comes first
                # Read just before the tool starts, on the kept connection: a new one
                # would cost more than many a small database's whole dump.
                watch = self._with_kept(
                    target,
                    lambda kept: locks.LockWatch.before(kept.conn, endpoint, database, limit),
                )
            where = (endpoint.key, database)  # what the engine remembers per database
            binary, ddl = self._binary_names(target, where, info, signal)
            scanner = self._dump_with_tool(
                tool, endpoint, database, out, scratch, cancel, watch, binary
            )
            if binary:
                self._check_as_stored(target, where, scanner, ddl)
            tables = scanner.rows
            used = " ".join(tool.version.split())
        else:
            tables = self._dump_with_pymysql(endpoint, database, out, cancel)
            used = f"dbguard PyMySQL dumper (PyMySQL {pymysql.__version__}; no dump tool found)"
        return DumpInfo(tables=tables, fingerprint=signal.fingerprint, tool=used, format=FORMAT)

    def _binary_names(
        self, target: Target, where: tuple[str, str], info: ServerInfo, signal: _Signal
    ) -> tuple[bool, Any]:
        """Whether the dump runs under binary names (see _tool_argv), and if so the
        definition-change counter it starts at (_DDL_SQL)."""
        if where in self._not_as_stored_next:
            self._not_as_stored_next.discard(where)
            return False, None
        if not (info.mariadb and signal.as_stored) or where in self._not_as_stored:
            return False, None
        if self._loads:
            return False, None
        changes, running = self._with_kept(target, _definition_changes)
        return not running, changes

    def _check_as_stored(
        self, target: Target, where: tuple[str, str], scanner: DumpScanner, ddl: Any
    ) -> None:
        """Raise DumpAgain (under utf8mb4 names) when a dump under binary names may not
        give its values back: its own table definitions name a character set or a type
        outside the bounds (the catalogs said otherwise before it ran), or a table
        definition changed on the server while it ran."""
        odd = not_as_stored(scanner.charsets, scanner.column_types)
        if odd:
            self._not_as_stored.add(where)  # also if the catalogs and the dump disagree
            why = f"its table definitions name {', '.join(odd)}"
        elif self._with_kept(target, _definition_changes)[0] != ddl:
            self._not_as_stored_next.add(where)
            self._met_changes[where] += 1
            if self._met_changes[where] >= 2:  # a server where that is common
                self._not_as_stored.add(where)
            why = "a table was altered, dropped or renamed on the server meanwhile"
        else:
            return
        log.info("dumping again under utf8mb4 names", database=where[1], why=why)
        raise DumpAgain(
            f"the dump of {where[1]!r} under binary names might not give back every value "
            f"exactly: {why}"
        )

    def _folders(self) -> list[Path]:
        if self._tool_dirs is not None:
            return self._tool_dirs
        folders = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
        return folders + [Path(p) for p in _DEFAULT_TOOL_DIRS if Path(p) not in folders]

    def find_tool(self, info: ServerInfo) -> DumpTool | None:
        """The dump tool to use: one of the server's own flavour if there is one."""
        names = ("mariadb-dump", "mysqldump") if info.mariadb else ("mysqldump", "mariadb-dump")
        tools = []
        for name in names:
            for folder in self._folders():
                path = folder / name
                # A shimmed tool would call back into dbguard.
                if path.is_file() and os.access(path, os.X_OK) and not is_shim(path):
                    tool = self._probe(path)
                    if tool is not None:
                        tools.append(tool)
        matching = [t for t in tools if t.mariadb == info.mariadb]
        preferred = matching or tools
        return preferred[0] if preferred else None

    def _probe(self, path: Path) -> DumpTool | None:
        try:
            key = (str(path.resolve()), path.stat().st_mtime_ns)
        except OSError:
            return None
        if key not in self._tools:
            try:
                result = subprocess.run(
                    [str(path), "--version"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                    stdin=subprocess.DEVNULL,
                )
                line = result.stdout.decode("utf-8", "replace").strip().splitlines()
                version = line[0] if result.returncode == 0 and line else ""
            except (OSError, subprocess.SubprocessError):
                version = ""
            self._tools[key] = (
                DumpTool(path, version, "mariadb" in version.lower()) if version else None
            )
        return self._tools[key]

    def _tool_argv(self, tool: DumpTool, options: Path, database: str, binary: bool) -> list[str]:
        """`binary`: the server is MariaDB, and a dump under binary names gives back
        every column's values (sqltext.AS_STORED_CHARSETS and AS_STORED_TYPES say
        which). The tool then writes values as stored. Under utf8mb4 it tests
        each byte it escapes for the start of a multibyte character: 2.1 to 2.5 CPU s
        for the bench's 367 MB table against 1.4 s under binary (the tool alone), the
        largest part of a backup's CPU. Not --hex-blob then: under binary names every
        text column counts as binary and would be written in hex, twice its size; and
        where nothing is converted, a blob's bytes need no hex. Elsewhere utf8mb4, with
        hex for binary data; and on MySQL too, which refuses a binary string for a JSON
        column."""
        names = (
            ["--default-character-set=binary"]
            if binary
            else ["--hex-blob", "--default-character-set=utf8mb4"]
        )
        argv = [
            str(tool.path),
            # Only our file is read, never ~/.my.cnf or /etc/mysql: a [mysqldump] group
            # there (no-data, skip-triggers, compact ...) would silently change what
            # the backup holds.
            f"--defaults-file={options}",
            "--single-transaction",
            "--quick",
            "--routines",
            "--triggers",
            "--events",
            *names,
            "--tz-utc",
            "--add-locks",  # DumpScanner ends a table's rows at UNLOCK TABLES
            "--comments",  # the `-- Dump completed` trailer proves the output is whole
            "--no-tablespaces",
            "--max-allowed-packet=1G",
        ]
        if not tool.mariadb:
            argv.append("--set-gtid-purged=OFF")  # a restore must not touch GTID state
            if tool.major >= 8:
                argv.append("--column-statistics=0")  # MariaDB has no such table
        # No --databases: then the dump has no CREATE DATABASE or USE lines and
        # restores into whatever schema the session is in.
        return [*argv, "--", database]

    def _dump_with_tool(
        self,
        tool: DumpTool,
        endpoint: Endpoint,
        database: str,
        out: Sink,
        scratch: Path,
        cancel: threading.Event,
        watch: locks.LockWatch | None,
        binary: bool,
    ) -> DumpScanner:
        """Run the tool, stream its output into `out`, and count rows on the way;
        `watch` stops it when it waits too long for a lock; `binary` as for _tool_argv.
        Returns the scanner that read the output.

        Row counts come from the dump's own rows (DumpScanner), so they are exactly
        what mysqldump read in its snapshot: --single-transaction gives one
        REPEATABLE READ snapshot for all InnoDB tables, and the counts cannot drift
        from it because they are not read separately. (MyISAM and Aria tables are not
        transactional: mysqldump reads each as it is at that moment, and the counts
        say what the dump holds for them too.)
        """
        env = {
            k: v for k, v in os.environ.items() if not k.upper().startswith(("MYSQL", "MARIADB"))
        }
        scanner = DumpScanner()
        name = tool.path.name
        timeout = self.settings.dump_timeout_seconds
        stderr_path = scratch / f"{name}-{secrets.token_hex(4)}.stderr"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with option_file(endpoint, scratch) as options:
                stderr_fd = os.open(stderr_path, flags, 0o600)
                try:
                    try:
                        proc = subprocess.Popen(
                            self._tool_argv(tool, options, database, binary),
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            stderr=stderr_fd,
                            env=env,
                            bufsize=0,
                        )
                    except OSError as err:
                        raise BackupFailed(f"cannot run {tool.path}: {err}") from None
                    if watch is not None:
                        watch.start(proc)
                    watchdog = _Watchdog(proc, timeout, cancel)
                    try:
                        for chunk in stdout_chunks(proc):
                            scanner.feed(chunk)
                            out.write(chunk)
                        code = proc.wait()
                    finally:
                        # Also when the sink raised (cancelled, disk full): never leave
                        # the tool running or unreaped.
                        watchdog.stop()
                        if proc.poll() is None:
                            proc.kill()
                        proc.wait()
                        proc.stdout.close()  # type: ignore[union-attr]
                    stderr = self._tail(stderr_fd, endpoint.password)
                finally:
                    os.close(stderr_fd)
                    stderr_path.unlink(missing_ok=True)
        finally:
            if watch is not None:
                watch.stop()
        if watchdog.fired == "cancel":
            raise Cancelled("the backup was cancelled because dbguardd is stopping")
        if watch is not None and watch.blocked is not None:
            raise locks.failure(name, watch.blocked)
        if watchdog.fired == "timeout":
            raise BackupFailed(
                f"{name} was still running after {timeout:g} s and was stopped",
                "raise backup.dump_timeout_seconds in the config, or find what blocks the "
                "dump (a long ALTER TABLE or LOCK TABLES holds its metadata lock)",
            )
        if code < 0:
            signame = signal.Signals(-code).name
            raise BackupFailed(
                f"{name} was killed by {signame} before it finished; nothing was kept"
                + (f"\n{stderr}" if stderr else ""),
                "look for the out-of-memory killer or someone stopping it, and run the "
                "command again",
            )
        if code != 0:
            raise self._tool_error(name, code, stderr, endpoint, database)
        if not scanner.complete:
            raise BackupFailed(
                f"{name} exited with status 0 but its output ends early (no '-- Dump "
                "completed' line): the dump is incomplete and was not kept",
                "run the command again; if it repeats, check the server's error log",
            )
        return scanner

    @staticmethod
    def _tail(fd: int, password: str) -> str:
        size = os.fstat(fd).st_size
        data = os.pread(fd, _STDERR_TAIL, max(0, size - _STDERR_TAIL))
        return scrub(data.decode("utf-8", "replace").strip(), password)

    @staticmethod
    def _tool_error(
        name: str, code: int, stderr: str, endpoint: Endpoint, database: str
    ) -> BackupFailed:
        """mysqldump prints `Got error: <code>: <text>`; the common codes get the same
        messages as PyMySQL's failures."""
        for known in (1049, 1045, 1044, 2002, 2003, 2005, 2013):
            if f"error: {known}" in stderr or f"Got error: {known}" in stderr:
                err = pymysql.err.OperationalError(known, stderr)
                explained = explain(err, endpoint, database)
                if isinstance(explained, BackupFailed):
                    return explained
        return BackupFailed(
            f"{name} failed with exit status {code}" + (f":\n{stderr}" if stderr else ""),
            "fix what it reports and run the command again",
        )

    def _dump_with_pymysql(
        self, endpoint: Endpoint, database: str, out: Sink, cancel: threading.Event
    ) -> dict[str, int]:
        looked = ", ".join(str(p) for p in self._folders()) or "(no folders)"
        try:
            timeout = max(1, int(self.settings.dump_timeout_seconds))  # per read, not overall
            conn = endpoint.connect(read_timeout=timeout, raw=True)
        except pymysql.MySQLError as err:
            raise explain(err, endpoint, database) from None
        try:
            return pydump.dump_database(conn, database, out, cancel, _DUMP_LOCK_WAIT_SECONDS)
        except pydump.LockWaitTimeout as err:
            # Looked up at once: the session that held the lock most likely still does.
            blocked = locks.look_up(
                endpoint,
                dump=conn.thread_id(),
                seconds=_DUMP_LOCK_WAIT_SECONDS,
                database=database,
                table=err.table,
                state=None,
            )
            raise locks.failure("the built-in PyMySQL dumper", blocked) from None
        except pymysql.MySQLError as err:
            if error_code(err) in (1049, 2002, 2003, 2006, 2013, 1045):
                raise explain(err, endpoint, database) from None
            problem = scrub(error_text(err), endpoint.password)
        except PermissionError as err:
            problem = str(err)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        raise BackupFailed(
            f"no mariadb-dump or mysqldump was found (looked in {looked}), and the "
            f"built-in PyMySQL dumper could not dump {database!r}: {problem}",
            "install the client tools (e.g. `apt install mariadb-client`) so the "
            "server's own dump tool is used",
        )

    # ---- restore and verify ------------------------------------------------------------

    @staticmethod
    def _check_format(dump_format: str, kind: type[DbguardError]) -> None:
        if dump_format != FORMAT:
            raise kind(f"this backup's format is {dump_format!r}, not a MySQL dump ({FORMAT})")

    def _connect(self, endpoint: Endpoint, database: str, kind: type[DbguardError]) -> Any:
        try:
            conn = endpoint.connect()
            with conn.cursor() as cur:
                cur.execute("SET SESSION lock_wait_timeout = %s", (_LOCK_WAIT_SECONDS,))
            return conn
        except pymysql.MySQLError as err:
            raise explain(err, endpoint, database, kind) from None

    @staticmethod
    def _scratch_name(database: str, purpose: str) -> str:
        # <= 64 characters, the identifier limit; readable in SHOW DATABASES
        return f"{database[:30]}_dbguard_{purpose}_{secrets.token_hex(4)}"

    def _load(
        self,
        conn: Any,
        data: BinaryIO,
        schema: str,
        damage: type[DbguardError],
        cancel: threading.Event | None = None,
    ) -> tuple[list[tuple[Kind, bytes]], dict[str, str]]:
        """Create `schema` and run the dump's table statements in it. Returns the
        statements that recreate views, triggers, routines and events, with the
        session settings around them, to be run where the tables end up; and the
        dump's metadata (the original schema's character set and collation).

        Raises `damage` when the dump does not load or is incomplete, Cancelled when
        `cancel` is set; pymysql errors that mean the connection was lost pass through.
        """
        with self._loads_lock:
            self._loads += 1
        try:
            return self._load_statements(conn, data, schema, damage, cancel)
        finally:
            with self._loads_lock:
                self._loads -= 1

    def _load_statements(
        self,
        conn: Any,
        data: BinaryIO,
        schema: str,
        damage: type[DbguardError],
        cancel: threading.Event | None,
    ) -> tuple[list[tuple[Kind, bytes]], dict[str, str]]:
        reader = DumpReader(data)
        # Definitions only (and the session settings around them): small next to the
        # data, which streams through and is never held.
        deferred: list[tuple[Kind, bytes]] = []
        created = False
        with conn.cursor() as cur:
            try:
                for statement in reader:
                    _check_cancel(cancel)
                    if not created:
                        self._create_scratch(cur, schema, reader.meta)
                        conn.select_db(schema)
                        created = True
                    kind = classify(statement)
                    if kind == "forbidden":
                        raise damage(
                            "the backup contains a statement that would act outside the "
                            f"database being restored: {statement_head(statement, 200)!r}",
                            "it was not made by dbguard; nothing was changed",
                        )
                    if kind in ("object", "event"):
                        deferred.append((kind, self._own_schema(statement, reader, damage)))
                        continue
                    if kind == "alter-database":
                        deferred.append((kind, without_database_name(statement)))
                        continue
                    self._run(cur, statement, damage)
                    if kind == "set":
                        deferred.append((kind, statement))
                    # As the mysql client does: quotes follow the session's sql_mode.
                    no_escapes = conn.server_status & SERVER_STATUS_NO_BACKSLASH_ESCAPES
                    reader.backslash_escapes = not no_escapes
            except DumpSyntaxError as err:
                raise damage(f"the backup is not a complete dump: {err}") from None
            if not created:
                self._create_scratch(cur, schema, reader.meta)
                conn.select_db(schema)
        if not reader.complete:
            raise damage(
                "the backup is incomplete: it lacks the closing '-- Dump completed' line",
                "use an older backup",
            )
        return deferred, reader.meta

    @staticmethod
    def _own_schema(statement: bytes, reader: DumpReader, damage: type[DbguardError]) -> bytes:
        """A deferred definition made to act where it is run (the scratch schema, then
        the target): the dumped database's name is taken off it. One that still names
        a schema would create or drop something there, in verify too: it is refused."""
        if reader.database is not None:
            statement = without_schema(statement, reader.database)
        named = qualifiers(statement)
        if named:
            made_of = f" (the backup is of {reader.database!r})" if reader.database else ""
            raise damage(
                f"a definition in the backup names the schema {named[0].schema!r}{made_of} "
                "and would act there, outside the database being restored: "
                f"{statement_head(statement, 200)!r}",
                "nothing was changed: verify and restore never run a definition that "
                "names another schema",
            )
        return statement

    @staticmethod
    def _run(cur: Any, statement: bytes, damage: type[DbguardError]) -> None:
        """Run one statement of the dump. A server error that proves the dump bad (it
        does not parse, its rows do not fit its tables) raises `damage`; any other (a
        full disk, a privilege, a limit) says nothing of the backup: RestoreFailed."""
        try:
            cur.execute(statement)
        except pymysql.MySQLError as err:
            code = error_code(err)
            if code in _UNREACHABLE_DURING_USE | {2003}:
                raise
            head = statement_head(statement, 160)
            problem = f"the backup does not load: {error_text(err)} (in: {head[:120]!r})"
            if code in _DUMP_FAULTS:
                raise damage(problem) from None
            raise RestoreFailed(
                problem,
                "the server refused it for a reason of its own (space, a privilege, a "
                "limit such as max_allowed_packet): put that right and run it again; the "
                "backup is not marked failed by this",
            ) from None

    @staticmethod
    def _create_schema(cur: Any, schema: str, meta: dict[str, str]) -> None:
        """Create `schema` with the original's default character set and collation
        (recorded in the dump's first line), which routines and new columns inherit."""
        clause = _schema_clause(meta) or "CHARACTER SET utf8mb4"
        cur.execute(f"CREATE DATABASE {quote_ident(schema)} {clause}")

    def _create_scratch(self, cur: Any, schema: str, meta: dict[str, str]) -> None:
        try:
            self._create_schema(cur, schema, meta)
        except pymysql.MySQLError as err:
            if error_code(err) not in (1044, 1227):
                raise
            stem = schema.rsplit("_dbguard_", 1)[0].replace("_", "\\_")
            # Not Damaged even in verify: the backup is fine, the permissions are not.
            raise RestoreFailed(
                f"cannot create the scratch schema {schema!r}: {error_text(err)}",
                "restoring and verifying load the backup into a scratch schema next to the "
                f"database first: grant the user ALL ON `{stem}\\_dbguard\\_%`.*, or run "
                "the restore as a user who may create databases",
            ) from None

    def _apply(
        self,
        cur: Any,
        deferred: list[tuple[Kind, bytes]],
        damage: type[DbguardError],
        *,
        events: bool,
    ) -> None:
        for kind, statement in deferred:
            if kind == "event" and not events:
                continue  # a scratch schema must never run the backup's events
            self._run(cur, statement, damage)

    @staticmethod
    def _tables(cur: Any, schema: str) -> list[str]:
        cur.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
            f"AND TABLE_TYPE IN {_TABLE_TYPES} ORDER BY TABLE_NAME",
            (schema,),
        )
        return [fetch_text(row[0]) for row in cur.fetchall()]

    def _discard(self, cur: Any, schema: str) -> None:
        """Drop a scratch schema on the way out; a failure here is logged, never raised
        over the error that may be on its way."""
        try:
            self._drop_schema(cur, schema)
        except pymysql.MySQLError as err:
            log.warning("could not drop scratch schema", schema=schema, error=error_text(err))

    @staticmethod
    def _drop_left_behind(cur: Any) -> None:
        """Drop the scratch schemas of verifies and restores that were killed mid-way:
        named as dbguard names them, and with nobody holding their lock. A failure is
        logged, never raised (this is housekeeping before the real work), except a
        lost connection."""
        try:
            cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            names = [fetch_text(row[0]) for row in cur.fetchall()]
            cur.execute("SELECT @@SESSION.lock_wait_timeout")
            lock_wait = int(cur.fetchone()[0])
            for name in filter(_LEFT_BEHIND.search, names):
                cur.execute("SELECT GET_LOCK(%s, 0)", (scratch_lock(name),))
                if cur.fetchone()[0] != 1:
                    continue  # its verify or restore is still at work
                try:
                    cur.execute("SET SESSION lock_wait_timeout = %s", (_LEFT_BEHIND_LOCK_WAIT,))
                    cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
                except pymysql.MySQLError as err:
                    if error_code(err) in _UNREACHABLE_DURING_USE:
                        raise
                    log.info("left a scratch schema in place", schema=name, error=error_text(err))
                else:
                    log.info(
                        "dropped a scratch schema a killed verify or restore left", schema=name
                    )
                finally:
                    cur.execute("SET SESSION lock_wait_timeout = %s", (lock_wait,))
                    cur.execute("DO RELEASE_LOCK(%s)", (scratch_lock(name),))
        except pymysql.MySQLError as err:
            if error_code(err) in _UNREACHABLE_DURING_USE:
                raise
            log.warning("could not look for left-behind scratch schemas", error=error_text(err))

    @staticmethod
    def _drop_schema(cur: Any, schema: str) -> None:
        # A dump that stopped half way leaves its LOCK TABLES in force, and the server
        # refuses DDL under table locks.
        cur.execute("UNLOCK TABLES")
        cur.execute("SET SESSION foreign_key_checks = 0")
        cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(schema)}")

    def restored_counts(
        self,
        target: Target,
        data: BinaryIO,
        dump_format: str,
        scratch: Path,
        cancel: threading.Event | None = None,
    ) -> dict[str, int]:
        """Load the dump into a scratch schema, recreate its views, triggers and
        routines there (not its events, which could fire), count rows per table, and
        drop the schema whatever happens. Raises Damaged when the dump does not
        restore, RestoreFailed when the server cannot be used, Cancelled when `cancel`
        is set (checked between statements)."""
        self._check_format(dump_format, Damaged)
        database = self._name(target, RestoreFailed)
        endpoint = Endpoint.of(target)
        conn = self._connect(endpoint, database, RestoreFailed)
        schema = self._scratch_name(database, "verify")
        try:
            with conn.cursor() as cur:
                self._drop_left_behind(cur)
                claim_scratch(cur, schema)
                try:
                    deferred, _ = self._load(conn, data, schema, Damaged, cancel)
                    self._apply(cur, deferred, Damaged, events=False)
                    counts: dict[str, int] = {}
                    cur.execute(
                        "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES "
                        "WHERE TABLE_SCHEMA = %s "
                        "AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')",
                        (schema,),
                    )
                    for name, engine in cur.fetchall():
                        _check_cancel(cancel)
                        if fetch_text(engine) in pydump.NO_DATA_ENGINES:
                            continue
                        table = fetch_text(name)
                        cur.execute(
                            f"SELECT COUNT(*) FROM {quote_ident(schema)}.{quote_ident(table)}"
                        )
                        counts[table] = int(cur.fetchone()[0])
                    return counts
                finally:
                    self._discard(cur, schema)
        except pymysql.MySQLError as err:
            raise explain(err, endpoint, database, RestoreFailed) from None
        finally:
            conn.close()

    def restore(
        self,
        target: Target,
        data: BinaryIO,
        dump_format: str,
        scratch: Path,
        *,
        end_connections: bool = False,
        swapped: Callable[[], None] = lambda: None,
        warn: Callable[[str], None] = lambda note: None,
    ) -> None:
        """Load the dump into a scratch schema, check its views, triggers and routines
        there, then swap: one RENAME TABLE moves the current tables to a holding schema
        and the restored ones into the target, and the target's views, triggers,
        routines and events are replaced by the backup's. Raises RestoreFailed (target
        unchanged) when loading, checking or the swap fails, and when other sessions
        use the target (unless `end_connections`, which ends them); RestoreIncomplete
        when the swap stopped half way (the message says where the old tables are)."""
        self._check_format(dump_format, RestoreFailed)
        database = self._name(target, RestoreFailed)
        endpoint = Endpoint.of(target)
        conn = self._connect(endpoint, database, RestoreFailed)
        new = self._scratch_name(database, "restore")
        try:
            with conn.cursor() as cur:
                existing = self._schema_defaults(cur, database)
                if existing is not None:
                    self._check_sessions(cur, database, end_connections)
                    self._check_foreign_keys_in(cur, database)
                self._drop_left_behind(cur)
                claim_scratch(cur, new)
                try:
                    deferred, meta = self._load(conn, data, new, RestoreFailed)
                    # Views, triggers and routines are tried in the scratch schema first,
                    # so a definition that cannot be created fails before the swap.
                    self._apply(cur, deferred, RestoreFailed, events=False)
                    # RENAME TABLE refuses tables with triggers across schemas.
                    for trigger in object_names(cur, new, "TRIGGER"):
                        cur.execute(f"DROP TRIGGER {quote_ident(new)}.{quote_ident(trigger)}")
                    # From the first trigger dropped to the last routine created (seconds
                    # for hundreds of views), a stop would leave a half-restored database.
                    with signals_held(f"the swap of {database!r}"):
                        self._swap(
                            conn,
                            cur,
                            endpoint,
                            database,
                            new,
                            deferred,
                            meta,
                            existing,
                            end_connections,
                            warn,
                        )
                        swapped()
                finally:
                    self._discard(cur, new)
        except pymysql.MySQLError as err:
            raise explain(err, endpoint, database, RestoreFailed) from None
        finally:
            conn.close()

    @staticmethod
    def _schema_defaults(cur: Any, database: str) -> dict[str, str] | None:
        cur.execute(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
            "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            (database,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        return {"charset": fetch_text(row[0]), "collation": fetch_text(row[1])}

    @staticmethod
    def _check_sessions(cur: Any, database: str, end_connections: bool) -> None:
        """Refuse (or end) other sessions whose current database is the target: they
        would write into tables while they are being replaced. Sessions that use it
        without selecting it are not visible here; RENAME TABLE still waits for their
        open transactions (metadata locks), up to the lock wait timeout."""
        query = (
            "SELECT ID, USER, HOST, COMMAND, TIME FROM information_schema.PROCESSLIST "
            "WHERE DB = %s AND ID <> CONNECTION_ID() ORDER BY ID"
        )
        cur.execute(query, (database,))
        others = cur.fetchall()
        if not others:
            return
        described = ", ".join(
            f"#{sid} {fetch_text(user)}@{fetch_text(host)} ({fetch_text(command)}, {secs} s)"
            for sid, user, host, command, secs in others
        )
        if not end_connections:
            raise RestoreFailed(
                f"{len(others)} other session(s) use {database!r}: {described}",
                "stop them (app server, queue workers, database consoles), or pass "
                "--end-connections to end them; the database was not changed",
            )
        for sid, *_ in others:
            try:
                cur.execute(f"KILL CONNECTION {int(sid)}")
            except pymysql.err.OperationalError as err:
                if error_code(err) != 1094:  # already gone
                    raise RestoreFailed(
                        f"cannot end session #{sid} on {database!r}: {error_text(err)}",
                        "end it yourself, or restore as a user allowed to (CONNECTION ADMIN)",
                    ) from None
        deadline = time.monotonic() + _SESSIONS_GONE_SECONDS
        while time.monotonic() < deadline:
            cur.execute(query, (database,))
            if not cur.fetchall():
                return
            time.sleep(0.05)
        raise RestoreFailed(
            f"sessions on {database!r} did not end within {_SESSIONS_GONE_SECONDS:g} s",
            "the database was not changed; try again",
        )

    @staticmethod
    def _check_foreign_keys_in(cur: Any, database: str) -> None:
        """Refuse while another database's foreign keys reference the target's tables
        (_ForeignKeyIn says why): the restore must not change another database."""
        cur.execute(_FOREIGN_KEYS_IN_SQL, {"db": database})
        rows = [tuple(fetch_text(value) for value in row) for row in cur.fetchall()]
        if rows:
            raise _refuse_foreign_keys_in(database, _foreign_keys_in(rows))

    def _swap(
        self,
        conn: Any,
        cur: Any,
        endpoint: Endpoint,
        database: str,
        new: str,
        deferred: list[tuple[Kind, bytes]],
        meta: dict[str, str],
        existing: dict[str, str] | None,
        end_connections: bool,
        warn: Callable[[str], None],
    ) -> None:
        """Move the restored tables into `database`, give it the backup's defaults
        (`meta`; `existing`: its own, None when it is created here) and recreate its
        other objects.

        The first change is one RENAME TABLE that sets the target's tables and views
        aside, under other names within the target: a table keeps its triggers only
        within its own schema (MariaDB refuses to move one with triggers to another,
        and refuses RENAME TABLE under LOCK TABLES, so the triggers cannot be dropped
        first under locks taken beforehand). It waits for every metadata lock it needs
        (a session's open transaction on one of the tables, from any database) up to
        lock_wait_timeout, and until it has them all nothing has changed: when it gives
        up, the restore fails with the database as it was, naming who held the lock.
        What follows touches only the names set aside, which no other session holds:
        their triggers are dropped, and a second RENAME moves them to the holding
        schema and the restored tables in. (Not in the first one: a foreign key's name
        is unique per schema, and the restored table's would meet the one set aside.)

        The windows: between the two RENAMEs (milliseconds) the target's tables are
        missing, so a write fails rather than run without its triggers; from the second
        RENAME to the last routine created (milliseconds, or seconds for hundreds of
        views; the caller holds stop signals through it), the restored tables have no
        triggers yet, and views and routines are being replaced. Nothing writes then:
        sessions on the target were refused or ended just before, and those that held
        its tables from elsewhere held up the first RENAME. A client connecting in that
        instant could write without triggers firing; the pre-restore backup holds what
        the target was.
        """
        create = existing is None
        holding = self._scratch_name(database, "replaced")
        cur.execute(f"CREATE DATABASE {quote_ident(holding)}")
        keep_holding = False
        try:
            if create:
                self._create_schema(cur, database, meta)
            conn.select_db(database)
            if not create:
                self._check_sessions(cur, database, end_connections)
                self._check_foreign_keys_in(cur, database)
            old_objects = capture_objects(cur, database, _ALL_OBJECTS)
            grants, unreadable = self._routine_grants(cur, database, old_objects)
            old_tables = self._tables(cur, database)
            old_views = [o.name for o in old_objects if o.kind == "VIEW"]
            new_tables = self._tables(cur, new)
            aside = _aside_names(
                [*old_tables, *old_views],
                holding.rsplit("_", 1)[1],
                [*old_tables, *old_views, *new_tables],
            )
            defaults = None if existing is None else _defaults_to_set(existing, meta)
            changing = False
            try:
                cur.execute("SET SESSION foreign_key_checks = 0")
                changing = True
                # One statement: all of them move, or none (RENAME TABLE is atomic).
                self._rename(cur, [(database, name, database, aside[name]) for name in aside])
            except pymysql.MySQLError as err:
                if error_code(err) in _CONNECTION_LOST:
                    if not changing:
                        raise  # nothing was changed: "cannot reach the server" is true
                    keep_holding = True
                    raise self._half_restored(
                        database,
                        holding,
                        err,
                        "its tables and views were being set aside within it (by one "
                        "RENAME, which happened or not): they are in it under their own "
                        f"names or, with their triggers, named {_ASIDE}*; the backup's "
                        f"tables are in {new!r}",
                    ) from None
                if create:
                    self._drop_schema(cur, database)
                if error_code(err) == 1205:  # lock wait timeout: someone holds a table
                    blocked = locks.look_up(
                        endpoint,
                        dump=conn.thread_id(),
                        seconds=_LOCK_WAIT_SECONDS,  # as _connect set it
                        database=database,
                        table=None,
                        state=None,
                        cur=cur,
                    )
                    raise locks.restore_failure(blocked) from None
                raise RestoreFailed(
                    f"could not set the tables of {database!r} aside to swap in the "
                    f"restored ones: {error_text(err)}",
                    "the database was not changed",
                ) from None
            try:
                self._drop_triggers_aside(cur, database, new, aside, old_objects)
            except pymysql.MySQLError as err:  # the connection was lost
                keep_holding = True
                raise self._half_restored(database, holding, err, _aside_state(new)) from None
            try:
                self._rename(
                    cur,
                    [(database, aside[t], holding, t) for t in old_tables]
                    + [(new, t, database, t) for t in new_tables],
                )
                for view in old_views:
                    cur.execute(f"DROP VIEW IF EXISTS {quote_ident(aside[view])}")
                for obj in old_objects:
                    if obj.kind not in ("TRIGGER", "VIEW"):
                        cur.execute(obj.drop())
                if defaults is not None:
                    cur.execute(f"ALTER DATABASE {quote_ident(database)} {defaults}")
                self._apply(cur, deferred, RestoreFailed, events=True)
            except (RestoreFailed, pymysql.MySQLError) as err:
                if isinstance(err, pymysql.MySQLError) and error_code(err) in _CONNECTION_LOST:
                    keep_holding = True
                    raise self._half_restored(
                        database,
                        holding,
                        err,
                        f"its previous tables are in schema {holding!r} and it holds the "
                        f"backup's (or, by one RENAME that happened or not, its previous "
                        f"ones are still in it, named {_ASIDE}*, and the backup's in "
                        f"{new!r}); its default character set may be the backup's, and its "
                        "views, triggers, routines and events may be missing (its previous "
                        "ones were being dropped and the backup's created)",
                    ) from None
                problem = err.problem if isinstance(err, RestoreFailed) else error_text(err)
                try:
                    self._roll_back(
                        cur,
                        database,
                        new,
                        holding,
                        aside,
                        old_tables,
                        new_tables,
                        old_objects,
                        None if defaults is None or existing is None else _schema_clause(existing),
                    )
                    if create:
                        self._drop_schema(cur, database)
                    self._grant_again(cur, database, grants, unreadable, warn)
                except pymysql.MySQLError as again:
                    keep_holding = True
                    raise RestoreIncomplete(
                        f"restoring {database!r} failed ({problem}) and putting it back "
                        f"failed too ({error_text(again)}); its previous tables are in "
                        f"schema {holding!r} (or still in it, named {_ASIDE}*)",
                        "restore the pre-restore backup (dbguardctl list-backups shows it)",
                    ) from None
                raise RestoreFailed(
                    f"could not recreate the backup's views, triggers, routines or events "
                    f"in {database!r}: {problem}",
                    "the database was put back as it was",
                ) from None
            self._grant_again(cur, database, grants, unreadable, warn)
        finally:
            if not keep_holding:
                self._discard(cur, holding)

    def _drop_triggers_aside(
        self,
        cur: Any,
        database: str,
        new: str,
        aside: dict[str, str],
        old_objects: list[ObjectDef],
    ) -> None:
        """Drop the target's triggers, on its tables set aside. If one cannot be dropped
        (no TRIGGER privilege on the target), nothing of the backup's is in yet: the
        names go back in one RENAME, the triggers dropped so far are made again, and the
        database is as it was. A lost connection is raised as it is."""
        dropped: list[ObjectDef] = []
        try:
            for trigger in (o for o in old_objects if o.kind == "TRIGGER"):
                cur.execute(trigger.drop())  # on a table set aside: nobody holds it
                dropped.append(trigger)
        except pymysql.MySQLError as err:
            if error_code(err) in _CONNECTION_LOST:
                raise
            try:
                self._rename(cur, [(database, aside[name], database, name) for name in aside])
                for trigger in dropped:
                    trigger.apply(cur)
            except pymysql.MySQLError as again:
                raise RestoreIncomplete(
                    f"restoring {database!r} failed (could not drop its triggers: "
                    f"{error_text(err)}) and putting it back failed too "
                    f"({error_text(again)}): {_aside_state(new)}",
                    "restore the pre-restore backup (dbguardctl list-backups shows it)",
                ) from None
            raise RestoreFailed(
                f"could not drop the triggers of {database!r} to replace them: {error_text(err)}",
                "grant this user TRIGGER on the database; the database was not changed",
            ) from None

    @staticmethod
    def _half_restored(
        database: str, holding: str, err: pymysql.MySQLError, state: str
    ) -> RestoreIncomplete:
        """The connection was lost once the swap had begun to change `database`: it
        is neither as it was nor as the backup has it, and nothing here can reach the
        server to put it back."""
        return RestoreIncomplete(
            f"the connection to the server was lost during the swap ({error_text(err)}), "
            f"so {database!r} is left half-restored: {state}",
            "restore the pre-restore backup, which holds everything the database had "
            f"(dbguardctl list-backups shows it); then drop schema {holding!r}, which "
            "dbguard never drops itself",
        )

    @staticmethod
    def _routine_grants(
        cur: Any, database: str, old_objects: list[ObjectDef]
    ) -> tuple[list[RoutineGrant], str | None]:
        """The grants on the routines the swap drops: with automatic_sp_privileges on
        (the default), DROP PROCEDURE/FUNCTION deletes them, and no dump holds them.
        Second: why they could not be read (None when they were)."""
        if not any(o.kind in ("PROCEDURE", "FUNCTION") for o in old_objects):
            return [], None
        cur.execute("SELECT @@GLOBAL.automatic_sp_privileges")
        if not int(cur.fetchone()[0]):
            return [], None  # dropping a routine keeps its grants
        try:
            return routine_grants(cur, database), None
        except pymysql.MySQLError as err:
            if error_code(err) in _UNREACHABLE_DURING_USE:
                raise
            return [], error_text(err)

    def _grant_again(
        self,
        cur: Any,
        database: str,
        grants: list[RoutineGrant],
        unreadable: str | None,
        warn: Callable[[str], None],
    ) -> None:
        """Give back the grants the swap's DROPs took, on the routines that exist again
        with the same name and type. What cannot be given back is told, with the
        statements to run: the database itself is restored, so this raises nothing."""
        lost = "dropping a procedure or function takes away the grants on it"
        if unreadable is not None:
            warn(
                f"the procedures and functions of {database!r} were dropped and created "
                f"again ({lost}), and the grants on them could not be read to give them "
                f"back ({unreadable}): check who may run them (SHOW GRANTS FOR ...) and "
                "grant it again; to have them kept, restore as a user with SELECT on "
                "mysql.procs_priv and the privileges it grants, WITH GRANT OPTION"
            )
            return
        failed: list[tuple[str, str]] = []
        try:
            existing = {
                (kind, name.lower())
                for kind in ("PROCEDURE", "FUNCTION")
                for name in object_names(cur, database, kind)
            }
            # Not in the backup: its grants went with it.
            wanted = [
                grant.statement(database)
                for grant in grants
                if (grant.kind, grant.routine.lower()) in existing
            ]
            self._no_new_accounts(cur)
            for index, statement in enumerate(wanted):
                try:
                    cur.execute(statement)
                except pymysql.MySQLError as err:
                    if error_code(err) in _UNREACHABLE_DURING_USE:  # none of the rest is given
                        failed += [(rest, error_text(err)) for rest in wanted[index:]]
                        break
                    failed.append((statement, error_text(err)))
        except pymysql.MySQLError as err:  # before any grant: all of them, to be sure
            failed = [(grant.statement(database), error_text(err)) for grant in grants]
        finally:
            with contextlib.suppress(pymysql.MySQLError):
                cur.execute(RESET_SESSION)
        if failed:
            warn(
                f"{len(failed)} grant(s) on the procedures and functions of {database!r} "
                f"could not be given back ({lost}): {failed[0][1]}. Run, as a user who "
                "may grant them:\n" + "\n".join(f"  {statement};" for statement, _ in failed)
            )

    @staticmethod
    def _no_new_accounts(cur: Any) -> None:
        """GRANT to an account dropped meanwhile would create it, with no password,
        unless sql_mode has NO_AUTO_CREATE_USER (MariaDB; MySQL 8 never creates one
        and refuses the mode)."""
        try:
            cur.execute("SET SESSION sql_mode = 'NO_AUTO_CREATE_USER'")
        except pymysql.MySQLError as err:
            if error_code(err) != 1231:  # a value the variable does not take
                raise

    @staticmethod
    def _rename(cur: Any, moves: list[tuple[str, str, str, str]]) -> None:
        if moves:
            cur.execute(
                "RENAME TABLE "
                + ", ".join(
                    f"{quote_ident(a)}.{quote_ident(t)} TO {quote_ident(b)}.{quote_ident(u)}"
                    for a, t, b, u in moves
                )
            )

    def _roll_back(
        self,
        cur: Any,
        database: str,
        new: str,
        holding: str,
        aside: dict[str, str],
        old_tables: list[str],
        new_tables: list[str],
        old_objects: list[ObjectDef],
        defaults: str | None,
    ) -> None:
        """Put the target back as it was before the swap: the new objects go (and the
        old triggers and views still on names set aside), the tables move back in one
        RENAME (the restored ones, if they got in; the old ones from the holding schema,
        or from the names set aside if they had not got there), its defaults
        (`defaults`, when the swap changed them) come back, and the old objects are
        recreated."""
        for kind in _ALL_OBJECTS:
            for name in object_names(cur, database, kind):
                cur.execute(f"DROP {kind} IF EXISTS {quote_ident(name)}")
        held = set(self._tables(cur, holding))
        here = set(self._tables(cur, database))
        self._rename(
            cur,
            [(database, t, new, t) for t in new_tables if t in here]
            + [
                (holding, t, database, t) if t in held else (database, aside[t], database, t)
                for t in old_tables
            ],
        )
        if defaults is not None:
            cur.execute(f"ALTER DATABASE {quote_ident(database)} {defaults}")
        pending = [o for o in old_objects if o.kind != "VIEW"]
        for obj in pending:
            obj.apply(cur)
        views = [o for o in old_objects if o.kind == "VIEW"]
        while views:  # views may use each other: create what can be created, repeat
            failed = []
            last: pymysql.MySQLError | None = None
            for view in views:
                try:
                    view.apply(cur)
                except pymysql.MySQLError as err:
                    failed.append(view)
                    last = err
            if len(failed) == len(views) and last is not None:
                raise last
            views = failed


__all__ = ["FORMAT", "DumpTool", "MysqlEngine"]

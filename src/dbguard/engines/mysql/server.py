"""Reaching a MySQL/MariaDB server: connection settings, option files, errors that
say what went wrong, and the definitions of views, triggers, routines and events."""

from __future__ import annotations

import getpass
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pymysql
from pymysql.constants import CLIENT
from pymysql.converters import conversions

from dbguard.engines.base import Target
from dbguard.engines.mysql.sqltext import RoutineGrant, option_value, quote_ident, scrub
from dbguard.errors import BackupFailed, DatabaseMissing, DbguardError

CONNECT_TIMEOUT = 10  # seconds; an unreachable host must not stall a guarded command
SERVER_STATUS_NO_BACKSLASH_ESCAPES = 0x200

# Error codes (client 2xxx, server 1xxx) that mean "the server is not there".
_UNREACHABLE = {2002, 2003, 2005, 2006, 2013, 2055}
_ACCESS_DENIED = 1045
_DATABASE_ACCESS_DENIED = 1044
_UNKNOWN_DATABASE = 1049
_UNKNOWN_SYSTEM_VARIABLE = 1193


@dataclass(frozen=True)
class Endpoint:
    """One server reached as one user: everything a connection or a dump tool needs."""

    host: str
    port: int
    socket: str | None
    user: str
    password: str = field(repr=False)

    @classmethod
    def of(cls, target: Target) -> Endpoint:
        return cls(
            host=target.host or "localhost",
            port=target.port or 3306,
            socket=target.socket,
            # The mysql client's default user is the login name; PyMySQL's is the same.
            user=target.user or getpass.getuser(),
            password=target.password.get_secret_value() if target.password else "",
        )

    @property
    def where(self) -> str:
        return self.socket or f"{self.host}:{self.port}"

    @property
    def key(self) -> str:
        """Identity for kept connections: different users get different sessions."""
        secret = hashlib.sha256(self.password.encode()).hexdigest()[:16]
        return f"{self.user}@{self.where}#{secret}"

    def connect(
        self,
        database: str | None = None,
        *,
        read_timeout: int | None = None,
        raw: bool = False,
        multi_statements: bool = False,
    ) -> Any:
        """A PyMySQL connection in autocommit mode. Raises pymysql errors.

        `raw`: values come back as the server's text (str) or bytes, never converted
        to Python numbers or dates, so the fallback dumper writes them back unchanged.
        `multi_statements`: several statements per round trip (only for dbguard's own
        fixed queries; never with a dump's statements).
        """
        extra: dict[str, Any] = {}
        if raw:
            extra["conv"] = {k: v for k, v in conversions.items() if not isinstance(k, int)}
        if multi_statements:
            extra["client_flag"] = CLIENT.MULTI_STATEMENTS
        return pymysql.connect(
            host=self.host,
            port=self.port,
            unix_socket=self.socket,
            user=self.user,
            password=self.password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=read_timeout,
            write_timeout=read_timeout,
            # A dump's largest statement is one row (hex doubles a blob): let PyMySQL
            # send what the server itself accepts.
            max_allowed_packet=1 << 30,
            **extra,
        )

    def option_file(self) -> str:
        """The [client] section for the dump tool. Everything that reaches the server goes
        here, the password above all: argv is world-readable in /proc, this file is
        0600 and removed after the run."""
        lines = ["[client]", f"user={option_value(self.user)}"]
        lines.append(f"password={option_value(self.password)}")
        if self.socket:
            lines += ["protocol=SOCKET", f"socket={option_value(self.socket)}"]
        else:
            # PyMySQL always uses TCP for a host name, also "localhost"; the tool must
            # reach the same server the same way.
            lines += ["protocol=TCP", f"host={option_value(self.host)}", f"port={self.port}"]
        return "\n".join(lines) + "\n"


@contextmanager
def option_file(endpoint: Endpoint, folder: Path) -> Iterator[Path]:
    """A private option file in `folder`, removed on exit whatever happens.

    O_EXCL|O_NOFOLLOW: a file or symlink planted under that name is never written
    through; the file is 0600 from its first byte.
    """
    path = folder / f"client-{os.urandom(4).hex()}.cnf"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(endpoint.option_file())
        yield path
    finally:
        path.unlink(missing_ok=True)


# ---- errors -------------------------------------------------------------------------------


def error_code(err: BaseException) -> int | None:
    args: tuple[Any, ...] = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def error_text(err: BaseException) -> str:
    args: tuple[Any, ...] = getattr(err, "args", ())
    if len(args) >= 2 and isinstance(args[1], str):
        return args[1]
    return str(err)


def explain(
    err: BaseException,
    endpoint: Endpoint,
    database: str | None,
    kind: type[DbguardError] = BackupFailed,
) -> DbguardError:
    """A user-facing error for a failure talking to the server: unreachable, wrong
    password and missing database each get their own message. A missing database is
    DatabaseMissing when `kind` is BackupFailed (nothing to back up, nothing to lose)."""
    code = error_code(err)
    text = scrub(error_text(err), endpoint.password)
    where = endpoint.where
    if code in _UNREACHABLE:
        return kind(
            f"cannot reach the MySQL/MariaDB server at {where}: {text}",
            "start the server, or fix the host, port or socket in the project's settings "
            "(DB_HOST, DB_PORT, DB_SOCKET or DATABASE_URL)",
        )
    if code == _ACCESS_DENIED:
        return kind(
            f"the MySQL/MariaDB server at {where} refused user '{endpoint.user}': "
            f"access denied (wrong password?)",
            "check DB_USERNAME and DB_PASSWORD (or DATABASE_URL); dbguard connects with "
            "the credentials the project uses",
        )
    if code == _DATABASE_ACCESS_DENIED:
        return kind(
            f"user '{endpoint.user}' may not use database {database!r} on {where}: {text}",
            "grant the user access to the database, or check DB_DATABASE",
        )
    if code == _UNKNOWN_DATABASE:
        if kind is BackupFailed:
            return DatabaseMissing(
                f"the MySQL/MariaDB database {database!r} on {where} does not exist"
            )
        return kind(f"the database {database!r} on {where} does not exist")
    if code is not None:
        return kind(f"MySQL/MariaDB at {where} answered error {code}: {text}")
    return kind(f"talking to MySQL/MariaDB at {where} failed: {text}")


# ---- the server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    version: str  # e.g. "10.11.19-MariaDB-0+deb12u1"
    mariadb: bool
    log_bin: bool
    identity: str  # short hash naming this server (never equal for two servers)
    # log_slave_updates: what a replica applies goes to its own binary log too.
    logs_replicated: bool = False

    @property
    def flavour(self) -> str:
        return "MariaDB" if self.mariadb else "MySQL"


def server_info(conn: Any, endpoint: Endpoint) -> ServerInfo:
    """What the engine needs to know about the server behind `conn`."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT @@version, @@version_comment, @@hostname, @@port, @@server_id, @@log_bin"
        )
        version, comment, hostname, port, server_id, log_bin = cur.fetchone()
        mariadb = "mariadb" in f"{version} {comment}".lower()
        uuid = ""
        if not mariadb:  # MariaDB has no server_uuid
            cur.execute("SELECT @@server_uuid")
            uuid = str(cur.fetchone()[0])
        logs_replicated = _logs_replicated(cur)
    # hostname+port+server_id+uuid tell servers apart; where we reached it from is
    # included so a tunnel to another server on the same port never looks the same.
    seed = f"{hostname}|{port}|{server_id}|{uuid}|{version}|{endpoint.where}"
    identity = hashlib.sha256(seed.encode()).hexdigest()[:12]
    return ServerInfo(str(version), mariadb, bool(int(log_bin or 0)), identity, logs_replicated)


def _logs_replicated(cur: Any) -> bool:
    """log_slave_updates (log_replica_updates on MySQL 8.0.26 and later); False when
    neither name is known, which only costs a check for replication."""
    for name in ("log_replica_updates", "log_slave_updates"):
        try:
            cur.execute(f"SELECT @@{name}")
        except pymysql.MySQLError as err:
            if error_code(err) == _UNKNOWN_SYSTEM_VARIABLE:
                continue
            raise
        return bool(int(cur.fetchone()[0] or 0))
    return False


def fetch_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


# ---- views, triggers, routines, events --------------------------------------------------

ObjectKind = Literal["TRIGGER", "VIEW", "PROCEDURE", "FUNCTION", "EVENT"]


@dataclass(frozen=True)
class ObjectDef:
    """One view, trigger, routine or event as `SHOW CREATE` gives it, in the bytes and
    session settings it was created with (so its character set and sql_mode survive)."""

    kind: ObjectKind
    name: str
    create: bytes  # in `charset_client`
    charset_client: str
    collation_connection: str
    sql_mode: str | None = None  # views keep none
    time_zone: str | None = None  # events only
    # The database's default collation it was created under (not views'): what it does
    # not declare (a routine's parameters, a trigger's variables) takes that one's
    # character set.
    database_collation: str | None = None

    def settings(self) -> list[bytes]:
        statements = [
            f"SET character_set_client = {self.charset_client}".encode(),
            f"SET character_set_results = {self.charset_client}".encode(),
            f"SET collation_connection = {self.collation_connection}".encode(),
        ]
        if self.sql_mode is not None:
            statements.append(f"SET sql_mode = '{self.sql_mode}'".encode())
        if self.time_zone is not None:
            statements.append(f"SET time_zone = '{self.time_zone}'".encode())
        return statements

    def drop(self) -> bytes:
        return f"DROP {self.kind} IF EXISTS {quote_ident(self.name)}".encode()

    def apply(self, cur: Any) -> None:
        """Create it through `cur` (whose session's current database is the home),
        under the database collation it was created under: the home's default is
        switched to it for the statement where it differs, as mysqldump's output does
        around routines."""
        was = None
        if self.database_collation and _COLLATION.fullmatch(self.database_collation):
            cur.execute("SELECT @@collation_database")
            current = fetch_text(cur.fetchone()[0])
            if _COLLATION.fullmatch(current) and current.lower() != self.database_collation.lower():
                was = current
        if was is not None:
            cur.execute(f"ALTER DATABASE COLLATE {self.database_collation}")
        try:
            for statement in self.settings():
                cur.execute(statement)
            try:
                cur.execute(self.create)
            finally:
                cur.execute(RESET_SESSION)
        finally:
            if was is not None:
                cur.execute(f"ALTER DATABASE COLLATE {was}")


_COLLATION = re.compile(r"[A-Za-z0-9_]+")


# Back to the session settings restores and dumps run with after an object's own.
RESET_SESSION = b"SET NAMES utf8mb4, sql_mode = 'NO_AUTO_VALUE_ON_ZERO', time_zone = '+00:00'"


_LIST_OBJECTS = {
    "TRIGGER": (
        "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s "
        "ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER"
    ),
    "VIEW": "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s "
    "ORDER BY TABLE_NAME",
    "PROCEDURE": "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s "
    "AND ROUTINE_TYPE = 'PROCEDURE' ORDER BY ROUTINE_NAME",
    "FUNCTION": "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s "
    "AND ROUTINE_TYPE = 'FUNCTION' ORDER BY ROUTINE_NAME",
    "EVENT": "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s "
    "ORDER BY EVENT_NAME",
}


def object_names(cur: Any, database: str, kind: ObjectKind) -> list[str]:
    cur.execute(_LIST_OBJECTS[kind], (database,))
    return [fetch_text(row[0]) for row in cur.fetchall()]


def show_create(cur: Any, kind: ObjectKind, name: str) -> ObjectDef:
    """`SHOW CREATE <kind>` in the session's current database, read as raw bytes.

    Results come back with character_set_results=binary, as mysqldump reads them: the
    statement is returned in the bytes it was written in, and replayed under its own
    character_set_client, so no text is converted on the way."""
    cur.execute("SET SESSION character_set_results = binary")
    try:
        cur.execute(f"SHOW CREATE {kind} {quote_ident(name)}")
        row = cur.fetchone()
    finally:
        cur.execute("SET SESSION character_set_results = utf8mb4")
    if row is None:
        raise LookupError(f"{kind} {name} vanished")
    text = [fetch_text(value) for value in row]
    if kind == "VIEW":  # View, Create View, character_set_client, collation_connection
        create = row[1]
        return ObjectDef(kind, name, _raw(create, kind, name), text[2], text[3])
    if kind == "EVENT":  # Event, sql_mode, time_zone, Create Event, cs, collation, db coll
        return ObjectDef(
            kind, name, _raw(row[3], kind, name), text[4], text[5], text[1], text[2], text[6]
        )
    # Trigger/Procedure/Function: name, sql_mode, statement, cs, collation, db collation
    return ObjectDef(
        kind, name, _raw(row[2], kind, name), text[3], text[4], text[1], database_collation=text[5]
    )


def _raw(value: Any, kind: str, name: str) -> bytes:
    if value is None:
        # The server hides routine bodies from users who may not see them.
        raise PermissionError(
            f"the server does not show the definition of {kind.lower()} {name} to this user"
        )
    return bytes(value) if isinstance(value, bytes | bytearray) else str(value).encode()


def capture_objects(cur: Any, database: str, kinds: tuple[ObjectKind, ...]) -> list[ObjectDef]:
    """Definitions of every object of `kinds` in `database` (the session's current
    database must be `database`, so views come back without its name in them)."""
    found = []
    for kind in kinds:
        for name in object_names(cur, database, kind):
            found.append(show_create(cur, kind, name))
    return found


def routine_grants(cur: Any, database: str) -> list[RoutineGrant]:
    """The grants on `database`'s procedures and functions. Needs SELECT on
    mysql.procs_priv (raises pymysql's access error without it)."""
    cur.execute(
        "SELECT User, Host, Routine_type, Routine_name, Proc_priv FROM mysql.procs_priv "
        "WHERE Db = %s AND Routine_type IN ('PROCEDURE', 'FUNCTION') "
        "ORDER BY Routine_type, Routine_name, User, Host",
        (database,),
    )
    return [RoutineGrant(*(fetch_text(value) for value in row)) for row in cur.fetchall()]

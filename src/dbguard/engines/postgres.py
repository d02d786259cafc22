"""PostgreSQL: pg_dump in custom format, read in one exported snapshot; restore by swap.

Backup. A psycopg connection reads the change signal, then opens a REPEATABLE READ
transaction and exports its snapshot; pg_dump (`-Fc -Z0`: the store's zstd compresses
several times faster than pg_dump's gzip for the same size) imports it with
`--snapshot`, and the manifest's row counts are read in that same transaction while
pg_dump runs. pg_dump's stdout streams into the sink a pipe-full at a time; nothing
holds the whole dump. The pg_dump used is the newest one at least as new as the server,
looked for in /usr/lib/postgresql/*/bin before PATH (Debian's /usr/bin wrapper costs
tens of milliseconds per run).

Locks. pg_dump takes ACCESS SHARE on every table first and waits at most 60 s
(`--lock-wait-timeout`) for one another session keeps locked, e.g. with LOCK TABLE or
an ALTER TABLE in an open transaction; the backup then fails naming the table and every
session in the way, looked up in pg_locks and pg_stat_activity right after pg_dump
gives up, while the holder most likely still holds it (lock_wait_failure).

Change signal. The cluster's current snapshot, `pg_current_snapshot()` (xmin:xmax:xip):
it changes when, and only when, a transaction that holds an xid ends, which every
committed change does. A transaction in progress at the first reading is in its xip
list, or at or above its xmax; its end takes it out of the list or moves xmax past it.
So two equal readings prove that nothing committed in between, and the backup's own
fingerprint is its exported snapshot, read in it: exactly what pg_dump sees, with no
window between the two. It is cluster-wide, so another database's commits (or an
autovacuum's ANALYZE) can only cause an extra backup, never a missed one. (Snapshots
leave out lazy VACUUM's backends, which change nothing a dump holds.)
`pg_current_wal_insert_lsn()`, the position in the WAL, was the first signal: it proves
the same, but it also moves without any commit, above all by the standby snapshot that
the background writer logs within 15 s of any write, so a command after a backup
taken in those 15 s could back up again. The fingerprint also names the cluster
(system identifier, timeline, postmaster start) so readings from different servers, a
promoted standby or a restored data folder never compare equal; the moment the shared
statistics were last reset, which a crash restart does (the postmaster keeps running,
and asynchronous commits a backup saw may be lost, their xids handed out again); and
the database's oid, so a dropped and re-created database never matches. Skip checks
read it on a connection kept open per server to the `postgres` maintenance database,
never to the target: a session in the target would make the guarded command's own
`DROP DATABASE` or `CREATE DATABASE ... TEMPLATE` fail. (A target named `postgres` is
the exception: a restore of it ends these connections, see _KEPT_LOCK_CLASS.) Known
limits: a standby gives no signal (None: always back up), nor does a database with an
unlogged sequence (its nextval and setval take no xid at all); and `nextval` on other
sequences takes an xid (and writes WAL) only every 32 values, so a bare
`SELECT nextval(...)` with no row written may not move the signal. Such a value is
stored nowhere in the database, and a restore can hand it out again.

Restore. pg_restore fills a new scratch database (the target's owner, encoding and
locale); the target's database-level settings, grants and comment are copied over; then
one transaction renames target -> <name>_dbguard_replaced_<hex> and scratch -> target,
and the replaced database is dropped. Anything that fails before the swap drops the
scratch database and leaves the target as it was. A verify or restore that is killed
cannot drop its scratch database; the next one on the same server does (see
claim_scratch).

Secrets. psycopg gets the password in-process; the tools get it as PGPASSWORD in their
environment (readable only by their user), never in argv; tool stderr shown to the user
is scrubbed of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import signal
import subprocess
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple, TypeVar

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.errors import InsufficientPrivilege, ObjectInUse

from dbguard.config import BackupSettings
from dbguard.engines.base import (
    DumpInfo,
    EngineName,
    Marker,
    Sink,
    Target,
    human_duration,
    signals_held,
)
from dbguard.engines.pipe import stdout_chunks
from dbguard.errors import (
    BackupFailed,
    Cancelled,
    Damaged,
    DatabaseMissing,
    DbguardError,
    RestoreFailed,
)

log = structlog.get_logger("dbguard.postgres")

FORMAT = "pg-custom"  # pg_dump -Fc without compression; zstd is the store's
TOOL_ROOT = Path("/usr/lib/postgresql")
MAINTENANCE_DB = "postgres"
_CHUNK = 1 << 20
_CONNECT_TIMEOUT = 10  # seconds; an unreachable host must not stall a guarded command
_LOCK_WAIT_MS = 60_000  # pg_dump gives up on a table another session keeps locked
_KEPT_CONNECTIONS = 64
_NAME_MAX = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server
_SESSIONS_GONE_WAIT = 10.0  # seconds for terminated sessions to exit
_STOP_COUNT_WAIT = 30.0
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
_TARGET_PARAMS = frozenset({"host", "hostaddr", "port", "user", "dbname"})
# Settings whose list elements pg_dump quotes one by one (variable_is_guc_list_quote):
# `SET search_path TO 'a, b'` would make a single schema named "a, b".
_LIST_QUOTE_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")
Version = tuple[int, ...]
ErrorKind = type[DbguardError]


# ---- versions and tools (pure but for the --version probe) ------------------------

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_tool_version(text: str) -> Version | None:
    """'pg_dump (PostgreSQL) 15.4 (Debian 15.4-1)' -> (15, 4); '... 9.6.24' -> (9, 6, 24)."""
    match = _VERSION_RE.search(text)
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def server_version(number: int) -> Version:
    """libpq's server version number as a tuple: 150004 -> (15, 4); 90624 -> (9, 6, 24)."""
    if number >= 100000:
        return (number // 10000, number % 10000)
    return (number // 10000, number // 100 % 100, number % 100)


def major(version: Version) -> Version:
    """The part of a version that must be matched: (15,) from 10 on, (9, 6) before."""
    return version[:1] if version[0] >= 10 else version[:2]


def version_text(version: Version) -> str:
    return ".".join(str(part) for part in version)


@dataclass(frozen=True)
class Tool:
    path: Path
    version: Version

    @property
    def label(self) -> str:
        return f"{self.path.name} {version_text(self.version)} ({self.path})"


def default_tool_dirs(path_env: str | None = None) -> list[Path]:
    """/usr/lib/postgresql/<version>/bin, newest first, then the PATH folders."""
    versioned: list[tuple[Version, Path]] = []
    for folder in TOOL_ROOT.glob("*/bin"):
        parts = folder.parent.name.split(".")
        if all(part.isdigit() for part in parts):
            versioned.append((tuple(int(part) for part in parts), folder))
    dirs = [folder for _, folder in sorted(versioned, reverse=True)]
    path = os.environ.get("PATH", "") if path_env is None else path_env
    dirs += [Path(entry) for entry in path.split(os.pathsep) if entry]
    return list(dict.fromkeys(dirs))


def _probe_version(path: Path) -> Version | None:
    try:
        result = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return parse_tool_version(result.stdout.decode("utf-8", "replace"))


def find_tools(name: str, dirs: Sequence[Path]) -> list[Tool]:
    """Every runnable `name` in `dirs` whose version it reports, in search order."""
    found: list[Tool] = []
    seen: set[Path] = set()
    for folder in dirs:
        path = folder / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        version = _probe_version(path)
        if version is not None:
            found.append(Tool(path, version))
    return found


def choose_tool(
    name: str,
    candidates: Sequence[Tool],
    server: Version,
    searched: Sequence[Path],
    error: ErrorKind = BackupFailed,
) -> Tool:
    """The newest candidate whose major version is at least the server's (first found
    among equals). Raises `error` naming the server version and what was found."""
    fitting = [tool for tool in candidates if major(tool.version) >= major(server)]
    if fitting:
        return max(fitting, key=lambda tool: tool.version)  # max keeps the first of equals
    wanted = version_text(major(server))
    install = f"install {name} {wanted} or newer (Debian/Ubuntu: postgresql-client-{wanted})"
    if not candidates:
        where = ", ".join(str(folder) for folder in searched) or "nowhere"
        raise error(
            f"{name} is not installed; the server runs PostgreSQL {version_text(server)} "
            f"(looked in {where})",
            install,
        )
    found = ", ".join(f"{version_text(tool.version)} ({tool.path})" for tool in candidates)
    raise error(
        f"the server runs PostgreSQL {version_text(server)}, but the only {name} versions "
        f"found are {found}; {name} must be at least as new as the server",
        install,
    )


class _Tools:
    """Finds and remembers the installed tools; the search runs once per engine."""

    def __init__(self, dirs: Sequence[Path] | None) -> None:
        self._dirs = list(dirs) if dirs is not None else None
        self._found: dict[str, list[Tool]] = {}
        self._lock = threading.Lock()

    def dirs(self) -> list[Path]:
        return list(self._dirs) if self._dirs is not None else default_tool_dirs()

    def choose(self, name: str, server: Version, error: ErrorKind) -> Tool:
        dirs = self.dirs()
        with self._lock:
            if name not in self._found:
                self._found[name] = find_tools(name, dirs)
            candidates = self._found[name]
        return choose_tool(name, candidates, server, dirs, error)

    def forget(self) -> None:
        """Search again next time (a tool vanished or was upgraded)."""
        with self._lock:
            self._found.clear()


# ---- connection settings and connection errors ------------------------------------


@dataclass(frozen=True)
class ConnSettings:
    """How to reach one database, for psycopg and for the command-line tools alike."""

    host: str  # a host name, an address or a Unix socket folder
    port: int | None
    user: str | None
    dbname: str
    password: str | None = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        port = f":{self.port}" if self.port else ""
        if self.host.startswith("/"):
            return f"socket {self.host}{port}"
        return f"{self.host}{port}"

    @property
    def who(self) -> str:
        return self.user or "(default user)"

    @property
    def server_key(self) -> tuple[object, ...]:
        """Everything but the database: one kept connection serves all its databases."""
        return (self.host, self.port, self.user, self.password, self.params)

    def for_db(self, dbname: str) -> ConnSettings:
        return dataclasses.replace(self, dbname=dbname)

    def _public(self) -> dict[str, Any]:
        values: dict[str, Any] = {"connect_timeout": str(_CONNECT_TIMEOUT)}
        values.update((key, value) for key, value in self.params if key not in _SECRET_PARAMS)
        values.update(host=self.host, dbname=self.dbname)
        if self.port:
            values["port"] = self.port
        if self.user:
            values["user"] = self.user
        return values

    def psycopg_kwargs(self) -> dict[str, Any]:
        values = self._public()
        values.update((key, value) for key, value in self.params if key == "sslpassword")
        values["fallback_application_name"] = "dbguard"
        if self.password is not None:
            values["password"] = self.password
        return values

    def tool_conninfo(self) -> str:
        """A conninfo for `--dbname`: safe to show in argv, it holds no secret."""
        return make_conninfo(**self._public())

    def tool_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


def _default_host(port: int | None, env: Mapping[str, str]) -> str:
    """libpq's defaults differ between builds (psycopg's wheel looks in /tmp, Debian's
    pg_dump in /var/run/postgresql), so both are given one explicit host."""
    if env.get("PGHOST"):
        return env["PGHOST"]
    number = port or int(env.get("PGPORT") or 5432)
    for folder in ("/var/run/postgresql", "/run/postgresql", "/tmp"):  # noqa: S108 (sockets)
        if Path(folder, f".s.PGSQL.{number}").exists():
            return folder
    return "localhost"


def connection_settings(
    target: Target, env: Mapping[str, str] | None = None, error: ErrorKind = BackupFailed
) -> ConnSettings:
    """Settings for `target`. Raises `error` when it names no database."""
    env = os.environ if env is None else env
    if not target.name:
        raise error(
            f"the PostgreSQL database at {target.host or target.socket} has no name",
            "set the database name (DB_DATABASE, or the path of DATABASE_URL)",
        )
    port = target.port
    if target.socket:
        socket = Path(target.socket)
        if socket.name.startswith(".s.PGSQL."):  # the socket file itself: libpq wants its folder
            host = str(socket.parent)
            suffix = socket.name.removeprefix(".s.PGSQL.")
            port = port or (int(suffix) if suffix.isdigit() else None)
        else:
            host = str(socket)
    else:
        host = target.host or _default_host(port, env)
    password = target.password.get_secret_value() if target.password is not None else None
    if password is None:
        password = target.params.get("password")
    params = tuple(
        sorted(
            (key, value)
            for key, value in target.params.items()
            if key not in _TARGET_PARAMS and key != "password"
        )
    )
    return ConnSettings(host, port, target.user, target.name, password, params)


def scrub(text: str, secret: str | None) -> str:
    """`text` without the password, and without anything that looks like one."""
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text, flags=re.I)


def _detail(message: str) -> str:
    """libpq's interesting part: 'connection to server ... failed: FATAL:  x' -> 'x'."""
    first = message.strip().splitlines()[0] if message.strip() else message
    first = first.split(" failed: ")[-1]
    return re.sub(r"^(?:connection failed: )?(?:FATAL:\s+)?", "", first).strip()


def _connect_error(err: psycopg.Error, s: ConnSettings, kind: ErrorKind) -> DbguardError:
    """One clear message per way a connection fails; the password never appears."""
    text = scrub(str(err), s.password)
    detail = _detail(text)
    lowered = text.lower()
    if "password authentication failed" in lowered:
        return kind(
            f"PostgreSQL at {s.where} refused the password for user {s.who}",
            "check the password (DB_PASSWORD, the one in DATABASE_URL, or PGPASSWORD)",
        )
    if "no password supplied" in lowered:
        return kind(
            f"PostgreSQL at {s.where} wants a password for user {s.who} and none was given",
            "set the password (DB_PASSWORD, DATABASE_URL or PGPASSWORD)",
        )
    if re.search(r'database ".*" does not exist', text):
        problem = f"the PostgreSQL database {s.dbname} does not exist at {s.where}"
        if kind is BackupFailed:
            return DatabaseMissing(problem)
        return kind(problem, "check the database name")
    if re.search(r'role ".*" does not exist', text):
        return kind(
            f"PostgreSQL at {s.where} has no user {s.who}",
            "check the user name (DB_USERNAME, DATABASE_URL or PGUSER)",
        )
    if "no pg_hba.conf entry" in lowered:
        return kind(
            f"PostgreSQL at {s.where} does not accept this connection: {detail}",
            "allow it in the server's pg_hba.conf, or connect as a user and host it allows",
        )
    if "permission denied for database" in lowered:
        return kind(
            f"user {s.who} may not connect to the database {s.dbname} at {s.where}",
            f"GRANT CONNECT ON DATABASE to {s.who}, or use a user that has it",
        )
    if "FATAL" in text:
        return kind(f"PostgreSQL at {s.where} refused the connection: {detail}")
    if "invalid response to ssl negotiation" in lowered or (
        "expected authentication request from server" in lowered
    ):
        # The port answers, but not as PostgreSQL (MySQL's port, a web server): "not
        # reachable" with libpq's one-letter detail sent users to start a running server.
        return kind(
            f"what answers at {s.where} is not a PostgreSQL server ({detail})",
            "check the port (DB_PORT, DATABASE_URL); PostgreSQL listens on 5432 unless set",
        )
    return kind(
        f"the PostgreSQL server at {s.where} is not reachable: {detail}",
        "start the server, or check the host and port (DB_HOST, DB_PORT, DATABASE_URL)",
    )


def _maintenance_refused(err: psycopg.Error) -> bool:
    """The server is fine but this maintenance database cannot be used by this user."""
    text = str(err)
    return bool(
        re.search(r'database ".*" does not exist', text)
        or "permission denied for database" in text
        or "no pg_hba.conf entry" in text
    )


def _connect(s: ConnSettings, kind: ErrorKind) -> Conn:
    try:
        return psycopg.connect(autocommit=True, **s.psycopg_kwargs())
    except psycopg.Error as err:
        raise _connect_error(err, s, kind) from None


def _query_error(
    err: psycopg.Error, s: ConnSettings, doing: str, kind: ErrorKind, fix: str = ""
) -> DbguardError:
    text = scrub(str(err).strip(), s.password)
    if isinstance(err, psycopg.OperationalError) and err.sqlstate is None:
        return kind(
            f"lost the connection to PostgreSQL at {s.where} while {doing}: {_detail(text)}",
            f"check that the server is running, then try again{'; ' if fix else ''}{fix}",
        )
    return kind(f"PostgreSQL at {s.where} failed while {doing}: {text}", fix)


# ---- names -------------------------------------------------------------------------


def scratch_name(base: str, role: str) -> str:
    """'<base>_dbguard_<role>_<hex>', shortened to fit PostgreSQL's 63-byte names."""
    suffix = f"_dbguard_{role}_{secrets.token_hex(4)}"
    room = _NAME_MAX - len(suffix.encode())
    head = base.encode("utf-8")[:room].decode("utf-8", "ignore")
    return head + suffix


# A scratch database in use carries a session-level advisory lock, taken by the
# connection that creates it before it does, and released with that session, however
# it ends. pg_locks lists the advisory locks of every database, so a later verify or
# restore, connected anywhere on the server, can tell a scratch database whose creator
# is gone (killed mid-verify, say) and drop it. The replaced copy a restore keeps
# until its swap is done holds the user's earlier data: it is never dropped this way.
_SCRATCH_LOCK_CLASS = 0x64626773  # "dbgs"
_LEFT_BEHIND = r"_dbguard_(verify|restore)_[0-9a-f]{8}$"


def _scratch_lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def claim_scratch(conn: Conn, name: str) -> None:
    """Mark `name` as in use for as long as `conn` lives; call before creating it."""
    conn.execute(
        "SELECT pg_advisory_lock(%s::int4, %s::int4)",
        (_SCRATCH_LOCK_CLASS, _scratch_lock_key(name)),
    )


def _drop_left_behind(conn: Conn) -> None:
    """Drop the scratch databases of verifies and restores that were killed mid-way:
    named as dbguard names them, with no claim on them, and nobody connected (no
    FORCE). Never raises: this is housekeeping before the real work."""
    try:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname ~ %s", (_LEFT_BEHIND,)
            )
        ]
        for name in names:
            claimed = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = %s::oid AND objid = %s::oid AND objsubid = 2)",
                (_SCRATCH_LOCK_CLASS, _scratch_lock_key(name)),
            ).fetchone()
            if claimed is None or claimed[0]:
                continue
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            except psycopg.Error as err:  # someone is connected, or it is not ours to drop
                log.info("left a scratch database in place", database=name, error=str(err))
                continue
            log.info("dropped a scratch database a killed verify or restore left", database=name)
    except psycopg.Error as err:
        log.warning("could not look for left-behind scratch databases", error=str(err))


def split_setting_list(value: str) -> list[str]:
    """A list setting as stored ('a, "My Schema"') -> its elements ['a', 'My Schema']."""
    items: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            return items
        if value[i] == '"':
            chars: list[str] = []
            i += 1
            while i < n:
                if value[i] == '"':
                    if value[i + 1 : i + 2] != '"':
                        break
                    i += 1  # a doubled quote stands for one
                chars.append(value[i])
                i += 1
            items.append("".join(chars))
            end = value.find(",", i)
        else:
            end = value.find(",", i)
            items.append(value[i : n if end < 0 else end].strip())
        if end < 0:
            return items
        i = end + 1


# ---- SQL -----------------------------------------------------------------------------

# Names qualified: the backup reads this in the target database, where a search path
# with pg_catalog after public could let a same-named table or function stand in.
# A reset time of zero (2000-01-01) would mean "never reset": then no signal.
_SIGNAL_SQL = """
SELECT d.oid,
       s.system_identifier,
       (extract(epoch FROM pg_catalog.pg_postmaster_start_time()) * 1000000)::bigint,
       (SELECT (extract(epoch FROM
                NULLIF(stats_reset, '2000-01-01 00:00:00+00')) * 1000000)::bigint
        FROM pg_catalog.pg_stat_bgwriter),
       w.timeline,
       w.snapshot
FROM pg_catalog.pg_control_system() s
CROSS JOIN (SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
                        ELSE pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_insert_lsn())
                        END AS timeline,
                   CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
                        ELSE pg_catalog.pg_current_snapshot()::text END AS snapshot) w
LEFT JOIN pg_catalog.pg_database d ON d.datname = %s
"""

# nextval and setval on an unlogged sequence take no xid (they write no WAL), so they
# never move the signal; pg_dump keeps such a sequence's value all the same.
_UNLOGGED_SEQUENCES_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relkind = 'S' AND relpersistence = 'u')"
)

# Qualified for the reason _SIGNAL_SQL gives.
_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')
ORDER BY 1, 2
"""

# A connection dbguard keeps open (for change checks and marks, in dbguardd and in
# dbguardctl) holds a shared advisory lock of this class for as long as it lives. When
# the target is the maintenance database itself (a database named `postgres`: Supabase,
# the official Docker image's default), those connections are in the target: a restore
# tells them from everyone else's by this lock, which no client takes by chance (an
# application name can be anyone's), and ends them; their owner reconnects when it
# next reads (`_on_server`).
_KEPT_LOCK_CLASS = 0x64626B63  # "dbkc"

_SESSIONS_SQL = """
SELECT a.pid, coalesce(a.usename, '?'),
       coalesce(nullif(a.application_name, ''), a.backend_type, 'a session of another role'),
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
                 AND l.classid = %(kept)s::oid AND l.objid = 0 AND l.objsubid = 2)
FROM pg_stat_activity a
WHERE a.datname = %(dbname)s AND a.pid <> pg_backend_pid()
  AND a.backend_type IS DISTINCT FROM 'autovacuum worker' -- NULL: another role's session
ORDER BY a.pid
"""


_MARKER_SETTING = "dbguard.environment"
_MARKER_SQL = """
SELECT d.oid,
       (SELECT split_part(c, '=', 2)
        FROM pg_db_role_setting s, unnest(s.setconfig) c
        WHERE s.setdatabase = d.oid AND s.setrole = 0
          AND split_part(c, '=', 1) = 'dbguard.environment')
FROM (VALUES (%s::name)) AS n (datname)
LEFT JOIN pg_database d ON d.datname = n.datname
"""


def _read_marker(conn: Conn, s: ConnSettings) -> Marker | None:
    row = conn.execute(_MARKER_SQL, (s.dbname,)).fetchone()
    assert row is not None  # the query always returns one row
    oid, value = row
    if oid is None:
        raise DatabaseMissing(f"the PostgreSQL database {s.dbname} does not exist at {s.where}")
    if value == "production":
        return "production"
    if value == "development":
        return "development"
    return None


def _read_signal(conn: Conn, s: ConnSettings) -> str | None:
    """The change signal for `s.dbname`, in the connection's current snapshot (in a
    REPEATABLE READ transaction, the transaction's); None on a standby, or where the
    statistics show no reset time (a crash would then go unseen). Raises
    DatabaseMissing when the database does not exist."""
    row = conn.execute(_SIGNAL_SQL, (s.dbname,)).fetchone()
    assert row is not None  # the query always returns one row
    oid, system_id, started, stats_reset, walfile, snapshot = row
    if oid is None:
        raise DatabaseMissing(f"the PostgreSQL database {s.dbname} does not exist at {s.where}")
    if snapshot is None or stats_reset is None:  # a standby; statistics never reset
        return None
    timeline = int(str(walfile)[:8], 16)
    return f"postgres:{system_id}:{timeline}:{started}:{stats_reset}:{oid}:{snapshot}"


_READ_EVERY_TABLE = (
    "back up as a user that may read every table of the database (its owner, or one "
    "given SELECT on them: GRANT pg_read_all_data TO <user> on PostgreSQL 14 and later)"
)

# pg_dump, and the row counts beside it, read with row_security off: a table whose
# policies apply to the user fails with this (42501, as a missing privilege does) rather
# than be dumped in part. Neither owning the table nor SELECT nor pg_read_all_data gets
# past a policy: a superuser or a BYPASSRLS role does, and the owner does unless the
# table is set to FORCE ROW LEVEL SECURITY. The server adds its hint about NO FORCE
# only when the user is the owner (check_enable_rls), so that case is told apart.
_ROW_SECURITY_RE = re.compile(
    r'query would be affected by row-level security policy for table "(.+?)"'
)


def _quoted(name: str) -> str:
    """`name` as SQL writes it: bare when it may be, else in double quotes."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def row_security_fix(error: str, user: str | None) -> str | None:
    """The way out of a backup stopped by row-level security, from the server's error
    (pg_dump's or the counts'); None for any other error. `user`: who backed up."""
    match = _ROW_SECURITY_RE.search(error)
    if match is None:
        return None
    table = _quoted(match.group(1))
    role = _quoted(user) if user else "<user>"
    bypass = (
        f"back up as a superuser, or as a role with BYPASSRLS (a superuser can give it: "
        f"`ALTER ROLE {role} BYPASSRLS`)"
    )
    user = user or "the user"
    if "NO FORCE ROW LEVEL SECURITY" in error:
        return (
            f"table {table} is set to FORCE ROW LEVEL SECURITY, so its policies bind its "
            f"owner {user} too, and a backup must read every row (neither owning it nor "
            f"pg_read_all_data gets past a policy): {bypass}, or, if the policies need "
            f"not bind the owner, `ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY`"
        )
    return (
        f"row-level security policies on table {table} apply to {user}, and a backup "
        f"must read every row (neither SELECT on it nor pg_read_all_data gets past a "
        f"policy): {bypass}, or as the table's owner, unless the table is set to FORCE "
        f"ROW LEVEL SECURITY"
    )


def count_rows(conn: Conn, stop: threading.Event | None = None) -> dict[str, int]:
    """Rows per ordinary table, keyed 'schema.table', in the connection's snapshot.

    Extension-owned tables are left out: pg_dump does not dump their rows."""
    tables = conn.execute(_TABLES_SQL).fetchall()
    counts: dict[str, int] = {}
    for schema, table in tables:
        if stop is not None and stop.is_set():
            raise Cancelled("counting rows was stopped")
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        assert row is not None
        counts[f"{schema}.{table}"] = int(row[0])
    return counts


class Session(NamedTuple):
    """A session connected to a database, as pg_stat_activity shows it."""

    pid: int
    user: str
    app: str
    kept: bool  # a connection dbguard itself keeps open (see _KEPT_LOCK_CLASS)


def _keep(conn: Conn) -> None:
    """Mark `conn` as one dbguard keeps open; shared, so the marks never conflict."""
    conn.execute("SELECT pg_advisory_lock_shared(%s::int4, 0)", (_KEPT_LOCK_CLASS,))


def _sessions(conn: Conn, dbname: str) -> list[Session]:
    rows = conn.execute(_SESSIONS_SQL, {"dbname": dbname, "kept": _KEPT_LOCK_CLASS})
    return [Session(int(pid), str(user), str(app), bool(kept)) for pid, user, app, kept in rows]


def others(sessions: Sequence[Session]) -> list[Session]:
    """The sessions that are not dbguard's own kept connections: those stop a restore."""
    return [session for session in sessions if not session.kept]


def _busy(dbname: str, sessions: Sequence[Session]) -> RestoreFailed:
    kinds = Counter((session.app, session.user) for session in sessions)
    described = ", ".join(
        f"{app} as {user}" + (f" (x{count})" if count > 1 else "")
        for (app, user), count in sorted(kinds.items())
    )
    n = len(sessions)
    return RestoreFailed(
        f"{n} other session{'s are' if n > 1 else ' is'} connected to {dbname}: {described}; "
        "the database was not changed",
        "close them and restore again, or let dbguard end them "
        "(restore with end_connections, `dbguardctl restore --end-connections`)",
    )


@dataclass(frozen=True)
class _Database:
    """What a scratch database copies from the database it will replace."""

    oid: int
    owner: str
    encoding: str
    collate: str
    ctype: str
    provider: str  # 'c' libc, 'i' ICU, 'b' builtin
    locale: str | None  # the ICU or builtin locale
    tablespace: str
    connection_limit: int
    acl_is_default: bool
    comment: str | None


def _database(conn: Conn, dbname: str) -> _Database | None:
    number = conn.info.server_version
    if number >= 170000:
        provider = "d.datlocprovider::text, d.datlocale"
    elif number >= 150000:
        provider = "d.datlocprovider::text, d.daticulocale"
    else:
        provider = "'c', NULL::text"
    row = conn.execute(
        f"""
        SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),
               d.datcollate, d.datctype, {provider}, t.spcname, d.datconnlimit,
               d.datacl IS NULL, shobj_description(d.oid, 'pg_database')
        FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
        WHERE d.datname = %s
        """,
        (dbname,),
    ).fetchone()
    if row is None:
        return None
    return _Database(*row)


def _create_database(
    conn: Conn, name: str, like: _Database | None, *, same_owner: bool = True
) -> None:
    """A new empty database with `like`'s encoding and locale (and owner); template0,
    because dumps assume a pristine database (a template1 with extensions in it would
    make the restore fail on 'already exists')."""
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))]
    if like is not None:
        if same_owner:
            parts.append(sql.SQL("OWNER {}").format(sql.Identifier(like.owner)))
        parts.append(
            sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                sql.Literal(like.encoding),
                sql.Literal(like.collate),
                sql.Literal(like.ctype),
            )
        )
        if like.provider == "i" and like.locale:
            parts.append(
                sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(like.locale))
            )
        elif like.provider == "b" and like.locale:
            parts.append(
                sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(
                    sql.Literal(like.locale)
                )
            )
        if like.tablespace != "pg_default":
            parts.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(like.tablespace)))
    conn.execute(sql.SQL(" ").join(parts))


def _setting_statement(
    database: str, role: str | None, name: str, values: Sequence[str]
) -> sql.Composed:
    literal = sql.SQL(", ").join(sql.Literal(item) for item in values)
    if role is None:
        return sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
            sql.Identifier(database), sql.Identifier(name), literal
        )
    return sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} TO {}").format(
        sql.Identifier(role), sql.Identifier(database), sql.Identifier(name), literal
    )


def refused_setting(
    database: str, setting: str, role: str | None, user: str, error: str, put_back: str
) -> str:
    """What the person who restored reads about a setting they may not give the restored
    database: which, why, and how it comes back."""
    whose = f" for role {role}" if role else ""
    told = (
        f"{database} was restored without its setting {setting}{whose}: {user} may not "
        f"set it ({error}); a superuser can put it back with `{put_back}`"
    )
    if role is None and "permission denied to set parameter" in error:
        name = setting.partition(" = ")[0]
        grantee = '"' + user.replace('"', '""') + '"'
        told += (
            f"; on PostgreSQL 15 and later, `GRANT SET ON PARAMETER {name} TO {grantee}` "
            f"(as a superuser) lets {user} restore it with the database"
        )
    return told


def _copy_database_properties(
    conn: Conn, source: _Database, dest: str, final_name: str
) -> list[str]:
    """Grants, per-database settings, connection limit and comment live on the database,
    not in the dump: without this, a restore would silently drop e.g. a search_path set
    with ALTER DATABASE, or a REVOKE CONNECT FROM PUBLIC.

    A setting this user may not set (a superuser-only one a superuser set, or another
    role's) is left out rather than stopping the restore for good: the owner could drop
    and re-create the database without it anyway. Returns what to tell about each one
    left out (`final_name` is the name the database will have)."""
    target = sql.Identifier(dest)
    if not source.acl_is_default:
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
        grants = conn.execute(
            """
            SELECT a.privilege_type, a.is_grantable,
                   CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END
            FROM pg_database d, aclexplode(d.datacl) a
            WHERE d.oid = %s AND a.grantee <> d.datdba
            """,
            (source.oid,),
        ).fetchall()
        for privilege, grantable, grantee in grants:
            conn.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),
                    target,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                    sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )
    settings = conn.execute(
        """
        SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,
               s.setconfig
        FROM pg_db_role_setting s WHERE s.setdatabase = %s
        """,
        (source.oid,),
    ).fetchall()
    refused: list[str] = []
    for role, config in settings:
        for entry in config or ():
            name, _, value = str(entry).partition("=")
            values = split_setting_list(value) if name in _LIST_QUOTE_SETTINGS else [value]
            try:
                conn.execute(_setting_statement(dest, role, name, values))
            except InsufficientPrivilege as err:
                put_back = _setting_statement(final_name, role, name, values).as_string(conn)
                error = str(err).strip().splitlines()[0]
                user = conn.info.user
                refused.append(
                    refused_setting(final_name, f"{name} = {value}", role, user, error, put_back)
                )
    if source.connection_limit != -1:
        conn.execute(
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
                target, sql.Literal(source.connection_limit)
            )
        )
    if source.comment is not None:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(target, sql.Literal(source.comment))
        )
    return refused


def _drop_database(conn: Conn, name: str) -> None:
    force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(name)))


# ---- child processes -----------------------------------------------------------------


class _Child:
    """One run of pg_dump or pg_restore: stderr into a file in the scratch folder, and a
    watchdog that kills it on timeout or cancel. `close` always leaves it dead and reaped,
    whatever happened, so no pg_dump outlives its backup and no zombie stays behind."""

    def __init__(
        self,
        tool: Tool,
        args: Sequence[str],
        env: Mapping[str, str],
        scratch: Path,
        timeout: float,
        cancel: threading.Event,
        *,
        stdin: int | IO[bytes],
        stdout: int | IO[bytes],
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.tool = tool
        self.timeout = timeout
        self.stderr_path = scratch / f"{tool.path.name}-{secrets.token_hex(4)}.stderr"
        self.stopped: str | None = None  # "timeout" or "cancelled" if the watchdog fired
        with self.stderr_path.open("xb") as stderr:
            # A new session: a Ctrl-C meant for dbguardctl reaches us, and we stop it.
            self.proc = subprocess.Popen(
                [str(tool.path), *args],
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=dict(env),
                start_new_session=True,
            )
        self._done = threading.Event()
        self._on_stop = on_stop
        self._watchdog = threading.Thread(
            target=self._watch, args=(cancel,), name=f"dbguard-{tool.path.name}-watchdog"
        )
        self._watchdog.start()

    def _watch(self, cancel: threading.Event) -> None:
        # An Event cannot wait on a second Event, hence the short polling period; it
        # only matters while the tool is blocked (a lock), since the sink stops a
        # dump that is writing as soon as the cancel is set.
        deadline = time.monotonic() + self.timeout
        while not self._done.is_set():
            if cancel.is_set():
                self.stopped = "cancelled"
            elif time.monotonic() >= deadline:
                self.stopped = "timeout"
            else:
                self._done.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            self.kill()
            if self._on_stop is not None:
                self._on_stop()
            return

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def close(self) -> None:
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.proc.wait()
        self._done.set()
        self._watchdog.join()

    def stderr_tail(self, secret: str | None, lines: int = 12, size: int = 4096) -> str:
        """The last `lines` lines of the tool's stderr, from its last `size` bytes."""
        try:
            with self.stderr_path.open("rb") as file:
                file.seek(max(0, file.seek(0, os.SEEK_END) - size))
                text = file.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return scrub("\n".join(text.strip().splitlines()[-lines:]), secret)

    def failure(self, kind: ErrorKind, secret: str | None, fix: str) -> DbguardError | None:
        """What went wrong, once the process has exited; None when it succeeded."""
        name = self.tool.path.name
        code = self.proc.returncode
        if self.stopped == "cancelled":
            return Cancelled(f"{name} was stopped because dbguardd is stopping")
        if self.stopped == "timeout":
            return kind(
                f"{name} ran longer than {self.timeout:g} s and was stopped",
                "raise backup.dump_timeout_seconds in config.toml, or find what holds it up "
                "(a long-held lock: look at pg_stat_activity)",
            )
        tail = without_queries(self.stderr_tail(secret, lines=1_000, size=_SAID_BYTES), name)
        tail = "\n".join(tail.splitlines()[-12:])
        said = f":\n{tail}" if tail else " (it printed nothing)"
        if code < 0:
            try:
                how = signal.Signals(-code).name
            except ValueError:
                how = f"signal {-code}"
            return kind(f"{name} was killed by {how}{said}", fix)
        if code > 0:
            return kind(f"{name} failed with exit status {code}{said}", fix)
        return None


_SAID_BYTES = 64 * 1024  # enough to reach the error above a long query's text


def without_queries(stderr: str, tool: str) -> str:
    """`stderr` with each query the tool quotes ("pg_dump: detail: Query was: SELECT
    ...", often dozens of lines) cut to its first line: quoted in full it pushed the
    error that says what happened out of the lines a message shows."""
    kept: list[str] = []
    in_query = False
    for line in stderr.splitlines():
        if line.startswith(f"{tool}: "):
            # "detail: Query was:" (PostgreSQL 15 and later), "error: query was:" before.
            in_query = "query was:" in line.lower()
            if in_query and len(line) > 120:
                line = line[:120] + " ..."
        elif in_query:
            continue
        kept.append(line)
    return "\n".join(kept)


@dataclass
class _Streamed:
    size: int = 0
    head: bytes = b""
    tail: bytes = b""


def _pump_out(child: _Child, out: Sink) -> _Streamed:
    """Copy the child's stdout into `out` as it arrives; returns what the checks need."""
    seen = _Streamed()
    for chunk in stdout_chunks(child.proc):
        if len(seen.head) < 5:
            seen.head = (seen.head + chunk)[:5]
        seen.tail = (seen.tail + chunk[-8:])[-8:]
        out.write(chunk)
        seen.size += len(chunk)
    return seen


def _check_archive(seen: _Streamed, dbname: str) -> None:
    """pg_dump said it succeeded; check that what arrived looks like a whole archive."""
    fix = "run pg_dump by hand against this database to see what it does"
    if seen.size == 0:
        raise BackupFailed(f"pg_dump exited successfully but wrote nothing for {dbname}", fix)
    if seen.head != b"PGDMP":
        raise BackupFailed(
            f"pg_dump's output for {dbname} is not a custom-format archive "
            f"(it starts with {seen.head!r})",
            fix,
        )
    # A custom archive written to a pipe ends with the zero length that closes its last
    # data block, or with the empty offset of its last table-of-contents entry: at least
    # five zero bytes either way. COPY text never contains a zero byte, so output cut
    # off inside table data is caught here; verify's full restore catches the rest.
    if not seen.tail.endswith(b"\0" * 5):
        raise BackupFailed(f"pg_dump's output for {dbname} ends in mid-archive (truncated)", fix)


# What pg_restore says only of an archive that is bad: it does not read as one, ends
# early, or holds statements or table data that do not parse. Everything else (a full
# disk on the server, a lost connection, a missing extension or role, a permission, a
# kill) may be the environment's, and no reason to record a backup as failed.
_BAD_ARCHIVE_RE = re.compile(
    r"input file does not appear to be a valid archive"
    r"|input file is too short"
    r"|did not find magic string in file header"
    r"|unsupported version \S+ in file header"
    r"|unrecognized file format"
    r"|could not read from input file: end of file"
    r"|unexpected end of file"
    r"|found unexpected block ID"
    r"|could not find block ID"
    r"|unrecognized data block type"
    r"|could not (?:uncompress|decompress) data"
    r"|possibly corrupt archive|perhaps a corrupt TOC|corrupt tar header"
    r"|ERROR:\s+(?:syntax error at or near|invalid input syntax|extra data after last "
    r"expected column|missing data for column|unterminated CSV quoted field)"
)


def archive_is_bad(stderr: str) -> bool:
    """Whether pg_restore's error output proves the archive itself bad."""
    return _BAD_ARCHIVE_RE.search(stderr) is not None


# ---- a function of the backup that cannot run while pg_restore restores it -----------
# pg_restore (like pg_dump) runs with search_path set to '' and qualifies every name it
# writes, but a function's body is kept as written. A body that names a table, function
# or type without its schema works in the application's sessions and fails when
# pg_restore makes the server run it: building an index or an exclusion constraint on
# the function, creating a table whose generated column it computes, refreshing a
# materialized view, or loading rows a CHECK constraint, a domain or a generated column
# runs it on. The server's error then names what did not resolve, and its CONTEXT the
# function whose body holds the name, innermost first:
#   pg_restore: error: could not execute query: ERROR:  function norm(text) does not exist
#   ...
#   CONTEXT:  SQL function "norm2" during inlining
#   Command was: CREATE INDEX items_norm ON public.items USING btree (public.norm2(name));
# or, for rows (a PL/pgSQL function's CONTEXT names it with its schema and arguments):
#   pg_restore: error: COPY failed for table "uses_codes": ERROR:  relation "ref_codes" ...
#   CONTEXT:  PL/pgSQL function public.code_ok(text) line 1 at RETURN
#   COPY uses_codes, line 1: "1	a"
#
# Why this proves the backup bad, and no environment's fault. Only the three "does not
# exist" errors of a name lookup are read (a missing extension, role, tablespace,
# collation, a full disk, a lost connection or a permission say something else), only
# with a CONTEXT that puts the lookup inside a function's body (a name pg_dump wrote
# itself is schema-qualified and would fail without one), and only while pg_restore
# runs one of the statements above. Then the scratch database pg_restore was filling
# is asked (it stopped at that error, and keeps everything it restored before): the
# function must be there, as one of the backup's own (an extension's function comes
# from whatever version the server has installed, so its failure may be the server's),
# and so must the name it did not find, in a schema of the backup. A name that is in
# the restored copy and still did not resolve failed for the empty search_path alone,
# which every pg_restore of this archive runs with, on any server. dbguard verifies
# and restores only on the server the backup was taken from: `dbguardctl verify`,
# dbguardd's idle verify and `dbguardctl restore` all reach it through with_credentials,
# which keeps the manifest's host, port and socket (only the password is added), so
# every extension of the source is installed there. The lookup does not lean on that:
# another server can answer at the same address (a container replaced by one without
# the extension), and then the restore stops earlier, at CREATE EXTENSION, which is not
# read here. Messages in another language (lc_messages) do not match: such a failure
# is told as any other, and nothing is marked.
_UNRESOLVED_RE = re.compile(
    r"(?:could not execute query|COPY failed for table \"(?P<copy>[^\n]+?)\"): "
    r"ERROR:\s+(?P<error>function (?P<function>[^\s(]+)\((?P<arguments>[^)\n]*)\) does not exist"
    r"|relation \"(?P<relation>[^\"\n]+)\" does not exist"
    r"|type \"(?P<type>[^\"\n]+)\" does not exist)[ \t]*$",
    re.M,
)
# The innermost function of the CONTEXT (its first line that names one): a SQL
# function by name alone, a PL/pgSQL one as its regprocedure ('public.code_ok(text)');
# a line before it ('SQL statement "..."' of a PL/pgSQL EXECUTE) is skipped.
_CONTEXT_FUNCTION_RE = re.compile(
    r'^(?:CONTEXT:\s+)?(?:SQL function "(?P<sql>[^"\n]+)"'
    r"|PL/pgSQL function (?P<plpgsql>[^\n]+?\([^\n]*?\)) line \d+)",
    re.M,
)
# The statements of a dump that run a function of the user's (see above), and what
# pg_restore was doing, said in words.
_RUNS_FUNCTIONS_RE = re.compile(
    r"^Command was: (?:CREATE (?:UNIQUE )?INDEX (?P<index>\S+) ON (?:ONLY )?(?P<on>\S+)"
    r"|ALTER TABLE (?:ONLY )?(?P<altered>\S+)\s+ADD CONSTRAINT (?P<constraint>\S+)"
    r"|CREATE (?:UNLOGGED )?TABLE (?P<created>\S+)"
    r"|REFRESH MATERIALIZED VIEW (?P<view>\S+?);?$)",
    re.M,
)
_USER_SCHEMA = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
    "AND n.nspname !~ '^pg_(toast_)?temp_'"
)
# The function whose body failed: one of the backup's own, no extension's.
_CALLER_SQL = f"""
SELECT p.oid::pg_catalog.regprocedure::text, n.nspname
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE CASE WHEN %(signature)s::text IS NULL THEN p.proname = %(name)s
            ELSE p.oid = pg_catalog.to_regprocedure(%(signature)s) END
  AND {_USER_SCHEMA}
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                    AND d.objid = p.oid AND d.deptype = 'e')
-- of a SQL function's overloads, the one whose body names what was not found
ORDER BY pg_catalog.strpos(pg_catalog.lower(p.prosrc), pg_catalog.lower(%(unresolved)s)) = 0, 1
"""
# Where the backup has the name that did not resolve (an extension's object counts: the
# backup creates the extension in the schema it names).
_DEFINED_SQL = {
    "function": f"""
        SELECT DISTINCT n.nspname FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proname = %(name)s AND (p.provariadic <> 0
               OR %(arguments)s BETWEEN p.pronargs - p.pronargdefaults AND p.pronargs)
          AND {_USER_SCHEMA} ORDER BY 1""",
    "relation": f"""
        SELECT DISTINCT n.nspname FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = %(name)s AND {_USER_SCHEMA} ORDER BY 1""",
    "type": f"""
        SELECT DISTINCT n.nspname FROM pg_catalog.pg_type t
        JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typname = %(name)s AND {_USER_SCHEMA} ORDER BY 1""",
}
_STDERR_READ = 256 * 1024  # a failed CREATE TABLE's statement can run long


@dataclass(frozen=True)
class Unresolved:
    """A name a function's body did not resolve while pg_restore ran it, as read from
    pg_restore's error output (see unresolved_in_function)."""

    kind: str  # 'function', 'relation' or 'type'
    name: str  # as the server wrote it: 'norm', 'ref_codes'
    arguments: int  # a function's argument count as called; 0 for the others
    caller: str  # the function whose body names it: 'norm2', 'public.code_ok(text)'
    doing: str  # what pg_restore was doing, in words
    error: str  # the server's error: 'function norm(text) does not exist'

    @property
    def caller_name(self) -> str:
        """A PL/pgSQL caller's bare name ('public.code_ok(text)' -> 'code_ok')."""
        return self.caller.split("(", 1)[0].rsplit(".", 1)[-1].strip('"')


def _doing(copy: str | None, command: re.Match[str] | None) -> str | None:
    if copy is not None:
        return f"loading the rows of table {copy}"
    if command is None:
        return None
    if command["index"]:
        return f"building index {command['index']} on {command['on']}"
    if command["constraint"]:
        return f"adding constraint {command['constraint']} to {command['altered']}"
    if command["created"]:
        return f"creating table {command['created']}"
    return f"filling materialized view {command['view']}"


def unresolved_in_function(stderr: str) -> Unresolved | None:
    """What pg_restore's error output says did not resolve inside a function's body
    while it ran one of the statements that run functions; None for any other failure.
    The error output alone proves nothing: see _UNRESOLVED_RE's comment."""
    errors = list(_UNRESOLVED_RE.finditer(stderr))
    if not errors:
        return None
    error = errors[-1]
    rest = stderr[error.end() :]
    if re.search(r"^pg_restore: ", rest, re.M):
        return None  # pg_restore went on and stopped at another error
    # The CONTEXT block: from its label to the statement pg_restore ran.
    at = re.search(r"^CONTEXT:", rest, re.M)
    if at is None:
        return None
    block = rest[at.start() :]
    end = re.search(r"^Command was: ", block, re.M)
    command = _RUNS_FUNCTIONS_RE.match(block, end.start()) if end is not None else None
    context = _CONTEXT_FUNCTION_RE.search(block, 0, end.start() if end is not None else len(block))
    if context is None or (error["copy"] is None and command is None):
        return None
    doing = _doing(error["copy"], command)
    assert doing is not None
    if error["function"]:
        kind, name = "function", error["function"]
        arguments = error["arguments"].strip()
        count = 0 if not arguments else arguments.count(",") + 1
    else:
        kind, name, count = ("relation", error["relation"], 0)
        if error["type"]:
            kind, name = "type", error["type"]
    caller = context["sql"] or context["plpgsql"]
    return Unresolved(kind, name, count, caller, doing, error["error"])


class SearchPathFailure(NamedTuple):
    """A function of the backup's that names something without its schema."""

    problem: str  # what happened and why, ending with the database it is of
    fix: str  # the change to the function that lets backups taken afterwards restore
    alter: str  # that change as one statement: ALTER FUNCTION ... SET search_path


def _search_path_failure(conn: Conn, found: Unresolved, dbname: str) -> SearchPathFailure | None:
    """What to tell when the restored copy in `conn` proves `found` a name that its own
    function's body left unqualified; None when it does not (then nothing is claimed)."""
    conn.execute("SET search_path = ''")  # regprocedure output with its schema
    callers = conn.execute(
        _CALLER_SQL,
        {
            # A PL/pgSQL caller comes with its arguments, a SQL one by name alone.
            "signature": found.caller if "(" in found.caller else None,
            "name": found.caller_name,
            "unresolved": found.name,
        },
    ).fetchall()
    if not callers:
        return None
    schemas = [
        str(row[0])
        for row in conn.execute(
            _DEFINED_SQL[found.kind], {"name": found.name, "arguments": found.arguments}
        )
    ]
    if not schemas:
        return None
    signature, caller_schema = callers[0]
    # Which one the application's sessions found is not known: the function's own
    # schema if it has the name, else the first.
    schema = caller_schema if caller_schema in schemas else schemas[0]
    alter = f"ALTER FUNCTION {signature} SET search_path = {_quoted(schema)}"
    problem = (
        f"this backup cannot be restored as it is: pg_restore stopped {found.doing}, "
        f"which runs function {signature}: its body refers to {found.kind} {found.name} "
        f"without a schema, and pg_restore runs with an empty search_path, so the name "
        f"does not resolve ({found.error}). This backup and every new one of {dbname} "
        f"fail the same way until the function is changed"
    )
    fix = (
        f"qualify the name in the function's body ({_quoted(schema)}.{_quoted(found.name)}),"
        f" or give the function a search path of its own: `{alter}`"
    )
    return SearchPathFailure(problem, fix, alter)


def _feed(child: _Child, data: BinaryIO, unreadable: ErrorKind) -> None:
    """Copy the dump into the child's stdin; stops quietly when the child stops reading
    (its exit status then says why)."""
    stdin = child.proc.stdin
    assert stdin is not None
    try:
        while True:
            try:
                chunk = data.read(_CHUNK)
            except (OSError, Damaged):
                raise  # the store's disk (the caller says which), or a dump that ends short
            except Exception as err:  # the decompressor's errors have no common base
                raise unreadable(f"the backup data cannot be read: {err}") from None
            if not chunk:
                break
            stdin.write(chunk)
        stdin.close()
    except BrokenPipeError:
        pass


# ---- a dump blocked by another session's lock ----------------------------------------
# pg_dump takes ACCESS SHARE on every table before it reads any; only ACCESS EXCLUSIVE
# conflicts with that (LOCK TABLE, most ALTER TABLE, DROP, TRUNCATE, VACUUM FULL), held
# or queued ahead of it. After --lock-wait-timeout, pg_dump names the table in its
# error; who was in the way is looked up right then, on a connection of our own, while
# the session that held the lock typically still holds it.

# pg_dump 9.3+: 'query failed: ERROR:  canceling statement due to statement timeout'
# ('lock timeout' where the server applies it), then 'Query was: LOCK TABLE <name> IN
# ACCESS SHARE MODE' (newer pg_dumps lock tables in batches: 'LOCK TABLE <name>, <name>,
# ...'); a parallel pg_dump's worker says 'could not obtain lock on relation "<name>"'.
_LOCK_QUERY_RE = re.compile(r"Query was: LOCK TABLE (.+?) IN ACCESS SHARE MODE")
_LOCK_TIMEOUT_RE = re.compile(r"canceling statement due to (?:statement|lock) timeout")
_LOCK_RELATION_RE = re.compile(r'could not obtain lock on relation "(.+)"')
_LOOKUP_TIMEOUT_MS = 5_000  # the lookup must never hang the failure it explains
_NAMED_AT_MOST = 3  # of a batch whose blocked table is not known, the first few named
_LOCK_STATEMENT_BYTES = 256 * 1024  # of stderr read for the statement: a batch is <= 100 KB

# Every session in the way: the ones holding ACCESS EXCLUSIVE on the table, the ones
# queued for it (pg_dump's request queues behind theirs), and what those wait for.
# pg_locks and pg_blocking_pids need no privilege; pg_stat_activity leaves the details
# of other roles' sessions NULL without pg_read_all_stats. A prepared transaction's
# lock has no pid (and shows as 0 among the blocking pids).
_LOCK_HOLDERS_SQL = """
WITH target AS (
    SELECT r.name, pg_catalog.to_regclass(r.name) AS oid,
           (SELECT oid FROM pg_catalog.pg_database
            WHERE datname = pg_catalog.current_database()) AS db
    FROM unnest(%(relations)s::text[]) AS r (name)
),
strong AS (
    SELECT t.name, l.pid, l.granted
    FROM pg_catalog.pg_locks l, target t
    WHERE l.locktype = 'relation' AND l.database = t.db AND l.relation = t.oid
      AND l.mode = 'AccessExclusiveLock'
      AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
),
found AS (
    SELECT name, pid, CASE WHEN granted THEN 'holds' ELSE 'waits' END AS how,
           NULL::int AS for_pid
    FROM strong
    UNION ALL
    SELECT s.name, nullif(b.pid, 0), 'blocks', s.pid
    FROM strong s, LATERAL unnest(pg_catalog.pg_blocking_pids(s.pid)) AS b (pid)
    WHERE NOT s.granted
)
SELECT f.name, f.pid, f.how, f.for_pid, a.usename, a.application_name, host(a.client_addr),
       a.state, extract(epoch FROM pg_catalog.now() - a.xact_start)::float8
FROM found f LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = f.pid
ORDER BY CASE f.how WHEN 'holds' THEN 0 WHEN 'waits' THEN 1 ELSE 2 END, f.pid, f.name
"""


def locked_relations(stderr: str) -> list[str]:
    """The tables pg_dump gave up waiting to lock, as pg_dump names them
    ('public."My T"'): one, or a batch it locked in one statement; none when it failed
    for another reason."""
    match = _LOCK_RELATION_RE.search(stderr)
    if match is not None:
        return [match.group(1)]
    query = _LOCK_QUERY_RE.search(stderr)
    if query is not None and _LOCK_TIMEOUT_RE.search(stderr):
        return _split_names(query.group(1))
    return []


def _split_names(names: str) -> list[str]:
    """'a.b, "x,y".z, ONLY c' -> ['a.b', '"x,y".z', 'c']: commas inside double quotes
    (where "" is a quote) belong to the name."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in names:
        if char == '"':
            quoted = not quoted  # "" toggles twice: the quote stays inside the name
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip().removeprefix("ONLY ").strip() for part in parts if part.strip()]


@dataclass(frozen=True)
class PgBlocker:
    """A session in pg_dump's way, from pg_locks and pg_stat_activity."""

    pid: int | None  # None: a prepared transaction
    how: str  # 'holds' the lock, 'waits' for it ahead of pg_dump, 'blocks' a waiter
    for_pid: int | None  # the waiter a 'blocks' session holds up
    user: str | None = None
    application: str | None = None
    client: str | None = None  # None: a local socket, or hidden
    state: str | None = None  # None: another role's session seen without pg_read_all_stats
    transaction_seconds: float | None = None
    relation: str = ""  # the table it is in the way of, as pg_dump names it


def describe_blocker(blocker: PgBlocker, *, name_table: bool = False) -> str:
    if blocker.pid is None:
        who = "a prepared transaction (see pg_prepared_xacts)"
    else:
        details = []
        if blocker.user:
            details.append(f"user {blocker.user}")
        if blocker.application:
            details.append(f"application {blocker.application!r}")
        if blocker.state is None:
            details.append("its details need the pg_read_all_stats role")
        else:
            details.append(f"from {blocker.client or 'a local socket'}")
            details.append(blocker.state)
            if blocker.transaction_seconds is not None:
                opened = human_duration(blocker.transaction_seconds)
                details.append(f"transaction open for {opened}")
        who = f"session {blocker.pid}" + (f" ({', '.join(details)})" if details else "")
    on = blocker.relation if name_table and blocker.relation else "it"
    if blocker.how == "holds":
        return f"{who} holds an ACCESS EXCLUSIVE lock on {on}"
    if blocker.how == "waits":
        return f"{who} waits for an ACCESS EXCLUSIVE lock on {on}, and pg_dump queued behind"
    return f"{who} holds a lock that session {blocker.for_pid} waits for"


def lock_wait_failure(
    relations: Sequence[str], seconds: float, blockers: Sequence[PgBlocker]
) -> BackupFailed:
    """What the user reads when pg_dump gave up on a lock: the table, every session in
    the way, and how to get it out of the way."""
    problem = (
        f"pg_dump waited {seconds:g} s for a lock on {_tables(relations, blockers)} and gave "
        "up; nothing was kept"
    )
    if not blockers:
        return BackupFailed(
            f"{problem}. No session holds a conflicting lock on "
            f"{'it' if len(relations) == 1 else 'them'} now: it was let go "
            "after pg_dump gave up",
            "run the command again",
        )
    several = len({b.relation for b in blockers}) > 1
    lines = "\n".join(f"  - {describe_blocker(b, name_table=several)}" for b in blockers)
    # Ending the holders frees the table; a queued ALTER would only queue again.
    roots = [b for b in blockers if b.how != "waits"] or list(blockers)
    pids = list(dict.fromkeys(b.pid for b in roots if b.pid is not None))
    ways = []
    if pids:
        terminate = " and ".join(f"`SELECT pg_terminate_backend({pid})`" for pid in pids)
        one = len(pids) == 1
        ways.append(
            f"end {'that transaction' if one else 'those transactions'} (COMMIT or "
            f"ROLLBACK in {'that session' if one else 'those sessions'}), or {terminate}"
        )
    if any(b.pid is None for b in roots):
        ways.append("COMMIT PREPARED or ROLLBACK PREPARED the prepared transaction")
    return BackupFailed(
        f"{problem}. In the way:\n{lines}", "; ".join(ways) + "; then run the command again"
    )


def _tables(relations: Sequence[str], blockers: Sequence[PgBlocker]) -> str:
    """'table X'; of a batch, the tables someone is in the way of, else the first few."""
    if len(relations) == 1:
        return f"table {relations[0]}"
    blocked = list(dict.fromkeys(b.relation for b in blockers if b.relation))
    if blocked:
        return f"table{'s' if len(blocked) > 1 else ''} {', '.join(blocked)}"
    named = ", ".join(relations[:_NAMED_AT_MOST])
    more = ", ..." if len(relations) > _NAMED_AT_MOST else ""
    return f"one of {len(relations)} tables ({named}{more})"


def _lock_blockers(s: ConnSettings, relations: Sequence[str]) -> list[PgBlocker]:
    """Everyone in the way of a lock on `relations`, read on a connection of our own.
    Raises psycopg errors and BackupFailed (cannot connect); never waits long."""
    kwargs = s.psycopg_kwargs()
    # Given at connection start, so the very first statement is bounded too, and after
    # any options of the user's own, so that they cannot lift the bound.
    bounded = f"-c statement_timeout={_LOOKUP_TIMEOUT_MS} -c lock_timeout={_LOOKUP_TIMEOUT_MS}"
    kwargs["options"] = f"{kwargs.get('options', '')} {bounded}".strip()
    try:
        conn = psycopg.connect(autocommit=True, **kwargs)
    except psycopg.Error as err:
        raise _connect_error(err, s, BackupFailed) from None
    try:
        rows = conn.execute(_LOCK_HOLDERS_SQL, {"relations": list(relations)}).fetchall()
    finally:
        conn.close()
    found: dict[tuple[str, int | None, str], PgBlocker] = {}
    for name, pid, how, for_pid, user, app, client, state, seconds in rows:
        blocker = PgBlocker(pid, how, for_pid, user, app or None, client, state, seconds, name)
        found.setdefault((name, pid, how), blocker)
    return list(found.values())


# ---- the engine ----------------------------------------------------------------------


@dataclass
class _Kept:
    conn: Conn
    lock: threading.Lock = field(default_factory=threading.Lock)


class PostgresEngine:
    name: EngineName = "postgres"
    data_suffix = "data.pgdump"

    def __init__(self, settings: BackupSettings, tool_dirs: Sequence[Path] | None = None) -> None:
        """`tool_dirs` replaces the search for pg_dump/pg_restore (default: the versioned
        Debian folders, then PATH)."""
        self.settings = settings
        self._tools = _Tools(tool_dirs)
        self._kept: OrderedDict[tuple[object, ...], _Kept] = OrderedDict()
        self._no_maintenance: set[tuple[object, ...]] = set()
        self._kept_lock = threading.Lock()

    # ---- change signal -------------------------------------------------------------

    def _kept_for(self, s: ConnSettings) -> _Kept | None:
        """The kept connection to this server's maintenance database; None when this
        user cannot use that database, or when it is the target itself (a database
        named `postgres`: Supabase's, the official Docker image's), where a connection
        kept open would make the guarded command's own DROP DATABASE fail. Then each
        check connects to the target for its own span."""
        if s.dbname == MAINTENANCE_DB:
            return None
        key = s.server_key
        with self._kept_lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                return kept
            if key in self._no_maintenance:
                return None
        # Connect outside the lock: an unreachable server must not hold up the checks
        # of every other database for the connect timeout.
        try:
            conn = psycopg.connect(autocommit=True, **s.for_db(MAINTENANCE_DB).psycopg_kwargs())
        except psycopg.Error as err:
            if _maintenance_refused(err):
                with self._kept_lock:
                    self._no_maintenance.add(key)
                return None
            raise _connect_error(err, s, BackupFailed) from None
        try:
            _keep(conn)
        except psycopg.Error as err:
            conn.close()
            raise _query_error(err, s, "opening a connection for checks", BackupFailed) from None
        with self._kept_lock:
            kept = self._kept.get(key)
            if kept is not None:  # another thread connected meanwhile
                conn.close()
                return kept
            kept = self._kept[key] = _Kept(conn)
            while len(self._kept) > _KEPT_CONNECTIONS:
                self._kept.popitem(last=False)[1].conn.close()
            return kept

    def _forget(self, s: ConnSettings) -> None:
        with self._kept_lock:
            kept = self._kept.pop(s.server_key, None)
        if kept is not None:
            kept.conn.close()

    def _on_server(self, s: ConnSettings, doing: str, read: Callable[[Conn], T]) -> T:
        """`read` on the kept connection (reconnecting once if it died), or on a
        short-lived connection to the target where the maintenance database is closed
        to this user."""
        for attempt in (1, 2):
            kept = self._kept_for(s)
            if kept is None:
                conn = _connect(s, BackupFailed)
                try:
                    return read(conn)
                except psycopg.Error as err:
                    raise _query_error(err, s, doing, BackupFailed) from None
                finally:
                    conn.close()
            with kept.lock:
                try:
                    return read(kept.conn)
                except psycopg.OperationalError as err:
                    # The kept connection died (server restart, idle timeout, network,
                    # a restore of the database it is in ended it):
                    # reconnect once; a second failure is the server's real state.
                    self._forget(s)
                    if attempt == 2:
                        raise _query_error(err, s, doing, BackupFailed) from None
                except psycopg.Error as err:
                    raise _query_error(err, s, doing, BackupFailed) from None
        raise AssertionError("unreachable")

    def fingerprint(self, target: Target) -> str | None:
        """The cluster's current snapshot, tagged with the cluster and database.

        Returns None on a standby. Raises DatabaseMissing when the database does not
        exist, BackupFailed when the server cannot be reached or refuses us."""
        s = connection_settings(target)
        return self._on_server(s, "reading the change signal", lambda conn: _read_signal(conn, s))

    # ---- the environment marker ----------------------------------------------------
    # A per-database setting (ALTER DATABASE ... SET dbguard.environment): it lives in
    # the cluster with the database, is readable from the maintenance connection without
    # touching the target, is carried across dbguard's own restores with the database's
    # other settings, and is in no schema a migration tool compares.

    def marker(self, target: Target) -> Marker | None:
        """'production' or 'development' as set by `set_marker`, else None.

        Raises DatabaseMissing when the database does not exist, BackupFailed when the
        server cannot be reached or refuses us."""
        s = connection_settings(target)
        return self._on_server(s, "reading the environment mark", lambda c: _read_marker(c, s))

    def set_marker(self, target: Target, marker: Marker | None) -> None:
        """Mark the database (None removes the mark).

        Raises DatabaseMissing when it does not exist, BackupFailed when the server
        cannot be reached or this user may not alter the database (owner or superuser)."""
        s = connection_settings(target)
        conn = self._admin(s, BackupFailed)
        name = sql.Identifier(s.dbname)
        try:
            if _database(conn, s.dbname) is None:
                raise DatabaseMissing(
                    f"the PostgreSQL database {s.dbname} does not exist at {s.where}"
                )
            if marker is None:
                statement = sql.SQL("ALTER DATABASE {} RESET {}").format(
                    name, sql.Identifier(_MARKER_SETTING)
                )
            else:
                statement = sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
                    name, sql.Identifier(_MARKER_SETTING), sql.Literal(marker)
                )
            conn.execute(statement)
        except psycopg.Error as err:
            raise BackupFailed(
                f"cannot mark the database {s.dbname} at {s.where}: "
                f"{scrub(str(err).strip(), s.password)}",
                "its owner or a superuser can: run the command as that user",
            ) from None
        finally:
            conn.close()

    # ---- backup --------------------------------------------------------------------

    def dump(self, target: Target, out: Sink, scratch: Path, cancel: threading.Event) -> DumpInfo:
        """pg_dump -Fc -Z0 of one exported snapshot, streamed into `out`.

        Raises DatabaseMissing when the database does not exist; BackupFailed when the
        server cannot be reached or refuses us, when no fitting pg_dump is installed, or
        when pg_dump fails, is killed, runs past dump_timeout_seconds or writes a
        truncated archive; Cancelled when `cancel` is set. Whatever the sink raises is
        re-raised after pg_dump has been stopped."""
        if cancel.is_set():
            raise Cancelled("the backup was cancelled because dbguardd is stopping")
        s = connection_settings(target)
        conn = _connect(s, BackupFailed)
        try:
            return self._dump(conn, s, out, scratch, cancel)
        except psycopg.Error as err:
            raise _query_error(err, s, f"preparing the dump of {s.dbname}", BackupFailed) from None
        finally:
            conn.close()

    def _snapshot_fingerprint(self, conn: Conn, s: ConnSettings) -> tuple[str, str | None]:
        """Export a snapshot for pg_dump; returns its id and the fingerprint it matches:
        the change signal read in that very snapshot. A transaction in progress then
        (even one that has written) is not in the dump, and its end will move the
        signal; nothing here moves it, as a read-only transaction takes no xid."""
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        signal_ = _read_signal(conn, s)
        unlogged = conn.execute(_UNLOGGED_SEQUENCES_SQL).fetchone()
        assert unlogged is not None
        return str(row[0]), None if unlogged[0] else signal_

    def _dump(
        self, conn: Conn, s: ConnSettings, out: Sink, scratch: Path, cancel: threading.Event
    ) -> DumpInfo:
        server = server_version(conn.info.server_version)
        tool = self._tools.choose("pg_dump", server, BackupFailed)
        # The user's own timeouts must not end our long snapshot transaction mid-dump;
        # row_security off makes counting fail where pg_dump would, never undercount.
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        conn.execute(f"SET lock_timeout = {_LOCK_WAIT_MS}")
        conn.execute("SET row_security = off")
        snapshot_id, fingerprint = self._snapshot_fingerprint(conn, s)
        args = [
            "--format=custom",
            "--compress=0",
            f"--snapshot={snapshot_id}",
            f"--lock-wait-timeout={_LOCK_WAIT_MS}",
            "--no-password",
            f"--dbname={s.tool_conninfo()}",
        ]
        stop_counting = threading.Event()

        def stop() -> None:
            stop_counting.set()
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=5)

        pool = ThreadPoolExecutor(1, thread_name_prefix="dbguard-pg-count")
        counting: Future[dict[str, int]] | None = None
        try:
            child = self._spawn(
                tool,
                args,
                s,
                scratch,
                cancel,
                BackupFailed,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                on_stop=stop,
            )
            try:
                # pg_dump and the counts read the same snapshot side by side: the
                # exporting transaction must stay open until pg_dump is done anyway.
                counting = pool.submit(count_rows, conn, stop_counting)
                seen = _pump_out(child, out)
                child.proc.wait()
            finally:
                child.close()
            failure = child.failure(
                BackupFailed,
                s.password,
                f"nothing was kept; run `pg_dump` by hand against {s.dbname} to see more",
            )
            if failure is not None:
                # pg_dump's batch LOCK TABLE statement can run to 100 KB on one line.
                tail = child.stderr_tail(s.password, size=_LOCK_STATEMENT_BYTES)
                if "could not import the requested snapshot" in tail:
                    # The exporting transaction ended: a count failed in it (a table this
                    # user may not read), and that error, not pg_dump's, says why.
                    wait_for([counting], timeout=_STOP_COUNT_WAIT)
                    counted = counting.exception() if counting.done() else None
                    if isinstance(counted, psycopg.Error):
                        denied = counted.sqlstate == "42501"  # insufficient_privilege
                        fix = row_security_fix(str(counted), s.user) or (
                            _READ_EVERY_TABLE if denied else ""
                        )
                        raise _query_error(
                            counted, s, f"reading {s.dbname}", BackupFailed, fix
                        ) from None
                relations = [] if child.stopped else locked_relations(tail)
                if relations:
                    failure = self._lock_failure(s, relations, failure)
                elif (rls_fix := row_security_fix(tail, s.user)) and not child.stopped:
                    # pg_dump met the table before the counts did.
                    failure = BackupFailed(failure.problem, rls_fix)
                raise failure
            _check_archive(seen, s.dbname)
            tables = counting.result()
        finally:
            if counting is not None and not counting.done():
                stop()
                deadline = time.monotonic() + _STOP_COUNT_WAIT
                while not counting.done() and time.monotonic() < deadline:
                    stop()
                    wait_for([counting], timeout=0.5)
            pool.shutdown(wait=counting is None or counting.done())
        conn.execute("ROLLBACK")
        return DumpInfo(
            tables=tables,
            fingerprint=fingerprint,
            tool=tool.label,
            format=FORMAT,
        )

    @staticmethod
    def _lock_failure(
        s: ConnSettings, relations: Sequence[str], failure: DbguardError
    ) -> DbguardError:
        """pg_dump's lock timeout, told with who is in the way; the plain failure, with
        why the lookup failed, when that cannot be found out."""
        seconds = _LOCK_WAIT_MS / 1000
        try:
            return lock_wait_failure(relations, seconds, _lock_blockers(s, relations))
        except (psycopg.Error, DbguardError) as err:
            why = err.problem if isinstance(err, DbguardError) else str(err).strip()
            log.warning("could not look up who holds a lock", tables=relations, error=why)
            return BackupFailed(
                f"pg_dump waited {seconds:g} s for a lock on {_tables(relations, [])} "
                f"and gave up; nothing was kept (who holds the lock could not be looked "
                f"up: {scrub(why, s.password)}). {failure.problem}",
                "find the session that holds it (pg_locks joined with pg_stat_activity), "
                "end its transaction or `SELECT pg_terminate_backend(<pid>)`; then run the "
                "command again",
            )

    def _spawn(
        self,
        tool: Tool,
        args: Sequence[str],
        s: ConnSettings,
        scratch: Path,
        cancel: threading.Event,
        kind: ErrorKind,
        *,
        stdin: int | IO[bytes],
        stdout: int | IO[bytes],
        on_stop: Callable[[], None] | None = None,
    ) -> _Child:
        try:
            return _Child(
                tool,
                args,
                s.tool_env(),
                scratch,
                self.settings.dump_timeout_seconds,
                cancel,
                stdin=stdin,
                stdout=stdout,
                on_stop=on_stop,
            )
        except OSError as err:
            self._tools.forget()  # it vanished or changed: search afresh next time
            raise kind(
                f"cannot run {tool.path}: {err.strerror or err}",
                f"reinstall {tool.path.name} (Debian/Ubuntu: the postgresql-client package)",
            ) from None

    # ---- restore and verify ----------------------------------------------------------

    def _admin(self, s: ConnSettings, kind: ErrorKind) -> Conn:
        """A connection for CREATE/ALTER/DROP DATABASE: to the maintenance database, or
        template1 when that cannot be used (or is itself the target)."""
        candidates = [db for db in (MAINTENANCE_DB, "template1") if db != s.dbname]
        for i, db in enumerate(candidates):
            try:
                return psycopg.connect(autocommit=True, **s.for_db(db).psycopg_kwargs())
            except psycopg.Error as err:
                if i + 1 < len(candidates) and _maintenance_refused(err):
                    continue
                raise _connect_error(err, s.for_db(db), kind) from None
        raise AssertionError("unreachable")

    def _pg_restore(
        self,
        tool: Tool,
        s: ConnSettings,
        data: BinaryIO,
        scratch: Path,
        *,
        kind: ErrorKind,
        fix: str,
        options: Sequence[str] = (),
        damaged: str = "",
        cancel: threading.Event | None = None,
        dbname: str,
    ) -> None:
        """pg_restore the stream into `s.dbname`, a scratch copy of `dbname`; stops at
        the first error, raised as `kind`. With `damaged` (its fix), a failure that
        proves the archive bad (see archive_is_bad) and data that does not decompress
        are raised as Damaged. A function of the backup's whose body names something
        without its schema (see _UNRESOLVED_RE) is told as such: Damaged with
        `damaged`, else `kind`. Setting `cancel` kills pg_restore: Cancelled."""
        args = ["--exit-on-error", "--no-password", f"--dbname={s.tool_conninfo()}", *options]
        child = self._spawn(
            tool,
            args,
            s,
            scratch,
            cancel or threading.Event(),
            kind,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        try:
            _feed(child, data, Damaged if damaged else kind)
            child.proc.wait()
        finally:
            child.close()
        failure = child.failure(kind, s.password, fix)
        if failure is None:
            return
        # Stopped or killed, it proved nothing; an exit of its own may name bad input.
        exited = child.stopped is None and child.proc.returncode > 0
        if damaged and exited and archive_is_bad(child.stderr_tail(s.password)):
            raise Damaged(failure.problem, damaged) from None
        if exited:
            # All of its last statement (a CREATE TABLE runs to many lines), not the tail.
            stderr = child.stderr_tail(s.password, lines=1_000_000, size=_STDERR_READ)
            found = unresolved_in_function(stderr)
            told = self._unresolved_told(s, found, dbname) if found is not None else None
            if told is not None:
                if damaged:
                    # verify records the problem alone: it carries the way out too.
                    raise Damaged(f"{told.problem}: {told.fix}", told.fix) from None
                # This backup keeps the old body: it restores only by hand, in steps.
                unpack = "zstd -dc <the backup's folder>/data.pgdump.zst > dump.pgdump"
                if found is not None and found.doing.startswith("creating table"):
                    # The table is pre-data itself: the function must be fixed before it.
                    steps = (
                        f"`{unpack}`, `pg_restore -l dump.pgdump > list`, restore the "
                        "entries of list up to the function's with `pg_restore -L` into "
                        f"a new database NEW, run `{told.alter}` in NEW, then restore the "
                        "rest of list"
                    )
                else:
                    steps = (
                        f"`{unpack}`, `pg_restore --section=pre-data -d NEW dump.pgdump` "
                        f"into a new database NEW, `{told.alter}` in NEW, then the same "
                        "pg_restore with `--section=data --section=post-data`"
                    )
                by_hand = f"{told.fix}. To get this backup's data back by hand: {steps}"
                raise kind(f"{told.problem}; {fix}", by_hand) from None
        raise failure

    @staticmethod
    def _unresolved_told(
        s: ConnSettings, found: Unresolved, dbname: str
    ) -> SearchPathFailure | None:
        """_search_path_failure, asked of the half-restored copy in `s.dbname`; None
        when it cannot be asked (then the failure is told as pg_restore gave it)."""
        try:
            conn = psycopg.connect(autocommit=True, **s.psycopg_kwargs())
        except psycopg.Error:
            return None
        try:
            return _search_path_failure(conn, found, dbname)
        except psycopg.Error as err:
            log.warning("could not look up what pg_restore did not find", error=str(err))
            return None
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
        """Restore into a scratch database, then swap it in by renaming; the database it
        replaces is dropped (the store has backed it up). Creates the database when it
        does not exist. Each database setting this user may not carry over is told to
        `warn` once the swap is done.

        Raises RestoreFailed, with the target unchanged, when the server cannot be
        reached, other sessions are connected and `end_connections` is not set (naming
        them), pg_restore fails, or the swap is refused."""
        if dump_format != FORMAT:
            raise RestoreFailed(
                f"this backup is in the format {dump_format!r}, not a PostgreSQL dump",
                "restore it into a database of the kind it came from",
            )
        s = connection_settings(target, error=RestoreFailed)
        # This process's own kept connection is in the target when that is the
        # maintenance database: it would count as a session of someone else's.
        self._forget(s)
        conn = self._admin(s, RestoreFailed)
        try:
            self._restore(conn, s, data, scratch, end_connections, swapped, warn)
        except psycopg.Error as err:
            # Errors after the swap are only logged (dropping the replaced copy), so
            # whatever arrives here happened while the target was still untouched.
            raise _query_error(
                err, s, f"restoring {s.dbname}", RestoreFailed, "the database was not changed"
            ) from None
        finally:
            conn.close()

    def _restore(
        self,
        conn: Conn,
        s: ConnSettings,
        data: BinaryIO,
        scratch: Path,
        end_connections: bool,
        swapped: Callable[[], None],
        warn: Callable[[str], None],
    ) -> None:
        tool = self._tools.choose(
            "pg_restore", server_version(conn.info.server_version), RestoreFailed
        )
        existing = _database(conn, s.dbname)
        if existing is not None and not end_connections:
            busy = others(_sessions(conn, s.dbname))
            if busy:
                raise _busy(s.dbname, busy)  # before spending minutes on pg_restore
        _drop_left_behind(conn)
        temp = scratch_name(s.dbname, "restore")
        claim_scratch(conn, temp)
        try:
            _create_database(conn, temp, existing)
        except psycopg.Error as err:
            raise RestoreFailed(
                f"cannot create the scratch database {temp}: {scrub(str(err).strip(), s.password)}",
                "the restore needs the CREATEDB privilege (and membership in the owner's "
                "role); the database was not changed",
            ) from None
        replaced: str | None = None
        in_place = False
        refused: list[str] = []
        try:
            self._pg_restore(
                tool,
                s.for_db(temp),
                data,
                scratch,
                kind=RestoreFailed,
                fix=f"the database {s.dbname} was not changed",
                dbname=s.dbname,
            )
            if existing is not None:
                refused = _copy_database_properties(conn, existing, temp, s.dbname)
            # A stop after the renames' commit must not be reported as "not changed".
            with signals_held(f"the swap of {s.dbname}"):
                replaced = self._swap(conn, s, temp, existing, end_connections)
                in_place = True
                swapped()
                for note in refused:
                    log.warning("restored without a database setting", note=note)
                    warn(note)
                if replaced is not None:
                    self._drop_quietly(conn, replaced)
        finally:
            if not in_place:
                self._drop_quietly(conn, temp)

    def _swap(
        self,
        conn: Conn,
        s: ConnSettings,
        temp: str,
        existing: _Database | None,
        end_connections: bool,
    ) -> str | None:
        """Put `temp` in the target's place; returns the replaced database's new name."""
        name = sql.Identifier(s.dbname)
        if existing is None:
            try:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(temp), name)
                )
            except psycopg.Error as err:
                raise RestoreFailed(
                    f"cannot rename the restored database into place as {s.dbname}: "
                    f"{scrub(str(err).strip(), s.password)}"
                ) from None
            return None
        replaced = scratch_name(s.dbname, "replaced")
        blocked = False
        try:
            try:
                if end_connections:
                    # No new sessions from here on, or a connection pool would reconnect
                    # between ending its sessions and the rename, every time.
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(name)
                    )
                    blocked = True
                    self._end_sessions(conn, s.dbname)
                else:
                    busy = others(_sessions(conn, s.dbname))
                    if busy:
                        raise _busy(s.dbname, busy)
                    self._end_sessions(conn, s.dbname, only_kept=True)
                # Both renames or neither: there is never a moment without the database.
                with conn.transaction():
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            name, sql.Identifier(replaced)
                        )
                    )
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(temp), name)
                    )
            except psycopg.Error as err:
                busy = _sessions(conn, s.dbname) if isinstance(err, ObjectInUse) else []
                if busy:  # someone connected between the check and the rename
                    raise _busy(s.dbname, busy) from None
                raise RestoreFailed(
                    f"cannot swap the restored database in for {s.dbname}: "
                    f"{scrub(str(err).strip(), s.password)}",
                    "the database was not changed",
                ) from None
        except BaseException:
            if blocked:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(name)
                    )
            raise
        return replaced

    def _end_sessions(self, conn: Conn, dbname: str, *, only_kept: bool = False) -> None:
        """End the sessions connected to `dbname` (`only_kept`: dbguard's own kept
        connections) and wait until they are gone."""

        def connected() -> list[Session]:
            sessions = _sessions(conn, dbname)
            return [x for x in sessions if x.kept] if only_kept else sessions

        sessions = connected()
        deadline = time.monotonic() + _SESSIONS_GONE_WAIT
        while sessions:
            for session in sessions:
                conn.execute("SELECT pg_terminate_backend(%s)", (session.pid,))
            if time.monotonic() >= deadline:
                failed = _busy(dbname, sessions)
                raise RestoreFailed(
                    f"could not end the sessions connected to {dbname}: {failed.problem}",
                    "the restoring user needs pg_signal_backend (or to own those sessions)",
                )
            # Termination is asynchronous: each backend exits on its next interrupt check.
            time.sleep(0.05)
            sessions = connected()

    def _drop_quietly(self, conn: Conn, name: str) -> None:
        try:
            _drop_database(conn, name)
        except psycopg.Error as err:
            log.warning("could not drop scratch database", database=name, error=str(err).strip())

    def restored_counts(
        self,
        target: Target,
        data: BinaryIO,
        dump_format: str,
        scratch: Path,
        cancel: threading.Event | None = None,
    ) -> dict[str, int]:
        """Restore into a throwaway database, count rows per table, drop it.

        Raises Damaged when the dump proves bad (it does not decompress, pg_restore does
        not read it as an archive, the server does not parse its data, or a function of
        its own names something without a schema, see _UNRESOLVED_RE); RestoreFailed
        for every other failure, which may be the environment's (the server's disk full,
        the connection lost, no fitting pg_restore, the scratch database refused): a
        backup is only recorded as failed on proof; Cancelled when `cancel` is set
        (pg_restore is killed at once). The throwaway database is dropped in every case."""
        if dump_format != FORMAT:
            raise Damaged(f"backup format {dump_format!r} is not a PostgreSQL dump")
        s = connection_settings(target, error=RestoreFailed)
        conn = self._admin(s, RestoreFailed)
        temp = scratch_name(s.dbname, "verify")
        try:
            tool = self._tools.choose(
                "pg_restore", server_version(conn.info.server_version), RestoreFailed
            )
            _drop_left_behind(conn)
            claim_scratch(conn, temp)
            # Only for counting: the verifying user need not be able to act as the owner.
            _create_database(conn, temp, _database(conn, s.dbname), same_owner=False)
            try:
                self._pg_restore(
                    tool,
                    s.for_db(temp),
                    data,
                    scratch,
                    kind=RestoreFailed,
                    fix="nothing shows the backup is bad, and it is not marked failed: fix "
                    "what pg_restore names (room on the server's disk, the connection, a "
                    "missing extension), then verify again",
                    damaged="this backup cannot be restored as it is",
                    # Rows are what is checked: owners and grants would only make a
                    # user who is not a member of every owning role fail a good backup.
                    options=("--no-owner", "--no-privileges"),
                    cancel=cancel,
                    dbname=s.dbname,
                )
                counted = _connect(s.for_db(temp), RestoreFailed)
                try:
                    return count_rows(counted, cancel)
                finally:
                    counted.close()
            finally:
                self._drop_quietly(conn, temp)
        except psycopg.Error as err:
            raise _query_error(err, s, "checking the backup", RestoreFailed) from None
        finally:
            conn.close()

    def close(self) -> None:
        with self._kept_lock:
            for kept in self._kept.values():
                kept.conn.close()
            self._kept.clear()
            self._no_maintenance.clear()

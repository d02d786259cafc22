"""A dump held up by another session's lock: given up on after a limit, and told with
who holds the lock.

mariadb-dump and mysqldump wait for a metadata lock (another session's LOCK TABLES
... WRITE, an ALTER TABLE queued behind an open transaction) as long as the server's
lock_wait_timeout allows: a year by default. Neither can be told to lower it for its
own session: mariadb-dump 10.11 has no --init-command and refuses `init-command` in
its option file too ("unknown variable"), and relying on one in some mysqldump
versions would leave the others waiting. So `LockWatch` polls PROCESSLIST, on a
connection of its own, for the tool's session; one that has waited for a lock longer
than the limit gets the tool killed (and its server session: MariaDB notices a client
gone during a lock wait, a server that does not would keep the request queued), and
the message says who holds the lock. The PyMySQL fallback dumper simply sets
lock_wait_timeout on its own connection, and the same lookup explains its error 1205.

Who holds the lock, best source first:
- performance_schema.metadata_locks (MySQL 8: on by default; MariaDB 10.5+: with
  performance_schema=ON and the wait/lock/metadata/sql/mdl instrument enabled), which
  also has the dump's own PENDING request, naming exactly what it waits for;
- information_schema.METADATA_LOCK_INFO (MariaDB's metadata_lock_info plugin), which
  lists granted locks only;
- otherwise a guess from PROCESSLIST and INNODB_TRX: the other sessions of the
  database, those in an InnoDB transaction, and those waiting for the same table,
  offered as "could be held by".
Without the PROCESS privilege a user sees only its own sessions (and no INNODB_TRX):
the message then says its list may be incomplete.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

import pymysql
import structlog

from dbguard.engines.base import human_duration
from dbguard.engines.mysql.server import Endpoint, error_code, error_text, fetch_text
from dbguard.engines.mysql.sqltext import quote_ident, scrub
from dbguard.errors import BackupFailed, RestoreFailed

log = structlog.get_logger("dbguard.mysql")

POLL_SECONDS = 0.5  # how often the watch looks at the dump's session
FIRST_LOOK_SECONDS = 5.0  # a dump shorter than this is never looked at (nor connected for)
LOOKUP_TIMEOUT = 5  # seconds any one query of the watch or the lookup may take
_INFO_SHOWN = 80  # characters of another session's statement in the message

# Metadata lock types that keep a plain read (SHARED_READ, SHARED_HIGH_PRIO) out,
# granted or, for the strongest two, queued ahead of it.
_KEEPS_READERS_OUT = frozenset({"EXCLUSIVE", "SHARED_NO_READ_WRITE"})
# Taken by every statement that changes something, and harmless to a dump's reads.
_WEAK = frozenset(
    {
        "BACKUP_DML",
        "BACKUP_TRANS_DML",
        "BACKUP_SYS_DML",
        "BACKUP_DDL",
        "BACKUP_ALTER_COPY",
        "BACKUP_COMMIT",
    }
)
_MEANING = {
    "EXCLUSIVE": "a DDL statement such as ALTER, DROP or RENAME TABLE",
    "SHARED_NO_READ_WRITE": "LOCK TABLES ... WRITE",
    "SHARED_NO_WRITE": "an ALTER TABLE in progress",
    "SHARED_UPGRADABLE": "an ALTER TABLE in progress",
    "SHARED_READ_ONLY": "LOCK TABLES ... READ",
    "SHARED_READ": "an open transaction that read the table",
    "SHARED_WRITE": "an open transaction that wrote to the table",
    "SHARED_WRITE_LOW_PRIO": "an open transaction that wrote to the table",
    "BACKUP_FTWRL1": "FLUSH TABLES WITH READ LOCK",
    "BACKUP_FTWRL2": "FLUSH TABLES WITH READ LOCK",
}
_SYSTEM_USERS = frozenset({"system user", "event_scheduler"})
_SYSTEM_COMMANDS = frozenset({"Daemon", "Binlog Dump", "Binlog Dump GTID", "Slave_worker"})


# ---- pure ---------------------------------------------------------------------------


def is_lock_wait(state: str | None) -> bool:
    """A PROCESSLIST state that waits for another session's lock: 'Waiting for table
    metadata lock', '... table level lock', '... global read lock', '... backup lock'."""
    return state is not None and state.startswith("Waiting for ") and state.endswith(" lock")


_NAME = r"`((?:[^`]|``)+)`"
_TABLE_IN = (
    re.compile(rf"\b(?:FROM|TABLE|TABLES)\s+(?:{_NAME}\.)?{_NAME}", re.IGNORECASE),
    re.compile(r"\bTABLE_NAME\s*=\s*'((?:[^'\\]|\\.)+)'", re.IGNORECASE),
    re.compile(r"\bLIKE\s+'((?:[^'\\]|\\.)+)'", re.IGNORECASE),
)


def table_in(statement: str | None) -> str | None:
    """The table a dump tool's statement is about, best effort: mariadb-dump and
    mysqldump quote names with backticks (`SELECT ... FROM \\`t\\``, `SHOW CREATE
    TABLE \\`t\\``, `SHOW TRIGGERS LIKE 't'`)."""
    if not statement:
        return None
    first, *rest = _TABLE_IN
    match = first.search(statement)
    if match is not None:
        return match.group(2).replace("``", "`")
    for pattern in rest:
        match = pattern.search(statement)
        if match is not None:
            return re.sub(r"\\(.)", r"\1", match.group(1))
    return None


@dataclass(frozen=True)
class Session:
    """One PROCESSLIST row."""

    id: int
    user: str
    host: str
    db: str | None
    command: str
    seconds: int  # in the current state
    state: str
    info: str | None  # the statement it runs


@dataclass(frozen=True)
class Holder:
    """A session in the dump's way, and how."""

    id: int
    session: Session | None  # None: not visible to this user
    locks: tuple[str, ...] = ()  # 'holds SHARED_NO_READ_WRITE', 'waits for EXCLUSIVE'
    transaction_since: str | None = None  # from INNODB_TRX, for a guess


@dataclass(frozen=True)
class Blockers:
    holders: tuple[Holder, ...]
    exact: bool  # read from the server's lock tables, not guessed
    complete: bool  # this user sees every session (PROCESS privilege)
    table: str | None = None  # what the dump waits for, when the lock tables say


@dataclass(frozen=True)
class Blocked:
    """The dump waited too long: what for, and who was in the way."""

    seconds: float  # the limit it waited
    database: str
    table: str | None
    state: str | None  # the dump's PROCESSLIST state; None for the PyMySQL dumper
    blockers: Blockers | None  # None: the lookup failed
    lookup_error: str | None = None


def _lock_words(lock: str) -> str:
    """'holds SHARED_NO_READ_WRITE' -> 'holds SHARED_NO_READ_WRITE (LOCK TABLES ... WRITE)'."""
    mode = lock.split()[-1]
    meaning = _MEANING.get(mode)
    return f"{lock} ({meaning})" if meaning else lock


def describe(holder: Holder) -> str:
    s = holder.session
    if s is None:
        who = f"session {holder.id} (another user's: its details need the PROCESS privilege)"
    else:
        if s.command == "Sleep":
            doing = f"idle for {human_duration(s.seconds)}"
        else:
            statement = " ".join((s.info or "").split())
            if len(statement) > _INFO_SHOWN:
                statement = statement[: _INFO_SHOWN - 3] + "..."
            doing = f"running {statement!r}" if statement else s.command
            doing += f" for {human_duration(s.seconds)}"
            if s.state:
                doing += f", {s.state[:1].lower()}{s.state[1:]}"
        where = f" in {quote_ident(s.db)}" if s.db else ""
        who = f"session {s.id} ({s.user}@{s.host}{where}, {doing})"
    parts = [who]
    if holder.transaction_since:
        parts.append(f"in a transaction since {holder.transaction_since}")
    parts += [_lock_words(lock) for lock in holder.locks]
    return ", ".join(parts)


def failure(tool: str, blocked: Blocked) -> BackupFailed:
    """The message for a dump that gave up on a lock: the table, who holds the lock (or
    could), and the way out."""
    return BackupFailed(
        *_explain(blocked, f"{tool} waited", "was stopped; nothing was kept", "run the command")
    )


def restore_failure(blocked: Blocked) -> RestoreFailed:
    """The same for a restore whose swap gave up on a lock before it changed anything."""
    return RestoreFailed(
        *_explain(
            blocked,
            "the restore waited",
            "gave up; the database was not changed",
            "restore",
        )
    )


def _explain(blocked: Blocked, waited: str, outcome: str, again: str) -> tuple[str, str]:
    """(problem, fix) for `waited` ... `outcome`; the fix ends with "then `again` again"."""
    # The lock tables' word over the one read from the tool's statement.
    table = (blocked.blockers.table if blocked.blockers else None) or blocked.table
    what = (
        f"table {quote_ident(blocked.database)}.{quote_ident(table)}"
        if table
        else f"a table of {quote_ident(blocked.database)}"
    )
    state = f" ({blocked.state[:1].lower()}{blocked.state[1:]})" if blocked.state else ""
    problem = f"{waited} {blocked.seconds:g} s for a lock on {what}{state} and {outcome}."
    then = f"then {again} again"
    generic_fix = (
        "find the session that holds it (SHOW PROCESSLIST, as a user with the PROCESS "
        "privilege), end its transaction (COMMIT or ROLLBACK) or UNLOCK TABLES, or "
        f"`KILL <id>` it; {then}"
    )
    found = blocked.blockers
    if found is None:
        why = blocked.lookup_error or "unknown error"
        return f"{problem} Who holds the lock could not be looked up: {why}", generic_fix
    lines = "\n".join(f"  - {describe(h)}" for h in found.holders)
    if found.exact and found.holders:
        problem += f" In the way:\n{lines}"
    elif found.exact:
        problem += " The server shows no session holding it now: it was let go meanwhile."
    elif found.holders:
        problem += (
            " The server does not say who holds it (performance_schema.metadata_locks "
            "and MariaDB's METADATA_LOCK_INFO plugin are off or not readable); it could be "
            f"held by:\n{lines}"
        )
    else:
        problem += " No other session that could hold it is visible."
    if not found.complete and not found.exact:  # the lock tables list every user's
        problem += (
            "\n  (This user sees only its own sessions: without the PROCESS privilege "
            "the list may be incomplete.)"
        )
    if not found.holders:
        return problem, (f"{again} again" if found.exact else generic_fix)
    if found.exact:
        ids = [h.id for h in found.holders]
        kills = " or ".join(f"`KILL {i}`" for i in ids)
        one = len(ids) == 1
        whose = "that session's transaction" if one else "those sessions' transactions"
        if any(h.session is None for h in found.holders):
            kills += " (as its user, or one with CONNECTION ADMIN or SUPER)"
        fix = f"end {whose} (COMMIT or ROLLBACK) or UNLOCK TABLES, or {kills}; {then}"
    else:
        fix = (
            "end the transaction (COMMIT or ROLLBACK) or the UNLOCK TABLES of the one that "
            f"holds it, or `KILL <id>` it; {then}"
        )
    return problem, fix


# ---- the server ------------------------------------------------------------------------


def connect(endpoint: Endpoint) -> Any:
    """A short-lived connection for watching and looking up: no query on it waits
    longer than LOOKUP_TIMEOUT (the client gives up reading, whatever the server does)."""
    conn = endpoint.connect(read_timeout=LOOKUP_TIMEOUT)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = %s", (LOOKUP_TIMEOUT,))
    except pymysql.MySQLError:
        conn.close()
        raise
    return conn


_SESSION_COLUMNS = "ID, USER, HOST, DB, COMMAND, TIME, STATE, INFO"


def _session(row: tuple[Any, ...]) -> Session:
    sid, user, host, db, command, seconds, state, info = row
    return Session(
        int(sid),
        fetch_text(user),
        fetch_text(host),
        fetch_text(db) if db is not None else None,
        fetch_text(command),
        int(seconds or 0),
        fetch_text(state),
        fetch_text(info) if info is not None else None,
    )


def _processlist(cur: Any) -> dict[int, Session]:
    cur.execute(f"SELECT {_SESSION_COLUMNS} FROM information_schema.PROCESSLIST ORDER BY ID")
    return {s.id: s for s in map(_session, cur.fetchall())}


def _transactions(cur: Any) -> dict[int, str] | None:
    """Sessions in an InnoDB transaction, with its start; None without PROCESS."""
    try:
        cur.execute("SELECT trx_mysql_thread_id, trx_started FROM information_schema.INNODB_TRX")
    except pymysql.err.OperationalError as err:
        if error_code(err) in (1227, 1142):  # access denied: needs PROCESS
            return None
        raise
    return {int(sid): fetch_text(started) for sid, started in cur.fetchall()}


@dataclass(frozen=True)
class _Lock:
    id: int
    object: tuple[str, str | None, str | None]  # (type, schema, name)
    mode: str  # without MariaDB's MDL_ prefix
    granted: bool


def _performance_schema_locks(cur: Any, me: int) -> list[_Lock] | None:
    """Every metadata lock, from performance_schema; None when it is off, unreadable,
    or does not collect them (then not even this query's own locks are listed)."""
    try:
        cur.execute("SELECT @@performance_schema")
        if not int(cur.fetchone()[0] or 0):
            return None
        cur.execute(
            "SELECT t.PROCESSLIST_ID, m.OBJECT_TYPE, m.OBJECT_SCHEMA, m.OBJECT_NAME, "
            "m.LOCK_TYPE, m.LOCK_STATUS FROM performance_schema.metadata_locks m "
            "JOIN performance_schema.threads t ON t.THREAD_ID = m.OWNER_THREAD_ID "
            "WHERE t.PROCESSLIST_ID IS NOT NULL"
        )
        rows = cur.fetchall()
    except pymysql.err.MySQLError as err:
        if error_code(err) in (0, 2006, 2013):  # lost the connection: not "off"
            raise
        return None
    locks = [
        _Lock(
            int(sid),
            (
                fetch_text(kind),
                fetch_text(schema) if schema is not None else None,
                fetch_text(name) if name is not None else None,
            ),
            fetch_text(mode),
            fetch_text(status) == "GRANTED",
        )
        for sid, kind, schema, name, mode, status in rows
    ]
    return locks if any(lock.id == me for lock in locks) else None


_MLI_KINDS = {
    "Table metadata lock": "TABLE",
    "Schema metadata lock": "SCHEMA",
    "Global read lock": "GLOBAL",
    "Backup lock": "BACKUP",
}


def _metadata_lock_info(cur: Any) -> list[_Lock] | None:
    """Granted metadata locks from MariaDB's metadata_lock_info plugin; None without it."""
    try:
        cur.execute(
            "SELECT THREAD_ID, LOCK_TYPE, TABLE_SCHEMA, TABLE_NAME, LOCK_MODE "
            "FROM information_schema.METADATA_LOCK_INFO"
        )
        rows = cur.fetchall()
    except pymysql.err.MySQLError as err:
        if error_code(err) in (0, 2006, 2013):
            raise
        return None  # 1109: unknown table, the plugin is not loaded
    return [
        _Lock(
            int(sid),
            (
                _MLI_KINDS.get(fetch_text(kind), fetch_text(kind)),
                fetch_text(schema) or None,
                fetch_text(name) or None,
            ),
            fetch_text(mode).removeprefix("MDL_"),
            True,
        )
        for sid, kind, schema, name, mode in rows
    ]


def _in_the_way(
    locks: list[_Lock], dump: int, me: int, database: str, table: str | None, state: str | None
) -> tuple[dict[int, list[str]], str | None]:
    """Who, by the lock tables, keeps the dump waiting: session -> what it holds or
    waits for; and the table the dump waits for, when its own request is listed."""
    others = [lock for lock in locks if lock.id not in (dump, me)]
    request = next((lock for lock in locks if lock.id == dump and not lock.granted), None)
    if request is not None:
        target = request.object
    elif table is not None:
        target = ("TABLE", database, table)
    elif state is not None and ("global" in state or "backup" in state):
        target = ("BACKUP" if "backup" in state else "GLOBAL", None, None)
    else:
        target = ("TABLE", database, None)  # some table of the database

    def on_target(lock: _Lock) -> bool:
        kind, schema, name = target
        if lock.object[0] != kind or (schema is not None and lock.object[1] != schema):
            return False
        return name is None or lock.object[2] == name

    mine = [lock for lock in others if on_target(lock) and not lock.mode.startswith("INTENTION")]
    mine = [lock for lock in mine if lock.mode not in _WEAK]
    if target[0] in ("BACKUP", "GLOBAL"):
        chosen = [lock for lock in mine if lock.granted]
    else:
        # A lock that keeps readers out is the whole story; failing that, a strong request
        # queued ahead of the dump's, and everything granted that holds that one up.
        chosen = [lock for lock in mine if lock.granted and lock.mode in _KEEPS_READERS_OUT]
        if not chosen:
            chosen = [lock for lock in mine if lock.granted or lock.mode in _KEEPS_READERS_OUT]
    found: dict[int, list[str]] = {}
    for lock in chosen:
        found.setdefault(lock.id, []).append(
            f"{'holds' if lock.granted else 'waits for'} {lock.mode}"
        )
    named = request.object[2] if request is not None and request.object[0] == "TABLE" else None
    return found, named


def find_blockers(
    cur: Any, *, dump: int, database: str, table: str | None, state: str | None
) -> Blockers:
    """Who keeps session `dump` waiting for a lock. Raises pymysql errors."""
    cur.execute("SELECT CONNECTION_ID()")
    me = int(cur.fetchone()[0])
    sessions = _processlist(cur)
    transactions = _transactions(cur)
    complete = transactions is not None
    locks = _performance_schema_locks(cur, me)
    if locks is None:
        locks = _metadata_lock_info(cur)
    if locks is not None:
        found, named = _in_the_way(locks, dump, me, database, table, state)
        holders = tuple(
            Holder(sid, sessions.get(sid), tuple(what), (transactions or {}).get(sid))
            for sid, what in sorted(found.items())
        )
        return Blockers(holders, exact=True, complete=complete, table=named)
    # A guess: any session of the database, in a transaction, or waiting on the table.
    guessed = []
    for s in sessions.values():
        if s.id in (dump, me) or s.user in _SYSTEM_USERS or s.command in _SYSTEM_COMMANDS:
            continue
        since = (transactions or {}).get(s.id)
        waits_too = is_lock_wait(s.state) and table is not None and table_in(s.info) == table
        if s.db == database or since is not None or waits_too:
            guessed.append(Holder(s.id, s, (), since))
    return Blockers(tuple(guessed), exact=False, complete=complete)


def look_up(
    endpoint: Endpoint,
    *,
    dump: int,
    seconds: float,
    database: str,
    table: str | None,
    state: str | None,
    cur: Any = None,
) -> Blocked:
    """`Blocked` for session `dump`, with who holds the lock: looked up on `cur`, or on
    a short-lived connection of its own. Never raises: a failed lookup is told in the
    message, never instead of it."""
    try:
        if cur is not None:
            blockers = find_blockers(cur, dump=dump, database=database, table=table, state=state)
        else:
            conn = connect(endpoint)
            try:
                with conn.cursor() as own:
                    blockers = find_blockers(
                        own, dump=dump, database=database, table=table, state=state
                    )
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
    except (pymysql.MySQLError, OSError) as err:
        why = scrub(error_text(err), endpoint.password)
        log.warning("could not look up who holds a lock", database=database, error=why)
        return Blocked(seconds, database, table, state, None, why)
    return Blocked(seconds, database, table, state, blockers)


# ---- the watch -------------------------------------------------------------------------


@dataclass
class LockWatch:
    """Watches a dump tool's server session; when it has waited `limit` seconds for a
    lock, looks up who holds it, kills the tool and ends its session.

    The tool's session is the first one of the same user, in the dumped database, with
    an id above every id this user had before the tool started (`baseline`: connection
    ids only grow). Another client of the same user and database connecting in the
    milliseconds between the baseline and the tool would be taken for the tool: the
    watch then never fires (the dump still ends at dump_timeout), or would stop the
    dump if that client waited for a lock longer than the limit. The tool's client port
    would tell them apart exactly, but not over a Unix socket, and neither tool can
    label its session.

    The watch connects only once the dump has run for a while (the server's TIME column
    says how long a session has waited, so nothing is missed by looking late): a
    connection costs tens of milliseconds, most of a small database's whole dump."""

    endpoint: Endpoint
    database: str
    limit: float
    baseline: int
    user: str
    blocked: Blocked | None = None
    _dump: int | None = None
    _done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def before(cls, conn: Any, endpoint: Endpoint, database: str, limit: float) -> LockWatch | None:
        """A watch for a tool about to start, its baseline read on `conn` (any
        connection of the same user); None when that cannot be read (the dump then runs
        unwatched, bounded by dump_timeout_seconds)."""
        try:
            with conn.cursor() as cur:
                # Without PROCESS only this user's sessions are listed: all it needs.
                cur.execute(
                    "SELECT (SELECT MAX(ID) FROM information_schema.PROCESSLIST), "
                    "USER FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"
                )
                baseline, user = cur.fetchone()
        except (pymysql.MySQLError, TypeError) as err:
            log.warning("cannot watch the dump for lock waits", error=str(err))
            return None
        return cls(endpoint, database, limit, int(baseline), fetch_text(user))

    def start(self, proc: subprocess.Popen[bytes]) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(proc,), name="mysql-dump-lock-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()  # a query in flight ends within LOOKUP_TIMEOUT

    def _run(self, proc: subprocess.Popen[bytes]) -> None:
        if self._done.wait(min(self.limit, FIRST_LOOK_SECONDS)):
            return
        try:
            conn = connect(self.endpoint)
        except pymysql.MySQLError as err:
            log.warning("cannot watch the dump for lock waits", error=error_text(err))
            return
        try:
            while not self._check(conn, proc) and not self._done.wait(POLL_SECONDS):
                pass
        except pymysql.MySQLError as err:
            # The dump goes on unwatched; dump_timeout_seconds still bounds it.
            log.warning("stopped watching the dump for lock waits", error=error_text(err))
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _check(self, conn: Any, proc: subprocess.Popen[bytes]) -> bool:
        """One look; True when there is nothing more to watch."""
        with conn.cursor() as cur:
            if self._dump is None:
                cur.execute(
                    "SELECT MIN(ID) FROM information_schema.PROCESSLIST WHERE ID > %s "
                    "AND USER = %s AND DB = %s",
                    (self.baseline, self.user, self.database),
                )
                first = cur.fetchone()[0]
                if first is None:
                    return False  # not connected yet, or not in the database yet
                self._dump = int(first)
            cur.execute(
                f"SELECT {_SESSION_COLUMNS} FROM information_schema.PROCESSLIST WHERE ID = %s",
                (self._dump,),
            )
            row = cur.fetchone()
            if row is None:
                return True  # the tool's session has ended
            session = _session(row)
            if not is_lock_wait(session.state) or session.seconds < self.limit:
                return False
            if self._done.is_set():
                return True
            self.blocked = look_up(
                self.endpoint,
                dump=session.id,
                seconds=self.limit,
                database=self.database,
                table=table_in(session.info),
                state=session.state,
                cur=cur,
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                cur.execute(f"KILL {session.id}")
            except pymysql.MySQLError as err:
                if error_code(err) != 1094:  # unknown thread: it ended with the tool
                    log.warning("could not end the dump's session", error=error_text(err))
            return True

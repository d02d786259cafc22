"""SQLite: backups through SQLite's own locking, so they are consistent while others write.

Rollback-journal databases (the default) are streamed straight from the file while a
read transaction holds the SHARED lock: no writer can commit until the copy is done, and
no temporary copy is needed. WAL databases are copied with the online backup API into
the scratch folder first, because their committed state spans the file and the -wal.
Row counts come from the same snapshot as the bytes.

Change signal: `PRAGMA data_version` on a connection kept open by the daemon, plus
`stat()` of the file and its -wal. data_version moves whenever another connection
commits; stat catches the file being replaced. Each kept connection has a random epoch
in the fingerprint, so after a daemon restart nothing matches and the first guarded
command backs up again: no signal survives a restart soundly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import sqlite3
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dbguard.config import BackupSettings
from dbguard.engines.base import (
    DumpInfo,
    EngineName,
    Marker,
    Sink,
    Target,
    signals_recorded,
)
from dbguard.errors import (
    BackupFailed,
    Cancelled,
    Damaged,
    DatabaseMissing,
    DbguardError,
    RestoreFailed,
    Unreadable,
)

_CHUNK = 1 << 20
_BUSY_TIMEOUT = 30.0  # seconds to wait for a writer to finish its transaction
# Seconds a restore waits for other connections to let go. While it waits to commit,
# SQLite keeps new readers out (the PENDING lock), so it must not wait for ever.
_RESTORE_LOCK_WAIT = _BUSY_TIMEOUT
_KEPT_CONNECTIONS = 64
_COPY_STEP_PAGES = 16384  # pages per step of a WAL database's copy (module level for tests)
# The file format's read/write version bytes (18 and 19): 2 for WAL, 1 for a rollback journal.
_VERSION_BYTES = 18
_WAL_VERSION = b"\x02\x02"
_LEGACY_VERSION = b"\x01\x01"
# application_id values meaning "marked by dbguard": 'DBGP' and 'DBGD'.
_MARKERS: dict[int, Marker] = {0x44424750: "production", 0x44424744: "development"}


def _connect(
    path: str | Path, *, must_exist: bool = True, timeout: float | None = None
) -> sqlite3.Connection:
    """Open without ever creating the file (mode=rw) and in autocommit mode; wait up to
    `timeout` (default _BUSY_TIMEOUT, read now so a test can shorten it) for locks."""
    mode = "rw" if must_exist else "rwc"
    # Bytes: a path that is no UTF-8 (surrogate escapes) opens as the bytes it names.
    uri = f"file:{urllib.parse.quote(os.fsencode(path))}?mode={mode}"
    wait = _BUSY_TIMEOUT if timeout is None else timeout
    return sqlite3.connect(
        uri, uri=True, timeout=wait, isolation_level=None, check_same_thread=False
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _copy_into(path: Path, out: Sink) -> None:
    """The file's bytes into `out`, a megabyte at a time through one buffer: a new
    megabyte object per read would be a fresh mmap, page faults and munmap each time
    (dbguardd keeps large allocations out of its heap, see daemon/memory.py)."""
    buffer = bytearray(_CHUNK)
    with path.open("rb", buffering=0) as source:
        while n := source.readinto(buffer):
            out.write(buffer if n == _CHUNK else buffer[:n])


def count_rows(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows per ordinary table (virtual tables are counted through their shadow tables)."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND coalesce(sql, '') NOT LIKE 'CREATE VIRTUAL%' ORDER BY name"
        )
    ]
    return {
        name: conn.execute(f"SELECT count(*) FROM {_quote(name)}").fetchone()[0] for name in names
    }


def _stat_signature(path: Path) -> str:
    parts = []
    for candidate in (path, Path(f"{path}-wal")):
        try:
            st = candidate.stat()
        except (FileNotFoundError, NotADirectoryError):
            parts.append("-")
            continue
        # The file's ctime too, which no copy tool can set back as `cp -p` sets back
        # an mtime: data_version misses a file overwritten in place by another made
        # the same way. Not the -wal's: SQLite running as root fchown()s the -wal on
        # every open, which moves its ctime without any change to the data.
        ctime = f".{st.st_ctime_ns}" if candidate == path else ""
        parts.append(f"{st.st_ino}.{st.st_size}.{st.st_mtime_ns}{ctime}")
    return "/".join(parts)


@dataclass
class _Kept:
    conn: sqlite3.Connection
    inode: int
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    lock: threading.Lock = field(default_factory=threading.Lock)


def _close(kept: _Kept) -> None:
    """Close a kept connection once no fingerprint read is using it (another thread may
    hold it right now: closing it under that read would fail the read)."""
    with kept.lock:
        kept.conn.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _Stopped(Exception):
    """A stop came before the restore's copy committed."""


class _StillInUse(Exception):
    """Another connection kept the database locked past the restore's wait."""


def _holders(path: Path) -> list[str]:
    """The processes holding a lock that blocks a writer (on the file, or a write lock on
    a WAL database's -shm), as 'pid 12 (php)', from Linux's /proc/locks; best effort:
    empty where that cannot be read. Locks, not open files: dbguardd keeps an idle
    connection open to every database it watches."""
    # Rollback journal: any lock on the file blocks a writer (a reader's SHARED too).
    # WAL: only write locks, on the file or its -shm; every open WAL connection keeps
    # read locks on both, and readers do not block a writer there.
    wal = _header_byte(path, 18) == 2
    blocking = ("WRITE",) if wal else ("READ", "WRITE")
    files: dict[str, tuple[str, ...]] = {}
    for candidate, kinds in ((path, blocking), (Path(f"{path}-shm"), ("WRITE",))):
        try:
            st = candidate.stat()
        except OSError:
            continue
        files[f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"] = kinds
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = set()
    for line in lines:
        fields = line.split()
        # "1: POSIX  ADVISORY  READ 4277 08:01:1234 1073741824 1073741824"
        if len(fields) >= 6 and fields[3] in files.get(fields[5], ()) and fields[4].isdigit():
            pids.add(int(fields[4]))
    pids.discard(os.getpid())
    found = []
    for pid in sorted(pids):
        try:
            found.append(f"pid {pid} ({Path(f'/proc/{pid}/comm').read_text().strip()})")
        except OSError:
            found.append(f"pid {pid}")
    return found


def _adopt_page_size(source: sqlite3.Connection, dest: sqlite3.Connection) -> None:
    """A WAL database cannot change its page size, and the backup API refuses to copy
    pages of another size into it ('attempt to write a readonly database'). The source
    is the restore's own scratch copy, so it takes the target's page size instead."""
    if dest.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        return  # the copy sets the target's page size itself
    theirs = dest.execute("PRAGMA page_size").fetchone()[0]
    if source.execute("PRAGMA page_size").fetchone()[0] != theirs:
        source.execute("PRAGMA journal_mode = DELETE")
        source.execute(f"PRAGMA page_size = {int(theirs)}")
        source.execute("VACUUM")


def _keep_marker(source: sqlite3.Connection, dest: sqlite3.Connection) -> None:
    """The environment mark describes the database, not its contents (PostgreSQL keeps
    its database setting across a restore too): a backup taken before `dbguardctl mark
    production` must not bring the database back unmarked, open to unattended callers.
    The source is the restore's own scratch copy, so it takes the target's mark."""
    theirs = dest.execute("PRAGMA application_id").fetchone()[0]
    ours = source.execute("PRAGMA application_id").fetchone()[0]
    if theirs in _MARKERS and ours != theirs and ours in (0, *_MARKERS):
        source.execute(f"PRAGMA application_id = {int(theirs)}")


def _header_byte(path: Path, offset: int) -> int | None:
    """One byte of the database header (18: 2 in WAL mode), or None if unreadable."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            byte = file.read(1)
    except OSError:
        return None
    return byte[0] if byte else None


def _read_dump(data: BinaryIO) -> bytes:
    """The next chunk of the decompressed dump. Its checksum matched, so data that does
    not decompress was stored so: Damaged. A read of the store's disk that fails is not
    the backup's fault: the OSError goes on."""
    try:
        return data.read(_CHUNK)
    except (OSError, Damaged):  # the store's disk; a dump that ends short (store.py)
        raise
    except Exception as err:  # the decompressor's errors have no common base
        raise Damaged(f"the backup data does not decompress: {err}") from None


# What only a bad file makes SQLite say. Anything else on the store's own copy (an I/O
# error, a full disk, a file it cannot open, no memory) is the machine's, not the backup's.
_BAD_FILE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _copy_error(copy: Path, err: sqlite3.Error) -> DbguardError:
    """Damaged if SQLite found the unpacked backup bad, else RestoreFailed naming the disk."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _BAD_FILE:
        return Damaged(f"the backup does not open as an SQLite database: {err}")
    return RestoreFailed(
        f"SQLite could not use the unpacked copy of the backup in {copy.parent}: {err}",
        f"free some space on the filesystem holding {copy.parent} and check that it is "
        "sound and writable, then try again; the backup is not damaged by this (and is not "
        "marked failed)",
    )


def _write_error(path: Path, err: sqlite3.Error) -> RestoreFailed:
    code = getattr(err, "sqlite_errorcode", None)
    unchanged = "the database was not changed"
    if code == sqlite3.SQLITE_READONLY:
        return RestoreFailed(
            f"cannot write {path}: it is read-only ({err})",
            f"make {path} and its folder writable for this user (SQLite writes a journal "
            f"beside it); {unchanged}",
        )
    if code == sqlite3.SQLITE_CANTOPEN:
        return RestoreFailed(
            f"cannot open {path} for writing ({err})",
            f"check that {path.parent} exists and is writable for this user (SQLite writes "
            f"a journal beside the database); {unchanged}",
        )
    if code == sqlite3.SQLITE_FULL:
        return RestoreFailed(
            f"no space left on the filesystem holding {path}", f"free some space; {unchanged}"
        )
    return RestoreFailed(f"cannot write {path}: {err}", unchanged)


def _finish_rollback(path: Path) -> None:
    """A copy into `path` stopped by a full disk leaves its journal hot: the file had
    grown and taken new pages, and SQLite's rollback of them waits for the next
    connection that reads it. Reading it now makes the file alone the database as it
    was again, so a copy of it, or a journal deleted as clutter, loses nothing. If this
    fails too, the journal stays, and the next reader rolls it back as SQLite would."""
    with contextlib.suppress(sqlite3.Error):
        conn = _connect(path, timeout=_RESTORE_LOCK_WAIT)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()


def _restore_error(path: Path, err: OSError) -> RestoreFailed:
    unchanged = "the database was not changed"
    if isinstance(err, FileNotFoundError):
        return RestoreFailed(
            f"cannot restore {path}: the folder {path.parent} does not exist",
            f"create it, then restore again; {unchanged}",
        )
    if isinstance(err, PermissionError) or err.errno == errno.EROFS:
        return RestoreFailed(
            f"cannot restore {path}: {err.strerror} ({err.filename})",
            f"make {path.parent} writable for this user; {unchanged}",
        )
    if err.errno == errno.ENOSPC:
        return RestoreFailed(
            f"no space left on the filesystem holding {path}", f"free some space; {unchanged}"
        )
    return RestoreFailed(f"cannot restore {path}: {err}", unchanged)


def _missing(path: Path) -> DatabaseMissing:
    return DatabaseMissing(f"the SQLite database {path} does not exist")


def _open_error(path: Path, err: sqlite3.Error) -> BackupFailed:
    text = str(err)
    if "locked" in text or "busy" in text:
        return BackupFailed(
            f"{path} stayed locked by another connection for {_BUSY_TIMEOUT:g} s",
            "finish or stop whatever holds the write lock, then run the command again",
        )
    if path.is_dir():  # SQLite only says "unable to open database file"
        return Unreadable(
            f"{path} is a folder, not an SQLite database",
            "check the path in your .env (or .dbguard.toml): it names a folder",
        )
    code = getattr(err, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or "not a database" in text:
        what = "is not an SQLite database" if "not a database" in text else f"is damaged ({text})"
        return Unreadable(
            f"{path} {what}",
            "check the path in your .env; if this is the database, restore a backup of it "
            "(`dbguardctl list-backups`)",
        )
    if not os.access(path, os.R_OK):  # SQLite only says "unable to open database file"
        return _not_allowed(path, "Permission denied")
    return BackupFailed(f"cannot read the SQLite database {path}: {text}")


def _not_allowed(path: Path, why: str) -> BackupFailed:
    """The file's or its folder's mode keeps this user (dbguardd runs as the caller's)
    from reading the database."""
    return BackupFailed(
        f"cannot read the SQLite database {path}: {why}",
        f"make it and its folder readable for your user (`chmod u+r {path}`, `chmod u+rx "
        f"{path.parent}`), then run the command again",
    )


class SqliteEngine:
    name: EngineName = "sqlite"
    data_suffix = "data.sqlite"

    def __init__(self, settings: BackupSettings | None = None) -> None:
        self.settings = settings or BackupSettings()  # no dump tool here: for the interface
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._kept_lock = threading.Lock()
        # Told once when a restore has to wait for other connections' transactions:
        # the database, who holds it (as _holders() names them; empty when unknown) and
        # how many seconds the restore waits at most. The engine prints nothing;
        # `dbguardctl restore` says it on stderr rather than stay silent that long.
        self.restore_waits: Callable[[Path, list[str], float], None] = lambda *_: None

    # ---- change signal -------------------------------------------------------------

    def _watched(self, path: Path) -> _Kept:
        """The kept-open connection for `path`, reopened if the file was replaced."""
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise _missing(path) from None
        except PermissionError as err:
            raise _not_allowed(path, err.strerror or "Permission denied") from None
        except OSError as err:
            raise BackupFailed(f"cannot read the SQLite database {path}: {err.strerror}") from None
        if st.st_size == 0 and _size(Path(f"{path}-wal")) == 0:
            # `touch database/database.sqlite` (Laravel's setup) makes a database with
            # no tables and no rows yet: nothing to lose, and nothing a copy would hold.
            raise DatabaseMissing(f"the SQLite database {path} is empty (0 bytes)")
        inode = st.st_ino
        key = str(path)
        with self._kept_lock:
            kept = self._kept.get(key)
            if kept is not None and kept.inode == inode:
                self._kept.move_to_end(key)
                return kept
            if kept is not None:
                _close(self._kept.pop(key))
            try:
                kept = _Kept(_connect(path), inode)
            except sqlite3.Error as err:
                raise _open_error(path, err) from None
            self._kept[key] = kept
            while len(self._kept) > _KEPT_CONNECTIONS:
                _close(self._kept.popitem(last=False)[1])
            return kept

    def fingerprint(self, target: Target) -> str | None:
        path = Path(str(target.path))
        kept = self._watched(path)
        with kept.lock:
            try:
                version = kept.conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as err:
                raise _open_error(path, err) from None
        return f"sqlite:{kept.epoch}:{version}:{_stat_signature(path)}"

    # ---- backup --------------------------------------------------------------------

    def dump(self, target: Target, out: Sink, scratch: Path, cancel: threading.Event) -> DumpInfo:
        path = Path(str(target.path))
        fingerprint = self.fingerprint(target)  # before the snapshot: never misses a commit
        try:
            conn = _connect(path)
        except sqlite3.Error as err:
            raise _open_error(path, err) from None
        try:
            wal = conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
            if wal:
                tables = self._dump_wal(conn, path, out, scratch, cancel)
            else:
                tables = self._dump_locked(conn, path, out)
        except sqlite3.Error as err:
            raise _open_error(path, err) from None
        finally:
            conn.close()
        return DumpInfo(
            tables=tables,
            fingerprint=fingerprint,
            tool=f"sqlite {sqlite3.sqlite_version} ({'backup API' if wal else 'locked copy'})",
            format="sqlite-file",
        )

    def _dump_locked(self, conn: sqlite3.Connection, path: Path, out: Sink) -> dict[str, int]:
        """Rollback-journal mode: hold SHARED and copy the file; count rows meanwhile."""
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes SHARED
            with ThreadPoolExecutor(1) as pool:
                counts = pool.submit(count_rows, conn)
                _copy_into(path, out)
                return counts.result()
        finally:
            conn.execute("ROLLBACK")

    def _dump_wal(
        self,
        conn: sqlite3.Connection,
        path: Path,
        out: Sink,
        scratch: Path,
        cancel: threading.Event,
    ) -> dict[str, int]:
        copy_path = scratch / "copy.sqlite"
        copy = _connect(copy_path, must_exist=False)
        try:
            copy.execute("PRAGMA synchronous = OFF")

            def check_cancel(status: int, remaining: int, total: int) -> None:
                if cancel.is_set():
                    raise Cancelled("the backup was cancelled because dbguardd is stopping")

            # Steps of _COPY_STEP_PAGES let a stop request interrupt a large copy. The read
            # transaction held across them pins one snapshot: without it SQLite
            # restarts the copy whenever another connection commits between two steps,
            # and a database written a few times a second (an app's job queue) was
            # never copied at all. In WAL mode that reader blocks no writer.
            conn.execute("BEGIN")
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot
                conn.backup(copy, pages=_COPY_STEP_PAGES, progress=check_cancel)
            except sqlite3.Error as err:
                if getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    # The copy's disk is full, not the database's: say which.
                    raise BackupFailed(
                        f"no space left in {scratch} for the copy of the WAL database "
                        f"{path} (it is copied whole before it is compressed)",
                        "free some space on that filesystem or point backup_dir at a larger disk",
                    ) from None
                raise
            finally:
                with contextlib.suppress(sqlite3.Error):  # never in place of the error above
                    conn.execute("ROLLBACK")
            tables = count_rows(copy)
        finally:
            copy.close()
        _copy_into(copy_path, out)
        copy_path.unlink()
        return tables

    # ---- restore and verify ----------------------------------------------------------

    def _unpack(self, data: BinaryIO, dest: Path, cancel: threading.Event | None = None) -> bool:
        """Write the dump to a new file (never following a planted link) and check it.
        Returns whether it is a WAL database's: the copy itself is left in rollback-journal
        mode (header bytes 18 and 19 set to 1), so SQLite opens it without the 32 KB
        -shm a WAL file needs beside it, which a nearly full disk has no room for.

        Raises Damaged when the copy is no sound SQLite database (a fact of the backup),
        RestoreFailed when SQLite cannot use it for a reason of the disk (full, failing:
        nothing is known about the backup then), OSError when it cannot be written;
        Cancelled when `cancel` is set (checked at each chunk)."""
        fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as file:
            while chunk := _read_dump(data):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("the verify was stopped because dbguardd is stopping")
                file.write(chunk)
            file.flush()
            wal = os.pread(fd, 2, _VERSION_BYTES) == _WAL_VERSION
            if wal:
                os.pwrite(fd, _LEGACY_VERSION, _VERSION_BYTES)
            os.fsync(file.fileno())
        try:
            conn = _connect(dest)
            try:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as err:
            raise _copy_error(dest, err) from None
        if result != "ok":
            raise Damaged(f"the backup fails SQLite's integrity check: {result}")
        return wal

    def restore(
        self,
        target: Target,
        data: BinaryIO,
        dump_format: str,
        scratch: Path,
        *,
        end_connections: bool = False,  # SQLite's own locking serializes the swap
        swapped: Callable[[], None] = lambda: None,
        warn: Callable[[str], None] = lambda note: None,  # nothing is left out here
    ) -> None:
        path = Path(str(target.path))
        # Unpacked in the store's work folder, not beside the database: a restore that
        # is killed leaves nothing in the project (the store clears its work folders).
        unpacked = scratch / f"restore-{secrets.token_hex(4)}.sqlite"
        try:
            wal = self._unpack(data, unpacked)
        except OSError as err:
            unpacked.unlink(missing_ok=True)
            raise RestoreFailed(
                f"cannot unpack the backup into {scratch} to restore {path}: {err.strerror or err}",
                "free some space on the backups' filesystem (the unpacked copy is about the "
                "database's size); the database was not changed"
                if err.errno == errno.ENOSPC
                else "the database was not changed",
            ) from None
        try:
            # The copy commits in its last step: a stop that lands after it must say the
            # database holds the backup, not that it was left as it was.
            with signals_recorded() as stops:
                if path.exists():
                    self._copy_into(unpacked, path, stops)
                else:
                    # Through a link whose file is gone, to where it points, as SQLite
                    # itself would open it: never over the link.
                    self._create_from(unpacked, Path(os.path.realpath(path)), wal=wal)
                swapped()
        except OSError as err:
            raise _restore_error(path, err) from None
        finally:
            unpacked.unlink(missing_ok=True)
        with self._kept_lock:
            kept = self._kept.pop(str(path), None)
        if kept is not None:
            _close(kept)

    def _create_from(self, unpacked: Path, path: Path, *, wal: bool) -> None:
        """A deleted database comes back by rename: whole, or not at all, and in the
        journal mode of the backup's database (`wal`; its unpacked copy is not)."""
        # Leftovers of a deleted database would be replayed into the new file.
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        temp = path.with_name(f".{path.name}.dbguard-restore-{secrets.token_hex(4)}")
        try:
            # 0644 less the umask: the mode SQLite itself gives a new database.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as file, unpacked.open("rb") as source:
                shutil.copyfileobj(source, file, _CHUNK)
                file.flush()
                if wal:
                    os.pwrite(file.fileno(), _WAL_VERSION, _VERSION_BYTES)
                os.fsync(file.fileno())
            os.rename(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def _copy_into(self, source_path: Path, path: Path, stops: list[int]) -> None:
        """Replace the live database's contents in one transaction of its own.

        The backup API writes through the target's journal or WAL, so other connections
        see the old contents or the new ones, never a mix, and a crash rolls back.
        """
        try:
            source = _connect(source_path)
        except sqlite3.Error as err:
            raise _copy_error(source_path, err) from None
        try:
            dest = _connect(path, timeout=_RESTORE_LOCK_WAIT)
        except sqlite3.Error as err:
            source.close()
            raise _write_error(path, err) from None
        deadline = time.monotonic() + _RESTORE_LOCK_WAIT
        waited: list[bool] = []

        def give_up_when_held(status: int, remaining: int, total: int) -> None:
            # Python's backup() retries a busy step for ever; this ends it (and ^C works).
            if stops and status != sqlite3.SQLITE_DONE:
                raise _Stopped  # not committed yet: backup() rolls the target back
            busy = status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if busy and not waited:
                waited.append(True)
                self.restore_waits(path, _holders(path), _RESTORE_LOCK_WAIT)
            if busy and time.monotonic() >= deadline:
                raise _StillInUse

        try:
            _adopt_page_size(source, dest)
            _keep_marker(source, dest)
            # Busy steps come back at once and backup() retries them, with the callback
            # between: a long busy wait inside SQLite would hold off ^C and SIGTERM.
            dest.execute("PRAGMA busy_timeout = 100")
            source.backup(dest, progress=give_up_when_held)
        except _Stopped:
            raise KeyboardInterrupt(signal.Signals(stops[0]).name) from None
        except _StillInUse:
            holders = _holders(path)
            held_by = f" (open in {', '.join(holders)})" if holders else ""
            raise RestoreFailed(
                f"{path} stayed in use by another connection for "
                f"{_RESTORE_LOCK_WAIT:.0f} s{held_by}",
                "finish or stop what holds it (a test run, a server, a database browser), "
                "then restore again; the database was not changed",
            ) from None
        except sqlite3.Error as err:
            if err.sqlite_errorcode == sqlite3.SQLITE_FULL:
                dest.close()
                _finish_rollback(path)
            raise _write_error(path, err) from None
        finally:
            dest.close()
            source.close()

    def restored_counts(
        self,
        target: Target,
        data: BinaryIO,
        dump_format: str,
        scratch: Path,
        cancel: threading.Event | None = None,
    ) -> dict[str, int]:
        copy = scratch / f"verify-{secrets.token_hex(4)}.sqlite"
        try:
            self._unpack(data, copy, cancel)
            try:
                conn = _connect(copy)
                try:
                    return count_rows(conn)
                finally:
                    conn.close()
            except sqlite3.Error as err:
                raise _copy_error(copy, err) from None
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{copy}{suffix}").unlink()

    # ---- the environment marker --------------------------------------------------------
    # Kept in the header's application_id, which travels with every copy of the file and
    # is not part of any schema a migration tool compares. A file whose application_id
    # is taken by its own format (GeoPackage, Fossil...) cannot carry the mark.

    def marker(self, target: Target) -> Marker | None:
        kept = self._watched(Path(str(target.path)))
        with kept.lock:
            try:
                value = kept.conn.execute("PRAGMA application_id").fetchone()[0]
            except sqlite3.Error as err:
                raise _open_error(Path(str(target.path)), err) from None
        return _MARKERS.get(value)

    def set_marker(self, target: Target, marker: Marker | None) -> None:
        path = Path(str(target.path))
        try:
            conn = _connect(path)
        except sqlite3.Error as err:
            if not os.path.lexists(path):
                missing = _missing(path)
                missing.fix = (
                    "create it first (run the project's migrations), then mark it; or mark it "
                    "in .dbguard.toml ([[database]] ... production = true)"
                )
                raise missing from None
            raise _open_error(path, err) from None
        try:
            current = conn.execute("PRAGMA application_id").fetchone()[0]
            if current not in (0, *_MARKERS):
                raise BackupFailed(
                    f"{path} already uses its application_id ({current:#x}) for its own format",
                    "mark it in .dbguard.toml ([[database]] ... production = true) instead",
                )
            value = {v: k for k, v in _MARKERS.items()}.get(marker, 0) if marker else 0
            conn.execute(f"PRAGMA application_id = {int(value)}")
        except sqlite3.Error as err:
            raise _open_error(path, err) from None
        finally:
            conn.close()

    def close(self) -> None:
        with self._kept_lock:
            for kept in self._kept.values():
                kept.conn.close()
            self._kept.clear()

"""Backups on disk: one folder per backup, holding the compressed data and a manifest.

    <backup_dir>/
      <database-slug>/<id>/manifest.json      # written last; its presence means complete
      <database-slug>/<id>/<data>.zst
      .tmp/<id>/ + .tmp/<id>.lock             # a backup being written, locked by its writer
      .seq                                    # commit counter: orders backups, whatever the clock
      .locks/<hash of database key>.lock      # guarded commands (shared) vs. a restore (exclusive)
      .locks/<hash of database key>.gate      # closed by a waiting restore: newcomers wait

A backup is correct by construction: data and manifest are written inside `.tmp`,
checked, fsynced, and only then renamed into place, so a crash at any point leaves
either a complete backup or a temporary folder that the next start removes. Nothing in
`.tmp` is ever listed. Files are created with O_EXCL|O_NOFOLLOW, so a planted symlink is
never followed, and everything is readable by its owner only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, cast

import zstandard
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    ValidationError,
    field_validator,
    model_validator,
)

from dbguard.engines.base import DumpInfo, Target
from dbguard.errors import BackupFailed, Cancelled, Damaged, NotFound
from dbguard.paths import SETTLED_NS, Stamp, file_stamp

ID_RE = re.compile(r"[0-9a-f]{8}")
ID_PREFIX_RE = re.compile(r"[0-9a-f]{4,8}")
MANIFEST = "manifest.json"
_CHUNK = 1 << 20
# How much new data on disk starts its writeback early (see _CountingFile).
_WRITEBACK_STEP = 4 << 20
_UPDATE_LOCK = ".update.lock"  # held while a manifest is rewritten
_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ABOUT = "about.json"  # in a backup's work folder: what it is of (see Unfinished)


class Reason(BaseModel):
    """Why a backup was taken: a guarded command, `dbguardctl backup`, or a restore."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["command", "manual", "pre-restore"]
    argv: list[str] = []
    cwd: str = ""
    operation: str | None = None  # the operation id in the log
    operation_kind: str | None = None  # test, migrate, destructive, ...
    production: bool = False  # the command targeted a production database


class _WholeDump(io.RawIOBase):
    """A backup's decompressed dump, checked at its end against the size the backup
    recorded: zstd's stream reader ends a frame cut short without an error, so a
    truncated file whose checksum was made to match read as a shorter, valid dump."""

    def __init__(self, reader: IO[bytes], expected: int, backup_id: str) -> None:
        super().__init__()
        self._reader = reader
        self._expected = expected
        self._backup_id = backup_id
        self._seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._reader.readinto(buffer)  # type: ignore[attr-defined]
        self._seen += n
        if n == 0 and len(buffer) and self._seen != self._expected:
            raise Damaged(
                f"backup {self._backup_id} is damaged: its data ends after {self._seen} "
                f"bytes, and the backup recorded {self._expected}",
                "it cannot be used",
            )
        return int(n)


class DataFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str  # a plain name in the backup's own folder (see _own_file)
    size: int  # bytes on disk (compressed)
    raw_size: int  # bytes the engine produced
    sha256: str  # of the file on disk
    compression: Literal["zstd"] = "zstd"
    format: str  # how the engine reads it back

    @field_validator("file")
    @classmethod
    def _own_file(cls, value: str) -> str:
        """Only a file of the backup's own folder: a manifest naming another backup's
        data ('../../<other>/<id>/data.zst', an absolute path) would list, verify and
        restore as a backup of its database with another database's contents."""
        if (
            not value
            or "/" in value
            or "\\" in value
            or "\0" in value
            or value.startswith(".")
            or value == MANIFEST
        ):
            raise ValueError(
                f"{value!r} is not a data file of its own folder (a plain file name, not "
                f"{MANIFEST}, not starting with '.')"
            )
        return value


class Verification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: AwareDatetime  # a time without its zone compares with nothing
    ok: bool
    problems: list[str] = []


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest_version: Literal[1] = 1
    id: str
    seq: int
    created_at: AwareDatetime
    duration_ms: int
    database: dict[str, Any]  # Target.public(): engine, path or host/name, source ...
    database_key: str
    database_label: str
    data: DataFile
    tables: dict[str, int]
    fingerprint: str | None
    tool: str
    reason: Reason
    pinned: bool = False
    verified: Verification | None = None
    # When a destructive or production command last went ahead on this backup without
    # a new one (it was reused or shared): retention protects it from that moment.
    destructive_reuse_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _current_key(self) -> Manifest:
        """The key as this version computes it from the stored database: a backup
        written before a server database without a port got the default port's key
        ('host:/app', now 'host:5432/app') is grouped, kept and shown with the new ones."""
        # A damaged `database` is left as it is, to fail where the target is needed.
        with contextlib.suppress(ValidationError):
            self.database_key = self.target().key
        return self

    def target(self) -> Target:
        """The database this backup came from (without its password)."""
        return Target.model_validate(self.database)


@dataclass(frozen=True)
class Unfinished:
    """A work folder whose writer died: its id, and for a backup what it was of and
    for whom (`about.json`: database, started, pid, and the reason's kind, argv, cwd
    and op); None for other work (a restore's unpacked copy) or an unreadable note."""

    id: str
    about: dict[str, Any] | None

    def log_record(self) -> dict[str, Any] | None:
        """The operations-log record of a killed backup, whoever clears it (dbguardd, or
        a dbguardctl restore before dbguardd restarts): a failure, since what waited for
        it did not run; `dbguardctl log` would show nothing of it otherwise. None for
        work that was no backup (a restore's unpacked copy)."""
        about = self.about
        if about is None:
            return None
        kind = about.get("kind")
        # A pre-restore backup is dbguardctl's own; every other one the daemon's.
        writer = "dbguardctl restore" if kind == "pre-restore" else "dbguardd"
        reason = (
            f"the backup of {about['database']} started at {about.get('started', '?')} "
            f"did not finish: {writer} (pid {about.get('pid', '?')}) stopped during it "
            "(killed or crashed), and its unfinished files were removed"
        )
        if kind == "command":
            reason += "; the command was not run"
        elif kind == "pre-restore":
            reason += "; nothing was restored"
        record: dict[str, Any] = {
            "argv": about.get("argv", []),
            "cwd": about.get("cwd", ""),
            "decision": "fail",
            "databases": [{"database": about["database"]}],
            "reason": reason,
        }
        if about.get("op"):
            record["op"] = about["op"]
        return record


@dataclass(frozen=True)
class DamagedBackup:
    """A folder that looks like a backup but cannot be trusted; listed, never restored."""

    id: str
    path: Path
    problem: str
    # Its manifest's mode, not its bytes, is what is wrong: the backup may be intact
    # and usable again once its folder is readable.
    unreadable: bool = False


Entry = Manifest | DamagedBackup


def new_id() -> str:
    return secrets.token_hex(4)


def check_id(value: str) -> str:
    """Accept a backup id or unique prefix only if it is plain hex: no path tricks."""
    if not ID_PREFIX_RE.fullmatch(value):
        raise NotFound(
            f"{value!r} is not a backup id",
            "ids are 4 to 8 hex digits, as shown by `dbguardctl list-backups`",
        )
    return value


def _mkdir_private(path: Path, *, may_be_link: bool = False) -> None:
    # Every folder made on the way is private too: mkdir(parents=True) would give the
    # intermediate ones the process umask (0777 under umask 000).
    for folder in reversed([path, *path.parents]):
        if not folder.exists() and not folder.is_symlink():  # (a dangling link is named below)
            try:
                folder.mkdir(mode=0o700, exist_ok=True)
            except NotADirectoryError:
                raise BackupFailed(
                    f"cannot make the backup folder {path}: {folder.parent} is a file",
                    "set backup_dir in config.toml to a path through folders",
                ) from None
    check_private_folder(path, may_be_link=may_be_link)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def check_private_folder(path: Path, *, may_be_link: bool = True) -> None:
    """Raise BackupFailed unless `path` is a folder of ours. A symbolic link of ours to
    one is accepted where `may_be_link` (the backup folder moved to a larger disk), never
    inside the store, where only dbguard makes folders."""
    link = path.lstat()
    if path.is_symlink():
        if not may_be_link:
            raise BackupFailed(
                f"{path} is a symbolic link, where dbguard keeps a folder of its own",
                f"remove it (rm {path}); dbguard makes the folder again",
            )
        if link.st_uid != os.getuid():
            raise BackupFailed(
                f"{path} is a symbolic link of another user (uid {link.st_uid})",
                "choose another backup_dir",
            )
    if not path.is_dir():
        what = "a file" if path.exists() else "a link to nothing"
        raise BackupFailed(
            f"the backup folder {path} is {what}, not a folder",
            "remove it, or set backup_dir in config.toml to a folder",
        )
    owner = path.stat().st_uid
    if owner != os.getuid():
        raise BackupFailed(
            f"the backup folder {path} belongs to another user (uid {owner})",
            "choose another backup_dir",
        )


def _listed(folder: Path) -> list[Path]:
    """What `folder` holds; nothing when it is missing or not a folder."""
    try:
        return list(folder.iterdir())
    except (NotADirectoryError, FileNotFoundError):
        return []
    except OSError as err:
        raise BackupFailed(
            f"cannot read the backup folder {folder}: {err.strerror}",
            f"make it yours to read and write (`chmod 700 {folder}`) or point backup_dir elsewhere",
        ) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_error(err: OSError, where: Path) -> BackupFailed:
    if err.errno == errno.ENOSPC:
        return BackupFailed(
            f"no space left in {where} while writing the backup",
            "free some space (`dbguardctl list-backups` shows what is kept) or point "
            "backup_dir at a larger disk",
        )
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return BackupFailed(
            f"cannot write to {where}: {err.strerror}",
            "make the backup folder writable or point backup_dir elsewhere",
        )
    return BackupFailed(
        f"cannot write the backup in {where}: {err}",
        f"make sure {where} is there, writable and on a working disk, then try again",
    )


class _CountingFile(io.RawIOBase):
    """The file under the compressor: hashes and counts what reaches the disk.

    Every few megabytes it asks the kernel to start writing the new part out. Left
    alone, the kernel holds it all in memory until the final fsync, which then waits
    for the whole file: 39-63 ms for a 67 MB backup here, against 3-7 ms this way.
    On Linux, POSIX_FADV_DONTNEED on a range starts its writeback without waiting
    for it (and drops the range's pages that are already clean: few, at that point).
    """

    def __init__(self, fd: int, where: Path) -> None:
        self.fd = fd
        self.where = where
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._written_back = 0  # bytes before this offset have had their writeback started

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as err:
            raise _disk_error(err, self.where) from err
        self.size += done
        if self.size - self._written_back >= _WRITEBACK_STEP:
            _start_writeback(self.fd, self._written_back, self.size - self._written_back)
            self._written_back = self.size
        return done


def _read_about(path: Path) -> dict[str, Any] | None:
    try:
        about = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return about if isinstance(about, dict) and isinstance(about.get("database"), str) else None


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Advice only: where the system lacks it or refuses, the final fsync does it all."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class DumpSink(io.RawIOBase):
    """What an engine writes its dump to: compresses, and stops when cancelled."""

    def __init__(
        self,
        compressor: Any,
        cancel: threading.Event,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._compressor = compressor
        self._cancel = cancel
        self._progress = progress
        self.raw_size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._cancel.is_set():
            raise Cancelled("the backup was cancelled because dbguardd is stopping")
        n = len(memoryview(data).cast("B"))
        self._compressor.write(data)
        self.raw_size += n
        if self._progress is not None:
            self._progress(self.raw_size)
        return n


class PendingBackup:
    """A backup being written in `.tmp/<id>`; `commit` moves it into place."""

    def __init__(
        self,
        store: Store,
        target: Target,
        backup_id: str,
        folder: Path,
        reason: Reason | None = None,
    ) -> None:
        self.store = store
        self.target = target
        self.id = backup_id
        self.folder = folder
        self.scratch = folder / "scratch"
        try:
            self.scratch.mkdir(mode=0o700)
        except OSError as err:  # the work folder removed under us, a full disk
            raise _disk_error(err, folder) from err
        about: dict[str, Any] = {
            "database": target.label,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "pid": os.getpid(),
        }
        if reason is not None:
            about.update(kind=reason.kind, argv=reason.argv, cwd=reason.cwd)
            if reason.operation:
                about["op"] = reason.operation
        # Only for the log, should this writer be killed: never a reason to fail (a full
        # disk fails the dump's own write, and a missing database must say so first).
        with contextlib.suppress(OSError):
            _write_new(folder / _ABOUT, json.dumps(about).encode(), sync=False)
        self._started = time.monotonic()
        self._data: DataFile | None = None

    @contextlib.contextmanager
    def data_writer(
        self,
        suffix: str,
        cancel: threading.Event,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[DumpSink]:
        """Yield a sink for the engine's raw dump; on exit the compressed file is final."""
        name = f"{suffix}.zst"
        path = self.folder / name
        try:
            fd = os.open(path, _O_NEW_FILE, 0o600)
        except OSError as err:
            raise _disk_error(err, self.folder) from err
        try:
            disk = _CountingFile(fd, self.store.root)
            compressor = self.store.compressor().stream_writer(cast(IO[bytes], disk), closefd=False)
            sink = DumpSink(compressor, cancel, progress)
            yield sink
            compressor.flush(zstandard.FLUSH_FRAME)
            try:
                os.fsync(fd)
            except OSError as err:
                raise _disk_error(err, self.store.root) from err
        finally:
            os.close(fd)
        self._data = DataFile(
            file=name,
            size=disk.size,
            raw_size=sink.raw_size,
            sha256=disk.sha256.hexdigest(),
            format="",
        )

    def commit(self, info: DumpInfo, reason: Reason) -> Manifest:
        """Write the manifest and move the backup into place; returns its manifest."""
        if self._data is None or self._data.raw_size == 0:
            raise BackupFailed(f"the dump of {self.target.label} was empty; nothing was kept")
        shutil.rmtree(self.scratch, ignore_errors=True)
        (self.folder / _ABOUT).unlink(missing_ok=True)
        try:
            seq = self.store.next_seq()
        except OSError as err:  # the folder vanished, is full or read-only, a planted link
            raise _disk_error(err, self.store.root / ".seq") from err
        manifest = Manifest(
            id=self.id,
            seq=seq,
            created_at=datetime.now(UTC),
            duration_ms=int((time.monotonic() - self._started) * 1000),
            database=self.target.public(),
            database_key=self.target.key,
            database_label=self.target.label,
            data=self._data.model_copy(update={"format": info.format}),
            tables=info.tables,
            fingerprint=info.fingerprint,
            tool=info.tool,
            reason=reason,
        )
        try:
            _write_new(self.folder / MANIFEST, _manifest_bytes(manifest))
            _fsync_dir(self.folder)
            home = self.store.root / self.target.slug
            _mkdir_private(home)
            os.rename(self.folder, home / self.id)
            _fsync_dir(home)
            _fsync_dir(self.store.root)
        except OSError as err:
            raise _disk_error(err, self.store.root) from err
        # Its checksum was just computed from the bytes written: no need to read the file
        # back the first time this backup is reused.
        self.store.remember_intact(manifest)
        return manifest


def _write_new(path: Path, content: bytes, *, sync: bool = True) -> None:
    fd = os.open(path, _O_NEW_FILE, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest as ASCII JSON: a path or argument that is not UTF-8 (kept by Python as
    lone surrogates) is written as a \\u escape and read back unchanged, where pydantic's
    own JSON would refuse it."""
    return json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=True).encode()


def _replace_file(path: Path, content: bytes) -> None:
    """Atomically replace `path` (same folder temp file, fsync, rename)."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        _write_new(temp, content)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk leaves no half-written temp behind
        raise
    _fsync_dir(path.parent)


class Store:
    """The backup folder. Safe to use from several processes at once."""

    def __init__(
        self,
        root: Path,
        compression_level: int = 1,
        compression_threads: int = 2,
        on_unfinished: Callable[[list[Unfinished]], None] | None = None,
    ):
        """`on_unfinished` hears of what a new work folder's clean-up removed (a killed
        writer's unfinished backup); dbguardd logs it."""
        self.root = root
        self.tmp = root / ".tmp"
        self.compression_level = compression_level
        self.compression_threads = compression_threads
        self.on_unfinished = on_unfinished
        self._newest: dict[str, tuple[Stamp, Manifest | None, Stamp]] = {}
        self._intact: dict[str, tuple[Stamp, str | None]] = {}  # id -> (file, mismatch)
        # The highest commit number of any manifest read: a .seq set back (restored
        # from an old copy, edited) must not number new backups below old ones. Every
        # manifest is read once, at this process's first backup.
        self._highest_seq = 0
        self._read_every_seq = False

    def compressor(self) -> zstandard.ZstdCompressor:
        # Level 1 hashes into a 64 KB table (hash_log 14), more than a core's L1 cache;
        # a 16 KB one (hash_log 12) compressed the bench's 316 MB SQLite file 9% faster
        # (paired median of 11 backups) and 2% smaller. Other levels keep zstd's own.
        tuned = {"hash_log": 12} if self.compression_level == 1 else {}
        params = zstandard.ZstdCompressionParameters.from_level(
            self.compression_level,
            threads=self.compression_threads,
            write_checksum=1,
            **tuned,
        )
        return zstandard.ZstdCompressor(compression_params=params)

    def ensure(self) -> None:
        """Create the folder (0700) if needed; it may have been deleted under us."""
        try:
            _mkdir_private(self.root, may_be_link=True)
            _mkdir_private(self.tmp)
        except OSError as err:
            raise _disk_error(err, self.root) from err

    # ---- writing -------------------------------------------------------------------

    @contextlib.contextmanager
    def work_folder(self) -> Iterator[tuple[str, Path]]:
        """A fresh, locked folder in `.tmp` and its id; removed on exit unless moved away.

        The lock tells `cleanup_stale` in another process that the writer is alive."""
        self.ensure()
        # What a killed writer left (dbguardctl restore's unpacked copy) goes now, not
        # only when dbguardd next starts: the live writers hold their locks.
        removed = self.cleanup_stale()
        if removed and self.on_unfinished is not None:
            self.on_unfinished(removed)
        lock_fd, work_id = self._claim_id()
        folder = self.tmp / work_id
        try:
            try:
                folder.mkdir(mode=0o700)
            except OSError as err:
                raise _disk_error(err, self.root) from err
            yield work_id, folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # gone already if committed
            with contextlib.suppress(FileNotFoundError):
                (self.tmp / f"{work_id}.lock").unlink()
            os.close(lock_fd)

    @contextlib.contextmanager
    def new_backup(self, target: Target, reason: Reason | None = None) -> Iterator[PendingBackup]:
        """A backup being written; nothing of it remains unless `commit` is called.
        Until then its folder holds a note of what it is of and for whom (`about.json`):
        a backup whose writer was killed is named when `cleanup_stale` removes it."""
        with self.work_folder() as (backup_id, folder):
            yield PendingBackup(self, target, backup_id, folder, reason)

    def _claim_id(self) -> tuple[int, str]:
        """Create and lock `.tmp/<id>.lock` for an id not used anywhere in the store."""
        while True:
            backup_id = new_id()
            if self._find(backup_id):
                continue
            lock = self.tmp / f"{backup_id}.lock"
            try:
                fd = os.open(lock, _O_NEW_FILE, 0o600)
            except FileExistsError:
                continue
            except OSError as err:
                raise _disk_error(err, self.root) from err
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A concurrent cleanup may have removed the file between open and flock.
            try:
                if os.fstat(fd).st_ino == lock.stat().st_ino:
                    return fd, backup_id
            except FileNotFoundError:
                pass
            os.close(fd)

    def next_seq(self) -> int:
        """The next commit number: orders backups even when the clock jumps back."""
        fd = os.open(self.root / ".seq", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 32, 0).strip()
            if not self._read_every_seq:
                self._max_seq()  # reads them all, and so raises _highest_seq
                self._read_every_seq = True
            value = max(int(raw) if raw.isdigit() else 0, self._highest_seq) + 1
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(value).encode(), 0)
            # Durable before the backup it numbers is: after a power cut the next backup
            # must not get the same number, or "newest" would be a tie.
            os.fsync(fd)
            return value
        finally:
            os.close(fd)

    def _max_seq(self) -> int:
        seqs = [e.seq for e in self.entries() if isinstance(e, Manifest)]
        return max(seqs, default=0)

    def cleanup_stale(self) -> list[Unfinished]:
        """Remove temporary folders whose writer is gone (crash, SIGKILL, power loss).
        Raises BackupFailed when `.tmp` cannot be listed."""
        removed: list[Unfinished] = []
        if not self.tmp.is_dir():
            return removed
        # _listed: a .tmp of mode 000 is named with its chmod, not a traceback at start
        # and "internal error" at every guarded command.
        for entry in sorted(_listed(self.tmp)):
            name = entry.name.removesuffix(".lock")
            if entry.name.endswith(".lock") or not (self.tmp / f"{name}.lock").exists():
                lock = self.tmp / f"{name}.lock"
                try:
                    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # its writer is alive
                if (self.tmp / name).exists():
                    about = _read_about(self.tmp / name / _ABOUT)
                    shutil.rmtree(self.tmp / name, ignore_errors=True)
                    removed.append(Unfinished(name, about))
                lock.unlink(missing_ok=True)
                os.close(fd)
        return removed

    # ---- reading -------------------------------------------------------------------

    def _find(self, backup_id: str) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [
            folder / backup_id
            for folder in _listed(self.root)
            if not folder.name.startswith(".") and (folder / backup_id).is_dir()
        ]

    def entries(self, target: Target | None = None) -> list[Entry]:
        """Every backup (of `target`, if given), newest first; unreadable ones as
        DamagedBackup, never skipped. Raises BackupFailed when a folder of the store
        cannot be listed (its mode, say): an empty list would read as "no backups"."""
        found: list[Entry] = []
        if target is not None:
            folders = [self.root / target.slug]
        else:
            if self.root.exists() or self.root.is_symlink():
                check_private_folder(self.root)  # a file there is no "no backups"
            folders = [f for f in _listed(self.root) if not f.name.startswith(".")]
        for folder in folders:
            for backup in _listed(folder):
                if ID_RE.fullmatch(backup.name) and backup.is_dir():
                    found.append(self._read(backup))
        if target is not None:
            found = [e for e in found if isinstance(e, Manifest) and e.database_key == target.key]
        return sorted(found, key=_newest_first)

    def manifests(self, target: Target | None = None) -> list[Manifest]:
        return [e for e in self.entries(target) if isinstance(e, Manifest)]

    def newest(self, target: Target) -> Manifest | None:
        """The newest good backup of `target` (failed verification is not good), or None.

        Called on every guarded command, so the answer is cached until the database's
        folder or that manifest changes: a hit costs two stat() calls. A folder changed
        within the last second is not cached: file times move in clock ticks, so a
        backup moved into it within the same tick as the listing would leave its
        timestamp as it was, and the cache would hide that backup until the next
        change (each check meanwhile would back up again). Git calls such entries
        racily clean.
        """
        folder = self.root / target.slug
        folder_stamp = file_stamp(folder)
        cached = self._newest.get(target.key)
        if cached is not None and cached[0] == folder_stamp:
            manifest = cached[1]
            if manifest is None or file_stamp(folder / manifest.id / MANIFEST) == cached[2]:
                return manifest
        good = [m for m in self.manifests(target) if m.verified is None or m.verified.ok]
        newest = good[0] if good else None
        manifest_stamp = file_stamp(folder / newest.id / MANIFEST) if newest else None
        if folder_stamp is None or time.time_ns() - folder_stamp[2] > SETTLED_NS:
            self._newest[target.key] = (folder_stamp, newest, manifest_stamp)
        else:
            self._newest.pop(target.key, None)
        return newest

    def _read(self, folder: Path) -> Entry:
        try:
            raw = (folder / MANIFEST).read_bytes()
        except FileNotFoundError:
            return DamagedBackup(folder.name, folder, "manifest.json is missing")
        except PermissionError as err:
            return DamagedBackup(
                folder.name,
                folder,
                f"manifest.json cannot be read ({err.strerror}): make the backup's folder "
                f"yours to read (`chmod -R u+rwX {folder}`)",
                unreadable=True,
            )
        except OSError as err:
            return DamagedBackup(folder.name, folder, f"manifest.json unreadable: {err}")
        try:
            manifest = Manifest.model_validate(json.loads(raw))
        except ValueError as err:  # not JSON, not UTF-8, or a ValidationError
            where = ""
            if isinstance(err, ValidationError):
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                # A check of ours says what is wrong; pydantic's own ones only where.
                why = first["msg"].removeprefix("Value error, ")
                where = f" ({where}: {why})" if first["type"] == "value_error" else f" ({where})"
            return DamagedBackup(folder.name, folder, f"manifest.json is corrupt{where}")
        if manifest.id != folder.name:
            return DamagedBackup(folder.name, folder, "manifest.json belongs to another backup")
        self._highest_seq = max(self._highest_seq, manifest.seq)
        try:
            manifest.target()
        except ValidationError as err:  # an engine this version lacks, say
            where = ".".join(str(p) for p in err.errors()[0]["loc"])
            return DamagedBackup(
                folder.name,
                folder,
                f"manifest.json names a database this version cannot use ({where})",
            )
        try:
            data = (folder / manifest.data.file).lstat()
        except OSError:
            return DamagedBackup(folder.name, folder, f"{manifest.data.file} is missing")
        if not stat.S_ISREG(data.st_mode):  # a link would lead to another backup's data
            return DamagedBackup(folder.name, folder, f"{manifest.data.file} is not a regular file")
        size = data.st_size
        if size != manifest.data.size:
            return DamagedBackup(
                folder.name,
                folder,
                f"{manifest.data.file} is {size} bytes, manifest says {manifest.data.size}",
            )
        return manifest

    def get(self, id_or_prefix: str) -> Manifest:
        """The backup with this id or unique id prefix. Raises NotFound or Damaged."""
        check_id(id_or_prefix)
        matches = [e for e in self.entries() if e.id.startswith(id_or_prefix)]
        if not matches:
            raise NotFound(f"no backup {id_or_prefix}", "`dbguardctl list-backups` shows them all")
        if len(matches) > 1:
            ids = ", ".join(e.id for e in matches)
            raise NotFound(f"{id_or_prefix} matches several backups: {ids}", "give more digits")
        found = matches[0]
        if isinstance(found, DamagedBackup) and found.unreadable:
            raise BackupFailed(
                f"cannot read backup {found.id}: {found.problem}",
                "then try again; the backup is not marked failed",
            )
        if isinstance(found, DamagedBackup):
            raise Damaged(f"backup {found.id} is damaged: {found.problem}", "it cannot be used")
        return found

    def folder(self, manifest: Manifest) -> Path:
        expected = self.root / Target.model_validate(manifest.database).slug / manifest.id
        if expected.is_dir():
            return expected
        # Written before its database's key changed (no port came to mean the default
        # port), it lies under the folder of the old key: ids are unique in the store.
        found = self._find(manifest.id)
        return found[0] if found else expected

    def checksum_mismatch(self, manifest: Manifest) -> str | None:
        """Recompute the stored file's checksum: the problem if it differs, else None.
        Raises OSError when the file cannot be read, which says nothing of its bytes."""
        digest = hashlib.sha256()
        with (self.folder(manifest) / manifest.data.file).open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != manifest.data.sha256:
            return f"{manifest.data.file}: checksum mismatch (the file changed after backup)"
        return None

    def remember_intact(self, manifest: Manifest) -> None:
        """Record that `manifest`'s data file, as it is now, matches its checksum."""
        stamp = file_stamp(self.folder(manifest) / manifest.data.file)
        if stamp is not None:
            self._intact[manifest.id] = (stamp, None)

    def mismatch(self, manifest: Manifest) -> str | None:
        """`checksum_mismatch`, recomputed once per version of the file (its inode, size
        and mtime); after that, a call costs one stat(). Raises OSError as it does."""
        path = self.folder(manifest) / manifest.data.file
        stamp = file_stamp(path)
        if stamp is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        known = self._intact.get(manifest.id)
        if known is None or known[0] != stamp:
            known = self._intact[manifest.id] = (stamp, self.checksum_mismatch(manifest))
        return known[1]

    def record_failed(self, manifest: Manifest, problem: str) -> Manifest | None:
        """Record a fault of the backup's own content (a checksum mismatch) as a failed
        verification, so that nothing takes it for a good backup again: not the reuse
        check, not retention's protection of each database's newest good backup.
        Returns the manifest as written, None when it could not be (the backup is gone,
        or the disk is full: the caller reports the fault itself either way)."""
        result = Verification(at=datetime.now(UTC), ok=False, problems=[problem])
        try:
            return self.update(manifest, verified=result)
        except (NotFound, Damaged, BackupFailed):
            return None

    @contextlib.contextmanager
    def open_data(self, manifest: Manifest) -> Iterator[BinaryIO]:
        """The decompressed dump. Checks the checksum first: raises Damaged on mismatch,
        OSError when the file cannot be read (which says nothing of its bytes)."""
        mismatch = self.checksum_mismatch(manifest)
        if mismatch:
            raise Damaged(f"backup {manifest.id} is damaged: {mismatch}", "it cannot be used")
        path = self.folder(manifest) / manifest.data.file
        with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            whole = _WholeDump(reader, manifest.data.raw_size, manifest.id)
            yield io.BufferedReader(whole, buffer_size=_CHUNK)

    # ---- updating ------------------------------------------------------------------

    def update(self, manifest: Manifest, **changes: Any) -> Manifest:
        """Set `changes` (pinned, verified, ...) in a backup's manifest, atomically; returns
        the manifest as written.

        Read-modify-write under a lock, across processes: the manifest is read again
        from disk, so fields another process changed meanwhile (a pin during a long
        verify) are kept. Raises NotFound if the backup is gone (pruned meanwhile),
        Damaged if its manifest no longer reads, BackupFailed if it cannot be written."""
        folder = self.folder(manifest)
        with self.locked(_UPDATE_LOCK):
            current = self._read(folder) if folder.is_dir() else None
            if current is None:
                raise NotFound(f"backup {manifest.id} is gone (pruned or deleted)")
            if isinstance(current, DamagedBackup):
                raise Damaged(f"backup {manifest.id} is damaged: {current.problem}")
            updated = current.model_copy(update=changes)
            Manifest.model_validate(updated.model_dump())
            try:
                _replace_file(folder / MANIFEST, _manifest_bytes(updated))
            except FileNotFoundError:  # removed between the read and the write
                raise NotFound(f"backup {manifest.id} is gone (pruned or deleted)") from None
            except OSError as err:
                raise _disk_error(err, folder) from err
        return updated

    @contextlib.contextmanager
    def locked(self, name: str, waiting: Callable[[Path], None] | None = None) -> Iterator[None]:
        """Hold an exclusive flock on the lock file `root/name`, across processes. Not
        reentrant: a second hold of the same name in one process waits forever.
        `waiting` is told the lock file's path when another process holds it, before
        this one waits. Raises BackupFailed if the folder or the lock file cannot be
        created."""
        self.ensure()
        path = self.root / name
        try:
            lock = FileLock(path)
        except OSError as err:
            raise _disk_error(err, path) from err
        with lock.exclusive(lambda: waiting(path) if waiting is not None else None):
            yield

    def database_lock(self, key: str) -> DatabaseLock:
        """The readers-writer lock of the database `key` (Target.key): guarded commands
        hold it shared while dbguardd backs up for them and they run, a restore holds it
        exclusive. Raises BackupFailed if its folder or files cannot be made."""
        folder = self.root / ".locks"
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        lock, gate = folder / f"{digest}.lock", folder / f"{digest}.gate"
        try:
            return DatabaseLock.open(key, lock, gate)
        except OSError:  # a new store, its folder removed under us, or unusable: say why
            pass
        try:
            self.ensure()
            _mkdir_private(folder)
            return DatabaseLock.open(key, lock, gate)
        except OSError as err:
            raise _disk_error(err, folder) from err

    def delete(self, manifest: Manifest) -> None:
        """Remove a backup: renamed out of sight first, so it never looks half-present."""
        self.ensure()
        grave = self.tmp / f"deleted-{manifest.id}"
        os.rename(self.folder(manifest), grave)
        shutil.rmtree(grave, ignore_errors=True)


class FileLock:
    """An flock on a lock file, across processes; released by `release` (or the
    process's end: the kernel drops the flock with the last descriptor). Lock files are
    never removed: a process holding the old one would not exclude one that opened a
    new one."""

    def __init__(self, path: Path) -> None:
        """Raises OSError when the file cannot be opened or made."""
        self.path = path
        self._fd: int | None = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )

    def try_shared(self) -> bool:
        """Hold it shared if no one holds it exclusive; never waits."""
        return self._try(fcntl.LOCK_SH)

    def try_exclusive(self) -> bool:
        """Hold it exclusive if no one else holds it; never waits."""
        return self._try(fcntl.LOCK_EX)

    def _try(self, kind: int) -> bool:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(self) -> None:
        """Let go of the flock, keeping the file open for the next one."""
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(
        self,
        waiting: Callable[[], None] = lambda: None,
        still_waiting: Callable[[], None] | None = None,
    ) -> Iterator[None]:
        """Hold it exclusive, released on exit; `waiting` is told first when others
        hold it, then this waits (^C ends the wait). With `still_waiting`, the wait
        tries again and again instead, calling it every _RECHECK seconds, so that it
        can look at what it waits for and end the wait by raising."""
        assert self._fd is not None
        try:
            if not self.try_exclusive():
                waiting()
                if still_waiting is None:
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
                next_check = time.monotonic() + _RECHECK
                while still_waiting is not None and not self.try_exclusive():
                    if time.monotonic() >= next_check:
                        still_waiting()
                        next_check = time.monotonic() + _RECHECK
                    time.sleep(_GATE_PAUSE)
            yield
        finally:
            self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


_GATE_TRIES, _GATE_PAUSE = 5, 0.01
_RECHECK = 0.5  # seconds between looks at what a polled wait waits for


class DatabaseLock:
    """A database's readers-writer lock (Store.database_lock) that a waiting writer
    cannot be starved of. flock favours no one: commands that keep overlapping would
    hold a restore off for as long as they do. So a restore first closes the gate, a
    second file a command must pass (shared, for a moment) to take the lock; then it
    waits only for the commands already in. Commands take the locks of their databases
    in one order (by key), so two restores and the commands between them cannot wait
    for each other in a circle; a command run inside a running one passes the gate
    (see try_shared)."""

    def __init__(self, key: str, lock: FileLock, gate: FileLock) -> None:
        self.key = key  # the database's (Target.key)
        self.lock = lock
        self.gate = gate

    @classmethod
    def open(cls, key: str, lock: Path, gate: Path) -> DatabaseLock:
        """Raises OSError when either file cannot be opened or made."""
        held = FileLock(lock)
        try:
            return cls(key, held, FileLock(gate))
        except OSError:
            held.release()
            raise

    def try_shared(self, *, inside: bool = False) -> bool:
        """Hold it shared unless a restore holds it or waits for it; never waits.
        `inside`: for a command run by a guarded command that is running (a script's
        `prisma migrate`), which passes the gate: a waiting restore waits for its parent
        anyway, and the parent, waiting for it, would never end."""
        if inside:
            return self.lock.try_shared()
        if not self.gate.try_shared():
            return False
        try:
            return self.lock.try_shared()
        finally:
            self.gate.unlock()

    @contextlib.contextmanager
    def exclusive(
        self,
        waiting_for_commands: Callable[[], None] = lambda: None,
        waiting_for_restore: Callable[[], None] = lambda: None,
        loan: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
        still_waiting_for_restore: Callable[[], None] | None = None,
    ) -> Iterator[None]:
        """Hold it exclusive, released on exit. Another restore of the database is
        waited for first (`waiting_for_restore` told when there is one, and
        `still_waiting_for_restore` now and then, see FileLock.exclusive), then the
        guarded commands already holding it (`waiting_for_commands`); ^C ends either
        wait, holding nothing. `loan` is entered once the gate is closed, before the
        wait for the commands, and left once the lock is let go, before the gate opens:
        for a restore that a guarded command runs, which borrows that command's hold
        (see Guard.lend) while no other restore can come between."""
        try:
            # A command holds the gate only while it takes the lock: one closed for
            # longer than a few tries is another restore's.
            for _ in range(_GATE_TRIES):
                if self.gate.try_exclusive():
                    break
                time.sleep(_GATE_PAUSE)
            with (
                self.gate.exclusive(waiting_for_restore, still_waiting_for_restore),
                loan(),
                self.lock.exclusive(waiting_for_commands),
            ):
                yield
        finally:
            self.release()

    def release(self) -> None:
        self.lock.release()
        self.gate.release()


def _newest_first(entry: Entry) -> tuple[int, float]:
    if isinstance(entry, Manifest):
        return (-entry.seq, 0.0)
    try:
        return (0, -entry.path.stat().st_mtime)
    except OSError:
        return (0, 0.0)

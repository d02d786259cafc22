"""What every database engine provides, and the description of a database (`Target`).

An engine is stateless apart from caches (kept connections); every method is blocking
and is called from a worker thread, never from the daemon's event loop. Methods raise
only the `dbguard.errors` types named in their docstrings, with a message fit for the
user; anything else is a bug.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

from pydantic import BaseModel, ConfigDict, SecretStr

if TYPE_CHECKING:  # config imports this module (through production)
    from dbguard.config import BackupSettings

EngineName = Literal["sqlite", "postgres", "mysql"]
DEFAULT_PORTS: dict[EngineName, int] = {"postgres": 5432, "mysql": 3306}
Marker = Literal["production", "development"]


class Target(BaseModel):
    """One database a command can touch, as discovery found it.

    `key` is its identity (no secrets): two targets with the same key are the same
    database, share backups and share an in-flight backup.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: EngineName
    path: str | None = None  # sqlite: absolute path of the database file
    host: str | None = None
    port: int | None = None
    socket: str | None = None  # a Unix socket path or folder
    user: str | None = None
    password: SecretStr | None = None
    name: str | None = None  # the database (schema) name on a server
    params: dict[str, str] = {}  # e.g. sslmode
    source: str = ""  # where discovery found it, e.g. ".env (DB_DATABASE)"

    @property
    def key(self) -> str:
        if self.engine == "sqlite":
            return f"sqlite:{self.path}"
        # No port is the default port: `psql -d app` and a URL with :5432 reach the
        # same database, and must share its backups.
        where = (
            self.socket or f"{self.host or 'localhost'}:{self.port or DEFAULT_PORTS[self.engine]}"
        )
        return f"{self.engine}://{self.user or ''}@{where}/{self.name or ''}"

    @property
    def label(self) -> str:
        """Short and human: 'sqlite /srv/app/database.sqlite', 'postgres app@127.0.0.1'."""
        if self.engine == "sqlite":
            return f"sqlite {self.path}"
        return f"{self.engine} {self.name}@{self.socket or self.host or 'localhost'}"

    @property
    def slug(self) -> str:
        """A folder name for this database's backups: readable, unique, filesystem-safe."""
        base = Path(self.path).name if self.engine == "sqlite" and self.path else self.name
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.engine}-{base or 'db'}")[:60]
        digest = hashlib.sha256(self.key.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        return f"{readable}-{digest}"

    def public(self) -> dict[str, object]:
        """The fields safe to store in a manifest or show: everything but the password."""
        return self.model_dump(exclude={"password"}, exclude_none=True)


class DumpInfo(BaseModel):
    """What an engine learned while dumping, recorded in the manifest."""

    tables: dict[str, int]  # row count per table, read in the dump's own snapshot
    fingerprint: str | None  # the change signal read before the snapshot; None = unknown
    tool: str  # what produced the data, with its version
    format: str  # how `restore` must read the data


class Sink(Protocol):
    """Where an engine writes its dump (the store's compressing writer)."""

    def write(self, data: bytes | bytearray, /) -> int: ...


class Engine(Protocol):
    """The small interface every engine implements (sqlite.py, postgres.py, mysql.py)."""

    name: EngineName
    data_suffix: str  # the stored file's name before ".zst", e.g. "data.sqlite"
    settings: BackupSettings  # replaced when the daemon reloads its config

    def fingerprint(self, target: Target) -> str | None:
        """A value that changes with every committed change to the database.

        Returns None when no sound signal is available (then dbguard always backs up).
        Raises BackupFailed when the database cannot be reached.
        """
        ...

    def dump(self, target: Target, out: Sink, scratch: Path, cancel: threading.Event) -> DumpInfo:
        """Write a consistent, restorable copy of the database to `out`, uncompressed.

        `scratch` is a private empty folder on the backup filesystem for temporary
        files. Raises BackupFailed (missing tool, unreachable server, tool failure) or
        Cancelled (when `cancel` is set); in both cases what was written is discarded.
        """
        ...

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
        """Replace the database's contents with the dump read from `data`.

        The target is swapped in whole or not at all: raises RestoreFailed and leaves
        the target as it was when anything goes wrong before the swap. On a server,
        other clients connected to the target make it raise RestoreFailed naming them,
        unless `end_connections` is set, which ends their sessions first. `swapped` is
        called once the target holds the backup's contents, so a caller stopped after
        that point (^C during the clean-up) reports the right state. `warn` is told,
        after the swap, of anything the restored database was left without.
        """
        ...

    def restored_counts(
        self,
        target: Target,
        data: BinaryIO,
        dump_format: str,
        scratch: Path,
        cancel: threading.Event | None = None,
    ) -> dict[str, int]:
        """Restore the dump into a throwaway copy, count rows per table, drop the copy.

        Raises Damaged when the dump does not restore, Cancelled soon after `cancel` is
        set (the copy is dropped all the same). Used by verify.
        """
        ...

    def marker(self, target: Target) -> Marker | None:
        """The environment the database itself is marked with (`dbguardctl mark`), or
        None. Raises BackupFailed (or DatabaseMissing) when it cannot be read."""
        ...

    def set_marker(self, target: Target, marker: Marker | None) -> None:
        """Mark the database production or development (None removes the mark). The mark
        lives with the database, so it survives .env changes and copies.
        Raises BackupFailed when it cannot be written."""
        ...

    def close(self) -> None:
        """Close kept connections."""
        ...


def compare_counts(expected: Mapping[str, int], actual: Mapping[str, int]) -> list[str]:
    """Differences between two row-count maps, one readable line each (empty: equal)."""
    problems = []
    for table in sorted(set(expected) | set(actual)):
        want, got = expected.get(table), actual.get(table)
        if want is None:
            problems.append(f"table {table}: not in the manifest but restored ({got} rows)")
        elif got is None:
            problems.append(f"table {table}: missing after restore (expected {want} rows)")
        elif want != got:
            problems.append(f"table {table}: {got} rows restored, manifest says {want}")
    return problems


def human_duration(seconds: float) -> str:
    """'45 s', '3 min 5 s', '2 h 4 min': how long a blocking session has been at it."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s" if seconds >= 1 else f"{max(0.0, seconds):.1f} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days {hours % 24} h"


_HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signal_handlers(
    numbers: tuple[signal.Signals, ...], handler: Callable[[int, Any], None]
) -> Iterator[None]:
    """`handler` for these signals within the block; the previous ones after it."""
    previous = {number: signal.signal(number, handler) for number in numbers}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


@contextlib.contextmanager
def signals_recorded() -> Iterator[list[int]]:
    """Record ^C, SIGTERM and SIGHUP in the list the block gets, instead of raising
    wherever Python happens to be: for a step that checks between its parts whether to
    stop (and raises KeyboardInterrupt itself) and must never be cut off after its last
    part took effect. Raises KeyboardInterrupt for the first at the end of a block that
    did not raise. Only the main thread can take signals; elsewhere nothing is recorded."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    with signal_handlers(_HELD, lambda signum, frame: received.append(signum)):
        yield received
    if received:
        raise KeyboardInterrupt(signal.Signals(received[0]).name)


@contextlib.contextmanager
def signals_held(what: str) -> Iterator[None]:
    """Hold ^C, SIGTERM and SIGHUP while `what` runs, a step that stopped halfway would
    leave a database half-restored; then raise KeyboardInterrupt for the first that
    came (unless the step failed: its error says what state the database is in). Only the
    main thread can take signals; elsewhere (the daemon's workers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if not received:
            sys.stderr.write(f"dbguard: finishing {what} first; stopping halfway would break it\n")
        received.append(signum)

    with signal_handlers(_HELD, hold):
        yield
    if received:
        raise KeyboardInterrupt(signal.Signals(received[0]).name)

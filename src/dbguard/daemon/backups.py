"""Single-flight backups: every caller that needs a database backed up shares one
in-flight backup, and a backup is skipped when the database provably has not changed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from dbguard import operations, space
from dbguard.daemon.memory import release_free_memory
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.errors import (
    BackupFailed,
    Cancelled,
    Damaged,
    DatabaseMissing,
    DbguardError,
    NotFound,
)
from dbguard.protocol import Progress
from dbguard.retention import RetentionSettings, SpaceSettings
from dbguard.store import Manifest, Reason, Store

log = structlog.get_logger("dbguard.backups")

# What someone whose backup a stop cancelled, or never started, can do.
_AGAIN = (
    "run it again once dbguardd is back: systemd's dbguard.socket or auto-start starts it "
    "for the next command; else start it (`dbguardctl status` says how)"
)


@dataclass
class InFlight:
    target: Target
    task: asyncio.Task[Manifest] = field(init=False)
    started: float = field(default_factory=time.monotonic)
    # When the engine was handed the job: its snapshot is taken after this moment.
    dump_started: float | None = None
    bytes: int = 0


@dataclass(frozen=True)
class Outcome:
    """What `ensure` did for one database."""

    target: Target
    manifest: Manifest | None  # None: the database does not exist, nothing to back up
    reused: bool = False
    note: str = ""


class Backups:
    def __init__(
        self,
        store: Store,
        engines: Engines,
        max_parallel: int,
        retention: RetentionSettings,
        space_settings: SpaceSettings,
    ) -> None:
        self.store = store
        self.engines = engines
        self.retention = retention
        self.space = space_settings
        self.cancel = threading.Event()
        self._slots = asyncio.Semaphore(max_parallel)
        self._in_flight: dict[str, InFlight] = {}
        self._finished: dict[str, int] = {}  # backups of each database ended so far
        self._pruning: set[asyncio.Task[None]] = set()

    def reconfigure(
        self,
        store: Store,
        max_parallel: int,
        retention: RetentionSettings,
        space_settings: SpaceSettings,
    ) -> None:
        """New settings for backups started from now on (a config reload)."""
        self.store = store
        self.retention = retention
        self.space = space_settings
        self._slots = asyncio.Semaphore(max_parallel)

    async def ensure(self, target: Target, reason: Reason) -> Outcome:
        """A good backup of `target` as it is now: reused if the database has not changed
        since its newest backup, shared if one is being taken, else taken. Raises
        BackupFailed (Cancelled once `drain` has begun)."""
        arrived = time.monotonic()
        while True:
            running = self._in_flight.get(target.key)
            if running is not None:
                # The database as this caller finds it now. The dump reads its own
                # fingerprint before its snapshot; if the two are equal, nothing was
                # committed between the reads, so the snapshot holds all this caller saw,
                # whatever other sessions commit while the dump runs.
                seen = await self._fingerprint_or_none(target)
                shared = await asyncio.shield(running.task)
                # A dump that started after this caller asked has the database as this
                # caller would find it (its command has not run yet). One that started
                # earlier covers it only if the database has not changed since.
                covered = running.dump_started is not None and arrived <= running.dump_started
                covered = covered or (seen is not None and seen == shared.fingerprint)
                covered = covered or await self._unchanged_since(target, shared)
                if covered and await self._protect(shared, reason):
                    return Outcome(target, shared, reused=True, note=f"shared backup {shared.id}")
                continue
            finished = self._finished.get(target.key, 0)
            try:
                reusable = await asyncio.to_thread(self._reusable, target)
            except DatabaseMissing as missing:
                return Outcome(target, None, note=f"{missing.problem}: nothing to back up")
            if reusable is not None and await self._protect(reusable, reason):
                since = f"{reusable.created_at:%Y-%m-%d %H:%M:%S}"
                note = f"reused backup {reusable.id}, unchanged since {since}"
                return Outcome(target, reusable, reused=True, note=note)
            if self.cancel.is_set():
                # drain() began while the skip check ran: it waits only for the backups
                # it found, so a backup started now would run on through the stop.
                raise Cancelled(
                    f"dbguardd is stopping, so no backup of {target.label} was started", _AGAIN
                )
            if target.key in self._in_flight or self._finished.get(target.key, 0) != finished:
                # Another caller started a backup while we looked, or even took one
                # whole (under load, a worker thread can take longer than a small
                # backup): look again, and share or reuse it.
                continue
            entry = InFlight(target)
            entry.task = asyncio.create_task(self._take(entry, reason))
            self._in_flight[target.key] = entry
            entry.task.add_done_callback(functools.partial(self._forget, entry))
            manifest = await asyncio.shield(entry.task)
            return Outcome(target, manifest)

    def _reusable(self, target: Target) -> Manifest | None:
        """The newest backup if the database provably has not changed since and the
        backup is intact (blocking: one worker-thread hop for the whole skip check).
        One whose checksum no longer matches is recorded as failed, so that retention
        no longer keeps it as the database's newest good backup. Raises
        DatabaseMissing, BackupFailed."""
        fingerprint = self.engines.for_target(target).fingerprint(target)
        newest = self.store.newest(target)
        if newest is None or fingerprint is None or newest.fingerprint != fingerprint:
            return None
        try:
            mismatch = self.store.mismatch(newest)
        except OSError:
            return None  # unreadable now, which proves nothing of its bytes: back up anew
        if mismatch is not None:
            log.warning("backup damaged", id=newest.id, problem=mismatch)
            self.store.record_failed(newest, mismatch)
            return None
        return newest

    async def _protect(self, manifest: Manifest, reason: Reason) -> bool:
        """Before a destructive or production command goes ahead on a backup it did not
        take (reused or shared), mark the backup so that retention keeps it as long as
        one taken for it. False if the backup is gone meanwhile (pruned): the caller
        needs another."""
        if not space.is_pre_destructive(reason):
            return True
        try:
            await asyncio.to_thread(space.protect_reused, self.store, manifest, datetime.now(UTC))
        except (NotFound, Damaged):
            return False
        except BackupFailed as err:  # a full or read-only backup folder
            raise BackupFailed(
                f"cannot record in backup {manifest.id} that this command relies on it, so "
                f"retention could remove it: {err.problem}",
                err.fix,
            ) from None
        return True

    def _forget(self, entry: InFlight, _task: object) -> None:
        key = entry.target.key
        self._finished[key] = self._finished.get(key, 0) + 1
        if self._in_flight.get(key) is entry:
            del self._in_flight[key]

    async def _fingerprint_or_none(self, target: Target) -> str | None:
        try:
            return await asyncio.to_thread(self.engines.for_target(target).fingerprint, target)
        except DbguardError:
            return None  # missing or unreachable: the checks after the backup decide

    async def _unchanged_since(self, target: Target, manifest: Manifest) -> bool:
        engine = self.engines.for_target(target)
        try:
            now = await asyncio.to_thread(engine.fingerprint, target)
        except DatabaseMissing:
            return False
        return now is not None and now == manifest.fingerprint

    async def _take(self, entry: InFlight, reason: Reason) -> Manifest:
        loop = asyncio.get_running_loop()

        def progress(count: int) -> None:
            entry.bytes = count  # an int store from the worker thread; read by the loop

        async with self._slots:
            entry.started = time.monotonic()
            log.info("backup started", database=entry.target.label, source=entry.target.source)
            try:
                check = await loop.run_in_executor(
                    None,
                    space.ensure_space_for_backup,
                    self.store,
                    entry.target,
                    self.retention,
                    self.space,
                )
                if check.pruned:
                    log.info(
                        "pruned to make room",
                        database=entry.target.label,
                        removed=[m.id for m in check.pruned],
                    )
                entry.dump_started = time.monotonic()
                manifest = await loop.run_in_executor(
                    None,
                    operations.take_backup,
                    self.store,
                    self.engines,
                    entry.target,
                    reason,
                    self.cancel,
                    progress,
                )
            except Cancelled as err:
                log.warning("backup failed", database=entry.target.label, error=str(err))
                raise Cancelled(err.problem, err.fix or _AGAIN) from None
            except Exception as err:
                log.warning("backup failed", database=entry.target.label, error=str(err))
                raise
            finally:
                # Not awaited: the callers need not wait for it. Never an error of the
                # backup's (an executor already shut down refuses new work).
                with contextlib.suppress(RuntimeError):
                    loop.run_in_executor(None, release_free_memory)
        log.info(
            "backup done",
            database=entry.target.label,
            id=manifest.id,
            bytes=manifest.data.size,
            ms=manifest.duration_ms,
        )
        task = asyncio.create_task(self._prune(manifest))
        self._pruning.add(task)
        task.add_done_callback(self._pruning.discard)
        return manifest

    async def _prune(self, manifest: Manifest) -> None:
        """Retention, after a successful backup only and off the callers' path."""
        try:
            removed = await asyncio.to_thread(
                space.prune_after_backup, self.store, self.retention, manifest
            )
        except DbguardError as err:
            log.warning("prune failed", error=str(err))
            return
        for pruned in removed:
            log.info(
                "backup pruned",
                id=pruned.id,
                database=pruned.database_label,
                bytes=pruned.data.size,
                seq=pruned.seq,
            )

    def progress(self, keys: list[str]) -> list[Progress]:
        now = time.monotonic()
        return [
            Progress(database=e.target.label, bytes=e.bytes, elapsed=round(now - e.started, 1))
            for key in keys
            if (e := self._in_flight.get(key)) is not None
        ]

    def in_flight(self) -> list[str]:
        return [entry.target.label for entry in self._in_flight.values()]

    async def drain(self) -> None:
        """Stop: cancel running backups (their partial files are discarded) and wait.
        From now on `ensure` starts no backup (it raises Cancelled)."""
        self.cancel.set()
        tasks = [entry.task for entry in self._in_flight.values()]
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._pruning, return_exceptions=True)

"""Space for backups: the I/O edge of retention.

Before a backup, `ensure_space_for_backup` estimates its size and checks that the backup
folder's filesystem keeps its free-space floor afterwards; if not, it prunes what the
retention policy allows and checks again, and fails the backup (exit 75) with how much
space is needed, where, and how to free it.

After a successful backup, `prune_after_backup` applies the policy and returns what it
removed so the caller can log it. A failed backup never leads here: the caller only has
the `Manifest` this function asks for once a backup has been committed.

Pruning and pinning take one lock (`.retention.lock` in the backup folder), so a backup
pinned while a prune is planning is never deleted by that prune, and two prunes (the
daemon's and `dbguardctl prune`) never work from different pictures of the store at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from dbguard.engines.base import Target
from dbguard.errors import BackupFailed, DbguardError
from dbguard.retention import (
    BackupRecord,
    Plan,
    RetentionSettings,
    SpaceSettings,
    human_size,
    plan,
)
from dbguard.rules import Kind
from dbguard.store import Manifest, Reason, Store

LOCK_FILE = ".retention.lock"
# The database may have grown since it was last measured; the estimate errs towards
# pruning a little early rather than filling the disk during the dump.
GROWTH_MARGIN = 1.25


class PruneFailed(DbguardError):
    """A backup could not be removed; `removed` lists the ones that were (each removal is
    atomic, so nothing is left half-deleted)."""

    def __init__(self, problem: str, fix: str, removed: list[Manifest]) -> None:
        super().__init__(problem, fix)
        self.removed = removed


@dataclass(frozen=True)
class DiskUsage:
    total: int  # bytes in the filesystem
    free: int  # bytes this (unprivileged) user may still write: statvfs f_bavail


@dataclass(frozen=True)
class SpaceCheck:
    """The outcome of a successful space check."""

    estimate: int  # expected size of the backup on disk
    free: int  # free bytes at the end of the check
    floor: int  # bytes that must stay free
    pruned: list[Manifest] = field(default_factory=list)  # removed to make room


UsageReader = Callable[[Path], DiskUsage]


def disk_usage(path: Path) -> DiskUsage:
    """Size and free space of the filesystem holding `path`, or its nearest existing
    parent when `path` does not exist yet. Raises BackupFailed if none can be read."""
    for candidate in (path, *path.parents):
        try:
            info = os.statvfs(candidate)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise BackupFailed(f"cannot read the free space of {candidate}: {err}") from err
        return DiskUsage(total=info.f_blocks * info.f_frsize, free=info.f_bavail * info.f_frsize)
    raise BackupFailed(f"cannot read the free space of {path}: no part of it exists")


def is_pre_destructive(reason: Reason) -> bool:
    """Was this backup taken right before something that replaces the data?

    A destructive command (migrate:fresh, db reset, ...), a command against a production
    database, and a restore (its pre-restore backup holds the data the restore replaced).
    """
    destructive = reason.operation_kind == Kind.DESTRUCTIVE.value
    return destructive or reason.kind == "pre-restore" or reason.production


def record_of(manifest: Manifest) -> BackupRecord:
    """The plain facts retention decides on."""
    return BackupRecord(
        id=manifest.id,
        database_key=manifest.database_key,
        seq=manifest.seq,
        created_at=manifest.created_at,
        size=manifest.data.size,
        pinned=manifest.pinned,
        pre_destructive=is_pre_destructive(manifest.reason),
        destructive_reuse_at=manifest.destructive_reuse_at,
        good=manifest.verified is None or manifest.verified.ok,
        database_label=manifest.database_label,
    )


def current_raw_size(target: Target) -> int | None:
    """What a dump of `target` would hold, where it can be known without connecting:
    a SQLite database's file plus its -wal. None for servers (and missing files)."""
    if target.engine != "sqlite" or not target.path:
        return None
    total = 0
    for name in (target.path, f"{target.path}-wal"):
        try:
            total += os.stat(name).st_size
        except FileNotFoundError:
            if name == target.path:
                return None
        except OSError:
            return None
    return total


def estimate_backup_size(
    previous: Manifest | None, current_raw: int | None, unknown_default: int
) -> int:
    """Expected bytes on disk of the next backup of a database (pure arithmetic).

    From the previous backup's compressed size, scaled by how much the raw database has
    grown or shrunk since, where its current raw size is known; the previous size alone
    otherwise; the raw size uncompressed for a first backup of a measurable database;
    `unknown_default` when nothing is known. Never raises.
    """
    if previous is not None and current_raw is not None and previous.data.raw_size > 0:
        estimate = previous.data.size * current_raw / previous.data.raw_size
    elif previous is not None:
        estimate = previous.data.size
    elif current_raw is not None:
        return int(current_raw)  # compression only makes it smaller: margin enough
    else:
        return unknown_default
    return int(estimate * GROWTH_MARGIN)


def retention_lock(
    store: Store, waiting: Callable[[Path], None] | None = None
) -> contextlib.AbstractContextManager[None]:
    """Hold the store's retention lock (prune, pin/unpin, protecting a reused backup),
    across processes; `waiting` as in Store.locked. Raises BackupFailed if the folder
    or the lock cannot be made."""
    return store.locked(LOCK_FILE, waiting)


def protect_reused(store: Store, manifest: Manifest, now: datetime) -> Manifest:
    """Record that a destructive or production command goes ahead on `manifest`, reused
    rather than taken for it: retention protects it from `now` as if it were new.

    Under the retention lock, so a prune planning right now either sees the mark or has
    finished. Raises NotFound if that prune removed the backup (take a new one), Damaged
    or BackupFailed as `Store.update`."""
    with retention_lock(store):
        return store.update(manifest, destructive_reuse_at=now)


def plan_store(
    store: Store, policy: RetentionSettings, now: datetime, *, record: bool = False
) -> tuple[Plan, dict[str, Manifest]]:
    """The retention plan for the store as it is now, and its manifests by id.

    Damaged backups are not in it: they are listed for a person to look at and never
    removed automatically. Raises nothing beyond what reading the store raises.

    The newest good backup of a database is kept in place of all its others, so before
    an older backup of a database goes, the checksum of the one protected instead is
    checked: one whose file changed (a flipped byte keeps the size, only the checksum
    knows) is no longer taken as good, the next one is protected instead, and the plan
    is made again. Only those, and only where the plan removes something of their
    database: a prune that removes nothing reads no backup, and the store hashes each
    file once per process (a backup just taken is known intact without reading it).
    `record` writes each mismatch found into its manifest as a failed verification
    (prune does; a dry run changes nothing)."""
    manifests = {m.id: m for m in store.manifests()}
    records = {m.id: record_of(m) for m in manifests.values()}
    checked: set[str] = set()
    while True:
        current = plan(records.values(), policy, now)
        losing = {r.database_key for r in current.delete}
        newest_good: dict[str, BackupRecord] = {}
        for candidate in sorted(records.values(), key=lambda r: (-r.seq, r.id)):  # as plan
            if candidate.good and candidate.database_key in losing:
                newest_good.setdefault(candidate.database_key, candidate)
        suspects = [r for r in newest_good.values() if r.id not in checked]
        if not suspects:
            return current, manifests
        for suspect in suspects:
            checked.add(suspect.id)
            manifest = manifests[suspect.id]
            try:
                mismatch = store.mismatch(manifest)
            except OSError:
                continue  # unreadable now (or removed meanwhile): proves nothing
            if mismatch is not None:
                records[suspect.id] = replace(suspect, good=False)
                if record:
                    store.record_failed(manifest, mismatch)


def prune_with_plan(
    store: Store,
    policy: RetentionSettings,
    now: datetime,
    waiting: Callable[[Path], None] | None = None,
) -> tuple[Plan, list[Manifest]]:
    """Apply the retention plan under the retention lock; returns the plan and what was
    removed. Raises PruneFailed if a backup cannot be removed (what was removed before
    stays removed and is listed in the error), BackupFailed if the lock cannot be taken."""
    removed: list[Manifest] = []
    with retention_lock(store, waiting):
        current, manifests = plan_store(store, policy, now, record=True)
        for record in current.delete:
            manifest = manifests[record.id]
            try:
                store.delete(manifest)
            except FileNotFoundError:
                continue  # already gone (removed by hand): nothing to do
            except OSError as err:
                raise PruneFailed(
                    f"cannot remove backup {manifest.id} ({store.folder(manifest)}): "
                    f"{err.strerror or err}",
                    "check the ownership and permissions of the backup folder",
                    removed,
                ) from err
            removed.append(manifest)
    return current, removed


def prune(store: Store, policy: RetentionSettings, now: datetime) -> list[Manifest]:
    """Remove what the retention policy allows; returns the removed backups' manifests.

    Never removes pinned backups, protected pre-destructive backups or the newest good
    backup of any database. Raises PruneFailed or BackupFailed as `prune_with_plan`."""
    return prune_with_plan(store, policy, now)[1]


def prune_after_backup(
    store: Store, policy: RetentionSettings, backup: Manifest, now: datetime | None = None
) -> list[Manifest]:
    """Prune after `backup` was committed; returns the removed manifests for the log.

    Call only after a successful backup: `backup` is its manifest. If that backup is not
    in the store (it cannot be listed), nothing is pruned, because the newest-backup
    protection would then be computed without it. Raises PruneFailed or BackupFailed;
    the backup itself stays good either way, so a caller logs the error and carries on.
    """
    if not any(m.id == backup.id for m in store.manifests()):
        return []
    return prune(store, policy, now or datetime.now(UTC))


def ensure_space_for_backup(
    store: Store,
    target: Target,
    retention: RetentionSettings,
    space: SpaceSettings,
    now: datetime | None = None,
    *,
    usage: UsageReader = disk_usage,
    current_raw: int | None = None,
) -> SpaceCheck:
    """Make sure a backup of `target` fits and leaves the free-space floor.

    `current_raw` is the database's current raw size if the caller knows it (else it is
    read for SQLite, unknown for servers); `usage` reads the filesystem (injectable for
    tests). Prunes what the policy allows when space is short. Raises BackupFailed with
    the space needed, where, and how to free it when that is still not enough (or when
    the free space cannot be read).
    """
    if current_raw is None:
        current_raw = current_raw_size(target)
    estimate = estimate_backup_size(
        store.newest(target), current_raw, int(space.unknown_size_estimate)
    )
    reading = usage(store.root)
    floor = space.floor(reading.total)
    if reading.free - estimate >= floor:
        return SpaceCheck(estimate, reading.free, floor)
    try:
        pruned = prune(store, retention, now or datetime.now(UTC))
    except PruneFailed as err:
        pruned = err.removed  # room made so far still counts; the re-check decides
    reading = usage(store.root)
    floor = space.floor(reading.total)
    if reading.free - estimate >= floor:
        return SpaceCheck(estimate, reading.free, floor, pruned)
    short = estimate + floor - reading.free
    after = f", after removing {len(pruned)} old backup(s)" if pruned else ""
    raise BackupFailed(
        f"not enough space for a backup of {target.label} in {store.root}: it needs about "
        f"{human_size(estimate)} and {human_size(floor)} must stay free, but only "
        f"{human_size(reading.free)} is free{after}",
        f"free at least {human_size(short)} on the filesystem holding {store.root}: "
        "delete other files there, unpin backups you no longer need (`dbguardctl "
        "prune --dry-run` shows why each backup is kept), lower the [retention] limits, "
        "or point backup_dir at a larger disk",
    )

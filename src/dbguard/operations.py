"""Backup, restore and verify: the steps shared by the daemon and dbguardctl.

Blocking code, run in worker threads by the daemon and directly by dbguardctl.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr

from dbguard.discovery.project import DiscoveryCache
from dbguard.engines import Engines
from dbguard.engines.base import Target, compare_counts
from dbguard.errors import (
    BackupFailed,
    Cancelled,
    Damaged,
    DatabaseMissing,
    DbguardError,
    DumpAgain,
    RestoreFailed,
    Unreadable,
)
from dbguard.store import Manifest, Reason, Store, Verification


def take_backup(
    store: Store,
    engines: Engines,
    target: Target,
    reason: Reason,
    cancel: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Dump `target` into a new backup. Raises BackupFailed (and its kinds); on any
    failure nothing is left in the store. A dump the engine says to take again
    (DumpAgain) is taken once more."""
    engine = engines.for_target(target)
    stop = cancel or threading.Event()
    for attempt in (1, 2):
        try:
            with store.new_backup(target, reason) as pending:
                with pending.data_writer(engine.data_suffix, stop, progress) as sink:
                    info = engine.dump(target, sink, pending.scratch, stop)
                return pending.commit(info, reason)
        except DumpAgain:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def verify_backup(
    store: Store,
    engines: Engines,
    manifest: Manifest,
    target: Target | None = None,
    cancel: threading.Event | None = None,
) -> Verification:
    """Checksum, then a scratch restore whose row counts must equal the manifest's.
    `target` (default: the manifest's, without a password) says how to reach the server
    for the scratch restore. The result is recorded in the manifest.

    Setting `cancel` (dbguardd stopping) ends the scratch restore soon and raises
    Cancelled: its scratch copy is dropped and nothing is recorded, since a verify cut
    short proves nothing either way.

    Only what proves the backup bad is recorded as a failure: a checksum mismatch, data
    that does not decompress or restore, row counts that differ. What stops the check
    for a reason of the machine (a full disk, an unreachable server, a file it may not
    read) raises RestoreFailed and records nothing: the backup stays as good as it was.
    Raises NotFound if the backup was pruned meanwhile."""
    try:
        mismatch = _checksum(store, manifest, "verify")
    except FileNotFoundError:
        mismatch = f"{manifest.data.file} is missing"  # store.update says if all is gone
    problems = [mismatch] if mismatch else []
    if not problems:
        engine = engines.get(manifest.target().engine)
        with store.work_folder() as (_, scratch):
            try:
                with store.open_data(manifest) as data:
                    counts = engine.restored_counts(
                        target or manifest.target(), data, manifest.data.format, scratch, cancel
                    )
                problems = compare_counts(manifest.tables, counts)
            except Damaged as err:
                problems = [err.problem]
            except OSError as err:  # the disks: a full one, a vanished folder, EIO
                stored = store.folder(manifest) / manifest.data.file
                if not isinstance(err, FileNotFoundError) or stored.exists():
                    where = f"{err.filename}: " if err.filename else ""
                    raise RestoreFailed(
                        f"cannot check backup {manifest.id}: reading it or writing its "
                        f"scratch copy in {scratch} failed: {where}{err.strerror or err}",
                        "free some space on that filesystem (or mend the disk the error "
                        "names) and verify again; the backup is not marked failed",
                    ) from err
                # Pruned (or deleted) since its checksum was read: as for a file missing
                # from the start, store.update raises NotFound when all of it is gone.
                problems = [f"{manifest.data.file} is missing"]
    if cancel is not None and cancel.is_set():
        # Whatever the engine saw once stopped (a killed tool's error) is no finding.
        raise Cancelled(f"the verify of backup {manifest.id} was stopped: dbguardd is stopping")
    result = Verification(at=datetime.now(UTC), ok=not problems, problems=problems)
    store.update(manifest, verified=result)
    return result


def _checksum(store: Store, manifest: Manifest, doing: str) -> str | None:
    """The backup's checksum mismatch, or None; recomputed, never from a cache (bit rot
    leaves a file's size and time as they were). Raises FileNotFoundError when its data
    file is gone, RestoreFailed when it cannot be read: that says nothing of its bytes."""
    try:
        return store.checksum_mismatch(manifest)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise RestoreFailed(
            f"cannot {doing} backup {manifest.id}: reading "
            f"{store.folder(manifest) / manifest.data.file} failed: {err.strerror or err}",
            f"make the backup folder readable for this user and {doing} again; the backup "
            "is not marked failed",
        ) from err


def with_credentials(manifest: Manifest, env: Mapping[str, str]) -> Target:
    """The backup's database with a password to reach it, since manifests never hold one.

    The project the backup came from is asked again (discovery in its folder, with the
    current environment); failing that, PGPASSWORD / MYSQL_PWD. Without either the
    tools fall back to their own sources (~/.pgpass, a Unix socket's peer auth).
    """
    target = manifest.target()
    if target.engine == "sqlite":
        return target
    folder = Path(manifest.reason.cwd) if manifest.reason.cwd else None
    if folder is not None and folder.is_dir():
        try:
            found = DiscoveryCache().project_databases(folder, env, "dbguardctl restore")
        except DbguardError:
            found = None  # the project changed since; fall back to the environment
        for candidate in found.targets if found else []:
            if candidate.key == target.key and candidate.password is not None:
                return target.model_copy(update={"password": candidate.password})
    variable = "PGPASSWORD" if target.engine == "postgres" else "MYSQL_PWD"
    if env.get(variable):
        return target.model_copy(update={"password": SecretStr(env[variable])})
    return target


def restore_backup(
    store: Store,
    engines: Engines,
    manifest: Manifest,
    target: Target,
    reason: Reason,
    *,
    end_connections: bool = False,
    saved: Callable[[Manifest | None], None] = lambda before: None,
    swapped: Callable[[], None] = lambda: None,
    warn: Callable[[str], None] = lambda note: None,
    waiting_for_commands: Callable[[], None] = lambda: None,
    waiting_for_restore: Callable[[], None] = lambda: None,
    loan: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    still_waiting_for_restore: Callable[[], None] | None = None,
) -> Manifest | None:
    """Put `manifest`'s data back into `target`, after backing up what is there now.

    Returns the pre-restore backup (None when the database did not exist), also handed
    to `saved` as soon as it is taken (an interrupted restore names it); `swapped` is
    called once the target holds the backup's contents, and `warn` told of anything
    the restored database was left without (a setting the user may not set).

    The database's lock (Store.database_lock) is held exclusive from before the
    pre-restore backup to the end, so no guarded command is backed up or runs in
    between; when another restore of it is under way or guarded commands hold it,
    `waiting_for_restore` or `waiting_for_commands` is told, then this waits (^C ends
    the wait, nothing changed); commands that arrive meanwhile wait for it. `loan`
    borrows the hold of the guarded command running this restore, if any, and
    `still_waiting_for_restore` may end a wait for another restore by raising (see
    DatabaseLock.exclusive). Raises
    Damaged before touching anything if the backup does not check out, BackupFailed
    if the current state cannot be saved (RestoreFailed, saying how to go on, when it
    does not read as a database), RestoreFailed if the restore fails (the target is
    then unchanged), RestoreIncomplete if it stopped half way (MySQL's swap: the
    message says where the previous contents are).
    """
    try:
        mismatch = _checksum(store, manifest, "restore")
    except FileNotFoundError:
        mismatch = f"{manifest.data.file} is missing"
    if mismatch is not None:
        store.record_failed(manifest, mismatch)  # no longer the newest good for retention
        raise Damaged(f"backup {manifest.id} is damaged: {mismatch}", "it cannot be restored")
    # Opened before the pre-restore backup, which can take minutes: a prune meanwhile
    # (dbguardd's, after a backup of its own) removes the backup's file, not the open one.
    with (
        store.open_data(manifest) as data,
        store.database_lock(target.key).exclusive(
            waiting_for_commands, waiting_for_restore, loan, still_waiting_for_restore
        ),
    ):
        try:
            before = take_backup(store, engines, target, reason)
        except DatabaseMissing:
            before = None
        except Unreadable as err:
            # Restoring is the cure for a broken file, but what it holds now cannot be
            # backed up, and nothing is replaced without a copy: the person moves it aside.
            aside = f"mv {target.path} {target.path}.broken" if target.path else "move it aside"
            raise RestoreFailed(
                f"{err.problem}, so its current contents cannot be backed up before the restore",
                f"keep it by moving it aside ({aside}), then restore again: a database that "
                "is not there is restored without a backup first; nothing was changed",
            ) from None
        except BackupFailed as err:  # nothing is replaced without a copy of it
            raise BackupFailed(
                f"the current contents could not be backed up before the restore: {err.problem}",
                f"{err.fix}; nothing was restored, the database was not changed".lstrip("; "),
            ) from None
        saved(before)
        engine = engines.for_target(target)
        with store.work_folder() as (_, scratch):
            try:
                engine.restore(
                    target,
                    data,
                    manifest.data.format,
                    scratch,
                    end_connections=end_connections,
                    swapped=swapped,
                    warn=warn,
                )
            except Damaged as err:
                # Found while reading the dump (it ends short, does not parse), which
                # every engine does whole before it changes anything.
                store.record_failed(manifest, err.problem)
                raise Damaged(
                    err.problem, "it cannot be restored; the database was not changed"
                ) from None
    return before

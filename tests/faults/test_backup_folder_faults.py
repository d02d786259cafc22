"""The backup folder fails under a running daemon: full, read-only, or deleted.

The folder is a real small tmpfs (mounted for the test, so the kernel itself says
ENOSPC and EROFS). Each case: the command exits 75 without running and says why,
nothing is listed, .tmp is empty, and once the fault is gone the same command is served.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbguard import operations
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.retention import RetentionSettings
from dbguard.space import prune
from dbguard.store import Manifest, Reason, Store
from tests.faults.support import (
    FaultDaemon,
    FaultTool,
    committed_manifests,
    fill_pg,
    injected,
    install_php,
    leftovers,
    listing,
    oplog,
    pg_rows,
    ran,
    remount,
    server_project,
    sqlite_rows,
    start_guarded,
    stderr_text,
    tmpfs,
    write_config,
)
from tests.helpers import Home, laravel_sqlite_project


@dataclass
class Setup:
    home: Home
    daemon: FaultDaemon
    store: Path
    project: Path

    @property
    def database(self) -> Path:
        return self.project / "database" / "app.sqlite"

    def command(self) -> subprocess.CompletedProcess[bytes]:
        return self.home.run(["php", "artisan", "migrate:fresh"], cwd=self.project)

    def assert_refused(self, result: subprocess.CompletedProcess[bytes], *words: str) -> None:
        message = stderr_text(result)
        assert result.returncode == 75, message
        for word in words:
            assert word in message, message
        assert ran(self.project) == []
        assert sqlite_rows(self.database) == 3
        assert listing(self.home) == []
        assert leftovers(self.home, self.store) == []
        assert [r["decision"] for r in oplog(self.home)] == ["fail"]
        self.daemon.assert_no_crash()

    def assert_served_reusing(self) -> None:
        result = self.command()
        assert result.returncode == 0, stderr_text(result)
        [backup] = listing(self.home)
        assert backup["destructive_reuse_at"] is not None
        assert sqlite_rows(self.database) is None  # migrate:fresh ran

    def assert_served(self) -> None:
        assert sqlite_rows(self.database) == 3
        result = self.command()
        assert result.returncode == 0, stderr_text(result)
        [backup] = listing(self.home)
        assert backup["tables"]["users"] == 3
        assert sqlite_rows(self.database) is None  # migrate:fresh ran
        assert leftovers(self.home, self.store) == []


def incompressible_wal_database(path: Path, mib: int) -> None:
    """A WAL database: its backup is first copied whole into the store's scratch folder,
    so it needs about twice its size in the backup folder while being taken."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("create table blobs (id integer primary key, data blob)")
    conn.execute(
        "insert into blobs (data) select randomblob(1048576) from "
        "(with recursive g(i) as (select 1 union all select i + 1 from g where i < ?) "
        "select i from g)",
        (mib,),
    )
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


@pytest.fixture
def on_tmpfs(home: Home, tmp_path: Path) -> Iterator[Setup]:
    with tmpfs(tmp_path / "store", "8m") as store:
        install_php(home)
        project = laravel_sqlite_project(home.root / "app")
        # Single-threaded zstd streams out as it goes: the scratch copy of a WAL database
        # and the compressed data are then on the disk at the same time.
        write_config(
            home,
            f'backup_dir = "{store}"\n[backup]\ncompression_threads = 0\n'
            "[space]\nunknown_size_estimate = 1000000\n",
        )
        daemon = FaultDaemon(home).start()
        try:
            yield Setup(home, daemon, store, project)
        finally:
            daemon.stop()


def test_disk_full_while_writing(on_tmpfs: Setup) -> None:
    """The space check passes (it expects the compressed size), then the scratch copy of
    a WAL database and the compressed data together fill the 8 MiB filesystem."""
    setup = on_tmpfs
    incompressible_wal_database(setup.database, 5)
    result = setup.command()
    injected("backup folder full mid-write (8 MiB tmpfs)")

    setup.assert_refused(result, "no space left in", str(setup.store), "free some space")
    remount(setup.store, "size=64m")
    setup.assert_served()


def test_disk_filled_by_another_writer_mid_backup(on_tmpfs: Setup, pg_database: Target) -> None:
    setup, home = on_tmpfs, on_tmpfs.home
    fill_pg(pg_database, 20_000)
    tool = FaultTool.install(home.bin, "pg_dump")
    project = server_project(home.root / "pg", pg_database)
    gate = tool.gate(home.root / "gate")
    command = start_guarded(home, project, "php", "artisan", "migrate:fresh")
    gate.wait_ready()
    fill_up(setup.store / "filler")
    injected("backup folder filled by another writer mid-backup")
    gate.open()
    _, err = command.communicate(timeout=60)

    message = err.decode()
    assert command.returncode == 75, message
    assert "no space left in" in message
    assert ran(project) == []
    assert pg_rows(pg_database) == 20_000
    assert listing(home) == []
    assert leftovers(home, setup.store) == []
    (setup.store / "filler").unlink()
    tool.set("real")
    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert result.returncode == 0, stderr_text(result)
    assert len(listing(home)) == 1
    setup.daemon.assert_no_crash()


def test_disk_full_while_copying_a_wal_database(on_tmpfs: Setup) -> None:
    """A WAL database is copied whole into the backup folder before it is compressed.
    The last backup was small and compressed well, so the space check expects little;
    the copy of the grown database then fills the 8 MiB filesystem. The message must
    blame the backup folder, not the database."""
    setup = on_tmpfs
    first = setup.home.run(["php", "artisan", "test"], cwd=setup.project)
    assert first.returncode == 0, stderr_text(first)
    conn = sqlite3.connect(setup.database)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("create table padding (data blob)")
    conn.execute("insert into padding select zeroblob(1048576) from users, users")  # 9 MiB
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()

    result = setup.command()
    injected("backup folder full while copying a WAL database (8 MiB tmpfs)")

    message = stderr_text(result)
    assert result.returncode == 75, message
    assert "no space left in" in message and str(setup.store) in message, message
    assert "point backup_dir at a larger disk" in message
    assert "cannot read the SQLite database" not in message
    assert [r["argv"][-1] for r in ran(setup.project)] == ["test"]  # not migrate:fresh
    assert [b["reason"]["argv"][2] for b in listing(setup.home)] == ["test"]
    assert leftovers(setup.home, setup.store) == []
    setup.daemon.assert_no_crash()


def test_verify_with_no_room_for_its_scratch_copy_says_so(on_tmpfs: Setup) -> None:
    setup = on_tmpfs
    first = setup.home.run(["php", "artisan", "test"], cwd=setup.project)
    assert first.returncode == 0, stderr_text(first)
    [backup] = listing(setup.home)
    fill_up(setup.store / "filler")
    injected("backup folder full during verify (8 MiB tmpfs)")

    result = setup.home.ctl("verify", backup["id"])

    message = stderr_text(result)
    assert result.returncode != 0 and "Traceback" not in message, message
    assert f"cannot check backup {backup['id']}" in message and "free some space" in message
    [after] = listing(setup.home)
    assert after["verified"] is None  # could not run: neither passed nor failed
    (setup.store / "filler").unlink()
    assert setup.home.ctl("verify", backup["id"]).returncode == 0


def fill_up(path: Path) -> None:
    """Write until the kernel says the filesystem is full. Unbuffered: a buffered file
    keeps what did not fit and fails again on close, where the free space does not
    end on a block boundary."""
    with path.open("wb", buffering=0) as file:
        while True:
            try:
                file.write(b"\0" * (1 << 16))
            except OSError:
                return


def test_disk_already_full(on_tmpfs: Setup) -> None:
    setup = on_tmpfs
    filler = setup.store / "filler"
    fill_up(filler)
    injected("backup folder full before the backup (8 MiB tmpfs)")
    result = setup.command()

    setup.assert_refused(result, str(setup.store))
    assert "not enough space" in stderr_text(result) or "no space left" in stderr_text(result)
    filler.unlink()
    setup.assert_served()


def test_disk_full_when_a_destructive_command_would_reuse_a_backup(on_tmpfs: Setup) -> None:
    """The database is unchanged, so migrate:fresh would reuse the last backup, but the
    mark that keeps that backup from being pruned cannot be written: refused, saying so."""
    setup = on_tmpfs
    first = setup.home.run(["php", "artisan", "test"], cwd=setup.project)
    assert first.returncode == 0, stderr_text(first)
    fill_up(setup.store / "filler")
    injected("backup folder full when a reused backup is marked (8 MiB tmpfs)")

    result = setup.command()

    message = stderr_text(result)
    assert result.returncode == 75, message
    assert "cannot record in backup" in message and "no space left" in message, message
    assert sqlite_rows(setup.database) == 3  # migrate:fresh did not run
    (setup.store / "filler").unlink()
    setup.assert_served_reusing()


def test_read_only_backup_folder(on_tmpfs: Setup) -> None:
    setup = on_tmpfs
    remount(setup.store, "ro")
    injected("backup folder read-only (tmpfs remounted ro)")
    try:
        result = setup.command()
    finally:
        remount(setup.store, "rw")

    setup.assert_refused(result, "Read-only file system", "writable")
    setup.assert_served()


# Root reads any folder; without these two capabilities it meets modes as users do.
AS_A_USER = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.getuid() == 0 else []
)


def test_a_backup_folder_mode_000_is_named_by_every_command(home: Home) -> None:
    """Once tracebacks in dbguardctl and "internal error" (70) at the shims."""
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home, prefix=AS_A_USER).start()
    try:
        assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
        home.backups.chmod(0o000)
        injected("backup folder mode 000")
        try:
            refused = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
            ctl = [
                home.run([*AS_A_USER, sys.executable, "-m", "dbguard.ctl.main", *args], project)
                for args in (["list-backups"], ["status"], ["verify", "1234"])
            ]
        finally:
            home.backups.chmod(0o700)
        assert refused.returncode == 75, stderr_text(refused)
        assert f"{home.backups}: Permission denied" in stderr_text(refused)
        assert len(ran(project)) == 1  # the first command only
        for result in ctl:
            message = stderr_text(result)
            assert f"cannot read the backup folder {home.backups}" in message, message
            assert "chmod 700" in message and "Traceback" not in message
        assert [result.returncode for result in ctl] == [75, 75, 75]
        assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def test_an_unreadable_tmp_folder_or_manifest_is_named_with_its_chmod(home: Home) -> None:
    """Once a traceback at dbguardd's start and "internal error" (70) at every shim for a
    .tmp of mode 000, and an unreadable manifest listed and refused as damaged."""
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home, prefix=AS_A_USER).start()
    tmp = home.backups / ".tmp"
    try:
        assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
        [backup] = listing(home)
        with sqlite3.connect(project / "database" / "app.sqlite") as conn:
            conn.execute("create table changed (x)")  # so that the next command backs up
        tmp.chmod(0o000)
        injected("backup folder's .tmp mode 000")
        try:
            refused = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        finally:
            tmp.chmod(0o700)
        message = stderr_text(refused)
        assert refused.returncode == 75, message
        assert f"cannot read the backup folder {tmp}: Permission denied" in message
        assert f"chmod 700 {tmp}" in message and "internal error" not in message
        assert len(ran(project)) == 1  # the first command only
        daemon.assert_no_crash()

        [folder] = home.backups.glob(f"*/{backup['id']}")
        (folder / "manifest.json").chmod(0o000)
        injected("a backup's manifest mode 000")
        try:
            listed, verified = (
                home.run([*AS_A_USER, sys.executable, "-m", "dbguard.ctl.main", *args], project)
                for args in (["list-backups"], ["verify", backup["id"]])
            )
        finally:
            (folder / "manifest.json").chmod(0o600)
        shown = listed.stdout.decode()
        assert "UNREADABLE: manifest.json cannot be read (Permission denied)" in shown
        assert f"chmod -R u+rwX {folder}" in shown and "DAMAGED" not in shown
        assert verified.returncode == 75, stderr_text(verified)
        assert f"chmod -R u+rwX {folder}" in stderr_text(verified)
        assert "damaged" not in stderr_text(verified)
        again = home.ctl("verify", backup["id"])
        assert again.returncode == 0, stderr_text(again)
    finally:
        daemon.stop()

    tmp.chmod(0o000)
    try:
        started = subprocess.run(
            [*AS_A_USER, sys.executable, "-m", "dbguard.daemon.main"],
            env=home.env,
            capture_output=True,
            timeout=60,
        )
    finally:
        tmp.chmod(0o700)
    message = stderr_text(started)
    assert started.returncode == 1, message
    assert f"cannot read the backup folder {tmp}" in message and "Traceback" not in message


def test_an_sqlite_database_or_folder_the_user_may_not_read_says_how_to_fix_it(
    home: Home,
) -> None:
    """Not the backup folder but the database: once SQLite's bare "unable to open
    database file" for a file of mode 000, and no way out for a folder of mode 000."""
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    database = project / "database" / "app.sqlite"
    daemon = FaultDaemon(home, prefix=AS_A_USER).start()
    try:
        for blocked in (database, database.parent):
            blocked.chmod(0o000)
            injected(f"SQLite {'database' if blocked == database else 'folder'} mode 000")
            try:
                refused = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
            finally:
                blocked.chmod(0o700)
            message = stderr_text(refused)
            assert refused.returncode == 75, message
            assert f"cannot read the SQLite database {database}: Permission denied" in message
            assert f"chmod u+r {database}" in message and f"chmod u+rx {database.parent}" in message
        assert ran(project) == []
        assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def test_backup_folder_deleted_while_the_daemon_runs(home: Home) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    try:
        first = home.run(["php", "artisan", "test"], cwd=project)
        assert first.returncode == 0, stderr_text(first)
        [kept] = listing(home)
        shutil.rmtree(home.backups)
        injected("backup folder deleted while the daemon runs")

        # The database has not changed, but its backup is gone: a new one is taken.
        again = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert again.returncode == 0, stderr_text(again)
        [backup] = listing(home)
        assert backup["id"] != kept["id"]
        assert backup["tables"] == {"users": 3}
        assert home.backups.stat().st_mode & 0o777 == 0o700
        assert [r["backups"][0]["reused"] for r in oplog(home)] == [False, False]
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def delete_store_mid_backup(home: Home, target: Target) -> tuple[int, str, str]:
    """Hold pg_dump mid-dump, delete the whole backup folder, let the dump finish.
    Returns the command's exit status and stderr, and the daemon's log."""
    fill_pg(target, 20_000)
    tool = FaultTool.install(home.bin, "pg_dump")
    install_php(home)
    project = server_project(home.root / "app", target)
    daemon = FaultDaemon(home).start()
    try:
        gate = tool.gate(home.root / "gate")
        command = start_guarded(home, project, "php", "artisan", "migrate:fresh")
        gate.wait_ready()
        shutil.rmtree(home.backups)
        injected("backup folder deleted mid-backup")
        gate.open()
        _, err = command.communicate(timeout=60)

        # What must hold whatever the message: nothing ran, nothing is listed or left.
        assert command.returncode != 0
        assert ran(project) == []
        assert pg_rows(target) == 20_000
        assert committed_manifests(home.backups) == []
        assert listing(home) == []
        assert leftovers(home) == []

        tool.set("real")
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert result.returncode == 0, stderr_text(result)
        [backup] = listing(home)
        assert sum(backup["tables"].values()) == 20_000
        return command.returncode, err.decode(), daemon.log
    finally:
        daemon.stop()


def test_backup_folder_deleted_mid_backup(home: Home, pg_database: Target) -> None:
    delete_store_mid_backup(home, pg_database)


def test_backup_folder_deleted_mid_backup_is_a_clear_backup_failure(
    home: Home, pg_database: Target
) -> None:
    code, message, log = delete_store_mid_backup(home, pg_database)
    assert code == 75, message
    assert "cannot write the backup" in message
    assert "internal error" not in message
    assert "connection handler failed" not in log


def test_restore_with_no_room_says_what_is_missing_and_changes_nothing(on_tmpfs: Setup) -> None:
    setup = on_tmpfs
    database = setup.project / "database" / "app.sqlite"
    with sqlite3.connect(database) as conn:  # 2 MiB that do not compress
        conn.execute("create table blobs (data blob)")
        conn.execute("insert into blobs select randomblob(1048576) from users limit 2")
    taken = setup.home.ctl("backup", "--json", cwd=setup.project)
    assert taken.returncode == 0, stderr_text(taken)
    [backup] = listing(setup.home)
    fill_up(setup.store / "filler")
    injected("backup folder full during a restore (8 MiB tmpfs)")

    # The current contents cannot be saved first: nothing is restored.
    refused = setup.home.ctl("restore", backup["id"], "--yes")
    message = stderr_text(refused)
    assert refused.returncode == 75, message
    assert "could not be backed up before the restore" in message
    assert "nothing was restored" in message

    # Nothing to save (the file is gone), but no room to unpack the backup either.
    database.unlink()
    refused = setup.home.ctl("restore", backup["id"], "--yes")
    message = stderr_text(refused)
    assert refused.returncode == 74, message
    assert f"cannot unpack the backup into {setup.store}" in message
    assert "free some space on the backups' filesystem" in message and "None" not in message
    assert not database.exists()

    (setup.store / "filler").unlink()
    assert setup.home.ctl("restore", backup["id"], "--yes").returncode == 0
    assert sqlite_rows(database) == 3


def test_a_pin_with_no_room_leaves_no_temp_file(on_tmpfs: Setup) -> None:
    setup = on_tmpfs
    assert setup.home.run(["php", "artisan", "test"], cwd=setup.project).returncode == 0
    [backup] = listing(setup.home)
    fill_up(setup.store / "filler")
    injected("backup folder full while a manifest is updated (8 MiB tmpfs)")

    pinned = setup.home.ctl("pin", backup["id"])
    assert pinned.returncode != 0 and "Traceback" not in stderr_text(pinned)
    [folder] = [p.parent for p in setup.store.glob(f"*/{backup['id']}/manifest.json")]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    (setup.store / "filler").unlink()
    assert setup.home.ctl("pin", backup["id"]).returncode == 0


# ---- a nearly full backup folder during verify and restore, in this process -------------


def leave_free(folder: Path, free: int) -> Path:
    """Fill the filesystem holding `folder` until about `free` bytes are left."""
    info = os.statvfs(folder)
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as file:
        file.write(b"\0" * (info.f_bavail * info.f_frsize - free))
    return filler


@dataclass
class WalOnTmpfs:
    """A WAL database of 2 MiB that does not compress, backed up into a store on an
    8 MiB tmpfs (in this process: no daemon)."""

    db: Path
    target: Target
    engines: Engines
    folder: Path
    store: Store

    def backup(self) -> Manifest:
        return operations.take_backup(self.store, self.engines, self.target, Reason(kind="manual"))


@pytest.fixture
def wal_on_tmpfs(tmp_path: Path) -> Iterator[WalOnTmpfs]:
    db = tmp_path / "app.sqlite"
    incompressible_wal_database(db, 2)
    engines = Engines()
    try:
        with tmpfs(tmp_path / "store", "8m") as folder:
            target = Target(engine="sqlite", path=str(db), source="test")
            yield WalOnTmpfs(db, target, engines, folder, Store(folder / "backups"))
    finally:
        engines.close()


def test_a_good_wal_backup_verified_with_little_room_stays_good(wal_on_tmpfs: WalOnTmpfs) -> None:
    """Room for the unpacked copy, not for the 32 KB -shm SQLite would make beside a copy
    still in WAL mode. Once that failed as 'disk I/O error', was recorded as FAILED for
    good, and retention then removed the newest real backup for the older one."""
    setup, store = wal_on_tmpfs, wal_on_tmpfs.store
    older = setup.backup()
    with contextlib.closing(sqlite3.connect(setup.db)) as conn:
        conn.execute("delete from blobs where id = 1")
        conn.commit()
    newest = setup.backup()
    filler = leave_free(setup.folder, newest.data.raw_size + 8192)
    injected("backup folder nearly full during the verify of a WAL backup")

    result = operations.verify_backup(store, setup.engines, newest, setup.target)

    filler.unlink()
    assert result.ok, result.problems
    assert store.newest(setup.target) == store.get(newest.id)
    cap = RetentionSettings(max_total_bytes=newest.data.size + 1)
    removed = prune(store, cap, datetime.now(UTC))
    assert [m.id for m in removed] == [older.id]


def test_a_wal_backup_restores_with_little_room_in_the_backup_folder(
    wal_on_tmpfs: WalOnTmpfs,
) -> None:
    """Once refused as 'damaged' (exit 65), where the backup was good."""
    setup, store = wal_on_tmpfs, wal_on_tmpfs.store
    backup = setup.backup()
    setup.db.unlink()  # nothing to back up first: all the room is the unpacked copy's
    filler = leave_free(setup.folder, backup.data.raw_size + 8192)
    injected("backup folder nearly full during the restore of a WAL backup")

    operations.restore_backup(
        store, setup.engines, backup, setup.target, Reason(kind="pre-restore")
    )

    filler.unlink()
    assert store.get(backup.id).verified is None
    with contextlib.closing(sqlite3.connect(setup.db)) as conn:
        assert conn.execute("select count(*) from blobs").fetchone() == (2,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # as it was

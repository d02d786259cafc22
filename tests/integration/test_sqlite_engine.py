"""The SQLite engine on real files: consistency, change signal, restore, verify."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest

from dbguard import operations
from dbguard.daemon.health import BackgroundVerifier
from dbguard.engines import Engines
from dbguard.engines import sqlite as sqlite_engine
from dbguard.engines.base import DumpInfo, Target
from dbguard.engines.sqlite import SqliteEngine
from dbguard.errors import BackupFailed, Damaged, DatabaseMissing, RestoreFailed
from dbguard.store import Manifest, Reason, Store
from tests.helpers import Daemon, Home, cut_short_keeping_checksum, laravel_sqlite_project

if TYPE_CHECKING:
    from dbguard.daemon.service import Guard

REASON = Reason(kind="manual")


def make_db(path: Path, rows: int = 100, wal: bool = False) -> Target:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)")
    conn.execute('CREATE TABLE "odd ""name" (x)')
    conn.executemany(
        "INSERT INTO items (body, blob) VALUES (?, ?)",
        [(f"ünïcode {i} ✓", bytes(range(256)) if i % 2 else None) for i in range(rows)],
    )
    conn.commit()
    conn.close()
    return Target(engine="sqlite", path=str(path), source="test")


def rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM items ORDER BY id").fetchall()


def execute(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()


def backed_up(tmp_path: Path, engines: Engines) -> tuple[Path, Target, Store, Manifest]:
    """An SQLite database of 100 rows and its first backup: where restore tests start."""
    db = tmp_path / "app.sqlite"
    target = make_db(db)
    store = Store(tmp_path / "b")
    return db, target, store, operations.take_backup(store, engines, target, REASON)


@pytest.fixture
def engines() -> Iterator[Engines]:
    engines = Engines()
    yield engines
    engines.close()


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_round_trip_restores_exactly_the_rows_at_backup_time(
    tmp_path: Path, engines: Engines, wal: bool
) -> None:
    db = tmp_path / "app.sqlite"
    target = make_db(db, wal=wal)
    store = Store(tmp_path / "backups")
    before = rows(db)

    manifest = operations.take_backup(store, engines, target, REASON)
    assert manifest.tables == {"items": 100, 'odd "name': 0}
    execute(db, "DELETE FROM items WHERE id % 3 = 0")
    execute(db, 'DROP TABLE "odd ""name"')

    assert operations.verify_backup(store, engines, manifest).ok
    pre_restore = operations.restore_backup(store, engines, manifest, target, REASON)
    assert rows(db) == before
    assert pre_restore is not None and pre_restore.tables == {"items": 67}


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_backup_is_one_consistent_snapshot_while_another_process_writes(
    tmp_path: Path, engines: Engines, wal: bool
) -> None:
    """A writer keeps inserting in pairs inside one transaction; every backup must hold
    an even number of rows and agree with its own manifest."""
    db = tmp_path / "busy.sqlite"
    target = make_db(db, rows=20_000, wal=wal)
    store = Store(tmp_path / "backups")
    stop = threading.Event()

    def writer() -> None:
        conn = sqlite3.connect(db, timeout=30)
        while not stop.is_set():
            with conn:
                conn.execute("INSERT INTO items (body) VALUES ('a')")
                conn.execute("INSERT INTO items (body) VALUES ('b')")
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        manifests = [operations.take_backup(store, engines, target, REASON) for _ in range(5)]
    finally:
        stop.set()
        thread.join()
    for manifest in manifests:
        assert manifest.tables["items"] % 2 == 0
        assert operations.verify_backup(store, engines, manifest).ok


def test_a_wal_database_committed_to_between_every_step_of_its_copy_is_copied_once(
    tmp_path: Path, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite restarts a copy when another connection commits between two of its steps
    unless the copy holds a read transaction: an app writing a few times a second kept
    a guarded command waiting, silent, until the writes stopped."""
    monkeypatch.setattr(sqlite_engine, "_COPY_STEP_PAGES", 8)
    db = tmp_path / "busy.sqlite"
    target = make_db(db, rows=1_000, wal=True)
    with sqlite3.connect(db) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 4 * 8
    writer = sqlite3.connect(db, isolation_level=None)
    steps = 0

    class CommitAtEachStep(threading.Event):
        """The copy asks whether to stop after each step: commit a row right then."""

        def is_set(self) -> bool:
            nonlocal steps
            steps += 1
            if steps <= 10 * pages:  # a bound, so a restarting copy still ends
                writer.execute("INSERT INTO items (body) VALUES ('meanwhile')")
            return False

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    try:
        info = engines.for_target(target).dump(target, io.BytesIO(), scratch, CommitAtEachStep())
    finally:
        writer.close()

    assert steps <= pages // 8 + 3  # each step once: no restarts
    assert info.tables["items"] == 1_000  # the rows as the copy began


@pytest.mark.parametrize(
    "change",
    [
        "INSERT INTO items (body) VALUES ('new')",
        "UPDATE items SET body = 'changed' WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        "CREATE TABLE extra (x)",
        "CREATE INDEX items_body ON items (body)",
    ],
)
@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_fingerprint_moves_with_every_committed_change(
    tmp_path: Path, change: str, wal: bool
) -> None:
    db = tmp_path / "app.sqlite"
    target = make_db(db, wal=wal)
    engine = SqliteEngine()
    try:
        before = engine.fingerprint(target)
        execute(db, change)  # another connection commits
        assert engine.fingerprint(target) != before
    finally:
        engine.close()


def test_fingerprint_stays_put_after_reads_and_after_its_own_backup(
    tmp_path: Path, engines: Engines
) -> None:
    db = tmp_path / "app.sqlite"
    target = make_db(db, wal=True)
    engine = engines.for_target(target)
    before = engine.fingerprint(target)
    rows(db)
    manifest = operations.take_backup(Store(tmp_path / "b"), engines, target, REASON)
    assert manifest.fingerprint == before
    assert engine.fingerprint(target) == before


def test_fingerprint_never_matches_across_a_restart(tmp_path: Path) -> None:
    """data_version means nothing to a new connection, so a new daemon backs up again."""
    target = make_db(tmp_path / "app.sqlite")
    first, second = SqliteEngine(), SqliteEngine()
    try:
        assert first.fingerprint(target) != second.fingerprint(target)
    finally:
        first.close()
        second.close()


def test_a_replaced_file_changes_the_fingerprint(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite"
    target = make_db(db)
    engine = SqliteEngine()
    try:
        before = engine.fingerprint(target)
        replacement = make_db(tmp_path / "other.sqlite")
        Path(str(replacement.path)).replace(db)
        assert engine.fingerprint(target) != before
    finally:
        engine.close()


def test_a_file_overwritten_in_place_with_its_mtime_kept_changes_the_fingerprint(
    tmp_path: Path,
) -> None:
    """data_version compares only the header's counters, the same in two databases made
    the same way; `cp -p` keeps the inode, the size and (here) the mtime."""
    db, other = tmp_path / "app.sqlite", tmp_path / "fixture.sqlite"
    for path, body in ((db, "precious"), (other, "fixture!")):
        execute(path, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        execute(path, f"INSERT INTO t (v) VALUES ('{body}')")
    kept = db.stat()
    os.utime(other, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    target = Target(engine="sqlite", path=str(db))
    engine = SqliteEngine()
    try:
        before = engine.fingerprint(target)
        subprocess.run(["cp", "-p", str(other), str(db)], check=True)
        assert db.stat().st_ino == kept.st_ino and db.stat().st_mtime_ns == kept.st_mtime_ns
        assert engine.fingerprint(target) != before
    finally:
        engine.close()


def test_missing_and_broken_databases(tmp_path: Path, engines: Engines) -> None:
    store = Store(tmp_path / "b")
    missing = Target(engine="sqlite", path=str(tmp_path / "nope.sqlite"))
    with pytest.raises(DatabaseMissing):
        operations.take_backup(store, engines, missing, REASON)
    assert not (tmp_path / "nope.sqlite").exists()  # never created by looking
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"definitely not sqlite" * 200)
    with pytest.raises(BackupFailed, match="not an SQLite database"):
        operations.take_backup(store, engines, Target(engine="sqlite", path=str(junk)), REASON)
    folder = tmp_path / "app.sqlite"
    folder.mkdir()  # SQLite itself says only "unable to open database file"
    with pytest.raises(BackupFailed, match=r"app\.sqlite is a folder, not an SQLite database"):
        operations.take_backup(store, engines, Target(engine="sqlite", path=str(folder)), REASON)
    assert store.entries() == []


def test_restore_into_a_deleted_database_ignores_its_stale_wal(
    tmp_path: Path, engines: Engines
) -> None:
    db = tmp_path / "app.sqlite"
    target = make_db(db, wal=True)
    store = Store(tmp_path / "b")
    manifest = operations.take_backup(store, engines, target, REASON)
    expected = rows(db)
    engines.close()  # let go of the file, as a restarted daemon would
    db.unlink()
    Path(f"{db}-wal").write_bytes(b"stale wal from the deleted database")

    assert operations.restore_backup(store, engines, manifest, target, REASON) is None
    assert rows(db) == expected


def test_a_backup_pruned_during_the_pre_restore_backup_is_still_restored(
    tmp_path: Path, engines: Engines
) -> None:
    """The pre-restore backup of a large database takes minutes, and dbguardd prunes
    after each backup it takes meanwhile (the size cap takes the oldest first): the
    backup being restored, once checked, must not be taken away before it is read."""
    db, target, store, manifest = backed_up(tmp_path, engines)
    expected = rows(db)
    execute(db, "DELETE FROM items")

    def pruned_meanwhile(before: Manifest | None) -> None:
        store.delete(manifest)  # as a prune in dbguardd would, between the two steps

    before = operations.restore_backup(
        store, engines, manifest, target, REASON, saved=pruned_meanwhile
    )
    assert rows(db) == expected
    assert before is not None and before.tables["items"] == 0


def test_restore_while_another_connection_is_open(tmp_path: Path, engines: Engines) -> None:
    db, target, store, manifest = backed_up(tmp_path, engines)
    execute(db, "DELETE FROM items")
    reader = sqlite3.connect(db)
    try:
        operations.restore_backup(store, engines, manifest, target, REASON)
        assert reader.execute("SELECT count(*) FROM items").fetchone()[0] == 100
    finally:
        reader.close()


HOLD_OPEN = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM items").fetchone()  # a read transaction left open
print("holding", flush=True)
sys.stdin.read()
"""


def test_restore_gives_up_on_a_database_held_open_and_names_the_holder(
    tmp_path: Path, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, target, store, manifest = backed_up(tmp_path, engines)
    execute(db, "DELETE FROM items WHERE id > 10")
    monkeypatch.setattr(sqlite_engine, "_RESTORE_LOCK_WAIT", 0.5)
    holder, idle = (
        subprocess.Popen(
            [sys.executable, "-c", script, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for script in (HOLD_OPEN, HOLD_OPEN.replace('conn.execute("BEGIN")', ""))
    )
    try:
        for process in (holder, idle):
            assert process.stdout is not None and process.stdout.readline() == b"holding\n"
        with pytest.raises(RestoreFailed, match="stayed in use") as failed:
            operations.restore_backup(store, engines, manifest, target, REASON)
        assert f"pid {holder.pid} (python" in failed.value.problem
        assert f"pid {idle.pid}" not in failed.value.problem  # open, but holding nothing
        assert "was not changed" in str(failed.value.fix)
    finally:
        holder.communicate(b"")
        idle.communicate(b"")
    assert len(rows(db)) == 10  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite", "b"]  # no leftovers

    operations.restore_backup(store, engines, manifest, target, REASON)  # now it is free
    assert len(rows(db)) == 100


def test_a_restore_that_has_to_wait_tells_once_whom_it_waits_for(
    tmp_path: Path, engines: Engines
) -> None:
    db, target, store, manifest = backed_up(tmp_path, engines)
    execute(db, "DELETE FROM items WHERE id > 10")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    told: list[tuple[Path, list[str], float]] = []

    def waiting(path: Path, holders: list[str], seconds: float) -> None:
        told.append((path, holders, seconds))
        holder.communicate(b"")  # told it waits: the holder now ends its transaction

    engine = engines.get("sqlite")
    assert isinstance(engine, SqliteEngine)
    engine.restore_waits = waiting
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        operations.restore_backup(store, engines, manifest, target, REASON)
    finally:
        holder.communicate(b"")
    [(path, holders, seconds)] = told
    assert path == db and seconds == sqlite_engine._RESTORE_LOCK_WAIT
    assert len(holders) == 1 and holders[0].startswith(f"pid {holder.pid} (python")
    assert len(rows(db)) == 100

    operations.restore_backup(store, engines, manifest, target, REASON)  # nothing in its way
    assert len(told) == 1


def test_dbguardctl_restore_says_when_it_starts_waiting_and_for_whom(
    home: Home, daemon: Daemon
) -> None:
    project = laravel_sqlite_project(home.root / "app")
    taken = home.ctl("backup", "--json", cwd=project)
    assert taken.returncode == 0, taken.stderr
    backup_id = json.loads(taken.stdout)["backups"][0]["id"]
    database = project / "database" / "app.sqlite"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock the restore's copy needs
    holder.execute("DELETE FROM users WHERE id = 1")
    restore = home.ctl_process("restore", backup_id, "--yes", cwd=project)
    assert restore.stderr is not None
    try:
        said = restore.stderr.readline().decode()  # before it gives up, 30 s on
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, err = restore.communicate(timeout=60)
    comm = Path("/proc/self/comm").read_text().strip()
    assert said == (
        f"dbguardctl: waiting up to 30 s for pid {os.getpid()} ({comm}) to end its "
        f"transaction on {database} ...\n"
    ), said + err.decode()
    assert restore.returncode == 0 and b"waiting" not in err, err  # said once
    assert f"restored {backup_id}".encode() in out


def test_restore_over_a_wal_database_of_another_page_size(tmp_path: Path, engines: Engines) -> None:
    """SQLite will not copy pages of another size into a WAL database ('attempt to write
    a readonly database'); the restore's scratch copy takes the target's size."""
    db, target, store, manifest = backed_up(tmp_path, engines)
    expected = rows(db)
    engines.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM items")
    conn.execute("PRAGMA page_size = 8192")
    conn.execute("VACUUM")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()

    operations.restore_backup(store, engines, manifest, target, REASON)

    assert rows(db) == expected
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert check.execute("PRAGMA page_size").fetchone()[0] == 8192
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


HOLD_WAL = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("SELECT count(*) FROM items").fetchone()  # every WAL reader locks the -shm
if sys.argv[2] == "writer":
    conn.execute("BEGIN IMMEDIATE")  # the write lock a restore waits for
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_wal_restore_names_the_writer_not_the_idle_readers(
    tmp_path: Path, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "app.sqlite"
    target = make_db(db, wal=True)
    store = Store(tmp_path / "b")
    manifest = operations.take_backup(store, engines, target, REASON)
    monkeypatch.setattr(sqlite_engine, "_RESTORE_LOCK_WAIT", 0.5)
    writer, reader = (
        subprocess.Popen(
            [sys.executable, "-c", HOLD_WAL, str(db), role],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for role in ("writer", "reader")
    )
    try:
        for process in (writer, reader):
            assert process.stdout is not None and process.stdout.readline() == b"holding\n"
        with pytest.raises(RestoreFailed, match="stayed in use") as failed:
            operations.restore_backup(store, engines, manifest, target, REASON)
    finally:
        writer.communicate(b"")
        reader.communicate(b"")
    assert f"pid {writer.pid} (python" in failed.value.problem
    assert f"pid {reader.pid}" not in failed.value.problem


def test_restore_into_a_deleted_database_gives_it_the_usual_mode(
    tmp_path: Path, engines: Engines
) -> None:
    db, target, store, manifest = backed_up(tmp_path, engines)
    db.unlink()
    old_umask = os.umask(0o022)
    try:
        operations.restore_backup(store, engines, manifest, target, REASON)
    finally:
        os.umask(old_umask)
    assert len(rows(db)) == 100
    assert db.stat().st_mode & 0o777 == 0o644  # what SQLite gives a new file, not 0600


def test_restore_through_a_link_whose_file_is_gone_keeps_the_link(
    tmp_path: Path, engines: Engines
) -> None:
    (tmp_path / "data").mkdir()
    real, link = tmp_path / "data" / "app.sqlite", tmp_path / "app.sqlite"
    make_db(real)
    link.symlink_to(real)
    target = Target(engine="sqlite", path=str(link))
    store = Store(tmp_path / "b")
    manifest = operations.take_backup(store, engines, target, REASON)
    engines.close()
    real.unlink()

    operations.restore_backup(store, engines, manifest, target, REASON)
    assert link.is_symlink()
    assert len(rows(real)) == 100


def test_restore_into_a_folder_that_cannot_be_written_says_what_to_fix(
    tmp_path: Path, engines: Engines
) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    db = folder / "app.sqlite"
    target = make_db(db)
    store = Store(tmp_path / "b")
    manifest = operations.take_backup(store, engines, target, REASON)
    engines.close()
    gone = Target(engine="sqlite", path=str(tmp_path / "missing" / "app.sqlite"))
    with pytest.raises(RestoreFailed, match="does not exist") as failed:
        operations.restore_backup(store, engines, manifest, gone, REASON)
    assert "create it" in str(failed.value.fix)

    folder.chmod(0o500)
    subprocess.run(["chattr", "+i", str(folder)], check=False)  # root ignores mode bits
    try:
        if os.access(folder, os.W_OK) and not _immutable(folder):
            pytest.skip("this user can write to a read-only folder (root without chattr)")
        with pytest.raises(RestoreFailed) as failed:
            operations.restore_backup(store, engines, manifest, target, REASON)
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)
        folder.chmod(0o700)
    assert "writable" in str(failed.value.fix) and "not changed" in str(failed.value.fix)


def _immutable(path: Path) -> bool:
    listed = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, check=False)
    return listed.returncode == 0 and "i" in listed.stdout.split()[0].decode()


def test_restore_over_a_broken_file_says_to_move_it_aside_first(
    tmp_path: Path, engines: Engines
) -> None:
    db, target, store, manifest = backed_up(tmp_path, engines)
    engines.close()
    junk = os.urandom(8192)  # a test run that wrote over the file
    db.write_bytes(junk)

    with pytest.raises(RestoreFailed, match="is not an SQLite database") as failed:
        operations.restore_backup(store, engines, manifest, target, REASON)
    assert f"mv {db} {db}.broken" in str(failed.value.fix)
    assert db.read_bytes() == junk  # nothing replaced without a copy

    db.rename(f"{db}.broken")
    operations.restore_backup(store, engines, manifest, target, REASON)
    assert len(rows(db)) == 100


def test_a_restore_that_finds_the_dump_cut_short_records_it_and_changes_nothing(
    tmp_path: Path, engines: Engines
) -> None:
    db, target, store, manifest = backed_up(tmp_path, engines)
    execute(db, "DELETE FROM items WHERE id > 10")
    before = rows(db)
    manifest = cut_short_keeping_checksum(store, manifest)

    with pytest.raises(Damaged) as damaged:
        operations.restore_backup(store, engines, manifest, target, REASON)

    assert "ends after" in damaged.value.problem
    assert "the database was not changed" in damaged.value.fix
    assert rows(db) == before
    recorded = store.get(manifest.id).verified
    assert recorded is not None and not recorded.ok  # no longer taken for a good backup


def test_verify_catches_a_manifest_that_disagrees(tmp_path: Path, engines: Engines) -> None:
    target = make_db(tmp_path / "app.sqlite")
    store = Store(tmp_path / "b")
    manifest = operations.take_backup(store, engines, target, REASON)
    lying = store.update(manifest, tables={"items": 101, 'odd "name': 0})
    result = operations.verify_backup(store, engines, lying)
    assert not result.ok
    assert result.problems == ["table items: 100 rows restored, manifest says 101"]
    assert store.get(manifest.id).verified == result  # recorded in the manifest


@pytest.mark.parametrize("deleted", [False, True], ids=["copied in", "created by rename"])
def test_swapped_is_called_once_the_target_holds_the_backup(
    tmp_path: Path, engines: Engines, deleted: bool
) -> None:
    db, target, store, manifest = backed_up(tmp_path, engines)
    execute(db, "DELETE FROM items WHERE id > 10")
    if deleted:
        db.unlink()
    seen: list[int] = []
    operations.restore_backup(
        store, engines, manifest, target, REASON, swapped=lambda: seen.append(len(rows(db)))
    )
    assert seen == [100]  # called once, when the rows were already back

    # A restore that fails before its swap never says it swapped.
    with pytest.raises((RestoreFailed, Damaged)), store.open_data(manifest) as data:
        engines.for_target(target).restore(
            target,
            io.BytesIO(data.read()[:100]),
            manifest.data.format,
            tmp_path,
            swapped=lambda: seen.append(-1),
        )
    assert seen == [100]


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_a_restore_keeps_the_databases_environment_mark(
    tmp_path: Path, engines: Engines, wal: bool
) -> None:
    """The mark belongs to the database, as PostgreSQL's database setting does: a backup
    taken before `mark production` must not bring the database back unmarked."""
    db = tmp_path / "app.sqlite"
    target = make_db(db, wal=wal)
    store = Store(tmp_path / "b")
    engine = engines.for_target(target)
    manifest = operations.take_backup(store, engines, target, REASON)  # unmarked
    engine.set_marker(target, "production")
    expected = rows(db)
    execute(db, "DELETE FROM items")

    operations.restore_backup(store, engines, manifest, target, REASON)

    assert rows(db) == expected
    assert engine.marker(target) == "production"
    engine.set_marker(target, "development")
    marked = operations.take_backup(store, engines, target, REASON)
    engine.set_marker(target, None)
    operations.restore_backup(store, engines, marked, target, REASON)
    assert engine.marker(target) == "development"  # an unmarked database takes the backup's


def test_a_stop_during_the_copy_says_truly_whether_the_database_changed(
    tmp_path: Path, engines: Engines
) -> None:
    """^C (or SIGTERM, as dbguardctl restore turns it into one) that arrives while the
    copy runs: the copy commits in its last step, and a KeyboardInterrupt raised after
    that must come with `swapped` called, or dbguardctl says "was not changed" of a
    database that holds the backup."""
    db = tmp_path / "app.sqlite"
    target = make_db(db, rows=60_000)  # a copy long enough to be caught in the middle
    store = Store(tmp_path / "b")
    manifest = operations.take_backup(store, engines, target, REASON)
    execute(db, "DELETE FROM items WHERE id % 2 = 0")
    journal = Path(f"{db}-journal")
    ready = threading.Event()

    def stop_mid_copy() -> None:
        ready.set()
        deadline = time.monotonic() + 30
        while not journal.exists() and time.monotonic() < deadline:
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGINT)

    seen: list[bool] = []
    stopper = threading.Thread(target=stop_mid_copy)
    stopper.start()
    ready.wait()
    try:
        with pytest.raises(KeyboardInterrupt):
            operations.restore_backup(
                store, engines, manifest, target, REASON, swapped=lambda: seen.append(True)
            )
    finally:
        stopper.join()
    restored = len(rows(db)) == 60_000
    assert restored == bool(seen), (restored, seen)
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_path_that_is_no_utf8_is_backed_up_and_restored(tmp_path: Path, engines: Engines) -> None:
    """A folder named in Latin-1 (or any bytes) reaches Python with surrogate escapes; the
    database there is backed up, checked and restored like any other, not a crash."""
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    db = folder / "app.sqlite"
    target = make_db(db)
    store = Store(tmp_path / "b")
    engine = engines.for_target(target)
    assert engine.marker(target) is None
    manifest = operations.take_backup(store, engines, target, REASON)
    expected = rows(db)
    execute(db, "DELETE FROM items")

    assert operations.verify_backup(store, engines, manifest).ok
    operations.restore_backup(store, engines, manifest, target, REASON)
    assert rows(db) == expected


def test_marking_a_database_that_is_not_there_says_so(tmp_path: Path, engines: Engines) -> None:
    target = Target(engine="sqlite", path=str(tmp_path / "absent.sqlite"), source="test")
    with pytest.raises(DatabaseMissing, match="does not exist") as caught:
        engines.for_target(target).set_marker(target, "production")
    assert "create it first" in caught.value.fix
    assert not (tmp_path / "absent.sqlite").exists()
    folderless = Target(engine="sqlite", path=str(tmp_path / "no" / "a.sqlite"), source="test")
    with pytest.raises(DatabaseMissing):
        engines.for_target(folderless).set_marker(folderless, "production")


def failing_scratch_opens(monkeypatch: pytest.MonkeyPatch, code: int, text: str) -> None:
    """SQLite fails to open any copy in the store's work folder as it would on a full or
    failing disk (the database itself still opens)."""
    connect = sqlite_engine._connect

    def refuse(path: str | Path, **kwargs: object) -> sqlite3.Connection:
        if "/.tmp/" in str(path):
            error = sqlite3.OperationalError(text)
            error.sqlite_errorcode = code
            raise error
        return connect(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_engine, "_connect", refuse)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (4618, "disk I/O error"),  # SQLITE_IOERR_SHMOPEN
        (sqlite3.SQLITE_FULL, "database or disk is full"),
        (sqlite3.SQLITE_CANTOPEN, "unable to open database file"),
    ],
)
def test_a_failing_disk_during_verify_or_restore_is_no_damage_of_the_backup(
    tmp_path: Path, engines: Engines, monkeypatch: pytest.MonkeyPatch, code: int, text: str
) -> None:
    db, target, store, manifest = backed_up(tmp_path, engines)
    failing_scratch_opens(monkeypatch, code, text)

    with pytest.raises(RestoreFailed) as verifying:
        operations.verify_backup(store, engines, manifest)
    db.unlink()
    with pytest.raises(RestoreFailed) as restoring:
        operations.restore_backup(store, engines, manifest, target, REASON)

    for caught in (verifying, restoring):
        message = str(caught.value)
        assert text in message and str(store.root) in message, message
        assert "free some space" in message, message
        assert "not damaged" in message or "not marked" in message, message
    assert store.get(manifest.id).verified is None  # neither passed nor failed
    assert not db.exists()
    monkeypatch.undo()
    assert operations.verify_backup(store, engines, manifest).ok


def test_a_backup_that_is_no_sqlite_database_fails_verify(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    target = Target(engine="sqlite", path=str(tmp_path / "app.sqlite"), source="test")
    with store.new_backup(target) as pending:
        with pending.data_writer("data.sqlite", threading.Event()) as sink:
            sink.write(b"SQLite format 3\0" + b"\xff" * 8192)
        manifest = pending.commit(
            DumpInfo(tables={"t": 1}, fingerprint=None, tool="t", format="sqlite-file"),
            REASON,
        )
    engines = Engines()
    try:
        result = operations.verify_backup(store, engines, manifest)
    finally:
        engines.close()
    assert not result.ok
    assert store.get(manifest.id).verified == result


def test_the_daemons_background_verify_on_a_failing_disk_records_nothing_and_tells_no_one(
    tmp_path: Path, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It runs by itself when dbguardd is idle: a full disk then must not brand a good
    backup FAILED, nor send a verify_failed alert."""
    _, _, store, manifest = backed_up(tmp_path, engines)
    sent: list[dict[str, object]] = []
    guard = SimpleNamespace(
        store=store, engines=engines, env={}, notifier=SimpleNamespace(send_soon=sent.append)
    )
    verifier = BackgroundVerifier(cast("Guard", guard))
    failing_scratch_opens(monkeypatch, 4618, "disk I/O error")
    try:
        with pytest.raises(RestoreFailed):  # run() logs it as "could not run"
            verifier._verify(manifest)
        assert sent == []
        assert store.get(manifest.id).verified is None
        assert verifier._candidates() == [store.get(manifest.id)]  # tried again when idle
    finally:
        verifier._pool.shutdown()

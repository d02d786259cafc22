"""The SQLite engine on real files: consistency, change signal, restore, verify."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbguard import operations
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.engines.sqlite import SqliteEngine
from dbguard.errors import BackupFailed, DatabaseMissing
from dbguard.store import Reason, Store

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


def test_restore_while_another_connection_is_open(tmp_path: Path, engines: Engines) -> None:
    db = tmp_path / "app.sqlite"
    target = make_db(db)
    store = Store(tmp_path / "b")
    manifest = operations.take_backup(store, engines, target, REASON)
    execute(db, "DELETE FROM items")
    reader = sqlite3.connect(db)
    try:
        operations.restore_backup(store, engines, manifest, target, REASON)
        assert reader.execute("SELECT count(*) FROM items").fetchone()[0] == 100
    finally:
        reader.close()


def test_verify_catches_a_manifest_that_disagrees(tmp_path: Path, engines: Engines) -> None:
    target = make_db(tmp_path / "app.sqlite")
    store = Store(tmp_path / "b")
    manifest = operations.take_backup(store, engines, target, REASON)
    lying = store.update(manifest, tables={"items": 101, 'odd "name': 0})
    result = operations.verify_backup(store, engines, lying)
    assert not result.ok
    assert result.problems == ["table items: 100 rows restored, manifest says 101"]
    assert store.get(manifest.id).verified == result  # recorded in the manifest

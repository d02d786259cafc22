"""Retention and space on a real store: real SQLite databases, real backups, real files."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbguard import operations
from dbguard.ctl import pin, prune
from dbguard.ctl.context import Context
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.errors import BackupFailed, NotFound, RestoreFailed
from dbguard.retention import RetentionSettings, SpaceSettings
from dbguard.space import (
    LOCK_FILE,
    DiskUsage,
    current_raw_size,
    disk_usage,
    ensure_space_for_backup,
    estimate_backup_size,
    plan_store,
    prune_after_backup,
    record_of,
    retention_lock,
)
from dbguard.space import (
    prune as prune_store,
)
from dbguard.store import Manifest, Reason, Store

KEEP_ONE = RetentionSettings(keep_last=1, hourly=0, daily=0, weekly=0, monthly=0)
NOW = datetime.now(UTC)


@pytest.fixture
def engines() -> Iterator[Engines]:
    found = Engines()
    yield found
    found.close()


def sqlite_db(path: Path, kilobytes: int = 16) -> Target:
    """A SQLite database holding `kilobytes` of random (incompressible) data."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS blobs (data BLOB)")
        conn.executemany(
            "INSERT INTO blobs VALUES (?)", [(os.urandom(1024),) for _ in range(kilobytes)]
        )
        conn.commit()
    return Target(engine="sqlite", path=str(path), source="test")


def backup(
    store: Store, engines: Engines, target: Target, operation_kind: str = "test"
) -> Manifest:
    reason = Reason(kind="command", argv=["pytest"], operation_kind=operation_kind)
    return operations.take_backup(store, engines, target, reason)


def on_disk(store: Store) -> set[str]:
    return {p.name for folder in store.root.iterdir() if folder.is_dir() for p in folder.iterdir()}


# ---- prune ---------------------------------------------------------------------


def test_prune_removes_folders_and_keeps_pinned_and_newest(
    tmp_path: Path, engines: Engines
) -> None:
    store = Store(tmp_path / "backups")
    app, blog = sqlite_db(tmp_path / "app.sqlite"), sqlite_db(tmp_path / "blog.sqlite")
    app_backups = [backup(store, engines, sqlite_db(Path(app.path or ""), 4)) for _ in range(4)]
    blog_backups = [backup(store, engines, blog) for _ in range(2)]
    pinned = store.update(app_backups[0], pinned=True)

    removed = prune_store(store, KEEP_ONE, NOW)

    assert {m.id for m in removed} == {app_backups[1].id, app_backups[2].id, blog_backups[0].id}
    left = {m.id for m in store.manifests()}
    assert left == {pinned.id, app_backups[3].id, blog_backups[1].id}
    assert on_disk(store) - {".tmp"} >= left
    assert not any(store.folder(m).exists() for m in removed)
    assert not [p for p in store.tmp.iterdir() if p.name.startswith("deleted-")]
    assert (store.root / LOCK_FILE).stat().st_mode & 0o077 == 0


def test_prune_after_backup_needs_a_backup_that_is_in_the_store(
    tmp_path: Path, engines: Engines
) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite")
    first, second = backup(store, engines, target), backup(store, engines, target)
    elsewhere = backup(Store(tmp_path / "other"), engines, target)

    assert prune_after_backup(store, KEEP_ONE, elsewhere) == []
    assert len(store.manifests()) == 2

    assert [m.id for m in prune_after_backup(store, KEEP_ONE, second)] == [first.id]
    assert [m.id for m in store.manifests()] == [second.id]


def test_prune_leaves_damaged_backups_for_a_person(tmp_path: Path, engines: Engines) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite")
    broken = backup(store, engines, target)
    backup(store, engines, target)
    (store.folder(broken) / "manifest.json").write_text("{not json")

    assert prune_store(store, KEEP_ONE, NOW) == []
    assert store.folder(broken).exists()


def corrupt_newest(tmp_path: Path, engines: Engines) -> tuple[Store, Target, Manifest, Manifest]:
    """Two backups of one database, the newer one (the smaller) with a flipped byte:
    bit rot keeps the size, only the checksum knows. Returns the store, the database,
    the older and the newer backup."""
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite")
    older = backup(store, engines, target)
    newest = backup(store, engines, sqlite_db(Path(target.path or ""), 4))
    data = store.folder(newest) / newest.data.file
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    return store, target, older, newest


def test_a_newest_backup_whose_checksum_fails_does_not_cost_the_intact_one(
    tmp_path: Path, engines: Engines
) -> None:
    """It was kept as the newest good backup, and the cap removed the older intact one."""
    store, _, older, newest = corrupt_newest(tmp_path, engines)
    cap = RetentionSettings(max_total_bytes=newest.data.size + 1)

    preview, _ = plan_store(Store(store.root), cap, NOW)  # as `prune --dry-run` sees it
    removed = prune_store(Store(store.root), cap, NOW)  # as `dbguardctl prune` runs

    assert [r.id for r in preview.delete] == [newest.id]
    assert [m.id for m in removed] == [newest.id]  # the damaged one, over the cap
    assert [m.id for m in store.manifests()] == [older.id]
    assert store.checksum_mismatch(older) is None


def test_the_protected_newest_good_is_checked_and_a_mismatch_recorded(
    tmp_path: Path, engines: Engines
) -> None:
    store, target, older, newest = corrupt_newest(tmp_path, engines)

    preview, _ = plan_store(Store(store.root), KEEP_ONE, NOW)
    assert [r.id for r in preview.delete] == []  # the older one is kept in its stead ...
    assert store.get(newest.id).verified is None  # ... and a preview writes nothing
    assert prune_store(Store(store.root), KEEP_ONE, NOW) == []
    verified = store.get(newest.id).verified
    assert verified is not None and not verified.ok
    assert "checksum mismatch" in verified.problems[0]
    assert store.newest(target) == store.get(older.id)
    assert store.get(older.id).verified is None  # never found bad, never marked


def test_a_prune_reads_only_the_newest_good_backup_of_a_database_it_removes_from(
    tmp_path: Path, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "backups")
    app, blog = sqlite_db(tmp_path / "app.sqlite"), sqlite_db(tmp_path / "blog.sqlite")
    app_backups = [backup(store, engines, app) for _ in range(3)]
    blog_backup = backup(store, engines, blog)
    read: list[str] = []
    hashed = Store.checksum_mismatch

    def counting(self: Store, manifest: Manifest) -> str | None:
        read.append(manifest.id)
        return hashed(self, manifest)

    monkeypatch.setattr(Store, "checksum_mismatch", counting)

    assert prune_store(Store(store.root), RetentionSettings(), NOW) == []
    assert read == []  # nothing removed: nothing read
    removed = prune_store(Store(store.root), KEEP_ONE, NOW)
    assert {m.id for m in removed} == {app_backups[0].id, app_backups[1].id}
    assert read == [app_backups[2].id]  # not the blog's: nothing of it goes
    assert {m.id for m in store.manifests()} == {app_backups[2].id, blog_backup.id}


def test_the_clock_going_backwards_on_a_real_store(tmp_path: Path, engines: Engines) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite")
    taken = [backup(store, engines, target) for _ in range(4)]
    # The clock went back a day after the second backup, and the very first one was
    # taken while it was a year ahead, before a destructive command.
    when = [NOW + timedelta(days=365), NOW, NOW - timedelta(days=1), NOW - timedelta(hours=23)]
    taken = [store.update(m, created_at=at) for m, at in zip(taken, when, strict=True)]
    destructive = store.update(
        taken[0], reason=taken[0].reason.model_copy(update={"operation_kind": "destructive"})
    )

    # Listing follows the commit order, not the timestamps.
    assert [m.id for m in store.manifests()] == [m.id for m in reversed(taken)]
    removed = prune_store(store, KEEP_ONE, NOW)

    left = {m.id for m in store.manifests()}
    assert taken[3].id in left  # the newest commit, though not the newest timestamp
    assert destructive.id in left  # dated in the future: counts as brand new, protected
    assert {m.id for m in removed} == {taken[1].id, taken[2].id}


# ---- space ---------------------------------------------------------------------


def test_estimate_scales_the_previous_backup_by_the_database_growth(
    tmp_path: Path, engines: Engines
) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite", 64)
    previous = backup(store, engines, target)
    raw_then = current_raw_size(target)
    assert raw_then == previous.data.raw_size  # a SQLite dump is the file itself
    sqlite_db(Path(target.path or ""), 64)  # the database doubles
    raw_now = current_raw_size(target)
    assert raw_now is not None and raw_now > 1.8 * raw_then

    estimate = estimate_backup_size(previous, raw_now, 999)
    assert estimate == int(previous.data.size * raw_now / previous.data.raw_size * 1.25)
    assert estimate_backup_size(previous, None, 999) == int(previous.data.size * 1.25)
    assert estimate_backup_size(None, raw_now, 999) == raw_now
    assert estimate_backup_size(None, None, 999) == 999
    missing = Target(engine="sqlite", path=str(tmp_path / "nope.sqlite"))
    assert current_raw_size(missing) is None
    assert current_raw_size(Target(engine="postgres", name="app")) is None


class Filesystem:
    """A free-space reading tied to the real store: a pretend disk of `size` bytes
    holding the store's real files plus `other` bytes of someone else's."""

    def __init__(self, store: Store, size: int, other: int = 0) -> None:
        self.store = store
        self.size = size
        self.other = other
        self.readings = 0

    def __call__(self, path: Path) -> DiskUsage:
        assert path == self.store.root
        self.readings += 1
        used = sum(f.stat().st_size for f in self.store.root.rglob("*") if f.is_file())
        return DiskUsage(total=self.size, free=self.size - used - self.other)


def test_enough_space_means_no_pruning(tmp_path: Path, engines: Engines) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite", 100)
    for _ in range(3):
        backup(store, engines, target)
    disk = Filesystem(store, size=100_000_000)

    check = ensure_space_for_backup(
        store, target, KEEP_ONE, SpaceSettings(min_free_bytes=1_000_000), usage=disk
    )

    assert check.pruned == []
    assert len(store.manifests()) == 3
    assert check.floor == 1_000_000
    assert 100_000 < check.estimate < 200_000
    assert disk.readings == 1


def test_low_space_prunes_what_policy_allows_then_passes(tmp_path: Path, engines: Engines) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite", 100)
    taken = [backup(store, engines, target) for _ in range(4)]  # about 100 KB each
    space = SpaceSettings(min_free_bytes=300_000, min_free_percent=100)
    disk = Filesystem(store, size=2_000_000, other=1_300_000)  # about 300 KB free

    check = ensure_space_for_backup(store, target, KEEP_ONE, space, NOW, usage=disk)

    assert {m.id for m in check.pruned} == {m.id for m in taken[:3]}
    assert [m.id for m in store.manifests()] == [taken[3].id]
    assert check.free - check.estimate >= check.floor
    assert disk.readings == 2


def test_still_no_space_fails_the_backup_and_says_how_much_and_where(
    tmp_path: Path, engines: Engines
) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite", 100)
    taken = [backup(store, engines, target) for _ in range(2)]
    store.update(taken[0], pinned=True)
    space = SpaceSettings(min_free_bytes=300_000, min_free_percent=100)
    disk = Filesystem(store, size=2_000_000, other=1_500_000)

    with pytest.raises(BackupFailed) as failed:
        ensure_space_for_backup(store, target, KEEP_ONE, space, NOW, usage=disk)

    message = str(failed.value)
    assert f"in {store.root}" in failed.value.problem
    assert "needs about 1" in failed.value.problem  # about 125 KB: 100 KB + 25 % growth
    assert "300.0 KB must stay free" in failed.value.problem
    assert "free at least" in failed.value.fix
    assert "dbguardctl prune --dry-run" in message
    assert len(store.manifests()) == 2  # pinned and newest: nothing policy may remove


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, for a real full-disk reading; skipped where mounting is denied."""
    where = tmp_path / "tiny"
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_restore_stopped_by_a_full_disk_leaves_the_database_file_as_it_was(
    tiny_filesystem: Path, tmp_path: Path, engines: Engines
) -> None:
    """The copy grows the file and journals its old pages; stopped by the full disk, it
    left that journal hot, and the file alone (a copy of it, or the file once the
    journal is deleted as clutter) was a corrupt database."""
    db = tiny_filesystem / "app.sqlite"
    target = sqlite_db(db, 2 * 1024)
    store = Store(tmp_path / "backups")
    taken = backup(store, engines, target)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("DELETE FROM blobs WHERE rowid > 10")
        conn.commit()
        conn.execute("VACUUM")
    before = db.read_bytes()
    filler = tiny_filesystem / "filler"
    with filler.open("wb") as file, contextlib.suppress(OSError):
        while True:  # until the filesystem is full
            file.write(b"\0" * 65536)
            file.flush()
    filler.write_bytes(b"\0" * (filler.stat().st_size - 512 * 1024))  # 512 KiB free

    with pytest.raises(RestoreFailed) as failed:
        operations.restore_backup(store, engines, taken, target, Reason(kind="manual"))

    assert "no space left" in failed.value.problem
    assert "the database was not changed" in failed.value.fix
    assert not Path(f"{db}-journal").exists()
    assert db.read_bytes() == before


def test_a_really_full_filesystem(tiny_filesystem: Path, tmp_path: Path, engines: Engines) -> None:
    store = Store(tiny_filesystem / "backups")
    target = sqlite_db(tmp_path / "app.sqlite", 1024)  # 1 MiB that does not compress
    taken = [backup(store, engines, target) for _ in range(4)]
    # The smaller of 1 GB and 25 % of 8 MiB: 2 MiB must stay free.
    space = SpaceSettings(min_free_percent=25)
    assert disk_usage(store.root).total == 8 * 1024 * 1024

    with (tiny_filesystem / "filler").open("wb") as filler:
        filler.write(b"\0" * 1_500_000)
    check = ensure_space_for_backup(store, target, KEEP_ONE, space, NOW)
    assert {m.id for m in check.pruned} == {m.id for m in taken[:3]}
    assert check.floor == 2 * 1024 * 1024

    with (tiny_filesystem / "filler").open("ab") as filler:
        filler.write(b"\0" * 4_000_000)
    with pytest.raises(BackupFailed, match="not enough space for a backup of sqlite"):
        ensure_space_for_backup(store, target, KEEP_ONE, space, NOW)
    assert [m.id for m in store.manifests()] == [taken[3].id]


def test_free_space_of_a_folder_not_made_yet(tmp_path: Path) -> None:
    reading = disk_usage(tmp_path / "not" / "there" / "yet")
    assert reading.total > 0 and 0 <= reading.free <= reading.total


# ---- dbguardctl pin, unpin, prune ----------------------------------------------


def ctl(tmp_path: Path, *argv: str) -> tuple[int, str]:
    """Run a subcommand the way dbguardctl's main does, against a config in tmp_path."""
    config = tmp_path / "config.toml"
    if not config.exists():
        config.write_text(f'backup_dir = "{tmp_path / "backups"}"\n')
    top = argparse.ArgumentParser(prog="dbguardctl")
    commands = top.add_subparsers(dest="command", required=True)
    modules = {"pin": pin, "unpin": pin, "prune": prune}
    for name, module in modules.items():
        module.configure(commands.add_parser(name))
    args = top.parse_args(list(argv))
    out = io.StringIO()
    ctx = Context(env={"HOME": str(tmp_path)}, config_file=str(config), out=out)
    code = modules[args.command].run(args, ctx)
    return code, out.getvalue()


def test_pin_says_so_while_another_process_holds_the_retention_lock(
    tmp_path: Path, engines: Engines
) -> None:
    """It once waited without a word (29 s behind a prune in the fault tests)."""
    store = Store(tmp_path / "backups")
    taken = backup(store, engines, sqlite_db(tmp_path / "app.sqlite"))
    config = tmp_path / "config.toml"
    config.write_text(f'backup_dir = "{store.root}"\n')
    holder = os.open(store.root / ".retention.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        pinning = subprocess.Popen(
            [sys.executable, "-m", "dbguard.ctl.main", "--config", str(config), "pin", taken.id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert pinning.stderr is not None
        # It cannot go on while we hold the lock: it either says so or stays silent.
        ready, _, _ = select.select([pinning.stderr], [], [], 30)
        assert ready, "pin waits for the lock without a word"
        said = pinning.stderr.readline().decode()
        assert f"waiting for another dbguard process to let go of {store.root}" in said
        assert pinning.poll() is None and not store.get(taken.id).pinned
    finally:
        os.close(holder)
    _, err = pinning.communicate(timeout=60)
    assert pinning.returncode == 0, err
    assert store.get(taken.id).pinned


def test_pin_and_unpin(tmp_path: Path, engines: Engines) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite")
    old, new = backup(store, engines, target), backup(store, engines, target)

    code, out = ctl(tmp_path, "pin", old.id[:5])
    assert code == 0
    assert f"backup {old.id} of {target.label}" in out and "pinned" in out
    assert store.get(old.id).pinned
    raw = json.loads((store.folder(old) / "manifest.json").read_text())
    assert raw["pinned"] is True and raw["seq"] == old.seq  # the rest is untouched

    code, out = ctl(tmp_path, "pin", old.id)
    assert "was already pinned" in out

    code, out = ctl(tmp_path, "unpin", old.id, "--json")
    assert json.loads(out) == {
        "id": old.id,
        "pinned": False,
        "changed": True,
        "note": "retention keeps it for now; `dbguardctl prune --dry-run` says why",
    }
    assert not store.get(old.id).pinned
    assert store.get(new.id) == new


def test_unpin_says_when_the_next_prune_removes_it(tmp_path: Path, engines: Engines) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite")
    old = store.update(backup(store, engines, target), pinned=True)
    for _ in range(11):  # more than the default keep_last, all in this hour and day
        backup(store, engines, target)
    code, out = ctl(tmp_path, "unpin", old.id)
    assert code == 0
    assert "unpinned: the next prune will remove it" in out


def test_pin_rejects_unknown_and_tricky_ids(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        ctl(tmp_path, "pin", "abcd")
    with pytest.raises(SystemExit):
        ctl(tmp_path, "pin", "../../etc")


def test_prune_dry_run_removes_nothing_and_says_why(tmp_path: Path, engines: Engines) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite")
    taken = [backup(store, engines, target) for _ in range(11)]  # default keep_last is 10

    code, out = ctl(tmp_path, "prune", "--dry-run", "--json")
    report = json.loads(out)
    assert code == 0 and report["dry_run"] is True
    assert [e["id"] for e in report["remove"]] == [taken[0].id]
    assert "not one of the last 10" in report["remove"][0]["reasons"][0]
    newest = report["kept"][0]
    assert newest["id"] == taken[-1].id and newest["protected"] is True
    assert "newest good backup of this database" in newest["reasons"]
    assert len(store.manifests()) == 11

    code, out = ctl(tmp_path, "prune", "--dry-run")
    assert "would remove 1 backup (" in out
    assert f"REMOVE  {taken[0].id}" in out

    code, out = ctl(tmp_path, "prune")
    assert code == 0 and f"REMOVED  {taken[0].id}" in out
    assert [m.id for m in store.manifests()] == [m.id for m in reversed(taken[1:])]


def test_the_retention_lock_is_one_at_a_time(tmp_path: Path) -> None:
    store = Store(tmp_path / "backups")
    with retention_lock(store):
        other = os.open(store.root / LOCK_FILE, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    other = os.open(store.root / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit
    finally:
        os.close(other)


def test_records_carry_what_retention_needs(tmp_path: Path, engines: Engines) -> None:
    store = Store(tmp_path / "backups")
    target = sqlite_db(tmp_path / "app.sqlite")
    taken = backup(store, engines, target, operation_kind="destructive")
    record = record_of(taken)
    assert (record.id, record.seq, record.size) == (taken.id, taken.seq, taken.data.size)
    assert record.pre_destructive and not record.pinned and record.good
    assert record.database_label == target.label

    test_run = record_of(backup(store, engines, target, operation_kind="test"))
    assert not test_run.pre_destructive
    before_restore = taken.model_copy(update={"reason": Reason(kind="pre-restore")})
    assert record_of(before_restore).pre_destructive

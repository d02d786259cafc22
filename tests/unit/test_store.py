"""The store on real files: complete-by-construction backups, damage detection, ids."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbguard import store as store_module
from dbguard.engines.base import DumpInfo, Target
from dbguard.errors import BackupFailed, Cancelled, Damaged, NotFound
from dbguard.store import (
    DamagedBackup,
    Manifest,
    Reason,
    Store,
    Unfinished,
    Verification,
    check_id,
)
from tests.helpers import cut_short_keeping_checksum

TARGET = Target(engine="sqlite", path="/srv/app/database.sqlite", source="test")
INFO = DumpInfo(tables={"users": 3}, fingerprint="fp1", tool="test", format="raw")
REASON = Reason(kind="manual")


def backup(store: Store, payload: bytes = b"x" * 5000, target: Target = TARGET) -> Manifest:
    with store.new_backup(target) as pending:
        with pending.data_writer("data.raw", threading.Event()) as sink:
            sink.write(payload)
        return pending.commit(INFO, REASON)


def test_a_committed_backup_is_listed_and_reads_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    manifest = backup(store, b"hello " * 1000)

    assert store.entries() == [manifest]
    assert store.newest(TARGET) == manifest
    assert manifest.data.raw_size == 6000
    assert store.checksum_mismatch(manifest) is None
    with store.open_data(manifest) as data:
        assert data.read() == b"hello " * 1000
    assert list(store.tmp.iterdir()) == []


def test_a_failed_backup_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    with pytest.raises(RuntimeError), store.new_backup(TARGET) as pending:
        with pending.data_writer("data.raw", threading.Event()) as sink:
            sink.write(b"partial")
        raise RuntimeError("dump tool died")
    assert store.entries() == []
    assert list(store.tmp.iterdir()) == []


def test_writeback_starts_early_for_every_part_of_a_large_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(
        "dbguard.store._start_writeback", lambda fd, offset, n: started.append((offset, n))
    )
    store = Store(tmp_path / "b")
    payload = os.urandom(3 * store_module._WRITEBACK_STEP)  # incompressible: ~3 steps on disk
    manifest = backup(store, payload)

    assert len(started) >= 2
    assert started[0][0] == 0
    for (offset, n), (next_offset, _) in itertools.pairwise(started):
        assert next_offset == offset + n  # no part skipped, none asked twice
    assert all(n >= store_module._WRITEBACK_STEP for _, n in started)
    assert started[-1][0] + started[-1][1] <= manifest.data.size
    with store.open_data(manifest) as data:
        assert data.read() == payload


def test_an_empty_dump_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    with pytest.raises(BackupFailed, match="empty"), store.new_backup(TARGET) as pending:
        with pending.data_writer("data.raw", threading.Event()):
            pass
        pending.commit(INFO, REASON)
    assert store.entries() == []


def test_cancel_stops_the_writer(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    cancel = threading.Event()
    with (
        pytest.raises(Cancelled),
        store.new_backup(TARGET) as pending,
        pending.data_writer("data.raw", cancel) as sink,
    ):
        sink.write(b"a")
        cancel.set()
        sink.write(b"b")
    assert store.entries() == []


def test_order_follows_commits_not_the_clock(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    first = backup(store)
    second = backup(store)
    # Rewind the second backup's clock: it must still list as the newest.
    store.update(second, created_at=first.created_at.replace(year=2000))
    assert [m.id for m in store.manifests()] == [second.id, first.id]


def test_a_commit_counter_set_back_still_numbers_new_backups_above_old_ones(
    tmp_path: Path,
) -> None:
    """A .seq restored from an old copy once made the next backup rank oldest, first
    in line for pruning."""
    store = Store(tmp_path / "b")
    backup(store)
    for each in (store, Store(tmp_path / "b")):  # this process, and a new one
        (store.root / ".seq").write_text("1")
        newest = each.newest(TARGET)  # read before a backup, as the daemon does
        assert newest is not None
        taken = backup(each)
        assert taken.seq > newest.seq
        assert each.manifests(TARGET)[0] == taken == each.newest(TARGET)
    # A new process whose first backup is of a database it has not read yet.
    other = TARGET.model_copy(update={"key": "sqlite:/other.sqlite", "path": "/other.sqlite"})
    (store.root / ".seq").write_text("1")
    first_of_other = backup(Store(tmp_path / "b"), target=other)
    assert first_of_other.seq > max(m.seq for m in store.manifests(TARGET))


def test_damage_is_detected_listed_and_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    flipped = backup(store)
    truncated = backup(store)
    no_manifest = backup(store)
    bad_manifest = backup(store)
    naive_time = backup(store)  # once crashed list-backups, comparing it with "now"

    data = store.folder(flipped) / flipped.data.file
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    (store.folder(truncated) / truncated.data.file).write_bytes(b"short")
    (store.folder(no_manifest) / "manifest.json").unlink()
    (store.folder(bad_manifest) / "manifest.json").write_text('{"id": 5')
    zoneless = naive_time.model_dump(mode="json") | {"created_at": "2026-11-26T10:00:00"}
    (store.folder(naive_time) / "manifest.json").write_text(json.dumps(zoneless))

    entries = {e.id: e for e in store.entries()}
    assert isinstance(entries[flipped.id], Manifest)  # same size: only the checksum knows
    assert store.checksum_mismatch(flipped)
    with pytest.raises(Damaged), store.open_data(flipped):
        pass
    for broken in (truncated, no_manifest, bad_manifest, naive_time):
        entry = entries[broken.id]
        assert isinstance(entry, DamagedBackup), broken.id
        with pytest.raises(Damaged):
            store.get(broken.id)


def test_a_dump_cut_short_with_a_checksum_to_match_is_damaged_at_its_end(tmp_path: Path) -> None:
    # zstd's stream reader ends a frame cut short without an error: only the size the
    # backup recorded tells the dump is not whole.
    store = Store(tmp_path / "b")
    manifest = cut_short_keeping_checksum(store, backup(store, os.urandom(200_000)))
    assert store.checksum_mismatch(manifest) is None

    with store.open_data(manifest) as dump, pytest.raises(Damaged) as damaged:
        while dump.read(65536):
            pass
    assert "recorded 200000" in damaged.value.problem


def test_stale_temporary_folders_are_cleaned_but_live_ones_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    store.ensure()
    (store.tmp / "deadbeef").mkdir()
    (store.tmp / "deadbeef" / "data.raw.zst").write_bytes(b"half")
    (store.tmp / "deadbeef.lock").touch()
    assert store.cleanup_stale() == [Unfinished("deadbeef", None)]  # no backup's
    (store.tmp / "deadbeef").mkdir()  # and again: the next writer clears it first
    (store.tmp / "deadbeef.lock").touch()
    with store.new_backup(TARGET) as live:
        assert not (store.tmp / "deadbeef").exists()
        assert store.cleanup_stale() == []  # a live writer's folder stays
        assert live.folder.exists()


def test_a_backup_whose_writer_died_is_named_when_its_folder_is_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    reason = Reason(kind="command", argv=["php", "artisan", "migrate:fresh"], cwd="/srv/app")
    with store.new_backup(TARGET, reason.model_copy(update={"operation": "op1"})) as live:
        with live.data_writer("data.raw", threading.Event()) as sink:
            sink.write(b"half")
        # What a killed writer leaves: its folder, and a lock file nobody holds.
        shutil.copytree(live.folder, store.tmp / "deadbeef")
        (store.tmp / "deadbeef.lock").touch()

        [dead] = store.cleanup_stale()

        assert dead.id == "deadbeef" and dead.about is not None
        assert not (store.tmp / "deadbeef").exists()
        assert live.folder.exists()
        manifest = live.commit(INFO, reason)
    assert dead.about["database"] == TARGET.label
    assert dead.about["pid"] == os.getpid()
    assert (dead.about["kind"], dead.about["argv"], dead.about["cwd"], dead.about["op"]) == (
        "command",
        ["php", "artisan", "migrate:fresh"],
        "/srv/app",
        "op1",
    )
    assert datetime.fromisoformat(dead.about["started"]) <= manifest.created_at
    # The note goes before the backup is moved into place.
    folder = store.root / TARGET.slug / manifest.id
    assert sorted(p.name for p in folder.iterdir()) == ["data.raw.zst", "manifest.json"]


def test_a_backup_filed_under_an_older_key_is_found_grouped_and_read(tmp_path: Path) -> None:
    """Before a server database without a port got the default port's key, its backups
    were filed under 'host:/app' (its slug hashes the key): still readable, and one
    database with the backups made since."""
    store = Store(tmp_path / "b")
    server = Target(engine="postgres", host="db", user="app", name="app", source="test")
    manifest = backup(store, b"old rows", target=server)
    old_key = "postgres://app@db:/app"
    old_folder = store.root / "postgres-app-0123456789" / manifest.id
    old_folder.parent.mkdir(mode=0o700)
    (store.root / server.slug / manifest.id).rename(old_folder)
    stored = json.loads((old_folder / "manifest.json").read_text())
    (old_folder / "manifest.json").write_text(json.dumps({**stored, "database_key": old_key}))
    newer = backup(store, b"new rows", target=server)

    [first, second] = store.manifests()
    assert (first.id, second.id) == (newer.id, manifest.id)
    assert first.database_key == second.database_key == server.key
    old = store.get(manifest.id)
    assert store.folder(old) == old_folder
    assert store.checksum_mismatch(old) is None
    with store.open_data(old) as data:
        assert data.read() == b"old rows"


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    with pytest.raises(BackupFailed), store.new_backup(TARGET) as pending:
        os.symlink(victim, pending.folder / "data.raw.zst")
        with pending.data_writer("data.raw", threading.Event()) as sink:
            sink.write(b"overwrite")
    assert victim.read_text() == "precious"


def test_a_backup_folder_linked_to_a_larger_disk_is_used(tmp_path: Path) -> None:
    """A link of the user's own to a folder of theirs: once refused as "not a folder"
    while `dbguardctl doctor` said it was fine."""
    (tmp_path / "large-disk").mkdir()
    (tmp_path / "backups").symlink_to(tmp_path / "large-disk")
    store = Store(tmp_path / "backups")
    taken = backup(store)
    assert (tmp_path / "large-disk" / TARGET.slug / taken.id).is_dir()
    assert store.newest(TARGET) == taken


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_text(""), r"the backup folder .*/backups is a file, not a folder"),
        (lambda p: p.symlink_to(p.parent / "nothing"), r"is a link to nothing, not a folder"),
        (
            lambda p: (p.parent / "file").write_text("") or p.symlink_to(p.parent / "file"),
            r"is a file, not a folder",
        ),
    ],
    ids=["file", "dangling link", "link to a file"],
)
def test_a_backup_folder_that_is_no_folder_is_named(
    tmp_path: Path, make: Callable[[Path], object], expected: str
) -> None:
    make(tmp_path / "backups")
    with pytest.raises(BackupFailed, match=expected):
        Store(tmp_path / "backups").ensure()


def test_a_backup_folder_under_a_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("")
    with pytest.raises(BackupFailed, match=r"notes is a file"):
        Store(tmp_path / "notes" / "backups").ensure()


def test_a_link_inside_the_store_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    (tmp_path / "elsewhere").mkdir()
    store.root.mkdir()
    store.tmp.symlink_to(tmp_path / "elsewhere")  # only dbguard makes folders in there
    with pytest.raises(BackupFailed, match=r"\.tmp is a symbolic link"):
        store.ensure()


def test_everything_is_owner_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    backup(store)
    for path in [store.root, *store.root.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, path


@pytest.mark.parametrize("value", ["../etc", "abc", "ABCDEF12", "--yes", "1234;rm", "12 34", ""])
def test_ids_with_tricks_are_refused(value: str) -> None:
    with pytest.raises(NotFound):
        check_id(value)


def test_prefixes_must_be_unique(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    manifest = backup(store)
    assert store.get(manifest.id[:4]) == manifest
    with pytest.raises(NotFound, match="no backup"):
        store.get("0000" if not manifest.id.startswith("0000") else "ffff")


def test_manifest_is_plain_json_with_the_essentials(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    manifest = backup(store)
    data = json.loads((store.folder(manifest) / "manifest.json").read_text())
    assert data["database"]["path"] == TARGET.path
    assert "password" not in json.dumps(data)
    assert {"id", "created_at", "data", "tables", "reason", "fingerprint"} <= data.keys()
    assert len(data["data"]["sha256"]) == 64


def test_sink_writes_through_the_compressor(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    payload = io.BytesIO(os.urandom(1 << 20) + b"\0" * (4 << 20)).getvalue()
    manifest = backup(store, payload)
    assert manifest.data.raw_size == len(payload)
    assert manifest.data.size < len(payload)  # the zeros compress


def test_newest_skips_backups_that_failed_verification(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    good = backup(store)
    bad = backup(store)
    assert store.newest(TARGET) == bad
    failed = Verification(at=datetime.now(UTC), ok=False, problems=["table x: 1 rows"])
    store.update(bad, verified=failed)
    assert store.newest(TARGET) == good
    newer = backup(store)
    assert store.newest(TARGET) == newer


def test_newest_sees_a_backup_committed_within_the_same_clock_tick(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    first = backup(store)
    folder = store.folder(first).parent
    assert store.newest(TARGET) == first
    before = folder.stat()

    second = backup(store)
    # File times move in clock ticks: a commit in the same tick as the listing above
    # leaves the folder's mtime as it was.
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    if folder.stat().st_size != before.st_size:
        pytest.skip("this filesystem changes a folder's size with each entry: no race")

    assert store.newest(TARGET) == second


def test_a_file_changed_in_place_with_its_mtime_put_back_is_not_intact(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    manifest = backup(store)
    data = store.folder(manifest) / manifest.data.file
    before = data.stat()
    with data.open("r+b") as handle:  # the same inode and size...
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and mtime
    # The inode's change time, which no one can set back, tells: the store that wrote
    # it re-reads (it once trusted the checksum it computed), as does a new one.
    assert store.mismatch(manifest)
    assert Store(tmp_path / "b").mismatch(manifest)


def test_update_keeps_what_another_process_changed_meanwhile(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    started_verify = backup(store)  # a verify read this copy, then ran for minutes
    Store(store.root).update(started_verify, pinned=True)  # a pin meanwhile, elsewhere

    verified = Verification(at=datetime.now(UTC), ok=True)
    written = store.update(started_verify, verified=verified)

    assert written.pinned and written.verified == verified
    assert store.get(started_verify.id) == written


def test_update_of_a_backup_removed_meanwhile_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    manifest = backup(store)
    store.delete(manifest)
    with pytest.raises(NotFound, match="gone"):
        store.update(manifest, pinned=True)


def test_a_path_and_argument_that_are_not_utf8_read_back_unchanged(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    odd = os.fsdecode(b"/srv/caf\xe9/app.sqlite")  # as Python holds such a path
    target = Target(engine="sqlite", path=odd, source="test")
    with store.new_backup(target) as pending:
        with pending.data_writer("data.raw", threading.Event()) as sink:
            sink.write(b"x" * 100)
        manifest = pending.commit(INFO, Reason(kind="command", argv=["php", odd]))

    [read] = store.entries()
    assert read == manifest
    assert read.target().path == odd and read.reason.argv == ["php", odd]
    assert store.update(read, pinned=True).reason.argv == ["php", odd]


OTHER = Target(engine="sqlite", path="/srv/other/database.sqlite", source="test")


def point_data_at(store: Store, manifest: Manifest, file: str, like: Manifest) -> None:
    """Edit `manifest` to name `file` as its data, with `like`'s size and checksum (what
    a manifest must say for another backup's data to pass every check)."""
    path = store.folder(manifest) / "manifest.json"
    raw = json.loads(path.read_text())
    raw["data"] |= {"file": file, "size": like.data.size, "sha256": like.data.sha256}
    path.write_text(json.dumps(raw))
    (store.folder(manifest) / manifest.data.file).unlink()


@pytest.mark.parametrize(
    "name",
    [
        "../../{slug}/{id}/data.raw.zst",  # another database's backup
        "../{id}/data.raw.zst",  # another backup of its own database
        "{folder}/data.raw.zst",  # absolute
        "sub/../data.raw.zst",
        "..",
        ".",
        "",
        "manifest.json",
        ".manifest.json.1234abcd",  # a manifest being rewritten
        ".update.lock",
    ],
)
def test_a_manifest_whose_data_is_not_its_own_file_is_damaged(tmp_path: Path, name: str) -> None:
    """Once a backup of one database listed, verified and restored with another's data."""
    store = Store(tmp_path / "b")
    theirs = backup(store, b"A" * 5000, target=OTHER)
    ours = backup(store, b"B" * 5000)
    file = name.format(slug=OTHER.slug, id=theirs.id, folder=store.folder(theirs))
    point_data_at(store, ours, file, theirs)

    [entry] = [e for e in store.entries() if e.id == ours.id]
    assert isinstance(entry, DamagedBackup), f"listed as a good backup of {TARGET.label}"
    assert "data.file" in entry.problem and "its own folder" in entry.problem, entry.problem
    with pytest.raises(Damaged, match=f"backup {ours.id} is damaged"):
        store.get(ours.id)
    assert store.newest(TARGET) is None
    assert store.entries(OTHER) == [theirs]


def test_a_data_file_that_is_a_link_is_damaged(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    theirs = backup(store, b"A" * 5000, target=OTHER)
    ours = backup(store, b"B" * 5000)
    point_data_at(store, ours, "data.raw.zst", theirs)
    (store.folder(ours) / "data.raw.zst").symlink_to(store.folder(theirs) / theirs.data.file)

    [entry] = [e for e in store.entries() if e.id == ours.id]
    assert isinstance(entry, DamagedBackup)
    assert "not a regular file" in entry.problem


# Root reads any folder; without these two capabilities it meets modes as users do.
AS_A_USER = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.getuid() == 0 else []
)


def store_call_as_a_user(store: Store, call: str) -> str:
    """What `call` on the store at `store.root` prints, run as a user (BackupFailed's
    message, or a traceback)."""
    script = (
        "import sys; from pathlib import Path\n"
        "from dbguard.errors import BackupFailed\nfrom dbguard.store import Store\n"
        "from dbguard.engines.base import Target\n"
        "store = Store(Path(sys.argv[1]))\n"
        "target = Target(engine='sqlite', path='/srv/app.sqlite', source='test')\n"
        f"try:\n    {call}\nexcept BackupFailed as err:\n    print(f'BackupFailed: {{err}}')\n"
    )
    result = subprocess.run(
        [*AS_A_USER, sys.executable, "-c", script, str(store.root)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout + result.stderr


def test_a_work_folder_it_cannot_list_is_named_with_the_way_out(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    store.ensure()
    store.tmp.chmod(0o000)
    try:
        said = store_call_as_a_user(store, "store.cleanup_stale()")
    finally:
        store.tmp.chmod(0o700)
    assert f"BackupFailed: cannot read the backup folder {store.tmp}: Permission denied" in said
    assert f"chmod 700 {store.tmp}" in said and "Traceback" not in said


def test_a_backup_folder_it_cannot_list_is_named_when_a_backup_starts(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    store.ensure()
    store.root.chmod(0o300)  # it may enter and write, not list: the id check fails
    try:
        said = store_call_as_a_user(store, "with store.new_backup(target): pass")
    finally:
        store.root.chmod(0o700)
    assert f"BackupFailed: cannot read the backup folder {store.root}: Permission denied" in said
    assert f"chmod 700 {store.root}" in said and "Traceback" not in said


def test_a_work_folder_removed_under_a_new_backup_is_a_backup_failure(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    store.ensure()
    gone = store.tmp / "0123abcd"  # removed by someone else before the writer made it
    with pytest.raises(BackupFailed) as failed:
        store_module.PendingBackup(store, TARGET, "0123abcd", gone)
    assert str(gone) in failed.value.problem and failed.value.fix


def test_a_database_lock_is_shared_by_commands_and_exclusive_for_a_restore(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "b")
    first, second = store.database_lock(TARGET.key), store.database_lock(TARGET.key)
    assert first.try_shared() and second.try_shared()  # two guarded commands at once
    assert first.lock.path.parent == store.root / ".locks" and store.manifests() == []
    waiting, held = threading.Event(), threading.Event()

    def restore() -> None:
        with store.database_lock(TARGET.key).exclusive(waiting.set):
            held.set()

    thread = threading.Thread(target=restore)
    thread.start()
    assert waiting.wait(10)
    first.release()
    assert not held.is_set()  # one command still holds it
    second.release()
    thread.join(10)
    assert held.is_set()
    # Another database's lock is another file.
    other = Target(engine="sqlite", path="/srv/other.sqlite", source="test")
    assert store.database_lock(other.key).lock.path != first.lock.path


def test_a_waiting_restore_goes_before_commands_that_arrive_after_it(tmp_path: Path) -> None:
    """flock alone favours no one: commands that keep overlapping would hold a restore
    off for good. Once a restore waits, a new command waits for it."""
    store = Store(tmp_path / "b")
    running = store.database_lock(TARGET.key)
    assert running.try_shared()
    waiting, held, release = threading.Event(), threading.Event(), threading.Event()

    def restore() -> None:
        with store.database_lock(TARGET.key).exclusive(waiting.set):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=restore, daemon=True)
    thread.start()
    try:
        assert waiting.wait(10)
        arriving = store.database_lock(TARGET.key)
        assert not arriving.try_shared()  # the restore waits: the newcomer is held off
        running.release()
        assert held.wait(10)
        assert not arriving.try_shared()  # and during the restore
    finally:
        running.release()
        release.set()
        thread.join(10)
    assert arriving.try_shared()


def test_a_second_restore_of_a_database_waits_for_the_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "b")
    told: list[str] = []
    waits, held, release = threading.Event(), threading.Event(), threading.Event()

    def second() -> None:
        def waiting_for(what: str) -> Callable[[], None]:
            def told_and_set() -> None:
                told.append(what)
                waits.set()

            return told_and_set

        lock = store.database_lock(TARGET.key)
        with lock.exclusive(waiting_for("commands"), waiting_for("restore")):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=second, daemon=True)
    with store.database_lock(TARGET.key).exclusive():
        thread.start()
        assert waits.wait(10) and told == ["restore"]
        assert not held.is_set()
    try:
        assert held.wait(10)
        assert told == ["restore"]  # once the first ended, no command held it
        assert not store.database_lock(TARGET.key).try_shared()
    finally:
        release.set()
        thread.join(10)
    assert store.database_lock(TARGET.key).try_shared()

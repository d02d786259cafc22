"""Damaged backups in the store of a real daemon: a flipped byte (same size, only the
checksum knows), data cut short, a manifest that is not JSON, a manifest that is gone.

`dbguardctl verify` detects each, `list-backups` marks each, `restore` refuses each
without touching the database, and the daemon starts and serves with them in the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import (
    FaultDaemon,
    injected,
    install_php,
    listing,
    oplog,
    stderr_text,
)
from tests.helpers import Home, laravel_sqlite_project


def add_user(project: Path, name: str) -> None:
    with sqlite3.connect(project / "database" / "app.sqlite") as conn:
        conn.execute("insert into users (name) values (?)", (name,))


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_of(home: Home, backup: dict[str, Any]) -> Path:
    [folder] = [p for p in home.backups.glob(f"*/{backup['id']}") if p.is_dir()]
    return folder


def flip_a_byte(home: Home, backup: dict[str, Any]) -> None:
    """Bit rot in the backup's data: the same size, only the checksum knows."""
    data = folder_of(home, backup) / backup["data"]["file"]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))


def damage(home: Home, backups: list[dict[str, Any]]) -> dict[str, str]:
    """Four kinds of damage, one per backup; returns id -> kind."""
    kinds = {}
    flipped, cut, garbled, missing = backups[:4]
    flip_a_byte(home, flipped)
    kinds[flipped["id"]] = "flipped"
    data = folder_of(home, cut) / cut["data"]["file"]
    data.write_bytes(data.read_bytes()[: cut["data"]["size"] // 2])
    kinds[cut["id"]] = "cut"
    (folder_of(home, garbled) / "manifest.json").write_text('{"id": "' + garbled["id"] + '", ')
    kinds[garbled["id"]] = "garbled"
    (folder_of(home, missing) / "manifest.json").unlink()
    kinds[missing["id"]] = "missing"
    injected("backup data with one flipped byte")
    injected("backup data cut to half its size")
    injected("manifest.json not valid JSON")
    injected("manifest.json deleted")
    return kinds


@pytest.fixture
def damaged_store(home: Home) -> tuple[Path, dict[str, str], str]:
    """Five backups of one database by a real daemon, four of them then damaged.
    Returns the project, id -> damage, and the id of the good (newest) one."""
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    try:
        for round_ in range(5):
            add_user(project, f"round {round_}")
            result = home.run(["php", "artisan", "migrate"], cwd=project)
            assert result.returncode == 0, stderr_text(result)
    finally:
        daemon.stop()
    backups = listing(home)[::-1]  # oldest first
    assert len(backups) == 5
    kinds = damage(home, backups)
    return project, kinds, backups[4]["id"]


def test_verify_list_and_restore_on_damaged_backups(
    home: Home, damaged_store: tuple[Path, dict[str, str], str]
) -> None:
    project, kinds, good = damaged_store
    database = project / "database" / "app.sqlite"
    before = file_digest(database)
    by_kind = {kind: backup_id for backup_id, kind in kinds.items()}

    # verify detects every kind
    flipped = home.ctl("verify", by_kind["flipped"])
    assert flipped.returncode == 1, stderr_text(flipped)
    assert "checksum mismatch" in flipped.stdout.decode()
    for kind, words in (
        ("cut", "bytes, manifest says"),
        ("garbled", "manifest.json is corrupt"),
        ("missing", "manifest.json is missing"),
    ):
        result = home.ctl("verify", by_kind[kind])
        assert result.returncode == 65, (kind, stderr_text(result))
        assert f"backup {by_kind[kind]} is damaged" in stderr_text(result)
        assert words in stderr_text(result), kind
    assert home.ctl("verify", good).returncode == 0

    # list-backups marks them: verify-failed, and damaged with the problem
    entries = {e["id"]: e for e in listing(home)}
    assert len(entries) == 5
    assert entries[by_kind["flipped"]]["verified"]["ok"] is False
    for kind in ("cut", "garbled", "missing"):
        assert entries[by_kind[kind]]["damaged"] is True
        assert entries[by_kind[kind]]["problem"]
    assert entries[good]["verified"]["ok"] is True
    text = home.ctl("list-backups").stdout.decode()
    assert text.count("DAMAGED:") == 3
    assert "VERIFY-FAILED" in text

    # restore refuses each, and touches nothing (not even a pre-restore backup)
    for backup_id in kinds:
        refused = home.ctl("restore", backup_id, "--yes")
        assert refused.returncode == 65, (kinds[backup_id], stderr_text(refused))
        said = stderr_text(refused)  # damaged, or found so by the verify above
        assert "damaged" in said or "FAILED verification" in said, said
    assert file_digest(database) == before
    assert len(listing(home)) == 5
    # the attempts on a backup that could be read are in the operation log, with why
    [attempt] = [r for r in oplog(home) if r.get("decision") == "restore"]
    assert (attempt["backups"], attempt["outcome"]) == ([{"id": by_kind["flipped"]}], "failed")
    assert "checksum mismatch" in attempt["reason"]
    assert "checksum mismatch" in home.ctl("log").stdout.decode()

    # the daemon starts with them in the store, reports them and serves
    daemon = FaultDaemon(home).start()
    try:
        status = json.loads(home.ctl("status", "--json").stdout)
        assert status["daemon"]["running"] is True
        assert status["damaged"] == 3
        assert status["backups"] == 2
        add_user(project, "after")
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert result.returncode == 0, stderr_text(result)
        assert len(listing(home)) == 6
        assert oplog(home)[-1]["outcome"] == "ok"
        daemon.assert_no_crash()
    finally:
        daemon.stop()

    # and the good backup still restores
    restored = home.ctl("restore", good, "--yes")
    assert restored.returncode == 0, stderr_text(restored)
    with sqlite3.connect(database) as conn:
        assert conn.execute("select count(*) from users").fetchone()[0] == 8


def test_a_corrupted_newest_backup_is_not_reused(home: Home) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    try:
        first = home.run(["php", "artisan", "migrate"], cwd=project)
        assert first.returncode == 0, stderr_text(first)
        [backup] = listing(home)
        flip_a_byte(home, backup)
        injected("newest backup's data flipped while the database is unchanged")

        second = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert second.returncode == 0, stderr_text(second)
        record = oplog(home)[-1]
        assert record["backups"][0]["id"] != backup["id"], "ran on a corrupted backup"
        assert record["backups"][0]["reused"] is False
        # ... and what was found is recorded: it is nobody's "newest good backup" again
        corrupt = {e["id"]: e for e in listing(home)}[backup["id"]]
        assert corrupt["verified"]["ok"] is False
        assert "checksum mismatch" in corrupt["verified"]["problems"][0]
        assert "VERIFY-FAILED" in home.ctl("list-backups").stdout.decode()
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def test_a_restore_that_finds_a_checksum_mismatch_records_it(
    home: Home, damaged_store: tuple[Path, dict[str, str], str]
) -> None:
    project, kinds, _ = damaged_store
    [flipped] = [backup_id for backup_id, kind in kinds.items() if kind == "flipped"]
    database = project / "database" / "app.sqlite"
    before = file_digest(database)

    refused = home.ctl("restore", flipped, "--yes")

    assert refused.returncode == 65, stderr_text(refused)
    assert "checksum mismatch" in stderr_text(refused)
    assert file_digest(database) == before
    after = {e["id"]: e for e in listing(home)}[flipped]
    assert after["verified"]["ok"] is False
    assert "checksum mismatch" in after["verified"]["problems"][0]


def test_a_manifest_naming_another_databases_data_is_damaged(home: Home) -> None:
    """Once listed, verified and restored as a backup of B with A's contents."""
    install_php(home)
    first, second = (laravel_sqlite_project(home.root / name) for name in ("a", "b"))
    daemon = FaultDaemon(home).start()
    try:
        for project in (first, second):
            result = home.run(["php", "artisan", "migrate"], cwd=project)
            assert result.returncode == 0, stderr_text(result)
    finally:
        daemon.stop()
    theirs, ours = listing(home)[::-1]  # oldest first: a's, then b's
    manifest = folder_of(home, ours) / "manifest.json"
    raw = json.loads(manifest.read_text())
    elsewhere = folder_of(home, theirs) / theirs["data"]["file"]
    raw["data"] |= {
        "file": os.path.relpath(elsewhere, manifest.parent),
        "size": theirs["data"]["size"],
        "sha256": theirs["data"]["sha256"],
    }
    manifest.write_text(json.dumps(raw))
    (folder_of(home, ours) / ours["data"]["file"]).unlink()
    injected("manifest.json naming another database's data file")
    database = second / "database" / "app.sqlite"
    add_user(second, "after the backup")
    before = file_digest(database)

    entries = {e["id"]: e for e in listing(home)}
    assert entries[ours["id"]]["damaged"] is True
    assert "not a data file of its own folder" in entries[ours["id"]]["problem"]
    assert "damaged" not in entries[theirs["id"]]
    for command in (["verify", ours["id"]], ["restore", ours["id"], "--yes"]):
        refused = home.ctl(*command)
        assert refused.returncode == 65, stderr_text(refused)
        assert f"backup {ours['id']} is damaged" in stderr_text(refused)
    assert file_digest(database) == before

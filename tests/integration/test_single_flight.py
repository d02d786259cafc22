"""Many callers, one backup: concurrent guarded commands share the in-flight backup."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dbguard.daemon.backups import Backups
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.errors import Cancelled
from dbguard.retention import RetentionSettings, SpaceSettings
from dbguard.store import Manifest, Reason, Store
from tests.helpers import Daemon, Home, install_stand_in, laravel_sqlite_project


def test_sixteen_concurrent_commands_make_exactly_one_backup(home: Home, daemon: Daemon) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app", rows=50_000)

    commands = [
        subprocess.Popen(
            ["php", "artisan", "test"],
            cwd=project,
            env=home.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(16)
    ]
    for command in commands:
        _, stderr = command.communicate(timeout=120)
        assert command.returncode == 0, stderr

    manifests = list(home.backups.glob("*/*/manifest.json"))
    assert len(manifests) == 1
    backup_id = json.loads(manifests[0].read_text())["id"]
    records = home.operations()
    assert len(records) == 16
    assert {r["backups"][0]["id"] for r in records} == {backup_id}
    assert sum(not r["backups"][0]["reused"] for r in records) == 1


def test_a_change_after_the_shared_backup_gets_its_own(home: Home, daemon: Daemon) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project: Path = laravel_sqlite_project(home.root / "app")
    assert home.run(["php", "artisan", "test", "--wipe"], cwd=project).returncode == 0
    assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
    # the first run deleted rows after its backup: the second must not reuse it
    assert len(list(home.backups.glob("*/*/manifest.json"))) == 2


async def test_a_caller_whose_look_outlasts_a_whole_backup_reuses_it(tmp_path: Path) -> None:
    """Under load, one caller's skip check (a worker thread) can answer "no backup" and
    resume only after another caller has taken a whole backup; it must not take a
    second one."""
    database = tmp_path / "app.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    target = Target(engine="sqlite", path=str(database), source="test")
    looked, release = threading.Event(), threading.Event()

    class SlowFirstLook(Backups):
        def _reusable(self, target: Target) -> Manifest | None:
            answer = super()._reusable(target)
            if not looked.is_set():
                looked.set()
                release.wait(timeout=30)
            return answer

    store = Store(tmp_path / "backups")
    backups = SlowFirstLook(store, Engines(), 2, RetentionSettings(), SpaceSettings())
    slow = asyncio.create_task(backups.ensure(target, Reason(kind="manual")))
    await asyncio.to_thread(looked.wait, 30)

    fast = await backups.ensure(target, Reason(kind="manual"))
    release.set()
    late = await slow

    assert fast.manifest is not None and not fast.reused
    assert late.reused and late.manifest == fast.manifest
    assert [entry.id for entry in store.entries()] == [fast.manifest.id]


async def test_a_skip_check_that_ends_after_the_stop_began_starts_no_backup(
    tmp_path: Path,
) -> None:
    """drain() waits for the backups in flight when it starts; a caller whose skip check
    was still running must not start one afterwards, which would run on through the
    stop. It fails saying why, and what to do."""
    database = tmp_path / "app.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    target = Target(engine="sqlite", path=str(database), source="test")
    looking, release = threading.Event(), threading.Event()

    class SlowLook(Backups):
        def _reusable(self, target: Target) -> Manifest | None:
            looking.set()
            assert release.wait(timeout=30)
            return super()._reusable(target)

    store = Store(tmp_path / "backups")
    backups = SlowLook(store, Engines(), 2, RetentionSettings(), SpaceSettings())
    caller = asyncio.create_task(backups.ensure(target, Reason(kind="manual")))
    await asyncio.to_thread(looking.wait, 30)
    await backups.drain()
    with capture_logs() as logged:
        release.set()
        with pytest.raises(Cancelled) as failed:
            await caller
    assert "dbguardd is stopping" in failed.value.problem
    assert "run it again once dbguardd is back" in failed.value.fix
    assert [e for e in logged if e["event"] == "backup started"] == []
    assert backups.in_flight() == []
    assert store.manifests() == []

"""Notifications on failure, background verification, and status warnings, for real."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from dbguard.config import HealthSettings
from dbguard.daemon.health import BackgroundVerifier
from dbguard.store import Manifest, Store
from tests.helpers import Daemon, Home, install_stand_in, laravel_sqlite_project

if TYPE_CHECKING:
    from dbguard.daemon.service import Guard


def poll(condition: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_failed_backup_runs_the_notify_command(home: Home) -> None:
    events = home.root / "events.jsonl"
    config = home.root / "config.toml"
    config.write_text(f'[notify]\ncommand = "cat >> {events}"\n')
    home.extra_env["DBGUARD_CONFIG"] = str(config)
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")
    (project / "database" / "app.sqlite").write_bytes(b"not a database at all" * 100)
    daemon = Daemon(home).start()
    try:
        assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 75
        poll(lambda: events.exists() and events.read_text().endswith("}"), "the notify command")
        event = json.loads(events.read_text())
        assert event["event"] == "backup_failed"
        assert event["command"] == ["php", "artisan", "migrate:fresh"]
        assert "not an SQLite database" in event["reason"]
    finally:
        daemon.stop()


def test_idle_daemon_verifies_new_backups_and_records_it(home: Home) -> None:
    config = home.root / "config.toml"
    config.write_text("[health]\nbackground_verify = true\nidle_seconds = 1\n")
    home.extra_env["DBGUARD_CONFIG"] = str(config)
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")
    daemon = Daemon(home).start()
    try:
        assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
        [manifest] = list(home.backups.glob("*/*/manifest.json"))
        poll(lambda: json.loads(manifest.read_text())["verified"] is not None, "the verify")
        assert json.loads(manifest.read_text())["verified"]["ok"] is True
    finally:
        daemon.stop()


def test_status_warns_when_a_backup_shrinks(home: Home, daemon: Daemon) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project: Path = laravel_sqlite_project(home.root / "app", rows=100)
    assert home.run(["php", "artisan", "test", "--wipe"], cwd=project).returncode == 0
    assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
    status = home.ctl("status")
    assert b"was the database wiped" in status.stdout, status.stdout
    report = json.loads(home.ctl("status", "--json").stdout)
    [database] = report["databases"]
    assert database["warnings"] and database["last_verified"] is None


async def test_background_verify_outlives_a_backup_folder_it_cannot_read(tmp_path: Path) -> None:
    """A store that cannot be listed for a while (a file where the folder was, a folder
    of another user) is logged and tried again: background verification must not end
    for good, nor make dbguardd's stop fail before it removes its socket."""
    store = Store(tmp_path / "backups")
    store.root.write_text("not a folder")
    health = HealthSettings(background_verify=True, idle_seconds=1)
    guard = SimpleNamespace(
        store=store,
        config=SimpleNamespace(health=health),
        last_activity=0.0,
        backups=SimpleNamespace(in_flight=list),
    )
    stop = asyncio.Event()
    looked: list[bool] = []
    loop = asyncio.get_running_loop()

    class Counting(BackgroundVerifier):
        def _candidates(self) -> list[Manifest]:
            looked.append(True)
            if len(looked) == 2:  # it looked again after the first failure
                loop.call_soon_threadsafe(stop.set)
            return super()._candidates()

    await Counting(cast("Guard", guard)).run(stop)
    assert len(looked) == 2

"""Notifications on failure, background verification, and status warnings, for real."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO, cast

import pytest

from dbguard import operations
from dbguard.config import BackupSettings, Config, HealthSettings
from dbguard.daemon.health import BackgroundVerifier
from dbguard.daemon.main import serve
from dbguard.daemon.service import Guard
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.errors import Cancelled
from dbguard.store import Manifest, Reason, Store
from tests.helpers import Daemon, Home, install_stand_in, laravel_sqlite_project
from tests.helpers import poll as helper_poll
from tests.servers import mysql_connect, pg_connect


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

    await Counting(cast(Guard, guard)).run(stop)
    assert len(looked) == 2


class _Paused(io.RawIOBase):
    """A backup's data stream whose first read tells `reading`, then waits for `release`
    (when given) before it reads on: a verify held in mid-restore for as long as a test
    needs, whatever the size of the backup."""

    def __init__(self, data: BinaryIO, reading: Callable[[], None], release: threading.Event):
        self._data = data
        self._reading: Callable[[], None] | None = reading
        self._release = release

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._reading is not None:
            self._reading()
            self._reading = None
            assert self._release.wait(60), "the test never let the verify go on"
        return self._data.read(size)


def _pg_scratch_databases(target: Target) -> list[str]:
    with pg_connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"{target.name}_dbguard_verify_%",),
        ).fetchall()
    return [row[0] for row in rows]


def _mysql_scratch_schemas(target: Target) -> list[str]:
    conn = mysql_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (f"%{target.name}%verify%",))
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


@pytest.mark.postgres
async def test_a_stop_cancels_a_background_verify_after_stopping_the_server(
    home: Home, pg_database: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during a background verify: the server stops at once (not when the verify
    ends, which for a large backup outlasts systemd's stop timeout), the verify is cut
    short, its scratch database is dropped and nothing is recorded of the backup."""
    with pg_connect(str(pg_database.name)) as conn:
        conn.execute("CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 500) g")
    health = HealthSettings(background_verify=True, idle_seconds=1)
    guard = Guard(Config(health=health), home.env)
    manifest = operations.take_backup(
        guard.store, guard.engines, pg_database, Reason(kind="manual")
    )
    reading, release = threading.Event(), threading.Event()
    open_data = guard.store.open_data

    @contextlib.contextmanager
    def paused(backup: Manifest) -> Iterator[BinaryIO]:
        with open_data(backup) as data:
            yield cast(BinaryIO, _Paused(data, reading.set, release))

    monkeypatch.setattr(guard.store, "open_data", paused)
    serving = asyncio.create_task(serve(guard))
    try:
        assert await asyncio.to_thread(reading.wait, 60), "no background verify started"
        assert _pg_scratch_databases(pg_database)  # the verify is under way
        os.kill(os.getpid(), signal.SIGTERM)
        stopped_first = await asyncio.to_thread(
            helper_poll, lambda: not guard.socket_path.exists(), 10
        )
    finally:
        release.set()
        await asyncio.wait_for(serving, 60)
    assert stopped_first, "the server kept serving while the verify ran"
    assert guard.store.get(manifest.id).verified is None
    assert _pg_scratch_databases(pg_database) == []
    assert list(guard.store.tmp.iterdir()) == []


def _engine_case(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Target, Callable[[Target], list[str]]]:
    if engine == "sqlite":
        path = tmp_path / "app.sqlite"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
            conn.executemany("INSERT INTO items VALUES (?)", [(i,) for i in range(500)])
            conn.commit()
        return Target(engine="sqlite", path=str(path), source="test"), lambda _t: []
    if engine == "postgres":
        target: Target = request.getfixturevalue("pg_database")
        with pg_connect(str(target.name)) as conn:
            conn.execute("CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 500) g")
        return target, _pg_scratch_databases
    target = request.getfixturevalue("mysql_database")
    conn = mysql_connect(str(target.name))
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE items (id INT PRIMARY KEY)")
            cur.executemany("INSERT INTO items VALUES (%s)", [(i,) for i in range(500)])
    finally:
        conn.close()
    return target, _mysql_scratch_schemas


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "mysql"])
def test_a_cancelled_verify_stops_drops_its_scratch_copy_and_records_nothing(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target, scratch_left = _engine_case(engine, tmp_path, request)
    store = Store(tmp_path / "backups")
    engines = Engines(BackupSettings())
    try:
        manifest = operations.take_backup(store, engines, target, Reason(kind="manual"))
        cancel, go_on = threading.Event(), threading.Event()
        go_on.set()
        with store.work_folder() as (_, scratch), store.open_data(manifest) as data:
            # Cancelled as the restore begins: each engine must notice by itself.
            stream = cast(BinaryIO, _Paused(data, cancel.set, go_on))
            with pytest.raises(Cancelled):
                engines.get(target.engine).restored_counts(
                    target, stream, manifest.data.format, scratch, cancel
                )
            assert [p.name for p in scratch.iterdir() if not p.name.endswith(".stderr")] == []
        assert scratch_left(target) == []
        cancel.set()
        with pytest.raises(Cancelled):
            operations.verify_backup(store, engines, manifest, cancel=cancel)
        assert store.get(manifest.id).verified is None
        assert scratch_left(target) == []
    finally:
        engines.close()

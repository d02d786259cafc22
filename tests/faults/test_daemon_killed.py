"""dbguardd is SIGKILLed in the middle of a backup, then started again.

Nothing of the half-written backup may be listed; the next start removes it from .tmp;
the guarded command that was waiting did not run; the restarted daemon serves the same
command with a complete backup.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbguard.engines.base import Target
from tests.faults.support import (
    FaultDaemon,
    FaultTool,
    committed_manifests,
    descendants,
    fill_pg,
    injected,
    install_php,
    leftovers,
    listing,
    oplog,
    pg_rows,
    process_exists,
    ran,
    server_project,
    sqlite_rows,
    start_guarded,
    stderr_text,
    wait_until,
)
from tests.helpers import Home, laravel_sqlite_project

BLOB_MIB = 320  # the WAL database is copied (≈1.5 s) then compressed: a wide window


@pytest.fixture(scope="module")
def large_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 320 MiB SQLite database in WAL mode whose data does not compress."""
    path = tmp_path_factory.mktemp("large") / "app.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("create table users (id integer primary key, name text)")
    conn.executemany("insert into users (name) values (?)", [(f"user{i}",) for i in range(3)])
    conn.execute("create table blobs (id integer primary key, data blob)")
    conn.execute(
        "with recursive g(i) as (select 1 union all select i + 1 from g where i < ?) "
        "insert into blobs (data) select randomblob(1048576) from g",
        (BLOB_MIB,),
    )
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def cleaned(daemon: FaultDaemon) -> list[str]:
    """The ids of unfinished backups the daemon said it removed at start."""
    return [
        str(r.get("id"))
        for r in daemon.log_records()
        if str(r.get("event", "")).startswith("removed an unfinished backup")
    ]


def partial_backup(home: Home) -> Path | None:
    """The unfinished backup's folder in .tmp once it holds some data, else None."""
    tmp = home.backups / ".tmp"
    if not tmp.is_dir():
        return None
    for folder in tmp.iterdir():
        if folder.is_dir():
            for path in folder.rglob("*"):
                try:
                    if path.is_file() and path.stat().st_size > 0:
                        return folder
                except FileNotFoundError:
                    continue
    return None


@pytest.mark.slow
def test_sigkill_mid_backup_of_a_large_database_then_restart(
    home: Home, large_database: Path
) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app", rows=0)
    (project / ".env").write_text(
        f"APP_ENV=local\nDB_CONNECTION=sqlite\nDB_DATABASE={large_database}\n"
    )
    daemon = FaultDaemon(home).start()
    command = start_guarded(home, project, "php", "artisan", "migrate:fresh")
    wait_until(lambda: partial_backup(home) is not None, "the backup to write data")
    assert daemon.kill() == -9
    injected("dbguardd SIGKILLed mid-backup (320 MiB SQLite database)")
    _, err = command.communicate(timeout=60)

    # The kill landed mid-backup: its folder is still in .tmp, half written, unlisted.
    unfinished = partial_backup(home)
    assert unfinished is not None, "the backup finished before the kill: widen the window"
    assert not (unfinished / "manifest.json").exists()
    assert committed_manifests(home.backups) == []
    assert command.returncode == 69, err.decode()
    assert b"closed the connection before deciding" in err
    assert ran(project) == []
    assert sqlite_rows(large_database) == 3  # migrate:fresh did not run
    assert listing(home) == []  # dbguardctl reads the store while no daemon runs

    restarted = FaultDaemon(home).start()
    try:
        assert cleaned(restarted) == [unfinished.name]
        assert leftovers(home) == []
        assert listing(home) == []

        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert result.returncode == 0, stderr_text(result)
        assert len(ran(project)) == 1
        [backup] = listing(home)
        assert backup["tables"] == {"users": 3, "blobs": BLOB_MIB}
        assert backup["data"]["raw_size"] >= BLOB_MIB << 20
        assert sqlite_rows(large_database) is None  # the command ran this time
        restarted.assert_no_crash()
    finally:
        restarted.stop()


@pytest.fixture
def gated_pg(home: Home, pg_database: Target) -> Iterator[tuple[FaultTool, Path]]:
    fill_pg(pg_database, 20_000)  # a few MB: pg_dump blocks on the full pipe at the gate
    tool = FaultTool.install(home.bin, "pg_dump")
    install_php(home)
    yield tool, server_project(home.root / "app", pg_database)


def test_sigkill_while_pg_dump_is_mid_dump_leaves_no_process_or_partial_backup(
    home: Home, pg_database: Target, gated_pg: tuple[FaultTool, Path]
) -> None:
    """Deterministic: pg_dump is held mid-dump when the daemon dies."""
    tool, project = gated_pg
    daemon = FaultDaemon(home).start()
    gate = tool.gate(home.root / "gate")
    command = start_guarded(home, project, "php", "artisan", "migrate:fresh")
    dump_pids = gate.wait_ready()
    assert set(dump_pids) <= set(descendants(daemon.pid))
    [work] = [p for p in (home.backups / ".tmp").iterdir() if p.is_dir()]
    assert daemon.kill() == -9
    injected("dbguardd SIGKILLed while pg_dump is mid-dump")
    _, err = command.communicate(timeout=60)
    gate.open()  # pg_dump's next write meets a pipe nobody reads

    assert command.returncode == 69, err.decode()
    assert ran(project) == []
    assert pg_rows(pg_database) == 20_000
    wait_until(lambda: not any(process_exists(p) for p in dump_pids), "pg_dump to exit")
    assert work.exists() and not (work / "manifest.json").exists()
    assert listing(home) == []

    tool.set("real")
    restarted = FaultDaemon(home).start()
    try:
        assert cleaned(restarted) == [work.name]
        assert leftovers(home) == []
        # `dbguardctl log` says what became of the command that waited for it.
        [failed] = oplog(home)
        assert failed["decision"] == "fail"
        assert failed["argv"][:3] == ["php", "artisan", "migrate:fresh"]
        assert failed["databases"] == [{"database": pg_database.label}]
        assert f"dbguardd (pid {daemon.pid}) stopped during it" in failed["reason"]
        assert failed["reason"].endswith("the command was not run")
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert result.returncode == 0, stderr_text(result)
        [backup] = listing(home)
        assert sum(backup["tables"].values()) == 20_000
        restarted.assert_no_crash()
    finally:
        restarted.stop()


def test_sigkill_while_an_allowed_command_runs_leaves_its_record(home: Home) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    gate = home.root / "gate"
    daemon = FaultDaemon(home).start()
    command = start_guarded(
        home, project, "php", "artisan", "migrate:fresh", f"--wait-for-file={gate}"
    )
    wait_until(Path(f"{gate}.ready").exists, "the allowed command to start")
    assert daemon.kill() == -9
    injected("dbguardd SIGKILLed while an allowed command runs")
    gate.touch()
    _, err = command.communicate(timeout=60)
    assert command.returncode == 0, err.decode()  # the command itself ended well

    [record] = oplog(home)  # written when it was allowed, before it ran
    assert record["decision"] == "allow" and record["outcome"] == "running"
    assert record["argv"][:3] == ["php", "artisan", "migrate:fresh"]

    restarted = FaultDaemon(home).start()
    try:
        wait_until(lambda: oplog(home)[0]["outcome"] != "running", "the record to be closed")
        [closed] = oplog(home)
        assert closed["op"] == record["op"] and closed["outcome"] == "unknown"
        assert "dbguardd stopped while the command ran" in closed["detail"]
        assert closed["backups"] == record["backups"]
        restarted.assert_no_crash()
    finally:
        restarted.stop()


def test_a_stopped_daemon_makes_the_shim_give_up_after_its_silence(home: Home) -> None:
    """SIGSTOP (a debugger, ^Z in the daemon's terminal): the kernel still accepts the
    connection, so only silence tells. The shim once waited for ever."""
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    assert daemon.process is not None
    home.extra_env["DBGUARD_SILENCE_TIMEOUT"] = "1"
    daemon.process.send_signal(signal.SIGSTOP)
    injected("dbguardd stopped (SIGSTOP) while a shim asks it")
    try:
        refused = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        status = home.ctl("status")
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    try:
        assert refused.returncode == 69, stderr_text(refused)
        assert "has sent nothing for 1 s (it is stopped or stuck)" in stderr_text(refused)
        # status says it is there but not answering, and not "start it": it is started.
        shown = status.stdout.decode()
        assert status.returncode == 3 and "dbguardd is NOT answering" in shown, shown
        assert "stuck or stopped (SIGSTOP)" in shown and "until it is started" not in shown
        assert ran(project) == []
        # Awake again, it serves the same command (with a backup) inside the same silence.
        assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
        assert len(ran(project)) == 1 and len(committed_manifests(home.backups)) == 1
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def test_a_daemon_whose_socket_file_is_removed_stops_and_a_new_one_serves(
    home: Home, tmp_path: Path
) -> None:
    first = FaultDaemon(home).start()
    assert first.process is not None
    second = subprocess.run(
        [sys.executable, "-m", "dbguard.daemon.main"], env=home.env, capture_output=True
    )
    assert second.returncode == 1
    assert f"another dbguardd (pid {first.process.pid}) is already serving".encode() in (
        second.stderr
    )

    home.socket.unlink()  # a cleaned runtime folder, a stray rm
    injected("the daemon's socket file removed while it runs")
    assert first.process.wait(timeout=30) == 0  # it notices within a few seconds
    assert "the socket file was removed or replaced; stopping" in first.log

    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    replacement = FaultDaemon(home).start()
    try:
        assert home.run(["php", "artisan", "migrate"], cwd=project).returncode == 0
    finally:
        replacement.stop()


def test_a_socket_path_too_long_for_unix_sockets_is_named(home: Home) -> None:
    long_path = home.root / ("x" * 120) / "d.sock"
    started = subprocess.run(
        [sys.executable, "-m", "dbguard.daemon.main"],
        env={**home.env, "DBGUARD_SOCKET": str(long_path)},
        capture_output=True,
    )
    assert started.returncode == 1
    assert b"path too long" in started.stderr and b"107 bytes" in started.stderr
    assert b"None" not in started.stderr

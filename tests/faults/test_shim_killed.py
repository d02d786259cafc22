"""The shim is SIGKILLed while the command it started runs.

The command is not orphaned silently: the daemon logs the operation once, with the
outcome "unknown" and the command's pid, never as a success; the command itself keeps
running to its own end (a shim cannot take it down with it when it is killed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.faults.support import (
    FaultDaemon,
    injected,
    install_php,
    oplog,
    process_exists,
    ran,
    wait_until,
)
from tests.helpers import Home, laravel_sqlite_project


def test_shim_killed_while_the_command_runs(home: Home, tmp_path: Path) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    gate = tmp_path / "finish"
    try:
        shim = subprocess.Popen(
            ["php", "artisan", "test", f"--wait-for-file={gate}"],
            cwd=project,
            env=home.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ready = Path(f"{gate}.ready")
        wait_until(ready.exists, "the guarded command to start")
        command_pid = int(ready.read_text())
        # The shim runs the command as its child (the sh shim execs the client).
        assert command_pid in [
            int(p) for p in Path(f"/proc/{shim.pid}/task/{shim.pid}/children").read_text().split()
        ]
        shim.send_signal(signal.SIGKILL)
        assert shim.wait(timeout=30) == -signal.SIGKILL
        injected("shim SIGKILLed while its command runs")

        # The `running` line is there from the start; wait for the final one.
        wait_until(
            lambda: any(r.get("outcome") not in (None, "running") for r in oplog(home)),
            "the outcome in the log",
        )
        [record] = oplog(home)
        assert record["decision"] == "allow"
        assert record["outcome"] == "unknown"
        assert f"command pid {command_pid}" in record["detail"]
        assert "exit" not in record and "signal" not in record
        # The command is still there, recorded, and finishes on its own.
        assert process_exists(command_pid)
        gate.touch()
        wait_until(lambda: not process_exists(command_pid), "the command to finish")
        assert [r["pid"] for r in ran(project)] == [command_pid]

        # Logged exactly once, and `dbguardctl log` shows it as unknown, not ok.
        shown = json.loads(home.ctl("log", "--json").stdout)
        assert [r.get("outcome") for r in shown] == ["unknown"]
        assert "unknown" in home.ctl("log").stdout.decode()

        # The daemon still serves, and logs a normal run as ok.
        result = home.run(["php", "artisan", "test"], cwd=project)
        assert result.returncode == 0
        assert [r["outcome"] for r in oplog(home)] == ["unknown", "ok"]
        daemon.assert_no_crash()
    finally:
        gate.touch()
        daemon.stop()


def test_daemon_stopping_while_a_command_runs_logs_unknown(home: Home, tmp_path: Path) -> None:
    """The other side of the same connection: dbguardd is stopped (SIGTERM) while a
    command runs; it logs the operation as unknown before it exits."""
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    gate = tmp_path / "finish"
    shim = subprocess.Popen(
        ["php", "artisan", "test", f"--wait-for-file={gate}"],
        cwd=project,
        env=home.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(Path(f"{gate}.ready").exists, "the guarded command to start")
        assert daemon.stop(signal.SIGTERM) == 0
        injected("dbguardd stopped (SIGTERM) while a command runs")
        [record] = oplog(home)
        assert record["outcome"] == "unknown"
        gate.touch()
        _, err = shim.communicate(timeout=60)
        # The command ran to its end and its status is passed on; the shim says it
        # could not report.
        assert shim.returncode == 0
        assert b"could not report the outcome" in err
        assert len(ran(project)) == 1
    finally:
        gate.touch()
        if shim.poll() is None:
            os.kill(shim.pid, signal.SIGKILL)

"""Load: 200 real shims at once (real processes, each running the stand-in `php`), a mix
of pass, skip (unchanged database: its backup is reused) and backup requests across
five SQLite databases, a PostgreSQL and a MariaDB database; then the same again.

Every request must be answered correctly (exit 0, the command's own output), logged
exactly once with the right decision and backup, without deadlock (each round has a
deadline), and the daemon's memory must come back near idle.

"Near idle", from VmRSS in /proc/<pid>/status: at most IDLE + 24 MiB after a round, and
at most 8 MiB more after the second round than after the first. 200 connections in
flight hold their requests (each carries the caller's whole environment), pydantic
objects and stream buffers, and CPython's allocators keep much of that memory mapped
once freed, so the first round may raise the resident size by tens of MiB; a leak
(per-request state that is never dropped) would keep growing with the second round of
the same size, which the 8 MiB bound catches.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbguard.engines.base import Target
from tests.faults.support import (
    FIGURES,
    FaultDaemon,
    fill_mysql,
    fill_pg,
    install_php,
    listing,
    oplog,
    server_project,
    stderr_text,
    vm_rss_kib,
    wait_until,
)
from tests.helpers import Home, laravel_sqlite_project

ROUND = 200
DEADLINE = 240.0  # seconds for a whole round: a deadlock fails the test instead of hanging
NEAR_IDLE_MIB = 24
LEAK_MIB = 8


@dataclass
class Request:
    kind: str  # pass, skip, backup, server
    project: Path
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    stdout: bytes = b""
    stderr: bytes = b""


def plan(round_: int, sqlite: list[Path], servers: list[Path]) -> list[Request]:
    """200 requests: 80 pass, 60 skip, 40 backup (two fresh databases), 20 on servers."""
    requests = []
    for i in range(ROUND):
        tag = f"--n={round_}-{i}"
        if i % 10 < 4:
            project = sqlite[i % len(sqlite)]
            requests.append(Request("pass", project, ["php", "artisan", "migrate:status", tag]))
        elif i % 10 < 7:
            requests.append(Request("skip", sqlite[i % 3], ["php", "artisan", "test", tag]))
        elif i % 10 < 9:
            project = sqlite[3 + i % 2]
            requests.append(Request("backup", project, ["php", "artisan", "migrate", tag]))
        else:
            project = servers[i % 2]
            requests.append(Request("server", project, ["php", "artisan", "migrate", tag]))
    return requests


def run_round(home: Home, requests: list[Request], daemon: FaultDaemon) -> tuple[float, int]:
    """Start every shim at once, wait for all; returns (seconds, peak VmRSS KiB)."""
    started = time.monotonic()
    for request in requests:
        request.process = subprocess.Popen(
            request.argv,
            cwd=request.project,
            env=home.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    peak = vm_rss_kib(daemon.pid)
    for request in requests:
        assert request.process is not None
        left = DEADLINE - (time.monotonic() - started)
        try:
            request.stdout, request.stderr = request.process.communicate(timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            for other in requests:
                if other.process is not None and other.process.poll() is None:
                    other.process.kill()
            raise AssertionError(
                f"deadlock? {request.argv} unanswered after {DEADLINE} s"
            ) from None
        peak = max(peak, vm_rss_kib(daemon.pid))
    return time.monotonic() - started, peak


def check_round(
    home: Home, requests: list[Request], records: list[dict[str, Any]], before: dict[str, str]
) -> tuple[set[str], dict[str, str]]:
    """Every request answered and logged once, correctly. Returns the ids of the backups
    taken in this round, and the backup id of each "backup" database."""
    for request in requests:
        assert request.process is not None
        assert request.process.returncode == 0, (request.argv, request.stderr.decode())
        assert request.stdout.decode().splitlines() == [json.dumps(request.argv)], request.argv
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_pid.setdefault(int(record["pid"]), []).append(record)
    shared: dict[str, set[str]] = {}
    taken: set[str] = set()
    for request in requests:
        assert request.process is not None
        [record] = by_pid.pop(request.process.pid)  # exactly once
        assert record["argv"] == request.argv
        if request.kind == "pass":
            assert record["decision"] == "pass", record
            continue
        assert record["decision"] == "allow" and record["outcome"] == "ok", record
        [backup] = record["backups"]
        if not backup["reused"]:
            taken.add(backup["id"])
        if request.kind == "skip":  # unchanged since the warm-up backup: reused
            assert backup["reused"] is True and backup["id"] == before[str(request.project)], record
        elif request.kind == "backup":
            shared.setdefault(str(request.project), set()).add(backup["id"])
    assert by_pid == {}, f"records of no request of this round: {list(by_pid.values())[:3]}"
    # Single flight: all the callers of one database share one backup.
    assert all(len(ids) == 1 for ids in shared.values()), shared
    assert taken <= {b["id"] for b in listing(home)}
    return taken, {project: ids.pop() for project, ids in shared.items()}


@pytest.mark.slow
def test_200_concurrent_shims(home: Home, pg_database: Target, mysql_database: Target) -> None:
    install_php(home)
    sqlite = [laravel_sqlite_project(home.root / f"app{i}", rows=100) for i in range(5)]
    fill_pg(pg_database, 200)
    fill_mysql(mysql_database, 200)
    servers = [
        server_project(home.root / "pg", pg_database),
        server_project(home.root / "my", mysql_database),
    ]
    daemon = FaultDaemon(home).start()
    try:
        # Warm-up: the three "skip" databases get their backup, the engines connect.
        before = {}
        for project in [*sqlite[:3], *servers]:
            result = home.run(["php", "artisan", "migrate"], cwd=project)
            assert result.returncode == 0, stderr_text(result)
            before[str(project)] = oplog(home)[-1]["backups"][0]["id"]
        logged = len(oplog(home))
        idle = vm_rss_kib(daemon.pid)

        figures: dict[str, object] = {"idle VmRSS KiB": idle}
        rounds_after = []
        for round_ in (1, 2):
            requests = plan(round_, sqlite, servers)
            seconds, peak = run_round(home, requests, daemon)
            records = oplog(home)[logged:]
            logged += len(records)
            assert len(records) == ROUND
            new, backed_up = check_round(home, requests, records, before)
            if round_ == 1:  # the two databases never backed up: one backup each
                assert len(backed_up) == 2 and set(backed_up.values()) <= new
                first_round = backed_up
            else:  # unchanged since: reused
                assert backed_up == first_round
            status = json.loads(home.ctl("status", "--json").stdout)
            assert status["daemon"]["in_flight"] == []
            wait_until(
                lambda: vm_rss_kib(daemon.pid) <= idle + NEAR_IDLE_MIB * 1024,
                f"VmRSS back within {NEAR_IDLE_MIB} MiB of idle ({idle} KiB)",
                timeout=30,
            )
            after = vm_rss_kib(daemon.pid)
            rounds_after.append(after)
            figures[f"round {round_}"] = {
                "requests": ROUND,
                "seconds": round(seconds, 1),
                "decisions": dict(Counter(r["decision"] for r in records)),
                "new backups": len(new),
                "highest sampled VmRSS KiB": peak,
                "VmRSS after KiB": after,
            }
        assert rounds_after[1] - rounds_after[0] <= LEAK_MIB * 1024, rounds_after
        FIGURES["load"] = figures
        daemon.assert_no_crash()
    finally:
        daemon.stop()

"""The clock goes backwards between backups: order and retention follow the commit
sequence (`seq`), never the timestamps.

The real mechanism is libfaketime preloaded into the daemon, with the offset in a file
it rereads on every clock call: the daemon takes a backup a year in the future, the
clock jumps back to now, then two days further back. Where libfaketime is not
installed that test skips, and a stand-in that always runs rewrites the first
backup's created_at a year into the future instead (what a backup taken under a wrong
clock looks like on disk).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.faults.support import (
    FaultDaemon,
    injected,
    install_php,
    listing,
    oplog,
    stderr_text,
    wait_until,
    write_config,
)
from tests.helpers import Home, laravel_sqlite_project

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
RETENTION = (
    "[retention]\nkeep_last = 2\nhourly = 0\ndaily = 0\nweekly = 0\nmonthly = 0\n"
    "protect_pre_destructive_days = 0\n"
)


def created(entry: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(entry["created_at"]))


def back_up_a_change(home: Home, project: Path, name: str) -> str:
    with sqlite3.connect(project / "database" / "app.sqlite") as conn:
        conn.execute("insert into users (name) values (?)", (name,))
    result = home.run(["php", "artisan", "test"], cwd=project)
    assert result.returncode == 0, stderr_text(result)
    record = oplog(home)[-1]
    assert record["backups"][0]["reused"] is False
    return str(record["backups"][0]["id"])


def clock_scenario(
    home: Home, daemon: FaultDaemon, project: Path, set_clock: Callable[[str, str], None]
) -> None:
    """set_clock(moment, backup_id) moves the clock ('+365d', '+0', '-2d') before the
    backup (backup_id '') or fixes up the backup just taken (moment '')."""
    set_clock("+365d", "")
    future = back_up_a_change(home, project, "a year ahead")
    set_clock("", future)
    [ahead] = listing(home)
    assert created(ahead) > datetime.now(UTC) + timedelta(days=300)
    assert "in the future" in home.ctl("list-backups").stdout.decode()
    set_clock("+0", "")
    injected("clock set back a year between two backups")
    now = back_up_a_change(home, project, "back to now")
    set_clock("-2d", "")
    injected("clock set back two more days")
    past = back_up_a_change(home, project, "two days ago")

    # The newest commit is listed first and is the database's last backup, whatever
    # the timestamps say (the oldest commit has the latest timestamp).
    wait_until(lambda: len(listing(home)) == 2, "retention to keep the last two commits")
    entries = listing(home)
    assert [e["id"] for e in entries] == [past, now]
    assert [e["seq"] for e in entries] == sorted((e["seq"] for e in entries), reverse=True)
    status = json.loads(home.ctl("status", "--json").stdout)
    assert [d["last_backup"] for d in status["databases"]] == [past]
    # The future-dated backup went by policy (keep the last two commits) though its
    # timestamp is the newest; the newest commit stayed.
    pruned = [r.get("id") for r in daemon.log_records() if r.get("event") == "backup pruned"]
    assert pruned == [future]

    # Unchanged database: the newest commit is reused, not the future-dated one.
    result = home.run(["php", "artisan", "test"], cwd=project)
    assert result.returncode == 0, stderr_text(result)
    assert oplog(home)[-1]["backups"] == [
        {"id": past, "database": entries[0]["database_label"], "reused": True}
    ]
    daemon.assert_no_crash()


@pytest.mark.skipif(
    not LIBFAKETIME.exists(),
    reason=f"libfaketime is not installed ({LIBFAKETIME}); apt install libfaketime. "
    "test_clock_going_backwards_stand_in covers the same with rewritten manifests",
)
def test_clock_going_backwards_under_libfaketime(home: Home) -> None:
    clock = home.root / "faketime"
    clock.write_text("+365d\n")
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    write_config(home, RETENTION)
    daemon = FaultDaemon(
        home,
        extra_env={
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(clock),
            "FAKETIME_NO_CACHE": "1",  # reread the file on every clock call
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # timeouts keep working
        },
    ).start()

    def set_clock(moment: str, _backup: str) -> None:
        if moment:
            clock.write_text(moment + "\n")

    try:
        clock_scenario(home, daemon, project, set_clock)
        # The daemon really lived through it: its log lines went back in time too.
        times = [datetime.fromisoformat(r["time"]) for r in oplog(home)]
        assert times[0] > datetime.now(UTC) + timedelta(days=300)
        assert times[-1] < datetime.now(UTC) - timedelta(days=1)
        past, now = listing(home)
        assert created(past) < created(now)  # the newest commit has the older timestamp
    finally:
        daemon.stop()


def test_clock_going_backwards_stand_in(home: Home) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    write_config(home, RETENTION)
    daemon = FaultDaemon(home).start()

    def set_clock(_moment: str, backup: str) -> None:
        if backup:  # as if the daemon's clock had been a year ahead when taking it
            [manifest] = home.backups.glob(f"*/{backup}/manifest.json")
            data = json.loads(manifest.read_text())
            data["created_at"] = (datetime.now(UTC) + timedelta(days=365)).isoformat()
            manifest.write_text(json.dumps(data))

    try:
        clock_scenario(home, daemon, project, set_clock)
    finally:
        daemon.stop()

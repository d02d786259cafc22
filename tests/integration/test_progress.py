"""The progress line: while a backup runs longer than about half a second, the shim shows
one updating line on stderr (database, bytes written, elapsed), and only when stderr is a
terminal.

A backup has to last a while for the line to appear. Rather than a database of a
gigabyte, the daemon here compresses at zstd level 19 on one thread, which turns a few
megabytes into seconds of work; everything else is the real path: shim, daemon, SQLite
engine, store. The tests assert what the person at the terminal sees, never how long
anything took.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    Daemon,
    Home,
    count_users,
    install_stand_in,
    laravel_sqlite_project,
    run_in_terminal,
)

pytestmark = pytest.mark.slow

CLEAR = "\r\x1b[2K"  # carriage return + erase line: how the shim rewrites its one line
PROGRESS = re.compile(r"dbguard: backing up (?P<db>.+?): (?P<mb>\d+\.\d) MB, (?P<s>\d+\.\d) s")


@pytest.fixture
def slow_daemon(home: Home) -> Iterator[Daemon]:
    """A daemon whose backups take seconds: maximum compression, no worker threads."""
    config = home.root / "config" / "dbguard" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[backup]\ncompression_level = 19\ncompression_threads = 0\n")
    running = Daemon(home).start()
    yield running
    running.stop()


def add_users(database: Path, count: int) -> None:
    conn = sqlite3.connect(database)
    conn.execute(
        f"WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {count}) "
        "INSERT INTO users (name) SELECT 'user ' || x || ' ' || hex(randomblob(24)) FROM n"
    )
    conn.commit()
    conn.close()


@pytest.fixture
def project(home: Home) -> Path:
    """A Laravel project on an SQLite database of a few megabytes of varied text."""
    install_stand_in(home, "php")
    home.install_shims("php")
    root = laravel_sqlite_project(home.root / "app")
    add_users(root / "database" / "app.sqlite", 40_000)
    return root


def change(project: Path) -> None:
    """A committed change, so the next guarded command backs up again."""
    conn = sqlite3.connect(project / "database" / "app.sqlite")
    conn.execute("INSERT INTO users (name) VALUES ('one more')")
    conn.commit()
    conn.close()


def oplog(home: Home) -> list[dict[str, object]]:
    return home.operations()


def took_a_backup(record: dict[str, object]) -> bool:
    backups = record.get("backups")
    assert isinstance(backups, list)
    return any(not b["reused"] for b in backups)


def test_a_terminal_shows_one_updating_progress_line(
    home: Home, slow_daemon: Daemon, project: Path
) -> None:
    database = project / "database" / "app.sqlite"

    run = run_in_terminal(["php", "artisan", "test"], home.env, project, timeout=300)

    assert run.returncode == 0, run.output
    updates = list(PROGRESS.finditer(run.output))
    assert updates, f"no progress line on the terminal:\n{run.output!r}"
    for update in updates:
        assert update.group("db") == f"sqlite {database}"
        # each update rewrites the same line: erased first, never followed by a newline
        assert run.output[: update.start()].endswith(CLEAR)
        assert run.output[update.end() :].startswith(CLEAR)
    # the line is gone before anything else is printed, and the backup is announced
    after = run.output[updates[-1].end() :]
    assert after.startswith(CLEAR)
    assert "dbguard: backed up " in after
    [record] = oplog(home)
    assert record["decision"] == "allow" and took_a_backup(record)
    assert count_users(project) == 40003


def test_no_progress_line_when_stderr_is_not_a_terminal(
    home: Home, slow_daemon: Daemon, project: Path
) -> None:
    # First on the terminal, which shows that this backup is long enough for the line.
    shown = run_in_terminal(["php", "artisan", "test"], home.env, project, timeout=300)
    assert shown.returncode == 0, shown.output
    assert PROGRESS.search(shown.output), shown.output

    # The same backup again (after a change), with stderr a pipe: nothing but the
    # command's own output.
    change(project)
    piped = home.run(["php", "artisan", "test"], cwd=project, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert b"backing up" not in piped.stderr
    assert b"\r" not in piped.stderr and b"\x1b" not in piped.stderr

    # On a terminal, but stderr redirected to a file: neither shows the line.
    change(project)
    errors = home.root / "stderr.txt"
    redirected = run_in_terminal(
        ["sh", "-c", f"php artisan test 2>'{errors}'"], home.env, project, timeout=300
    )
    assert redirected.returncode == 0, redirected.output
    assert "backing up" not in redirected.output
    assert "backing up" not in errors.read_text()

    records = oplog(home)
    assert len(records) == 3
    assert all(r["decision"] == "allow" and took_a_backup(r) for r in records)


def test_a_backup_longer_than_the_silence_timeout_keeps_the_shim_waiting(
    home: Home, slow_daemon: Daemon, project: Path
) -> None:
    """The shim gives up on a daemon silent for DBGUARD_SILENCE_TIMEOUT; the progress
    messages of a long backup are no silence, on a terminal or not."""
    home.extra_env["DBGUARD_SILENCE_TIMEOUT"] = "1"
    # Three times the rows: the backup's length varies by machine, and it must outlast
    # the timeout by a margin (1.0 to 1.5 s for the fixture's rows on a fast AMD EPYC).
    add_users(project / "database" / "app.sqlite", 80_000)
    run = run_in_terminal(["php", "artisan", "test"], home.env, project, timeout=300)
    assert run.returncode == 0, run.output
    elapsed = [float(update.group("s")) for update in PROGRESS.finditer(run.output)]
    # A line at 1.5 s: the shim still waited half a second after the timeout would have
    # ended a silent wait.
    assert elapsed and max(elapsed) >= 1.5, run.output
    change(project)
    piped = home.run(["php", "artisan", "test"], cwd=project, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert count_users(project) == 120_004

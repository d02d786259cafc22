"""The dump tool misbehaves under a real daemon: killed, failing, cut short with status 0,
hanging past `[backup] dump_timeout_seconds`, vanished or not installed.

Each case ends the same way: the guarded command exits 75 without running, the message
names what went wrong (without the password), nothing is listed, nothing is left in the
store's .tmp, and the daemon then serves the same command with a good backup.

The fault tool (tools/fault_dump.py) sits in the first folder of the daemon's PATH: as
`mariadb-dump` it is found first there, and as `pg_dump` it reports version 99, so the
engine prefers it to the installed ones (it picks the newest fitting pg_dump).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dbguard.engines.base import Target
from tests.faults.support import (
    FaultDaemon,
    FaultTool,
    fill_mysql,
    fill_pg,
    injected,
    install_php,
    leftovers,
    listing,
    mysql_rows,
    mysql_user,
    oplog,
    pg_rows,
    process_exists,
    ran,
    server_project,
    start_guarded,
    stderr_text,
    wait_until,
    write_config,
)
from tests.helpers import Home

TIMEOUT = 2.0  # [backup] dump_timeout_seconds for these daemons
ROWS = 3000
SECRET = f"pw-{secrets.token_hex(6)}"  # PostgreSQL trusts 127.0.0.1, so any password works


@dataclass
class Case:
    engine: str
    home: Home
    daemon: FaultDaemon
    tool: FaultTool
    target: Target
    project: Path

    @property
    def tool_name(self) -> str:
        return self.tool.name

    def rows(self) -> int | None:
        if self.engine == "postgres":
            return pg_rows(self.target)
        return mysql_rows(self.target)

    def migrate_fresh(self) -> subprocess.CompletedProcess[bytes]:
        return self.home.run(["php", "artisan", "migrate:fresh"], cwd=self.project)

    def start(self) -> subprocess.Popen[bytes]:
        return start_guarded(self.home, self.project, "php", "artisan", "migrate:fresh")


def make_case(
    engine: str, home: Home, target: Target, prefix: tuple[str, ...] = ()
) -> Iterator[Case]:
    if engine == "postgres":
        fill_pg(target, ROWS)
        tool = FaultTool.install(home.bin, "pg_dump")
    else:
        fill_mysql(target, ROWS)
        tool = FaultTool.install(home.bin, "mariadb-dump")
    install_php(home)
    write_config(home, f"[backup]\ndump_timeout_seconds = {TIMEOUT}\n")
    with contextlib.ExitStack() as stack:
        if engine == "mysql":  # its root has no password; this user has one
            target = stack.enter_context(mysql_user(target, SECRET))
        project = server_project(home.root / "app", target, password=SECRET)
        daemon = FaultDaemon(home, prefix=prefix).start()
        stack.callback(daemon.stop)
        yield Case(engine, home, daemon, tool, target, project)


@pytest.fixture
def pg_case(home: Home, pg_database: Target) -> Iterator[Case]:
    yield from make_case("postgres", home, pg_database)


@pytest.fixture(params=["postgres", "mysql"])
def case(request: pytest.FixtureRequest, home: Home) -> Iterator[Case]:
    fixture = "pg_database" if request.param == "postgres" else "mysql_database"
    target: Target = request.getfixturevalue(fixture)
    yield from make_case(request.param, home, target)


def assert_refused_cleanly(
    case: Case, result: subprocess.CompletedProcess[bytes] | tuple[int, bytes], *words: str
) -> str:
    """Exit 75, the words in the message, no password, nothing run, listed or left."""
    code, err = (
        (result.returncode, result.stderr)
        if isinstance(result, subprocess.CompletedProcess)
        else result
    )
    message = err.decode("utf-8", "replace")
    assert code == 75, message
    assert "could not back up" in message
    for word in words:
        assert word in message, message
    assert SECRET not in message
    assert ran(case.project) == []
    assert case.rows() == ROWS  # the command would have dropped the table
    assert listing(case.home) == []
    assert leftovers(case.home) == []
    [record] = oplog(case.home)
    assert record["decision"] == "fail"
    assert SECRET not in case.home.oplog.read_text()
    case.daemon.assert_no_crash()
    return message


def assert_then_served(case: Case) -> None:
    """The fault gone, the same command gets a good backup and runs."""
    case.tool.set("real")
    result = case.migrate_fresh()
    assert result.returncode == 0, stderr_text(result)
    assert len(ran(case.project)) == 1
    [backup] = listing(case.home)
    assert sum(backup["tables"].values()) == ROWS
    assert leftovers(case.home) == []


def test_a_dump_tool_exiting_non_zero(case: Case) -> None:
    case.tool.set("fail", secret=SECRET)
    result = case.migrate_fresh()
    injected(f"dump tool exits 1 ({case.engine})")

    assert_refused_cleanly(case, result, f"{case.tool_name} failed with exit status 1")
    assert_then_served(case)


def test_pg_dump_giving_up_on_a_long_batch_of_table_locks_names_the_batch(
    pg_case: Case,
) -> None:
    """Newer pg_dumps lock tables in batches of up to 100 KB of statement, on one line
    of their error: more than the 4 KB of stderr a failure quotes."""
    case = pg_case
    tables = ", ".join(f"public.table_{i:03}" for i in range(300))
    case.tool.set(
        "say",
        stderr=(
            "pg_dump: error: query failed: ERROR:  canceling statement due to lock timeout\n"
            f"pg_dump: detail: Query was: LOCK TABLE {tables} IN ACCESS SHARE MODE\n"
        ),
    )
    result = case.migrate_fresh()
    injected("pg_dump gives up on a 300-table LOCK TABLE batch")

    assert_refused_cleanly(
        case,
        result,
        "for a lock on one of 300 tables (public.table_000, public.table_001, "
        "public.table_002, ...)",
        "No session holds a conflicting lock on them now",
    )
    assert_then_served(case)


def test_a_dump_tool_exiting_zero_with_truncated_output(case: Case) -> None:
    case.tool.set("truncate")
    result = case.migrate_fresh()
    injected(f"dump tool exits 0 with half its output ({case.engine})")

    words = "ends in mid-archive (truncated)" if case.engine == "postgres" else "ends early"
    assert_refused_cleanly(case, result, words)
    assert_then_served(case)


def test_a_dump_tool_hanging_past_the_timeout_is_killed(case: Case) -> None:
    pids = case.home.root / "hung.pids"
    case.tool.set("hang", pids=str(pids))
    started = time.monotonic()
    result = case.migrate_fresh()
    elapsed = time.monotonic() - started
    injected(f"dump tool hangs past dump_timeout_seconds ({case.engine})")

    words = "ran longer than 2 s" if case.engine == "postgres" else "still running after 2 s"
    assert_refused_cleanly(case, result, words, "dump_timeout_seconds")
    assert TIMEOUT <= elapsed < TIMEOUT + 30
    [pid] = [int(p) for p in pids.read_text().split()]
    assert not process_exists(pid), "the hung dump tool was left running"
    assert_then_served(case)


def test_a_dump_tool_killed_mid_dump(case: Case) -> None:
    gate = case.tool.gate(case.home.root / "gate")
    command = case.start()
    stand_in, real = gate.wait_ready()
    os.kill(stand_in, signal.SIGKILL)  # as the OOM killer would
    injected(f"dump tool SIGKILLed mid-dump ({case.engine})")
    _, err = command.communicate(timeout=60)

    assert_refused_cleanly(
        case, (command.returncode, err), f"{case.tool_name} was killed by SIGKILL"
    )
    for pid in (stand_in, real):
        assert not process_exists(pid)
    assert_then_served(case)


def test_a_shim_interrupted_during_the_backup_is_logged_not_run(case: Case) -> None:
    gate = case.tool.gate(case.home.root / "gate")
    command = case.start()
    gate.wait_ready()
    command.send_signal(signal.SIGINT)  # ^C while the backup runs
    _, err = command.communicate(timeout=60)
    assert command.returncode == -signal.SIGINT, err  # it dies of the signal, as ^C means
    # The daemon finds out at its next progress line; the backup itself goes on.
    wait_until(lambda: oplog(case.home), "the operation in the log")
    [record] = oplog(case.home)
    assert (record["decision"], record["outcome"]) == ("allow", "not run")
    assert "during the backup" in record["detail"]
    # The database stays held while the backup goes on: a restore would wait for it.
    [lock] = (case.home.backups / ".locks").glob("*.lock")
    assert not restore_could_start(lock)
    gate.open()
    wait_until(lambda: listing(case.home), "the backup to finish")
    wait_until(lambda: restore_could_start(lock), "the database's lock to be let go")
    assert len(ran(case.project)) == 0
    case.daemon.assert_no_crash()


def restore_could_start(lock: Path) -> bool:
    """Whether no one holds the database's lock (a restore would take it exclusive)."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_dump_tool_that_vanished_after_it_was_found(case: Case) -> None:
    first = case.home.run(["php", "artisan", "migrate"], cwd=case.project)
    assert first.returncode == 0, stderr_text(first)  # found, probed and remembered
    [kept] = listing(case.home)
    os.unlink(case.tool.path)  # uninstalled under the running daemon
    touch(case)
    result = case.migrate_fresh()
    injected(f"dump tool removed while the daemon runs ({case.engine})")

    message = stderr_text(result)
    assert result.returncode in (0, 75), message
    if case.engine == "postgres":
        # The remembered pg_dump is gone: this backup fails, the next search finds 15.
        assert result.returncode == 75, message
        assert f"cannot run {case.tool.path}" in message
        assert [b["id"] for b in listing(case.home)] == [kept["id"]]
        assert len(ran(case.project)) == 1
        retry = case.migrate_fresh()
        assert retry.returncode == 0, stderr_text(retry)
        assert "pg_dump 15" in listing(case.home)[0]["tool"]
    else:
        # MySQL looks for its tool on every dump: the installed mariadb-dump is used.
        assert result.returncode == 0, message
        assert "Distrib" in listing(case.home)[0]["tool"]
    assert leftovers(case.home) == []
    case.daemon.assert_no_crash()


def touch(case: Case) -> None:
    """A committed change, so the next command needs a new backup."""
    if case.engine == "postgres":
        from tests.servers import pg_connect

        with pg_connect(str(case.target.name)) as conn:
            conn.execute("INSERT INTO items VALUES (-1, 'changed')")
    else:
        from tests.servers import mysql_connect

        conn = mysql_connect(str(case.target.name))
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (-1, 'changed')")
        conn.close()


# ---- not installed at all: the daemon runs in a mount namespace that hides the tools ----


def namespace_prefix(hide: list[str]) -> tuple[str, ...]:
    """unshare + mounts that hide `hide` from the daemon (and only from it)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command to give the daemon a private mount namespace")
    mounts = " && ".join(
        f"mount -t tmpfs -o size=1m tmpfs {p}"
        if os.path.isdir(p)
        else f"mount --bind /dev/null {p}"
        for p in hide
    )
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot hide the tools in a mount namespace: {probe.stderr.decode()}")
    return (
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'{mounts} && exec "$@"',
        "sh",
    )


def test_pg_dump_not_installed(home: Home, pg_database: Target) -> None:
    prefix = namespace_prefix(["/usr/lib/postgresql"])
    for case in make_case("postgres", home, pg_database, prefix):
        os.unlink(case.tool.path)
        result = case.migrate_fresh()
        injected("pg_dump not installed (hidden by a mount namespace)")

        message = assert_refused_cleanly(case, result, "pg_dump is not installed")
        assert "postgresql-client" in message  # says what to install


def test_no_mariadb_dump_installed_falls_back_to_the_built_in_dumper(
    home: Home, mysql_database: Target
) -> None:
    hide = [p for p in ("/usr/bin/mariadb-dump", "/usr/bin/mysqldump") if os.path.exists(p)]
    prefix = namespace_prefix(hide)
    for case in make_case("mysql", home, mysql_database, prefix):
        os.unlink(case.tool.path)
        result = case.migrate_fresh()
        injected("mariadb-dump and mysqldump not installed (hidden by a mount namespace)")

        assert result.returncode == 0, stderr_text(result)
        [backup] = listing(home)
        assert "PyMySQL dumper" in backup["tool"]
        assert sum(backup["tables"].values()) == ROWS
        verified = home.ctl("verify", backup["id"])
        assert verified.returncode == 0, verified.stdout.decode() + stderr_text(verified)

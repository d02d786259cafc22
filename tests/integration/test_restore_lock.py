"""A restore and the guarded commands on the same database exclude each other: dbguardd
holds each command's databases' locks shared from its backup to its report, and
`dbguardctl restore` holds its database's lock exclusive. Real daemon, real shims, real
SQLite files; a restore is held in the middle by a SQLite transaction it must wait for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from dbguard.config import Config
from dbguard.daemon.service import Guard, Running
from dbguard.engines.base import Target
from tests.helpers import (
    Daemon,
    Home,
    TerminalRun,
    install_stand_in,
    laravel_sqlite_project,
    poll,
    run_in_terminal,
)
from tests.servers import pg_connect

WAITING = "waiting for a restore"  # dbguardd's log line when a command starts to wait


@pytest.fixture
def project(home: Home) -> Path:
    install_stand_in(home, "php")
    home.install_shims("php")
    return laravel_sqlite_project(home.root / "app", rows=3)


def backed_up_then_grown(home: Home, project: Path) -> str:
    """A backup of the project's 3 users; the database then has 8."""
    taken = home.ctl("backup", "--json", cwd=project)
    assert taken.returncode == 0, taken.stderr
    with contextlib.closing(sqlite3.connect(project / "database" / "app.sqlite")) as conn:
        conn.executemany("insert into users (name) values (?)", [(f"new{i}",) for i in range(5)])
        conn.commit()
    return str(json.loads(taken.stdout)["backups"][0]["id"])


@contextlib.contextmanager
def restore_held(home: Home, project: Path, backup_id: str) -> Iterator[subprocess.Popen[bytes]]:
    """`dbguardctl restore` stopped before its swap, holding the database's lock: it
    waits for the write transaction held here, which ends when the block does."""
    holder = sqlite3.connect(project / "database" / "app.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    restore = home.ctl_process("restore", backup_id, "--yes", cwd=project)
    assert restore.stderr is not None
    try:
        said = restore.stderr.readline().decode()  # past its pre-restore backup
        assert "to end its transaction" in said, said + restore.communicate()[1].decode()
        yield restore
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def guarded(home: Home, project: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["php", "artisan", "test", *args],
        cwd=project,
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@contextlib.contextmanager
def command_running(home: Home, project: Path, gate: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A guarded command that has started and runs, its database's lock held, until
    the block ends (it waits for the file `gate`)."""
    command = guarded(home, project, f"--wait-for-file={gate}")
    try:
        assert poll(Path(f"{gate}.ready").exists), command.communicate(timeout=5)
        yield command
    finally:
        gate.touch()


def line_within(stream: IO[bytes] | None, seconds: float = 30.0) -> str:
    """The next line `stream` gives: a wait that turned into a deadlock fails the test
    instead of hanging it."""
    assert stream is not None
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    assert got, f"no line within {seconds} s"
    return got[0].decode()


def ctl_saying(
    home: Home, project: Path, lines: int, *args: str
) -> tuple[subprocess.Popen[bytes], str]:
    """dbguardctl `args` started in `project`, and the first `lines` lines it writes
    to stderr (what it waits for)."""
    process = home.ctl_process(*args, cwd=project)
    return process, "".join(line_within(process.stderr) for _ in range(lines))


def waits_logged(daemon: Daemon, count: int = 1) -> bool:
    return poll(lambda: daemon.log.count(WAITING) >= count)


def pre_restore_backups(home: Home) -> list[dict[str, Any]]:
    listing = json.loads(home.ctl("list-backups", "--json").stdout)
    return [b for b in listing if b["reason"]["kind"] == "pre-restore"]


def command_records(home: Home) -> list[dict[str, Any]]:
    return [r for r in home.operations() if r.get("decision") == "allow"]


def test_a_guarded_command_during_a_restore_waits_and_sees_the_restored_data(
    home: Home, daemon: Daemon, project: Path
) -> None:
    backup_id = backed_up_then_grown(home, project)
    result: list[TerminalRun] = []
    with restore_held(home, project, backup_id) as restore:
        command = threading.Thread(
            target=lambda: result.append(
                run_in_terminal(["php", "artisan", "test", "--count-users"], home.env, project)
            )
        )
        command.start()
        assert waits_logged(daemon), daemon.log
        assert not result  # still waiting: it has not run
    _, err = restore.communicate(timeout=60)
    assert restore.returncode == 0, err
    command.join(timeout=60)
    [run] = result
    assert run.returncode == 0, run.output
    # The shim said what it waits for; the command ran on the restored 3 users, and the
    # backup taken (or reused) for it holds them too, not the 8 the restore replaced.
    assert "dbguard: waiting for a restore of sqlite " in run.output
    assert run.output.rstrip().endswith("3"), run.output
    [record] = command_records(home)
    [backup] = record["backups"]
    listing = json.loads(home.ctl("list-backups", "--json").stdout)
    [listed] = [b for b in listing if b["id"] == backup["id"]]
    assert listed["tables"]["users"] == 3
    [restored] = [r for r in home.operations() if r.get("decision") == "restore"]
    assert restored["outcome"] == "ok" and restored["time"] < record["time"]


def test_a_restore_waits_for_a_running_guarded_command_to_report(
    home: Home, daemon: Daemon, project: Path, tmp_path: Path
) -> None:
    backup_id = backed_up_then_grown(home, project)
    gate = tmp_path / "finish"
    with command_running(home, project, gate) as command:
        restore, said = ctl_saying(home, project, 2, "restore", backup_id, "--yes")
        [running] = command_records(home)
        assert said == (
            f"dbguardctl: waiting for guarded commands on sqlite "
            f"{project / 'database' / 'app.sqlite'} to end:\n"
            f"  `php artisan test --wait-for-file={gate}` in {project} (op {running['op']})\n"
        ), said
        # Blocked before its pre-restore backup: nothing taken, nothing replaced.
        assert restore.poll() is None
        assert not pre_restore_backups(home)
    _, err = command.communicate(timeout=60)
    assert command.returncode == 0, err
    out, err = restore.communicate(timeout=60)
    assert restore.returncode == 0, err
    assert f"restored {backup_id}".encode() in out
    [ended] = command_records(home)
    [restored] = [r for r in home.operations() if r.get("decision") == "restore"]
    assert ended["outcome"] == "ok" and ended["time"] < restored["time"]


def test_interrupting_a_restore_that_waits_changes_nothing(
    home: Home, daemon: Daemon, project: Path, tmp_path: Path
) -> None:
    backup_id = backed_up_then_grown(home, project)
    with command_running(home, project, tmp_path / "finish") as command:
        restore, said = ctl_saying(home, project, 1, "restore", backup_id, "--yes")
        assert "waiting for guarded commands" in said
        restore.send_signal(signal.SIGINT)
        _, err = restore.communicate(timeout=60)
    assert restore.returncode == 130, err
    assert b"was not changed" in err and b"pre-restore" not in err, err
    assert command.wait(timeout=60) == 0
    assert not pre_restore_backups(home)
    with contextlib.closing(sqlite3.connect(project / "database" / "app.sqlite")) as conn:
        assert conn.execute("select count(*) from users").fetchone()[0] == 8


def test_a_shim_killed_mid_command_lets_the_restore_go_on(
    home: Home, daemon: Daemon, project: Path, tmp_path: Path
) -> None:
    backup_id = backed_up_then_grown(home, project)
    with command_running(home, project, tmp_path / "finish") as command:
        command.kill()  # the shim; its command runs on, no longer followed
        command.wait(timeout=30)
        # dbguardd sees the connection close and ends the operation, outcome unknown.
        assert poll(lambda: [r.get("outcome") for r in command_records(home)] == ["unknown"])
        restored = home.ctl("restore", backup_id, "--yes", cwd=project)
    assert restored.returncode == 0, restored.stderr
    assert b"waiting" not in restored.stderr, restored.stderr


def test_the_daemon_serves_other_databases_while_a_command_waits(
    home: Home, daemon: Daemon, project: Path
) -> None:
    other = laravel_sqlite_project(home.root / "other")
    backup_id = backed_up_then_grown(home, project)
    with restore_held(home, project, backup_id) as restore:
        waiting = guarded(home, project)
        assert waits_logged(daemon), daemon.log
        elsewhere = home.run(["php", "artisan", "test"], cwd=other, timeout=30)
        assert elsewhere.returncode == 0, elsewhere.stderr
        assert waiting.poll() is None  # still held by the restore
    assert restore.wait(timeout=60) == 0
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err


def pg_project_backed_up(home: Home, database: Target) -> tuple[Path, str]:
    """A Laravel-shaped project on `database` (a users table), and a backup of it."""
    install_stand_in(home, "php")
    home.install_shims("php")
    project = home.root / "app"
    project.mkdir()
    (project / "artisan").write_text("<?php\n")
    (project / ".env").write_text(
        f"APP_ENV=local\nDB_CONNECTION=pgsql\nDB_HOST={database.host}\n"
        f"DB_PORT={database.port}\nDB_DATABASE={database.name}\n"
        f"DB_USERNAME={database.user}\n"
    )
    with pg_connect(str(database.name)) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY)")
    taken = home.ctl("backup", "--json", cwd=project)
    assert taken.returncode == 0, taken.stderr
    return project, str(json.loads(taken.stdout)["backups"][0]["id"])


def test_a_postgres_restore_waits_for_a_guarded_command_on_its_database(
    home: Home, daemon: Daemon, pg_database: Target, tmp_path: Path
) -> None:
    """The lock goes by the database, whatever the engine: the restore's target, read
    from the manifest, is the one dbguardd found for the command."""
    project, backup_id = pg_project_backed_up(home, pg_database)
    with command_running(home, project, tmp_path / "finish") as command:
        restore, said = ctl_saying(home, project, 1, "restore", backup_id, "--yes")
        assert said.startswith(
            f"dbguardctl: waiting for guarded commands on {pg_database.label} to end:"
        ), said
        assert restore.poll() is None and not pre_restore_backups(home)
    assert command.wait(timeout=60) == 0
    _, err = restore.communicate(timeout=60)
    assert restore.returncode == 0, err


def test_a_restore_that_waits_for_dbguardctl_backup_names_it(
    home: Home, daemon: Daemon, pg_database: Target
) -> None:
    project, backup_id = pg_project_backed_up(home, pg_database)
    with pg_connect(str(pg_database.name)) as conn:
        conn.execute("INSERT INTO users VALUES (1)")  # changed: a new backup is taken
        with conn.transaction():  # pg_dump waits for this lock, the backup half done
            conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            backup = home.ctl_process("backup", cwd=project)

            def backing_up() -> bool:
                return any(
                    r.get("argv") == ["dbguardctl", "backup"] and r.get("outcome") == "running"
                    for r in home.operations()
                )

            assert poll(backing_up), backup.communicate()
            restore, said = ctl_saying(home, project, 2, "restore", backup_id, "--yes")
            [running] = [r for r in home.operations() if r.get("outcome") == "running"]
            assert said == (
                f"dbguardctl: waiting for guarded commands on {pg_database.label} to end:\n"
                f"  `dbguardctl backup` in {project} (op {running['op']})\n"
            ), said
            assert restore.poll() is None
    _, err = backup.communicate(timeout=60)
    assert backup.returncode == 0, err
    _, err = restore.communicate(timeout=60)
    assert restore.returncode == 0, err
    [done] = [r for r in home.operations() if r.get("op") == running["op"]]
    assert done["decision"] == "backup" and done["backups"], done


def test_a_command_that_arrives_while_a_restore_waits_goes_after_the_restore(
    home: Home, daemon: Daemon, project: Path, tmp_path: Path
) -> None:
    """The restore waits for the command already running; one that arrives meanwhile
    does not slip in ahead of it (commands that keep overlapping would hold it off for
    good): it waits, then runs on the restored data."""
    backup_id = backed_up_then_grown(home, project)
    with command_running(home, project, tmp_path / "finish") as running:
        restore, said = ctl_saying(home, project, 1, "restore", backup_id, "--yes")
        assert "waiting for guarded commands" in said
        arriving = guarded(home, project, "--count-users")
        assert waits_logged(daemon), daemon.log
        assert arriving.poll() is None and restore.poll() is None
    assert running.wait(timeout=60) == 0
    _, err = restore.communicate(timeout=60)
    assert restore.returncode == 0, err
    out, err = arriving.communicate(timeout=60)
    assert arriving.returncode == 0, err
    assert out.decode().rstrip().endswith("3"), out  # the restored 3 users, not 8
    [restored] = [r for r in home.operations() if r.get("decision") == "restore"]
    [*_, last] = command_records(home)
    assert last["argv"][-1] == "--count-users" and restored["time"] < last["time"]


def test_dbguardctl_backup_during_a_restore_waits_and_backs_up_the_restored_data(
    home: Home, daemon: Daemon, project: Path
) -> None:
    backup_id = backed_up_then_grown(home, project)
    with restore_held(home, project, backup_id) as restore:
        backup, said = ctl_saying(home, project, 1, "backup", "--json")
        assert said == (
            f"dbguardctl: waiting for a restore of sqlite {project / 'database' / 'app.sqlite'}"
            " to end\n"
        ), said
        assert backup.poll() is None
    assert restore.wait(timeout=60) == 0
    out, err = backup.communicate(timeout=60)
    assert backup.returncode == 0, err
    [taken] = json.loads(out)["backups"]
    listing = json.loads(home.ctl("list-backups", "--json").stdout)
    [listed] = [b for b in listing if b["id"] == taken["id"]]
    assert listed["tables"]["users"] == 3  # what the restore put back, not the 8 before


def test_a_second_restore_of_the_database_waits_for_the_first(
    home: Home, daemon: Daemon, project: Path
) -> None:
    backup_id = backed_up_then_grown(home, project)
    with restore_held(home, project, backup_id) as first:
        second, said = ctl_saying(home, project, 2, "restore", backup_id, "--yes")
        assert said == (
            f"dbguardctl: waiting for another restore of sqlite "
            f"{project / 'database' / 'app.sqlite'} to end\n"
            "  ^C gives up; nothing is changed until it ends\n"
        ), said
        assert second.poll() is None
    assert first.wait(timeout=60) == 0
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert len(pre_restore_backups(home)) == 2  # each backed up what it replaced


def test_a_command_run_by_a_running_command_passes_a_waiting_restore(
    home: Home, daemon: Daemon, project: Path, tmp_path: Path
) -> None:
    """`npm run migrate` runs `prisma migrate`: the restore waits for the outer command,
    which waits for the inner one; were the inner one held at the restore's gate, none
    of the three would ever end."""
    backup_id = backed_up_then_grown(home, project)
    with command_running(home, project, tmp_path / "finish") as outer:
        restore, _ = ctl_saying(home, project, 1, "restore", backup_id, "--yes")
        [running] = command_records(home)
        inner = home.run(
            ["php", "artisan", "test"],
            cwd=project,
            env={"DBGUARD_PARENT_OP": running["op"]},
            timeout=60,
        )
        assert inner.returncode == 0, inner.stderr
        assert restore.poll() is None  # still waiting for the outer command
    assert outer.wait(timeout=60) == 0
    _, err = restore.communicate(timeout=60)
    assert restore.returncode == 0, err


def test_a_restore_run_by_a_guarded_command_on_its_own_database_goes_ahead(
    home: Home, daemon: Daemon, project: Path, tmp_path: Path
) -> None:
    """A test script that starts with `dbguardctl restore`: the restore would wait for
    the command, which holds the database, and the command for the restore. The command
    lends its hold to the restore, then holds the database again: a restore from
    outside waits for it, as for any command."""
    backup_id = backed_up_then_grown(home, project)
    gate = tmp_path / "finish"
    command = guarded(
        home, project, f"--restore={backup_id}", "--count-users", f"--wait-for-file={gate}"
    )
    try:
        assert poll(Path(f"{gate}.ready").exists, seconds=30), "the restore inside never ended"
        outside, said = ctl_saying(home, project, 2, "restore", backup_id, "--yes")
        [running] = command_records(home)
        assert said.startswith(
            f"dbguardctl: waiting for guarded commands on sqlite "
            f"{project / 'database' / 'app.sqlite'} to end:\n  `php artisan test "
        ), said
        assert f"(op {running['op']})" in said, said
        assert outside.poll() is None
    finally:
        gate.touch()
        if command.poll() is None and not Path(f"{gate}.ready").exists():
            command.kill()  # still waiting inside: the loan did not happen
    out, err = command.communicate(timeout=60)
    assert command.returncode == 0, err
    assert out.decode().rstrip().endswith("3"), out  # the restored 3 users, not the 8
    _, err = outside.communicate(timeout=60)
    assert outside.returncode == 0, err
    [inside] = [r for r in home.operations() if r.get("parent")]
    assert inside["decision"] == "restore" and inside["outcome"] == "ok", inside
    assert inside["parent"] == running["op"]


def test_a_restore_from_outside_never_comes_between_a_command_and_its_own_restore(
    home: Home, daemon: Daemon, project: Path, tmp_path: Path
) -> None:
    """The outside restore arrives while the command's own restore runs on the
    command's borrowed hold: when that one ends, the command holds the database again
    before the gate opens, so the outside restore waits for the command to end instead
    of replacing the database under it."""
    backup_id = backed_up_then_grown(home, project)
    gate = tmp_path / "finish"
    # The command's restore stops before its swap, waiting for this transaction.
    holder = sqlite3.connect(project / "database" / "app.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    command = guarded(
        home, project, f"--restore={backup_id}", "--count-users", f"--wait-for-file={gate}"
    )
    outside: subprocess.Popen[bytes] | None = None
    try:
        said = line_within(command.stderr)
        assert "to end its transaction" in said, said
        outside, said = ctl_saying(home, project, 2, "restore", backup_id, "--yes")
        assert "waiting for another restore of sqlite " in said, said
        holder.execute("ROLLBACK")
        said = line_within(outside.stderr)
        assert said.startswith("dbguardctl: waiting for guarded commands on sqlite "), said
        assert poll(Path(f"{gate}.ready").exists)
        assert outside.poll() is None  # still waiting: the command runs
    finally:
        holder.close()
        gate.touch()
    out, err = command.communicate(timeout=60)
    assert command.returncode == 0, err
    assert out.decode().rstrip().endswith("3"), out
    assert outside is not None
    _, err = outside.communicate(timeout=60)
    assert outside.returncode == 0, err


def test_a_command_that_restores_while_an_outside_restore_waits_for_it_stops_at_once(
    home: Home, daemon: Daemon, project: Path, tmp_path: Path
) -> None:
    """An outside restore waits for the command, whose script then restores too: the
    outside restore holds the gate, and the command's hold cannot be lent without it, so
    neither restore could go on. The command's restore stops at once, changing nothing;
    the outside one goes on once the command ends."""
    backup_id = backed_up_then_grown(home, project)
    gate = tmp_path / "finish"
    command = guarded(home, project, f"--wait-for-file={gate}", f"--then-restore={backup_id}")
    try:
        assert poll(Path(f"{gate}.ready").exists), command.communicate(timeout=5)
        outside, said = ctl_saying(home, project, 1, "restore", backup_id, "--yes")
        assert said.startswith("dbguardctl: waiting for guarded commands on sqlite "), said
    finally:
        gate.touch()
    _, err = command.communicate(timeout=60)
    said = " ".join(err.decode().split())
    assert command.returncode == 1, said
    assert "another restore of sqlite " in said and "neither could go on" in said, said
    _, err = outside.communicate(timeout=60)
    assert outside.returncode == 0, err
    assert len(pre_restore_backups(home)) == 1  # only the outside restore went ahead


def test_commands_lend_only_a_database_they_hold_to_a_process_they_started(
    home: Home,
) -> None:
    """`outer` (a guarded `npm run ci`) runs `inner` (a guarded `npm run db:reset`),
    whose script runs the restore: both let go of the database for it, and hold it
    again after, each while it still runs."""
    a, b = "sqlite:/srv/a.db", "sqlite:/srv/b.db"
    guard = Guard(Config(), home.env)
    borrower = subprocess.Popen(["sleep", "60"])  # a process this one started
    try:
        held = [guard.store.database_lock(a) for _ in range(2)]
        assert all(lock.try_shared() for lock in held)
        me = os.getpid()
        guard.running["outer"] = Running({}, locks=[held[0]], shim_pid=me)
        guard.running["inner"] = Running({"parent": "outer"}, locks=[held[1]], shim_pid=me)
        restore = guard.store.database_lock(a)
        assert guard.lend("nosuch", a, borrower.pid) == []
        assert guard.lend("inner", b, borrower.pid) == []  # it does not hold that one
        assert guard.lend("inner", a, me) == []  # not a process it started
        assert not restore.lock.try_exclusive()
        assert guard.lend("inner", a, borrower.pid) == ["inner", "outer"]
        assert guard.running["inner"].locks == guard.running["outer"].locks == []
        assert restore.lock.try_exclusive()  # the restore may go ahead
        restore.lock.unlock()
        guard.finish("inner", None)  # ended during the restore: nothing to hold again
        asyncio.run(guard.take_back(["inner", "outer"], a))
        assert len(guard.running["outer"].locks) == 1
        assert not restore.lock.try_exclusive()  # held again
        guard.finish("outer", None)
        assert restore.lock.try_exclusive()
        restore.release()
    finally:
        borrower.kill()
        borrower.wait()
        guard.engines.close()


def test_a_loan_stops_at_a_parent_the_restore_does_not_run_under(home: Home) -> None:
    """A command started by a detached watcher of `watcher`'s script names `watcher` as
    its parent: its restore borrows its own hold, never the watcher's."""
    a = "sqlite:/srv/a.db"
    guard = Guard(Config(), home.env)
    unrelated, borrower = (subprocess.Popen(["sleep", "60"]) for _ in range(2))
    try:
        held = [guard.store.database_lock(a) for _ in range(2)]
        assert all(lock.try_shared() for lock in held)
        guard.running["watcher"] = Running({}, locks=[held[0]], shim_pid=unrelated.pid)
        inner = Running({"parent": "watcher"}, locks=[held[1]], shim_pid=os.getpid())
        guard.running["inner"] = inner
        assert guard.lend("inner", a, borrower.pid) == ["inner"]
        assert guard.running["watcher"].locks == [held[0]]
        assert not guard.store.database_lock(a).lock.try_exclusive()  # still held
    finally:
        for process in (unrelated, borrower):
            process.kill()
            process.wait()
        guard.engines.close()

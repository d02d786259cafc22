"""Security: another user is refused, everything dbguard writes is owner-only whatever
the umask, passwords never reach argv, the log, status or error messages, and a symlink
planted where dbguard writes is never followed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbguard import shims
from dbguard.engines.base import Target
from tests.faults.support import (
    FaultDaemon,
    FaultTool,
    PrivatePostgres,
    all_cmdlines,
    fill_mysql,
    injected,
    install_php,
    leftovers,
    listing,
    mysql_user,
    oplog,
    ran,
    server_project,
    sqlite_rows,
    start_guarded,
    stderr_text,
    wait_until,
    write_config,
)
from tests.helpers import Home, laravel_sqlite_project

OTHER_USER = "nobody"
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by every user, unlike a venv under /root


# ---- another user --------------------------------------------------------------------------


@pytest.fixture
def other_user() -> str:
    if os.getuid() != 0:
        pytest.skip("running a client as another user needs root (runuser)")
    if shutil.which("runuser") is None or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("needs runuser and a system python3 to run a client as another user")
    try:
        import pwd

        pwd.getpwnam(OTHER_USER)
    except KeyError:
        pytest.skip(f"no user {OTHER_USER!r} to run a client as")
    return OTHER_USER


def as_other_user(
    user: str, argv: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_a_client_of_another_user_is_refused(home: Home, other_user: str) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    # A world-usable folder for the other user: a `php` that leaves a mark if it runs.
    theirs = Path(tempfile.mkdtemp(prefix="dbgother", dir="/tmp"))
    try:
        theirs.chmod(0o777)
        (theirs / "shims").mkdir(mode=0o755)
        php = theirs / "php"
        php.write_text(f"#!/bin/sh\ntouch {theirs}/ran\n")
        php.chmod(0o755)
        # Their shim, run by the system's Python (this one's may be out of their reach).
        shim_file = theirs / "shims" / "php"
        shim_file.write_text(shims.render("php", theirs / "shims"))
        shim_file.chmod(0o755)
        shim = [SYSTEM_PYTHON, "-IS", str(shim_file), "artisan", "migrate:fresh"]
        env = {"PATH": f"{theirs}:/usr/bin:/bin", "DBGUARD_SOCKET": str(home.socket)}
        status = [
            SYSTEM_PYTHON, "-IS", "-c",
            # Reads only: the daemon answers a stranger before reading anything.
            "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "print(s.recv(4096).decode())",
            str(home.socket),
        ]  # fmt: skip

        # As installed: the socket's folder (0700) keeps the other user out.
        blocked = as_other_user(other_user, shim, env, theirs)
        injected("client run as another user (socket folder closed)")
        assert blocked.returncode == 69, stderr_text(blocked)
        assert "Permission denied" in stderr_text(blocked)

        # Folders and socket opened up: the daemon's own peer check refuses.
        modes = {
            p: stat.S_IMODE(p.stat().st_mode)
            for p in (home.runtime, home.socket.parent, home.socket)
        }
        try:
            home.runtime.chmod(0o711)
            home.socket.parent.chmod(0o711)
            home.socket.chmod(0o666)
            refused = as_other_user(other_user, shim, env, theirs)
            raw = as_other_user(other_user, status, env, theirs)
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        injected("client run as another user (socket opened to everyone)", 2)

        # Refused either way: the shim reads the refusal (76), or the daemon hung up
        # before the shim finished sending (69, "Broken pipe").
        assert refused.returncode in (69, 76), stderr_text(refused)
        assert "php was not run" in stderr_text(refused)
        assert raw.returncode == 0, stderr_text(raw)
        reply = json.loads(raw.stdout)
        assert reply == {
            "type": "error",
            "message": "permission denied: dbguardd serves its own user only",
            "internal": False,
        }
        assert not (theirs / "ran").exists()
        uid = int(subprocess.run(["id", "-u", other_user], capture_output=True, check=True).stdout)
        refusals = [
            r
            for r in daemon.log_records()
            if r.get("event") == "refused connection from another user"
        ]
        assert [r["peer_uid"] for r in refusals] == [uid, uid]
        assert oplog(home) == []  # nothing of theirs was classified or logged

        # Its own user is still served.
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert result.returncode == 0, stderr_text(result)
        daemon.assert_no_crash()
    finally:
        daemon.stop()
        shutil.rmtree(theirs, ignore_errors=True)


# ---- modes ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_everything_written_is_owner_only_even_with_umask_0(
    home: Home, pg_database: Target, mysql_database: Target
) -> None:
    for xdg in ("data", "state", "config"):
        (home.root / xdg).mkdir(exist_ok=True)  # they exist on a real system
    install_php(home)
    projects = [
        laravel_sqlite_project(home.root / "lite"),
        server_project(home.root / "pg", pg_database),
        server_project(home.root / "my", mysql_database),
    ]
    old = os.umask(0)
    try:
        daemon = FaultDaemon(home, umask=0).start()
        try:
            for project in projects:
                result = home.run(["php", "artisan", "migrate"], cwd=project)
                assert result.returncode == 0, stderr_text(result)
            backup = next(b for b in listing(home) if b["database"]["engine"] == "sqlite")
            for args in (
                ["verify", backup["id"]],
                ["pin", backup["id"]],
                ["restore", backup["id"], "--yes"],
            ):
                done = home.ctl(*args)
                assert done.returncode == 0, stderr_text(done)
            checked = owner_only_paths(home)
        finally:
            daemon.stop()
    finally:
        os.umask(old)
    injected("daemon and dbguardctl run with umask 000")
    assert len(listing(home)) == 4  # three backups and the pre-restore one
    assert checked > 20


def owner_only_paths(home: Home) -> int:
    """Assert the modes; returns how many paths were checked."""
    assert mode(home.socket.parent) == 0o700
    assert mode(home.socket) == 0o600
    assert mode(home.socket.with_name(home.socket.name + ".lock")) == 0o600
    checked = 3
    for top in (home.backups, home.oplog.parent):
        for path in [top, *top.rglob("*")]:
            kind = "folder" if path.is_dir() else "file"
            assert mode(path) & 0o077 == 0, f"{kind} {path} is {oct(mode(path))}"
            checked += 1
    assert mode(home.oplog) == 0o600
    return checked


def test_the_folders_above_the_store_are_not_world_writable_with_umask_0(home: Home) -> None:
    for xdg in ("data", "state", "config"):
        (home.root / xdg).mkdir(exist_ok=True)
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home, umask=0).start()
    try:
        result = home.run(["php", "artisan", "migrate"], cwd=project)
        assert result.returncode == 0, stderr_text(result)
    finally:
        daemon.stop()
    assert mode(home.backups.parent) & 0o022 == 0, oct(mode(home.backups.parent))


# ---- passwords ---------------------------------------------------------------------------------


class ArgvWatch:
    """Reads every process's argv on the machine, over and over, until stopped: a
    password in any argv, however briefly, is caught (and the process named)."""

    def __init__(self, secret: str, ignore: bytes = b"\0") -> None:
        self.secret = secret.encode()
        self.ignore = ignore  # the guarded command line itself, as the user typed it
        self.seen: list[str] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()

    def scan(self) -> None:
        for pid, cmdline in all_cmdlines():
            if self.secret in cmdline and self.ignore not in cmdline:
                self.seen.append(f"{pid}: {cmdline[:300]!r}")
        self.rounds += 1

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def no_secret_anywhere(home: Home, daemon: FaultDaemon, secret: str) -> None:
    """Not in the log, status, listings, the daemon's log, nor any file of the store."""
    outputs = {
        "operation log": home.oplog.read_text(),
        "dbguardd log": daemon.log,
        "status": home.ctl("status").stdout.decode(),
        "status --json": home.ctl("status", "--json").stdout.decode(),
        "list-backups --json": home.ctl("list-backups", "--json").stdout.decode(),
        "log --json": home.ctl("log", "--json").stdout.decode(),
    }
    for what, text in outputs.items():
        assert secret not in text, what
    for path in home.backups.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.fixture
def pg_with_password(own_postgres: PrivatePostgres) -> Iterator[tuple[Target, str]]:
    """A role with a password owning a database on our own cluster, where TCP logins
    need the password (scram-sha-256)."""
    cluster = own_postgres
    role, password = f"app_{secrets.token_hex(4)}", f"pw-{secrets.token_hex(8)}"
    name = f"shop_{secrets.token_hex(4)}"
    with cluster.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {name} OWNER {role}")
    target = cluster.target(name, user=role, password=password)
    with cluster.connect(name) as conn:
        conn.execute(f"SET ROLE {role}")
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, body text NOT NULL)")
        conn.execute(
            "INSERT INTO items SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 20000) g"
        )
    try:
        yield target, password
    finally:
        with cluster.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_no_password_in_argv_log_status_or_errors_postgres(
    home: Home, pg_with_password: tuple[Target, str]
) -> None:
    target, password = pg_with_password
    tool = FaultTool.install(home.bin, "pg_dump")
    install_php(home)
    project = server_project(home.root / "app", target, password=password)
    daemon = FaultDaemon(home).start()
    try:
        gate = tool.gate(home.root / "gate")
        with ArgvWatch(password) as watch:
            command = start_guarded(home, project, "php", "artisan", "migrate")
            _, real = gate.wait_ready()
            watch.scan()  # while pg_dump is mid-dump, for certain
            argv = Path(f"/proc/{real}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{real}/environ").read_bytes().split(b"\0")
            gate.open()
            _, err = command.communicate(timeout=120)
        assert command.returncode == 0, err.decode()
        # It was the real pg_dump, mid-dump, and it got the password, but not in argv.
        assert any(a.startswith(b"--snapshot=") for a in argv)
        assert f"PGPASSWORD={password}".encode() in environ
        assert watch.rounds > 3 and watch.seen == [], watch.seen
        assert password not in err.decode()

        # A wrong password: refused, and the message shows neither password.
        wrong = f"wrong-{secrets.token_hex(6)}"
        server_project(project, target, password=wrong)
        failed = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        injected("wrong PostgreSQL password")
        assert failed.returncode == 75, stderr_text(failed)
        assert "refused the password" in stderr_text(failed)
        for secret in (password, wrong):
            assert secret not in stderr_text(failed)
            no_secret_anywhere(home, daemon, secret)
    finally:
        daemon.stop()


def test_a_password_on_the_command_line_is_not_kept_with_the_backup(home: Home) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    password = f"pw-{secrets.token_hex(8)}"
    daemon = FaultDaemon(home).start()
    try:
        argv = ["php", "artisan", "migrate", f"--password={password}",
                f"--url=postgres://app:{password}@127.0.0.1/shop"]  # fmt: skip
        result = home.run(argv, cwd=project)
        assert result.returncode == 0, stderr_text(result)
        injected("password on the guarded command line")
        assert [r["argv"][3] for r in oplog(home)] == ["--password=***"]  # the log redacts
        no_secret_anywhere(home, daemon, password)
        assert password not in home.ctl("list-backups").stdout.decode()
    finally:
        daemon.stop()


def test_no_password_in_argv_log_status_or_errors_mysql(home: Home, mysql_database: Target) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    fill_mysql(mysql_database, 20_000)
    tool = FaultTool.install(home.bin, "mariadb-dump")
    install_php(home)
    with mysql_user(mysql_database, password) as target:
        project = server_project(home.root / "app", target, password=password)
        daemon = FaultDaemon(home).start()
        try:
            gate = tool.gate(home.root / "gate")
            with ArgvWatch(password) as watch:
                command = start_guarded(home, project, "php", "artisan", "migrate")
                gate.wait_ready()
                watch.scan()
                # The password reaches the tool in an option file only its owner reads.
                [options] = list((home.backups / ".tmp").glob("*/scratch/client-*.cnf"))
                assert mode(options) == 0o600
                assert password in options.read_text()
                gate.open()
                _, err = command.communicate(timeout=120)
            assert command.returncode == 0, err.decode()
            assert watch.rounds > 3 and watch.seen == [], watch.seen
            assert not options.exists()

            wrong = f"wrong-{secrets.token_hex(6)}"
            server_project(project, target, password=wrong)
            failed = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
            injected("wrong MariaDB password")
            assert failed.returncode == 75, stderr_text(failed)
            assert "Access denied" in stderr_text(failed) or "password" in stderr_text(failed)
            for secret in (password, wrong):
                assert secret not in stderr_text(failed)
                no_secret_anywhere(home, daemon, secret)
        finally:
            daemon.stop()


# ---- planted symlinks ---------------------------------------------------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """What a planted symlink points at: a file and a folder that must stay untouched."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious").write_text("precious")
    return folder


def untouched(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["precious"]
    assert (victim / "precious").read_text() == "precious"


def first_backup(home: Home, project: Path) -> dict[str, object]:
    result = home.run(["php", "artisan", "migrate"], cwd=project)
    assert result.returncode == 0, stderr_text(result)
    [backup] = listing(home)
    return backup


def test_a_planted_tmp_folder_symlink_is_not_followed(home: Home, victim: Path) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    try:
        shutil.rmtree(home.backups / ".tmp")
        (home.backups / ".tmp").symlink_to(victim)
        injected("symlink planted as the store's .tmp")
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert result.returncode == 75, stderr_text(result)
        assert "is a symbolic link, where dbguard keeps a folder of its own" in stderr_text(result)
        assert ran(project) == [] and sqlite_rows(project / "database" / "app.sqlite") == 3
        untouched(victim)
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def test_a_planted_database_folder_symlink_is_not_followed(home: Home, victim: Path) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    try:
        backup = first_backup(home, project)
        [folder] = [p for p in home.backups.iterdir() if (p / str(backup["id"])).is_dir()]
        shutil.rmtree(folder)
        folder.symlink_to(victim)  # where this database's next backup is moved into place
        injected("symlink planted as a database's backup folder")
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert result.returncode == 75, stderr_text(result)
        assert "is a symbolic link, where dbguard keeps a folder of its own" in stderr_text(result)
        assert ran(project) == [
            {"argv": ["php", "artisan", "migrate"], "pid": ran(project)[0]["pid"]}
        ]
        untouched(victim)
        assert leftovers(home) == []
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def test_a_planted_retention_lock_symlink_is_not_followed(home: Home, victim: Path) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    write_config(
        home, "[retention]\nkeep_last = 1\nhourly = 0\ndaily = 0\nweekly = 0\nmonthly = 0\n"
    )
    daemon = FaultDaemon(home).start()
    try:
        home.backups.mkdir(parents=True, exist_ok=True)
        (home.backups / ".retention.lock").symlink_to(victim / "precious")
        injected("symlink planted as the store's .retention.lock")
        first_backup(home, project)
        with sqlite3.connect(project / "database" / "app.sqlite") as conn:
            conn.execute("insert into users (name) values ('x')")
        result = home.run(["php", "artisan", "migrate"], cwd=project)
        assert result.returncode == 0, stderr_text(result)  # the backup itself is good
        wait_until(lambda: "prune failed" in daemon.log, "the prune to give up")
        untouched(victim)
        assert len(listing(home)) == 2  # nothing pruned through the link
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def test_a_planted_seq_symlink_is_not_followed(home: Home, victim: Path) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    try:
        home.backups.mkdir(parents=True, exist_ok=True)
        (home.backups / ".seq").symlink_to(victim / "precious")
        injected("symlink planted as the store's .seq")
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert result.returncode != 0
        assert ran(project) == []
        untouched(victim)
        assert listing(home) == [] and leftovers(home) == []
    finally:
        daemon.stop()


def test_a_planted_seq_symlink_is_a_clear_backup_failure(home: Home, victim: Path) -> None:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    try:
        home.backups.mkdir(parents=True, exist_ok=True)
        (home.backups / ".seq").symlink_to(victim / "precious")
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert result.returncode == 75, stderr_text(result)
        assert ".seq" in stderr_text(result)
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def test_a_planted_socket_folder_symlink_is_refused_at_start(home: Home, victim: Path) -> None:
    (home.runtime / "dbguard").symlink_to(victim)
    injected("symlink planted as the socket's folder")
    started = subprocess.run(
        [sys.executable, "-m", "dbguard.daemon.main"],
        env=home.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 1
    assert "is not a folder owned by you" in started.stderr.decode()
    untouched(victim)


def plant_oplog_symlink(home: Home, victim: Path) -> tuple[Path, FaultDaemon]:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    home.oplog.parent.mkdir(parents=True, exist_ok=True)
    home.oplog.symlink_to(victim / "precious")
    injected("symlink planted as the operation log")
    return project, daemon


def test_a_planted_operation_log_symlink_is_not_followed(home: Home, victim: Path) -> None:
    project, daemon = plant_oplog_symlink(home, victim)
    try:
        for argv in (["php", "-v"], ["php", "artisan", "migrate:fresh"]):
            home.run(argv, cwd=project)
        untouched(victim)
        assert daemon.process is not None and daemon.process.poll() is None
    finally:
        daemon.stop()


def test_an_unwritable_operation_log_is_handled_not_a_crash(home: Home, victim: Path) -> None:
    project, daemon = plant_oplog_symlink(home, victim)
    try:
        for argv in (["php", "-v"], ["php", "artisan", "migrate:fresh"]):
            result = home.run(argv, cwd=project)
            assert "internal error" not in stderr_text(result), (argv, stderr_text(result))
        assert "connection handler failed" not in daemon.log
    finally:
        daemon.stop()

"""When dbguardd is not running: what the shims and dbguardctl say, and what they start.

Everything runs for real: shims in `python -IS`, a real dbguardd started by autostart
(or one that cannot start, for a real reason such as a typo in config.toml), and
dbguardctl as a process. No systemd here: the advice must not name systemctl, and must
name the dbguardd of this installation by its path (it is not on PATH).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbguard.client import autostart
from tests.helpers import (
    Daemon,
    Home,
    count_users,
    fake_daemon,
    install_stand_in,
    laravel_sqlite_project,
    poll,
)

DAEMON = [sys.executable, "-m", "dbguard.daemon.main"]
DAEMON_LINE = shlex.join(DAEMON)


@pytest.fixture
def project(home: Home) -> Path:
    install_stand_in(home, "php")
    home.install_shims("php")
    return laravel_sqlite_project(home.root / "app")


@pytest.fixture
def started(home: Home) -> Iterator[None]:
    """Stops whatever dbguardd a test got started through autostart."""
    yield
    if not home.socket.exists():
        return
    status = home.ctl("status", "--json")
    daemon = json.loads(status.stdout)["daemon"]
    if daemon["running"]:
        os.kill(daemon["pid"], signal.SIGTERM)
        assert poll(lambda: not autostart.alive(daemon["pid"]), 30), "dbguardd did not stop"


def autostart_on(folder: Path, argv: list[str] = DAEMON, timeout: float = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / autostart.SETTINGS_FILE).write_text(autostart.format_settings(argv, timeout))


def default_shims(home: Home) -> Path:
    """The shims folder dbguardctl assumes (under XDG_DATA_HOME), where install puts it."""
    return home.root / "data" / "dbguard" / "shims"


def daemon_log(home: Home) -> Path:
    return home.root / "state" / "dbguard" / "dbguardd.log"


def broken_config(home: Home) -> Path:
    config = home.root / "config" / "dbguard" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[backup]\ncompresion_level = 3\n")
    return config


# ---- a start that fails says why --------------------------------------------------


def test_a_typo_in_the_config_is_named_when_autostart_fails(home: Home, project: Path) -> None:
    autostart_on(home.shims)
    config = broken_config(home)
    # What an earlier start logged is not this start's reason.
    daemon_log(home).parent.mkdir(parents=True)
    daemon_log(home).write_text("dbguardd: an old problem from yesterday\n")

    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)

    text = result.stderr.decode()
    assert result.returncode == 69, text
    assert count_users(project) == 3  # not run
    assert f"the config file {config} is invalid\n  backup.compresion_level: unknown key" in text
    assert "fix it and run the command again" in text
    assert str(daemon_log(home)) in text
    assert "php was not run: dbguardd is not running and could not be started" in text
    assert "old problem" not in text
    assert "systemctl" not in text and "`dbguardd`" not in text


def test_a_failed_start_quotes_the_end_of_the_log_readably(home: Home, project: Path) -> None:
    # A daemon that logs JSON lines (as the auto-started one does), then a traceback.
    lines = [
        {"event": "loading the catalog", "level": "info", "timestamp": "2024-01-01T00:00:00Z"},
        {"event": "cannot open the store", "level": "error", "path": "/x", "timestamp": "t"},
    ]
    script = home.bin / "failing-dbguardd"
    script.write_text(
        "#!/bin/sh\n"
        + "".join(f"echo {shlex.quote(json.dumps(line))} >&2\n" for line in lines)
        + "echo 'Traceback (most recent call last):' >&2\n"
        + "echo '  File \"x.py\", line 1, in <module>' >&2\n"
        + "echo 'OSError: [Errno 28] No space left on device' >&2\n"
        + "exit 1\n"
    )
    script.chmod(0o755)
    autostart_on(home.shims, [str(script)])

    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)

    text = result.stderr.decode()
    assert result.returncode == 69, text
    quoted = (
        "  error: cannot open the store path=/x\n  OSError: [Errno 28] No space left on device\n"
    )
    assert f"exited while starting; the end of its log ({daemon_log(home)}):\n{quoted}" in text
    assert "loading the catalog" not in text  # informational: not why it stopped
    assert "Traceback" not in text and "x.py" not in text and "timestamp" not in text
    assert f"`{script}` in a terminal shows dbguardd starting" in text


def test_a_start_that_writes_nothing_says_how_to_see_why(home: Home, project: Path) -> None:
    script = home.bin / "silent-dbguardd"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    autostart_on(home.shims, [str(script)])

    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)

    text = result.stderr.decode()
    assert result.returncode == 69, text
    assert "exited while starting and wrote nothing to its log" in text
    assert f"run `{script}` in a terminal to see why" in text


# ---- the way to start it, when nothing starts it ----------------------------------


def test_without_autostart_the_shim_names_no_systemctl_and_no_bare_dbguardd(
    home: Home, project: Path
) -> None:
    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)

    text = result.stderr.decode()
    assert result.returncode == 69, text
    assert f"php was not run: dbguardd is not reachable at {home.socket}" in text
    assert "systemctl" not in text and "`dbguardd`" not in text
    assert "then run the command again; `dbguardctl doctor` checks the setup" in text


def test_autostart_turned_off_names_the_opt_out_and_the_daemon_s_path(
    home: Home, project: Path
) -> None:
    autostart_on(home.shims)

    result = home.run(
        ["php", "artisan", "migrate:fresh"], cwd=project, env={"DBGUARD_AUTOSTART": "0"}
    )

    text = result.stderr.decode()
    assert result.returncode == 69, text
    assert "autostart is off in this environment (DBGUARD_AUTOSTART=0)" in text
    assert f"`{DAEMON_LINE} &`" in text
    assert "systemctl" not in text and not home.socket.exists()


# ---- dbguardctl backup starts the daemon as the shims do --------------------------


def test_dbguardctl_backup_starts_the_daemon_as_a_shim_would(
    home: Home, project: Path, started: None
) -> None:
    autostart_on(default_shims(home))

    off = home.run(
        [sys.executable, "-m", "dbguard.ctl.main", "backup"],
        cwd=project,
        env={"DBGUARD_AUTOSTART": "0"},
    )
    assert off.returncode == 69, off.stderr
    assert b"autostart is off in this environment (DBGUARD_AUTOSTART=0)" in off.stderr
    assert not home.socket.exists()

    result = home.ctl("backup", cwd=project)
    assert result.returncode == 0, result.stderr
    assert f"dbguardctl: dbguardd is not running; starting it ({DAEMON[0]})".encode() in (
        result.stderr
    )
    assert b"app.sqlite  (new)" in result.stdout
    assert "dbguardd ready" in daemon_log(home).read_text()  # autostart's log, as a shim's


def test_dbguardctl_backup_says_why_the_daemon_did_not_start(home: Home, project: Path) -> None:
    # The daemon's own config (from the autostart settings) has the typo; dbguardctl's
    # default config is fine, so it gets as far as starting the daemon.
    bad = home.root / "daemon.toml"
    bad.write_text("[backup]\ncompresion_level = 3\n")
    autostart_on(default_shims(home), [*DAEMON, "--config", str(bad)])

    result = home.ctl("backup", cwd=project)

    text = result.stderr.decode()
    assert result.returncode == 69, text
    assert f"the config file {bad} is invalid\n  backup.compresion_level: unknown key" in text
    assert "dbguardctl: dbguardd is not running and could not be started (see above)" in text


# ---- dbguardctl status ------------------------------------------------------------


def test_status_says_how_to_start_this_installation_s_daemon(home: Home) -> None:
    result = home.ctl("status")

    text = result.stdout.decode()
    assert result.returncode == 3, result.stderr
    beside = Path(sys.executable).parent / "dbguardd"  # what `dbguardctl install` uses
    assert f"  start it with `{beside} &`, then run the command again" in text
    assert "systemctl" not in text
    down = json.loads(home.ctl("status", "--json").stdout)["daemon"]
    assert down["running"] is False and str(beside) in down["fix"]


def test_status_says_whether_anything_needs_the_stopped_daemon(home: Home) -> None:
    without = home.ctl("status").stdout.decode()
    home.install_shims("php")
    home.extra_env["DBGUARD_AUTOSTART"] = "0"
    with_shims = home.ctl("status").stdout.decode()

    assert "or on PATH: no command is guarded" in without, without
    assert "refuse to run" not in without
    assert "guarded commands will refuse to run (exit 69) until it is started" in with_shims
    assert "no shims" not in with_shims


def test_status_with_an_error_for_an_answer_is_a_message_and_3(home: Home) -> None:
    def error(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b'{"type": "error", "message": "it broke", "internal": true}\n')

    with fake_daemon(home.socket, error):
        result = home.ctl("status")
    text = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 3, text
    assert "NOT answering" in text and "an error: it broke" in text
    assert "Traceback" not in text


def test_status_calls_the_dump_size_raw_and_the_total_stored(
    home: Home, daemon: Daemon, project: Path
) -> None:
    assert home.ctl("backup", cwd=project).returncode == 0

    text = home.ctl("status").stdout.decode()

    assert "RAW SIZE" in text and "DUMP SIZE" not in text
    assert " stored" in text.split("backups: ", 1)[1].splitlines()[0]


@pytest.mark.parametrize("when", ["before the answer", "after the answer"])
def test_a_daemon_gone_while_the_shim_asks_its_question(
    home: Home, project: Path, when: str
) -> None:
    """dbguardd restarted (an upgrade, `systemctl --user restart`) while a person read
    the production question: the shim says the command was not run and exits 69, as
    for any daemon it cannot reach; not a traceback, not a protocol error (76)."""

    def asks_then_stops(conn: socket.socket) -> None:
        conn.makefile("rb").readline()
        if when == "before the answer":
            conn.shutdown(socket.SHUT_RD)  # the answer finds no reader: EPIPE
        question = {"type": "confirm", "v": 1, "code": "abcd", "question": "?", "names": ["x"]}
        conn.sendall(json.dumps(question).encode() + b"\n")
        if when == "after the answer":
            conn.recv(1, socket.MSG_PEEK)  # it came, and is left unread: a reset

    with fake_daemon(home.socket, asks_then_stops):
        result = home.run(["php", "artisan", "migrate"], cwd=project)
    text = result.stderr.decode()
    assert result.returncode == 69, text
    assert "php was not run: the connection to dbguardd" in text and "Traceback" not in text

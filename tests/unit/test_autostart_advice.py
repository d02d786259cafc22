"""What autostart says when dbguardd cannot be reached or started: the end of its log,
made readable and bounded, a config error as file, key and problem, and the way to
start it (systemctl only where systemd runs the installed units)."""

from __future__ import annotations

import errno
import json
import shlex
import sys
from pathlib import Path

import pytest

from dbguard.client import autostart

REFUSED = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
MISSING = FileNotFoundError(errno.ENOENT, "No such file or directory")


def test_json_lines_read_as_level_event_and_fields() -> None:
    line = json.dumps(
        {
            "event": "cannot listen",
            "level": "error",
            "timestamp": "2024-05-01T10:00:00Z",
            "socket": "/run/x.sock",
            "exception": "Traceback (most recent call last):\n  ...\nOSError: busy",
        }
    )
    assert autostart.readable([line]) == ["error: cannot listen socket=/run/x.sock (OSError: busy)"]


def test_informational_lines_only_when_nothing_else_was_said() -> None:
    info = json.dumps({"event": "removed an unfinished backup", "level": "info"})
    warning = json.dumps({"event": "slow disk", "level": "warning"})
    assert autostart.readable([info, warning]) == ["warning: slow disk"]
    assert autostart.readable([info, "", "  "]) == ["info: removed an unfinished backup"]


def test_a_traceback_is_its_exception() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "/x/main.py", line 3, in <module>',
        "    main()",
        "    ^^^^^^",
        "ImportError: cannot import name 'uvloop'",
    ]
    assert autostart.readable(lines) == ["ImportError: cannot import name 'uvloop'"]


def test_the_quote_is_bounded() -> None:
    many = [f"dbguardd: problem {n}" for n in range(10)]
    assert autostart.readable(many) == [f"dbguardd: problem {n}" for n in range(6, 10)]
    long = ["x" * 5000]
    [cut] = autostart.readable(long)
    assert len(cut) == autostart.LINE_CHARS and cut.endswith("...")
    wide = ["y" * 290 for _ in range(4)]
    shown = autostart.readable(wide)
    assert sum(len(line) + 1 for line in shown) <= autostart.TAIL_CHARS
    assert len(shown) == 3


def test_the_tail_is_what_this_start_wrote(tmp_path: Path) -> None:
    log = tmp_path / "dbguardd.log"
    log.write_text("dbguardd: yesterday's problem\n")
    offset = log.stat().st_size
    with log.open("a") as handle:
        handle.write("dbguardd: today's problem\n")
    assert autostart.log_tail(str(log), offset) == ["dbguardd: today's problem"]
    assert autostart.log_tail(str(tmp_path / "missing.log"), 0) == []
    # A log that grew past what is read: its end, from a whole line on.
    with log.open("a") as handle:
        handle.write("z" * autostart.TAIL_BYTES + "\nthe last line\n")
    assert autostart.log_tail(str(log), offset) == ["the last line"]
    # Moved aside and begun again since the offset: all of it is this start's.
    log.write_text("fresh\n")
    assert autostart.log_tail(str(log), offset) == ["fresh"]


def test_a_config_error_is_its_file_and_keys() -> None:
    lines = [
        "dbguardd: /home/u/.config/dbguard/config.toml: invalid config",
        "  backup.compresion_level: unknown key",
        "  retention.keep_last: Input should be a valid integer (got 'ten')",
    ]
    assert autostart.config_problem(lines) == (
        "/home/u/.config/dbguard/config.toml",
        [
            "backup.compresion_level: unknown key",
            "retention.keep_last: Input should be a valid integer (got 'ten')",
        ],
    )
    toml = ["dbguardd: /c.toml: not valid TOML: Expected '=' (at line 2, column 5)"]
    assert autostart.config_problem(toml) == (
        "/c.toml",
        ["not valid TOML: Expected '=' (at line 2, column 5)"],
    )
    # Its last words were about something else: no config error, whatever came before.
    later = [*lines, "dbguardd: something else listens on /run/x.sock"]
    assert autostart.config_problem(later) is None


def test_the_exit_message_for_a_config_error() -> None:
    lines = ["dbguardd: /c.toml: invalid config", *(f"  key{n}: unknown key" for n in range(9))]
    said = autostart.exited_message(7, "/s/dbguardd.log", lines, ["/v/bin/dbguardd"])
    assert said.splitlines() == [
        "dbguardd (pid 7) exited while starting: the config file /c.toml is invalid",
        *(f"  key{n}: unknown key" for n in range(5, 9)),
        "  fix it and run the command again (dbguardd's log: /s/dbguardd.log)",
    ]


@pytest.mark.parametrize(
    "argv",
    [["/opt/db guard/bin/dbguardd"], ["/v/bin/python", "-m", "x"], ["it's", ""], ["a$b", "~"]],
)
def test_commands_are_quoted_as_shlex_would(argv: list[str]) -> None:
    assert autostart.shell_join(argv) == shlex.join(argv)


def systemd_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment whose user units and service manager look installed and running."""
    booted = tmp_path / "run-systemd-system"
    booted.mkdir()
    monkeypatch.setattr(autostart, "SYSTEMD_BOOTED", str(booted))
    units = tmp_path / "config" / "systemd" / "user"
    units.mkdir(parents=True)
    (units / "dbguard.socket").write_text("")
    (tmp_path / "runtime" / "systemd").mkdir(parents=True)
    (tmp_path / "runtime" / "systemd" / "private").write_text("")
    return {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_RUNTIME_DIR": str(tmp_path / "runtime"),
    }


def test_systemctl_is_named_only_where_systemd_runs_the_units(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = systemd_here(tmp_path, monkeypatch)
    shims = str(tmp_path / "shims")
    problem, fix = autostart.advise("/s.sock", shims, MISSING, env, daemon=["/v/bin/dbguardd"])
    assert problem == "dbguardd is not reachable at /s.sock (No such file or directory)"
    assert fix.startswith("start it with `systemctl --user start dbguard.socket`")

    for gone in (
        tmp_path / "runtime" / "systemd" / "private",  # no user manager running
        tmp_path / "config" / "systemd" / "user" / "dbguard.socket",  # units not installed
    ):
        gone.unlink()
        _, fix = autostart.advise("/s.sock", shims, MISSING, env, daemon=["/v/bin/dbguardd"])
        assert "systemctl" not in fix
        assert fix.startswith("start it with `/v/bin/dbguardd &`, then run the command again")


def test_autostart_s_settings_name_the_daemon_and_the_opt_out(tmp_path: Path) -> None:
    argv = ["/opt/dbguard/bin/dbguardd", "--config", "/home/u/my config.toml"]
    (tmp_path / autostart.SETTINGS_FILE).write_text(autostart.format_settings(argv, 5))
    line = shlex.join(argv)

    _, off = autostart.advise("/s.sock", str(tmp_path), REFUSED, {"DBGUARD_AUTOSTART": "0"})
    assert "autostart is off in this environment (DBGUARD_AUTOSTART=0)" in off
    assert f"`{line} &`" in off
    _, on = autostart.advise("/s.sock", str(tmp_path), REFUSED, {})
    assert on.startswith("autostart is on: the next guarded command starts it")
    # After a start that failed, the reason was told already.
    problem, fix = autostart.advise("/s.sock", str(tmp_path), REFUSED, {}, after_start=True)
    assert problem == "dbguardd is not running and could not be started (see above)"
    assert fix == ""


def test_a_socket_that_is_not_ours_is_no_reason_to_start_anything(tmp_path: Path) -> None:
    denied = PermissionError(errno.EACCES, "Permission denied")
    problem, fix = autostart.advise("/s.sock", str(tmp_path), denied, {})
    assert problem.endswith("(Permission denied)")
    assert "start" not in fix and "dbguardctl doctor" in fix


def test_the_daemon_of_a_virtualenv_install_is_found_from_the_client_s_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    client = venv / "lib" / "python3.11" / "site-packages" / "dbguard" / "client"
    client.mkdir(parents=True)
    (venv / "bin").mkdir()
    daemon = venv / "bin" / "dbguardd"
    daemon.write_text("#!/bin/sh\n")
    daemon.chmod(0o755)
    # A shim runs the base interpreter, which has no dbguardd beside it.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "base" / "python3"))
    monkeypatch.setattr(autostart, "__file__", str(client / "autostart.py"))
    shims = str(tmp_path / "shims")

    assert autostart.daemon_command(shims) == [str(daemon)]
    assert autostart.daemon_command(shims, ["/given"]) == ["/given"]
    daemon.chmod(0o644)
    assert autostart.daemon_command(shims) is None
    _, fix = autostart.advise("/s.sock", shims, MISSING, {})
    assert "bin folder of the virtualenv dbguard is installed in" in fix
    assert "systemctl" not in fix


def test_the_log_path_follows_the_environment_given() -> None:
    env = {"XDG_STATE_HOME": "/state", "HOME": "/home/u"}
    assert autostart.default_log_path(env) == "/state/dbguard/dbguardd.log"
    assert autostart.default_log_path({"HOME": "/home/u"}) == (
        "/home/u/.local/state/dbguard/dbguardd.log"
    )

"""`dbguardctl install` and `uninstall` in a throwaway home, run as a user would.

This machine has no running systemd, which is the case these tests cover for real:
install must say so, set up autostart instead, and do everything else. Where systemd
does run, the tests pass --no-systemd so they never touch the real user manager.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbguard import shims
from dbguard.client import autostart
from dbguard.config import DEFAULT_SHIM_COMMANDS
from dbguard.ctl import install
from dbguard.shims import is_shim
from tests.helpers import Daemon, Home

RUNNER = "import sys; from dbguard.ctl.main import main; sys.exit(main(sys.argv[1:]))"
SYSTEMD_RUNS = install.systemd_unavailable() is None
without_systemd = pytest.mark.skipif(
    SYSTEMD_RUNS, reason="systemd runs here; the test for its absence needs a machine without"
)


def ctl(home: Home, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = home.run(
        [sys.executable, "-c", RUNNER, *args],
        cwd=home.root,
        env={"HOME": str(home.root / "home"), "SHELL": "/bin/bash", **(env or {})},
    )
    output = (result.stdout + result.stderr).decode()
    return result.returncode, output


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content, to compare two runs."""
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): path.read_text(errors="replace")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def shims_dir(home: Home) -> Path:
    (home.root / "home").mkdir()
    return home.root / "data" / "dbguard" / "shims"  # the default under XDG_DATA_HOME


@without_systemd
def test_install_twice_then_uninstall_twice_without_systemd(home: Home, shims_dir: Path) -> None:
    backups = home.backups / "somedb" / "20260101-000000-abcd"
    backups.mkdir(parents=True)
    (backups / "manifest.json").write_text("{}")
    units = home.root / "config" / "systemd" / "user"

    code, first = ctl(home, "install")
    assert code == 0, first
    assert "systemd: not used (this system was not booted with systemd" in first
    assert "autostart: on" in first
    assert sorted(p.name for p in shims_dir.iterdir() if is_shim(p)) == sorted(
        DEFAULT_SHIM_COMMANDS
    )
    settings = autostart.read_settings(str(shims_dir))
    assert settings is not None
    argv, timeout = settings
    assert os.access(argv[0], os.X_OK) and timeout == autostart.DEFAULT_TIMEOUT
    assert f'eval "$({sys.executable.rsplit("/", 1)[0]}' in first  # absolute dbguardctl
    assert "shell-init bash)" in first and "~/.bashrc" in first
    assert not units.exists()
    installed = tree(shims_dir)

    code, second = ctl(home, "install")
    assert code == 0, second
    assert tree(shims_dir) == installed

    code, removed = ctl(home, "uninstall")
    assert code == 0, removed
    assert not shims_dir.exists()
    assert f"removed {shims_dir / 'pytest'}" in removed
    assert f"kept the backups in {home.backups}" in removed
    assert "config" not in removed.split("kept the backups", 1)[1].splitlines()[0]  # none
    assert (backups / "manifest.json").exists()

    code, again = ctl(home, "uninstall")
    assert code == 0, again
    assert "nothing to remove" in again
    assert (backups / "manifest.json").exists()


def test_shims_uninstall_removes_only_the_named_ones(home: Home, shims_dir: Path) -> None:
    shims.install(shims_dir, ["pytest", "python", "python3"])

    code, output = ctl(home, "shims", "uninstall", "python", "python3", "--dir", str(shims_dir))

    assert code == 0, output
    assert sorted(p.name for p in shims_dir.iterdir() if is_shim(p)) == ["pytest"]
    code, output = ctl(home, "shims", "uninstall", "psql", "--dir", str(shims_dir))
    assert code == 1 and "no dbguard shim named psql" in output


def test_no_systemd_flag_leaves_systemd_alone(home: Home, shims_dir: Path) -> None:
    code, output = ctl(home, "install", "--no-systemd")

    assert code == 0, output
    assert "systemd: not used (--no-systemd); no units installed" in output
    assert "autostart: on" in output
    assert not (home.root / "config" / "systemd").exists()


def test_autostart_off_means_no_settings_and_says_how_to_start(home: Home, shims_dir: Path) -> None:
    ctl(home, "install", "--no-systemd")
    code, output = ctl(home, "install", "--no-systemd", "--autostart", "off")

    assert code == 0, output
    assert "autostart: off (turned off)" in output
    assert "start the daemon yourself before guarded commands" in output
    assert not (shims_dir / autostart.SETTINGS_FILE).exists()


def test_custom_folder_and_timeout(home: Home) -> None:
    (home.root / "home").mkdir()
    folder = home.root / "my shims"

    code, output = ctl(
        home, "install", "--no-systemd", "--dir", str(folder), "--autostart-timeout", "2.5"
    )

    assert code == 0, output
    assert (folder / "pytest").exists()
    settings = autostart.read_settings(str(folder))
    assert settings is not None and settings[1] == 2.5
    assert f"shell-init bash --dir '{folder}'" in output  # the profile line keeps --dir
    code, output = ctl(home, "uninstall", "--no-systemd", "--dir", str(folder))
    assert code == 0 and not folder.exists(), output


@pytest.mark.parametrize(
    ("shell", "profile", "line"),
    [
        ("/usr/bin/zsh", "~/.zshenv", 'shell-init zsh)"'),
        ("/bin/bash", "the top of ~/.bashrc", 'shell-init bash)"'),
        ("/usr/bin/fish", "~/.config/fish/config.fish", "shell-init fish | source"),
        ("/bin/sh", "~/.profile", "export PATH="),
    ],
)
def test_profile_line_matches_the_login_shell(
    home: Home, shims_dir: Path, shell: str, profile: str, line: str
) -> None:
    code, output = ctl(home, "install", "--no-systemd", env={"SHELL": shell})

    assert code == 0, output
    assert f"Add this line to {profile}" in output
    assert line in output


def test_run_again_it_does_not_ask_for_a_line_the_profile_has(home: Home, shims_dir: Path) -> None:
    code, output = ctl(home, "install", "--no-systemd")
    assert code == 0 and "Add this line to the top of ~/.bashrc" in output, output
    line = output.split("then open a new shell:\n", 1)[1].strip().splitlines()[0]
    bashrc = home.root / "home" / ".bashrc"
    bashrc.parent.mkdir(parents=True, exist_ok=True)
    bashrc.write_text(f"{line}\n")

    code, output = ctl(home, "install", "--no-systemd")
    assert code == 0, output
    assert "Add this line" not in output
    assert f"shell: {bashrc} runs `dbguardctl shell-init`" in output


def test_the_printed_bash_line_puts_the_shims_first(home: Home, shims_dir: Path) -> None:
    code, output = ctl(home, "install", "--no-systemd")
    assert code == 0, output
    line = output.split("then open a new shell:\n", 1)[1].strip().splitlines()[0]

    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", f'{line}\necho "$PATH"'],
        env={**home.env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split(":")[0] == str(shims_dir)


def test_uninstall_stops_a_running_daemon(home: Home, shims_dir: Path, daemon: Daemon) -> None:
    ctl(home, "install", "--no-systemd")
    assert daemon.process is not None

    code, output = ctl(home, "uninstall", "--no-systemd")

    assert code == 0, output
    assert f"stopped dbguardd (pid {daemon.process.pid})" in output
    assert daemon.process.wait(timeout=30) == 0


def test_a_broken_config_stops_install_but_not_uninstall(home: Home, shims_dir: Path) -> None:
    ctl(home, "install", "--no-systemd")
    config = home.root / "config" / "dbguard" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[shims]\ncommands = ['../evil']\n")

    code, output = ctl(home, "install", "--no-systemd")
    assert code == 78, output
    assert "shims.commands" in output
    assert "fix the file (config.example.toml documents every key" in output

    code, output = ctl(home, "uninstall", "--no-systemd")
    assert code == 0, output
    assert not shims_dir.exists()
    assert f"and your config {config}" in output


@without_systemd
def test_units_left_by_an_earlier_install_are_named_and_removed(
    home: Home, shims_dir: Path
) -> None:
    units = home.root / "config" / "systemd" / "user"
    units.mkdir(parents=True)
    for name, text in install.render_units(
        install.DEFAULT_SOCKET_SPEC, install.daemon_argv(None)
    ).items():
        (units / name).write_text(text)
    foreign = units / "other.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")

    code, output = ctl(home, "install")
    assert code == 0, output
    assert "units from an earlier install remain" in output

    code, output = ctl(home, "uninstall")
    assert code == 0, output
    assert f"removed {units / 'dbguard.socket'}" in output
    assert sorted(p.name for p in units.iterdir()) == ["other.service"]


def test_an_interpreter_path_with_a_space_gets_a_sh_shim_that_works(
    home: Home, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    spaced = home.root / "my python"  # cannot stand on a #! line
    spaced.mkdir()
    (spaced / "python3").symlink_to(shims.interpreter())
    monkeypatch.setattr(shims, "interpreter", lambda: str(spaced / "python3"))
    shims.install(home.shims, ["php"])
    text = (home.shims / "php").read_text()
    assert text.startswith("#!/bin/sh\n") and is_shim(home.shims / "php")
    (home.bin / "php").write_text('#!/bin/sh\necho real php "$@"\n')
    (home.bin / "php").chmod(0o755)

    result = home.run(["php", "-v"], cwd=home.root)

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"real php -v\n"


def test_shims_work_from_a_folder_named_beyond_ascii(home: Home, daemon: Daemon) -> None:
    folder = home.root / "sh😀ims josé"  # a character beyond U+FFFF, a space, an accent
    shims.install(folder, ["php"])
    (home.bin / "php").write_text('#!/bin/sh\necho real php "$@"\n')
    (home.bin / "php").chmod(0o755)

    result = home.run(["php", "-v"], cwd=home.root, env={"PATH": f"{folder}:{home.env['PATH']}"})

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"real php -v\n"


def test_a_long_interpreter_path_in_bytes_gets_a_sh_shim(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = "/opt/" + "é" * 60 + "/python3"  # 70 characters, 130 bytes
    monkeypatch.setattr(shims, "interpreter", lambda: long)
    text = shims.render("php", home.shims)
    assert text.startswith("#!/bin/sh\n")
    assert shims.MARKER.encode() in text.encode()[:256]

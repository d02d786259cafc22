"""`dbguardctl doctor` against real setups: healthy, shadowed by a virtualenv, with the
daemon down, with a broken config, with loose permissions, and in projects whose own
scripts bypass the shims."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dbguard import script_shell, shims
from dbguard.client import autostart
from dbguard.config import DEFAULT_SHIM_COMMANDS
from dbguard.ctl import install
from tests.helpers import Daemon, Home

RUNNER = "import sys; from dbguard.ctl.main import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture
def setup(home: Home) -> Home:
    """What `dbguardctl install` plus the profile line leave: shims for the default
    commands first on PATH, a shell whose startup file runs shell-init."""
    profile_home = home.root / "home"
    profile_home.mkdir()
    (profile_home / ".bashrc").write_text('eval "$(dbguardctl shell-init bash)"\n')
    shims.install(home.shims, list(DEFAULT_SHIM_COMMANDS))
    home.extra_env.update(HOME=str(profile_home), SHELL="/bin/bash")
    (home.root / "project").mkdir()
    return home


def doctor(home: Home, cwd: Path | None = None, path: str | None = None) -> tuple[int, Any]:
    env = {"PATH": path} if path else {}
    result = home.run(
        [sys.executable, "-c", RUNNER, "doctor", "--json", "--dir", str(home.shims)],
        cwd=cwd or home.root / "project",
        env=env,
    )
    assert result.stderr == b"", result.stderr
    return result.returncode, json.loads(result.stdout)


def failures(report: Any) -> dict[str, str]:
    return {f["check"]: f["message"] for f in report["findings"] if f["level"] == "fail"}


def finding(report: Any, check: str, level: str) -> dict[str, str]:
    found = [f for f in report["findings"] if f["check"] == check and f["level"] == level]
    assert found, f"no {level} finding for {check}: {report['findings']}"
    return dict(found[0])


def make_venv(where: Path, tool: str = "pytest") -> Path:
    """A real virtualenv (no pip, to be quick) with its own `tool` in bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    script = where / "bin" / tool
    script.write_text(f"#!{where / 'bin' / 'python'}\nprint('the venv {tool}')\n")
    script.chmod(0o755)
    return where


def test_a_healthy_setup_passes(setup: Home, daemon: Daemon) -> None:
    code, report = doctor(setup)

    assert code == 0, failures(report)
    assert report["ok"] is True
    assert finding(report, "shim pytest", "ok")["message"].startswith("guarded")
    assert finding(report, "daemon", "ok")
    assert finding(report, "shell", "ok")
    assert "not needed" in finding(report, "sqlite", "ok")["message"]


def test_a_virtualenv_in_front_of_the_shims_is_caught(setup: Home, daemon: Daemon) -> None:
    venv = make_venv(setup.root / "project" / ".venv")
    # What `source .venv/bin/activate` does without shell-init: its bin goes first.
    shadowed = f"{venv / 'bin'}:{setup.env['PATH']}"

    code, report = doctor(setup, path=shadowed)

    assert code == 1
    problem = finding(report, "shim pytest", "fail")
    assert str(venv / "bin" / "pytest") in problem["message"]
    assert "virtualenv" in problem["message"]
    assert "shell-init bash" in problem["fix"]
    # The other commands still resolve to their shims: only pytest is reported.
    assert set(failures(report)) == {"shim pytest"}


def test_text_output_names_the_winner_and_the_fix(setup: Home, daemon: Daemon) -> None:
    venv = make_venv(setup.root / "project" / "venv")
    result = setup.run(
        [sys.executable, "-c", RUNNER, "doctor", "--dir", str(setup.shims)],
        cwd=setup.root / "project",
        env={"PATH": f"{venv / 'bin'}:{setup.env['PATH']}"},
    )

    text = result.stdout.decode()
    assert result.returncode == 1
    assert f"FAIL  shim pytest: `pytest` runs {venv / 'bin' / 'pytest'} unguarded" in text
    # dbguardctl by its full path: the venv it lives in is usually not on PATH
    ctl = shlex.join(install.ctl_command())
    # at the top: Debian's ~/.bashrc returns early in shells with no prompt
    assert (
        "fix: add at the top of ~/.bashrc (above any line that returns when the shell is "
        f'not interactive): eval "$({ctl} shell-init bash' in text
    )
    assert "1 problem to fix" in text


def test_a_daemon_that_is_down_is_a_problem(setup: Home) -> None:
    code, report = doctor(setup)

    assert code == 1
    down = finding(report, "daemon", "fail")
    assert "exit 69" in down["message"]
    assert "dbguardd" in down["fix"]


def test_a_daemon_that_is_down_but_autostarts_is_a_warning(setup: Home) -> None:
    from dbguard.client import autostart

    (setup.shims / autostart.SETTINGS_FILE).write_text(
        autostart.format_settings([sys.executable, "-m", "dbguard.daemon.main"], 5)
    )

    code, report = doctor(setup)

    assert code == 0, failures(report)
    assert "start it on first use" in finding(report, "daemon", "warn")["message"]


def test_status_says_a_down_daemon_autostarts(setup: Home) -> None:
    status = [sys.executable, "-c", RUNNER, "status"]
    before = setup.run(status, cwd=setup.root).stdout.decode()
    assert "refuse to run (exit 69)" in before
    default_shims = setup.root / "data" / "dbguard" / "shims"  # under XDG_DATA_HOME
    default_shims.mkdir(parents=True)
    (default_shims / autostart.SETTINGS_FILE).write_text(
        autostart.format_settings([sys.executable, "-m", "dbguard.daemon.main"], 5)
    )
    after = setup.run(status, cwd=setup.root).stdout.decode()
    assert "autostart is on: the next guarded command starts it" in after
    assert "exit 69" not in after


def test_a_django_project_without_python_shims_is_named(setup: Home, daemon: Daemon) -> None:
    project = setup.root / "project"
    (project / "manage.py").write_text("")

    code, report = doctor(setup, cwd=project)

    assert code == 0, failures(report)
    warned = finding(report, "project", "warn")
    assert "manage.py ...` is not guarded" in warned["message"]
    assert warned["fix"] == "dbguardctl shims install python python3"
    shims.install(setup.shims, ["python", "python3"])
    code, report = doctor(setup, cwd=project)
    assert "runs through the python shims" in finding(report, "project", "ok")["message"]


def test_a_config_error_is_reported_with_its_key(setup: Home, daemon: Daemon) -> None:
    config = setup.root / "config" / "dbguard" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[backup]\ncompression_level = 99\n")

    code, report = doctor(setup)

    assert code == 1
    problem = finding(report, "config", "fail")
    assert "backup.compression_level" in problem["message"]
    assert str(config) in problem["fix"]


def test_loose_socket_folder_permissions_are_a_problem(setup: Home, daemon: Daemon) -> None:
    setup.socket.parent.chmod(0o755)

    code, report = doctor(setup)

    assert code == 1
    assert finding(report, "socket", "fail")["fix"] == f"chmod 700 {setup.socket.parent}"


def test_missing_shims_and_an_unwritable_backup_folder(setup: Home, daemon: Daemon) -> None:
    (setup.shims / "prisma").unlink()
    blocker = setup.root / "not-a-folder"
    blocker.write_text("")
    config = setup.root / "config" / "dbguard" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f"backup_dir = '{blocker / 'backups'}'\n")

    code, report = doctor(setup)

    assert code == 1
    assert set(failures(report)) == {"shim prisma", "backups"}
    assert "dbguardctl install" in finding(report, "shim prisma", "fail")["fix"]
    # What is in the way, named (it once said the file "is not writable").
    assert f"{blocker} is a file" in finding(report, "backups", "fail")["message"]


def test_the_backup_folder_is_judged_as_dbguardd_judges_it(setup: Home) -> None:
    config = setup.root / "config" / "dbguard" / "config.toml"
    config.parent.mkdir(parents=True)
    (setup.root / "large-disk").mkdir()
    (setup.root / "linked").symlink_to(setup.root / "large-disk")
    (setup.root / "a-file").write_text("")
    for folder, state in (("linked", "ok"), ("a-file", "fail")):
        config.write_text(f"backup_dir = '{setup.root / folder}'\n")
        _, report = doctor(setup)
        found = finding(report, "backups", state)
        if state == "fail":
            assert "is a file, not a folder" in found["message"]
            listed = setup.ctl("list-backups")  # not "no backups in ..."
            assert listed.returncode == 75 and b"is a file, not a folder" in listed.stderr


def test_a_shim_whose_interpreter_is_gone_is_stale(setup: Home, daemon: Daemon) -> None:
    shim = setup.shims / "alembic"
    first, rest = shim.read_text().split("\n", 1)
    shim.write_text(f"#!/nonexistent/python3 -IS\n{rest}")  # Python moved or removed

    code, report = doctor(setup)

    assert code == 1
    assert "/nonexistent/python3" in finding(report, "shim alembic", "fail")["message"]
    assert first.startswith("#!/")


def test_shims_without_the_script_shell_are_named(setup: Home, daemon: Daemon) -> None:
    """Shims written by a dbguard from before package scripts got a shell of their own
    still guard what they are named for: a warning, with the way to get the rest."""
    assert "script shell" not in {f["check"] for f in doctor(setup)[1]["findings"]}
    (setup.shims / script_shell.WRAPPER_NAME).unlink()

    code, report = doctor(setup)

    assert code == 0, failures(report)
    warning = finding(report, "script shell", "warn")
    assert "node_modules/.bin unguarded" in warning["message"]
    assert warning["fix"].startswith("dbguardctl install")


@pytest.mark.parametrize(("folder", "stale"), [("/gone/client", True), ("josé 😀", False)])
def test_a_shim_whose_client_folder_is_gone_is_stale(
    setup: Home, daemon: Daemon, folder: str, stale: bool
) -> None:
    client = setup.root / folder  # absolute either way
    if not stale:
        client.mkdir()  # a folder that exists, however its name is spelled in the shim
    shim = setup.shims / "alembic"
    text = re.sub(
        r"sys\.path\[:0\] = \[[^\]]*\]", f"sys.path[:0] = [{str(client)!r}]", shim.read_text()
    )
    shim.write_text(text)

    code, report = doctor(setup)

    if stale:
        assert code == 1
        assert str(client) in finding(report, "shim alembic", "fail")["message"]
    else:
        assert finding(report, "shim alembic", "ok")


def test_project_paths_that_bypass_the_shims_are_named(setup: Home, daemon: Daemon) -> None:
    project = setup.root / "project"
    (project / "package.json").write_text("{}")
    scripts = {
        "node_modules/.bin/prisma": "#!/usr/bin/env node\n",
        "node_modules/.bin/drizzle-kit": "#!/usr/bin/env node\n",
        "vendor/bin/phpunit": "#!/usr/bin/env php\n<?php\n",
        "vendor/bin/pest": "#!/usr/bin/php\n<?php\n",
        "bin/rails": "#!/usr/bin/env ruby\n",
    }
    for relative, text in scripts.items():
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    make_venv(project / ".venv")

    code, report = doctor(setup, cwd=project / "node_modules")  # found from a subfolder too

    assert code == 0, failures(report)  # habits to change, not a broken setup
    messages = {
        f["message"].split(" ", 1)[0]: f for f in report["findings"] if f["check"] == "project"
    }
    assert messages["./vendor/bin/phpunit"]["level"] == "ok"  # env php -> the php shim
    for bypass in (
        "./node_modules/.bin/prisma",
        "./node_modules/.bin/drizzle-kit",
        "./vendor/bin/pest",
        "./bin/rails",
    ):
        assert messages[bypass]["level"] == "warn", bypass
    assert "npx prisma" in messages["./node_modules/.bin/prisma"]["fix"]
    assert "npx drizzle-kit" in messages["./node_modules/.bin/drizzle-kit"]["fix"]
    python_m = messages["`python"]
    assert python_m["level"] == "warn" and ".venv/bin/python" in python_m["message"]


def test_units_pointing_at_a_removed_installation_are_stale(setup: Home, daemon: Daemon) -> None:
    from dbguard.ctl import install

    units = setup.root / "config" / "systemd" / "user"
    units.mkdir(parents=True)
    rendered = install.render_units(install.DEFAULT_SOCKET_SPEC, ["/gone/venv/bin/dbguardd"])
    for name, text in rendered.items():
        (units / name).write_text(text)

    code, report = doctor(setup)

    assert code == 1
    stale = finding(report, "systemd", "fail")
    assert "/gone/venv/bin/dbguardd" in stale["message"]
    assert stale["fix"].startswith("dbguardctl install")


# Debian's and Ubuntu's ~/.bashrc begin by returning from any shell with no prompt.
NOT_INTERACTIVE_RETURN = "case $- in\n    *i*) ;;\n      *) return;;\nesac\n"


def shell_cases(shims_folder: Path) -> dict[str, tuple[dict[str, str], dict[str, str], str]]:
    """Per shell: startup files that put the shims first only at a prompt, files that
    do it in every shell, and what doctor then says."""
    line = f'export PATH="{shims_folder}:$PATH"\n'
    fish_line = f"set -gx PATH {shims_folder} $PATH\n"
    return {
        "bash": (
            {".bashrc": NOT_INTERACTIVE_RETURN + line},
            # ~/.profile sources ~/.bashrc, as Debian's does.
            {".bashrc": line + NOT_INTERACTIVE_RETURN, ".profile": '. "$HOME/.bashrc"\n'},
            "`bash -lc` and `ssh host cmd` find the shims first",
        ),
        "zsh": ({".zshrc": line}, {".zshenv": line}, "`zsh -c` and `zsh -lc` find the shims first"),
        "fish": (
            {".config/fish/config.fish": f"if status is-interactive\n    {fish_line}end\n"},
            {".config/fish/config.fish": fish_line},
            "`fish -c` finds the shims first",
        ),
    }


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shells_without_a_prompt_must_find_the_shims_too(
    setup: Home, daemon: Daemon, shell: str
) -> None:
    program = shutil.which(shell)
    if program is None:
        pytest.skip(f"{shell} is not installed")
    home = Path(setup.extra_env["HOME"])
    only_at_a_prompt, everywhere, ok = shell_cases(setup.shims)[shell]
    setup.extra_env["SHELL"] = program

    def write(files: dict[str, str]) -> None:
        for name in (".bashrc", ".profile", ".zshrc", ".zshenv", ".config/fish/config.fish"):
            (home / name).unlink(missing_ok=True)
        for name, text in files.items():
            (home / name).parent.mkdir(parents=True, exist_ok=True)
            (home / name).write_text(text)

    write(only_at_a_prompt)
    code, report = doctor(setup)

    # A warning, not a failure: the shells you type in are guarded.
    assert code == 0, failures(report)
    warned = [f for f in report["findings"] if f["check"] == "shells without a prompt"]
    assert warned and all(f["level"] == "warn" for f in warned)
    # The first default command with a shim is the one asked about.
    assert all("finds no php: the shims are not on its PATH" in f["message"] for f in warned)
    fixes = {f["message"].split(" ")[0]: f["fix"] for f in warned}
    if shell == "bash":
        assert set(fixes) == {"`bash", "`ssh"}
        assert "at the end of ~/.profile" in fixes["`bash"]
        assert "at the top of ~/.bashrc" in fixes["`ssh"]
    elif shell == "zsh":
        assert all("~/.zshenv" in fix for fix in fixes.values())
    else:
        assert "outside `if status is-interactive`" in fixes["`fish"]
    assert "shell-init " + shell in next(iter(fixes.values()))

    write(everywhere)
    code, report = doctor(setup)

    assert code == 0, failures(report)
    assert finding(report, "shells without a prompt", "ok")["message"] == ok


def test_a_shell_without_a_prompt_that_runs_another_binary_names_it(
    setup: Home, daemon: Daemon
) -> None:
    home = Path(setup.extra_env["HOME"])
    own = home / ".local" / "bin"
    own.mkdir(parents=True)
    (own / "php").write_text("#!/bin/sh\n")
    (own / "php").chmod(0o755)
    # The shims go first, then ~/.local/bin in front of them, as ~/.profile does it.
    (home / ".bashrc").write_text(
        f'export PATH="{setup.shims}:$PATH"\nexport PATH="$HOME/.local/bin:$PATH"\n'
    )
    (home / ".profile").write_text('. "$HOME/.bashrc"\n')

    _, report = doctor(setup)

    messages = [f["message"] for f in report["findings"] if f["check"] == "shells without a prompt"]
    assert messages == [
        f"`bash -lc` (a login shell: some AI agents, `ssh -t`) runs {own / 'php'}, not the "
        "shim; commands run there are not guarded",
        f"`ssh host cmd` (bash -c, which reads ~/.bashrc under sshd) runs {own / 'php'}, not "
        "the shim; commands run there are not guarded",
    ]


def test_a_login_zsh_whose_zprofile_puts_a_folder_first_is_told_to_fix_zprofile(
    setup: Home, daemon: Daemon
) -> None:
    """~/.zshenv puts the shims first, then a login zsh reads ~/.zprofile, which puts
    another folder (brew's, pyenv's) in front of them."""
    program = shutil.which("zsh")
    if program is None:
        pytest.skip("zsh is not installed")
    setup.extra_env["SHELL"] = program
    home = Path(setup.extra_env["HOME"])
    brew = home / "brew" / "bin"
    brew.mkdir(parents=True)
    (brew / "php").write_text("#!/bin/sh\n")
    (brew / "php").chmod(0o755)
    (home / ".zshenv").write_text(f'export PATH="{setup.shims}:$PATH"\n')
    (home / ".zprofile").write_text(f'export PATH="{brew}:$PATH"\n')

    _, report = doctor(setup)

    [warned] = [f for f in report["findings"] if f["check"] == "shells without a prompt"]
    assert warned["message"] == (
        f"`zsh -lc` runs {brew / 'php'}, not the shim; commands run there are not guarded"
    )
    assert warned["fix"].endswith("at the end of ~/.zprofile, when it or /etc/zprofile sets PATH")

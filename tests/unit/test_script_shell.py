"""The shell package scripts run in: which variables a package manager's shim sets, the
.npmrc setting it keeps, and the wrapper itself, run for real."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dbguard import script_shell, shims
from dbguard.script_shell import INNER_VARIABLE, VARIABLE, environment, ini_value

WRAPPER = Path("/home/u/.local/share/dbguard/shims/.dbguard-script-shell")


def test_a_package_manager_gets_the_wrapper_and_keeps_the_shell_it_would_have_had() -> None:
    assert environment({}, WRAPPER, None) == {VARIABLE: str(WRAPPER)}
    assert environment({}, WRAPPER, "/bin/bash") == {
        VARIABLE: str(WRAPPER),
        INNER_VARIABLE: "/bin/bash",
    }
    # The environment's own setting outranks an .npmrc's, as in npm, in its own case.
    assert environment({"NPM_CONFIG_SCRIPT_SHELL": "/bin/zsh"}, WRAPPER, "/bin/bash") == {
        "NPM_CONFIG_SCRIPT_SHELL": str(WRAPPER),
        INNER_VARIABLE: "/bin/zsh",
    }
    # A script's own `npm run` inherits the wrapper: nothing to change, and the shell
    # the outer one chose stays.
    inherited = {VARIABLE: str(WRAPPER), INNER_VARIABLE: "/bin/zsh"}
    assert environment(inherited, WRAPPER, "/bin/bash") == {}


def test_npmrc_values() -> None:
    text = '; comment\n# another\nregistry=https://r.example\nscript-shell = "/bin/bash"\n'
    assert ini_value(text, "script-shell") == "/bin/bash"
    assert ini_value("script_shell=/bin/zsh\nscript-shell=/bin/dash\n", "script-shell") == (
        "/bin/dash"  # the last one counts
    )
    assert ini_value("script-shell-x=/bin/zsh\n#script-shell=/bin/zsh\n", "script-shell") is None


def test_the_npmrc_setting_comes_from_the_project_then_the_user(tmp_path: Path) -> None:
    project, home = tmp_path / "app", tmp_path / "home"
    (project / "src").mkdir(parents=True)
    home.mkdir()
    (project / "package.json").write_text("{}")
    env = {"HOME": str(home)}
    assert script_shell.npmrc_setting(project / "src", env) is None
    (home / ".npmrc").write_text("script-shell=/bin/zsh\n")
    assert script_shell.npmrc_setting(project / "src", env) == "/bin/zsh"
    (project / ".npmrc").write_text("script-shell=/bin/bash\n")
    assert script_shell.npmrc_setting(project / "src", env) == "/bin/bash"
    elsewhere = tmp_path / "npmrc"
    elsewhere.write_text("script-shell=/bin/dash\n")
    (project / ".npmrc").unlink()
    assert script_shell.npmrc_setting(
        project, {**env, "npm_config_userconfig": str(elsewhere)}
    ) == ("/bin/dash")


def test_the_wrapper_puts_the_shims_first_and_runs_the_chosen_shell(tmp_path: Path) -> None:
    folder, package_bin = tmp_path / "shims", tmp_path / "node_modules" / ".bin"
    package_bin.mkdir(parents=True)
    for where in (package_bin, folder):
        where.mkdir(exist_ok=True)
        tool = where / "prisma"
        tool.write_text(f"#!/bin/sh\necho {where.parent.name}\n")
        tool.chmod(0o755)
    shims.install(folder, [])
    wrapper = script_shell.wrapper_in(folder)
    assert wrapper is not None
    # As npm runs a script: the package's binaries first, then the wrapper `-c SCRIPT`.
    env = {"PATH": f"{package_bin}:/usr/bin:/bin"}
    ran = subprocess.run(
        [str(wrapper), "-c", "prisma; echo $0"], env=env, capture_output=True, check=True
    )
    assert ran.stdout.decode().split() == [tmp_path.name, "sh"]  # the shims' prisma
    bash = subprocess.run(
        [str(wrapper), "-c", 'echo "$BASH_VERSION"'],
        env={**env, INNER_VARIABLE: "bash"},
        capture_output=True,
        check=True,
    )
    assert bash.stdout.strip()  # the shell the user had chosen ran the script


def test_the_wrapper_goes_with_the_last_shim(tmp_path: Path) -> None:
    folder = tmp_path / "shims"
    shims.install(folder, ["npm", "php"])
    wrapper = folder / script_shell.WRAPPER_NAME
    assert script_shell.wrapper_in(folder) == wrapper
    assert [p.name for p in shims.installed(folder)] == ["npm", "php"]  # not a shim
    shims.uninstall(folder, ["php"])
    assert wrapper.exists()
    shims.uninstall(folder)
    assert not wrapper.exists() and list(folder.iterdir()) == []

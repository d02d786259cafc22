"""The shell package scripts run in: which variables a package manager's shim sets, the
.npmrc setting it keeps, and the wrapper itself, run for real."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dbguard import script_shell, shims
from dbguard.script_shell import INNER_VARIABLE, VARIABLE, environment, names_setting

WRAPPER = Path("/home/u/.local/share/dbguard/shims/.dbguard-script-shell")


def test_a_package_manager_gets_the_wrapper_and_keeps_the_shell_it_would_have_had() -> None:
    assert environment({}, WRAPPER) == {VARIABLE: str(WRAPPER)}
    # The environment's own choice is kept, in every spelling it is given in (npm takes
    # the last of two).
    assert environment({"NPM_CONFIG_SCRIPT_SHELL": "/bin/zsh"}, WRAPPER) == {
        "NPM_CONFIG_SCRIPT_SHELL": str(WRAPPER),
        INNER_VARIABLE: "/bin/zsh",
    }
    both = {"NPM_CONFIG_SCRIPT_SHELL": "/bin/zsh", VARIABLE: "/bin/bash"}
    assert environment(both, WRAPPER) == {
        "NPM_CONFIG_SCRIPT_SHELL": str(WRAPPER),
        VARIABLE: str(WRAPPER),
        INNER_VARIABLE: "/bin/bash",
    }
    # A script's own `npm run` inherits the wrapper: nothing to change.
    assert environment({VARIABLE: str(WRAPPER), INNER_VARIABLE: "/bin/zsh"}, WRAPPER) == {}
    # Another shims folder's wrapper is replaced, never run by this one: the shell it
    # was to run is still in the environment.
    other = {VARIABLE: "/opt/shims/.dbguard-script-shell", INNER_VARIABLE: "/bin/zsh"}
    assert environment(other, WRAPPER) == {VARIABLE: str(WRAPPER)}


def test_a_script_shell_set_in_a_file_is_seen() -> None:
    assert names_setting('; comment\nregistry=https://r.example\nscript-shell = "/bin/bash"\n')
    assert names_setting("script_shell=${HOME}/bin/bash ; mine\n")
    assert names_setting('script-shell "/bin/bash"\n')  # .yarnrc
    assert not names_setting("script-shell-x=/bin/zsh\n#script-shell=/bin/zsh\n;script-shell=a")
    assert not names_setting("=odd\n = \n")  # no key: no crash either


def test_files_from_the_project_up_then_the_user_then_global(tmp_path: Path) -> None:
    root, home, etc = tmp_path / "repo", tmp_path / "home", tmp_path / "etc"
    member = root / "packages" / "api"
    member.mkdir(parents=True)
    home.mkdir()
    etc.mkdir()
    env, global_files = {"HOME": str(home)}, (str(etc / "npmrc"),)

    def found(extra: dict[str, str] | None = None) -> Path | None:
        return script_shell.set_in_files(
            member, {**env, **(extra or {})}, global_files=global_files
        )

    assert found() is None
    (etc / "npmrc").write_text("script-shell=/bin/ksh\n")
    assert found() == etc / "npmrc"
    (home / ".npmrc").write_text("script-shell=/bin/zsh\n")
    assert found() == home / ".npmrc"
    (root / ".yarnrc").write_text('script-shell "/bin/bash"\n')  # a workspace's root
    assert found() == root / ".yarnrc"
    (root / ".yarnrc").unlink()
    (home / ".npmrc").unlink()
    elsewhere = tmp_path / "npmrc"
    elsewhere.write_text("script_shell=/bin/dash\n")
    assert found({"NPM_CONFIG_USERCONFIG": str(elsewhere)}) == elsewhere


def test_the_shims_folder_is_found_on_the_callers_path(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (first / "npm").write_text("#!/bin/sh\n")  # not a shim
    shims.install(second, ["npm"])
    path = f"{first}:relative:{second}"
    assert script_shell.shims_folder("npm", {"PATH": path}, str(tmp_path)) == second
    assert script_shell.shims_folder("pnpm", {"PATH": path}, str(tmp_path)) is None
    (tmp_path / "relative").mkdir()
    shims.install(tmp_path / "relative", ["npm"])
    assert script_shell.shims_folder("npm", {"PATH": path}, str(tmp_path)) == (
        tmp_path / "relative"
    )


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
    # Another folder's wrapper named as the shell to run is not run (it would run
    # itself for ever): sh is. And with no PATH at all, the shims' folder is the PATH.
    loop = {**env, INNER_VARIABLE: f"/opt/shims/{script_shell.WRAPPER_NAME}"}
    ran = subprocess.run(
        [str(wrapper), "-c", 'echo "$0"'], env=loop, capture_output=True, check=True
    )
    assert ran.stdout.decode().strip() == "sh"
    alone = subprocess.run(
        [str(wrapper), "-c", 'echo "$PATH"'],
        env={"PATH": "", INNER_VARIABLE: "/bin/sh"},
        capture_output=True,
        check=True,
    )
    assert alone.stdout.decode().strip() == str(folder.resolve())


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


def test_a_shims_folder_whose_name_is_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / os.fsdecode(b"shims-\xff")
    shims.install(folder, ["npm"])
    wrapper = script_shell.wrapper_in(folder)
    assert wrapper is not None
    ran = subprocess.run(
        [str(wrapper), "-c", 'echo "$PATH"'], env={"PATH": "/bin"}, capture_output=True
    )
    assert ran.stdout.split(b":")[0] == os.fsencode(folder)


def test_only_small_regular_files_of_this_user_or_root_are_read(tmp_path: Path) -> None:
    """A FIFO named .npmrc would block the daemon, /dev/zero never end, and another
    user's /tmp/.npmrc is not this user's setting: none of them is read."""
    project = tmp_path / "app"
    project.mkdir()
    os.mkfifo(project / ".npmrc")  # opened and read, this would hang the test
    (project / ".yarnrc").symlink_to("/dev/zero")
    assert script_shell.set_in_files(project, {}, global_files=()) is None
    big = tmp_path / ".npmrc"
    big.write_text("script-shell=/bin/bash\n" + "#" * script_shell.MAX_SETTINGS_BYTES)
    assert script_shell.set_in_files(project, {}, global_files=()) is None
    big.write_text("script-shell=/bin/bash\n")
    assert script_shell.set_in_files(project, {}, global_files=()) == big
    if os.getuid() == 0:  # only root can give a file away
        os.chown(big, 4321, 4321)
        assert script_shell.set_in_files(project, {}, global_files=()) is None


def test_a_package_managers_own_global_file(tmp_path: Path) -> None:
    prefix = tmp_path / "nvm" / "versions" / "node" / "v20"
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc" / "npmrc").write_text("script-shell=/bin/bash\n")
    found = script_shell.set_in_files(tmp_path, {}, prefix, global_files=())
    assert found == prefix / "etc" / "npmrc"

"""The shell package scripts run in: the shims first on PATH again.

npm, pnpm and yarn run a package script with the project's node_modules/.bin ahead of
everything on PATH, so a program the script starts (`node scripts/reset.js`, `tsx`, a
package's own binary) that runs `prisma migrate reset` used to reach the project's own
prisma, past the shims. They all take the shell they run scripts with from npm's
`script-shell` setting, which the environment can give (`npm_config_script_shell`):
the daemon tells their shims to set it to a small sh script in the shims folder that
puts that folder first on PATH and runs the shell the user would have had. The programs
the script runs are then guarded as they are everywhere else, each as a command of its
own run under the script's (DBGUARD_PARENT_OP).

The shell the user would have had: the one their environment names, else `sh`, npm's
own default (looked up on PATH). A `script-shell` set in a file (.npmrc, .yarnrc) is
npm's to read, with its variables, comments, workspaces and prefixes: where any such
file dbguard can find sets one, the environment is left alone and scripts run as they
always did (README, Limits).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dbguard.client.shim import is_shim

WRAPPER_NAME = ".dbguard-script-shell"  # in the shims folder; a dot file runs by no name
VARIABLE = "npm_config_script_shell"  # npm reads npm_config_* in any case
INNER_VARIABLE = "DBGUARD_SCRIPT_SHELL"  # the shell the wrapper runs
SETTING = "script-shell"
MARKER = "# dbguard script shell"
# Where npm, pnpm and yarn 1 read settings, besides each folder's .npmrc and .yarnrc
# from the project up: the user's file, and the global files of the usual prefixes.
USER_FILES = (".npmrc", ".yarnrc")
GLOBAL_FILES = ("/etc/npmrc", "/usr/etc/npmrc", "/usr/local/etc/npmrc", "/etc/yarnrc")

# The inner shell is never a wrapper (one from another shims folder, inherited): that
# would run itself for ever.
TEMPLATE = """#!/bin/sh
{marker}: npm, pnpm and yarn run package scripts with it (npm_config_script_shell),
# so the programs a script starts find the shims before node_modules/.bin.
# Written by `dbguardctl shims install`; remove with `dbguardctl shims uninstall`.
PATH={folder}${{PATH:+:$PATH}}
export PATH
inner=${{{inner}:-sh}}
case $inner in */{name} | {name}) inner=sh ;; esac
exec "$inner" "$@"
"""


def render(folder: Path) -> str:
    quoted = "'" + str(folder.resolve()).replace("'", "'\\''") + "'"
    return TEMPLATE.format(marker=MARKER, folder=quoted, inner=INNER_VARIABLE, name=WRAPPER_NAME)


def is_wrapper(value: str) -> bool:
    return os.path.basename(value) == WRAPPER_NAME


def environment(env: Mapping[str, str], wrapper: Path) -> dict[str, str]:
    """The variables to give a package manager run with `env` so its scripts run in
    `wrapper`, keeping the shell the environment names (in every spelling it has).
    Nothing when it already names `wrapper` (a script's own `npm run`). A wrapper of
    another shims folder is replaced, and the shell it was to run kept."""
    given = {name: value for name, value in env.items() if name.lower() == VARIABLE}
    if given and all(value == str(wrapper) for value in given.values()):
        return {}
    chosen = [value for value in given.values() if value and not is_wrapper(value)]
    set_to = {name: str(wrapper) for name in given or [VARIABLE]}
    return {**set_to, **({INNER_VARIABLE: chosen[-1]} if chosen else {})}


def set_in_files(
    cwd: Path, env: Mapping[str, str], global_files: tuple[str, ...] = GLOBAL_FILES
) -> Path | None:
    """The first settings file that sets a script shell: .npmrc or .yarnrc in `cwd` or
    a folder above it, the user's (NPM_CONFIG_USERCONFIG, else in HOME), or a global
    one. Only whether the setting is there is read; what it says is npm's to work out.
    Files that cannot be read say nothing."""
    files = [folder / name for folder in (cwd, *cwd.parents) for name in USER_FILES]
    for name, value in env.items():
        if name.lower() in ("npm_config_userconfig", "npm_config_globalconfig") and value:
            files.append(Path(value))
    if env.get("HOME"):
        files += [Path(env["HOME"]) / name for name in USER_FILES]
    files += [Path(name) for name in global_files]
    for file in files:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if names_setting(text):
            return file
    return None


def names_setting(text: str) -> bool:
    """Whether .npmrc or .yarnrc text sets the script shell (`script-shell=...`,
    `script_shell = ...`, yarn's `script-shell "..."`), in lines that are not comments."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in ";#":
            continue
        key = line.split("=", 1)[0].split(None, 1)[0]
        if key.strip("\"'").replace("_", "-").lower() == SETTING:
            return True
    return False


def shims_folder(name: str, env: Mapping[str, str], cwd: str) -> Path | None:
    """The folder of the first shim named `name` on the caller's PATH (relative folders
    from the caller's `cwd`): the shim that ran, or the first that would."""
    for folder in env.get("PATH", "").split(os.pathsep):
        path = os.path.join(cwd, folder, name)
        if folder and is_shim(path):
            return Path(path).parent
    return None


def wrapper_in(folder: Path) -> Path | None:
    """The wrapper in the shims folder `folder`, if it is there (shims written by an
    older dbguard have none: scripts then run as they always did)."""
    wrapper = folder / WRAPPER_NAME
    return wrapper if os.access(wrapper, os.X_OK) else None

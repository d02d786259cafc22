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
import stat
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
MAX_SETTINGS_BYTES = 64 * 1024  # a longer file is no settings file; not read

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
    cwd: Path,
    env: Mapping[str, str],
    prefix: Path | None = None,
    global_files: tuple[str, ...] = GLOBAL_FILES,
) -> Path | None:
    """The first settings file that sets a script shell: .npmrc or .yarnrc in `cwd` or
    a folder above it, the user's (NPM_CONFIG_USERCONFIG, else in HOME), the global one
    of the package manager installed under `prefix` (nvm's, Homebrew's), or one of the
    usual global ones. Only whether the setting is there is read; what it says is npm's
    to work out. A file that cannot be read, is no regular file (a FIFO would block,
    /dev/zero never end), is larger than 64 KiB, or belongs to another user (a
    /tmp/.npmrc) says nothing."""
    files = [folder / name for folder in (cwd, *cwd.parents) for name in USER_FILES]
    for name, value in env.items():
        if name.lower() in ("npm_config_userconfig", "npm_config_globalconfig") and value:
            files.append(Path(value))
    if env.get("HOME"):
        files += [Path(env["HOME"]) / name for name in USER_FILES]
    if prefix is not None:
        files.append(prefix / "etc" / "npmrc")
    files += [Path(name) for name in global_files]
    for file in files:
        text = _settings_text(file)
        if text is not None and names_setting(text):
            return file
    return None


def _settings_text(file: Path) -> str | None:
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SETTINGS_BYTES:
            return None
        if info.st_uid not in (os.getuid(), 0):
            return None
        return os.read(fd, MAX_SETTINGS_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def names_setting(text: str) -> bool:
    """Whether .npmrc or .yarnrc text sets the script shell (`script-shell=...`,
    `script_shell = ...`, yarn's `script-shell "..."`), in lines that are not comments."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in ";#":
            continue
        words = line.split("=", 1)[0].split(None, 1)
        if words and words[0].strip("\"'").replace("_", "-").lower() == SETTING:
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

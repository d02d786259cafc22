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

The shell the user would have had: the one their environment names, else the one a
project or user .npmrc names (`script-shell=/bin/bash`), else `sh`, as npm's own default
(looked up on PATH).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

WRAPPER_NAME = ".dbguard-script-shell"  # in the shims folder; a dot file runs by no name
VARIABLE = "npm_config_script_shell"  # npm reads npm_config_* in any case
INNER_VARIABLE = "DBGUARD_SCRIPT_SHELL"  # the shell the wrapper runs
SETTING = "script-shell"
MARKER = "# dbguard script shell"

TEMPLATE = """#!/bin/sh
{marker}: npm, pnpm and yarn run package scripts with it (npm_config_script_shell),
# so the programs a script starts find the shims before node_modules/.bin.
# Written by `dbguardctl shims install`; remove with `dbguardctl shims uninstall`.
PATH={folder}:$PATH
export PATH
exec "${{{inner}:-sh}}" "$@"
"""


def render(folder: Path) -> str:
    quoted = "'" + str(folder.resolve()).replace("'", "'\\''") + "'"
    return TEMPLATE.format(marker=MARKER, folder=quoted, inner=INNER_VARIABLE)


def configured(env: Mapping[str, str]) -> tuple[str, str] | None:
    """The environment's script-shell variable, as (name, value), in whatever case it
    was given; None when unset or empty."""
    for name, value in env.items():
        if name.lower() == VARIABLE and value:
            return name, value
    return None


def environment(env: Mapping[str, str], wrapper: Path, from_files: str | None) -> dict[str, str]:
    """The variables to give a package manager run with `env` so its scripts run in
    `wrapper`; `from_files` is the script shell an .npmrc names. Nothing when the
    environment already names the wrapper (a script's own `npm run`: the shell it
    names is already the one to run)."""
    given = configured(env)
    name, value = given or (VARIABLE, "")
    if value == str(wrapper):
        return {}
    inner = value or from_files
    return {name: str(wrapper), **({INNER_VARIABLE: inner} if inner else {})}


def npmrc_setting(cwd: Path, env: Mapping[str, str]) -> str | None:
    """The script shell named in the project's .npmrc (in the nearest folder up from
    `cwd` that holds a package.json or node_modules, as npm finds its project) or, if
    not there, the user's (NPM_CONFIG_USERCONFIG, else ~/.npmrc). Files that cannot be
    read name nothing."""
    files: list[Path] = []
    for folder in (cwd, *cwd.parents):
        if (folder / "package.json").is_file() or (folder / "node_modules").is_dir():
            files.append(folder / ".npmrc")
            break
    user = next((v for k, v in env.items() if k.lower() == "npm_config_userconfig"), None)
    if user:
        files.append(Path(user))
    elif env.get("HOME"):
        files.append(Path(env["HOME"]) / ".npmrc")
    for file in files:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        value = ini_value(text, SETTING)
        if value:
            return value
    return None


def ini_value(text: str, key: str) -> str | None:
    """The last value of `key` in .npmrc text (ini lines; `;` and `#` start comments;
    npm reads `script_shell` as `script-shell` too); quotes around it taken off."""
    found: str | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in ";#" or "=" not in line:
            continue
        name, _, value = line.partition("=")
        if name.strip().replace("_", "-").lower() != key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        found = value
    return found


def wrapper_in(folder: Path) -> Path | None:
    """The wrapper in the shims folder `folder`, if it is there (shims written by an
    older dbguard have none: scripts then run as they always did)."""
    wrapper = folder / WRAPPER_NAME
    return wrapper if os.access(wrapper, os.X_OK) else None

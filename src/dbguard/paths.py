"""Where dbguard keeps things, following the XDG base directory spec.

Pure: every function takes the environment as a mapping, so tests pass plain dicts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

Stamp = tuple[int, int, int, int] | None  # (inode, size, mtime_ns, ctime_ns), None when absent


def file_stamp(path: Path) -> Stamp:
    """What changes whenever the file at `path` is written, replaced or removed."""
    try:
        st = path.stat()
    except (OSError, ValueError):  # absent, unreadable folder, a name too long, a NUL
        return None
    # ctime too: a file rewritten in place at its old size and given its old mtime back
    # (`cp -p`, `touch -r`, rsync, tar) keeps inode, size and mtime, never its ctime.
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# A change older than this shows in any later change's stamp; one within the
# filesystem clock's tick of an earlier one may leave the stamp as it was (same size,
# same times), so what was read then is not trusted to be current by its stamp alone.
SETTLED_NS = 1_000_000_000


def exists(path: Path) -> bool:
    """Whether `path` exists; False, not an error, for a name too long, an embedded NUL
    or a folder that cannot be searched."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    value = env.get(var, "")
    # The spec says relative paths are invalid and must be ignored.
    if value and Path(value).is_absolute():
        return Path(value)
    return Path(env.get("HOME") or Path.home()) / fallback


def config_file(env: Mapping[str, str]) -> Path:
    """The user's config: DBGUARD_CONFIG, else $XDG_CONFIG_HOME/dbguard/config.toml."""
    if env.get("DBGUARD_CONFIG"):
        return Path(env["DBGUARD_CONFIG"])
    return _xdg(env, "XDG_CONFIG_HOME", ".config") / "dbguard" / "config.toml"


# What XDG_RUNTIME_DIR is in a login session (systemd-logind makes it, 0700, ours).
LOGIN_RUNTIME_DIR = "/run/user/{uid}"


def runtime_dir(env: Mapping[str, str]) -> Path:
    """$XDG_RUNTIME_DIR/dbguard; without it, the login session's runtime folder when it
    exists and is ours, else a per-user folder under /tmp.

    A task runner that clears the environment (turbo's strict mode) drops
    XDG_RUNTIME_DIR: the login folder keeps its shims talking to the daemon systemd
    started there, not a second one. Containers and `su` sessions often have neither;
    the /tmp fallback is made 0700 and owned by the user (checked by the daemon).
    """
    base = env.get("XDG_RUNTIME_DIR", "")
    if base and Path(base).is_absolute():
        return Path(base) / "dbguard"
    login = LOGIN_RUNTIME_DIR.format(uid=os.getuid())
    try:
        if os.stat(login).st_uid == os.getuid():
            return Path(login) / "dbguard"
    except OSError:
        pass
    return Path("/tmp") / f"dbguard-{os.getuid()}"  # noqa: S108 (ownership checked at start)


def default_socket(env: Mapping[str, str]) -> Path:
    """Socket path before config: DBGUARD_SOCKET, else the runtime folder's dbguard.sock.

    The shim client (client/shim.py) repeats this rule in stdlib-only code; a test
    keeps the two in step.
    """
    if env.get("DBGUARD_SOCKET"):
        return Path(env["DBGUARD_SOCKET"])
    return runtime_dir(env) / "dbguard.sock"


def data_dir(env: Mapping[str, str]) -> Path:
    return _xdg(env, "XDG_DATA_HOME", ".local/share") / "dbguard"


def state_dir(env: Mapping[str, str]) -> Path:
    return _xdg(env, "XDG_STATE_HOME", ".local/state") / "dbguard"


def default_shims_dir(env: Mapping[str, str]) -> Path:
    return data_dir(env) / "shims"

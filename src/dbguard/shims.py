"""Writing and removing shims: tiny Python scripts named like the commands they guard.

Absolute paths baked in (rbenv style), so a shim costs the start of the interpreter on
the stdlib-only client and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import py_compile
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from dbguard import script_shell
from dbguard.client import shim as shim_client

MARKER = shim_client.SHIM_MARKER.decode()
# The shim is a Python script run by the interpreter on its #! line, with no shell in
# between: a shell would drop environment variables whose names are not shell names
# (`spring.datasource.url`, `ODD-NAME`) before the real command could see them, and
# would cost an exec. It imports the client rather than running it as a script, so
# Python uses the client's cached bytecode; only these few lines are compiled.
TEMPLATE = """#!{python} -IS
{marker} for `{name}`: dbguardd backs up what it touches before the real {name} runs.
# Written by `dbguardctl shims install`; remove with `dbguardctl shims uninstall`.
{bootstrap}
"""
BOOTSTRAP = (
    "import sys; sys.path[:0] = [{client}]; import shim; "
    "shim.run(['-c', {name}, {folder}, *sys.argv[1:]])"
)
# Where the interpreter's path cannot stand on a #! line (a space, or too long for the
# kernel), a sh shim starts it instead, at the cost named above.
SH_TEMPLATE = """#!/bin/sh
{marker} for `{name}`: dbguardd backs up what it touches before the real {name} runs.
# Written by `dbguardctl shims install`; remove with `dbguardctl shims uninstall`.
exec {python} -IS -c {bootstrap} "$@"
"""
# Bytes of the interpreter's path on a #! line: Linux before 5.1 read 127 bytes of it
# (now 255), and the marker on the next line must stay in the 256 bytes is_shim reads.
_SHEBANG_MAX = 120


def _quote(value: str | Path) -> str:
    return "'" + str(value).replace("'", "'\\''") + "'"


def render(name: str, folder: Path, socket: Path | None = None) -> str:
    """The shim for `name` living in `folder`. `socket` is baked in only when the user
    configured one; otherwise the client derives it from the environment."""
    # repr() is a Python literal of the very string (JSON would split a character
    # beyond U+FFFF into two surrogates, and the path would no longer be the same).
    bootstrap = BOOTSTRAP.format(
        client=repr(str(Path(shim_client.__file__).resolve().parent)),
        name=repr(name),
        folder=repr(str(folder.resolve())),
    )
    if socket is not None:
        default = f"os.environ.setdefault('DBGUARD_SOCKET', {str(socket)!r})"
        bootstrap = f"import os; {default}; {bootstrap}"
    python = interpreter()
    fits = len(os.fsencode(python)) <= _SHEBANG_MAX
    if fits and not any(c.isspace() for c in python):
        return TEMPLATE.format(marker=MARKER, name=name, python=python, bootstrap=bootstrap)
    return SH_TEMPLATE.format(
        marker=MARKER, name=name, python=_quote(python), bootstrap=_quote(bootstrap)
    )


def interpreter() -> str:
    """The real interpreter behind this one: the client needs only the standard library,
    and starting the base binary skips the virtualenv's redirection."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def is_shim(path: Path) -> bool:
    return shim_client.is_shim(str(path))


def install(folder: Path, names: list[str], socket: Path | None = None) -> list[Path]:
    """Write (or rewrite) one shim per name, and the shell package scripts run in (see
    dbguard/script_shell.py); never overwrites a file that is not a shim."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError, py_compile.PyCompileError):
        py_compile.compile(shim_client.__file__, doraise=True)  # the bytecode shims load
    written = []
    for name in names:
        path = folder / name
        if path.exists() and not is_shim(path):
            raise FileExistsError(f"{path} exists and is not a dbguard shim; not replacing it")
        _write(path, render(name, folder, socket))
        written.append(path)
    _write(folder / script_shell.WRAPPER_NAME, script_shell.render(folder))
    return written


def _write(path: Path, text: str) -> None:
    """`text` as the executable file `path`, replaced in one step."""
    temp = path.with_name(f".{path.name}.tmp")
    # As Python reads it; a folder name that is not UTF-8 keeps its bytes (the shims
    # spell it as a Python literal, the script shell as it is).
    temp.write_bytes(text.encode("utf-8", "surrogateescape"))
    temp.chmod(0o755)
    os.replace(temp, path)


def installed(folder: Path) -> list[Path]:
    """The shims in `folder`, by name; none where there is no such folder."""
    if not folder.is_dir():
        return []
    return [path for path in sorted(folder.iterdir()) if path.is_file() and is_shim(path)]


def any_found(folder: Path, names: list[str], path_env: str) -> bool:
    """Whether `folder` holds a shim, or one of `names` on `path_env` is one (shims
    installed elsewhere with `--dir`)."""
    if installed(folder):
        return True
    for name in names:
        found = shutil.which(name, path=path_env)
        if found is not None and is_shim(Path(found)):
            return True
    return False


def uninstall(folder: Path, names: list[str] | None = None) -> list[Path]:
    """Remove the shims in `folder` (only those named, when `names` is given)."""
    removed = [path for path in installed(folder) if names is None or path.name in names]
    for path in removed:
        path.unlink()
    if not installed(folder):  # no shim left to run the package managers that use it
        (folder / script_shell.WRAPPER_NAME).unlink(missing_ok=True)
    return removed


@dataclass(frozen=True)
class ShimState:
    name: str
    path: Path
    wins: bool  # `name` on PATH resolves to this shim
    resolves_to: str | None  # what `name` resolves to on PATH
    real: str | None  # the command the shim would run


def state(folder: Path, path_env: str) -> list[ShimState]:
    states: list[ShimState] = []
    for path in installed(folder):
        found = shutil.which(path.name, path=path_env)
        wins = found is not None and Path(found).resolve() == path.resolve()
        saved = os.environ.get("PATH")
        os.environ["PATH"] = path_env
        try:
            real = shim_client.find_real(path.name, str(folder))
        finally:
            if saved is None:
                del os.environ["PATH"]
            else:
                os.environ["PATH"] = saved
        states.append(ShimState(path.name, path, wins, found, real))
    return states

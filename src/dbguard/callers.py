"""The processes a command runs under, read from /proc: what `[production]
agent_programs` is matched against. An AI agent's CLI that starts a command is found
however many shells, package scripts and task runners lie between it and the shim,
whatever variables they set or unset, and whether or not it gives the command a
pseudo-terminal.

Linux only: where /proc is not there, a command runs under no one dbguard can name.
A process that left its parent (double fork, `setsid -f`, a service manager) is
found only up to where it was adopted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dbguard.policy import Caller

MAX_DEPTH = 64  # further up than any real chain of shells and runners
# Programs that run a script named as their first argument: the script is the program
# to name (`node /usr/bin/gemini`, `python3 ~/.local/bin/aider`).
_INTERPRETER_RE = re.compile(r"(node|nodejs|bun|deno|python[0-9.]*|pypy[0-9.]*|ruby|perl)")
_SCRIPT_SUFFIX_RE = re.compile(r"\.(js|mjs|cjs|ts|py|rb|pl)$")


def callers(pid: int, proc: Path = Path("/proc")) -> list[Caller]:
    """The processes above `pid`, its parent first, up to pid 1 (init, or a container's
    first process, which may be the agent itself: `docker run ... codex`); a process
    that ends meanwhile ends the list."""
    found: list[Caller] = []
    current = pid
    for _ in range(MAX_DEPTH):
        parent = _parent(proc, current)
        if parent is None or parent < 1:
            break
        names = _names(proc, parent)
        if names is None:
            break
        found.append(Caller(parent, names))
        if parent == 1:
            break
        current = parent
    return found


def _parent(proc: Path, pid: int) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def _names(proc: Path, pid: int) -> tuple[str, ...] | None:
    """What the process is called; None when it is gone."""
    try:
        comm = (proc / str(pid) / "comm").read_bytes().rstrip(b"\n")
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    names = [os.fsdecode(comm)]
    program = os.fsdecode(os.path.basename(argv[0]))
    names.append(program)
    if _INTERPRETER_RE.fullmatch(program):
        script = next((arg for arg in argv[1:] if arg and not arg.startswith(b"-")), b"")
        names.append(_SCRIPT_SUFFIX_RE.sub("", os.fsdecode(os.path.basename(script))))
    return tuple(dict.fromkeys(name for name in names if name))

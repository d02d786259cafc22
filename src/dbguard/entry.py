"""Console entry points. Each imports its program inside a ^C guard: Python spends a
few hundred milliseconds loading dbguardd or dbguardctl, and a ^C in that time should
end the command quietly (exit 130, as the programs themselves do) rather than print a
traceback of whatever module was loading."""

from __future__ import annotations

import importlib

EXIT_INTERRUPTED = 130


def _run(module: str, function: str = "main") -> int:
    try:
        return int(getattr(importlib.import_module(module), function)())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def dbguardctl() -> int:
    return _run("dbguard.ctl.main")


def dbguardd() -> int:
    return _run("dbguard.daemon.main", "run")

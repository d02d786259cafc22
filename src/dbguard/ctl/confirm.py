"""Ask a person, on the terminal itself: /dev/tty, never stdin, so a pipe cannot answer."""

from __future__ import annotations

import contextlib


def ask_on_terminal(question: str) -> str | None:
    """The typed answer, or None when there is no terminal to ask on."""
    try:
        tty = open("/dev/tty", "r+", encoding="utf-8")  # noqa: SIM115
    except OSError:
        return None
    with contextlib.closing(tty):
        tty.write(question)
        tty.flush()
        return tty.readline().strip()

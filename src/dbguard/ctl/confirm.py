"""Ask a person, on the terminal itself: /dev/tty, never stdin, so a pipe cannot answer."""

from __future__ import annotations

import os


def ask_on_terminal(question: str) -> str | None:
    """The typed answer, or None when there is no terminal to ask on."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        os.write(tty, question.encode())
        typed = b""
        while not typed.endswith(b"\n"):
            chunk = os.read(tty, 1024)
            if not chunk:
                return None  # the terminal went away before a whole line
            typed += chunk
        return typed.decode(errors="replace").strip()
    finally:
        os.close(tty)

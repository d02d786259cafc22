"""Ask a person, on the terminal itself: /dev/tty, never stdin, so a pipe cannot answer."""

from __future__ import annotations

import os

from dbguard.errors import DbguardError


class EndOfInput(DbguardError):
    """The person ended the input (^D) instead of typing an answer and Enter."""

    def __init__(self) -> None:
        super().__init__("no answer was given (end of input), so nothing was done")


def ask_on_terminal(question: str) -> str | None:
    """The typed answer, or None when there is no terminal to ask on. Raises EndOfInput
    when the input ends before a whole line (^D): no answer, not an empty one."""
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
                os.write(tty, b"\n")  # ^D echoes no newline: what follows gets its own line
                raise EndOfInput()
            typed += chunk
        return typed.decode(errors="replace").strip()
    finally:
        os.close(tty)

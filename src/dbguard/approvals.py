"""Human approval for commands that would touch a production database.

Pure bookkeeping with an injectable clock. An approval is bound to exactly one request
(argv, folder, databases, user), expires after `ttl` seconds, and is used once. The
code alone is not enough to approve: the person must type the database's name, at a
prompt that dbguardctl reads from /dev/tty, so a pipe or an agent cannot answer it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dbguard.errors import DbguardError

CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud, typed by hand


class ApprovalError(DbguardError):
    """The code is unknown, expired, already used, or the typed name is wrong."""


@dataclass(frozen=True)
class Request:
    """What an approval is bound to: all of it must match for the approval to apply."""

    argv: tuple[str, ...]
    cwd: str
    databases: tuple[str, ...]  # Target.key of every production database, sorted
    uid: int


@dataclass
class Pending:
    code: str
    request: Request
    names: tuple[str, ...]  # what the person must type (one of them): database names
    reasons: tuple[str, ...]  # why each database is production
    expires_at: float
    approved: bool = False
    used: bool = False


@dataclass
class Approvals:
    ttl: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _pending: dict[str, Pending] = field(default_factory=dict)

    def open(self, request: Request, names: tuple[str, ...], reasons: tuple[str, ...]) -> Pending:
        """A code for `request`; the same request asked again gets the same open code."""
        self._expire()
        for pending in self._pending.values():
            if pending.request == request and not pending.approved:
                return pending
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(6))
        pending = Pending(code, request, names, reasons, self.clock() + self.ttl)
        self._pending[code] = pending
        return pending

    def lookup(self, code: str) -> Pending:
        """The open approval `code`. Raises ApprovalError if unknown, expired or used."""
        self._expire()
        pending = self._pending.get(code.strip().lower())
        if pending is None:
            raise ApprovalError(
                f"no pending approval {code!r} (codes expire after {self.ttl:.0f} s)",
                "run the command again to get a new code",
            )
        if pending.used:
            raise ApprovalError(f"approval {code} was already used", "each approval works once")
        return pending

    def approve(self, code: str, typed: str) -> Pending:
        """Approve `code` if `typed` is the database's name. Raises ApprovalError."""
        pending = self.lookup(code)
        if not typed.strip():  # Enter alone, or ^D at the prompt: the shim sends "" for both
            raise ApprovalError(
                "no answer was given (an empty line or the end of input), so not approved",
                f"type the name exactly: {' or '.join(pending.names)}",
            )
        if typed.strip() not in pending.names:
            raise ApprovalError(
                f"{typed.strip()!r} is not the name of the database; not approved",
                f"type the name exactly: {' or '.join(pending.names)}",
            )
        pending.approved = True
        pending.expires_at = self.clock() + self.ttl  # the person now has ttl to rerun it
        return pending

    def consume(self, request: Request) -> Pending | None:
        """Use up the approval for exactly this request, if one is approved and valid."""
        self._expire()
        for pending in self._pending.values():
            if pending.request == request and pending.approved and not pending.used:
                pending.used = True
                return pending
        return None

    def _expire(self) -> None:
        now = self.clock()
        for code in [c for c, p in self._pending.items() if p.expires_at <= now]:
            del self._pending[code]

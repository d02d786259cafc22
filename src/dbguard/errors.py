"""Errors that reach a user. Each names the problem and, where there is one, the way out."""

from __future__ import annotations


class DbguardError(Exception):
    """Base class: `problem` says what went wrong, `fix` what the user can do about it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}\n  {self.fix}" if self.fix else self.problem


class BackupFailed(DbguardError):
    """No good backup could be made; the guarded command must not run (exit 75)."""


class DumpAgain(BackupFailed):
    """The dump cannot be kept, and one taken again will be: take_backup takes it once
    more (the engine has seen to the difference)."""


class Cancelled(BackupFailed):
    """The daemon is stopping; the partial backup is discarded."""


class NotFound(DbguardError):
    """No backup with that id."""


class Damaged(DbguardError):
    """A backup whose data or manifest does not check out; never restored."""


class RestoreFailed(DbguardError):
    """The restore did not complete; the target was left as it was (RestoreIncomplete
    is the one exception, and says so)."""


class RestoreIncomplete(RestoreFailed):
    """The restore stopped half way (the connection was lost mid-swap, or putting the
    target back failed): the target is neither as it was nor as the backup has it, and
    the message says where its previous contents are."""


class DatabaseMissing(BackupFailed):
    """The database does not exist (yet): there is nothing to back up or to lose."""


class Unreadable(BackupFailed):
    """The database is there but does not read as one (not a database, or damaged)."""


class ConfigError(DbguardError):
    """A config file that cannot be used; the message names file, key and problem."""


class DaemonUnavailable(DbguardError):
    """dbguardd is not listening on the socket."""


class DaemonNotAnswering(DaemonUnavailable):
    """Something accepted the connection but gave no usable answer: stuck, killed
    mid-request, or not dbguardd (another version, another program)."""

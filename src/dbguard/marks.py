"""Production marks dbguard has read, and production verdicts its project's files gave,
remembered outside the databases.

A mark lives inside its database, so it goes with it: a database dropped and made
again by a command dbguard did not follow (a migration run outside the shims, a
`DROP DATABASE` in a SQL client), or while dbguardd was stopped, comes back unmarked
and would be judged by its name and host alone. dbguardd remembers each production
mark it reads, by the database's key; a database remembered as marked production
whose mark is gone is still production, and dbguardd marks it again after the next
command it allows on it. Only `dbguardctl mark` forgets one (`development` and `none`
are confirmed by a person at a terminal), and it notes when a person set a mark by
hand, so that no put-back after a command that was running meanwhile undoes it.

A database judged production because of what its project's files say (a `.dbguard.toml`
entry, APP_ENV=production in `.env`) is remembered the same way, with that reason: a
file edited afterwards (by an agent refused because of it) does not end it. Such a
database gets no mark it never had; `dbguardctl mark development|none` forgets it too.

The register is a small JSON file in dbguard's state folder. It adds protection and
never removes any: an entry that cannot be understood is kept as it is and ignored
(unless its database is remembered anew); a file that cannot be read counts as empty,
with a warning in dbguardd's log, and is never written over: one that holds no register
is moved aside (kept for a person to look at) before a new one starts, and one that
fails to read (an I/O error) is left as it is, the change not made. The marks inside
the databases count whatever the register holds.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dbguard import paths
from dbguard.engines.base import Marker, Target
from dbguard.paths import Stamp, file_stamp

FILE_NAME = "production-marks.json"
_PRODUCTION = "production"  # key -> {"label", "since"}: marks read
_BY_HAND = "set_by_hand"  # key -> when `dbguardctl mark` last set or lowered its mark


@dataclass(frozen=True)
class Remembered:
    """A database once read as marked production, or judged production `because` of its
    project's files: its label then, and since when."""

    label: str
    since: str  # ISO date and time the mark was first read
    because: str | None = None  # None: it was marked

    def reason(self) -> str:
        """Why the database is production though its mark is gone, or its files no longer
        say so (a TargetFacts.marked entry: "production because " goes before it)."""
        if self.because is not None:
            # The reason first: "production because dbguard judged it production ...
            # because X" read as two reasons, or as a loop.
            return (
                f"{self.because} when dbguard judged it production ({self.since}), and "
                "dbguard remembers that though nothing says so now (a project file was "
                "changed, or a command overrides it): `dbguardctl mark development`, at a "
                "terminal, if it is no longer production"
            )
        return (
            f"it was marked production when dbguard read it (since {self.since}) and its "
            "mark is gone: the database was dropped and made again, or the mark removed, "
            "outside a command dbguard followed; dbguardd marks it again after the next "
            "command it allows (`dbguardctl mark none`, at a terminal, if it is no longer "
            "production)"
        )


@dataclass(frozen=True)
class _Known:
    production: dict[str, Remembered]
    by_hand: dict[str, datetime]


class ProductionMarks:
    """The register at `path`. Safe to use from several processes at once: each change
    is a read-modify-write under an exclusive lock, written to a new file and renamed."""

    def __init__(self, path: Path, on_problem: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_problem = on_problem  # hears why the register could not be read or written
        self._cached: tuple[Stamp, _Known] | None = None

    @classmethod
    def in_state_dir(
        cls, env: Mapping[str, str], on_problem: Callable[[str], None] | None = None
    ) -> ProductionMarks:
        return cls(paths.state_dir(env) / FILE_NAME, on_problem)

    def get(self, key: str) -> Remembered | None:
        """The remembered mark of the database keyed `key`; one stat() when unchanged."""
        return self._current().production.get(key)

    def set_by_hand_since(self, key: str, moment: datetime) -> bool:
        """Whether a person set or lowered the database's mark (`dbguardctl mark`) at
        `moment` or later: a put-back after a command that started then must not undo it."""
        when = self._current().by_hand.get(key)
        return when is not None and when >= moment

    def remember(self, target: Target, because: str | None = None) -> None:
        """Note that `target` is marked production, or was judged production `because` of
        its project's files (no write when already noted; a mark replaces a verdict)."""
        known = self._current().production.get(target.key)
        if known is None or (because is None and known.because is not None):
            self._change(lambda content: _remember(content, target, because))

    def set_by_hand(self, target: Target, marker: Marker | None) -> None:
        """`dbguardctl mark`: a person gave `target` this mark (None: `none`)."""

        def change(content: dict[str, Any]) -> None:
            content.setdefault(_BY_HAND, {})[target.key] = _now().isoformat()
            if marker == "production":
                _remember(content, target)
            else:
                content.setdefault(_PRODUCTION, {}).pop(target.key, None)

        self._change(change)

    # ---- the file --------------------------------------------------------------------

    def _current(self) -> _Known:
        stamp = file_stamp(self.path)
        cached = self._cached
        if cached is None or cached[0] != stamp:
            try:
                cached = self._cached = (stamp, self._parse(self._load()))
            except _NoRegister as err:  # the same until the file changes
                self._problem(f"{err.problem}; it counts as empty")
                cached = self._cached = (stamp, _Known({}, {}))
            except OSError as err:  # may pass (EMFILE): read again next time
                self._problem(f"{_cannot('read', self.path, err)}; it counts as empty")
                return _Known({}, {})
        return cached[1]

    def _load(self) -> dict[str, Any]:
        """The file's content ({} when there is none). Raises OSError when it cannot be
        read (then nothing may replace it), _NoRegister when what it holds is none."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            content = json.loads(raw)
        except ValueError as err:
            raise _NoRegister(f"{self.path} is not JSON ({err})") from None
        if not isinstance(content, dict) or not all(
            isinstance(content.get(section, {}), dict) for section in (_PRODUCTION, _BY_HAND)
        ):
            raise _NoRegister(f"{self.path} is not a register of marks")
        return content

    def _parse(self, content: dict[str, Any]) -> _Known:
        production: dict[str, Remembered] = {}
        by_hand: dict[str, datetime] = {}
        unread: list[str] = []
        for key, entry in content.get(_PRODUCTION, {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("label"), str):
                because = entry.get("because")
                production[key] = Remembered(
                    entry["label"],
                    str(entry.get("since", "?")),
                    because if isinstance(because, str) else None,
                )
            else:
                unread.append(key)
        for key, when in content.get(_BY_HAND, {}).items():
            try:
                moment = datetime.fromisoformat(when)
            except (TypeError, ValueError):
                unread.append(key)
                continue
            # One edited by hand may lack its zone: UTC, as dbguard writes them.
            by_hand[key] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        if unread:
            self._problem(f"{self.path}: entries not understood, left as they are: {unread}")
        return _Known(production, by_hand)

    def _change(self, change: Callable[[dict[str, Any]], None]) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = os.open(self.path.with_name(FILE_NAME + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    content = self._load()  # another process may have changed it meanwhile
                except _NoRegister as err:
                    # Never written over: what it held may be all there is of a mark.
                    aside = self.path.with_name(
                        f"{FILE_NAME}.unreadable-{_now():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
                    )
                    os.rename(self.path, aside)
                    self._problem(f"{err.problem}: moved to {aside}; a new register starts")
                    content = {}
                change(content)
                self._write(content)
            finally:
                os.close(lock)
        except OSError as err:  # a read that failed included: left as it is
            self._problem(_cannot("change", self.path, err))
        self._cached = None

    def _write(self, content: dict[str, Any]) -> None:
        text = json.dumps(content, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
        temp = self.path.with_name(f".{FILE_NAME}.{secrets.token_hex(4)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(text.encode())
                file.flush()
                os.fsync(fd)
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def _problem(self, text: str) -> None:
        if self.on_problem is not None:
            self.on_problem(text)


def _remember(content: dict[str, Any], target: Target, because: str | None = None) -> None:
    known = content.setdefault(_PRODUCTION, {})
    entry = known.get(target.key)
    if isinstance(entry, dict) and isinstance(entry.get("label"), str):
        if because is None:  # marked now: a mark to put back when it is gone
            entry.pop("because", None)
        return  # else already remembered, marked or judged
    # New, or an entry not understood (which would never count): this one does.
    entry = {"label": target.label, "since": _now().isoformat(timespec="seconds")}
    known[target.key] = entry | ({"because": because} if because is not None else {})


def _cannot(what: str, path: Path, err: OSError) -> str:
    return f"cannot {what} {path} ({err.strerror or err})"


class _NoRegister(Exception):
    """The file holds something other than a register of marks."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _now() -> datetime:
    return datetime.now(UTC)

"""Production marks dbguard has read, remembered outside the databases.

A mark lives inside its database, so it goes with it: a database dropped and made
again by a command dbguard did not follow (a migration run outside the shims, a
`DROP DATABASE` in a SQL client), or while dbguardd was stopped, comes back unmarked
and would be judged by its name and host alone. dbguardd remembers each production
mark it reads, by the database's key; a database remembered as marked production
whose mark is gone is still production, and dbguardd marks it again after the next
command it allows on it. Only `dbguardctl mark` forgets one (`development` and `none`
are confirmed by a person at a terminal).

The register is a small JSON file in dbguard's state folder. It adds protection and
never removes any: one that cannot be read counts as empty, with a warning in
dbguardd's log, and the marks inside the databases still count.
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

from dbguard import paths
from dbguard.engines.base import Target
from dbguard.paths import Stamp, file_stamp

FILE_NAME = "production-marks.json"


@dataclass(frozen=True)
class Remembered:
    """A database once read as marked production: its label then, and since when."""

    label: str
    since: str  # ISO date and time the mark was first read

    def reason(self) -> str:
        """Why the database is production though its mark is gone (a TargetFacts.marked
        entry: "production because " goes before it)."""
        return (
            f"it was marked production when dbguard read it (since {self.since}) and its "
            "mark is gone: the database was dropped and made again, or the mark removed, "
            "outside a command dbguard followed; dbguardd marks it again after the next "
            "command it allows (`dbguardctl mark none`, at a terminal, if it is no longer "
            "production)"
        )


class ProductionMarks:
    """The register at `path`. Safe to use from several processes at once: each change
    is a read-modify-write under an exclusive lock, written to a new file and renamed."""

    def __init__(self, path: Path, on_problem: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_problem = on_problem  # hears why the register could not be read or written
        self._cached: tuple[Stamp, dict[str, Remembered]] | None = None

    @classmethod
    def in_state_dir(
        cls, env: Mapping[str, str], on_problem: Callable[[str], None] | None = None
    ) -> ProductionMarks:
        return cls(paths.state_dir(env) / FILE_NAME, on_problem)

    def get(self, key: str) -> Remembered | None:
        """The remembered mark of the database keyed `key`; one stat() when unchanged."""
        return self._current().get(key)

    def remember(self, target: Target) -> None:
        """Note that `target` is marked production (no write when already noted)."""
        if target.key in self._current():
            return
        since = datetime.now(UTC).isoformat(timespec="seconds")
        self._change(lambda known: known.setdefault(target.key, Remembered(target.label, since)))

    def forget(self, target: Target) -> None:
        """A person took the mark away (`dbguardctl mark development|none`)."""
        if target.key in self._current():
            self._change(lambda known: known.pop(target.key, None))

    # ---- the file --------------------------------------------------------------------

    def _current(self) -> dict[str, Remembered]:
        stamp = file_stamp(self.path)
        if self._cached is None or self._cached[0] != stamp:
            self._cached = (stamp, self._read())
        return self._cached[1]

    def _read(self) -> dict[str, Remembered]:
        try:
            raw = json.loads(self.path.read_bytes())
            return {
                str(key): Remembered(str(entry["label"]), str(entry["since"]))
                for key, entry in raw["production"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            self._problem(f"cannot read {self.path} ({err}); it counts as empty")
            return {}

    def _change(self, change: Callable[[dict[str, Remembered]], object]) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = os.open(self.path.with_name(FILE_NAME + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                known = self._read()  # another process may have changed it meanwhile
                change(known)
                self._write(known)
            finally:
                os.close(lock)
        except OSError as err:
            self._problem(f"cannot write {self.path} ({err.strerror or err})")
        self._cached = None

    def _write(self, known: dict[str, Remembered]) -> None:
        entries = {key: {"label": r.label, "since": r.since} for key, r in sorted(known.items())}
        content = json.dumps({"production": entries}, indent=2, ensure_ascii=True) + "\n"
        temp = self.path.with_name(f".{FILE_NAME}.{secrets.token_hex(4)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(content.encode())
                file.flush()
                os.fsync(fd)
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def _problem(self, text: str) -> None:
        if self.on_problem is not None:
            self.on_problem(text)

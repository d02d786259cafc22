"""The operation log: one JSON line per guarded invocation, appended, never rewritten.

Each line is written with a single write() on an O_APPEND descriptor, so lines from the
daemon and from dbguardctl never interleave. Secrets in argv (URL passwords,
--password=..., PASSWORD=... assignments) are redacted before anything is written.

An allowed command gets two lines with the same `op`: one with the outcome "running"
when it is allowed (so a daemon killed while it runs still leaves its record) and the
complete one when it ends. `records()` gives each operation once: its latest line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbguard.store import Unfinished

MAX_LOG_BYTES = 20 << 20  # rotated to operations.jsonl.1 beyond this
RUNNING = "running"  # the outcome of an allowed command until it ends

# A bounded scheme and a user part without ':' keep this linear on any word; the
# unbounded form backtracked quadratically on one long argument (60 kB: 9 s).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,63}://[^\s/@:]*:[^\s/@]*@\S*")
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|api_?key|credential", re.IGNORECASE)


def redact(word: str) -> str:
    """One argument with any password in it replaced by ***."""
    # Here, not at the top: `dbguardctl status` and `log` only read the log, and the
    # discovery package this loads costs them 0.15 s.
    from dbguard.discovery.urls import redact_url

    word = _URL.sub(lambda m: redact_url(m.group(0)), word)
    name, sep, value = word.partition("=")
    if sep and value and _SECRET_NAME.search(name):
        return f"{name}=***"
    if re.fullmatch(r"-p\S+", word):  # mysql -pSECRET
        return "-p***"
    return word


def redact_argv(argv: Sequence[str]) -> list[str]:
    redacted = [redact(word) for word in argv]
    for index in range(1, len(redacted)):
        # --password SECRET: the value is the next word
        if (
            redacted[index - 1].startswith("--")
            and _SECRET_NAME.search(redacted[index - 1])
            and ("=" not in redacted[index - 1])
        ):
            redacted[index] = "***"
    return redacted


class OperationLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: str | None = None  # why the last record could not be written

    def append(self, record: dict[str, Any]) -> None:
        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}
        if "argv" in record:
            record["argv"] = redact_argv(record["argv"])
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        try:
            self._write(line)
        except OSError as err:
            # Never lose the record, never fail the caller: it goes to dbguardd's own log,
            # and `dbguardctl status` says so.
            import structlog  # only on this rare path: readers of the log do without it

            structlog.get_logger("dbguard.oplog").error(
                "operation log not written", path=str(self.path), error=str(err), record=line
            )
            self.problem = (
                f"cannot write the operations log {self.path} ({err.strerror or err}); "
                "records go to dbguardd's own log meanwhile"
            )
        else:
            self.problem = None

    def append_unfinished(self, unfinished: Iterable[Unfinished]) -> None:
        """A record for each killed backup whose leftovers were just cleared, by
        dbguardd or by a dbguardctl restore (see Unfinished.log_record)."""
        for work in unfinished:
            if (record := work.log_record()) is not None:
                self.append(record)

    def _write(self, line: str) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._rotate_if_large()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # a crash tore the last line: do not glue onto it
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _rotate_if_large(self) -> None:
        try:
            if self.path.stat().st_size > MAX_LOG_BYTES:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass

    def records(self) -> Iterator[dict[str, Any]]:
        """Each operation once, oldest first (the rotated file first): a "running" line
        is replaced by the line that ends it; a "running" line with no end yet comes
        last. Parsed records are not kept (only those of operations still running),
        so a consumer keeping the last N holds N. A torn or corrupt line is skipped."""
        yield from self._merged(self._lines())

    def unfinished(self, tail_bytes: int = 1 << 20) -> list[dict[str, Any]]:
        """Operations whose latest line says "running", among the last `tail_bytes` of
        each file: a killed daemon's last lines are there (later lines come only from
        its successor), and a start must not read 40 MB of log."""
        return [
            r
            for r in self._merged(self._lines(tail_bytes))
            if r.get("outcome") == RUNNING and isinstance(r.get("op"), str)
        ]

    @staticmethod
    def _merged(lines: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        running: dict[str, dict[str, Any]] = {}
        for record in lines:
            op = record.get("op")
            if not isinstance(op, str):
                yield record
            elif record.get("outcome") == RUNNING:
                if op in running:  # the same id twice: not one operation's two lines
                    yield running.pop(op)
                running[op] = record
            else:
                running.pop(op, None)
                yield record
        yield from running.values()

    def _lines(self, tail_bytes: int | None = None) -> Iterator[dict[str, Any]]:
        """Records oldest first: the rotated file, then the current one; with
        `tail_bytes`, only the last that many bytes of the two as one stream (the
        rotated file is read only for what the current one falls short of)."""
        chunks: list[bytes] = []
        budget = tail_bytes
        for path in (self.path, self.path.with_name(self.path.name + ".1")):
            if budget is not None and budget <= 0:
                break
            try:
                with path.open("rb") as file:
                    size = os.fstat(file.fileno()).st_size
                    start = 0 if budget is None else max(0, size - budget)
                    if start > 0:
                        file.seek(start - 1)
                        file.readline()  # the rest of a line cut by the seek
                    chunks.append(file.read())
                    if budget is not None:
                        budget -= size
            except OSError:  # missing, a folder, unreadable: nothing to read there
                continue
        for chunk in reversed(chunks):
            for line in chunk.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record

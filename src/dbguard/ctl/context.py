"""What every subcommand gets: the environment, the config, the store, the socket."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dbguard.errors import DbguardError, NotFound

# Imported where used: `dbguardctl shell-init` runs at every shell start and must not
# pay for pydantic and zstandard.
if TYPE_CHECKING:
    from dbguard.config import Config
    from dbguard.oplog import OperationLog
    from dbguard.store import Store


@dataclass
class Context:
    env: dict[str, str]
    config_file: str | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)

    @cached_property
    def config(self) -> Config:
        from dbguard.config import load_config

        return load_config(self.env, self.config_file)  # raises ConfigError

    @cached_property
    def store(self) -> Store:
        from dbguard.store import Store

        backup = self.config.backup
        return Store(
            self.config.backup_path(self.env),
            backup.compression_level,
            backup.compression_threads,
            # A killed backup's leftovers that this command clears before a dbguardd
            # restarts (and would log them): logged here instead.
            self.oplog.append_unfinished,
        )

    @property
    def socket(self) -> Path:
        return self.config.socket_path(self.env)

    @property
    def oplog(self) -> OperationLog:
        from dbguard.oplog import OperationLog

        return OperationLog(self.config.operation_log_path(self.env))

    def agents(self) -> list[str]:
        """What makes whoever runs dbguardctl an AI agent (policy.agent_markers): the
        agent variables it has and the agent programs it runs under; empty for a person."""
        from dbguard.callers import callers
        from dbguard.policy import agent_markers

        return agent_markers(self.env, self.config.production, callers(os.getpid()))

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def error(self, text: str) -> None:
        """Why a command failed: on stderr, so output piped elsewhere stays clean."""
        print(text, file=sys.stderr)

    def waiting_for(self, lock: Path) -> None:
        """Said when another dbguard process holds a lock this command needs."""
        self.error(f"dbguardctl: waiting for another dbguard process to let go of {lock} ...")

    def print_json(self, data: Any) -> None:
        # ASCII: an argument or path that is not UTF-8 becomes a \u escape, where
        # writing it raw would make the output invalid JSON.
        print(json.dumps(data, indent=2, default=str, ensure_ascii=True), file=self.out)


def counted(count: int, noun: str) -> str:
    """`1 table`, `2 tables`: a count and its noun, agreeing."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def age(moment: datetime, now: datetime | None = None) -> str:
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 0:
        return "in the future (clock changed?)"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit} ago"
    return f"{int(seconds)}s ago"


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def backup_id(value: str) -> str:
    """argparse type for a backup id: rejects path tricks and option-looking values."""
    from dbguard.store import check_id

    try:
        return check_id(value)
    except NotFound as err:
        raise argparse.ArgumentTypeError(f"{err.problem} ({err.fix})") from None


def current_folder() -> Path:
    """The working folder, or an error that says what to do when it was deleted (as the
    shims do), not a traceback."""
    try:
        return Path(os.getcwd())
    except OSError as err:
        raise DbguardError(
            f"the current folder is gone ({err.strerror})",
            "cd into the project's folder (it may have been deleted and made again)",
        ) from None

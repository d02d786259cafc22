"""Show recent guarded operations from the operation log.

Usage: dbguardctl log [-n COUNT] [--all] [--json]

Commands that are no database tool at all (`php -v`, `npm install`, `python3 -c ...`
through the opt-in python shim) are logged too, but shown only with --all: they would
push the database operations out of view.
"""

from __future__ import annotations

import argparse
from collections import deque

from dbguard.ctl.context import Context, table


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", type=_count, default=20, metavar="COUNT", help="how many (default 20)"
    )
    parser.add_argument(
        "--all", action="store_true", help="also commands that are no database tool (php -v)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, ctx: Context) -> int:
    shown = ctx.oplog.records() if args.all else filter(_database_tool, ctx.oplog.records())
    records = list(deque(shown, maxlen=max(args.n, 0)))
    if args.json:
        ctx.print_json(records)
        return 0
    if not records:
        if args.n > 0:  # -n 0 asked for none
            more = "" if args.all else " (--all shows commands that are no database tool)"
            ctx.print(f"no database operations logged in {ctx.oplog.path}{more}")
        return 0
    rows = [["TIME", "DECISION", "OUTCOME", "COMMAND", "BACKUPS", "WHY"]]
    for record in records:
        backups = ",".join(
            b.get("id", "") + ("(reused)" if b.get("reused") else "")
            for b in record.get("backups", [])
        )
        outcome = record.get("outcome", "")
        if record.get("exit") not in (None, 0):
            outcome += f" (exit {record['exit']})"
        if record.get("signal"):
            outcome += f" (signal {record['signal']})"
        rows.append(
            [
                str(record.get("time", ""))[:19].replace("T", " "),
                str(record.get("decision", "")),
                outcome,
                cut(" ".join(record.get("argv", [])), 60),
                backups,
                cut(_why(record), 100),
            ]
        )
    ctx.print(table(rows))
    return 0


def cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, ending in "…" where some were left out, so
    a shortened reason is not taken for the whole of it (--json has everything)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _database_tool(record: dict[str, object]) -> bool:
    """Not a pass of a command the catalog does not know (those have no tool)."""
    return record.get("decision") != "pass" or "tool" in record


def _why(record: dict[str, object]) -> str:
    """The reason of a denial or failure, else what the log noted (nothing to back up,
    no sign of a database), on one line; --json has everything."""
    reason = record.get("reason")
    if isinstance(reason, str) and reason:
        return reason.splitlines()[0]
    notes = record.get("notes")
    if isinstance(notes, list) and notes:
        return str(notes[0]).splitlines()[0]
    return ""


def _count(value: str) -> int:
    """argparse type for -n: a whole number of at least 1 (0 or -5 showed nothing, and
    said nothing)."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count of at least 1")
    return count

"""Show recent guarded operations from the operation log.

Usage: dbguardctl log [-n COUNT] [--json]
"""

from __future__ import annotations

import argparse
from collections import deque

from dbguard.ctl.context import Context, table


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=20, metavar="COUNT", help="how many (default 20)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, ctx: Context) -> int:
    records = list(deque(ctx.oplog.records(), maxlen=max(args.n, 0)))
    if args.json:
        ctx.print_json(records)
        return 0
    if not records:
        ctx.print(f"no operations logged in {ctx.oplog.path}")
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
                " ".join(record.get("argv", []))[:60],
                backups,
                _why(record)[:100],
            ]
        )
    ctx.print(table(rows))
    return 0


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

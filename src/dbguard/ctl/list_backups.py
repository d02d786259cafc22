"""List backups, newest first (damaged ones are listed and marked).

Usage: dbguardctl list-backups [--database TEXT] [--json]
"""

from __future__ import annotations

import argparse

from dbguard.ctl.context import Context, age, counted, human_size, table
from dbguard.store import DamagedBackup, Manifest


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database", metavar="TEXT", help="only databases whose name contains TEXT"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _flags(manifest: Manifest) -> str:
    flags = []
    if manifest.pinned:
        flags.append("pinned")
    if manifest.verified is not None:
        flags.append("verified" if manifest.verified.ok else "VERIFY-FAILED")
    return ",".join(flags)


def run(args: argparse.Namespace, ctx: Context) -> int:
    entries = every = ctx.store.entries()
    if args.database:
        # A damaged backup may have no readable manifest: its folder, named after the
        # database, says whose it is.
        entries = [
            e
            for e in entries
            if args.database
            in (e.database_label if isinstance(e, Manifest) else e.path.parent.name)
        ]
    if args.json:
        ctx.print_json(
            [
                e.model_dump(mode="json")
                if isinstance(e, Manifest)
                else {
                    "id": e.id,
                    "damaged": True,
                    "unreadable": e.unreadable,
                    "problem": e.problem,
                    "path": str(e.path),
                }
                for e in entries
            ]
        )
        return 0
    if not entries:
        if every:  # there are backups, just none of that name
            ctx.print(
                f"no backups of a database whose name contains {args.database!r} "
                f"({counted(len(every), 'other')} in {ctx.store.root})"
            )
        else:
            ctx.print(f"no backups in {ctx.store.root}")
        return 0
    # STORED: the compressed size in the store (`status` shows the dump's own size).
    rows = [["ID", "CREATED", "AGE", "DATABASE", "STORED", "ROWS", "REASON", "FLAGS"]]
    for entry in entries:
        if isinstance(entry, DamagedBackup):
            # Unreadable: its mode may be all that is wrong, so it is not called damaged.
            flag = "unreadable" if entry.unreadable else "damaged"
            rows.append(
                [entry.id, "-", "-", f"{flag.upper()}: {entry.problem}", "-", "-", "-", flag]
            )
            continue
        reason = " ".join(entry.reason.argv) if entry.reason.argv else entry.reason.kind
        rows.append(
            [
                entry.id,
                entry.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                age(entry.created_at),
                entry.database_label,
                human_size(entry.data.size),
                str(sum(entry.tables.values())),
                reason[:40],
                _flags(entry),
            ]
        )
    ctx.print(table(rows))
    return 0

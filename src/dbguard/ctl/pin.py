"""Pin a backup so retention never removes it.
Unpin a backup: retention decides again whether to keep it.

Usage: dbguardctl pin ID [--json]
       dbguardctl unpin ID [--json]

A pinned backup is never pruned: not by count, not by age, not by the size cap. Pins
are listed by `dbguardctl list-backups` (FLAGS column).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from dbguard.ctl.context import Context, backup_id
from dbguard.ctl.prune import retention_settings
from dbguard.space import plan_store, retention_lock


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=backup_id, help="backup id or unique prefix")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Pin (`dbguardctl pin`) or unpin (`dbguardctl unpin`); raises NotFound or Damaged
    for an unknown or damaged id, BackupFailed if the retention lock cannot be taken."""
    # One module serves both commands; main.py's subparsers record which one ran.
    pinned = getattr(args, "command", "pin") != "unpin"
    store = ctx.store
    # Under the retention lock, so a prune that is planning right now either sees the
    # new pin or finishes before it: it never deletes a backup just pinned.
    with retention_lock(store, ctx.waiting_for):
        manifest = store.get(args.id)
        changed = manifest.pinned != pinned
        if changed:
            manifest = store.update(manifest, pinned=pinned)
    when = manifest.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    what = f"backup {manifest.id} of {manifest.database_label} ({when})"
    fate = ""
    if not pinned:
        plan, _ = plan_store(store, retention_settings(ctx), datetime.now(UTC))
        doomed = any(record.id == manifest.id for record in plan.delete)
        fate = (
            "the next prune will remove it (retention does not keep it otherwise)"
            if doomed
            else "retention keeps it for now; `dbguardctl prune --dry-run` says why"
        )
    if args.json:
        ctx.print_json(
            {"id": manifest.id, "pinned": manifest.pinned, "changed": changed, "note": fate}
        )
        return 0
    if pinned:
        verb = "pinned" if changed else "was already pinned"
        ctx.print(f"{what} {verb}: retention will never remove it")
        ctx.print(f"  `dbguardctl unpin {manifest.id}` releases it")
    else:
        verb = "unpinned" if changed else "was not pinned"
        ctx.print(f"{what} {verb}: {fate}")
    return 0

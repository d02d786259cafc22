"""Remove the backups retention does not keep (or, with --dry-run, show what and why).

Usage: dbguardctl prune [--dry-run] [--json]

The daemon prunes after every successful backup; this runs the same policy by hand.
Never removed: pinned backups, the newest good backup of each database, and backups
taken before a destructive command while they are protected ([retention] in config).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from dbguard.ctl.context import Context, counted, table
from dbguard.retention import Decision, Plan, RetentionSettings, human_size
from dbguard.space import PruneFailed, plan_store, prune_with_plan


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would be removed and why; remove nothing"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def retention_settings(ctx: Context) -> RetentionSettings:
    """The [retention] section of the config (the defaults while config.py has none)."""
    found = getattr(ctx.config, "retention", None)
    return found if isinstance(found, RetentionSettings) else RetentionSettings()


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Raises PruneFailed if a backup cannot be removed (exit 1; what was removed before
    stays removed), BackupFailed if the store cannot be locked."""
    settings = retention_settings(ctx)
    now = datetime.now(UTC)
    if args.dry_run:
        plan, _ = plan_store(ctx.store, settings, now)
    else:
        try:
            plan, _ = prune_with_plan(ctx.store, settings, now, ctx.waiting_for)
        except PruneFailed as err:
            for manifest in err.removed:
                ctx.print(f"removed {manifest.id}  {manifest.database_label}")
            raise
    if args.json:
        ctx.print_json(_as_json(plan, args.dry_run))
        return 0
    _show(ctx, plan, args.dry_run)
    return 0


def _as_json(plan: Plan, dry_run: bool) -> dict[str, Any]:
    def entry(decision: Decision) -> dict[str, Any]:
        backup = decision.backup
        return {
            "id": backup.id,
            "database": backup.database_label,
            "database_key": backup.database_key,
            "seq": backup.seq,
            "created_at": backup.created_at.isoformat(),
            "size": backup.size,
            "protected": decision.protected,
            "reasons": list(decision.reasons),
        }

    return {
        "dry_run": dry_run,
        # the plan's removals: already done unless dry_run
        "remove": [entry(d) for d in plan.decisions if not d.keep],
        "kept": [entry(d) for d in plan.decisions if d.keep],
        "total_bytes": plan.total_bytes,
        "kept_bytes": plan.kept_bytes,
        "max_total_bytes": plan.max_total_bytes,
        "cap_exceeded": plan.cap_exceeded,
        "notes": list(plan.notes),
    }


def _show(ctx: Context, plan: Plan, dry_run: bool) -> None:
    if not plan.decisions:
        ctx.print(f"no backups in {ctx.store.root}")
        return
    gone = plan.delete
    verb = "would remove" if dry_run else "removed"
    cap = human_size(plan.max_total_bytes) if plan.max_total_bytes else "no cap"
    ctx.print(
        f"{verb} {counted(len(gone), 'backup')} ({human_size(sum(b.size for b in gone))}); "
        f"kept {len(plan.keep)} ({human_size(plan.kept_bytes)}, cap {cap})"
    )
    rows = [["", "ID", "CREATED", "DATABASE", "SIZE", "WHY"]]
    for decision in plan.decisions:
        backup = decision.backup
        mark = "keep" if decision.keep else ("REMOVE" if dry_run else "REMOVED")
        rows.append(
            [
                mark,
                backup.id,
                backup.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
                backup.database_label,
                human_size(backup.size),
                "; ".join(decision.reasons),
            ]
        )
    ctx.print(table(rows))
    for note in plan.notes:
        ctx.print(f"note: {note}")

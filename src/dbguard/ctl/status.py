"""Show whether the daemon is up, and the backups at a glance.

Usage: dbguardctl status [--json]
"""

from __future__ import annotations

import argparse
from typing import Any

from dbguard.client.talk import DaemonUnavailable, request
from dbguard.ctl.context import Context, age, human_size, table
from dbguard.protocol import PROTOCOL_VERSION, Status, StatusQuery
from dbguard.store import Manifest


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, ctx: Context) -> int:
    daemon: dict[str, Any] = {"running": False, "socket": str(ctx.socket)}
    try:
        reply = request(ctx.socket, StatusQuery(type="status", v=PROTOCOL_VERSION), timeout=5)
        if isinstance(reply, Status):
            daemon = {"running": True, **reply.model_dump()}
    except DaemonUnavailable as err:
        daemon["problem"] = err.problem
    entries = ctx.store.entries()
    manifests = [e for e in entries if isinstance(e, Manifest)]
    latest: dict[str, Manifest] = {}
    for manifest in manifests:  # newest first
        latest.setdefault(manifest.database_key, manifest)
    total = sum(m.data.size for m in manifests)
    summary: dict[str, Any] = {
        "daemon": daemon,
        "backup_dir": str(ctx.store.root),
        "backups": len(manifests),
        "damaged": len(entries) - len(manifests),
        "total_bytes": total,
        "databases": [
            {"database": m.database_label, "last_backup": m.id, "created_at": m.created_at}
            for m in latest.values()
        ],
    }
    if args.json:
        ctx.print_json(summary)
        return 0 if daemon["running"] else 3
    if daemon["running"]:
        ctx.print(
            f"dbguardd {daemon['version']} running (pid {daemon['pid']}, up "
            f"{daemon['uptime_seconds']:.0f}s) on {daemon['socket']}"
        )
        for label in daemon.get("in_flight", []):
            ctx.print(f"  backing up now: {label}")
    else:
        ctx.print(f"dbguardd is NOT running: {daemon['problem']}")
        ctx.print("  guarded commands will refuse to run (exit 69) until it is started")
    ctx.print(
        f"backups: {len(manifests)} in {ctx.store.root}, {human_size(total)}"
        + (f", {summary['damaged']} damaged" if summary["damaged"] else "")
    )
    if latest:
        rows = [["DATABASE", "LAST BACKUP", "AGE"]]
        rows += [[m.database_label, m.id, age(m.created_at)] for m in latest.values()]
        ctx.print(table(rows))
    return 0 if daemon["running"] else 3

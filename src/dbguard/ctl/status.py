"""Show whether the daemon is up, and the backups at a glance.

Usage: dbguardctl status [--json]

Exit status: 0 when dbguardd runs and answers, 3 when it is not running or does not
answer (the rest of the report is shown either way), 75 when the backup folder cannot
be read (a file, another user's, unreadable), 78 when the config file is invalid.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from dbguard import paths, shims
from dbguard.client import autostart
from dbguard.client.talk import DaemonNotAnswering, DaemonUnavailable, request
from dbguard.ctl.context import Context, age, human_size, table
from dbguard.health import database_health
from dbguard.protocol import PROTOCOL_VERSION, Status, StatusQuery
from dbguard.store import Manifest


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, ctx: Context) -> int:
    daemon: dict[str, Any] = {"running": False, "socket": str(ctx.socket)}
    try:
        query = StatusQuery(type="status", v=PROTOCOL_VERSION)
        reply = request(ctx.socket, query, timeout=5, env=ctx.env, config_file=ctx.config_file)
        if isinstance(reply, Status):
            daemon = {"running": True, **reply.model_dump()}
        else:
            # An error reply (or another version's): there, but not answering as it should.
            said = getattr(reply, "message", "")
            daemon["problem"] = f"dbguardd at {ctx.socket} answered the status query with " + (
                f"an error: {said}" if said else f"{reply.type!r}"
            )
            daemon["answering"] = False
            daemon["fix"] = "see its log (`dbguardctl doctor` says where), then restart it"
    except DaemonUnavailable as err:
        daemon["problem"] = err.problem
        daemon["fix"] = err.fix
        if isinstance(err, DaemonNotAnswering):  # there, but stopped, stuck or another version
            daemon["answering"] = False
    entries = ctx.store.entries()
    manifests = [e for e in entries if isinstance(e, Manifest)]
    healths = database_health(
        manifests, ctx.oplog.records(), ctx.config.health.shrink_warning_ratio
    )
    total = sum(m.data.size for m in manifests)
    summary: dict[str, Any] = {
        "daemon": daemon,
        "backup_dir": str(ctx.store.root),
        "backups": len(manifests),
        "damaged": len(entries) - len(manifests),
        "total_bytes": total,
        "databases": [
            {
                "database": h.label,
                "last_backup": h.last.id,
                "created_at": h.last.created_at,
                "raw_bytes": h.last.data.raw_size,
                "size_ratio_to_previous": h.size_ratio,
                "last_verified": h.last_verified.id if h.last_verified else None,
                "failures_since_last_backup": len(h.failures),
                "warnings": h.warnings,
            }
            for h in healths
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
        for problem in daemon.get("problems", []):
            ctx.print(f"  PROBLEM: {problem}")
    elif daemon.get("answering") is False:
        # Running, as far as anyone can tell: "start it" and autostart would not help.
        ctx.print(f"dbguardd is NOT answering: {daemon['problem']}")
        ctx.print(f"  {daemon['fix']}")
        ctx.print("  guarded commands will refuse to run (exit 69) until it answers")
    else:
        ctx.print(f"dbguardd is NOT running: {daemon['problem']}")
        shims_dir = paths.default_shims_dir(ctx.env)
        autostart_on = ctx.env.get("DBGUARD_AUTOSTART") != "0" and autostart.read_settings(
            str(shims_dir)
        )
        guarding = shims.any_found(
            shims_dir, list(ctx.config.shims.commands), ctx.env.get("PATH", os.defpath)
        )
        if not guarding:
            ctx.print(
                f"  no shims in {shims_dir} or on PATH: no command is guarded "
                "(`dbguardctl install` puts them there)"
            )
        elif autostart_on:
            ctx.print(
                "  autostart is on: the next guarded command starts it (so does "
                "`dbguardctl backup`)"
            )
        else:
            ctx.print("  guarded commands will refuse to run (exit 69) until it is started")
        if not autostart_on and daemon["fix"]:
            ctx.print(f"  {daemon['fix']}")
    ctx.print(
        f"backups: {len(manifests)} in {ctx.store.root}, {human_size(total)} stored"
        + (f", {summary['damaged']} damaged" if summary["damaged"] else "")
    )
    if daemon["running"] and daemon["backup_dir"] != str(ctx.store.root):
        reload = f"`kill -HUP {daemon['pid']}`"
        if autostart.systemd_units(ctx.env):
            reload = f"`systemctl --user reload dbguard` or {reload}"
        ctx.print(
            f"  but dbguardd writes its backups to {daemon['backup_dir']}: the config file "
            "changed since it loaded it, or it rejected the change (its log says why); "
            f"reload it: {reload}"
        )
    if healths:
        # The dump's size before compression, not what is stored (list-backups' SIZE):
        # the trend compares like with like whatever the compression did.
        rows = [["DATABASE", "LAST BACKUP", "AGE", "RAW SIZE", "TREND", "LAST VERIFIED"]]
        for h in healths:
            trend = "" if h.size_ratio is None else f"{h.size_ratio:.0%} of previous"
            # The age is the backup's, not the check's: "taken" says so, as a bare age
            # under LAST VERIFIED read as when the verify ran.
            verified = (
                f"{h.last_verified.id} (taken {age(h.last_verified.created_at)})"
                if h.last_verified
                else "never"
            )
            rows.append(
                [
                    h.label,
                    h.last.id,
                    age(h.last.created_at),
                    human_size(h.last.data.raw_size),
                    trend,
                    verified,
                ]
            )
        ctx.print(table(rows))
        for h in healths:
            for warning in h.warnings:
                ctx.print(f"WARNING {h.label}: {warning}")
    return 0 if daemon["running"] else 3

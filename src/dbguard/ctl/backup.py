"""Back up the databases of the project in the current folder, now.

Usage: dbguardctl backup [--json]

Where autostart is on (no systemd), a daemon that is not running is started first, as
a guarded command starts it; DBGUARD_AUTOSTART=0 turns that off here too.
"""

from __future__ import annotations

import argparse
import sys

from dbguard.client.shim import silence_timeout
from dbguard.client.talk import request
from dbguard.ctl.context import Context, current_folder
from dbguard.protocol import PROTOCOL_VERSION, BackupNow, Deny, Done, Fail, Progress


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _show_progress(progress: Progress) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(
            f"\r\x1b[2Kbacking up {progress.database}: {progress.bytes / 1e6:.1f} MB, "
            f"{progress.elapsed:.1f} s"
        )


def run(args: argparse.Namespace, ctx: Context) -> int:
    message = BackupNow(type="backup", v=PROTOCOL_VERSION, cwd=str(current_folder()), env=ctx.env)
    # A daemon that is not running is started as a shim would start it (autostart).
    reply = request(
        ctx.socket,
        message,
        _show_progress,
        timeout=silence_timeout(),
        env=ctx.env,
        config_file=ctx.config_file,
        autostart_say=lambda text: ctx.error(f"dbguardctl: {text}"),
    )
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[2K")
    if isinstance(reply, Done):
        if args.json:
            ctx.print_json(reply.model_dump())
            return 0
        for backup in reply.backups:
            how = "unchanged, reused" if backup.reused else "new"
            ctx.print(f"{backup.id}  {backup.database}  ({how})")
        for note in reply.notes:
            ctx.print(f"note: {note}")
        return 0
    if isinstance(reply, Deny | Fail):
        ctx.error(f"dbguardctl: {reply.reason}")
        if reply.hint:
            ctx.error(f"  {reply.hint}")
        return 77 if isinstance(reply, Deny) else 75
    ctx.error(f"dbguardctl: unexpected reply from dbguardd: {reply.type}")
    return 76

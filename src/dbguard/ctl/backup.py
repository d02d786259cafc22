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
from dbguard.protocol import PROTOCOL_VERSION, BackupNow, Deny, Done, Fail, Progress, Working


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _show_progress(update: Progress | Working, said: set[str]) -> None:
    """An updating line on a terminal; elsewhere only a wait for a restore, once."""
    terminal = sys.stderr.isatty()
    if isinstance(update, Working):
        if update.waiting and terminal:
            sys.stderr.write(
                f"\r\x1b[2Kwaiting for {update.waiting} to end: {update.elapsed:.1f} s"
            )
        elif update.waiting and update.waiting not in said:
            said.add(update.waiting)
            sys.stderr.write(f"dbguardctl: waiting for {update.waiting} to end\n")
    elif terminal:
        sys.stderr.write(
            f"\r\x1b[2Kbacking up {update.database}: {update.bytes / 1e6:.1f} MB, "
            f"{update.elapsed:.1f} s"
        )


def run(args: argparse.Namespace, ctx: Context) -> int:
    message = BackupNow(type="backup", v=PROTOCOL_VERSION, cwd=str(current_folder()), env=ctx.env)
    # A daemon that is not running is started as a shim would start it (autostart).
    said: set[str] = set()
    reply = request(
        ctx.socket,
        message,
        lambda update: _show_progress(update, said),
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

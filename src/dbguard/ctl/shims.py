"""Install, list or remove the shims that route commands through dbguard.

Usage: dbguardctl shims install [--dir DIR] [COMMAND ...]
       dbguardctl shims list [--dir DIR] [--json]
       dbguardctl shims uninstall [--dir DIR] [COMMAND ...]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dbguard import paths, shims
from dbguard.config import plain_command_name
from dbguard.ctl.context import Context, counted, table


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="write shims (default: the configured set)")
    install.add_argument("commands", nargs="*", metavar="COMMAND", help="commands to guard")
    listing = actions.add_parser("list", help="show each shim and whether it wins on PATH")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    remove = actions.add_parser("uninstall", help="remove dbguard shims (default: every one)")
    remove.add_argument("commands", nargs="*", metavar="COMMAND", help="only these")
    for sub in (install, listing, remove):
        sub.add_argument(
            "--dir", type=Path, help="shims folder (default: ~/.local/share/dbguard/shims)"
        )


def run(args: argparse.Namespace, ctx: Context) -> int:
    folder: Path = (args.dir or paths.default_shims_dir(ctx.env)).expanduser().absolute()
    if args.action == "install":
        names = args.commands or list(ctx.config.shims.commands)
        for name in names:
            if not plain_command_name(name):
                ctx.error(f"dbguardctl: {name!r} is not a plain command name")
                return 2
        written = shims.install(folder, names, ctx.config.socket)
        ctx.print(
            f"installed {counted(len(written), 'shim')} in {folder}: "
            + " ".join(p.name for p in written)
        )
        if not _first_on_path(folder, ctx.env.get("PATH", "")):
            ctx.print("put the folder first on PATH (add this line to your shell profile):")
            ctx.print(f'  export PATH="{folder}:$PATH"')
        return 0
    if args.action == "uninstall":
        removed = shims.uninstall(folder, args.commands or None)
        ctx.print(
            f"removed {counted(len(removed), 'shim')} from {folder}: "
            + " ".join(p.name for p in removed)
        )
        missing = sorted(set(args.commands) - {p.name for p in removed})
        if missing:
            ctx.error(f"dbguardctl: no dbguard shim named {', '.join(missing)} in {folder}")
            return 1
        return 0
    states = shims.state(folder, ctx.env.get("PATH", ""))
    if args.json:
        ctx.print_json([s.__dict__ for s in states])
        return 0
    if not states:
        ctx.print(f"no shims in {folder}")
        return 0
    rows = [["COMMAND", "GUARDED", "RUNS"]]
    for s in states:
        guarded = "yes" if s.wins else f"NO: {s.resolves_to or 'not on PATH'} comes first"
        rows.append([s.name, guarded, s.real or "(no real command on PATH)"])
    ctx.print(table(rows))
    return 0


def _first_on_path(folder: Path, path_env: str) -> bool:
    entries = [e for e in path_env.split(os.pathsep) if e]
    return bool(entries) and Path(entries[0]).resolve() == folder.resolve()

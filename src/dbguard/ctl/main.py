"""dbguardctl: look after dbguard and its backups."""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

from dbguard import __version__
from dbguard.config import ConfigError
from dbguard.ctl import backup, list_backups, log, pin, prune, restore, shims, status, verify
from dbguard.ctl.context import Context
from dbguard.errors import BackupFailed, Damaged, DbguardError, NotFound, RestoreFailed

SUBCOMMANDS: dict[str, ModuleType] = {
    "status": status,
    "list-backups": list_backups,
    "backup": backup,
    "restore": restore,
    "verify": verify,
    "log": log,
    "pin": pin,
    "unpin": pin,
    "prune": prune,
    "shims": shims,
}

EXIT_CODES: list[tuple[type[DbguardError], int]] = [
    (NotFound, 2),
    (Damaged, 65),  # EX_DATAERR
    (RestoreFailed, 74),  # EX_IOERR
    (BackupFailed, 75),  # EX_TEMPFAIL
    (DbguardError, 1),
]


def summary(module: ModuleType) -> str:
    return (module.__doc__ or "").strip().splitlines()[0]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dbguardctl", description=__doc__)
    top.add_argument("--config", help="config file (default: $XDG_CONFIG_HOME/dbguard/config.toml)")
    top.add_argument("--version", action="version", version=f"dbguardctl {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        sub = commands.add_parser(
            name,
            help=summary(module),
            description=(module.__doc__ or "").strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ctx = Context(env=dict(os.environ), config_file=args.config)
    try:
        return int(SUBCOMMANDS[args.command].run(args, ctx))
    except ConfigError as err:
        print(f"dbguardctl: {err}", file=sys.stderr)
        return 78
    except DbguardError as err:
        print(f"dbguardctl: {err}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES if isinstance(err, kind))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

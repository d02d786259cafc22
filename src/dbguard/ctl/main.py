"""dbguardctl: look after dbguard and its backups."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import os
import sys
import tokenize
from types import ModuleType

from dbguard import __version__
from dbguard.ctl.context import Context
from dbguard.errors import (
    BackupFailed,
    ConfigError,
    DaemonUnavailable,
    Damaged,
    DbguardError,
    NotFound,
    RestoreFailed,
    RestoreIncomplete,
)

# command -> module in dbguard.ctl. Modules are imported only when their command runs:
# `shell-init` runs at every shell start and must stay cheap, and `dbguardctl --help`
# reads the summaries from the modules' source (see summary()). A module that serves
# two commands opens its docstring with one summary line for each, in this order.
SUBCOMMANDS: dict[str, str] = {
    "status": "status",
    "list-backups": "list_backups",
    "backup": "backup",
    "restore": "restore",
    "verify": "verify",
    "log": "log",
    "pin": "pin",
    "unpin": "pin",
    "prune": "prune",
    "approve": "approve",
    "mark": "mark",
    "install": "install",
    "uninstall": "install",  # one module, like pin/unpin: run() reads args.command
    "shell-init": "shell_init",
    "doctor": "doctor",
    "shims": "shims",
}

EXIT_CODES: list[tuple[type[DbguardError], int]] = [
    (NotFound, 2),
    (DaemonUnavailable, 69),  # EX_UNAVAILABLE, as the shims
    (Damaged, 65),  # EX_DATAERR
    (RestoreIncomplete, 73),  # EX_CANTCREAT: before RestoreFailed, which it is a kind of
    (RestoreFailed, 74),  # EX_IOERR
    (BackupFailed, 75),  # EX_TEMPFAIL
    (DbguardError, 1),
]


def load(command: str) -> ModuleType:
    return importlib.import_module(f"dbguard.ctl.{SUBCOMMANDS[command]}")


def summary(command: str) -> str:
    """The command's one-line summary: its line in the first paragraph of its module's
    docstring, read from the source without importing the module (importing them all
    would make `dbguardctl --help` load pydantic, zstandard and the database drivers)."""
    module = SUBCOMMANDS[command]
    lines = docstring(module).split("\n\n")[0].splitlines() or [""]
    serving = [name for name, served in SUBCOMMANDS.items() if served == module]
    # tests/unit/test_ctl_help.py checks that there is one line per command served.
    return lines[serving.index(command)] if len(lines) == len(serving) else lines[0]


def docstring(module: str) -> str:
    """The docstring of dbguard.ctl.`module`, as `inspect.getdoc` gives it once imported:
    the first token of the source, so only the head of the file is read."""
    spec = importlib.util.find_spec(f"dbguard.ctl.{module}")
    if spec is None or spec.origin is None:
        return ""
    with tokenize.open(spec.origin) as source:
        for token in tokenize.generate_tokens(source.readline):
            if token.type == tokenize.STRING:
                return inspect.cleandoc(ast.literal_eval(token.string))
            if token.type not in (tokenize.COMMENT, tokenize.NL):
                break
    return ""


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named in argv, if any (skipping the top-level options)."""
    words = iter(argv)
    for word in words:
        if word in ("-h", "--help"):
            return None  # `dbguardctl --help pin` lists every command
        if word == "--config":
            next(words, None)
        elif word in SUBCOMMANDS:
            return word
        elif not word.startswith("-"):
            return None
    return None


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, just that subcommand is fully configured."""
    top = argparse.ArgumentParser(prog="dbguardctl", description=__doc__)
    top.add_argument("--config", help="config file (default: $XDG_CONFIG_HOME/dbguard/config.toml)")
    top.add_argument("--version", action="version", version=f"dbguardctl {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        if only is None:  # listing the commands: --help, or no command or an unknown one
            commands.add_parser(name, help=summary(name))
        elif name != only:
            commands.add_parser(name)  # only its name is needed, to tell commands apart
        else:
            module = load(name)
            sub = commands.add_parser(
                name,
                description=(module.__doc__ or "").strip(),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.configure(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(chosen_command(argv)).parse_args(argv)
    ctx = Context(env=dict(os.environ), config_file=args.config)
    try:
        code = int(load(args.command).run(args, ctx))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except ConfigError as err:
        print(f"dbguardctl: {err}", file=sys.stderr)
        # dbguardd's own messages add their way out (autostart's, the reload's).
        print(
            "  fix the file (config.example.toml documents every key and its default); "
            "a running dbguardd keeps its previous config until then",
            file=sys.stderr,
        )
        return 78
    except DbguardError as err:
        print(f"dbguardctl: {err}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES if isinstance(err, kind))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `dbguardctl list-backups | head -1`: the reader has what it wanted. Point stdout
        # at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as if SIGPIPE had ended it, as it does other tools


if __name__ == "__main__":
    sys.exit(main())

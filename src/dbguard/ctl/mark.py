"""Mark a database of this project as production or development, inside the database.

Usage: dbguardctl mark production|development|none [--database TEXT]

The mark travels with the database (SQLite: the file header's application_id;
PostgreSQL: a database setting; MySQL: a stored procedure `dbguard_environment` whose
comment holds the mark) and outranks names and hosts: a database marked production is
production wherever it is, and a local copy marked development is not production
because of an old host name in a .env. `development` and `none` loosen the rules: they
are typed at a terminal (the database's name confirms them), never in an AI agent's
environment. A production mark is also remembered outside the database (in
production-marks.json in dbguard's state folder), and only this command forgets it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from dbguard.ctl.confirm import ask_on_terminal
from dbguard.ctl.context import Context, current_folder
from dbguard.discovery.project import DiscoveryCache
from dbguard.engines import Engines
from dbguard.engines.base import Marker
from dbguard.marks import ProductionMarks


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("environment", choices=[*get_args(Marker), "none"])
    parser.add_argument("--database", metavar="TEXT", help="the database whose name contains TEXT")


def run(args: argparse.Namespace, ctx: Context) -> int:
    agents = ctx.agents()
    if agents and args.environment != "production":
        # A development mark outranks names and hosts: set by an agent, it would open
        # production to the agent itself. Marking production only adds protection.
        ctx.error(
            f"dbguardctl mark {args.environment} refuses to run in an AI agent's environment "
            f"({'; '.join(agents)}): a person decides a database is not production, "
            "in their own terminal"
        )
        return 77
    found = DiscoveryCache().project_databases(current_folder(), ctx.env, "dbguardctl mark")
    targets = [t for t in found.targets if not args.database or args.database in t.label]
    if len(targets) != 1:
        listing = "\n".join(f"  {t.label}  ({t.source})" for t in found.targets) or "  none"
        ctx.error(
            f"dbguardctl: {'no' if not targets else len(targets)} databases match; "
            f"choose one with --database TEXT. This project's databases:\n{listing}"
        )
        return 2
    [target] = targets
    if args.environment != "production":
        # Loosening is a person's call, typed at a terminal, as an approval is.
        name = target.name or Path(str(target.path)).name
        typed = ask_on_terminal(
            f"{target.label} will no longer count as production by its mark. "
            f"Type its name ({name}) to mark it {args.environment}: "
        )
        if typed is None:
            ctx.error(
                f"dbguardctl mark {args.environment}: no terminal to confirm on; a person "
                "lowers a database's mark, at a terminal"
            )
            return 77
        if typed.strip() != name:
            ctx.print("not marked")
            return 1
    marker: Marker | None = None if args.environment == "none" else args.environment
    # dbguardd remembers production marks, so that one lost with its database still
    # counts; a person lowering the mark here is the one way to forget it, and what a
    # person sets here stands against a put-back after a command running meanwhile
    # (noted first, so that no put-back lands between the mark and the note).
    register = ProductionMarks.in_state_dir(ctx.env, lambda text: ctx.error(f"dbguardctl: {text}"))
    register.set_by_hand(target, marker)
    engines = Engines(ctx.config.backup)
    try:
        engines.for_target(target).set_marker(target, marker)
    finally:
        engines.close()
    ctx.print(f"{target.label} is now marked {args.environment}")
    return 0

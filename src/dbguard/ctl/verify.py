"""Verify a backup: checksum, then a scratch restore whose row counts must match.

Usage: dbguardctl verify ID [--json]
"""

from __future__ import annotations

import argparse

from dbguard import operations
from dbguard.ctl.context import Context, backup_id, counted
from dbguard.engines import Engines


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=backup_id, help="backup id or unique prefix")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, ctx: Context) -> int:
    manifest = ctx.store.get(args.id)
    engines = Engines(ctx.config.backup)
    try:
        target = operations.with_credentials(manifest, ctx.env)
        result = operations.verify_backup(ctx.store, engines, manifest, target)
    finally:
        engines.close()
    if args.json:
        ctx.print_json({"id": manifest.id, **result.model_dump(mode="json")})
    elif result.ok:
        ctx.print(
            f"backup {manifest.id} is good: checksum matches, restored "
            f"{counted(len(manifest.tables), 'table')} with "
            f"{counted(sum(manifest.tables.values()), 'row')}, as recorded"
        )
    else:
        ctx.print(f"backup {manifest.id} FAILED verification:")
        for problem in result.problems:
            ctx.print(f"  {problem}")
    return 0 if result.ok else 1

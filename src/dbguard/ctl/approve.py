"""Approve, once, a command that was refused because it would touch production.

Usage: dbguardctl approve CODE

Run it yourself, in your own terminal: it shows what the code stands for and asks you to
type the database's name on the terminal (never from stdin, so a pipe or an agent cannot
answer). The approval covers that exact command, in that folder, on those databases,
once, for a few minutes. dbguardctl refuses to run where an AI agent's environment
variables are set.
"""

from __future__ import annotations

import argparse

from dbguard.client.talk import request
from dbguard.ctl.confirm import EndOfInput, ask_on_terminal
from dbguard.ctl.context import Context
from dbguard.protocol import PROTOCOL_VERSION, ApprovalInfo, ApprovalQuery, Approve, Error, Ok


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("code", help="the code from the refusal message")


def run(args: argparse.Namespace, ctx: Context) -> int:
    agents = ctx.agents()
    if agents:
        ctx.error(
            "dbguardctl approve refuses to run in an AI agent's environment "
            f"({'; '.join(agents)}): a person approves production commands, in their own "
            "terminal"
        )
        return 77
    info = request(ctx.socket, ApprovalQuery(type="approval", v=PROTOCOL_VERSION, code=args.code))
    if isinstance(info, Error):
        ctx.error(f"dbguardctl: {info.message}")
        return 1
    if not isinstance(info, ApprovalInfo):
        ctx.error(f"dbguardctl: unexpected reply from dbguardd: {info.type}")
        return 76
    ctx.print(f"command:   {' '.join(info.argv)}")
    ctx.print(f"folder:    {info.cwd}")
    for database in info.databases:
        ctx.print(f"database:  {database}")
    for reason in info.reasons:
        ctx.print(f"why:       {reason}")
    ctx.print(f"expires:   in {info.expires_in_seconds:.0f} s")
    try:
        typed = ask_on_terminal(
            f"Type the database name ({' or '.join(info.names)}) to let this command run once: "
        )
    except EndOfInput:
        ctx.error("dbguardctl: no answer was given (end of input), so not approved")
        return 1
    if typed is None:
        ctx.error("dbguardctl: no terminal to ask on; approvals are typed by a person at one")
        return 77
    reply = request(
        ctx.socket, Approve(type="approve", v=PROTOCOL_VERSION, code=args.code, text=typed)
    )
    if isinstance(reply, Ok):
        ctx.print(
            "approved: the same command, run again from the same folder by you or the "
            "agent, runs once (a backup is taken first)"
        )
        return 0
    ctx.error(f"dbguardctl: {reply.message if isinstance(reply, Error) else reply.type}")
    return 1

"""When to say no: pure decisions on top of the production verdicts.

A production database is never touched by a caller that is not a person at a terminal:
no terminal, or an AI agent's environment or program (even one with a pseudo-terminal:
an agent's variable set, or an agent's CLI among the processes the command runs
under). Such a
caller gets a code a human approves with `dbguardctl approve CODE`. A person at a
terminal is asked to type the database's name before anything that writes to it runs.
What the approved command runs in turn is covered by that approval, as far as the steps
of the approved command take it in (Approval.covers).
Nothing here reads a flag or a project file: only the user's own config (the
ProductionSettings it is given) shapes the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from dbguard.production import ProductionSettings
from dbguard.rules import Kind


class Gate(StrEnum):
    PROCEED = "proceed"  # back up and run
    CONFIRM = "confirm"  # the person at the terminal types the database name first
    APPROVE = "approve"  # a human must approve with `dbguardctl approve CODE`


@dataclass(frozen=True)
class Caller:
    """A process a command runs under (its parent, the parent's parent, ...)."""

    pid: int
    # What it is called: its process name, its program's file name, and for an
    # interpreter (node, python) the script's, e.g. ("node", "gemini").
    names: tuple[str, ...]


def agent_markers(
    env: Mapping[str, str], settings: ProductionSettings, callers: Sequence[Caller] = ()
) -> list[str]:
    """What makes the caller an AI agent: each agent variable set (non-empty) in `env`,
    e.g. "CLAUDECODE set", and each agent program among `callers`, e.g. "run by claude
    (pid 4242)". Empty for anyone else."""
    markers = [f"{name} set" for name in settings.agent_variables if env.get(name)]
    for caller in callers:
        agents = [name for name in caller.names if name in settings.agent_programs]
        if agents:
            markers.append(f"run by {agents[0]} (pid {caller.pid})")
    return markers


def gate(kind: Kind, production: bool, *, terminal: bool, agent: bool) -> Gate:
    """What must happen before `kind` may run against the databases.

    Any operation that needs a backup needs a human when a database is production.
    Only the interactive query client is exempt at a terminal: a person opening psql on
    production is looking, and whatever they type is theirs.
    """
    if not production or not kind.needs_backup:
        return Gate.PROCEED
    if agent or not terminal:
        return Gate.APPROVE
    return Gate.PROCEED if kind is Kind.QUERY else Gate.CONFIRM


# What an approval of a command of each kind covers in the commands it runs: what the
# human could expect from it. A wipe takes in a migration, a seed and a test run, which
# do no more to the data; a migration takes in a seed (`migrate && db seed`). A test run
# truncates and re-seeds, which neither a migration nor a seed does. A query client's
# SQL is unknown to dbguard, so nothing covers it.
_COVERS = {
    Kind.DESTRUCTIVE: frozenset({Kind.DESTRUCTIVE, Kind.MIGRATE, Kind.SEED, Kind.TEST}),
    Kind.MIGRATE: frozenset({Kind.MIGRATE, Kind.SEED}),
    Kind.SEED: frozenset({Kind.SEED}),
    Kind.TEST: frozenset({Kind.TEST}),
}


@dataclass(frozen=True)
class Approval:
    """What a human let a command do on production: what its steps do (their kinds: a
    script `migrate && test` has two), to the production databases `databases` (their
    keys)."""

    kinds: frozenset[Kind]
    databases: frozenset[str]

    def covers(self, kind: Kind, databases: frozenset[str]) -> bool:
        """Whether a command that the approved one runs (`npm run db:reset` running
        `prisma migrate reset`) is part of what the human approved: a kind one of its
        steps takes in (_COVERS; never a query client's SQL), on no production database
        they were not asked about. Anything more is asked for again."""
        taken_in = frozenset().union(*(_COVERS.get(kind, frozenset()) for kind in self.kinds))
        return kind in taken_in and databases <= self.databases

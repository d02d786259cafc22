from __future__ import annotations

import pytest

from dbguard.policy import Approval, Caller, Gate, agent_markers, gate
from dbguard.production import ProductionSettings
from dbguard.rules import Kind


@pytest.mark.parametrize(
    ("kind", "production", "terminal", "agent", "expected"),
    [
        (Kind.DESTRUCTIVE, False, False, True, Gate.PROCEED),
        (Kind.READ_ONLY, True, False, True, Gate.PROCEED),
        (Kind.DESTRUCTIVE, True, False, False, Gate.APPROVE),  # no terminal
        (Kind.TEST, True, True, True, Gate.APPROVE),  # an agent with a pty
        (Kind.MIGRATE, True, False, False, Gate.APPROVE),
        (Kind.SEED, True, False, False, Gate.APPROVE),
        (Kind.QUERY, True, False, False, Gate.APPROVE),
        (Kind.DESTRUCTIVE, True, True, False, Gate.CONFIRM),  # a person at a terminal
        (Kind.TEST, True, True, False, Gate.CONFIRM),
        (Kind.MIGRATE, True, True, False, Gate.CONFIRM),
        (Kind.QUERY, True, True, False, Gate.PROCEED),
    ],
)
def test_gate(kind: Kind, production: bool, terminal: bool, agent: bool, expected: Gate) -> None:
    assert gate(kind, production, terminal=terminal, agent=agent) is expected


def test_agent_markers() -> None:
    settings = ProductionSettings()
    assert agent_markers({"CLAUDECODE": "1", "HOME": "/h"}, settings) == ["CLAUDECODE set"]
    assert agent_markers({"CLAUDECODE": ""}, settings) == []
    custom = ProductionSettings(agent_variables=("MY_BOT",))
    assert agent_markers({"MY_BOT": "yes", "CLAUDECODE": "1"}, custom) == ["MY_BOT set"]


def test_an_agent_program_above_the_command_marks_it_whatever_its_variables() -> None:
    settings = ProductionSettings()
    shells = [Caller(30, ("bash",)), Caller(20, ("npm", "node"))]
    gemini = Caller(10, ("node", "gemini"))  # `node /usr/bin/gemini`
    assert agent_markers({}, settings, shells) == []
    assert agent_markers({}, settings, [*shells, gemini]) == ["run by gemini (pid 10)"]
    assert agent_markers({"GEMINI_CLI": "1"}, settings, [gemini]) == [
        "GEMINI_CLI set",
        "run by gemini (pid 10)",
    ]
    # The user's own agent, named in config; the defaults can be emptied there too.
    mine = ProductionSettings(agent_programs=("npm",))
    assert agent_markers({}, mine, [*shells, gemini]) == ["run by npm (pid 20)"]


def test_an_approval_covers_no_more_than_the_human_was_told() -> None:
    """What an approved command runs is covered as far as its kind takes in what runs
    and the production databases named in the question go; a wider step, and any query
    client's SQL, is asked for again."""
    wipe = Approval(frozenset({Kind.DESTRUCTIVE}), frozenset({"pg:app", "pg:audit"}))
    assert wipe.covers(Kind.DESTRUCTIVE, frozenset({"pg:app"}))
    assert wipe.covers(Kind.MIGRATE, frozenset({"pg:app", "pg:audit"}))
    assert wipe.covers(Kind.TEST, frozenset())
    assert not wipe.covers(Kind.DESTRUCTIVE, frozenset({"pg:app", "pg:billing"}))
    assert not wipe.covers(Kind.QUERY, frozenset({"pg:app"}))  # `psql -c '...'`
    migration = Approval(frozenset({Kind.MIGRATE}), frozenset({"pg:app"}))
    assert migration.covers(Kind.SEED, frozenset({"pg:app"}))
    assert not migration.covers(Kind.TEST, frozenset({"pg:app"}))  # truncates tables
    seed = Approval(frozenset({Kind.SEED}), frozenset({"pg:app"}))
    assert not seed.covers(Kind.TEST, frozenset({"pg:app"}))
    tests = Approval(frozenset({Kind.TEST}), frozenset({"pg:app"}))
    assert tests.covers(Kind.TEST, frozenset({"pg:app"}))
    for kind in (Kind.QUERY, Kind.SEED, Kind.MIGRATE, Kind.DESTRUCTIVE):
        assert not tests.covers(kind, frozenset({"pg:app"}))
    query = Approval(frozenset({Kind.QUERY}), frozenset({"pg:app"}))
    assert not query.covers(Kind.QUERY, frozenset({"pg:app"}))
    # A script of several steps (`migrate && test`) covers what each step takes in.
    script = Approval(frozenset({Kind.MIGRATE, Kind.TEST}), frozenset({"pg:app"}))
    assert script.covers(Kind.TEST, frozenset({"pg:app"}))
    assert script.covers(Kind.SEED, frozenset({"pg:app"}))
    assert not script.covers(Kind.DESTRUCTIVE, frozenset({"pg:app"}))

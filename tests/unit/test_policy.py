from __future__ import annotations

import pytest

from dbguard.policy import Gate, agent_markers, gate
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
    assert agent_markers({"CLAUDECODE": "1", "HOME": "/h"}, settings) == ["CLAUDECODE"]
    assert agent_markers({"CLAUDECODE": ""}, settings) == []
    custom = ProductionSettings(agent_variables=("MY_BOT",))
    assert agent_markers({"MY_BOT": "yes", "CLAUDECODE": "1"}, custom) == ["MY_BOT"]

"""Fixtures of the failure suite, and the report of its figures at the end of a run.

Set DBGUARD_FAULT_FIGURES=/path/figures.json to also get the figures as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import (
    FAULTS,
    FIGURES,
    FaultDaemon,
    PrivateMariadb,
    PrivatePostgres,
    install_php,
    private_mariadb,
    private_postgres,
)
from tests.helpers import Home


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this suite's own (password authentication on TCP), which
    tests may stop and start; the shared server is never stopped."""
    with private_postgres() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def own_mariadb() -> Iterator[PrivateMariadb]:
    """A mariadbd of this suite's own, which tests may kill and start again."""
    with private_mariadb() as server:
        yield server


@pytest.fixture
def php(home: Home) -> Path:
    """The stand-in php behind a real shim in `home`."""
    return install_php(home)


@pytest.fixture
def fault_daemon(home: Home) -> Iterator[FaultDaemon]:
    """A daemon in `home`, started by the test (so it can write a config first)."""
    daemon = FaultDaemon(home)
    yield daemon
    if daemon.process is not None and daemon.process.poll() is None:
        daemon.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FAULTS and not FIGURES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("dbguard failure suite: figures")
    write(f"faults injected: {sum(FAULTS.values())}")
    for kind, count in sorted(FAULTS.items()):
        write(f"  {count:5d}  {kind}")
    for key, value in sorted(FIGURES.items()):
        write(f"{key}: {value}")
    target = os.environ.get("DBGUARD_FAULT_FIGURES")
    if target:
        Path(target).write_text(
            json.dumps({"faults": dict(FAULTS), "figures": FIGURES}, indent=2, default=str)
        )

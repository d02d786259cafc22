from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Daemon, Home, new_home


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    yield from new_home(tmp_path)


@pytest.fixture
def daemon(home: Home) -> Iterator[Daemon]:
    running = Daemon(home).start()
    yield running
    running.stop()


from tests.servers import mysql_database, pg_database  # noqa: E402  (fixtures)

__all__ = ["daemon", "home", "mysql_database", "pg_database"]

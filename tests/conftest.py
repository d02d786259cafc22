from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Daemon, Home, new_home

# A run started in the background by a shell without job control (`cmd &` in a script)
# begins with SIGINT ignored, and every shim and command the tests start would inherit
# that: the tests of ^C would see nothing arrive. They start from the default instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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

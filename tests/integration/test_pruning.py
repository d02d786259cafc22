"""The daemon prunes by policy after each successful backup, and never the newest."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from dbguard import operations
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.errors import NotFound
from dbguard.store import Manifest, Reason, Store
from tests.helpers import Daemon, Home, php_project_with_config


def test_daemon_prunes_after_successful_backups(home: Home) -> None:
    _, project = php_project_with_config(
        home,
        "[retention]\nkeep_last = 2\nhourly = 0\ndaily = 0\nweekly = 0\nmonthly = 0\n"
        "protect_pre_destructive_days = 0\n",
    )
    db = project / "database" / "app.sqlite"
    daemon = Daemon(home).start()
    try:
        for round_ in range(4):
            with sqlite3.connect(db) as conn:
                conn.execute("INSERT INTO users (name) VALUES (?)", (f"round {round_}",))
            assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
        deadline = time.monotonic() + 20
        while daemon.log.count('"backup pruned"') < 2:
            assert time.monotonic() < deadline, daemon.log
            time.sleep(0.02)
        kept = list(home.backups.glob("*/*/manifest.json"))
        assert len(kept) == 2
        newest = max(kept, key=lambda p: p.stat().st_mtime_ns)
        assert '"users": 7' in newest.read_text()  # the newest backup is among the kept
    finally:
        daemon.stop()


def test_a_prune_between_verify_s_checksum_and_its_restore_is_not_found(tmp_path: Path) -> None:
    """A prune (dbguardd's, after a backup of its own) can land while a verify runs:
    after the checksum, before the scratch restore opens the data. The backup is gone,
    which verify says as NotFound, not as a disk to free space on."""
    database = tmp_path / "app.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    target = Target(engine="sqlite", path=str(database), source="test")

    class PrunedMidVerify(Store):
        @contextlib.contextmanager
        def open_data(self, manifest: Manifest) -> Iterator[BinaryIO]:
            self.delete(manifest)  # as a prune does, right after verify's checksum
            with super().open_data(manifest) as data:
                yield data

    store = PrunedMidVerify(tmp_path / "backups")
    engines = Engines()
    try:
        manifest = operations.take_backup(store, engines, target, Reason(kind="manual"))
        with pytest.raises(NotFound, match=f"backup {manifest.id} is gone"):
            operations.verify_backup(store, engines, manifest)
    finally:
        engines.close()
    assert store.entries() == []

"""The daemon prunes by policy after each successful backup, and never the newest."""

from __future__ import annotations

import sqlite3
import time

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

"""Many callers, one backup: concurrent guarded commands share the in-flight backup."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers import Daemon, Home, install_stand_in, laravel_sqlite_project


def test_sixteen_concurrent_commands_make_exactly_one_backup(home: Home, daemon: Daemon) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app", rows=50_000)

    commands = [
        subprocess.Popen(
            ["php", "artisan", "test"],
            cwd=project,
            env=home.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(16)
    ]
    for command in commands:
        _, stderr = command.communicate(timeout=120)
        assert command.returncode == 0, stderr

    manifests = list(home.backups.glob("*/*/manifest.json"))
    assert len(manifests) == 1
    backup_id = json.loads(manifests[0].read_text())["id"]
    records = [json.loads(line) for line in home.oplog.read_text().splitlines()]
    assert len(records) == 16
    assert {r["backups"][0]["id"] for r in records} == {backup_id}
    assert sum(not r["backups"][0]["reused"] for r in records) == 1


def test_a_change_after_the_shared_backup_gets_its_own(home: Home, daemon: Daemon) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project: Path = laravel_sqlite_project(home.root / "app")
    assert home.run(["php", "artisan", "test", "--wipe"], cwd=project).returncode == 0
    assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
    # the first run deleted rows after its backup: the second must not reuse it
    assert len(list(home.backups.glob("*/*/manifest.json"))) == 2

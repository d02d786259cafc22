"""SIGHUP reloads the config; an invalid file is rejected and the old one stays."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from tests.helpers import (
    Daemon,
    Home,
    laravel_sqlite_project,
    php_project_with_config,
)


def wait_for_log(daemon: Daemon, text: str, count: int = 1, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while daemon.log.count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} never appeared in the daemon log"
        time.sleep(0.02)


def test_sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid(home: Home) -> None:
    first_dir, second_dir = home.root / "first", home.root / "second"
    config, project = php_project_with_config(home, f'backup_dir = "{first_dir}"\n')
    daemon = Daemon(home).start()
    try:
        assert home.run(["php", "artisan", "test", "--wipe"], cwd=project).returncode == 0
        assert len(list(first_dir.glob("*/*/manifest.json"))) == 1

        config.write_text(f'backup_dir = "{second_dir}"\n')
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_log(daemon, "config reloaded")
        assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
        assert len(list(second_dir.glob("*/*/manifest.json"))) == 1

        config.write_text("backup_dir = 42\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_log(daemon, "new config rejected")
        assert "backup_dir" in daemon.log
        assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
        assert len(list(second_dir.glob("*/*/manifest.json"))) == 2  # old config in force

        # Valid TOML, but the folder cannot be made: rejected whole, not half applied.
        (home.root / "a-file").write_text("")
        config.write_text(f'backup_dir = "{home.root / "a-file" / "backups"}"\n')
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_log(daemon, "new config rejected", count=2)
        assert "a-file is a file" in daemon.log  # it names what is in the way
        status = home.ctl("status")
        assert f"but dbguardd writes its backups to {second_dir}".encode() in status.stdout
        # The rejection stays visible after the log has scrolled by, with the way out.
        assert b"PROBLEM: the config file changed at" in status.stdout
        assert b"a-file is a file" in status.stdout
        assert b"it applies at the next command" in status.stdout
        with sqlite3.connect(project / "database" / "app.sqlite") as conn:
            conn.execute("create table changed (x)")  # so that the next command backs up
        assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
        assert len(list(second_dir.glob("*/*/manifest.json"))) == 3

        config.write_text(f'backup_dir = "{second_dir}"\n')  # fixed: a reload clears it
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_log(daemon, "config reloaded", count=2)
        assert b"PROBLEM" not in home.ctl("status").stdout
    finally:
        assert daemon.stop() == 0


def test_an_edited_config_applies_to_the_next_command_without_a_signal(home: Home) -> None:
    first_dir, second_dir = home.root / "first", home.root / "second"
    config, project = php_project_with_config(home, f'backup_dir = "{first_dir}"\n')
    database = project / "database" / "app.sqlite"
    daemon = Daemon(home).start()
    try:
        assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
        assert len(list(first_dir.glob("*/*/manifest.json"))) == 1

        # The production rule a user adds protects the very next command.
        config.write_text(
            f'backup_dir = "{second_dir}"\n[production]\nsqlite_production_paths = ["{database}"]\n'
        )
        refused = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert refused.returncode == 77, refused.stderr
        assert b"production" in refused.stderr
        assert "config reloaded" in daemon.log

        # A broken edit keeps the previous config (production rule included), and every
        # command says so: the refused one too, whose way out the edit may have been.
        config.write_text(f'backup_dir = "{second_dir}"\n[backup]\ncompresion_level = 3\n')
        refused = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert refused.returncode == 77, refused.stderr
        assert b"the previous config stays in force" in refused.stderr
        assert b"backup.compresion_level: unknown key" in refused.stderr
        other = laravel_sqlite_project(home.root / "other")
        allowed = home.run(["php", "artisan", "migrate:fresh"], cwd=other)
        assert allowed.returncode == 0, allowed.stderr
        assert b"the previous config stays in force" in allowed.stderr
        assert b"backup.compresion_level: unknown key" in allowed.stderr
        assert len(list(second_dir.glob("*/*/manifest.json"))) == 1  # other's, by the old rules
    finally:
        assert daemon.stop() == 0


def test_an_invalid_config_at_start_is_refused_with_its_key(home: Home, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[backup]\nmax_parallel = 0\n")
    result = home.run(
        ["dbguardd", "--config", str(config)], cwd=tmp_path, env={"PATH": home.env["PATH"]}
    )
    assert result.returncode == 78
    assert b"backup.max_parallel" in result.stderr
    assert str(config).encode() in result.stderr


def test_the_users_own_rules_can_add_a_tool(home: Home) -> None:
    config = home.root / "config.toml"
    config.write_text(
        '[[rules.tool]]\nname = "shopctl"\nframework = "laravel"\nlaunch = ["shopctl"]\n'
        '[rules.tool.commands]\n"reset" = "destructive"\n'
    )
    home.extra_env["DBGUARD_CONFIG"] = str(config)
    tool = home.bin / "shopctl"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    home.install_shims("shopctl")
    project = laravel_sqlite_project(home.root / "app")
    daemon = Daemon(home).start()
    try:
        assert home.run(["shopctl", "status"], cwd=project).returncode == 0
        assert list(home.backups.glob("*/*/manifest.json")) == []
        assert home.run(["shopctl", "reset"], cwd=project).returncode == 0
        assert len(list(home.backups.glob("*/*/manifest.json"))) == 1
    finally:
        daemon.stop()


def test_a_project_s_own_tool_stays_guarded_when_its_file_is_broken(home: Home) -> None:
    tool = home.bin / "shopctl"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    home.install_shims("shopctl")
    project = laravel_sqlite_project(home.root / "app")
    rules = project / ".dbguard.toml"
    rules.write_text(
        '[[tool]]\nname = "shopctl"\nframework = "laravel"\nlaunch = ["shopctl"]\n'
        '[tool.commands]\n"reset" = "destructive"\n'
    )
    daemon = Daemon(home).start()
    try:
        assert home.run(["shopctl", "reset"], cwd=project).returncode == 0
        assert len(list(home.backups.glob("*/*/manifest.json"))) == 1
        # Broken, or loosened, the file no longer guards: it stops every command instead.
        for broken in ("[[tool]\n", "[production]\ndevelopment_hosts = ['db.prod']\n"):
            rules.write_text(rules.read_text() + broken)
            refused = home.run(["shopctl", "reset"], cwd=project)
            assert refused.returncode == 77, refused.stderr
            assert b".dbguard.toml" in refused.stderr
            rules.write_text(rules.read_text().replace(broken, ""))
    finally:
        assert daemon.stop() == 0

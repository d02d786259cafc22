"""What dbguardctl prints for a person: counts whose nouns agree with them, and columns
that say what they hold."""

from __future__ import annotations

import json

from tests.helpers import Daemon, Home, laravel_sqlite_project


def test_counts_of_one_are_singular_and_of_more_plural(home: Home, daemon: Daemon) -> None:
    one = laravel_sqlite_project(home.root / "one", rows=1)  # 1 table, 1 row
    taken = home.ctl("backup", "--json", cwd=one)
    assert taken.returncode == 0, taken.stderr
    [backup] = json.loads(taken.stdout)["backups"]

    none = home.ctl("list-backups", "--database", "nope").stdout.decode()
    assert "(1 other in " in none, none
    verified = home.ctl("verify", backup["id"]).stdout.decode()
    assert "restored 1 table with 1 row," in verified, verified

    restored = home.ctl("restore", backup["id"], "--yes").stdout.decode()
    assert ", 1 table, 1 row, " in restored, restored

    none = home.ctl("list-backups", "--database", "nope").stdout.decode()
    assert "(2 others in " in none, none  # the backup and the one taken before the restore

    many = laravel_sqlite_project(home.root / "many", rows=3)
    taken = home.ctl("backup", "--json", cwd=many)
    [backup] = json.loads(taken.stdout)["backups"]
    restored = home.ctl("restore", backup["id"], "--yes").stdout.decode()
    assert ", 1 table, 3 rows, " in restored, restored


def test_list_backups_says_its_size_is_the_stored_one(home: Home, daemon: Daemon) -> None:
    project = laravel_sqlite_project(home.root / "app")
    assert home.ctl("backup", cwd=project).returncode == 0
    header = home.ctl("list-backups").stdout.decode().splitlines()[0].split()
    assert header == ["ID", "CREATED", "AGE", "DATABASE", "STORED", "ROWS", "REASON", "FLAGS"]
    [listed] = json.loads(home.ctl("list-backups", "--json").stdout)
    assert listed["data"]["size"] > 0 and "stored" not in listed  # JSON keys as they were


def test_status_says_the_age_of_the_last_verified_backup_is_when_it_was_taken(
    home: Home, daemon: Daemon
) -> None:
    project = laravel_sqlite_project(home.root / "app")
    [backup] = json.loads(home.ctl("backup", "--json", cwd=project).stdout)["backups"]
    assert home.ctl("verify", backup["id"]).returncode == 0
    text = home.ctl("status").stdout.decode()
    assert "LAST VERIFIED" in text, text
    assert f"{backup['id']} (taken " in text, text

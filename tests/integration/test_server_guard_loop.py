"""Issue 3's "done means": a guarded destructive command on a PostgreSQL or MySQL
project leaves a backup that `dbguardctl verify` accepts and `dbguardctl restore`
brings back, rows identical. Real servers, real shims, stand-ins for the tools."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dbguard.engines.base import Target
from tests.helpers import Daemon, Home, run_in_terminal
from tests.servers import mysql_connect, pg_connect

# Drops every table of the database in DBGUARD_TEST_DSN when run as a destructive
# command: what migrate:fresh, downgrade base and migrate reset do first. With
# --recreate it drops the database itself and makes it again, as `rails db:reset` does.
WIPER = """#!{python}
import os, sys
words = [w for w in sys.argv[1:] if not w.startswith("-") and w != "artisan"]
if words[:1] in (["migrate:fresh"], ["downgrade"], ["migrate"]):
    dsn = os.environ["DBGUARD_TEST_DSN"]
    name = dsn.rsplit("/", 1)[1]
    if "--recreate" in sys.argv and dsn.startswith("postgres"):
        import psycopg
        with psycopg.connect(dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{{name}}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{{name}}"')
    elif "--recreate" in sys.argv:
        import pymysql
        conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE `{{name}}`")
            cur.execute(f"CREATE DATABASE `{{name}}`")
        conn.close()
    elif dsn.startswith("postgres"):
        import psycopg
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    else:
        import pymysql
        conn = pymysql.connect(host="127.0.0.1", user="root", database=name, autocommit=True)
        with conn.cursor() as cur:
            cur.execute("SET FOREIGN_KEY_CHECKS = 0")
            cur.execute("SHOW TABLES")
            for (table,) in cur.fetchall():
                cur.execute(f"DROP TABLE `{{table}}`")
        conn.close()
    print("wiped")
"""

ROWS = [(1, "ada", "ünïcode ✓", b"\\x00\\x01\\xff"), (2, "grace", None, None)]


def seed_pg(target: Target) -> Callable[[], list[tuple[Any, ...]]]:
    with pg_connect(str(target.name)) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text, note text, raw bytea)")
        conn.cursor().executemany("INSERT INTO users VALUES (%s, %s, %s, %s)", ROWS)

    def rows() -> list[tuple[Any, ...]]:
        with pg_connect(str(target.name)) as conn:
            found = conn.execute("SELECT to_regclass('public.users') IS NOT NULL").fetchone()
            if not found or not found[0]:
                return []
            return [
                (r[0], r[1], r[2], bytes(r[3]) if r[3] is not None else None)
                for r in conn.execute("SELECT * FROM users ORDER BY id").fetchall()
            ]

    return rows


def seed_mysql(target: Target) -> Callable[[], list[tuple[Any, ...]]]:
    conn = mysql_connect(target.name)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text, note text, raw blob) ENGINE=InnoDB"
        )
        cur.executemany("INSERT INTO users VALUES (%s, %s, %s, %s)", ROWS)
    conn.close()

    def rows() -> list[tuple[Any, ...]]:
        conn = mysql_connect(target.name)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW TABLES LIKE 'users'")
                if not cur.fetchall():
                    return []
                cur.execute("SELECT * FROM users ORDER BY id")
                return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()

    return rows


def laravel(project: Path, target: Target) -> list[str]:
    connection = "pgsql" if target.engine == "postgres" else "mysql"
    (project / "artisan").write_text("<?php\n")
    (project / ".env").write_text(
        f"APP_ENV=local\nDB_CONNECTION={connection}\nDB_HOST={target.host}\n"
        f"DB_PORT={target.port}\nDB_DATABASE={target.name}\nDB_USERNAME={target.user}\n"
    )
    return ["php", "artisan", "migrate:fresh"]


def alembic(project: Path, target: Target) -> list[str]:
    (project / "alembic.ini").write_text(
        f"[alembic]\nsqlalchemy.url = {dsn(target).replace('postgresql', 'postgresql+psycopg')}\n"
    )
    return ["alembic", "downgrade", "base"]


def prisma(project: Path, target: Target) -> list[str]:
    (project / "prisma").mkdir()
    provider = "postgresql" if target.engine == "postgres" else "mysql"
    (project / "prisma" / "schema.prisma").write_text(
        f'datasource db {{\n  provider = "{provider}"\n  url = env("DATABASE_URL")\n}}\n'
    )
    (project / ".env").write_text(f"DATABASE_URL={dsn(target)}\n")
    return ["prisma", "migrate", "reset", "--force"]


def dsn(target: Target) -> str:
    scheme = "postgresql" if target.engine == "postgres" else "mysql"
    return f"{scheme}://{target.user}@{target.host}:{target.port}/{target.name}"


@pytest.mark.parametrize(
    ("server", "layout"),
    [
        ("postgres", laravel),
        ("postgres", alembic),
        ("postgres", prisma),
        ("mysql", laravel),
        ("mysql", prisma),
    ],
    ids=["pg-artisan", "pg-alembic", "pg-prisma", "mysql-artisan", "mysql-prisma"],
)
def test_destructive_command_is_backed_up_verified_and_restored(
    request: pytest.FixtureRequest,
    home: Home,
    daemon: Daemon,
    server: str,
    layout: Callable[[Path, Target], list[str]],
) -> None:
    target: Target = request.getfixturevalue(
        "pg_database" if server == "postgres" else "mysql_database"
    )
    rows = seed_pg(target) if server == "postgres" else seed_mysql(target)
    before = rows()
    project = home.root / "app"
    project.mkdir()
    command = layout(project, target)
    tool = home.bin / command[0]
    tool.write_text(WIPER.format(python=sys.executable))
    tool.chmod(0o755)
    home.install_shims(command[0])

    result = home.run(command, cwd=project, env={"DBGUARD_TEST_DSN": dsn(target)})
    assert result.returncode == 0, result.stderr
    assert rows() == []  # the command really wiped it

    [backup] = json.loads(home.ctl("list-backups", "--json").stdout)
    assert backup["database"]["engine"] == server
    verified = home.ctl("verify", backup["id"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    restored = home.ctl("restore", backup["id"], "--yes", cwd=project)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert rows() == before


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_database_dropped_and_made_again_keeps_its_production_mark(
    request: pytest.FixtureRequest, home: Home, daemon: Daemon, server: str
) -> None:
    """PostgreSQL keeps the mark as a setting of the database, MySQL as a routine in it:
    a command that drops the database and makes it again (`rails db:reset`) takes the
    mark with it, and an agent's next command would find production unmarked."""
    target: Target = request.getfixturevalue(
        "pg_database" if server == "postgres" else "mysql_database"
    )
    rows = seed_pg(target) if server == "postgres" else seed_mysql(target)
    project = home.root / "app"
    project.mkdir()
    command = [*laravel(project, target), "--recreate"]
    tool = home.bin / "php"
    tool.write_text(WIPER.format(python=sys.executable))
    tool.chmod(0o755)
    home.install_shims("php")
    env = {**home.env, "DBGUARD_TEST_DSN": dsn(target)}
    assert home.ctl("mark", "production", cwd=project).returncode == 0

    # A person at a terminal confirms it, so it runs (after a backup).
    confirmed = run_in_terminal(command, env, project, {"Type the database": str(target.name)})

    assert confirmed.returncode == 0, confirmed.output
    assert rows() == []  # the database was dropped and made again, empty
    refused = home.run(command, cwd=project, env=env)  # a script's command, no person
    assert refused.returncode == 77, refused.stderr
    assert b"marked production" in refused.stderr
    put_back = [r for r in home.operations() if r.get("decision") == "mark"]
    assert [r["outcome"] for r in put_back] == ["ok"], put_back


def test_a_stop_during_a_mysql_swap_waits_for_the_swap_and_says_so(
    home: Home, daemon: Daemon, mysql_database: Target
) -> None:
    rows = seed_mysql(mysql_database)
    name = str(mysql_database.name)
    conn = mysql_connect(name)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE audit (id int)")
        cur.execute(
            "CREATE TRIGGER users_ai AFTER INSERT ON users FOR EACH ROW "
            "INSERT INTO audit VALUES (NEW.id)"
        )
        cur.execute("CREATE VIEW names AS SELECT name FROM users")
    conn.close()
    before = rows()
    project = home.root / "app"
    project.mkdir()
    laravel(project, mysql_database)
    taken = home.ctl("backup", "--json", cwd=project)
    assert taken.returncode == 0, taken.stderr
    backup_id = json.loads(taken.stdout)["backups"][0]["id"]
    conn = mysql_connect(name)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM users")
    conn.close()  # a session on the database would stop the restore before it starts

    # A session that reads the table without selecting the database holds its metadata
    # lock, so the swap (dropping the trigger, then RENAME) waits inside the swap: a
    # stop arrives there for sure.
    blocker = mysql_connect(None)
    watcher = mysql_connect(None)
    try:
        with blocker.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(f"SELECT COUNT(*) FROM `{name}`.users")
        restore = home.ctl_process("restore", backup_id, "--yes", cwd=project)
        deadline = time.monotonic() + 60
        waiting = False
        while not waiting and time.monotonic() < deadline and restore.poll() is None:
            with watcher.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                    "WHERE STATE LIKE '%metadata lock%'"
                )
                waiting = cur.fetchone()[0] > 0
        assert waiting, restore.communicate()
        restore.send_signal(signal.SIGTERM)
        with blocker.cursor() as cur:
            cur.execute("COMMIT")
        out, err = restore.communicate(timeout=60)
    finally:
        blocker.close()
        watcher.close()

    assert restore.returncode == 130, err
    assert b"finishing the swap" in err and b"once the restore was complete" in err
    assert f"restored {backup_id}".encode() in out
    assert rows() == before
    conn = mysql_connect(name)
    with conn.cursor() as cur:  # the backup's trigger and view came with it
        cur.execute("INSERT INTO users (id, name) VALUES (9, 'x')")
        cur.execute("SELECT COUNT(*) FROM audit WHERE id = 9")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT COUNT(*) FROM names")
        assert cur.fetchone()[0] == len(before) + 1
    conn.close()
    [logged] = [r for r in home.operations() if r.get("decision") == "restore"]
    assert logged["outcome"] == "ok"


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_restore_keeps_the_production_mark_a_backup_predates(
    request: pytest.FixtureRequest, home: Home, daemon: Daemon, server: str
) -> None:
    """MySQL's mark is a routine, and a restore replaces the routines with the backup's:
    a backup taken before `mark production` would leave the database unmarked, and an
    agent's next migrate:fresh would run with no person asked."""
    from dbguard.engines import Engines

    target: Target = request.getfixturevalue(
        "pg_database" if server == "postgres" else "mysql_database"
    )
    rows = seed_pg(target) if server == "postgres" else seed_mysql(target)
    before = rows()
    project = home.root / "app"
    project.mkdir()
    laravel(project, target)
    taken = home.ctl("backup", "--json", cwd=project)
    assert taken.returncode == 0, taken.stderr
    backup_id = json.loads(taken.stdout)["backups"][0]["id"]
    marked = home.ctl("mark", "production", cwd=project)
    assert marked.returncode == 0, marked.stdout + marked.stderr

    restored = home.ctl("restore", backup_id, "--yes", cwd=project)

    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert rows() == before
    engines = Engines()
    try:
        assert engines.for_target(target).marker(target) == "production"
    finally:
        engines.close()

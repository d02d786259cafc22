"""The whole path, for real: shim -> daemon -> SQLite backup -> command -> log -> restore."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dbguard import shims
from dbguard.discovery import NO_DATABASE
from dbguard.protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION
from dbguard.store import Store
from tests.helpers import (
    Daemon,
    Home,
    count_users,
    fake_daemon,
    install_stand_in,
    invoke_in_process,
    laravel_sqlite_project,
    poll,
)


@pytest.fixture
def project(home: Home) -> Path:
    guarded_stand_in(home, "php")
    return laravel_sqlite_project(home.root / "app")


def empty_users_table(path: Path) -> None:
    """An SQLite database at `path` with an empty users table."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("create table users (id integer primary key)")
        conn.commit()


def guarded_stand_in(home: Home, name: str) -> None:
    """A stand-in for `name` behind its shim."""
    install_stand_in(home, name)
    home.install_shims(name)


def oplog(home: Home) -> list[dict[str, Any]]:
    return home.operations()


def backups(home: Home) -> list[dict[str, Any]]:
    listing = home.ctl("list-backups", "--json")
    assert listing.returncode == 0, listing.stderr
    return list(json.loads(listing.stdout))


def test_destructive_command_leaves_a_backup_that_restores_the_rows(
    home: Home, daemon: Daemon, project: Path
) -> None:
    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)

    assert result.returncode == 0, result.stderr
    assert b"Dropped all tables" in result.stdout
    assert count_users(project) is None  # the stand-in really wiped the database
    [backup] = backups(home)
    assert backup["tables"] == {"users": 3}
    assert backup["reason"]["argv"] == ["php", "artisan", "migrate:fresh"]

    assert home.ctl("verify", backup["id"]).returncode == 0
    restored = home.ctl("restore", backup["id"], "--yes")
    assert restored.returncode == 0, restored.stderr
    assert count_users(project) == 3
    # the wiped state it replaced was kept too, with the project folder its undo needs
    # to find the database's password again
    before, _ = backups(home)
    assert before["reason"]["kind"] == "pre-restore"
    assert before["reason"]["cwd"] == backup["reason"]["cwd"] == str(project)


def test_artisan_run_from_another_folder_backs_up_its_own_app(
    home: Home, daemon: Daemon, project: Path
) -> None:
    # `php backend/artisan migrate:fresh` from a monorepo's top works on backend's app.
    result = home.run(["php", f"{project.name}/artisan", "migrate:fresh"], cwd=project.parent)
    assert result.returncode == 0, result.stderr
    assert count_users(project) is None
    [backup] = backups(home)
    assert backup["tables"] == {"users": 3}
    assert backup["database"]["path"] == str(project / "database" / "app.sqlite")


def test_restore_refuses_a_backup_that_failed_verification_and_names_a_good_one(
    home: Home, daemon: Daemon, project: Path
) -> None:
    good = json.loads(home.ctl("backup", "--json", cwd=project).stdout)["backups"][0]
    with contextlib.closing(sqlite3.connect(project / "database" / "app.sqlite")) as conn:
        conn.execute("delete from users where id = 1")
        conn.commit()
    bad = json.loads(home.ctl("backup", "--json", cwd=project).stdout)["backups"][0]
    store = Store(home.backups)
    store.record_failed(store.get(bad["id"]), "table users: 1 rows restored, manifest says 2")
    with contextlib.closing(sqlite3.connect(project / "database" / "app.sqlite")) as conn:
        conn.execute("delete from users")
        conn.commit()

    refused = home.ctl("restore", bad["id"], "--yes")

    assert refused.returncode == 65, refused.stderr
    said = refused.stderr.decode()
    assert f"backup {bad['id']} FAILED verification" in said, said
    assert "1 rows restored, manifest says 2" in said, said
    assert f"dbguardctl restore {good['id']}" in said, said
    assert count_users(project) == 0  # nothing changed
    forced = home.ctl("restore", bad["id"], "--yes", "--even-if-failed")
    assert forced.returncode == 0, forced.stderr
    assert count_users(project) == 2
    restores = [r for r in oplog(home) if r["decision"] == "restore"]
    assert [(r["argv"][3:], r["outcome"]) for r in restores] == [
        ([], "failed"),
        (["--even-if-failed"], "ok"),
    ]


def test_manage_py_run_from_another_folder_backs_up_its_own_project(
    home: Home, daemon: Daemon
) -> None:
    # `python backend/manage.py flush` from a monorepo's top: Django finds its settings
    # from manage.py's folder, so the top's .env names some other database.
    top = home.root / "mono"
    (top / "backend" / "mysite").mkdir(parents=True)
    (top / ".env").write_text(f"DATABASE_URL=sqlite:///{top / 'other.db'}\n")
    empty_users_table(top / "other.db")
    (top / "backend" / "mysite" / "settings.py").write_text(
        "from pathlib import Path\n"
        "BASE_DIR = Path(__file__).resolve().parent.parent\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3',\n"
        "                         'NAME': BASE_DIR / 'db.sqlite3'}}\n"
    )
    database = top / "backend" / "db.sqlite3"
    empty_users_table(database)
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.executemany("insert into users values (?)", [(1,), (2,)])
        conn.commit()
    (top / "backend" / "manage.py").write_text(
        "import os, sqlite3, sys\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
        "here = os.path.dirname(os.path.abspath(__file__))\n"
        "if sys.argv[1] == 'flush':\n"
        "    conn = sqlite3.connect(os.path.join(here, 'db.sqlite3'))\n"
        "    conn.execute('delete from users'); conn.commit()\n"
    )
    home.install_shims("python")

    result = home.run(["python", "backend/manage.py", "flush", "--noinput"], cwd=top)

    assert result.returncode == 0, result.stderr
    [backup] = backups(home)
    assert backup["database"]["path"] == str(database)
    assert backup["tables"] == {"users": 2}


def test_read_only_commands_pass_without_a_backup(
    home: Home, daemon: Daemon, project: Path
) -> None:
    for argv in (["php", "-v"], ["php", "artisan", "migrate:status"], ["php", "artisan", "--help"]):
        result = home.run(argv, cwd=project)
        assert result.returncode == 0, result.stderr

    assert backups(home) == []
    assert [r["decision"] for r in oplog(home)] == ["pass", "pass", "pass"]
    # `log` shows the database tool's commands; `php -v`, no database tool, with --all
    shown = json.loads(home.ctl("log", "--json").stdout)
    assert [r["argv"][1:] for r in shown] == [["artisan", "migrate:status"], ["artisan", "--help"]]
    assert len(json.loads(home.ctl("log", "--all", "--json").stdout)) == 3
    assert "php -v" in home.ctl("log", "--all").stdout.decode()


def test_exit_status_and_output_pass_through(home: Home, daemon: Daemon, project: Path) -> None:
    result = home.run(
        ["php", "artisan", "test", "--exit=3", "--echo-stdin"], cwd=project, input=b"hello\n"
    )

    assert result.returncode == 3
    assert result.stdout == b"hello\n"
    [backup] = backups(home)
    # a failed command tells the user how to undo it
    assert f"dbguardctl restore {backup['id']}".encode() in result.stderr
    [record] = oplog(home)
    assert record["exit"] == 3 and record["outcome"] == "failed"
    # nothing changed since: the same backup, and the message does not call it new
    again = home.run(["php", "artisan", "test", "--exit=3"], cwd=project)
    assert f"{backup['id']} (sqlite {backup['database']['path']}) (an earlier backup".encode() in (
        again.stderr
    ), again.stderr


def test_a_nested_failure_tells_the_undo_once(home: Home, daemon: Daemon, project: Path) -> None:
    # `npm test` runs `php artisan test`: both guarded, the inner reuses the outer's backup.
    npm = home.bin / "npm"
    npm.write_text("#!/bin/sh\nexec php artisan test --exit=3\n")
    npm.chmod(0o755)
    home.install_shims("npm")
    (project / "package.json").write_text('{"scripts": {"test": "php artisan test"}}')

    result = home.run(["npm", "test"], cwd=project)

    assert result.returncode == 3
    [backup] = backups(home)
    assert result.stderr.count(f"dbguardctl restore {backup['id']}".encode()) == 1


def test_a_shimmed_python_keeps_its_virtualenv(home: Home, daemon: Daemon, project: Path) -> None:
    # Python finds its virtualenv from its own path: run by its bare name, it looked
    # itself up on PATH, found the shim first, and ran without the venv's packages.
    venv = home.root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    home.install_shims("python")
    env = {
        "PATH": f"{home.shims}{os.pathsep}{venv / 'bin'}{os.pathsep}{home.env['PATH']}",
        "DATABASE_URL": f"sqlite:///{project / 'database' / 'app.sqlite'}",
    }
    code = "import sys; print(sys.prefix)"
    run = home.run(["python", "-c", code], cwd=project, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().strip() == str(venv)
    # and a guarded run (spawned, not exec'd) too
    (project / "manage.py").write_text(code)
    guarded = home.run(["python", "manage.py", "flush", "--no-input"], cwd=project, env=env)
    assert guarded.returncode == 0, guarded.stderr
    assert guarded.stdout.decode().strip() == str(venv)
    assert [r["decision"] for r in oplog(home)] == ["pass", "allow"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_death_by_signal_is_passed_on(
    home: Home, daemon: Daemon, project: Path, sig: signal.Signals
) -> None:
    result = home.run(["php", "artisan", "test", f"--signal={sig}"], cwd=project)

    assert result.returncode == -sig, result.stderr  # SIGKILL: the OOM killer, say
    assert b"Traceback" not in result.stderr
    [record] = oplog(home)
    assert record["signal"] == sig and record["exit"] is None


def test_a_second_shims_folder_on_path_is_passed_over(
    home: Home, daemon: Daemon, project: Path
) -> None:
    other = home.root / "other-shims"  # another install's, or an old one left behind
    shims.install(other, ["php"])
    path = f"{home.shims}:{other}:{home.bin}:/usr/bin:/bin"
    result = home.run(["php", "-v"], cwd=project, env={"PATH": path})

    assert result.returncode == 0, result.stderr
    assert b"dbguard test stand-in" in result.stdout
    assert [r["decision"] for r in oplog(home)] == ["pass"]


def test_a_deleted_working_folder_is_named_as_the_problem(
    home: Home, daemon: Daemon, project: Path
) -> None:
    gone = home.root / "gone"
    gone.mkdir()
    path = f"{home.shims}:vendor/bin:{home.env['PATH']}"  # a relative entry needs the cwd too
    result = home.run(
        ["sh", "-c", f"cd {gone} && rmdir {gone} && exec php -v"],
        cwd=project,
        env={"PATH": path},
    )

    assert result.returncode == 70, result.stderr
    assert b"the current folder is gone" in result.stderr
    assert b"not reachable" not in result.stderr
    # dbguardctl's commands that work on the current folder say the same, no traceback.
    for command in ("backup", "mark production", "doctor"):
        ctl = f"{sys.executable} -m dbguard.ctl.main {command}"
        ran = home.run(["sh", "-c", f"mkdir {gone} && cd {gone} && rmdir {gone} && {ctl}"],
                       cwd=project)  # fmt: skip
        assert ran.returncode == 1, (command, ran.stderr)
        assert b"the current folder is gone" in ran.stderr, (command, ran.stderr)
        assert b"Traceback" not in ran.stderr, (command, ran.stderr)


def test_an_unchanged_database_reuses_its_backup(home: Home, daemon: Daemon, project: Path) -> None:
    for _ in range(2):
        assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
    assert len(backups(home)) == 1
    first, second = oplog(home)
    assert first["backups"][0]["reused"] is False
    assert second["backups"][0]["reused"] is True

    conn = sqlite3.connect(project / "database" / "app.sqlite")
    conn.execute("insert into users (name) values ('new')")
    conn.commit()
    conn.close()
    assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
    assert len(backups(home)) == 2


def test_daemon_down_means_69_and_the_command_does_not_run(home: Home, project: Path) -> None:
    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)

    assert result.returncode == 69
    assert b"not reachable" in result.stderr
    assert count_users(project) == 3


def test_unknown_database_is_denied_with_77_and_where_it_looked(
    home: Home, daemon: Daemon, project: Path
) -> None:
    (project / ".env").write_text("DB_CONNECTION=sqlsrv\n")
    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)

    assert result.returncode == 77
    assert b"sqlsrv" in result.stderr
    assert count_users(project) == 3


def test_a_test_run_in_a_project_without_a_database_runs_and_is_logged(
    home: Home, daemon: Daemon
) -> None:
    guarded_stand_in(home, "vitest")
    web = home.root / "web"
    web.mkdir()
    (web / "package.json").write_text('{"devDependencies": {"vitest": "^2", "react": "^18"}}')

    result = home.run(["vitest", "test", "--exit=0"], cwd=web)

    assert result.returncode == 0, result.stderr
    assert backups(home) == []
    [record] = oplog(home)
    assert (record["decision"], record["outcome"]) == ("allow", "ok")
    assert record["notes"] == [f"{web}: {NO_DATABASE}"]
    assert b"no sign of a database" in home.ctl("log").stdout  # the text view says why

    # A driver among the dependencies, with no settings dbguard can follow: refused.
    (web / "package.json").write_text('{"dependencies": {"pg": "^8"}}')
    result = home.run(["vitest", "test", "--exit=0"], cwd=web)
    assert result.returncode == 77
    assert b"package.json depends on pg" in result.stderr
    assert b"could not find its database" in home.ctl("log").stdout

    # With the database named, it is backed up first.
    empty_users_table(web / "app.db")
    (web / ".env").write_text("DATABASE_URL=sqlite:///app.db\n")
    assert home.run(["vitest", "test", "--exit=0"], cwd=web).returncode == 0
    [backup] = backups(home)
    assert backup["tables"] == {"users": 0}


@pytest.mark.parametrize(
    "argv", [["flask", "db", "downgrade", "--exit=0"], ["bun", "test", "--exit=0"]]
)
def test_flask_migrate_and_bun_s_runner_back_up_the_project_s_database(
    home: Home, daemon: Daemon, argv: list[str]
) -> None:
    guarded_stand_in(home, argv[0])
    app = home.root / "app"
    app.mkdir()
    (app / ".env").write_text("DATABASE_URL=sqlite:///app.db\n")
    empty_users_table(app / "app.db")

    assert home.run(argv, cwd=app).returncode == 0

    [backup] = backups(home)
    assert backup["database"]["path"] == str(app / "app.db")
    assert oplog(home)[-1]["decision"] == "allow"


def test_bun_test_backs_up_the_database_of_the_env_file_bun_loads(
    home: Home, daemon: Daemon
) -> None:
    guarded_stand_in(home, "bun")
    app = home.root / "app"
    app.mkdir()
    (app / ".env").write_text("DATABASE_URL=sqlite:///dev.db\n")
    (app / ".env.test").write_text("DATABASE_URL=sqlite:///test.db\n")  # NODE_ENV=test
    for name in ("dev.db", "test.db"):
        empty_users_table(app / name)

    assert home.run(["bun", "test", "--exit=0"], cwd=app).returncode == 0

    assert [b["database"]["path"] for b in backups(home)] == [str(app / "test.db")]


def test_runs_in_workspace_members_back_up_each_member_s_database(
    home: Home, daemon: Daemon
) -> None:
    guarded_stand_in(home, "yarn")
    top = home.root / "shop"
    top.mkdir()
    (top / "package.json").write_text('{"workspaces": ["apps/*"]}')
    for member in ("api", "worker"):
        folder = top / "apps" / member
        (folder / "prisma").mkdir(parents=True)
        (folder / "package.json").write_text(
            json.dumps({"name": f"@shop/{member}", "scripts": {"reset": "prisma migrate reset"}})
        )
        (folder / "prisma" / "schema.prisma").write_text(
            'datasource db {\n  provider = "sqlite"\n  url = "file:./dev.db"\n}\n'
        )
        empty_users_table(folder / "prisma" / "dev.db")

    # A workspace's package name, and a prisma that is its binary, not a script.
    argv = ["yarn", "workspace", "@shop/api", "prisma", "migrate", "reset", "--force"]
    assert home.run(argv, cwd=top).returncode == 0
    assert [b["database"]["path"] for b in backups(home)] == [
        str(top / "apps" / "api" / "prisma" / "dev.db")
    ]
    # Every member's script; the databases of both are backed up (api's reused).
    assert (
        home.run(["yarn", "workspaces", "foreach", "-A", "run", "reset"], cwd=top).returncode == 0
    )
    reached = {d["database"] for d in oplog(home)[-1]["databases"]}
    assert reached == {
        f"sqlite {top / 'apps' / m / 'prisma' / 'dev.db'}" for m in ("api", "worker")
    }


def test_a_test_run_given_another_project_s_tests_backs_that_project_up(
    home: Home, daemon: Daemon
) -> None:
    # `vitest api/tests` from a monorepo's top: the top has no database, api has one.
    guarded_stand_in(home, "vitest")
    top = home.root / "repo"
    (top / ".git").mkdir(parents=True)
    (top / "api" / "tests").mkdir(parents=True)
    (top / "api" / ".env").write_text("DATABASE_URL=sqlite:///api.db\n")
    empty_users_table(top / "api" / "api.db")

    assert home.run(["vitest", "api/tests", "--exit=0"], cwd=top).returncode == 0

    [backup] = backups(home)
    assert backup["database"]["path"] == str(top / "api" / "api.db")
    # Run from the top with no path, it collects api's tests all the same.
    assert home.run(["vitest", "--exit=0"], cwd=top).returncode == 0
    reached = [[d["database"] for d in r["databases"]] for r in oplog(home)]
    assert reached == [[f"sqlite {top / 'api' / 'api.db'}"]] * 2
    # A top folder with a project of its own and no database: the union of the earlier
    # run is not what the cache hands out.
    (top / "package.json").write_text("{}")
    (top / "api" / ".env").unlink()
    assert home.run(["vitest", "--exit=0"], cwd=top).returncode == 0
    assert oplog(home)[-1]["databases"] == []


def test_npm_prefix_runs_the_script_of_that_folder_and_backs_up_its_database(
    home: Home, daemon: Daemon
) -> None:
    # `npm --prefix backend run fresh` from a monorepo's top: backend's script, and
    # backend's database, not the top folder's (which has neither).
    guarded_stand_in(home, "npm")
    top = home.root / "repo"
    (top / ".git").mkdir(parents=True)
    backend = laravel_sqlite_project(top / "backend")
    (backend / "package.json").write_text('{"scripts": {"fresh": "php artisan migrate:fresh"}}')

    result = home.run(["npm", "--prefix", "backend", "run", "fresh"], cwd=top)

    assert result.returncode == 0, result.stderr
    [backup] = backups(home)
    assert backup["database"]["path"] == str(backend / "database" / "app.sqlite")
    assert backup["reason"]["cwd"] == str(backend)  # where its undo finds the settings
    [record] = oplog(home)
    assert record["cwd"] == str(top)

    # A script of the top folder's, run from below it: npm runs it in the top folder,
    # so its --prefix is taken from there.
    (top / "package.json").write_text('{"scripts": {"db:reset": "npm --prefix backend run fresh"}}')
    (top / "src").mkdir()
    assert home.run(["npm", "run", "db:reset"], cwd=top / "src").returncode == 0
    last = oplog(home)[-1]
    assert [d["database"] for d in last["databases"]] == [
        f"sqlite {backend / 'database' / 'app.sqlite'}"
    ]

    # A script that resets two projects backs up both.
    worker = laravel_sqlite_project(top / "worker")
    both = "cd backend && php artisan migrate:fresh && cd ../worker && php artisan migrate:fresh"
    (top / "package.json").write_text(json.dumps({"scripts": {"reset-all": both}}))
    assert home.run(["npm", "run", "reset-all"], cwd=top).returncode == 0
    last = oplog(home)[-1]
    assert sorted(d["database"] for d in last["databases"]) == [
        f"sqlite {backend / 'database' / 'app.sqlite'}",
        f"sqlite {worker / 'database' / 'app.sqlite'}",
    ]


def test_failed_backup_means_75_and_the_command_does_not_run(
    home: Home, daemon: Daemon, project: Path
) -> None:
    (project / "database" / "broken.sqlite").write_bytes(b"this is not a database" * 100)
    (project / ".env").write_text("DB_CONNECTION=sqlite\nDB_DATABASE=database/broken.sqlite\n")
    result = home.run(["php", "artisan", "db:wipe"], cwd=project)

    assert result.returncode == 75, result.stderr
    assert b"not an SQLite database" in result.stderr
    assert backups(home) == []
    assert list((home.backups / ".tmp").iterdir()) == []


def test_malformed_requests_get_an_error_and_the_daemon_keeps_serving(
    home: Home, daemon: Daemon, project: Path
) -> None:
    for junk in (
        b"not json\n",
        b"[1,2]\n",
        b'{"v": 99}\n',
        b'{"type":"invoke","v":1}\n',
        b"\xff\n",
    ):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(home.socket))
            conn.sendall(junk)
            reply = json.loads(conn.makefile("rb").readline())
        assert reply["type"] == "error", junk
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(home.socket))
        with contextlib.suppress(BrokenPipeError):  # it may answer before reading it all
            conn.sendall(b"x" * (MAX_MESSAGE_BYTES + 1) + b"\n")
        reply = json.loads(conn.makefile("rb").readline())
        assert "too large" in reply["message"]

    assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
    assert len(backups(home)) == 1


def test_status_reports_the_running_daemon(home: Home, daemon: Daemon) -> None:
    result = home.ctl("status", "--json")
    status = json.loads(result.stdout)
    assert result.returncode == 0
    assert status["daemon"]["running"] is True
    assert status["daemon"]["socket"] == str(home.socket)


def test_sigterm_stops_the_daemon_cleanly(home: Home, daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGTERM) == 0
    assert not home.socket.exists()
    assert "dbguardd stopped" in daemon.log


def test_socket_and_folders_are_owner_only(home: Home, daemon: Daemon, project: Path) -> None:
    assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
    assert home.socket.stat().st_mode & 0o777 == 0o600
    assert home.socket.parent.stat().st_mode & 0o777 == 0o700
    for path in home.backups.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def test_protocol_version_is_checked(home: Home, daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(home.socket))
        conn.sendall(json.dumps({"type": "status", "v": PROTOCOL_VERSION + 1}).encode() + b"\n")
        reply = json.loads(conn.makefile("rb").readline())
    assert reply["type"] == "error"
    assert "protocol version" in reply["message"]


def test_dbguardctl_backup_backs_up_the_project_now(
    home: Home, daemon: Daemon, project: Path
) -> None:
    (project / ".env.testing").write_text(
        "DB_CONNECTION=sqlite\nDB_DATABASE=database/test.sqlite\n"
    )
    sqlite3.connect(project / "database" / "test.sqlite").execute("create table t (x)").close()

    result = home.ctl("backup", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    # the database it runs against and the one its tests use
    assert sorted(b["database"].rsplit("/", 1)[1] for b in done["backups"]) == [
        "app.sqlite",
        "test.sqlite",
    ]
    again = json.loads(home.ctl("backup", "--json", cwd=project).stdout)
    assert all(b["reused"] for b in again["backups"])  # nothing changed since
    only_app = home.ctl("list-backups", "--database", "app.sqlite", "--json")
    [app_backup] = json.loads(only_app.stdout)
    # Damaged, it is still listed under its database's name (its folder says whose).
    [manifest] = home.backups.glob(f"*/{app_backup['id']}/manifest.json")
    manifest.write_text("{")
    [damaged] = json.loads(home.ctl("list-backups", "--database", "app.sqlite", "--json").stdout)
    assert damaged["id"] == app_backup["id"] and damaged["damaged"] is True
    # None of that name is not the same as none at all.
    none = home.ctl("list-backups", "--database", "nope").stdout.decode()
    assert "no backups of a database whose name contains 'nope' (2 others in" in none
    records = json.loads(home.ctl("log", "--json").stdout)
    assert [r["decision"] for r in records] == ["backup", "backup"]


def test_an_empty_database_file_has_nothing_to_back_up(
    home: Home, daemon: Daemon, project: Path
) -> None:
    # Laravel's setup step is `touch database/database.sqlite`: zero bytes, no tables.
    (project / "database" / "app.sqlite").write_bytes(b"")
    result = home.run(["php", "artisan", "migrate"], cwd=project)

    assert result.returncode == 0, result.stderr
    assert backups(home) == []
    [record] = oplog(home)
    assert record["outcome"] == "ok"
    assert "is empty (0 bytes): nothing to back up" in json.dumps(record)


def test_an_argument_that_is_not_utf8_is_backed_up_and_passed_on(
    home: Home, daemon: Daemon, project: Path
) -> None:
    odd = os.fsdecode(b"--filter=caf\xe9")  # Latin-1 bytes, as a shell passes them on
    result = home.run(["php", "artisan", "test", odd, "--echo-args"], cwd=project)

    assert result.returncode == 0, result.stderr
    assert b"--filter=caf\xe9" in result.stdout  # the real command got the same bytes
    [backup] = backups(home)
    assert backup["reason"]["argv"] == ["php", "artisan", "test", odd, "--echo-args"]


def test_a_backup_reused_by_a_destructive_command_is_protected_from_then(
    home: Home, daemon: Daemon, project: Path
) -> None:
    assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
    [taken] = backups(home)
    assert taken["destructive_reuse_at"] is None

    wipe = home.run(["php", "artisan", "migrate:fresh"], cwd=project)

    assert wipe.returncode == 0, wipe.stderr
    [reused] = backups(home)  # the database had not changed: no new backup
    assert reused["id"] == taken["id"] and reused["destructive_reuse_at"] is not None
    plan = home.ctl("prune", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert b"reused before a destructive command; protected until" in plan.stdout


def test_as_many_arguments_as_the_kernel_allows_are_accepted(
    home: Home, daemon: Daemon, project: Path
) -> None:
    many = [f"src/File{i}.php" for i in range(5000)]  # `find ... | xargs php -l`
    long = ["x" * 120_000] * 9  # each near the kernel's 128 KiB for one argument
    for args in (many, long):
        result = home.run(["php", "-l", *args], cwd=project)
        assert result.returncode == 0, result.stderr[-300:]


def test_a_shim_that_leaves_during_the_backup_is_logged_at_once(
    home: Home, daemon: Daemon, project: Path
) -> None:
    invoke = {
        "type": "invoke",
        "v": PROTOCOL_VERSION,
        "argv": ["php", "artisan", "migrate:fresh"],
        "cwd": str(project),
        "env": {"PATH": home.env["PATH"]},
        "tty": False,
        "pid": os.getpid(),
    }
    with socket.socket(socket.AF_UNIX) as conn:  # a shim whose user pressed ^C
        conn.connect(str(home.socket))
        conn.sendall(json.dumps(invoke).encode() + b"\n")

    def ended() -> bool:
        return any(r.get("outcome") not in (None, "running") for r in oplog(home))

    assert poll(ended), "the operation stays open in the log while dbguardd keeps running"
    [record] = oplog(home)
    assert record["decision"] == "allow"
    assert record["outcome"] in ("not run", "unknown"), record
    assert count_users(project) == 3  # the command itself never ran


def test_environment_variables_with_any_name_reach_the_command(
    home: Home, daemon: Daemon, project: Path
) -> None:
    # Names a shell would drop: Spring's relaxed binding, a dash from a CI system.
    odd = {"spring.datasource.url": "jdbc:x", "ODD-DASH": "1"}
    for name, value in odd.items():
        result = home.run(["php", "artisan", "test", f"--print-env={name}"], cwd=project, env=odd)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{value}\n".encode()


def test_ctrl_c_while_waiting_for_the_daemon_is_a_message_not_a_traceback(
    home: Home, project: Path
) -> None:
    asked = threading.Event()
    release = threading.Event()

    def stall(conn: socket.socket) -> None:  # a daemon busy with a long backup
        conn.recv(65536)
        asked.set()
        release.wait(30)

    with fake_daemon(home.socket, stall):
        shim = subprocess.Popen(
            ["php", "artisan", "migrate:fresh"],
            cwd=project,
            env=home.env,
            stderr=subprocess.PIPE,
        )
        try:
            assert asked.wait(30), "the shim never asked"
            shim.send_signal(signal.SIGINT)
            _, err = shim.communicate(timeout=30)
        finally:
            release.set()
    assert shim.returncode == -signal.SIGINT, err  # as the command would have: loops stop
    assert b"interrupted: php was not run" in err and b"Traceback" not in err
    assert count_users(project) == 3


def test_a_restore_stopped_before_its_swap_says_nothing_changed(
    home: Home, daemon: Daemon, project: Path
) -> None:
    taken = home.ctl("backup", "--json", cwd=project)
    backup_id = json.loads(taken.stdout)["backups"][0]["id"]
    database = project / "database" / "app.sqlite"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # readers go on; the restore's copy has to wait
    holder.execute("DELETE FROM users WHERE id = 1")
    try:
        restore = home.ctl_process("restore", backup_id, "--yes", cwd=project)
        # Once the pre-restore backup is listed, the restore is past it and waiting.
        deadline = time.monotonic() + 30
        while len(backups(home)) < 2 and time.monotonic() < deadline:
            pass
        assert len(backups(home)) == 2, restore.communicate()
        restore.send_signal(signal.SIGTERM)
        # It would give up on the held database after 30 s; a stop ends it well before.
        _, err = restore.communicate(timeout=10)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    pre_restore = backups(home)[0]["id"]
    assert restore.returncode == 130, err
    assert f"was not changed; the pre-restore backup {pre_restore} stays".encode() in err
    assert count_users(project) == 3
    [logged] = [r for r in oplog(home) if r.get("decision") == "restore"]
    assert logged["outcome"] == "interrupted"
    assert logged["backups"] == [{"id": backup_id}, {"id": pre_restore, "pre_restore": True}]


def test_a_command_with_more_scripts_than_dbguard_follows_is_refused(
    home: Home, daemon: Daemon, project: Path
) -> None:
    guarded_stand_in(home, "npm")
    wide = {f"w{i}": " && ".join(f"npm run w{i + 1}" for _ in range(4)) for i in range(8)}
    (project / "package.json").write_text(json.dumps({"scripts": wide}))

    result = home.run(["npm", "run", "w0"], cwd=project)

    assert result.returncode == 77, result.stderr
    assert b"more package scripts than dbguard follows" in result.stderr
    assert oplog(home)[-1]["decision"] == "deny"


def test_a_package_json_that_cannot_be_read_refuses_its_scripts(
    home: Home, daemon: Daemon, project: Path
) -> None:
    guarded_stand_in(home, "npm")
    (project / "package.json").write_text('{"scripts": {"db:reset": "prisma migrate reset",}')

    result = home.run(["npm", "run", "db:reset"], cwd=project)

    assert result.returncode == 77, result.stderr  # not read is not "no database"
    assert b"package.json is not valid JSON" in result.stderr
    # npm reads a package.json that starts with a byte-order mark, and so does dbguard.
    (project / "package.json").write_text('\ufeff{"scripts": {"db:reset": "php artisan db:wipe"}}')
    assert home.run(["npm", "run", "db:reset"], cwd=project).returncode == 0
    assert len(backups(home)) == 1


def test_prisma_in_every_member_leaves_out_members_without_a_schema(home: Home) -> None:
    # `pnpm -r exec prisma migrate reset` where only apps/api has a schema: Prisma fails
    # in the other members ("Could not find Prisma Schema") and touches nothing there.
    from dbguard.config import Config
    from dbguard.daemon.service import Guard
    from dbguard.protocol import Allow, Deny

    top = home.root / "shop"
    (top / "apps" / "api" / "prisma").mkdir(parents=True)
    (top / "apps" / "docs").mkdir(parents=True)
    (top / "pnpm-workspace.yaml").write_text("packages:\n  - 'apps/*'\n")
    (top / "package.json").write_text('{"name": "shop"}')
    for member in ("api", "docs"):
        (top / "apps" / member / "package.json").write_text(json.dumps({"name": member}))
    schema = top / "apps" / "api" / "prisma" / "schema.prisma"
    schema.write_text('datasource db {\n  provider = "sqlite"\n  url = "file:./dev.db"\n}\n')
    empty_users_table(top / "apps" / "api" / "prisma" / "dev.db")
    guard = Guard(Config(), home.env)

    def invoke(line: str, cwd: Path = top) -> object:
        return invoke_in_process(guard, home, cwd, line.split())

    try:
        answer = invoke("pnpm -r exec prisma migrate reset --force")
        assert isinstance(answer, Allow), answer
        assert [b.database for b in answer.backups] == [f"sqlite {schema.parent / 'dev.db'}"]
        assert any("apps/docs" in note and "no Prisma schema" in note for note in answer.notes)
        # Run in docs alone, it is refused as before.
        alone = invoke("pnpm exec prisma migrate reset --force", top / "apps" / "docs")
        assert isinstance(alone, Deny) and "no Prisma schema" in alone.reason, alone
        # A member whose prisma.config.ts dbguard may not read is not left out.
        config = top / "apps" / "docs" / "prisma.config.ts"
        config.write_text("export default defineConfig({ schema: schemaFolder })\n")
        answer = invoke("pnpm -r exec prisma migrate reset --force")
        assert isinstance(answer, Deny) and "apps/docs" in answer.reason, answer
        config.unlink()
        # No member has a schema: refused.
        schema.unlink()
        answer = invoke("pnpm -r exec prisma migrate reset --force")
        assert isinstance(answer, Deny) and "no Prisma schema" in answer.reason, answer
    finally:
        guard.engines.close()


def test_a_closed_stderr_keeps_the_exit_status(home: Home, daemon: Daemon, project: Path) -> None:
    """`cmd 2>&-` (a cron line, a supervisor): the shim cannot print, but its exit status
    is still the command's, or dbguard's own code when the command did not run; it once
    died on the write and every such run ended with 1."""
    ran = home.run(["sh", "-c", "exec php artisan test --exit=3 2>&-"], cwd=project)
    assert ran.returncode == 3, ran
    unreachable = home.run(
        ["sh", "-c", "exec php artisan migrate:fresh 2>&-"],
        cwd=project,
        env={"DBGUARD_SOCKET": str(home.root / "nowhere.sock")},
    )
    assert unreachable.returncode == 69, unreachable


def test_a_socket_path_too_long_is_named_as_the_problem(home: Home, project: Path) -> None:
    long_path = "/tmp/" + "s" * 120 + "/dbguard.sock"
    refused = home.run(
        ["php", "artisan", "migrate:fresh"], cwd=project, env={"DBGUARD_SOCKET": long_path}
    )
    assert refused.returncode == 69, refused.stderr
    assert b"path too long" in refused.stderr and b"(None)" not in refused.stderr


def test_backups_killed_midway_are_logged_by_who_wrote_them_and_what_waited(home: Home) -> None:
    from dbguard.config import Config
    from dbguard.daemon.service import Guard
    from dbguard.store import Unfinished

    def about(kind: str) -> dict[str, Any]:
        started = "2026-11-27T04:00:00+00:00"
        return {"database": "sqlite /srv/app.db", "started": started, "pid": 41, "kind": kind}

    guard = Guard(Config(), home.env)
    try:
        guard.log_unfinished_backups(
            [
                Unfinished("a", {**about("command"), "argv": ["pytest"], "op": "op7"}),
                Unfinished("b", {**about("manual"), "argv": ["dbguardctl", "backup"]}),
                Unfinished("c", {**about("pre-restore"), "argv": ["dbguardctl", "restore"]}),
                Unfinished("d", None),  # a restore's unpacked copy: nothing to say
            ]
        )
    finally:
        guard.engines.close()

    command, manual, pre_restore = home.operations()
    assert [r["decision"] for r in (command, manual, pre_restore)] == ["fail"] * 3
    assert command["op"] == "op7" and command["argv"] == ["pytest"]
    assert command["databases"] == [{"database": "sqlite /srv/app.db"}]
    assert command["reason"] == (
        "the backup of sqlite /srv/app.db started at 2026-11-27T04:00:00+00:00 did not "
        "finish: dbguardd (pid 41) stopped during it (killed or crashed), and its "
        "unfinished files were removed; the command was not run"
    )
    assert manual["reason"].endswith("unfinished files were removed")
    assert "dbguardctl restore (pid 41) stopped" in pre_restore["reason"]
    assert pre_restore["reason"].endswith("; nothing was restored")


def leave_a_killed_backup(home: Home, kind: str, argv: list[str], **about: str) -> Path:
    """The work folder `deadbeef` of a backup whose writer (pid 41) was killed, as it
    leaves it; returns the store's .tmp."""
    tmp = home.backups / ".tmp"
    (tmp / "deadbeef").mkdir(parents=True)
    note = {
        "database": "sqlite /srv/app.db",
        "started": "2026-11-27T04:00:00+00:00",
        "pid": 41,
        "kind": kind,
        "argv": argv,
        "cwd": "/srv",
        **about,
    }
    (tmp / "deadbeef" / "about.json").write_text(json.dumps(note))
    (tmp / "deadbeef.lock").touch()  # nobody holds it: its writer is gone
    return tmp


def test_a_killed_restore_s_backup_cleared_by_the_next_backup_is_logged(
    home: Home, daemon: Daemon, project: Path
) -> None:
    """A dbguardctl restore killed during its pre-restore backup leaves its folder; the
    running daemon's next backup clears it, and says so in the log."""
    tmp = leave_a_killed_backup(home, "pre-restore", ["dbguardctl", "restore", "abc123"])

    taken = home.ctl("backup", cwd=project)

    assert taken.returncode == 0, taken.stderr
    assert not (tmp / "deadbeef").exists()
    [cleared] = [r for r in home.operations() if r.get("argv", [])[:2] == ["dbguardctl", "restore"]]
    assert cleared["decision"] == "fail"
    assert "dbguardctl restore (pid 41) stopped during it" in cleared["reason"]
    assert cleared["reason"].endswith("; nothing was restored")


def test_a_killed_daemon_s_backup_cleared_by_a_restore_is_logged(
    home: Home, daemon: Daemon, project: Path
) -> None:
    """A dbguardd killed during a command's backup leaves its folder; a dbguardctl
    restore run before any dbguardd restarts clears it, and logs it as dbguardd would."""
    taken = home.ctl("backup", "--json", cwd=project)
    backup_id = json.loads(taken.stdout)["backups"][0]["id"]
    argv = ["php", "artisan", "migrate:fresh"]
    tmp = leave_a_killed_backup(home, "command", argv, op="op7")

    restored = home.ctl("restore", backup_id, "--yes", cwd=project)

    assert restored.returncode == 0, restored.stderr
    assert not (tmp / "deadbeef").exists()
    [cleared] = [r for r in home.operations() if r.get("op") == "op7"]
    assert cleared["decision"] == "fail" and cleared["argv"] == argv
    assert "dbguardd (pid 41) stopped during it" in cleared["reason"]
    assert cleared["reason"].endswith("; the command was not run")


def test_a_shell_file_a_package_script_runs_is_guarded(home: Home, daemon: Daemon) -> None:
    # Inside `npm run`, node_modules/.bin is ahead of the shims: the shell file's prisma
    # is the project's own, never its shim. dbguard reads the file before npm starts.
    home.install_shims("npm", "npx", "prisma")
    project = home.root / "web"
    (project / "prisma").mkdir(parents=True)
    (project / "scripts").mkdir()
    (project / "package.json").write_text(
        json.dumps(
            {
                "name": "web",
                "scripts": {"db:reset": "sh scripts/reset-db.sh", "build": "sh scripts/build.sh"},
                "dependencies": {"@prisma/client": "6"},
            }
        )
    )
    (project / "scripts" / "reset-db.sh").write_text(
        "#!/bin/sh\nset -e\nif [ -d prisma ]; then\n  prisma migrate reset --force\nfi\n"
    )
    (project / "scripts" / "build.sh").write_text("echo built > built.txt\n")
    (project / "prisma" / "schema.prisma").write_text(
        'datasource db {\n  provider = "sqlite"\n  url = env("DATABASE_URL")\n}\n'
    )
    (project / ".env").write_text('DATABASE_URL="file:./dev.db"\n')
    db = project / "prisma" / "dev.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("create table t (x)")
        conn.commit()
    assert home.ctl("mark", "production", cwd=project).returncode == 0
    bin_ = project / "node_modules" / ".bin"
    bin_.mkdir(parents=True)
    (bin_ / "prisma").write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "import sqlite3; c = sqlite3.connect('
        "'prisma/dev.db'); c.execute('drop table t'); c.commit()\"\n"
    )
    (bin_ / "prisma").chmod(0o755)
    agent = {"CLAUDECODE": "1"}

    built = home.run(["npm", "run", "build"], cwd=project, env=agent)
    assert built.returncode == 0, built.stderr
    assert (project / "built.txt").exists()
    assert oplog(home)[-1]["decision"] == "pass"

    reset = home.run(["npm", "run", "db:reset"], cwd=project, env=agent)
    assert reset.returncode == 77, reset.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("select name from sqlite_master").fetchall() == [("t",)]
    record = oplog(home)[-1]
    assert (record["decision"], record["tool"], record["kind"]) == ("deny", "prisma", "destructive")
    assert record["via"] == ["npm run db:reset", "scripts/reset-db.sh"]


def test_a_command_line_is_read_once_while_the_project_files_stay_as_they_were(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a command line is (npm run reset: whatever package.json's script runs) is
    remembered per line and folder: a repeat reads no file, only stats them, and an
    edit, a new .dbguard.toml or a folder made later is seen at once."""
    from dbguard.config import Config
    from dbguard.daemon.service import Guard
    from dbguard.discovery.envfile import DiscoveryError
    from dbguard.discovery.project import ProjectFiles, StampedCache
    from dbguard.paths import SETTLED_NS
    from dbguard.protocol import Invoke
    from dbguard.rules import Kind

    app = home.root / "app"
    app.mkdir()
    (app / "package.json").write_text('{"scripts": {"reset": "echo hello"}}')
    reset = '{"scripts": {"reset": "prisma migrate reset --force"}}'
    reads: list[str] = []
    real_read = ProjectFiles.read

    def counted(files: ProjectFiles, relative: str) -> str | None:
        reads.append(relative)
        return real_read(files, relative)

    monkeypatch.setattr(ProjectFiles, "read", counted)
    guard = Guard(Config(), home.env)
    # As if every file had been written long ago: one changed within the clock's last
    # tick is never cached (see the test of that in test_discovery).
    guard.classified = StampedCache(clock=lambda: time.time_ns() + 10 * SETTLED_NS)

    def kind(*argv: str) -> Kind | None:
        asked = Invoke(
            type="invoke", v=PROTOCOL_VERSION, argv=list(argv), cwd=str(app), env={}, tty=False,
            pid=1,
        )  # fmt: skip
        operation = guard.classify(asked)
        return None if operation is None else operation.kind

    try:
        assert kind("npm", "run", "reset") is None  # echo: no database operation
        assert reads
        reads.clear()
        assert kind("npm", "run", "reset") is None
        assert reads == []  # the repeat: stats only
        (app / "package.json").write_text(reset)
        assert kind("npm", "run", "reset") is Kind.DESTRUCTIVE
        # A folder that is not there yet (npm fails: nothing runs), then is.
        assert kind("npm", "--prefix", "web", "run", "reset") is None
        (app / "web").mkdir()
        (app / "web" / "package.json").write_text(reset)
        assert kind("npm", "--prefix", "web", "run", "reset") is Kind.DESTRUCTIVE
        # A .dbguard.toml that appears is read (a broken one refuses every command).
        (app / ".dbguard.toml").write_text("[[tool]\n")
        with pytest.raises(DiscoveryError):
            kind("npm", "run", "reset")
    finally:
        guard.engines.close()


# As `npm run NAME` runs a script: its text, in npm's script shell, with the project's
# node_modules/.bin first on PATH.
NPM_STAND_IN = """#!/bin/sh
read_script='import json, sys; print(json.load(open("package.json"))["scripts"][sys.argv[1]])'
script=$('{python}' -c "$read_script" "$2")
PATH="$PWD/node_modules/.bin:$PATH" exec "${{npm_config_script_shell:-sh}}" -c "$script"
"""


@pytest.mark.parametrize("npm", ["stand-in", "real"])
def test_a_program_a_package_script_starts_meets_the_shims(
    home: Home, daemon: Daemon, project: Path, npm: str
) -> None:
    """`npm run db:reset` runs `python scripts/reset.py`, a program dbguard does not
    read, which runs `php artisan migrate:fresh`. npm puts node_modules/.bin first,
    where the project's own php lies; the script shell puts the shims first again."""
    if npm == "real" and shutil.which("npm") is None:
        pytest.skip("npm is not installed here: only the stand-in's run is checked")
    if npm == "stand-in":
        stand_in = home.bin / "npm"
        stand_in.write_text(NPM_STAND_IN.format(python=sys.executable))
        stand_in.chmod(0o755)
    home.install_shims("npm")
    package_bin = project / "node_modules" / ".bin"
    package_bin.mkdir(parents=True)
    (package_bin / "php").symlink_to(home.bin / "php")  # the project's own, unguarded
    (project / "scripts").mkdir()
    (project / "scripts" / "reset.py").write_text(
        "import subprocess, sys\n"
        "sys.exit(subprocess.run(['php', 'artisan', 'migrate:fresh']).returncode)\n"
    )
    script = f"{sys.executable} scripts/reset.py"
    (project / "package.json").write_text(json.dumps({"scripts": {"db:reset": script}}))

    # A HOME of its own: a developer's ~/.npmrc that sets script-shell would be left
    # to npm (as it should), and this test would fail on their machine.
    (home.root / "npm-home").mkdir()
    user = {"HOME": str(home.root / "npm-home")}
    result = home.run(["npm", "run", "db:reset"], cwd=project, env=user)

    assert result.returncode == 0, result.stderr
    assert count_users(project) is None  # the reset ran
    reset = [r for r in oplog(home) if r["argv"] == ["php", "artisan", "migrate:fresh"]]
    assert [r["decision"] for r in reset] == ["allow"]  # through the shim
    [backup] = backups(home)  # taken before it
    assert home.ctl("restore", backup["id"], "--yes").returncode == 0
    assert count_users(project) == 3

"""Bad input from people and projects.

dbguardctl given ids and names with path tricks, shell metacharacters and option-looking
values refuses them (or treats them as plain text) and changes nothing; a project whose
.env, DATABASE_URL or phpunit.xml cannot be read is denied through a real shim with a
message naming the file and line, and the daemon never crashes on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.support import (
    FaultDaemon,
    injected,
    install_php,
    listing,
    oplog,
    ran,
    sqlite_rows,
    stderr_text,
    write_config,
)
from tests.helpers import Home, laravel_sqlite_project

CANARY = "PWNED"  # what an injected shell command would create


def tricks(backup_id: str) -> list[str]:
    # The id in upper case; an id of digits only has none, so one digit becomes "F".
    shouted = backup_id.upper() if backup_id.upper() != backup_id else f"{backup_id[:-1]}F"
    return [
        "../../etc/passwd", "..", "/etc/passwd", f"{backup_id[:4]}/../{backup_id[:4]}",
        f"{backup_id}/", f"./{backup_id}", f"{backup_id}*", f"{backup_id}?", "%2e%2e%2f",
        f"$(touch {CANARY})", f"`touch {CANARY}`", f"; touch {CANARY}",
        f"{backup_id}; touch {CANARY}",
        f"| touch {CANARY}", f"{backup_id}\ntouch {CANARY}", "--yes", "-h", "--end-connections",
        "-1234", f"{backup_id}\u202e", "ａｂｃｄ", shouted, f" {backup_id}",
        "", "a" * 5000, "\udcff\udcfe",
    ]  # fmt: skip


@dataclass
class Store:
    home: Home
    project: Path
    backup_id: str

    @property
    def database(self) -> Path:
        return self.project / "database" / "app.sqlite"

    def ctl(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "dbguard.ctl.main", *args],
            cwd=self.project,
            env=self.home.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


@pytest.fixture
def store(home: Home) -> Iterator[Store]:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    try:
        result = home.run(["php", "artisan", "migrate"], cwd=project)
        assert result.returncode == 0, stderr_text(result)
        [backup] = listing(home)
        yield Store(home, project, backup["id"])
    finally:
        daemon.stop()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ctl_in_process(
    store: Store, argvs: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[list[str], int, str]]:
    """dbguardctl's own main() for each argv, in this process (hundreds of cases cost
    a second, not minutes), with the home's environment, folder and no terminal."""
    from dbguard.ctl import main as ctl

    monkeypatch.chdir(store.project)
    for key in [k for k in os.environ if k.startswith(("DBGUARD_", "XDG_"))]:
        monkeypatch.delenv(key)
    for key, value in store.home.env.items():
        monkeypatch.setenv(key, value)
    done = []
    for argv in argvs:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = ctl.main(argv)
            except SystemExit as exit_:  # argparse's usage errors and --help
                code = exit_.code if isinstance(exit_.code, int) else 1
        done.append((argv, code, out.getvalue() + err.getvalue()))
    return done


def run_all(store: Store, argvs: list[list[str]]) -> list[tuple[list[str], int, str]]:
    """The same as real processes, side by side."""
    running = [(argv, store.ctl(*argv)) for argv in argvs]
    done = []
    for argv, process in running:
        out, err = process.communicate(timeout=120)
        done.append((argv, process.returncode, (out + err).decode("utf-8", "replace")))
    return done


def check_id_refusals(results: list[tuple[list[str], int, str]]) -> None:
    for argv, code, output in results:
        if argv[-1] == "-h" and "--" not in argv:
            assert code == 0 and "usage:" in output  # only the help, nothing done
            continue
        assert code == 2, (argv, code, output)  # a usage error, before anything is read
        if argv[-2] == "--" and argv[-1]:
            assert "is not a backup id" in output, (argv, output)
        assert "Traceback" not in output, (argv, output)


def test_dbguardctl_refuses_tricky_backup_ids(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (digest(store.database), listing(store.home), len(oplog(store.home)))
    argvs = []
    for value in tricks(store.backup_id):
        for command in (["restore", "--yes"], ["verify"], ["pin"], ["unpin"]):
            argvs.append([*command, "--", value])
        argvs.append(["restore", "--yes", value])  # without `--`: may look like an option
    check_id_refusals(ctl_in_process(store, argvs, monkeypatch))
    # The most dangerous ones again as real processes, as a person would type them.
    check_id_refusals(
        run_all(
            store,
            [
                ["restore", "--yes", "--", f"$(touch {CANARY})"],
                ["restore", "--yes", "--", f"{store.backup_id}; touch {CANARY}"],
                ["restore", "--yes", "--", f"{store.backup_id[:4]}/../{store.backup_id[:4]}"],
                ["restore", "--yes", "--end-connections"],
                ["verify", "--", "../../etc/passwd"],
                ["pin", "--", f"`touch {CANARY}`"],
            ],
        )
    )
    injected("tricky backup ids given to dbguardctl", len(argvs) + 6)
    assert not (store.project / CANARY).exists()
    assert (digest(store.database), listing(store.home), len(oplog(store.home))) == before
    # The plain id still works: the refusals above were about the values, not the store.
    assert store.home.ctl("verify", store.backup_id[:4]).returncode == 0


def test_dbguardctl_treats_tricky_names_as_plain_text(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (digest(store.database), listing(store.home))
    values = [v for v in tricks(store.backup_id) if v != "-h"]
    argvs = [["list-backups", "--json", f"--database={value}"] for value in values]
    argvs += [["mark", "production", f"--database={value}"] for value in values if value]
    argvs += [["approve", "--", value] for value in values[:12]]
    argvs += [["log", "-n", value] for value in ("-5", "abc", "1e3", "--json")]
    results = ctl_in_process(store, argvs, monkeypatch)
    injected("tricky names and options given to dbguardctl", len(argvs))

    for argv, code, output in results:
        assert "Traceback" not in output, (argv, output)
        if argv[0] == "list-backups":
            assert code == 0, (argv, output)
            listed = json.loads(output)
            assert all(store.backup_id == e["id"] for e in listed)
        elif argv[0] == "mark":
            assert code == 2 and "databases match" in output, (argv, output)
        elif argv[0] == "approve":
            assert code in (1, 77), (argv, output)  # no such code / not from an agent
        else:  # log -n: a count of at least 1, or a usage error
            assert code == 2 and "argument -n" in output, (argv, output)
    assert not (store.project / CANARY).exists()
    assert (digest(store.database), listing(store.home)) == before


def test_shim_names_with_shell_metacharacters_never_run_code(home: Home, tmp_path: Path) -> None:
    folder = tmp_path / "shims"
    names = [f"$(touch {CANARY})", f"`touch {CANARY}`", f"x;touch {CANARY}", f"a\ntouch {CANARY}"]
    result = home.ctl("shims", "install", "--dir", str(folder), *names, cwd=tmp_path)
    injected("shim names with shell metacharacters", len(names))
    for shim in folder.iterdir() if folder.exists() else []:
        subprocess.run(
            ["sh", str(shim)], cwd=tmp_path, capture_output=True, timeout=30, check=False
        )
    assert not (tmp_path / CANARY).exists(), "a shim name ran a shell command"
    assert result.returncode == 2, stderr_text(result)


# ---- project files that cannot be read, through a real shim ------------------------------


@pytest.fixture
def guarded(home: Home) -> Iterator[tuple[Home, Path, FaultDaemon]]:
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    daemon = FaultDaemon(home).start()
    try:
        yield home, project, daemon
    finally:
        daemon.stop()


ENV_CASES = {
    "unterminated quote": (
        'APP_ENV=local\nDB_CONNECTION=sqlite\nDB_DATABASE="database/app.sqlite\nX=1\n',
        ".env, line 3",
    ),
    "line without =": (
        "APP_ENV=local\nDB_CONNECTION=sqlite\nthis is not a setting\n"
        "DB_DATABASE=database/app.sqlite\n",
        ".env, line 3",
    ),
    "unparseable DB_URL": (
        "APP_ENV=local\nDB_CONNECTION=mysql\nDB_URL=mysql://app@[::1:3306/shop\n",
        ".env, line 3",
    ),
    "DB_URL with a port that is not a number": (
        "APP_ENV=local\nDB_CONNECTION=pgsql\nDB_URL=postgres://app:s3cret-url@db:port/shop\n",
        ".env, line 3",
    ),
    "DB_URL of an unknown kind": (
        "APP_ENV=local\nDB_CONNECTION=pgsql\nDB_URL=oracle://app:s3cret-url@db/shop\n",
        ".env, line 3",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_a_broken_env_file_is_a_clear_denial(
    guarded: tuple[Home, Path, FaultDaemon], case: str
) -> None:
    home, project, daemon = guarded
    text, where = ENV_CASES[case]
    (project / ".env").write_text(text)
    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    injected(f".env: {case}")

    message = stderr_text(result)
    assert result.returncode == 77, message
    assert where in message, message
    assert "s3cret-url" not in message
    assert "s3cret-url" not in home.oplog.read_text()
    assert ran(project) == []
    assert sqlite_rows(project / "database" / "app.sqlite") == 3
    assert [r["decision"] for r in oplog(home)] == ["deny"]
    daemon.assert_no_crash()


def test_a_database_url_in_the_environment_that_does_not_parse(
    guarded: tuple[Home, Path, FaultDaemon],
) -> None:
    home, project, daemon = guarded
    (project / ".env").write_text("APP_ENV=local\nDB_CONNECTION=pgsql\n")
    url = "postgres://app:s3cret-env@db:99999999/shop"
    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project, env={"DB_URL": url})
    injected("DB_URL in the environment that does not parse")

    message = stderr_text(result)
    assert result.returncode == 77, message
    assert "the invoking environment" in message and "does not parse" in message, message
    assert "s3cret-env" not in message
    assert ran(project) == []
    daemon.assert_no_crash()


PHPUNIT_CASES = {
    "not XML at all": ("this is not xml\n", "phpunit.xml, line 1"),
    "unclosed element": (
        '<?xml version="1.0"?>\n<phpunit>\n  <php>\n    <env name="DB_DATABASE" value="x">\n'
        "  </php>\n</phpunit>\n",
        "phpunit.xml, line 5",
    ),
    "entity expansion": (
        '<?xml version="1.0"?>\n<!DOCTYPE p [\n<!ENTITY a "aaaaaaaaaa">\n'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">\n]>\n<phpunit>&b;</phpunit>\n',
        "phpunit.xml, line 3",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(PHPUNIT_CASES))
def test_a_phpunit_xml_that_is_not_xml_is_a_clear_denial(
    guarded: tuple[Home, Path, FaultDaemon], case: str
) -> None:
    home, project, daemon = guarded
    text, where = PHPUNIT_CASES[case]
    (project / "phpunit.xml").write_text(text)
    result = home.run(["php", "artisan", "test"], cwd=project)
    injected(f"phpunit.xml: {case}")

    message = stderr_text(result)
    assert result.returncode == 77, message
    assert where in message, message
    assert ran(project) == []
    daemon.assert_no_crash()


def test_an_sqlite_path_through_a_file_is_a_clear_answer(
    guarded: tuple[Home, Path, FaultDaemon],
) -> None:
    home, project, daemon = guarded
    (project / ".env").write_text(
        "APP_ENV=local\nDB_CONNECTION=sqlite\nDB_DATABASE=artisan/app.sqlite\n"
    )
    result = home.run(["php", "artisan", "migrate"], cwd=project)
    injected(".env: DB_DATABASE through a file")

    message = stderr_text(result)
    assert result.returncode in (0, 75, 77), message  # nothing there to lose, or refused
    assert "internal error" not in message
    daemon.assert_no_crash()


def deny_message(home: Home, project: Path, env_text: str) -> str:
    (project / ".env").write_text(env_text)
    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert result.returncode == 77, stderr_text(result)
    assert ran(project) == []
    return stderr_text(result)


def test_the_line_named_counts_blank_lines(guarded: tuple[Home, Path, FaultDaemon]) -> None:
    home, project, _ = guarded
    message = deny_message(
        home, project, "APP_ENV=local\nDB_CONNECTION=pgsql\n\n\nDB_URL=postgres://db:port/shop\n"
    )
    injected(".env: bad DB_URL after blank lines")
    assert ".env, line 5" in message, message


def test_an_unparseable_url_never_shows_its_password(
    guarded: tuple[Home, Path, FaultDaemon],
) -> None:
    home, project, _ = guarded
    message = deny_message(
        home,
        project,
        "APP_ENV=local\nDB_CONNECTION=mysql\nDB_URL=mysql://app:s3cret-url@[::1:3306/shop\n",
    )
    injected(".env: unparseable DB_URL with a password")
    assert ".env, line 3" in message
    assert "s3cret-url" not in message, message
    assert "s3cret-url" not in home.oplog.read_text()


def test_an_operations_log_that_cannot_be_written_is_shown_by_status(home: Home) -> None:
    """The command still runs (the record goes to dbguardd's own log); status once
    said nothing of it."""
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    blocked = home.root / "state-is-a-file"
    blocked.write_text("")
    write_config(home, f"operation_log = '{blocked / 'operations.jsonl'}'\n")
    injected("operations log below a file: it cannot be written")
    daemon = FaultDaemon(home).start()
    try:
        assert home.run(["php", "artisan", "migrate"], cwd=project).returncode == 0
        status = home.ctl("status")
        assert status.returncode == 0, stderr_text(status)
        shown = status.stdout.decode()
        assert f"PROBLEM: cannot write the operations log {blocked / 'operations.jsonl'}" in shown
        assert "operation log not written" in daemon.log  # where the record went
        blocked.unlink()  # fixed: the next record is written and the problem gone
        assert home.run(["php", "artisan", "migrate"], cwd=project).returncode == 0
        assert "PROBLEM" not in home.ctl("status").stdout.decode()
        daemon.assert_no_crash()
    finally:
        daemon.stop()

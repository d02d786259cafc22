"""Production needs a human: refusals, approval on a real pseudo-terminal, and reuse."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbguard.client.talk import request
from dbguard.config import Config
from dbguard.daemon.service import Guard
from dbguard.marks import FILE_NAME, ProductionMarks
from dbguard.protocol import (
    PROTOCOL_VERSION,
    Allow,
    ApprovalQuery,
    Confirm,
    Error,
    Fail,
    Report,
)
from tests.faults.support import wait_until
from tests.helpers import (
    Daemon,
    Home,
    count_users,
    install_stand_in,
    invoke_in_process,
    laravel_sqlite_project,
    run_in_terminal,
)

NAME = "app.sqlite"  # what a person types: the SQLite file's name
CTL = [sys.executable, "-m", "dbguard.ctl.main"]


@pytest.fixture
def production(home: Home) -> Path:
    """A Laravel project whose .env says APP_ENV=production."""
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")
    env_file = project / ".env"
    env_file.write_text(env_file.read_text().replace("APP_ENV=local", "APP_ENV=production"))
    return project


def code_from(stderr: bytes) -> str:
    text = stderr.decode()
    assert "dbguardctl approve " in text, text
    return text.split("dbguardctl approve ", 1)[1].split()[0]


def approve_on_terminal(home: Home, code: str, typed: str = NAME) -> str:
    run = run_in_terminal(
        [*CTL, "approve", code], home.env, home.root, {"Type the database name": typed}
    )
    return f"exit {run.returncode}: {run.output}"


def test_a_script_is_refused_and_a_human_approves_it_once(
    home: Home, daemon: Daemon, production: Path
) -> None:
    refused = home.run(["php", "artisan", "migrate:fresh"], cwd=production)
    assert refused.returncode == 77
    assert b"PRODUCTION" in refused.stderr and b"APP_ENV=production" in refused.stderr
    assert b"If you are an AI agent: stop" in refused.stderr
    assert count_users(production) == 3  # not run

    code = code_from(refused.stderr)
    outcome = approve_on_terminal(home, code)
    assert outcome.startswith("exit 0") and "approved" in outcome, outcome

    allowed = home.run(["php", "artisan", "migrate:fresh"], cwd=production)
    assert allowed.returncode == 0, allowed.stderr
    assert count_users(production) is None
    manifests = [json.loads(p.read_text()) for p in home.backups.glob("*/*/manifest.json")]
    assert [m["reason"]["production"] for m in manifests] == [True]  # backed up first

    again = home.run(["php", "artisan", "migrate:fresh"], cwd=production)
    assert again.returncode == 77  # single use


def test_an_approval_does_not_cover_another_command(
    home: Home, daemon: Daemon, production: Path
) -> None:
    code = code_from(home.run(["php", "artisan", "migrate:fresh"], cwd=production).stderr)
    assert approve_on_terminal(home, code).startswith("exit 0")
    other = home.run(["php", "artisan", "db:wipe"], cwd=production)
    assert other.returncode == 77
    assert count_users(production) == 3


def test_approval_needs_the_database_name_typed_on_the_terminal(
    home: Home, daemon: Daemon, production: Path
) -> None:
    code = code_from(home.run(["php", "artisan", "migrate:fresh"], cwd=production).stderr)

    piped = home.run([*CTL, "approve", code], cwd=home.root, input=f"{NAME}\n".encode())
    assert piped.returncode == 77, piped.stderr  # stdin is never read; no terminal here
    assert b"no terminal" in piped.stderr

    wrong = approve_on_terminal(home, code, typed="yes")
    assert wrong.startswith("exit 1") and "not the name" in wrong, wrong
    assert home.run(["php", "artisan", "migrate:fresh"], cwd=production).returncode == 77


END_OF_INPUT = "\x04"  # ^D at the start of a line: the read at the prompt gets nothing


def test_ending_the_input_at_a_prompt_is_no_answer_not_an_empty_name(
    home: Home, daemon: Daemon, production: Path
) -> None:
    code = code_from(home.run(["php", "artisan", "migrate:fresh"], cwd=production).stderr)
    ended = approve_on_terminal(home, code, typed=END_OF_INPUT)
    assert ended.startswith("exit 1"), ended
    assert "no answer was given (end of input), so not approved" in ended, ended
    assert "not the name" not in ended and "no terminal" not in ended, ended

    declined = run_in_terminal(  # the shim's own prompt, for a person at a terminal
        ["php", "artisan", "migrate:fresh"], home.env, production, {"Type the": END_OF_INPUT}
    )
    assert declined.returncode == 77, declined.output
    assert "no answer was given" in declined.output, declined.output
    assert "not the name" not in declined.output, declined.output
    assert count_users(production) == 3  # neither ran it
    assert approve_on_terminal(home, code).startswith("exit 0")  # the code is still good


def test_ending_the_input_at_the_restore_question_restores_nothing(
    home: Home, daemon: Daemon
) -> None:
    project = laravel_sqlite_project(home.root / "app")
    taken = home.ctl("backup", "--json", cwd=project)
    assert taken.returncode == 0, taken.stderr
    backup_id = json.loads(taken.stdout)["backups"][0]["id"]
    ended = run_in_terminal(
        [*CTL, "restore", backup_id], home.env, project, {"[y/N]": END_OF_INPUT}
    )
    assert ended.returncode == 1, ended.output
    assert "not restored: no answer was given (end of input)" in ended.output, ended.output
    assert len(json.loads(home.ctl("list-backups", "--json").stdout)) == 1  # no pre-restore


def test_an_agent_cannot_approve_itself(home: Home, daemon: Daemon, production: Path) -> None:
    home.extra_env["CLAUDECODE"] = "1"
    refused = home.run(["php", "artisan", "test"], cwd=production)
    assert refused.returncode == 77
    code = code_from(refused.stderr)
    outcome = approve_on_terminal(home, code)  # even with a terminal
    assert outcome.startswith("exit 77") and "AI agent" in outcome, outcome
    record = home.operations()[0]
    assert record["decision"] == "deny" and record["agent"] == ["CLAUDECODE set"]


def test_a_person_at_a_terminal_confirms_in_the_shim(
    home: Home, daemon: Daemon, production: Path
) -> None:
    declined = run_in_terminal(
        ["php", "artisan", "migrate:fresh"], home.env, production, {"Type the database": "no"}
    )
    assert declined.returncode == 77, declined.output
    assert count_users(production) == 3

    confirmed = run_in_terminal(
        ["php", "artisan", "migrate:fresh"], home.env, production, {"Type the database": NAME}
    )
    assert confirmed.returncode == 0, confirmed.output
    assert count_users(production) is None
    assert len(list(home.backups.glob("*/*/manifest.json"))) == 1


def test_an_agent_with_a_terminal_is_still_refused(
    home: Home, daemon: Daemon, production: Path
) -> None:
    home.extra_env["CURSOR_AGENT"] = "1"
    run = run_in_terminal(["php", "artisan", "migrate:fresh"], home.env, production)
    assert run.returncode == 77, run.output
    assert "dbguardctl approve" in run.output
    # It says why a terminal was not enough (it once said "no person at a terminal").
    assert "AI agent's environment (CURSOR_AGENT set)" in " ".join(run.output.split())


def test_a_command_run_by_an_agent_program_is_refused_without_its_variables(
    home: Home, daemon: Daemon, production: Path
) -> None:
    """An agent that unsets its variables and types into a pseudo-terminal is still
    the agent: its program is among the processes the command runs under."""
    claude = home.bin / "claude"  # an agent's CLI, as far as its process name goes
    claude.write_text('#!/bin/sh\n"$@"\nexit $?\n')
    claude.chmod(0o755)
    run = run_in_terminal(
        [str(claude), "sh", "-c", "php artisan migrate:fresh; exit $?"],
        home.env,
        production,
        {"Type the database": NAME},  # what a person would be asked: not asked here
    )
    assert run.returncode == 77, run.output
    assert count_users(production) == 3
    assert "AI agent's environment (run by claude (pid " in " ".join(run.output.split())
    code = code_from(run.output.encode())
    # Nor can it approve its own command, though it has a terminal to type into.
    approving = run_in_terminal(
        [str(claude), *CTL, "approve", code], home.env, home.root, {"Type the database": NAME}
    )
    assert approving.returncode == 77, approving.output
    assert "refuses to run in an AI agent's environment (run by claude" in approving.output
    # A person runs both from a terminal of their own.
    assert approve_on_terminal(home, code).startswith("exit 0")


def wait_until_expired(home: Home, code: str) -> None:
    """Poll the daemon (a read-only query, which does not renew anything) until the
    approval `code` is gone."""
    deadline = time.monotonic() + 30
    while True:
        reply = request(home.socket, ApprovalQuery(type="approval", v=PROTOCOL_VERSION, code=code))
        if isinstance(reply, Error):
            assert "no pending approval" in reply.message
            return
        assert time.monotonic() < deadline, reply


def test_codes_and_approvals_expire(home: Home, production: Path) -> None:
    config = home.root / "config.toml"
    config.write_text("[production]\napproval_minutes = 0.05\n")  # 3 s
    home.extra_env["DBGUARD_CONFIG"] = str(config)
    daemon = Daemon(home).start()
    try:
        command = ["php", "artisan", "migrate:fresh"]
        stale = code_from(home.run(command, cwd=production).stderr)
        wait_until_expired(home, stale)
        outcome = approve_on_terminal(home, stale)
        assert outcome.startswith("exit 1") and "no pending approval" in outcome, outcome

        fresh = code_from(home.run(command, cwd=production).stderr)
        assert approve_on_terminal(home, fresh).startswith("exit 0")
        wait_until_expired(home, fresh)
        assert home.run(command, cwd=production).returncode == 77
        assert count_users(production) == 3
    finally:
        daemon.stop()


def test_the_database_marker_makes_production_and_travels_with_the_file(
    home: Home, daemon: Daemon
) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")  # APP_ENV=local: not production
    marked = home.ctl("mark", "production", cwd=project)
    assert marked.returncode == 0, marked.stdout + marked.stderr
    refused = home.run(["php", "artisan", "db:wipe"], cwd=project)
    assert refused.returncode == 77
    assert b"marked production" in refused.stderr
    # An agent may mark production, never lift it: that would open production to itself.
    home.extra_env["CLAUDECODE"] = "1"
    for environment in ("development", "none"):
        lifted = home.ctl("mark", environment, cwd=project)
        assert lifted.returncode == 77, lifted.stderr
        assert b"refuses to run in an AI agent's environment" in lifted.stderr
    assert home.run(["php", "artisan", "db:wipe"], cwd=project).returncode == 77
    assert home.ctl("mark", "production", cwd=project).returncode == 0
    del home.extra_env["CLAUDECODE"]
    # Nor a script without a terminal: a person confirms at one with the database's name.
    unattended = home.ctl("mark", "none", cwd=project)
    assert unattended.returncode == 77 and b"no terminal" in unattended.stderr
    assert home.run(["php", "artisan", "db:wipe"], cwd=project).returncode == 77
    ctl = [sys.executable, "-m", "dbguard.ctl.main", "mark", "development"]
    confirmed = run_in_terminal(ctl, home.env, project, {"Type its name": "app.sqlite"})
    assert confirmed.returncode == 0, confirmed.output
    assert home.run(["php", "artisan", "db:wipe"], cwd=project).returncode == 0


def test_a_database_dropped_and_made_again_by_an_approved_command_keeps_its_mark(
    home: Home, daemon: Daemon
) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")  # APP_ENV=local: only the mark
    assert home.ctl("mark", "production", cwd=project).returncode == 0
    refused = home.run(["php", "artisan", "migrate:fresh", "--recreate"], cwd=project)
    assert refused.returncode == 77
    outcome = approve_on_terminal(home, code_from(refused.stderr))
    assert outcome.startswith("exit 0"), outcome

    # The command deletes the file and makes a new one: the mark went with the old one.
    allowed = home.run(["php", "artisan", "migrate:fresh", "--recreate"], cwd=project)
    assert allowed.returncode == 0, allowed.stderr
    again = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert again.returncode == 77, again.stderr  # still production: the mark is back
    assert b"marked production" in again.stderr
    put_back = [json.loads(line) for line in home.oplog.read_text().splitlines()]
    assert [r["outcome"] for r in put_back if r.get("decision") == "mark"] == ["ok"]


def clear_mark_outside_dbguard(project: Path) -> None:
    """What a database made again outside any guarded command looks like: unmarked."""
    conn = sqlite3.connect(project / "database" / "app.sqlite")
    conn.execute("PRAGMA application_id = 0")
    conn.close()


def test_a_database_that_lost_its_mark_outside_dbguard_is_still_production(
    home: Home, daemon: Daemon
) -> None:
    """The mark lives inside the database, so a database dropped and made again by a
    command dbguard did not follow (or while dbguardd was stopped) came back unmarked,
    and was judged by its name alone: not production."""
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")  # APP_ENV=local: only the mark
    assert home.ctl("mark", "production", cwd=project).returncode == 0
    clear_mark_outside_dbguard(project)

    refused = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert refused.returncode == 77, refused.stderr
    assert b"its mark is gone" in refused.stderr
    outcome = approve_on_terminal(home, code_from(refused.stderr))
    assert outcome.startswith("exit 0"), outcome
    assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0
    # Marked again once the approved command ended, before the next is judged.
    again = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert again.returncode == 77, again.stderr
    assert b"itself is marked production" in again.stderr
    marked = [json.loads(line) for line in home.oplog.read_text().splitlines()]
    assert [r["outcome"] for r in marked if r.get("decision") == "mark"] == ["ok"]

    # A person lowering the mark, at a terminal, is the one way to forget it.
    ctl = [*CTL, "mark", "none"]
    confirmed = run_in_terminal(ctl, home.env, project, {"Type its name": NAME})
    assert confirmed.returncode == 0, confirmed.output
    assert home.run(["php", "artisan", "migrate:fresh"], cwd=project).returncode == 0


def test_a_mark_lowered_by_hand_during_a_command_is_not_put_back_after_it(
    home: Home, daemon: Daemon, tmp_path: Path
) -> None:
    """A command allowed on a production database gets its mark back when it ends; a
    person's `dbguardctl mark none` while it ran must stand, not be undone by that."""
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")
    assert home.ctl("mark", "production", cwd=project).returncode == 0
    clear_mark_outside_dbguard(project)  # remembered: marked again after the next command
    gate = tmp_path / "finish"
    command = ["php", "artisan", "test", f"--wait-for-file={gate}"]
    refused = home.run(command, cwd=project)
    assert approve_on_terminal(home, code_from(refused.stderr)).startswith("exit 0")
    running = subprocess.Popen(
        command, cwd=project, env=home.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until(Path(f"{gate}.ready").exists, "the guarded command to start")
        lowered = run_in_terminal([*CTL, "mark", "none"], home.env, project, {"Type its": NAME})
        assert lowered.returncode == 0, lowered.output
    finally:
        gate.touch()
        _, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    # The next command waits for any put-back, and finds the database as the person left it.
    after = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert after.returncode == 0, after.stderr


def test_a_mark_lowered_by_hand_during_the_approval_is_not_put_back(home: Home) -> None:
    """The marks are read before the approval and the backup, which can take minutes:
    a person's `dbguardctl mark none` meanwhile stands too."""
    project = laravel_sqlite_project(home.root / "app")
    assert home.ctl("mark", "production", cwd=project).returncode == 0
    clear_mark_outside_dbguard(project)  # remembered: marked again after the command
    guard = Guard(Config(), home.env)

    async def lower_it_then_approve(question: Confirm) -> str:
        [target] = guard.discovery.project_databases(project, home.env, "test").targets
        ProductionMarks.in_state_dir(home.env).set_by_hand(target, None)  # mark none's note
        return question.names[0]

    command = ["php", "artisan", "migrate:fresh"]
    try:
        answer = invoke_in_process(guard, home, project, command, lower_it_then_approve)
        assert isinstance(answer, Allow), answer
        ended = Report(type="report", v=PROTOCOL_VERSION, op=answer.op, exit=0, duration_ms=1)
        guard.finish(answer.op, ended)
    finally:
        guard.engines.close()
    conn = sqlite3.connect(project / "database" / "app.sqlite")
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0
    finally:
        conn.close()


def test_an_agent_cannot_restore_over_a_production_database(home: Home, daemon: Daemon) -> None:
    install_stand_in(home, "php")
    project = laravel_sqlite_project(home.root / "app")
    assert home.ctl("mark", "production", cwd=project).returncode == 0
    taken = home.ctl("backup", "--json", cwd=project)
    assert taken.returncode == 0, taken.stderr
    backup_id = json.loads(taken.stdout)["backups"][0]["id"]

    home.extra_env["CLAUDECODE"] = "1"
    refused = home.ctl("restore", backup_id, "--yes")
    assert refused.returncode == 77, refused.stderr
    assert b"refuses to replace a production database" in refused.stderr
    assert b"marked production" in refused.stderr
    assert len(json.loads(home.ctl("list-backups", "--json").stdout)) == 1  # nothing ran

    clear_mark_outside_dbguard(project)  # a mark lost with the database still counts
    lost = home.ctl("restore", backup_id, "--yes")
    assert lost.returncode == 77 and b"its mark is gone" in lost.stderr, lost.stderr

    del home.extra_env["CLAUDECODE"]  # a person, in their own terminal
    assert home.ctl("restore", backup_id, "--yes").returncode == 0


def test_an_agent_cannot_restore_over_a_database_its_project_calls_production(
    home: Home, daemon: Daemon, production: Path
) -> None:
    approved = run_in_terminal(  # a person ran a command there, so a backup exists
        ["php", "artisan", "test"], home.env, production, {"Type the database": NAME}
    )
    assert approved.returncode == 0, approved.output
    [backup] = json.loads(home.ctl("list-backups", "--json").stdout)

    home.extra_env["CLAUDECODE"] = "1"
    refused = home.ctl("restore", backup["id"], "--yes")
    assert refused.returncode == 77, refused.stderr
    # dbguardd remembered why: what .env said when it judged the database
    assert b"because APP_ENV=production (.env, line 1)" in refused.stderr

    # Without that register, the backups themselves say what dbguardd judged.
    (home.root / "state" / "dbguard" / FILE_NAME).unlink()
    refused = home.ctl("restore", backup["id"], "--yes")
    assert refused.returncode == 77, refused.stderr
    assert b"judged it so when it backed it up" in refused.stderr


def test_a_production_mark_that_cannot_be_read_is_no_pass(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer holding the lock past dbguard's wait once made a marked database look
    unmarked: the command then ran with no human check once the lock was gone."""
    from dbguard.engines import sqlite as sqlite_engine

    project = laravel_sqlite_project(home.root / "app")  # APP_ENV=local: only the mark says
    assert home.ctl("mark", "production", cwd=project).returncode == 0
    monkeypatch.setattr(sqlite_engine, "_BUSY_TIMEOUT", 0.2)
    database = project / "database" / "app.sqlite"
    writer = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN EXCLUSIVE")  # no reader gets in, the mark included
    read_mark = sqlite_engine.SqliteEngine.marker

    def writer_done_just_after(engine: sqlite_engine.SqliteEngine, target: object) -> object:
        try:
            return read_mark(engine, target)  # type: ignore[arg-type]
        finally:  # the backup after it would find the database free
            if writer.in_transaction:
                writer.execute("ROLLBACK")

    monkeypatch.setattr(sqlite_engine.SqliteEngine, "marker", writer_done_just_after)
    guard = Guard(Config(), home.env)

    try:
        answer = invoke_in_process(guard, home, project, ["php", "artisan", "db:wipe"])
    finally:
        writer.close()
        guard.engines.close()
    assert isinstance(answer, Fail), answer
    assert "locked by another connection" in answer.reason
    assert not list(home.backups.glob("*/*/manifest.json"))


def test_a_database_its_files_called_production_stays_production_when_they_are_edited(
    home: Home, daemon: Daemon
) -> None:
    """An agent refused because .env says APP_ENV=production edits .env and tries again:
    dbguardd remembers what the file said."""
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")
    env_file = project / ".env"
    env_file.write_text(env_file.read_text().replace("APP_ENV=local", "APP_ENV=production"))
    refused = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert refused.returncode == 77, refused.stderr
    assert b"APP_ENV=production (.env, line 1)" in refused.stderr
    # While the file still says so, that is the reason, said once, not also remembered.
    still = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert still.returncode == 77, still.stderr
    assert still.stderr.count(b"APP_ENV=production (.env, line 1)") == 1, still.stderr
    assert b"nothing says so now" not in still.stderr

    env_file.write_text(env_file.read_text().replace("APP_ENV=production", "APP_ENV=local"))
    again = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert again.returncode == 77, again.stderr
    assert (
        b"production because APP_ENV=production (.env, line 1) when dbguard judged it "
        b"production (" in again.stderr
    )
    assert b"dbguard remembers that though nothing says so now" in again.stderr
    assert again.stderr.count(b"because") == 1  # one reason, said once
    assert count_users(project) == 3  # nothing ran


def npm_running_artisan(home: Home, production: Path, script: str, runs: str = "") -> None:
    """A stand-in npm whose `run db:reset` runs `php artisan <script>` as npm would: the
    package script's command, found on PATH (the `php` shim). With `runs`, it runs `php
    artisan <runs>` instead, as a script's program would that dbguard does not read."""
    npm = home.bin / "npm"
    npm.write_text(f"#!/bin/sh\nexec php artisan {runs or script}\n")
    npm.chmod(0o755)
    home.install_shims("npm")
    (production / "package.json").write_text(
        json.dumps({"scripts": {"db:reset": f"php artisan {script}"}})
    )


def test_an_approval_covers_what_the_approved_command_runs(
    home: Home, daemon: Daemon, production: Path
) -> None:
    """The human approved `npm run db:reset`, told it would wipe the production
    database; the `php artisan migrate:fresh` its script runs is not refused again."""
    npm_running_artisan(home, production, "migrate:fresh")
    refused = home.run(["npm", "run", "db:reset"], cwd=production)
    assert refused.returncode == 77, refused.stderr
    assert approve_on_terminal(home, code_from(refused.stderr)).startswith("exit 0")

    allowed = home.run(["npm", "run", "db:reset"], cwd=production)

    assert allowed.returncode == 0, allowed.stderr
    assert count_users(production) is None  # the script's reset ran
    allowed_ops = {r["argv"][0]: r for r in home.operations() if r["decision"] == "allow"}
    outer, inner = allowed_ops["npm"], allowed_ops["php"]
    assert outer["approved"] and inner["argv"] == ["php", "artisan", "migrate:fresh"]
    assert inner["approved_with"] == inner["parent"] == outer["op"]


def test_an_approval_covers_every_step_of_an_approved_script(
    home: Home, daemon: Daemon, production: Path
) -> None:
    """`migrate && test`: approved as a whole, its test run is not asked for again
    after the migration has run (a migration alone takes in no test run)."""
    steps = "php artisan migrate && php artisan test --count-users"
    npm = home.bin / "npm"
    npm.write_text(f"#!/bin/sh\n{steps}\n")
    npm.chmod(0o755)
    home.install_shims("npm")
    (production / "package.json").write_text(json.dumps({"scripts": {"ci": steps}}))
    code = code_from(home.run(["npm", "run", "ci"], cwd=production).stderr)
    assert approve_on_terminal(home, code).startswith("exit 0")

    run = home.run(["npm", "run", "ci"], cwd=production)

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == b"3"  # the test step ran
    approved_with = [r.get("approved_with") for r in home.operations() if r["argv"][0] == "php"]
    assert len(approved_with) == 2 and all(approved_with)


@pytest.mark.parametrize("runs", ["migrate:fresh", "tinker"])
def test_an_approval_does_not_cover_more_than_the_approved_command_does(
    home: Home, daemon: Daemon, production: Path, runs: str
) -> None:
    """Approved as a test run, the script turns out to wipe the database, or to open a
    query client whose SQL could do anything: that is asked for again, and refused
    without a person."""
    npm_running_artisan(home, production, "test", runs=runs)
    code = code_from(home.run(["npm", "run", "db:reset"], cwd=production).stderr)
    assert approve_on_terminal(home, code).startswith("exit 0")

    run = home.run(["npm", "run", "db:reset"], cwd=production)

    assert run.returncode == 77, run.stderr
    assert f"`php artisan {runs}` would touch the PRODUCTION database".encode() in run.stderr
    assert count_users(production) == 3


def test_an_approval_is_not_lent_to_a_process_that_names_it_from_outside(
    home: Home, daemon: Daemon, production: Path
) -> None:
    """DBGUARD_PARENT_OP is in the command's environment, and the op in the log: a
    command that is not run by the approved one gets nothing from naming it."""
    gate = home.root / "go"
    argv = ["php", "artisan", "test", f"--wait-for-file={gate}"]
    code = code_from(home.run(argv, cwd=production).stderr)
    assert approve_on_terminal(home, code).startswith("exit 0")
    approved = subprocess.Popen(
        argv, cwd=production, env=home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: Path(f"{gate}.ready").exists(), "the approved command")
        [running] = [r for r in home.operations() if r["decision"] == "allow"]
        forged = home.run(
            ["php", "artisan", "test", "--wipe"],
            cwd=production,
            env={"DBGUARD_PARENT_OP": running["op"]},
        )
        assert forged.returncode == 77, forged.stderr
        assert b"PRODUCTION" in forged.stderr
        assert count_users(production) == 3
    finally:
        gate.touch()
        approved.communicate(timeout=60)
    assert approved.returncode == 0


def test_a_client_given_the_projects_production_database_directly_is_refused(
    home: Home, daemon: Daemon, production: Path
) -> None:
    """`sqlite3 database/app.sqlite "drop table users"` in a project whose .env says
    production: the file is the one `php artisan` would reach, so it is production
    before any project command has been judged, not only after."""
    install_stand_in(home, "sqlite3")
    home.install_shims("sqlite3")

    run = home.run(["sqlite3", "database/app.sqlite", "drop table users"], cwd=production)

    assert run.returncode == 77, run.stderr
    assert b"production because APP_ENV=production" in run.stderr
    # A file of its own in the same project is judged by what it is.
    scratch = home.run(["sqlite3", "scratch.sqlite", "create table t (x)"], cwd=production)
    assert scratch.returncode == 0, scratch.stderr

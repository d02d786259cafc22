"""The PostgreSQL engine's pure parts: versions, tool choice, connection settings, names."""

from __future__ import annotations

import stat
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from dbguard.engines.base import Target
from dbguard.engines.postgres import (
    ConnSettings,
    Tool,
    _connect_error,
    archive_is_bad,
    choose_tool,
    connection_settings,
    default_tool_dirs,
    find_tools,
    major,
    parse_tool_version,
    scratch_name,
    scrub,
    server_version,
    split_setting_list,
    without_queries,
)
from dbguard.errors import BackupFailed, DatabaseMissing, RestoreFailed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n", (15, 20)),
        ("pg_restore (PostgreSQL) 16.2", (16, 2)),
        ("pg_dump (PostgreSQL) 9.6.24", (9, 6, 24)),
        ("pg_dump (PostgreSQL) 17devel", (17,)),
        ("pg_dump (PostgreSQL) 16beta1", (16,)),
        ("pg_dump: command not found", None),
        ("", None),
    ],
)
def test_tool_versions_are_read_from_version_output(
    text: str, expected: tuple[int, ...] | None
) -> None:
    assert parse_tool_version(text) == expected


def test_server_version_numbers_and_majors() -> None:
    assert server_version(150020) == (15, 20)
    assert server_version(100001) == (10, 1)
    assert server_version(90624) == (9, 6, 24)
    assert major((15, 20)) == (15,)
    assert major((9, 6, 24)) == (9, 6)
    # 9.6 is older than 10, and 9.6 newer than 9.5: tuples compare the right way
    assert major((9, 6, 24)) < major((10, 1)) and major((9, 5)) < major((9, 6, 1))


def tool(path: str, *version: int) -> Tool:
    return Tool(Path(path), version)


def test_the_newest_tool_at_least_as_new_as_the_server_wins() -> None:
    candidates = [
        tool("/usr/lib/postgresql/14/bin/pg_dump", 14, 9),
        tool("/usr/lib/postgresql/16/bin/pg_dump", 16, 2),
        tool("/usr/lib/postgresql/15/bin/pg_dump", 15, 4),
    ]
    assert choose_tool("pg_dump", candidates, (15, 1), []).version == (16, 2)
    assert choose_tool("pg_dump", candidates, (14, 0), []).version == (16, 2)
    # a minor release older than the server's is fine: only the major must fit
    assert choose_tool("pg_dump", candidates[:1], (14, 12), []).version == (14, 9)


def test_among_equal_versions_the_first_found_wins() -> None:
    # the versioned Debian folder comes before PATH's /usr/bin wrapper
    candidates = [
        tool("/usr/lib/postgresql/15/bin/pg_dump", 15, 4),
        tool("/usr/bin/pg_dump", 15, 4),
    ]
    assert choose_tool("pg_dump", candidates, (15, 4), []).path == candidates[0].path


def test_too_old_tools_are_refused_naming_server_and_tool_versions() -> None:
    candidates = [tool("/opt/pg/bin/pg_dump", 13, 2), tool("/usr/bin/pg_dump", 9, 6, 24)]
    with pytest.raises(BackupFailed) as caught:
        choose_tool("pg_dump", candidates, (15, 20), [Path("/opt/pg/bin")])
    message = str(caught.value)
    assert "PostgreSQL 15.20" in message
    assert "13.2 (/opt/pg/bin/pg_dump)" in message and "9.6.24 (/usr/bin/pg_dump)" in message
    assert "postgresql-client-15" in message


def test_no_tool_at_all_says_where_it_looked() -> None:
    with pytest.raises(RestoreFailed) as caught:
        choose_tool("pg_restore", [], (16, 1), [Path("/a"), Path("/b")], RestoreFailed)
    message = str(caught.value)
    assert "pg_restore is not installed" in message
    assert "PostgreSQL 16.1" in message and "/a, /b" in message


def write_tool(folder: Path, name: str, version_line: str, exit_status: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{version_line}'\nexit {exit_status}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_tools_are_found_in_folder_order_with_their_versions(tmp_path: Path) -> None:
    new = write_tool(tmp_path / "new", "pg_dump", "pg_dump (PostgreSQL) 16.3")
    old = write_tool(tmp_path / "old", "pg_dump", "pg_dump (PostgreSQL) 12.1")
    write_tool(tmp_path / "broken", "pg_dump", "pg_dump (PostgreSQL) 17.0", exit_status=1)
    write_tool(tmp_path / "odd", "pg_dump", "something else entirely")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "pg_dump").write_text("not executable")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "pg_dump").symlink_to(new)  # the same binary twice counts once

    folders = ["old", "plain", "missing", "broken", "odd", "new", "link"]
    found = find_tools("pg_dump", [tmp_path / name for name in folders])

    assert found == [Tool(old, (12, 1)), Tool(new, (16, 3))]


def test_default_folders_put_versioned_debian_folders_before_path() -> None:
    dirs = default_tool_dirs("/usr/local/bin:/usr/bin")
    assert dirs[-2:] == [Path("/usr/local/bin"), Path("/usr/bin")]
    versioned = [d for d in dirs if str(d).startswith("/usr/lib/postgresql/")]
    assert dirs[: len(versioned)] == versioned
    # newest first
    numbers = [int(d.parent.name.split(".")[0]) for d in versioned]
    assert numbers == sorted(numbers, reverse=True)


def test_passwords_reach_psycopg_and_the_environment_never_argv() -> None:
    target = Target(
        engine="postgres",
        host="db.example",
        port=6543,
        user="app",
        password=SecretStr("s3cr3t pass"),
        name="shop",
        params={"sslmode": "require", "sslpassword": "keypass", "dbname": "ignored"},
    )
    s = connection_settings(target, env={})

    conninfo = s.tool_conninfo()
    assert "s3cr3t" not in conninfo and "keypass" not in conninfo
    assert "sslmode=require" in conninfo and "dbname=shop" in conninfo
    assert "port=6543" in conninfo and "host=db.example" in conninfo
    assert s.tool_env({"PATH": "/bin"}) == {"PATH": "/bin", "PGPASSWORD": "s3cr3t pass"}
    kwargs = s.psycopg_kwargs()
    assert kwargs["password"] == "s3cr3t pass" and kwargs["sslpassword"] == "keypass"
    assert kwargs["dbname"] == "shop"
    assert "s3cr3t" not in repr(s)


def test_a_socket_file_path_becomes_its_folder_and_port() -> None:
    target = Target(engine="postgres", socket="/run/pg/.s.PGSQL.5433", name="app", params={})
    s = connection_settings(target, env={})
    assert (s.host, s.port) == ("/run/pg", 5433)
    assert s.where == "socket /run/pg:5433"
    folder = connection_settings(Target(engine="postgres", socket="/run/pg", name="app"), env={})
    assert (folder.host, folder.port) == ("/run/pg", None)


def test_a_missing_host_is_made_explicit() -> None:
    s = connection_settings(Target(engine="postgres", name="app"), env={"PGHOST": "pg.local"})
    assert s.host == "pg.local"
    no_env = connection_settings(Target(engine="postgres", name="app", port=1), env={})
    assert no_env.host == "localhost"  # no socket for port 1 anywhere


def test_a_target_without_a_database_name_is_refused() -> None:
    with pytest.raises(BackupFailed, match="has no name"):
        connection_settings(Target(engine="postgres", host="h"), env={})


def test_scrub_removes_the_password_and_anything_shaped_like_one() -> None:
    text = "could not connect: password=hunter2 host=x; PASSWORD = 'a b' and hunter2 again"
    cleaned = scrub(text, "hunter2")
    assert "hunter2" not in cleaned and "'a b'" not in cleaned
    assert cleaned.count("***") == 3


def test_scratch_names_fit_postgres_limit_even_with_multibyte_names() -> None:
    long = "データベース" * 10  # 180 bytes in UTF-8
    name = scratch_name(long, "replaced")
    assert len(name.encode()) <= 63
    assert name.startswith("データ") and "_dbguard_replaced_" in name
    assert scratch_name("app", "verify") != scratch_name("app", "verify")


@pytest.mark.parametrize(
    ("stored", "elements"),
    [
        ('app, "My Schema", public', ["app", "My Schema", "public"]),
        ('"a""b", c', ['a"b', "c"]),
        ('"$user", public', ["$user", "public"]),
        ('""', [""]),
        ("", []),
        ("single", ["single"]),
    ],
)
def test_list_settings_split_like_postgres(stored: str, elements: list[str]) -> None:
    assert split_setting_list(stored) == elements


def settings() -> ConnSettings:
    return connection_settings(
        Target(engine="postgres", host="127.0.0.1", port=5999, user="app", name="shop"), env={}
    )


@pytest.mark.parametrize(
    ("libpq_says", "kind", "words"),
    [
        (
            'connection failed: connection to server at "127.0.0.1", port 5999 failed: '
            "Connection refused\n\tIs the server running on that host?",
            BackupFailed,
            "is not reachable: Connection refused",
        ),
        (
            'connection to server at "127.0.0.1", port 5999 failed: FATAL:  password '
            'authentication failed for user "app"',
            BackupFailed,
            "refused the password for user app",
        ),
        ("fe_sendauth: no password supplied", BackupFailed, "none was given"),
        (
            'connection to server failed: FATAL:  database "shop" does not exist',
            DatabaseMissing,
            "database shop does not exist at 127.0.0.1:5999",
        ),
        ('failed: FATAL:  role "app" does not exist', BackupFailed, "has no user app"),
        (
            'failed: FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "app"',
            BackupFailed,
            "does not accept this connection",
        ),
        ("failed: FATAL:  the database system is starting up", BackupFailed, "refused"),
        (  # MariaDB's port, as libpq tells it with and without sslmode=disable
            'connection failed: connection to server at "127.0.0.1", port 5999 failed: '
            "received invalid response to SSL negotiation: d",
            BackupFailed,
            "what answers at 127.0.0.1:5999 is not a PostgreSQL server",
        ),
        (
            'connection failed: connection to server at "127.0.0.1", port 5999 failed: '
            "expected authentication request from server, but received d",
            BackupFailed,
            "what answers at 127.0.0.1:5999 is not a PostgreSQL server",
        ),
    ],
)
def test_each_connection_failure_has_its_own_message(
    libpq_says: str, kind: type[Exception], words: str
) -> None:
    error = _connect_error(psycopg.OperationalError(libpq_says), settings(), BackupFailed)
    assert type(error) is kind
    assert words in str(error)


def test_a_missing_database_is_not_database_missing_outside_backups() -> None:
    err = psycopg.OperationalError('FATAL:  database "shop" does not exist')
    error = _connect_error(err, settings(), RestoreFailed)
    assert type(error) is RestoreFailed


@pytest.mark.parametrize(
    ("stderr", "bad"),
    [
        ("pg_restore: error: could not read from input file: end of file", True),
        ("pg_restore: error: input file does not appear to be a valid archive", True),
        ("pg_restore: error: did not find magic string in file header", True),
        ("pg_restore: error: unsupported version (1.99) in file header", True),
        ("pg_restore: error: could not find block ID 4242 in archive -- possibly corrupt", True),
        (
            'pg_restore: error: COPY failed for table "t": ERROR:  invalid input syntax '
            'for type integer: "x1"',
            True,
        ),
        ('could not execute query: ERROR:  syntax error at or near "CRATE"', True),
        # the environment's, or possibly: never proof against the backup
        (
            "pg_restore: error: could not execute query: ERROR:  could not extend file "
            '"base/1/2": No space left on device',
            False,
        ),
        ("pg_restore: error: could not execute query: server closed the connection", False),
        ('pg_restore: error: connection to server at "db" (10.0.0.1), port 5432 failed', False),
        ('could not execute query: ERROR:  extension "postgis" is not available', False),
        ("could not execute query: ERROR:  permission denied for schema public", False),
        ("pg_restore: error: could not read from input file: Input/output error", False),
        ("FATAL:  terminating connection due to administrator command", False),
        ("", False),
    ],
)
def test_only_errors_that_prove_an_archive_bad_count_against_it(stderr: str, bad: bool) -> None:
    assert archive_is_bad(stderr) is bad


def test_a_quoted_query_is_cut_to_its_first_line_so_the_error_stays_in_view() -> None:
    # pg_dump whose session was ended mid-dump (pg_terminate_backend): the query it
    # quotes ran to 15 lines and filled the 12 a message shows, hiding the error.
    query = "\n".join(f"  p.col{i}, p.other{i}," for i in range(15))
    stderr = (
        "pg_dump: error: query failed: FATAL:  terminating connection due to "
        "administrator command\n"
        f"pg_dump: detail: Query was: SELECT p.tableoid, p.oid, p.proname,\n{query}\n"
        "  FROM pg_proc p\n"
        "pg_dump: warning: something after it\n"
    )

    said = without_queries(stderr, "pg_dump").splitlines()

    assert said == [
        "pg_dump: error: query failed: FATAL:  terminating connection due to administrator command",
        "pg_dump: detail: Query was: SELECT p.tableoid, p.oid, p.proname,",
        "pg_dump: warning: something after it",
    ]
    # pg_dump before 15 said "error: query was:".
    older = f"pg_dump: error: query failed: x\npg_dump: error: query was: SELECT a,\n{query}\n"
    assert without_queries(older, "pg_dump").splitlines() == [
        "pg_dump: error: query failed: x",
        "pg_dump: error: query was: SELECT a,",
    ]
    # Lines of another kind, and another tool's, are kept as they are.
    other = "pg_restore: error: could not execute query: ERROR:  x\nLINE 1: y\nCommand was: z"
    assert without_queries(other, "pg_restore") == other

"""PostgreSQL backups that pg_restore cannot load as they are, and backups that
row-level security stops: what verify records, what restore and backup say.

The helpers and fixtures are test_postgres_engine's; each test works in its own
throwaway database (and role)."""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dbguard import operations
from dbguard.config import BackupSettings
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.engines.postgres import PostgresEngine, row_security_fix, unresolved_in_function
from dbguard.errors import BackupFailed, RestoreFailed
from dbguard.store import Store
from tests.integration.test_postgres_engine import (
    REASON,
    OnlyEngine,
    engine,
    engines,
    leftovers,
    owned,
    query,
    restore_stand_in,
    run,
    stand_in,
    store,
)

pytestmark = pytest.mark.postgres

__all__ = ["engine", "engines", "owned", "store"]  # fixtures, used by name

# ---- functions whose bodies name things without their schema --------------------------

NORM_INDEX = """
CREATE FUNCTION norm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT lower(t)';
CREATE FUNCTION norm2(t text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT norm(t) || ''!''';
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items VALUES (1, 'A');
CREATE INDEX items_norm ON items (norm2(name));
"""
CODES_CHECK = """
CREATE TABLE ref_codes (code text PRIMARY KEY);
INSERT INTO ref_codes VALUES ('a');
CREATE FUNCTION code_ok(c text) RETURNS boolean LANGUAGE sql STABLE
    AS 'SELECT EXISTS (SELECT 1 FROM ref_codes WHERE code = c)';
CREATE TABLE uses_codes (id int, c text CHECK (code_ok(c)));
INSERT INTO uses_codes VALUES (1, 'a');
"""
MOOD_CHECK = """
CREATE TYPE mood AS ENUM ('ok', 'bad');
CREATE FUNCTION is_mood(t text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
    AS $$BEGIN PERFORM t::mood; RETURN true; END$$;
CREATE TABLE moods (id int, t text CHECK (is_mood(t)));
INSERT INTO moods VALUES (1, 'ok');
"""
COUNT_VIEW = """
CREATE TABLE ref_codes (code text PRIMARY KEY);
INSERT INTO ref_codes VALUES ('a');
CREATE FUNCTION n_codes() RETURNS bigint LANGUAGE sql STABLE AS 'SELECT count(*) FROM ref_codes';
CREATE MATERIALIZED VIEW code_count AS SELECT n_codes() AS n;
"""


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        (
            NORM_INDEX,
            [
                "building index items_norm on public.items",
                "runs function public.norm2(text)",
                "refers to function norm without a schema",
                "(public.norm)",
                "`ALTER FUNCTION public.norm2(text) SET search_path = public`",
            ],
        ),
        (
            CODES_CHECK,
            [
                "loading the rows of table uses_codes",
                "runs function public.code_ok(text)",
                "refers to relation ref_codes without a schema",
                '(relation "ref_codes" does not exist)',
                "(public.ref_codes)",
                "`ALTER FUNCTION public.code_ok(text) SET search_path = public`",
            ],
        ),
        (
            MOOD_CHECK,
            [
                "loading the rows of table moods",
                "runs function public.is_mood(text)",  # PL/pgSQL
                "refers to type mood without a schema",
                "`ALTER FUNCTION public.is_mood(text) SET search_path = public`",
            ],
        ),
        (
            COUNT_VIEW,
            [
                "filling materialized view public.code_count",
                "runs function public.n_codes()",
                "refers to relation ref_codes without a schema",
            ],
        ),
    ],
    ids=["index on a SQL function", "CHECK reading a table", "PL/pgSQL cast", "mat view"],
)
def test_verify_marks_failed_a_backup_whose_function_names_something_without_its_schema(
    pg_database: Target, store: Store, engines: Engines, schema: str, said: list[str]
) -> None:
    run(pg_database, schema)
    backup = operations.take_backup(store, engines, pg_database, REASON)

    result = operations.verify_backup(store, engines, backup)

    assert not result.ok
    [problem] = result.problems
    assert problem.startswith("this backup cannot be restored as it is: pg_restore stopped ")
    assert "pg_restore runs with an empty search_path" in problem, problem
    assert f"every new one of {pg_database.name} fail the same way" in problem, problem
    for part in said:
        assert part in problem, problem
    assert store.get(backup.id).verified == result  # what status and list-backups flag
    assert leftovers(pg_database) == []


def test_restore_of_such_a_backup_explains_it_and_changes_nothing(
    pg_database: Target, store: Store, engines: Engines
) -> None:
    run(pg_database, CODES_CHECK)
    backup = operations.take_backup(store, engines, pg_database, REASON)
    run(pg_database, "INSERT INTO ref_codes VALUES ('after')")

    with pytest.raises(RestoreFailed) as caught:
        operations.restore_backup(store, engines, backup, pg_database, REASON)

    err = caught.value
    assert "pg_restore runs with an empty search_path" in err.problem, err.problem
    assert "refers to relation ref_codes without a schema" in err.problem, err.problem
    assert err.problem.endswith(f"; the database {pg_database.name} was not changed")
    assert "`ALTER FUNCTION public.code_ok(text) SET search_path = public`" in err.fix
    assert "pg_restore --section=pre-data -d NEW" in err.fix, err.fix
    assert "--section=data --section=post-data" in err.fix, err.fix
    assert query(pg_database, "SELECT code FROM ref_codes ORDER BY 1") == [("a",), ("after",)]
    assert leftovers(pg_database) == []


def test_the_fix_it_gives_makes_the_next_backup_verify(
    pg_database: Target, store: Store, engines: Engines
) -> None:
    run(pg_database, NORM_INDEX)
    bad = operations.take_backup(store, engines, pg_database, REASON)
    assert not operations.verify_backup(store, engines, bad).ok

    run(pg_database, "ALTER FUNCTION public.norm2(text) SET search_path = public")
    good = operations.take_backup(store, engines, pg_database, REASON)

    result = operations.verify_backup(store, engines, good)
    assert result.ok, result.problems


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command is not installed")
def test_the_by_hand_restore_it_gives_brings_the_rows_back(
    pg_database: Target, store: Store, engines: Engines
) -> None:
    """The steps `restore` names for this backup, run as it words them."""
    run(pg_database, CODES_CHECK)
    backup = operations.take_backup(store, engines, pg_database, REASON)
    with pytest.raises(RestoreFailed) as caught:
        operations.restore_backup(store, engines, backup, pg_database, REASON)
    steps = re.findall(r"`([^`]+)`", caught.value.fix.split("by hand", 1)[1])
    assert len(steps) == 4 and steps[3] == "--section=data --section=post-data", steps
    new = pg_database.model_copy(update={"name": f"dbguard_test_{secrets.token_hex(4)}"})
    admin = pg_database.model_copy(update={"name": "postgres"})
    run(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(new.name))))
    conninfo = make_conninfo(host=new.host, port=new.port, user=new.user, dbname=new.name)
    unpack = steps[0].replace("<the backup's folder>", shlex.quote(str(store.folder(backup))))
    pre_data = steps[1].replace("-d NEW", f"-d {shlex.quote(conninfo)}")
    here = store.folder(backup).parent
    try:
        for step in (unpack, pre_data):
            subprocess.run(["sh", "-ec", step], check=True, capture_output=True, cwd=here)
        run(new, steps[2])
        rest = pre_data.replace("--section=pre-data", steps[3])
        subprocess.run(["sh", "-ec", rest], check=True, capture_output=True, cwd=here)
        assert query(new, "SELECT id, c FROM uses_codes") == [(1, "a")]
    finally:
        run(
            admin,
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(str(new.name))
            ),
        )


# What pg_restore printed for NORM_INDEX (PostgreSQL 15), for the cases below.
NORM_INDEX_ERROR = """\
pg_restore: error: could not execute query: ERROR:  function norm(text) does not exist
LINE 1: SELECT norm(t) || '!'
               ^
HINT:  No function matches the given name and argument types. You might need to add \
explicit type casts.
QUERY:  SELECT norm(t) || '!'
CONTEXT:  SQL function "norm2" during inlining
Command was: CREATE INDEX items_norm ON public.items USING btree (public.norm2(name));
"""


def test_the_same_error_without_the_functions_in_the_restored_copy_marks_nothing(
    pg_database: Target, store: Store, engines: Engines, tmp_path: Path
) -> None:
    """pg_restore's words alone prove nothing: the function and the name it did not
    find must be in the copy it was filling. Here a stand-in prints them word for word
    and restores nothing, as a failure of the server's own might look."""
    run(pg_database, NORM_INDEX)
    backup = operations.take_backup(store, engines, pg_database, REASON)
    restore_stand_in(tmp_path / "tools", NORM_INDEX_ERROR.removeprefix("pg_restore: error: "))
    failing = OnlyEngine(PostgresEngine(BackupSettings(), tool_dirs=[tmp_path / "tools"]))
    try:
        with pytest.raises(RestoreFailed) as caught:
            operations.verify_backup(store, failing, backup)
    finally:
        failing.close()

    assert "not marked failed" in str(caught.value), str(caught.value)
    assert "search_path" not in caught.value.problem
    assert store.get(backup.id).verified is None
    assert leftovers(pg_database) == []


@pytest.mark.parametrize(
    "stderr",
    [
        # A function pg_dump named itself, not found: it is qualified, and missing from
        # this server (an extension's), not unqualified in a body.
        "pg_restore: error: could not execute query: ERROR:  function "
        "public.st_x(public.geometry) does not exist\n"
        "Command was: CREATE INDEX i ON public.t USING btree (public.st_x(g));\n",
        # Not from inside a function's body: no CONTEXT naming one.
        'pg_restore: error: could not execute query: ERROR:  type "public.geometry" does '
        "not exist\nLINE 3:     g public.geometry\n"
        "Command was: CREATE TABLE public.t (\n    id integer,\n    g public.geometry\n);\n",
        # Environment failures.
        'pg_restore: error: could not execute query: ERROR:  extension "postgis" is not '
        "available\nCommand was: CREATE EXTENSION IF NOT EXISTS postgis WITH SCHEMA public;\n",
        'pg_restore: error: could not execute query: ERROR:  role "app" does not exist\n'
        "Command was: ALTER TABLE public.items OWNER TO app;\n",
        "pg_restore: error: could not execute query: ERROR:  could not extend file "
        '"base/16384/16390": No space left on device\nCONTEXT:  SQL function "norm2" '
        "during inlining\nCommand was: CREATE INDEX items_norm ON public.items USING "
        "btree (public.norm2(name));\n",
        # A statement that runs no function of the user's.
        NORM_INDEX_ERROR.replace(
            "Command was: CREATE INDEX items_norm ON public.items USING btree "
            "(public.norm2(name));",
            "Command was: SELECT pg_catalog.set_config('search_path', '', false);",
        ),
        # pg_restore went on past it (without --exit-on-error) and stopped elsewhere.
        NORM_INDEX_ERROR + "pg_restore: error: could not execute query: ERROR:  out of memory\n",
    ],
    ids=[
        "qualified name",
        "no function context",
        "missing extension",
        "missing role",
        "disk full",
        "other statement",
        "later error",
    ],
)
def test_only_the_forms_of_a_name_unresolved_in_a_body_are_read_as_such(stderr: str) -> None:
    assert unresolved_in_function(stderr) is None


def test_the_form_of_a_name_unresolved_in_a_body_is_read() -> None:
    found = unresolved_in_function(NORM_INDEX_ERROR)
    assert found is not None
    assert (found.kind, found.name, found.arguments, found.caller, found.doing) == (
        "function",
        "norm",
        1,
        "norm2",
        "building index items_norm on public.items",
    )


# ---- row-level security ---------------------------------------------------------------


def test_a_backup_by_the_owner_under_force_row_level_security_says_what_gets_past_it(
    owned: Target, store: Store, engines: Engines
) -> None:
    run(
        owned,
        "CREATE TABLE notes (id int, author text)",
        "INSERT INTO notes VALUES (1, 'someone else')",
        "ALTER TABLE notes ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE notes FORCE ROW LEVEL SECURITY",
        "CREATE POLICY mine ON notes USING (author = current_user)",
    )

    with pytest.raises(BackupFailed) as failed:
        operations.take_backup(store, engines, owned, REASON)

    fix = failed.value.fix
    assert "row-level security policy for table" in failed.value.problem
    assert "pg_read_all_data TO" not in fix, fix  # it gets past no policy
    assert "FORCE ROW LEVEL SECURITY, so its policies bind its owner" in fix, fix
    assert f"`ALTER ROLE {owned.user} BYPASSRLS`" in fix, fix
    assert "`ALTER TABLE notes NO FORCE ROW LEVEL SECURITY`" in fix, fix

    # Both ways out it names work.
    admin = owned.model_copy(update={"name": "postgres", "user": "postgres"})
    role = sql.Identifier(str(owned.user))
    run(admin, sql.SQL("ALTER ROLE {} BYPASSRLS").format(role))
    assert operations.take_backup(store, engines, owned, REASON).tables == {"public.notes": 1}
    run(admin, sql.SQL("ALTER ROLE {} NOBYPASSRLS").format(role))
    run(owned, "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY")
    assert operations.take_backup(store, engines, owned, REASON).tables == {"public.notes": 1}


@pytest.fixture
def reader(pg_database: Target) -> Iterator[Target]:
    """pg_database as a login role that is not its owner."""
    role = f"dbguard_test_reader_{secrets.token_hex(4)}"
    admin = pg_database.model_copy(update={"name": "postgres"})
    run(admin, sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield pg_database.model_copy(update={"user": role})
    finally:
        run(pg_database, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        run(admin, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_backup_by_a_reader_under_row_level_security_is_not_told_to_get_select(
    pg_database: Target, reader: Target, store: Store, engines: Engines
) -> None:
    run(
        pg_database,
        "CREATE TABLE notes (id int, author text)",
        "INSERT INTO notes VALUES (1, 'someone else')",
        "ALTER TABLE notes ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY mine ON notes USING (author = current_user)",
        sql.SQL("GRANT SELECT ON notes TO {}").format(sql.Identifier(str(reader.user))),
    )

    with pytest.raises(BackupFailed) as failed:
        operations.take_backup(store, engines, reader, REASON)

    fix = failed.value.fix
    assert "row-level security policies on table notes apply to" in fix, fix
    assert "pg_read_all_data TO" not in fix and "binds its owner" not in fix, fix
    assert f"`ALTER ROLE {reader.user} BYPASSRLS`" in fix, fix


# pg_dump's words when it, not the row counts, meets the table first.
PG_DUMP_FORCED = """\
pg_dump: error: query failed: ERROR:  query would be affected by row-level security \
policy for table "My Notes"
HINT:  To disable the policy for the table's owner, use ALTER TABLE NO FORCE ROW LEVEL \
SECURITY.
pg_dump: detail: Query was: COPY public."My Notes" (id, author) TO stdout;
"""


def test_pg_dumps_own_row_level_security_error_gets_the_same_fix() -> None:
    fix = row_security_fix(PG_DUMP_FORCED, "app")
    assert fix is not None
    assert '`ALTER TABLE "My Notes" NO FORCE ROW LEVEL SECURITY`' in fix
    assert "`ALTER ROLE app BYPASSRLS`" in fix
    assert row_security_fix("ERROR:  permission denied for table notes", "app") is None


def test_a_backup_pg_dump_stops_on_row_level_security_gets_that_fix(
    pg_database: Target, store: Store, tmp_path: Path
) -> None:
    """Which of pg_dump and the row counts meets the table first is chance: here a
    stand-in pg_dump meets it, with pg_dump's own words, while the counts succeed."""
    run(pg_database, "CREATE TABLE t (x int)")
    stand_in(tmp_path / "tools", "99.0", f"cat >&2 <<'EOF'\n{PG_DUMP_FORCED}EOF\nexit 1")
    failing = OnlyEngine(PostgresEngine(BackupSettings(), tool_dirs=[tmp_path / "tools"]))
    try:
        with pytest.raises(BackupFailed) as failed:
            operations.take_backup(store, failing, pg_database, REASON)
    finally:
        failing.close()

    assert "pg_dump failed with exit status 1" in failed.value.problem
    assert '`ALTER TABLE "My Notes" NO FORCE ROW LEVEL SECURITY`' in failed.value.fix
    assert f"`ALTER ROLE {pg_database.user} BYPASSRLS`" in failed.value.fix

"""Discovery: the core, the generic sources (DATABASE_URL, PG*, .dbguard.toml) and Laravel,
including the incidents (a cached config, an ignored .env.testing, :memory: tests).

Pure: files come from dicts or from the fixture projects through a reader."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from dbguard.discovery import NO_DATABASE, FileReader, FolderLister, Found, discover
from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.project import (
    DiscoveryCache,
    ProjectFiles,
    StampedCache,
    argument_roots,
    find_root,
)
from dbguard.discovery.project_config import classify_with_project
from dbguard.discovery.signs import workspace_folders
from dbguard.engines.base import Target
from dbguard.paths import SETTLED_NS
from dbguard.production import ProductionSettings, classify_production
from dbguard.rules import Classifier, Kind, Operation, Script, builtin_catalog

ROOT = Path("/srv/app")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "projects"


def operation(
    kind: Kind = Kind.MIGRATE,
    framework: str | None = "laravel",
    tool: str = "artisan",
    hints: Mapping[str, str] | None = None,
    assignments: Mapping[str, str] | None = None,
    command: str = "",
) -> Operation:
    return Operation(tool, kind, command, framework, dict(hints or {}), dict(assignments or {}))


def lister(files: Mapping[str, str]) -> FolderLister:
    """Lists the folders the `files` paths imply, as ProjectFiles.listdir would."""

    def listdir(folder: str) -> list[str] | None:
        prefix = f"{folder}/" if folder else ""
        names = {p[len(prefix) :].split("/")[0] for p in files if p.startswith(prefix)}
        return sorted(names) if names else None

    return listdir


def run(
    files: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    *,
    root: Path = ROOT,
    cwd: Path | None = None,
    **op: object,
) -> Found:
    return discover(
        root,
        dict(files).get,
        dict(env or {}),
        operation(**op),  # type: ignore[arg-type]
        cwd=cwd,
        listdir=lister(files),
    )


def fixture(name: str) -> FileReader:
    """Reads a fixture project's files (nothing else touches the disk)."""
    base = FIXTURES / name

    def read(relative: str) -> str | None:
        path = base / relative
        return path.read_text(encoding="utf-8") if path.is_file() else None

    return read


def run_fixture(
    name: str, env: Mapping[str, str] | None = None, **op: object
) -> tuple[Found, Path]:
    root = Path("/projects") / name
    return discover(root, fixture(name), dict(env or {}), operation(**op)), root  # type: ignore[arg-type]


def only(found: Found) -> Target:
    assert len(found.targets) == 1, [t.label for t in found.targets]
    return found.targets[0]


def keys(found: Found) -> set[str]:
    return {t.key for t in found.targets}


# ---- Laravel: ordinary commands --------------------------------------------------------------


def test_laravel_mysql_from_env_with_every_field() -> None:
    found, _ = run_fixture("laravel")
    target = only(found)
    assert (target.engine, target.host, target.port, target.name) == (
        "mysql",
        "127.0.0.1",
        3306,
        "shop",
    )
    assert target.user == "shop"
    assert target.password is not None and target.password.get_secret_value() == "s3cr#t pass"
    assert target.source.startswith(".env (DB_CONNECTION, DB_HOST, DB_PORT, DB_DATABASE")
    assert "config/database.php" in found.looked
    facts = found.facts_for(target)
    assert [str(s) for look_up in facts.variables for s in look_up("APP_ENV")] == [
        "APP_ENV=local (.env, line 2)"
    ]
    assert str(facts.fields["host"]) == "DB_HOST=127.0.0.1 (.env, line 4)"


@pytest.mark.parametrize(
    ("connection", "engine", "port"),
    [("pgsql", "postgres", 5432), ("mysql", "mysql", 3306), ("mariadb", "mysql", 3306)],
)
def test_laravel_server_connections(connection: str, engine: str, port: int) -> None:
    env = (
        f"DB_CONNECTION={connection}\nDB_HOST=db\nDB_DATABASE=app\nDB_USERNAME=u\n"
        f"DB_SOCKET=/run/db.sock\n"
    )
    target = only(run({"artisan": "", ".env": env}))
    assert (target.engine, target.host, target.port, target.socket) == (
        engine,
        "db",
        port,
        "/run/db.sock",
    )


def test_laravel_sqlite_default_path_and_absolute_path() -> None:
    target = only(run({"artisan": "", ".env": "DB_CONNECTION=sqlite\n"}))
    assert target.path == "/srv/app/database/database.sqlite"
    target = only(
        run({"artisan": "", ".env": "DB_CONNECTION=sqlite\nDB_DATABASE=/var/db/app.sqlite\n"})
    )
    assert target.path == "/var/db/app.sqlite"


def test_laravel_default_connection_is_read_from_config_database_php() -> None:
    files = {
        "artisan": "",
        ".env": "DB_DATABASE=shop\n",
        "config/database.php": "<?php return ['default' => env('DB_CONNECTION', 'pgsql')];",
    }
    assert only(run(files)).engine == "postgres"


def test_laravel_database_option_picks_the_connection() -> None:
    files = {"artisan": "", ".env": "DB_CONNECTION=mysql\nDB_DATABASE=shop\n"}
    target = only(run(files, hints={"connection": "pgsql"}))
    assert (target.engine, target.name, target.port) == ("postgres", "shop", 5432)


def test_laravel_env_option_loads_that_env_file_instead_of_env() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=sqlite\nDB_DATABASE=database/local.sqlite\n",
        ".env.staging": "DB_CONNECTION=sqlite\nDB_DATABASE=database/staging.sqlite\n",
    }
    found = run(files, hints={"env": "staging"})
    assert only(found).path == "/srv/app/database/staging.sqlite"
    assert "loads .env.staging instead of .env" in only(found).source
    # APP_ENV from the real environment does the same
    found = run(files, {"APP_ENV": "staging"})
    assert only(found).path == "/srv/app/database/staging.sqlite"


def test_laravel_db_url_wins_and_db_settings_fill_in() -> None:
    files = {
        "artisan": "",
        ".env": (
            "DB_CONNECTION=pgsql\nDB_URL=postgresql://db.example.com/shop\n"
            "DB_USERNAME=shop\nDB_PASSWORD=p%w\n"
        ),
    }
    target = only(run(files))
    assert (target.host, target.name, target.user) == ("db.example.com", "shop", "shop")
    assert target.password is not None and target.password.get_secret_value() == "p%w"


def test_laravel_unsupported_driver_is_named() -> None:
    with pytest.raises(DiscoveryError, match=r"\.env, line 1: DB_CONNECTION=sqlsrv"):
        run({"artisan": "", ".env": "DB_CONNECTION=sqlsrv\n"})


def test_laravel_custom_connection_needs_dbguard_toml() -> None:
    files = {"artisan": "", ".env": "DB_CONNECTION=tenant\n"}
    with pytest.raises(DiscoveryError, match=r"'tenant' is not one of Laravel's built-in"):
        run(files)
    files[".dbguard.toml"] = '[[database]]\nurl = "mysql://root@127.0.0.1/tenant"\n'
    found = run(files)
    assert only(found).name == "tenant"
    assert any("'tenant'" in w for w in found.warnings)


# ---- Laravel: test runs ------------------------------------------------------------------------


def test_laravel_test_run_uses_env_testing_and_is_isolated() -> None:
    found, _ = run_fixture("laravel", kind=Kind.TEST)
    target = only(found)
    assert target.name == "shop_test"
    assert "the database this test run is configured to use" in target.source
    assert "APP_ENV=testing (phpunit.xml, line 8) loads .env.testing" in target.source
    assert "phpunit.xml" in found.looked and ".env.testing" in found.looked
    assert not found.warnings


def test_laravel_env_testing_ignored_because_the_shell_exports_app_env() -> None:
    # The incident: APP_ENV=local in the environment beats phpunit.xml's non-forced
    # <env>, so .env.testing is ignored and the tests run against .env's database.
    found, _ = run_fixture("laravel", {"APP_ENV": "local"}, kind=Kind.TEST)
    target = only(found)
    assert target.name == "shop"
    assert (
        "the application database, backed up too because the tests take DB_DATABASE from .env"
        in target.source
    )
    assert any("ignore .env.testing" in w and 'force="true"' in w for w in found.warnings)


def test_laravel_forced_phpunit_env_beats_the_environment() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n",
        ".env.testing": "DB_CONNECTION=sqlite\nDB_DATABASE=database/test.sqlite\n",
        "phpunit.xml": (
            '<phpunit><php><env name="APP_ENV" value="testing" force="true"/></php></phpunit>'
        ),
    }
    found = run(files, {"APP_ENV": "local"}, kind=Kind.TEST)
    assert only(found).path == "/srv/app/database/test.sqlite"


def test_laravel_phpunit_server_variables_always_win() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n",
        "phpunit.xml": (
            '<phpunit><php><server name="APP_ENV" value="testing"/>'
            '<server name="DB_DATABASE" value="database/server.sqlite"/></php></phpunit>'
        ),
    }
    found = run(files, {"DB_DATABASE": "database/env.sqlite"}, kind=Kind.TEST)
    assert only(found).path == "/srv/app/database/server.sqlite"


def test_laravel_env_testing_absent_falls_through_to_env() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n",
        "phpunit.xml": '<phpunit><php><env name="APP_ENV" value="testing"/></php></phpunit>',
    }
    found = run(files, kind=Kind.TEST)
    target = only(found)
    assert target.path == "/srv/app/database/app.sqlite"
    assert ".env.testing is absent, so Laravel reads .env" in target.source
    assert "backed up too because the tests take DB_DATABASE from .env" in target.source


def test_laravel_test_run_with_nothing_setting_app_env_also_backs_up_the_main_database() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n",
        ".env.testing": "DB_CONNECTION=sqlite\nDB_DATABASE=database/test.sqlite\n",
    }
    found = run(files, kind=Kind.TEST)
    assert keys(found) == {
        "sqlite:/srv/app/database/test.sqlite",
        "sqlite:/srv/app/database/app.sqlite",
    }
    main = next(t for t in found.targets if t.path and t.path.endswith("app.sqlite"))
    assert "nothing sets APP_ENV=testing" in main.source


def test_laravel_phpunit_memory_database_is_a_note_not_a_target() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=mysql\nDB_DATABASE=shop\n",
        "phpunit.xml": (
            '<phpunit><php><env name="APP_ENV" value="testing"/>'
            '<env name="DB_CONNECTION" value="sqlite"/>'
            '<env name="DB_DATABASE" value=":memory:"/></php></phpunit>'
        ),
    }
    found = run(files, kind=Kind.TEST)
    assert found.targets == []
    assert any(":memory:" in note for note in found.notes)


def test_laravel_test_run_reads_the_phpunit_file_it_is_given() -> None:
    # `php artisan test -c phpunit.pg.xml`: that file's database, not phpunit.xml's.
    memory = '<env name="DB_CONNECTION" value="sqlite"/><env name="DB_DATABASE" value=":memory:"/>'
    pgsql = '<env name="DB_CONNECTION" value="pgsql"/><env name="DB_DATABASE" value="shop_test"/>'
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=mysql\nDB_DATABASE=shop\n",
        "phpunit.xml": f"<phpunit><php>{memory}</php></phpunit>",
        "phpunit.pg.xml": f"<phpunit><php>{pgsql}</php></phpunit>",
    }
    argv = ["php", "artisan", "test", "-c", "phpunit.pg.xml"]
    classified = Classifier(builtin_catalog()).classify(argv)
    assert classified is not None
    found = run(files, kind=Kind.TEST, hints=classified.hints)
    assert ("postgres", "shop_test") in [(t.engine, t.name) for t in found.targets]
    assert not any(":memory:" in note for note in found.notes)
    # -c a folder: the phpunit.xml in it
    folder = {**files, "tests/pg/phpunit.xml": files.pop("phpunit.pg.xml")}
    found = run(folder, kind=Kind.TEST, hints={"config": "tests/pg"})
    assert ("postgres", "shop_test") in [(t.engine, t.name) for t in found.targets]


def test_laravel_cached_config_test_run_reaches_production() -> None:
    # The incident: phpunit.xml says :memory:, but bootstrap/cache/config.php wins and
    # names the production database. dbguard backs up what the cache names and the
    # .env database, and warns.
    found, root = run_fixture("laravel-cached", kind=Kind.TEST)
    by_engine = {t.engine: t for t in found.targets}
    cached = by_engine["postgres"]
    assert (cached.host, cached.port, cached.name, cached.user) == (
        "db.prod.example.com",
        5432,
        "shop",
        "shop",
    )
    assert cached.password is not None and cached.password.get_secret_value() == "pa'ss"
    assert cached.params == {"sslmode": "require"}
    assert cached.source.startswith("bootstrap/cache/config.php (database.connections.pgsql)")
    assert by_engine["sqlite"].path == f"{root}/database/app.sqlite"
    assert (
        "the application database, backed up too because bootstrap/cache/config.php exists"
        in by_engine["sqlite"].source
    )
    assert any(
        "bootstrap/cache/config.php" in w and "php artisan config:clear" in w
        for w in found.warnings
    )
    assert any(":memory:" in n for n in found.notes)
    verdict = classify_production(cached, {}, facts=found.facts_for(cached))
    assert verdict.production
    assert (
        "production because APP_ENV=production (bootstrap/cache/config.php (app.env))"
        in verdict.reasons
    )
    assert any(
        "host=db.prod.example.com" in r and "not a development host" in r for r in verdict.reasons
    )


def test_laravel_cached_config_wins_for_ordinary_commands_too() -> None:
    found, _ = run_fixture("laravel-cached")
    assert only(found).host == "db.prod.example.com"
    assert any("ignores .env, which names a different database" in w for w in found.warnings)


def test_laravel_cached_config_connection_option_and_missing_connection() -> None:
    found, _ = run_fixture("laravel-cached", hints={"connection": "sqlite"})
    assert only(found).path == "/srv/shop/database/database.sqlite"
    with pytest.raises(DiscoveryError, match="cached config has no database connection 'mysql'"):
        run_fixture("laravel-cached", hints={"connection": "mysql"})


def test_laravel_unreadable_cached_config_falls_back_to_env_and_warns() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n",
        "bootstrap/cache/config.php": "<?php\nreturn array(\n  'database' => load_it(),\n);\n",
    }
    found = run(files)
    assert only(found).path == "/srv/app/database/app.sqlite"
    [warning] = found.warnings
    assert "bootstrap/cache/config.php exists but dbguard cannot read" in warning
    assert "line 3" in warning and "php artisan config:clear" in warning


def test_laravel_config_cache_location_from_app_config_cache() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=sqlite\n",
        "storage/config.php": (
            "<?php return ['database' => ['default' => "
            "'sqlite', 'connections' => ['sqlite' => ['driver' => 'sqlite', "
            "'database' => '/data/cached.sqlite']]]];"
        ),
    }
    found = run(files, {"APP_CONFIG_CACHE": "storage/config.php"})
    assert only(found).path == "/data/cached.sqlite"


# ---- bad input: file and line, never a crash -------------------------------------------------


def test_malformed_env_line_names_file_and_line() -> None:
    with pytest.raises(DiscoveryError, match=r"^\.env, line 3: cannot parse 'DB HOST=x'"):
        run({"artisan": "", ".env": "APP_ENV=local\nDB_CONNECTION=mysql\nDB HOST=x\n"})


@pytest.mark.parametrize("connection", ["sqlite", "pgsql"])
def test_a_nul_byte_in_env_names_file_and_line(connection: str) -> None:
    env = f"DB_CONNECTION={connection}\nDB_DATABASE=database/app.sqlite\0junk\n"
    with pytest.raises(DiscoveryError, match=r"^\.env, line 2: DB_DATABASE contains a NUL"):
        run({"artisan": "", ".env": env})
    with pytest.raises(DiscoveryError, match=r"database\[0\]\): the database's path contains"):
        run({"artisan": "", ".dbguard.toml": '[[database]]\nurl = "sqlite:///a\\u0000b"\n'})


def test_unparseable_database_url_names_file_and_line() -> None:
    with pytest.raises(DiscoveryError, match=r"^\.env, line 2: .*does not parse") as info:
        run(
            {".env": "APP_ENV=local\nDATABASE_URL=postgres://u:secret@host:notaport/db\n"},
            framework=None,
        )
    assert "secret" not in str(info.value)
    with pytest.raises(DiscoveryError, match=r"^\.env, line 1: 'nonsense' is not a database URL"):
        run({".env": "DATABASE_URL=nonsense\n"}, framework=None)


def test_phpunit_xml_that_is_not_xml_names_file_and_line() -> None:
    files = {
        "artisan": "",
        ".env": "",
        "phpunit.xml": "<phpunit>\n  <php>\n    <env name='A'>\n</phpunit>\n",
    }
    with pytest.raises(
        DiscoveryError, match=r"^phpunit\.xml, line 4: not valid XML: mismatched tag"
    ):
        run(files, kind=Kind.TEST)


def test_phpunit_xml_entity_declarations_are_refused() -> None:
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE p [\n<!ENTITY a "aaaaaaaaaa">\n]>\n<phpunit>&a;</phpunit>'
    )
    with pytest.raises(
        DiscoveryError, match=r"phpunit\.xml, line 3: not accepted: it declares the entity 'a'"
    ):
        run({"artisan": "", "phpunit.xml": bomb}, kind=Kind.TEST)


# ---- generic: DATABASE_URL, PG*, nothing found ------------------------------------------------


def test_database_url_always_contributes_and_the_environment_wins() -> None:
    files = {"artisan": "", ".env": "DB_CONNECTION=sqlite\nDATABASE_URL=mysql://a@h1/one\n"}
    found = run(files, {"DATABASE_URL": "postgres://b@h2/two"})
    assert keys(found) == {"sqlite:/srv/app/database/database.sqlite", "postgres://b@h2:5432/two"}
    url_target = next(t for t in found.targets if t.engine == "postgres")
    assert url_target.source == "the invoking environment (DATABASE_URL) — DATABASE_URL"


def test_pg_variables_fill_what_a_url_leaves_out() -> None:
    found = run(
        {".env": "DATABASE_URL=postgresql:///app\n"},
        {
            "PGHOST": "db.prod.example.com",
            "PGPORT": "6432",
            "PGUSER": "deploy",
            "PGPASSWORD": "pw",
            "PGSSLMODE": "verify-full",
        },
        framework=None,
    )
    target = only(found)
    assert (target.host, target.port, target.user, target.name) == (
        "db.prod.example.com",
        6432,
        "deploy",
        "app",
    )
    assert target.params == {"sslmode": "verify-full"}
    assert target.password is not None and target.password.get_secret_value() == "pw"
    assert (
        "with PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE from the environment" in target.source
    )
    assert (
        str(found.facts_for(target).fields["host"])
        == "PGHOST=db.prod.example.com (the invoking environment)"
    )


def test_pg_socket_folder_in_pghost() -> None:
    target = only(
        run({}, {"DATABASE_URL": "postgresql:///app", "PGHOST": "/run/postgresql"}, framework=None)
    )
    assert (target.host, target.socket) == (None, "/run/postgresql")


def test_nothing_found_lists_where_it_looked() -> None:
    with pytest.raises(DiscoveryError, match="could not find its database") as info:
        run({}, framework=None)
    assert "DATABASE_URL" in str(info.value) and ".dbguard.toml" in str(info.value)


def test_nothing_found_for_dbguardctl_names_the_command_without_a_kind() -> None:
    # `dbguardctl backup` in a folder with no database: the kind it asks under
    # (migrate) is no business of the person who typed it.
    with pytest.raises(DiscoveryError) as info:
        run({}, framework=None, tool="dbguardctl backup")
    assert str(info.value).startswith("dbguardctl backup could not find a database in /srv/app")
    assert "(migrate)" not in str(info.value)


# ---- a test run in a project with no database ------------------------------------------------

NO_SIGNS = {
    "composer.json": '{"require-dev": {"orchestra/testbench": "^9"}}',
    "phpunit.xml": '<phpunit><php><env name="APP_KEY" value="x"/></php></phpunit>',
    "setup.py": 'setup(name="lib", classifiers=["Framework :: Django"])\n',
    "docs/conf.py": "",
    "pyproject.toml": '[project]\nname = "lib"\ndependencies = ["requests", "attrs>=23"]\n'
    '[dependency-groups]\ndev = ["pytest", {include-group = "lint"}]\n',
    "requirements-dev.txt": "-r requirements.txt\n-e .\npytest  # sqlalchemy later\n",
    "package.json": '{"dependencies": {"react": "^18"}, "devDependencies": {"vitest": "^2"}}',
    "Gemfile": "source 'https://rubygems.org'\ngem 'rspec', '~> 3'\n",
    ".env": "SENTRY_DSN=https://key@sentry.example.com/1\nREDIS_DB=0\nAPI_URL=http://x\n",
}


@pytest.mark.parametrize(
    ("framework", "tool"),
    [("python", "pytest"), (None, "vitest"), ("rails", "rspec"), ("laravel", "phpunit")],
)
def test_a_test_run_in_a_project_with_no_sign_of_a_database_needs_no_backup(
    framework: str | None, tool: str
) -> None:
    found = run(NO_SIGNS, kind=Kind.TEST, framework=framework, tool=tool)
    assert found.targets == []
    assert found.notes[-1].startswith(f"{ROOT}: no sign of a database (no framework's files")


def test_an_end_to_end_run_backs_up_the_database_of_the_app_it_drives() -> None:
    # Laravel 11: the unit tests use :memory:, the app (and so playwright) uses .env's.
    files = {
        "artisan": "",
        ".env": "APP_ENV=local\nDB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n",
        "phpunit.xml": '<phpunit><php><env name="APP_ENV" value="testing"/>'
        '<env name="DB_DATABASE" value=":memory:"/></php></phpunit>',
    }
    e2e = Operation("playwright", Kind.TEST, "test", None, app_environment=True)
    found = discover(ROOT, files.get, {}, e2e)
    assert [t.path for t in found.targets] == [f"{ROOT}/database/app.sqlite"]
    # A front end with no database: still nothing, and still allowed.
    found = discover(ROOT, NO_SIGNS.get, {}, e2e, listdir=lister(NO_SIGNS))
    assert found.targets == [] and "no sign of a database" in found.notes[-1]


def test_a_database_tool_with_nothing_found_is_still_refused() -> None:
    with pytest.raises(DiscoveryError, match="could not find its database"):
        run(NO_SIGNS, kind=Kind.MIGRATE, framework=None, tool="db-migrate")
    with pytest.raises(DiscoveryError, match=r"config/database\.yml: no such file"):
        run(NO_SIGNS, kind=Kind.MIGRATE, framework="rails", tool="rake")


@pytest.mark.parametrize(
    ("files", "sign"),
    [
        ({".env": "DB_HOST=127.0.0.1\nDB_PASSWORD=x\n"}, ".env sets DB_HOST, DB_PASSWORD"),
        ({".env.test": "TEST_DATABASE_URL=\n"}, ".env.test sets TEST_DATABASE_URL"),
        ({".env.example": "POSTGRES_DB=app\n"}, ".env.example sets POSTGRES_DB"),
        (
            {"pyproject.toml": '[project]\ndependencies = ["SQLAlchemy[asyncio]>=2"]\n'},
            "pyproject.toml depends on sqlalchemy",
        ),
        (
            {"pyproject.toml": '[project.optional-dependencies]\npg = ["psycopg[binary]"]\n'},
            "pyproject.toml depends on psycopg",
        ),
        (
            {"pyproject.toml": '[tool.poetry.group.test.dependencies]\nPyMySQL = "*"\n'},
            "pyproject.toml depends on pymysql",
        ),
        (
            {"requirements/test.txt": "pytest\nPsycopg2_Binary==2.9 ; python_version > '3'\n"},
            "requirements/test.txt depends on psycopg2-binary",
        ),
        ({"Pipfile": '[dev-packages]\nasyncpg = "*"\n'}, "Pipfile depends on asyncpg"),
        (
            {"setup.cfg": "[options]\ninstall_requires =\n    requests\n    peewee>=3\n"},
            "setup.cfg depends on peewee",
        ),
        (
            {"package.json": '{"devDependencies": {"@prisma/client": "5", "pg": "8"}}'},
            "package.json depends on @prisma/client, pg",
        ),
        ({"composer.json": '{"require": {"ext-pdo_pgsql": "*"}}'}, "composer.json depends on"),
        ({"Gemfile": 'gem "sqlite3", "~> 1.7"\n'}, "Gemfile depends on sqlite3"),
        ({"sequelize.config.js": "", ".sequelizerc": ""}, ".sequelizerc (sequelize)"),
        ({".env": "APP_DB_HOST=db\n"}, ".env sets APP_DB_HOST"),
        ({".env": "SQLALCHEMY_DATABASE_URI=x\n"}, ".env sets SQLALCHEMY_DATABASE_URI"),
        (
            {"phpunit.xml": '<phpunit><php><env name="DB_DSN" value="x"/></php></phpunit>'},
            "phpunit.xml sets DB_DSN",
        ),
        (
            {"pyproject.toml": '[tool.pytest.ini_options]\nenv = ["D:TEST_DB_NAME=t"]\n'},
            "pytest's env sets TEST_DB_NAME",
        ),
        (
            {"pytest.ini": "[pytest]\nDJANGO_SETTINGS_MODULE = site.settings\n"},
            "pytest runs Django",
        ),
        (
            {"setup.py": 'setup(install_requires=["requests", "SQLAlchemy>=2.0"])\n'},
            "setup.py depends on sqlalchemy",
        ),
        (
            {"requirements.txt": "-r requirements/prod.txt\n", "requirements/prod.txt": "pg8000"},
            "requirements/prod.txt depends on pg8000",
        ),
        (
            {"requirements.txt": "-r ../shared/reqs.txt\n", "../shared/reqs.txt": "asyncpg\n"},
            "../shared/reqs.txt depends on asyncpg",
        ),
        (
            {
                "package.json": '{"workspaces": ["packages/*"]}',
                "packages/db/package.json": '{"dependencies": {"drizzle-orm": "1"}}',
            },
            "in /srv/app/packages/db; looked at",
        ),
        (
            {
                "pyproject.toml": '[tool.uv.workspace]\nmembers = ["libs/*"]\n',
                "libs/store/pyproject.toml": '[project]\ndependencies = ["psycopg"]\n',
            },
            "in /srv/app/libs/store; looked at",
        ),
        (
            {
                "pnpm-workspace.yaml": "packages:\n  - apps/api\n",
                "apps/api/package.json": '{"dependencies": {"pg": "8"}}',
            },
            "in /srv/app/apps/api; looked at",
        ),
        ({"instance/app.sqlite": ""}, "an SQLite file: instance/app.sqlite"),
        # sub-projects a runner started at the top collects
        ({"backend/pyproject.toml": '[project]\ndependencies = ["psycopg"]'}, "/srv/app/backend;"),
        (
            {
                "pyproject.toml": '[tool.pytest.ini_options]\ntestpaths = ["svc/api/tests"]\n',
                "svc/api/manage.py": "",
                "svc/api/requirements.txt": "Django\n",
            },
            "in /srv/app/svc/api; looked at",
        ),
        (
            {f"r{i}.txt": f"-r r{i + 1}.txt\n" for i in range(20)}
            | {"requirements.txt": "-r r0.txt"},
            "requirement files include more than 16 others",
        ),
        ({"shop.gemspec": "s.add_dependency 'sequel'\n"}, "shop.gemspec depends on sequel"),
        ({"Pipfile": "[packages\n"}, "Pipfile could not be read"),
        ({".dbguard.toml": "[production]\nevery_database = true\n"}, ".dbguard.toml, which"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_a_test_run_with_a_sign_of_a_database_it_cannot_follow_is_refused(
    files: dict[str, str], sign: str
) -> None:
    with pytest.raises(DiscoveryError, match="could not find its database") as info:
        run(files, kind=Kind.TEST, framework="python", tool="pytest")
    assert sign in str(info.value)


def test_tests_that_use_only_in_memory_sqlite_say_so_in_dbguard_toml() -> None:
    files = {
        "requirements.txt": "sqlalchemy\n",
        ".dbguard.toml": '[[database]]\nurl = "sqlite:///:memory:"\n',
    }
    found = run(files, kind=Kind.TEST, framework="python", tool="pytest")
    assert found.targets == []
    assert found.notes == [".dbguard.toml (database[0]): in-memory SQLite, nothing to back up"]


def test_a_test_run_at_a_monorepo_s_top_follows_its_sub_projects() -> None:
    # pytest / vitest at the top collect api's tests, which use api's database.
    files = {
        ".git/HEAD": "",
        "api/.env": "DATABASE_URL=postgresql://app@db.local/api\n",
        "web/package.json": '{"devDependencies": {"vitest": "2"}}',
    }
    found = run(files, kind=Kind.TEST, framework=None, tool="vitest")
    assert [t.name for t in found.targets] == ["api"]
    assert found.notes == [f"{ROOT}/web: {NO_DATABASE}"]
    # Followed by the daemon already (a path argument): not looked into again.
    found = run(files, kind=Kind.TEST, framework=None, tool="vitest", hints={"followed": "api"})
    assert found.targets == []
    # Given paths in the top project only, the runner collects nothing of api's.
    found = run(files, kind=Kind.TEST, framework=None, tool="vitest", hints={"scope": "web"})
    assert found.targets == []
    # A sub-project's problem names the sub-project.
    broken = {**files, "web/.env": "not a line\n"}
    with pytest.raises(DiscoveryError, match=r"in the sub-project web/: \.env, line 1"):
        run(broken, kind=Kind.TEST, framework=None, tool="vitest")
    # Members outside the project are not followed; plain files are not sub-projects.
    outside = {
        "package.json": '{"workspaces": ["../elsewhere", "/abs"]}',
        **{f"data{i}.csv": "" for i in range(300)},
    }
    found = run(outside, kind=Kind.TEST, framework=None, tool="vitest")
    assert found.targets == [] and "no sign of a database" in found.notes[-1]


def test_an_end_to_end_run_at_a_monorepo_s_top_backs_up_the_app_below() -> None:
    files = {
        ".git/HEAD": "",
        "backend/artisan": "",
        "backend/.env": "DB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n",
        "backend/phpunit.xml": '<phpunit><php><env name="DB_DATABASE" value=":memory:"/>'
        "</php></phpunit>",
    }
    e2e = Operation("playwright", Kind.TEST, "test", None, app_environment=True)
    found = discover(ROOT, files.get, {}, e2e, listdir=lister(files))
    assert [t.path for t in found.targets] == [f"{ROOT}/backend/database/app.sqlite"]


def test_each_database_is_judged_by_its_own_project_s_production_rules() -> None:
    files = {
        ".git/HEAD": "",
        "a/.env": "DATABASE_URL=sqlite:///a.db\n",
        "b/.env": "DATABASE_URL=sqlite:///b.db\n",
        "b/.dbguard.toml": "[production]\nevery_database = true\n",
    }
    found = run(files, kind=Kind.TEST, framework=None, tool="pytest")
    origins = {Path(t.path or "").name: found.origin(t) for t in found.targets}
    assert origins["a.db"][0] == ROOT / "a" and origins["a.db"][1] is None
    project = origins["b.db"][1]
    assert project is not None and project.production.every_database


def test_the_way_out_names_the_sqlite_file_found() -> None:
    with pytest.raises(DiscoveryError) as info:
        run({"instance/app.db": ""}, kind=Kind.TEST, framework="python", tool="pytest")
    assert 'url = "sqlite:///instance/app.db"' in info.value.fix


def test_the_command_s_own_database_variables_are_a_sign() -> None:
    with pytest.raises(DiscoveryError, match="the command sets DB_DATABASE"):
        run({}, kind=Kind.TEST, framework=None, tool="jest", assignments={"DB_DATABASE": "app"})


def test_a_test_run_with_no_sign_still_backs_up_what_it_finds() -> None:
    found = run(NO_SIGNS, {"DATABASE_URL": "sqlite:///app.db"}, kind=Kind.TEST, framework=None)
    assert only(found).path == "/srv/app/app.db"
    assert found.notes == []


def test_dbguard_toml_databases_always_contribute() -> None:
    files = {
        ".dbguard.toml": (
            '[[database]]\nengine = "postgres"\nhost = "127.0.0.1"\nname = "reports"\n'
            'password_env = "REPORTS_PW"\nproduction = true\nlabel = "reporting"\n'
            '[[database]]\nengine = "sqlite"\npath = "var/cache.db"\n'
        ),
        ".env": "REPORTS_PW=hunter2\n",
    }
    found = run(files, framework=None)
    reports, cache = found.targets
    assert reports.password is not None and reports.password.get_secret_value() == "hunter2"
    assert reports.source == ".dbguard.toml (database[0]: reporting)"
    assert cache.path == "/srv/app/var/cache.db"
    assert found.project is not None
    verdict = classify_production(reports, {}, facts=found.facts_for(reports))
    assert verdict.reasons == ["production because .dbguard.toml marks database[0] production"]


def test_launcher_env_files_are_loaded_first() -> None:
    files = {
        "ci.env": "DATABASE_URL=mysql://root@127.0.0.1/ci\n",
        ".env": "DATABASE_URL=mysql://root@127.0.0.1/dev\n",
    }
    found = run(files, framework=None, hints={"env_file": "ci.env"})
    assert only(found).name == "ci"
    assert "ci.env" in found.looked


def test_command_line_assignments_count_like_the_environment() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=sqlite\n",
        ".env.testing": "DB_CONNECTION=sqlite\nDB_DATABASE=t.sqlite\n",
    }
    found = run(files, assignments={"APP_ENV": "testing"})
    assert only(found).path == "/srv/app/t.sqlite"


def test_frameworks_are_detected_for_test_runs_but_not_for_other_tools() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=sqlite\n",
        "prisma/schema.prisma": (
            'datasource db {\n  provider = "sqlite"\n  url = "file:./dev.db"\n}\n'
        ),
    }
    prisma_only = run(files, framework="prisma", tool="prisma")
    assert keys(prisma_only) == {"sqlite:/srv/app/prisma/dev.db"}
    both = run(files, framework="python", tool="pytest", kind=Kind.TEST)
    assert keys(both) == {
        "sqlite:/srv/app/prisma/dev.db",
        "sqlite:/srv/app/database/database.sqlite",
    }


# ---- the I/O side: DiscoveryCache over a fixture project ---------------------------------------


def test_discovery_cache_reads_a_fixture_project_and_reuses_the_answer() -> None:
    cache = DiscoveryCache()
    root = FIXTURES / "laravel"
    first = cache.discover(root, {}, operation(kind=Kind.TEST))
    assert only(first).name == "shop_test"
    assert cache.discover(root, {}, operation(kind=Kind.TEST)) is first
    other = cache.discover(root, {}, operation(kind=Kind.TEST), cwd=root / "tests")
    assert other is not first and only(other).name == "shop_test"


def test_discovery_cache_sees_a_file_rewritten_with_its_old_size_and_mtime(
    tmp_path: Path,
) -> None:
    """`cp -p .env.other .env` (or an edit followed by `touch -r`) keeps the inode, the
    size and the mtime: a cached answer would back up the database .env named before."""
    root = tmp_path / "app"
    root.mkdir()
    (root / "artisan").write_text("<?php\n")
    env = root / ".env"
    env.write_text("DB_CONNECTION=sqlite\nDB_DATABASE=/srv/aaa.sqlite\n")
    cache = DiscoveryCache()
    first = cache.discover(root, {}, operation(kind=Kind.MIGRATE))
    assert only(first).path == "/srv/aaa.sqlite"
    before = env.stat()
    time.sleep(0.01)  # past the coarse clock's tick, so the ctime moves
    with env.open("r+") as file:
        file.write("DB_CONNECTION=sqlite\nDB_DATABASE=/srv/bbb.sqlite\n")
    os.utime(env, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (env.stat().st_ino, env.stat().st_size, env.stat().st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns,
    )  # fmt: skip

    again = cache.discover(root, {}, operation(kind=Kind.MIGRATE))
    assert only(again).path == "/srv/bbb.sqlite"


def test_an_answer_read_from_a_file_changed_just_now_is_not_kept(tmp_path: Path) -> None:
    """A rewrite within the filesystem clock's tick of the read, at the same size,
    leaves the file's stamp as it was: such an answer is worked out again next time."""
    (tmp_path / "package.json").write_text('{"scripts": {}}')
    changed = (tmp_path / "package.json").stat().st_ctime_ns
    files = ProjectFiles(tmp_path)
    assert files.read("package.json") is not None
    now = StampedCache[str](clock=lambda: changed + SETTLED_NS // 2)
    now.put("key", "answer", files)
    assert now.get("key") is None
    later = StampedCache[str](clock=lambda: changed + 2 * SETTLED_NS)
    later.put("key", "answer", files)
    cached = later.get("key")
    assert cached is not None and cached.value == "answer"


def test_project_files_reader_reports_absent_files() -> None:
    files = ProjectFiles(FIXTURES / "laravel")
    assert files.read("no-such-file") is None
    assert files.read(".env") is not None


# ---- bad input never crashes: every file discovery reads, filled with anything ------------------

# (file, framework, kind) for every parser discovery has.
_PARSED_FILES = [
    (".env", "laravel", Kind.MIGRATE),
    ("phpunit.xml", "laravel", Kind.TEST),
    ("bootstrap/cache/config.php", "laravel", Kind.MIGRATE),
    (".env.local.php", "symfony", Kind.MIGRATE),
    ("config/packages/doctrine.yaml", "symfony", Kind.TEST),
    ("prisma/schema.prisma", "prisma", Kind.MIGRATE),
    ("package.json", "prisma", Kind.MIGRATE),
    ("alembic.ini", "alembic", Kind.MIGRATE),
    ("config/database.yml", "rails", Kind.MIGRATE),
    ("knexfile.js", "knex", Kind.MIGRATE),
    ("knexfile.json", "knex", Kind.MIGRATE),
    ("config/config.json", "sequelize", Kind.MIGRATE),
    (".sequelizerc", "sequelize", Kind.MIGRATE),
    ("ormconfig.json", "typeorm", Kind.MIGRATE),
    ("flyway.conf", "flyway", Kind.MIGRATE),
    ("flyway.toml", "flyway", Kind.MIGRATE),
    ("liquibase.properties", "liquibase", Kind.MIGRATE),
    ("supabase/config.toml", "supabase", Kind.MIGRATE),
    (".dbguard.toml", None, Kind.MIGRATE),
]
_SEEDS = {
    ".env": "DB_CONNECTION=mysql\nDB_DATABASE=x\n",
    "phpunit.xml": '<phpunit><php><env name="DB_DATABASE" value="x"/></php></phpunit>',
    "bootstrap/cache/config.php": "<?php return array('database' => array('default' => 'x'));",
    "config/database.yml": "development:\n  adapter: postgresql\n  database: <%= ENV['X'] %>\n",
    "knexfile.js": "module.exports = { development: { client: 'pg', connection: process.env.X } };",
}


@pytest.mark.parametrize(
    ("name", "framework", "kind"), _PARSED_FILES, ids=[f[0] for f in _PARSED_FILES]
)
def test_any_file_content_gives_an_answer_or_a_discovery_error(
    name: str, framework: str | None, kind: Kind
) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seed = _SEEDS.get(name, "")
    contents = st.one_of(
        st.text(max_size=300),
        st.text(alphabet="{}[]()<>\"'=:;,%$#@!/\\\n \tabcdDB_URLprod0123456789", max_size=300),
        st.builds(
            lambda a, b: seed[:a] + b + seed[a:], st.integers(0, len(seed)), st.text(max_size=40)
        ),
        st.just("[" * 3000),
        st.just("<?php return " + "[" * 3000),
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(contents)
    def check(content: str) -> None:
        files = {"artisan": "", name: content}
        try:
            discover(ROOT, files.get, {"X": "mysql://root@127.0.0.1/x"}, operation(kind, framework))
        except DiscoveryError as err:
            assert str(err)

    check()


def test_artisan_run_from_outside_its_project_is_refused_not_guessed() -> None:
    # `php backend/artisan migrate:fresh` from a monorepo's top: no artisan here, and
    # Laravel's default SQLite file would not exist, so nothing would be backed up.
    with pytest.raises(DiscoveryError, match="has no artisan file") as info:
        run({"composer.json": "{}", "backend/.env": "DB_CONNECTION=pgsql\n"})
    assert "cd into the Laravel project's folder" in info.value.fix
    # The way out: the database named in .dbguard.toml.
    toml = '[[database]]\nurl = "postgresql://app@db/shop"\n'
    found = run({".dbguard.toml": toml, "backend/.env": "DB_CONNECTION=pgsql\n"})
    assert only(found).name == "shop"
    # phpunit in a PHP library (no artisan, no DB_* anywhere) is not given Laravel's
    # defaults: with no sign of a database, there is nothing to back up.
    found = run({"composer.json": "{}"}, tool="phpunit", kind=Kind.TEST)
    assert found.targets == [] and "no sign of a database" in found.notes[-1]
    # A package tested with orchestra/testbench sets its database in phpunit.xml.
    phpunit_xml = '<phpunit><php><env name="DB_CONNECTION" value="pgsql"/></php></phpunit>'
    found = run({"phpunit.xml": phpunit_xml}, tool="phpunit", kind=Kind.TEST)
    assert ("postgres", "laravel") in [(t.engine, t.name) for t in found.targets]


def test_npm_workspace_names_are_followed_to_their_folder(tmp_path: Path) -> None:
    scripts = {"a": "yarn workspace @shop/api db:reset", "b": "npm -w @shop/api run db:reset"}
    (tmp_path / "package.json").write_text(
        json.dumps({"workspaces": ["packages/*", "tools/cli"], "scripts": scripts})
    )
    api = tmp_path / "packages" / "api"
    api.mkdir(parents=True)
    (api / "package.json").write_text(
        '{"name": "@shop/api", "scripts": {"db:reset": "prisma migrate reset --force"}}'
    )
    classifier = Classifier(builtin_catalog())
    files = ProjectFiles(tmp_path)
    for argv in (
        ["npm", "-w", "@shop/api", "run", "db:reset"],
        ["npm", "run", "db:reset", "--workspace=packages/api"],
        ["npm", "run", "a"],  # inside a script, which runs in the (absolute) top folder
        ["npm", "run", "b"],
    ):
        found = classify_with_project(classifier, None, argv, files.package_script)
        assert found is not None and found.kind is Kind.DESTRUCTIVE, argv
        assert Path(tmp_path, found.hints["cwd"]) == api
    missing = ["npm", "-w", "@shop/nope", "run", "db:reset"]
    assert classify_with_project(classifier, None, missing, files.package_script) is None


def test_npm_w_takes_a_package_name_first_then_a_folder_holding_members(
    tmp_path: Path,
) -> None:
    (tmp_path / "package.json").write_text('{"workspaces": ["packages/*"]}')
    (tmp_path / "db").mkdir()  # not a member: a folder of SQL files
    for folder, name in (("api", "@shop/api"), ("store", "db")):
        (tmp_path / "packages" / folder).mkdir(parents=True)
        (tmp_path / "packages" / folder / "package.json").write_text(
            json.dumps({"name": name, "scripts": {"db:reset": "prisma migrate reset -f"}})
        )
    classifier = Classifier(builtin_catalog())
    files = ProjectFiles(tmp_path)

    def reached(argv: list[str]) -> set[str]:
        found = classify_with_project(
            classifier, None, argv, files.package_script, files.workspace_members
        )
        assert found is not None and found.kind is Kind.DESTRUCTIVE, argv
        return {os.path.relpath(o.hints["cwd"], tmp_path) for o in found.each()}

    assert reached(["npm", "-w", "db", "run", "db:reset"]) == {"packages/store"}
    assert reached(["yarn", "workspace", "db", "db:reset"]) == {"packages/store"}
    assert reached(["npm", "run", "db:reset", "-w", "packages"]) == {
        "packages/api",
        "packages/store",
    }


def test_deno_tasks_are_read_with_their_comments_dependencies_and_package_scripts(
    tmp_path: Path,
) -> None:
    (tmp_path / "deno.jsonc").write_text(
        """{
          // the database tasks
          "tasks": {
            "db:reset": {"command": "echo seeded", "dependencies": ["wipe",]},
            "wipe": "deno run -A npm:prisma migrate reset --force", /* "dev": "x" */
            "url": "echo https://example.com/a//b",
          },
        }"""
    )
    (tmp_path / "package.json").write_text(
        '{"scripts": {"seed": "prisma db seed", "wipe": "echo deno.json wins"}}'
    )
    (tmp_path / "src").mkdir()
    classifier = Classifier(builtin_catalog())
    files = ProjectFiles(tmp_path / "src")  # found from a folder below, as deno does

    def run(task: str) -> Operation | None:
        argv = ["deno", "task", task]
        return classify_with_project(classifier, None, argv, files.package_script)

    reset = run("db:reset")
    assert reset is not None and reset.kind is Kind.DESTRUCTIVE
    assert reset.via == ("deno task db:reset", "deno task wipe")
    seed = run("seed")  # not a deno task: package.json's script
    assert seed is not None and seed.kind is Kind.SEED
    assert run("url") is None
    assert files.package_script("deno.json", "url") == Script(
        "echo https://example.com/a//b", str(tmp_path)
    )
    (tmp_path / "deno.jsonc").write_text('{"tasks": {"wipe": }')
    with pytest.raises(DiscoveryError, match=r"deno\.jsonc is not valid JSON"):
        ProjectFiles(tmp_path).package_script("deno.json", "wipe")


def test_pnpm_filters_and_exec_reach_the_members_they_name(tmp_path: Path) -> None:
    (tmp_path / "pnpm-workspace.yaml").write_text("packages:\n  - 'apps/*'\n  - 'db'\n")
    (tmp_path / "package.json").write_text('{"name": "top"}')
    members = {"apps/api": "@shop/api", "apps/web": "@shop/web", "db": "@shop/schema"}
    for folder, name in members.items():
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "package.json").write_text(
            json.dumps({"name": name, "scripts": {"reset": "prisma migrate reset -f"}})
        )
    classifier = Classifier(builtin_catalog())
    files = ProjectFiles(tmp_path)

    def reached(line: str) -> set[str]:
        found = classify_with_project(
            classifier, None, shlex.split(line), files.package_script, files.workspace_members
        )
        assert found is not None and found.kind is Kind.DESTRUCTIVE, line
        return {os.path.relpath(o.hints.get("cwd", tmp_path), tmp_path) for o in found.each()}

    assert reached("pnpm --filter @shop/api exec prisma migrate reset") == {"apps/api"}
    # The scope may be left out where the name is unique, as pnpm allows.
    assert reached("pnpm --filter api exec prisma migrate reset") == {"apps/api"}
    assert reached("pnpm -F ./apps/web reset") == {"apps/web"}
    assert reached("pnpm -F '{db}' reset") == {"db"}  # a folder, never a package name
    # `schema` names the package @shop/schema (folder db), not a folder called schema.
    assert reached("pnpm -F schema exec prisma migrate reset") == {"db"}
    everywhere = {".", "apps/api", "apps/web", "db"}
    assert reached("pnpm -F '@shop/*' exec prisma migrate reset") == everywhere
    assert reached("pnpm -r exec prisma migrate reset") == everywhere
    assert reached("npm exec -ws -- prisma migrate reset") == everywhere


@pytest.mark.parametrize(
    "declaration",
    [
        ("package.json", '{"workspaces": ["packages/*"]}'),
        ("package.json", '{"workspaces": {"packages": ["packages/*"]}}'),  # yarn 1
        ("pnpm-workspace.yaml", "packages:\n  - 'packages/*'\n"),
        ("lerna.json", '{"packages": ["packages/*"]}'),
        ("lerna.json", '{"version": "1.0.0"}'),  # lerna's default: packages/*
        ("pnpm-workspace.yaml", "packages:\n  - 'packages/**'\n  - '!packages/old'\n"),
        ("package.json", '{"workspaces": ["packages/[aw]*"]}'),
        ("package.json", '\ufeff{"workspaces": ["{packages,tools}/*"]}'),  # BOM, braces
    ],
)
def test_fan_out_runs_reach_every_workspace_member(
    tmp_path: Path, declaration: tuple[str, str]
) -> None:
    name, text = declaration
    (tmp_path / name).write_text(text)
    for member, script in (("api", "prisma migrate reset --force"), ("web", "vitest run")):
        (tmp_path / "packages" / member).mkdir(parents=True)
        (tmp_path / "packages" / member / "package.json").write_text(
            json.dumps({"name": member, "scripts": {"reset": script}})
        )
    classifier = Classifier(builtin_catalog())
    files = ProjectFiles(tmp_path / "packages" / "web")  # from inside a member too
    argv = ["pnpm", "-r", "reset"]
    found = classify_with_project(
        classifier, None, argv, files.package_script, files.workspace_members
    )
    assert found is not None
    assert {(o.tool, o.hints["cwd"]) for o in found.each()} == {
        ("prisma", str(tmp_path / "packages" / "api")),
        ("vitest", str(tmp_path / "packages" / "web")),
    }


def test_workspace_patterns_are_globs_per_segment() -> None:
    files = {
        f"{folder}/package.json": "{}"
        for folder in (
            "apps/group/api",
            "apps/web",
            "apps/web/node_modules/x",
            "services/billing-api",
            "services/billing-worker",
            "legacy/old",
        )
    }
    patterns = ["apps/**", "services/*-api", "./legacy/old/", "!legacy/old"]
    assert workspace_folders(patterns, lister(files)) == [
        "apps",  # ** is also no folder at all
        "apps/group",
        "apps/group/api",
        "apps/web",
        "services/billing-api",
    ]


def test_path_arguments_into_another_project_name_its_root(tmp_path: Path) -> None:
    # `pytest backend/tests/test_a.py::test_x` from a monorepo's top runs backend's tests.
    (tmp_path / ".git").mkdir()
    tests = tmp_path / "backend" / "tests"
    tests.mkdir(parents=True)
    (tmp_path / "backend" / "pyproject.toml").write_text("")
    (tests / "test_a.py").write_text("")
    (tmp_path / "docs").mkdir()  # in the top project: adds nothing
    args = ["-k", "users", "backend/tests/test_a.py::test_x", "backend", "docs", "missing/"]
    assert argument_roots(args, tmp_path, tmp_path) == ([tmp_path / "backend"], ["docs"])
    back = argument_roots(["../backend"], tmp_path / "docs", tmp_path)
    assert back == ([tmp_path / "backend"], [])
    assert argument_roots(["--rootdir=backend", "-x"], tmp_path, tmp_path) == ([], [])


def test_package_scripts_come_from_the_nearest_manifest_above(tmp_path: Path) -> None:
    # `npm run db:reset` in src/ runs the project's script, as npm finds it.
    (tmp_path / "package.json").write_text(
        '{"scripts": {"db:reset": "prisma migrate reset --force"}}'
    )
    inner = tmp_path / "src" / "components"
    inner.mkdir(parents=True)
    files = ProjectFiles(inner)
    # found above, and run there
    assert files.package_script("package.json", "db:reset") == Script(
        "prisma migrate reset --force", str(tmp_path)
    )
    classifier = Classifier(builtin_catalog())
    found = classify_with_project(
        classifier, None, ["npm", "run", "db:reset"], files.package_script
    )
    assert found is not None and found.kind is Kind.DESTRUCTIVE
    # The nearest one wins, as for npm: a workspace package's own scripts.
    (inner / "package.json").write_text('{"scripts": {"test": "vitest"}}')
    assert ProjectFiles(inner).package_script("package.json", "db:reset") is None
    # A folder in the manifest's name (npm --prefix) starts the search there.
    top = ProjectFiles(tmp_path)
    assert top.package_script("src/components/package.json", "test") == Script("vitest", str(inner))
    assert top.package_script("src/package.json", "db:reset") == Script(
        "prisma migrate reset --force", str(tmp_path)
    )


def test_pnpm_workspace_root_runs_in_the_folder_with_pnpm_workspace_yaml(
    tmp_path: Path,
) -> None:
    # `pnpm -w db:reset` from a member runs the top package.json's script, in the top
    # folder (the one holding pnpm-workspace.yaml): its database, not the member's.
    (tmp_path / "pnpm-workspace.yaml").write_text("packages:\n  - 'apps/*'\n")
    (tmp_path / "package.json").write_text(
        '{"name": "top", "scripts": {"db:reset": "prisma migrate reset --force"}}'
    )
    web = tmp_path / "apps" / "web" / "src"
    web.mkdir(parents=True)
    (web.parent / "package.json").write_text(
        '{"name": "web", "scripts": {"db:reset": "echo nothing here"}}'
    )
    classifier = Classifier(builtin_catalog())
    files = ProjectFiles(web)

    def where(line: str) -> set[str]:
        found = classify_with_project(
            classifier,
            None,
            shlex.split(line),
            files.package_script,
            files.workspace_members,
            files.workspace_root,
        )
        assert found is not None and found.kind is Kind.DESTRUCTIVE, line
        return {os.path.relpath(o.hints.get("cwd", web), tmp_path) for o in found.each()}

    assert where("pnpm -w db:reset") == {"."}
    assert where("pnpm --workspace-root run db:reset") == {"."}
    assert where("pnpm run -w db:reset") == {"."}
    assert where("pnpm -w exec prisma migrate reset --force") == {"."}
    assert where("pnpm exec --workspace-root prisma migrate reset") == {"."}
    # From the member's folder moved to by -C, pnpm looks upwards from there.
    assert where("pnpm -C .. -w db:reset") == {"."}
    # With -r as well, every member and the top.
    assert where("pnpm -w -r exec prisma migrate reset") == {".", "apps/web"}
    # No pnpm-workspace.yaml: pnpm refuses -w, and nothing is moved.
    (tmp_path / "pnpm-workspace.yaml").unlink()
    alone = ProjectFiles(web)
    found = classify_with_project(
        classifier,
        None,
        ["pnpm", "-w", "exec", "prisma", "migrate", "reset"],
        alone.package_script,
        alone.workspace_members,
        alone.workspace_root,
    )
    assert found is not None and "cwd" not in found.hints


def test_turbo_runs_the_tasks_a_task_depends_on_in_every_member(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"workspaces": ["packages/*"]}')
    (tmp_path / "turbo.json").write_text(
        """{
          // turbo.json allows comments
          "tasks": {
            "db:reset": {"dependsOn": ["^build", "migrate"]},
            "migrate": {"dependsOn": ["api#wipe"]},
            "build": {"dependsOn": ["^build"]},
          },
        }"""
    )
    scripts = {
        "api": {"wipe": "prisma migrate reset --force", "build": "tsc"},
        "web": {"db:reset": "echo done", "migrate": "knex migrate:latest"},
    }
    for member, named in scripts.items():
        (tmp_path / "packages" / member).mkdir(parents=True)
        (tmp_path / "packages" / member / "package.json").write_text(
            json.dumps({"name": member, "scripts": named})
        )
    classifier = Classifier(builtin_catalog())
    files = ProjectFiles(tmp_path / "packages" / "web")

    def run(line: str) -> Operation | None:
        return classify_with_project(
            classifier, None, shlex.split(line), files.package_script, files.workspace_members
        )

    # db:reset's own script only echoes; what it depends on resets and migrates.
    for line in ("turbo run db:reset", "turbo db:reset --filter web"):
        found = run(line)
        assert found is not None and found.kind is Kind.DESTRUCTIVE, line
        assert {(o.tool, os.path.relpath(o.hints["cwd"], tmp_path)) for o in found.each()} == {
            ("prisma", "packages/api"),
            ("knex", "packages/web"),
        }
        assert found.via[0] == "turbo db:reset (dependsOn)"
    assert run("turbo run build") is None  # ^build depends on itself: followed once
    (tmp_path / "turbo.json").write_text('{"tasks": ')
    with pytest.raises(DiscoveryError, match=r"turbo\.json is not valid JSON"):
        ProjectFiles(tmp_path).package_script("turbo.json", "db:reset")


def test_a_dotenv_that_is_a_named_pipe_is_refused_not_taken_for_absent(tmp_path: Path) -> None:
    """A secrets manager may serve .env through a named pipe: the application reads its
    database from there, so "no .env" (and Laravel's default database, absent: nothing
    to back up) would let the command run unguarded. Opening it could block, too."""
    root = tmp_path / "app"
    root.mkdir()
    (root / "artisan").write_text("<?php\n")
    os.mkfifo(root / ".env")
    with pytest.raises(DiscoveryError, match="not a regular file"):
        DiscoveryCache().discover(root, {}, operation(kind=Kind.DESTRUCTIVE))
    # A folder by that name (a virtualenv called .env) is no dotenv file: not an error.
    (root / ".env").unlink()
    (root / ".env").mkdir()
    found = DiscoveryCache().discover(root, {}, operation(kind=Kind.DESTRUCTIVE))
    assert str(only(found).path).endswith("database/database.sqlite")


def test_an_nx_project_folder_reads_its_workspace_s_dbguard_toml(tmp_path: Path) -> None:
    """A project.json makes apps/api a project root of its own; the workspace's
    .dbguard.toml (its databases, its production rules) still applies there, with
    relative paths read from the workspace's folder, unless apps/api has its own."""
    top = tmp_path / "shop"
    api = top / "apps" / "api"
    api.mkdir(parents=True)
    (top / "nx.json").write_text("{}")
    (top / ".dbguard.toml").write_text(
        '[production]\nevery_database = true\n[[database]]\nengine = "sqlite"\n'
        'path = "data/app.sqlite"\n'
    )
    (api / "project.json").write_text('{"name": "api"}')
    assert find_root(api) == api

    cache = DiscoveryCache()
    found = cache.discover(api, {}, operation(kind=Kind.TEST, framework=None))

    assert [t.path for t in found.targets] == [str(top / "data" / "app.sqlite")]
    assert found.project is not None and found.project.production.every_database
    assert found.project.file == str(top / ".dbguard.toml")
    # Its own file is the one read, as everywhere else.
    (api / ".dbguard.toml").write_text('[[database]]\nengine = "sqlite"\npath = "api.db"\n')
    found = cache.discover(api, {}, operation(kind=Kind.TEST, framework=None))
    assert [t.path for t in found.targets] == [str(api / "api.db")]
    assert found.project is not None and not found.project.production.every_database


def test_bun_env_file_decides_which_database_a_script_resets(tmp_path: Path) -> None:
    """`bun --env-file .env.test run reset` runs the script with .env.test loaded over
    nothing, so prisma there resets .env.test's database, not .env's."""
    (tmp_path / "package.json").write_text(
        json.dumps({"scripts": {"reset": "prisma migrate reset --force"}})
    )
    (tmp_path / "prisma").mkdir()
    (tmp_path / "prisma" / "schema.prisma").write_text(
        'datasource db {\n  provider = "postgresql"\n  url = env("DATABASE_URL")\n}\n'
    )
    (tmp_path / ".env").write_text("DATABASE_URL=postgres://app@db/dev\n")
    (tmp_path / ".env.test").write_text("DATABASE_URL=postgres://app@db/test\n")
    files = ProjectFiles(tmp_path)
    operation = classify_with_project(
        Classifier(builtin_catalog()),
        None,
        shlex.split("bun --env-file .env.test run reset"),
        files.package_script,
        files.workspace_members,
        files.workspace_root,
    )
    assert operation is not None and operation.kind == Kind.DESTRUCTIVE
    found = DiscoveryCache().discover(tmp_path, {}, operation)
    assert [t.name for t in found.targets] == ["test"]


# ---- Nx: tests/fixtures/projects/nx -------------------------------------------------------------

NX = FIXTURES / "nx"
SHOP = "postgres://shop@localhost:5432/shop"
SHOP_TEST = "postgres://shop@localhost:5432/shop_test"
BILLING = f"sqlite:{NX}/packages/billing/billing.sqlite3"
BILLING_TEST = f"sqlite:{NX}/packages/billing/billing.test.sqlite3"


def nx_decision(line: str, where: str = ".") -> tuple[Kind, dict[tuple[str, str], set[str]]] | None:
    """What the daemon decides for `line` run in the fixture's folder `where`: the kind,
    and for each operation (tool, the folder it runs in) the databases discovery finds
    there; None when it is no database operation."""
    cwd = NX / where
    files = ProjectFiles(cwd)
    found = classify_with_project(
        Classifier(builtin_catalog()),
        None,
        shlex.split(line),
        files.package_script,
        files.workspace_members,
        files.workspace_root,
    )
    if found is None or not found.kind.needs_backup:
        return None
    databases: dict[tuple[str, str], set[str]] = {}
    for each in found.each():
        folder = Path(os.path.normpath(cwd / each.hints.get("cwd", "")))
        part = DiscoveryCache().discover(find_root(folder), {}, each, cwd=folder)
        key = (each.tool, os.path.relpath(folder, NX))
        databases.setdefault(key, set()).update(t.key for t in part.targets)
    return found.kind, databases


API_TEST = {("prisma", "apps/api"): {SHOP}, ("jest", "apps/api"): {SHOP_TEST}}
EVERY_TEST = {
    **API_TEST,
    ("knex", "packages/billing"): {BILLING},
    ("vitest", "packages/billing"): {BILLING_TEST},
}


@pytest.mark.parametrize(
    ("line", "where", "expected"),
    [
        # api's test depends on its db:migrate (prisma migrate deploy, .env's database);
        # jest runs with .env.test, which Nx loads for the target `test` first.
        ("nx test api", ".", (Kind.MIGRATE, API_TEST)),
        ("nx run api:test", ".", (Kind.MIGRATE, API_TEST)),
        ("nx test", "apps/api/src", (Kind.MIGRATE, API_TEST)),  # the folder's project
        ("npx nx test api", ".", (Kind.MIGRATE, API_TEST)),
        ("pnpm nx test api", ".", (Kind.MIGRATE, API_TEST)),
        ("pnpm exec nx run api:test", ".", (Kind.MIGRATE, API_TEST)),
        ("yarn nx test api", ".", (Kind.MIGRATE, API_TEST)),
        ("npm exec nx -- run-many -t test -p api", ".", (Kind.MIGRATE, API_TEST)),
        # every project with a test target: billing's is package.json's script
        ("nx run-many -t test", ".", (Kind.MIGRATE, EVERY_TEST)),
        ("nx run-many --targets=test,lint", ".", (Kind.MIGRATE, EVERY_TEST)),
        ("nx affected -t test", ".", (Kind.MIGRATE, EVERY_TEST)),
        ("npm test", ".", (Kind.MIGRATE, EVERY_TEST)),  # "test": "nx run-many -t test"
        (
            "nx test @shop/billing",
            ".",
            (Kind.MIGRATE, {k: v for k, v in EVERY_TEST.items() if k[1] == "packages/billing"}),
        ),
        ("nx run api:db:reset", ".", (Kind.DESTRUCTIVE, {("prisma", "apps/api"): {SHOP}})),
        (
            "npx nx run api:prisma -- migrate reset --force",
            ".",
            (Kind.DESTRUCTIVE, {("prisma", "apps/api"): {SHOP}}),
        ),
        # a custom executor: guarded as a test run in its project, which has no database
        ("nx e2e web", ".", (Kind.TEST, {("nx executor", "apps/web"): set()})),
        # tsc, eslint and Nx's own commands are no database operations
        ("nx build web", ".", None),
        ("nx test ui", ".", None),  # its test target only runs tsc
        ("nx run-many -t build lint", ".", None),
        ("npm run check", ".", None),
        ("nx graph", ".", None),
        ("nx show projects", ".", None),
        ("nx --version", ".", None),
        ("nx reset", ".", None),
        ("nx format:write", ".", None),
    ],
)
def test_nx_targets_are_classified_and_discovered_in_their_project(
    line: str, where: str, expected: tuple[Kind, dict[tuple[str, str], set[str]]] | None
) -> None:
    assert nx_decision(line, where) == expected


def test_nx_projects_and_what_their_targets_run() -> None:
    files = ProjectFiles(NX)
    members = {os.path.relpath(f, NX) for f in files.workspace_members("project.json")}
    # project.json folders, the package.json workspace's members, and the top.
    assert members == {".", "apps/api", "apps/web", "libs/ui", "packages/billing"}
    assert files.workspace_members("project.json", ["web"]) == [str(NX / "apps/web")]
    assert files.package_script("apps/api/project.json", "test") == Script(
        "nx run api:db:migrate ; cd apps/api && dotenv -e .env.test -e .env -- "
        "jest --config jest.config.ts",
        str(NX),
    )
    # ^build in targetDefaults: build in the other projects first.
    assert files.package_script("nx.json", "test") == Script("nx run-many -t build", str(NX))
    # The line is the classifier's to judge (tsc: no database operation).
    build = files.package_script("apps/web/project.json", "build")
    assert build == Script("tsc -p apps/web/tsconfig.app.json", str(NX))
    assert files.package_script("apps/web/project.json", "lint") is None  # eslint's plugin


def test_nx_targets_of_plugins_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "nx.json").write_text(
        json.dumps({"plugins": [{"plugin": "@nx/jest/plugin", "options": {"targetName": "t"}}]})
    )
    (tmp_path / "package.json").write_text("{}")
    (tmp_path / "apps" / "api").mkdir(parents=True)
    (tmp_path / "apps" / "api" / "project.json").write_text('{"name": "api"}')
    (tmp_path / "apps" / "api" / "jest.config.ts").write_text("export default {}")
    files = ProjectFiles(tmp_path)
    assert files.package_script("apps/api/project.json", "t") == Script(
        "cd apps/api && jest", str(tmp_path)
    )
    assert files.package_script("apps/api/project.json", "test") is None
    # A plugin dbguard does not know may infer any target: guarded when unsure.
    (tmp_path / "nx.json").write_text('{"plugins": ["./tools/my-plugin"]}')
    assert ProjectFiles(tmp_path).package_script("apps/api/project.json", "db") == Script(
        "cd apps/api && nx-executor ./tools/my-plugin", str(tmp_path)
    )
    (tmp_path / "apps" / "api" / "project.json").write_text('{"targets": ')
    with pytest.raises(DiscoveryError, match=r"project\.json is not valid JSON"):
        ProjectFiles(tmp_path).package_script("apps/api/project.json", "test")


# ---- an override does not hide a file's production environment -----------------------------

PRODUCTION_LARAVEL = {
    "artisan": "",
    ".env": "APP_ENV=production\nDB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n",
}


def production_reasons(found: Found, env: Mapping[str, str]) -> list[str]:
    target = only(found)
    verdict = classify_production(target, env, facts=found.facts_for(target))
    return verdict.reasons if verdict.production else []


@pytest.mark.parametrize(
    ("env", "op", "overridden_by"),
    [
        ({"APP_ENV": "local"}, {}, "the invoking environment"),
        ({}, {"assignments": {"APP_ENV": "local"}}, "the command line"),
        ({}, {"hints": {"env": "local"}}, "--env=local on the command line"),
    ],
    ids=["exported", "assigned", "--env"],
)
def test_overriding_app_env_keeps_the_files_production(
    env: dict[str, str], op: dict[str, object], overridden_by: str
) -> None:
    """There is no .env.local, so Laravel still reads .env's database: the one that file
    says is production. An agent refused for APP_ENV=production tries just this."""
    found = run(PRODUCTION_LARAVEL, env, **op)  # type: ignore[arg-type]
    run_env = {**env, **op.get("assignments", {})}  # type: ignore[dict-item]
    assert f"production because APP_ENV=production (.env, line 1; {overridden_by} " in "".join(
        production_reasons(found, run_env)
    )


def test_a_test_run_forcing_app_env_testing_onto_dot_env_is_production() -> None:
    """phpunit.xml's APP_ENV=testing loads .env.testing only where it exists: here the
    tests read the production .env's database."""
    files = {
        **PRODUCTION_LARAVEL,
        "phpunit.xml": '<phpunit><php><env name="APP_ENV" value="testing" force="true"/>'
        "</php></phpunit>",
    }
    found = run(files, kind=Kind.TEST)
    assert any(
        "APP_ENV=production (.env, line 1; phpunit.xml" in r for r in production_reasons(found, {})
    )


def test_an_env_file_of_its_own_leaves_dot_env_unread() -> None:
    files = {**PRODUCTION_LARAVEL, ".env.local": "DB_CONNECTION=sqlite\nDB_DATABASE=local.db\n"}
    found = run(files, {"APP_ENV": "local"})
    assert only(found).path == f"{ROOT}/local.db"
    assert production_reasons(found, {"APP_ENV": "local"}) == []


def test_overriding_node_env_keeps_the_files_production() -> None:
    """Prisma reads no NODE_ENV at all: DATABASE_URL comes from the same .env."""
    files = {
        ".env": "NODE_ENV=production\nDATABASE_URL=postgresql://u@localhost:5432/app\n",
        "package.json": "{}",
        "prisma/schema.prisma": 'datasource db {\n  provider = "postgresql"\n'
        '  url = env("DATABASE_URL")\n}\n',
    }
    found = run(files, {"NODE_ENV": "development"}, framework="prisma", tool="prisma")
    reasons = production_reasons(found, {"NODE_ENV": "development"})
    assert any("NODE_ENV=production (.env, line 1; the invoking environment" in r for r in reasons)


def test_a_custom_app_env_variable_is_read_from_the_env_file() -> None:
    """The names that mean the application environment are the settings' (here the
    project's own `.dbguard.toml`): discovery does not decide them."""
    files = {
        "artisan": "",
        ".env": "STAGE=live\nDB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n",
        ".dbguard.toml": '[production]\napp_env_variables = ["STAGE"]\n'
        'production_values = ["live"]\n',
    }
    found = run(files)
    assert found.project is not None
    settings = found.project.production_settings(ProductionSettings())
    target = only(found)
    verdict = classify_production(target, {}, settings, facts=found.facts_for(target))
    assert verdict.reasons == ["production because STAGE=live (.env, line 1)"]
    default = classify_production(target, {}, facts=found.facts_for(target))
    assert not default.production


def test_laravel_dusk_runs_on_its_own_env_file() -> None:
    """Dusk's docs: `php artisan dusk` puts .env.dusk.{environment} in place of .env for
    its run, and DatabaseMigrations then wipes that file's database."""
    files = {
        "artisan": "",
        "phpunit.xml": '<phpunit><php><env name="APP_ENV" value="testing"/></php></phpunit>',
        ".env": "APP_ENV=local\nDB_CONNECTION=mysql\nDB_HOST=127.0.0.1\nDB_DATABASE=shop\n",
        ".env.dusk.local": "APP_ENV=local\nDB_CONNECTION=mysql\nDB_HOST=127.0.0.1\n"
        "DB_DATABASE=shop_dusk\n",
    }
    found = run(files, kind=Kind.TEST, command="dusk")
    assert {t.name for t in found.targets} == {"shop_dusk"}
    assert "php artisan dusk puts .env.dusk.local in place of .env" in only(found).source
    assert {t.name for t in run(files, kind=Kind.TEST, command="test").targets} == {"shop"}


MIGRATION_ON = (
    "<?php\nreturn new class extends Migration {{\n    protected $connection = '{0}';\n"
    "    public function down(): void {{ Schema::dropIfExists('events'); }}\n}};\n"
)


@pytest.mark.parametrize("command", ["migrate:rollback", "migrate:reset", "migrate:fresh"])
def test_a_migration_on_another_connection_is_backed_up_before_its_down_runs(
    command: str,
) -> None:
    """Laravel's "Setting the Migration Connection": a rollback runs that migration's
    down() on its own connection."""
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=mysql\nDB_HOST=127.0.0.1\nDB_DATABASE=shop\n",
        "database/migrations/2024_01_01_000000_create_users.php": "<?php // default\n",
        "database/migrations/2024_02_01_000000_create_events.php": MIGRATION_ON.format("pgsql"),
    }
    found = run(files, command=command)
    assert {(t.engine, t.name) for t in found.targets} == {("mysql", "shop"), ("postgres", "shop")}
    assert any("create_events.php" in t.source for t in found.targets)
    # `migrate` itself runs up() only: no other connection is read for it
    assert {t.engine for t in run(files, command="migrate").targets} == {"mysql"}


def test_a_migration_on_a_connection_dbguard_cannot_read_is_refused() -> None:
    files = {
        "artisan": "",
        ".env": "DB_CONNECTION=mysql\nDB_HOST=127.0.0.1\nDB_DATABASE=shop\n",
        "database/migrations/2024_02_01_000000_create_events.php": MIGRATION_ON.format("analytics"),
    }
    with pytest.raises(DiscoveryError, match=r"create_events\.php .*'analytics'") as refused:
        run(files, command="migrate:rollback")
    assert ".dbguard.toml" in refused.value.fix

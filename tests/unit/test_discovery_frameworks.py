"""Discovery for every framework other than Laravel: one fixture project per layout
(tests/fixtures/projects/<name>/) plus dict-built variations and their bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbguard.discovery import discover
from dbguard.discovery.envfile import DiscoveryError
from dbguard.production import classify_production
from dbguard.rules import Kind
from tests.unit.test_discovery import ROOT, keys, only, operation, run, run_fixture

# ---- every fixture layout, end to end ----------------------------------------------------------

LAYOUTS = [
    ("laravel", "laravel", {}, {"mysql://shop@127.0.0.1:3306/shop"}),
    ("symfony", "symfony", {}, {"postgres://app@127.0.0.1:5432/app"}),
    ("prisma", "prisma", {}, {"postgres://app@localhost:5432/app"}),
    ("alembic", "alembic", {}, {"sqlite:/projects/alembic/var/app.db"}),
    ("django", "django", {}, {"sqlite:/projects/django/db.sqlite3"}),
    (
        "rails",
        "rails",
        {},
        {
            "postgres://@localhost:5432/blog_development",
            "postgres://@localhost:5432/animals_development",
        },
    ),
    ("knex", "knex", {}, {"sqlite:/projects/knex/dev.sqlite3"}),
    ("sequelize", "sequelize", {}, {"mysql://root@127.0.0.1:3306/app_development"}),
    ("typeorm", "typeorm", {}, {"postgres://test@localhost:5432/test"}),
    (
        "flyway",
        "flyway",
        {"LEDGER_USER": "ledger", "LEDGER_PASSWORD": "pw"},
        {"postgres://ledger@db.internal:5432/ledger"},
    ),
    ("liquibase", "liquibase", {}, {"mysql://liquibase@localhost:3306/inventory"}),
    ("supabase", "supabase", {}, {"postgres://postgres@127.0.0.1:54322/postgres"}),
]


@pytest.mark.parametrize(
    ("name", "framework", "env", "expected"), LAYOUTS, ids=[x[0] for x in LAYOUTS]
)
def test_fixture_layouts(
    name: str, framework: str, env: dict[str, str], expected: set[str]
) -> None:
    found, _ = run_fixture(name, env, framework=framework, tool=framework)
    assert keys(found) == expected
    for target in found.targets:
        assert target.source, target


# ---- Symfony ------------------------------------------------------------------------------------


def test_symfony_test_run_adds_doctrine_dbname_suffix() -> None:
    found, _ = run_fixture("symfony", framework="symfony", kind=Kind.TEST)
    # DATABASE_URL in .env always contributes too: here the dev database.
    target, dev = found.targets
    assert (target.name, dev.name) == ("app_test", "app")
    assert "dbname_suffix '_test'" in target.source
    assert "APP_ENV=test" in target.source


def test_symfony_reads_the_variable_doctrine_yaml_names() -> None:
    files = {
        "bin/console": "",
        ".env": "DATABASE_URL=postgresql://app@db/other\nDB_URL=postgresql://app@db/shop\n",
        "config/packages/doctrine.yaml": "doctrine:\n  dbal:\n    url: '%env(resolve:DB_URL)%'\n",
    }
    found = run(files, framework="symfony", tool="console")
    assert "shop" in {t.name for t in found.targets}
    assert "DB_URL" in next(t for t in found.targets if t.name == "shop").source


def test_symfony_named_connection_is_refused_not_guessed() -> None:
    files = {
        "bin/console": "",
        ".env": "DATABASE_URL=postgresql://app@db/app\n",
        "config/packages/doctrine.yaml": "doctrine:\n  dbal:\n    default_connection: main\n",
    }
    with pytest.raises(DiscoveryError, match="--em/--connection customer") as info:
        run(files, framework="symfony", tool="console", hints={"connection": "customer"})
    assert ".dbguard.toml" in info.value.fix
    for name in ("default", "main"):  # main is the default connection here
        found = run(files, framework="symfony", tool="console", hints={"connection": name})
        assert only(found).name == "app"
    # The way out the refusal names works.
    files[".dbguard.toml"] = '[[database]]\nurl = "postgresql://app@db/customer"\n'
    found = run(files, framework="symfony", tool="console", hints={"connection": "customer"})
    assert "customer" in {t.name for t in found.targets}


def test_symfony_env_files_override_in_symfony_order() -> None:
    files = {
        "bin/console": "",
        ".env": "APP_ENV=dev\nDATABASE_URL=mysql://root@127.0.0.1/app\n",
        ".env.local": "DATABASE_URL=mysql://root@127.0.0.1/local\n",
        ".env.dev.local": "DATABASE_URL=mysql://root@127.0.0.1/dev_local\n",
    }
    assert run(files, framework="symfony").targets[0].name == "dev_local"


SYMFONY_RECIPE = {
    "bin/console": "",
    ".env": "APP_ENV=dev\nDATABASE_URL=postgresql://app@127.0.0.1:5432/app?serverVersion=16\n",
    ".env.test": "KERNEL_CLASS='App\\Kernel'\n",
    "config/packages/doctrine.yaml": (
        "doctrine:\n  dbal:\n    url: '%env(resolve:DATABASE_URL)%'\nwhen@test:\n"
        "  doctrine:\n    dbal:\n      dbname_suffix: '_test%env(default::TEST_TOKEN)%'\n"
    ),
}


def symfony_names(
    files: dict[str, str], env: dict[str, str] | None = None, **op: object
) -> set[str | None]:
    found = run(files, env, framework="symfony", tool="console", **op)  # type: ignore[arg-type]
    return {t.name for t in found.targets}


def test_symfony_commands_in_the_test_kernel_use_the_test_database() -> None:
    """Symfony's testing guide: `php bin/console --env=test doctrine:fixtures:load`."""
    # (DATABASE_URL in .env always contributes too: the dev database beside it)
    assert "app_test" in symfony_names(SYMFONY_RECIPE, hints={"env": "test"})
    assert "app_test" in symfony_names(SYMFONY_RECIPE, {"APP_ENV": "test"})
    assert symfony_names(SYMFONY_RECIPE) == {"app"}


def test_symfony_app_env_from_env_local_chooses_the_files() -> None:
    """Dotenv::loadEnv reads APP_ENV again once .env.local is loaded."""
    files = {
        **SYMFONY_RECIPE,
        ".env.local": "APP_ENV=staging\n",
        ".env.staging.local": "DATABASE_URL=postgresql://app@127.0.0.1:5432/staging_copy\n",
    }
    assert "staging_copy" in symfony_names(files)


def test_symfony_expands_a_variable_from_the_files_loaded_before() -> None:
    files = {
        **SYMFONY_RECIPE,
        ".env": "APP_ENV=dev\nDB_NAME=app\nDB_USER=app\n"
        "DATABASE_URL=postgresql://${DB_USER}@127.0.0.1:5432/${DB_NAME}\n",
        ".env.local": "DATABASE_URL=postgresql://${DB_USER}@127.0.0.1:5432/${DB_NAME}_local\n",
    }
    found = run(files, framework="symfony", tool="console")
    assert ("app_local", "app") in {(t.name, t.user) for t in found.targets}
    # the real environment still wins over every file
    assert "mine_local" in symfony_names(files, {"DB_NAME": "mine"})


def test_symfony_dumped_env_wins_when_its_env_matches() -> None:
    files = {
        "bin/console": "",
        ".env": "APP_ENV=dev\nDATABASE_URL=mysql://root@127.0.0.1/app\n",
        ".env.local.php": (
            "<?php\n\nreturn array (\n  'APP_ENV' => 'prod',\n"
            "  'DATABASE_URL' => 'mysql://app@db.example.com/shop',\n);\n"
        ),
    }
    target = run(files, {"APP_ENV": "prod"}, framework="symfony").targets[0]
    assert (target.host, target.name) == ("db.example.com", "shop")
    assert target.source.startswith(".env.local.php")
    # a dump for another environment is ignored, like Symfony ignores it
    assert keys(run(files, {"APP_ENV": "dev"}, framework="symfony")) == {
        "mysql://root@127.0.0.1:3306/app"
    }


def test_symfony_phpunit_in_a_symfony_project_reads_symfony_settings() -> None:
    found, _ = run_fixture("symfony", framework="laravel", tool="phpunit", kind=Kind.TEST)
    assert found.targets[0].name == "app_test"


# ---- Prisma -------------------------------------------------------------------------------------


def test_prisma_env_url_with_encoded_password_and_sslmode() -> None:
    found, _ = run_fixture("prisma", framework="prisma", tool="prisma")
    target = only(found)
    assert target.password is not None and target.password.get_secret_value() == "p@ss:word"
    assert target.params == {"sslmode": "prefer"}
    assert target.source.startswith(
        'prisma/schema.prisma (url = env("DATABASE_URL")) -> .env (DATABASE_URL); also .env'
    )


POOLED_SCHEMA = (
    'datasource db {\n  provider = "postgresql"\n  url = env("DATABASE_URL")\n'
    '  directUrl = env("DIRECT_URL")\n}\n'
)


def test_prisma_s_cli_connects_through_direct_url() -> None:
    """Prisma's schema reference: CLI commands that need a direct connection use
    directUrl (Supabase's and Neon's pooler setups); the app uses url."""
    files = {
        "prisma/schema.prisma": POOLED_SCHEMA,
        ".env": "DATABASE_URL=postgresql://app@localhost:6432/app?pgbouncer=true\n"
        "DIRECT_URL=postgresql://app@localhost:5432/app_direct\n",
    }
    found = run(files, framework="prisma", tool="prisma", command="migrate reset")
    assert {(t.port, t.name) for t in found.targets} == {(6432, "app"), (5432, "app_direct")}
    # Accelerate's prisma:// is no database: directUrl is the one
    files[".env"] = "DATABASE_URL=prisma://accelerate.prisma-data.net/?api_key=k\n" + (
        "DIRECT_URL=postgresql://app@localhost:5432/app\n"
    )
    found = run(files, framework="prisma", tool="prisma", command="migrate reset")
    assert (only(found).port, only(found).name) == (5432, "app")
    # A test run's code connects through url alone: the pooler's
    files[".env"] = "DATABASE_URL=postgresql://app@localhost:6432/app\n" + (
        "DIRECT_URL=postgresql://app@localhost:5432/app\n"
    )
    found = run(files, kind=Kind.TEST, framework=None, tool="vitest")
    assert {t.port for t in found.targets} == {6432}


def test_prisma_file_url_is_relative_to_the_schema_folder_and_prisma_env_is_read() -> None:
    files = {
        "prisma/schema.prisma": (
            'datasource db {\n  provider = "sqlite"\n  url      = env("DB_FILE")\n}\n'
        ),
        "prisma/.env": "DB_FILE=file:./dev.db\n",
    }
    target = only(run(files, framework="prisma", tool="prisma"))
    assert target.path == "/srv/app/prisma/dev.db"


def test_prisma_s_relative_database_url_is_not_also_read_from_the_project_root() -> None:
    files = {
        "prisma/schema.prisma": (
            'datasource db {\n  provider = "sqlite"\n  url = env("DATABASE_URL")\n}\n'
        ),
        ".env": "DATABASE_URL=file:./dev.db\n",
    }
    found = run(files, framework="prisma", tool="prisma")
    assert only(found).path == "/srv/app/prisma/dev.db"
    assert not any("/srv/app/dev.db" in note for note in found.notes)


def test_prisma_schema_option_and_package_json_setting() -> None:
    schema = 'datasource db {\n  provider = "mysql"\n  url = "mysql://root@127.0.0.1/shop"\n}\n'
    files = {
        "db/schema.prisma": schema,
        "package.json": '{"prisma": {"schema": "db/schema.prisma"}}',
    }
    assert only(run(files, framework="prisma", tool="prisma")).name == "shop"
    files = {"other/x.prisma": schema}
    assert (
        only(run(files, framework="prisma", tool="prisma", hints={"schema": "other/x.prisma"})).name
        == "shop"
    )


@pytest.mark.parametrize(
    ("hints", "package"),
    [
        ({}, None),  # the default folder, prisma/schema/
        ({"schema": "prisma/schema"}, None),
        ({}, '{"prisma": {"schema": "prisma/schema"}}'),
    ],
)
def test_prisma_multi_file_schema_folders_are_read(
    hints: dict[str, str], package: str | None
) -> None:
    files = {
        "prisma/schema/user.prisma": "model User {\n  id Int @id\n}\n",
        "prisma/schema/base/db.prisma": (
            'datasource db {\n  provider = "sqlite"\n  url = "file:./dev.db"\n}\n'
        ),
        **({"package.json": package} if package else {}),
    }
    target = only(run(files, framework="prisma", tool="prisma", hints=hints))
    assert target.path == "/srv/app/prisma/schema/base/dev.db"


def test_prisma_migrate_dev_backs_up_a_configured_shadow_database() -> None:
    files = {
        "prisma/schema.prisma": (
            'datasource db {\n  provider = "postgresql"\n  url = env("DATABASE_URL")\n'
            '  shadowDatabaseUrl = env("SHADOW_URL")\n}\n'
        ),
        ".env": "DATABASE_URL=postgres://a@127.0.0.1/shop\nSHADOW_URL=postgres://a@127.0.0.1/shadow\n",
    }
    dev = run(files, framework="prisma", tool="prisma", command="migrate dev")
    assert [t.name for t in dev.targets] == ["shop", "shadow"]
    assert "reset by migrate dev" in dev.targets[1].source
    reset = run(files, framework="prisma", tool="prisma", command="migrate reset")
    assert [t.name for t in reset.targets] == ["shop"]


def test_prisma_schema_at_the_root_and_in_prisma_config_ts() -> None:
    datasource = 'datasource db {\n  provider = "mysql"\n  url = "mysql://root@h/shop"\n}\n'
    assert only(run({"schema.prisma": datasource}, framework="prisma", tool="prisma")).name == (
        "shop"
    )
    files = {
        "prisma.config.ts": 'export default defineConfig({\n  schema: path.join("db"),\n})\n',
        "db/schema.prisma": 'generator client {\n  provider = "prisma-client-js"\n}\n',
        "db/models/base.prisma": datasource,
    }
    assert only(run(files, framework="prisma", tool="prisma")).name == "shop"
    # A test runner finds the project's Prisma by those files too.
    tested = run(files, framework=None, tool="jest", kind=Kind.TEST)
    assert only(tested).name == "shop"


def test_prisma_unset_variable_and_provider_mismatch() -> None:
    schema = 'datasource db {\n  provider = "postgresql"\n  url = env("MISSING")\n}\n'
    with pytest.raises(
        DiscoveryError, match=r"prisma/schema\.prisma, line 3: the database URL comes from MISSING"
    ):
        run({"prisma/schema.prisma": schema}, framework="prisma", tool="prisma")
    schema = 'datasource db {\n  provider = "postgresql"\n  url = "mysql://root@h/db"\n}\n'
    with pytest.raises(DiscoveryError, match="provider 'postgresql' does not match"):
        run({"prisma/schema.prisma": schema}, framework="prisma", tool="prisma")


def test_prisma_unsupported_provider_is_named() -> None:
    schema = 'datasource db {\n  provider = "mongodb"\n  url = "mongodb://h/db"\n}\n'
    with pytest.raises(DiscoveryError, match="MongoDB database, which dbguard cannot back up"):
        run({"prisma/schema.prisma": schema}, framework="prisma", tool="prisma")


# ---- Alembic ------------------------------------------------------------------------------------


def test_alembic_here_interpolation_and_named_section() -> None:
    found, root = run_fixture("alembic", framework="alembic", tool="alembic")
    assert only(found).path == f"{root}/var/app.db"
    assert only(found).source == "alembic.ini [alembic] sqlalchemy.url"
    found, _ = run_fixture(
        "alembic", framework="alembic", tool="alembic", hints={"section": "reporting"}
    )
    target = only(found)
    assert (target.engine, target.port, target.user, target.name) == (
        "postgres",
        5433,
        "report",
        "reports",
    )
    assert target.password is not None and target.password.get_secret_value() == "r@pw"


def test_alembic_env_py_reading_database_url_adds_it() -> None:
    found, _ = run_fixture(
        "alembic",
        {"DATABASE_URL": "mysql+pymysql://app@db/app?unix_socket=/run/mysqld/mysqld.sock"},
        framework="alembic",
        tool="alembic",
    )
    by_engine = {t.engine: t for t in found.targets}
    assert by_engine["mysql"].socket == "/run/mysqld/mysqld.sock"
    assert by_engine["mysql"].source.startswith("migrations/env.py reads DATABASE_URL")
    assert "migrations/env.py" in found.looked


def test_alembic_x_url_overrides_when_env_py_reads_x_arguments() -> None:
    files = {
        "alembic.ini": "[alembic]\nscript_location = migrations\nsqlalchemy.url = sqlite:///a.db\n",
        "migrations/env.py": "url = context.get_x_argument(as_dictionary=True).get('url')\n",
    }
    found = run(
        files,
        framework="alembic",
        tool="alembic",
        hints={"x": "tenant=acme\nurl=sqlite:///tenant.db"},
    )
    assert only(found).path == "/srv/app/tenant.db"
    assert only(found).source == "-x url=... on the command line"


def test_alembic_x_values_that_are_urls_count_whatever_their_key() -> None:
    files = {
        "alembic.ini": "[alembic]\nscript_location = migrations\nsqlalchemy.url = sqlite:///a.db\n",
        "migrations/env.py": "db = context.get_x_argument(as_dictionary=True).get('dbname')\n",
    }
    hints = {"x": "dbname=postgresql+psycopg://app@127.0.0.1/tenant"}
    found = run(files, framework="alembic", tool="alembic", hints=hints)
    assert only(found).name == "tenant"


def test_alembic_env_py_variables_holding_a_database_url_count_whatever_their_name() -> None:
    env_py = (
        "if os.environ.get('POSTGRES_URI'):\n"
        "    config.set_main_option('sqlalchemy.url', os.environ['POSTGRES_URI'])\n"
        "debug = os.getenv('LOG_LEVEL')\n"
    )
    files = {
        "alembic.ini": "[alembic]\nscript_location = migrations\nsqlalchemy.url = sqlite:///a.db\n",
        "migrations/env.py": env_py,
    }
    env = {"POSTGRES_URI": "postgresql://app@127.0.0.1/other", "LOG_LEVEL": "debug"}
    found = run(files, env, framework="alembic", tool="alembic")
    assert {t.name or t.path for t in found.targets} == {"other", "/srv/app/a.db"}


def test_alembic_without_url_falls_back_to_database_url_and_says_so() -> None:
    files = {
        "alembic.ini": "[alembic]\nscript_location = pkg:migrations\n",
        ".env": "DATABASE_URL=sqlite:///app.db\n",
    }
    target = only(run(files, framework="alembic", tool="alembic"))
    assert "alembic.ini has no sqlalchemy.url" in target.source
    assert "DATABASE_URL (.env, line 1)" in target.source


def test_alembic_init_placeholder_replaced_by_env_py_code_takes_the_dbguard_toml_database() -> None:
    # alembic init's alembic.ini, and an env.py that sets the URL from the app's code.
    files = {
        "alembic.ini": (
            "[alembic]\nscript_location = migrations\n"
            "sqlalchemy.url = driver://user:pass@localhost/dbname\n"
        ),
        "migrations/env.py": (
            "from myapp.settings import SQLALCHEMY_URL\n"
            'config.set_main_option("sqlalchemy.url", SQLALCHEMY_URL)\n'
        ),
    }
    with pytest.raises(DiscoveryError) as refused:
        run(files, framework="alembic", tool="alembic")
    assert "migrations/env.py sets sqlalchemy.url from code dbguard does not run" in str(
        refused.value
    )
    assert "pass" not in refused.value.problem  # the placeholder's password stays unshown
    assert ".dbguard.toml" in refused.value.fix

    files[".dbguard.toml"] = '[[database]]\nurl = "sqlite:///app.db"\n'
    assert only(run(files, framework="alembic", tool="alembic")).path == "/srv/app/app.db"


def test_alembic_bad_inputs_name_file_and_line() -> None:
    with pytest.raises(DiscoveryError, match=r"alembic\.ini, line 2"):
        run(
            {"alembic.ini": "[alembic]\nthis line has no equals sign\n"},
            framework="alembic",
            tool="alembic",
        )
    with pytest.raises(
        DiscoveryError,
        match=(
            r"alembic\.ini, line 2: 'driver://user:\*\*\*@localhost/dbname' is not a "
            r"database URL"
        ),
    ):
        run(
            {"alembic.ini": "[alembic]\nsqlalchemy.url = driver://user:pass@localhost/dbname\n"},
            framework="alembic",
            tool="alembic",
        )
    with pytest.raises(DiscoveryError, match=r"no \[prod\] section"):
        run(
            {"alembic.ini": "[alembic]\n"},
            framework="alembic",
            tool="alembic",
            hints={"section": "prod"},
        )


# ---- Django -------------------------------------------------------------------------------------


def test_django_stock_sqlite_settings_are_recognised_not_run() -> None:
    found, root = run_fixture("django", framework="django", tool="manage.py")
    target = only(found)
    assert target.path == f"{root}/db.sqlite3"
    assert target.source.startswith("mysite/settings.py, line 10")
    assert "Django settings mysite.settings (manage.py; code, not executed)" in found.looked


def test_django_database_url_and_settings_option_recorded() -> None:
    found = run(
        {"manage.py": "", ".env": "DATABASE_URL=postgres://app@127.0.0.1/app\n"},
        framework="django",
        tool="manage.py",
        hints={"settings": "proj.settings.ci"},
    )
    assert only(found).name == "app"
    assert "Django settings proj.settings.ci (--settings; code, not executed)" in found.looked


@pytest.mark.parametrize("env", [{}, {"DATABASE_URL": "postgres://app@127.0.0.1/analytics"}])
def test_django_with_settings_only_in_code_asks_for_dbguard_toml(env: dict[str, str]) -> None:
    # Also with a DATABASE_URL about: these settings never read it, so it names some
    # other database than the one `manage.py flush` would empty.
    settings = (
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'shop'}}\n"
    )
    files = {"manage.py": "", "proj/settings.py": settings}
    with pytest.raises(DiscoveryError, match="DATABASES is set in code") as info:
        run(
            files,
            {"DJANGO_SETTINGS_MODULE": "proj.settings", **env},
            framework="django",
            tool="manage.py",
        )
    assert ".dbguard.toml" in info.value.fix


@pytest.mark.parametrize(
    "settings",
    [
        "import dj_database_url\nDATABASES = {'default': dj_database_url.config()}\n",
        "DATABASES = {'default': env.db('DATABASE_URL')}\n",
        "DATABASES = {'default': ENV.db()}\n",
        "DATABASES = {'default': environ.Env().db()}\n",
        "DATABASES = {'default': parse(os.environ['DATABASE_URL'])}\n",
        "DATABASES = values.DatabaseURLValue()\n",  # django-configurations
        # cookiecutter-django's production.py: adjusts what base.py built from the URL
        "from .base import *  # noqa\nDATABASES['default']['CONN_MAX_AGE'] = 60\n",
        "DATABASES['default']['TEST'] = {'NAME': 'x'}\n",
    ],
)
def test_django_settings_that_read_database_url_use_it(settings: str) -> None:
    files = {"manage.py": "", "proj/settings.py": settings}
    env = {"DJANGO_SETTINGS_MODULE": "proj.settings", "DATABASE_URL": "postgres://a@h/shop"}
    assert only(run(files, env, framework="django", tool="manage.py")).name == "shop"


HARD_CODED = "DATABASES = {'default': {'ENGINE': 'x.postgresql', 'NAME': 'shop_test'}}\n"
FROM_URL = "DATABASES = {'default': env.db('DATABASE_URL')}\n"


@pytest.mark.parametrize(
    ("modules", "where"),
    [
        # a test settings module that imports the URL-reading base, then replaces it
        ({"base": FROM_URL, "test": f"from .base import *\n{HARD_CODED}"}, "test.py, line 2"),
        # a package whose __init__ only imports the module that hard-codes it
        ({"__init__": "from .hard import *  # noqa\n", "hard": HARD_CODED}, "hard.py, line 1"),
        ({"test": "from proj.settings.hard import *\n", "hard": HARD_CODED}, "hard.py"),
        (
            {"test": "from .mid import *\n", "mid": "from .hard import *\n", "hard": HARD_CODED},
            "hard.py",
        ),
    ],
)
def test_django_star_imports_are_followed_to_the_databases_they_set(
    modules: dict[str, str], where: str
) -> None:
    files = {"manage.py": "", **{f"proj/settings/{m}.py": t for m, t in modules.items()}}
    module = "proj.settings" if "__init__" in modules else "proj.settings.test"
    env = {"DJANGO_SETTINGS_MODULE": module, "DATABASE_URL": "postgres://a@h/shop"}
    with pytest.raises(DiscoveryError, match="DATABASES is set in code") as info:
        run(files, env, framework="django", tool="manage.py")
    assert where in info.value.problem


@pytest.mark.parametrize(
    "reader",
    [
        "env.db('APP_DATABASE_URL')",
        "env.db_url(var='APP_DATABASE_URL')",
        "dj_database_url.config(conn_max_age=600, env='APP_DATABASE_URL')",
        "dj_database_url.parse(os.environ['APP_DATABASE_URL'])",
    ],
)
def test_django_settings_reading_another_variable_back_up_its_database(reader: str) -> None:
    files = {
        "manage.py": "",
        "proj/settings.py": f"DATABASES = {{'default': {reader}}}\n",
        ".env": "APP_DATABASE_URL=postgres://a@127.0.0.1/shop\n",
    }
    env = {"DJANGO_SETTINGS_MODULE": "proj.settings", "DATABASE_URL": "postgres://a@h/other"}
    found = run(files, env, framework="django", tool="manage.py")
    assert "shop" in {t.name for t in found.targets}
    with pytest.raises(DiscoveryError, match="APP_DATABASE_URL, which is not set"):
        run({**files, ".env": ""}, env, framework="django", tool="manage.py")


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("pyproject.toml", '[tool.pytest.ini_options]\nenv = ["DATABASE_URL={url}"]\n'),
        ("pyproject.toml", '[tool.pytest_env]\nDATABASE_URL = "{url}"\n'),
        ("pytest.ini", "[pytest]\nenv =\n    R:DATABASE_URL={url}\n"),
        ("setup.cfg", "[tool:pytest]\nenv =\n    DATABASE_URL={url}\n"),
    ],
)
def test_pytest_env_s_database_url_is_the_one_a_test_run_uses(file: str, text: str) -> None:
    url = "postgresql://app@127.0.0.1/shop_test"
    files = {file: text.format(url=url), ".env": "DATABASE_URL=postgresql://app@127.0.0.1/shop\n"}
    found = run(files, framework="python", tool="pytest", kind=Kind.TEST)
    assert only(found).name == "shop_test"
    # D: (default) leaves a variable the command already has
    files[file] = files[file].replace("DATABASE_URL=", "D:DATABASE_URL=")
    if "D:" in files[file]:
        env = {"DATABASE_URL": "postgresql://app@127.0.0.1/mine"}
        found = run(files, env, framework="python", tool="pytest", kind=Kind.TEST)
        assert only(found).name == "mine"


# pytest-dotenv 0.5.2 (pytest_dotenv/plugin.py): `env_files` in the pytest ini, loaded in
# order by python-dotenv before the tests, under the environment unless
# env_override_existing_values; --envfile at session start, over everything.
DOTENV_TEST = "DATABASE_URL=postgresql://app@127.0.0.1/app_test\n"
DOTENV_DEV = "DATABASE_URL=postgresql://app@127.0.0.1/app_dev\n"


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("pytest.ini", "[pytest]\nenv_files =\n    {files}\n{override}"),
        ("setup.cfg", "[tool:pytest]\nenv_files =\n    {files}\n{override}"),
        ("tox.ini", "[pytest]\nenv_files = {files}\n{override}"),
        ("pyproject.toml", "[tool.pytest.ini_options]\nenv_files = {list}\n{override}"),
    ],
)
def test_pytest_dotenv_s_env_files_are_the_ones_a_test_run_uses(file: str, text: str) -> None:
    def ini(files: list[str], override: bool = False) -> dict[str, str]:
        setting = "env_override_existing_values = 1\n" if override else ""
        config = text.format(files="\n    ".join(files), list=files, override=setting)
        return {file: config, ".env.test": DOTENV_TEST, ".env": DOTENV_DEV, ".env.ci": ""}

    found = run(ini([".env.test"]), framework="python", tool="pytest", kind=Kind.TEST)
    assert only(found).name == "app_test"
    assert ".env.test (pytest env_files)" in found.looked, found.looked
    # python-dotenv keeps a variable that is set: the first file's, the environment's
    ci = {".env.ci": DOTENV_TEST.replace("app_test", "app_ci")}
    found = run({**ini([".env.test", ".env.ci"]), **ci}, framework="python", tool="pytest")
    assert only(found).name == "app_test"
    env = {"DATABASE_URL": "postgresql://app@127.0.0.1/mine"}
    assert only(run(ini([".env.test"]), env, framework="python", tool="pytest")).name == "mine"
    # ... unless env_override_existing_values: then each file over the one before
    files = {**ini([".env.test", ".env.ci"], override=True), **ci}
    assert only(run(files, env, framework="python", tool="pytest")).name == "app_ci"


def test_pytest_dotenv_s_env_files_are_found_from_the_folder_pytest_runs_in_upwards() -> None:
    files = {
        "pytest.ini": "[pytest]\nenv_files =\n    .env.test\n",
        ".env.test": DOTENV_TEST,
        "api/.env.test": DOTENV_TEST.replace("app_test", "api_test"),
        "web/conftest.py": "",
    }
    assert only(run(files, cwd=ROOT / "api", framework="python", tool="pytest")).name == "api_test"
    assert only(run(files, cwd=ROOT / "web", framework="python", tool="pytest")).name == "app_test"


def test_pytest_dotenv_s_envfile_option_overrides_the_environment() -> None:
    files = {"pytest.ini": "[pytest]\nenv_files = .env.test\n", ".env.test": DOTENV_TEST}
    files[".env.ci"] = DOTENV_TEST.replace("app_test", "app_ci")
    env = {"DATABASE_URL": "postgresql://app@127.0.0.1/mine"}
    found = run(files, env, framework="python", tool="pytest", hints={"envfile": ".env.ci"})
    assert only(found).name == "app_ci"


# pytest-env 1.8 (pytest_env/plugin.py): [tool.pytest_env] env_files (else the ini's
# env_files), relative to the rootdir, each file over the environment and the one before
# unless env_files_skip_if_set; the table's own variables over the files; --envfile PATH
# instead of the configured files, --envfile +PATH after them.
def test_pytest_env_s_env_files_are_the_ones_a_test_run_uses() -> None:
    def project(table: str) -> dict[str, str]:
        return {
            "pyproject.toml": f"[tool.pytest_env]\n{table}",
            ".env.test": DOTENV_TEST,
            ".env.ci": DOTENV_TEST.replace("app_test", "app_ci"),
            ".env": DOTENV_DEV,
        }

    env = {"DATABASE_URL": "postgresql://app@127.0.0.1/mine"}
    files = project("env_files = ['.env.test']\n")
    assert only(run(files, env, framework="python", tool="pytest")).name == "app_test"
    files = project("env_files = ['.env.test', '.env.ci']\n")
    assert only(run(files, framework="python", tool="pytest")).name == "app_ci"
    files = project("env_files = ['.env.test', '.env.ci']\nenv_files_skip_if_set = true\n")
    assert only(run(files, env, framework="python", tool="pytest")).name == "mine"
    assert only(run(files, framework="python", tool="pytest")).name == "app_ci"
    inline = 'DATABASE_URL = "postgresql://app@127.0.0.1/inline"\n'
    files = project(f"env_files = ['.env.test']\n{inline}")
    assert only(run(files, framework="python", tool="pytest")).name == "inline"
    files = project("env_files = ['.env.test']\n")
    for option, name in ((".env.ci", "app_ci"), ("+.env.ci", "app_ci"), ("+.env", "app_dev")):
        found = run(files, env, framework="python", tool="pytest", hints={"envfile": option})
        assert only(found).name == name, option
    # relative to the rootdir, not to the folder pytest runs in
    found = run(files, cwd=ROOT / "tests", framework="python", tool="pytest")
    assert only(found).name == "app_test"


def test_pytest_env_s_table_values_that_are_not_strings_are_set_as_strings() -> None:
    table = "[tool.pytest_env]\nDATABASE_URL = 'postgresql://app@h/x'\nPGPORT = 5433\n"
    files = {"pyproject.toml": table}
    assert only(run(files, framework="python", tool="pytest")).port == 5433


def test_pytest_django_s_settings_module_in_pytest_ini_is_the_one_read() -> None:
    files = {
        "manage.py": "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings.base')\n",
        "pytest.ini": "[pytest]\nDJANGO_SETTINGS_MODULE = proj.settings.hard\n",
        "proj/settings/base.py": FROM_URL,
        "proj/settings/hard.py": HARD_CODED,
        ".env": "DATABASE_URL=postgres://a@h/shop\n",
    }
    with pytest.raises(DiscoveryError, match=r"hard\.py, line 1: DATABASES is set in code"):
        run(files, framework="django", tool="pytest", kind=Kind.TEST)
    env = {"DJANGO_SETTINGS_MODULE": "proj.settings.base"}  # the environment's comes first
    found = run(files, env, framework="django", tool="pytest", kind=Kind.TEST)
    assert only(found).name == "shop"


def test_django_star_imports_of_url_settings_use_the_url() -> None:
    adjusts = "from .base import *\nDATABASES['default']['CONN_MAX_AGE'] = 60\n"
    files = {"manage.py": "", "proj/settings/base.py": FROM_URL, "proj/settings/prod.py": adjusts}
    env = {"DJANGO_SETTINGS_MODULE": "proj.settings.prod", "DATABASE_URL": "postgres://a@h/shop"}
    assert only(run(files, env, framework="django", tool="manage.py")).name == "shop"


@pytest.mark.parametrize(
    "default",
    [
        "f\"sqlite:///{BASE_DIR / 'db.sqlite3'}\"",
        "'sqlite:///' + os.path.join(BASE_DIR, 'db.sqlite3')",
        "f'sqlite:///{BASE_DIR}/db.sqlite3'",
    ],
)
def test_django_s_sqlite_default_is_backed_up_besides_database_url(default: str) -> None:
    settings = (
        "BASE_DIR = Path(__file__).resolve().parent.parent\n"
        f"DATABASES = {{'default': dj_database_url.config(default={default})}}\n"
    )
    assert django_databases_beside_dot_env(settings) == {
        ("postgres", "shop"),
        ("sqlite", f"{ROOT}/db.sqlite3"),
    }


@pytest.mark.parametrize(
    "databases",
    [
        "import dj_database_url\nDATABASES = {'default': dj_database_url.config(\n"
        "    default='postgres://postgres@localhost:5432/myapp', conn_max_age=600)}\n",
        "import environ\nenv = environ.Env()\n"
        "DATABASES = {'default': env.db('DATABASE_URL', default='postgres://postgres@localhost/myapp')}\n",
    ],
    ids=["dj_database_url", "django-environ"],
)
def test_django_s_server_default_beside_database_url_is_backed_up(databases: str) -> None:
    assert django_databases_beside_dot_env(databases) == {
        ("postgres", "shop"),
        ("postgres", "myapp"),
    }


def django_databases_beside_dot_env(settings: str) -> set[tuple[str, str | None]]:
    """A DATABASE_URL only in a .env the settings never load: Django runs on the
    settings' default, and dbguard cannot tell which, so both count."""
    files = {
        "manage.py": "",
        "proj/settings.py": settings,
        ".env": "DATABASE_URL=postgres://a@127.0.0.1/shop\n",
    }
    env = {"DJANGO_SETTINGS_MODULE": "proj.settings"}
    found = run(files, env, framework="django", tool="manage.py")
    return {(t.engine, t.name or t.path) for t in found.targets}


def test_django_s_other_database_aliases_need_dbguard_toml() -> None:
    files = {"manage.py": "", ".env": "DATABASE_URL=postgres://a@127.0.0.1/shop\n"}
    with pytest.raises(DiscoveryError, match="--database=legacy: Django's DATABASES is code"):
        run(files, framework="django", tool="manage.py", hints={"connection": "legacy"})
    assert only(run(files, framework="django", tool="manage.py", hints={"connection": "default"}))
    other = '[[database]]\nurl = "postgres://a@127.0.0.1/legacy"\nlabel = "reporting"\n'
    with pytest.raises(DiscoveryError, match="--database=legacy"):  # some other database
        run({**files, ".dbguard.toml": other}, framework="django", hints={"connection": "legacy"})
    named = {**files, ".dbguard.toml": other.replace("reporting", "legacy")}
    found = run(named, framework="django", tool="manage.py", hints={"connection": "legacy"})
    assert "legacy" in {t.name for t in found.targets}


# ---- Flask-SQLAlchemy ---------------------------------------------------------------------------

FLASK_APP = (
    "import os\nfrom flask import Flask\nfrom flask_sqlalchemy import SQLAlchemy\n"
    "app = Flask(__name__)\n"
    'app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]\n'
)


@pytest.mark.parametrize(
    ("files", "instance"),
    [
        ({"app.py": FLASK_APP}, "instance"),  # a module: instance/ beside it
        ({"shop/__init__.py": "", "shop/models.py": FLASK_APP}, "instance"),  # a package
        ({"src/shop/__init__.py": FLASK_APP}, "src/instance"),  # src layout
        ({"requirements.txt": "Flask-SQLAlchemy>=3\n", "wsgi.py": ""}, "instance"),
        ({"pyproject.toml": '[project]\ndependencies = ["flask_sqlalchemy"]\n'}, "instance"),
    ],
    ids=["module", "package", "src", "requirements", "pyproject"],
)
@pytest.mark.parametrize(
    ("tool", "kind"), [("flask", Kind.MIGRATE), ("pytest", Kind.TEST)], ids=["flask-db", "pytest"]
)
def test_flask_sqlalchemy_s_relative_sqlite_url_is_in_the_instance_folder(
    files: dict[str, str], instance: str, tool: str, kind: Kind
) -> None:
    # Flask-SQLAlchemy 3 opens sqlite:///app.db as <instance_path>/app.db.
    files = {**files, ".env": "DATABASE_URL=sqlite:///app.db\n"}
    found = run(files, framework="python", tool=tool, kind=kind)
    assert keys(found) == {f"sqlite:{ROOT}/app.db", f"sqlite:{ROOT}/{instance}/app.db"}
    target = next(t for t in found.targets if t.path == f"{ROOT}/{instance}/app.db")
    assert f"instance folder {instance}/" in target.source


@pytest.mark.parametrize(
    ("files", "url"),
    [
        ({"app.py": "from sqlalchemy import create_engine\n"}, "sqlite:///app.db"),
        ({"app.py": FLASK_APP}, "sqlite:////var/app.db"),  # absolute: no instance folder
        ({"app.py": FLASK_APP}, "sqlite+aiosqlite:///app.db"),  # left alone by it
        ({"app.py": FLASK_APP}, "sqlite:///:memory:"),
    ],
    ids=["plain-sqlalchemy", "absolute", "other-driver", "memory"],
)
def test_sqlite_urls_flask_sqlalchemy_does_not_move_stay_where_they_are(
    files: dict[str, str], url: str
) -> None:
    found = run({**files, ".env": f"DATABASE_URL={url}\n"}, framework="python", tool="pytest")
    assert not any("instance" in (t.path or "") for t in found.targets)


def test_flask_s_cli_reads_database_url_from_flaskenv_under_env() -> None:
    # `flask db upgrade` loads .flaskenv and .env (python-dotenv); .env wins.
    files = {"wsgi.py": "", ".flaskenv": "FLASK_APP=wsgi\nDATABASE_URL=postgres://a@h/shop\n"}
    assert only(run(files, framework="python", tool="flask")).name == "shop"
    env_wins = {**files, ".env": "DATABASE_URL=postgres://a@h/other\n"}
    assert only(run(env_wins, framework="python", tool="flask")).name == "other"
    # pytest does not load .flaskenv: the test run names no database from it.
    assert not run(files, framework="python", tool="pytest", kind=Kind.TEST).targets


# ---- Rails --------------------------------------------------------------------------------------


def test_rails_multi_database_development_yields_every_database() -> None:
    found, _ = run_fixture("rails", framework="rails", tool="rails")
    assert {t.name for t in found.targets} == {"blog_development", "animals_development"}
    facts = found.facts_for(found.targets[0])
    assert any(s.name == "RAILS_ENV" and s.value == "development" for s in facts.app_env)


@pytest.mark.parametrize(
    "task", ["db:reset", "db:drop db:create", "db:schema:load", "db:migrate:reset", "db:drop:all"]
)
def test_rails_tasks_that_also_hit_the_test_database_in_development(task: str) -> None:
    found, _ = run_fixture(
        "rails", framework="rails", tool="rails", kind=Kind.DESTRUCTIVE, command=task
    )
    assert {t.name for t in found.targets} == {
        "blog_development",
        "animals_development",
        "blog_test",  # ActiveRecord runs these on the test database too
    }
    test_db = next(t for t in found.targets if t.name == "blog_test")
    assert "on it too in development" in test_db.source


@pytest.mark.parametrize(
    ("task", "env"),
    [
        ("db:migrate", {}),  # migrations run on the current environment only
        ("db:reset", {"SKIP_TEST_DATABASE": "true"}),
        ("db:reset", {"DATABASE_URL": "postgres://app@db/blog_development"}),
    ],
)
def test_rails_tasks_that_stay_in_their_environment(task: str, env: dict[str, str]) -> None:
    found, _ = run_fixture(
        "rails", env, framework="rails", tool="rails", kind=Kind.DESTRUCTIVE, command=task
    )
    names = {t.name for t in found.targets}
    assert "blog_development" in names and "blog_test" not in names


def test_rails_test_run_uses_test_and_erb_fetch_with_default() -> None:
    found, _ = run_fixture("rails", framework="rails", tool="rails", kind=Kind.TEST)
    assert only(found).name == "blog_test"
    found, _ = run_fixture(
        "rails",
        {"TEST_DB": "ci_test", "DB_HOST": "pg"},
        framework="rails",
        tool="rails",
        kind=Kind.TEST,
    )
    assert (only(found).name, only(found).host) == ("ci_test", "pg")


def test_rails_production_skips_replicas_and_is_production() -> None:
    found, _ = run_fixture(
        "rails",
        {
            "RAILS_ENV": "production",
            "BLOG_DATABASE_PASSWORD": "pw",
            "DB_HOST": "db.example.com",
            "DB_USER": "blog",
        },
        framework="rails",
        tool="rails",
    )
    target = only(found)
    assert (target.name, target.user) == ("blog_production", "blog")
    assert target.password is not None and target.password.get_secret_value() == "pw"
    assert any("read replica" in n for n in found.notes)
    verdict = classify_production(
        target, {"RAILS_ENV": "production"}, facts=found.facts_for(target)
    )
    assert verdict.production
    assert "production because RAILS_ENV=production (the invoking environment)" in verdict.reasons


def test_rails_database_url_overrides_the_primary() -> None:
    found, _ = run_fixture(
        "rails",
        {"DATABASE_URL": "postgres://u@db.example.com/override"},
        framework="rails",
        tool="rails",
    )
    assert {t.name for t in found.targets} == {"override", "animals_development"}
    primary = next(t for t in found.targets if t.name == "override")
    assert primary.source.startswith(
        "DATABASE_URL (the invoking environment) over config/database.yml (development.primary)"
    )


RAILS_8_TEST = (
    "default: &default\n  adapter: sqlite3\n"
    '  pool: <%= ENV.fetch("RAILS_MAX_THREADS") { 5 } %>\n'
    "test:\n"
    "  {first}:\n    <<: *default\n    database: storage/test.sqlite3\n"
    "  cache:\n    <<: *default\n    database: storage/test_cache.sqlite3\n"
)


def test_rails_primary_database_url_wins_over_database_url_for_primary() -> None:
    # ActiveRecord: ENV["PRIMARY_DATABASE_URL"] || ENV["DATABASE_URL"] for `primary`.
    files = {"config/database.yml": RAILS_8_TEST.replace("{first}", "primary")}
    env = {
        "PRIMARY_DATABASE_URL": "postgres://u@localhost/hpy_primary",
        "DATABASE_URL": "postgres://u@localhost/hpy_other",
    }
    found = run(files, env, framework="rails", tool="rails", kind=Kind.TEST)
    assert {t.name or t.path for t in found.targets} == {
        "hpy_primary",
        f"{ROOT}/storage/test_cache.sqlite3",
        "hpy_other",  # DATABASE_URL always counts (generic.py), whoever reads it
    }
    primary = next(t for t in found.targets if t.name == "hpy_primary")
    assert primary.source.startswith("PRIMARY_DATABASE_URL (the invoking environment) over")


def test_rails_database_url_is_not_merged_into_a_first_database_not_named_primary() -> None:
    # Rails merges DATABASE_URL into the database named `primary` only: `main` keeps
    # storage/test.sqlite3, which a rails test run resets.
    files = {"config/database.yml": RAILS_8_TEST.replace("{first}", "main")}
    env = {"DATABASE_URL": "postgres://u@localhost/hpy_other"}
    found = run(files, env, framework="rails", tool="rails", kind=Kind.TEST)
    assert {t.name or t.path for t in found.targets} == {
        f"{ROOT}/storage/test.sqlite3",
        f"{ROOT}/storage/test_cache.sqlite3",
        "hpy_other",
    }
    main = {"MAIN_DATABASE_URL": "postgres://u@localhost/hpy_main"}
    found = run(files, main, framework="rails", tool="rails", kind=Kind.TEST)
    assert {t.name or t.path for t in found.targets} == {
        "hpy_main",
        f"{ROOT}/storage/test_cache.sqlite3",
    }


def test_rails_sqlite_and_env_option() -> None:
    yml = (
        "development:\n  adapter: sqlite3\n  database: storage/development.sqlite3\n"
        "staging:\n  adapter: sqlite3\n  database: storage/staging.sqlite3\n"
    )
    files = {"config/database.yml": yml}
    assert (
        only(run(files, framework="rails", tool="rails")).path
        == "/srv/app/storage/development.sqlite3"
    )
    assert (
        only(run(files, framework="rails", tool="rails", hints={"env": "staging"})).path
        == "/srv/app/storage/staging.sqlite3"
    )


def test_rails_dotenv_files_when_the_gemfile_has_dotenv() -> None:
    files = {
        "Gemfile": "gem 'dotenv-rails', groups: [:development, :test]\n",
        ".env": "DB_NAME=from_dotenv\n",
        "config/database.yml": (
            'development:\n  adapter: postgresql\n  database: <%= ENV["DB_NAME"] %>\n'
        ),
    }
    assert only(run(files, framework="rails", tool="rails")).name == "from_dotenv"


def test_rails_bad_inputs() -> None:
    bad_yaml = "development:\n  adapter: postgresql\n   database: x\n"
    with pytest.raises(DiscoveryError, match=r"config/database\.yml, line 3: not valid YAML"):
        run({"config/database.yml": bad_yaml}, framework="rails", tool="rails")
    control = "development:\n<% if ENV['X'] %>\n  adapter: postgresql\n<% end %>\n"
    with pytest.raises(DiscoveryError, match=r"line 2: ERB code"):
        run({"config/database.yml": control}, framework="rails", tool="rails")
    code = (
        "development:\n  adapter: postgresql\n  database: <%= Secrets.db_name %>\n"
        "  pool: <%= Etc.nprocessors %>\n"
    )
    with pytest.raises(
        DiscoveryError, match=r"line 3: development\.database is <%= Secrets\.db_name %>"
    ):
        run({"config/database.yml": code}, framework="rails", tool="rails")
    with pytest.raises(DiscoveryError, match="no 'staging' environment"):
        run(
            {"config/database.yml": "development:\n  adapter: sqlite3\n  database: x\n"},
            {"RAILS_ENV": "staging"},
            framework="rails",
            tool="rails",
        )


def test_rails_harmless_erb_in_pool_is_ignored() -> None:
    yml = "development:\n  adapter: postgresql\n  database: app\n  pool: <%= Etc.nprocessors %>\n"
    assert only(run({"config/database.yml": yml}, framework="rails", tool="rails")).name == "app"


# ---- Knex, Sequelize, TypeORM -------------------------------------------------------------------


def test_knex_environment_blocks() -> None:
    found, _ = run_fixture("knex", framework="knex", tool="knex", hints={"env": "staging"})
    assert (only(found).engine, only(found).name, only(found).user) == (
        "postgres",
        "my_db",
        "username",
    )
    found, _ = run_fixture(
        "knex",
        {"NODE_ENV": "production", "DATABASE_URL": "postgres://u@db.example.com/prod"},
        framework="knex",
        tool="knex",
    )
    assert only(found).host == "db.example.com"
    assert (
        "knexfile.js (production) -> the invoking environment (DATABASE_URL)" in only(found).source
    )


def test_knex_code_falls_back_to_database_url_or_fails_naming_the_file() -> None:
    with pytest.raises(
        DiscoveryError, match=r"knexfile\.js: the connection is code \(buildConnection\(\)\)"
    ):
        run_fixture("knex", {"NODE_ENV": "computed"}, framework="knex", tool="knex")
    found, _ = run_fixture(
        "knex",
        {"NODE_ENV": "computed", "DATABASE_URL": "mysql://r@h/x"},
        framework="knex",
        tool="knex",
    )
    assert "knexfile.js: the connection is code" in only(found).source


def test_knex_json_and_env_reference_with_default() -> None:
    files = {
        "knexfile.json": (
            '{"client": "mysql2", "connection": {"host": "127.0.0.1", "database": '
            '"shop", "user": "root"}}'
        )
    }
    assert only(run(files, framework="knex", tool="knex")).name == "shop"
    js = (
        "module.exports = {\n  client: 'pg',\n"
        "  connection: process.env.PG_URL || 'postgres://u@127.0.0.1/fallback',\n};\n"
    )
    assert only(run({"knexfile.js": js}, framework="knex", tool="knex")).name == "fallback"


def test_sequelize_sequelizerc_config_path_and_environments() -> None:
    found, root = run_fixture("sequelize", framework="sequelize", tool="sequelize", kind=Kind.TEST)
    assert only(found).path == f"{root}/db/test.sqlite3"
    with pytest.raises(
        DiscoveryError, match="reads the database URL from DATABASE_URL, which is not set"
    ):
        run_fixture(
            "sequelize", {"NODE_ENV": "production"}, framework="sequelize", tool="sequelize"
        )
    found, _ = run_fixture(
        "sequelize",
        {"NODE_ENV": "production", "DATABASE_URL": "postgres://u@h.example.com/p"},
        framework="sequelize",
        tool="sequelize",
    )
    assert only(found).name == "p"


def test_sequelize_and_typeorm_url_hint() -> None:
    found = run(
        {}, framework="sequelize", tool="sequelize", hints={"url": "mysql://root@127.0.0.1/cli"}
    )
    assert only(found).name == "cli"


def test_typeorm_data_source_file_and_env_variables() -> None:
    ts = (
        "import { DataSource } from 'typeorm';\n"
        "export const AppDataSource = new DataSource({\n"
        "  type: 'postgres',\n  url: process.env.DATABASE_URL,\n  entities: [User],\n});\n"
    )
    found = run(
        {"src/data-source.ts": ts},
        {"DATABASE_URL": "postgres://u@127.0.0.1/orm"},
        framework="typeorm",
        tool="typeorm",
        hints={"config": "src/data-source.ts"},
    )
    assert "orm" in {t.name for t in found.targets}
    found = run(
        {".env": "TYPEORM_CONNECTION=mysql\nTYPEORM_HOST=db\nTYPEORM_DATABASE=legacy\n"},
        framework="typeorm",
        tool="typeorm",
    )
    assert only(found).name == "legacy"


DRIZZLE_PG = (
    'import "dotenv/config";\nimport { defineConfig } from "drizzle-kit";\n'
    "export default defineConfig({\n  out: './drizzle',\n  schema: './src/db/schema.ts',\n"
    "  dialect: 'postgresql',\n  dbCredentials: {\n    url: process.env.POSTGRES_URL!,\n"
    "  },\n});\n"
)


def drizzle_kit(files: dict[str, str], **op: object) -> tuple[str, str | None, str | None]:
    found = run(files, framework="drizzle", tool="drizzle-kit", **op)  # type: ignore[arg-type]
    target = only(found)
    return target.engine, target.name or target.path, target.host


def test_drizzle_kit_reads_its_config_for_the_database() -> None:
    """Drizzle's own templates name no DATABASE_URL: POSTGRES_URL, DB_FILE_NAME."""
    env = ".env"
    assert drizzle_kit(
        {"drizzle.config.ts": DRIZZLE_PG, env: "POSTGRES_URL=postgres://app@127.0.0.1/shop\n"}
    ) == ("postgres", "shop", "127.0.0.1")
    sqlite = DRIZZLE_PG.replace("'postgresql'", "'sqlite'").replace(
        "process.env.POSTGRES_URL!", "process.env.DB_FILE_NAME!"
    )
    assert drizzle_kit({"drizzle.config.ts": sqlite, env: "DB_FILE_NAME=file:local.db\n"}) == (
        "sqlite",
        f"{ROOT}/local.db",
        None,
    )
    literal = sqlite.replace("process.env.DB_FILE_NAME!", '"./data/app.db"')
    assert drizzle_kit({"drizzle.config.ts": literal}) == ("sqlite", f"{ROOT}/data/app.db", None)
    # --url on the command line is what it acts on
    assert drizzle_kit(
        {"drizzle.config.ts": DRIZZLE_PG}, hints={"url": "postgres://app@127.0.0.1/other"}
    ) == ("postgres", "other", "127.0.0.1")


def test_drizzle_kit_with_a_config_it_cannot_read_says_how_to_name_the_database() -> None:
    computed = DRIZZLE_PG.replace("process.env.POSTGRES_URL!", "buildUrl()")
    with pytest.raises(DiscoveryError, match=r"drizzle\.config\.ts: the connection is code"):
        drizzle_kit({"drizzle.config.ts": computed})


def test_malformed_json_names_file_and_line() -> None:
    with pytest.raises(DiscoveryError, match=r"ormconfig\.json, line 2: not valid JSON"):
        run(
            {"ormconfig.json": '{"type": "postgres",\n  oops}'}, framework="typeorm", tool="typeorm"
        )


# ---- Flyway, Liquibase --------------------------------------------------------------------------


def test_flyway_conf_with_placeholders_and_sslmode() -> None:
    found, _ = run_fixture(
        "flyway",
        {"LEDGER_USER": "ledger", "LEDGER_PASSWORD": "pw"},
        framework="flyway",
        tool="flyway",
    )
    target = only(found)
    assert target.params == {"sslmode": "require"}
    assert target.password is not None and target.password.get_secret_value() == "pw"
    with pytest.raises(
        DiscoveryError,
        match=r"flyway\.conf, line 3: \$\{LEDGER_USER\} names LEDGER_USER, which is not set",
    ):
        run_fixture("flyway", framework="flyway", tool="flyway")


def test_flyway_url_hint_environment_and_jdbc_forms() -> None:
    found = run(
        {},
        framework="flyway",
        tool="flyway",
        hints={"url": "jdbc:mysql://127.0.0.1:3306/app?user=root"},
    )
    assert (only(found).engine, only(found).user) == ("mysql", "root")
    found = run(
        {},
        {"FLYWAY_URL": "jdbc:sqlite:db/app.db"},
        framework="flyway",
        tool="flyway",
        cwd=ROOT / "sub",
    )
    assert only(found).path == "/srv/app/sub/db/app.db"
    toml = (
        '[flyway]\nenvironment = "ci"\n[environments.ci]\nurl = "jdbc:mariadb://db:3306/ci"\n'
        'user = "ci"\n'
    )
    assert only(run({"flyway.toml": toml}, framework="flyway", tool="flyway")).name == "ci"


def test_liquibase_properties_and_hint() -> None:
    found, _ = run_fixture("liquibase", framework="liquibase", tool="liquibase")
    assert only(found).password is not None
    found = run(
        {}, framework="liquibase", tool="liquibase", hints={"url": "jdbc:postgresql://localhost/lb"}
    )
    assert only(found).name == "lb"


# ---- Supabase and the clients -------------------------------------------------------------------


def test_supabase_linked_project_and_db_url() -> None:
    files = {
        "supabase/config.toml": "[db]\nport = 54322\n",
        "supabase/.temp/project-ref": "abcdefghijklmnopqrst\n",
    }
    target = only(
        run(
            files,
            {"SUPABASE_DB_PASSWORD": "x"},
            framework="supabase",
            tool="supabase",
            hints={"target": "linked"},
        )
    )
    assert target.host == "db.abcdefghijklmnopqrst.supabase.co"
    assert classify_production(target, {}).production
    found = run(
        files,
        framework="supabase",
        tool="supabase",
        hints={"url": "postgresql://postgres:pw@127.0.0.1:6543/postgres"},
    )
    assert only(found).port == 6543


@pytest.mark.parametrize(
    ("command", "hints", "where"),
    [
        ("db push", {}, "remote"),  # the CLI pushes to the linked project by default
        ("db pull", {}, "remote"),
        ("migration repair", {}, "remote"),
        ("db push", {"target": "local"}, "local"),
        ("db reset", {}, "local"),  # reset defaults to the local stack
    ],
)
def test_supabase_commands_act_where_the_cli_would(
    command: str, hints: dict[str, str], where: str
) -> None:
    files = {
        "supabase/config.toml": "[db]\nport = 54322\n",
        "supabase/.temp/project-ref": "abcdefghijklmnopqrst\n",
    }
    target = only(run(files, framework="supabase", tool="supabase", command=command, hints=hints))
    remote = target.host == "db.abcdefghijklmnopqrst.supabase.co"
    assert remote == (where == "remote"), target.label
    if where == "local":
        assert (target.host, target.port) == ("127.0.0.1", 54322)


def test_supabase_config_toml_errors_name_the_line() -> None:
    with pytest.raises(DiscoveryError, match=r"supabase/config\.toml, line 2: not valid TOML"):
        run({"supabase/config.toml": "[db]\nport = = 1\n"}, framework="supabase", tool="supabase")


def test_psql_hints_and_pg_variables() -> None:
    found = run(
        {},
        {"PGPASSWORD": "pw", "USER": "me"},
        framework="client",
        tool="psql",
        hints={"host": "db.example.com", "database": "shop"},
    )
    target = only(found)
    assert (target.host, target.name, target.user) == ("db.example.com", "shop", "me")
    assert str(found.facts_for(target).fields["host"]) == "-h=db.example.com (the command line)"
    found = run(
        {},
        {"PGDATABASE": "pgdb", "PGHOST": "/run/postgresql", "USER": "me"},
        framework="client",
        tool="psql",
    )
    assert (only(found).socket, only(found).name) == ("/run/postgresql", "pgdb")


def test_psql_service_is_refused() -> None:
    with pytest.raises(DiscoveryError, match="service=prod"):
        run({}, framework="client", tool="psql", hints={"section": "prod"})


def test_mysql_client_needs_a_database() -> None:
    with pytest.raises(DiscoveryError, match="without a database could change any database"):
        run({}, framework="client", tool="mysql", hints={"host": "127.0.0.1"})
    target = only(
        run(
            {},
            {"MYSQL_PWD": "pw"},
            framework="client",
            tool="mariadb",
            hints={"database": "shop", "socket": "/run/mysqld/mysqld.sock"},
        )
    )
    assert (target.engine, target.socket, target.host) == ("mysql", "/run/mysqld/mysqld.sock", None)


def test_sqlite3_file_is_relative_to_the_working_folder() -> None:
    found = run(
        {},
        framework="client",
        tool="sqlite3",
        hints={"database": "data/app.db"},
        cwd=ROOT / "tools",
    )
    assert only(found).path == "/srv/app/tools/data/app.db"
    found = run({}, framework="client", tool="sqlite3", hints={"database": ":memory:"})
    assert found.targets == [] and found.notes


def test_client_ignores_unrelated_framework_files() -> None:
    files = {"artisan": "", ".env": "DB_CONNECTION=sqlsrv\n"}
    found = run(files, framework="client", tool="sqlite3", hints={"database": "x.db"})
    assert only(found).path == "/srv/app/x.db"


def test_discover_keeps_its_signature() -> None:
    found = discover(
        ROOT, {".env": "DATABASE_URL=sqlite:///a.db\n"}.get, {}, operation(framework=None)
    )
    assert only(found).path == "/srv/app/a.db"
    assert isinstance(ROOT, Path)


def test_dropdb_and_pg_restore_back_up_the_database_they_name() -> None:
    for tool, hints in (
        ("dropdb", {"host": "db.internal", "database": "shop"}),
        ("pg_restore", {"host": "db.internal", "database": "shop"}),
    ):
        target = only(run({}, {"PGUSER": "app"}, framework="client", tool=tool, hints=hints))
        assert (target.engine, target.host, target.name, target.user) == (
            "postgres",
            "db.internal",
            "shop",
            "app",
        )


def test_mysqladmin_drop_backs_up_the_database_it_names() -> None:
    hints = {"host": "db.internal", "port": "3307", "database": "shop", "user": "app"}
    target = only(run({}, {}, framework="client", tool="mysqladmin", hints=hints))
    assert (target.engine, target.host, target.port, target.name, target.user) == (
        "mysql",
        "db.internal",
        3307,
        "shop",
        "app",
    )


def test_prisma_7_takes_the_url_from_prisma_config_ts() -> None:
    schema = 'datasource db {\n  provider = "postgresql"\n}\n'
    config = (
        'import { defineConfig, env } from "prisma/config"\n'
        "export default defineConfig({\n"
        '  // datasource: { url: env("OLD_URL") },\n'
        '  datasource: { url: env<Env>("APP_DB_URL") },\n'
        "})\n"
    )
    files = {
        "prisma/schema.prisma": schema,
        "prisma.config.ts": config,
        ".env": "APP_DB_URL=postgresql://app@db/shop\n",
    }
    target = only(run(files, framework="prisma", tool="prisma"))
    assert target.name == "shop" and "prisma.config.ts, line 4" in target.source
    del files["prisma.config.ts"]
    with pytest.raises(DiscoveryError, match=r"no url, and no prisma\.config\.ts") as info:
        run(files, framework="prisma", tool="prisma")
    assert ".dbguard.toml" in info.value.fix


def test_prisma_7_config_literal_url_and_shadow_database() -> None:
    schema = 'datasource db {\n  provider = "postgresql"\n}\n'
    config = (
        'import "dotenv/config"\n'
        'import { defineConfig, env } from "prisma/config"\n'
        "export default defineConfig({\n"
        '  schema: "prisma/schema.prisma",\n'
        "  datasource: {\n"
        "    url: 'postgresql://app@db.internal:5433/shop',\n"
        '    shadowDatabaseUrl: env("SHADOW_DATABASE_URL"),\n'
        "  },\n"
        "})\n"
    )
    files = {
        "prisma/schema.prisma": schema,
        "prisma.config.ts": config,
        ".env": "SHADOW_DATABASE_URL=postgresql://app@db.internal:5433/shop_shadow\n",
    }
    target = only(run(files, framework="prisma", tool="prisma", command="migrate reset"))
    assert (target.host, target.port, target.name) == ("db.internal", 5433, "shop")
    assert "prisma.config.ts, line 6" in target.source
    # migrate dev resets the shadow database it is given: backed up too.
    dev = run(files, framework="prisma", tool="prisma", command="migrate dev")
    assert [t.name for t in dev.targets] == ["shop", "shop_shadow"]
    assert "prisma.config.ts, line 7 (shadowDatabaseUrl" in dev.targets[1].source
    # A literal shadow URL, and an env() url, read the same way.
    files["prisma.config.ts"] = config.replace(
        "'postgresql://app@db.internal:5433/shop'", 'env("DATABASE_URL")'
    ).replace('env("SHADOW_DATABASE_URL")', "`postgresql://app@db.internal:5433/scratch`")
    files[".env"] = "DATABASE_URL=postgresql://app@db.internal:5433/shop\n"
    dev = run(files, framework="prisma", tool="prisma", command="migrate dev")
    assert [t.name for t in dev.targets] == ["shop", "scratch"]
    # A URL built in code is refused, naming the line, rather than guessed.
    files["prisma.config.ts"] = config.replace(
        "'postgresql://app@db.internal:5433/shop'", "`postgresql://${user}@db/shop`"
    )
    with pytest.raises(DiscoveryError, match=r"prisma\.config\.ts, line 6: url is computed"):
        run(files, framework="prisma", tool="prisma", command="migrate reset")


def _runner(files: dict[str, str], tool: str) -> list[str]:
    found = run(files, kind=Kind.TEST, framework=None, tool=tool)
    return [str(t.name) for t in found.targets]


def test_a_test_runner_s_own_config_loading_env_test_is_followed() -> None:
    env = {
        ".env": "DATABASE_URL=postgresql://app@db/shop_dev\n",
        ".env.test": "DATABASE_URL=postgresql://app@db/shop_test\n",
    }
    jest = "require('dotenv').config({ path: '.env.test' })\nmodule.exports = {}\n"
    assert _runner({**env, "jest.config.js": jest}, "jest") == ["shop_test"]
    # In a setup file the config names, from its own folder.
    setup = (
        "import * as dotenv from 'dotenv'\nimport path from 'path'\n"
        "dotenv.config({ path: path.resolve(__dirname, '../.env.test') })\n"
    )
    config = "export default { setupFiles: ['<rootDir>/test/setup-env.ts'] }\n"
    files = {**env, "jest.config.ts": config, "test/setup-env.ts": setup}
    assert _runner(files, "jest") == ["shop_test"]
    # Vite's loadEnv with prefix '' reads .env.[mode] for vitest's mode, "test" ...
    vitest = (
        "import { defineConfig, loadEnv } from 'vite'\n"
        "export default defineConfig(({ mode }) => ({\n"
        "  test: { env: loadEnv(mode, process.cwd(), '') },\n}))\n"
    )
    assert _runner({**env, "vitest.config.ts": vitest}, "vitest") == ["shop_test"]
    # ... but with its default prefix only VITE_ variables: .env's database, as before.
    default = vitest.replace(", process.cwd(), '')", ", process.cwd())")
    assert _runner({**env, "vitest.config.ts": default}, "vitest") == ["shop_dev"]
    assert _runner(env, "vitest") == ["shop_dev"]
    # A commented-out call loads nothing.
    assert _runner({**env, "jest.config.js": "// " + jest}, "jest") == ["shop_dev"]


def test_a_runner_config_loading_a_dotenv_file_dbguard_cannot_name() -> None:
    env = {
        ".env": "DATABASE_URL=postgresql://app@db/shop_dev\n",
        ".env.test": "DATABASE_URL=postgresql://app@db/shop_test\n",
    }
    jest = "const dotenv = require('dotenv')\ndotenv.config({ path: envFile })\n"
    found = run({**env, "jest.config.js": jest}, kind=Kind.TEST, framework=None, tool="jest")
    assert sorted(str(t.name) for t in found.targets) == ["shop_dev", "shop_test"]
    assert any("jest.config.js, line 2" in warning for warning in found.warnings)
    del env[".env.test"]
    with pytest.raises(DiscoveryError, match=r"jest\.config\.js, line 2: a dotenv path"):
        run({**env, "jest.config.js": jest}, kind=Kind.TEST, framework=None, tool="jest")


_DEV_AND_TEST = {
    ".env": "DATABASE_URL=postgresql://app@db/shop_dev\n",
    ".env.test": "DATABASE_URL=postgresql://app@db/shop_test\n",
}


def test_next_jest_loads_the_dotenv_files_of_next_s_test_mode() -> None:
    # next/jest's config function calls @next/env's loadEnvConfig(dir) with NODE_ENV=test
    # (jest sets it): .env.test.local, .env.test, .env, never .env.local.
    config = (
        "const nextJest = require('next/jest')\n"
        "const createJestConfig = nextJest({ dir: './' })\n"
        "module.exports = createJestConfig({ testEnvironment: 'node' })\n"
    )
    files = {**_DEV_AND_TEST, "jest.config.js": config}
    assert _runner(files, "jest") == ["shop_test"]
    local = "DATABASE_URL=postgresql://app@db/shop_local\n"
    assert _runner({**files, ".env.test.local": local}, "jest") == ["shop_local"]
    del files[".env.test"]
    assert _runner({**files, ".env.local": local}, "jest") == ["shop_dev"]
    # Under another NODE_ENV, Next's production files (next/jest passes dev=false).
    files[".env.production"] = "DATABASE_URL=postgresql://app@db/shop_prod\n"
    found = run(files, {"NODE_ENV": "staging"}, kind=Kind.TEST, framework=None, tool="jest")
    assert [t.name for t in found.targets] == ["shop_prod"]
    # The app's folder, as an ES module; without `dir` Next loads no dotenv file.
    esm = "import nextJest from 'next/jest.js'\nconst create = nextJest({ dir: 'web' })\n"
    web = {"jest.config.mjs": esm, "web/.env.test": _DEV_AND_TEST[".env.test"]}
    assert _runner({**_DEV_AND_TEST, **web}, "jest") == ["shop_test"]
    web["web/.env.test"] = "DATABASE_URL=postgresql://app@db/web_test\n"
    assert _runner({**_DEV_AND_TEST, **web}, "jest") == ["web_test"]
    bare = config.replace("{ dir: './' }", "")
    assert _runner({**_DEV_AND_TEST, "jest.config.js": bare}, "jest") == ["shop_dev"]
    # A folder dbguard cannot name: both candidates, with a warning.
    computed = config.replace("'./'", "appDir")
    found = run(
        {**_DEV_AND_TEST, "jest.config.js": computed}, kind=Kind.TEST, framework=None, tool="jest"
    )
    assert sorted(str(t.name) for t in found.targets) == ["shop_dev", "shop_test"]
    assert any("jest.config.js, line 2: next/jest's dir" in w for w in found.warnings)
    computed = config.replace("'./'", "path.join(__dirname, 'web')")
    found = run(
        {**_DEV_AND_TEST, "jest.config.js": computed}, kind=Kind.TEST, framework=None, tool="jest"
    )
    assert any("jest.config.js, line 2: next/jest's dir" in w for w in found.warnings)


def test_dotenv_flow_loads_the_node_env_files_under_a_test_runner() -> None:
    # dotenv-flow: .env.$NODE_ENV.local over .env.$NODE_ENV over .env.local (skipped under
    # NODE_ENV=test) over .env over .env.defaults; jest and vitest set NODE_ENV=test.
    config = "module.exports = { setupFiles: ['<rootDir>/jest.setup.js'] }\n"
    files = {**_DEV_AND_TEST, "jest.config.js": config}
    for setup in (
        "require('dotenv-flow').config()\n",
        "import dotenvFlow from 'dotenv-flow'\ndotenvFlow.config({ silent: true })\n",
        "import 'dotenv-flow/config'\n",
    ):
        assert _runner({**files, "jest.setup.js": setup}, "jest") == ["shop_test"], setup
    files["jest.setup.js"] = "require('dotenv-flow').config()\n"
    # Beside plain dotenv, each call is read as its own module's.
    both = "require('dotenv').config({ path: '.env.ci' })\n" + files["jest.setup.js"]
    ci = "DATABASE_URL=postgresql://app@db/shop_ci\n"
    assert _runner({**files, "jest.setup.js": both, ".env.ci": ci}, "jest") == ["shop_ci"]
    local = "DATABASE_URL=postgresql://app@db/shop_local\n"
    assert _runner({**files, ".env.test.local": local}, "jest") == ["shop_local"]
    del files[".env.test"]
    assert _runner({**files, ".env.local": local}, "jest") == ["shop_dev"]
    # node_env given in the call, and dotenv-flow/config named as a vitest setup file.
    files["jest.setup.js"] = "require('dotenv-flow').config({ node_env: 'ci' })\n"
    assert _runner({**files, ".env.ci": ci}, "jest") == ["shop_ci"]
    vitest = "export default { test: { setupFiles: ['dotenv-flow/config'] } }\n"
    flow = {**_DEV_AND_TEST, "vitest.config.ts": vitest}
    assert _runner(flow, "vitest") == ["shop_test"]
    # An option that changes the files: both candidates, with a warning.
    files["jest.setup.js"] = "require('dotenv-flow').config({ pattern: pattern })\n"
    files[".env.test"] = _DEV_AND_TEST[".env.test"]
    found = run(files, kind=Kind.TEST, framework=None, tool="jest")
    assert sorted(str(t.name) for t in found.targets) == ["shop_dev", "shop_test"]
    assert any("jest.setup.js, line 1: dotenv-flow options" in w for w in found.warnings)


def test_dotenv_config_reads_dotenv_config_path() -> None:
    # dotenv/config, imported or named as a setup file, takes its path from
    # DOTENV_CONFIG_PATH (and override from DOTENV_CONFIG_OVERRIDE).
    configs = {
        "jest.config.js": "module.exports = { setupFiles: ['dotenv/config'] }\n",
        "jest.config.ts": "import 'dotenv/config'\nexport default {}\n",
    }
    for name, config in configs.items():
        files = {**_DEV_AND_TEST, name: config}
        assert _runner(files, "jest") == ["shop_dev"]
        path = {"DOTENV_CONFIG_PATH": ".env.test"}
        found = run(files, path, kind=Kind.TEST, framework=None, tool="jest")
        assert [t.name for t in found.targets] == ["shop_test"], name
        found = run(files, kind=Kind.TEST, framework=None, tool="jest", assignments=path)
        assert [t.name for t in found.targets] == ["shop_test"], name
        # Under the environment, unless DOTENV_CONFIG_OVERRIDE says otherwise.
        env = {**path, "DATABASE_URL": "postgresql://app@db/shop_env"}
        found = run(files, env, kind=Kind.TEST, framework=None, tool="jest")
        assert [t.name for t in found.targets] == ["shop_env"]
        env["DOTENV_CONFIG_OVERRIDE"] = "true"
        found = run(files, env, kind=Kind.TEST, framework=None, tool="jest")
        assert [t.name for t in found.targets] == ["shop_test"]

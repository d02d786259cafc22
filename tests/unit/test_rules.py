"""The rules catalog, table-driven: every tool's kinds, its read-only counterparts, help and
version forms, wrapper forms, option-value pitfalls, package scripts, and commands that are
not database operations at all. Pure: no files, no processes."""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from dbguard.rules import (
    Catalog,
    Classifier,
    Framework,
    Kind,
    LauncherRule,
    Operation,
    Script,
    ScriptsRule,
    ToolRule,
    TooManyScripts,
    builtin_catalog,
    console_alternatives,
    program_name,
)

CATALOG = builtin_catalog()
CLASSIFIER = Classifier(CATALOG)

RO = Kind.READ_ONLY
QUERY = Kind.QUERY
TEST = Kind.TEST
SEED = Kind.SEED
MIGRATE = Kind.MIGRATE
DESTRUCTIVE = Kind.DESTRUCTIVE


@dataclass(frozen=True)
class Case:
    line: str
    kind: Kind | None
    tool: str | None = None
    command: str | None = None  # None: not checked
    hints: Mapping[str, str] | None = None  # checked exactly when given
    assignments: Mapping[str, str] | None = None


def case(
    line: str,
    kind: Kind | None,
    tool: str | None = None,
    command: str | None = None,
    *,
    hints: Mapping[str, str] | None = None,
    assignments: Mapping[str, str] | None = None,
) -> Any:
    return pytest.param(Case(line, kind, tool, command, hints, assignments), id=line)


def classify(line: str) -> Operation | None:
    return CLASSIFIER.classify(shlex.split(line))


def check(c: Case, found: Operation | None) -> None:
    if c.kind is None:
        assert found is None, f"{c.line!r} is not a database operation, got {found}"
        return
    assert found is not None, f"{c.line!r} should be {c.kind}"
    assert (found.kind, found.tool) == (c.kind, c.tool or found.tool), found
    if c.command is not None:
        assert found.command == c.command, found
    if c.hints is not None:
        assert dict(found.hints) == dict(c.hints), found
    if c.assignments is not None:
        assert dict(found.assignments) == dict(c.assignments), found


# ---- Laravel ---------------------------------------------------------------------------------

LARAVEL = [
    case("php artisan test", TEST, "artisan", "test"),
    case("php artisan test --parallel --processes 4", TEST, "artisan"),
    case("php artisan test --filter migrate:fresh", TEST, "artisan", "test"),
    case("php artisan dusk", TEST, "artisan"),
    case("php artisan migrate", MIGRATE, "artisan", "migrate"),
    case("php artisan migrate --force --seed", MIGRATE, "artisan"),
    case("php artisan migrate:install", MIGRATE, "artisan"),
    case("php artisan migrate:fresh", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan migrate:fresh --seed", DESTRUCTIVE, "artisan"),
    case("php artisan migrate:refresh --step=2", DESTRUCTIVE, "artisan"),
    case("php artisan migrate:reset", DESTRUCTIVE, "artisan"),
    case("php artisan migrate:rollback --step 1", DESTRUCTIVE, "artisan"),
    case("php artisan db:seed --class=UserSeeder", SEED, "artisan", "db:seed"),
    case("php artisan db:wipe", DESTRUCTIVE, "artisan", "db:wipe"),
    # artisan works on the app it lies in, whatever folder it is run from
    case("php backend/artisan migrate:fresh", DESTRUCTIVE, "artisan", hints={"cwd": "backend"}),
    case("php ./artisan migrate:fresh", DESTRUCTIVE, "artisan", hints={}),
    case("php ../shop/artisan db:wipe", DESTRUCTIVE, "artisan", hints={"cwd": "../shop"}),
    case("php artisan db:wipe --drop-views --force", DESTRUCTIVE, "artisan"),
    case("php artisan model:prune", DESTRUCTIVE, "artisan"),
    case("php artisan schema:dump --prune", DESTRUCTIVE, "artisan", "schema:dump --prune"),
    case("php artisan db", QUERY, "artisan", "db"),
    case("php artisan db mysql --read", QUERY, "artisan"),
    case("php artisan tinker", QUERY, "artisan", "tinker"),
    # read-only counterparts
    case("php artisan migrate:status", RO, "artisan", "migrate:status"),
    case("php artisan migrate --pretend", RO, "artisan", "migrate --pretend"),
    case("php artisan migrate:rollback --pretend", RO, "artisan"),
    case("php artisan migrate:reset --pretend", RO, "artisan"),
    case("php artisan model:prune --pretend", RO, "artisan"),
    case("php artisan schema:dump", RO, "artisan", "schema:dump"),
    case("php artisan db:show", RO, "artisan"),
    case("php artisan db:table users", RO, "artisan"),
    case("php artisan db:monitor", RO, "artisan"),
    case("php artisan model:show User", RO, "artisan"),
    # help and version
    case("php artisan --help", RO, "artisan", "--help"),
    case("php artisan migrate:fresh --help", RO, "artisan"),
    case("php artisan migrate:fresh -h", RO, "artisan"),
    case("php artisan --version", RO, "artisan"),
    case("php artisan -V", RO, "artisan"),
    case("php artisan help migrate:fresh", RO, "artisan", "help"),
    case("php artisan list", RO, "artisan"),
    # Symfony looks for -h/-V in the raw words (ArgvInput::hasParameterOption): `-qh` is
    # -q plus a help option nobody reads, and the command runs. `-hq` shows help since
    # symfony/symfony#25893 but ran the command before #24987: only `-h` alone is help.
    case("php artisan migrate:fresh --force -qh", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan migrate:fresh --force -qV", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan migrate:fresh -hq", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan -nV migrate:fresh", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan migrate:fresh -q -h", RO, "artisan", "-h"),
    case("php artisan migrate:fresh --help=x", RO, "artisan", "--help"),
    # Symfony-console abbreviations
    case("php artisan migrate:f", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan mi:fr --seed", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan migrate:st", RO, "artisan", "migrate:status"),
    case("php artisan tin", QUERY, "artisan", "tinker"),
    # Symfony's Application::find retries a name ignoring case when the exact-case search
    # finds nothing, and a part may be empty: `:fresh` is the only `*:fresh` command.
    case("php artisan MIGRATE:FRESH --force", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan Db:Wipe --force", DESTRUCTIVE, "artisan", "db:wipe"),
    case("php artisan MI:FR", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan :fresh --force", DESTRUCTIVE, "artisan", "migrate:fresh"),
    case("php artisan :wipe", DESTRUCTIVE, "artisan", "db:wipe"),
    case("php artisan migrate:", DESTRUCTIVE, "artisan"),  # any migrate:* (ambiguous)
    case("php artisan Migrate:Status", RO, "artisan", "migrate:status"),
    case("php artisan Migrate:Status --pretend", RO, "artisan"),
    case("php artisan MIGRATE:RESET --pretend", RO, "artisan", "migrate:reset --pretend"),
    # an abbreviation several commands share counts as the most dangerous of them
    case("php artisan :s", SEED, "artisan", "db:seed"),  # migrate:status, db:seed, db:show
    case("php artisan :re", DESTRUCTIVE, "artisan"),  # migrate:refresh, migrate:reset
    case("php artisan ROUTE:LIST", None),
    case("php artisan :list", None),
    # A name that is no command: the console offers the one command close to it and runs
    # it on a yes ("Do you want to run db:wipe instead?"), unless it may not ask.
    case("php artisan wipe --force", DESTRUCTIVE, "artisan", "db:wipe"),
    case("php artisan schema:dmp --prune", DESTRUCTIVE, "artisan", "schema:dump --prune"),
    case("php artisan schema:dmp", RO, "artisan", "schema:dump"),
    case("php artisan tinkr", QUERY, "artisan", "tinker"),
    case("php artisan wipe -n", None),
    case("php artisan wipe --no-interaction", None),
    case("php artisan wipe -q", None),
    case("php artisan --silent wipe", None),
    # Several close commands: the console lists them and asks nothing.
    case("php artisan migrate:frsh", None),  # every migrate:* command is close
    case("php artisan fresh", None),  # migrate:fresh and migrate:refresh
    case("php artisan db:wipee", None),
    # The application's own commands, in a namespace the catalog does not know.
    case("php artisan app:reset", None),
    case("php artisan app:seed --force", None),
    # targets
    case("php artisan test --env=testing", TEST, "artisan", hints={"env": "testing"}),
    case("php artisan migrate --env testing", MIGRATE, "artisan", hints={"env": "testing"}),
    case(
        "php artisan migrate --database=tenant", MIGRATE, "artisan", hints={"connection": "tenant"}
    ),
    case(
        "php artisan db:seed --database tenant --class X",
        SEED,
        "artisan",
        hints={"connection": "tenant"},
    ),
    # wrappers and interpreter options
    case("php -d memory_limit=-1 artisan migrate:fresh", DESTRUCTIVE, "artisan"),
    case("php -dmemory_limit=-1 -n artisan test", TEST, "artisan"),
    case("php -c /etc/php.ini ./artisan migrate", MIGRATE, "artisan"),
    case("php -f artisan migrate:fresh", DESTRUCTIVE, "artisan"),
    case("/usr/bin/php8.3 /srv/app/artisan db:wipe", DESTRUCTIVE, "artisan"),
    case("./artisan migrate", MIGRATE, "artisan"),
    case("APP_ENV=testing php artisan test", TEST, "artisan", assignments={"APP_ENV": "testing"}),
    case(
        "env APP_ENV=testing php artisan test", TEST, "artisan", assignments={"APP_ENV": "testing"}
    ),
    case(
        "env -i PATH=/bin DB_DATABASE=x php artisan migrate",
        MIGRATE,
        "artisan",
        assignments={"PATH": "/bin", "DB_DATABASE": "x"},
    ),
    case("cross-env APP_ENV=testing php artisan test", TEST, "artisan"),
    case(
        "cross-env-shell APP_ENV=testing 'php artisan test && php artisan db:seed'",
        SEED,
        "artisan",
        assignments={"APP_ENV": "testing"},
    ),
    case("nohup php artisan migrate --force", MIGRATE, "artisan"),
    case("exec php artisan migrate", MIGRATE, "artisan"),
    case("time php artisan test", TEST, "artisan"),
    case("time -a -o t.log php artisan migrate:fresh", DESTRUCTIVE, "artisan"),  # -a: a flag
    case("exec -a worker php artisan migrate:fresh", DESTRUCTIVE, "artisan"),
    case("/usr/bin/time -v php artisan migrate", MIGRATE, "artisan"),
    case("command php artisan migrate", MIGRATE, "artisan"),
    case("nice -n 10 php artisan db:seed", SEED, "artisan"),
    case("sh -c 'php artisan migrate:fresh --seed'", DESTRUCTIVE, "artisan"),
    case("bash -c 'cd /srv && php artisan test'", TEST, "artisan"),
    case("eval 'php artisan migrate:fresh --force'", DESTRUCTIVE, "artisan"),
    # a shell file is read only with a file look-up (tests/unit/test_shell_files.py)
    case("source ./scripts/reset.sh", None),
    # not database operations
    case("php artisan serve", None),
    case("php artisan route:list", None),
    case("php artisan make:migration create_users_table", None),
    case("php artisan db:backup", None),
    case("php artisan", None),
    case("php artisan test -c phpunit.pg.xml", TEST, "artisan", hints={"config": "phpunit.pg.xml"}),
    case(
        "php artisan test --configuration=phpunit.pg.xml",
        TEST,
        "artisan",
        hints={"config": "phpunit.pg.xml"},
    ),
]

SYMFONY = [
    case(
        "php bin/console doctrine:schema:drop --force",
        DESTRUCTIVE,
        "symfony",
        "doctrine:schema:drop --force",
    ),
    case("php bin/console doctrine:schema:drop --force --full-database", DESTRUCTIVE, "symfony"),
    case("php bin/console doctrine:schema:update --force", DESTRUCTIVE, "symfony"),
    case("php bin/console doctrine:schema:create", MIGRATE, "symfony", hints={}),
    case("php api/bin/console doctrine:schema:create", MIGRATE, "symfony", hints={"cwd": "api"}),
    case(
        "php bin/console doctrine:schema:update --force --dump-sql",
        DESTRUCTIVE,
        "symfony",
        "doctrine:schema:update --force",
    ),
    case("php bin/console doctrine:fixtures:load -n", DESTRUCTIVE, "symfony"),
    case("php bin/console doctrine:fixtures:load --append", SEED, "symfony"),
    case("php bin/console doctrine:migrations:migrate -n", MIGRATE, "symfony"),
    case("php bin/console doctrine:migrations:migrate latest", MIGRATE, "symfony"),
    case("php bin/console doctrine:migrations:migrate prev", DESTRUCTIVE, "symfony"),
    case("php bin/console doctrine:migrations:migrate first", DESTRUCTIVE, "symfony"),
    case("php bin/console doctrine:migrations:execute 'App\\V1' --down", DESTRUCTIVE, "symfony"),
    case("php bin/console doctrine:migrations:execute 'App\\V1' --up", MIGRATE, "symfony"),
    case("php bin/console doctrine:database:drop --force", DESTRUCTIVE, "symfony"),
    case("php bin/console doctrine:database:drop --force --if-exists", DESTRUCTIVE, "symfony"),
    case("php bin/console doctrine:database:create --if-not-exists", MIGRATE, "symfony"),
    case("php bin/console dbal:run-sql 'DELETE FROM user'", QUERY, "symfony"),
    case("php bin/console doctrine:query:sql 'SELECT 1'", QUERY, "symfony"),
    # abbreviations are how people type these
    case("bin/console d:s:u --force", DESTRUCTIVE, "symfony", "doctrine:schema:update --force"),
    case("bin/console d:m:m", MIGRATE, "symfony", "doctrine:migrations:migrate"),
    case("bin/console d:d:d --force", DESTRUCTIVE, "symfony"),
    case("bin/console d:f:l", DESTRUCTIVE, "symfony", "doctrine:fixtures:load"),
    # any case, and empty parts, as Symfony's Application::find reads them
    case(
        "php bin/console DOCTRINE:SCHEMA:DROP --force",
        DESTRUCTIVE,
        "symfony",
        "doctrine:schema:drop --force",
    ),
    case("bin/console D:S:U --force", DESTRUCTIVE, "symfony", "doctrine:schema:update --force"),
    case("bin/console ::drop --force", DESTRUCTIVE, "symfony"),  # schema:drop, database:drop
    case("bin/console :m:m", MIGRATE, "symfony", "doctrine:migrations:migrate"),
    case("bin/console Doctrine:Migrations:Migrate First", DESTRUCTIVE, "symfony"),
    case("bin/console D:S:Drop", RO, "symfony", "doctrine:schema:drop"),
    case("vendor/bin/doctrine ORM:SCHEMA-TOOL:DROP --force", DESTRUCTIVE, "doctrine"),
    case("vendor/bin/doctrine-migrations MIGRATE first", DESTRUCTIVE, "doctrine-migrations"),
    # read-only counterparts: without --force these only print
    case("php bin/console doctrine:schema:drop", RO, "symfony"),
    case("php bin/console doctrine:schema:drop --dump-sql", RO, "symfony"),
    case("php bin/console doctrine:schema:update", RO, "symfony"),
    case("php bin/console doctrine:schema:update --dump-sql", RO, "symfony"),
    case("php bin/console doctrine:schema:create --dump-sql", RO, "symfony"),
    case("php bin/console doctrine:schema:validate", RO, "symfony"),
    case("php bin/console doctrine:database:drop", RO, "symfony"),
    case("php bin/console doctrine:migrations:migrate --dry-run", RO, "symfony"),
    case("php bin/console doctrine:migrations:migrate prev --dry-run", RO, "symfony"),
    case("php bin/console doctrine:migrations:migrate --write-sql=out.sql", RO, "symfony"),
    case("php bin/console doctrine:migrations:status", RO, "symfony"),
    case("php bin/console doctrine:migrations:list", RO, "symfony"),
    case("php bin/console doctrine:migrations:diff", RO, "symfony"),
    case("bin/console d:m:status", RO, "symfony", "doctrine:migrations:status"),
    case("bin/console doctrine:schema:drp --force", None),  # :create, :drop, :update, ...
    case("php bin/console list doctrine", RO, "symfony"),
    case("php bin/console doctrine:schema:drop --force --help", RO, "symfony"),
    case("php bin/console doctrine:schema:drop --force -h", RO, "symfony"),
    case("bin/console d:s:u --force -qh", DESTRUCTIVE, "symfony"),
    case("bin/console d:s:u --force -vV", DESTRUCTIVE, "symfony"),
    case("vendor/bin/doctrine orm:schema-tool:drop --force -qh", DESTRUCTIVE, "doctrine"),
    case("vendor/bin/doctrine-migrations migrate first -nh", DESTRUCTIVE, "doctrine-migrations"),
    # targets
    case(
        "php bin/console doctrine:migrations:migrate --env=test",
        MIGRATE,
        "symfony",
        hints={"env": "test"},
    ),
    case(
        "php bin/console -e prod doctrine:schema:update --force --em=customer",
        DESTRUCTIVE,
        "symfony",
        hints={"env": "prod", "connection": "customer"},
    ),
    case(
        "APP_ENV=test bin/console d:s:u --force",
        DESTRUCTIVE,
        "symfony",
        assignments={"APP_ENV": "test"},
    ),
    case("php bin/console cache:clear", None),
    case("php bin/console messenger:consume async", None),
    # standalone Doctrine consoles
    case("vendor/bin/doctrine orm:schema-tool:drop --force", DESTRUCTIVE, "doctrine"),
    case("vendor/bin/doctrine orm:schema-tool:update --force", DESTRUCTIVE, "doctrine"),
    case("vendor/bin/doctrine orm:schema-tool:create", MIGRATE, "doctrine"),
    case("vendor/bin/doctrine orm:schema-tool:update --dump-sql", RO, "doctrine"),
    case("vendor/bin/doctrine orm:validate-schema", RO, "doctrine"),
    case("vendor/bin/doctrine-migrations migrate --no-interaction", MIGRATE, "doctrine-migrations"),
    case(
        "vendor/bin/doctrine-migrations migrations:migrate first",
        DESTRUCTIVE,
        "doctrine-migrations",
    ),
    case("vendor/bin/doctrine-migrations status", RO, "doctrine-migrations"),
    case(
        "vendor/bin/doctrine-migrations migrate --configuration=m.php",
        MIGRATE,
        "doctrine-migrations",
        hints={"config": "m.php"},
    ),
]

PHP_TESTS = [
    case("phpunit", TEST, "phpunit"),
    case("./vendor/bin/phpunit --filter UserTest", TEST, "phpunit"),
    case("vendor/bin/paratest -p 8", TEST, "phpunit"),
    case("vendor/bin/pest --parallel", TEST, "phpunit"),
    case("php vendor/bin/phpunit tests/Feature", TEST, "phpunit"),
    case("php -d xdebug.mode=coverage vendor/bin/pest", TEST, "phpunit"),
    case(
        "vendor/bin/phpunit -c phpunit.ci.xml", TEST, "phpunit", hints={"config": "phpunit.ci.xml"}
    ),
    case("vendor/bin/phpunit --configuration=x.xml", TEST, "phpunit", hints={"config": "x.xml"}),
    case("vendor/bin/phpunit --list-tests", RO, "phpunit", "--list-tests"),
    case("vendor/bin/phpunit --list-suites", RO, "phpunit"),
    case("vendor/bin/pest --version", RO, "phpunit"),
    case("vendor/bin/phpunit -h", RO, "phpunit"),
    case("composer exec phpunit", TEST, "phpunit"),
    case("php -v", None),
    case("php --version", None),
    case("php -r 'echo 1;'", None),
    case("php -l artisan", None),
    case("php script.php", None),
    case("php -S localhost:8000 -t public", None),
    case("php", None),
]

# ---- Python ----------------------------------------------------------------------------------

DJANGO = [
    case("python manage.py migrate", MIGRATE, "manage.py", "migrate"),
    case("python manage.py migrate blog", MIGRATE, "manage.py"),
    case("python manage.py migrate blog zero", DESTRUCTIVE, "manage.py", "migrate blog zero"),
    case("python manage.py migrate blog 0003", DESTRUCTIVE, "manage.py"),
    case("python manage.py flush --no-input", DESTRUCTIVE, "manage.py", "flush"),
    case("python manage.py loaddata fixtures.json", SEED, "manage.py"),
    case("python manage.py test --keepdb", TEST, "manage.py"),
    case("python manage.py test -k migrate app.tests", TEST, "manage.py", "test"),
    case("python manage.py dbshell", QUERY, "manage.py"),
    case("python manage.py shell -c 'print(1)'", QUERY, "manage.py"),
    case("python manage.py createsuperuser --username a", SEED, "manage.py"),
    case("./manage.py migrate", MIGRATE, "manage.py"),
    case(
        "django-admin migrate --settings=mysite.settings",
        MIGRATE,
        "django",
        hints={"settings": "mysite.settings"},
    ),
    case(
        "django-admin migrate --settings mysite.settings --database replica",
        MIGRATE,
        "django",
        hints={"settings": "mysite.settings", "connection": "replica"},
    ),
    case("python -m django flush", DESTRUCTIVE, "django"),
    # manage.py finds its settings from its own folder; django-admin from sys.path.
    case(
        "python backend/manage.py flush --noinput",
        DESTRUCTIVE,
        "manage.py",
        hints={"cwd": "backend"},
    ),
    case(
        "/opt/venv/bin/django-admin flush --settings=s",
        DESTRUCTIVE,
        "django",
        hints={"settings": "s"},
    ),
    case("python3.12 -W ignore manage.py migrate", MIGRATE, "manage.py"),
    case("coverage run manage.py test", TEST, "manage.py"),
    case("poetry run python manage.py migrate", MIGRATE, "manage.py"),
    case("pipenv run python manage.py migrate", MIGRATE, "manage.py"),
    case("pipenv --python 3.12 run alembic downgrade base", DESTRUCTIVE, "alembic"),
    case("uv run manage.py migrate", MIGRATE, "manage.py"),
    # read-only counterparts
    case("python manage.py sqlflush", RO, "manage.py", "sqlflush"),
    case("python manage.py sqlmigrate blog 0001", RO, "manage.py"),
    case("python manage.py showmigrations", RO, "manage.py"),
    case("python manage.py makemigrations", RO, "manage.py"),
    case("python manage.py makemigrations --check --dry-run", RO, "manage.py"),
    case("python manage.py migrate --plan", RO, "manage.py", "migrate --plan"),
    case("python manage.py migrate --check", RO, "manage.py"),
    case("python manage.py migrate --plan blog zero", RO, "manage.py"),
    case("python manage.py dumpdata auth", RO, "manage.py"),
    case("python manage.py inspectdb", RO, "manage.py"),
    case("python manage.py check --deploy", RO, "manage.py"),
    case("python manage.py help migrate", RO, "manage.py"),
    case("python manage.py migrate --help", RO, "manage.py"),
    case("django-admin showmigrations --settings=mysite.settings", RO, "django"),
    case("django-admin --version", RO, "django"),
    case("django-admin version", RO, "django"),
    # not database operations
    case("python manage.py runserver", None),
    case("python manage.py collectstatic --noinput", None),
    case("python manage.py", None),
]

PYTEST = [
    case("pytest", TEST, "pytest", ""),
    case("pytest tests/unit -x", TEST, "pytest"),
    # -k eats its value: "migrate" is a pattern, not a command
    case("pytest -k migrate", TEST, "pytest"),
    case("pytest -xk migrate", TEST, "pytest"),
    case("pytest -k --co", TEST, "pytest"),
    case("pytest -m 'not slow' -n auto", TEST, "pytest"),
    case("py.test tests", TEST, "pytest"),
    case("pytest-3 tests", TEST, "pytest"),
    case("python -m pytest", TEST, "pytest"),
    case("python3 -m pytest -q", TEST, "pytest"),
    case("python -um pytest", TEST, "pytest"),
    case("python -X dev -W error -m pytest", TEST, "pytest"),
    case("python -m py.test", TEST, "pytest"),
    case("coverage run -m pytest", TEST, "pytest"),
    case("coverage run --debug trace -m alembic downgrade base", DESTRUCTIVE, "alembic"),
    case("uv run pytest", TEST, "pytest"),
    case("uv run -m pytest", TEST, "pytest"),
    case("uv run --with pytest-django pytest", TEST, "pytest"),
    # Each value option read as one, or its value would be the program and it would pass.
    case("uv run --no-group dev pytest", TEST, "pytest"),
    case("uv run --only-group db --no-extra gpu --exclude-newer 2024-01-01 pytest", TEST, "pytest"),
    case("uv run -f ./wheels --extra-index-url https://x.example/simple pytest", TEST, "pytest"),
    case("uv --color never run pytest", TEST, "pytest"),
    case("uv run --script -m pytest", TEST, "pytest"),  # --script is a flag
    case("poetry run pytest", TEST, "pytest"),
    case(
        "pytest --ds=mysite.settings_test",
        TEST,
        "pytest",
        hints={"settings": "mysite.settings_test"},
    ),
    case("pytest -c ci.ini", TEST, "pytest", hints={"config": "ci.ini"}),
    # pytest-dotenv's / pytest-env's option: the dotenv file the tests run with
    case("pytest --envfile .env.ci tests", TEST, "pytest", hints={"envfile": ".env.ci"}),
    case(
        "DJANGO_SETTINGS_MODULE=s pytest",
        TEST,
        "pytest",
        assignments={"DJANGO_SETTINGS_MODULE": "s"},
    ),
    case("pytest --collect-only", RO, "pytest", "--collect-only"),
    case("pytest --co -q", RO, "pytest"),
    case("pytest --fixtures", RO, "pytest"),
    case("pytest --markers", RO, "pytest"),
    case("pytest --setup-plan", RO, "pytest"),
    case("pytest --version", RO, "pytest"),
    case("pytest -V", RO, "pytest"),
    case("pytest -h", RO, "pytest"),
    case("pytest -qh", RO, "pytest"),  # argparse reads a cluster letter by letter
    case("python -m pytest --help", RO, "pytest"),
    case("python -c 'import pytest'", None),
    case("python -V", None),
    case("python", None),
    case("python script.py", None),
    case("python -m http.server", None),
    case("python -m pip install pytest", None),
]

ALEMBIC = [
    case("alembic upgrade head", MIGRATE, "alembic", "upgrade"),
    case("alembic downgrade -1", DESTRUCTIVE, "alembic", "downgrade"),
    case("alembic downgrade base", DESTRUCTIVE, "alembic"),
    case("alembic stamp head", MIGRATE, "alembic"),
    # -c eats its value: alembic.ini is not a command
    case(
        "alembic -c alembic.ini upgrade head",
        MIGRATE,
        "alembic",
        "upgrade",
        hints={"config": "alembic.ini"},
    ),
    case(
        "alembic --config=alt.ini -n tenant upgrade head",
        MIGRATE,
        "alembic",
        hints={"config": "alt.ini", "section": "tenant"},
    ),
    case(
        "alembic -x db=test -x tenant=a upgrade head",
        MIGRATE,
        "alembic",
        hints={"x": "db=test\ntenant=a"},
    ),
    case("python -m alembic upgrade head", MIGRATE, "alembic"),
    case("alembic current", RO, "alembic", "current"),
    case("alembic history --verbose", RO, "alembic"),
    case("alembic heads", RO, "alembic"),
    case("alembic check", RO, "alembic"),
    case("alembic revision --autogenerate -m 'add users'", RO, "alembic"),
    case("alembic upgrade head --sql", RO, "alembic", "upgrade --sql"),
    case("alembic downgrade 2:1 --sql", RO, "alembic"),
    case("alembic --help", RO, "alembic"),
    case("alembic", None),
    case("alembic init migrations", None),
]

# ---- JavaScript ------------------------------------------------------------------------------

PRISMA = [
    case("prisma migrate dev", MIGRATE, "prisma", "migrate dev"),
    case("prisma migrate dev --name init", MIGRATE, "prisma"),
    case("prisma migrate dev --create-only", MIGRATE, "prisma"),
    case("prisma migrate reset", DESTRUCTIVE, "prisma", "migrate reset"),
    case(
        "prisma migrate reset --schema x/schema.prisma --force",
        DESTRUCTIVE,
        "prisma",
        "migrate reset",
        hints={"schema": "x/schema.prisma"},
    ),
    case(
        "prisma migrate --schema=x.prisma reset",
        DESTRUCTIVE,
        "prisma",
        hints={"schema": "x.prisma"},
    ),
    case("prisma migrate deploy", MIGRATE, "prisma"),
    case("prisma migrate resolve --applied 2024_init", MIGRATE, "prisma"),
    case("prisma db push", MIGRATE, "prisma", "db push"),
    case("prisma db push --force-reset", DESTRUCTIVE, "prisma", "db push --force-reset"),
    case("prisma db push --accept-data-loss", DESTRUCTIVE, "prisma"),
    case("prisma db push --skip-generate --accept-data-loss --force-reset", DESTRUCTIVE, "prisma"),
    case("prisma db seed", SEED, "prisma"),
    case(
        "prisma db execute --file drop.sql --url postgres://u:p@h/db",
        DESTRUCTIVE,
        "prisma",
        hints={"url": "postgres://u:p@h/db"},
    ),
    case("prisma studio", QUERY, "prisma"),
    case("npx prisma migrate reset --force", DESTRUCTIVE, "prisma"),
    case("npx -y prisma migrate reset", DESTRUCTIVE, "prisma"),
    # An option the catalog does not know may take the next word as its value: then the
    # program is the word after (a new npm option, a tool's option dbguard lacks).
    case("npx --some-new-option v1 prisma migrate reset --force", DESTRUCTIVE, "prisma"),
    case("uv run --new-option x alembic downgrade base", DESTRUCTIVE, "alembic"),
    case("npx --yes cowsay prisma", None),  # the word after is no database command
    # An interpreter's or a prefix's next word is a file or a command: never skipped.
    case("python -u script.py psql", None),
    case("node --inspect scripts/run.js prisma migrate reset", None),
    case("deno run -A main.ts prisma migrate reset", None),
    case("uv run --frozen script.py psql", None),
    case("time -p echo psql", None),
    case("env -i which psql", None),
    case("bash -e scripts/ci.sh psql", None),
    case("npx -- --new-option prisma migrate reset", None),  # after --: the program
    case("npx --yes prisma@5.22.0 db push --accept-data-loss", DESTRUCTIVE, "prisma"),
    case("npx -p prisma@5 prisma migrate deploy", MIGRATE, "prisma"),
    case("npx --package=prisma -- prisma migrate reset", DESTRUCTIVE, "prisma"),
    case("npx -c 'prisma migrate reset --force'", DESTRUCTIVE, "prisma"),
    case("pnpx prisma migrate deploy", MIGRATE, "prisma"),
    case("bunx prisma db seed", SEED, "prisma"),
    case("bun x prisma db seed", SEED, "prisma"),
    case("pnpm exec prisma migrate reset", DESTRUCTIVE, "prisma"),
    case("pnpm --filter api exec prisma migrate deploy", MIGRATE, "prisma"),
    case("pnpm dlx prisma migrate reset", DESTRUCTIVE, "prisma"),
    case("pnpm exec -c 'prisma migrate reset --force'", DESTRUCTIVE, "prisma"),
    case("lerna exec -- prisma migrate reset --force", DESTRUCTIVE, "prisma"),
    case("deno run -A npm:prisma migrate reset --force", DESTRUCTIVE, "prisma"),
    case("deno run -A --v8-flags npm:prisma migrate reset --force", DESTRUCTIVE, "prisma"),
    case("deno x -p prisma prisma migrate reset --force", DESTRUCTIVE, "prisma"),
    case("deno x npm:prisma@6 db push --force-reset", DESTRUCTIVE, "prisma"),
    case("deno run --allow-net -c deno.json main.ts", None),
    case("lerna exec --scope api --concurrency 1 knex migrate:latest", MIGRATE, "knex"),
    case("npm exec -- prisma migrate reset", DESTRUCTIVE, "prisma"),
    case("npm exec -p prisma migrate reset", DESTRUCTIVE, "prisma"),  # -p: --parseable
    case("npm --registry https://r.example exec prisma migrate reset", DESTRUCTIVE, "prisma"),
    # An unknown option before the subcommand may take a value too.
    case("yarn --mutex network exec prisma migrate reset --force", DESTRUCTIVE, "prisma"),
    case("pnpm --store-dir /s exec prisma migrate reset --force", DESTRUCTIVE, "prisma"),
    case("npm exec prisma migrate deploy", MIGRATE, "prisma"),
    case("npm x -- prisma db push", MIGRATE, "prisma"),
    case("yarn prisma migrate reset", DESTRUCTIVE, "prisma"),
    case("yarn dlx prisma db push", MIGRATE, "prisma"),
    case("yarn exec prisma db push", MIGRATE, "prisma"),
    case("./node_modules/.bin/prisma migrate reset", DESTRUCTIVE, "prisma"),
    case("node node_modules/.bin/prisma migrate deploy", MIGRATE, "prisma"),
    case(
        "dotenv -e .env.test -- prisma migrate reset --force",
        DESTRUCTIVE,
        "prisma",
        hints={"env_file": ".env.test"},
    ),
    case(
        "dotenv -e .env -e .env.test -v DEBUG=1 -- npx prisma db push",
        MIGRATE,
        "prisma",
        hints={"env_file": ".env\n.env.test"},
        assignments={"DEBUG": "1"},
    ),
    case(
        "node --env-file=.env.test node_modules/.bin/prisma db seed",
        SEED,
        "prisma",
        hints={"env_file": ".env.test"},
    ),
    case("prisma migrate status", RO, "prisma", "migrate status"),
    case("prisma migrate diff --from-url x --to-schema-datamodel y --script", RO, "prisma"),
    case("prisma db pull", RO, "prisma"),
    case("prisma generate", RO, "prisma", "generate"),
    case("prisma validate", RO, "prisma"),
    case("prisma format", RO, "prisma"),
    case("npx prisma generate", RO, "prisma"),
    case("prisma migrate reset --help", RO, "prisma"),
    case("prisma -v", RO, "prisma"),
    case("prisma version", RO, "prisma"),
    case("prisma", None),
    case("prisma migrate", None),
    case("npx eslint .", None),
    case("npx", None),
    case("npx -c 'eslint .'", None),
    case("node server.js", None),
    case("node -e 'require(\"./x\")'", None),
]

# drizzle-kit's commands and options as its CLI (drizzle-kit/src/cli/schema.ts) defines them
DRIZZLE = [
    # push applies the schema's difference at once; it asks before data loss unless --force
    case("npx drizzle-kit push --force", DESTRUCTIVE, "drizzle-kit", "push --force"),
    case("npx drizzle-kit push", MIGRATE, "drizzle-kit", "push"),
    case("npx drizzle-kit push --strict --verbose", MIGRATE, "drizzle-kit"),
    case("drizzle-kit push --config=drizzle.prod.ts --force", DESTRUCTIVE, "drizzle-kit"),
    case("npx drizzle-kit --config drizzle.prod.ts push --force", DESTRUCTIVE, "drizzle-kit"),
    case("npx drizzle-kit push --dialect postgresql --url x --force", DESTRUCTIVE, "drizzle-kit"),
    case("npx drizzle-kit push:pg", MIGRATE, "drizzle-kit", "push:pg"),  # before 0.21
    case("npx drizzle-kit migrate --config drizzle.config.ts", MIGRATE, "drizzle-kit", "migrate"),
    case("npx drizzle-kit reset", DESTRUCTIVE, "drizzle-kit", "reset"),
    # through every launcher
    *(
        case(f"{launcher} push --force", DESTRUCTIVE, "drizzle-kit", "push --force")
        for launcher in (
            "pnpm drizzle-kit",
            "yarn drizzle-kit",
            "bunx drizzle-kit",
            "npx drizzle-kit@latest",
            "./node_modules/.bin/drizzle-kit",
            "dotenv -e .env.production -- drizzle-kit",
        )
    ),
    # Studio edits rows in a browser: an interactive client.
    case("npx drizzle-kit studio --port 4983", QUERY, "drizzle-kit", "studio"),
    # files only (drop deletes a migration file), or reading the database
    *(
        case(f"npx drizzle-kit {command}", RO, "drizzle-kit", command)
        for command in ("generate", "check", "up", "export", "drop", "pull", "introspect")
    ),
    case("npx drizzle-kit generate --name push --custom", RO, "drizzle-kit", "generate"),
    # help and version (brocli's -h and -v, and its help command)
    *(
        case(f"npx drizzle-kit {words}", RO, "drizzle-kit")
        for words in ("push --help", "push -h", "-v", "--version", "help push")
    ),
    # a value that looks like help is the option's (brocli reads it so too)
    case("npx drizzle-kit push --config -h --force", DESTRUCTIVE, "drizzle-kit"),
    case("npx drizzle-kit", None),
]

JS_TESTS = [
    case("jest", TEST, "jest", ""),
    case("npx jest src/a.test.ts -t migrate", TEST, "jest"),
    case("yarn jest --ci", TEST, "jest"),
    case("npx jest --listTests", RO, "jest", "--listTests"),
    case("jest --showConfig", RO, "jest"),
    case("npx vitest", TEST, "vitest"),
    case("pnpm vitest run --project api", TEST, "vitest"),
    # a filter word is not a command: `vitest users` runs the users tests
    case("vitest users", TEST, "vitest"),
    case("npx vitest list", RO, "vitest", "list"),
    case("mocha 'test/**/*.spec.js' --timeout 5000", TEST, "mocha"),
    case("npx mocha --dry-run", RO, "mocha"),
    case("npx ava --match 'signup*'", TEST, "ava"),
    case("ava reset-cache", RO, "ava"),
    case("npx playwright test --project chromium", TEST, "playwright", "test"),
    case("npx playwright test --list", RO, "playwright"),
    case("npx playwright install chromium", None),
    case("npx playwright codegen", None),
    case("npx cypress run --spec cypress/e2e/signup.cy.ts", TEST, "cypress", "run"),
    case("npx cypress open", TEST, "cypress", "open"),
    case("npx cypress install", None),
    case("node --experimental-vm-modules node_modules/jest/bin/jest.js", TEST, "jest"),
    case("npx nyc --reporter lcov mocha", TEST, "mocha"),
    case("c8 -r text vitest run", TEST, "vitest"),
    case("c8 -c .c8rc.json --lines 90 prisma migrate reset --force", DESTRUCTIVE, "prisma"),
    case("nyc -c prisma migrate reset --force", DESTRUCTIVE, "prisma"),  # nyc's -c: --cache
    case("nyc --branches 80 mocha", TEST, "mocha"),
    case("npx cypress verify", None),
    # the runtimes' own runners
    case("node --test", TEST, "node", "--test"),
    case("node --test-reporter spec --test test/", TEST, "node", "--test"),
    case("node --env-file=.env.test --test", TEST, "node", hints={"env_file": ".env.test"}),
    case("node --env-file-if-exists=.env.test --test", TEST, hints={"env_file": ".env.test"}),
    case("pnpx prisma migrate reset", DESTRUCTIVE, "prisma"),
    case("tsx --test src/", TEST, "node"),
    case("node app.js --test", None),  # the script's own argument
    case("node --test-reporter spec app.js", None),
    case("bun test", TEST, "bun test", "test"),
    case("bun test --bail 1 users", TEST, "bun test"),
    # bun test loads .env.local, then .env.test, where it runs
    case(
        "bun --cwd api test",
        TEST,
        "bun test",
        hints={"cwd": "api", "env_file": "api/.env.local\napi/.env.test"},
    ),
    case(
        "bun test --env-file .env.ci",
        TEST,
        hints={"env_file": ".env.ci\n.env.local\n.env.test"},
    ),
    case("bun test --help", RO, "bun test"),
    case("bun run dev", None),
    case("deno test -A --filter users", TEST, "deno test", "test"),
    case("deno test -h", RO, "deno test"),
    case("deno run -A main.ts", None),
    # an Nx target whose executor dbguard cannot read, as the Nx look-up writes it
    case("nx-executor @acme/nx-plugin:e2e", TEST, "nx executor"),
    case("nx exec -- prisma migrate reset", DESTRUCTIVE, "prisma"),
    case("nx watch --all -- knex migrate:latest", MIGRATE, "knex"),
]

FLASK = [
    case("flask db upgrade", MIGRATE, "flask", "db upgrade"),
    case("flask --app app db downgrade base", DESTRUCTIVE, "flask", "db downgrade"),
    case("flask -e .env.test db stamp head", MIGRATE, "flask", hints={"env_file": ".env.test"}),
    case("flask db upgrade --sql", RO, "flask"),
    case("flask db migrate -m 'add users'", RO, "flask", "db migrate"),
    case("flask db current", RO, "flask"),
    case("flask run --debug", None),
    case("flask shell", None),
]

KNEX = [
    case("knex migrate:latest", MIGRATE, "knex", "migrate:latest"),
    case("knex migrate:up", MIGRATE, "knex"),
    case("knex migrate:down", DESTRUCTIVE, "knex"),
    case(
        "knex --cwd apps/worker migrate:rollback", DESTRUCTIVE, "knex", hints={"cwd": "apps/worker"}
    ),
    case("knex migrate:rollback --all", DESTRUCTIVE, "knex"),
    case("knex seed:run", SEED, "knex"),
    case("knex seed:run --specific=users.js", SEED, "knex"),
    case(
        "npx knex migrate:latest --env production --knexfile db/knexfile.js",
        MIGRATE,
        "knex",
        hints={"env": "production", "config": "db/knexfile.js"},
    ),
    case(
        "knex migrate:latest --connection postgres://h/db --client pg",
        MIGRATE,
        "knex",
        hints={"url": "postgres://h/db"},
    ),
    case(
        "cross-env NODE_ENV=test knex migrate:latest",
        MIGRATE,
        "knex",
        assignments={"NODE_ENV": "test"},
    ),
    case("knex migrate:status", RO, "knex"),
    case("knex migrate:list", RO, "knex"),
    case("knex migrate:make add_users", RO, "knex"),
    case("knex seed:make users", RO, "knex"),
    case("knex --help", RO, "knex"),
    case("knex", None),
]

SEQUELIZE = [
    case("sequelize db:migrate", MIGRATE, "sequelize", "db:migrate"),
    case("npx sequelize-cli db:migrate --env test", MIGRATE, "sequelize", hints={"env": "test"}),
    case("sequelize db:migrate:undo", DESTRUCTIVE, "sequelize"),
    case("sequelize db:migrate:undo:all --to 2024-x.js", DESTRUCTIVE, "sequelize"),
    case("sequelize db:seed --seed 2024-users.js", SEED, "sequelize"),
    case("sequelize db:seed:all", SEED, "sequelize"),
    case("sequelize db:seed:undo", DESTRUCTIVE, "sequelize"),
    case("sequelize db:seed:undo:all", DESTRUCTIVE, "sequelize"),
    case("sequelize db:drop", DESTRUCTIVE, "sequelize"),
    case("sequelize db:create", MIGRATE, "sequelize"),
    case(
        "sequelize db:migrate --url mysql://u@h/db --config cfg.json",
        MIGRATE,
        "sequelize",
        hints={"url": "mysql://u@h/db", "config": "cfg.json"},
    ),
    case("sequelize migration:generate --name add-users", RO, "sequelize"),
    case("sequelize db:migrate:status", RO, "sequelize"),
    case("sequelize model:generate --name User --attributes a:string", RO, "sequelize"),
    case("sequelize help", RO, "sequelize"),
]

TYPEORM = [
    case(
        "typeorm schema:drop -d src/data-source.ts",
        DESTRUCTIVE,
        "typeorm",
        "schema:drop",
        hints={"config": "src/data-source.ts"},
    ),
    case("typeorm schema:sync -d ds.js", DESTRUCTIVE, "typeorm"),
    case("typeorm-ts-node-commonjs migration:run -d src/ds.ts", MIGRATE, "typeorm"),
    case("typeorm-ts-node-esm migration:revert -d src/ds.ts", DESTRUCTIVE, "typeorm"),
    case(
        "npx typeorm migration:run --dataSource=ds.js -t each",
        MIGRATE,
        "typeorm",
        hints={"config": "ds.js"},
    ),
    case("typeorm query 'DELETE FROM users'", QUERY, "typeorm"),
    case("typeorm migration:show -d ds.js", RO, "typeorm"),
    case("typeorm migration:generate src/migrations/Add -d ds.js", RO, "typeorm"),
    case("typeorm migration:create src/migrations/Add", RO, "typeorm"),
    case("typeorm schema:log -d ds.js", RO, "typeorm"),
    case("typeorm -h", RO, "typeorm"),
]

SUPABASE = [
    case("supabase db reset", DESTRUCTIVE, "supabase", "db reset"),
    case("supabase db reset --linked", DESTRUCTIVE, "supabase", hints={"target": "linked"}),
    case("npx supabase db reset --local", DESTRUCTIVE, "supabase", hints={"target": "local"}),
    case("supabase db push", MIGRATE, "supabase"),
    case(
        "supabase db push --db-url postgres://u@h/db --include-seed",
        MIGRATE,
        "supabase",
        hints={"url": "postgres://u@h/db"},
    ),
    case("supabase migration up", MIGRATE, "supabase"),
    case("supabase migration down --last 1", DESTRUCTIVE, "supabase"),
    case("supabase migration repair --status applied 2024", MIGRATE, "supabase"),
    case("supabase test db", TEST, "supabase"),
    case("supabase stop --no-backup", DESTRUCTIVE, "supabase", "stop --no-backup"),
    case("supabase db diff -f add_users", RO, "supabase"),
    case("supabase db lint", RO, "supabase"),
    case("supabase db dump -f dump.sql", RO, "supabase"),
    case("supabase db push --dry-run", RO, "supabase"),
    case("supabase migration list", RO, "supabase"),
    case("supabase migration new add_users", RO, "supabase"),
    case("supabase db reset --help", RO, "supabase"),
    case("supabase stop", None),
    case("supabase start", None),
    case("supabase login", None),
]

# ---- Ruby ------------------------------------------------------------------------------------

RAILS = [
    case("bin/rails db:migrate", MIGRATE, "rails", "db:migrate"),
    case("rails db:drop", DESTRUCTIVE, "rails"),
    case("rails db:reset", DESTRUCTIVE, "rails"),
    case("rails db:seed", SEED, "rails"),
    case("rails db:seed:replant", DESTRUCTIVE, "rails"),
    case("rails db:schema:load", DESTRUCTIVE, "rails"),
    case("rails db:test:prepare", TEST, "rails"),
    case("rails db:rollback STEP=2", DESTRUCTIVE, "rails", assignments={"STEP": "2"}),
    case("rails db:setup", DESTRUCTIVE, "rails"),
    case("rails db:prepare", MIGRATE, "rails"),
    case("rails db:truncate_all", DESTRUCTIVE, "rails"),
    case("rails db:migrate:down VERSION=2024", DESTRUCTIVE, "rails"),
    case("rails db:migrate:redo", DESTRUCTIVE, "rails"),
    case("rails db:migrate:primary", MIGRATE, "rails", "db:migrate:primary"),
    case("rails db:drop:animals", DESTRUCTIVE, "rails"),
    case(
        "rails db:drop db:create db:migrate", DESTRUCTIVE, "rails", "db:drop db:create db:migrate"
    ),
    case(
        "rails db:migrate RAILS_ENV=production",
        MIGRATE,
        "rails",
        assignments={"RAILS_ENV": "production"},
    ),
    case(
        "RAILS_ENV=test bin/rails db:reset", DESTRUCTIVE, "rails", assignments={"RAILS_ENV": "test"}
    ),
    case("bundle exec rails db:migrate", MIGRATE, "rails"),
    case("bundle exec rake db:migrate", MIGRATE, "rake"),
    case("bundle exec rake db:drop db:create db:schema:load", DESTRUCTIVE, "rake"),
    case("rake db:seed", SEED, "rake"),
    case("rake 'db:seed[users]'", SEED, "rake"),
    case("rake", TEST, "rake"),
    case("rake spec", TEST, "rake"),
    case("bin/rake test", TEST, "rake"),
    case("ruby bin/rails db:migrate", MIGRATE, "rails"),
    case("rails test", TEST, "rails"),
    case("rails test test/models/user_test.rb -n test_x", TEST, "rails"),
    case("rails test:system", TEST, "rails"),
    case("rails console", QUERY, "rails"),
    case("rails c -e production", QUERY, "rails", hints={"env": "production"}),
    case("rails dbconsole", QUERY, "rails"),
    case("rails runner 'User.delete_all'", QUERY, "rails"),
    case("rspec", TEST, "rspec"),
    case("bundle exec rspec spec/models", TEST, "rspec"),
    case("bin/rspec --tag db", TEST, "rspec"),
    case("rails db:migrate:status", RO, "rails", "db:migrate:status"),
    case("rails db:migrate:status:primary", RO, "rails"),
    case("rails db:version", RO, "rails"),
    case("rails db:schema:dump", RO, "rails"),
    case("rake db:migrate:status", RO, "rake"),
    case("rake -T db", RO, "rake"),
    case("rake -n db:drop", RO, "rake", "db:drop -n"),
    case("rake --dry-run db:reset", RO, "rake"),
    case("rails --help", RO, "rails"),
    case("rails help", RO, "rails"),
    case("rake --version", RO, "rake"),
    case("rspec --dry-run", RO, "rspec"),
    case("rspec --version", RO, "rspec"),
    case("rails server", None),
    case("rails s -p 3000", None),
    case("rails generate migration AddUsers", None),
    case("rails generate controller db", None),
    case("rails g model t", None),
    case("rails routes -g db", None),
    case("rails routes", None),
    case("rails", None),
    case("rake assets:precompile", None),
    case("bundle install", None),
    case("bundle exec puma", None),
    case("ruby -e 'puts 1'", None),
]

# ---- JVM -------------------------------------------------------------------------------------

FLYWAY = [
    case("flyway clean", DESTRUCTIVE, "flyway", "clean"),
    case("flyway migrate", MIGRATE, "flyway", "migrate"),
    case("flyway clean migrate", DESTRUCTIVE, "flyway", "clean migrate"),
    case("flyway -cleanDisabled=false clean", DESTRUCTIVE, "flyway"),
    case("flyway undo", DESTRUCTIVE, "flyway"),
    case("flyway repair", MIGRATE, "flyway"),
    case("flyway baseline -baselineVersion=1", MIGRATE, "flyway"),
    case(
        "flyway -url=jdbc:postgresql://db:5432/app -user=app -password=s3cret migrate",
        MIGRATE,
        "flyway",
        hints={"url": "jdbc:postgresql://db:5432/app", "user": "app"},
    ),
    case(
        "flyway -configFiles=conf/prod.conf -environment=prod clean",
        DESTRUCTIVE,
        "flyway",
        hints={"config": "conf/prod.conf", "env": "prod"},
    ),
    case("flyway --url=jdbc:h2:mem:x migrate", MIGRATE, "flyway", hints={"url": "jdbc:h2:mem:x"}),
    case("flyway info", RO, "flyway", "info"),
    case("flyway validate", RO, "flyway"),
    case("flyway info validate", RO, "flyway"),
    case("flyway -?", RO, "flyway"),
    case("flyway help", RO, "flyway"),
    case("flyway -v", RO, "flyway"),
    case("flyway", None),
]

LIQUIBASE = [
    case("liquibase dropAll", DESTRUCTIVE, "liquibase", "dropAll"),
    case("liquibase drop-all", DESTRUCTIVE, "liquibase"),
    case("liquibase update", MIGRATE, "liquibase", "update"),
    case("liquibase --changelog-file=db.xml update", MIGRATE, "liquibase"),
    case(
        "liquibase --url jdbc:postgresql://h/db --username app update",
        MIGRATE,
        "liquibase",
        hints={"url": "jdbc:postgresql://h/db", "user": "app"},
    ),
    case(
        "liquibase --defaults-file=prod.properties rollback v1",
        DESTRUCTIVE,
        "liquibase",
        hints={"config": "prod.properties"},
    ),
    case("liquibase rollback-count --count=1", DESTRUCTIVE, "liquibase"),
    case("liquibase rollbackCount 1", DESTRUCTIVE, "liquibase"),
    case("liquibase update-testing-rollback", DESTRUCTIVE, "liquibase"),
    case("liquibase changelog-sync", MIGRATE, "liquibase"),
    case("liquibase execute-sql --sql='DELETE FROM t'", DESTRUCTIVE, "liquibase"),
    case("liquibase updateSQL", RO, "liquibase", "updateSQL"),
    case("liquibase update-sql", RO, "liquibase"),
    case("liquibase rollback-sql --tag v1", RO, "liquibase"),
    case("liquibase status --verbose", RO, "liquibase"),
    case("liquibase history", RO, "liquibase"),
    case("liquibase validate", RO, "liquibase"),
    case("liquibase diff", RO, "liquibase"),
    case("liquibase --version", RO, "liquibase"),
    case("liquibase", None),
]

# ---- clients ---------------------------------------------------------------------------------

CLIENTS = [
    case(
        "dropdb -h db.internal shop",
        DESTRUCTIVE,
        "dropdb",
        hints={"host": "db.internal", "database": "shop"},
    ),
    case("dropdb --help", RO, "dropdb"),
    case(
        "pg_restore -d shop --clean app.dump", DESTRUCTIVE, "pg_restore", hints={"database": "shop"}
    ),
    case("pg_restore -d shop app.dump", SEED, "pg_restore", hints={"database": "shop"}),
    case("pg_restore -l app.dump", RO, "pg_restore"),
    case("python manage.py reset_db --noinput", DESTRUCTIVE, "manage.py", "reset_db"),
    case("psql", QUERY, "psql", ""),
    case("psql mydb", QUERY, "psql", hints={"database": "mydb"}),
    case("psql -At -F= shop", QUERY, "psql", hints={"database": "shop"}),  # "=" separates
    case("psql mydb alice", QUERY, "psql", hints={"database": "mydb", "user": "alice"}),
    case(
        "psql -h db.internal -p 5433 -U app -d shop",
        QUERY,
        "psql",
        hints={"host": "db.internal", "port": "5433", "user": "app", "database": "shop"},
    ),
    case(
        "psql -hlocalhost -Uapp shop -c 'DELETE FROM t'",
        QUERY,
        "psql",
        hints={"host": "localhost", "user": "app", "database": "shop"},
    ),
    case(
        "psql postgresql://alice:secret@db.example.com:6543/shop",
        QUERY,
        "psql",
        hints={"host": "db.example.com", "port": "6543", "user": "alice", "database": "shop"},
    ),
    case(
        "psql 'host=db port=5 dbname=shop user=al password=secret'",
        QUERY,
        "psql",
        hints={"host": "db", "port": "5", "database": "shop", "user": "al"},
    ),
    case(
        "psql --dbname=postgres://u:pw@h/x -f seed.sql",
        QUERY,
        "psql",
        hints={"host": "h", "user": "u", "database": "x"},
    ),
    case("PGHOST=db psql shop", QUERY, "psql", assignments={"PGHOST": "db"}),
    case("psql -l", RO, "psql", "-l"),
    case("psql -lqt", RO, "psql"),
    case("psql --list -h db", RO, "psql"),
    case("psql --version", RO, "psql"),
    case("psql -V", RO, "psql"),
    case("psql -?", RO, "psql"),
    case("mysql", QUERY, "mysql"),
    case("mysql shop", QUERY, "mysql", hints={"database": "shop"}),
    case(
        "mysql -h 127.0.0.1 -P 3307 -u root -psecret shop",
        QUERY,
        "mysql",
        hints={"host": "127.0.0.1", "port": "3307", "user": "root", "database": "shop"},
    ),
    # -p never takes the next word: "shop" is the database, never a password
    case("mysql -u root -p shop", QUERY, "mysql", hints={"user": "root", "database": "shop"}),
    case(
        "mysql --user=root --password=secret --database=shop -e 'DROP TABLE t'",
        QUERY,
        "mysql",
        hints={"user": "root", "database": "shop"},
    ),
    case(
        "mysql --defaults-file=my.cnf -S /run/mysqld.sock",
        QUERY,
        "mysql",
        hints={"config": "my.cnf", "socket": "/run/mysqld.sock"},
    ),
    case("mariadb -uroot shop", QUERY, "mysql", hints={"user": "root", "database": "shop"}),
    case("mysql --version", RO, "mysql"),
    case("mysql -V", RO, "mysql"),
    case("mariadb --help", RO, "mysql"),
    # mysqladmin drops the database after `drop` (any case, any unique prefix)
    case(
        "mysqladmin -h 127.0.0.1 -P 3307 -u root -f drop shop",
        DESTRUCTIVE,
        "mysqladmin",
        "drop",
        hints={"host": "127.0.0.1", "port": "3307", "user": "root", "database": "shop"},
    ),
    case(
        "mariadb-admin --host=db --user=app -psecret --force DROP shop",
        DESTRUCTIVE,
        "mysqladmin",
        hints={"host": "db", "user": "app", "database": "shop"},
    ),
    case(
        "mysqladmin -S /run/mysqld.sock dr shop",
        DESTRUCTIVE,
        "mysqladmin",
        hints={"socket": "/run/mysqld.sock", "database": "shop"},
    ),
    case(
        "mysqladmin -c 3 -i 1 flush-logs drop shop",
        DESTRUCTIVE,
        "mysqladmin",
        hints={"database": "shop"},
    ),
    case(
        "mysqladmin -u root -p drop shop",
        DESTRUCTIVE,
        "mysqladmin",
        hints={"user": "root", "database": "shop"},
    ),
    case("mysqladmin status", None),
    case("mysqladmin -c 2 -i 1 processlist", None),
    case("mysqladmin create shop", None),
    case("mysqladmin --help", RO, "mysqladmin"),
    case("mariadb-admin -V", RO, "mysqladmin"),
    case("sqlite3 db.sqlite", QUERY, "sqlite3", hints={"database": "db.sqlite"}),
    case("sqlite3 db.sqlite 'DELETE FROM users'", QUERY, "sqlite3", ""),
    case("sqlite3 db.sqlite .dump", RO, "sqlite3", ".dump", hints={"database": "db.sqlite"}),
    case("sqlite3 db.sqlite '.dump users'", RO, "sqlite3"),
    case("sqlite3 db.sqlite .schema .tables", RO, "sqlite3", ".schema .tables"),
    case("sqlite3 db.sqlite .dump 'DROP TABLE users'", QUERY, "sqlite3"),
    case("sqlite3 -readonly db.sqlite", RO, "sqlite3", "-readonly"),
    case("sqlite3 --readonly db.sqlite 'SELECT 1'", RO, "sqlite3"),
    case("sqlite3 -cmd 'DELETE FROM t' db.sqlite .tables", QUERY, "sqlite3"),
    case("sqlite3 -init setup.sql db.sqlite .dump", QUERY, "sqlite3"),
    case("sqlite3 -header -csv db.sqlite 'select 1'", QUERY, "sqlite3"),
    case("sqlite3 -separator , db.sqlite .dump", RO, "sqlite3", hints={"database": "db.sqlite"}),
    case("sqlite3 --version", RO, "sqlite3"),
    case("sqlite3 -version", RO, "sqlite3"),
    case("sqlite3 -help", RO, "sqlite3"),
]

# ---- commands that are nothing to do with databases ----------------------------------------

UNRELATED = [
    case("git status", None),
    case("ls -la", None),
    case("npm install", None),  # no lifecycle scripts in this (empty) lookup
    case("npm ci", None),
    case("npm run build", None),
    case("yarn", None),
    case("composer install", None),
    case("composer require laravel/framework", None),
    case("env", None),
    case("env FOO=1", None),
    case("FOO=1", None),
    case("command -v php", None),
    case("bash deploy.sh", None),
    case("bash", None),
    case("", None),
    # Nx's own commands run no target
    case("nx graph", None),
    case("nx show projects", None),
    case("nx --version", None),
    case("nx reset", None),
    case("nx format:write", None),
    case("npx nx migrate latest", None),
]

ALL_CASES = [
    *LARAVEL,
    *SYMFONY,
    *PHP_TESTS,
    *DJANGO,
    *PYTEST,
    *ALEMBIC,
    *PRISMA,
    *DRIZZLE,
    *JS_TESTS,
    *FLASK,
    *KNEX,
    *SEQUELIZE,
    *TYPEORM,
    *SUPABASE,
    *RAILS,
    *FLYWAY,
    *LIQUIBASE,
    *CLIENTS,
    *UNRELATED,
]


@pytest.mark.parametrize("c", ALL_CASES)
def test_classify(c: Case) -> None:
    check(c, classify(c.line))


# ---- package scripts ---------------------------------------------------------------------------


@dataclass
class Scripts:
    """A dict-backed ScriptLookup that counts its calls."""

    files: dict[str, dict[str, str | list[str]]]
    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, manifest: str, name: str) -> Script | None:
        self.calls.append((manifest, name))
        value = self.files.get(manifest, {}).get(name)
        if isinstance(value, list):  # composer's list form, as ProjectFiles joins it
            value = " && ".join(value)
        return Script(value, posixpath.dirname(manifest)) if value is not None else None


PACKAGE_JSON = {
    "test": "php artisan test",
    "fresh": "php artisan migrate:fresh --seed && npm run build",
    "build": "vite build",
    "dev": "vite",
    "db": "prisma migrate",
    "migrate": "knex migrate:latest",
    "seed": "NODE_ENV=test knex seed:run --env test",
    "lint": "eslint . && tsc --noEmit",
    "ci": "npm run lint && npm test",
    "e2e": "cross-env APP_ENV=testing npm run test",
    "logs": "php artisan migrate:status > status.txt 2>&1",
    "quoted": "sh -c 'php artisan db:wipe --force' || true",
    "prisma": "prisma",
    "loop": "npm run loop",
    "ping": "npm run pong",
    "pong": "npm run ping",
    "test:unit": "vitest run --coverage",
    "test:e2e": "playwright test",
    "db:push": "drizzle-kit push --force",
}
COMPOSER_JSON: dict[str, str | list[str]] = {
    "test": ["@clear", "@php artisan test"],
    "clear": "@php artisan config:clear",
    "fresh": "@reset",
    "reset": "@php artisan migrate:fresh --seed",
    "phpunit": "phpunit",
    "post-install-cmd": ["@php artisan migrate --force"],
    "callback": "App\\Installer::run",
}
DENO_JSON: dict[str, str | list[str]] = {  # deno's tasks, as ProjectFiles reads them
    "db:reset": "deno task wipe && echo done",
    "wipe": "deno run -A npm:prisma migrate reset --force",
    "dev": "deno run --watch main.ts",
}


def scripts(**extra: dict[str, str | list[str]]) -> Scripts:
    files: dict[str, dict[str, str | list[str]]] = {
        "package.json": dict(PACKAGE_JSON),
        "composer.json": dict(COMPOSER_JSON),
        "deno.json": dict(DENO_JSON),
    }
    for manifest, more in extra.items():
        files[f"{manifest}.json"] = {**files.get(f"{manifest}.json", {}), **more}
    return Scripts(files)


@dataclass(frozen=True)
class ScriptCase:
    line: str
    kind: Kind | None
    via: tuple[str, ...] = ()
    tool: str | None = None
    command: str | None = None
    assignments: Mapping[str, str] | None = None


def script_case(
    line: str,
    kind: Kind | None,
    via: tuple[str, ...] = (),
    tool: str | None = None,
    command: str | None = None,
    *,
    assignments: Mapping[str, str] | None = None,
) -> Any:
    return pytest.param(ScriptCase(line, kind, via, tool, command, assignments), id=line)


SCRIPT_CASES = [
    script_case("npm test", TEST, ("npm run test",), "artisan", "test"),
    script_case("npm t", TEST, ("npm run test",)),
    script_case("npm tst", TEST, ("npm run test",)),
    script_case("npm run test", TEST, ("npm run test",)),
    script_case("npm run-script test", TEST, ("npm run test",)),
    script_case("npm --silent run test", TEST, ("npm run test",)),
    script_case("npm run fresh", DESTRUCTIVE, ("npm run fresh",), "artisan", "migrate:fresh"),
    script_case("npm run ci", TEST, ("npm run ci", "npm run test")),
    script_case(
        "npm run e2e", TEST, ("npm run e2e", "npm run test"), assignments={"APP_ENV": "testing"}
    ),
    script_case("npm run seed", SEED, ("npm run seed",), "knex", assignments={"NODE_ENV": "test"}),
    script_case("npm run logs", RO, ("npm run logs",), "artisan", "migrate:status"),
    script_case(
        "npm run db:push", DESTRUCTIVE, ("npm run db:push",), "drizzle-kit", "push --force"
    ),
    script_case("npm run quoted", DESTRUCTIVE, ("npm run quoted",), "artisan", "db:wipe"),
    # arguments after the script name are appended to its command line
    script_case("npm run db -- reset", DESTRUCTIVE, ("npm run db",), "prisma", "migrate reset"),
    script_case("npm run db reset", DESTRUCTIVE, ("npm run db",), "prisma"),
    script_case("npm test -- --filter=UserTest", TEST, ("npm run test",)),
    script_case("npm run prisma -- migrate deploy", MIGRATE, ("npm run prisma",)),
    script_case("npm run test:unit", TEST, ("npm run test:unit",), "vitest"),
    script_case("npm run test:e2e", TEST, ("npm run test:e2e",), "playwright", "test"),
    script_case("npm run build", None),
    script_case("npm run dev", None),
    script_case("npm run lint", None),
    script_case("npm run missing", None),
    script_case("npm run", None),
    # node --run (Node 22+) runs package.json's script as npm run does, without pre/post
    script_case("node --run fresh", DESTRUCTIVE, ("node --run fresh",), "artisan", "migrate:fresh"),
    script_case("node --run=migrate", MIGRATE, ("node --run migrate",), "knex"),
    script_case("nodejs --run db -- reset", DESTRUCTIVE, ("node --run db",), "prisma"),
    script_case("node --env-file .env --run ci", TEST, ("node --run ci", "npm run test")),
    script_case("node --run build", None),
    script_case("node --run", None),
    script_case("node app.js --run fresh", None),  # app.js's own argument
    script_case("node -e x --run fresh", None),
    script_case("yarn test", TEST, ("yarn run test",)),
    script_case("yarn run migrate", MIGRATE, ("yarn run migrate",), "knex"),
    script_case("yarn migrate --env production", MIGRATE, ("yarn run migrate",)),
    script_case("yarn fresh", DESTRUCTIVE, ("yarn run fresh",)),
    script_case("yarn knex migrate:rollback", DESTRUCTIVE, (), "knex"),  # a bin, no such script
    script_case("yarn run knex seed:run", SEED, (), "knex"),
    script_case("yarn add knex", None),
    script_case("pnpm test", TEST, ("pnpm run test",)),
    script_case("pnpm t", TEST, ("pnpm run test",)),
    script_case("pnpm run fresh", DESTRUCTIVE, ("pnpm run fresh",)),
    script_case("pnpm migrate", MIGRATE, ("pnpm run migrate",)),
    script_case("pnpm --filter api run migrate", MIGRATE, ("pnpm run migrate",)),
    script_case("pnpm knex migrate:latest", MIGRATE, (), "knex"),
    script_case("bun run test", TEST, ("bun run test",)),
    script_case("bun fresh", DESTRUCTIVE, ("bun run fresh",)),
    # bun test's help flags are bun test's: bun's scripts keep theirs
    script_case("bun run fresh -v", DESTRUCTIVE, ("bun run fresh",)),
    script_case("bun fresh --help", DESTRUCTIVE, ("bun run fresh",)),
    script_case("turbo run fresh", DESTRUCTIVE, ("turbo run fresh",)),
    script_case("lerna run fresh", DESTRUCTIVE, ("lerna run fresh",)),
    script_case("bun test", TEST, (), "bun test"),  # bun's own test runner, not the script
    script_case("bun --hot src/cli.ts migrate", None),  # a file bun runs, never a value
    # Options that take a value, before the script or after `run`: listed, or guessed.
    script_case("bun run -r ./setup.ts fresh", DESTRUCTIVE, ("bun run fresh",)),
    script_case("bun --title api fresh", DESTRUCTIVE, ("bun run fresh",)),
    script_case("yarn run --require dotenv/config fresh", DESTRUCTIVE, ("yarn run fresh",)),
    script_case("yarn --mutex network run fresh", DESTRUCTIVE, ("yarn run fresh",)),
    script_case("npm --globalconfig /etc/npmrc run fresh", DESTRUCTIVE, ("npm run fresh",)),
    script_case("npm -L project run fresh", DESTRUCTIVE, ("npm run fresh",)),
    script_case("pnpm --registry https://r.example run fresh", DESTRUCTIVE, ("pnpm run fresh",)),
    script_case("lerna run --profile-location /tmp/p fresh", DESTRUCTIVE, ("lerna run fresh",)),
    # ... and unknown ones right before the script's name after `run`, too.
    script_case("npm run --new-option V fresh", DESTRUCTIVE, ("npm run fresh",)),
    script_case("pnpm run --new-option V fresh", DESTRUCTIVE, ("pnpm run fresh",)),
    script_case("yarn run --new-option V fresh", DESTRUCTIVE, ("yarn run fresh",)),
    script_case("npm --new-a A run --new-b B fresh", DESTRUCTIVE, ("npm run fresh",)),
    script_case("bun run --hot src/cli.ts fresh", None),  # a file bun runs, never a value
    script_case("yarn run --new-option V build", None),
    # A word that names a script is that script, never a flag's guessed value: most
    # options are flags, and these run lint (or dev) with an argument.
    script_case("npm run --silent lint test", None),
    script_case("pnpm run --parallel lint test", None),
    script_case("yarn --silent lint test", None),
    script_case("bun run --watch dev fresh", None),
    script_case(
        "composer run-script --timeout 0 fresh",
        DESTRUCTIVE,
        ("composer run fresh", "composer run reset"),
    ),
    script_case("deno task db:reset", DESTRUCTIVE, ("deno task db:reset", "deno task wipe")),
    script_case("deno task --cwd web wipe", DESTRUCTIVE, ("deno task wipe",), "prisma"),
    script_case("deno task -j 2 wipe", DESTRUCTIVE, ("deno task wipe",)),
    script_case("deno task dev", None),
    script_case("deno task", None),  # lists the tasks
    script_case("composer test", TEST, ("composer run test",), "artisan", "test"),
    script_case("composer run-script test", TEST, ("composer run test",)),
    script_case("composer run fresh", DESTRUCTIVE, ("composer run fresh", "composer run reset")),
    script_case("composer phpunit -- --filter X", TEST, ("composer run phpunit",), "phpunit"),
    script_case("composer install", MIGRATE, ("composer run post-install-cmd",), "artisan"),
    script_case("composer callback", None),
    script_case("composer clear", None),
    script_case("composer dump-autoload", None),
]


LARAVEL_COMMANDS = ["migrate", "migrate:fresh", "migrate:refresh", "db", "db:seed", "db:wipe"]


@pytest.mark.parametrize(
    ("name", "offered"),
    [
        ("wipe", ["db:wipe"]),  # contained in it
        ("db:wip", ["db", "db:seed", "db:wipe"]),  # the namespace alone makes db:* close
        ("migrate:frsh", ["migrate", "migrate:fresh", "migrate:refresh"]),
        ("fresh", ["migrate:fresh", "migrate:refresh"]),
        ("other:frsh", ["migrate:fresh"]),  # a close last part is enough
        # 1 edit in 6 letters: close to migrate, and so to each migrate:* command's first part
        ("mgrate", ["migrate", "migrate:fresh", "migrate:refresh"]),
        ("queue:work", []),
    ],
)
def test_console_alternatives_are_symfonys(name: str, offered: list[str]) -> None:
    assert console_alternatives(name, LARAVEL_COMMANDS) == offered


def test_a_dotenv_file_a_package_manager_loads_reaches_discovery() -> None:
    """`bun --env-file .env.test run reset`: the script runs with .env.test loaded, so
    its database is the one to back up (named from where bun runs, after --cwd)."""
    for line, env_file in [
        ("bun run --env-file .env.test fresh", ".env.test"),
        ("bun --env-file=.env.test fresh", ".env.test"),
    ]:
        found = CLASSIFIER.classify(shlex.split(line), scripts())
        assert found is not None and found.kind == DESTRUCTIVE, line
        assert found.hints.get("env_file") == env_file, found


@pytest.mark.parametrize("c", SCRIPT_CASES)
def test_package_scripts(c: ScriptCase) -> None:
    found = CLASSIFIER.classify(shlex.split(c.line), scripts())
    if c.kind is None:
        assert found is None, found
        return
    assert found is not None
    assert found.kind == c.kind, found
    assert found.via == c.via, found
    if c.tool is not None:
        assert found.tool == c.tool, found
    if c.command is not None:
        assert found.command == c.command, found
    if c.assignments is not None:
        assert dict(found.assignments) == dict(c.assignments), found


@pytest.mark.parametrize(
    ("line", "kind", "tool", "folder"),
    [
        ("npm --prefix web run fresh", DESTRUCTIVE, "prisma", "web"),
        ("npm -C web test", TEST, "vitest", "web"),
        ("npm --prefix=./web/ test", TEST, "vitest", "web"),
        ("yarn --cwd web fresh", DESTRUCTIVE, "prisma", "web"),
        ("pnpm -C web fresh", DESTRUCTIVE, "prisma", "web"),
        ("pnpm --dir=web run fresh", DESTRUCTIVE, "prisma", "web"),
        ("bun --cwd web run fresh", DESTRUCTIVE, "prisma", "web"),
        ("composer -d api fresh", DESTRUCTIVE, "artisan", "api"),
        ("composer --working-dir=api exec -- phpunit", TEST, "phpunit", "api"),
        # moves are joined, from the invocation's folder
        ("env -C apps npm --prefix ../web run fresh", DESTRUCTIVE, "prisma", "web"),
        ("env --chdir=api php artisan migrate:fresh", DESTRUCTIVE, "artisan", "api"),
        ("uv run --directory api pytest", TEST, "pytest", "api"),
        ("npm --prefix /srv/web run fresh", DESTRUCTIVE, "prisma", "/srv/web"),
        # npm and composer take their options anywhere before --; bun after `run` too
        ("npm run fresh --prefix web", DESTRUCTIVE, "prisma", "web"),
        ("npm run --prefix=web fresh", DESTRUCTIVE, "prisma", "web"),
        ("npm test --prefix web", TEST, "vitest", "web"),
        ("npm --prefix web run unit", TEST, "node", "web"),
        # a tool's own move is joined to the script's
        ("npm --prefix web run bun", TEST, "bun test", "web/api"),
        ("bun run --cwd web fresh", DESTRUCTIVE, "prisma", "web"),
        ("composer run -d api fresh", DESTRUCTIVE, "artisan", "api"),
        # after --, it is the script's
        ("npm run fresh -- --prefix web", DESTRUCTIVE, "artisan", None),
        ("pnpm -C web exec prisma migrate reset", DESTRUCTIVE, "prisma", "web"),
        ("yarn --cwd web exec prisma migrate reset", DESTRUCTIVE, "prisma", "web"),
        ("bun --cwd web x prisma migrate reset", DESTRUCTIVE, "prisma", "web"),
        ("poetry -C api run pytest", TEST, "pytest", "api"),
        # npm exec runs where it is started, whatever the prefix
        ("npm -C web exec prisma migrate reset", DESTRUCTIVE, "prisma", None),
        # the top folder's own scripts: no move
        ("npm run fresh", DESTRUCTIVE, "artisan", None),
        # lint is a script of the top folder's, not of web's: a guessed value there
        ("npm --prefix web run --new-option lint fresh", DESTRUCTIVE, "prisma", "web"),
        ("yarn --cwd web run --new-option lint fresh", DESTRUCTIVE, "prisma", "web"),
    ],
)
def test_options_that_move_the_working_folder_move_scripts_and_discovery(
    line: str, kind: Kind, tool: str, folder: str | None
) -> None:
    web: dict[str, str | list[str]] = {
        "test": "vitest run",
        "fresh": "prisma migrate reset -f",
        "unit": "node --test",
        "bun": "bun --cwd api test",
    }
    lookup = Scripts(
        {
            "package.json": dict(PACKAGE_JSON),
            "web/package.json": web,
            "/srv/web/package.json": web,
            "api/composer.json": {"fresh": "@php artisan migrate:fresh"},
        }
    )
    found = CLASSIFIER.classify(shlex.split(line), lookup)
    assert found is not None
    assert (found.kind, found.tool, found.hints.get("cwd")) == (kind, tool, folder)


@pytest.mark.parametrize(
    ("script", "folder"),
    [
        ("cd api && npx prisma migrate reset --force", "api"),
        ("cd api; cd ../web && prisma migrate reset", "web"),
        ("(cd docs && make html) && prisma migrate reset", None),
        ("cd /srv/api && prisma migrate reset", "/srv/api"),
        ("cd && prisma migrate reset", None),  # home: not followed
    ],
)
def test_cd_in_a_script_moves_the_rest_of_its_line(script: str, folder: str | None) -> None:
    found = CLASSIFIER.classify(["npm", "run", "reset"], scripts(package={"reset": script}))
    assert found is not None and found.kind is DESTRUCTIVE
    assert found.hints.get("cwd") == folder


def test_every_database_operation_of_a_line_is_kept() -> None:
    line = "cd api && prisma migrate reset --force && cd ../worker && knex migrate:rollback"
    found = CLASSIFIER.classify(["npm", "run", "reset"], scripts(package={"reset": line}))
    assert found is not None
    assert [(o.tool, o.kind, o.hints.get("cwd")) for o in found.each()] == [
        ("prisma", DESTRUCTIVE, "api"),
        ("knex", DESTRUCTIVE, "worker"),
    ]
    line = "cd web && vitest run && cd ../api && jest && prisma generate"
    found = CLASSIFIER.classify(["npm", "test"], scripts(package={"test": line}))
    assert found is not None
    assert [(o.tool, o.hints.get("cwd")) for o in found.each()] == [
        ("vitest", "web"),
        ("jest", "api"),
    ]
    # the same operation twice is one; read-only ones need nothing
    found = CLASSIFIER.classify_command_line("knex seed:run && knex seed:run && knex migrate:list")
    assert found is not None and found.also == ()


def test_a_long_script_of_database_commands_stays_linear() -> None:
    line = " && ".join(f"psql -d db{i} -c 'select 1'" for i in range(4000))
    found = CLASSIFIER.classify_command_line(line)
    assert found is not None and len(found.each()) == 4000  # a quadratic dedup took minutes


def test_a_script_runs_in_its_manifest_s_folder_and_moves_from_there() -> None:
    # The look-up found the script in the folder above ("" is the invocation's own);
    # its `--prefix packages/db` is taken from there.
    lookup = Scripts(
        {
            "package.json": {"db:reset": "npm --prefix packages/db run reset"},
            "packages/db/package.json": {"reset": "prisma migrate reset --force"},
        }
    )
    found = CLASSIFIER.classify(["npm", "run", "db:reset"], lookup)
    assert found is not None and found.kind is DESTRUCTIVE
    assert found.hints.get("cwd") == "packages/db"


def test_node_run_runs_the_script_in_the_folder_it_started_in() -> None:
    # The script is in the folder above, but node --run (unlike npm) does not move there.
    def lookup(manifest: str, name: str) -> Script | None:
        line = {"db:reset": "prisma migrate reset --force"}.get(name)
        return Script(line, "..") if manifest == "package.json" and line else None

    found = CLASSIFIER.classify(["node", "--run", "db:reset"], lookup)
    assert found is not None and found.kind is DESTRUCTIVE
    assert "cwd" not in found.hints
    moved = CLASSIFIER.classify(["npm", "run", "db:reset"], lookup)
    assert moved is not None and moved.hints.get("cwd") == ".."


def test_a_launcher_running_scripts_of_an_unknown_entry_is_refused() -> None:
    with pytest.raises(ValidationError, match="no \\[\\[scripts\\]\\] entry"):
        _catalog({"launcher": [{"name": "x", "programs": ["x"], "script_runs": {"--r": "y"}}]})


@pytest.mark.parametrize(
    ("line", "env_file", "folder"),
    [
        # dotenv-cli reads its file where it starts, before npm moves on
        ("dotenv -e .env.test -- npm --prefix web run fresh", ".env.test", "web"),
        ("env -C web dotenv -e .env.test -- prisma migrate reset", "web/.env.test", "web"),
        # uv's --env-file is taken from its own --directory
        ("uv run --directory api --env-file .env pytest", "api/.env", "api"),
        ("dotenv -e .env.test -- prisma migrate reset", ".env.test", None),
    ],
)
def test_a_launcher_s_dotenv_file_is_named_from_where_the_launcher_runs(
    line: str, env_file: str, folder: str | None
) -> None:
    lookup = Scripts({"web/package.json": {"fresh": "prisma migrate reset --force"}})
    found = CLASSIFIER.classify(shlex.split(line), lookup)
    assert found is not None
    assert (found.hints.get("env_file"), found.hints.get("cwd")) == (env_file, folder)


# A program run in every member runs in each, and in the folder itself (None).
EVERYWHERE = {None, "apps/api", "apps/web", "apps/docs"}

MONOREPO = Scripts(
    {
        "package.json": {"build": "tsc -b"},
        "apps/api/package.json": {"reset": "prisma migrate reset -f", "build": "tsc"},
        "apps/web/package.json": {"reset": "knex migrate:rollback --all", "test": "vitest"},
        "apps/docs/package.json": {"build": "vitepress build"},
    }
)


def members(manifest: str, selectors: Sequence[str] = ()) -> list[str]:
    """The members of MONOREPO's workspace; selected as npm -w does, a package's name
    being its folder's name here."""
    every = ["apps/api", "apps/web", "apps/docs"] if posixpath.dirname(manifest) == "" else []
    if not selectors:
        return every
    chosen: list[str] = []
    for selector in selectors:
        named = [m for m in every if posixpath.basename(m) == selector]
        under = posixpath.normpath(selector)
        chosen += named or [m for m in every if m == under or m.startswith(f"{under}/")]
    return chosen


@pytest.mark.parametrize(
    ("line", "folders"),
    [
        ("npm run reset --workspaces", {"apps/api", "apps/web"}),
        ("npm run reset -ws", {"apps/api", "apps/web"}),
        ("npm -w apps/api -w apps/web run reset", {"apps/api", "apps/web"}),
        ("npm -w apps/web run reset", {"apps/web"}),  # one member: that member only
        ("npm -w web run reset", {"apps/web"}),  # by its package name
        ("npm -w apps run reset", {"apps/api", "apps/web"}),  # a folder holding members
        ("npm run reset --workspace=apps/api --workspace=web", {"apps/api", "apps/web"}),
        ("npm run reset", None),  # the top folder has no such script
        ("pnpm -r reset", {"apps/api", "apps/web"}),
        ("pnpm --filter web run reset", {"apps/web"}),  # a filter naming one package
        ("pnpm -F ./apps/web reset", {"apps/web"}),  # or one folder
        ("pnpm -F '{apps/web}' reset", {"apps/web"}),
        ("pnpm -F web -F api reset", {"apps/api", "apps/web"}),
        ("pnpm --filter 'web...' reset", {"apps/api", "apps/web"}),  # a pattern: every member
        ("pnpm --filter '!web' reset", {"apps/api", "apps/web"}),
        ("pnpm --filter '[origin/main]' reset", {"apps/api", "apps/web"}),
        ("pnpm --filter nothere reset", {"apps/api", "apps/web"}),  # names none: every
        ("yarn workspaces foreach -A --jobs 2 run reset", {"apps/api", "apps/web"}),
        ("yarn workspaces run reset", {"apps/api", "apps/web"}),  # yarn 1
        ("yarn workspace apps/web reset", {"apps/web"}),
        ("yarn workspace apps/api prisma migrate reset", {"apps/api"}),  # its binary
        ("bun --filter '*' reset", {"apps/api", "apps/web"}),
        ("bun run --filter api reset", {"apps/api"}),
        ("bun run --filter './apps/*' reset", {"apps/api", "apps/web"}),
        ("turbo run build reset", {"apps/api", "apps/web"}),
        ("turbo reset --concurrency 2", {"apps/api", "apps/web"}),
        ("turbo build reset", {"apps/api", "apps/web"}),  # tasks without `run` too
        ("npm run reset --ws", {"apps/api", "apps/web"}),
        ("npm --loglevel warn run reset -ws", {"apps/api", "apps/web"}),
        ("pnpm -r --workspace-concurrency 1 reset", {"apps/api", "apps/web"}),
        ("pnpm --reporter append-only -r reset", {"apps/api", "apps/web"}),
        ("pnpm recursive run reset", {"apps/api", "apps/web"}),
        ("npx -w apps/api prisma migrate reset --force", {"apps/api"}),  # runs there
        ("npx -w api prisma migrate reset --force", {"apps/api"}),  # by its package name
        ("npm exec -w apps/web -- knex migrate:rollback", {"apps/web"}),
        ("npm exec -w apps -- prisma migrate reset", {"apps/api", "apps/web", "apps/docs"}),
        ("npm exec -ws -- knex migrate:rollback", EVERYWHERE),
        ("npx --workspaces knex migrate:rollback", EVERYWHERE),
        ("pnpm -r exec knex migrate:rollback", EVERYWHERE),
        ("pnpm exec --recursive knex migrate:rollback", EVERYWHERE),
        ("pnpm --filter api exec prisma migrate reset", {"apps/api"}),
        ("pnpm -F 'api...' exec knex migrate:rollback", EVERYWHERE),
        ("lerna exec -- knex migrate:rollback", EVERYWHERE),
        ("lerna exec --scope web -- knex migrate:rollback", {"apps/web"}),
        ("lerna exec --scope '@shop/*' -- knex migrate:rollback", EVERYWHERE),
        ("npx turbo run reset", {"apps/api", "apps/web"}),
        ("turbo run build", None),
        ("turbo login", None),
        ("lerna run reset --scope api", {"apps/api", "apps/web"}),
    ],
)
def test_runs_in_workspace_members_classify_each_member_s_script(
    line: str, folders: set[str] | None
) -> None:
    found = CLASSIFIER.classify(shlex.split(line), MONOREPO, members)
    if folders is None:
        assert found is None, found
        return
    assert found is not None
    assert found.kind is DESTRUCTIVE
    assert {o.hints.get("cwd") for o in found.each()} == folders


@dataclass
class TopScripts(Scripts):
    """As ProjectFiles reads Nx's files: every line is run from the workspace's top."""

    def __call__(self, manifest: str, name: str) -> Script | None:
        found = super().__call__(manifest, name)
        top = os.path.basename(manifest) in ("project.json", "nx.json")
        return found._replace(folder="") if found is not None and top else found


# An Nx workspace as the look-up gives it: each project's target as the command line it
# runs (from the top), and for nx.json the targets a target runs first in other projects.
NX_WORKSPACE = TopScripts(
    {
        "apps/api/project.json": {
            "test": "nx run api:db:migrate ; cd apps/api && jest",
            "db:migrate": "cd apps/api && prisma migrate deploy",
            "db:reset": "cd apps/api && prisma migrate reset --force",
            "prisma": "cd apps/api && prisma",
            "e2e": "cd apps/api && playwright test",
        },
        "apps/web/project.json": {
            "test": "cd apps/web && vitest run",
            "seed": "cd apps/web && knex seed:run",
        },
        "apps/docs/project.json": {"build": "cd apps/docs && vitepress build"},
        "nx.json": {"e2e": "nx run-many -t seed"},
    }
)
API = {("prisma", "apps/api"), ("jest", "apps/api")}
TESTS = {*API, ("vitest", "apps/web")}


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("nx test api", API),
        ("nx t api", API),  # nx's alias
        ("nx run api:test", API),
        ("nx run api:test:ci", API),  # a configuration
        ("nx api:test", API),
        ("nx run api:db:reset", {("prisma", "apps/api")}),  # a target with a colon
        ("nx db:reset api --verbose", {("prisma", "apps/api")}),
        ("nx --batch db:reset api", {("prisma", "apps/api")}),  # a flag, as --nx-bail
        ("nx --parallel=3 db:reset api", {("prisma", "apps/api")}),
        ("nx --parallel 3 db:reset api", {("prisma", "apps/api")}),  # guessed: 3 is no task
        ("nx run-many --parallel --target=db:reset -p api", {("prisma", "apps/api")}),
        ("nx test --project api", API),
        ("nx run-many -t test", TESTS),
        ("nx run-many -t=test", TESTS),  # yargs reads -t=test as -t test
        ("nx affected -t=db:reset -p=api", {("prisma", "apps/api")}),
        ("nx run-many --target=test --all", TESTS),
        ("nx run-many --targets=test,db:reset -p api,web", {*TESTS}),
        ("nx run-many -t test db:reset --projects=web", {("vitest", "apps/web")}),
        ("nx run-many -t test -p 'api-*'", TESTS),  # a pattern: every project
        ("nx test nosuch", TESTS),  # names no project: every project
        ("nx affected -t test", TESTS),  # dbguard reads no git history: every project
        ("nx affected --target test --base main", TESTS),
        ("npx nx run-many -t test", TESTS),
        ("pnpm nx test api", API),
        ("pnpm exec nx test api", API),
        ("yarn nx test api", API),
        ("npm exec nx -- run-many -t test -p web", {("vitest", "apps/web")}),
        ("npx nx run api:prisma -- migrate reset", {("prisma", "apps/api")}),
        ("nx run api:prisma migrate reset", {("prisma", "apps/api")}),
        ("nx run-many -t build", None),
        ("nx build docs", None),
        ("nx test", None),  # the folder's project: the top is none here
        ("nx graph", None),
        ("nx exec -- tsc", None),
    ],
)
def test_nx_runs_each_project_s_target(line: str, found: set[tuple[str, str]] | None) -> None:
    operation = CLASSIFIER.classify(shlex.split(line), NX_WORKSPACE, members)
    if found is None:
        assert operation is None, operation
        return
    assert operation is not None, line
    assert {(o.tool, o.hints.get("cwd")) for o in operation.each()} == found


def test_nx_forwards_words_to_the_target_and_runs_its_dependencies() -> None:
    argv = shlex.split("nx run api:prisma -- migrate reset")
    reset = CLASSIFIER.classify(argv, NX_WORKSPACE, members)
    assert reset is not None and (reset.kind, reset.command) == (DESTRUCTIVE, "migrate reset")
    assert reset.via == ("nx run prisma",)
    # e2e needs seed in other projects (nx.json's look-up): run in every project.
    e2e = CLASSIFIER.classify(["nx", "e2e", "api"], NX_WORKSPACE, members)
    assert e2e is not None and e2e.kind is SEED
    assert e2e.via == ("nx e2e (dependsOn)", "nx run seed")
    assert {(o.tool, o.hints.get("cwd")) for o in e2e.each()} == {
        ("knex", "apps/web"),
        ("playwright", "apps/api"),
    }
    # `nx exec` runs its command in every project.
    found = CLASSIFIER.classify(shlex.split("nx exec -- prisma migrate reset"), None, members)
    assert found is not None and {o.hints.get("cwd") for o in found.each()} == EVERYWHERE


def test_a_tool_s_dotenv_files_are_named_from_where_it_runs() -> None:
    found = CLASSIFIER.classify_command_line("cd web && flask -e .env.ci db upgrade && bun test")
    assert found is not None
    assert [(o.tool, o.hints["env_file"]) for o in found.each()] == [
        ("flask", "web/.env.ci"),
        ("bun test", "web/.env.local\nweb/.env.test"),
    ]


def test_pre_and_post_scripts_run_around_npm_scripts() -> None:
    lookup = scripts(package={"pretest": "php artisan migrate:fresh", "posttest": "echo done"})
    found = CLASSIFIER.classify(["npm", "test"], lookup)
    assert found is not None
    assert (found.kind, found.via) == (DESTRUCTIVE, ("npm run pretest",))


def test_npm_install_runs_lifecycle_scripts() -> None:
    lookup = scripts(package={"postinstall": "prisma generate", "prepare": "prisma migrate deploy"})
    found = CLASSIFIER.classify(["npm", "install"], lookup)
    assert found is not None
    assert (found.kind, found.via) == (MIGRATE, ("npm run prepare",))
    generate_only = scripts(package={"postinstall": "prisma generate"})
    found = CLASSIFIER.classify(["npm", "ci"], generate_only)
    assert found is not None and found.kind is RO


def test_a_script_that_runs_itself_stops() -> None:
    lookup = scripts()
    assert CLASSIFIER.classify(["npm", "run", "loop"], lookup) is None
    assert CLASSIFIER.classify(["npm", "run", "ping"], lookup) is None
    assert len(lookup.calls) < 20


def test_nested_scripts_are_followed_to_a_bounded_depth() -> None:
    chain: dict[str, str | list[str]] = {f"s{i}": f"npm run s{i + 1}" for i in range(30)}
    chain["s30"] = "php artisan migrate:fresh"
    lookup = scripts(package=chain)
    assert CLASSIFIER.classify(["npm", "run", "s0"], lookup) is None  # too deep to follow
    assert len(lookup.calls) <= 30
    shallow = scripts(package={"a": "npm run b", "b": "npm run c", "c": "php artisan db:wipe"})
    found = CLASSIFIER.classify(["npm", "run", "a"], shallow)
    assert found is not None
    assert found.via == ("npm run a", "npm run b", "npm run c")


def test_fan_out_is_bounded() -> None:
    wide: dict[str, str | list[str]] = {
        f"w{i}": " && ".join(f"npm run w{i + 1}" for _ in range(4)) for i in range(8)
    }
    lookup = scripts(package=wide)
    # What is not followed may be a database operation: refused, never passed.
    with pytest.raises(TooManyScripts, match="more package scripts than dbguard follows"):
        CLASSIFIER.classify(["npm", "run", "w0"], lookup)
    assert len(lookup.calls) <= 64


def test_a_fan_out_into_more_members_than_dbguard_follows_is_refused() -> None:
    reset: dict[str, str | list[str]] = {"reset": "prisma migrate reset -f"}
    files = {f"m{i}/package.json": reset for i in range(300)}
    many = [f"m{i}" for i in range(300)]
    with pytest.raises(TooManyScripts, match="300 workspace members"):
        CLASSIFIER.classify(["npm", "run", "reset", "-ws"], Scripts(files), lambda m, s: many)


def test_a_fan_out_follows_every_member_s_nested_scripts() -> None:
    # Each member's db:reset runs four scripts, each with pre/post look-ups.
    chain = "npm run db:drop && npm run db:create && npm run db:migrate && npm run db:seed"
    member: dict[str, str | list[str]] = {
        "db:reset": chain,
        "db:seed": "prisma migrate reset --force",
    }
    files = {f"m{i}/package.json": dict(member) for i in range(12)}
    found = CLASSIFIER.classify(
        ["npm", "run", "db:reset", "--workspaces"],
        Scripts(files),
        lambda manifest, selectors: [f"m{i}" for i in range(12)],
    )
    assert found is not None
    assert {o.hints["cwd"] for o in found.each()} == {f"m{i}" for i in range(12)}


def test_scripts_need_a_lookup() -> None:
    assert CLASSIFIER.classify(["npm", "test"]) is None
    assert CLASSIFIER.classify(["composer", "test"]) is None


# ---- command lines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind", "command"),
    [
        ("php artisan test && php artisan migrate:fresh", DESTRUCTIVE, "migrate:fresh"),
        ("php artisan migrate:fresh; echo ok", DESTRUCTIVE, "migrate:fresh"),
        ("php artisan migrate:status | tee out", RO, "migrate:status"),
        ("(cd app && php artisan migrate)", MIGRATE, "migrate"),
        ("php artisan test > out.log 2>&1", TEST, "test"),
        ("php artisan migrate:status 2>&1 | grep x", RO, "migrate:status"),
        ("php artisan test & php artisan db:seed", SEED, "db:seed"),
        ("echo 'php artisan migrate:fresh'", None, None),
        # The shell refuses an unbalanced quote: nothing runs.
        ("php artisan 'migrate:fresh", None, None),
        ("true # php artisan migrate:fresh", None, None),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_command_lines(line: str, kind: Kind | None, command: str | None) -> None:
    found = CLASSIFIER.classify_command_line(line)
    assert (found.kind if found else None) == kind, found
    if command is not None:
        assert found is not None and found.command == command


# ---- the catalog itself ------------------------------------------------------------------------


def _case_programs(line: str) -> list[str]:
    words = shlex.split(line)
    while words and "=" in words[0] and not words[0].startswith("-"):
        words.pop(0)
    return words


def test_every_tool_has_a_positive_and_a_read_only_case() -> None:
    """Derived from the catalog: a new tool entry without test cases fails here."""
    seen: dict[str, set[Kind]] = {}
    for param in ALL_CASES:
        c: Case = param.values[0]
        found = classify(c.line)
        if found is None:
            continue
        tool_help = next((t.help for t in CATALOG.tool if t.name == found.tool), [])
        help_items = {*CATALOG.help, *tool_help}
        if found.kind is RO and found.command in help_items:
            continue  # help forms do not count as the tool's read-only command
        seen.setdefault(found.tool, set()).add(found.kind)
    for tool in CATALOG.tool:
        kinds = seen.get(tool.name, set())
        assert kinds - {RO}, f"no test case runs {tool.name} as a database operation"
        has_read_only = RO in {*tool.commands.values(), *tool.flags.values(), tool.default}
        if has_read_only:
            assert RO in kinds, f"no test case for a read-only command of {tool.name}"
    for launcher in CATALOG.launcher:  # `node --test`: a launcher's own operations
        for option, kind in launcher.kinds.items():
            assert kind in seen.get(launcher.name, set()), f"no test case for {option}"


def test_guessed_option_values_are_bounded_for_the_whole_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each guess reads what follows again, so nested launchers with unknown options
    multiplied the work at every level: this line took 141 readings unbounded."""
    readings: list[int] = []
    real = Classifier._classify

    def counted(self: Classifier, *args: Any, **kwargs: Any) -> Any:
        readings.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Classifier, "_classify", counted)
    line = "npm --a exec --b npm --c exec --d " * 4 + "true"
    assert CLASSIFIER.classify(shlex.split(line), None) is None
    assert len(readings) < 30


def test_every_launcher_and_package_manager_has_a_case() -> None:
    lines = [p.values[0].line for p in [*ALL_CASES, *SCRIPT_CASES]]
    argvs = [_case_programs(line) for line in lines]
    rules: list[tuple[str, list[str], list[str]]] = [
        (r.name, r.programs, r.subcommands) for r in CATALOG.launcher
    ]
    rules += [(r.name, r.programs, []) for r in CATALOG.scripts]
    for name, names, subcommand_list in rules:
        programs = {program_name(p) for p in names}
        subcommands = set(subcommand_list)
        assert any(
            argv
            and program_name(argv[0]) in programs
            and (not subcommands or subcommands & set(argv))
            for argv in argvs
        ), f"no test case goes through {name}"


def _example_words(key: str) -> list[str]:
    """A command key as someone would type it: patterns get a concrete word."""
    return [
        ("x" if w == "*" else w[:-1] + "primary") if w.endswith("*") else w for w in key.split()
    ]


COMMAND_KEYS = [
    pytest.param(tool, key, kind, id=f"{tool.name}: {key}")
    for tool in CATALOG.tool
    for key, kind in tool.commands.items()
]


@pytest.mark.parametrize(("tool", "key", "kind"), COMMAND_KEYS)
def test_every_command_key_is_reachable(tool: ToolRule, key: str, kind: Kind) -> None:
    """Each key, typed as written, gives its own kind: none is shadowed by another key,
    an abbreviation, a help word or a value option."""
    launch = tool.launch[0]
    placeholders = ["target"] * len(tool.positional_targets)
    found = CLASSIFIER.classify([launch, *placeholders, *_example_words(key)])
    assert found is not None and found.tool == tool.name, found
    assert found.kind == kind, found


@pytest.mark.parametrize(
    "tool", [pytest.param(t, id=t.name) for t in CATALOG.tool if t.commands or t.default]
)
def test_every_launch_name_reaches_its_tool(tool: ToolRule) -> None:
    for launch in tool.launch:
        words = _example_words(next(iter(tool.commands), ""))
        placeholders = ["target"] * len(tool.positional_targets)
        found = CLASSIFIER.classify([launch, *placeholders, *words])
        assert found is not None and found.tool == tool.name, (launch, found)


def test_kinds_are_ordered_by_danger() -> None:
    assert [k.severity for k in (RO, QUERY, TEST, SEED, MIGRATE, DESTRUCTIVE)] == list(range(6))
    assert not RO.needs_backup and QUERY.needs_backup


def test_every_framework_is_one_discovery_knows() -> None:
    from dbguard.discovery import FRAMEWORKS

    # python and None (a test runner): every framework the project uses
    known: set[str | None] = {*FRAMEWORKS, "python", None}
    assert {t.framework for t in CATALOG.tool} <= known
    assert set(FRAMEWORKS) <= set(get_args(Framework))


@pytest.mark.parametrize(
    ("word", "name"),
    [
        ("/usr/bin/php8.3", "php"),
        ("python3.11", "python"),
        ("./artisan", "artisan"),
        ("pytest-3", "pytest"),
        ("manage.py", "manage.py"),
        ("vendor/bin/", "bin"),
        ("sqlite3", "sqlite"),
    ],
)
def test_program_name(word: str, name: str) -> None:
    assert program_name(word) == name


def test_mysqladmin_dropping_several_databases_backs_up_each() -> None:
    found = classify("mysqladmin -h db -u root -f drop shop flush-logs drop shop_test")
    assert found is not None and found.kind is DESTRUCTIVE
    assert [(op.kind, dict(op.hints)) for op in found.each()] == [
        (DESTRUCTIVE, {"host": "db", "user": "root", "database": "shop"}),
        (DESTRUCTIVE, {"host": "db", "user": "root", "database": "shop_test"}),
    ]


def test_programs_lists_what_to_shim() -> None:
    programs = CATALOG.programs()
    for name in ("php", "python", "npm", "npx", "psql", "sqlite3", "rake", "bundle", "flyway",
                 "mysqladmin", "mariadb-admin"):  # fmt: skip
        assert name in programs


# ---- user catalogs -----------------------------------------------------------------------------


def _catalog(text: dict[str, Any]) -> Catalog:
    return Catalog.model_validate(text)


def test_a_user_entry_replaces_the_builtin_of_the_same_name() -> None:
    mine = _catalog(
        {
            "tool": [
                {"name": "artisan", "launch": ["artisan"], "commands": {"migrate:fresh": "seed"}}
            ]
        }
    )
    classifier = Classifier(CATALOG.merged(mine))
    found = classifier.classify(["php", "artisan", "migrate:fresh"])
    assert found is not None and found.kind is SEED
    assert classifier.classify(["php", "artisan", "db:wipe"]) is None


def test_a_project_entry_only_adds() -> None:
    theirs = _catalog(
        {
            "tool": [
                {
                    "name": "artisan",
                    "launch": ["artisan"],
                    "commands": {"migrate:fresh": "seed", "app:purge": "destructive"},
                }
            ]
        }
    )
    classifier = Classifier(CATALOG.merged(theirs, replace=False))
    fresh = classifier.classify(["php", "artisan", "migrate:fresh"])
    purge = classifier.classify(["php", "artisan", "app:purge"])
    assert fresh is not None and fresh.kind is DESTRUCTIVE  # not loosened
    assert purge is not None and purge.kind is DESTRUCTIVE  # added


def test_a_new_tool_is_data() -> None:
    extra = _catalog(
        {
            "tool": [
                {
                    "name": "goose",
                    "framework": "client",
                    "launch": ["goose"],
                    "commands": {"up": "migrate", "reset": "destructive", "status": "read-only"},
                    "targets": {"-dir": "config"},
                }
            ]
        }
    )
    classifier = Classifier(CATALOG.merged(extra))
    found = classifier.classify(["goose", "-dir", "db", "reset"])
    assert found is not None
    assert (found.tool, found.kind, dict(found.hints)) == ("goose", DESTRUCTIVE, {"config": "db"})
    via_npx = classifier.classify(["npx", "goose", "status"])
    assert via_npx is not None and via_npx.kind is RO


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "launch": ["php artisan"]}, "not a program name"),
        ({"name": "x", "launch": ["x"], "commands": {"--force": "destructive"}}, "no command"),
        ({"name": "x", "launch": ["x"], "commands": {"a --f b": "seed"}}, "after the command"),
        ({"name": "x", "launch": ["x"], "commands": {"a": "dangerous"}}, "commands.a"),
        ({"name": "x", "launch": ["x"], "framework": "cobol"}, "framework"),
        ({"name": "x", "launch": ["x"], "typo": 1}, "typo"),
        ({"name": "x"}, "needs `launch`"),
    ],
)
def test_bad_entries_are_errors_that_name_the_problem(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _catalog({"tool": [entry]})


@pytest.mark.parametrize(
    ("section", "entry", "message"),
    [
        ("scripts", {"name": "p", "programs": ["p"], "manifest": "package.json",
                     "root_options": ["-w"]}, "give `root_file`"),
        ("launcher", {"name": "p", "programs": ["p"], "manifest": "package.json",
                      "root_options": ["-w"], "root_file": "a/b.yaml"}, "is a file name"),
        ("launcher", {"name": "p", "programs": ["p"], "root_options": ["-w"],
                      "root_file": "w.yaml"}, "give `manifest`"),
    ],
)  # fmt: skip
def test_workspace_root_options_need_their_file(
    section: str, entry: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _catalog({section: [entry]})


def test_pnpm_workspace_root_moves_to_the_top_the_look_up_finds() -> None:
    # The top folder comes from the look-up, from where pnpm runs (after -C).
    asked: list[tuple[str, str]] = []

    def roots(file: str, folder: str) -> str | None:
        asked.append((file, folder))
        return "/srv/shop"

    lookup = Scripts({"/srv/shop/package.json": {"reset": "prisma migrate reset -f"}})
    found = CLASSIFIER.classify(shlex.split("pnpm -C web -w reset"), lookup, members, roots)
    assert found is not None and found.kind is DESTRUCTIVE
    assert found.hints.get("cwd") == "/srv/shop"
    assert asked == [("pnpm-workspace.yaml", "web")]
    # npm's -w selects a member: no look-up.
    asked.clear()
    CLASSIFIER.classify(shlex.split("npm -w web run reset"), lookup, members, roots)
    assert asked == []


def test_extends_a_missing_tool_is_an_error() -> None:
    bad = _catalog({"tool": [{"name": "x", "extends": "nope", "launch": ["x"]}]})
    with pytest.raises(ValueError, match="nope"):
        Classifier(bad)


def _catalog_header() -> str:
    """The comment block at the top of catalog.toml, where every key is documented."""
    text = resources.files("dbguard.rules").joinpath("catalog.toml").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("model", [Catalog, ToolRule, LauncherRule, ScriptsRule])
def test_every_catalog_key_is_documented_in_the_header(model: type[BaseModel]) -> None:
    header = _catalog_header()
    for key in model.model_fields:
        assert re.search(rf"(^|\W){re.escape(key)}\W", header), f"{key} is not documented"


def test_the_builtin_catalog_loads_and_compiles() -> None:
    assert len(CATALOG.tool) >= 20
    assert Classifier(CATALOG).catalog is CATALOG


def test_runs_in_several_members_mark_each_operation_as_a_member_s() -> None:
    found = CLASSIFIER.classify(shlex.split("pnpm -r exec prisma migrate reset"), MONOREPO, members)
    assert found is not None and {o.member for o in found.each()} == {True}
    alone = CLASSIFIER.classify(shlex.split("pnpm exec prisma migrate reset"), MONOREPO, members)
    assert alone is not None and not alone.member

"""Does anything in a project point at a database? Asked only when a test run found none.

Test runners are not database tools: most pytest, jest or rspec runs are a library's or a
front end's, with no database to lose, and refusing them would make the guard unusable.
So a test run whose project shows no sign of a database runs without a backup, and one
whose project does show a sign that discovery could not follow is refused, naming the
sign, until the database is named in `.dbguard.toml`.

Signs, read from the project root without running anything (framework files and
`.dbguard.toml` are checked by the caller):
- a `.env` file (or one the command loads, or its own VAR=value) setting a database
  variable: DATABASE_URL, *_DATABASE_URL, DB_*, DATABASE_*, PG*, POSTGRES_*, MYSQL_*,
  MARIADB_*, SQLITE_*;
- a database driver, ORM or migration tool among the dependencies in pyproject.toml,
  requirements*.txt, Pipfile, setup.cfg, package.json, composer.json or Gemfile.
The invoking shell's own variables are not signs: a PGHOST exported for psql says
nothing about a project whose dependencies hold no driver to use it.

Pure: files come through the context's reader.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterable, Iterator
from typing import Any

from dbguard.discovery.envfile import parse_env_entries
from dbguard.discovery.formats import parse_json, parse_toml
from dbguard.discovery.model import Context

__all__ = ["database_signs"]

ENV_FILES = (".env", ".env.local", ".env.test", ".env.testing", ".env.development", ".env.example")
_DATABASE_VARIABLE = re.compile(
    r"(?:[A-Z0-9_]*_)?DATABASE_URL|DB_[A-Z0-9_]+|DATABASE_[A-Z0-9_]+"
    r"|PG(?:HOST|HOSTADDR|PORT|DATABASE|USER|PASSWORD|SERVICE)"
    r"|(?:POSTGRES|POSTGRESQL|MYSQL|MARIADB|SQLITE)_[A-Z0-9_]+",
    re.IGNORECASE,
)

# Package names as each registry normalises them (Python: lower case, runs of -_. as -).
PYTHON_PACKAGES = frozenset(
    {
        "aiomysql", "aiopg", "aiosqlite", "alembic", "apsw", "asyncmy", "asyncpg",
        "databases", "dataset", "django", "flask-migrate", "flask-sqlalchemy", "mariadb",
        "mysql-connector", "mysql-connector-python", "mysqlclient", "ormar", "peewee",
        "pg8000", "piccolo", "pony", "psycopg", "psycopg-binary", "psycopg-c",
        "psycopg-pool", "psycopg2", "psycopg2-binary", "pymysql", "pytest-mysql",
        "pytest-postgresql", "records", "sqlalchemy", "sqlite-utils", "sqlmodel",
        "tortoise-orm", "yoyo-migrations",
    }
)  # fmt: skip
NODE_PACKAGES = frozenset(
    {
        "@libsql/client", "@mikro-orm/core", "@neondatabase/serverless", "@prisma/client",
        "@supabase/supabase-js", "@vercel/postgres", "better-sqlite3", "bookshelf",
        "db-migrate", "drizzle-orm", "knex", "kysely", "mariadb", "mysql", "mysql2",
        "node-pg-migrate", "objection", "pg", "pg-promise", "postgres", "postgrator",
        "prisma", "sequelize", "slonik", "sqlite", "sqlite3", "typeorm",
    }
)  # fmt: skip
COMPOSER_PACKAGES = frozenset(
    {
        "cakephp/cakephp", "cakephp/database", "catfan/medoo", "doctrine/dbal",
        "doctrine/doctrine-bundle", "doctrine/orm", "ext-mysqli", "ext-pdo",
        "ext-pdo_mysql", "ext-pdo_pgsql", "ext-pdo_sqlite", "ext-pgsql", "ext-sqlite3",
        "illuminate/database", "laravel/framework", "orchestra/testbench",
        "propel/propel", "robmorgan/phinx", "yiisoft/db", "yiisoft/yii2",
    }
)  # fmt: skip
RUBY_GEMS = frozenset(
    {
        "activerecord", "mysql2", "pg", "rails", "ridgepole", "rom-sql", "sequel",
        "sqlite3", "standalone_migrations", "trilogy",
    }
)  # fmt: skip

_REQUIREMENTS = (
    "requirements.txt", "requirements-dev.txt", "requirements-test.txt",
    "requirements_dev.txt", "requirements_test.txt", "dev-requirements.txt",
    "test-requirements.txt", "requirements/base.txt", "requirements/dev.txt",
    "requirements/test.txt", "requirements/local.txt",
)  # fmt: skip
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_GEM = re.compile(r"""^\s*gem\s*\(?\s*["']([^"']+)["']""", re.MULTILINE)


def database_signs(ctx: Context) -> list[str]:
    """What in the project points at a database, as `"package.json depends on pg"`."""
    return [*_environment_signs(ctx), *_dependency_signs(ctx)]


def _environment_signs(ctx: Context) -> Iterator[str]:
    assigned = [name for name in ctx.operation.assignments if _DATABASE_VARIABLE.fullmatch(name)]
    if assigned:
        yield f"the command sets {', '.join(assigned[:3])}"
    launcher_files = [f for f in ctx.hints.get("env_file", "").splitlines() if f.strip()]
    for file in dict.fromkeys([*ENV_FILES, *launcher_files]):
        text = ctx.read(file)
        if text is None:
            continue
        names = [n for n in parse_env_entries(text, file, {}) if _DATABASE_VARIABLE.fullmatch(n)]
        if names:
            yield f"{file} sets {', '.join(names[:3])}"


def _dependency_signs(ctx: Context) -> Iterator[str]:
    manifests: list[tuple[str, Iterable[str], frozenset[str]]] = [
        ("pyproject.toml", _pyproject(ctx), PYTHON_PACKAGES),
        ("Pipfile", _pipfile(ctx), PYTHON_PACKAGES),
        ("setup.cfg", _setup_cfg(ctx), PYTHON_PACKAGES),
        *((name, _requirements(ctx, name), PYTHON_PACKAGES) for name in _REQUIREMENTS),
        ("package.json", _json_keys(ctx, "package.json", _NODE_SECTIONS), NODE_PACKAGES),
        ("composer.json", _json_keys(ctx, "composer.json", _COMPOSER_SECTIONS), COMPOSER_PACKAGES),
        ("Gemfile", _GEM.findall(ctx.read("Gemfile") or ""), RUBY_GEMS),
    ]  # fmt: skip
    for file, names, known in manifests:
        hits = sorted({name.lower() for name in names} & known)
        if hits:
            yield f"{file} depends on {', '.join(hits[:3])}"


_NODE_SECTIONS = ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies")
_COMPOSER_SECTIONS = ("require", "require-dev")


def _python_name(name: str) -> str:
    """PEP 503's normal form: `Flask_SQLAlchemy` is `flask-sqlalchemy`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(lines: Iterable[object]) -> Iterator[str]:
    """The distribution name at the start of each PEP 508 requirement, normalised."""
    for line in lines:
        if isinstance(line, str) and (match := _REQUIREMENT_NAME.match(line)):
            yield _python_name(match.group(1))


def _pyproject(ctx: Context) -> list[str]:
    text = ctx.read("pyproject.toml")
    if text is None:
        return []
    data = parse_toml(text, "pyproject.toml")
    project = _table(data, "project")
    requirements: list[object] = [*_list(project, "dependencies")]
    for group in _table(project, "optional-dependencies").values():
        requirements.extend(group if isinstance(group, list) else [])
    for group in _table(data, "dependency-groups").values():
        requirements.extend(group if isinstance(group, list) else [])
    tool = _table(data, "tool")
    for group in _table(_table(tool, "pdm"), "dev-dependencies").values():
        requirements.extend(group if isinstance(group, list) else [])
    requirements.extend(_list(_table(tool, "uv"), "dev-dependencies"))
    poetry = _table(tool, "poetry")
    keys = [*_table(poetry, "dependencies"), *_table(poetry, "dev-dependencies")]
    for group in _table(poetry, "group").values():
        keys.extend(_table(group, "dependencies"))
    return [*_requirement_names(requirements), *map(_python_name, keys)]


def _pipfile(ctx: Context) -> list[str]:
    text = ctx.read("Pipfile")
    if text is None:
        return []
    data = parse_toml(text, "Pipfile")
    return [
        _python_name(name)
        for section in ("packages", "dev-packages")
        for name in _table(data, section)
    ]


def _json_keys(ctx: Context, file: str, sections: tuple[str, ...]) -> list[str]:
    text = ctx.read(file)
    if text is None:
        return []
    data = parse_json(text, file)
    if not isinstance(data, dict):
        return []
    return [name for section in sections for name in _table(data, section)]


def _setup_cfg(ctx: Context) -> list[str]:
    text = ctx.read("setup.cfg")
    if text is None:
        return []
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text, "setup.cfg")
    except configparser.Error:
        return []  # setuptools would fail on it too; pyproject/requirements may still tell
    values = []
    if parser.has_option("options", "install_requires"):
        values.append(parser.get("options", "install_requires"))
    if parser.has_section("options.extras_require"):
        values.extend(value for _, value in parser.items("options.extras_require"))
    return list(_requirement_names(line for value in values for line in value.splitlines()))


def _requirements(ctx: Context, file: str) -> list[str]:
    text = ctx.read(file)
    if text is None:
        return []
    return list(_requirement_names(line.split("#", 1)[0] for line in text.splitlines()))


def _table(data: object, key: str) -> dict[str, Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _list(data: dict[str, Any], key: str) -> list[object]:
    value = data.get(key)
    return value if isinstance(value, list) else []

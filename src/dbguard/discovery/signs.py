"""Does anything in a project point at a database? Asked only when a test run found none.

Test runners are not database tools: most pytest, jest or rspec runs are a library's or a
front end's, with no database to lose, and refusing them would make the guard unusable.
So a test run whose project shows no sign of a database runs without a backup, and one
whose project does show a sign that discovery could not follow is refused, naming the
sign, until the database is named in `.dbguard.toml`.

Signs, read from the project root without running anything (framework files and
`.dbguard.toml` are checked by the caller):
- a database variable (a name with a word such as DB, DATABASE, PG, POSTGRES, MYSQL,
  SQLITE, or one of libpq's PG* names) set in a `.env` file, a dotenv file the command
  loads (a launcher's, pytest-env's or pytest-dotenv's env_files), the command's own
  VAR=value, phpunit.xml's <env>/<server>, or pytest-env's `env` setting; or
  pytest-django's DJANGO_SETTINGS_MODULE;
- a database driver, ORM or migration tool among the dependencies: pyproject.toml,
  requirements files (and the files they include), Pipfile, setup.cfg, setup.py,
  package.json, composer.json, Gemfile, *.gemspec;
- more sub-projects than dbguard looks into (sub-projects themselves, whose tests a run
  from the top collects, are discovered on their own: see sub_projects);
- an SQLite file (*.sqlite, *.sqlite3, *.db) in the root or a usual data folder.
A file that cannot be parsed is a sign too (dbguard cannot tell what it says).
The invoking shell's own variables are not signs: a PGHOST exported for psql says
nothing about a project whose dependencies hold no driver to use it.

Pure: files come through the context's reader and folder lister.
"""

from __future__ import annotations

import configparser
import fnmatch
import posixpath
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from dbguard.discovery.envfile import DiscoveryError, parse_env_entries
from dbguard.discovery.formats import parse_json, parse_toml, parse_xml, parse_yaml
from dbguard.discovery.model import Context, FolderLister
from dbguard.rules import FOLLOWED_HINT, SCOPE_HINT

__all__ = ["SQLITE_SIGN", "database_signs", "flask_sqlalchemy_instances", "sub_projects"]

ENV_FILES = (".env", ".env.local", ".env.test", ".env.testing", ".env.development", ".env.example")
# A variable is about a database when one of its _-separated words is one of these...
_DATABASE_WORDS = frozenset(
    {"DB", "DATABASE", "DATABASES", "POSTGRES", "POSTGRESQL", "PG", "MYSQL", "MARIADB",
     "SQLITE", "SQLALCHEMY"}
)  # fmt: skip
# ...unless it is about a store dbguard does not back up (REDIS_DB is an index).
_OTHER_STORES = frozenset({"REDIS", "MONGO", "MONGODB", "ELASTIC", "ELASTICSEARCH", "INFLUX"})
_LIBPQ = frozenset(
    {"PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE"}
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
# Not orchestra/testbench: a Laravel package's tests default to in-memory SQLite, and
# phpunit.xml's DB_* variables (a sign) say when they do not.
COMPOSER_PACKAGES = frozenset(
    {
        "cakephp/cakephp", "cakephp/database", "catfan/medoo", "doctrine/dbal",
        "doctrine/doctrine-bundle", "doctrine/orm", "drupal/core", "drupal/core-recommended",
        "ext-mysqli", "ext-pdo", "ext-pdo_mysql", "ext-pdo_pgsql", "ext-pdo_sqlite",
        "ext-pgsql", "ext-sqlite3", "illuminate/database", "johnpbloch/wordpress",
        "laravel/framework", "propel/propel", "robmorgan/phinx", "roots/wordpress",
        "wp-phpunit/wp-phpunit", "yiisoft/db", "yiisoft/yii2",
    }
)  # fmt: skip
RUBY_GEMS = frozenset(
    {
        "activerecord", "mysql2", "pg", "rails", "ridgepole", "rom-sql", "sequel",
        "sqlite3", "standalone_migrations", "trilogy",
    }
)  # fmt: skip

_REQUIREMENTS = (
    "requirements.txt", "requirements.in", "requirements-dev.txt", "requirements-test.txt",
    "requirements_dev.txt", "requirements_test.txt", "dev-requirements.txt",
    "test-requirements.txt",
)  # fmt: skip
_REQUIREMENTS_FOLDER = "requirements"  # requirements/*.txt and *.in
_MAX_INCLUDES = 16  # requirement files followed through -r / -c
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_INCLUDE = re.compile(r"\s*(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)")
# A quoted requirement in setup.py: "psycopg2>=2.9", 'SQLAlchemy[asyncio]'.
_QUOTED_REQUIREMENT = re.compile(
    r"""["']\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]"']*\])?\s*(?:[<>=!~;@][^"']*)?["']"""
)
_GEM = re.compile(r"""^\s*gem\s*\(?\s*["']([^"']+)["']""", re.MULTILINE)
_GEMSPEC_DEPENDENCY = re.compile(
    r"""add_(?:runtime_|development_)?dependency\s*\(?\s*["']([^"']+)["']"""
)
_SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
SQLITE_SIGN = "an SQLite file"
_DATA_FOLDERS = ("", "db", "data", "database", "instance", "var", "storage")
_MAX_MEMBERS = 64  # workspace members and sub-projects looked into
_MAX_CHILDREN = 256  # folders of the root checked for being projects themselves
# Files that make a folder a project of its own (as project.ROOT_MARKERS, files only).
_PROJECT_FILES = (
    "pyproject.toml", "setup.py", "setup.cfg", "requirements.txt", "package.json",
    "composer.json", "Gemfile", "manage.py", "artisan", ".env", "project.json",
)  # fmt: skip
# Folders that hold other people's projects or build output, never this project's own.
_SKIP = frozenset({"node_modules", "vendor", "venv", "env", "site-packages", "dist", "build"})

_NODE_SECTIONS = ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies")
_COMPOSER_SECTIONS = ("require", "require-dev")


def database_signs(ctx: Context) -> list[str]:
    """What in the project's own files points at a database, as `"package.json depends
    on pg"` (its sub-projects are discovered on their own: see sub_projects)."""
    signs = _Signs(ctx)
    signs.variables()
    signs.sqlite_files()
    signs.dependencies("")
    return list(dict.fromkeys(signs.found))


# Flask-SQLAlchemy: an import of it in the app's code, or a dependency on it.
_FLASK_SQLALCHEMY = "flask-sqlalchemy"
_IMPORTS_FLASK_SQLALCHEMY = re.compile(
    r"^[ \t]*(?:from[ \t]+flask_sqlalchemy\b"
    r"|import[ \t]+(?:[\w.]+[ \t]*,[ \t]*)*flask_sqlalchemy\b)",
    re.MULTILINE,
)
_SOURCE_FOLDERS = ("", "src")  # where a project keeps its top-level modules and packages
_MAX_SOURCES = 64  # Python files read looking for the import


def flask_sqlalchemy_instances(ctx: Context) -> tuple[list[str], str] | None:
    """Where Flask-SQLAlchemy 3 opens a relative SQLite path, when the project uses it:
    the instance folders of its app (Flask's `instance` next to the top-level package or
    module the app is in: `instance`, or `src/instance` for a src layout), and why dbguard
    thinks so (`app.py imports flask_sqlalchemy`, `requirements.txt depends on
    flask-sqlalchemy`). None when nothing says the project uses it."""
    bases: list[str] = []
    why = ""
    read = 0
    for base in _SOURCE_FOLDERS:
        for name in sorted(ctx.listdir(base) or []):
            path = posixpath.join(base, name)
            if name.endswith(".py"):
                files = [path]
            elif ctx.read(posixpath.join(path, "__init__.py")) is not None:
                files = sorted(
                    posixpath.join(path, n) for n in ctx.listdir(path) or [] if n.endswith(".py")
                )
            else:
                continue
            for file in files:
                if read == _MAX_SOURCES:
                    break
                read += 1
                if _IMPORTS_FLASK_SQLALCHEMY.search(ctx.read(file) or ""):
                    bases.append(base)
                    why = why or f"{file} imports flask_sqlalchemy"
                    break
    if not why:
        signs = _Signs(ctx)
        signs.python_dependencies("", frozenset({_FLASK_SQLALCHEMY}))
        why = next((sign for sign in signs.found if " depends on " in sign), "")
        if not why:
            return None
    folders = [posixpath.join(base, "instance") for base in dict.fromkeys(bases or [""])]
    return folders, why


def sub_projects(ctx: Context) -> tuple[list[str], list[str]]:
    """The project's sub-projects, whose tests a runner started at its top collects:
    workspace members (npm/yarn workspaces, pnpm-workspace.yaml, uv's workspace), child
    folders that are projects themselves, and the projects of pytest's testpaths; less
    those the daemon follows already, and only those the run's path arguments lead
    into when it has some (hints). Also the signs of what it could not follow (too
    many, a manifest it could not read)."""
    signs = _Signs(ctx)
    return signs.sub_projects(), signs.found


_T = TypeVar("_T")


def is_database_variable(name: str) -> bool:
    words = set(name.upper().split("_"))
    return name.upper() in _LIBPQ or bool(words & _DATABASE_WORDS and not words & _OTHER_STORES)


class _Signs:
    """The signs found so far, and the project they are read from."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.found: list[str] = []

    def parsed(self, file: str, parse: Callable[[str, str], _T]) -> _T | None:
        """parse(text, file), or None when the file is absent; a file that cannot be
        read or parsed is itself a sign (dbguard cannot tell what it says)."""
        try:
            text = self.ctx.read(file)
            return None if text is None else parse(text, file)
        except DiscoveryError as err:
            self.found.append(f"{file} could not be read ({err.problem})")
            return None

    def named(self, what: str, names: Iterable[str]) -> None:
        hits = list(dict.fromkeys(n for n in names if is_database_variable(n)))
        if hits:
            self.found.append(f"{what} {', '.join(hits[:3])}")

    def variables(self) -> None:
        ctx = self.ctx
        self.named("the command sets", ctx.operation.assignments)
        launcher_files = [f for f in ctx.hints.get("env_file", "").splitlines() if f.strip()]
        try:
            envfile = ctx.hints.get("envfile", "")
            pytest_files = [f.path for f in pytest_env_files(ctx.read, envfile=envfile)]
        except DiscoveryError:  # reported by _pytest_settings
            pytest_files = []
        self.env_files("", [*launcher_files, *pytest_files])
        for file in ("phpunit.xml", "phpunit.xml.dist"):
            self.named(f"{file} sets", self.parsed(file, _phpunit_variables) or [])
        pytest = self._pytest_settings()
        self.named("pytest's env sets", (s for s in pytest if s != "DJANGO_SETTINGS_MODULE"))
        if "DJANGO_SETTINGS_MODULE" in pytest:
            self.found.append("pytest runs Django (DJANGO_SETTINGS_MODULE)")

    def env_files(self, folder: str, more: Iterable[str] = ()) -> None:
        for file in dict.fromkeys([*(posixpath.join(folder, f) for f in ENV_FILES), *more]):
            self.named(f"{file} sets", self.parsed(file, partial(_env_names, env={})) or [])

    def _pytest_settings(self) -> list[str]:
        """The variables pytest-env sets, and DJANGO_SETTINGS_MODULE when pytest-django's
        setting is there: from pyproject.toml, pytest.ini, tox.ini or setup.cfg."""
        try:
            return [setting.name for setting in pytest_environment(self.ctx.read)]
        except DiscoveryError as err:
            self.found.append(f"pytest's settings could not be read ({err.problem})")
            return []

    def sqlite_files(self) -> None:
        for folder in _DATA_FOLDERS:
            names = self.ctx.listdir(folder) or []
            files = sorted(n for n in names if n.lower().endswith(_SQLITE_SUFFIXES))
            if files:
                self.found.append(f"{SQLITE_SIGN}: {posixpath.join(folder, files[0])}")

    def sub_projects(self) -> list[str]:
        """See sub_projects(); workspace patterns may be `dir/*` or a plain `dir`."""
        package = self.parsed("package.json", parse_json)
        pnpm = self.parsed("pnpm-workspace.yaml", parse_yaml)
        uv = _table(_table(self.parsed("pyproject.toml", parse_toml), "tool"), "uv")
        patterns = [
            *npm_workspaces(package),
            *_strings(_value(pnpm, "packages")),
            *_strings(_table(uv, "workspace").get("members")),
        ]
        folders = workspace_folders(patterns, self.ctx.listdir)
        # Sub-projects a runner started here collects anyway: child folders that are
        # projects themselves, and the projects of pytest's testpaths.
        names = sorted(n for n in self._names("") if not n.startswith(".") and n not in _SKIP)
        children = [name for name in names if self.ctx.listdir(name) is not None]  # folders
        folders += [name for name in children if self._is_project(name)]
        folders += self._testpath_projects()
        followed = set(self.ctx.hints.get(FOLLOWED_HINT, "").splitlines())
        scope = [p for p in self.ctx.hints.get(SCOPE_HINT, "").splitlines() if p]
        members = [
            folder
            for folder in dict.fromkeys(posixpath.normpath(f) for f in folders)
            if folder not in followed
            and not folder.startswith(("/", "../"))  # inside the project only
            and folder != ".."
            and (not scope or any(_nested(folder, s) or _nested(s, folder) for s in scope))
        ]
        if len(members) > _MAX_MEMBERS or len(children) > _MAX_CHILDREN:
            self.found.append(
                f"more sub-projects or folders than dbguard looks into ({_MAX_MEMBERS} / "
                f"{_MAX_CHILDREN})"
            )
        return members[:_MAX_MEMBERS]

    def _is_project(self, folder: str) -> bool:
        return any(self.ctx.read(posixpath.join(folder, m)) is not None for m in _PROJECT_FILES)

    def _testpath_projects(self) -> list[str]:
        """The nearest project at or above each of pytest's testpaths, below the root."""
        options = _table(
            _table(_table(self.parsed("pyproject.toml", parse_toml), "tool"), "pytest"),
            "ini_options",
        )
        paths = _strings(options.get("testpaths"))
        parser = self.parsed("pytest.ini", _ini)
        if parser is not None:
            paths += parser.get("pytest", "testpaths", fallback="").split()
        projects = []
        for path in paths:
            parts = posixpath.normpath(path).split("/")
            for depth in range(len(parts), 0, -1):
                folder = "/".join(parts[:depth])
                if folder not in ("", ".", "..") and self._is_project(folder):
                    projects.append(folder)
                    break
        return projects

    def python_dependencies(self, folder: str, known: frozenset[str]) -> None:
        """The Python dependency files of `folder` that name one of `known`."""
        for name, reader in _PYTHON_READERS:
            file = posixpath.join(folder, name)
            self.depends(file, self.parsed(file, reader) or [], known)
        self.requirements(folder, known)

    def dependencies(self, folder: str) -> None:
        readers: list[tuple[str, Callable[[str, str], Iterable[str]], frozenset[str]]] = [
            *((name, reader, PYTHON_PACKAGES) for name, reader in _PYTHON_READERS),
            ("package.json", partial(_json_keys, sections=_NODE_SECTIONS), NODE_PACKAGES),
            ("composer.json", partial(_json_keys, sections=_COMPOSER_SECTIONS), COMPOSER_PACKAGES),
            ("Gemfile", _gems, RUBY_GEMS),
            *((n, _gemspec, RUBY_GEMS) for n in self._names(folder) if n.endswith(".gemspec")),
        ]
        for name, reader, known in readers:
            file = posixpath.join(folder, name)
            self.depends(file, self.parsed(file, reader) or [], known)
        self.requirements(folder)

    def requirements(self, folder: str, known: frozenset[str] = PYTHON_PACKAGES) -> None:
        """The usual requirement files, requirements/*.txt|in, and the files they
        include with -r / -c (a bounded number)."""
        nested = posixpath.join(folder, _REQUIREMENTS_FOLDER)
        pending = [posixpath.join(folder, name) for name in _REQUIREMENTS] + [
            posixpath.join(nested, name)
            for name in sorted(self._names(nested))
            if name.endswith((".txt", ".in"))
        ]
        queue = deque(dict.fromkeys(posixpath.normpath(f) for f in pending))
        queued = set(queue)
        limit = len(queue) + _MAX_INCLUDES
        read = 0
        while queue:
            if read == limit:
                self.found.append(f"requirement files include more than {_MAX_INCLUDES} others")
                return
            file = queue.popleft()
            read += 1
            names: list[str] = []
            for line in (self.parsed(file, _text) or "").splitlines():
                line = line.split(" #", 1)[0].strip()
                if include := _INCLUDE.match(line):
                    target = posixpath.normpath(
                        posixpath.join(posixpath.dirname(file), include.group(1))
                    )
                    if target not in queued:
                        queued.add(target)
                        queue.append(target)
                else:
                    names.extend(_requirement_names([line]))
            self.depends(file, names, known)

    def depends(self, file: str, names: Iterable[str], known: frozenset[str]) -> None:
        hits = sorted({name.lower() for name in names} & known)
        if hits:
            self.found.append(f"{file} depends on {', '.join(hits[:3])}")

    def _names(self, folder: str) -> list[str]:
        return self.ctx.listdir(folder) or []


def npm_workspaces(package: object) -> list[str]:
    """The `workspaces` patterns of a parsed package.json (npm's list, yarn 1's
    `{packages: [...]}`)."""
    return [
        *_strings(_value(package, "workspaces")),
        *_strings(_table(package, "workspaces").get("packages")),
    ]


def workspace_folders(patterns: Iterable[str], listdir: FolderLister) -> list[str]:
    """The folders workspace `patterns` name, as npm, pnpm and lerna read them: a glob
    per path segment (`packages/*`, `services/*-api`, `apps/**`, a plain `tools/cli`),
    `!pattern` excluding. `**` does not descend into node_modules or dot folders, and
    stops at _MAX_GLOB_DEPTH levels."""
    included: list[str] = []
    excluded: list[str] = []
    for raw in patterns:
        negated = raw.strip().startswith("!")
        for pattern in _braces(raw.strip().removeprefix("!").strip()):
            pattern = pattern.removeprefix("./").rstrip("/")
            if pattern:
                matched = _glob(pattern.split("/"), "", listdir, _MAX_GLOB_DEPTH)
                (excluded if negated else included).extend(matched)
    dropped = set(excluded)
    return [folder for folder in dict.fromkeys(included) if folder not in dropped]


_MAX_GLOB_DEPTH = 6
_BRACE = re.compile(r"\{([^{}]*)\}")


def _braces(pattern: str) -> list[str]:
    """`{apps,services}/*` -> `apps/*`, `services/*` (innermost first, so nesting works)."""
    match = _BRACE.search(pattern)
    if match is None or "," not in match.group(1):
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [each for choice in match.group(1).split(",") for each in _braces(head + choice + tail)]


_GLOB = re.compile(r"[*?\[]")


def _glob(segments: list[str], base: str, listdir: FolderLister, depth: int) -> list[str]:
    if not segments:
        return [base] if base else []
    first, rest = segments[0], segments[1:]
    if not _GLOB.search(first):
        return _glob(rest, posixpath.join(base, first), listdir, depth)
    found = [] if first != "**" else _glob(rest, base, listdir, depth)  # ** is also none
    names = sorted(listdir(base) or [])
    for name in names:
        child = posixpath.join(base, name)
        descend = depth > 0 and not name.startswith(".") and name != "node_modules"
        if first == "**":
            if descend and listdir(child) is not None:
                found += _glob(segments, child, listdir, depth - 1)
        elif fnmatch.fnmatchcase(name, first) and listdir(child) is not None:
            found += _glob(rest, child, listdir, depth)
    return found


def _nested(folder: str, parent: str) -> bool:
    return parent in (".", "") or folder == parent or folder.startswith(parent + "/")


def _text(text: str, file: str) -> str:
    return text


def _env_names(text: str, file: str, env: dict[str, str]) -> list[str]:
    return list(parse_env_entries(text, file, env))


def _phpunit_variables(text: str, file: str) -> list[str]:
    root = parse_xml(text, file)
    return [e.get("name", "") for e in root.iter() if e.tag in ("env", "server", "const")]


@dataclass(frozen=True)
class PytestSetting:
    """A variable pytest sets as it starts (pytest-env's `env`, pytest-django's
    DJANGO_SETTINGS_MODULE); `override`: over the environment's own value."""

    name: str
    value: str
    override: bool
    origin: str


def pytest_environment(read: Callable[[str], str | None]) -> list[PytestSetting]:
    """pytest-env's variables and pytest-django's settings module, from the first of
    pytest.ini, pyproject.toml, tox.ini and setup.cfg that configures pytest (as pytest
    picks it), and pytest-env's own [tool.pytest_env]. Raises DiscoveryError for a file
    that cannot be parsed."""
    settings: list[PytestSetting] = []
    ini = _pytest_ini(read)
    if ini is not None:
        file, option = ini
        env = option("env")
        for line in env.splitlines() if isinstance(env, str) else _strings(env):
            head, eq, value = line.strip().partition("=")  # D:R:NAME=value
            flags, _, name = head.rpartition(":")
            if eq and name.strip():  # D: sets it only where the environment has none
                override = "D" not in flags.upper().split(":")
                settings.append(PytestSetting(name.strip(), value.strip(), override, file))
        module = option("DJANGO_SETTINGS_MODULE")
        if isinstance(module, str) and module:  # under --ds and the environment's
            settings.append(PytestSetting("DJANGO_SETTINGS_MODULE", module, False, file))
    for name, value in _pytest_env_table(read).items():  # pytest-env 1.x's own table
        table = value if isinstance(value, dict) else {"value": value}
        if name in _PYTEST_ENV_OPTIONS or isinstance(table.get("value", {}), (dict, list)):
            continue
        if "value" in table and not table.get("unset"):  # pytest-env sets str(value)
            override = not table.get("skip_if_set")
            value = str(table["value"])
            settings.append(PytestSetting(name, value, override, "[tool.pytest_env]"))
    return settings


@dataclass(frozen=True)
class PytestEnvFile:
    """A dotenv file a pytest plugin loads before the tests (pytest-env's or
    pytest-dotenv's `env_files`, their --envfile); `override`: over the environment and
    the files loaded before it, else under both."""

    path: str
    override: bool
    origin: str


def pytest_env_files(
    read: Callable[[str], str | None], cwd: str = "", envfile: str = ""
) -> list[PytestEnvFile]:
    """The dotenv files pytest-env or pytest-dotenv load, in the order they load them;
    `cwd`: the folder pytest runs in, relative to the root (the rootdir); `envfile`: the
    --envfile option. pytest-env when pyproject.toml has [tool.pytest_env] or the ini
    sets env_files_skip_if_set, else pytest-dotenv (both read the ini's env_files and
    both define --envfile, so only one is installed). Raises DiscoveryError for a file
    that cannot be parsed."""
    ini = _pytest_ini(read)
    option = ini[1] if ini is not None else (lambda name: None)
    configured = option("env_files")
    names = configured.split() if isinstance(configured, str) else _strings(configured)
    table = _pytest_env_table(read)
    if table or option("env_files_skip_if_set") is not None:
        # pytest-env: the table's env_files, else the ini's; paths from the rootdir;
        # each file sets its variables over the environment (later files over earlier)
        # unless env_files_skip_if_set keeps what the environment had before them.
        if isinstance(table.get("env_files"), list):
            names = [str(name) for name in table["env_files"]]
        skip = table.get("env_files_skip_if_set")
        if not isinstance(skip, bool):
            skip = _truthy(option("env_files_skip_if_set"))
        if envfile:  # PATH instead of the configured files, +PATH after them
            names = [*names, envfile[1:]] if envfile.startswith("+") else [envfile]
        origin = "pytest-env env_files"
        if skip:  # under the environment, the last file's value winning
            return [PytestEnvFile(name, False, origin) for name in reversed(names)]
        return [PytestEnvFile(name, True, origin) for name in names]
    # pytest-dotenv: python-dotenv's find_dotenv(name, usecwd=True) from the folder
    # pytest runs in upwards; a set variable is kept (the first file's value wins)
    # unless env_override_existing_values; --envfile, at session start, overrides.
    override = _truthy(option("env_override_existing_values"))
    files = []
    for name in names:
        folder = cwd
        while True:
            path = posixpath.normpath(posixpath.join(folder, name))
            if read(path) is not None or folder in ("", "."):
                break
            folder = posixpath.dirname(folder)
        files.append(PytestEnvFile(path, override, "pytest env_files"))
    if envfile:
        path = posixpath.normpath(posixpath.join(cwd, envfile))
        files.append(PytestEnvFile(path, True, "pytest --envfile"))
    return files


# [tool.pytest_env] keys that are pytest-env's options, not variables
_PYTEST_ENV_OPTIONS = frozenset({"env_files", "env_files_skip_if_set"})


def _truthy(value: object) -> bool:
    """pytest's "bool" ini type: a TOML boolean, else the text true, 1, yes, on..."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    return str(value).strip().lower() in ("true", "1", "yes", "y", "on", "t")


def _pytest_env_table(read: Callable[[str], str | None]) -> dict[str, Any]:
    text = read("pyproject.toml")
    data = parse_toml(text, "pyproject.toml") if text is not None else {}
    return _table(_table(data, "tool"), "pytest_env")


def _pytest_ini(
    read: Callable[[str], str | None],
) -> tuple[str, Callable[[str], object]] | None:
    """The first of pytest.ini, pyproject.toml, tox.ini and setup.cfg that configures
    pytest (as pytest picks it), and a getter of its options (None when not set)."""
    for file, section in (
        ("pytest.ini", "pytest"),
        ("pyproject.toml", ""),
        ("tox.ini", "pytest"),
        ("setup.cfg", "tool:pytest"),
    ):
        text = read(file)
        if text is None:
            continue
        if not section:
            options = _table(_table(parse_toml(text, file), "tool"), "pytest")
            if "ini_options" in options:
                return file, _table(options, "ini_options").get
            continue
        parser = _ini(text, file)
        if parser.has_section(section):
            return file, partial(parser.get, section, fallback=None)
        if file == "pytest.ini":  # pytest's config even without [pytest]
            return file, lambda name: None
    return None


def _ini(text: str, file: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text, file)
    except configparser.Error as err:
        problem = str(err).splitlines()[0]
        raise DiscoveryError(f"{file}: not a valid INI file ({problem})") from None
    return parser


def _python_name(name: str) -> str:
    """PEP 503's normal form: `Flask_SQLAlchemy` is `flask-sqlalchemy`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(lines: Iterable[object]) -> Iterator[str]:
    """The distribution name at the start of each PEP 508 requirement, normalised."""
    for line in lines:
        if isinstance(line, str) and (match := _REQUIREMENT_NAME.match(line)):
            yield _python_name(match.group(1))


def _pyproject(text: str, file: str) -> list[str]:
    data = parse_toml(text, file)
    project, tool = _table(data, "project"), _table(data, "tool")
    groups: list[object] = [
        project.get("dependencies"),
        *_table(project, "optional-dependencies").values(),
        *_table(data, "dependency-groups").values(),
        *_table(_table(tool, "pdm"), "dev-dependencies").values(),
        _table(tool, "uv").get("dev-dependencies"),
        *(_value(env, "dependencies") for env in _table(_table(tool, "hatch"), "envs").values()),
    ]
    poetry = _table(tool, "poetry")
    keys = [*_table(poetry, "dependencies"), *_table(poetry, "dev-dependencies")]
    for group in _table(poetry, "group").values():
        keys.extend(_table(group, "dependencies"))
    requirements = [line for group in groups for line in _strings(group)]
    return [*_requirement_names(requirements), *map(_python_name, keys)]


def _pipfile(text: str, file: str) -> list[str]:
    data = parse_toml(text, file)
    return [
        _python_name(n) for section in ("packages", "dev-packages") for n in _table(data, section)
    ]


def _setup_cfg(text: str, file: str) -> list[str]:
    parser = _ini(text, file)
    values = [parser.get("options", "install_requires", fallback="")]
    if parser.has_section("options.extras_require"):
        values.extend(value for _, value in parser.items("options.extras_require"))
    return list(_requirement_names(line for value in values for line in value.splitlines()))


def _setup_py(text: str, file: str) -> list[str]:
    """Quoted requirements anywhere in setup.py: it is code, and is not run."""
    return [_python_name(name) for name in _QUOTED_REQUIREMENT.findall(text)]


def _json_keys(text: str, file: str, sections: tuple[str, ...]) -> list[str]:
    data = parse_json(text, file)
    return [name for section in sections for name in _table(data, section)]


def _gems(text: str, file: str) -> list[str]:
    return _GEM.findall(text)


def _gemspec(text: str, file: str) -> list[str]:
    return _GEMSPEC_DEPENDENCY.findall(text)


def _value(data: object, key: str) -> object:
    return data.get(key) if isinstance(data, dict) else None


def _table(data: object, key: str) -> dict[str, Any]:
    value = _value(data, key)
    return value if isinstance(value, dict) else {}


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


_PYTHON_READERS: tuple[tuple[str, Callable[[str, str], Iterable[str]]], ...] = (
    ("pyproject.toml", _pyproject),
    ("Pipfile", _pipfile),
    ("setup.cfg", _setup_cfg),
    ("setup.py", _setup_py),
)

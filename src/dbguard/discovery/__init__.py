"""Which databases can this command touch?

Pure: `discover` reads project files only through the `read` function it is given and
the environment only from its `env` argument, so every framework layout is tested with
plain dicts. The I/O side (finding the root, reading and caching files) is project.py.

Discovery is conservative: the resolver of the command's framework runs, and for test
runs and commands of no known framework so does every framework whose files are in the
project (a test suite can reach any of them). DATABASE_URL and the project's own
`.dbguard.toml` databases always contribute, and PG* variables fill what a PostgreSQL
setting leaves out, as libpq does. The union is backed up. Each target's `source` says
which file and keys it came from and why it is included; `Found.facts` carries what
bears on production (see production.py).

One module per framework: laravel.py, symfony.py, prisma.py, python.py (Alembic,
Django), rails.py, node.py (Knex, Sequelize, TypeORM), jvm.py (Flyway, Liquibase),
clients.py (Supabase, psql, mysql, sqlite3); generic.py for what applies everywhere.

Hints read from Operation.hints (named in rules/catalog.toml): env, connection,
settings, config, section, x and env_file (one value per line when several), schema,
url, target (supabase linked/local), host, port, database, user, socket.

Raises DiscoveryError (naming the file and line) when a file it needs is malformed, and
when it finds no database at all (the message lists where it looked), except for a
test run in a project with no sign of a database (signs.py): that one needs no backup.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from dbguard.discovery.clients import client, supabase
from dbguard.discovery.envfile import DiscoveryError, parse_env_entries
from dbguard.discovery.generic import database_url, pg_environment, project_databases
from dbguard.discovery.jvm import flyway, liquibase
from dbguard.discovery.laravel import laravel
from dbguard.discovery.model import (
    Context,
    FileReader,
    FolderLister,
    Found,
    Variables,
    load_env_files,
    unlisted,
)
from dbguard.discovery.node import DRIZZLE_CONFIGS, drizzle, knex, sequelize, typeorm
from dbguard.discovery.prisma import prisma
from dbguard.discovery.project_config import (
    PROJECT_FILE,
    load_project_config,
    project_config_file,
)
from dbguard.discovery.python import alembic, django
from dbguard.discovery.rails import rails
from dbguard.discovery.runners import RunnerEnv, runner_env_files
from dbguard.discovery.signs import (
    SQLITE_SIGN,
    database_signs,
    pytest_env_files,
    pytest_environment,
    sub_projects,
)
from dbguard.discovery.symfony import symfony
from dbguard.production import TargetFacts
from dbguard.rules import Kind, Operation

__all__ = [
    "FRAMEWORKS",
    "Context",
    "DiscoveryError",
    "FileReader",
    "FolderLister",
    "Found",
    "Variables",
    "discover",
]

Resolver = Callable[[Context, Found], None]

# framework -> (resolver, files whose presence says the project uses it)
FRAMEWORKS: dict[str, tuple[Resolver, tuple[str, ...]]] = {
    "laravel": (laravel, ("artisan",)),
    "symfony": (symfony, ("bin/console", "symfony.lock")),
    "prisma": (prisma, ("prisma/schema.prisma", "schema.prisma", "prisma.config.ts")),
    "alembic": (alembic, ("alembic.ini",)),
    "django": (django, ("manage.py",)),
    "rails": (rails, ("config/database.yml",)),
    "knex": (knex, ("knexfile.js", "knexfile.ts", "knexfile.json")),
    "sequelize": (sequelize, (".sequelizerc",)),
    "typeorm": (typeorm, ("ormconfig.json",)),
    "drizzle": (drizzle, DRIZZLE_CONFIGS),
    "flyway": (flyway, ("flyway.conf", "conf/flyway.conf", "flyway.toml")),
    "liquibase": (liquibase, ("liquibase.properties",)),
    "supabase": (supabase, ("supabase/config.toml",)),
    "client": (client, ()),
}
# Frameworks whose commands can reach whatever the project uses: run every detected one.
_BROAD = {None, "python"}


def discover(
    root: Path,
    read: FileReader,
    env: Mapping[str, str],
    operation: Operation,
    *,
    cwd: Path | None = None,
    listdir: FolderLister = unlisted,
) -> Found:
    """Every database `operation`, run in `root` (from `cwd`, default `root`) with `env`,
    could touch. `listdir` lists a project folder (used only to look for signs of a
    database when a test run finds none)."""
    return _discover(_Place(root, read, listdir, cwd or root), env, operation)


class NothingFound(DiscoveryError):
    """No database, and for a test run signs of one that discovery could not follow."""


@dataclass(frozen=True)
class _Place:
    """Where one discovery reads: a project folder, its files and folders, and the
    folder the command runs in."""

    root: Path
    read: FileReader
    listdir: FolderLister
    cwd: Path

    def sub_project(self, member: str) -> _Place:
        """`member`, a folder under the root, read through the same reader and lister."""
        return _Place(
            self.root / member,
            _within(self.read, member),
            _within(self.listdir, member),
            self.root / member,
        )


def _discover(
    place: _Place, env: Mapping[str, str], operation: Operation, *, nested: bool = False
) -> Found:
    found = _resolve(place, env, operation, nested=nested)
    if operation.framework == "client" and not nested:
        _project_facts(place, env, found)
    if operation.app_environment:
        # An end-to-end run: the app it drives uses the databases of its own
        # environment, whatever the test settings say.
        app = replace(operation, kind=Kind.MIGRATE, app_environment=False)
        with contextlib.suppress(NothingFound):  # else the test settings' answer stands
            found.extend(_resolve(place, env, app, nested=True))
    return found


def _project_facts(place: _Place, env: Mapping[str, str], found: Found) -> None:
    """A client given a database directly (`sqlite3 database/app.sqlite`, a psql URL)
    is judged by what the project says of that database too: where the project's own
    commands reach it, their facts (APP_ENV=production in its .env) count, as they would
    for `php artisan migrate`. Only facts: the client touches its own database alone."""
    project = Operation(tool="", kind=Kind.MIGRATE)  # the app's own environment
    with contextlib.suppress(DiscoveryError):
        known = _resolve(place, env, project, nested=True)
        for target in found.targets:
            if target.key in known.facts:
                found.facts.setdefault(target.key, TargetFacts()).merge(known.facts[target.key])


def _resolve(
    place: _Place,
    env: Mapping[str, str],
    operation: Operation,
    *,
    nested: bool,
    runner: RunnerEnv | None = None,
) -> Found:
    root = place.root
    found = Found(root=root)
    config_file = project_config_file(root)
    if config_file != PROJECT_FILE:
        place.read(PROJECT_FILE)  # absent; stamped, so one made later is read instead
    project = load_project_config(place.read, config_file)
    found.look(config_file if project is not None else f"{config_file} (absent)")
    ctx = Context(root, place.read, env, operation, place.cwd, project, listdir=place.listdir)
    found.project = project
    ctx.load_launcher_env_files(found)
    loaded = runner if runner is not None else runner_env_files(ctx, found)
    if loaded.unread and runner is None:
        # A dotenv file the runner's config loads that dbguard cannot name: back up what
        # both the usual files and .env.test lead to, or refuse where there is no
        # .env.test; never only one of them, silently.
        candidate = RunnerEnv(under=[*loaded.under, ".env.test"], over=loaded.over)
        if place.read(".env.test") is None:
            raise DiscoveryError(
                f"{operation.description}: its configuration loads a dotenv file dbguard "
                f"cannot name ({'; '.join(loaded.unread)})",
                "write the path as a plain string (dotenv.config({ path: '.env.test' })), "
                "run it through `dotenv -e FILE --`, or name the database in .dbguard.toml",
            )
        found = _resolve(place, env, operation, nested=nested, runner=replace(loaded, unread=[]))
        found.extend(_resolve(place, env, operation, nested=nested, runner=candidate))
        found.warn(
            f"{'; '.join(loaded.unread)}: dbguard backed up the databases of both .env and "
            ".env.test"
        )
        return found
    assert ctx.base is not None
    load_env_files(ctx.read, ctx.base, loaded.under, found, ctx.flat_env)
    load_env_files(ctx.read, ctx.base, loaded.over, found, ctx.flat_env, override=True)
    if operation.tool == "pytest":
        _pytest_environment(ctx, found)
    for resolver in _resolvers(ctx):
        resolver(ctx, found)
    database_url(ctx, found)
    project_databases(ctx, found)
    _apply_pg_environment(ctx, found)
    if not found.targets and not found.notes:
        members, member_signs = sub_projects(ctx) if ctx.is_test and not nested else ([], [])
        for member in members:
            # A runner started at the top collects the sub-projects' tests too.
            try:
                part = _discover(place.sub_project(member), env, operation, nested=True)
            except DiscoveryError as err:
                raise type(err)(f"in the sub-project {member}/: {err.problem}", err.fix) from None
            found.extend(part)
        signs = [*_signs(ctx), *member_signs]
        # A test run, or a shell file that could not be read, in a project with no sign
        # of a database: it reaches none.
        if (ctx.is_test or operation.unread) and not signs:
            if not found.targets and not found.notes:
                found.notes.append(f"{root}: {NO_DATABASE}")
            return found
        shown = f"; signs of a database: {'; '.join(signs)}" if signs else ""
        # dbguardctl backup, mark and restore ask for the project's databases under a
        # kind of their own choosing, which would only puzzle here ("(migrate)").
        what = (
            f"{operation.tool} could not find a database"
            if operation.tool.startswith("dbguardctl ")
            else f"{operation.description} is a database operation, but dbguard could not "
            "find its database"
        )
        raise NothingFound(
            f"{what} in {root}; looked at: {', '.join(found.looked) or 'nothing'}{shown}",
            _fix(signs),
        )
    return found


def _pytest_environment(ctx: Context, found: Found) -> None:
    """What pytest sets as it starts, before any test reads it: the dotenv files
    pytest-env or pytest-dotenv load (env_files, --envfile), then pytest-env's variables
    (a DATABASE_URL there is the one the tests use, not .env's) and pytest-django's
    DJANGO_SETTINGS_MODULE, each under the command's own environment where it says so."""
    assert ctx.base is not None
    cwd = ctx.cwd.relative_to(ctx.root).as_posix() if ctx.cwd.is_relative_to(ctx.root) else ""
    for file in pytest_env_files(ctx.read, cwd, ctx.hints.get("envfile", "")):
        text = ctx.read(file.path)
        found.look(f"{file.path} ({file.origin})" if text is not None else f"{file.path} (absent)")
        if text is not None:
            entries = parse_env_entries(text, file.path, ctx.flat_env)
            ctx.base.layer_entries(entries, file.path, override=file.override)
    for setting in pytest_environment(ctx.read):
        if setting.override or setting.name not in ctx.base:
            ctx.base.set(setting.name, setting.value, f"{setting.origin} ({setting.name})")
            found.look(f"{setting.name} ({setting.origin})")


NO_DATABASE = (
    "no sign of a database (no framework's files, no database settings "
    "in .env, no database driver among its dependencies): nothing to back up"
)


def _signs(ctx: Context) -> list[str]:
    """Why a test run that found no database may still reach one (see signs.py)."""
    present = [
        f"{marker} ({name})"
        for name, (_, markers) in FRAMEWORKS.items()
        for marker in markers[:1]
        if _present(ctx, name)
    ]
    if ctx.project is not None:
        present.append(f"{PROJECT_FILE}, which names no database")
    return [*present, *database_signs(ctx)]


def _fix(signs: list[str]) -> str:
    sqlite = next((s.split(": ", 1)[1] for s in signs if s.startswith(SQLITE_SIGN)), None)
    example = f"sqlite:///{sqlite}" if sqlite else "..."
    return (
        f'name the database in .dbguard.toml ([[database]] url = "{example}"), or set '
        "DATABASE_URL (or your framework's database settings), then run the command again"
    )


_R = TypeVar("_R")


def _within(function: Callable[[str], _R], folder: str) -> Callable[[str], _R]:
    """A reader or lister of the project's files, for its sub-project `folder`."""
    return lambda relative: function(posixpath.join(folder, relative) if relative else folder)


def _resolvers(ctx: Context) -> Iterator[Resolver]:
    framework = ctx.operation.framework
    if framework == "laravel" and ctx.read("artisan") is None and _present(ctx, "symfony"):
        framework = "symfony"  # phpunit / pest in a Symfony project
    chosen = []
    if framework in FRAMEWORKS:
        chosen.append(framework)
    if framework in _BROAD or framework not in FRAMEWORKS or ctx.operation.kind is Kind.TEST:
        chosen.extend(name for name in FRAMEWORKS if name != "client" and _present(ctx, name))
    for name in dict.fromkeys(chosen):
        yield FRAMEWORKS[name][0]


def _present(ctx: Context, framework: str) -> bool:
    return any(ctx.read(marker) is not None for marker in FRAMEWORKS[framework][1])


def _apply_pg_environment(ctx: Context, found: Found) -> None:
    """libpq fills unset fields from PG* variables; so must the backup, or it would
    back up a different database than the command reaches."""
    for index, target in enumerate(list(found.targets)):
        filled, used = pg_environment(ctx, target)
        if not used:
            continue
        facts = found.facts.pop(target.key, None)
        found.targets[index] = filled
        if facts is not None:
            for setting in used:
                if setting.name == "PGHOST":
                    facts.fields["host"] = setting
                elif setting.name == "PGDATABASE":
                    facts.fields["name"] = setting
            found.facts[filled.key] = facts

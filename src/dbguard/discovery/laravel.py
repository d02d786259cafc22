"""Laravel: the database a command reaches, decided the way Laravel decides it.

- `.env.{APP_ENV}` is loaded instead of `.env` when it exists. APP_ENV comes from
  `--env=` (hint `env`), the real environment, phpunit.xml for test runs, or is taken
  to be `testing` for a test run when nothing sets it.
- Test runs read phpunit.xml (or phpunit.dist.xml / phpunit.xml.dist, or hint `config`):
  `<server>` always wins, `<env force="true">` wins over the real environment, a plain
  `<env>` only fills what the real environment leaves unset (PHPUnit's rules). Laravel's
  dotenv never overrides a variable that is already set, so all of these win over the
  .env file. DB_DATABASE=:memory: on SQLite means nothing on disk: a note, no target.
- `bootstrap/cache/config.php` (or APP_CONFIG_CACHE) silently wins over every .env file
  and every phpunit.xml variable while it exists: this is how test suites reached
  production databases. Its default connection is read from the var_export literal
  (php.py); if it cannot be read, the .env database is used and a warning says so.
- `--database=NAME` (hint `connection`) picks a connection by name, like DB_CONNECTION.
- A test run backs up the database it is configured to use and, unless that
  configuration provably keeps it away, the main application database (the one
  `php artisan migrate` would use): with a config cache, when nothing sets
  APP_ENV=testing, or when DB_DATABASE falls through to `.env`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.formats import parse_xml
from dbguard.discovery.generic import app_env_facts
from dbguard.discovery.model import (
    Context,
    Found,
    Variables,
    load_env_files,
    server_target,
    sqlite_target,
    url_target,
)
from dbguard.discovery.php import Opaque, PhpSyntaxError, parse_php_return
from dbguard.engines.base import EngineName, Target
from dbguard.production import Setting, TargetFacts

__all__ = ["laravel"]

KEYS = (
    "DB_CONNECTION",
    "DB_URL",
    "DATABASE_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_DATABASE",
    "DB_USERNAME",
    "DB_PASSWORD",
    "DB_SOCKET",
)
DRIVERS: dict[str, EngineName] = {
    "sqlite": "sqlite",
    "pgsql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_UNSUPPORTED_DRIVERS = {"sqlsrv": "SQL Server"}
PHPUNIT_FILES = ("phpunit.xml", "phpunit.dist.xml", "phpunit.xml.dist")
CONFIG_CACHE = "bootstrap/cache/config.php"
CLEAR = "run `php artisan config:clear` (it is how test runs reached production databases)"

Resolved = list[tuple[Target, TargetFacts]]


@dataclass
class PhpUnitVariables:
    """The `<php>` section of a PHPUnit config: name -> (value, line)."""

    file: str
    server: dict[str, tuple[str, int]] = field(default_factory=dict)
    forced: dict[str, tuple[str, int]] = field(default_factory=dict)
    soft: dict[str, tuple[str, int]] = field(default_factory=dict)


def laravel(ctx: Context, found: Found) -> None:
    if ctx.operation.tool == "artisan" and ctx.read("artisan") is None:
        if ctx.names_databases:
            return  # .dbguard.toml names the databases; Laravel's settings are elsewhere
        # `php backend/artisan migrate:fresh` from a monorepo's top: the settings are
        # beside that artisan, not here, and Laravel's defaults (an SQLite file that is
        # not there) would let the command through with nothing backed up.
        raise DiscoveryError(
            f"artisan runs from a folder other than the project dbguard looked in ({ctx.root}"
            " has no artisan file)",
            "cd into the Laravel project's folder (where artisan is) and run the command there",
        )
    loaded = _variables(ctx, found, test=ctx.is_test)
    if ctx.read("artisan") is None and not any(name in loaded.variables for name in KEYS):
        # phpunit in a PHP library: Laravel's defaults describe a Laravel app, and no
        # DB_* setting anywhere says this project is one (a package tested with
        # orchestra/testbench sets them in phpunit.xml).
        return
    cache = _read_cache(ctx, found)
    if ctx.is_test:
        _test_run(ctx, found, loaded, cache)
        return
    env_targets, note = _resolve(ctx, loaded, found)
    if ctx.operation.command in _RUNS_EVERY_MIGRATION:
        env_targets += _migration_connections(ctx, loaded, found)
    if cache is not None and cache.targets:
        for target, facts in cache.targets:
            found.add(target, facts=facts)
        if {t.key for t, _ in env_targets} != {t.key for t, _ in cache.targets}:
            found.warn(
                f"{cache.file} exists, so Laravel uses its cached database settings and "
                "ignores .env, which names a different database. " + CLEAR
            )
        return
    for target, facts in env_targets:
        found.add(target, facts=facts)
    found.add(None, note)


# Commands that run migrations' down() (and fresh, their up() again) on the connection
# each migration names (`protected $connection = 'x'`, `Schema::connection('x')`).
_RUNS_EVERY_MIGRATION = {"migrate:rollback", "migrate:reset", "migrate:refresh", "migrate:fresh"}
_MIGRATION_CONNECTION = re.compile(
    r"""(?:\$connection\s*=\s*|Schema::connection\(\s*)['"]([\w.-]+)['"]"""
)
_MIGRATIONS = "database/migrations"
_MAX_MIGRATION_FILES = 1024


def _migration_connections(ctx: Context, loaded: _Loaded, found: Found) -> Resolved:
    """The databases of the other connections the project's migrations run on: a
    rollback runs their down() there (Laravel's "Setting the Migration Connection")."""
    variables = loaded.variables
    default = _connection(ctx, variables, found)
    named: dict[str, str] = {}  # connection -> the first migration that names it
    files = sorted(ctx.listdir(_MIGRATIONS) or [])
    for name in [f for f in files if f.endswith(".php")][:_MAX_MIGRATION_FILES]:
        path = f"{_MIGRATIONS}/{name}"
        for connection in _MIGRATION_CONNECTION.findall(ctx.read_looked(path, found) or ""):
            named.setdefault(connection.lower(), path)
    targets: Resolved = []
    for connection, path in named.items():
        if connection != default:
            said = f"{path} (its migration runs on the connection {connection!r})"
            more, _ = _resolve(ctx, loaded, found, connection=connection, named_in=said)
            targets += more
    return targets


def _test_run(ctx: Context, found: Found, loaded: _Loaded, cache: _Cache | None) -> None:
    test_targets, note = _resolve(ctx, loaded, found, role="test")
    for target, facts in test_targets:
        found.add(target, facts=facts)
    found.add(None, note)
    reasons = []
    if cache is not None:
        reasons.append(
            f"{cache.file} exists, and while it does Laravel ignores phpunit.xml's variables "
            "and every .env file"
        )
        for target, facts in cache.targets:
            found.add(
                target.model_copy(update={"source": f"{target.source}; what the tests use"}),
                facts=facts,
            )
        found.warn(
            f"{cache.file} exists: this test run uses the cached database settings, not "
            f"phpunit.xml or .env.testing. {CLEAR}"
        )
    if loaded.assumed_testing:
        reasons.append(
            "nothing sets APP_ENV=testing for this run (no phpunit.xml <env>, no --env), so "
            "it may read .env"
        )
    elif loaded.app_env != "testing" and ctx.read(".env.testing") is not None:
        found.warn(
            f"APP_ENV={loaded.app_env} ({loaded.variables.where('APP_ENV')}) makes this test "
            "run ignore .env.testing"
            + (
                "; phpunit.xml's APP_ENV=testing does not override the environment without "
                'force="true"'
                if loaded.phpunit is not None and "APP_ENV" in loaded.phpunit.soft
                else ""
            )
        )
    if (loaded.variables.file("DB_URL") or loaded.variables.file("DB_DATABASE")) == ".env":
        reasons.append(
            f"the tests take DB_DATABASE from .env ({loaded.why_env_file}; neither phpunit.xml "
            "nor the environment sets it)"
        )
    if not reasons:
        return
    main = _variables(ctx, Found(), test=False)
    main_targets, _ = _resolve(ctx, main, Found())
    known = {t.key for t in found.targets}
    why = "the application database, backed up too because " + "; and ".join(reasons)
    for target, facts in main_targets:
        # When the tests already reach it, only the reason is added to its source.
        source = why if target.key in known else f"{target.source} — {why}"
        found.add(target.model_copy(update={"source": source}), facts=facts)


# ---- variables ---------------------------------------------------------------------------


@dataclass
class _Loaded:
    """The variables Laravel would see, and how its env file was chosen."""

    variables: Variables
    env_file: str
    why_env_file: str
    app_env: str | None
    assumed_testing: bool
    phpunit: PhpUnitVariables | None


def _variables(ctx: Context, found: Found, *, test: bool) -> _Loaded:
    variables = Variables()
    phpunit = _phpunit(ctx, found) if test else None
    env_hint = ctx.hints.get("env")
    if env_hint:
        variables.set("APP_ENV", env_hint, f"--env={env_hint} on the command line")
    # Highest first; each layer fills only what the layers above left unset.
    if phpunit is not None:
        variables.layer_entries(phpunit.server, phpunit.file, override=False)
        variables.layer_entries(phpunit.forced, phpunit.file, override=False)
    variables.layer_variables(ctx.environment(), override=False)
    if phpunit is not None:
        variables.layer_entries(phpunit.soft, phpunit.file, override=False)
    app_env = variables.get("APP_ENV")
    assumed = test and app_env is None
    if assumed:
        app_env = "testing"
    base, why = _dusk_env_file(ctx, found) or (".env", "")
    env_file = base
    if app_env:
        specific = f".env.{app_env}"
        if ctx.read_looked(specific, found) is not None:
            env_file = specific
            origin = variables.where("APP_ENV") if "APP_ENV" in variables else "a test run"
            why = f"APP_ENV={app_env} ({origin}) loads {specific} instead of .env"
        else:
            why = f"{why}; " if why else ""
            why += f"{specific} is absent, so Laravel reads {base}"
    load_env_files(ctx.read, variables, [env_file], found, ctx.flat_env)
    return _Loaded(variables, env_file, why, app_env, assumed, phpunit)


def _dusk_env_file(ctx: Context, found: Found) -> tuple[str, str] | None:
    """`php artisan dusk` puts `.env.dusk.{environment}` in place of `.env` for its run
    (the app it drives reads it too): that file and why, when there is one. The
    environment is the artisan process's: --env, the environment, `.env`'s APP_ENV, else
    Laravel's default, production."""
    if ctx.operation.command != "dusk":
        return None
    environment = ctx.hints.get("env") or ctx.environment().get("APP_ENV")
    if not environment:
        probe = Variables()
        load_env_files(ctx.read, probe, [".env"], Found(), ctx.flat_env)
        environment = probe.get("APP_ENV") or "production"
    name = f".env.dusk.{environment}"
    if ctx.read_looked(name, found) is None:
        return None
    return name, f"php artisan dusk puts {name} in place of .env for its run"


def _phpunit(ctx: Context, found: Found) -> PhpUnitVariables | None:
    configured = ctx.hints.get("config")
    names = [configured] if configured else list(PHPUNIT_FILES)
    if not configured and ctx.operation.command == "dusk":
        names.insert(0, "phpunit.dusk.xml")  # Dusk's own, where there is one
    if configured and ctx.listdir(configured) is not None:  # -c tests/pg: a folder
        names = [posixpath.join(configured, name) for name in PHPUNIT_FILES]
    for name in names:
        text = ctx.read_looked(name, found)
        if text is None:
            continue
        root = parse_xml(text, name)
        result = PhpUnitVariables(name)
        php = root.find("php")
        for element in php if php is not None else []:
            if element.tag not in ("env", "server"):
                continue
            var = element.get("name")
            if not var:
                continue
            value = (element.get("value") or "", _line_of(text, var))
            if element.tag == "server":
                result.server[var] = value
            elif (element.get("force") or "").lower() in ("true", "1"):
                result.forced[var] = value
            else:
                result.soft[var] = value
        return result
    return None


def _line_of(text: str, name: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if re.search(rf"""name\s*=\s*["']{re.escape(name)}["']""", line):
            return number
    return 0


# ---- from variables to targets -------------------------------------------------------------


def _resolve(
    ctx: Context,
    loaded: _Loaded,
    found: Found,
    role: str = "",
    *,
    connection: str | None = None,
    named_in: str = "",
) -> tuple[Resolved, str]:
    """The targets the variables name, and a note when there is nothing on disk. The
    connection is `connection` (which `named_in` names), --database, else the default."""
    variables, why_env_file = loaded.variables, loaded.why_env_file
    origin = variables.origin(*KEYS)
    detail = []
    if role == "test":
        detail.append("the database this test run is configured to use")
    if why_env_file and (role == "test" or ".env." in why_env_file):
        detail.append(why_env_file)
    if named_in:
        detail.append(named_in)
    source = origin + (f" — {'; '.join(detail)}" if detail else "")
    facts = app_env_facts(variables)
    connection_hint = connection or ctx.hints.get("connection")
    connection = (connection or _connection(ctx, variables, found)).lower()
    url_name = next((n for n in _url_variables(ctx, found) if variables.get(n)), "DB_URL")
    url = variables.get(url_name)
    where = named_in or (variables.where("DB_CONNECTION") if not connection_hint else "--database")
    if connection in _UNSUPPORTED_DRIVERS:
        raise DiscoveryError(
            f"{where}: DB_CONNECTION={connection} ({_UNSUPPORTED_DRIVERS[connection]}) is not an "
            "engine dbguard can back up",
            "dbguard supports sqlite, pgsql, mysql and mariadb",
        )
    if connection not in DRIVERS:
        return _custom_connection(ctx, connection, where, found), ""
    engine = DRIVERS[connection]
    if url:
        target, facts = url_target(
            url, ctx.root, source, variables.where(url_name), url_name, facts
        )
        if target is None:
            return [], f"{source}: in-memory SQLite, nothing on disk to back up"
        return [(_fill(target, variables), facts)], ""
    for name, attribute in (("DB_HOST", "host"), ("DB_DATABASE", "name")):
        setting = variables.setting(name)
        if setting is not None:
            facts.fields[attribute] = setting
    if engine == "sqlite":
        database = variables.get("DB_DATABASE") or "database/database.sqlite"
        target = sqlite_target(database, ctx.root, source)
        if target is None:
            return [], f"{source}: SQLite {database}, nothing on disk to back up"
        if "DB_DATABASE" in variables:
            facts.fields["path"] = Setting("DB_DATABASE", database, variables.where("DB_DATABASE"))
        return [(target, facts)], ""
    target = server_target(
        engine,
        host=variables.get("DB_HOST") or "127.0.0.1",
        port=variables.get("DB_PORT") or (5432 if engine == "postgres" else 3306),
        name=variables.get("DB_DATABASE") or "laravel",
        user=variables.get("DB_USERNAME") or "root",
        password=variables.get("DB_PASSWORD"),
        socket=variables.get("DB_SOCKET"),
        source=source,
        where=variables.where("DB_PORT"),
    )
    return [(target, facts)], ""


def _fill(target: Target, variables: Variables) -> Target:
    """Laravel merges DB_URL over the DB_* settings: the URL wins, the rest fill in."""
    if target.engine == "sqlite":
        return target
    update: dict[str, Any] = {}
    if target.user is None and variables.get("DB_USERNAME"):
        update["user"] = variables.get("DB_USERNAME")
    if target.password is None and variables.get("DB_PASSWORD"):
        update["password"] = SecretStr(variables.get("DB_PASSWORD") or "")
    if target.name is None and variables.get("DB_DATABASE"):
        update["name"] = variables.get("DB_DATABASE")
    return target.model_copy(update=update) if update else target


def _url_variables(ctx: Context, found: Found) -> tuple[str, ...]:
    """Laravel 11 reads DB_URL, earlier versions DATABASE_URL: whichever the project's
    config/database.php names (Laravel 11 ships without one: DB_URL)."""
    text = ctx.read_looked("config/database.php", found)
    if text is None:
        return ("DB_URL",)
    names = tuple(n for n in ("DB_URL", "DATABASE_URL") if f"'{n}'" in text or f'"{n}"' in text)
    return names or ("DB_URL",)


def _connection(ctx: Context, variables: Variables, found: Found) -> str:
    """The connection a command uses: --database, DB_CONNECTION, else the default."""
    return (
        ctx.hints.get("connection")
        or variables.get("DB_CONNECTION")
        or _default_connection(ctx, found)
    ).lower()


def _default_connection(ctx: Context, found: Found) -> str:
    """`'default' => env('DB_CONNECTION', 'mysql')` in config/database.php, else Laravel
    11's built-in default, sqlite. Read as text, never run."""
    text = ctx.read_looked("config/database.php", found)
    if text:
        match = re.search(
            r"""['"]default['"]\s*=>\s*env\(\s*['"]DB_CONNECTION['"]\s*,\s*['"](\w+)['"]\s*\)""",
            text,
        )
        if match:
            return match.group(1)
    return "sqlite"


def _custom_connection(ctx: Context, name: str, where: str, found: Found) -> Resolved:
    problem = (
        f"{where}: the connection {name!r} is not one of Laravel's built-in connections "
        "(sqlite, pgsql, mysql, mariadb); it is defined in config/database.php, which is code "
        "dbguard does not run"
    )
    if ctx.project is not None and ctx.project.database:
        found.warn(f"{problem}; backing up the databases named in {ctx.project.file} instead")
        return []
    raise DiscoveryError(
        problem,
        'name its database in .dbguard.toml ([[database]] url = "..."), or cache the config '
        "so dbguard can read it",
    )


# ---- the cached config -------------------------------------------------------------------------


@dataclass
class _Cache:
    file: str
    targets: Resolved


def _read_cache(ctx: Context, found: Found) -> _Cache | None:
    """The cached config's database, or None when there is no cache. An unreadable cache
    is a _Cache with no targets (and a warning): callers fall back to .env."""
    name = ctx.flat_env.get("APP_CONFIG_CACHE") or CONFIG_CACHE
    text = ctx.read_looked(name, found)
    if text is None:
        return None
    fallback = (
        f"{name} exists but dbguard cannot read which database it names ({{}}); Laravel "
        f"uses it instead of .env, so the .env database is backed up instead. {CLEAR}"
    )
    try:
        data = parse_php_return(text)
    except PhpSyntaxError as err:
        found.warn(fallback.format(err))
        return _Cache(name, [])
    database = data.get("database") if isinstance(data, dict) else None
    connections = database.get("connections") if isinstance(database, dict) else None
    if not isinstance(database, dict) or not isinstance(connections, dict):
        found.warn(fallback.format("no 'database' => ['connections' => ...] in it"))
        return _Cache(name, [])
    connection = ctx.hints.get("connection") or database.get("default")
    config = connections.get(connection) if isinstance(connection, str) else None
    if not isinstance(config, dict):
        if ctx.hints.get("connection"):
            raise DiscoveryError(
                f"{name}: the cached config has no database connection {connection!r}",
                f"use one of: {', '.join(str(c) for c in connections)}",
            )
        found.warn(fallback.format(f"its default connection {connection!r} is not defined"))
        return _Cache(name, [])
    facts = TargetFacts()
    app = data.get("app")
    if isinstance(app, dict) and isinstance(app.get("env"), str):
        facts.app_env.append(Setting("APP_ENV", app["env"], f"{name} (app.env)", in_file=True))
    key = f"database.connections.{connection}"
    source = f"{name} ({key}) — Laravel's cached config, used instead of every .env file"
    targets = _from_config(ctx, config, source, name, key, facts)
    if not targets:
        found.add(None, f"{source}: in-memory SQLite, nothing on disk to back up")
    return _Cache(name, targets)


def _from_config(
    ctx: Context,
    config: Mapping[Any, Any],
    source: str,
    file: str,
    key: str,
    facts: TargetFacts,
) -> Resolved:
    """Targets of one cached connection array; `key` is its place in the config."""
    where = f"{file} ({key})"
    driver = str(config.get("driver") or "")
    if driver not in DRIVERS:
        raise DiscoveryError(
            f"{where}: driver {driver!r} is not an engine dbguard can back up",
            "dbguard supports sqlite, pgsql, mysql and mariadb",
        )
    engine = DRIVERS[driver]
    url = config.get("url")
    if isinstance(url, str) and url:
        target, url_facts = url_target(url, ctx.root, source, where, f"{where} url", facts)
        return [(target, url_facts)] if target is not None else []
    database = _text(config.get("database"))
    if engine == "sqlite":
        target = sqlite_target(database or "", ctx.root, source)
        if target is None:
            return []
        facts.fields["path"] = Setting(f"{key}.database", target.path or "", file)
        return [(target, facts)]
    # Writes go to the `write` hosts when read/write connections are configured; a list
    # of hosts is tried at random, so each one is a target.
    write = config.get("write")
    hosts_value = (
        write.get("host") if isinstance(write, dict) and "host" in write else config.get("host")
    )
    hosts = list(hosts_value.values()) if isinstance(hosts_value, dict) else [hosts_value]
    targets = []
    for host in hosts:
        host_text = _text(host) or "127.0.0.1"
        host_facts = facts.environment()
        host_facts.fields["host"] = Setting(f"{key}.host", host_text, file)
        if database:
            host_facts.fields["name"] = Setting(f"{key}.database", database, file)
        params = {"sslmode": str(config["sslmode"])} if config.get("sslmode") else {}
        target = server_target(
            engine,
            host=host_text,
            port=_text(config.get("port")) or (5432 if engine == "postgres" else 3306),
            name=database or None,
            user=_text(config.get("username")),
            password=_text(config.get("password")),
            socket=_text(config.get("unix_socket")),
            params=params,
            source=source,
            where=where,
        )
        targets.append((target, host_facts))
    return targets


def _text(value: object) -> str | None:
    if value is None or isinstance(value, (Opaque, dict, bool)):
        return None
    return str(value)

"""Symfony (Doctrine): DATABASE_URL, the way Symfony's Dotenv loads it.

Files, later ones winning, the real environment over all of them: `.env` (or
`.env.dist`), `.env.local` (skipped when APP_ENV=test), `.env.{APP_ENV}`,
`.env.{APP_ENV}.local` (neither when APP_ENV=local). A `${VAR}` in a file is expanded
from the environment and the files loaded before it. APP_ENV comes from `--env`/`-e`
(hint `env`), the environment, phpunit.xml's `<server>`/`<env>` for test runs, `.env`
and then `.env.local` (Dotenv::loadEnv reads it again once that is loaded), and
defaults to `dev` (`test` for a test run with nothing setting it). `.env.local.php`
(composer dump-env) replaces all the files when its APP_ENV is the one in force, and
is read like Laravel's cached config: as a PHP literal, never run.

Doctrine's `dbname_suffix` under `when@test` in config/packages/doctrine.yaml (the
recipe's `_test`) is appended whenever the kernel runs in `test`: a test run, or
`bin/console --env=test doctrine:fixtures:load` as Symfony's testing guide does. A
test run also backs up the `dev` database when nothing sets APP_ENV=test.
"""

from __future__ import annotations

import re

from dbguard.discovery.envfile import DiscoveryError, parse_env_entries
from dbguard.discovery.generic import app_env_facts
from dbguard.discovery.laravel import _phpunit
from dbguard.discovery.model import (
    Context,
    Found,
    Variables,
    load_env_files,
    url_target,
)
from dbguard.discovery.php import PhpSyntaxError, parse_php_return

__all__ = ["symfony"]


def symfony(ctx: Context, found: Found) -> None:
    connection = ctx.hints.get("connection")
    if connection and connection not in _default_names(ctx, found) and not ctx.names_databases:
        # Each Doctrine connection or entity manager has its own URL in doctrine.yaml,
        # which may be any variable: backing up DATABASE_URL would be the wrong one.
        raise DiscoveryError(
            f"--em/--connection {connection}: dbguard does not follow Doctrine's named "
            "connections to their databases",
            f'name {connection}\'s database in .dbguard.toml ([[database]] url = "..."), '
            "then run the command again",
        )
    variables, assumed = _variables(ctx, found, test=ctx.is_test)
    _add(ctx, found, variables)
    if ctx.is_test and assumed:
        main, _ = _variables(ctx, Found(), test=False)
        _add(
            ctx,
            found,
            main,
            why="the application (dev) database, backed up too because nothing sets APP_ENV=test "
            "for this run",
        )


def _variables(ctx: Context, found: Found, *, test: bool) -> tuple[Variables, bool]:
    variables = Variables()
    if ctx.hints.get("env"):
        variables.set("APP_ENV", ctx.hints["env"], "--env on the command line")
    phpunit = _phpunit(ctx, found) if test else None
    if phpunit is not None:
        variables.layer_entries(phpunit.server, phpunit.file, override=False)
        variables.layer_entries(phpunit.forced, phpunit.file, override=False)
    variables.layer_variables(ctx.environment(), override=False)
    if phpunit is not None:
        variables.layer_entries(phpunit.soft, phpunit.file, override=False)
    dumped = ctx.read_looked(".env.local.php", found)
    if dumped is not None:
        try:
            data = parse_php_return(dumped)
        except PhpSyntaxError as err:
            raise DiscoveryError(
                f".env.local.php, {err}: dbguard reads it as a literal array, never runs it",
                "run `composer dump-env` again, or remove the file",
            ) from None
        if isinstance(data, dict):
            wanted = variables.get("APP_ENV") or data.get("APP_ENV")
            if data.get("APP_ENV") == wanted:
                values = {str(k): str(v) for k, v in data.items() if isinstance(v, (str, int))}
                variables.layer(values, ".env.local.php", override=False)
                return variables, False
    base = ".env" if ctx.read(".env") is not None else ".env.dist"
    probe = variables.copy()
    load_env_files(ctx.read, probe, [base], found, ctx.flat_env)
    app_env = probe.get("APP_ENV")
    assumed = False
    if not app_env:
        app_env, assumed = ("test", True) if test else ("dev", False)
    loaded = [base]  # in Symfony's order
    if app_env != "test":
        loaded.append(".env.local")
        again = variables.copy()  # Dotenv::loadEnv reads APP_ENV again after .env.local
        load_env_files(ctx.read, again, [".env.local", base], Found(), ctx.flat_env)
        app_env = again.get("APP_ENV") or app_env
    if app_env != "local":
        loaded += [f".env.{app_env}", f".env.{app_env}.local"]
    _load_in_order(ctx, found, variables, loaded)
    if "APP_ENV" not in variables:
        variables.set("APP_ENV", app_env, "Symfony's default")
    return variables, assumed


def _load_in_order(ctx: Context, found: Found, variables: Variables, names: list[str]) -> None:
    """Symfony's dotenv files, `names` in the order it loads them: a later file wins,
    the real environment over all, and a `${VAR}` is expanded from the environment and
    the files loaded before it (`.env.local`'s `${DB_NAME}_local` from `.env`)."""
    scope = dict(ctx.flat_env)
    scopes = []
    for name in names:
        scopes.append(dict(scope))
        text = ctx.read(name)
        if text is not None:
            entries = parse_env_entries(text, name, scope)
            scope.update((k, v) for k, (v, _) in entries.items() if k not in ctx.flat_env)
    # Layered most specific first, none overriding.
    for name, before in reversed(list(zip(names, scopes, strict=True))):
        load_env_files(ctx.read, variables, [name], found, before)


def _add(ctx: Context, found: Found, variables: Variables, *, why: str = "") -> None:
    name = _url_variable(ctx, found)
    url = variables.get(name)
    if not url:
        found.look(f"{name} (not set)")
        return
    where = variables.where(name)
    source = f"{variables.origin(name)} (APP_ENV={variables.get('APP_ENV')})"
    if why:
        source += f" — {why}"
    facts = app_env_facts(variables)
    target, facts = url_target(url, ctx.root, source, where, name, facts)
    kernel_in_test = variables.get("APP_ENV") == "test"
    if target is not None and kernel_in_test and target.engine != "sqlite" and target.name:
        suffix = _test_suffix(ctx, found)
        if suffix:
            target = target.model_copy(
                update={
                    "name": target.name + suffix,
                    "source": f"{source}, with Doctrine's test dbname_suffix {suffix!r}",
                }
            )
    found.add(target, f"{source}: in-memory SQLite, nothing to back up", facts)


# `url: '%env(resolve:DB_URL)%'` in doctrine.yaml's dbal section: the variable the
# default connection reads (DATABASE_URL in Symfony's recipe).
_URL_ENV = re.compile(r"""^\s*url:\s*['"]?%env\((?:[a-z_]+:)*([A-Za-z_][A-Za-z0-9_]*)\)%""", re.M)


_DEFAULT_NAME = re.compile(r"^\s*default_(?:connection|entity_manager):\s*['\"]?(\w+)", re.M)


def _default_names(ctx: Context, found: Found) -> set[str]:
    """What --em/--conn may name and still mean the default connection."""
    text = ctx.read_looked("config/packages/doctrine.yaml", found) or ""
    return {"default", *_DEFAULT_NAME.findall(text)}


def _url_variable(ctx: Context, found: Found) -> str:
    text = ctx.read_looked("config/packages/doctrine.yaml", found) or ""
    match = _URL_ENV.search(text.split("when@", 1)[0])
    return match.group(1) if match else "DATABASE_URL"


def _test_suffix(ctx: Context, found: Found) -> str:
    text = ctx.read_looked("config/packages/doctrine.yaml", found) or ""
    when_test = text.split("when@test:", 1)[1] if "when@test:" in text else ""
    match = re.search(r"""dbname_suffix:\s*['"]?([A-Za-z0-9_]*)""", when_test)
    return match.group(1) if match else ""

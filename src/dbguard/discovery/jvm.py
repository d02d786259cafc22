"""Flyway and Liquibase: JDBC URLs from the command line, the environment or their
properties files.

Flyway: `-url=` (hint `url`), else FLYWAY_URL, else `flyway.url` in the files named by
`-configFiles=` (hint `config`, comma-separated) or flyway.conf / conf/flyway.conf, else
`url` of the environment in flyway.toml (`[environments.NAME]`, NAME from
`-environment=` (hint `env`), `[flyway] environment`, or `default`). `${VAR}` and
`${env.VAR}` placeholders are filled from the environment. User and password come
from `-user=` / FLYWAY_USER / `flyway.user` (and the same for the password) when the
URL has none.

Liquibase: `--url` (hint `url`), else LIQUIBASE_COMMAND_URL, else `url` (or
`liquibase.command.url`) in liquibase.properties or the `--defaults-file` (hint
`config`).

`jdbc:sqlite:` paths are relative to the working folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import SecretStr

from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.formats import parse_properties, parse_toml
from dbguard.discovery.generic import app_env_facts
from dbguard.discovery.model import Context, Found, url_target

__all__ = ["flyway", "liquibase"]

_PLACEHOLDER = re.compile(r"\$\{(?:env\.)?([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: str, env: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise DiscoveryError(f"{where}: {match.group()} names {name}, which is not set")
        return env[name]

    return _PLACEHOLDER.sub(replace, value)


def _add(
    ctx: Context,
    found: Found,
    url: str,
    source: str,
    where: str,
    user: str | None,
    password: str | None,
) -> None:
    target, facts = url_target(url, ctx.cwd, source, where, "url", app_env_facts(ctx.environment()))
    if target is not None and target.engine != "sqlite":
        update: dict[str, object] = {}
        if target.user is None and user:
            update["user"] = user
        if target.password is None and password:
            update["password"] = SecretStr(password)
        target = target.model_copy(update=update) if update else target
    found.add(target, f"{source}: in-memory SQLite, nothing to back up", facts)


def flyway(ctx: Context, found: Found) -> None:
    env = ctx.flat_env
    user = ctx.hints.get("user") or env.get("FLYWAY_USER")
    password = env.get("FLYWAY_PASSWORD")
    if ctx.hints.get("url"):
        _add(ctx, found, ctx.hints["url"], "-url on the command line", "-url", user, password)
        return
    if env.get("FLYWAY_URL"):
        _add(
            ctx,
            found,
            env["FLYWAY_URL"],
            "FLYWAY_URL (the invoking environment)",
            "FLYWAY_URL",
            user,
            password,
        )
        return
    names = (
        [n.strip() for n in ctx.hints["config"].split(",")]
        if ctx.hints.get("config")
        else [
            "flyway.conf",
            "conf/flyway.conf",
        ]
    )
    for name in names:
        text = ctx.read_looked(name, found)
        if text is None:
            continue
        if name.endswith(".toml"):
            _flyway_toml(ctx, found, name, text, user, password)
            return
        values = parse_properties(text, name)
        if "flyway.url" not in values:
            continue
        url, line = values["flyway.url"]
        where = f"{name}, line {line}"
        url = _expand(url, env, where)
        conf_user, user_line = values.get("flyway.user", ("", 0))
        conf_password, password_line = values.get("flyway.password", ("", 0))
        _add(
            ctx,
            found,
            url,
            f"{name} (flyway.url)",
            where,
            user or (_expand(conf_user, env, f"{name}, line {user_line}") if conf_user else None),
            password
            or (
                _expand(conf_password, env, f"{name}, line {password_line}")
                if conf_password
                else None
            ),
        )
        return
    text = ctx.read_looked("flyway.toml", found)
    if text is not None:
        _flyway_toml(ctx, found, "flyway.toml", text, user, password)
        return
    if ctx.operation.framework == "flyway":
        raise DiscoveryError(
            f"flyway: no -url, FLYWAY_URL, {' or '.join(names)} or flyway.toml with a url",
            "pass -url=jdbc:... or write flyway.url in flyway.conf",
        )


def _flyway_toml(
    ctx: Context, found: Found, name: str, text: str, user: str | None, password: str | None
) -> None:
    data = parse_toml(text, name)
    section = data.get("flyway")
    configured = section.get("environment") if isinstance(section, dict) else None
    environment = ctx.hints.get("env") or str(configured or "default")
    environments = data.get("environments")
    entry = environments.get(environment) if isinstance(environments, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        raise DiscoveryError(
            f"{name}: no [environments.{environment}] url",
            f"add url under [environments.{environment}], or pass -url",
        )
    where = f"{name} (environments.{environment}.url)"
    url = _expand(entry["url"], ctx.flat_env, where)
    _add(
        ctx,
        found,
        url,
        where,
        where,
        user or (str(entry["user"]) if entry.get("user") else None),
        password or (str(entry["password"]) if entry.get("password") else None),
    )


def liquibase(ctx: Context, found: Found) -> None:
    env = ctx.flat_env
    user = ctx.hints.get("user") or env.get("LIQUIBASE_COMMAND_USERNAME")
    password = env.get("LIQUIBASE_COMMAND_PASSWORD")
    if ctx.hints.get("url"):
        _add(ctx, found, ctx.hints["url"], "--url on the command line", "--url", user, password)
        return
    if env.get("LIQUIBASE_COMMAND_URL"):
        _add(
            ctx,
            found,
            env["LIQUIBASE_COMMAND_URL"],
            "LIQUIBASE_COMMAND_URL (the invoking environment)",
            "LIQUIBASE_COMMAND_URL",
            user,
            password,
        )
        return
    name = ctx.hints.get("config") or "liquibase.properties"
    text = ctx.read_looked(name, found)
    if text is None:
        if ctx.operation.framework == "liquibase":
            raise DiscoveryError(
                f"liquibase: no --url, LIQUIBASE_COMMAND_URL or {name}",
                "pass --url=jdbc:... or write url in liquibase.properties",
            )
        return
    values = parse_properties(text, name)
    key = next((k for k in ("url", "liquibase.command.url") if k in values), None)
    if key is None:
        raise DiscoveryError(f"{name}: no url", "add url: jdbc:... to it, or pass --url")
    url, line = values[key]
    file_user = (values.get("username") or values.get("liquibase.command.username") or (None, 0))[0]
    file_password = (
        values.get("password") or values.get("liquibase.command.password") or (None, 0)
    )[0]
    _add(
        ctx,
        found,
        _expand(url, env, f"{name}, line {line}"),
        f"{name} ({key})",
        f"{name}, line {line}",
        user or file_user,
        password or file_password,
    )

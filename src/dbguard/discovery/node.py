"""Node.js tools: Knex, Sequelize and TypeORM.

Their configuration is often JavaScript, which dbguard never runs. From a .js/.ts file
only what is unambiguous is taken: a block's `key: value` pairs whose values are string
or number literals or `process.env.X` (optionally `|| 'default'` / `?? 'default'`).
When the database settings are anything else (a function call, a template string, a
variable), DATABASE_URL is used if set, and said so; otherwise the command is denied
with a message naming the file. JSON files are read fully.

The environment is the tool's `--env` (hint `env`), else NODE_ENV, else `test` for a
test run, else `development`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.formats import parse_json
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
from dbguard.engines.base import EngineName
from dbguard.production import Setting, TargetFacts

__all__ = ["knex", "sequelize", "typeorm"]

CLIENTS: dict[str, EngineName] = {
    "pg": "postgres",
    "pg-native": "postgres",
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mysql2": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "better-sqlite3": "sqlite",
}


class Ambiguous(Exception):
    """The settings are code dbguard will not guess at; the message says which."""


@dataclass(frozen=True)
class EnvRef:
    """`process.env.NAME`, with the literal default after `||` / `??`, if any."""

    name: str
    default: str | None = None


# A value read from a config file: plain data, a process.env reference, or code (_Code).
JsValue = Any


def _environment(ctx: Context, variables: Variables) -> tuple[str, str]:
    if ctx.hints.get("env"):
        return ctx.hints["env"], "--env on the command line"
    if variables.get("NODE_ENV"):
        return variables.get("NODE_ENV") or "", f"NODE_ENV, {variables.where('NODE_ENV')}"
    if ctx.is_test:
        return "test", "a test run"
    return "development", "the default"


def _variables(ctx: Context, found: Found, code: str) -> Variables:
    variables = ctx.environment()
    if "dotenv" in code or ctx.read(".env") is not None:
        # Config files commonly require('dotenv').config(); the tools' scripts do too.
        load_env_files(ctx.read, variables, [".env"], found, ctx.flat_env)
    return variables


def _config_file(
    ctx: Context, found: Found, names: list[str], framework: str, absent: str
) -> tuple[str, str] | None:
    """The first of the tool's config files that exists, as (name, text). Where none
    does and the command is the tool's own, DATABASE_URL names the database or the
    command is refused (`absent` says why); for another command, nothing."""
    file = _first_existing(ctx, found, names)
    if file is None and ctx.operation.framework == framework:
        _fallback(ctx, found, names[0], absent, required=True)
    return file


def _first_existing(ctx: Context, found: Found, names: list[str]) -> tuple[str, str] | None:
    for name in names:
        text = ctx.read_looked(name, found)
        if text is not None:
            return name, text
    return None


# ---- Knex -------------------------------------------------------------------------------


def knex(ctx: Context, found: Found) -> None:
    names = (
        [ctx.hints["config"]]
        if ctx.hints.get("config")
        else ["knexfile.js", "knexfile.ts", "knexfile.cjs", "knexfile.mjs", "knexfile.json"]
    )
    file = _config_file(ctx, found, names, "knex", "there is no knexfile")
    if file is None:
        return
    name, text = file
    variables = _variables(ctx, found, text)
    env_name, env_origin = _environment(ctx, variables)
    facts = app_env_facts(variables)
    facts.app_env.append(Setting("NODE_ENV", env_name, env_origin))
    try:
        config = _config_block(name, text, env_name, marker="client")
        client = _literal(config.get("client") or config.get("dialect"), "client")
        engine = CLIENTS.get(client or "")
        if engine is None:
            raise Ambiguous(f"client {client!r} is not one dbguard can back up")
        connection = config.get("connection")
        _add(
            ctx, found, engine, connection, variables, name, env_name, facts, sqlite_key="filename"
        )
    except Ambiguous as why:
        _fallback(
            ctx, found, name, f"{why} (environment {env_name!r}, {env_origin})", required=True
        )


# ---- Sequelize ----------------------------------------------------------------------------


def sequelize(ctx: Context, found: Found) -> None:
    if ctx.hints.get("url"):
        _hint_url(ctx, found)
        return
    config_name = ctx.hints.get("config") or _sequelizerc(ctx, found) or "config/config.json"
    names = (
        [config_name]
        if config_name != "config/config.json"
        else ["config/config.json", "config/config.js"]
    )
    file = _config_file(ctx, found, names, "sequelize", "it does not exist")
    if file is None:
        return
    name, text = file
    variables = _variables(ctx, found, text)
    env_name, env_origin = _environment(ctx, variables)
    facts = app_env_facts(variables)
    facts.app_env.append(Setting("NODE_ENV", env_name, env_origin))
    try:
        config = _config_block(name, text, env_name, marker="dialect")
        env_var = _literal(config.get("use_env_variable"), "use_env_variable")
        if env_var:
            url = variables.get(env_var)
            if not url:
                raise DiscoveryError(
                    f"{name} ({env_name}.use_env_variable) reads the database URL from {env_var}, "
                    "which is not set",
                    f"set {env_var}, so dbguard and Sequelize agree on the database",
                )
            source = f"{name} ({env_name}.use_env_variable) -> {variables.origin(env_var)}"
            target, url_facts = url_target(
                url, ctx.root, source, variables.where(env_var), env_var, facts
            )
            found.add(target, f"{source}: in-memory SQLite", url_facts)
            return
        dialect = _literal(config.get("dialect"), "dialect")
        engine = CLIENTS.get(dialect or "")
        if engine is None:
            raise Ambiguous(f"dialect {dialect!r} is not one dbguard can back up")
        fields = {
            k: config.get(k)
            for k in ("host", "port", "username", "password", "database", "storage")
        }
        _add(ctx, found, engine, fields, variables, name, env_name, facts, sqlite_key="storage")
    except Ambiguous as why:
        _fallback(
            ctx, found, name, f"{why} (environment {env_name!r}, {env_origin})", required=True
        )


def _sequelizerc(ctx: Context, found: Found) -> str | None:
    text = ctx.read_looked(".sequelizerc", found)
    if not text:
        return None
    match = re.search(
        r"""['"]?config['"]?\s*:\s*path\.resolve\(\s*((?:['"][^'"]*['"]\s*,?\s*)+)\)""", text
    )
    if not match:
        return None
    parts = re.findall(r"""['"]([^'"]*)['"]""", match.group(1))
    return "/".join(p.strip("/") for p in parts if p and p != ".") or None


# ---- TypeORM ------------------------------------------------------------------------------


def typeorm(ctx: Context, found: Found) -> None:
    if ctx.hints.get("url"):
        _hint_url(ctx, found)
        return
    names = [ctx.hints["config"]] if ctx.hints.get("config") else ["ormconfig.json", "ormconfig.js"]
    file = _first_existing(ctx, found, names)
    variables = _variables(ctx, found, file[1] if file else "")
    facts = app_env_facts(variables)
    if file is None:
        if variables.get("TYPEORM_URL") or variables.get("TYPEORM_CONNECTION"):
            _typeorm_env(ctx, found, variables, facts)
        elif ctx.operation.framework == "typeorm":
            _fallback(ctx, found, names[0], "it does not exist", required=True)
        return
    name, text = file
    try:
        if name.endswith(".json"):
            data = parse_json(text, name)
            entries = data if isinstance(data, list) else [data]
        else:
            block = _js_object_after(text, r"new\s+DataSource\s*\(") or _js_object_after(
                text, r"(?:module\.exports\s*=|export\s+default)"
            )
            if block is None:
                raise Ambiguous("no object literal with the connection options")
            entries = [_js_fields(block)]
        for entry in entries:
            if not isinstance(entry, dict):
                raise Ambiguous("an entry is not an object")
            url = entry.get("url")
            engine = CLIENTS.get(_literal(entry.get("type"), "type") or "")
            if engine is None:
                raise Ambiguous(f"type {entry.get('type')!r} is not one dbguard can back up")
            fields = (
                url
                if url is not None
                else {k: entry.get(k) for k in ("host", "port", "username", "password", "database")}
            )
            _add(ctx, found, engine, fields, variables, name, "", facts, sqlite_key="database")
    except Ambiguous as why:
        _fallback(ctx, found, name, str(why), required=True)


def _typeorm_env(ctx: Context, found: Found, variables: Variables, facts: TargetFacts) -> None:
    """TypeORM 0.2 reads TYPEORM_* variables when there is no ormconfig file."""
    if variables.get("TYPEORM_URL"):
        url = variables.get("TYPEORM_URL") or ""
        source = variables.origin("TYPEORM_URL")
        target, url_facts = url_target(
            url, ctx.root, source, variables.where("TYPEORM_URL"), "TYPEORM_URL", facts
        )
        found.add(target, f"{source}: in-memory SQLite", url_facts)
        return
    engine = CLIENTS.get(variables.get("TYPEORM_CONNECTION") or "")
    if engine is None:
        raise DiscoveryError(
            f"{variables.where('TYPEORM_CONNECTION')}: TYPEORM_CONNECTION="
            f"{variables.get('TYPEORM_CONNECTION')} is not an engine dbguard can back up"
        )
    keys = (
        "TYPEORM_CONNECTION",
        "TYPEORM_HOST",
        "TYPEORM_PORT",
        "TYPEORM_DATABASE",
        "TYPEORM_USERNAME",
    )
    source = variables.origin(*keys)
    if engine == "sqlite":
        found.add(
            sqlite_target(variables.get("TYPEORM_DATABASE") or "", ctx.root, source),
            f"{source}: in-memory SQLite",
            facts,
        )
        return
    target = server_target(
        engine,
        host=variables.get("TYPEORM_HOST"),
        port=variables.get("TYPEORM_PORT"),
        name=variables.get("TYPEORM_DATABASE"),
        user=variables.get("TYPEORM_USERNAME"),
        password=variables.get("TYPEORM_PASSWORD"),
        source=source,
        where=variables.where("TYPEORM_PORT"),
    )
    found.add(target, facts=facts)


# ---- Drizzle Kit ---------------------------------------------------------------------------

DRIZZLE_CONFIGS = (
    "drizzle.config.ts",
    "drizzle.config.js",
    "drizzle.config.mjs",
    "drizzle.config.cjs",
    "drizzle.config.json",
)
# dialect (drizzle-kit 0.21 and later) or driver (before) -> engine
_DRIZZLE_DIALECTS: dict[str, EngineName] = {
    "postgresql": "postgres",
    "pg": "postgres",
    "mysql": "mysql",
    "mysql2": "mysql",
    "singlestore": "mysql",
    "sqlite": "sqlite",
    "better-sqlite": "sqlite",
    "turso": "sqlite",  # a local file: libsql:// is a server dbguard cannot back up
}


def drizzle(ctx: Context, found: Found) -> None:
    """drizzle-kit's database: `--url`, else `dbCredentials` in drizzle.config.*."""
    if ctx.hints.get("url"):
        _hint_url(ctx, found)
        return
    names = [ctx.hints["config"]] if ctx.hints.get("config") else list(DRIZZLE_CONFIGS)
    file = _config_file(ctx, found, names, "drizzle", "it does not exist")
    if file is None:
        return
    name, text = file
    variables = _variables(ctx, found, text)
    facts = app_env_facts(variables)
    try:
        if name.endswith(".json"):
            config = parse_json(text, name)
        else:
            code = _strip_comments(text)
            block = _js_object_after(code, r"defineConfig\s*\(") or _js_object_after(
                code, r"(?:module\.exports\s*=|export\s+default)"
            )
            if block is None:
                raise Ambiguous("no object literal with the connection options")
            config = _js_fields(block)
        if not isinstance(config, dict):
            raise Ambiguous("the top level is not an object")
        dialect = _literal(config.get("dialect") or config.get("driver"), "dialect") or ""
        engine = _DRIZZLE_DIALECTS.get(dialect)
        if engine is None:
            raise Ambiguous(f"dialect {dialect!r} is not one dbguard can back up")
        credentials = config.get("dbCredentials")
        if not isinstance(credentials, dict):
            raise Ambiguous("dbCredentials is not an object literal")
        url = credentials.get("url", credentials.get("connectionString"))
        if engine == "sqlite" and isinstance(url, str) and ":" not in url.removeprefix("file:"):
            path = url.removeprefix("file:")  # drizzle-kit opens it from where it runs
            found.add(sqlite_target(path, ctx.root, f"{name} dbCredentials.url"), facts=facts)
            return
        connection = url if url is not None else credentials
        _add(ctx, found, engine, connection, variables, name, "", facts, sqlite_key="url")
    except Ambiguous as why:
        # Only drizzle-kit itself needs its database: a test run has other ways to one.
        _fallback(ctx, found, name, str(why), required=ctx.operation.framework == "drizzle")


# ---- shared --------------------------------------------------------------------------------


def _hint_url(ctx: Context, found: Found) -> None:
    url = ctx.hints["url"]
    source = "--url on the command line"
    target, facts = url_target(
        url, ctx.cwd, source, source, "--url", app_env_facts(ctx.environment())
    )
    found.add(target, f"{source}: in-memory SQLite", facts)


def _add(
    ctx: Context,
    found: Found,
    engine: EngineName,
    connection: JsValue,
    variables: Variables,
    file: str,
    env_name: str,
    facts: TargetFacts,
    *,
    sqlite_key: str,
) -> None:
    where = f"{file} ({env_name})" if env_name else file
    if isinstance(connection, _Code):
        raise Ambiguous(f"the connection is code ({connection[:40]})")
    if isinstance(connection, (str, EnvRef)):
        url = _value(connection, variables, "connection")
        if url is None:
            raise Ambiguous(f"the connection comes from {_describe(connection)}, which is not set")
        origin = (
            f"{where} -> {variables.origin(connection.name)}"
            if isinstance(connection, EnvRef)
            else where
        )
        url_where = (
            variables.where(connection.name)
            if isinstance(connection, EnvRef) and connection.name in variables
            else where
        )
        target, url_facts = url_target(
            url,
            ctx.root,
            origin,
            url_where,
            connection.name if isinstance(connection, EnvRef) else "connection",
            facts,
        )
        found.add(target, f"{origin}: in-memory SQLite", url_facts)
        return
    if not isinstance(connection, dict):
        raise Ambiguous("the connection settings are not a string or an object literal")
    values = {key: _value(raw, variables, key) for key, raw in connection.items()}
    if engine == "sqlite":
        filename = values.get(sqlite_key)
        if not filename:
            raise Ambiguous(f"no {sqlite_key} for the SQLite database")
        # Knex and Sequelize open relative paths from the working folder (the project root
        # for their CLIs).
        found.add(
            sqlite_target(filename, ctx.root, f"{where} {sqlite_key}"),
            f"{where}: in-memory SQLite",
            facts,
        )
        return
    for key, attribute in (("host", "host"), ("database", "name")):
        if values.get(key):
            facts.fields[attribute] = Setting(f"{key}", values[key] or "", where)
    target = server_target(
        engine,
        host=values.get("host") or "localhost",
        port=values.get("port"),
        name=values.get("database"),
        user=values.get("user") or values.get("username"),
        password=values.get("password"),
        socket=values.get("socketPath") or values.get("socket"),
        source=where,
        where=where,
    )
    if not target.name:
        raise Ambiguous("no database name in the connection settings")
    found.add(target, facts=facts)


def _value(raw: JsValue, variables: Variables, key: str) -> str | None:
    if isinstance(raw, _Code):
        raise Ambiguous(f"{key} is code ({raw[:40]})")
    if raw is None:
        return None
    if isinstance(raw, EnvRef):
        return variables.get(raw.name) or raw.default
    if isinstance(raw, (str, int)) and not isinstance(raw, bool):
        return str(raw)
    raise Ambiguous(f"{key} is not a literal or process.env value")


def _literal(raw: JsValue, key: str) -> str | None:
    if isinstance(raw, _Code):
        raise Ambiguous(f"{key} is code ({raw[:40]})")
    if raw is None or isinstance(raw, str):
        return raw
    raise Ambiguous(f"{key} is not a literal")


def _describe(raw: JsValue) -> str:
    return f"process.env.{raw.name}" if isinstance(raw, EnvRef) else repr(raw)


def _fallback(ctx: Context, found: Found, file: str, why: str, *, required: bool) -> None:
    variables = ctx.environment()
    load_env_files(ctx.read, variables, [".env"], found, ctx.flat_env)
    url = variables.get("DATABASE_URL")
    if url:
        source = (
            f"DATABASE_URL ({variables.where('DATABASE_URL')}) — {file}: {why}, so DATABASE_URL "
            "is used"
        )
        target, facts = url_target(
            url,
            ctx.root,
            source,
            variables.where("DATABASE_URL"),
            "DATABASE_URL",
            app_env_facts(variables),
        )
        found.add(target, f"{source}: in-memory SQLite", facts)
        return
    if required:
        raise DiscoveryError(
            f"{file}: {why}; dbguard does not run code to find out, and DATABASE_URL is not set",
            "use a literal connection string or process.env.X in it, set DATABASE_URL, or name "
            "the database in .dbguard.toml",
        )


def _config_block(name: str, text: str, env_name: str, *, marker: str) -> Mapping[str, Any]:
    """The settings for `env_name`: `{env: {...}}` or a single config with `marker`."""
    if name.endswith(".json"):
        data = parse_json(text, name)
        if not isinstance(data, dict):
            raise Ambiguous("the top level is not an object")
        if isinstance(data.get(env_name), dict):
            return dict(data[env_name])
        if marker in data:
            return data
        raise Ambiguous(f"no {env_name!r} settings in it")
    code = _strip_comments(text)
    block = _js_object_after(code, rf"""(?:^|[\s,{{])['"]?{re.escape(env_name)}['"]?\s*:""")
    if block is not None:
        return _js_fields(block)
    top = _js_object_after(code, r"(?:module\.exports\s*=|export\s+default|=)")
    if top is not None:
        fields = _js_fields(top)
        if marker in fields:
            return fields
    raise Ambiguous(f"no {env_name!r} settings that dbguard can read without running the file")


# ---- reading JavaScript object literals, conservatively -------------------------------------

_JS_STRING = r"""(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
_ENV_REF = re.compile(
    rf"""process\.env(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*({_JS_STRING})\s*\])"""
    rf"""(?:\s*(?:\|\||\?\?)\s*({_JS_STRING}|\d+))?"""
)


def _strip_comments(text: str) -> str:
    out, index = [], 0
    pattern = re.compile(rf"{_JS_STRING}|`(?:[^`\\]|\\.)*`|//[^\n]*|/\*.*?\*/", re.DOTALL)
    for match in pattern.finditer(text):
        out.append(text[index : match.start()])
        token = match.group()
        out.append(" " if token.startswith(("//", "/*")) else token)
        index = match.end()
    out.append(text[index:])
    return "".join(out)


def _js_object_after(code: str, prefix: str) -> str | None:
    """The text inside the first `{...}` that follows `prefix`, braces balanced."""
    match = re.search(prefix + r"\s*\{", code, re.MULTILINE)
    if match is None:
        return None
    start = match.end()
    depth, index = 1, start
    while index < len(code):
        char = code[index]
        if char in "'\"`":
            end = _string_end(code, index)
            index = end
            continue
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
            if depth == 0:
                return code[start:index]
        index += 1
    return None


def _string_end(code: str, start: int) -> int:
    quote, index = code[start], start + 1
    while index < len(code) and code[index] != quote:
        index += 2 if code[index] == "\\" else 1
    return index + 1


def _split_top(block: str) -> list[str]:
    parts, depth, current, index = [], 0, [], 0
    while index < len(block):
        char = block[index]
        if char in "'\"`":
            end = _string_end(block, index)
            current.append(block[index:end])
            index = end
            continue
        if char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _js_fields(block: str) -> dict[str, Any]:
    """Top-level `key: value` pairs; values that are not plain data become Ambiguous
    markers (raised only if the caller needs that key)."""
    fields: dict[str, Any] = {}
    for part in _split_top(block):
        match = re.match(rf"""^({_JS_STRING}|[A-Za-z_$][\w$]*)\s*:\s*(.*)$""", part, re.DOTALL)
        if match is None:
            continue  # a spread or shorthand: not a value we need to read
        key = match.group(1).strip("'\"")
        fields[key] = _js_value(match.group(2).strip())
    return fields


class _Code(str):
    """A value that is code: raising Ambiguous when used."""


def _js_value(text: str) -> Any:
    text = text.removesuffix("!").rstrip()  # TypeScript's non-null assertion
    if re.fullmatch(_JS_STRING, text):
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text in ("null", "undefined"):
        return None
    env = _ENV_REF.fullmatch(text)
    if env:
        name = env.group(1) or env.group(2)[1:-1]
        default = env.group(3)
        return EnvRef(name, default.strip("'\"") if default else None)
    if text.startswith("{") and text.endswith("}"):
        return _js_fields(text[1:-1])
    return _Code(text)

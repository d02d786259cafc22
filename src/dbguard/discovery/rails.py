"""Rails: `config/database.yml` for the environment the command runs in.

The environment is `--env`/RAILS_ENV=... (hint `env`), else RAILS_ENV, else RACK_ENV,
else `test` for a test run, else `development`: Rails' own order. `<NAME>_DATABASE_URL`
overrides the database of that name (PRIMARY_DATABASE_URL the `primary` one, and
DATABASE_URL too, but no other: a first database named `main` keeps its own settings),
field by field, as Rails merges it; a `url:` key does the same from the file.
Multi-database environments (`primary:`, `animals:` ...) yield every database;
`replica: true` entries are read-only copies and are skipped.

ERB is not run. The forms database.yml files use are evaluated against the environment:
`<%= ENV["X"] %>`, `<%= ENV.fetch("X") { default } %>`, `<%= ENV.fetch("X", default) %>`,
`<%= ENV["X"] || default %>` (defaults: strings, numbers, nil or another of these).
Anything else is only an error when it sits in a setting that decides the database
(`pool: <%= Concurrent.processor_count %>` is harmless). Control tags (`<% if %>`) are
errors: which lines count would depend on code. When the Gemfile has dotenv, `.env`
files are loaded in dotenv-rails' order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.formats import parse_yaml
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
from dbguard.engines.base import EngineName, Target
from dbguard.production import Setting, TargetFacts

__all__ = ["rails"]

DATABASE_YML = "config/database.yml"
ADAPTERS: dict[str, EngineName] = {
    "postgresql": "postgres",
    "postgis": "postgres",
    "mysql2": "mysql",
    "trilogy": "mysql",
    "sqlite3": "sqlite",
}
_CONFIG_KEYS = {"adapter", "database", "url", "host", "username", "port"}
_DECIDING = (
    "adapter",
    "database",
    "url",
    "host",
    "port",
    "socket",
    "username",
    "password",
    "sslmode",
    "replica",
)


# Tasks ActiveRecord runs on the test database as well when the environment is
# development (DatabaseTasks.each_current_configuration), unless DATABASE_URL or
# SKIP_TEST_DATABASE is set: `bin/rails db:reset` resets blog_test too.
_ALSO_ON_TEST = frozenset(
    {
        "db:create",
        "db:drop",
        "db:drop:_unsafe",
        "db:drop:all",
        "db:migrate:reset",
        "db:purge",
        "db:reset",
        "db:setup",
        "db:prepare",
        "db:schema:load",
        "db:structure:load",
        "db:truncate_all",
    }
)


@dataclass
class _Erb:
    """One `<%= ... %>` tag: its line and value (None when dbguard cannot evaluate it)."""

    line: int
    code: str
    value: str | None
    resolved: bool


def rails(ctx: Context, found: Found) -> None:
    text = ctx.read_looked(DATABASE_YML, found)
    variables = _variables(ctx, found)
    rails_env, env_origin = _environment(ctx, variables)
    facts = app_env_facts(variables)
    facts.app_env.append(Setting("RAILS_ENV", rails_env, env_origin))
    if text is None:
        # rspec outside Rails (a gem's specs) is left to the test-run rules.
        rails_command = ctx.operation.framework == "rails" and not ctx.is_test
        if rails_command and not variables.get("DATABASE_URL"):
            raise DiscoveryError(
                f"{DATABASE_YML}: no such file, and DATABASE_URL is not set",
                "run the command from the Rails project folder",
            )
        return
    tags: list[_Erb] = []
    data = parse_yaml(_substitute_erb(text, variables, tags), DATABASE_YML)
    if not isinstance(data, dict):
        raise DiscoveryError(f"{DATABASE_YML}: expected a mapping of environments")
    config = data.get(rails_env)
    if config is None:
        if variables.get("DATABASE_URL"):
            return  # Rails runs on DATABASE_URL alone; generic.py backs it up
        raise DiscoveryError(
            f"{DATABASE_YML}: no {rails_env!r} environment ({env_origin})",
            f"add {rails_env}: to {DATABASE_YML}, or set RAILS_ENV to one it has",
        )
    _add_environment(ctx, found, config, rails_env, env_origin, tags, variables, facts)
    tasks = set(ctx.operation.command.split())
    also_test = (
        rails_env == "development"
        and tasks & _ALSO_ON_TEST
        and not variables.get("DATABASE_URL")
        and not variables.get("SKIP_TEST_DATABASE")
        and isinstance(data.get("test"), dict)
    )
    if also_test:
        test_facts = facts.environment()
        test_facts.app_env.append(Setting("RAILS_ENV", "test", "Rails"))
        origin = f"Rails runs {' '.join(sorted(tasks & _ALSO_ON_TEST))} on it too in development"
        _add_environment(ctx, found, data["test"], "test", origin, tags, variables, test_facts)


def _add_environment(
    ctx: Context,
    found: Found,
    config: Any,
    rails_env: str,
    env_origin: str,
    tags: list[_Erb],
    variables: Variables,
    facts: TargetFacts,
) -> None:
    """Every database of one environment of database.yml."""
    if not isinstance(config, dict):
        raise DiscoveryError(f"{DATABASE_YML}: {rails_env} is not a mapping")
    if _CONFIG_KEYS & set(config) or not all(isinstance(v, dict) for v in config.values()):
        named = {"primary": config}
        three_tier = False
    else:
        named = config
        three_tier = True
    for name, entry in named.items():
        if not isinstance(entry, dict):
            raise DiscoveryError(f"{DATABASE_YML}: {rails_env}.{name} is not a mapping")
        path = f"{rails_env}.{name}" if three_tier else rails_env
        resolved = _resolve_erb(entry, tags, path)
        if resolved.get("replica") in (True, "true"):
            found.notes.append(f"{DATABASE_YML} ({path}) is a read replica: nothing to back up")
            continue
        # ActiveRecord's environment_value_for: <NAME>_DATABASE_URL, then DATABASE_URL for
        # the database named `primary` only (a two-tier environment's one database is it).
        candidates = [f"{str(name).upper()}_DATABASE_URL"]
        if name == "primary":
            candidates.append("DATABASE_URL")
        url_variable = next((v for v in candidates if variables.get(v)), candidates[-1])
        _add(ctx, found, resolved, path, variables, url_variable, facts, env_origin)


def _variables(ctx: Context, found: Found) -> Variables:
    variables = ctx.environment()
    gemfile = ctx.read_looked("Gemfile", found) or ""
    if re.search(r"""^\s*gem\s+['"]dotenv(-rails)?['"]""", gemfile, re.MULTILINE):
        env = (
            ctx.hints.get("env")
            or variables.get("RAILS_ENV")
            or ("test" if ctx.is_test else "development")
        )
        files = [
            f".env.{env}.local",
            *([] if env == "test" else [".env.local"]),
            f".env.{env}",
            ".env",
        ]
        load_env_files(ctx.read, variables, files, found, ctx.flat_env)
    return variables


def _environment(ctx: Context, variables: Variables) -> tuple[str, str]:
    hinted = ctx.hints.get("env")
    if hinted:
        return hinted, "the command line"
    for name in ("RAILS_ENV", "RACK_ENV"):
        value = variables.get(name)
        if value:
            return value, f"{name}, {variables.where(name)}"
    if ctx.is_test:
        return "test", "a test run"
    return "development", "Rails' default"


def _add(
    ctx: Context,
    found: Found,
    entry: Mapping[str, Any],
    path: str,
    variables: Variables,
    url_variable: str,
    base_facts: TargetFacts,
    env_origin: str,
) -> None:
    where = f"{DATABASE_YML} ({path})"
    source = f"{where}, environment from {env_origin}"
    facts = base_facts.environment()
    url, url_where = None, ""
    if variables.get(url_variable):
        url, url_where = variables.get(url_variable), variables.where(url_variable)
        source = f"{url_variable} ({url_where}) over {source}"
    elif entry.get("url"):
        url, url_where = str(entry["url"]), f"{where} url"
    if url:
        target, facts = url_target(
            url,
            ctx.root,
            source,
            url_where,
            url_variable if variables.get(url_variable) else f"{path}.url",
            facts,
        )
        if target is None:
            found.notes.append(f"{source}: in-memory SQLite, nothing to back up")
            return
        found.add(_fill(target, entry), facts=facts)
        return
    adapter = str(entry.get("adapter") or "")
    engine = ADAPTERS.get(adapter)
    if engine is None:
        raise DiscoveryError(
            f"{where}: adapter {adapter!r} is not one dbguard can back up",
            "dbguard supports postgresql, mysql2, trilogy and sqlite3",
        )
    database = entry.get("database")
    if engine == "sqlite":
        target = sqlite_target(str(database or ""), ctx.root, source)
        if target is None:
            found.notes.append(f"{source}: in-memory SQLite, nothing to back up")
            return
        facts.fields["path"] = Setting(f"{path}.database", target.path or "", DATABASE_YML)
        found.add(target, facts=facts)
        return
    for key, attribute in (("host", "host"), ("database", "name")):
        if entry.get(key):
            facts.fields[attribute] = Setting(f"{path}.{key}", str(entry[key]), DATABASE_YML)
    params = {"sslmode": str(entry["sslmode"])} if entry.get("sslmode") else {}
    target = server_target(
        engine,
        host=_str(entry.get("host")),
        port=_str(entry.get("port")),
        name=_str(database),
        user=_str(entry.get("username")),
        password=_str(entry.get("password")),
        socket=_str(entry.get("socket")),
        params=params,
        source=source,
        where=where,
    )
    if engine == "mysql" and target.host is None and target.socket is None:
        target = target.model_copy(update={"host": "localhost"})
    found.add(target, facts=facts)


def _fill(target: Target, entry: Mapping[str, Any]) -> Target:
    """Rails merges a URL over the file's settings: what the URL leaves out, they give."""
    update: dict[str, Any] = {}
    for key, attribute in (
        ("host", "host"),
        ("username", "user"),
        ("database", "name"),
        ("socket", "socket"),
    ):
        if getattr(target, attribute) is None and entry.get(key) and target.engine != "sqlite":
            update[attribute] = str(entry[key])
    if target.engine != "sqlite" and target.port is None and str(entry.get("port") or "").isdigit():
        update["port"] = int(str(entry["port"]))
    return target.model_copy(update=update) if update else target


def _str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


# ---- ERB ----------------------------------------------------------------------------------

_TAG = re.compile(r"<%(?P<kind>[=#-]?)(?P<code>.*?)-?%>", re.DOTALL)
_PLACEHOLDER = re.compile(r"__dbguard_erb_(\d+)__")
_STRING = r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""


def _substitute_erb(text: str, variables: Variables, tags: list[_Erb]) -> str:
    def replace(match: re.Match[str]) -> str:
        line = text.count("\n", 0, match.start()) + 1
        kind, code = match.group("kind"), match.group("code").strip()
        if kind == "#":
            return ""
        if kind != "=":
            raise DiscoveryError(
                f"{DATABASE_YML}, line {line}: ERB code <% {code[:60]} %> decides which "
                "settings apply; dbguard does not run code",
                "use plain values or <%= ENV[...] %>, or name the database in .dbguard.toml",
            )
        resolved, value = _evaluate(code, variables)
        tags.append(_Erb(line, code, value, resolved))
        return f"__dbguard_erb_{len(tags) - 1}__"

    return _TAG.sub(replace, text)


def _evaluate(code: str, variables: Variables) -> tuple[bool, str | None]:
    """(understood, value) for the ERB expressions database.yml files use."""
    code = re.sub(r"\.(to_s|to_i|presence|strip)\b", "", code.strip())
    if "||" in code:
        left, _, right = code.partition("||")
        ok, value = _evaluate(left, variables)
        if ok and value:
            return True, value
        return _evaluate(right, variables) if ok else (False, None)
    match = re.fullmatch(rf"ENV\s*\[\s*({_STRING})\s*\]", code)
    if match:
        return True, variables.get(_unquote(match.group(1)))
    match = re.fullmatch(
        rf"ENV\.fetch\(\s*({_STRING})\s*(?:,\s*(.+?))?\s*\)\s*(?:\{{(.*)\}})?", code, re.DOTALL
    )
    if match:
        value = variables.get(_unquote(match.group(1)))
        if value is not None:
            return True, value
        default = match.group(2) or (match.group(3) or "").strip()
        default = re.sub(r"^\|\s*\w*\s*\|", "", default).strip()
        if not default:
            return True, None  # ENV.fetch without a default raises: Rails would fail
        return _evaluate(default, variables)
    if re.fullmatch(_STRING, code):
        return True, _unquote(code)
    if re.fullmatch(r"-?\d+", code):
        return True, code
    if code == "nil":
        return True, None
    return False, None


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def _resolve_erb(entry: Mapping[str, Any], tags: list[_Erb], path: str) -> dict[str, Any]:
    """The entry with placeholders replaced by their values; an ERB tag dbguard could not
    evaluate is an error in a setting that decides the database, dropped elsewhere."""
    result: dict[str, Any] = {}
    for key, value in entry.items():
        if not isinstance(value, str) or not _PLACEHOLDER.search(value):
            result[key] = value
            continue
        unresolved = [
            tags[int(i)] for i in _PLACEHOLDER.findall(value) if not tags[int(i)].resolved
        ]
        if unresolved:
            if key in _DECIDING:
                tag = unresolved[0]
                raise DiscoveryError(
                    f"{DATABASE_YML}, line {tag.line}: {path}.{key} is <%= {tag.code[:60]} %>, "
                    "which dbguard cannot evaluate without running code",
                    "use <%= ENV[...] %> / ENV.fetch, or name the database in .dbguard.toml",
                )
            continue
        missing = [tags[int(i)] for i in _PLACEHOLDER.findall(value) if tags[int(i)].value is None]
        if missing and value.strip() == f"__dbguard_erb_{tags.index(missing[0])}__":
            continue  # nil: the setting is absent, as Rails sees it
        result[key] = _PLACEHOLDER.sub(lambda m: tags[int(m.group(1))].value or "", value)
    return result

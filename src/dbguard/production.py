"""Is a database production, and why?

Pure: `classify_production` reads only its arguments. The daemon asks it about every
target discovery found; a production target is never touched by a caller without a human
at a keyboard (the approval flow, which builds on the `Verdict` returned here).

Signals, strongest first:

1. The marker stored inside the database itself (`dbguardctl mark production|development`,
   read by the engine and passed in as `marker`). It travels with the data, so it outranks
   names and hosts: a copy of production restored onto a laptop and marked `development`
   is not production because its host is `db.prod.internal` in an old `.env`, and a
   database marked `production` is production wherever it lives.
2. The project marking it production (`.dbguard.toml`, passed in as `facts.marked`), and
   the settings' `production_hosts` / `every_database`: explicit declarations.
3. An application environment saying production: APP_ENV, RAILS_ENV, RACK_ENV, NODE_ENV,
   DJANGO_ENV, FLASK_ENV or ENVIRONMENT (or the settings' own names) equal to `production`
   or `prod`, in the invoking environment or in a file discovery read (`facts.app_env`,
   `facts.variables`), overridden or not. A `development` marker does not silence these:
   the run itself says it is production, so a human looks first.
4. Names: the database or host name containing a configured pattern (default: prod,
   production, live) as a word or segment, so `app_prod` and `prod-db.example.com` match
   but `product_catalog` does not. For SQLite, the file name and its folder's name.
5. A server host that is not a development host (default: localhost, loopback addresses,
   Unix sockets, *.local, *.test, *.localhost, host.docker.internal and single-label
   docker-compose service names such as `db` or `postgres`). SQLite files are local, so
   this signal never applies to them.

Signals 4 and 5 are what a `development` marker outranks. Nothing here turns a signal
off: settings can only describe which names and hosts count, and a project's
`.dbguard.toml` can only add to them (see project_config.py).

Every verdict carries its reasons in plain words, e.g. "production because
DB_HOST=db.prod.example.com is not a development host (.env, line 4)".
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dbguard.engines.base import Marker, Target

__all__ = [
    "Marker",
    "ProductionSettings",
    "Setting",
    "TargetFacts",
    "Verdict",
    "classify_production",
    "name_matches",
]


# The origin discovery and this module give to values from the invoking environment.
INVOKING_ENV = "the invoking environment"

DEFAULT_APP_ENV_VARIABLES = (
    "APP_ENV",
    "RAILS_ENV",
    "RACK_ENV",
    "NODE_ENV",
    "DJANGO_ENV",
    "FLASK_ENV",
    "ENVIRONMENT",
)
DEFAULT_PRODUCTION_VALUES = ("production", "prod")
# Set by AI coding agents in the commands they run: such a caller is never treated as a
# human at a keyboard, even when it has a (pseudo-)terminal.
DEFAULT_AGENT_VARIABLES = (
    "CLAUDECODE",
    "CLAUDE_CODE_ENTRYPOINT",
    "CURSOR_AGENT",
    "GEMINI_CLI",
    "CODEX_SANDBOX",
    "CODEX_SANDBOX_NETWORK_DISABLED",
    "AI_AGENT",
    "AGENT",
)
# AI coding agents' command-line programs: a command run under one of them (however
# many shells and package scripts lie between) is the agent's, whatever its variables.
# Names other tools also go by are left out (goose is a migration tool too).
DEFAULT_AGENT_PROGRAMS = (
    "claude",
    "codex",
    "gemini",
    "cursor-agent",
    "aider",
    "opencode",
    "copilot",
    "qwen",
    "crush",
)
DEFAULT_NAME_PATTERNS = ("prod", "production", "live")
DEFAULT_DEVELOPMENT_HOSTS = (
    "localhost",
    "127.0.0.1",
    "::1",
    "*.local",
    "*.test",
    "*.localhost",
    # The host machine as seen from inside a container: still the developer's machine.
    "host.docker.internal",
)


class ProductionSettings(BaseModel):
    """What counts as production. The defaults are the documented ones; the user's
    config may change them, a project's `.dbguard.toml` may only add to them.

    app_env_variables      variables naming the application environment
    production_values      values of those variables that mean production (any case)
    name_patterns          words that make a database, host or SQLite file name production;
                           matched against words/segments, `*` and `?` globs allowed
    development_hosts      hosts that are the developer's own (globs, any case); loopback
                           addresses and Unix sockets always are
    single_label_hosts_are_development
                           treat `db`, `mysql`, `postgres`... (no dot) as docker service names
    production_hosts       hosts that are always production (globs)
    sqlite_production_paths
                           globs on the absolute path of SQLite files that are production
    every_database         every database is production (a project that only talks to one)
    agent_variables        environment variables that mark the caller as an AI agent
    agent_programs         programs that mark a command run under them as an AI agent's
    approval_minutes       how long an approval code (and an approval) stays valid
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_env_variables: tuple[str, ...] = DEFAULT_APP_ENV_VARIABLES
    production_values: tuple[str, ...] = DEFAULT_PRODUCTION_VALUES
    name_patterns: tuple[str, ...] = DEFAULT_NAME_PATTERNS
    development_hosts: tuple[str, ...] = DEFAULT_DEVELOPMENT_HOSTS
    single_label_hosts_are_development: bool = True
    production_hosts: tuple[str, ...] = ()
    sqlite_production_paths: tuple[str, ...] = ()
    every_database: bool = False
    agent_variables: tuple[str, ...] = DEFAULT_AGENT_VARIABLES
    agent_programs: tuple[str, ...] = DEFAULT_AGENT_PROGRAMS
    approval_minutes: float = Field(5, gt=0, le=60)

    @field_validator("name_patterns", "production_values", "app_env_variables")
    @classmethod
    def _not_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not item.strip():
                raise ValueError("entries must not be empty")
        return value


@dataclass(frozen=True)
class Setting:
    """One configuration value and where it was read: ('DB_HOST', 'db1', '.env, line 4').
    `in_file`: a project file gave it, not the run (its environment, command line)."""

    name: str
    value: str
    origin: str
    in_file: bool = False

    def __str__(self) -> str:
        return f"{self.name}={self.value} ({self.origin})"


@dataclass
class TargetFacts:
    """What discovery learned around a target that bears on production.

    app_env    application-environment settings the framework's own rules chose for the
               run that reaches this target, e.g. RAILS_ENV=test ("Rails")
    variables  lookups into the variables of that run (its environment, command line and
               the files read): every value a name has, in force or overridden. Which
               names mean the application environment is the settings' call.
    fields     which setting gave the target's host / name / path / socket, so a reason
               can name it ("DB_HOST=... (.env, line 4)")
    marked     why the project declares it production (a `.dbguard.toml` entry), if it does
    """

    app_env: list[Setting] = field(default_factory=list)
    variables: list[Callable[[str], list[Setting]]] = field(default_factory=list)
    fields: dict[str, Setting] = field(default_factory=dict)
    marked: list[str] = field(default_factory=list)

    def merge(self, other: TargetFacts) -> None:
        self.app_env.extend(s for s in other.app_env if s not in self.app_env)
        self.variables.extend(v for v in other.variables if v not in self.variables)
        for name, setting in other.fields.items():
            self.fields.setdefault(name, setting)
        self.marked.extend(m for m in other.marked if m not in self.marked)

    def environment(self) -> TargetFacts:
        """The run's application environment alone, for another database of that run."""
        return TargetFacts(list(self.app_env), list(self.variables))


@dataclass(frozen=True)
class Verdict:
    """`production` and the plain-words reasons for it (never empty).

    When production, every reason starts with "production because"; when not, the
    reasons say which signals were checked and found absent or outranked. `lasting`:
    those of its reasons that the project's own files give (a `.dbguard.toml` entry, an
    APP_ENV=production in `.env`), which dbguardd remembers (dbguard.marks), so that
    editing the file does not end them.
    """

    production: bool
    reasons: list[str]
    lasting: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(self.reasons)


def classify_production(
    target: Target,
    env: Mapping[str, str],
    settings: ProductionSettings | None = None,
    *,
    marker: Marker | None = None,
    facts: TargetFacts | None = None,
    project_root: str | None = None,
) -> Verdict:
    """Whether `target` is production and why.

    `env` is the invoking environment (with the command's own VAR=value assignments);
    `marker` the value the engine read from the database's own marker (None when it has
    none or could not be read); `facts` what discovery recorded for the target;
    `project_root` the project's folder, whose own name says nothing about the data.
    """
    settings = settings or ProductionSettings()
    facts = facts or TargetFacts()
    strong: list[str] = []  # signals a development marker does not outrank
    named: list[str] = []  # names and hosts, which it does
    if marker == "production":
        strong.append("production because the database itself is marked production")
    strong.extend(f"production because {why}" for why in facts.marked)
    if settings.every_database:
        strong.append("production because the settings treat every database as production")
    app_env = _app_env_settings(env, facts, settings)
    strong.extend(f"production because {setting}" for setting in app_env)
    lasting = [
        *facts.marked,
        *(str(setting) for setting in app_env if setting.in_file),
    ]
    if target.engine == "sqlite":
        named.extend(_sqlite_reasons(target, settings, project_root))
        strong.extend(_production_path_reasons(target, settings))
    else:
        host_reasons, host_notes = _host_reasons(target, facts, settings)
        strong.extend(_production_host_reasons(target, facts, settings))
        named.extend(_name_reasons(target, facts, settings))
        named.extend(host_reasons)
    if strong or (named and marker != "development"):
        reasons = _unique([*strong, *([] if marker == "development" else named)])
        return Verdict(True, reasons, _unique(lasting))
    if marker == "development":
        outranked = "; ".join(r.removeprefix("production because ") for r in named)
        if outranked:
            return Verdict(
                False,
                [
                    "not production: the database itself is marked development, which "
                    f"outranks its names and host ({outranked})"
                ],
            )
        return Verdict(False, ["not production: the database itself is marked development"])
    return Verdict(
        False, [_no_signal(target, settings, host_notes if target.engine != "sqlite" else [])]
    )


# ---- signals ---------------------------------------------------------------------------


def _app_env_settings(
    env: Mapping[str, str], facts: TargetFacts, settings: ProductionSettings
) -> list[Setting]:
    """The application-environment settings of the run that say production."""
    values = {v.lower() for v in settings.production_values}
    seen = [
        *(Setting(n, env[n], INVOKING_ENV) for n in settings.app_env_variables if n in env),
        *(s for lookup in facts.variables for n in settings.app_env_variables for s in lookup(n)),
        # Settings under the framework's own names ("RAILS_ENV", "config.php app.env").
        *facts.app_env,
    ]
    return [setting for setting in seen if setting.value.strip().lower() in values]


def _name_reasons(target: Target, facts: TargetFacts, settings: ProductionSettings) -> list[str]:
    reasons = []
    if target.name:
        pattern = name_matches(target.name, settings.name_patterns)
        if pattern:
            reasons.append(
                f"production because the database name {_shown('name', target.name, facts)} "
                f"matches {pattern!r}"
            )
    host = _host(target)
    if host and not host.startswith("/"):
        pattern = name_matches(host, settings.name_patterns)
        if pattern:
            reasons.append(
                f"production because the host {_shown('host', host, facts)} matches {pattern!r}"
            )
    return reasons


def _host_reasons(
    target: Target, facts: TargetFacts, settings: ProductionSettings
) -> tuple[list[str], list[str]]:
    """(production reasons, notes on why the host is a development host)."""
    if target.socket:
        return [], [f"it is reached through the Unix socket {target.socket}"]
    host = _host(target)
    if not host:
        return [], ["it has no host, so the client's local default is used"]
    why_local = development_host(host, settings)
    if why_local:
        return [], [f"host {host} is {why_local}"]
    setting = facts.fields.get("host")
    if setting is not None and setting.value == host:
        if _PLAIN_NAME.fullmatch(setting.name):
            why = f"{setting.name}={host} is not a development host ({setting.origin})"
        else:
            why = f"the host {host} ({setting.name}, {setting.origin}) is not a development host"
        return [f"production because {why}"], []
    where = f" ({target.source})" if target.source else ""
    return [f"production because the host {host} is not a development host{where}"], []


def _production_host_reasons(
    target: Target, facts: TargetFacts, settings: ProductionSettings
) -> list[str]:
    host = _host(target)
    if not host:
        return []
    for pattern in settings.production_hosts:
        if fnmatch.fnmatchcase(host.lower(), pattern.lower()):
            return [
                f"production because the host {_shown('host', host, facts)} is listed as a "
                f"production host ({pattern!r})"
            ]
    return []


def _sqlite_reasons(
    target: Target, settings: ProductionSettings, project_root: str | None
) -> list[str]:
    if not target.path:
        return []
    path = PurePosixPath(target.path)
    # The file and its folder inside the project: the rest of the path, the project's
    # own folder included, says where the checkout lives, not what the data is
    # ("~/code/live-chat/db.sqlite3" is not production; "storage/prod/app.db" is).
    parts = [path.stem]
    if project_root is None or str(path.parent) != str(PurePosixPath(project_root)):
        parts.append(path.parent.name)
    for part in parts:
        pattern = name_matches(part, settings.name_patterns)
        if pattern:
            return [
                f"production because the SQLite file {target.path} is named {part!r}, "
                f"which matches {pattern!r}"
            ]
    return []


def _production_path_reasons(target: Target, settings: ProductionSettings) -> list[str]:
    if not target.path or not settings.sqlite_production_paths:
        return []
    # Also where the path leads: a project's `database/app.sqlite` (or its `database`
    # folder) linked into a production folder is that production file.
    real = os.path.realpath(target.path)
    for pattern in settings.sqlite_production_paths:
        for candidate in dict.fromkeys((pattern, os.path.realpath(pattern))):
            if fnmatch.fnmatchcase(target.path, candidate):
                return [f"production because the SQLite file {target.path} matches {pattern!r}"]
            if fnmatch.fnmatchcase(real, candidate):
                return [
                    f"production because the SQLite file {target.path} is {real}, which "
                    f"matches {pattern!r}"
                ]
    return []


def _no_signal(target: Target, settings: ProductionSettings, host_notes: list[str]) -> str:
    patterns = ", ".join(settings.name_patterns)
    checks = []
    if target.engine == "sqlite":
        checks.append(
            f"the SQLite file {target.path} is local and its name matches none of {patterns}"
        )
    else:
        checks.extend(host_notes)
        checks.append(f"the database name {target.name or '(default)'} matches none of {patterns}")
    checks.append(f"no {'/'.join(settings.app_env_variables)} says production")
    return "not production: " + "; ".join(checks)


# ---- names and hosts -------------------------------------------------------------------

_CAMEL = re.compile(r"([a-z])([A-Z])")
_WORD = re.compile(r"[a-z]+|[0-9]+")
_GLOB = re.compile(r"[*?\[]")


def segments(name: str) -> list[str]:
    """`prod-db.example.com` -> prod db example com; `appProd2` -> app prod 2."""
    return _WORD.findall(_CAMEL.sub(r"\1 \2", name).lower())


def name_matches(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern that matches `name` as whole words, or None.

    A plain pattern matches a run of whole segments (`prod` matches `app_prod`, not
    `product_catalog`); a glob pattern (`prd*`) matches any single segment.
    """
    words = segments(name)
    for pattern in patterns:
        if _GLOB.search(pattern):
            if any(fnmatch.fnmatchcase(word, pattern.lower()) for word in words):
                return pattern
            continue
        wanted = segments(pattern)
        if wanted and any(
            words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1)
        ):
            return pattern
    return None


def development_host(host: str, settings: ProductionSettings) -> str | None:
    """Why `host` is a development host ('a loopback address', ...), or None if it is not."""
    host = host.strip().strip("[]").lower()
    if host.startswith("/"):
        return "a Unix socket"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_loopback:
        return "a loopback address"
    for pattern in settings.development_hosts:
        if fnmatch.fnmatchcase(host, pattern.lower()):
            return f"a development host ({pattern})"
    if address is None and settings.single_label_hosts_are_development and "." not in host:
        return "a single-label name, like a docker-compose service"
    return None


def _host(target: Target) -> str | None:
    return target.host.strip() if target.host and target.host.strip() else None


def _shown(field_name: str, value: str, facts: TargetFacts) -> str:
    setting = facts.fields.get(field_name)
    if setting is not None and setting.value == value:
        return f"{value} ({setting.name}, {setting.origin})"
    return value


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))

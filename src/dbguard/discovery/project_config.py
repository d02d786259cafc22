"""A project's own `.dbguard.toml`: it can add protection, never remove it.

An agent can edit any file in a project, so nothing a project says may switch the guard
off, skip a backup, un-mark production or trust an agent. Any attempt is an error naming
the file, the key and the fact that only the user's own dbguard config can change it;
the command is then denied (ProjectConfigError is a DiscoveryError).

Schema (every table and key optional; unknown keys are errors)::

    version = 1

    # Databases this project's commands can touch, besides the discovered ones (Django
    # settings are code and never run, so this is how a Django project names its
    # database when DATABASE_URL does not). Every guarded command in the project backs
    # them up.
    [[database]]
    url = "postgresql://app@127.0.0.1:5432/app"   # any URL form discovery understands
    # ...or the parts:
    # engine = "postgres"          # sqlite | postgres | mysql
    # host = "127.0.0.1"  port = 5432  socket = "/run/postgresql"  user = "app"
    # name = "app"                 # the database on the server
    # path = "var/app.sqlite3"     # sqlite: relative to the project root
    password_env = "APP_DB_PASSWORD"   # read from the environment or .env, never written here
    production = true                  # always treat it as production (only `true` is allowed)
    label = "the reporting database"   # shown in the log

    # Stricter production rules, added to the user's own.
    [production]
    every_database = true                  # every database this project touches (default false)
    name_patterns = ["prd", "customer"]    # more words that make a name production
    hosts = ["db.internal.example.com"]    # hosts that are always production (globs)
    app_env_variables = ["STAGE"]          # more variables naming the app environment
    production_values = ["live"]           # more values of those meaning production
    agent_variables = ["MY_AGENT"]         # more variables that mark an AI agent
    agent_programs = ["my-agent"]          # more programs that mark an AI agent
    single_label_hosts_are_development = false   # do not trust `db`-style names (default true)
    # A key written at its default value adds nothing and is accepted.

    # More commands that are database operations, in the schema of rules/catalog.toml.
    # They can only make a command *more* guarded: the daemon classifies with the user's
    # catalog and with this one, and the more dangerous answer wins. A `read-only` kind
    # here is an error.
    [[tool]]
    name = "reset-db"
    launch = ["reset-db"]
    default = "destructive"
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationError,
    model_validator,
)

from dbguard.discovery import nx
from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.model import sqlite_target
from dbguard.discovery.urls import parse_database_url, url_engine
from dbguard.engines.base import EngineName, Target
from dbguard.paths import exists
from dbguard.production import ProductionSettings, Setting, TargetFacts
from dbguard.rules import (
    Catalog,
    Classifier,
    FileLookup,
    Kind,
    MemberLookup,
    Operation,
    RootLookup,
    ScriptLookup,
    builtin_catalog,
)

__all__ = [
    "PROJECT_FILE",
    "ProjectConfig",
    "ProjectConfigError",
    "ProjectDatabase",
    "ProjectProduction",
    "classify_with_project",
    "load_project_config",
    "parse_project_config",
    "project_config_file",
    "stricter",
]

PROJECT_FILE = ".dbguard.toml"
# Keys of rules/catalog.toml a project may use; its `help` words would make commands
# read-only, so a project may not add them.
_CATALOG_TABLES = ("tool", "launcher", "scripts", "repeated_hints")
_ONLY_USER = (
    "a project file can only add protection; only your own dbguard config (config.toml) "
    "can change this"
)


# What the file's own mistakes (not a loosening) say to do; the key table is in the README.
_FIX_IT = "fix the file (README's `.dbguard.toml` section lists every key), or remove it"


class ProjectConfigError(DiscoveryError):
    """A `.dbguard.toml` that is malformed or tries to loosen the rules."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectDatabase(_Strict):
    """One `[[database]]` entry: a URL, or an engine with its parts."""

    url: str | None = None
    engine: EngineName | None = None
    path: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    socket: str | None = None
    user: str | None = None
    name: str | None = None
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    production: Literal[True] | None = None
    label: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ProjectDatabase:
        parts = [self.path, self.host, self.port, self.socket, self.user, self.name]
        if self.url is not None:
            if self.engine is not None or any(p is not None for p in parts):
                raise ValueError("give either url, or engine with its parts, not both")
            if url_engine(self.url) is None:
                raise ValueError(f"{self.url[:60]!r} is not a database URL dbguard understands")
            return self
        if self.engine is None:
            raise ValueError("needs url, or engine and its parts")
        if self.engine == "sqlite" and not self.path:
            raise ValueError("an sqlite database needs path")
        if self.engine != "sqlite" and not self.name:
            raise ValueError(f"a {self.engine} database needs name (the database on the server)")
        return self


class ProjectProduction(_Strict):
    """`[production]`: additions to the user's production settings."""

    # At their defaults (false, true) these add nothing: saying the default is accepted,
    # and only the stricter value changes the user's settings.
    every_database: StrictBool = False
    name_patterns: list[str] = []
    hosts: list[str] = []
    app_env_variables: list[str] = []
    production_values: list[str] = []
    agent_variables: list[str] = []
    agent_programs: list[str] = []
    single_label_hosts_are_development: StrictBool = True


class ProjectConfig(_Strict):
    """A validated `.dbguard.toml`. `file` is where it was read (for messages)."""

    version: Literal[1] = 1
    database: list[ProjectDatabase] = []
    production: ProjectProduction = ProjectProduction()
    catalog: Catalog = Catalog()
    file: str = PROJECT_FILE

    def production_settings(self, user: ProductionSettings) -> ProductionSettings:
        """The user's settings with this project's additions (never fewer checks)."""
        extra = self.production
        return user.model_copy(
            update={
                "name_patterns": _union(user.name_patterns, extra.name_patterns),
                "production_hosts": _union(user.production_hosts, extra.hosts),
                "app_env_variables": _union(user.app_env_variables, extra.app_env_variables),
                "production_values": _union(user.production_values, extra.production_values),
                "single_label_hosts_are_development": (
                    user.single_label_hosts_are_development
                    and extra.single_label_hosts_are_development
                ),
                "every_database": user.every_database or extra.every_database,
                "agent_variables": _union(user.agent_variables, extra.agent_variables),
                "agent_programs": _union(user.agent_programs, extra.agent_programs),
            }
        )

    def targets(
        self, root: Path, variables: Mapping[str, str]
    ) -> Iterator[tuple[str, Target | None, TargetFacts]]:
        """Each database it names, as (source, target, facts); the target is None for
        in-memory SQLite (tests that use nothing else say so this way). `variables`
        (environment over .env) supply the `password_env` values."""
        for index, entry in enumerate(self.database):
            key = f"database[{index}]"
            source = f"{self.file} ({key}{': ' + entry.label if entry.label else ''})"
            password = None
            if entry.password_env:
                password = variables.get(entry.password_env)
                if password is None:
                    raise ProjectConfigError(
                        f"{self.file}: {key}.password_env names {entry.password_env}, "
                        "which is not set in the environment or .env",
                        f"set {entry.password_env}, or remove password_env",
                    )
            # Relative paths are the file's own folder's (the workspace's, for an Nx
            # project that reads its workspace's file).
            base = Path(os.path.normpath(root / self.file)).parent
            target = self._target(entry, base, source, key, password)
            facts = TargetFacts()
            if target is None:
                yield source, None, facts
                continue
            for field_name in ("host", "name", "path"):
                value = getattr(target, field_name)
                if value:
                    facts.fields[field_name] = Setting(f"{key}.{field_name}", value, self.file)
            if entry.production:
                facts.marked.append(f"{self.file} marks {key} production")
            yield source, target, facts

    def _target(
        self,
        entry: ProjectDatabase,
        root: Path,
        source: str,
        key: str,
        password: str | None,
    ) -> Target | None:
        if entry.url is not None:
            target = parse_database_url(entry.url, root, source, where=f"{self.file} {key}.url")
            if target is not None and password is not None:
                target = target.model_copy(update={"password": SecretStr(password)})
            return target
        assert entry.engine is not None  # the validator guarantees it
        if entry.engine == "sqlite":
            assert entry.path is not None
            # `:memory:` is in-memory, as in every other setting discovery reads.
            return sqlite_target(entry.path, root, source)
        return Target(
            engine=entry.engine,
            host=entry.host,
            port=entry.port,
            socket=entry.socket,
            user=entry.user,
            password=SecretStr(password) if password is not None else None,
            name=entry.name,
            source=source,
        )


def _union(first: Sequence[str], second: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*first, *second]))


# ---- reading -----------------------------------------------------------------------------


def project_config_file(root: Path) -> str:
    """Where the `.dbguard.toml` of the project at `root` is: its own (relative), or
    for an Nx project folder with none, its workspace's (the nearest folder above with
    nx.json; a full path, which messages name), as before project.json made the
    folder a root."""
    if exists(root / PROJECT_FILE) or not exists(root / nx.PROJECT_JSON):
        return PROJECT_FILE
    for folder in root.parents:
        if exists(folder / nx.NX_JSON):
            return str(folder / PROJECT_FILE)
    return PROJECT_FILE


def load_project_config(
    read: Callable[[str], str | None], name: str = PROJECT_FILE
) -> ProjectConfig | None:
    """The project's `.dbguard.toml` through a discovery FileReader, or None if absent;
    `name` is where it is (project_config_file)."""
    text = read(name)
    return None if text is None else parse_project_config(text, name)


def parse_project_config(text: str, name: str = PROJECT_FILE) -> ProjectConfig:
    """Validate a `.dbguard.toml`. Raises ProjectConfigError naming file, line and key."""
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ProjectConfigError(f"{name}: nested too deeply", "fix the file") from None
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        at = re.search(r"\(at line (\d+), column (\d+)\)", message)
        where = f"{name}, line {at.group(1)}" if at else name
        problem = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        raise ProjectConfigError(
            f"{where}: not valid TOML: {problem}", "fix the file, or remove it"
        ) from None
    loosening = list(_loosening(data))
    catalog_data = {k: data.pop(k) for k in _CATALOG_TABLES if k in data}
    try:
        catalog = Catalog.model_validate(catalog_data)
    except ValidationError as err:
        raise ProjectConfigError(_describe(name, text, err), _FIX_IT) from None
    # exclude_unset: `extends` takes from its parent only what the entry leaves unset, so
    # the defaults must not come back from the round trip as if written.
    uncompiled = (
        _compile_problem(catalog.model_dump_json(exclude_unset=True))
        if catalog != Catalog()
        else None
    )
    if uncompiled:
        raise ProjectConfigError(f"{name}: {uncompiled}", "fix the file, or remove it")
    loosening.extend(_read_only_entries(catalog))
    if loosening:
        key, why = loosening[0]
        more = f" (and {len(loosening) - 1} more)" if len(loosening) > 1 else ""
        raise ProjectConfigError(
            f"{_where(name, text, key)}: `{key}` would loosen dbguard's protection: {why}{more}",
            f"{_ONLY_USER}; remove it from {name}",
        )
    try:
        return ProjectConfig.model_validate({**data, "catalog": catalog, "file": name})
    except ValidationError as err:
        raise ProjectConfigError(_describe(name, text, err), _FIX_IT) from None


@functools.lru_cache(maxsize=32)
def _compile_problem(catalog_json: str) -> str | None:
    """What only the compiled catalog checks (`extends` naming no tool), once per
    project catalog: the file is read on every guarded command."""
    try:
        Classifier(
            builtin_catalog().merged(Catalog.model_validate_json(catalog_json), replace=False)
        )
    except ValueError as err:
        return str(err)
    return None


# Keys that can only mean "protect less", wherever they appear.
_LOOSENING_KEYS = {
    "allow": "it would let commands through",
    "allow_agent": "agents may never approve production themselves",
    "allow_agents": "agents may never approve production themselves",
    "allowed_agents": "agents may never approve production themselves",
    "agents": "agents may never approve production themselves",
    "allowlist": "it would let commands through unguarded",
    "approve": "approvals come from a human at a terminal",
    "approved": "approvals come from a human at a terminal",
    "auto_approve": "approvals come from a human at a terminal",
    "bypass": "it would turn the guard off",
    "dev_hosts": "it would make hosts count as development hosts",
    "development": "it would un-mark production",
    "development_hosts": "it would make hosts count as development hosts",
    "disable": "it would turn the guard off",
    "disabled": "it would turn the guard off",
    "exclude": "every database a command can touch is backed up",
    "excluded": "every database a command can touch is backed up",
    "exclude_databases": "every database a command can touch is backed up",
    "ignore": "every database a command can touch is backed up",
    "ignored": "every database a command can touch is backed up",
    "ignore_commands": "it would let commands through unguarded",
    "ignore_databases": "every database a command can touch is backed up",
    "local_hosts": "it would make hosts count as development hosts",
    "no_backup": "every database operation is backed up first",
    "not_production": "it would un-mark production",
    "passthrough": "it would let commands through unguarded",
    "safe_commands": "it would let commands through unguarded",
    "safe_hosts": "it would make hosts count as development hosts",
    "skip": "every database operation is backed up first",
    "skip_backup": "every database operation is backed up first",
    "skip_backups": "every database operation is backed up first",
    "trust": "it would trust callers the guard does not",
    "trusted": "it would trust callers the guard does not",
    "unmark": "it would un-mark production",
    "unguarded": "it would let commands through unguarded",
    "whitelist": "it would let commands through unguarded",
    "help": "help words make commands read-only",
}
# Keys that loosen when set to false.
_LOOSENING_IF_FALSE = {
    "enabled": "it would turn the guard off",
    "enable": "it would turn the guard off",
    "guard": "it would turn the guard off",
    "backup": "every database operation is backed up first",
    "backups": "every database operation is backed up first",
    "production": "it would un-mark production",
    "protect": "it would turn protection off",
    "protected": "it would turn protection off",
    "require_approval": "production always needs a human",
    "confirm": "production always needs a human",
    "check_production": "the production check cannot be turned off",
}
_LOOSENING_VALUES = {"development", "dev", "off", "none", "disabled", "skip", "read-only"}


def _normal(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def _loosening(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        norm = _normal(key)
        if prefix == "" and key in _CATALOG_TABLES and isinstance(value, list):
            # Catalog entries hold maps of command words, which are not settings.
            for index, entry in enumerate(value):
                if isinstance(entry, dict):
                    plain = {k: v for k, v in entry.items() if k not in _CATALOG_WORD_MAPS}
                    yield from _loosening(plain, f"{dotted}[{index}].")
            continue
        if norm in _LOOSENING_KEYS:
            yield dotted, _LOOSENING_KEYS[norm]
        elif value is False and norm in _LOOSENING_IF_FALSE:
            yield dotted, _LOOSENING_IF_FALSE[norm]
        elif norm in ("production", "mark", "marker") and isinstance(value, str):
            if value.strip().lower() in _LOOSENING_VALUES:
                yield dotted, "it would un-mark production"
        elif isinstance(value, dict):
            yield from _loosening(value, f"{dotted}.")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _loosening(item, f"{dotted}[{index}].")


_CATALOG_WORD_MAPS = ("commands", "flags", "targets", "direct", "aliases")


def _read_only_entries(catalog: Catalog) -> Iterator[tuple[str, str]]:
    why = "a project may add database operations, not declare commands read-only"
    for index, tool in enumerate(catalog.tool):
        for key in ("default", "bare"):
            if getattr(tool, key, None) is Kind.READ_ONLY:
                yield f"tool[{index}].{key}", why
        for word, kind in tool.commands.items():
            if kind is Kind.READ_ONLY:
                yield f'tool[{index}].commands."{word}"', why
        for flag, kind in tool.flags.items():
            if kind is Kind.READ_ONLY:
                yield f'tool[{index}].flags."{flag}"', why
        if getattr(tool, "help", None):
            yield f"tool[{index}].help", "help words make a tool's commands read-only"
    for index, launcher in enumerate(catalog.launcher):
        if getattr(launcher, "no_run", None):
            yield f"launcher[{index}].no_run", "it would make a launcher's programs pass unguarded"


def _where(name: str, text: str, dotted: str) -> str:
    """'file, line N' for the line that sets the last part of `dotted`, when findable."""
    last = re.sub(r"\[\d+\]$", "", dotted.rsplit(".", 1)[-1]).strip('"')
    if not last:
        return name
    quoted = re.escape(last)
    patterns = (
        rf"^\s*[\"']?{quoted}[\"']?\s*=",  # key = value
        rf"^\s*\[+\s*(?:[\w.\"'-]+\.)?[\"']?{quoted}[\"']?\s*\]+",  # [table] / [[table]]
        rf"[{{,]\s*[\"']?{quoted}[\"']?\s*=",  # inline table
    )
    for pattern in patterns:
        for number, line in enumerate(text.splitlines(), start=1):
            if re.search(pattern, line):
                return f"{name}, line {number}"
    return name


def _describe(name: str, text: str, err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(
            f"[{part}]" if isinstance(part, int) else str(part) for part in problem["loc"]
        ).replace(".[", "[")
        key = key or "(top level)"
        message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"]
        lines.append(f"{_where(name, text, key)}: `{key}`: {message}")
    return "; ".join(lines) if lines else f"{name}: invalid"


# ---- classification ------------------------------------------------------------------------


def stricter(first: Operation | None, second: Operation | None) -> Operation | None:
    """The more dangerous of two classifications of the same command (None = not a
    database operation); on a tie, the first."""
    if first is None:
        return second
    if second is None or second.kind.severity <= first.kind.severity:
        return first
    return second


def classify_with_project(
    classifier: Classifier,
    project: ProjectConfig | None,
    argv: Sequence[str],
    lookup: ScriptLookup | None = None,
    members: MemberLookup | None = None,
    roots: RootLookup | None = None,
    files: FileLookup | None = None,
) -> Operation | None:
    """Classify `argv` with the user's catalog and, if the project adds entries, with
    both merged: the more dangerous answer wins, so a project entry that shadows a
    built-in tool can never make a command less guarded."""
    base = classifier.classify(argv, lookup, members, roots, files)
    if project is None or project.catalog == Catalog():
        return base
    key = (id(classifier), project.catalog.model_dump_json())
    merged = _MERGED.get(key)
    if merged is None:  # compiling a catalog costs milliseconds: once per project catalog
        if len(_MERGED) >= 32:
            _MERGED.clear()
        # replace=False: the project's entries sit beside the user's, never instead of them.
        merged = _MERGED[key] = Classifier(
            classifier.catalog.merged(project.catalog, replace=False)
        )
    return stricter(base, merged.classify(argv, lookup, members, roots, files))


_MERGED: dict[tuple[int, str], Classifier] = {}

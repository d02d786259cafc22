"""The shapes every resolver shares: what was found (`Found`), layered variables that
remember where each value came from (`Variables`), and small helpers.

Pure, like the rest of discovery's parsing: files arrive through a `FileReader`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from dbguard.discovery.envfile import DiscoveryError, parse_env_entries
from dbguard.discovery.urls import parse_database_url
from dbguard.engines.base import EngineName, Target
from dbguard.production import INVOKING_ENV, Setting, TargetFacts
from dbguard.rules import Kind, Operation

if TYPE_CHECKING:
    from dbguard.discovery.project_config import ProjectConfig

# A project-relative path -> its text, or None when the file does not exist.
FileReader = Callable[[str], str | None]
# A project-relative folder ("" is the root) -> the names in it, or None when absent.
FolderLister = Callable[[str], list[str] | None]


def unlisted(folder: str) -> list[str] | None:
    """The lister of a discovery given none: no folder can be listed."""
    return None


COMMAND_LINE = "the command line"


@dataclass
class Found:
    """The answer of discovery: every database, and everything it consulted.

    targets   the databases to back up, each with a `source` saying where and why
    looked    every place consulted, in order (files, variables, code not executed)
    notes     things that need no backup, e.g. an in-memory SQLite database
    warnings  things the user should fix, e.g. a cached Laravel config
    facts     per target key: what bears on production (app env, which setting gave the
              host), for production.classify_production
    project   the project's `.dbguard.toml`, when it has one
    root      the project folder it was found in
    origins   per target key, the (root, project) it came from when that is not this
              one's (a sub-project, another operation of the command): production is
              judged by that project's own `.dbguard.toml`
    """

    targets: list[Target] = field(default_factory=list)
    looked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, TargetFacts] = field(default_factory=dict)
    project: ProjectConfig | None = None
    root: Path | None = None
    origins: dict[str, tuple[Path | None, ProjectConfig | None]] = field(default_factory=dict)

    def origin(self, target: Target) -> tuple[Path | None, ProjectConfig | None]:
        return self.origins.get(target.key, (self.root, self.project))

    def add(
        self, target: Target | None, note_if_none: str = "", facts: TargetFacts | None = None
    ) -> None:
        if target is None:
            if note_if_none and note_if_none not in self.notes:
                self.notes.append(note_if_none)
            return
        damaged = [name for name, value in target if isinstance(value, str) and "\0" in value]
        if damaged:  # no path, host or name has one; stat() and the drivers would raise
            raise DiscoveryError(
                f"{target.source}: the database's {damaged[0]} contains a NUL byte",
                "fix that setting (the file may be damaged)",
            )
        for index, known in enumerate(self.targets):
            if known.key == target.key:
                # The same database reached two ways: keep both explanations.
                if target.source and target.source not in known.source:
                    source = f"{known.source}; also {target.source}"
                    self.targets[index] = known.model_copy(update={"source": source})
                break
        else:
            self.targets.append(target)
        if facts is not None:
            self.facts.setdefault(target.key, TargetFacts()).merge(facts)

    def facts_for(self, target: Target) -> TargetFacts:
        return self.facts.get(target.key, TargetFacts())

    def look(self, place: str) -> None:
        if place not in self.looked:
            self.looked.append(place)

    def warn(self, warning: str) -> None:
        if warning not in self.warnings:
            self.warnings.append(warning)

    def extend(self, other: Found) -> None:
        for target in other.targets:
            if target.key not in {t.key for t in self.targets}:
                self.origins[target.key] = other.origin(target)
            self.add(target, facts=other.facts.get(target.key))
        for place in other.looked:
            self.look(place)
        self.notes.extend(x for x in other.notes if x not in self.notes)
        for warning in other.warnings:
            self.warn(warning)
        self.project = self.project or other.project
        self.root = self.root or other.root


@dataclass
class Context:
    """One discovery: the project, how to read it, and the invocation."""

    root: Path
    read: FileReader
    env: Mapping[str, str]  # the invoking environment, without the command's assignments
    operation: Operation
    cwd: Path
    project: ProjectConfig | None = None
    # The environment the command starts with: the invoking one, its VAR=value
    # assignments, and dotenv files a launcher loads first (hint env_file).
    base: Variables | None = None
    listdir: FolderLister = unlisted

    def __post_init__(self) -> None:
        if self.base is None:
            self.base = environment(self.env, self.operation.assignments)

    @property
    def hints(self) -> Mapping[str, str]:
        return self.operation.hints

    @property
    def is_test(self) -> bool:
        return self.operation.kind is Kind.TEST

    @property
    def names_databases(self) -> bool:
        """Whether .dbguard.toml names databases: the way out where discovery cannot tell."""
        return self.project is not None and bool(self.project.database)

    @property
    def flat_env(self) -> dict[str, str]:
        """The environment the command runs with: its own VAR=value on top."""
        assert self.base is not None
        return self.base.values()

    def environment(self) -> Variables:
        assert self.base is not None
        return self.base.copy()

    def load_launcher_env_files(self, found: Found) -> None:
        """`dotenv -e FILE`, `node --env-file=FILE`: variables the command starts with,
        under the real environment (neither tool overrides a set variable)."""
        assert self.base is not None
        files = [f for f in self.hints.get("env_file", "").splitlines() if f.strip()]
        if files:
            load_env_files(self.read, self.base, files, found, self.flat_env)

    def read_looked(self, name: str, found: Found) -> str | None:
        """Read `name`, recording it (or its absence) in found.looked."""
        text = self.read(name)
        found.look(name if text is not None else f"{name} (absent)")
        return text


_Entry = tuple[str, str, int | None, bool]  # value, origin, line, from a project file


class Variables:
    """Layered variables that remember where each value came from (file and line), and
    the values other layers gave that one is hiding."""

    def __init__(self) -> None:
        self._values: dict[str, _Entry] = {}
        self._hidden: dict[str, list[_Entry]] = {}

    def copy(self) -> Variables:
        other = Variables()
        other._values = dict(self._values)
        other._hidden = {name: list(entries) for name, entries in self._hidden.items()}
        return other

    def _put(self, name: str, entry: _Entry, *, override: bool) -> None:
        current = self._values.get(name)
        if current is None or override:
            self._values[name] = entry
        if current is not None:
            self._hidden.setdefault(name, []).append(current if override else entry)

    def layer(self, values: Mapping[str, str], origin: str, *, override: bool) -> None:
        in_file = origin not in (INVOKING_ENV, COMMAND_LINE)
        for name, value in values.items():
            self._put(name, (value, origin, None, in_file), override=override)

    def layer_entries(
        self, entries: Mapping[str, tuple[str, int]], origin: str, *, override: bool
    ) -> None:
        for name, (value, line) in entries.items():
            self._put(name, (value, origin, line, True), override=override)

    def layer_variables(self, other: Variables, *, override: bool) -> None:
        """Another set of variables, keeping where each came from."""
        for name, entries in other._hidden.items():
            self._hidden.setdefault(name, []).extend(entries)
        for name, entry in other._values.items():
            self._put(name, entry, override=override)

    def set(self, name: str, value: str, origin: str) -> None:
        """A value the command line or the tool's defaults give, not a file."""
        self._put(name, (value, origin, None, False), override=True)

    def values(self) -> dict[str, str]:
        return {name: entry[0] for name, entry in self._values.items()}

    def get(self, name: str, default: str | None = None) -> str | None:
        found = self._values.get(name)
        return found[0] if found else default

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def file(self, name: str) -> str | None:
        """The file (or 'the invoking environment') `name` came from."""
        found = self._values.get(name)
        return found[1] if found else None

    def where(self, name: str) -> str:
        """'.env, line 4' / 'the invoking environment' for a set variable."""
        found = self._values.get(name)
        if found is None:
            return "(not set)"
        return _where(found[1], found[2])

    def setting(self, name: str) -> Setting | None:
        found = self._values.get(name)
        return Setting(name, found[0], self.where(name), found[3]) if found else None

    def settings(self, name: str) -> list[Setting]:
        """The value in force and every value it hides, each with where it came from:
        for the application environment, where an override must not hide a file's
        `APP_ENV=production` from the production check."""
        current = self.setting(name)
        if current is None:
            return []
        found = [current]
        for value, origin, line, in_file in self._hidden.get(name, []):
            where = f"{_where(origin, line)}; {current.origin} overrides it"
            hidden = Setting(name, value, where, in_file)
            if value != current.value and hidden not in found:
                found.append(hidden)
        return found

    def origin(self, *names: str) -> str:
        """'.env.testing (DB_CONNECTION, DB_DATABASE)' for the names that are set."""
        by_origin: dict[str, list[str]] = {}
        for name in names:
            if name in self._values:
                by_origin.setdefault(self._values[name][1], []).append(name)
        return "; ".join(f"{o} ({', '.join(n)})" for o, n in by_origin.items()) or "defaults"


def _where(origin: str, line: int | None) -> str:
    return f"{origin}, line {line}" if line else origin


def environment(env: Mapping[str, str], assignments: Mapping[str, str]) -> Variables:
    """The invoking environment with the command's own VAR=value assignments on top."""
    variables = Variables()
    variables.layer(env, INVOKING_ENV, override=True)
    variables.layer(assignments, COMMAND_LINE, override=True)
    return variables


def load_env_files(
    read: FileReader,
    variables: Variables,
    files: list[str],
    found: Found,
    env: Mapping[str, str],
    *,
    override: bool = False,
) -> list[str]:
    """Layer .env files under `variables` (earlier files win unless `override`); returns
    the files that exist. Every file is recorded in `found.looked`, absent ones too."""
    present = []
    for name in files:
        text = read(name)
        found.look(name if text is not None else f"{name} (absent)")
        if text is not None:
            present.append(name)
            variables.layer_entries(parse_env_entries(text, name, env), name, override=override)
    return present


def url_target(
    url: str,
    base: Path,
    source: str,
    where: str,
    setting_name: str,
    facts: TargetFacts | None = None,
) -> tuple[Target | None, TargetFacts]:
    """parse_database_url plus the facts naming `setting_name` (at `where`) as the origin
    of the host and database name."""
    target = parse_database_url(url, base, source, where=where)
    facts = facts or TargetFacts()
    if target is not None:
        for field_name, value in (("host", target.host), ("name", target.name)):
            if value:
                facts.fields.setdefault(
                    field_name, Setting(f"{setting_name} {field_name}", value, where)
                )
        if target.path:
            facts.fields.setdefault("path", Setting(setting_name, target.path, where))
    return target, facts


def server_target(
    engine: EngineName,
    *,
    host: str | None,
    port: str | int | None,
    name: str | None,
    user: str | None = None,
    password: str | None = None,
    socket: str | None = None,
    params: Mapping[str, str] | None = None,
    source: str,
    where: str,
) -> Target:
    """A server Target from loose settings; `where` names them in errors."""
    port_number: int | None = None
    if port not in (None, ""):
        text = str(port).strip()
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise DiscoveryError(f"{where}: port {text!r} is not a port number")
        port_number = int(text)
    if host and host.startswith("/") and not socket:
        host, socket = None, host  # libpq and mysql take a socket folder/path as host
    return Target(
        engine=engine,
        host=host or None,
        port=port_number,
        socket=socket or None,
        user=user or None,
        password=SecretStr(password) if password else None,
        name=name or None,
        params=dict(params or {}),
        source=source,
    )


def sqlite_target(path: str, base: Path, source: str) -> Target | None:
    """An SQLite target for `path` (relative to `base`); None for in-memory databases."""
    if path in ("", ":memory:") or path.startswith(("file::memory:", ":memory:")):
        return None
    resolved = Path(path) if Path(path).is_absolute() else base / path
    return Target(engine="sqlite", path=os.path.normpath(resolved), source=source)

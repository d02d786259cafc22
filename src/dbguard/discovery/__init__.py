"""Which databases can this command touch?

Pure: `discover` reads project files only through the `read` function it is given and
the environment only from its `env` argument, so every framework layout is tested with
plain dicts. The I/O side (finding the root, reading and caching files) is project.py.

Discovery is conservative: every resolver that applies to the project contributes, and
the union is backed up. Each target records the file and keys it came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from dbguard.discovery.envfile import DiscoveryError, parse_env_file
from dbguard.discovery.urls import parse_database_url
from dbguard.engines.base import Target
from dbguard.rules import Kind, Operation

__all__ = ["DiscoveryError", "FileReader", "Found", "discover"]

# A project-relative path -> its text, or None when the file does not exist.
FileReader = Callable[[str], str | None]


@dataclass
class Found:
    targets: list[Target] = field(default_factory=list)
    looked: list[str] = field(default_factory=list)  # every place consulted, in order
    notes: list[str] = field(default_factory=list)  # e.g. in-memory databases skipped
    warnings: list[str] = field(default_factory=list)

    def add(self, target: Target | None, note_if_none: str = "") -> None:
        if target is None:
            if note_if_none:
                self.notes.append(note_if_none)
        elif all(t.key != target.key for t in self.targets):
            self.targets.append(target)

    def extend(self, other: Found) -> None:
        for target in other.targets:
            self.add(target)
        self.looked.extend(x for x in other.looked if x not in self.looked)
        self.notes.extend(other.notes)
        self.warnings.extend(other.warnings)


class Variables:
    """Layered variables that remember where each value came from."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, str]] = {}

    def layer(self, values: Mapping[str, str], origin: str, *, override: bool) -> None:
        for name, value in values.items():
            if override or name not in self._values:
                self._values[name] = (value, origin)

    def get(self, name: str, default: str | None = None) -> str | None:
        found = self._values.get(name)
        return found[0] if found else default

    def origin(self, *names: str) -> str:
        """'.env.testing (DB_CONNECTION, DB_DATABASE)' for the names that are set."""
        by_origin: dict[str, list[str]] = {}
        for name in names:
            if name in self._values:
                by_origin.setdefault(self._values[name][1], []).append(name)
        return "; ".join(f"{o} ({', '.join(n)})" for o, n in by_origin.items()) or "defaults"


def discover(root: Path, read: FileReader, env: Mapping[str, str], operation: Operation) -> Found:
    """Every database `operation`, run in `root` with `env`, could touch.

    Raises DiscoveryError when a file it needs is malformed, or when it finds no
    database at all; the message lists where it looked.
    """
    env = {**env, **operation.assignments}
    found = Found()
    for resolver in _resolvers(read, operation):
        found.extend(resolver(root, read, env, operation))
    if not found.targets and not found.notes:
        raise DiscoveryError(
            f"{operation.description} is a database operation, but dbguard could not find "
            f"its database in {root}; looked at: {', '.join(found.looked) or 'nothing'}",
            "set DATABASE_URL or DB_CONNECTION/DB_DATABASE, or name the database in "
            ".dbguard.toml, then run the command again",
        )
    return found


Resolver = Callable[[Path, FileReader, Mapping[str, str], Operation], Found]


def _resolvers(read: FileReader, operation: Operation) -> Iterator[Resolver]:
    if operation.framework == "laravel" or read("artisan") is not None:
        yield laravel
    if operation.framework == "prisma" or read("prisma/schema.prisma") is not None:
        yield prisma
    yield database_url


def _env_layers(
    read: FileReader, env: Mapping[str, str], files: list[str], found: Found
) -> Variables:
    """The invoking environment over the given .env files (earlier files win)."""
    variables = Variables()
    variables.layer(env, "environment", override=True)
    for name in files:
        text = read(name)
        found.looked.append(name if text is not None else f"{name} (absent)")
        if text is not None:
            variables.layer(parse_env_file(text, name, env), name, override=False)
    return variables


# ---- generic: DATABASE_URL ----------------------------------------------------------


def database_url(root: Path, read: FileReader, env: Mapping[str, str], op: Operation) -> Found:
    found = Found()
    variables = _env_layers(read, env, [".env"], found)
    found.looked.append("DATABASE_URL")
    url = variables.get("DATABASE_URL")
    if url:
        source = variables.origin("DATABASE_URL")
        found.add(
            parse_database_url(url, root, source), f"{source}: in-memory SQLite, nothing to back up"
        )
    return found


# ---- Laravel ------------------------------------------------------------------------

_LARAVEL_KEYS = (
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


def laravel(root: Path, read: FileReader, env: Mapping[str, str], op: Operation) -> Found:
    """Laravel loads `.env.{APP_ENV}` instead of `.env` when that file exists; a test
    run has APP_ENV=testing. Values in the real environment win over both files."""
    found = Found()
    app_env = op.hints.get("env") or env.get("APP_ENV")
    if not app_env and op.kind is Kind.TEST:
        app_env = "testing"
    files = [".env"]
    if app_env and read(f".env.{app_env}") is not None:
        files = [f".env.{app_env}"]
    variables = _env_layers(read, env, files, found)
    found.add(*_laravel_target(root, variables))
    if files != [".env"] and read("bootstrap/cache/config.php") is not None:
        # A cached config ignores every .env file: the run would reach the main database.
        main = _env_layers(read, env, [".env"], Found())
        found.add(*_laravel_target(root, main))
        found.warnings.append(
            "bootstrap/cache/config.php exists: Laravel ignores .env files while it does, so "
            f"this {op.kind} run could reach the .env database; run `php artisan config:clear`"
        )
    return found


def _laravel_target(root: Path, variables: Variables) -> tuple[Target | None, str]:
    source = variables.origin(*_LARAVEL_KEYS)
    url = variables.get("DB_URL") or variables.get("DATABASE_URL")
    if url:
        return parse_database_url(url, root, source), f"{source}: in-memory SQLite"
    connection = (variables.get("DB_CONNECTION") or "sqlite").lower()
    if connection == "sqlite":
        database = variables.get("DB_DATABASE") or "database/database.sqlite"
        if database == ":memory:":
            return None, f"{source}: SQLite :memory:, nothing on disk to back up"
        path = Path(database) if Path(database).is_absolute() else root / database
        return Target(engine="sqlite", path=str(path), source=source), ""
    engines = {"pgsql": ("postgres", 5432), "mysql": ("mysql", 3306), "mariadb": ("mysql", 3306)}
    if connection not in engines:
        raise DiscoveryError(
            f"{source}: DB_CONNECTION={connection} is not an engine dbguard can back up",
            "dbguard supports sqlite, pgsql, mysql and mariadb",
        )
    engine, default_port = engines[connection]
    port = variables.get("DB_PORT") or str(default_port)
    if not port.isdigit():
        raise DiscoveryError(f"{source}: DB_PORT={port!r} is not a port number")
    password = variables.get("DB_PASSWORD")
    return (
        Target(
            engine=engine,
            host=variables.get("DB_HOST") or "127.0.0.1",
            port=int(port),
            socket=variables.get("DB_SOCKET") or None,
            user=variables.get("DB_USERNAME") or "root",
            password=SecretStr(password) if password else None,
            name=variables.get("DB_DATABASE") or "laravel",
            source=source,
        ),
        "",
    )


# ---- Prisma -------------------------------------------------------------------------


def prisma(root: Path, read: FileReader, env: Mapping[str, str], op: Operation) -> Found:
    """The datasource of prisma/schema.prisma; `file:` paths are relative to its folder."""
    found = Found()
    schema_path = op.hints.get("schema", "prisma/schema.prisma")
    text = read(schema_path)
    found.looked.append(schema_path if text is not None else f"{schema_path} (absent)")
    if text is None:
        return found
    schema_dir = (root / schema_path).parent
    relative_dir = str(Path(schema_path).parent)
    variables = _env_layers(read, env, [".env", f"{relative_dir}/.env"], found)
    url_value = _prisma_datasource_url(text)
    if url_value is None:
        raise DiscoveryError(
            f"{schema_path}: no datasource url found",
            'add url = env("DATABASE_URL") to the datasource block',
        )
    kind, value = url_value
    if kind == "env":
        url = variables.get(value)
        source = f"{schema_path} -> {variables.origin(value)}"
        if not url:
            raise DiscoveryError(
                f"{schema_path} reads the database URL from {value}, which is not set "
                f"(looked in the environment, .env and {relative_dir}/.env)",
                f"set {value}, so dbguard and Prisma agree on the database",
            )
    else:
        url, source = value, schema_path
    found.add(parse_database_url(url, schema_dir, source), f"{source}: in-memory SQLite")
    return found


def _prisma_datasource_url(schema: str) -> tuple[str, str] | None:
    """('env', NAME) for url = env("NAME"), ('literal', URL) for url = "URL"."""
    block = re.search(r"datasource\s+\w+\s*\{(.*?)\}", schema, re.DOTALL)
    if not block:
        return None
    body = "\n".join(
        line for line in block.group(1).splitlines() if not line.strip().startswith("//")
    )
    match = re.search(r'^\s*url\s*=\s*env\(\s*"([^"]+)"\s*\)', body, re.MULTILINE)
    if match:
        return "env", match.group(1)
    match = re.search(r'^\s*url\s*=\s*"([^"]*)"', body, re.MULTILINE)
    return ("literal", match.group(1)) if match else None

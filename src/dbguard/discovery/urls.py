"""Database URLs in the forms frameworks use, turned into Targets.

sqlite:///relative.db  sqlite:////abs.db  sqlite::memory:  file:./dev.db (Prisma)
postgres://  postgresql://  postgresql+psycopg://  mysql://  mysql+pymysql://  mariadb://
"""

from __future__ import annotations

import os.path
import urllib.parse
from pathlib import Path

from pydantic import SecretStr

from dbguard.discovery.envfile import DiscoveryError
from dbguard.engines.base import EngineName, Target

_SCHEMES: dict[str, EngineName] = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "file": "sqlite",
    "postgres": "postgres",
    "postgresql": "postgres",
    "pgsql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_MEMORY = {"", ":memory:", "memory"}
_SOCKET_PARAMS = ("host", "unix_socket", "socket")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def parse_database_url(url: str, base: Path, source: str) -> Target | None:
    """The database `url` names; relative SQLite paths are taken from `base`.

    Returns None for an in-memory SQLite database (nothing on disk to lose). Raises
    DiscoveryError for a URL that does not parse or names an unsupported engine.
    """
    scheme, sep, rest = url.strip().partition(":")
    engine = _SCHEMES.get(scheme.split("+", 1)[0].lower()) if sep else None
    if engine is None:
        shown = redact_url(url)
        raise DiscoveryError(
            f"{source}: {shown[:100]!r} is not a database URL dbguard understands",
            "use sqlite:, file:, postgres(ql):// or mysql:// / mariadb://",
        )
    if engine == "sqlite":
        return _sqlite(scheme.lower(), rest, base, source)
    return _server(engine, url, source)


def _sqlite(scheme: str, rest: str, base: Path, source: str) -> Target | None:
    path, _, query = rest.partition("?")
    if path.startswith("//"):
        after = path[2:]
        if scheme == "file":  # file:///abs/db (URI with an empty or localhost authority)
            path = after[after.find("/") :] if "/" in after else ""
        else:  # SQLAlchemy: sqlite:/// + path, so sqlite:////abs is absolute
            path = after.removeprefix("/")
    path = urllib.parse.unquote(path)
    if path in _MEMORY or path.startswith(":memory:") or "mode=memory" in query:
        return None
    resolved = Path(path) if Path(path).is_absolute() else base / path
    return Target(engine="sqlite", path=os.path.normpath(resolved), source=source)


def _server(engine: EngineName, url: str, source: str) -> Target:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise DiscoveryError(f"{source}: the database URL does not parse: {err}") from None
    params = dict(urllib.parse.parse_qsl(parts.query))
    socket = next(
        (params.pop(k) for k in _SOCKET_PARAMS if params.get(k, "").startswith("/")), None
    )
    name = urllib.parse.unquote(parts.path.lstrip("/")) or None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return Target(
        engine=engine,
        host=urllib.parse.unquote(parts.hostname) if parts.hostname else None,
        port=port,
        socket=socket,
        user=urllib.parse.unquote(parts.username) if parts.username else None,
        password=SecretStr(password) if password is not None else None,
        name=name,
        params={k: v for k, v in params.items() if k in ("sslmode", "sslrootcert", "charset")},
        source=source,
    )

"""Database URLs in the forms frameworks use, turned into Targets.

sqlite:///relative.db  sqlite:////abs.db  sqlite::memory:  file:./dev.db (Prisma)
postgres://  postgresql://  postgresql+psycopg://  postgis://  pgsql://
mysql://  mysql+pymysql://  mysql2:// (Rails)  trilogy://  mariadb://
jdbc:postgresql://  jdbc:mysql://  jdbc:mariadb://  jdbc:sqlite:path (Flyway, Liquibase)

Passwords and user names may be percent-encoded. Query parameters understood: sslmode
(and ssl-mode, sslrootcert, sslcert, sslkey, sslaccept, charset) are kept in
Target.params; a `host`, `socket` or `unix_socket` parameter holding a path is the Unix
socket; libpq's host/port/user/password/dbname parameters fill what the URL leaves out.
A socket may also stand percent-encoded in the host part (`postgres://%2Fvar%2Frun/db`).
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
    "postgis": "postgres",
    "pgsql": "postgres",
    "mysql": "mysql",
    "mysql2": "mysql",
    "trilogy": "mysql",
    "mariadb": "mysql",
}
_UNSUPPORTED = {
    "sqlserver": "SQL Server",
    "mssql": "SQL Server",
    "mongodb": "MongoDB",
    "mongodb+srv": "MongoDB",
    "cockroachdb": "CockroachDB",
    "oracle": "Oracle",
    "redis": "Redis",
}
_MEMORY = {"", ":memory:", "memory"}
_SOCKET_PARAMS = ("host", "unix_socket", "socket")
_KEPT_PARAMS = ("sslmode", "ssl-mode", "sslrootcert", "sslcert", "sslkey", "sslaccept", "charset")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***.

    A password with an unencoded @, :, /, # or ? makes the URL parse wrong (part of the
    password becomes the host or the path), so anything unusual is redacted by shape:
    everything from the first ':' after the user to the last '@' goes."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
        clean = rest.count("@") == 1 and parts.password is not None
    except ValueError:
        clean = False
    if clean:
        user, host = parts.username or "", parts.hostname or ""
        host = f"[{host}]" if ":" in host else host  # IPv6
        port = f":{parts.port}" if parts.port else ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    userinfo, _, after = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not colon:
        return url  # no password
    return f"{scheme}://{user}:***@{after}"


def url_engine(url: str) -> EngineName | None:
    """The engine a URL's scheme names, or None when it is not one dbguard knows."""
    scheme, sep, _ = _strip_jdbc(url.strip()).partition(":")
    return _SCHEMES.get(scheme.split("+", 1)[0].lower()) if sep else None


def sqlalchemy_relative_sqlite(url: str) -> bool:
    """Whether `url` is SQLAlchemy's pysqlite URL of a relative file (`sqlite:///app.db`,
    `sqlite+pysqlite:///data/app.db`): the kind Flask-SQLAlchemy 3 opens in the Flask
    app's instance folder rather than the working folder."""
    scheme, _, rest = url.strip().strip("'\"").partition(":")
    if scheme.lower() not in ("sqlite", "sqlite+pysqlite") or not rest.startswith("///"):
        return False
    path = urllib.parse.unquote(rest[3:].partition("?")[0])
    return path not in _MEMORY and not path.startswith((":memory:", "/"))


def parse_database_url(
    url: str, base: Path, source: str, *, where: str | None = None
) -> Target | None:
    """The database `url` names; relative SQLite paths are taken from `base`.

    Returns None for an in-memory SQLite database (nothing on disk to lose). Raises
    DiscoveryError, naming `where` (default `source`; say file and line there), for a
    URL that does not parse or names an unsupported engine. The password never appears
    in an error.
    """
    where = where or source
    text = _strip_jdbc(url.strip().strip("'\""))
    scheme, sep, rest = text.partition(":")
    base_scheme = scheme.split("+", 1)[0].lower()
    engine = _SCHEMES.get(base_scheme) if sep else None
    if engine is None:
        shown = redact_url(url.strip())
        if base_scheme in _UNSUPPORTED and sep:
            raise DiscoveryError(
                f"{where}: {shown[:100]!r} is a {_UNSUPPORTED[base_scheme]} database, which "
                "dbguard cannot back up",
                "dbguard backs up SQLite, PostgreSQL and MySQL/MariaDB",
            )
        raise DiscoveryError(
            f"{where}: {shown[:100]!r} is not a database URL dbguard understands",
            "use sqlite:, file:, postgres(ql):// or mysql:// / mariadb://",
        )
    if engine == "sqlite":
        return _sqlite(base_scheme, rest, base, source)
    if not rest.startswith("//"):
        raise DiscoveryError(
            f"{where}: {redact_url(url.strip())[:100]!r} is missing the // after {scheme}:",
            f"write it as {scheme}://user:password@host:port/database",
        )
    return _server(engine, text, source, where)


def _strip_jdbc(url: str) -> str:
    """jdbc:postgresql://h/db -> postgresql://h/db; jdbc:sqlite:x.db -> sqlite:x.db."""
    return url[5:] if url[:5].lower() == "jdbc:" else url


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


def _server(engine: EngineName, url: str, source: str, where: str) -> Target:
    shown = redact_url(url)[:100]
    if "," in url.partition("//")[2].partition("/")[0].rpartition("@")[2]:
        raise DiscoveryError(
            f"{where}: the database URL {shown!r} names several hosts",
            "dbguard backs up one server per URL; name the primary in .dbguard.toml",
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # urllib's message can quote a piece of the password
        raise DiscoveryError(
            f"{where}: the database URL {shown!r} does not parse",
            "percent-encode @ : / # ? and % in the user name and password (@ is %40)",
        ) from None
    hostport = parts.netloc.rpartition("@")[2]
    # Parsed by hand, not parts.hostname: that lower-cases, which would change a socket
    # path written percent-encoded in the host part.
    if hostport.startswith("["):
        raw_host = hostport[1:].partition("]")[0]
    else:
        raw_host = hostport.rpartition(":")[0] if ":" in hostport else hostport
    host = urllib.parse.unquote(raw_host) or None
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    name = urllib.parse.unquote(parts.path.lstrip("/")) or None
    params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    socket = next(
        (params.pop(k) for k in _SOCKET_PARAMS if params.get(k, "").startswith("/")), None
    )
    if host and host.startswith("/"):
        host, socket = None, socket or host
    # libpq-style parameters fill what the URL itself leaves out.
    host = host or params.get("host") or None
    user = user or params.get("user") or params.get("username") or None
    if password is None and params.get("password"):
        password = params["password"]
    name = name or params.get("dbname") or params.get("database") or None
    if port is None and params.get("port"):
        if not params["port"].isdigit():
            raise DiscoveryError(f"{where}: port {params['port']!r} in {shown!r} is not a number")
        port = int(params["port"])
    return Target(
        engine=engine,
        host=host,
        port=port,
        socket=socket,
        user=user,
        password=SecretStr(password) if password is not None else None,
        name=name,
        params={k: v for k, v in params.items() if k in _KEPT_PARAMS},
        source=source,
    )

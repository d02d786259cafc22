"""Supabase's local stack and the interactive clients psql, mysql/mariadb and sqlite3.

Supabase: `--db-url` (hint `url`) is the target; `--linked` (hint `target=linked`), and
the default of `db push`, `db pull` and `migration repair`, is the remote project named
in `supabase/.temp/project-ref` (db.REF.supabase.co, user and database postgres,
password from SUPABASE_DB_PASSWORD); otherwise the local stack:
postgres on 127.0.0.1 at `[db] port` of supabase/config.toml (default 54322), database
and user `postgres`.

Clients take their target from hints (host, port, database, user, socket; the rules
catalog fills them from -h/-p/-d/-U and positional arguments, splitting a psql URL or
`key=value` conninfo) and the client's own variables (PG* for psql; MYSQL_HOST,
MYSQL_TCP_PORT, MYSQL_UNIX_PORT, MYSQL_PWD for mysql). A mysql session with no database
named could touch any database on the server, which dbguard cannot back up as one: it
is denied. sqlite3's file (hint `database`) is relative to the working folder; without
one (or `:memory:`) it is in memory. A psql service (hint `section`) lives in a file
outside the project, so it is denied with a pointer to .dbguard.toml.
"""

from __future__ import annotations

import re

from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.formats import parse_toml
from dbguard.discovery.generic import app_env_facts
from dbguard.discovery.model import Context, Found, server_target, sqlite_target, url_target
from dbguard.production import INVOKING_ENV, Setting, TargetFacts

__all__ = ["client", "supabase"]

SUPABASE_CONFIG = "supabase/config.toml"
# Commands that act on the linked remote project unless told --local (the CLI's own
# defaults); the others default to the local stack.
_DEFAULT_TARGET = {"db push": "linked", "db pull": "linked", "migration repair": "linked"}
POSTGRES_CLIENTS = {"psql", "pgcli", "dropdb", "pg_restore"}
MYSQL_CLIENTS = {"mysql", "mariadb", "mycli", "mysqladmin"}
SQLITE_CLIENTS = {"sqlite3", "sqlite", "litecli"}


def supabase(ctx: Context, found: Found) -> None:
    facts = app_env_facts(ctx.environment())
    if ctx.hints.get("url"):
        source = "--db-url on the command line"
        target, url_facts = url_target(
            ctx.hints["url"], ctx.root, source, source, "--db-url", facts
        )
        found.add(target, f"{source}: in-memory SQLite", url_facts)
        return
    if ctx.hints.get("target", _DEFAULT_TARGET.get(ctx.operation.command, "local")) == "linked":
        ref = (ctx.read_looked("supabase/.temp/project-ref", found) or "").strip()
        if not re.fullmatch(r"[a-z0-9]{10,40}", ref):
            raise DiscoveryError(
                "supabase --linked: no linked project (supabase/.temp/project-ref)",
                "run `supabase link`, or pass --db-url",
            )
        host = f"db.{ref}.supabase.co"
        source = f"supabase/.temp/project-ref ({ref}) — the linked remote project"
        facts.fields["host"] = Setting("project-ref", host, "supabase/.temp/project-ref")
        target = server_target(
            "postgres",
            host=host,
            port=5432,
            name="postgres",
            user="postgres",
            password=ctx.flat_env.get("SUPABASE_DB_PASSWORD"),
            source=source,
            where=source,
        )
        found.add(target, facts=facts)
        return
    text = ctx.read_looked(SUPABASE_CONFIG, found)
    if text is None:
        if ctx.operation.framework == "supabase":
            raise DiscoveryError(
                f"{SUPABASE_CONFIG}: no such file",
                "run the command from the Supabase project folder",
            )
        return
    data = parse_toml(text, SUPABASE_CONFIG)
    db = data.get("db")
    port = db.get("port", 54322) if isinstance(db, dict) else 54322
    if not isinstance(port, int):
        raise DiscoveryError(f"{SUPABASE_CONFIG}: [db] port {port!r} is not a number")
    source = f"{SUPABASE_CONFIG} ([db] port = {port}) — the local Supabase stack"
    target = server_target(
        "postgres",
        host="127.0.0.1",
        port=port,
        name="postgres",
        user="postgres",
        password="postgres",  # noqa: S106 - the local stack's fixed, documented password
        source=source,
        where=SUPABASE_CONFIG,
    )
    found.add(target, facts=facts)


def client(ctx: Context, found: Found) -> None:
    tool = ctx.operation.tool.lower()
    if tool in POSTGRES_CLIENTS:
        _psql(ctx, found)
    elif tool in MYSQL_CLIENTS:
        _mysql(ctx, found)
    elif tool in SQLITE_CLIENTS:
        _sqlite(ctx, found)
    else:
        raise DiscoveryError(
            f"{ctx.operation.tool}: dbguard does not know which database this client opens",
            "name the database in .dbguard.toml",
        )


def _facts(ctx: Context, names: dict[str, tuple[str, str]]) -> TargetFacts:
    facts = app_env_facts(ctx.environment())
    for attribute, (value, origin) in names.items():
        facts.fields[attribute] = Setting(
            origin, value, "the command line" if origin.startswith("-") else INVOKING_ENV
        )
    return facts


def _psql(ctx: Context, found: Found) -> None:
    hints, env = ctx.hints, ctx.flat_env
    if hints.get("section"):
        raise DiscoveryError(
            f"{ctx.operation.tool}: service={hints['section']} is defined in a libpq service "
            "file outside the project, which dbguard does not read",
            "connect with -h/-p/-d/-U, or name the database in .dbguard.toml",
        )
    dbname = hints.get("database") or hints.get("dbname")
    if dbname and ("://" in dbname or "=" in dbname):
        url = dbname if "://" in dbname else _conninfo_url(dbname)
        source = f"{ctx.operation.tool} connection string on the command line"
        target, facts = url_target(
            url, ctx.cwd, source, source, "connection string", app_env_facts(ctx.environment())
        )
        found.add(target, facts=facts)
        return
    user = hints.get("user") or env.get("PGUSER") or env.get("USER") or env.get("LOGNAME")
    host = hints.get("host") or env.get("PGHOST")
    port = hints.get("port") or env.get("PGPORT")
    name = dbname or env.get("PGDATABASE") or user
    origins = {
        "host": "-h" if hints.get("host") else "PGHOST",
        "port": "-p" if hints.get("port") else "PGPORT",
        "name": "-d" if dbname else ("PGDATABASE" if env.get("PGDATABASE") else "the user name"),
        "user": "-U" if hints.get("user") else ("PGUSER" if env.get("PGUSER") else "USER"),
    }
    used = [
        f"{origins[k]}"
        for k, v in (("host", host), ("port", port), ("name", name), ("user", user))
        if v
    ]
    source = f"{ctx.operation.tool} ({', '.join(dict.fromkeys(used)) or 'defaults'})"
    target = server_target(
        "postgres",
        host=host,
        port=port,
        name=name,
        user=user,
        password=env.get("PGPASSWORD"),
        params={"sslmode": env["PGSSLMODE"]} if env.get("PGSSLMODE") else None,
        source=source,
        where=source,
    )
    fields = {k: (v, origins[k]) for k, v in (("host", host), ("name", name)) if v}
    found.add(target, facts=_facts(ctx, fields))


def _conninfo_url(conninfo: str) -> str:
    """`host=x port=5 dbname=y user=z` -> postgresql://z@x:5/y (password stays out)."""
    pairs = dict(re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", conninfo))
    values = {k: v.strip("'") for k, v in pairs.items()}
    from urllib.parse import quote

    user = quote(values.get("user", ""), safe="")
    password = f":{quote(values['password'], safe='')}" if values.get("password") else ""
    host = values.get("host", "")
    query = ""
    if host.startswith("/"):
        query, host = f"?host={quote(host)}", ""
    at = "@" if user or password else ""
    port = f":{values['port']}" if values.get("port") else ""
    sslmode = values.get("sslmode")
    if sslmode:
        query += ("&" if query else "?") + f"sslmode={quote(sslmode)}"
    dbname = quote(values.get("dbname", ""), safe="")
    return f"postgresql://{user}{password}{at}{quote(host, safe='')}{port}/{dbname}{query}"


def _mysql(ctx: Context, found: Found) -> None:
    hints, env = ctx.hints, ctx.flat_env
    name = hints.get("database") or hints.get("dbname")
    if not name:
        raise DiscoveryError(
            f"{ctx.operation.tool} without a database could change any database on the server, "
            "and dbguard backs up one database at a time",
            f"name the database: {ctx.operation.tool} DBNAME (or -D DBNAME)",
        )
    socket = hints.get("socket") or env.get("MYSQL_UNIX_PORT")
    host = hints.get("host") or env.get("MYSQL_HOST") or (None if socket else "localhost")
    port = hints.get("port") or env.get("MYSQL_TCP_PORT")
    user = hints.get("user") or env.get("USER") or env.get("LOGNAME")
    source = (
        f"{ctx.operation.tool} ({'-h ' + host if host else 'socket ' + (socket or '')} -D {name})"
    )
    target = server_target(
        "mysql",
        host=host,
        port=port,
        name=name,
        user=user,
        password=env.get("MYSQL_PWD"),
        socket=socket,
        source=source,
        where=source,
    )
    fields = {"name": (name, "-D")}
    if host:
        fields["host"] = (host, "-h" if hints.get("host") else "MYSQL_HOST")
    found.add(target, facts=_facts(ctx, fields))


def _sqlite(ctx: Context, found: Found) -> None:
    file = ctx.hints.get("database") or ctx.hints.get("file") or ""
    source = f"{ctx.operation.tool} {file} (relative to {ctx.cwd})"
    target = sqlite_target(file, ctx.cwd, source)
    facts = TargetFacts()
    if target is not None:
        facts.fields["path"] = Setting("file", target.path or "", "the command line")
    found.add(
        target,
        f"{ctx.operation.tool} without a file opens an in-memory database: nothing to back up",
        facts,
    )

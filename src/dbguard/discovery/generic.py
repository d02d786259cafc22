"""What contributes whatever the framework: DATABASE_URL, the project's own
`.dbguard.toml` databases, and the PG* variables libpq reads for fields a framework
leaves unset."""

from __future__ import annotations

from pydantic import SecretStr

from dbguard.discovery.model import Context, Found, Variables, load_env_files, url_target
from dbguard.discovery.signs import flask_sqlalchemy_instances
from dbguard.discovery.urls import sqlalchemy_relative_sqlite
from dbguard.engines.base import Target
from dbguard.production import Setting, TargetFacts

__all__ = ["app_env_facts", "database_url", "pg_environment", "project_databases"]


def app_env_facts(variables: Variables, facts: TargetFacts | None = None) -> TargetFacts:
    """Facts that look the application environment up in `variables`, overridden values
    too: which names mean it is the production settings' call."""
    facts = facts or TargetFacts()
    if variables.settings not in facts.variables:
        facts.variables.append(variables.settings)
    return facts


def database_url(ctx: Context, found: Found) -> None:
    """DATABASE_URL from the environment, else from `.env` (under `flask`, then
    `.flaskenv`, which Flask's CLI loads under `.env`): nearly every framework and tool
    reads it, so it always contributes."""
    variables = ctx.environment()
    files = [".env", ".flaskenv"] if ctx.operation.tool == "flask" else [".env"]
    load_env_files(ctx.read, variables, files, found, ctx.flat_env)
    found.look("DATABASE_URL")
    url = variables.get("DATABASE_URL")
    if not url:
        return
    if url.startswith("file:") and not url.startswith("file:/") and _uses_prisma(ctx):
        return  # Prisma's relative SQLite path: from its schema's folder (prisma.py)
    if url.startswith(("prisma://", "prisma+postgres://")) and _uses_prisma(ctx):
        return  # Prisma Accelerate: no database of its own (prisma.py reads directUrl)
    where = variables.where("DATABASE_URL")
    source = variables.origin("DATABASE_URL")
    target, facts = url_target(
        url, ctx.root, f"{source} — DATABASE_URL", where, "DATABASE_URL", app_env_facts(variables)
    )
    found.add(target, f"{source}: DATABASE_URL is in-memory SQLite, nothing to back up", facts)
    if sqlalchemy_relative_sqlite(url):
        _flask_sqlalchemy_instance(ctx, found, url, where, source, variables)


def _flask_sqlalchemy_instance(
    ctx: Context, found: Found, url: str, where: str, source: str, variables: Variables
) -> None:
    """Flask-SQLAlchemy 3 opens a relative SQLite path in the Flask app's instance
    folder (`sqlite:///app.db` is `instance/app.db`), not the working folder: in a project
    that uses it, that file is backed up too (the working folder's stays, for the code
    that opens the URL with SQLAlchemy itself, and for Flask-SQLAlchemy 2)."""
    uses = flask_sqlalchemy_instances(ctx)
    if uses is None:
        return
    folders, why = uses
    for folder in folders:
        in_instance = (
            f"{source} — DATABASE_URL, a relative SQLite path, which Flask-SQLAlchemy 3 "
            f"opens in the app's instance folder {folder}/ ({why})"
        )
        target, facts = url_target(
            url, ctx.root / folder, in_instance, where, "DATABASE_URL", app_env_facts(variables)
        )
        found.add(target, facts=facts)


def _uses_prisma(ctx: Context) -> bool:
    markers = ("prisma/schema.prisma", "schema.prisma", "prisma.config.ts")
    return any(ctx.read(m) is not None for m in markers) or ctx.listdir("prisma") is not None


def project_databases(ctx: Context, found: Found) -> None:
    """The `[[database]]` entries of `.dbguard.toml`."""
    if ctx.project is None or not ctx.project.database:
        return
    variables = ctx.environment()
    load_env_files(ctx.read, variables, [".env"], Found(), ctx.flat_env)
    values = {
        entry.password_env: variables.get(entry.password_env) or ""
        for entry in ctx.project.database
        if entry.password_env and entry.password_env in variables
    }
    for source, target, facts in ctx.project.targets(ctx.root, values):
        note = f"{source}: in-memory SQLite, nothing to back up"
        found.add(target, note, app_env_facts(variables, facts))


# libpq's variables, and the Target field each one fills.
PG_VARIABLES = {
    "PGHOST": "host",
    "PGPORT": "port",
    "PGDATABASE": "name",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGSSLMODE": "sslmode",
}


def pg_environment(ctx: Context, target: Target) -> tuple[Target, list[Setting]]:
    """`target` with the fields its settings leave unset taken from PG* variables, as
    libpq (psql, psycopg, Rails' pg, node-postgres) does; and the settings used."""
    if target.engine != "postgres":
        return target, []
    env = ctx.flat_env
    update: dict[str, object] = {}
    used = []
    for variable, attribute in PG_VARIABLES.items():
        value = env.get(variable)
        if not value:
            continue
        if attribute == "host":
            if target.host is not None or target.socket is not None:
                continue
            update.update({"socket": value} if value.startswith("/") else {"host": value})
        elif attribute == "port":
            if target.port is not None or not value.isdigit():
                continue
            update["port"] = int(value)
        elif attribute == "sslmode":
            if "sslmode" in target.params:
                continue
            update["params"] = {**target.params, "sslmode": value}
        elif attribute == "password":
            if target.password is not None:
                continue
            update["password"] = SecretStr(value)
        elif getattr(target, attribute) is None:
            update[attribute] = value
        else:
            continue
        used.append(
            Setting(
                variable, "***" if attribute == "password" else value, "the invoking environment"
            )
        )
    if not update:
        return target, []
    names = ", ".join(s.name for s in used)
    update["source"] = f"{target.source} (with {names} from the environment)"
    return target.model_copy(update=update), used

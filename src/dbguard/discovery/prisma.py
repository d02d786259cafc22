"""Prisma: the `datasource` block of the schema.

The schema is the one named by `--schema` (hint `schema`), package.json's `"prisma":
{"schema": ...}` or prisma.config.ts's `schema: "..."`, else `prisma/schema.prisma`,
`schema.prisma` or the folder `prisma/schema/`. A folder (a multi-file schema) means the
.prisma file in it with the datasource block. Its `url = env("NAME")` is looked up in
the environment, `.env` and the schema folder's `.env` (the files Prisma's CLI loads); a
literal `url = "..."` is used as is; Prisma 7 moved the url (and shadowDatabaseUrl) to
prisma.config.ts, read the same way. `file:` URLs are relative to the schema's folder.
`directUrl` is a target too for Prisma's CLI, which connects through it (migrate, db
push), where the app, its seed script and its tests use `url` (a pooler, or
Accelerate's `prisma://`, which is then left out: no database of its own). A configured
`shadowDatabaseUrl` is one for `migrate dev`, which resets it (Prisma creates and drops
its own shadow database only when none is configured).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import PurePosixPath

from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.formats import parse_json
from dbguard.discovery.generic import app_env_facts
from dbguard.discovery.model import Context, Found, load_env_files, url_target
from dbguard.discovery.urls import url_engine

__all__ = ["NoSchema", "prisma"]


class NoSchema(DiscoveryError):
    """No Prisma schema where Prisma looks, and no prisma.config.* that could name one
    elsewhere: Prisma itself stops there ("Could not find Prisma Schema") and touches no
    database."""


DEFAULT_SCHEMA = "prisma/schema.prisma"
# Where Prisma looks next (schema.prisma), and where its multi-file schemas began.
_FALLBACKS = ("schema.prisma", "prisma/schema")
_MAX_SCHEMA_FILES = 256
_PROVIDERS = {
    "postgresql": "postgres",
    "postgres": "postgres",
    "mysql": "mysql",
    "sqlite": "sqlite",
}


def schema_path(ctx: Context, found: Found) -> str:
    hinted = ctx.hints.get("schema")
    if hinted:
        return hinted
    text = ctx.read("package.json")
    if text is not None:
        data = parse_json(text, "package.json")
        settings = data.get("prisma") if isinstance(data, dict) else None
        configured = settings.get("schema") if isinstance(settings, dict) else None
        if isinstance(configured, str) and configured:
            found.look("package.json (prisma.schema)")
            return configured
    for name in CONFIG_FILES:  # Prisma 7: defineConfig({ schema: "prisma/" })
        match = _CONFIG_SCHEMA.search(_LINE_COMMENT.sub("", ctx.read(name) or ""))
        if match:
            found.look(f"{name} (schema)")
            joined = match.group(1) or posixpath.join(*_QUOTED.findall(match.group(2)))
            return joined.rstrip("/") or "."
    return DEFAULT_SCHEMA


CONFIG_FILES = ("prisma.config.ts", "prisma.config.mts", "prisma.config.js", ".config/prisma.ts")
# In prisma.config.ts: datasource: { url: env("X") } (also env<Env>("X")), process.env.X,
# process.env["X"], or a literal "postgresql://..." (a template literal only without ${}).
# The same for shadowDatabaseUrl.
_CONFIG_VALUE = (
    r"""\s*:\s*(?:env\s*(?:<[^>]*>)?\(\s*['"](\w+)['"]\s*\)|process\.env\.(\w+)"""
    r"""|process\.env\[\s*['"](\w+)['"]\s*\]|(['"`])([^'"`$\n]*)\4)"""
)
_CONFIG_FIELDS = {
    name: (re.compile(rf"\b{name}{_CONFIG_VALUE}"), re.compile(rf"\b{name}\s*:"))
    for name in ("url", "shadowDatabaseUrl")
}
_LINE_COMMENT = re.compile(r"^\s*//.*$", re.MULTILINE)
# schema: "db/schema", or path.join("db", "schema") as Prisma's docs write it.
_CONFIG_SCHEMA = re.compile(
    r"""\bschema\s*:\s*(?:['"]([^'"]+)['"]|path\.join\(((?:\s*['"][^'"]*['"]\s*,?)+)\))"""
)
_QUOTED = re.compile(r"""['"]([^'"]*)['"]""")


def _config_url(
    ctx: Context, found: Found, field: str = "url"
) -> tuple[tuple[str, str, int], str] | None:
    """("env", variable, 0) or ("literal", URL, 0) for the datasource's `field` in
    prisma.config.*, and where it says so; None when no config file names it. A `field`
    computed some other way (a template, a function) raises DiscoveryError: dbguard runs
    no project code, and must not guess the database."""
    readable, present = _CONFIG_FIELDS[field]
    for name in CONFIG_FILES:
        text = _LINE_COMMENT.sub("", ctx.read_looked(name, found) or "")  # keeps line numbers
        match = readable.search(text)
        if match:
            line = text.count("\n", 0, match.start()) + 1
            variable = match.group(1) or match.group(2) or match.group(3)
            kind, value = ("env", variable) if variable else ("literal", match.group(5))
            return (kind, value, 0), f"{name}, line {line}"
        match = present.search(text)
        if match:
            line = text.count("\n", 0, match.start()) + 1
            raise DiscoveryError(
                f"{name}, line {line}: {field} is computed in a way dbguard does not read "
                '(it reads env("NAME"), process.env.NAME and a plain "postgresql://..." string)',
                f'write {field}: env("NAME"), or name the database in .dbguard.toml '
                '([[database]] url = "...")',
            )
    return None


def _schema_file(ctx: Context, found: Found, path: str) -> tuple[str, str | None]:
    """The schema file and its text: `path` itself, or, for a folder of .prisma files
    (Prisma's multi-file schema), the one with the datasource block in it."""
    text = ctx.read_looked(path, found)
    if text is not None or ctx.listdir(path) is None:
        return path, text
    folders, files = [path], list[str]()
    while folders and len(files) < _MAX_SCHEMA_FILES:
        folder = folders.pop()
        for name in sorted(ctx.listdir(folder) or []):
            child = f"{folder}/{name}"
            if name.endswith(".prisma"):
                files.append(child)
            elif ctx.listdir(child) is not None:
                folders.append(child)
    for file in files[:_MAX_SCHEMA_FILES]:
        text = ctx.read_looked(file, found)
        if text is not None and _datasource(text) is not None:
            return file, text
    return path, None


def prisma(ctx: Context, found: Found) -> None:
    path = schema_path(ctx, found)
    text = None
    for candidate in [path, *_FALLBACKS] if path == DEFAULT_SCHEMA else [path]:
        schema_file, text = _schema_file(ctx, found, candidate)
        if text is not None:
            path = schema_file
            break
    if text is None:
        if ctx.operation.framework == "prisma":
            # Certain only where no config file could name a schema dbguard cannot read,
            # and none is at any place Prisma 5 to 7 looks by default.
            certain = not any(ctx.read(name) is not None for name in CONFIG_FILES) and all(
                ctx.read(place) is None and ctx.listdir(place) is None
                for place in (DEFAULT_SCHEMA, *_FALLBACKS)
            )
            raise (NoSchema if certain else DiscoveryError)(
                f"{path}: no Prisma schema there",
                "run the command from the project folder, or pass --schema",
            )
        return
    folder = str(PurePosixPath(path).parent)
    variables = ctx.environment()
    env_files = [".env"] if folder in ("", ".") else [".env", f"{folder}/.env"]
    load_env_files(ctx.read, variables, env_files, found, ctx.flat_env)
    block = _datasource(text)
    if block is None:
        raise DiscoveryError(f"{path}: no datasource block", "add a datasource block with a url")
    body, first_line = block
    provider = _field(body, "provider")
    url_value = _url(body)
    where = ""
    if url_value is None:
        config = _config_url(ctx, found)  # Prisma 7: the URL moved to prisma.config.ts
        if config is None:
            raise DiscoveryError(
                f"{path}, line {first_line}: the datasource has no url, and no "
                f"{' or '.join(CONFIG_FILES)} names one",
                'name it in prisma.config.ts (datasource: { url: env("DATABASE_URL") }), '
                'or in .dbguard.toml ([[database]] url = "...")',
            )
        url_value, where = config
    kind, value, line = url_value
    where = where or f"{path}, line {first_line + line}"
    if kind == "env":
        url = variables.get(value)
        if not url:
            raise DiscoveryError(
                f"{where}: the database URL comes from {value}, which is not set "
                f"(looked in the environment, {' and '.join(env_files)})",
                f"set {value}, so dbguard and Prisma agree on the database",
            )
        said = where if where.startswith("prisma.config") else f'{path} (url = env("{value}"))'
        source = f"{said} -> {variables.origin(value)}"
        url_where = variables.where(value)
        setting_name = value
    else:
        said = where if where.startswith("prisma.config") else path
        url, source, url_where, setting_name = value, f"{said} (url)", where, "url"
    if (
        provider
        and provider[0] in _PROVIDERS
        and url_engine(url) not in (None, _PROVIDERS[provider[0]])
    ):
        raise DiscoveryError(
            f"{where}: provider {provider[0]!r} does not match the URL's scheme",
            "make the datasource provider and the URL name the same kind of database",
        )
    base = ctx.root / folder
    # Only the CLI connects through directUrl; a test run's code uses url alone.
    direct = _url(body, "directUrl") if ctx.operation.tool == "prisma" else None
    direct_url = None
    if direct is not None:
        direct_url = variables.get(direct[1]) if direct[0] == "env" else direct[1]
    if not (direct_url and url_engine(url) is None):  # prisma://: Accelerate, no database
        target, facts = url_target(
            url, base, source, url_where, setting_name, app_env_facts(variables)
        )
        found.add(target, f"{source}: in-memory SQLite, nothing to back up", facts)
    if direct is not None and direct_url:
        said = f"{path}, line {first_line + direct[2]} (directUrl, what Prisma's CLI uses)"
        name = direct[1] if direct[0] == "env" else "directUrl"
        direct_target, facts = url_target(
            direct_url, base, said, said, name, app_env_facts(variables)
        )
        found.add(direct_target, facts=facts)
    if ctx.operation.command.startswith("migrate dev"):
        # Prisma resets a shadow database that is configured, where it creates and drops
        # one of its own otherwise: one pointed at real data by mistake is wiped. Backed
        # up when it exists (a missing one has nothing to back up).
        shadow = _url(body, "shadowDatabaseUrl")
        shadow_where = ""
        if shadow is None:
            config_shadow = _config_url(ctx, found, "shadowDatabaseUrl")  # Prisma 7
            if config_shadow is not None:
                shadow, shadow_where = config_shadow
        if shadow is not None:
            kind, value, line = shadow
            url = variables.get(value) if kind == "env" else value
            if url:
                said = f"{shadow_where or f'{path}, line {first_line + line}'} "
                said += "(shadowDatabaseUrl, reset by migrate dev)"
                shadow_target, _ = url_target(url, base, said, said, "shadowDatabaseUrl")
                found.add(shadow_target)


def _datasource(schema: str) -> tuple[str, int] | None:
    """The body of the first datasource block, and the line it starts on."""
    match = re.search(r"^\s*datasource\s+\w+\s*\{(.*?)^\s*\}", schema, re.DOTALL | re.MULTILINE)
    if not match:
        return None
    first_line = schema.count("\n", 0, match.start(1)) + 1
    body = "\n".join(
        "" if line.strip().startswith("//") else line for line in match.group(1).split("\n")
    )
    return body, first_line


def _field(body: str, name: str) -> tuple[str, int] | None:
    match = re.search(rf'^[ \t]*{name}\s*=\s*"([^"]*)"', body, re.MULTILINE)
    return (match.group(1), body.count("\n", 0, match.start())) if match else None


def _url(body: str, name: str = "url") -> tuple[str, str, int] | None:
    """('env', NAME, line) for url = env("NAME"), ('literal', URL, line) for url = "URL"
    (or the field `name`)."""
    match = re.search(rf'^[ \t]*{name}\s*=\s*env\(\s*"([^"]+)"\s*\)', body, re.MULTILINE)
    if match:
        return "env", match.group(1), body.count("\n", 0, match.start())
    match = re.search(rf'^[ \t]*{name}\s*=\s*"([^"]*)"', body, re.MULTILINE)
    if match:
        return "literal", match.group(1), body.count("\n", 0, match.start())
    return None

"""Python projects: Alembic's alembic.ini and Django.

Alembic: `sqlalchemy.url` in the `[alembic]` section of alembic.ini (or the file named
by `-c/--config`, hint `config`, or ALEMBIC_CONFIG; the section named by `-n/--name`,
hint `section`), with `%(here)s` interpolated. An `-x url=...` (hint `x`; also
`sqlalchemy.url`, `db_url`, `database_url`, `dsn`) overrides it when env.py reads
-x arguments. env.py is code and never run, but it is read for the variables it takes
the URL from (`os.environ["DATABASE_URL"]`, `os.getenv(...)`): those are looked up in the
environment and `.env`. With no URL anywhere else, DATABASE_URL is the fallback, and
the target's source says so.

Django: settings modules are code and are never run; DATABASE_URL (generic.py) and
`.dbguard.toml` name the database. The settings module (`--settings`, hint `settings`,
or DJANGO_SETTINGS_MODULE, or manage.py's default) is recorded in `looked`; only the
exact stock `startproject` SQLite block (`BASE_DIR / 'db.sqlite3'`) is recognised in it.
"""

from __future__ import annotations

import configparser
import os.path
import re
from pathlib import Path, PurePosixPath

from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.generic import app_env_facts
from dbguard.discovery.model import (
    Context,
    Found,
    load_env_files,
    sqlite_target,
    url_target,
)
from dbguard.production import Setting, TargetFacts

__all__ = ["alembic", "django"]

X_URL_KEYS = ("url", "sqlalchemy.url", "sqlalchemy_url", "db_url", "database_url", "dburl", "dsn")
_ENV_READ = re.compile(
    r"""(?:os\.)?(?:environ\s*\[\s*|environ\.get\(\s*|getenv\(\s*|environ\.setdefault\(\s*)['"]([A-Za-z_][A-Za-z0-9_]*)['"]"""
)
# env.py replacing alembic.ini's URL: config.set_main_option("sqlalchemy.url", ...).
_SETS_URL = re.compile(r"""set_main_option\(\s*["']sqlalchemy\.url["']""")
_URLISH = re.compile(r"URL|DSN|DATABASE|_DB|DB_", re.IGNORECASE)
# A value that is a database URL whatever its name (SQLAlchemy's dialect+driver://).
_DATABASE_URL = re.compile(
    r"^(?:postgres|postgresql|mysql|mariadb|sqlite|cockroachdb)(?:\+\w+)?://", re.IGNORECASE
)


def alembic(ctx: Context, found: Found) -> None:
    config = ctx.hints.get("config") or ctx.flat_env.get("ALEMBIC_CONFIG") or "alembic.ini"
    text = ctx.read_looked(config, found)
    if text is None:
        if ctx.operation.framework == "alembic":
            raise DiscoveryError(
                f"{config}: no such file; alembic needs it to find the database",
                "run alembic from the project folder, or pass -c",
            )
        return
    here = os.path.normpath(ctx.root / PurePosixPath(config).parent)
    parser = configparser.ConfigParser(defaults={"here": here})
    try:
        parser.read_string(text, source=config)
    except configparser.Error as err:
        raise DiscoveryError(
            f"{config}, line {_error_line(err)}: {_first_line(err)}", "fix the file"
        ) from None
    section = ctx.hints.get("section") or "alembic"
    if not parser.has_section(section):
        raise DiscoveryError(
            f"{config}: no [{section}] section",
            f"add [{section}] with sqlalchemy.url, or pass the right -n/--name",
        )
    variables = ctx.environment()
    load_env_files(ctx.read, variables, [".env"], found, ctx.flat_env)
    facts = app_env_facts(variables)
    env_py, env_py_name, every_read = _env_py(ctx, parser, section, found)
    # The variables env.py reads that name a database: by their name, or by a value that
    # is a database URL (`set_main_option("sqlalchemy.url", os.environ["PG_URI"])`).
    reads = [
        name
        for name in every_read
        if _URLISH.search(name) or _DATABASE_URL.match(variables.get(name) or "")
    ]
    uses_x = env_py is not None and "get_x_argument" in env_py
    x_url = _x_url(ctx.hints.get("x", ""))
    if x_url is not None:
        key, x_value = x_url
        source = f"-x {key}=... on the command line"
        target, x_facts = url_target(x_value, ctx.root, source, source, f"-x {key}", facts)
        found.add(target, f"{source}: in-memory SQLite", x_facts)
        if uses_x:
            return  # env.py takes the URL from -x when given
    added = False
    for name in reads:
        value = variables.get(name)
        if not value:
            continue
        source = f"{env_py_name} reads {name}: {variables.where(name)}"
        target, var_facts = url_target(value, ctx.root, source, variables.where(name), name, facts)
        found.add(target, f"{source}: in-memory SQLite", var_facts)
        added = True
    ini_url = _ini_url(parser, config, section, text)
    if ini_url:
        line = _ini_line(text, section, "sqlalchemy.url")
        where = f"{config}, line {line}" if line else config
        source = f"{config} [{section}] sqlalchemy.url"
        try:
            target, ini_facts = url_target(
                ini_url, ctx.root, source, where, "sqlalchemy.url", facts
            )
        except DiscoveryError:
            if added:
                found.notes.append(
                    f"{where}: sqlalchemy.url is not a usable URL; env.py takes it from the "
                    "environment instead"
                )
            elif env_py is not None and _SETS_URL.search(env_py):
                # alembic init's placeholder (driver://user:pass@localhost/dbname), which
                # env.py replaces from code dbguard does not run: only .dbguard.toml can
                # say which database that is.
                if ctx.project is None or not ctx.project.database:
                    raise DiscoveryError(
                        f"{env_py_name} sets sqlalchemy.url from code dbguard does not run, "
                        f"and {where} holds no database URL dbguard understands",
                        'name the database in .dbguard.toml ([[database]] url = "...")',
                    ) from None
                found.notes.append(
                    f"{where}: sqlalchemy.url is not a URL, and {env_py_name} sets its own: "
                    "the databases of .dbguard.toml are the ones backed up"
                )
            else:
                raise
        else:
            found.add(target, f"{source}: in-memory SQLite", ini_facts)
        return
    if added or x_url is not None:
        return
    if reads:
        raise DiscoveryError(
            f"{config} has no sqlalchemy.url and env.py reads {', '.join(reads)}, which is not set "
            "in the environment or .env",
            f"set {reads[0]}, so dbguard and alembic agree on the database",
        )
    fallback = variables.get("DATABASE_URL")
    if not fallback:
        raise DiscoveryError(
            f"{config} has no sqlalchemy.url in [{section}], and DATABASE_URL is not set",
            "set sqlalchemy.url or DATABASE_URL, or name the database in .dbguard.toml",
        )
    source = (
        f"DATABASE_URL ({variables.where('DATABASE_URL')}) — {config} has no sqlalchemy.url, so "
        "env.py must take it from elsewhere; DATABASE_URL is the usual place"
    )
    target, url_facts = url_target(
        fallback, ctx.root, source, variables.where("DATABASE_URL"), "DATABASE_URL", facts
    )
    found.add(target, f"{source}: in-memory SQLite", url_facts)


def _ini_url(parser: configparser.ConfigParser, config: str, section: str, text: str) -> str:
    try:
        return parser.get(section, "sqlalchemy.url", fallback="").strip()
    except configparser.Error as err:
        line = _ini_line(text, section, "sqlalchemy.url")
        where = f"{config}, line {line}" if line else config
        raise DiscoveryError(
            f"{where}: {_first_line(err)}", "fix the interpolation (%% for a literal %)"
        ) from None


def _env_py(
    ctx: Context, parser: configparser.ConfigParser, section: str, found: Found
) -> tuple[str | None, str, list[str]]:
    """env.py's text, its project-relative name, and the variables it reads."""
    try:
        location = parser.get(section, "script_location", fallback="")
    except configparser.Error:
        location = ""
    if not location or ":" in location:  # a package resource: not a file we can name
        return None, "env.py", []
    folder = location if os.path.isabs(location) else os.path.join(str(ctx.root), location)
    relative = os.path.relpath(os.path.normpath(os.path.join(folder, "env.py")), ctx.root)
    text = ctx.read_looked(relative, found)
    if text is None:
        return None, relative, []
    return text, relative, list(dict.fromkeys(_ENV_READ.findall(text)))


def _x_url(hint: str) -> tuple[str, str] | None:
    """The URL among -x values (one per line when several were given): under a URL's
    usual key, or any value that is a database URL (`-x dbname=postgresql://...`, the
    example of Alembic's own get_x_argument)."""
    for item in hint.splitlines():
        key, sep, value = (part.strip() for part in item.partition("="))
        if sep and value and (key.lower() in X_URL_KEYS or _DATABASE_URL.match(value)):
            return key, value
    return None


def _ini_line(text: str, section: str, key: str) -> int:
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            current = header.group(1).strip()
        elif current == section and re.match(rf"^\s*{re.escape(key)}\s*[=:]", line):
            return number
    return 0


def _error_line(err: configparser.Error) -> int | str:
    errors = getattr(err, "errors", None)
    if isinstance(err, configparser.ParsingError) and errors:
        return int(errors[0][0])
    return getattr(err, "lineno", None) or "?"


def _first_line(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


# ---- Django ------------------------------------------------------------------------------

_SETTINGS_DEFAULT = re.compile(
    r"""environ\.setdefault\(\s*['"]DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([\w.]+)['"]\s*\)"""
)
_STOCK_BASE_DIR = re.compile(
    r"^BASE_DIR\s*=\s*(?:Path\(__file__\)\.resolve\(\)\.parent\.parent"
    r"|os\.path\.dirname\(os\.path\.dirname\(os\.path\.abspath\(__file__\)\)\))\s*$",
    re.MULTILINE,
)
_STOCK_SQLITE = re.compile(
    r"""^DATABASES\s*=\s*\{\s*['"]default['"]\s*:\s*\{\s*
        ['"]ENGINE['"]\s*:\s*['"]django\.db\.backends\.sqlite3['"]\s*,\s*
        ['"]NAME['"]\s*:\s*(?:BASE_DIR\s*/\s*['"]([^'"]+)['"]
                          |os\.path\.join\(\s*BASE_DIR\s*,\s*['"]([^'"]+)['"]\s*\))\s*,?\s*
        \}\s*,?\s*\}""",
    re.MULTILINE | re.VERBOSE,
)


# Settings that take their database from DATABASE_URL: the variable itself, dj-database-url,
# django-environ's env.db() / env.db_url() (under any name), django-configurations.
_READS_URL = re.compile(r"DATABASE_URL|dj_database_url|\.db(?:_url)?\(|DatabaseURLValue")
# The variable a reader takes the URL from when it is not DATABASE_URL: env.db('X'),
# env.db_url('X'), dj_database_url.config(env='X'), dj_database_url.parse(os.environ['X']).
_URL_VARIABLE = re.compile(
    r"""(?:\.db(?:_url)?\(\s*(?:var\s*=\s*)?|dj_database_url\.config\([^)]*?\benv\s*=\s*"""
    r"""|dj_database_url\.parse\(\s*(?:os\.)?(?:environ\s*\[\s*|environ\.get\(\s*|getenv\(\s*))"""
    r"""['"]([A-Za-z_][A-Za-z0-9_]*)['"]"""
)
# A DATABASE_URL reader's SQLite default on one line: "sqlite:///" then BASE_DIR / 'x',
# os.path.join(BASE_DIR, 'x') or an f-string's {BASE_DIR}/x.
_SQLITE_FALLBACK = re.compile(
    r"""sqlite:///[^\n]{0,40}?(?:BASE_DIR\s*/\s*['"]([^'"]+)['"]"""
    r"""|os\.path\.join\(\s*BASE_DIR\s*,\s*['"]([^'"]+)['"]\s*\)"""
    r"""|\{BASE_DIR\}/([^'"{}\s]+))"""
)
# DATABASES = ... as a statement of this module (not DATABASES["default"][...] = ...,
# which adjusts what another module built).
# A server URL literal as a DATABASE_URL reader's default (dj_database_url.config(
# default="postgres://..."), env.db("DATABASE_URL", default="...")): the database when
# DATABASE_URL is unset where Django runs.
_URL_DEFAULT = re.compile(
    r"""default\s*=\s*['"]((?:postgres(?:ql)?|pgsql|mysql|mariadb)://[^'"\s]+)['"]"""
)
_ASSIGNS_DATABASES = re.compile(r"^DATABASES\s*(?::[^=]*)?=(?!=)", re.MULTILINE)
# `from .base import *`: the DATABASES this module adjusts, or leaves as it is, is that
# module's (followed to a bounded depth).
_STAR_IMPORT = re.compile(r"^from\s+(\.*)([\w.]*)\s+import\s+\*", re.MULTILINE)
_STAR_DEPTH = 4


def _databases_in_code(ctx: Context, candidate: str, text: str, depth: int = 0) -> str | None:
    """Where a settings module's DATABASES is set in code that does not read
    DATABASE_URL ("file, line N"), following its star imports; None when it reads the
    URL (or is not set in code we can read)."""
    assigned = _ASSIGNS_DATABASES.search(text)
    if assigned:  # this module's own DATABASES = ...: what any star import set is gone
        if _READS_URL.search(text):
            return None
        line = text.count("\n", 0, assigned.start()) + 1
        return f"{candidate}, line {line}"
    if depth >= _STAR_DEPTH:
        return None
    for dots, name in reversed(_STAR_IMPORT.findall(text)):  # the last import wins
        package = PurePosixPath(candidate).parent
        for _ in range(len(dots) - 1):
            package = package.parent
        path = str(package / name.replace(".", "/")) if dots else name.replace(".", "/")
        for module in (f"{path}.py", f"{path}/__init__.py"):
            imported = ctx.read(module)
            if imported is not None:
                where = _databases_in_code(ctx, module, imported, depth + 1)
                if where is not None or _ASSIGNS_DATABASES.search(imported):
                    return where
                break
    return None


def _other_url_variables(ctx: Context, candidate: str, text: str, found: Found) -> None:
    """Databases the settings take from a variable other than DATABASE_URL (which the
    generic step reads): env.db('APP_DATABASE_URL') flushes that one, not DATABASE_URL's.
    One that is not set is refused: dbguard cannot know its default."""
    names = [n for n in dict.fromkeys(_URL_VARIABLE.findall(text)) if n != "DATABASE_URL"]
    if not names:
        return
    variables = ctx.environment()
    load_env_files(ctx.read, variables, [".env"], found, ctx.flat_env)
    for name in names:
        found.look(f"{name} ({candidate} reads it)")
        value = variables.get(name)
        if not value and ctx.names_databases:
            continue  # .dbguard.toml names the databases: the way out this error gives
        if not value:
            raise DiscoveryError(
                f"{candidate} takes its database from {name}, which is not set in the "
                "environment or .env",
                f"set {name} (or name the database in .dbguard.toml), then run the command again",
            )
        source = f"{candidate} reads {name}: {variables.where(name)}"
        target, facts = url_target(
            value, ctx.root, source, variables.where(name), name, app_env_facts(variables)
        )
        found.add(target, f"{source}: in-memory SQLite", facts)


def _base_dir(ctx: Context, settings_file: str) -> Path:
    """The stock BASE_DIR of a settings module: its package's parent folder."""
    base_dir = ctx.root / PurePosixPath(settings_file).parent.parent
    return base_dir.parent if settings_file.endswith("__init__.py") else base_dir


def django(ctx: Context, found: Found) -> None:
    alias = ctx.hints.get("connection")
    labels = {entry.label for entry in ctx.project.database} if ctx.project else set()
    if alias and alias != "default" and alias not in labels:
        # DATABASE_URL is the `default` alias; the others exist only in the settings' code.
        raise DiscoveryError(
            f"--database={alias}: Django's DATABASES is code dbguard does not run, and "
            f"only its 'default' database comes from DATABASE_URL",
            f'name the {alias!r} database in .dbguard.toml ([[database]] url = "...", '
            f'label = "{alias}"), then run the command again',
        )
    module = ctx.hints.get("settings") or ctx.flat_env.get("DJANGO_SETTINGS_MODULE")
    origin = "--settings" if ctx.hints.get("settings") else "DJANGO_SETTINGS_MODULE"
    if not module:
        manage = ctx.read_looked("manage.py", found)
        match = _SETTINGS_DEFAULT.search(manage or "")
        module, origin = (match.group(1), "manage.py") if match else (None, "")
    if not module:
        return
    found.look(f"Django settings {module} ({origin}; code, not executed)")
    path = module.replace(".", "/")
    for candidate in (f"{path}.py", f"{path}/__init__.py"):
        text = ctx.read(candidate)
        if text is None:
            continue
        sqlite = _STOCK_SQLITE.search(text)
        if sqlite and _STOCK_BASE_DIR.search(text):
            name = sqlite.group(1) or sqlite.group(2)
            base_dir = _base_dir(ctx, candidate)
            line = text.count("\n", 0, sqlite.start()) + 1
            source = f"{candidate}, line {line} (the stock DATABASES: sqlite3 BASE_DIR / {name!r})"
            variables = ctx.environment()
            facts = app_env_facts(variables, TargetFacts())
            target = sqlite_target(name, base_dir, source)
            if target is not None:
                facts.fields["path"] = Setting(
                    "NAME", target.path or "", f"{candidate}, line {line}"
                )
            found.add(target, facts=facts)
            return
        fallback = _SQLITE_FALLBACK.search(text)
        if fallback and _STOCK_BASE_DIR.search(text):
            # dj_database_url.config(default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"): the
            # database whenever DATABASE_URL is not set where Django runs, which a .env
            # the settings never load does not do. Backed up besides DATABASE_URL's.
            name = fallback.group(1) or fallback.group(2) or fallback.group(3)
            line = text.count("\n", 0, fallback.start()) + 1
            source = f"{candidate}, line {line} (the SQLite default when DATABASE_URL is unset)"
            found.add(sqlite_target(name, _base_dir(ctx, candidate), source))
        for default in _URL_DEFAULT.finditer(text):
            line = text.count("\n", 0, default.start()) + 1
            source = f"{candidate}, line {line} (the default when DATABASE_URL is unset)"
            target, facts = url_target(default.group(1), ctx.root, source, source, "default")
            found.add(target, facts=facts)
        _other_url_variables(ctx, candidate, text, found)
        in_code = _databases_in_code(ctx, candidate, text)
        if in_code is not None and not ctx.names_databases:
            # Settings that build DATABASES in code without DATABASE_URL: a DATABASE_URL in
            # the environment or .env would name some other database than the one run.
            raise DiscoveryError(
                f"{in_code}: DATABASES is set in code dbguard does not run, "
                "and not from DATABASE_URL",
                'name the database in .dbguard.toml ([[database]] url = "..."), then run '
                "the command again",
            )
        return

"""The dotenv files a jest or vitest run loads through its own configuration.

Neither runner loads `.env.test` into `process.env` by itself: Jest reads no dotenv file,
and Vitest (Vite's loadEnv, mode "test") exposes only `VITE_`-prefixed variables. Both set
NODE_ENV=test when it is unset. A project that wants its test database does it in the
runner's config or in a setup file that config names:

- dotenv: `dotenv.config({ path: ".env.test" })`; `import "dotenv/config"` or a setup
  file named `dotenv/config`, which take the path from DOTENV_CONFIG_PATH (else `.env`)
  and override from DOTENV_CONFIG_OVERRIDE (dotenv's lib/env-options.js).
- dotenv-flow: `require("dotenv-flow").config()` or `dotenv-flow/config` loads, most
  important first, `.env.$NODE_ENV.local`, `.env.$NODE_ENV`, `.env.local` (not under
  NODE_ENV=test), `.env`, `.env.defaults` (its options `node_env` and `path`, or
  DOTENV_FLOW_PATH for dotenv-flow/config, are read).
- Next.js: a jest config made by `next/jest` with `{ dir }` loads that folder's files
  through @next/env in Next's test mode, `.env.test.local`, `.env.test`, `.env` (never
  `.env.local`); under another NODE_ENV its production mode (next/jest passes dev=false):
  `.env.production.local`, `.env.local`, `.env.production`, `.env`.
- Vite's `loadEnv(mode, process.cwd(), "")`: every variable of `.env`, `.env.local`,
  `.env.[mode]`, `.env.[mode].local`; the mode is `--mode`, else "test".

Those files are read here, as a launcher's dotenv files are: under the real environment
(none of these loaders replaces a variable that is already set), unless dotenv's
override says so.

dbguard runs no project code: a path it cannot read (a variable, a template with ${}),
or an option that changes which files load, is reported as such, and discovery then
takes both candidates (see discover()).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from dbguard.discovery.model import Context, Found

__all__ = ["RunnerEnv", "runner_env_files"]

RUNNERS = ("jest", "vitest")
_CONFIGS = {
    "jest": tuple(f"jest.config.{ext}" for ext in ("js", "ts", "mjs", "cjs", "mts", "cts")),
    "vitest": tuple(
        f"{name}.config.{ext}"
        for name in ("vitest", "vite")
        for ext in ("ts", "mts", "cts", "js", "mjs", "cjs")
    ),
}
_MAX_SETUP_FILES = 16
_COMMENT = re.compile(r"^\s*//.*$|/\*.*?\*/", re.MULTILINE | re.DOTALL)
_STRING = r"""(['"`])([^'"`$\n]*)\{q}"""
# dotenv's config({ ... }), also dotenv.config(...), require("dotenv").config(...).
_DOTENV_CALL = re.compile(r"\bconfig\s*\(\s*(\{[^}]*\})?\s*\)")
_PATH = re.compile(
    r"\bpath\s*:\s*(?:"
    + _STRING.format(q=1)
    + r"|path\.(?:resolve|join)\(\s*(__dirname|process\.cwd\(\))\s*,\s*"
    + _STRING.format(q=4)
    + r"\s*\))"
)
_OVERRIDE = re.compile(r"\boverride\s*:\s*true\b")
_DOTENV_IMPORT = re.compile(r"""(?:import|require\s*\()\s*['"]dotenv/config['"]""")
_FLOW_IMPORT = re.compile(r"""(?:import|require\s*\()\s*['"]dotenv-flow/config['"]""")
# The module a config( call belongs to: require("x").config(, or name.config( with `name`
# bound by an import or a require, or config( imported by name.
_RECEIVER = re.compile(r"""(?:require\s*\(\s*['"]([^'"]+)['"]\s*\)|([\w$]+))\s*\.\s*$""")
_BINDING = (
    r"(?:import\s+(?:\*\s+as\s+)?{name}\s+from|(?:const|let|var)\s+{name}\s*=\s*require\s*\()"
    r"""\s*['"]([^'"]+)['"]"""
)
_NAMED_CONFIG = re.compile(
    r"""\{[^}]*\bconfig\b[^}]*\}\s*(?:from|=\s*require\s*\()\s*['"]([^'"]+)['"]"""
)
_OPTION_KEYS = re.compile(r"(?:^|[{,])\s*([\w$]+)\s*(?=[:,}])")
_NODE_ENV_OPTION = re.compile(r"\bnode_env\s*:\s*" + _STRING.format(q=1))
# dotenv-flow options that leave the files it loads as they are.
_FLOW_HARMLESS = {"default_node_env", "encoding", "silent", "debug", "purge_dotenv"}
_NEXT_JEST = r"next/jest(?:\.js)?"
_NEXT_JEST_BINDING = re.compile(
    r"(?:import\s+([\w$]+)\s+from|(?:const|let|var)\s+([\w$]+)\s*=\s*require\s*\()\s*"
    rf"""['"]{_NEXT_JEST}['"]"""
)
_NEXT_DIR = re.compile(r"\bdir\s*:\s*(?:" + _STRING.format(q=1) + r"|(__dirname)\b(?!\s*[+`.(\[]))")
_LOAD_ENV = re.compile(r"\bloadEnv\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
_SETUP = re.compile(
    r"\b(?:setupFiles|setupFilesAfterEnv|globalSetup)\s*:\s*(\[[^\]]*\]|['\"][^'\"]*['\"])"
)
_QUOTED = re.compile(r"""['"]([^'"]+)['"]""")


@dataclass
class RunnerEnv:
    """What the runner's files load: dotenv files under the environment, files over it,
    and where a load could not be read ("file, line N: what")."""

    under: list[str] = field(default_factory=list)
    over: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)


def runner_env_files(ctx: Context, found: Found) -> RunnerEnv:
    loaded = RunnerEnv()
    tool = ctx.operation.tool
    if tool not in RUNNERS:
        return loaded
    configured = ctx.hints.get("config")
    names = [configured] if configured else list(_CONFIGS[tool])
    setup: list[tuple[str, str]] = []  # (file or preload module, the config naming it)
    for name in names:
        text = ctx.read(name)
        if text is None:
            continue
        found.look(f"{name} (dotenv files)")
        text = _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        _scan(ctx, name, text, loaded)
        _next_jest(ctx, name, text, loaded)
        for match in _SETUP.finditer(text):
            for path in _QUOTED.findall(match.group(1)):
                if path not in _PRELOADS:
                    path = path.replace("<rootDir>/", "")
                    path = posixpath.normpath(posixpath.join(posixpath.dirname(name), path))
                setup.append((path, name))
        break  # the runner reads the first config it finds
    for name, config in setup[:_MAX_SETUP_FILES]:
        if name in _PRELOADS:
            found.look(f"{name} (setup file in {config})")
            _PRELOADS[name](ctx, f"{config}, setup file {name}", loaded)
            continue
        text = ctx.read(name)
        if text is not None:
            found.look(f"{name} (setup file, dotenv files)")
            _scan(ctx, name, _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text), loaded)
    return loaded


def _scan(ctx: Context, name: str, text: str, loaded: RunnerEnv) -> None:
    folder = posixpath.dirname(name)

    def line(at: int) -> str:
        return f"{name}, line {text.count(chr(10), 0, at) + 1}"

    mentions_dotenv = "dotenv" in text
    if match := _DOTENV_IMPORT.search(text):
        _dotenv_config(ctx, line(match.start()), loaded)
    if match := _FLOW_IMPORT.search(text):
        _flow_config(ctx, line(match.start()), loaded)
    for match in _DOTENV_CALL.finditer(text) if mentions_dotenv else ():
        options = match.group(1) or ""
        if _module_of(text, match.start()) == "dotenv-flow":
            _flow(ctx, folder, options, line(match.start()), loaded)
            continue
        if "path" not in options:
            if options.strip("{} \n") and not _OVERRIDE.search(options):
                loaded.unread.append(f"{line(match.start())}: dotenv options {options!r}")
            (loaded.over if _OVERRIDE.search(options) else loaded.under).append(".env")
            continue
        file = _path_option(folder, options)
        if file is None:
            loaded.unread.append(f"{line(match.start())}: a dotenv path dbguard cannot read")
            continue
        (loaded.over if _OVERRIDE.search(options) else loaded.under).append(file)
    for match in _LOAD_ENV.finditer(text):
        args = [arg.strip() for arg in match.group(1).split(",")]
        prefix = args[2] if len(args) > 2 else None
        if prefix is None or (prefix[:1] in "'\"`" and prefix[1:-1]):
            continue  # a prefix (VITE_ by default): no database setting is exposed
        if prefix not in ("''", '""', "``"):
            loaded.unread.append(f"{line(match.start())}: loadEnv's prefix {prefix}")
            continue
        mode = args[0]
        if mode[:1] in "'\"`" and mode[-1:] == mode[:1]:
            mode = mode[1:-1]
        else:
            mode = ctx.hints.get("env") or "test"  # vitest's mode: --mode, else "test"
        # Most important first: a mode's files over the generic ones, .local over both.
        loaded.under += [f".env.{mode}.local", f".env.{mode}", ".env.local", ".env"]


def _path_option(folder: str, options: str) -> str | None:
    """The `path` option: a plain string (from where the runner runs), or
    path.resolve/join of __dirname (the file's `folder`) or process.cwd() and a string."""
    path = _PATH.search(options)
    if path is None:
        return None
    if path.group(2) is not None:
        return posixpath.normpath(path.group(2))
    base = folder if path.group(3) == "__dirname" else ""
    return posixpath.normpath(posixpath.join(base, path.group(5)))


def _dotenv_config(ctx: Context, where: str, loaded: RunnerEnv) -> None:
    """dotenv/config: dotenv's config() with options from DOTENV_CONFIG_PATH and
    DOTENV_CONFIG_OVERRIDE (any value dotenv takes as true, as Boolean() does)."""
    env = ctx.flat_env
    file = posixpath.normpath(env.get("DOTENV_CONFIG_PATH") or ".env")
    (loaded.over if env.get("DOTENV_CONFIG_OVERRIDE") else loaded.under).append(file)


def _flow_config(ctx: Context, where: str, loaded: RunnerEnv) -> None:
    """dotenv-flow/config: config() with its options from the environment."""
    env = ctx.flat_env
    if env.get("DOTENV_FLOW_PATTERN"):
        loaded.unread.append(f"{where}: DOTENV_FLOW_PATTERN {env['DOTENV_FLOW_PATTERN']!r}")
        return
    _flow_files(ctx, posixpath.normpath(env.get("DOTENV_FLOW_PATH") or "."), None, loaded)


def _flow(ctx: Context, folder: str, options: str, where: str, loaded: RunnerEnv) -> None:
    """dotenv-flow's config(options): `node_env` and `path` are read; an option that
    changes the files (pattern, files) or a value in code is reported."""
    keys = set(_OPTION_KEYS.findall(options))
    node_env = _NODE_ENV_OPTION.search(options)
    base: str | None = "."
    if "path" in keys:
        base = _path_option(folder, options)
    unread = keys - _FLOW_HARMLESS - {"path", "node_env"}
    if base is None or ("node_env" in keys and node_env is None) or unread:
        loaded.unread.append(f"{where}: dotenv-flow options {options!r}")
        return
    _flow_files(ctx, base or ".", node_env.group(2) if node_env else None, loaded)


def _flow_files(ctx: Context, folder: str, node_env: str | None, loaded: RunnerEnv) -> None:
    """dotenv-flow's files in `folder`, most important first; NODE_ENV is the runner's
    (test, unless the environment sets it) when no `node_env` option names one."""
    if node_env is None:
        node_env = ctx.flat_env.get("NODE_ENV", "test")
    files = [f".env.{node_env}.local", f".env.{node_env}"] if node_env else []
    files += [".env.local"] if node_env != "test" else []
    files += [".env", ".env.defaults"]
    loaded.under += [posixpath.normpath(posixpath.join(folder, file)) for file in files]


def _module_of(text: str, at: int) -> str:
    """The module whose config( starts at `at`: "dotenv-flow" or another."""
    receiver = _RECEIVER.search(text, max(0, at - 200), at)
    module = None
    if receiver is not None and receiver.group(1):
        module = receiver.group(1)
    elif receiver is not None:
        bound = re.search(_BINDING.format(name=re.escape(receiver.group(2))), text)
        module = bound.group(1) if bound else None
    elif named := _NAMED_CONFIG.search(text):
        module = named.group(1)
    if module is None:  # bound in a way not read: by what the file imports
        flow = re.search(r"""['"]dotenv-flow['"]""", text)
        plain = re.search(r"""['"]dotenv['"]""", text)
        module = "dotenv-flow" if flow and not plain else "dotenv"
    return module


def _next_jest(ctx: Context, name: str, text: str, loaded: RunnerEnv) -> None:
    """A config made by next/jest: nextJest({ dir }) loads `dir`'s dotenv files through
    @next/env's loadEnvConfig(dir, dev=false) when jest calls it; no `dir`, no files."""
    bound = _NEXT_JEST_BINDING.search(text)
    direct = rf"""require\s*\(\s*['"]{_NEXT_JEST}['"]\s*\)"""
    callee = re.escape(bound.group(1) or bound.group(2)) if bound else direct
    call = re.search(rf"(?<![\w$.]){callee}\s*\(", text)
    if call is None:
        return
    where = f"{name}, line {text.count(chr(10), 0, call.start()) + 1}"
    plain = re.compile(r"([^()]*)\)").match(text, call.end())
    if plain is None:  # a call inside its options: dbguard cannot tell the folder
        loaded.unread.append(f"{where}: next/jest's dir, computed")
        return
    args = plain.group(1).strip()
    if not args or (args.startswith("{") and not re.search(r"\bdir\b", args)):
        return  # no dir: next/jest loads no dotenv file
    folder = _NEXT_DIR.search(args) if args.startswith("{") else None
    if folder is None:
        loaded.unread.append(f"{where}: next/jest's dir in {args!r}")
        return
    base = folder.group(2) if folder.group(2) is not None else posixpath.dirname(name)
    node_env = ctx.flat_env.get("NODE_ENV", "test")
    if node_env == "test":
        files = [".env.test.local", ".env.test", ".env"]
    else:
        files = [".env.production.local", ".env.local", ".env.production", ".env"]
    loaded.under += [posixpath.normpath(posixpath.join(base, file)) for file in files]


_PRELOADS = {"dotenv/config": _dotenv_config, "dotenv-flow/config": _flow_config}

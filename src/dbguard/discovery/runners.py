"""The dotenv files a jest or vitest run loads through its own configuration.

Neither runner loads `.env.test` into `process.env` by itself: Jest reads no dotenv file,
and Vitest (Vite's loadEnv, mode "test") exposes only `VITE_`-prefixed variables. A
project that wants its test database does it in the runner's config or in a setup file
that config names: `dotenv.config({ path: ".env.test" })`, `import "dotenv/config"`, or
Vite's `loadEnv(mode, process.cwd(), "")` (every variable of `.env`, `.env.local`,
`.env.[mode]`, `.env.[mode].local`; the mode is `--mode`, else "test"). Those files are
read here, as a launcher's dotenv files are: under the real environment (dotenv and
loadEnv keep a variable that is already set), unless `override: true`.

dbguard runs no project code: a path it cannot read (a variable, a template with ${})
is reported as such, and discovery then takes both candidates (see discover()).
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
    setup: list[str] = []
    for name in names:
        text = ctx.read(name)
        if text is None:
            continue
        found.look(f"{name} (dotenv files)")
        text = _COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        _scan(ctx, name, text, loaded)
        for match in _SETUP.finditer(text):
            for path in _QUOTED.findall(match.group(1)):
                path = path.replace("<rootDir>/", "")
                setup.append(posixpath.normpath(posixpath.join(posixpath.dirname(name), path)))
        break  # the runner reads the first config it finds
    for name in setup[:_MAX_SETUP_FILES]:
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
    if _DOTENV_IMPORT.search(text):
        loaded.under.append(".env")
    for match in _DOTENV_CALL.finditer(text) if mentions_dotenv else ():
        options = match.group(1) or ""
        if "path" not in options:
            if options.strip("{} \n") and not _OVERRIDE.search(options):
                loaded.unread.append(f"{line(match.start())}: dotenv options {options!r}")
            (loaded.over if _OVERRIDE.search(options) else loaded.under).append(".env")
            continue
        path = _PATH.search(options)
        if path is None:
            loaded.unread.append(f"{line(match.start())}: a dotenv path dbguard cannot read")
            continue
        if path.group(2) is not None:
            file = path.group(2)  # relative to the folder the runner runs in
        else:
            base = folder if path.group(3) == "__dirname" else ""
            file = posixpath.join(base, path.group(5))
        (loaded.over if _OVERRIDE.search(options) else loaded.under).append(
            posixpath.normpath(file)
        )
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

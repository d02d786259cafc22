"""The I/O side of discovery: find the project root, read its files, remember what was
read so a cached answer can be reused until one of those files changes."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import yaml

from dbguard.discovery import FolderLister, Found, discover, nx
from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.signs import npm_workspaces, workspace_folders
from dbguard.paths import SETTLED_NS, Stamp, exists, file_stamp
from dbguard.rules import Kind, Operation, Script

# A folder holding any of these is a project root.
ROOT_MARKERS = (
    ".dbguard.toml",
    "artisan",
    "composer.json",
    "package.json",
    "pyproject.toml",
    "manage.py",
    nx.PROJECT_JSON,  # an Nx project: its targets run there, with its own .env files
    "alembic.ini",
    "Gemfile",
    "prisma",
    ".env",
    ".git",
)
MAX_FILE_BYTES = 1 << 20
# Where a manifest's scripts are: (file, key) in the order its tool reads them, the first
# to name a script winning. deno task reads deno.json's (or deno.jsonc's) tasks, then
# package.json's scripts.
_SCRIPT_FILES = {
    "package.json": (("package.json", "scripts"),),
    "composer.json": (("composer.json", "scripts"),),
    "deno.json": (("deno.json", "tasks"), ("deno.jsonc", "tasks"), ("package.json", "scripts")),
}
# turbo.json (turbo 1: `pipeline`): a task's dependsOn and `with`, as the command line
# that runs them; read from every turbo.json at or above the folder (a member's extends
# the top's).
TURBO_JSON = "turbo.json"
# JSON with comments and trailing commas (deno.jsonc, and deno.json too): a string is
# kept as it is, a comment dropped, a comma before } or ] dropped.
_JSONC_TOKEN = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*|/\*.*?\*/|,(?=\s*[}\]])', re.DOTALL)


def _yaml(text: str | None) -> object:
    try:
        return yaml.safe_load(text) if text is not None else None
    except (yaml.YAMLError, RecursionError):
        return None


def _strings(data: object, key: str) -> list[str]:
    value = data.get(key) if isinstance(data, dict) else None
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _package_name(text: str | None) -> object:
    data = _json(text)
    return data.get("name") if isinstance(data, dict) else None


def _scope_dropped(name: object) -> str | None:
    """`@babel/core` -> `core`; None for a name without a scope."""
    if isinstance(name, str) and name.startswith("@") and "/" in name:
        return name.partition("/")[2]
    return None


def _jsonc(text: str) -> object:
    """Parsed JSON with comments; raises ValueError as json.loads does."""
    return json.loads(_JSONC_TOKEN.sub(lambda m: m.group(1) or "", text.removeprefix("\ufeff")))


def _script_line(value: object) -> str | None:
    """A script's command line: npm's string, composer's list of commands, deno's
    {"command": ..., "dependencies": [tasks run first]}."""
    if isinstance(value, list):
        return " && ".join(str(v) for v in value)
    if isinstance(value, dict):
        dependencies = value.get("dependencies")
        steps = [
            f"deno task {shlex.quote(name)}"
            for name in (dependencies if isinstance(dependencies, list) else [])
            if isinstance(name, str)
        ]
        command = value.get("command")
        return " && ".join([*steps, *([command] if isinstance(command, str) else [])]) or None
    return value if isinstance(value, str) else None


def _json(text: str | None) -> object:
    """Parsed JSON, or None when absent or not JSON (npm would fail on it anyway)."""
    try:
        return json.loads(text.removeprefix("\ufeff")) if text is not None else None
    except ValueError:
        return None


def find_root(cwd: Path) -> Path:
    """The nearest folder at or above `cwd` with a project marker; `cwd` if none."""
    for folder in (cwd, *cwd.parents):
        if any(exists(folder / marker) for marker in ROOT_MARKERS):
            return folder
    return cwd


@dataclass
class ProjectFiles:
    """Reads files under `root`, remembering each one's stamp (also for absent files)."""

    root: Path
    stamps: dict[Path, Stamp] = field(default_factory=dict)
    _scripts: dict[str, tuple[str, dict[str, object]]] = field(default_factory=dict)
    _nx: dict[Path, tuple[Path, nx.Workspace]] = field(default_factory=dict)

    def read(self, relative: str) -> str | None:
        path = self.root / relative
        self.stamps[path] = file_stamp(path)
        if self.stamps[path] is None or path.is_dir():  # a venv named .env is no dotenv
            return None
        if not path.is_file():
            # A named pipe (a secrets manager serving .env), a socket or a device: opening
            # it could block, or take what the application reads. Unread is not "absent".
            raise DiscoveryError(
                f"{path} is not a regular file (a named pipe, socket or device); dbguard "
                "does not read it, so it cannot tell which database it names",
                "make it a regular file (have your secrets tool write it out rather than "
                "serve it through a pipe); until then database commands here are refused",
            )
        try:
            with path.open("rb") as stream:
                data = stream.read(MAX_FILE_BYTES + 1)
        except OSError as err:
            raise DiscoveryError(f"cannot read {path}: {err.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise DiscoveryError(
                f"{path} is larger than {MAX_FILE_BYTES} bytes; not a config file?"
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DiscoveryError(f"{path} is not UTF-8 text (byte {err.start})") from None

    def file_start(self, relative: str, limit: int) -> bytes | None:
        """The first `limit` bytes of a file (a shell file a script runs), whatever it
        holds; None when there is none. OSError when it is not a regular file (reading a
        named pipe could block) or cannot be read."""
        path = self.root / relative
        self.stamps[path] = file_stamp(path)
        if self.stamps[path] is None or path.is_dir():
            return None
        if not path.is_file():
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with path.open("rb") as stream:
            return stream.read(limit)

    def listdir(self, relative: str) -> list[str] | None:
        """The names in a folder under `root`; its stamp (the folder's mtime moves when
        an entry is added, removed or renamed) goes with the files'."""
        path = self.root / relative
        self.stamps[path] = file_stamp(path)
        try:
            return os.listdir(path) if path.is_dir() else None
        except OSError:
            return None

    def _workspace(self, start: Path, manifest: str) -> tuple[Path, list[str]] | None:
        """The nearest folder at or above `start` that declares workspaces (`manifest`'s
        `workspaces`, pnpm-workspace.yaml, lerna.json's `packages`), and its members."""
        for top in (start, *start.parents):
            package = _json(self.read(str(top / manifest)))
            patterns = npm_workspaces(package)
            if manifest == "package.json":
                patterns += _strings(_yaml(self.read(str(top / "pnpm-workspace.yaml"))), "packages")
                lerna = _json(self.read(str(top / "lerna.json")))
                if isinstance(lerna, dict) and not patterns:
                    patterns = _strings(lerna, "packages") or ["packages/*"]  # lerna's default
            if patterns:
                folders = workspace_folders(patterns, self._lister(top))
                # A member is a folder with its own manifest (`apps/**` matches src/ too).
                members = [f for f in folders if self.read(str(top / f / manifest)) is not None]
                return top, members
        return None

    def _lister(self, top: Path) -> FolderLister:
        return lambda relative: self.listdir(str(top / relative))

    def folder(self, folder: str, manifest: str = "package.json") -> Path | None:
        """`folder` (from the root, or absolute) as a folder that exists: itself, or the
        workspace member whose package name follows the part of it that exists (`npm -w
        @shop/api`, also in a script that runs in /srv/shop: /srv/shop/@shop/api)."""
        start = Path(os.path.normpath(self.root / folder))
        # Stamped too: a folder made later (npm --prefix web, web/ not yet there)
        # changes the answer.
        self.stamps[start] = file_stamp(start)
        if start.is_dir():
            return start
        base = start.parent
        while not base.is_dir() and base != base.parent:
            self.stamps[base] = file_stamp(base)
            base = base.parent
        package = os.path.relpath(start, base)
        top, members = self._workspace(base, manifest) or (base, [])
        for member in members:
            if _package_name(self.read(str(top / member / manifest))) == package:
                return top / member
        return None

    def workspace_members(self, manifest: str, selectors: Sequence[str] = ()) -> list[str]:
        """The member folders of the workspace `manifest` (from the root, as for
        package_script) belongs to: what npm --workspaces, pnpm -r and turbo run in; or
        those `selectors` name, as npm -w reads them: a member's package name, else a
        folder (from the manifest's) holding members."""
        start = Path(os.path.normpath(self.root / os.path.dirname(manifest)))
        name = os.path.basename(manifest)
        if name == nx.PROJECT_JSON:
            return self._nx_projects(start, selectors)
        workspace = self._workspace(start, name)
        if workspace is None:
            return []
        top, members = workspace
        folders = [os.path.normpath(top / member) for member in members]
        if not selectors:
            return folders
        names = {folder: _package_name(self.read(f"{folder}/{name}")) for folder in folders}
        chosen: list[str] = []
        for selector in selectors:
            named = [f for f in folders if names[f] == selector]
            # pnpm's `--filter core` names @babel/core when no other scope has a core.
            unscoped = [f for f in folders if _scope_dropped(names[f]) == selector]
            under = os.path.normpath(start / selector)
            chosen += (
                named
                or (unscoped if len(unscoped) == 1 else [])
                or [f for f in folders if f == under or f.startswith(under + "/")]
            )
        return list(dict.fromkeys(chosen))

    def workspace_root(self, file: str, folder: str) -> str | None:
        """The nearest folder at or above `folder` (from the root, or absolute) holding
        `file`, as an absolute path: where pnpm -w runs (pnpm-workspace.yaml's folder)."""
        start = Path(os.path.normpath(self.root / folder))
        for each in (start, *start.parents):
            path = each / file
            self.stamps[path] = file_stamp(path)
            if self.stamps[path] is not None and path.is_file():
                return str(each)
        return None

    def unchanged(self) -> bool:
        return all(file_stamp(path) == stamp for path, stamp in self.stamps.items())

    def settled(self, now_ns: int) -> bool:
        """Whether every file read had last changed long enough before `now_ns`
        (SETTLED_NS) that `unchanged` can be trusted."""
        return all(
            stamp is None or now_ns - stamp[3] > SETTLED_NS for stamp in self.stamps.values()
        )

    def package_script(self, manifest: str, script: str) -> Script | None:
        """`script` in package.json / composer.json (deno.json: deno's tasks), if any:
        the nearest one at or above the folder, as npm and composer find it (`npm run
        db:reset` in src/ runs the project's script, in the project's folder). Each
        manifest is parsed once per ProjectFiles (npm test looks up pre/post too)."""
        if os.path.basename(manifest) == TURBO_JSON:
            return self._turbo_needs(manifest, script)
        if os.path.basename(manifest) == nx.PROJECT_JSON:
            return self._nx_target(manifest, script)
        if os.path.basename(manifest) == nx.NX_JSON:
            return self._nx_needs(manifest, script)
        if manifest not in self._scripts:
            # `web/package.json` (npm --prefix web): from that folder upwards; a folder
            # that is not there may be a workspace's package name (npm -w @shop/api).
            folder, name = os.path.split(manifest)
            start = self.folder(folder, name)
            if start is None:
                return None
            files = _SCRIPT_FILES.get(name, ((name, "scripts"),))
            for each in (start, *start.parents):
                # absolute paths: root / path is path itself
                texts = [(each / file, key, self.read(str(each / file))) for file, key in files]
                if any(text is not None for _, _, text in texts):
                    break
            scripts: dict[str, object] = {}
            for path, key, text in reversed(texts):  # the first file's scripts win
                if text is None:
                    continue
                try:
                    # npm reads a file that starts with a byte-order mark; so must dbguard.
                    jsonc = path.name.startswith("deno.")  # deno allows comments in both
                    data = _jsonc(text) if jsonc else json.loads(text.removeprefix("\ufeff"))
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    raise DiscoveryError(f"{path} is not valid JSON")
                parsed = data.get(key)
                scripts.update(parsed if isinstance(parsed, dict) else {})
            self._scripts[manifest] = (str(each), scripts)
        where, scripts = self._scripts[manifest]
        line = _script_line(scripts.get(script))
        return Script(line, where) if line is not None else None

    def _turbo_needs(self, manifest: str, task: str) -> Script | None:
        """The tasks turbo runs before (or with) `task`, as `turbo run A B`: every
        `dependsOn` and `with` entry of `task` and of `PACKAGE#task`, with `^` (the
        package's dependencies) and `PACKAGE#` (one package) dropped, so each runs in
        every member: an over-approximation that reads no dependency graph."""
        folder = os.path.dirname(manifest)
        start = Path(os.path.normpath(self.root / folder))
        needed: list[str] = []
        top: Path | None = None
        for each in (start, *start.parents):
            text = self.read(str(each / TURBO_JSON))
            if text is None:
                continue
            top = each
            try:
                data = _jsonc(text)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise DiscoveryError(f"{each / TURBO_JSON} is not valid JSON")
            for key in ("tasks", "pipeline"):
                table = data.get(key)
                if not isinstance(table, dict):
                    continue
                for name, entry in table.items():
                    if not isinstance(name, str) or name.rpartition("#")[2] != task:
                        continue
                    for field_name in ("dependsOn", "with"):
                        for item in _strings(entry, field_name):
                            needed.append(item.rpartition("#")[2].removeprefix("^"))
        names = [name for name in dict.fromkeys(needed) if name and not name.startswith("$")]
        if top is None or not names:
            return None
        return Script(f"turbo run {shlex.join(names)}", str(top))

    # ---- Nx ----------------------------------------------------------------------------

    def _nx_workspace(self, start: Path) -> tuple[Path, nx.Workspace]:
        """The Nx workspace `start` is in: its top (the nearest folder with nx.json, else
        the package.json workspace's top, else `start`) and its projects: every folder
        with a project.json (as `**` in a workspace pattern reads them: not in
        node_modules or dot folders, 6 levels deep), the workspace members, the top."""
        top = next((f for f in (start, *start.parents) if self._has(f / nx.NX_JSON)), None)
        members: list[str] = []
        workspace = self._workspace(top or start, "package.json")
        if workspace is not None and (top is None or workspace[0] == top):
            top, members = workspace
        top = top or start
        if top not in self._nx:
            lister = self._lister(top)
            folders = [
                folder
                for folder in workspace_folders(["**"], lister)
                if self._has(top / folder / nx.PROJECT_JSON)
            ]
            read = lambda relative: self.read(str(top / relative))  # noqa: E731
            self._nx[top] = (top, nx.load(read, ["", *folders, *members]))
        return self._nx[top]

    def _has(self, path: Path) -> bool:
        self.stamps[path] = file_stamp(path)
        return self.stamps[path] is not None and path.is_file()

    def _nx_projects(self, start: Path, selectors: Sequence[str]) -> list[str]:
        """The folders of the Nx projects `selectors` name (each by a name, else by its
        folder from the top), or of every project."""
        top, workspace = self._nx_workspace(start)
        projects = (
            [p for selector in selectors for p in workspace.select(selector)]
            if selectors
            else list(workspace.projects)
        )
        return list(dict.fromkeys(os.path.normpath(top / p.folder) for p in projects))

    def _nx_target(self, manifest: str, target: str) -> Script | None:
        """What `target` of the Nx project holding the folder runs (nx.json's
        defaultProject's when that is only the top), as a command line run from the
        workspace's top."""
        start = Path(os.path.normpath(self.root / os.path.dirname(manifest)))
        top, workspace = self._nx_workspace(start)
        candidates = workspace.containing(os.path.relpath(start, top).replace(os.sep, "/"))
        configured = [p for p in candidates if target in p.targets or target in p.scripts]
        for project in (configured or candidates)[:1]:
            files = [f for f in nx.env_files(project, target) if self._has(top / f)]
            line = workspace.line(project, target, files)
            if line is not None:
                return Script(line, str(top))
        return None

    def _nx_needs(self, manifest: str, target: str) -> Script | None:
        """The targets Nx runs before `target` (see nx.Workspace.needs), as
        `nx run-many -t A B`: in every project."""
        start = Path(os.path.normpath(self.root / os.path.dirname(manifest)))
        top, workspace = self._nx_workspace(start)
        names = workspace.needs(target)
        if not names:
            return None
        return Script(shlex.join(["nx", "run-many", "-t", *names]), str(top))


# Variables that change between otherwise identical invocations and that no framework
# reads for its database settings. Everything else is part of the cache key: a schema
# may read its URL from any variable (Prisma's env("...")).
_VOLATILE = frozenset(
    {
        "_",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "TERM",
        "COLUMNS",
        "LINES",
        "DBGUARD_DEPTH",
        "DBGUARD_PARENT_OP",
        "DBGUARD_PARENT_BACKUPS",
    }
)


def _cache_key(
    root: Path, env: Mapping[str, str], op: Operation, cwd: Path | None
) -> tuple[object, ...]:
    return (
        root,
        cwd,
        op.tool,
        op.kind,
        op.framework,
        tuple(sorted(op.hints.items())),
        tuple(sorted(op.assignments.items())),
        tuple(sorted((k, v) for k, v in env.items() if k not in _VOLATILE)),
    )


T = TypeVar("T")


@dataclass(frozen=True)
class Cached(Generic[T]):
    value: T
    files: tuple[ProjectFiles, ...]


class StampedCache(Generic[T]):
    """Answers worked out from project files, by key, reused while no file they were
    read from has changed: a hit costs one stat() per file, and no parse. Holds `limit`
    answers; the oldest goes first. Safe to use from several threads (dbguardd's
    workers discover at once)."""

    def __init__(self, limit: int = 256, clock: Callable[[], int] = time.time_ns) -> None:
        self._entries: dict[Hashable, Cached[T]] = {}
        self._limit = limit
        self._clock = clock
        self._changing = threading.Lock()

    def get(self, key: Hashable) -> Cached[T] | None:
        cached = self._entries.get(key)
        if cached is None or not all(files.unchanged() for files in cached.files):
            return None
        return cached

    def put(self, key: Hashable, value: T, *files: ProjectFiles) -> None:
        """`value` as read through `files` (every file it depends on); not kept when
        one of them had just changed (see ProjectFiles.settled)."""
        now = self._clock()
        if not all(each.settled(now) for each in files):
            return
        with self._changing:
            self._entries.pop(key, None)
            if len(self._entries) >= self._limit:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = Cached(value, files)


class DiscoveryCache:
    """Discovery results per (root, operation, environment), reused while no file they
    were read from has changed."""

    def __init__(self, limit: int = 256) -> None:
        self._answers: StampedCache[Found] = StampedCache(limit)

    def project_databases(self, cwd: Path, env: Mapping[str, str], tool: str) -> Found:
        """Every database of the project at `cwd`: the one it runs against and the one
        its tests use (for dbguardctl backup, mark, and finding a restore's password).
        Raises DiscoveryError."""
        found = Found()
        root = project_root(str(cwd))
        for kind in (Kind.MIGRATE, Kind.TEST):
            found.extend(self.discover(root, env, Operation(tool=tool, kind=kind), cwd=cwd))
        return found

    def discover(
        self,
        root: Path,
        env: Mapping[str, str],
        operation: Operation,
        *,
        cwd: Path | None = None,
    ) -> Found:
        """discover() through a cache; `cwd` (default `root`) is where relative client
        arguments (`sqlite3 data.db`) are taken from."""
        key = _cache_key(root, env, operation, cwd)
        cached = self._answers.get(key)
        if cached is not None:
            return cached.value
        files = ProjectFiles(root)
        found = discover(root, files.read, env, operation, cwd=cwd, listdir=files.listdir)
        self._answers.put(key, found, files)
        return found


# Arguments looked at for paths into another project (a test run's file arguments).
_MAX_PATH_ARGUMENTS = 64


def argument_roots(args: Sequence[str], cwd: Path, root: Path) -> tuple[list[Path], list[str]]:
    """The existing paths among `args` (taken from `cwd`): the project roots other than
    `root` they lie in (`pytest backend/tests` from a monorepo's top runs backend's
    conftest, settings and .env, so backend is discovered too), and those inside `root`
    itself, relative to it (a run given paths collects only what lies under them)."""
    roots: list[Path] = []
    inside: list[str] = []
    for word in args[:_MAX_PATH_ARGUMENTS]:
        if not word or word.startswith("-"):
            continue
        path = Path(os.path.normpath(cwd / word.split("::", 1)[0]))  # pytest's a.py::test_x
        if not exists(path):
            continue
        other = find_root(path if path.is_dir() else path.parent)
        if other != root:
            if other not in roots:
                roots.append(other)
        elif path.is_relative_to(root):
            inside.append(path.relative_to(root).as_posix())
    return roots, inside


def project_root(cwd: str) -> Path:
    path = Path(cwd)
    if not path.is_absolute():
        raise DiscoveryError(f"the working folder {cwd!r} is not an absolute path")
    if "\0" in cwd or len(os.fsencode(cwd)) >= 4096:
        raise DiscoveryError(f"the working folder {cwd[:200]!r} is not a usable path")
    return find_root(Path(os.path.normpath(path)))

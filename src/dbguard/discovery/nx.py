"""Nx workspaces, read as Nx reads them but without running Nx: which projects there
are, what a project's target runs, and which targets a target depends on.

A project is a folder with a project.json, a package.json workspace member, or the
workspace's top folder; its names are project.json's `name`, package.json's `nx.name`
or `name`, and its folder's name (Nx takes the first it finds; any of them selects it,
so a selector never misses the project Nx would pick). A target is project.json's
`targets.NAME` (over package.json's `nx.targets.NAME`), else package.json's script NAME
(Nx's inferred `nx:run-script` target), else one a plugin in nx.json infers.

What a target runs is written as a shell command line, run from the workspace's top,
so the classifier judges it like any package script:
- `nx:run-commands` (also the `command` shorthand): its commands, in `options.cwd`
  (from the top; by default the top itself), with `options.env` as assignments;
- `nx:run-script`, and a package.json script: `npm run SCRIPT` in the project;
- the executors of test runners dbguard knows (`@nx/jest:jest`, `@nx/vite:test`, ...):
  the runner, in the project's folder;
- an executor or plugin dbguard cannot read: `nx-executor NAME` in the project's folder,
  which the catalog counts as a test run there (guarded when unsure); executors that
  only build, serve or lint run nothing dbguard guards.
Each command is prefixed with `dotenv -e FILE ... --` naming the dotenv files Nx loads
into every task (project folder first, then the top; `.env.TARGET` before `.env`), those
that exist, so discovery reads the variables the task starts with.

Pure: files come through the `read` function given (paths from the workspace's top).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dbguard.discovery.envfile import DiscoveryError

__all__ = ["NX_JSON", "PROJECT_JSON", "Project", "Workspace"]

NX_JSON = "nx.json"
PROJECT_JSON = "project.json"
# The program the catalog's "nx executor" tool is launched as: a target whose command
# dbguard cannot read.
UNREAD = "nx-executor"

Reader = Callable[[str], str | None]

_RUN_COMMANDS = {"nx:run-commands", "@nrwl/workspace:run-commands", "@nx/workspace:run-commands"}
_RUN_SCRIPT = {"nx:run-script", "@nrwl/workspace:run-script", "@nx/workspace:run-script"}
# Executors that run a test runner the catalog knows: the command they amount to, in the
# project's folder, and the option naming the runner's config file.
_RUNNERS = {
    "jest:jest": ("jest", "jestConfig"),
    "vite:test": ("vitest run", "configFile"),
    "vitest:test": ("vitest run", "configFile"),
    "playwright:playwright": ("playwright test", "config"),
    "cypress:cypress": ("cypress run", "cypressConfig"),
}
# Executors (without their @nx/ or @nrwl/ scope) that build, serve, lint or publish:
# nothing a database command runs in, as `npm run build` and `npm run dev` are not.
_NO_DATABASE_EXECUTORS = frozenset(
    {
        "nx:noop",
        "js:tsc", "js:swc", "js:node", "js:release-publish", "js:verdaccio",
        "js:copy-workspace-modules", "js:prune-lockfile", "node:node", "node:webpack",
        "webpack:webpack", "webpack:dev-server", "webpack:ssr-dev-server",
        "vite:build", "vite:dev-server", "vite:preview-server",
        "esbuild:esbuild", "rollup:rollup", "rspack:rspack", "rspack:dev-server",
        "eslint:lint", "linter:eslint", "linter:lint",
        "next:build", "next:server", "next:export", "web:file-server", "web:rollup",
        "storybook:storybook", "storybook:build",
        "angular:application", "angular:browser-esbuild", "angular:webpack-browser",
        "angular:dev-server", "angular:extract-i18n", "angular:package",
        "angular:ng-packagr-lite", "angular:webpack-server",
        "angular:module-federation-dev-server",
        "@angular-devkit/build-angular:application",
        "@angular-devkit/build-angular:browser",
        "@angular-devkit/build-angular:browser-esbuild",
        "@angular-devkit/build-angular:dev-server",
        "@angular-devkit/build-angular:extract-i18n",
        "@angular-devkit/build-angular:ng-packagr",
        "@angular-devkit/build-angular:server",
    }
)  # fmt: skip
_CONFIG_EXTENSIONS = ("ts", "js", "mjs", "cjs", "mts", "cts")
_JEST = tuple(f"jest.config.{ext}" for ext in (*_CONFIG_EXTENSIONS, "json"))
_VITE = tuple(f"{n}.config.{ext}" for n in ("vitest", "vite") for ext in _CONFIG_EXTENSIONS)
_PLAYWRIGHT = tuple(f"playwright.config.{ext}" for ext in _CONFIG_EXTENSIONS)
_CYPRESS = tuple(f"cypress.config.{ext}" for ext in _CONFIG_EXTENSIONS)
# Plugins in nx.json that infer test targets from a runner's config file in the project:
# (the option naming the target, its default name, the config files, the command). A
# CI target split per file (`e2e-ci--src/a.spec.ts`) runs the same command.
_INFERRED: dict[str, tuple[tuple[str, str, tuple[str, ...], str], ...]] = {
    "@nx/jest/plugin": (("targetName", "test", _JEST, "jest"),),
    "@nx/vite/plugin": (("testTargetName", "test", _VITE, "vitest run"),),
    "@nx/vitest": (("testTargetName", "test", _VITE, "vitest run"),),
    "@nx/vitest/plugin": (("testTargetName", "test", _VITE, "vitest run"),),
    "@nx/playwright/plugin": (
        ("targetName", "e2e", _PLAYWRIGHT, "playwright test"),
        ("ciTargetName", "e2e-ci", _PLAYWRIGHT, "playwright test"),
    ),
    "@nx/cypress/plugin": (
        ("targetName", "e2e", _CYPRESS, "cypress run"),
        ("ciTargetName", "e2e-ci", _CYPRESS, "cypress run"),
        ("componentTestingTargetName", "component-test", _CYPRESS, "cypress run --component"),
        ("openTargetName", "open-cypress", _CYPRESS, "cypress open"),
    ),
}
# Plugins whose inferred targets build, serve, lint or type-check only.
_NO_DATABASE_PLUGINS = frozenset(
    {
        "@nx/eslint/plugin", "@nx/js/typescript", "@nx/js/plugins/typescript",
        "@nx/webpack/plugin", "@nx/rollup/plugin", "@nx/rspack/plugin", "@nx/rsbuild",
        "@nx/rsbuild/plugin", "@nx/next/plugin", "@nx/nuxt/plugin", "@nx/remix/plugin",
        "@nx/react/router-plugin", "@nx/storybook/plugin", "@nx/esbuild/plugin",
        "@nx/docker", "@nx/angular/plugin",
    }
)  # fmt: skip
# Shell syntax that makes a command more than one program: wrapped in `sh -c` when a
# prefix (dotenv files, variables) must reach all of it.
_SHELL = re.compile(r"[;&|()<>`$\n]")


def parse(text: str | None, name: str) -> dict[str, Any] | None:
    """A JSON object (Nx reads its files as JSON with comments; a comment here fails,
    and is reported as such: never taken for "no targets"). None when absent."""
    if text is None:
        return None
    try:
        data = json.loads(text.removeprefix("\ufeff"))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DiscoveryError(f"{name} is not valid JSON (dbguard reads Nx's files as JSON)")
    return data


def _table(data: object, key: str) -> dict[str, Any]:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Project:
    """One Nx project: its folder (from the workspace's top, "" for the top), the names
    it may go by, its configured targets and its package.json's scripts."""

    folder: str
    names: tuple[str, ...]
    targets: Mapping[str, Any]
    scripts: Mapping[str, Any]

    @classmethod
    def read(cls, folder: str, read: Reader) -> Project | None:
        """The project in `folder`, None when it holds neither project.json nor
        package.json."""
        project = parse(read(posixpath.join(folder, PROJECT_JSON)), PROJECT_JSON)
        package = parse(read(posixpath.join(folder, "package.json")), "package.json")
        if project is None and package is None:
            return None
        nx = _table(package, "nx")
        candidates = [
            (project or {}).get("name"),
            nx.get("name"),
            (package or {}).get("name"),
            posixpath.basename(folder).lower() if folder else None,
        ]
        names = tuple(dict.fromkeys(n for n in candidates if isinstance(n, str) and n))
        targets = {**_table(nx, "targets"), **_table(project, "targets")}
        return cls(folder, names, targets, _table(package, "scripts"))

    @property
    def name(self) -> str:
        return self.names[0] if self.names else self.folder


@dataclass(frozen=True)
class Workspace:
    """The workspace: nx.json (empty when there is none), its projects, and how its
    files are read (to see which runner config files a project has)."""

    nx: Mapping[str, Any]
    projects: tuple[Project, ...]
    read: Reader

    def containing(self, folder: str) -> list[Project]:
        """The project Nx runs a target of when none is named: the one whose folder
        holds `folder` (the nearest), then, when that is only the top, nx.json's
        `defaultProject`."""
        folder = posixpath.normpath(folder)
        folder = "" if folder == "." else folder
        inside = [
            p
            for p in self.projects
            if not p.folder or folder == p.folder or folder.startswith(p.folder + "/")
        ]
        found = sorted(inside, key=lambda p: -len(p.folder))[:1]
        default = self.nx.get("defaultProject")
        if not (found and found[0].folder) and isinstance(default, str):
            found += [p for p in self.projects if default in p.names][:1]
        return found

    def select(self, selector: str) -> list[Project]:
        """The projects `selector` names: by any of their names, else by folder."""
        named = [p for p in self.projects if selector in p.names]
        folder = posixpath.normpath(selector.removeprefix("./"))
        return named or [p for p in self.projects if p.folder and p.folder == folder]

    def needs(self, target: str) -> list[str]:
        """The targets `target` runs first in other projects, anywhere (nx.json's
        targetDefaults, each project's own `dependsOn`): `^build` (in the project's
        dependencies), `{"target": ..., "projects": [...]}`, `web:build`; each runs in
        every project, an over-approximation that reads no dependency graph. Those in
        the same project are part of the target's own line (see line)."""
        configs: list[object] = [_table(self.nx.get("targetDefaults"), target)]
        configs += [p.targets.get(target) for p in self.projects]
        needed = [
            name for config in configs for name, elsewhere in self._depends_on(config) if elsewhere
        ]
        return list(dict.fromkeys(needed))

    def _depends_on(self, config: object) -> Iterable[tuple[str, bool]]:
        """(target, whether it runs in other projects) for each `dependsOn` entry."""
        entries = config.get("dependsOn") if isinstance(config, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, str):
                project, _, named = entry.partition(":")
                if entry.startswith("^"):
                    yield entry[1:], True
                elif named and any(project in p.names for p in self.projects):
                    yield named, True  # another project's target: `web:build`
                elif entry != "...":  # `...`: the defaults' entries, read from there too
                    yield entry, False
            elif isinstance(entry, dict) and isinstance(entry.get("target"), str):
                projects = entry.get("projects")
                self_only = projects in (None, "self", "{self}") and not entry.get("dependencies")
                yield entry["target"], not self_only

    def line(self, project: Project, target: str, env_files: Iterable[str]) -> str | None:
        """The command line (run from the top) that `target` of `project` runs, with
        the targets of the same project it depends on first (`nx run api:db:migrate`);
        None when it has no such target or runs nothing dbguard guards. `env_files`:
        the dotenv files Nx loads for it that exist (see env_files)."""
        config = project.targets.get(target)
        defaults = _table(self.nx.get("targetDefaults"), target)
        files = list(env_files)
        if isinstance(config, dict):
            merged = {**defaults, **config}
            merged["options"] = {**_table(defaults, "options"), **_table(config, "options")}
            spread = config.get("dependsOn")
            if isinstance(spread, list) and "..." in spread:  # the defaults' entries too
                merged["dependsOn"] = [*spread, *(defaults.get("dependsOn") or [])]
            own = self._configured(project, target, merged, files)
        elif isinstance(project.scripts.get(target), str):
            merged = defaults  # an inferred target takes the defaults too
            own = _part(f"npm run {shlex.quote(target)}", project.folder, files)
        else:
            merged, own = defaults, self._inferred(project, target, files)
        if config is None and own is None:
            return None  # no such target: its dependencies do not run either
        first = [
            shlex.join(["nx", "run", f"{project.name}:{name}"])
            for name, elsewhere in self._depends_on(merged)
            if not elsewhere and name != target
        ]
        # The target's own command last: words forwarded to it are appended to the line.
        return " ; ".join([*first, *([own] if own else [])]) or None

    def _configured(
        self, project: Project, target: str, config: dict[str, Any], files: list[str]
    ) -> str | None:
        executor = config.get("executor")
        if executor is None and "command" in config:
            executor = "nx:run-commands"
            config["options"] = {"command": config["command"], **config["options"]}
        if executor is None:
            # No executor: Nx runs package.json's script of that name, if any.
            if isinstance(project.scripts.get(target), str):
                return _part(f"npm run {shlex.quote(target)}", project.folder, files)
            return None
        if not isinstance(executor, str):
            return _part(f"{UNREAD} {shlex.quote(str(executor))}", project.folder, files)
        if executor in _RUN_COMMANDS:
            return self._commands(project, config, files)
        if executor in _RUN_SCRIPT:
            script = _table(config, "options").get("script")
            if not isinstance(script, str):
                return None
            return _part(f"npm run {shlex.quote(script)}", project.folder, files)
        short = re.sub(r"^@(?:nx|nrwl)/", "", executor)
        if short in _NO_DATABASE_EXECUTORS:
            return None
        if short in _RUNNERS:
            command, option = _RUNNERS[short]
            config_file = _table(config, "options").get(option)
            if isinstance(config_file, str):  # from the top, as Nx names it
                relative = posixpath.relpath(_interpolate(config_file, project), project.folder)
                command = f"{command} --config {shlex.quote(relative)}"
            return _part(command, project.folder, files)
        return _part(f"{UNREAD} {shlex.quote(executor)}", project.folder, files)

    def _commands(self, project: Project, config: dict[str, Any], files: list[str]) -> str | None:
        """nx:run-commands: every command of its options and of each configuration (a
        configuration may replace them), each in its cwd, with its env."""
        parts: list[str] = []
        for options in [config["options"], *_table(config, "configurations").values()]:
            if not isinstance(options, dict):
                continue
            options = {**config["options"], **options}
            cwd = options.get("cwd")
            folder = _interpolate(cwd, project) if isinstance(cwd, str) else ""
            env = _table(options, "env")
            for command in _command_list(options):
                part = _part(_interpolate(command, project), folder, files, env)
                if part is not None:
                    parts.append(part)
        parts = list(dict.fromkeys(parts))
        # The last stands bare: words forwarded to the target (`nx run api:db --
        # migrate reset`) are appended to the line and so reach it, as Nx appends them.
        return " ; ".join([*(f"({part})" for part in parts[:-1]), *parts[-1:]]) or None

    def _inferred(self, project: Project, target: str, files: list[str]) -> str | None:
        """A target no file configures: one a plugin in nx.json infers, if any."""
        unknown: list[str] = []
        for entry in self.nx.get("plugins") or []:
            plugin = entry.get("plugin") if isinstance(entry, dict) else entry
            options = _table(entry, "options")
            if not isinstance(plugin, str) or plugin in _NO_DATABASE_PLUGINS:
                continue
            if plugin not in _INFERRED:
                unknown.append(plugin)
                continue
            for option, default, configs, command in _INFERRED[plugin]:
                name = options.get(option, default)
                if target != name and not target.startswith(f"{name}--"):
                    continue
                if any(self._has(project, config) for config in configs):
                    return _part(command, project.folder, files)
        if unknown:  # it may infer any target: guarded when unsure
            return _part(f"{UNREAD} {shlex.quote(unknown[0])}", project.folder, files)
        return None

    def _has(self, project: Project, name: str) -> bool:
        return self.read(posixpath.join(project.folder, name)) is not None


def load(read: Reader, folders: Iterable[str]) -> Workspace:
    """The workspace at the top `read` reads from, with the projects in `folders` (those
    holding a project.json, the package.json workspace members, and the top)."""
    nx = parse(read(NX_JSON), NX_JSON) or {}
    projects = []
    for folder in dict.fromkeys(folders):
        project = Project.read(folder, read)
        if project is not None:
            projects.append(project)
    return Workspace(nx, tuple(projects), read)


def env_files(project: Project, target: str) -> list[str]:
    """The dotenv files Nx loads into a task of `target` in `project`, most important
    first (none overrides a variable already set): the project folder's, then the top's.
    A configuration's own files (`-c ci`: `.env.ci`) are not among them."""
    names = [
        f".env.{target}.local",
        f".env.{target}",
        f".{target}.local.env",
        f".{target}.env",
    ]
    in_project = [*names, ".env.local", ".local.env", ".env"]
    at_top = [*names, ".local.env", ".env.local", ".env"]
    files = [posixpath.join(project.folder, name) for name in in_project] if project.folder else []
    return [*files, *at_top]


def _command_list(options: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for key in ("command", "commands"):
        value = options.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                item = item.get("command")
            if isinstance(item, str) and item.strip():
                found.append(item)
    return found


def _interpolate(text: str, project: Project) -> str:
    """Nx's tokens in options: {projectRoot}, {projectName}, {workspaceRoot}."""
    text = text.replace("{workspaceRoot}/", "").replace("{workspaceRoot}", ".")
    return text.replace("{projectRoot}", project.folder or ".").replace(
        "{projectName}", project.name
    )


def _part(
    command: str, folder: str, files: list[str], env: Mapping[str, Any] | None = None
) -> str | None:
    """`command` run in `folder` (from the top) with the dotenv files and variables Nx
    gives it, as a command line run from the top; None for a line the shell refuses
    (an unbalanced quote: nothing runs)."""
    try:
        shlex.split(command)
    except ValueError:
        return None
    folder = posixpath.normpath(folder or ".")
    prefix: list[str] = []
    if files:
        prefix.append("dotenv")
        for file in files:
            prefix += ["-e", posixpath.relpath(file, folder)]
        prefix.append("--")
    assigned = [f"{k}={v}" for k, v in (env or {}).items() if isinstance(v, (str, int, float))]
    if assigned:
        prefix += ["env", *assigned]
    if prefix and _SHELL.search(command):
        command = shlex.join([*prefix, "sh", "-c", command])
    elif prefix:
        command = f"{shlex.join(prefix)} {command}"
    return command if folder == "." else f"cd {shlex.quote(folder)} && {command}"

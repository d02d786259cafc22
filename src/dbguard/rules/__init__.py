"""Is this invocation a database operation, and of which kind?

Pure: `classify` reads only its arguments. The knowledge lives in catalog.toml; this
module only knows how to walk an argument list: interpreter options, launchers (`npx`),
package scripts (`npm run`), a tool's commands, flags and target options. It parses by
argument structure, never by substring, so `pytest -k migrate` is a test run and
`php artisan migrate:status` is read-only.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from importlib import resources
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict


class Kind(StrEnum):
    READ_ONLY = "read-only"
    QUERY = "query"
    TEST = "test"
    SEED = "seed"
    MIGRATE = "migrate"
    DESTRUCTIVE = "destructive"

    @property
    def severity(self) -> int:
        return list(Kind).index(self)

    @property
    def needs_backup(self) -> bool:
        return self is not Kind.READ_ONLY


# Flags that mean "print something and exit" for every tool in the catalog.
HELP_FLAGS = frozenset({"--help", "-h", "--version", "help"})


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProgramRule(_Rule):
    """An interpreter whose own options come before the script (`php -d x=1 artisan`)."""

    name: str
    value_options: list[str] = []


class ToolRule(_Rule):
    name: str
    framework: str | None = None
    launch: list[str]
    value_options: list[str] = []
    default: Kind | None = None
    commands: dict[str, Kind] = {}
    flags: dict[str, Kind] = {}
    targets: dict[str, str] = {}


class LauncherRule(_Rule):
    """Runs the program named by its first positional argument (or by `module_option`)."""

    name: str
    programs: list[str]
    value_options: list[str] = []
    module_option: str | None = None


class ScriptsRule(_Rule):
    """A package manager that runs named scripts from a manifest file."""

    name: str
    programs: list[str]
    manifest: str
    run: list[str] = []  # `npm run X`
    direct: dict[str, str] = {}  # `npm test` -> script "test"
    any_word: bool = False  # `composer X` runs script X when it exists


class Catalog(_Rule):
    program: list[ProgramRule] = []
    tool: list[ToolRule] = []
    launcher: list[LauncherRule] = []
    scripts: list[ScriptsRule] = []

    def merged(self, extra: Catalog) -> Catalog:
        """This catalog with `extra`'s entries first, so a user's entry wins."""
        return Catalog(
            program=extra.program + self.program,
            tool=extra.tool + self.tool,
            launcher=extra.launcher + self.launcher,
            scripts=extra.scripts + self.scripts,
        )


def builtin_catalog() -> Catalog:
    text = resources.files(__package__).joinpath("catalog.toml").read_text(encoding="utf-8")
    return Catalog.model_validate(tomllib.loads(text))


@dataclass(frozen=True)
class Operation:
    """A recognised invocation."""

    tool: str
    kind: Kind
    command: str = ""  # the matched command words, e.g. "migrate:fresh"
    framework: str | None = None
    hints: Mapping[str, str] = field(default_factory=dict)  # target options, e.g. env=testing
    assignments: Mapping[str, str] = field(default_factory=dict)  # VAR=value before it
    via: tuple[str, ...] = ()  # e.g. ("npm run test",) when reached through a script

    @property
    def description(self) -> str:
        words = " ".join(part for part in (self.tool, self.command) if part)
        return f"{words} ({self.kind})"


# (manifest file name, script name) -> the script's command line, or None.
ScriptLookup = Callable[[str, str], str | None]

_MAX_DEPTH = 8
_VERSION_SUFFIX = re.compile(r"[\d.]+$")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_ENV_WRAPPERS = frozenset({"env", "cross-env", "cross-env-shell"})


def program_name(word: str) -> str:
    """`/usr/bin/php8.2` -> `php`, `python3.11` -> `python`, `./artisan` -> `artisan`."""
    name = PurePosixPath(word).name
    stripped = _VERSION_SUFFIX.sub("", name)
    return stripped or name


class Classifier:
    """Applies a catalog to argument lists."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._program_options = {p.name: p.value_options for p in catalog.program}

    def classify(
        self, argv: Sequence[str], lookup: ScriptLookup | None = None, _depth: int = 0
    ) -> Operation | None:
        """The operation `argv` performs, or None when it is not a database tool."""
        if not argv or _depth > _MAX_DEPTH:
            return None
        argv, assignments = _strip_env_prefix(argv)
        if not argv:
            return None
        program = program_name(argv[0])
        found = self._as_tool(program, argv[1:]) or self._via_launcher(
            program, argv[1:], lookup, _depth
        )
        if found is None:
            found = self._via_scripts(program, argv[1:], lookup, _depth)
        if found is not None and assignments:
            found = _with_assignments(found, assignments)
        return found

    # ---- tools ---------------------------------------------------------------------

    def _as_tool(self, program: str, args: Sequence[str]) -> Operation | None:
        for tool in self.catalog.tool:
            for launch in tool.launch:
                rest = self._after_launch(launch, program, args)
                if rest is not None:
                    return _match_tool(tool, rest)
        return None

    def _after_launch(self, launch: str, program: str, args: Sequence[str]) -> list[str] | None:
        """The arguments after `launch` if `program args` starts with it, else None."""
        words = launch.split()
        if program != words[0]:
            return None
        if len(words) == 1:
            return list(args)
        options = self._program_options.get(program, [])
        positionals = _positionals(args, options, stop_at_first=True)
        if not positionals:
            return None
        index, word = positionals[0]
        if PurePosixPath(word).name != words[1]:
            return None
        return list(args[index + 1 :])

    # ---- launchers and scripts -------------------------------------------------------

    def _via_launcher(
        self, program: str, args: Sequence[str], lookup: ScriptLookup | None, depth: int
    ) -> Operation | None:
        for launcher in self.catalog.launcher:
            if program not in launcher.programs:
                continue
            if launcher.module_option:
                module = _option_value(args, launcher.module_option, launcher.value_options)
                if module is None:
                    return None
                index, name = module
                inner = [name, *args[index + 1 :]]
            else:
                positionals = _positionals(args, launcher.value_options, stop_at_first=True)
                if not positionals:
                    return None
                index, _ = positionals[0]
                inner = list(args[index:])
            return self.classify(inner, lookup, depth + 1)
        return None

    def _via_scripts(
        self, program: str, args: Sequence[str], lookup: ScriptLookup | None, depth: int
    ) -> Operation | None:
        if lookup is None:
            return None
        for rule in self.catalog.scripts:
            if program not in rule.programs:
                continue
            words = [word for _, word in _positionals(args, [])]
            if not words:
                return None
            if words[0] in rule.direct:
                script = rule.direct[words[0]]
            elif words[0] in rule.run and len(words) > 1:
                script = words[1]
            elif rule.any_word:
                script = words[0]
            else:
                return None
            command = lookup(rule.manifest, script)
            if command is None:
                return None
            found = self.classify_command_line(command, lookup, depth + 1)
            if found is None:
                return None
            return replace(found, via=(f"{program} run {script}", *found.via))
        return None

    def classify_command_line(
        self, line: str, lookup: ScriptLookup | None = None, _depth: int = 0
    ) -> Operation | None:
        """Classify a shell command line (a package script): the most dangerous part wins."""
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError:
            tokens = line.split()
        found: list[Operation] = []
        current: list[str] = []
        for token in [*tokens, ";"]:
            if token and set(token) <= set(";&|()"):
                operation = self.classify(current, lookup, _depth)
                if operation is not None:
                    found.append(operation)
                current = []
            else:
                current.append(token)
        return max(found, key=lambda op: op.kind.severity, default=None)


def _match_tool(tool: ToolRule, args: Sequence[str]) -> Operation | None:
    options = [*tool.value_options, *tool.targets]
    positionals = [word for _, word in _positionals(args, options)]
    flags = _flags(args, options)
    hints = {tool.targets[name]: value for name, value in _option_values(args, tool.targets)}
    command, kind = _longest_command(tool, positionals)
    if flags & HELP_FLAGS or (positionals[:1] == ["help"]):
        kind = Kind.READ_ONLY
    elif kind is not None:
        for flag in sorted(flags & tool.flags.keys()):
            flag_kind = tool.flags[flag]
            if flag_kind is Kind.READ_ONLY:
                kind = Kind.READ_ONLY
                break
            if flag_kind.severity > kind.severity:
                kind = flag_kind
    if kind is None:
        return None
    return Operation(tool.name, kind, command, tool.framework, hints)


def _longest_command(tool: ToolRule, positionals: Sequence[str]) -> tuple[str, Kind | None]:
    for length in range(min(len(positionals), 3), 0, -1):
        words = " ".join(positionals[:length])
        if words in tool.commands:
            return words, tool.commands[words]
    return "", tool.default


def _split_option(word: str) -> tuple[str, str | None]:
    if word.startswith("--") and "=" in word:
        name, value = word.split("=", 1)
        return name, value
    return word, None


def _positionals(
    args: Sequence[str], value_options: Sequence[str], *, stop_at_first: bool = False
) -> list[tuple[int, str]]:
    """(index, word) of the arguments that are not options or option values."""
    found: list[tuple[int, str]] = []
    skip_next = False
    for index, word in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if word == "--":
            found.extend((i, w) for i, w in enumerate(args[index + 1 :], start=index + 1))
            break
        if word.startswith("-") and word != "-":
            name, value = _split_option(word)
            skip_next = value is None and name in value_options
            continue
        found.append((index, word))
        if stop_at_first:
            break
    return found


def _flags(args: Sequence[str], value_options: Sequence[str]) -> set[str]:
    flags: set[str] = set()
    skip_next = False
    for word in args:
        if skip_next:
            skip_next = False
            continue
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            name, value = _split_option(word)
            flags.add(name)
            skip_next = value is None and name in value_options
    return flags


def _option_values(args: Sequence[str], wanted: Mapping[str, str]) -> list[tuple[str, str]]:
    """(option, value) for every occurrence of an option in `wanted`, in either form."""
    found = []
    for index, word in enumerate(args):
        if word == "--":
            break
        name, value = _split_option(word)
        if name not in wanted:
            continue
        if value is None and index + 1 < len(args):
            value = args[index + 1]
        if value is not None:
            found.append((name, value))
    return found


def _option_value(
    args: Sequence[str], option: str, value_options: Sequence[str]
) -> tuple[int, str] | None:
    """The value of `option` if it appears before the first positional argument."""
    for index, word in enumerate(args):
        if word == option and index + 1 < len(args):
            return index + 1, args[index + 1]
        if word.startswith(option) and len(word) > len(option) and not word.startswith("--"):
            return index, word[len(option) :]
        if not word.startswith("-"):
            return None
        if word in value_options:
            return None
    return None


def _strip_env_prefix(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """`FOO=1 env BAR=2 cross-env php artisan test` -> (["php", "artisan", "test"], {...})."""
    words = list(argv)
    assignments: dict[str, str] = {}
    while words:
        if _ASSIGNMENT.match(words[0]):
            name, value = words.pop(0).split("=", 1)
            assignments[name] = value
        elif program_name(words[0]) in _ENV_WRAPPERS and len(words) > 1:
            words.pop(0)
        else:
            break
    return words, assignments


def _with_assignments(operation: Operation, assignments: Mapping[str, str]) -> Operation:
    return replace(operation, assignments={**assignments, **operation.assignments})

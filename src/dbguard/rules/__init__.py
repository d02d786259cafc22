"""Is this invocation a database operation, and of which kind?

Pure: `classify` reads only its arguments (and the ScriptLookup it is given). The
knowledge lives in catalog.toml; this module only knows how to walk an argument list:
options and their values, launchers (`npx`, `python -m`, `bundle exec`), package scripts
(`npm run`), a tool's commands, flags and target options. It parses by argument
structure, never by substring, so `pytest -k migrate` is a test run and
`php artisan migrate:status` is read-only. No tool is named in this file.

Everything the catalog says is compiled once, in `Classifier.__init__`, into tables keyed
by program name; `classify` then costs one dictionary look-up to find the handlers for
argv[0] and one pass over the arguments per program it walks through.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shlex
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from importlib import resources
from typing import Literal, NamedTuple, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from dbguard.errors import DbguardError


class Kind(StrEnum):
    READ_ONLY = "read-only"
    QUERY = "query"
    TEST = "test"
    SEED = "seed"
    MIGRATE = "migrate"
    DESTRUCTIVE = "destructive"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def needs_backup(self) -> bool:
        return self is not Kind.READ_ONLY


_SEVERITY = {kind: index for index, kind in enumerate(Kind)}

Framework = Literal[
    "laravel",
    "symfony",
    "django",
    "python",
    "prisma",
    "alembic",
    "rails",
    "knex",
    "sequelize",
    "typeorm",
    "drizzle",
    "flyway",
    "liquibase",
    "supabase",
    "client",
]
OptionStyle = Literal["getopt", "single-dash"]

# A target written like this is split into connection hints (see catalog.toml).
DSN_TARGET = "dsn"


# ---- the catalog's schema (documented at the top of catalog.toml) ---------------------------


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_program_names(names: list[str]) -> list[str]:
    for name in names:
        if not name or any(c.isspace() for c in name) or "/" in name:
            raise ValueError(
                f"{name!r} is not a program name: give the file name only (artisan, not "
                "`php artisan`); interpreters such as php are [[launcher]] entries"
            )
    return names


def _check_root(name: str, options: list[str], file: str | None) -> None:
    if options and not file:
        raise ValueError(f"{name!r} has `root_options`: give `root_file`, the file its top holds")
    if file is not None and (not file or "/" in file):
        raise ValueError(
            f"{name!r}: `root_file` is a file name (pnpm-workspace.yaml), not {file!r}"
        )


class ToolRule(_Rule):
    """A program that can touch a database; keys are documented in catalog.toml."""

    name: str
    framework: Framework | None = None
    extends: str | None = None
    launch: list[str] = []
    options: OptionStyle = "getopt"
    value_options: list[str] = []
    attached_options: list[str] = []
    help: list[str] = []
    default: Kind | None = None
    bare: Kind | None = None
    multiple: bool = False
    argument_commands: list[str] = []
    abbreviations: bool = False
    lone_help: bool = False
    task_arguments: bool = False
    app_environment: bool = False
    env_files: list[str] = []
    project_from_script: str | None = None
    assignment_arguments: bool = False
    positional_targets: list[str] = []
    argument_targets: dict[str, str] = {}
    commands: dict[str, Kind] = {}
    flags: dict[str, Kind] = {}
    targets: dict[str, str] = {}

    _names = field_validator("launch")(_check_program_names)

    @field_validator("commands")
    @classmethod
    def _command_keys(cls, commands: dict[str, Kind]) -> dict[str, Kind]:
        for key in commands:
            _split_key(key)  # raises ValueError naming the key
        return commands

    @model_validator(mode="after")
    def _launched(self) -> ToolRule:
        if not self.launch and self.extends is None:
            raise ValueError(f"tool {self.name!r} needs `launch` (or `extends`)")
        return self


class LauncherRule(_Rule):
    """A program that runs another program (`npx`, `python -m`, `bundle exec`, `env`)."""

    name: str
    programs: list[str]
    subcommands: list[str] = []
    options: OptionStyle = "getopt"
    value_options: list[str] = []
    module_options: list[str] = []
    script_options: list[str] = []
    code_options: list[str] = []
    command_options: list[str] = []
    no_run: list[str] = []
    assignments: bool = False
    assignment_options: list[str] = []
    line: bool = False
    line_flags: list[str] = []
    # option -> name of a [[scripts]] entry: the option's value is one of its scripts
    # (`node --run db:reset` runs package.json's script as `npm run` does).
    script_runs: dict[str, str] = {}
    package_specs: bool = False
    # npm's argument parser takes the first `--` for its own: `npm exec nx -- run-many`
    # runs `nx run-many`, not `nx -- run-many`.
    drops_separator: bool = False
    # The program word is a shell file whose commands it runs (`sh reset.sh`).
    shell_files: bool = False
    kinds: dict[str, Kind] = {}
    # Runs the program in workspace members, as a ScriptsRule runs a script (pnpm -r
    # exec, lerna exec): the same keys, and the manifest that holds the workspace.
    manifest: str | None = None
    member_options: list[str] = []
    member_selectors: list[str] = []
    member_filters: list[str] = []
    members: bool = False
    root_options: list[str] = []
    root_file: str | None = None
    targets: dict[str, str] = {}

    _names = field_validator("programs")(_check_program_names)

    @model_validator(mode="after")
    def _workspace(self) -> LauncherRule:
        workspace = self.member_options or self.member_selectors or self.member_filters
        if (workspace or self.members or self.root_options) and not self.manifest:
            raise ValueError(f"launcher {self.name!r} runs in workspace members: give `manifest`")
        _check_root(self.name, self.root_options, self.root_file)
        return self


class ScriptsRule(_Rule):
    """A package manager running named scripts from a manifest (`npm run`, `composer X`)."""

    name: str
    programs: list[str]
    manifest: str
    value_options: list[str] = []
    run: list[str] = []
    direct: dict[str, str | list[str]] = {}
    any_word: bool = False
    builtins: list[str] = []
    bins: bool = False
    pre_post: bool = False
    forwards_options: bool = False
    aliases: dict[str, str] = {}
    reference_prefix: str | None = None
    member_options: list[str] = []
    members: bool = False
    member_words: dict[str, Literal["named", "every"]] = {}
    member_selectors: list[str] = []
    member_filters: list[str] = []
    root_options: list[str] = []
    root_file: str | None = None
    multiple: bool = False
    task_options: list[str] = []
    task_aliases: dict[str, str] = {}
    project_words: bool = False
    lists: bool = False
    in_place: bool = False
    tasks: str | None = None
    targets: dict[str, str] = {}

    _names = field_validator("programs")(_check_program_names)

    @model_validator(mode="after")
    def _root(self) -> ScriptsRule:
        _check_root(self.name, self.root_options, self.root_file)
        task_runner = self.task_options or self.task_aliases or self.project_words or self.lists
        if task_runner and not self.multiple:
            raise ValueError(f"{self.name!r}: task keys go with `multiple` (a task runner)")
        return self


_R = TypeVar("_R", ToolRule, LauncherRule, ScriptsRule)


class Catalog(_Rule):
    """The whole catalog: catalog.toml, optionally merged with a user's entries."""

    help: list[str] = []
    repeated_hints: list[str] = []
    tool: list[ToolRule] = []
    launcher: list[LauncherRule] = []
    scripts: list[ScriptsRule] = []
    script_shell: list[str] = []

    _shell_names = field_validator("script_shell")(_check_program_names)

    @model_validator(mode="after")
    def _script_runs(self) -> Catalog:
        names = {scripts.name for scripts in self.scripts}
        for launcher in self.launcher:
            for option, name in launcher.script_runs.items():
                if name not in names:
                    raise ValueError(
                        f"launcher {launcher.name!r}: {option} runs scripts of {name!r}, "
                        "which is no [[scripts]] entry"
                    )
        return self

    def merged(self, extra: Catalog, *, replace: bool = True) -> Catalog:
        """This catalog with `extra`'s entries added before its own.

        With `replace` (a user's own config), an entry of `extra` replaces the built-in
        entry of the same name, which may loosen a rule. Without it (a project file, which
        may only tighten), both stay: every tool entry for a program is consulted and the
        most dangerous answer wins.
        """

        def combine(theirs: list[_R], ours: list[_R]) -> list[_R]:
            names = {rule.name for rule in theirs} if replace else set()
            return theirs + [rule for rule in ours if rule.name not in names]

        return Catalog(
            help=_unique([*self.help, *extra.help]),
            repeated_hints=_unique([*self.repeated_hints, *extra.repeated_hints]),
            tool=combine(extra.tool, self.tool),
            launcher=combine(extra.launcher, self.launcher),
            scripts=combine(extra.scripts, self.scripts),
            script_shell=_unique([*self.script_shell, *extra.script_shell]),
        )

    def programs(self) -> list[str]:
        """Every program name the catalog recognises as argv[0]. Not all deserve a shim:
        the shells and `env` are here so package scripts can be followed through them."""
        names = {p for t in self.tool for p in t.launch}
        names.update(p for launcher in self.launcher for p in launcher.programs)
        names.update(p for scripts in self.scripts for p in scripts.programs)
        return sorted(names)


def builtin_catalog() -> Catalog:
    text = resources.files(__package__).joinpath("catalog.toml").read_text(encoding="utf-8")
    return Catalog.model_validate(tomllib.loads(text))


# ---- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """A recognised invocation."""

    tool: str
    kind: Kind
    # The catalog key that decided, e.g. "migrate:fresh" or "db push --accept-data-loss";
    # for tools taking several commands (rake), every recognised one.
    command: str = ""
    framework: str | None = None
    hints: Mapping[str, str] = field(default_factory=dict)  # target options, e.g. env=testing
    assignments: Mapping[str, str] = field(default_factory=dict)  # VAR=value before it
    via: tuple[str, ...] = ()  # e.g. ("npm run test",) when reached through a script
    # The other database operations of the same command (`prisma migrate reset && cd
    # ../worker && knex migrate:rollback`): their databases are backed up too. This one,
    # the most dangerous, names the command and decides what it needs.
    also: tuple[Operation, ...] = ()
    # An end-to-end test run: the app it drives runs in its own environment, so the
    # databases of that environment count besides the test settings' (catalog key).
    app_environment: bool = False
    # Run in a workspace member by a run in several (pnpm -r exec, npm -ws, a --filter):
    # a member where the tool cannot start (Prisma finding no schema) touches nothing, so
    # discovery may leave it out where another member of the run is found.
    member: bool = False
    # A shell file dbguard could not read (its path is a variable, it is too large): it
    # may run anything, so it counts as destructive in every framework the project has,
    # but in a project with no sign of a database it needs no backup, as a test run.
    unread: bool = False

    def each(self) -> list[Operation]:
        """This operation and the others of its command, each on its own."""
        return [replace(self, also=()), *self.also] if self.also else [self]

    @property
    def identity(self) -> tuple[object, ...]:
        """What makes two operations the same, `also` and `via` aside."""
        return (
            self.tool,
            self.kind,
            self.command,
            self.framework,
            tuple(sorted(self.hints.items())),
            tuple(sorted(self.assignments.items())),
            self.app_environment,
            self.member,
            self.unread,
        )

    @property
    def description(self) -> str:
        words = " ".join(part for part in (self.tool, self.command) if part)
        return f"{words} ({self.kind})"


class TooManyScripts(DbguardError):
    """A command whose package scripts could not all be followed: refused, as what was
    not read may be a database operation."""


class Script(NamedTuple):
    """A package script: its command line, and the folder of the manifest it is in,
    where the package manager runs it ("" for the invocation's own folder)."""

    line: str
    folder: str


# (manifest, script name) -> the script, or None. The manifest is a file name, or a path
# from the invocation's folder when an option moved it (`npm --prefix web test` reads
# web/package.json), found from its folder upwards as the tools do.
ScriptLookup = Callable[[str, str], Script | None]
# (manifest, selectors) -> the folders of the workspace members of the project it
# belongs to (npm workspaces, pnpm-workspace.yaml), from the invocation's folder or
# absolute: all of them, or those the selectors name (a package name, else a folder
# that holds them, as npm -w reads it).
MemberLookup = Callable[[str, Sequence[str]], list[str]]
# (file, folder) -> the nearest folder at or above `folder` (from the invocation's
# folder, or absolute) that holds `file`, in the same terms; None when none does. What
# `pnpm -w` runs in: the folder with pnpm-workspace.yaml above where it is started.
RootLookup = Callable[[str, str], str | None]
# (path, limit) -> the first `limit` bytes of the file at `path` (from the invocation's
# folder, or absolute), or None when there is no such file; OSError when it is there but
# cannot be read (not a regular file, no permission). What shell files are read with.
FileLookup = Callable[[str, int], bytes | None]
# The hint naming the folder the command runs in, relative to the invocation's (env -C,
# npm --prefix, yarn --cwd): set on the operation as every folder change joined.
CWD_HINT = "cwd"
# The hint naming dotenv files a launcher loads (relative to where the launcher runs).
ENV_FILE_HINT = "env_file"
# Set by the daemon, not the catalog: sub-projects of the root that a test run's path
# arguments lead into, discovered on their own (one per line, from the root).
FOLLOWED_HINT = "followed"
# Set by the daemon too: the paths a test run was given inside its own project (its
# sub-projects elsewhere are not collected).
SCOPE_HINT = "scope"

_MAX_DEPTH = 8  # launchers and scripts nested in each other
_MAX_LOOKUPS = 64  # script look-ups for one classification (`a && b` fans out)
_MAX_MEMBERS = 256  # workspace members a script is run in (npm -ws, turbo run)
_LOOKUPS_PER_MEMBER = 16  # the script, its pre and post, and the scripts they run
_MAX_COMMAND_WORDS = 4
_MAX_SHELL_BYTES = 1 << 16  # a shell file larger than this is not read: it may run anything
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_SEPARATORS = frozenset(";&|()")
_REDIRECTS = frozenset("<>")
_SHELL_SYNTAX = frozenset("'\"\\;&|()<>#")


def program_name(word: str) -> str:
    """`/usr/bin/php8.2` -> `php`, `python3.11` -> `python`, `./artisan` -> `artisan`."""
    name = word.rstrip("/").rpartition("/")[2]  # PurePosixPath(word).name, 10x faster
    # Not a regex: `-?[\d.]+$` searched from every position is quadratic on a long word.
    stripped = name.rstrip("0123456789.")
    if stripped != name and stripped.endswith("-"):
        stripped = stripped[:-1]
    return stripped or name


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _split_key(key: str) -> tuple[list[str], list[str]]:
    """A command key -> (command words, required options)."""
    words = key.split()
    first_option = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
    command, options = words[:first_option], words[first_option:]
    if not command:
        raise ValueError(f"command {key!r} has no command word; options alone go in `flags`")
    if any(not w.startswith("-") for w in options):
        raise ValueError(f"command {key!r}: options must come after the command words")
    return command, options


# ---- option parsing -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Syntax:
    """How one program spells its options, and which of them take a value."""

    single_dash: bool = False
    values: frozenset[str] = frozenset()  # take the next word, or an attached value
    attached: frozenset[str] = frozenset()  # take only an attached value (-pSECRET)
    words: frozenset[str] = frozenset()  # whole words that are one option (npm's -ws)
    stops: frozenset[str] = frozenset()  # the launcher's own parsing ends after the value

    def normal(self, name: str) -> str:
        if self.single_dash and name.startswith("--"):
            return name[1:]
        return name


@dataclass
class _Parsed:
    options: list[tuple[str, str | None]] = field(default_factory=list)
    alone: set[str] = field(default_factory=set)  # options written as a word of their own
    positionals: list[tuple[int, str]] = field(default_factory=list)
    end: int = 0  # where parsing stopped (first positional, or after a stop option's value)
    stopped_by: tuple[str, str] | None = None  # (option, value) that ended parsing


def _parse(args: Sequence[str], syntax: _Syntax, *, first_only: bool = False) -> _Parsed:
    """Split `args` into options (name, value) and positional words.

    `first_only`: stop at the first positional word (a launcher's own options end there).
    Everything after `--` is positional.
    """
    parsed = _Parsed()
    count = len(args)
    index = 0
    while index < count:
        word = args[index]
        if word == "--":
            parsed.positionals.extend((i, args[i]) for i in range(index + 1, count))
            if first_only:
                parsed.end = index + 1
                return parsed
            break
        if len(word) < 2 or word[0] != "-":
            parsed.positionals.append((index, word))
            if first_only:
                parsed.end = index
                return parsed
            index += 1
            continue
        name: str
        value: str | None = None
        takes_next = False
        alone = True
        if word[1] == "-" or syntax.single_dash:
            name, eq, attached = syntax.normal(word).partition("=")
            if eq:
                value = attached
            elif name in syntax.values:
                takes_next = True
        elif word in syntax.values:
            name, takes_next = word, True
        elif word in syntax.attached or word in syntax.words:
            name = word
        else:
            alone = len(word) == 2
            # A getopt cluster: -xvf is -x -v -f; a value option ends it (-kVALUE, -xk VALUE).
            # `-t=VALUE` is VALUE, as yargs (nx), clap and others read it: getopt would
            # read "=VALUE", which names no task or database, so that could only unguard.
            # A lone "=" is the value itself (psql -F= sets the field separator).
            name = word[:2]
            for position in range(1, len(word)):
                name = "-" + word[position]
                rest = word[position + 1 :]
                if len(rest) > 1 and rest.startswith("="):
                    rest = rest[1:]
                if name in syntax.values:
                    if rest:
                        value = rest
                    else:
                        takes_next = True
                    break
                if name in syntax.attached:
                    value = rest or None
                    break
                if position < len(word) - 1:
                    parsed.options.append((name, None))
        if takes_next and index + 1 < count:
            index += 1
            value = args[index]
        parsed.options.append((name, value))
        if alone:
            parsed.alone.add(name)
        index += 1
        if name in syntax.stops and value is not None:
            parsed.stopped_by = (name, value)
            parsed.end = index
            return parsed
    parsed.end = count
    return parsed


# ---- hints ----------------------------------------------------------------------------------


def _dsn_hints(value: str) -> dict[str, str]:
    """A client's database argument: a URI, a libpq conninfo string, or a plain name."""
    if "://" in value:
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            return {}
        found = {
            "host": parts.hostname or "",
            "port": str(port) if port else "",
            "database": parts.path.lstrip("/"),
            "user": parts.username or "",
        }
        return {name: item for name, item in found.items() if item}
    if "=" in value:
        try:
            words = shlex.split(value)
        except ValueError:
            words = value.split()
        keys = {"host": "host", "hostaddr": "host", "port": "port", "dbname": "database",
                "user": "user", "service": "section"}  # fmt: skip
        found = {}
        for word in words:
            key, _, item = word.partition("=")
            if key in keys and item:
                found[keys[key]] = item
        return found
    return {"database": value}


class _Hints:
    """Collects hints; names in `repeated` keep every value, one per line."""

    def __init__(self, repeated: frozenset[str]) -> None:
        self.values: dict[str, str] = {}
        self._repeated = repeated

    def add(self, name: str, value: str) -> None:
        if name == DSN_TARGET:
            for key, item in _dsn_hints(value).items():
                self.add(key, item)
        elif name in self._repeated and name in self.values:
            self.values[name] += "\n" + value
        else:
            self.values[name] = value

    def from_options(
        self, options: Iterable[tuple[str, str | None]], targets: Mapping[str, str]
    ) -> None:
        for name, value in options:
            target = targets.get(name)
            if target is None:
                continue
            hint, switch, fixed = target.partition("=")
            if switch:
                self.add(hint, fixed)
            elif value is not None:
                self.add(hint, value)


# ---- compiled tools -------------------------------------------------------------------------


@dataclass(frozen=True)
class _FlagRule:
    """Options that, all present, set the kind: "db push --accept-data-loss"."""

    needed: frozenset[str]
    kind: Kind
    text: str  # the options as the catalog writes them, for Operation.command


@dataclass
class _Node:
    """One command word in a tool's command tree."""

    word: str | None = None  # the literal word; None for a pattern ("*", "db:drop:*")
    exact: dict[str, _Node] = field(default_factory=dict)
    prefixes: list[tuple[str, _Node]] = field(default_factory=list)  # longest first
    kind: Kind | None = None
    flag_rules: list[_FlagRule] = field(default_factory=list)

    @property
    def is_entry(self) -> bool:
        return self.kind is not None or bool(self.flag_rules)

    def child(self, word: str) -> _Node:
        if word.endswith("*"):
            prefix = word[:-1]
            for existing, node in self.prefixes:
                if existing == prefix:
                    return node
            node = _Node()
            self.prefixes.append((prefix, node))
            self.prefixes.sort(key=lambda item: -len(item[0]))
            return node
        return self.exact.setdefault(word, _Node(word))

    def children(self, word: str) -> Iterable[_Node]:
        """Nodes matching `word`, best first: the exact word, then the longest prefix."""
        exact = self.exact.get(word)
        if exact is not None:
            yield exact
        for prefix, node in self.prefixes:
            if word.startswith(prefix):
                yield node


def _walk(node: _Node, words: Sequence[str], index: int) -> list[_Node] | None:
    """The longest path of nodes matching words[index:] that ends at a catalog entry."""
    if index >= len(words) or index >= _MAX_COMMAND_WORDS:
        return None
    best: list[_Node] | None = None
    for child in node.children(words[index]):
        path = _path_from(child, words, index + 1)
        if path is not None and (best is None or len(path) > len(best)):
            best = path
    return best


def _path_from(node: _Node, words: Sequence[str], index: int) -> list[_Node] | None:
    deeper = _walk(node, words, index)
    if deeper is not None:
        return [node, *deeper]
    return [node] if node.is_entry else None


# Options after which Symfony's console asks nothing (Application::configureIO).
_CONSOLE_NEVER_ASKS = frozenset({"-n", "--no-interaction", "-q", "--quiet", "--silent"})


def levenshtein(a: str, b: str) -> int:
    """Edits (insert, delete, replace a character) that turn `a` into `b`."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def console_alternatives(name: str, commands: Sequence[str]) -> list[str]:
    """The commands Symfony's console offers for `name`, which is none of them
    (Application::findAlternatives): close in each colon-separated part, or containing
    it, or close as a whole."""
    threshold = 1000
    scores: dict[str, int] = {}
    for index, sub in enumerate(name.split(":")):
        for command in commands:
            parts = command.split(":")
            known = command in scores
            if index >= len(parts):
                if known:
                    scores[command] += threshold
                continue
            distance = levenshtein(sub, parts[index])
            if distance <= len(sub) / 3 or (sub and sub in parts[index]):
                scores[command] = scores.get(command, 0) + distance
            elif known:
                scores[command] += threshold
    for command in commands:
        distance = levenshtein(name, command)
        if distance <= len(name) / 3 or name in command:
            scores[command] = scores.get(command, 0) - distance if command in scores else distance
    return sorted(c for c, score in scores.items() if score < 2 * threshold)


@dataclass
class _Tool:
    name: str
    framework: str | None
    syntax: _Syntax
    help_options: frozenset[str]
    help_words: frozenset[str]
    lone_help: bool  # a help option counts only as a word of its own, not in a cluster
    default: Kind | None
    bare: Kind | None
    multiple: bool
    argument_commands: frozenset[str]
    task_arguments: bool
    assignment_arguments: bool
    positional_targets: tuple[str, ...]
    # (command word pattern, hint): the word after such a command is its argument.
    argument_targets: tuple[tuple[str, str], ...]
    targets: dict[str, str]
    tree: _Node
    global_rules: list[_FlagRule]
    # Symfony-style abbreviations: (lower-case parts of a first command word, its node).
    abbreviations: list[tuple[list[str], _Node]] | None
    app_environment: bool = False
    env_files: tuple[str, ...] = ()
    project_from_script: str | None = None

    def match(self, args: Sequence[str], repeated: frozenset[str]) -> Operation | None:
        parsed = _parse(args, self.syntax)
        present = {name for name, _ in parsed.options}
        hints = _Hints(repeated)
        hints.from_options(parsed.options, self.targets)
        for name in self.env_files:  # after the options': the files given win
            hints.add(ENV_FILE_HINT, posixpath.join(hints.values.get(CWD_HINT, ""), name))
        words = [word for _, word in parsed.positionals]
        assignments: dict[str, str] = {}
        if self.assignment_arguments:
            kept = []
            for word in words:
                if _ASSIGNMENT.match(word):
                    name, _, value = word.partition("=")
                    assignments[name] = value
                else:
                    kept.append(word)
            words = kept
        for target in self.positional_targets:
            if not words:
                break
            hints.add(target, words.pop(0))
        if self.task_arguments:
            words = [w.partition("[")[0] if w.endswith("]") else w for w in words]
        words, arguments = self._arguments(words)

        helps = parsed.alone if self.lone_help else present
        decided = self._decide(words, present, helps, parsed.alone)
        if decided is None:
            return None
        kind, command = decided
        operations = [
            Operation(
                self.name,
                kind,
                command,
                self.framework,
                {**hints.values, hint: value} if hint else hints.values,
                assignments,
                app_environment=self.app_environment and kind.needs_backup,
            )
            for hint, value in arguments or [("", "")]
        ]
        # `mysqladmin drop a drop b`: one operation per database, each backed up.
        return replace(operations[0], also=tuple(operations[1:]))

    def _arguments(self, words: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """The command words without the arguments `argument_targets` takes, and those
        arguments as (hint, value), in order."""
        if not self.argument_targets:
            return words, []
        kept: list[str] = []
        arguments: list[tuple[str, str]] = []
        index = 0
        while index < len(words):
            word = words[index]
            kept.append(word)
            index += 1
            hint = next(
                (
                    hint
                    for pattern, hint in self.argument_targets
                    if word == pattern or (pattern.endswith("*") and word.startswith(pattern[:-1]))
                ),
                None,
            )
            if hint is not None and index < len(words):
                arguments.append((hint, words[index]))
                index += 1
        return kept, arguments

    def _decide(
        self, words: list[str], present: set[str], helps: set[str], alone: set[str]
    ) -> tuple[Kind, str] | None:
        """`helps`: the options that count as help options (see `lone_help`); `alone`:
        the options written as a word of their own."""
        help_option = next((o for o in self.help_options if o in helps), None)
        if help_option is not None or (words and words[0] in self.help_words):
            if self._not_ours(words):
                return None  # `bun run db:reset -v`: bun's scripts, not `bun test`'s help
            return Kind.READ_ONLY, help_option or words[0]
        if not words:
            base = self.bare if self.bare is not None else self.default
            return self._with_flags(base, "", [], present, recognised=False)
        if not self.multiple:
            return self._command(words, present, alone)
        if words[0] in self.argument_commands:
            words = words[:1]  # `rails generate controller db`: the rest are its arguments
        found: list[tuple[Kind, str]] = []
        for word in words:
            one = self._command([word], present, alone)
            if one is not None:
                found.append(one)
        if not found:
            return None
        kind = max((k for k, _ in found), key=_SEVERITY.__getitem__)
        return kind, " ".join(_unique(c for _, c in found if c))

    def _not_ours(self, words: list[str]) -> bool:
        """A tool that is only some commands of its program (`bun test` of bun) and a
        first word that is none of them: another handler of the program decides."""
        return (
            self.default is None
            and self.bare is None
            and self.abbreviations is None
            and bool(words)
            and words[0] not in self.help_words
            and not any(self.tree.children(words[0]))
        )

    def _command(
        self, words: list[str], present: set[str], alone: set[str]
    ) -> tuple[Kind, str] | None:
        path = _walk(self.tree, words, 0)
        if path is not None:
            return self._on_path(path, words, present)
        if self.abbreviations is not None:
            return self._abbreviated(words, present, alone)
        return self._with_flags(self.default, "", [], present, recognised=False)

    def _on_path(
        self, path: list[_Node], words: list[str], present: set[str]
    ) -> tuple[Kind, str] | None:
        rules = [rule for node in path for rule in node.flag_rules]
        text = " ".join(node.word or word for node, word in zip(path, words, strict=False))
        return self._with_flags(path[-1].kind, text, rules, present, recognised=True)

    def _abbreviated(
        self, words: list[str], present: set[str], alone: set[str]
    ) -> tuple[Kind, str] | None:
        """`d:s:u` -> doctrine:schema:update, as Symfony's Application::find reads a name
        that is no command: each colon-separated part is a prefix of the command's part,
        an empty one of any (`:fresh` is migrate:fresh), and where no command matches so,
        it retries ignoring case (`MIGRATE:FRESH`). Matching ignoring case from the start
        only adds candidates. Ambiguous input fails in the console itself, so counting it
        as the most dangerous candidate never under-protects."""
        if not words[0]:
            return self._with_flags(self.default, "", [], present, recognised=False)
        parts = words[0].lower().split(":")
        best: tuple[Kind, str] | None = None
        for full, node in self.abbreviations or []:
            if len(full) < len(parts) or not all(
                f.startswith(p) for f, p in zip(full, parts, strict=False)
            ):
                continue
            path = _path_from(node, words, 1)
            found = self._on_path(path, words, present) if path is not None else None
            if found is not None and (best is None or found[0].severity > best[0].severity):
                best = found
        if best is not None:
            return best
        offered = self._offered(words, present, alone)
        if offered is not None:
            return offered
        return self._with_flags(self.default, "", [], present, recognised=False)

    def _offered(
        self, words: list[str], present: set[str], alone: set[str]
    ) -> tuple[Kind, str] | None:
        """A name that is no command, not even abbreviated, fails in Symfony's console,
        which lists the commands it is close to (Application::findAlternatives). Where it
        finds exactly one and may ask (no -n, -q or --silent), it asks "Do you want to
        run X instead?" and runs X with the rest of the line on a yes: such a name counts
        as X. The catalog knows some of the application's commands, not all; the others
        can only add alternatives, and with more than one the console does not ask, so
        counting from the catalog's never misses a question.

        A name in a namespace the catalog does not know (`app:reset`) is left alone: it is
        most likely the application's own command, which runs as itself, and where it is
        not, the console asks nothing unless the namespace exists (findNamespace)."""
        if alone & _CONSOLE_NEVER_ASKS:
            return None
        names = {":".join(full): node for full, node in self.abbreviations or []}
        namespace = words[0].rpartition(":")[0].split(":") if ":" in words[0] else []
        if namespace and not any(
            len(full) > len(namespace)
            and all(f.startswith(n) for f, n in zip(full, namespace, strict=False))
            for full, _ in self.abbreviations or []
        ):
            return None
        offered = console_alternatives(words[0], [*names, *self.help_words])
        node = names.get(offered[0]) if len(offered) == 1 else None
        if node is None:
            return None
        as_offered = [offered[0], *words[1:]]
        path = _path_from(node, as_offered, 1)
        return self._on_path(path, as_offered, present) if path is not None else None

    def _with_flags(
        self,
        kind: Kind | None,
        text: str,
        rules: list[_FlagRule],
        present: set[str],
        *,
        recognised: bool,
    ) -> tuple[Kind, str] | None:
        """Options written in the catalog override the command's own kind; when several are
        present the most dangerous wins. They count only for a recognised command (or a
        tool with a default kind)."""
        if kind is None and not recognised:
            return None
        best: _FlagRule | None = None
        for rule in (*rules, *self.global_rules):
            if rule.needed <= present and (best is None or rule.kind.severity > best.kind.severity):
                best = rule
        if best is not None:
            return best.kind, f"{text} {best.text}".strip()
        return (kind, text) if kind is not None else None


def _resolve_tools(tools: Sequence[ToolRule]) -> list[ToolRule]:
    """Apply `extends`: tables merge, lists join, the entry's own scalar values win."""
    by_name: dict[str, ToolRule] = {}
    for tool in tools:
        by_name.setdefault(tool.name, tool)

    def resolve(tool: ToolRule, seen: tuple[str, ...]) -> ToolRule:
        if tool.extends is None:
            return tool
        if tool.extends in seen or tool.extends not in by_name:
            raise ValueError(f"tool {tool.name!r} extends unknown or circular {tool.extends!r}")
        parent = resolve(by_name[tool.extends], (*seen, tool.name))
        merged = parent.model_dump()
        own = tool.model_dump(exclude_unset=True)
        for key, value in own.items():
            if isinstance(value, dict):
                merged[key] = {**merged[key], **value}
            elif isinstance(value, list) and key != "launch":
                merged[key] = _unique([*merged[key], *value])
            else:
                merged[key] = value
        merged["extends"] = None
        return ToolRule.model_validate(merged)

    return [resolve(tool, ()) for tool in tools]


def _compile_tool(rule: ToolRule, common_help: Sequence[str]) -> _Tool:
    single = rule.options == "single-dash"
    normal = _Syntax(single_dash=single).normal
    targets = {normal(option): hint for option, hint in rule.targets.items()}
    values = {normal(o) for o in rule.value_options}
    values.update(option for option, hint in targets.items() if "=" not in hint)
    syntax = _Syntax(
        single_dash=single,
        values=frozenset(values),
        attached=frozenset(normal(o) for o in rule.attached_options),
    )
    tree = _Node()
    for key, kind in rule.commands.items():
        words, options = _split_key(key)
        node = tree
        for word in words:
            node = node.child(word)
        if options:
            node.flag_rules.append(
                _FlagRule(frozenset(map(normal, options)), kind, " ".join(options))
            )
        else:
            node.kind = kind
    abbreviations: list[tuple[list[str], _Node]] | None = None
    if rule.abbreviations:
        abbreviations = [(word.lower().split(":"), node) for word, node in tree.exact.items()]
    help_items = [*common_help, *rule.help]
    return _Tool(
        name=rule.name,
        framework=rule.framework,
        syntax=syntax,
        help_options=frozenset(normal(h) for h in help_items if h.startswith("-")),
        help_words=frozenset(h for h in help_items if not h.startswith("-")),
        lone_help=rule.lone_help,
        default=rule.default,
        bare=rule.bare,
        multiple=rule.multiple,
        argument_commands=frozenset(rule.argument_commands),
        task_arguments=rule.task_arguments,
        assignment_arguments=rule.assignment_arguments,
        positional_targets=tuple(rule.positional_targets),
        argument_targets=tuple(rule.argument_targets.items()),
        targets=targets,
        tree=tree,
        global_rules=[
            _FlagRule(frozenset({normal(option)}), kind, option)
            for option, kind in rule.flags.items()
        ],
        abbreviations=abbreviations,
        app_environment=rule.app_environment,
        env_files=tuple(rule.env_files),
        project_from_script=rule.project_from_script,
    )


# ---- compiled launchers and package managers -------------------------------------------


_GUESSES = 3  # unknown options before a launcher's first word that may take a value
_GUESSES_PER_COMMAND = 8  # guessed readings in one classification, nesting included
# A word with one of these endings is a file the runner executes (python -u app.py,
# bun --hot src/cli.ts), never an option's value: no guess reads past it.
_SCRIPT_FILE = re.compile(r"\.(?:py|[cm]?js|[cm]?ts|tsx|jsx|sh|bash|rb|php|pl)$")
_CODE_FILE = re.compile(r"\.(?:py|[cm]?js|[cm]?ts|tsx|jsx|rb|php|pl)$")  # no shell's


_Handler = TypeVar("_Handler", "_Launcher", "_Scripts")


def _guesses(
    handler: _Handler, args: Sequence[str], known: Callable[[str], bool]
) -> Iterator[_Handler]:
    """`handler` again with each unknown option read as a flag right before the word
    that decides (its subcommand, script or program; for a script runner, also the
    script's name after `run`) taking a value instead, one more at a time: `pipenv
    --python 3.12 run ...`, `npm --globalconfig FILE run reset`, `pnpm run --newopt V
    reset`. The catalog cannot list every value option of every version of every tool,
    and one missing turns its value into the word that decides, which then matches
    nothing. A word `known` as what it was read for (a subcommand, a script the
    manifest has) is never taken for a value: most options are flags, and `npm run
    --silent lint test` runs lint, not test."""
    syntax = handler.syntax
    run_words: frozenset[str] = handler.run if isinstance(handler, _Scripts) else frozenset()
    for _ in range(_GUESSES):
        parsed = _parse(args, syntax, first_only=True)
        if parsed.positionals and parsed.positionals[0][1] in run_words:
            after_run = args[parsed.end + 1 :]  # the option before the script's name
            script = _parse(after_run, syntax, first_only=True)
            name = _unknown_before_word(after_run, script, syntax, known)
        else:
            name = _unknown_before_word(args, parsed, syntax, known)
        if name is None:
            return
        syntax = replace(syntax, values=syntax.values | {name})
        yield replace(handler, syntax=syntax)


def _unknown_before_word(
    args: Sequence[str], parsed: _Parsed, syntax: _Syntax, known: Callable[[str], bool]
) -> str | None:
    """The option read as a flag right before the first word of `args` (`parsed` with
    first_only), unless the catalog lists it as one, or that word is a file to execute
    or `known`."""
    if parsed.stopped_by is not None or not parsed.positionals or not parsed.options:
        return None
    first, word = parsed.positionals[0]
    name, value = parsed.options[-1]
    before = args[first - 1] if first > 0 else ""
    if value is not None or before == "--" or not before.startswith("-"):
        return None
    if name in syntax.values or _SCRIPT_FILE.search(word) or known(word):
        return None
    return name


@dataclass
class _Launcher:
    rule: LauncherRule
    syntax: _Syntax
    subcommands: frozenset[str]
    code_options: frozenset[str]
    command_options: frozenset[str]
    no_run: frozenset[str]
    assignment_options: frozenset[str]
    line_flags: frozenset[str]
    script_runs: dict[str, str]
    kinds: dict[str, Kind]
    member_options: frozenset[str]
    member_selectors: frozenset[str]
    member_filters: frozenset[str]


def _compile_launcher(rule: LauncherRule) -> _Launcher:
    single = rule.options == "single-dash"
    normal = _Syntax(single_dash=single).normal

    def names(options: Iterable[str]) -> frozenset[str]:
        return frozenset(map(normal, options))

    # Module, script, command and code options all end the launcher's own options: what
    # follows belongs to the program they name (`python -m pytest -k x`).
    stops = names(
        [
            *rule.module_options,
            *rule.script_options,
            *rule.command_options,
            *rule.code_options,
            *rule.script_runs,
        ]
    )
    takes_value = [option for option, hint in rule.targets.items() if "=" not in hint]
    values = names(
        [
            *rule.value_options,
            *rule.assignment_options,
            *takes_value,
            *rule.member_selectors,
            *rule.member_filters,
        ]
    )
    return _Launcher(
        rule=rule,
        syntax=_Syntax(
            single_dash=single,
            values=values | stops,
            words=names(rule.member_options),
            stops=stops,
        ),
        subcommands=frozenset(rule.subcommands),
        code_options=names(rule.code_options),
        command_options=names(rule.command_options),
        no_run=names(rule.no_run),
        assignment_options=names(rule.assignment_options),
        line_flags=names(rule.line_flags),
        script_runs={normal(option): name for option, name in rule.script_runs.items()},
        kinds={normal(option): kind for option, kind in rule.kinds.items()},
        member_options=names(rule.member_options),
        member_selectors=names(rule.member_selectors),
        member_filters=names(rule.member_filters),
    )


@dataclass
class _Scripts:
    rule: ScriptsRule
    syntax: _Syntax
    run: frozenset[str]
    builtins: frozenset[str]


@dataclass
class _Handlers:
    """Everything the catalog knows about one program name."""

    tools: list[_Tool] = field(default_factory=list)
    launchers: list[_Launcher] = field(default_factory=list)
    scripts: list[_Scripts] = field(default_factory=list)


@dataclass
class _Walk:
    """State shared by one classification: the look-up, how much of it is left, and the
    folder the command being classified runs in (relative to the invocation's)."""

    lookup: ScriptLookup | None
    members_of: MemberLookup | None = None
    root_of: RootLookup | None = None
    files: FileLookup | None = None
    lookups_left: int = _MAX_LOOKUPS
    guesses_left: int = _GUESSES_PER_COMMAND
    active: set[tuple[str, str]] = field(default_factory=set)  # scripts being expanded
    found_scripts: list[str] = field(default_factory=list)  # names the look-up found
    folder: str = ""

    def may_guess(self) -> bool:
        """Whether one more reading with a guessed option value may be tried. Bounded
        for the whole command: each guess re-reads what follows, so nested launchers
        (`env -a env -b env ...`) would multiply the work at every level."""
        if self.guesses_left <= 0:
            return False
        self.guesses_left -= 1
        return True

    def manifest(self, name: str) -> str:
        return posixpath.join(self.folder, name) if self.folder else name

    def script(self, manifest: str, name: str) -> Script | None:
        if self.lookup is None:
            return None
        if self.lookups_left <= 0:
            # Not found would mean "not a database operation": never guess that.
            raise TooManyScripts(
                "the command runs more package scripts than dbguard follows "
                f"({_MAX_LOOKUPS}, and {_LOOKUPS_PER_MEMBER} more per workspace member)",
                "run its scripts one at a time: each is guarded on its own",
            )
        self.lookups_left -= 1
        script = self.lookup(self.manifest(manifest), name)
        if script is not None:
            self.found_scripts.append(name)
        return script

    def file(self, path: str) -> bytes | None:
        """The start of the shell file `path` (from this folder): at most one byte more
        than dbguard reads. Counted with the scripts: each may run more."""
        if self.files is None:
            return None
        if self.lookups_left <= 0:
            raise TooManyScripts(
                "the command runs more shell files and package scripts than dbguard follows "
                f"({_MAX_LOOKUPS} look-ups, and {_LOOKUPS_PER_MEMBER} more per workspace "
                "member)",
                "run the files' commands one at a time: each is guarded on its own",
            )
        self.lookups_left -= 1
        return self.files(self.manifest(path), _MAX_SHELL_BYTES + 1)

    def members(self, manifest: str, selectors: Sequence[str] = ()) -> list[str]:
        """The workspace members of the project `manifest` (from here) belongs to, or
        those `selectors` name."""
        if self.members_of is None:
            return []
        members = self.members_of(self.manifest(manifest), selectors)
        if len(members) > _MAX_MEMBERS:
            raise TooManyScripts(
                f"the command runs in {len(members)} workspace members; dbguard follows "
                f"{_MAX_MEMBERS}",
                "run it in fewer members at a time (npm -w, pnpm --filter); each is guarded",
            )
        self.lookups_left += _LOOKUPS_PER_MEMBER * len(members)  # each runs its script
        return members

    def top(self, file: str) -> str | None:
        """The nearest folder at or above this one that holds `file`, or None."""
        return self.root_of(file, self.folder) if self.root_of is not None else None

    def move(self, target: str) -> None:
        """`cd target`: relative to the current folder, or absolute."""
        if target:
            self.folder = posixpath.normpath(posixpath.join(self.folder, target))

    @contextlib.contextmanager
    def moved(
        self, hints: dict[str, str] | None = None, *, to: str | None = None
    ) -> Iterator[None]:
        """Within: the folder a launcher's or package manager's option moved to (the
        hint is consumed: the operation gets every move joined, from _dispatch), or
        `to`, a script's manifest folder as the look-up found it (from the invocation's
        folder, or absolute)."""
        previous = self.folder
        if to is not None:
            self.folder = to
        else:
            self.move((hints or {}).pop(CWD_HINT, ""))
        try:
            yield
        finally:
            self.folder = previous


def _project_of_script(word: str, handlers: _Handlers) -> str:
    """Where a tool that finds its project from its own file runs, from here: `php
    backend/artisan` works on backend's Laravel app from any folder, as `php
    api/bin/console` on api's Symfony app. "" when the word names no folder."""
    folder = posixpath.dirname(word)
    for tool in handlers.tools:
        if folder and tool.project_from_script is not None:
            moved = posixpath.normpath(posixpath.join(folder, tool.project_from_script))
            return "" if moved == "." else moved
    return ""


def _most_dangerous(operations: Iterable[Operation | None]) -> Operation | None:
    """The most dangerous of `operations` (the first of equals), carrying the others that
    need a backup in `also`."""
    found = [operation for operation in operations if operation is not None]
    if not found:
        return None
    best = max(found, key=lambda operation: operation.kind.severity)
    seen = {best.identity}
    others: list[Operation] = []
    for operation in found:
        for each in operation.each():
            if each.kind.needs_backup and each.identity not in seen:
                seen.add(each.identity)  # a set: a script of 10,000 commands stays linear
                others.append(each)
    return replace(best, also=tuple(others))


def _in_member(operation: Operation | None) -> Operation | None:
    """`operation`, and the others of its command, as run in one of several members."""
    if operation is None:
        return None
    also = tuple(replace(other, member=True) for other in operation.also)
    return replace(operation, member=True, also=also)


def _anchor_env_files(hints: dict[str, str], folder: str) -> None:
    """A launcher's or package manager's dotenv files (`--env-file`) are named from
    where it runs, after its own move (`uv run --directory api --env-file .env` reads
    api/.env), not from where the command it starts moves on to (`dotenv -e .env.test
    -- npm --prefix api ...` reads ./.env.test)."""
    if CWD_HINT in hints:
        folder = posixpath.normpath(posixpath.join(folder, hints[CWD_HINT]))
    if folder and ENV_FILE_HINT in hints:
        hints[ENV_FILE_HINT] = "\n".join(
            posixpath.join(folder, name) for name in hints[ENV_FILE_HINT].splitlines()
        )


def _merge_context(
    operation: Operation | None, hints: Mapping[str, str], assignments: Mapping[str, str]
) -> Operation | None:
    """Hints and assignments from a wrapper, under what the inner program said itself."""
    if operation is None or not (hints or assignments):
        return operation
    return replace(
        operation,
        hints={**hints, **operation.hints},
        assignments={**assignments, **operation.assignments},
        also=tuple(_merge_context(o, hints, assignments) or o for o in operation.also),
    )


class Classifier:
    """Applies a catalog to argument lists."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._repeated = frozenset(catalog.repeated_hints)
        self._programs: dict[str, _Handlers] = {}
        self._named_scripts: dict[str, _Scripts] = {}
        for rule in _resolve_tools(catalog.tool):
            tool = _compile_tool(rule, catalog.help)
            for program in rule.launch:
                self._handlers(program).tools.append(tool)
        # The interpreters of a `#!` line that make a file run directly a shell file.
        self._shells = frozenset(
            program_name(program)
            for launcher in catalog.launcher
            if launcher.shell_files
            for program in launcher.programs
        )
        for launcher in catalog.launcher:
            compiled = _compile_launcher(launcher)
            for program in launcher.programs:
                self._handlers(program).launchers.append(compiled)
        for scripts in catalog.scripts:
            syntax = _Syntax(
                values=frozenset(
                    [
                        *scripts.value_options,
                        *scripts.member_selectors,
                        *scripts.member_filters,
                        *scripts.task_options,
                    ]
                ),
                words=frozenset(scripts.member_options),
            )
            compiled_scripts = _Scripts(
                scripts, syntax, frozenset(scripts.run), frozenset(scripts.builtins)
            )
            self._named_scripts.setdefault(scripts.name, compiled_scripts)
            for program in scripts.programs:
                self._handlers(program).scripts.append(compiled_scripts)

    def _handlers(self, program: str) -> _Handlers:
        return self._programs.setdefault(program_name(program), _Handlers())

    # ---- entry points ------------------------------------------------------------------------

    def classify(
        self,
        argv: Sequence[str],
        lookup: ScriptLookup | None = None,
        members: MemberLookup | None = None,
        roots: RootLookup | None = None,
        files: FileLookup | None = None,
    ) -> Operation | None:
        """The operation `argv` performs, or None when it is not a database tool.
        `lookup` finds package scripts, `members` a workspace's member folders, `roots`
        a workspace's top folder, `files` reads the shell files it runs."""
        return self._classify(argv, _Walk(lookup, members, roots, files), 0, None)

    def classify_command_line(
        self,
        line: str,
        lookup: ScriptLookup | None = None,
        members: MemberLookup | None = None,
        roots: RootLookup | None = None,
        files: FileLookup | None = None,
    ) -> Operation | None:
        """Classify a shell command line (a package script): the most dangerous part wins."""
        return self._line(line, _Walk(lookup, members, roots, files), 0, None)

    # ---- one command -----------------------------------------------------------------------

    def _classify(
        self,
        argv: Sequence[str],
        walk: _Walk,
        depth: int,
        within: _Scripts | None,
        *,
        executed: bool = True,
    ) -> Operation | None:
        """`executed`: argv[0] is a program the system runs, not a file an interpreter
        reads (`node scripts/reset`)."""
        if depth > _MAX_DEPTH:
            return None
        start = 0
        assignments: dict[str, str] = {}
        while start < len(argv) and _ASSIGNMENT.match(argv[start]):
            name, _, value = argv[start].partition("=")
            assignments[name] = value
            start += 1
        if start >= len(argv):
            return None
        word, args = argv[start], argv[start + 1 :]
        prefix = within.rule.reference_prefix if within is not None else None
        if within is not None and prefix and word.startswith(prefix):
            alias = within.rule.aliases.get(word)
            if alias is None:  # @other-script inside composer.json
                found = self._script(
                    within, "run", word[len(prefix) :], list(args), walk, depth, fallback=False
                )
                return _merge_context(found, {}, assignments)
            word = alias
        handlers = self._programs.get(program_name(word))
        if handlers is None:
            if "/" not in word or not executed:
                return None  # a program found on PATH (dbguard cannot tell which), or code
            # `./scripts/reset-db`: a file the shell executes, read when it is a shell file
            found = self._shell_file(word, walk, depth + 1, direct=True)
            return _merge_context(found, {}, assignments)
        with walk.moved({CWD_HINT: _project_of_script(word, handlers)}):
            found = self._dispatch(handlers, args, walk, depth)
        return _merge_context(found, {}, assignments)

    def _dispatch(
        self, handlers: _Handlers, args: Sequence[str], walk: _Walk, depth: int
    ) -> Operation | None:
        if handlers.tools:
            found = _most_dangerous(tool.match(args, self._repeated) for tool in handlers.tools)
            if found is not None and walk.folder:  # joined with the tool's own move
                moved = dict(found.hints)
                moved[CWD_HINT] = posixpath.normpath(
                    posixpath.join(walk.folder, moved.get(CWD_HINT, ""))
                )
                if ENV_FILE_HINT in moved:  # named from where the tool runs
                    moved[ENV_FILE_HINT] = "\n".join(
                        posixpath.join(walk.folder, name)
                        for name in moved[ENV_FILE_HINT].splitlines()
                    )
                found = replace(found, hints=moved)
            if found is not None:
                return found
        for launcher in handlers.launchers:
            applies, found = self._launch(launcher, args, walk, depth)
            # An unknown option may have taken the word it was read at: the subcommand
            # (`pipenv --python 3.12 run`) here; the program after it, in _launch.
            if found is None and launcher.subcommands:
                for guess in _guesses(launcher, args, launcher.subcommands.__contains__):
                    if not walk.may_guess():
                        break
                    _, operation = self._launch(guess, args, walk, depth)
                    if operation is not None:
                        return operation
            if applies:
                return found
        for scripts in handlers.scripts:
            looked_up = len(walk.found_scripts)
            found = self._scripts(scripts, args, walk, depth)
            # The scripts that reading found, in the folder it ran in (--prefix, -w):
            # a word naming one of them is that script, not a guessed value.
            ran = {*scripts.run, *scripts.builtins, *walk.found_scripts[looked_up:]}
            for runner in _guesses(scripts, args, ran.__contains__) if found is None else ():
                if not walk.may_guess():
                    break
                found = self._scripts(runner, args, walk, depth)
                if found is not None:
                    break
            return found
        return None

    # ---- launchers ---------------------------------------------------------------------------

    def _launch(
        self, launcher: _Launcher, args: Sequence[str], walk: _Walk, depth: int
    ) -> tuple[bool, Operation | None]:
        """(False, None) when its subcommand is not there (`npm run` is not `npm exec`),
        else (True, what it runs)."""
        rule = launcher.rule
        parsed = _parse(args, launcher.syntax, first_only=True)
        options = list(parsed.options)
        if launcher.subcommands:
            if not parsed.positionals or parsed.positionals[0][1] not in launcher.subcommands:
                return False, None
            args = args[parsed.end + 1 :]
            parsed = _parse(args, launcher.syntax, first_only=True)
            options += parsed.options
        hints = _Hints(self._repeated)
        hints.from_options(options, rule.targets)
        assignments: dict[str, str] = {}
        line_mode = rule.line
        for name, value in options:
            if name in launcher.no_run or name in launcher.code_options:
                return True, None
            if name in launcher.assignment_options and value and _ASSIGNMENT.match(value):
                key, _, item = value.partition("=")
                assignments[key] = item
            line_mode = line_mode or name in launcher.line_flags
        own = next((name for name, _ in options if name in launcher.kinds), None)
        rest = list(args[parsed.end :])
        # `npx --new-option VALUE tool ...`: an option this catalog does not know to take
        # a value, right before the program, may have taken it; then the program is the
        # word after. Only where the program is a command by name (npx, uv run, npm
        # exec): an interpreter's or a prefix's next word (python -u, time -p) is a file
        # or a command whose own arguments would then be misread as the program.
        maybe_value = (
            (rule.package_specs or bool(launcher.subcommands))
            and parsed.stopped_by is None
            and 0 < parsed.end < len(args)
            and args[parsed.end - 1] != "--"
            and bool(parsed.options)
            and parsed.options[-1][1] is None
            and not _SCRIPT_FILE.search(args[parsed.end])
        )
        if (
            rule.drops_separator
            and "--" in rest[1:]
            and not (parsed.end and args[parsed.end - 1] == "--")
        ):
            del rest[rest.index("--", 1)]  # `npm exec nx -- run-many`: npm's own `--`
        _anchor_env_files(hints.values, walk.folder)

        def run() -> Operation | None:
            if own is not None:  # `node --test`: the launcher's own test runner
                runner = Operation(rule.name, launcher.kinds[own], own)
                return replace(runner, hints={CWD_HINT: walk.folder}) if walk.folder else runner
            # Copies: each member's run starts from the same words (`env A=1 cmd` moves
            # A=1 from the words into the assignments).
            words, assigned = list(rest), dict(assignments)
            inner = self._launched(launcher, parsed, words, line_mode, assigned, walk, depth)
            guess = inner is None and maybe_value and not line_mode and len(rest) > 1
            if guess and walk.may_guess():
                words, assigned = list(rest[1:]), dict(assignments)
                inner = self._launched(launcher, parsed, words, line_mode, assigned, walk, depth)
            return _merge_context(inner, {}, assigned)

        found = self._fan_out(
            walk,
            rule.manifest,
            options,
            hints.values,
            every=rule.members or any(name in launcher.member_options for name, _ in options),
            selectors=launcher.member_selectors,
            filters=launcher.member_filters,
            targets=rule.targets,
            run=run,
            root=_root_file(options, rule.root_options, rule.root_file),
        )
        return True, _merge_context(found, hints.values, assignments)

    def _launched(
        self,
        launcher: _Launcher,
        parsed: _Parsed,
        rest: list[str],
        line_mode: bool,
        assignments: dict[str, str],
        walk: _Walk,
        depth: int,
    ) -> Operation | None:
        """What a launcher runs: a command line, or a program with its arguments."""
        rule = launcher.rule
        if parsed.stopped_by is not None:
            name, value = parsed.stopped_by
            if name in launcher.command_options:
                return self._line(value, walk, depth + 1, None)
            if name in launcher.script_runs:  # `node --run db:reset`
                scripts = self._named_scripts[launcher.script_runs[name]]
                return self._script(scripts, "run", value, rest, walk, depth)
            inner = [value, *rest]  # a module or script option names the program
        else:
            if rule.assignments:
                while rest and _ASSIGNMENT.match(rest[0]):
                    key, _, item = rest.pop(0).partition("=")
                    assignments[key] = item
            if not rest:
                return None
            if line_mode:
                return self._line(" ".join(rest), walk, depth + 1, None)
            inner = rest
        if rule.shell_files:  # `sh scripts/reset-db.sh`
            return self._shell_file(inner[0], walk, depth + 1, direct=False)
        if rule.package_specs:
            inner[0] = _package_bin(inner[0])
        interpreter = bool(rule.code_options or rule.script_options or rule.module_options)
        return self._classify(inner, walk, depth + 1, None, executed=not interpreter)

    # ---- package scripts -------------------------------------------------------------------

    def _scripts(
        self, scripts: _Scripts, args: Sequence[str], walk: _Walk, depth: int
    ) -> Operation | None:
        rule = scripts.rule
        parsed = _parse(args, scripts.syntax, first_only=True)
        if not parsed.positionals:
            return None
        # npm and composer take their own options anywhere before `--` (`npm run x
        # --prefix api`); the others only before the script's name, after `run` too.
        if not rule.forwards_options:
            options = _parse(args, scripts.syntax).options
        elif parsed.positionals[0][1] in scripts.run:
            inner = _parse(args[parsed.end + 1 :], scripts.syntax, first_only=True)
            options = [*parsed.options, *inner.options]
        else:
            options = parsed.options
        every = rule.members or any(name in rule.member_options for name, _ in options)
        selectors: list[str] = []  # members named by a word (`yarn workspace api`)
        hints = _Hints(self._repeated)
        hints.from_options(options, rule.targets)
        _anchor_env_files(hints.values, walk.folder)
        # `bun --env-file .env.test run reset`: the script runs with that file loaded.
        env_files = {k: v for k, v in hints.values.items() if k == ENV_FILE_HINT}
        if rule.multiple:
            found = self._run_tasks(scripts, args, options, every, hints.values, walk, depth)
            return _merge_context(found, env_files, {})
        word = self._member_word(scripts, parsed, args)
        if word is not None:
            how, rest = word
            if how == "named":  # `yarn workspace api reset`: member api
                named = _parse(args[rest:], scripts.syntax, first_only=True)
                if not named.positionals:
                    return None
                rest += named.end + 1
                selectors.append(named.positionals[0][1])
                hints.values[CWD_HINT] = posixpath.join(
                    hints.values.get(CWD_HINT, ""), named.positionals[0][1]
                )
            every = every or how == "every"  # `yarn workspaces foreach -A run reset`
            args = args[rest:]
            parsed = _parse(args, scripts.syntax, first_only=True)
            if not parsed.positionals:
                return None
        found = self._fan_out(
            walk,
            rule.manifest,
            options,
            hints.values,
            every=every,
            selectors=frozenset(rule.member_selectors),
            filters=frozenset(rule.member_filters),
            named=selectors,
            targets=rule.targets,
            run=lambda: self._run_scripts(scripts, parsed, args, walk, depth),
            root=_root_file(options, rule.root_options, rule.root_file),
        )
        return _merge_context(found, env_files, {})

    def _run_tasks(
        self,
        scripts: _Scripts,
        args: Sequence[str],
        options: list[tuple[str, str | None]],
        every: bool,
        moves: dict[str, str],
        walk: _Walk,
        depth: int,
    ) -> Operation | None:
        """A task runner (`multiple`: turbo, nx): each task it is asked for is the script
        (the look-up's task) of that name in each member it runs in, and with `tasks`,
        the tasks those depend on run too."""
        rule = scripts.rule
        if rule.lists:  # `nx run-many -p api,web`: each name filters on its own
            options = [
                (name, part)
                for name, value in options
                for part in (value.split(",") if value and name in rule.member_filters else [value])
            ]
        requests = self._task_requests(scripts, args, options)
        found: list[Operation | None] = []
        for request in requests:

            def run(request: _Tasks = request) -> Operation | None:
                # `--` keeps the forwarded words whole: options too go to the task.
                extra = ["--", *request.extra] if request.extra else []
                return _most_dangerous(
                    self._script(scripts, "run", name, extra, walk, depth) for name in request.names
                )

            found.append(
                self._fan_out(
                    walk,
                    rule.manifest,
                    options,
                    dict(moves),  # _fan_out consumes the move
                    every=every or request.every,
                    selectors=frozenset(rule.member_selectors),
                    filters=frozenset(rule.member_filters),
                    filter_words=request.projects,
                    targets=rule.targets,
                    run=run,
                    root=_root_file(options, rule.root_options, rule.root_file),
                )
            )
        if rule.tasks is not None:
            with walk.moved(dict(moves)):
                found += [
                    self._needed_tasks(scripts, rule.tasks, name, walk, depth)
                    for name in _unique(name for request in requests for name in request.names)
                ]
        return _most_dangerous(found)

    @staticmethod
    def _task_requests(
        scripts: _Scripts, args: Sequence[str], options: Sequence[tuple[str, str | None]]
    ) -> list[_Tasks]:
        """What a task runner is asked for: `turbo run a b` and `turbo a b` (every word a
        task); after an "every" member word, the tasks `task_options` name and the words
        that follow (`nx run-many -t test e2e`, `nx affected --targets=test`); with
        `project_words`, a task named with its project (`nx run api:test:ci`, `nx test
        api`), or without one, run in the project of the folder (`nx test`)."""
        rule = scripts.rule
        forwarded: tuple[str, ...] = ()
        if "--" in args:  # what follows goes to the tasks (`turbo run db -- reset`)
            cut = list(args).index("--")
            args, forwarded = args[:cut], tuple(args[cut + 1 :])
        words = [word for _, word in _parse(args, scripts.syntax).positionals]
        if not words:
            return []
        first, rest = words[0], words[1:]
        if rule.member_words.get(first) == "every":
            named = [
                task
                for name, value in options
                if name in rule.task_options and value
                for task in (value.split(",") if rule.lists else [value])
            ]
            return [_Tasks([*named, *rest], every=True, extra=forwarded)]
        if first in scripts.run:
            if not rule.project_words:
                return [_Tasks(rest, extra=forwarded)]
            if not rest:
                return []
            # Words after the project's task go to it (`nx run api:prisma migrate reset`).
            extra = (*rest[1:], *forwarded)
            # `nx run api`: api's target `run` when it has one, else the task api.
            return _project_task(rest[0], rule.task_aliases, extra) or [
                _Tasks(["run"], (rest[0],), extra=extra),
                _Tasks([rest[0]], extra=extra),
            ]
        if not rule.any_word or first in scripts.builtins:
            return []
        if not rule.project_words:
            return [_Tasks(words, extra=forwarded)]
        task = rule.task_aliases.get(first, first)
        if rest:  # `nx test api`
            return [_Tasks([task], (rest[0],), extra=(*rest[1:], *forwarded))]
        # `nx test` runs in the folder's project; `nx api:test` may also be api's test.
        return [
            _Tasks([task], extra=forwarded),
            *_project_task(first, rule.task_aliases, forwarded),
        ]

    def _needed_tasks(
        self, scripts: _Scripts, tasks: str, name: str, walk: _Walk, depth: int
    ) -> Operation | None:
        """What the tasks that task `name` depends on run: the look-up in `tasks`
        (turbo.json's dependsOn) gives them as a command line (`turbo run build migrate`)."""
        key = (walk.manifest(tasks), name)
        if key in walk.active or depth >= _MAX_DEPTH:
            return None
        needed = walk.script(tasks, name)
        if needed is None:
            return None
        walk.active.add(key)
        try:
            with walk.moved(to=needed.folder):
                found = self._line(needed.line, walk, depth + 1, None)
        finally:
            walk.active.discard(key)
        if found is None:
            return None
        program = scripts.rule.programs[0]
        return replace(found, via=(f"{program} {name} (dependsOn)", *found.via))

    def _fan_out(
        self,
        walk: _Walk,
        manifest: str | None,
        options: Sequence[tuple[str, str | None]],
        hints: dict[str, str],
        *,
        every: bool,
        selectors: frozenset[str],
        filters: frozenset[str],
        targets: Mapping[str, str],
        run: Callable[[], Operation | None],
        named: Sequence[str] = (),
        filter_words: Sequence[str] = (),
        root: str | None = None,
    ) -> Operation | None:
        """`run` where a package manager runs the command: from the workspace's top
        folder when `root` names the file that marks it (pnpm -w: the nearest folder
        holding pnpm-workspace.yaml, above where the moves in `hints` lead); in each
        workspace member the
        `selectors` options (or the `named` words) name (npm -w api -w packages: a
        package name, else a folder holding members, from where it runs), else in the
        folder `hints` moves to and, when `every`, in each member of its workspace too.
        `filters` (pnpm --filter) name members as selectors do, but only as a plain
        package name or folder: any other pattern, or one naming no member, means every
        member, so a filter dbguard cannot read never hides a database; `filter_words`
        are such values given as words (`nx test api`)."""
        if root is not None:
            with walk.moved(dict(hints)):  # pnpm -C web -w: the workspace above web
                top = walk.top(root)
            # None: no workspace, and the tool refuses to run (pnpm: "--workspace-root
            # may only be used inside a workspace"); the folder as written is kept.
            if top is not None:
                hints.pop(CWD_HINT, None)
                with walk.moved(to=top):
                    at_top = self._fan_out(
                        walk,
                        manifest,
                        options,
                        hints,
                        every=every,
                        selectors=selectors,
                        filters=filters,
                        targets=targets,
                        run=run,
                        named=named,
                        filter_words=filter_words,
                    )
                    if every or named or any(o in selectors | filters for o, _ in options):
                        # pnpm -w -r, pnpm -w --filter api: the top's own too.
                        at_top = _most_dangerous([at_top, run()])
                return at_top
        named = [*(value for name, value in options if name in selectors and value), *named]
        values = [*(value or "" for name, value in options if name in filters), *filter_words]
        filtered = [_plain_filter(value) for value in values]
        if None in filtered:
            every, named = True, []
        else:
            named += [value for value in filtered if value is not None]
        if named and manifest is not None:
            where = _Hints(self._repeated)
            moves = [option for option in options if option[0] not in selectors | filters]
            where.from_options(moves, targets)
            found: list[Operation | None] = []
            with walk.moved(where.values):
                for member in walk.members(manifest, named):
                    with walk.moved(to=member):
                        found.append(_in_member(run()))
            if found:
                return _most_dangerous(found)
            every = every or bool(filtered)
        with walk.moved(hints):  # none found: the move as written
            if not every or manifest is None:
                return run()
            # Every member, and the folder's own command too (pnpm -r, or a filter
            # dbguard cannot read), so no database the command could reach is left out.
            found = [_in_member(run())]
            for member in walk.members(manifest):
                with walk.moved(to=member):
                    found.append(_in_member(run()))
        return _most_dangerous(found)

    @staticmethod
    def _member_word(
        scripts: _Scripts, parsed: _Parsed, args: Sequence[str]
    ) -> tuple[str, int] | None:
        """(how, where the rest starts) when the words of a `member_words` key come first
        (`yarn workspaces foreach`), their own options between them."""
        for key, how in scripts.rule.member_words.items():
            first, *others = key.split()
            if parsed.positionals[0][1] != first:
                continue
            rest = parsed.end + 1
            for other in others:
                after = _parse(args[rest:], scripts.syntax, first_only=True)
                if not after.positionals or after.positionals[0][1] != other:
                    break
                rest += after.end + 1
            else:
                return how, rest
        return None

    def _run_scripts(
        self, scripts: _Scripts, parsed: _Parsed, args: Sequence[str], walk: _Walk, depth: int
    ) -> Operation | None:
        rule = scripts.rule
        word = parsed.positionals[0][1]
        after = list(args[parsed.end + 1 :])
        if word in scripts.run:
            inner = _parse(after, scripts.syntax, first_only=True)
            if not inner.positionals:
                return None  # `npm run` lists the scripts
            script = inner.positionals[0][1]
            after = after[inner.end + 1 :]
            return self._script(scripts, "run", script, after, walk, depth, fallback=rule.bins)
        direct = rule.direct.get(word)
        if isinstance(direct, list):
            lifecycle = [self._script(scripts, word, name, [], walk, depth) for name in direct]
            return _most_dangerous(lifecycle)
        if direct is not None:
            return self._script(scripts, word, direct, after, walk, depth)
        if rule.any_word and word not in scripts.builtins:
            return self._script(scripts, word, word, after, walk, depth, fallback=rule.bins)
        return None

    def _script(
        self,
        scripts: _Scripts,
        how: str,
        name: str,
        extra: list[str],
        walk: _Walk,
        depth: int,
        *,
        fallback: bool = False,
        pre_post: bool | None = None,
    ) -> Operation | None:
        """Run script `name` with `extra` arguments, as `how` (run, test, install...) does."""
        rule = scripts.rule
        if how in rule.direct and isinstance(rule.direct[how], list):
            pre_post = False  # lifecycle lists name every script themselves
        key = (walk.manifest(rule.manifest), name)
        if key in walk.active or depth >= _MAX_DEPTH:
            return None  # a script running itself never ends; npm would loop as well
        script = walk.script(rule.manifest, name)
        if script is None:
            # `yarn prisma migrate reset` runs the package binary when there is no script.
            return self._classify([name, *extra], walk, depth + 1, None) if fallback else None
        line = script.line
        if not rule.forwards_options:
            extra = [word for _, word in _parse(extra, scripts.syntax).positionals]
        if extra:
            line = f"{line} {shlex.join(extra)}"
        names = [name]
        if rule.pre_post if pre_post is None else pre_post:
            names = [f"pre{name}", name, f"post{name}"]
        run = f"{rule.programs[0]} {rule.run[0] if rule.run else 'run'}"  # deno task
        walk.active.add(key)
        try:
            found: list[Operation | None] = []
            for each in names:
                other = script if each == name else walk.script(rule.manifest, each)
                if other is None:
                    continue
                # The package manager runs a script in its manifest's folder (node
                # --run: in the folder it was started in).
                with walk.moved(to=None if rule.in_place else other.folder):
                    operation = self._line(
                        line if each == name else other.line, walk, depth + 1, scripts
                    )
                if operation is not None:
                    operation = replace(operation, via=(f"{run} {each}", *operation.via))
                found.append(operation)
        finally:
            walk.active.discard(key)
        return _most_dangerous(found)

    # ---- shell lines ------------------------------------------------------------------------

    def _line(
        self, line: str, walk: _Walk, depth: int, within: _Scripts | None
    ) -> Operation | None:
        tokens = _tokens(line)
        if tokens is None:
            return None  # an unbalanced quote: the shell refuses the line, nothing runs
        with walk.moved():  # a `cd` lasts to the end of the line
            return self._commands(tokens, walk, depth, within)

    def _commands(
        self, tokens: list[str], walk: _Walk, depth: int, within: _Scripts | None
    ) -> Operation | None:
        """The commands of a tokenised line; a `cd` among them moves `walk`."""
        found: list[Operation | None] = []
        current: list[str] = []
        skip = False
        subshells: list[str] = []
        for token in [*tokens, ";"]:
            if skip:
                skip = False
                continue
            characters = set(token)
            if token and characters & _REDIRECTS and characters <= _REDIRECTS | _SEPARATORS:
                skip = True  # `> file`, `2>&1`: the next word is where output goes
                if current and current[-1].isdigit():
                    current.pop()  # the 2 of 2>&1 is a file descriptor, not an argument
                continue
            if token and characters <= _SEPARATORS:
                _drop_reserved(current)
                if current and current[0] == "cd":
                    walk.move(current[1] if len(current) == 2 and current[1] != "-" else "")
                elif current:
                    found.append(self._classify(current, walk, depth, within))
                current = []
                # `(cd api && x); y`: a subshell's cd ends with it
                for char in token:
                    if char == "(":
                        subshells.append(walk.folder)
                    elif char == ")" and subshells:
                        walk.folder = subshells.pop()
            else:
                current.append(token)
        return _most_dangerous(found)

    # ---- shell files ------------------------------------------------------------------------

    def _shell_file(self, word: str, walk: _Walk, depth: int, *, direct: bool) -> Operation | None:
        """What the shell file `word` runs: read as a shell reads it (`sh FILE`), or,
        `direct`ly executed (`./FILE`), when its `#!` line names a shell or it has none.
        A program (node, python, a binary) is not read: dbguard runs no project code."""
        if walk.files is None:
            return None
        if _OUTSIDE_THE_PROJECT.match(word):
            return None  # `. "$NVM_DIR/nvm.sh"`, `source ~/.bashrc`: set-up, as a program on PATH
        if any(char in word for char in "$`~*?[{"):
            return _unread(word, "its path is only known when the shell runs", walk)
        key = ("", posixpath.normpath(walk.manifest(word)))  # "": no manifest is a file
        if key in walk.active:
            return None  # a file running itself runs the same commands again
        if depth >= _MAX_DEPTH:
            return _unread(word, "shell files nested deeper than dbguard follows", walk)
        try:
            data = walk.file(word)
        except OSError as err:
            return _unread(word, f"it cannot be read: {err.strerror or err}", walk)
        if data is None or b"\0" in data:
            return None  # not there, or a program: the shell runs nothing of it
        if len(data) > _MAX_SHELL_BYTES:
            return _unread(word, f"it is larger than {_MAX_SHELL_BYTES} bytes", walk)
        text = data.decode("utf-8", "replace")
        if direct and not self._runs_in_shell(word, text):
            return None
        lines, documents = _shell_script(text, self._shells)
        walk.active.add(key)
        try:
            found: list[Operation | None] = []
            with walk.moved():  # a `cd` lasts to the end of the file
                tokens = _tokens(" ;\n".join(lines))
                if tokens is not None:
                    found.append(self._commands(tokens, walk, depth + 1, None))
                else:  # a quote left open: what comes before it still runs
                    for each in map(_tokens, lines):
                        if each is not None:
                            found.append(self._commands(each, walk, depth + 1, None))
            # A here-document's lines: commands when a shell reads them (`bash <<EOF`).
            found += [self._line(line, walk, depth + 1, None) for line in documents]
        finally:
            walk.active.discard(key)
        operation = _most_dangerous(found)
        if operation is None:
            return None
        return replace(operation, via=(word, *operation.via))

    def _runs_in_shell(self, word: str, text: str) -> bool:
        """Whether a file run directly is a shell file: its `#!` line names a shell, or
        it has none (the shell then runs it itself) and its name is no program's."""
        if not text.startswith("#!"):
            return not _CODE_FILE.search(word)
        words = text[2:].partition("\n")[0].split()
        if words and program_name(words[0]) == "env":  # #!/usr/bin/env -S bash -e
            words = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return bool(words) and program_name(words[0]) in self._shells


def _tokens(line: str) -> list[str] | None:
    """A command line's words and operators; None when a quote is left open."""
    if _SHELL_SYNTAX.isdisjoint(line):
        return line.split()  # the common `php artisan test`: shlex costs 10x more
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        return list(lexer)
    except ValueError:
        return None


# Words that open or close a compound command: what follows `then` is the command.
_RESERVED = frozenset({"if", "then", "else", "elif", "fi", "do", "done", "while", "until"})
_RESERVED_SIGNS = frozenset({"!", "{", "}", "esac"})


def _drop_reserved(words: list[str]) -> None:
    """`then prisma migrate reset` -> `prisma migrate reset`; `function f {` -> []."""
    while words:
        if words[0] in _RESERVED or words[0] in _RESERVED_SIGNS:
            del words[0]
        elif words[0] == "function":
            del words[:2]
        else:
            return


# A shell file's pieces: quoted text (a quote left open runs to the end), a continued
# line, an escaped character, a comment (a `#` that starts a word), a here-document's
# start, a backquote, a newline, and runs of anything else.
_PIECE = re.compile(
    r"""(?P<quoted>'[^']*'?|"(?:[^"\\]|\\.)*"?)"""
    r"|(?P<continued>\\\n)"
    r"|(?P<escaped>\\.)"
    r"|(?P<comment>(?<![^\s;&|()<>])#[^\n]*)"
    r"""|(?P<document>(?<!<)<<(?!<)(?P<tabs>-?)[ \t]*"""
    r"""(?:'(?P<d1>[^'\n]*)'|"(?P<d2>[^"\n]*)"|\\?(?P<d3>\w+)))"""
    r"|(?P<backquote>`)"
    r"|(?P<newline>\n)"
    r"""|[^'"\\#`<\n]+|.""",
    re.DOTALL,
)


def _shell_script(text: str, shells: frozenset[str]) -> tuple[list[str], list[str]]:
    """A shell file as command lines (comments dropped, continued lines joined, a
    backquoted command on its own) and the lines of the here-documents a shell reads
    (`bash <<EOF`; a `cat <<EOF` usage text is no command)."""
    lines: list[str] = []
    documents: list[str] = []
    current: list[str] = []
    pending: list[tuple[str, bool, bool]] = []  # here-documents that start after this line
    index = 0
    while index < len(text):
        match = _PIECE.match(text, index)
        assert match is not None  # `.` matches any character
        index = match.end()
        if match["continued"] is not None or match["comment"] is not None:
            continue
        if match["document"] is not None:
            delimiter = match["d1"] or match["d2"] or match["d3"] or ""
            read_by_shell = program_name(_last_program("".join(current))) in shells
            pending.append((delimiter, bool(match["tabs"]), read_by_shell))
            current.append(" << _ ")  # the redirection, without its word
        elif match["backquote"] is not None:
            current.append(" ; ")  # `cmd` runs cmd
        elif match["newline"] is not None:
            lines.append("".join(current))
            current = []
            for delimiter, tabs, read_by_shell in pending:
                while index < len(text):
                    end = text.find("\n", index)
                    end = len(text) if end < 0 else end
                    body, index = text[index:end], end + 1
                    if (body.lstrip("\t") if tabs else body) == delimiter:
                        break
                    if read_by_shell:
                        documents.append(body)
            pending = []
        else:
            current.append(match.group())
    lines.append("".join(current))
    return lines, documents


# A path under the home folder or a tool's own folder: the environment's set-up, not
# the project's (nvm, sdkman, a ~/.bashrc), read no more than a program on PATH is.
_OUTSIDE_THE_PROJECT = re.compile(
    r"(?:~|\$\{?(?:HOME|NVM_DIR|SDKMAN_DIR|PYENV_ROOT|RBENV_ROOT|CARGO_HOME|XDG_[A-Z_]+)\}?)(?:/|$)"
)


def _last_program(text: str) -> str:
    """The program of the last command in `text` (`VAR=1 bash -s` -> `bash`)."""
    last = re.split(r"[;&|()]", text)[-1].split()
    words = [word for word in last if not _ASSIGNMENT.match(word)]
    return words[0] if words else ""


def _unread(word: str, why: str, walk: _Walk) -> Operation:
    """A shell file dbguard cannot read: it may run anything (see Operation.unread)."""
    operation = Operation("shell file", Kind.DESTRUCTIVE, f"{word} ({why})", unread=True)
    return replace(operation, hints={CWD_HINT: walk.folder}) if walk.folder else operation


class _Tasks(NamedTuple):
    """Tasks a task runner is asked for, and where: the words naming the members (read
    as a member filter's values, `nx test api`), or every member; neither, the folder's."""

    names: list[str]
    projects: tuple[str, ...] = ()
    every: bool = False
    extra: tuple[str, ...] = ()  # words that go to each task's command


def _project_task(
    spec: str, aliases: Mapping[str, str], extra: tuple[str, ...] = ()
) -> list[_Tasks]:
    """`api:db:migrate:ci` (nx) -> in the project api, the task `db:migrate:ci`,
    `db:migrate` or `db`: nx takes the longest that is one of api's targets and the rest
    as its configuration, and which is a target only the look-up knows, so each is asked
    for (a name that is no target runs nothing). [] when `spec` names no project."""
    project, _, task = spec.partition(":")
    if not project or not task:
        return []
    parts = task.split(":")
    names = [":".join(parts[:count]) for count in range(len(parts), 0, -1)]
    return [_Tasks([aliases.get(name, name) for name in names], (project,), extra=extra)]


def _root_file(
    options: Sequence[tuple[str, str | None]], root_options: Sequence[str], file: str | None
) -> str | None:
    """The file marking the workspace's top when an option runs the command there."""
    return file if any(name in root_options for name, _ in options) else None


def _plain_filter(value: str) -> str | None:
    """A pnpm/turbo filter that names one package or folder, as a member selector:
    `api`, `@shop/api`, `./apps/api`, `{apps/api}` (a folder: `./apps/api`); None for a
    pattern (`@shop/*`, `api...`, `...^api`, `!api`, `[main]`, `./apps/**`)."""
    if value.startswith("{") and value.endswith("}"):
        inner = value[1:-1]
        value = inner if inner.startswith((".", "/")) else f"./{inner}"  # never a name
    if not value or "..." in value or any(char in value for char in "*?[]{}!^,"):
        return None
    return value


def _package_bin(spec: str) -> str:
    """`prisma@5.1` -> `prisma`, `@scope/tool@2` -> `tool`, deno's `npm:prisma@5` ->
    `prisma`."""
    name = spec.removeprefix("npm:").rsplit("/", 1)[-1]
    return name.split("@", 1)[0] or name

"""`.env` files, parsed with python-dotenv's parser but resolved against the invoking
environment, never the daemon's own (dotenv's high-level API reads os.environ)."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping

from dotenv.parser import Binding, parse_stream
from dotenv.variables import parse_variables

from dbguard.errors import DbguardError

_SINGLE_QUOTED = re.compile(r"^\s*(?:export\s+)?[^=]+=\s*'")


class DiscoveryError(DbguardError):
    """The databases a command would touch cannot be determined; the command is denied."""


def _line(binding: Binding) -> int:
    """The line of the binding itself: dotenv counts from the blank lines before it."""
    text = binding.original.string
    return binding.original.line + text[: len(text) - len(text.lstrip())].count("\n")


def parse_env_file(text: str, name: str, env: Mapping[str, str]) -> dict[str, str]:
    """Variables defined by a .env file. `${VAR}` expands from earlier lines and `env`.

    A line dotenv cannot parse is an error naming the file and line: a framework might
    read it differently, so guessing could mean backing up the wrong database.
    """
    return {key: value for key, (value, _) in parse_env_entries(text, name, env).items()}


def parse_env_entries(text: str, name: str, env: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """Like parse_env_file, with the line each variable was (last) defined on."""
    values: dict[str, tuple[str, int]] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.string.rstrip("\n")
            raise DiscoveryError(
                f"{name}, line {_line(binding)}: cannot parse {line[:80]!r}",
                "fix the line (KEY=value), so dbguard can tell which database it names",
            )
        if binding.key is None:
            continue
        value = binding.value or ""
        if "\0" in value:  # a damaged file: no database, path or host has one
            raise DiscoveryError(
                f"{name}, line {_line(binding)}: {binding.key} contains a NUL byte",
                "fix the line (the file may be damaged)",
            )
        if not _SINGLE_QUOTED.match(binding.original.string):
            scope = {**{k: v for k, (v, _) in values.items()}, **env}
            value = "".join(atom.resolve(scope) for atom in parse_variables(value))
        values[binding.key] = (value, _line(binding))
    return values

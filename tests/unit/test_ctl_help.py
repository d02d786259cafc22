"""`dbguardctl --help`: one summary per command, read from the modules' docstrings
without importing them."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest

from dbguard.ctl import main as ctl


def _summaries(module: str) -> list[str]:
    """The first paragraph of the imported module's docstring, line by line."""
    doc = inspect.getdoc(importlib.import_module(f"dbguard.ctl.{module}")) or ""
    return doc.split("\n\n")[0].splitlines()


def _commands_of(module: str) -> list[str]:
    return [name for name, served in ctl.SUBCOMMANDS.items() if served == module]


@pytest.mark.parametrize("module", sorted(set(ctl.SUBCOMMANDS.values())))
def test_a_module_opens_with_one_summary_line_per_command_it_serves(module: str) -> None:
    commands = _commands_of(module)
    lines = _summaries(module)
    assert len(lines) == len(commands), (module, lines)
    if len(commands) > 1:  # the order matters: each line names its own command
        for command, line in zip(commands, lines, strict=True):
            assert re.search(rf"\b{command}\b", line, re.IGNORECASE), (command, line)


@pytest.mark.parametrize("command", list(ctl.SUBCOMMANDS))
def test_the_summary_read_from_the_source_is_the_imported_docstrings(command: str) -> None:
    module = ctl.SUBCOMMANDS[command]
    assert ctl.summary(command) == _summaries(module)[_commands_of(module).index(command)]


def test_no_two_commands_share_a_summary() -> None:
    summaries = [ctl.summary(command) for command in ctl.SUBCOMMANDS]
    assert len(set(summaries)) == len(summaries)


def _help(*argv: str) -> tuple[str, list[str]]:
    """The help output of dbguardctl in a fresh interpreter, and the modules it loaded."""
    code = (
        "import sys\n"
        "from dbguard.ctl.main import main\n"
        "try:\n"
        f"    main({list(argv)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES', *sorted(sys.modules))\n"
    )
    wide = os.environ | {"COLUMNS": "500"}  # no summary wrapped (or split at a hyphen)
    done = subprocess.run(
        [sys.executable, "-c", code], env=wide, capture_output=True, text=True, check=True
    )
    text, _, modules = done.stdout.rpartition("MODULES ")
    return text, modules.split()


@pytest.mark.parametrize("argv", [["--help"], ["-h", "unpin"]])
def test_help_lists_every_command_with_its_own_summary_and_imports_none(
    argv: list[str],
) -> None:
    text, modules = _help(*argv)
    listed = [line.split(maxsplit=1) for line in text.splitlines() if line.startswith("    ")]
    assert listed == [[command, ctl.summary(command)] for command in ctl.SUBCOMMANDS]
    loaded = {f"dbguard.ctl.{module}" for module in ctl.SUBCOMMANDS.values()} & set(modules)
    assert loaded == set()
    assert "pydantic" not in modules


def test_a_commands_own_help_describes_it_in_full() -> None:
    text, modules = _help("unpin", "--help")
    assert "usage: dbguardctl unpin" in text
    assert "A pinned backup is never pruned" in text
    assert "dbguard.ctl.pin" in modules and "dbguard.ctl.status" not in modules


@pytest.mark.parametrize("module", sorted(set(ctl.SUBCOMMANDS.values())))
def test_a_commands_help_names_files_not_python_modules(module: str) -> None:
    # `dbguardctl mark --help` once said the marks were kept in "dbguard.marks", the
    # module's name, which tells a user nothing; the systemd units' names are files.
    doc = inspect.getdoc(importlib.import_module(f"dbguard.ctl.{module}")) or ""
    assert re.findall(r"\bdbguard\.(?!socket\b|service\b)[a-z_]+", doc) == []

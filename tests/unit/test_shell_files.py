"""Shell files a package script runs (`sh scripts/reset-db.sh`) are read and classified.

Inside a package script, npm, pnpm, yarn, bun and composer put the project's own
binaries (node_modules/.bin, vendor/bin) ahead of the shims: the `prisma` a shell file
runs from there is never guarded on its own. So what the file runs is classified with
the script, before the package manager starts it.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dbguard.discovery import NO_DATABASE, discover
from dbguard.rules import (
    Classifier,
    Kind,
    Operation,
    Script,
    TooManyScripts,
    builtin_catalog,
)

CLASSIFIER = Classifier(builtin_catalog())
RESET = "prisma migrate reset --force\n"


@dataclass
class Project:
    """package.json's scripts and the project's files, from the invocation's folder."""

    scripts: dict[str, str]
    files: dict[str, bytes | str]
    read: list[str] = field(default_factory=list)
    folder: str = ""  # where the look-up found package.json

    def script(self, manifest: str, name: str) -> Script | None:
        line = self.scripts.get(name) if manifest == "package.json" else None
        return Script(line, self.folder) if line is not None else None

    def file(self, path: str, limit: int) -> bytes | None:
        self.read.append(path)
        data = self.files.get(posixpath.normpath(path))
        if data is None:
            return None
        raw = data.encode() if isinstance(data, str) else data
        return raw[: limit + 1]


def run(line: str, files: dict[str, bytes | str], **scripts: str) -> Operation | None:
    project = Project({"it": line, **scripts}, files)
    return CLASSIFIER.classify(["npm", "run", "it"], project.script, files=project.file)


@pytest.mark.parametrize(
    "line",
    [
        "sh scripts/reset-db.sh",
        "bash scripts/reset-db.sh",
        "bash -e scripts/reset-db.sh --yes",
        "dash ./scripts/reset-db.sh",
        "zsh scripts/reset-db.sh",
        "source scripts/reset-db.sh",
        ". scripts/reset-db.sh",
        "echo resetting && sh scripts/reset-db.sh",
        "cd scripts && sh reset-db.sh",
    ],
)
def test_a_shell_file_a_script_runs_is_classified_by_its_commands(line: str) -> None:
    found = run(line, {"scripts/reset-db.sh": RESET})
    assert found is not None, line
    assert (found.tool, found.kind, found.command) == ("prisma", Kind.DESTRUCTIVE, "migrate reset")
    assert found.via[0] == "npm run it"
    assert found.via[1].endswith("reset-db.sh")


@pytest.mark.parametrize(
    ("text", "followed"),
    [
        ("#!/bin/sh\n" + RESET, True),
        ("#!/usr/bin/env bash\nset -euo pipefail\n" + RESET, True),
        ("#!/bin/bash -e\n" + RESET, True),
        (RESET, True),  # no #! line: the shell runs it itself
        ("#!/usr/bin/env node\nrequire('child_process').execSync('prisma migrate reset')", False),
        ("#!/usr/bin/python3\nprint('prisma migrate reset')\n", False),
        (b"\x7fELF\x02\x01\x01\x00prisma migrate reset\x00", False),  # a program
    ],
)
def test_a_file_the_script_executes_is_followed_when_it_is_a_shell_script(
    text: str | bytes, followed: bool
) -> None:
    for line in ("./scripts/reset-db", "scripts/reset-db --force"):
        found = run(line, {"scripts/reset-db": text})
        assert (found is not None and found.kind is Kind.DESTRUCTIVE) is followed, line


@pytest.mark.parametrize(
    "text",
    [
        'set -e\n\n# wipe it\nif [ -n "$CI" ]; then\n  prisma migrate reset --force\nfi\n',
        "for db in a b; do\n  echo $db\ndone\nwhile true; do prisma migrate reset --force; done",
        "reset() {\n  prisma migrate reset --force\n}\nreset\n",
        "function reset {\n  prisma migrate reset --force\n}\n",
        "prisma migrate \\\n  reset --force\n",
        "! prisma migrate reset --force || true\n",
        "case $1 in\n  reset) prisma migrate reset --force ;;\nesac\n",
        "out=`prisma migrate reset --force`\n",
        # a quote the shell never reaches does not hide what runs before it
        "prisma migrate reset --force\necho 'unbalanced\n",
        # a here-document's text (an apostrophe) is no quote; sh reads its lines
        "cat <<EOF\nit's done\nEOF\nprisma migrate reset --force\n",
        "bash <<'EOF'\nprisma migrate reset --force\nEOF\n",
        'eval "prisma migrate reset --force"\n',
    ],
    ids=lambda text: text.splitlines()[0][:40],
)
def test_shell_syntax_in_a_file_does_not_hide_its_commands(text: str) -> None:
    found = run("bash scripts/reset.sh", {"scripts/reset.sh": text})
    assert found is not None and found.kind is Kind.DESTRUCTIVE, found


@pytest.mark.parametrize(
    "text",
    [
        "#!/bin/sh\nset -e\ntsc -p . && vite build\n",
        "# prisma migrate reset --force\necho 'prisma migrate reset --force'\n",
        "cat <<EOF\nrun prisma migrate reset yourself\nEOF\n",
        # a usage text: cat prints it, no shell reads it
        "cat <<EOF\nTo start over:\n  npx prisma migrate reset --force\nEOF\n",
        # the environment's set-up, outside the project: read no more than PATH's programs
        '. "$NVM_DIR/nvm.sh"\nsource ~/.bashrc\n. "${HOME}/.mavenrc"\nvite build\n',
        "",
    ],
    ids=lambda text: text.splitlines()[0][:40] if text else "empty",
)
def test_a_shell_file_that_runs_no_database_command_passes(text: str) -> None:
    assert run("sh scripts/build.sh", {"scripts/build.sh": text}) is None


def test_commands_in_a_file_run_where_the_script_runs_and_follow_its_cd() -> None:
    project = Project(
        {"db:reset": "sh scripts/reset.sh"},
        {"web/scripts/reset.sh": "cd api\nprisma migrate reset --force\n"},
        folder="web",
    )
    found = CLASSIFIER.classify(["npm", "run", "db:reset"], project.script, files=project.file)
    assert project.read == ["web/scripts/reset.sh"]
    assert found is not None and found.hints.get("cwd") == "web/api"


def test_shell_files_run_by_shell_files_are_followed() -> None:
    files: dict[str, bytes | str] = {
        "scripts/a.sh": "echo a\nbash scripts/b.sh\n",
        "scripts/b.sh": "./scripts/c.sh\n",
        "scripts/c.sh": RESET,
    }
    found = run("sh scripts/a.sh", files)
    assert found is not None and found.kind is Kind.DESTRUCTIVE
    assert found.via[1:] == ("scripts/a.sh", "scripts/b.sh", "./scripts/c.sh")


def test_a_file_that_runs_itself_stops() -> None:
    project = Project({"it": "sh loop.sh"}, {"loop.sh": "sh loop.sh\n. ./loop.sh\n"})
    assert CLASSIFIER.classify(["npm", "run", "it"], project.script, files=project.file) is None
    assert len(project.read) < 5


def test_shell_files_count_against_the_look_ups_a_command_may_make() -> None:
    files: dict[str, bytes | str] = {
        f"s{i}.sh": "".join(f"sh s{i + 1}.sh\n" for _ in range(8)) for i in range(8)
    }
    with pytest.raises(TooManyScripts, match="shell files"):
        run("sh s0.sh", files)


@pytest.mark.parametrize(
    ("line", "files", "why"),
    [
        ('sh "$ROOT/scripts/reset.sh"', {}, "$ROOT/scripts/reset.sh"),
        ('bash "scripts/$STAGE.sh"', {}, "scripts/$STAGE.sh"),
        ("sh big.sh", {"big.sh": "echo hi\n" * 20000}, "big.sh"),
        ("sh a.sh", {"a.sh": '. "$(dirname "$0")/lib.sh"\n'}, "lib.sh"),
    ],
)
def test_a_shell_file_dbguard_cannot_read_may_touch_any_database(
    line: str, files: dict[str, bytes | str], why: str
) -> None:
    found = run(line, files)
    assert found is not None and found.kind is Kind.DESTRUCTIVE, found
    assert found.unread and why in found.command, found
    assert found.framework is None  # every framework the project has


def test_a_missing_file_runs_nothing_and_scripts_without_files_are_unchanged() -> None:
    assert run("sh scripts/missing.sh", {}) is None
    assert run("./scripts/missing", {}) is None
    project = Project({"it": "sh scripts/reset-db.sh"}, {"scripts/reset-db.sh": RESET})
    # Without a file look-up (a caller that reads no files), nothing is read.
    assert CLASSIFIER.classify(["npm", "run", "it"], project.script) is None


def test_a_file_is_read_only_where_a_shell_runs_it() -> None:
    files: dict[str, bytes | str] = {"reset.sh": RESET, "scripts/reset.js": RESET}
    for line in ("node scripts/reset.js", "cat reset.sh", "echo sh reset.sh", "reset.sh"):
        project = Project({"it": line}, files)
        found = CLASSIFIER.classify(["npm", "run", "it"], project.script, files=project.file)
        assert found is None and project.read == [], line


def test_an_unread_file_in_a_project_with_no_database_needs_no_backup() -> None:
    operation = run('sh "$X/reset.sh"', {})
    assert operation is not None and operation.unread
    front_end = {"package.json": '{"dependencies": {"vite": "5"}}'}
    found = discover(Path("/srv/app"), front_end.get, {}, operation)
    assert found.targets == [] and found.notes[-1] == f"/srv/app: {NO_DATABASE}"
    prisma = {
        "prisma/schema.prisma": 'datasource db {\n provider = "sqlite"\n url = "file:./dev.db"\n}\n'
    }
    found = discover(Path("/srv/app"), prisma.get, {}, operation)
    assert [t.path for t in found.targets] == ["/srv/app/prisma/dev.db"]


def test_a_command_line_reads_shell_files_too() -> None:
    project = Project({}, {"reset.sh": RESET})
    found = CLASSIFIER.classify(shlex.split("npx -c 'sh reset.sh'"), files=project.file)
    assert found is not None and found.kind is Kind.DESTRUCTIVE

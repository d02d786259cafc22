"""callers() on real processes: each test starts a chain of them and asks from inside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dbguard.callers import callers

# Prints the processes above itself as [[pid, [names...]], ...]. `; true` keeps the shell
# that runs it from exec-ing it, so the shell stays in the chain.
PROBE = (
    f"{sys.executable} -c 'import json, os; from dbguard.callers import callers; "
    "print(json.dumps([[c.pid, list(c.names)] for c in callers(os.getpid())]))'; true"
)


def chain_under(argv: list[str]) -> list[tuple[int, list[str]]]:
    """What the probe sees when `argv` runs it (through `sh -c`)."""
    done = subprocess.run([*argv, PROBE], capture_output=True, text=True, check=True)
    return [(pid, names) for pid, names in json.loads(done.stdout)]


def runner(folder: Path, name: str) -> Path:
    """A Python program named `name` that runs its argument in a shell."""
    path = folder / name
    path.write_text(
        f"#!{sys.executable}\nimport subprocess, sys\n"
        "sys.exit(subprocess.run(['sh', '-c', sys.argv[1]]).returncode)\n"
    )
    path.chmod(0o755)
    return path


def test_the_chain_names_each_program_up_to_this_process(tmp_path: Path) -> None:
    chain = chain_under([str(runner(tmp_path, "claude"))])
    shell, agent, this = chain[0], chain[1], chain[2]
    assert shell[1][0] in ("sh", "dash", "bash"), chain
    assert agent[1][0] == "claude", chain  # a script's process is named after the script
    assert this[0] == os.getpid(), chain


def test_an_interpreter_is_named_with_the_script_it_runs(tmp_path: Path) -> None:
    script = runner(tmp_path, "codex.js")  # as `node .../codex.js`
    [agent] = [names for _, names in chain_under([sys.executable, "-u", str(script)])[1:2]]
    assert agent[-1] == "codex" and "codex.js" not in agent, agent


def test_a_name_with_parentheses_and_spaces_keeps_the_chain_whole(tmp_path: Path) -> None:
    chain = chain_under([str(runner(tmp_path, "my) agent (1"))])
    assert chain[1][1][0] == "my) agent (1", chain
    assert chain[2][0] == os.getpid(), chain  # its parent was read past the name


def test_no_proc_means_no_callers(tmp_path: Path) -> None:
    assert callers(os.getpid(), proc=tmp_path) == []


def fake_proc(root: Path, processes: dict[int, tuple[int, str, list[str]]]) -> Path:
    """A /proc holding `processes`: pid -> (parent pid, comm, argv)."""
    for pid, (parent, comm, argv) in processes.items():
        folder = root / str(pid)
        folder.mkdir(parents=True)
        (folder / "stat").write_text(f"{pid} ({comm}) S {parent} {pid} {pid} 0 -1\n")
        (folder / "comm").write_text(f"{comm}\n")
        (folder / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return root


def test_a_container_whose_first_process_is_the_agent_names_it(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            9: (5, "php", ["php", "artisan", "migrate:fresh"]),
            5: (1, "bash", ["/bin/bash", "-c", "php artisan migrate:fresh"]),
            1: (0, "node", ["node", "/usr/local/bin/codex", "--full-auto"]),
        },
    )
    assert [(c.pid, c.names) for c in callers(9, proc)] == [
        (5, ("bash",)),
        (1, ("node", "codex")),
    ]

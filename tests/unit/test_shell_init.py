"""`dbguardctl shell-init` in real shells: after a virtualenv's activate script puts its
bin folder first, the next prompt puts the shims back in front, so `pytest` is the shim.

Interactive shells read the commands from a pipe (`-i`), so their prompt hooks run
between lines exactly as at a terminal. zsh and fish run when installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dbguard import shims
from dbguard.ctl.shell_init import snippet

RUNNER = "import sys; from dbguard.ctl.main import main; sys.exit(main(sys.argv[1:]))"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class Setup:
    def __init__(self, root: Path, shims_name: str = "shims") -> None:
        self.root = root
        self.shims = root / shims_name
        shims.install(self.shims, ["pytest"])
        self.venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], check=True)
        own = self.venv / "bin" / "pytest"
        own.write_text(f"#!{self.venv / 'bin' / 'python'}\nprint('unguarded')\n")
        own.chmod(0o755)
        # `dbguardctl` as the profile line calls it, on PATH like an installed one.
        self.bin = root / "bin"
        self.bin.mkdir()
        ctl = self.bin / "dbguardctl"
        ctl.write_text(f'#!/bin/sh\nexec {sys.executable} -c "$DBGUARD_TEST_RUNNER" "$@"\n')
        ctl.chmod(0o755)

    def run(self, shell: list[str], script: str) -> dict[str, str]:
        """Feed `script` to an interactive shell; collect the `KEY=value` lines it echoes."""
        result = subprocess.run(
            shell,
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": f"{self.bin}:{BASE_PATH}",
                "HOME": str(self.root),
                "TERM": "dumb",
                "DBGUARD_TEST_RUNNER": RUNNER,
            },
            cwd=self.root,
            check=False,
        )
        seen = dict(
            line.split("=", 1)
            for line in result.stdout.splitlines()
            if line.split("=", 1)[0].isupper() and "=" in line
        )
        assert "END" in seen, result.stdout + result.stderr
        return seen

    @property
    def init(self) -> str:
        return f"--dir '{self.shims}'"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


BASH = ["bash", "--norc", "--noprofile", "-i"]


def test_bash_puts_the_shims_back_in_front_after_activate(setup: Setup) -> None:
    seen = setup.run(
        BASH,
        f"""
eval "$(dbguardctl shell-init bash {setup.init})"
echo "FIRST=$(command -v pytest)"
source {setup.venv}/bin/activate; echo "SAME_LINE=$(command -v pytest)"
echo "NEXT_PROMPT=$(command -v pytest)"
echo "PATH=$PATH"
echo END=
""",
    )

    assert seen["FIRST"] == str(setup.shims / "pytest")
    # Before a prompt the venv wins: what the hook is for (and proof this test can fail).
    assert seen["SAME_LINE"] == str(setup.venv / "bin" / "pytest")
    assert seen["NEXT_PROMPT"] == str(setup.shims / "pytest")
    assert seen["PATH"] == f"{setup.shims}:{setup.venv / 'bin'}:{setup.bin}:{BASE_PATH}"


def test_bash_keeps_other_prompt_hooks_and_never_grows_path(setup: Setup) -> None:
    seen = setup.run(
        BASH,
        f"""
PROMPT_COMMAND='HOOK_RUNS=$((HOOK_RUNS+1))'
eval "$(dbguardctl shell-init bash {setup.init})"
eval "$(dbguardctl shell-init bash {setup.init})"
PATH="/x:{setup.shims}:/y:{setup.shims}:$PATH"
PATH="/z:$PATH"
echo "PATH=$PATH"
echo "HOOKS=$(declare -p PROMPT_COMMAND)"
echo "RUNS=$HOOK_RUNS"
echo END=
""",
    )

    assert seen["PATH"] == f"{setup.shims}:/z:/x:/y:{setup.bin}:{BASE_PATH}"
    assert seen["HOOKS"].count("__dbguard_first") == 1
    assert int(seen["RUNS"]) >= 5  # the existing hook still runs at every prompt


def test_bash_handles_a_folder_with_spaces_and_quotes(tmp_path: Path) -> None:
    odd = Setup(tmp_path, "it's my shims")

    seen = odd.run(
        BASH,
        f"""
eval "$(dbguardctl shell-init bash --dir "{odd.shims}")"
source {odd.venv}/bin/activate
echo "NEXT_PROMPT=$(command -v pytest)"
echo END=
""",
    )

    assert seen["NEXT_PROMPT"] == str(odd.shims / "pytest")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_puts_the_shims_back_in_front_after_activate(setup: Setup) -> None:
    seen = setup.run(
        ["zsh", "-f", "-i"],
        f"""
precmd_functions=(other_hook)
other_hook() {{ OTHER=$((OTHER+1)) }}
eval "$(dbguardctl shell-init zsh {setup.init})"
eval "$(dbguardctl shell-init zsh {setup.init})"
source {setup.venv}/bin/activate; echo "SAME_LINE=$(command -v pytest)"
echo "NEXT_PROMPT=$(command -v pytest)"
echo "PATH=$PATH"
echo "HOOKS=$precmd_functions"
echo END=
""",
    )

    assert seen["SAME_LINE"] == str(setup.venv / "bin" / "pytest")
    assert seen["NEXT_PROMPT"] == str(setup.shims / "pytest")
    assert seen["PATH"] == f"{setup.shims}:{setup.venv / 'bin'}:{setup.bin}:{BASE_PATH}"
    assert seen["HOOKS"] == "other_hook __dbguard_first"  # appended once, after the others


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_puts_the_shims_back_in_front_after_activate(setup: Setup) -> None:
    seen = setup.run(
        ["fish", "--no-config", "-i"],
        f"""
dbguardctl shell-init fish {setup.init} | source
set -gx PATH /z {setup.shims} $PATH {setup.shims}
source {setup.venv}/bin/activate.fish; echo "SAME_LINE="(command -v pytest)
echo "PATH="(string join : $PATH)
echo END=
""",
    )

    # fish also reacts to the change of PATH itself, so even the same line is guarded.
    assert seen["SAME_LINE"] == str(setup.shims / "pytest")
    assert seen["PATH"] == f"{setup.shims}:{setup.venv / 'bin'}:/z:{setup.bin}:{BASE_PATH}"


def test_the_snippet_quotes_the_folder_for_each_shell() -> None:
    folder = Path("/home/o'neil/sh ims")

    assert "__dbguard_shims='/home/o'\\''neil/sh ims'" in snippet("bash", folder)
    assert "typeset -g __dbguard_shims='/home/o'\\''neil/sh ims'" in snippet("zsh", folder)
    assert "set -g __dbguard_shims '/home/o\\'neil/sh ims'" in snippet("fish", folder)


def test_an_unknown_shell_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, "shell-init", "tcsh"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 2
    assert "invalid choice: 'tcsh'" in result.stderr


def _quiet(setup: Setup, shell: list[str], script: str, env: dict[str, str]) -> str:
    """Run `script` in a non-interactive shell; return all it wrote (stdout and stderr)."""
    result = subprocess.run(
        [*shell, script],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": f"{setup.bin}:{BASE_PATH}",
            "HOME": str(setup.root),
            "DBGUARD_TEST_RUNNER": RUNNER,
            **env,
        },
        cwd=setup.root,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_bash_without_a_prompt_only_sets_path(setup: Setup) -> None:
    # As BASH_ENV, or the top of ~/.bashrc under sshd: no prompt hook to add, and an
    # exported PROMPT_COMMAND must still reach the shells this one starts.
    init = setup.root / "init.bash"
    init.write_text(snippet("bash", setup.shims))
    output = _quiet(
        setup,
        ["bash", "-eu", "-o", "pipefail", "-c"],
        'echo "PATH=$PATH"; bash -c \'echo "CHILD_PC=$PROMPT_COMMAND"\'; echo END=',
        {"BASH_ENV": str(init), "PROMPT_COMMAND": "echo mine"},
    )

    # Sourced twice (this shell, then its child): nothing printed, PATH not grown.
    assert output.splitlines() == [
        f"PATH={setup.shims}:{setup.bin}:{BASE_PATH}",
        "CHILD_PC=echo mine",
        "END=",
    ]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_from_zshenv_puts_the_shims_first_without_a_prompt(setup: Setup) -> None:
    (setup.root / ".zshenv").write_text(f'eval "$(dbguardctl shell-init zsh {setup.init})"\n')
    output = _quiet(setup, ["zsh", "-c"], 'echo "PATH=$PATH"; zsh -c \'echo "CHILD=$PATH"\'', {})

    assert output.splitlines() == [
        f"PATH={setup.shims}:{setup.bin}:{BASE_PATH}",
        f"CHILD={setup.shims}:{setup.bin}:{BASE_PATH}",
    ]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_without_a_prompt_also_guards_activate_on_the_same_line(setup: Setup) -> None:
    config = setup.root / ".config" / "fish" / "config.fish"
    config.parent.mkdir(parents=True)
    config.write_text(f"dbguardctl shell-init fish {setup.init} | source\n")
    output = _quiet(
        setup,
        ["fish", "-c"],
        f"source {setup.venv}/bin/activate.fish; echo PYTEST=(command -v pytest)",
        {},
    )

    assert output.splitlines() == [f"PYTEST={setup.shims / 'pytest'}"]

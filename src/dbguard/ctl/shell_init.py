"""Print shell code that keeps the shims first on PATH, even after a venv or nvm.

Usage: dbguardctl shell-init bash|zsh|fish [--dir DIR]

Add one line to your shell's startup file:

    bash (~/.bashrc)                    eval "$(dbguardctl shell-init bash)"
    zsh  (~/.zshrc)                     eval "$(dbguardctl shell-init zsh)"
    fish (~/.config/fish/config.fish)   dbguardctl shell-init fish | source

Shells with no prompt (`bash -c`, `bash -lc`, `ssh host cmd`, an agent's) read other
files, or none: bash reads ~/.bashrc under sshd, where Debian's returns early unless
interactive, so the line goes at its top, and login shells read ~/.profile
(`[ -n "$BASH_VERSION" ] && eval ...` at its end: sh reads it too); every zsh reads
~/.zshenv; every fish reads config.fish, outside `if status is-interactive`. There the
code only puts the shims first (fish also on every change of PATH) and prints nothing.

A virtualenv's activate script, nvm, direnv and the like put their own folder in front
of PATH, and a `pytest` found there first would run unguarded. The code this prints
moves the shims folder back to the front before every prompt (bash: PROMPT_COMMAND,
zsh: precmd, fish: the fish_prompt event and any change of PATH), removing duplicates
so PATH never grows. It runs after the other prompt hooks, so it also wins over hooks
that change PATH themselves (direnv). Each prompt costs a string comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from dbguard import paths

if TYPE_CHECKING:  # it runs at every shell start: import only what it uses
    from dbguard.ctl.context import Context

SHELLS = ("bash", "zsh", "fish")

HEADER = """\
# dbguard: keep {shims} first on PATH, even after a virtualenv, nvm or direnv
# puts its own folder in front. Printed by `dbguardctl shell-init {shell}`.
"""

BASH = """\
__dbguard_shims={quoted}
__dbguard_first() {{
  case ":$PATH:" in
    ":$__dbguard_shims:"*":$__dbguard_shims:"*) ;;  # first, but also further on
    ":$__dbguard_shims:"*) return ;;                # first and only once: nothing to do
  esac
  local rest=":$PATH:"
  while [[ $rest == *":$__dbguard_shims:"* ]]; do
    rest=${{rest//":$__dbguard_shims:"/:}}
  done
  rest=${{rest#:}}
  rest=${{rest%:}}
  PATH=$__dbguard_shims${{rest:+:$rest}}
}}
# Last among the prompt hooks, so it runs after those that change PATH (direnv puts
# itself first). bash 5.1 runs every element of a PROMPT_COMMAND array, and a new
# element survives tools that rewrite ${{PROMPT_COMMAND}}, which is element 0 only.
# A shell with no prompt (BASH_ENV, `ssh host cmd`) only needs PATH: an array would
# stop an exported PROMPT_COMMAND from reaching the shells it starts.
if [[ $- == *i* && ";${{PROMPT_COMMAND[*]:-}};" != *__dbguard_first* ]]; then
  if (( BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1) )); then
    PROMPT_COMMAND+=(__dbguard_first)
  else
    PROMPT_COMMAND="${{PROMPT_COMMAND:+$PROMPT_COMMAND$'\\n'}}__dbguard_first"
  fi
fi
__dbguard_first
"""

ZSH = """\
typeset -g __dbguard_shims={quoted}
__dbguard_first() {{
  # (Ie): the index of the last exact match, so 1 means first and only once.
  if [[ $path[1] != "$__dbguard_shims" || ${{path[(Ie)$__dbguard_shims]}} -ne 1 ]]; then
    path=("$__dbguard_shims" "${{(@)path:#$__dbguard_shims}}")
  fi
}}
# add-zsh-hook appends, so this runs after hooks that change PATH (direnv puts itself
# first); it never adds the same hook twice.
autoload -Uz add-zsh-hook
add-zsh-hook precmd __dbguard_first
__dbguard_first
"""

FISH = """\
set -g __dbguard_shims {quoted}
# On the prompt, and at once when PATH changes, so even
# `source venv/bin/activate.fish; pytest` on one line is guarded.
function __dbguard_first --on-event fish_prompt --on-variable PATH
    set -l rest
    for dir in $PATH
        test "$dir" = "$__dbguard_shims"; or set -a rest $dir
    end
    # Setting PATH runs this again; it then finds nothing to do, which ends it.
    if test "$PATH[1]" != "$__dbguard_shims"; or test (count $PATH) -ne (math (count $rest) + 1)
        set -gx PATH $__dbguard_shims $rest
    end
end
__dbguard_first
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS, help="the shell that evaluates the output")
    parser.add_argument(
        "--dir", type=Path, help="shims folder (default: ~/.local/share/dbguard/shims)"
    )


def run(args: argparse.Namespace, ctx: Context) -> int:
    folder: Path = (args.dir or paths.default_shims_dir(ctx.env)).expanduser().absolute()
    ctx.out.write(snippet(args.shell, folder))
    return 0


def snippet(shell: str, folder: Path) -> str:
    """The code for `shell` that keeps `folder` first on PATH."""
    body = {"bash": BASH, "zsh": ZSH, "fish": FISH}[shell]
    quoted = _fish_quote(str(folder)) if shell == "fish" else _sh_quote(str(folder))
    header = HEADER.format(shims=str(folder).replace("\n", "?"), shell=shell)
    return header + body.format(quoted=quoted)


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _fish_quote(text: str) -> str:
    # Inside fish's single quotes only \\ and \' are escapes.
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

"""Check everything about this setup that can be wrong, and say how to fix each problem.

Usage: dbguardctl doctor [--json] [--dir DIR]

Checks: the config file; that every guarded command resolves to its shim on PATH (and
which binary wins instead, such as a virtualenv's pytest); that the shell keeps the
shims first, also in shells with no prompt started from a PATH without them (`bash
-lc`, `ssh host cmd`, `zsh -c`, `fish -c`, as an AI agent or sshd starts them); that
dbguardd answers; the socket's and its folder's owner and mode; the dump tools for
PostgreSQL and MySQL/MariaDB and their versions; that the backup folder is writable and
has room; and, in the current project, the paths that run a database tool without
passing through a shim (./vendor/bin/..., node_modules/.bin/..., `python -m pytest`,
bin/rails).

Exit status: 0 when nothing failed (warnings allowed), 1 when something did.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from dbguard import __version__, paths, script_shell, shims
from dbguard.client import autostart
from dbguard.client.talk import DaemonNotAnswering, DaemonUnavailable, request
from dbguard.config import Config, ConfigError, config_path, load_config
from dbguard.ctl.context import Context, counted, current_folder, human_size
from dbguard.ctl.install import (
    UNITS,
    ctl_command,
    daemon_argv,
    is_our_unit,
    lingering,
    systemctl,
    systemd_unavailable,
    unit_dir,
)
from dbguard.discovery.project import find_root
from dbguard.errors import BackupFailed
from dbguard.protocol import PROTOCOL_VERSION, Status, StatusQuery
from dbguard.store import check_private_folder

Level = Literal["ok", "warn", "fail"]

MIN_FREE_BYTES = 1 << 30  # below this a backup of any real database is likely to fail
WARN_FREE_BYTES = 5 << 30
TOOL_TIMEOUT = 10.0  # seconds for `pg_dump --version` and the like
# The oldest releases still maintained upstream; older dump tools miss options and
# cannot dump newer servers.
MIN_PG_DUMP = 13
MIN_MARIADB = (10, 5)
MIN_MYSQL = (8, 0)
PROBE_TIMEOUT = 5.0  # seconds for the user's own shell to start and answer
# What sshd, cron and a fresh agent start from: no shims, no startup file run yet.
PROBE_PATH = "/usr/local/bin:/usr/bin:/bin"
PROFILES = {
    "bash": "~/.bashrc",
    "zsh": "~/.zshrc",
    "fish": "~/.config/fish/config.fish",
}
# Where the line goes so that shells with no prompt run it too.
PLACEMENT = {
    "bash": "at the top of ~/.bashrc (above any line that returns when the shell is not "
    "interactive)",
    "zsh": "to ~/.zshenv (every zsh reads it; ~/.zshrc only interactive ones)",
    "fish": "to ~/.config/fish/config.fish, outside `if status is-interactive`",
}


@dataclass
class Finding:
    check: str  # what was checked: "config", "shim pytest", "daemon", "pg_dump", ...
    level: Level
    message: str
    fix: str = ""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--dir", type=Path, help="shims folder (default: ~/.local/share/dbguard/shims)"
    )


def run(args: argparse.Namespace, ctx: Context) -> int:
    folder: Path = (args.dir or paths.default_shims_dir(ctx.env)).expanduser().absolute()
    findings, config = check_config(ctx)
    socket = config.socket_path(ctx.env)
    findings += check_shims(ctx.env, folder, list(config.shims.commands))
    findings += check_shell_hook(ctx.env, folder)
    findings += check_shells_without_prompt(ctx.env, folder, list(config.shims.commands))
    findings += check_units(ctx.env)
    findings += check_daemon(ctx.env, socket, folder)
    findings += check_socket(socket)
    findings += check_dump_tools(ctx.env)
    findings += check_backup_dir(config.backup_path(ctx.env))
    findings += check_project(current_folder(), ctx.env, folder)
    failed = any(f.level == "fail" for f in findings)
    if args.json:
        ctx.print_json({"ok": not failed, "findings": [asdict(f) for f in findings]})
    else:
        ctx.print(report(findings))
    return 1 if failed else 0


def report(findings: list[Finding]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for f in findings:
        lines.append(f"{marks[f.level]}  {f.check}: {f.message}")
        if f.fix and f.level != "ok":
            lines += [f"        fix: {line}" for line in f.fix.splitlines()]
    failures = sum(f.level == "fail" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    if failures:
        lines.append(f"{counted(failures, 'problem')} to fix, {counted(warnings, 'warning')}")
    else:
        lines.append("all good" + (f", {counted(warnings, 'warning')}" if warnings else ""))
    return "\n".join(lines)


# ---- config -------------------------------------------------------------------------


def check_config(ctx: Context) -> tuple[list[Finding], Config]:
    path = config_path(ctx.env, ctx.config_file)
    try:
        config = load_config(ctx.env, ctx.config_file)
    except ConfigError as err:
        # Go on with the defaults, so one bad key does not hide every other problem.
        return [
            Finding(
                "config",
                "fail",
                str(err),
                f"edit {path}; until then dbguardd will not start with it, and a running "
                "dbguardd keeps its previous config when reloaded",
            )
        ], Config()
    where = str(path) if path.exists() else f"{path} does not exist; using the defaults"
    return [Finding("config", "ok", where)], config


# ---- PATH ---------------------------------------------------------------------------


def _shell(env: dict[str, str]) -> str:
    name = Path(env.get("SHELL", "")).name
    return name if name in PROFILES else "bash"


def _path_fix(env: dict[str, str], folder: Path) -> str:
    shell = _shell(env)
    # By its full path: the venv dbguard lives in is usually not on PATH.
    dir_option = [] if folder == paths.default_shims_dir(env) else ["--dir", str(folder)]
    command = shlex.join([*ctl_command(), "shell-init", shell, *dir_option])
    line = f"{command} | source" if shell == "fish" else f'eval "$({command})"'
    return f"add {PLACEMENT[shell]}: {line}\nthen open a new shell (or run that line now)"


def _is_venv_bin(path: Path) -> bool:
    return (path.parent.parent / "pyvenv.cfg").is_file()


def check_shims(env: dict[str, str], folder: Path, commands: list[str]) -> list[Finding]:
    if not folder.is_dir():
        return [
            Finding(
                "shims",
                "fail",
                f"the shims folder {folder} does not exist: no command is guarded",
                "dbguardctl install",
            )
        ]
    path_env = env.get("PATH", "")
    entries = [e for e in path_env.split(os.pathsep) if e]
    on_path = [Path(e).resolve() == folder.resolve() for e in entries]
    findings: list[Finding] = []
    if not any(on_path):
        findings.append(
            Finding(
                "shims",
                "fail",
                f"{folder} is not on PATH: no command is guarded",
                _path_fix(env, folder),
            )
        )
    elif not on_path[0]:
        findings.append(
            Finding(
                "shims",
                "warn",
                f"{folder} is on PATH but not first ({entries[0]} comes before it)",
                _path_fix(env, folder),
            )
        )
    states = {s.name: s for s in shims.state(folder, path_env)}
    for name in commands:
        state = states.get(name)
        check = f"shim {name}"
        if state is None:
            findings.append(
                Finding(check, "fail", f"no shim for {name} in {folder}", "dbguardctl install")
            )
            continue
        missing = _stale_paths(state.path)
        if missing:
            findings.append(
                Finding(
                    check,
                    "fail",
                    f"the shim runs {missing[0]}, which no longer exists (moved or "
                    "reinstalled Python or dbguard?)",
                    "dbguardctl install (rewrites the shims for this installation)",
                )
            )
        elif not any(on_path):
            continue  # already reported once for the folder
        elif not state.wins:
            winner = state.resolves_to or "(nothing)"
            why = (
                " (a virtualenv's folder is in front of the shims)"
                if state.resolves_to and _is_venv_bin(Path(state.resolves_to))
                else ""
            )
            findings.append(
                Finding(
                    check,
                    "fail",
                    f"`{name}` runs {winner} unguarded: it comes before the shim on PATH{why}",
                    _path_fix(env, folder),
                )
            )
        elif state.real is None:
            findings.append(Finding(check, "ok", f"guarded ({name} itself is not installed)"))
        else:
            findings.append(Finding(check, "ok", f"guarded; runs {state.real}"))
    if states and script_shell.wrapper_in(folder) is None:
        findings.append(
            Finding(
                "script shell",
                "warn",
                f"no {script_shell.WRAPPER_NAME} in {folder} (shims from an older dbguard): "
                "a program a package script starts reaches node_modules/.bin unguarded",
                "dbguardctl install (rewrites the shims for this installation)",
            )
        )
    return findings


def _stale_paths(shim: Path) -> list[str]:
    """Paths the shim needs that are gone: its interpreter (on the #! line, or after
    `exec` in a sh shim) and the client's folder (in the bootstrap's sys.path)."""
    try:
        text = shim.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return [str(shim)]
    lines = text.splitlines()
    interpreter = lines[0][2:].split()[:1] if lines and lines[0].startswith("#!") else []
    exec_line = next((line for line in lines if line.startswith("exec ")), "")
    if exec_line:
        try:
            interpreter = shlex.split(exec_line.split("exec ", 1)[1])[:1]
        except ValueError:
            interpreter = []
    client = []
    for literal in re.findall(
        r"sys\.path\[:0\] = \[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]", text
    ):
        with contextlib.suppress(ValueError, SyntaxError):
            client.append(str(ast.literal_eval(literal)))  # the shim's own Python literal
    return [p for p in interpreter + client if p.startswith("/") and not os.path.exists(p)]


def check_shell_hook(env: dict[str, str], folder: Path) -> list[Finding]:
    """Whether the login shell's startup file runs `dbguardctl shell-init` (without it,
    activating a virtualenv puts its pytest before the shim)."""
    shell = Path(env.get("SHELL", "")).name
    if shell not in PROFILES:
        return []
    home = Path(env.get("HOME") or Path.home())
    profile = home / PROFILES[shell].removeprefix("~/")
    candidates = {
        "bash": [profile, home / ".bash_profile", home / ".profile"],
        "zsh": [profile, home / ".zshenv"],
    }.get(shell, [profile])
    if shell == "fish":
        candidates += sorted((home / ".config/fish/conf.d").glob("*.fish"))
    for candidate in candidates:
        try:
            if "shell-init" in candidate.read_text(encoding="utf-8", errors="replace"):
                return [Finding("shell", "ok", f"{candidate} runs `dbguardctl shell-init`")]
        except OSError:
            continue
    return [
        Finding(
            "shell",
            "warn",
            f"{PROFILES[shell]} does not run `dbguardctl shell-init`: activating a "
            "virtualenv (or nvm, direnv) will put its folder before the shims",
            _path_fix(env, folder),
        )
    ]


@dataclass(frozen=True)
class _Probe:
    """A kind of shell with no prompt, how to start one, and how to fix it."""

    label: str
    flags: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    fix: str


def _probes(shell: str, init: str) -> list[_Probe]:
    line = f"{init} | source" if shell == "fish" else f'eval "$({init})"'
    if shell == "bash":
        return [
            _Probe(
                "`bash -lc` (a login shell: some AI agents, `ssh -t`)",
                ("-lc",),
                (),
                f'add at the end of ~/.profile: [ -n "$BASH_VERSION" ] && {line}',
            ),
            _Probe(
                "`ssh host cmd` (bash -c, which reads ~/.bashrc under sshd)",
                ("-c",),
                # bash's own test for "started by sshd"
                (("SSH_CLIENT", "127.0.0.1 0 0"),),
                f"put {line} at the top of ~/.bashrc, above any line that returns when "
                "the shell is not interactive",
            ),
        ]
    if shell == "zsh":
        fix = f"put {line} in ~/.zshenv, which every zsh reads (~/.zshrc only interactive ones)"
        # A login zsh reads /etc/zprofile and ~/.zprofile after ~/.zshenv, and a PATH
        # they set (macOS's path_helper, `brew shellenv`, pyenv) comes before the shims.
        login = f"{fix}; and at the end of ~/.zprofile, when it or /etc/zprofile sets PATH"
        return [_Probe("`zsh -c`", ("-c",), (), fix), _Probe("`zsh -lc`", ("-lc",), (), login)]
    return [
        _Probe(
            "`fish -c`",
            ("-c",),
            (),
            f"put {line} in ~/.config/fish/config.fish outside `if status is-interactive`",
        )
    ]


def check_shells_without_prompt(
    env: dict[str, str], folder: Path, commands: list[str]
) -> list[Finding]:
    """Start the user's shell as sshd, a CI step or an AI agent does (no prompt, PATH
    without the shims) and ask it which file a guarded command runs: its startup files
    must put the shims first, since no prompt hook ever runs there."""
    program = env.get("SHELL", "")
    shell = Path(program).name
    if shell not in PROFILES or not os.path.isabs(program) or not os.access(program, os.X_OK):
        return []
    name = next((c for c in commands if (folder / c).is_file()), None)
    if name is None:
        return []  # no shims: check_shims says so
    dir_option = [] if folder == paths.default_shims_dir(env) else ["--dir", str(folder)]
    init = shlex.join([*ctl_command(), "shell-init", shell, *dir_option])
    lookup = f"(command -v {name})" if shell == "fish" else f'"$(command -v {name})"'
    script = f"printf '\\n__dbguard_probe=%s\\n' {lookup}"
    base = {"PATH": PROBE_PATH, "SHELL": program}
    base.update({k: env[k] for k in ("HOME", "USER", "LOGNAME") if env.get(k)})
    findings: list[Finding] = []
    started = []
    for probe in _probes(shell, init):
        try:
            process = subprocess.Popen(
                [program, *probe.flags, script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**base, **dict(probe.env)},
                start_new_session=True,  # so a timeout ends what its startup files started
            )
        except OSError as err:
            findings.append(_no_answer(probe, f"cannot start {program}: {err.strerror}"))
            continue
        started.append((probe, process))
    shim = os.path.realpath(folder / name)
    deadline = time.monotonic() + PROBE_TIMEOUT  # the probes run side by side
    for probe, process in started:
        try:
            out, _ = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            why = f"no answer within {PROBE_TIMEOUT:.0f} s (startup files waiting for input?)"
            findings.append(_no_answer(probe, why))
            continue
        text = out.decode("utf-8", "replace")
        answers = [line for line in text.splitlines() if line.startswith("__dbguard_probe=")]
        found = answers[-1].split("=", 1)[1] if answers else ""
        if found and os.path.realpath(found) == shim:
            continue
        runs = (
            f"runs {found}, not the shim"
            if found
            else f"finds no {name}: the shims are not on its PATH"
        )
        findings.append(
            Finding(
                "shells without a prompt",
                "warn",
                f"{probe.label} {runs}; commands run there are not guarded",
                probe.fix,
            )
        )
    if not findings:
        labels = [probe.label.split(" (")[0] for probe, _ in started]
        verb = "find" if len(labels) > 1 else "finds"
        message = f"{' and '.join(labels)} {verb} the shims first"
        findings.append(Finding("shells without a prompt", "ok", message))
    return findings


def _no_answer(probe: _Probe, why: str) -> Finding:
    return Finding(
        "shells without a prompt",
        "warn",
        f"{probe.label}: {why}; cannot tell whether it finds the shims",
    )


# ---- daemon and socket --------------------------------------------------------------


def check_daemon(env: dict[str, str], socket: Path, folder: Path) -> list[Finding]:
    try:
        reply = request(socket, StatusQuery(type="status", v=PROTOCOL_VERSION), timeout=5)
    except DaemonNotAnswering as err:
        return [
            Finding(
                "daemon",
                "fail",
                f"something listens on {socket} but does not answer like dbguardd ({err.problem})",
                (
                    "restart it: systemctl --user restart dbguard.service"
                    if autostart.systemd_units(env)
                    else "stop that process, then start dbguardd: "
                    f"`{shlex.join(daemon_argv(None))} &`"
                ),
            )
        ]
    except DaemonUnavailable as err:
        return [_daemon_down(env, socket, folder, err.problem)]
    if not isinstance(reply, Status):
        return [Finding("daemon", "fail", f"unexpected reply to a status query: {reply.type}")]
    found = [
        Finding(
            "daemon",
            "ok",
            f"dbguardd {reply.version} running (pid {reply.pid}, up "
            f"{reply.uptime_seconds:.0f} s) on {reply.socket}",
        )
    ]
    if reply.version != __version__:
        found.append(
            Finding(
                "daemon version",
                "warn",
                f"dbguardd is {reply.version}, this dbguardctl is {__version__}",
                "restart the daemon so both are the same release",
            )
        )
    return found


def check_units(env: dict[str, str]) -> list[Finding]:
    """The user units `dbguardctl install` wrote: still pointing at an existing dbguardd,
    and enabled where systemd runs."""
    folder = unit_dir(env)
    ours = [folder / name for name in UNITS if is_our_unit(folder / name)]
    why_not = systemd_unavailable()
    if not ours:
        message = "no dbguard units installed" + (f" ({why_not})" if why_not else "")
        return [Finding("systemd", "ok", message)]
    findings = []
    service = folder / "dbguard.service"
    program = _exec_start(service) if service in ours else None
    if program is not None and not (program and os.access(program, os.X_OK)):
        findings.append(
            Finding(
                "systemd",
                "fail",
                f"{service} runs {program or '(nothing)'}, which does not exist any more",
                "dbguardctl install (writes the units for this installation)",
            )
        )
    if why_not is not None:
        findings.append(Finding("systemd", "ok", f"units in {folder}, not in use here ({why_not})"))
        return findings
    enabled = systemctl("is-enabled", "dbguard.socket").stdout.strip()
    if enabled != "enabled":
        findings.append(
            Finding(
                "systemd",
                "fail",
                f"dbguard.socket is {enabled or 'unknown'}, so dbguardd does not start at login",
                "systemctl --user enable --now dbguard.socket",
            )
        )
    elif not findings:
        findings.append(Finding("systemd", "ok", "dbguard.socket is enabled"))
    user = env.get("USER") or env.get("LOGNAME") or ""
    if not lingering(user):
        findings.append(
            Finding(
                "linger",
                "warn",
                "dbguardd stops when your last session ends (cron jobs and CI runners then "
                "find it down)",
                f"loginctl enable-linger {user or '$USER'}",
            )
        )
    return findings


def _exec_start(service: Path) -> str:
    """The program of the unit's ExecStart= line ("" when there is none)."""
    for line in service.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("ExecStart="):
            try:
                words = shlex.split(line.split("=", 1)[1])
            except ValueError:
                return ""
            return words[0] if words else ""
    return ""


def _daemon_down(env: dict[str, str], socket: Path, folder: Path, problem: str) -> Finding:
    settings = autostart.read_settings(str(folder))
    if settings is not None and env.get("DBGUARD_AUTOSTART") != "0":
        return Finding(
            "daemon",
            "warn",
            f"dbguardd is not running; the shims start it on first use ({shlex.join(settings[0])})",
            f"to start it now: {shlex.join(settings[0])} (its log goes to "
            f"{paths.state_dir(env) / 'dbguardd.log'} when a shim starts it)",
        )
    units = [name for name in UNITS if (unit_dir(env) / name).exists()]
    if units and systemd_unavailable() is None:
        fix = (
            "systemctl --user start dbguard.socket (and `systemctl --user status "
            "dbguard.service` / `journalctl --user -u dbguard` to see why it stopped)"
        )
    else:
        fix = (
            f"start it now with `{shlex.join(daemon_argv(None))} &`, or run `dbguardctl "
            "install` so it starts by itself (systemd socket activation, or autostart by "
            "the shims)"
        )
    return Finding(
        "daemon",
        "fail",
        f"{problem}: guarded commands refuse to run (exit 69) until it is started",
        fix,
    )


def check_socket(socket: Path) -> list[Finding]:
    findings = []
    uid = os.getuid()
    for path, kind, mode in ((socket.parent, "folder", 0o700), (socket, "socket", 0o600)):
        try:
            info = path.lstat()
        except FileNotFoundError:
            if kind == "folder":
                findings.append(Finding("socket", "ok", f"{path} does not exist yet"))
                return findings
            continue
        except OSError as err:
            findings.append(Finding("socket", "fail", f"cannot inspect {path}: {err.strerror}"))
            continue
        expected = stat.S_ISDIR if kind == "folder" else stat.S_ISSOCK
        if not expected(info.st_mode):
            findings.append(
                Finding(
                    "socket",
                    "fail",
                    f"{path} is not a {kind} (or is a symlink)",
                    f"remove {path}; dbguardd recreates it",
                )
            )
        elif info.st_uid != uid:
            findings.append(
                Finding(
                    "socket",
                    "fail",
                    f"{path} belongs to uid {info.st_uid}, not you ({uid})",
                    "remove it (as its owner), or set `socket` in config.toml to a path "
                    "in a folder of your own",
                )
            )
        elif info.st_mode & 0o077:
            findings.append(
                Finding(
                    "socket",
                    "fail",
                    f"{path} is mode {stat.S_IMODE(info.st_mode):04o}: other users can reach it",
                    f"chmod {mode:o} {shlex.quote(str(path))}",
                )
            )
        else:
            findings.append(
                Finding("socket", "ok", f"{path}: {kind} owned by you, mode {mode:04o}")
            )
    return findings


# ---- dump tools ---------------------------------------------------------------------


def _version(argv: list[str]) -> str | None:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (
        (result.stdout or result.stderr).strip().splitlines()[0] if result.returncode == 0 else None
    )


def _which_all(name: str, env: dict[str, str]) -> list[str]:
    found: list[str] = []
    for entry in env.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(entry, name)
        executable = os.path.isfile(candidate) and os.access(candidate, os.X_OK)
        if entry and executable and candidate not in found:
            found.append(candidate)
    return found


def check_dump_tools(env: dict[str, str]) -> list[Finding]:
    return [*_check_pg_dump(env), *_check_mysql_dump(env), _check_sqlite()]


def _check_pg_dump(env: dict[str, str]) -> list[Finding]:
    # Debian keeps one client per major version under /usr/lib/postgresql/N/bin, and
    # /usr/bin/pg_dump is a wrapper that picks one; list both kinds.
    candidates = sorted(
        str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/pg_dump") if p.is_file()
    )
    candidates += [c for c in _which_all("pg_dump", env)[:1] if c not in candidates]
    servers = sorted(
        int(p.parent.parent.name)
        for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")
        if p.parent.parent.name.isdigit()
    )
    majors: list[int] = []
    findings = []
    for tool in candidates:
        line = _version([tool, "--version"])
        match = re.search(r"(\d+)(?:\.(\d+))?", line or "")
        if line is None or match is None:
            findings.append(Finding("pg_dump", "warn", f"{tool} --version failed"))
            continue
        majors.append(int(match.group(1)))
        findings.append(Finding("pg_dump", "ok", f"{tool}: {line}"))
    if not majors:
        return [
            Finding(
                "pg_dump",
                "warn",
                "no pg_dump found: PostgreSQL databases cannot be backed up, so commands "
                "that touch one will refuse to run",
                "install the PostgreSQL client (Debian/Ubuntu: apt install postgresql-client; "
                "macOS: brew install libpq)",
            )
        ]
    newest = max(majors)
    if servers and newest < servers[-1]:
        findings.append(
            Finding(
                "pg_dump",
                "fail",
                f"the newest pg_dump is {newest}, older than the PostgreSQL {servers[-1]} "
                "server installed here; pg_dump refuses to dump a newer server",
                f"install postgresql-client-{servers[-1]}",
            )
        )
    elif newest < MIN_PG_DUMP:
        findings.append(
            Finding(
                "pg_dump",
                "warn",
                f"the newest pg_dump is {newest}; it cannot dump servers newer than {newest}",
                f"install a PostgreSQL {MIN_PG_DUMP} or newer client",
            )
        )
    return findings


def _check_mysql_dump(env: dict[str, str]) -> list[Finding]:
    findings = []
    for name in ("mariadb-dump", "mysqldump"):
        tools = _which_all(name, env)
        if not tools:
            continue
        line = _version([tools[0], "--version"])
        if line is None:
            findings.append(Finding(name, "warn", f"{tools[0]} --version failed"))
            continue
        findings.append(_judge_mysql(name, tools[0], line))
    if not findings:
        return [
            Finding(
                "mysqldump",
                "warn",
                "neither mariadb-dump nor mysqldump found: MySQL/MariaDB databases cannot "
                "be backed up, so commands that touch one will refuse to run",
                "install the client (Debian/Ubuntu: apt install mariadb-client or "
                "default-mysql-client; macOS: brew install mysql-client)",
            )
        ]
    return findings


def _judge_mysql(name: str, tool: str, line: str) -> Finding:
    # "mariadb-dump  Ver 10.19 Distrib 10.11.6-MariaDB, ..." or "mysqldump  Ver 8.0.36 ..."
    mariadb = re.search(r"Distrib (\d+)\.(\d+)[.\d]*-MariaDB", line)
    mysql = re.search(r"Ver (\d+)\.(\d+)", line)
    if mariadb:
        version, floor, product = (int(mariadb[1]), int(mariadb[2])), MIN_MARIADB, "MariaDB"
    elif mysql:
        version, floor, product = (int(mysql[1]), int(mysql[2])), MIN_MYSQL, "MySQL"
    else:
        return Finding(name, "warn", f"{tool}: cannot read the version from {line!r}")
    if version < floor:
        return Finding(
            name,
            "warn",
            f"{tool} is {product} {version[0]}.{version[1]}, older than {floor[0]}.{floor[1]}",
            f"install a newer {product} client",
        )
    return Finding(name, "ok", f"{tool}: {line}")


def _check_sqlite() -> Finding:
    return Finding(
        "sqlite",
        "ok",
        f"SQLite is backed up through Python's sqlite3 module (SQLite {sqlite3.sqlite_version}); "
        "the sqlite3 command is not needed",
    )


# ---- backups ------------------------------------------------------------------------


def check_backup_dir(folder: Path) -> list[Finding]:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != folder and not existing.is_dir():
        return [
            Finding(
                "backups",
                "fail",
                f"{folder} cannot be made: {existing} is a file",
                "set `backup_dir` in config.toml to a path through folders",
            )
        ]
    if existing != folder and not os.access(existing, os.W_OK | os.X_OK):
        return [
            Finding(
                "backups",
                "fail",
                f"{folder} does not exist and cannot be created ({existing} is not writable)",
                "set `backup_dir` in config.toml to a folder you can write",
            )
        ]
    if existing == folder:
        try:
            check_private_folder(folder)  # what dbguardd will refuse, it says here
        except BackupFailed as err:
            return [Finding("backups", "fail", err.problem, err.fix)]
        try:
            handle, probe = tempfile.mkstemp(dir=folder, prefix=".doctor-")
            os.close(handle)
            os.unlink(probe)
        except OSError as err:
            return [
                Finding(
                    "backups",
                    "fail",
                    f"cannot write in {folder}: {err.strerror}",
                    f"make it writable (chmod u+rwx {shlex.quote(str(folder))}), or set "
                    "`backup_dir` in config.toml",
                )
            ]
    free = shutil.disk_usage(existing).free
    where = f"{folder} ({human_size(free)} free)"
    if free < MIN_FREE_BYTES:
        return [
            Finding(
                "backups",
                "fail",
                f"{where}: too little space; backups, and so guarded commands, will fail",
                "free some space, prune old backups, or set `backup_dir` to a larger disk",
            )
        ]
    if free < WARN_FREE_BYTES:
        return [
            Finding(
                "backups",
                "warn",
                f"{where}: low on space",
                "free some space or set `backup_dir` to a larger disk",
            )
        ]
    return [Finding("backups", "ok", f"{where}, writable")]


# ---- the current project ------------------------------------------------------------


def _interpreter(script: Path) -> tuple[str, bool]:
    """The program a script's #! line runs, and whether it is found through PATH
    (`#!/usr/bin/env NAME`), which is what lets a shim catch it."""
    try:
        with script.open("rb") as handle:
            first = handle.readline(256).decode("utf-8", "replace")
    except OSError:
        return "", False
    if not first.startswith("#!"):
        return "", False
    words = first[2:].split()
    if not words:
        return "", False
    if Path(words[0]).name == "env":
        rest = [w for w in words[1:] if not w.startswith("-")]
        return (rest[0] if rest else ""), True
    return words[0], False


def check_project(cwd: Path, env: dict[str, str], folder: Path) -> list[Finding]:
    root = find_root(cwd)
    path_env = env.get("PATH", "")
    guarded = (
        {s.name for s in shims.state(folder, path_env) if s.wins} if folder.is_dir() else set()
    )
    findings = []
    scripts = [
        *(root / "vendor/bin" / n for n in ("phpunit", "pest", "paratest")),
        *(
            root / "node_modules/.bin" / n
            for n in ("prisma", "knex", "sequelize", "typeorm", "drizzle-kit")
        ),
        root / "bin/rails",
    ]
    for script in scripts:
        if not script.exists():
            continue
        shown = f"./{script.relative_to(root)}"
        program, through_path = _interpreter(script)
        if through_path and Path(program).name in guarded:
            findings.append(Finding("project", "ok", f"{shown} runs `{program}` through its shim"))
            continue
        name = script.name
        instead = {
            "prisma": "npx prisma",
            "knex": "npx knex",
            "sequelize": "npx sequelize",
            "typeorm": "npx typeorm",
            "drizzle-kit": "npx drizzle-kit",
        }.get(name, name)
        if not program:
            runs = "is a program of its own"
        elif through_path:
            runs = f"runs through `{program}`, which has no shim"
        else:
            runs = f"runs {program} by its full path"
        findings.append(
            Finding(
                "project",
                "warn",
                f"{shown} {runs}: called by its path, it bypasses the shims",
                f"run `{instead}` instead (guarded), or add "
                f"`{Path(program).name if program else name}` to [shims] commands in "
                "config.toml and run `dbguardctl install`",
            )
        )
    findings += _python_module_paths(root, env, guarded)
    findings += _django_manage(root, guarded)
    return findings


def _django_manage(root: Path, guarded: set[str]) -> list[Finding]:
    """`python manage.py flush` passes only a python shim, and those are opt-in."""
    if not (root / "manage.py").is_file():
        return []
    missing = [name for name in ("python", "python3") if name not in guarded]
    if not missing:
        return [Finding("project", "ok", "python manage.py ... runs through the python shims")]
    return [
        Finding(
            "project",
            "warn",
            f"{root / 'manage.py'}: `{missing[0]} manage.py ...` is not guarded (no "
            f"{' or '.join(missing)} shim first on PATH; they are opt-in)",
            f"dbguardctl shims install {' '.join(missing)}",
        )
    ]


def _python_module_paths(root: Path, env: dict[str, str], guarded: set[str]) -> list[Finding]:
    """`python -m pytest` through a virtualenv's python never passes a pytest shim."""
    venvs = [root / name for name in (".venv", "venv", "env")]
    if env.get("VIRTUAL_ENV"):
        venvs.append(Path(env["VIRTUAL_ENV"]))
    findings = []
    seen: set[Path] = set()
    for venv in venvs:
        python = venv / "bin" / "python"
        if not (venv / "pyvenv.cfg").is_file() or venv.resolve() in seen:
            continue
        seen.add(venv.resolve())
        if "python" in guarded:
            continue
        tools = [n for n in ("pytest", "alembic") if (venv / "bin" / n).exists()]
        for tool in tools:
            findings.append(
                Finding(
                    "project",
                    "warn",
                    f"`python -m {tool}` with {python} (and {venv / 'bin' / tool} called by "
                    "its path) bypasses the shims",
                    f"run plain `{tool}` (guarded through its shim)",
                )
            )
    return findings

"""Install dbguard for this user in one step: shims, and systemd units where systemd runs.
Uninstall dbguard: stop the daemon, remove the units and the shims (backups stay).

Usage: dbguardctl install [--dir DIR] [--no-systemd] [--autostart {auto,on,off}]
                          [--autostart-timeout SECONDS]
       dbguardctl uninstall [--dir DIR] [--no-systemd]

install writes the shims for the configured commands, and then, where systemd runs the
user's session, installs dbguard.socket and dbguard.service in
~/.config/systemd/user/ and enables the socket, so dbguardd starts on the first
guarded command of every login. Without systemd (containers, macOS, WSL) the shims
start dbguardd themselves when nothing listens (autostart; `auto` turns it on exactly
when the units are not installed). It ends with the line to add to your shell profile.

uninstall stops the daemon, disables and removes the units and removes the shims. The
backups, the operation log and config.toml stay. Both can be run again safely.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dbguard
from dbguard import paths, shims
from dbguard.client import autostart
from dbguard.client.talk import DaemonUnavailable, request
from dbguard.config import Config, ConfigError, config_path
from dbguard.ctl.context import Context
from dbguard.errors import DbguardError
from dbguard.protocol import PROTOCOL_VERSION, Status, StatusQuery

UNITS = ("dbguard.socket", "dbguard.service")
# Written at the top of every rendered unit, so uninstall removes only files it wrote.
UNIT_MARKER = "# Installed by `dbguardctl install`"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")
DEFAULT_SOCKET_SPEC = "%t/dbguard/dbguard.sock"  # %t: the user's $XDG_RUNTIME_DIR
SYSTEMCTL_TIMEOUT = 30.0  # seconds; enable --now waits for the socket to be set up
STOP_TIMEOUT = 30.0  # seconds a running daemon may take to stop on uninstall


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, help="shims folder (default: ~/.local/share/dbguard/shims)"
    )
    parser.add_argument(
        "--no-systemd",
        action="store_true",
        help="leave systemd alone even where it runs (no units installed or removed)",
    )
    if parser.prog.split()[-1] == "install":
        parser.add_argument(
            "--autostart",
            choices=("auto", "on", "off"),
            default="auto",
            help="shims start dbguardd when nothing listens (auto: on without systemd units)",
        )
        parser.add_argument(
            "--autostart-timeout",
            type=float,
            default=autostart.DEFAULT_TIMEOUT,
            metavar="SECONDS",
            help="how long a shim waits for the daemon it started (default: %(default)g)",
        )


def run(args: argparse.Namespace, ctx: Context) -> int:
    folder: Path = (args.dir or paths.default_shims_dir(ctx.env)).expanduser().absolute()
    if args.command == "uninstall":
        return uninstall(ctx, folder, use_systemd=not args.no_systemd)
    if args.autostart_timeout <= 0 or args.autostart_timeout > 60:
        ctx.error("dbguardctl: --autostart-timeout must be between 0 and 60 seconds")
        return 2
    return install(ctx, folder, args)


# ---- systemd ------------------------------------------------------------------------


def systemd_unavailable() -> str | None:
    """Why the user's systemd cannot be used here, or None when it can."""
    if not Path("/run/systemd/system").is_dir():
        return "this system was not booted with systemd"
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    result = systemctl("show-environment")
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()
        return "no systemd user manager is reachable" + (f" ({detail[0]})" if detail else "")
    return None


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["systemctl", "--user", *args],
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return subprocess.CompletedProcess(["systemctl"], 1, "", str(err))


def unit_dir(env: dict[str, str]) -> Path:
    """$XDG_CONFIG_HOME/systemd/user: where the user manager looks for the user's own
    units (the same XDG rule as dbguard.paths; relative values are ignored)."""
    config_home = env.get("XDG_CONFIG_HOME", "")
    if not config_home.startswith("/"):
        config_home = str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(config_home) / "systemd" / "user"


def templates_dir() -> Path:
    """The unit templates, shipped inside the package (systemd/ in the source tree is a
    link to the same folder)."""
    folder = Path(dbguard.__file__).resolve().parent / "units"
    if not (folder / "dbguard.service").is_file():
        raise DbguardError(
            f"the unit templates are not at {folder}",
            "reinstall dbguard (the package is incomplete), or use --no-systemd",
        )
    return folder


def _exec_quote(arg: str) -> str:
    """One ExecStart= word: specifiers and variables escaped, quoted when needed."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in " \t\n\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def socket_spec(ctx: Context) -> str:
    """The socket path for the units: the configured one, or %t/... like the default."""
    explicit = ctx.env.get("DBGUARD_SOCKET") or ctx.config.socket
    if explicit:
        return str(explicit).replace("%", "%%")
    return DEFAULT_SOCKET_SPEC


def daemon_argv(config_file: str | None) -> list[str]:
    """How to run this installation's dbguardd: its script beside our interpreter, else
    the one on PATH, else the module through our interpreter."""
    beside = Path(sys.executable).parent / "dbguardd"
    if beside.is_file() and os.access(beside, os.X_OK):
        argv = [str(beside.absolute())]
    elif found := shutil.which("dbguardd"):
        argv = [str(Path(found).absolute())]
    else:
        argv = [str(Path(sys.executable).absolute()), "-m", "dbguard.daemon.main"]
    if config_file:
        argv += ["--config", str(Path(config_file).expanduser().absolute())]
    return argv


def render_units(socket: str, argv: list[str]) -> dict[str, str]:
    """The two units, from the templates in systemd/, with this installation filled in."""
    values = {
        "@SOCKET@": socket,
        "@SOCKET_QUOTED@": socket.replace("\\", "\\\\").replace('"', '\\"'),
        "@EXEC_START@": " ".join(_exec_quote(arg) for arg in argv),
    }
    rendered = {}
    for name in UNITS:
        text = (templates_dir() / name).read_text(encoding="utf-8")
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        if left := PLACEHOLDER.search(text):
            raise DbguardError(f"{name}: the placeholder {left.group()} was left unfilled")
        rendered[name] = f"{UNIT_MARKER} from {templates_dir() / name}\n{text}"
    return rendered


def lingering(user: str) -> bool:
    return bool(user) and Path("/var/lib/systemd/linger", user).exists()


# ---- install ------------------------------------------------------------------------


@dataclass
class Plan:
    use_systemd: bool
    why_not: str  # why systemd is not used, when it is not
    autostart: bool


def install(ctx: Context, folder: Path, args: argparse.Namespace) -> int:
    config = ctx.config  # a broken config stops the install here, with the key named
    why_not = "--no-systemd" if args.no_systemd else systemd_unavailable()
    plan = Plan(
        use_systemd=why_not is None,
        why_not=why_not or "",
        autostart=args.autostart == "on" or (args.autostart == "auto" and why_not is not None),
    )
    names = list(config.shims.commands)
    written = shims.install(folder, names, config.socket)
    ctx.print(f"shims: {len(written)} in {folder}: {' '.join(p.name for p in written)}")

    argv = daemon_argv(ctx.config_file)
    settings = folder / autostart.SETTINGS_FILE
    if plan.autostart:
        _write_if_changed(settings, autostart.format_settings(argv, args.autostart_timeout))
        ctx.print(
            f"autostart: on; a shim runs `{shlex.join(argv)}` when nothing listens on "
            f"{ctx.socket} "
            f"(log: {paths.state_dir(ctx.env) / 'dbguardd.log'})"
        )
    else:
        removed = _remove(settings)
        ctx.print("autostart: off" + (" (turned off)" if removed else ""))

    status = 0
    if plan.use_systemd:
        status = _install_units(ctx, argv)
    else:
        ctx.print(f"systemd: not used ({plan.why_not}); no units installed")
        left = [name for name in UNITS if is_our_unit(unit_dir(ctx.env) / name)]
        if left:
            ctx.print(
                f"  units from an earlier install remain in {unit_dir(ctx.env)}: "
                f"{' '.join(left)} (`dbguardctl uninstall` removes them)"
            )
        if not plan.autostart:
            ctx.print(f"  start the daemon yourself before guarded commands: {shlex.join(argv)}")

    ctx.print()
    # Run again, install would tell a user to add a line the profile already has.
    from dbguard.ctl.doctor import check_shell_hook  # here: doctor imports this module

    hooked = [f for f in check_shell_hook(ctx.env, folder) if f.level == "ok"]
    if hooked:
        ctx.print(
            f"shell: {hooked[0].message}; `dbguardctl doctor` checks the shells with no "
            "prompt (ssh, agents, cron) too"
        )
    else:
        ctx.print(_profile_hint(ctx, folder, args.dir is not None))
    return status


def _install_units(ctx: Context, argv: list[str]) -> int:
    target = unit_dir(ctx.env)
    target.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in render_units(socket_spec(ctx), argv).items():
        if _write_if_changed(target / name, text):
            changed.append(name)
    ctx.print(
        f"systemd: units in {target} "
        + (f"({', '.join(changed)} written)" if changed else "(already up to date)")
    )
    steps = [("daemon-reload",), ("enable", "--now", "dbguard.socket")]
    if changed:
        # A daemon already running keeps its old ExecStart until restarted.
        steps.append(("try-restart", "dbguard.service"))
    for step in steps:
        result = systemctl(*step)
        if result.returncode != 0:
            ctx.print(
                f"systemd: `systemctl --user {' '.join(step)}` failed: {result.stderr.strip()}"
            )
            return 1
    ctx.print("systemd: dbguard.socket enabled and listening; dbguardd starts on first use")
    user = ctx.env.get("USER") or ctx.env.get("LOGNAME") or ""
    if not lingering(user):
        ctx.print(
            "  to keep it running when you are logged out (cron jobs, CI runners, "
            f"tmux sessions): loginctl enable-linger {user or '$USER'}"
        )
    return 0


def _profile_hint(ctx: Context, folder: Path, explicit_dir: bool) -> str:
    dir_option = ["--dir", str(folder)] if explicit_dir else []
    shell = Path(ctx.env.get("SHELL", "")).name
    if shell == "fish":
        line = f"{shlex.join([*ctl_command(), 'shell-init', 'fish', *dir_option])} | source"
        profile = "~/.config/fish/config.fish"
    elif shell in ("bash", "zsh"):
        line = f'eval "$({shlex.join([*ctl_command(), "shell-init", shell, *dir_option])})"'
        # Where shells with no prompt (ssh host cmd, agents, zsh -c) read it too.
        profile = (
            "the top of ~/.bashrc (above its 'not interactive: return' lines)"
            if shell == "bash"
            else "~/.zshenv"
        )
    else:
        # Another shell has no prompt hook we know; PATH order is set once per login.
        line = f'export PATH={shlex.quote(str(folder))}:"$PATH"'
        profile = "~/.profile"
    return (
        f"Add this line to {profile} (it keeps the shims first on PATH, even after a "
        f"virtualenv or nvm puts its own folder in front), then open a new shell:\n  {line}"
    )


def ctl_command() -> list[str]:
    """dbguardctl as a command that works from any shell: by its full path."""
    beside = Path(sys.executable).parent / "dbguardctl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside.absolute())]
    if found := shutil.which("dbguardctl"):
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "dbguard.ctl.main"]


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: write it
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
    return True


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# ---- uninstall ----------------------------------------------------------------------


def uninstall(ctx: Context, folder: Path, use_systemd: bool) -> int:
    try:
        config = ctx.config
    except ConfigError as err:
        # Taking dbguard away must not depend on its config being valid.
        ctx.print(f"note: {err}\n  using the default socket and backup folder")
        config = Config()
    removed: list[str] = []
    target = unit_dir(ctx.env)
    ours = [target / name for name in UNITS if is_our_unit(target / name)]
    if use_systemd and systemd_unavailable() is None:
        # Disable before removing: a unit file removed while enabled leaves dangling
        # symlinks in sockets.target.wants that systemd complains about at every login.
        result = systemctl("disable", "--now", *UNITS)
        if result.returncode == 0 and ours:
            removed.append("stopped and disabled dbguard.socket and dbguard.service")
    for path in ours:
        path.unlink()
        removed.append(f"removed {path}")
    if ours and use_systemd and systemd_unavailable() is None:
        systemctl("daemon-reload")

    stopped = _stop_daemon(config.socket_path(ctx.env))
    if stopped:
        removed.append(stopped)

    for shim in shims.uninstall(folder):
        removed.append(f"removed {shim}")
    if _remove(folder / autostart.SETTINGS_FILE):
        removed.append(f"removed {folder / autostart.SETTINGS_FILE}")
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        removed.append(f"removed the empty folder {folder}")

    if removed:
        for line in removed:
            ctx.print(line)
    else:
        ctx.print("nothing to remove: dbguard is not installed here")
    kept = f"kept the backups in {config.backup_path(ctx.env)}"
    config_file = config_path(ctx.env, ctx.config_file)
    if config_file.is_file():  # a config.toml never written is not "kept"
        kept += f", and your config {config_file}"
    ctx.print(kept)
    ctx.print("  remove the shell profile line that runs `dbguardctl shell-init`, if you added it")
    return 0


def is_our_unit(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.readline().startswith(UNIT_MARKER)
    except (OSError, UnicodeDecodeError):
        return False


def _stop_daemon(socket: Path) -> str:
    """Stop a daemon that is still running (one the shims or a person started); the
    socket's peer check means the pid it reports is our own user's process."""
    try:
        reply = request(socket, StatusQuery(type="status", v=PROTOCOL_VERSION), timeout=5)
    except DaemonUnavailable:
        return ""
    if not isinstance(reply, Status):
        return ""
    try:
        os.kill(reply.pid, signal.SIGTERM)
    except ProcessLookupError:
        return ""
    # Wait for the process, not the socket: a socket systemd holds stays listening.
    deadline = time.monotonic() + STOP_TIMEOUT
    while autostart.alive(reply.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if autostart.alive(reply.pid):
        return f"asked dbguardd (pid {reply.pid}) to stop; it is still running"
    return f"stopped dbguardd (pid {reply.pid})"

"""Start dbguardd on demand where no service manager does (containers, macOS, WSL).

Used by the shim client (client/shim.py) only after connecting to the socket failed, so
it costs nothing on the usual path. Like the shim it imports only modules built into
the interpreter (os, _signal, _socket, errno, time; `os.lockf` is the built-in posix's), so
it loads in well under a millisecond under `python -IS`.

`dbguardctl install` turns autostart on by writing SETTINGS_FILE into the shims folder
(the daemon's argv and the time to wait); without that file, or with DBGUARD_AUTOSTART=0
in the environment, nothing is started. What the shim calls when its first connection
fails:

    import autostart  # beside shim.py, already on sys.path; loaded only on this path
    if autostart.start_if_configured(path, shims_dir, err, say):
        connect again and carry on
    else:
        problem, fix = autostart.advise(path, shims_dir, err, after_start=True)
        fail closed: exit 69 with those

When starting fails, what the caller is told comes from the daemon's own log: the
lines it wrote since this start (at most TAIL_LINES, read from the file's end only
then), JSON lines made readable, a config error as the file, the key and the problem.
advise() says what to do when nothing listens and nothing was started (or a start
failed): the command that starts this installation's dbguardd, `systemctl --user`
only where the units are installed and systemd runs the user's session.

ensure_daemon starts at most one daemon at a time per socket: callers take a POSIX
record lock on a file beside the socket, and whoever holds it checks the socket again
before starting anything, so a crowd of parallel test workers starts one daemon and
the rest find it listening. The kernel drops the lock when its holder dies, so a killed
shim leaves no stale lock behind.
"""

import _signal  # type: ignore[import-not-found]
import _socket
import errno
import os
import sys
import time

TYPE_CHECKING = False  # typing itself would cost start-up time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

SETTINGS_FILE = ".autostart"  # in the shims folder; a dot file, so it is never a command
DEFAULT_TIMEOUT = 5.0  # seconds; dbguardd is ready in about 0.2 s with a warm cache
LOG_MAX_BYTES = 8 << 20  # the log is moved to .1 past this, so it never grows unbounded
POLL_INTERVAL = 0.01  # seconds between looks at the socket while the daemon starts
# What a failed start quotes from the daemon's log: at most this many lines, of at most
# LINE_CHARS each and TAIL_CHARS in all, from at most TAIL_BYTES at the file's end.
TAIL_LINES = 4
TAIL_CHARS = 1000
LINE_CHARS = 300
TAIL_BYTES = 16384
QUIET_LEVELS = ("debug", "info")  # JSON log lines that never say why a start failed
SYSTEMD_BOOTED = "/run/systemd/system"  # as dbguard.ctl.install.systemd_unavailable
UNIT = "dbguard.socket"  # the unit `dbguardctl install` enables where systemd runs
# What dbguardd prints for a config it cannot use (dbguard.config.ConfigError), after
# "dbguardd: PATH"; "invalid config" is followed by one indented "key: problem" line each.
INVALID_CONFIG = ": invalid config"
INVALID_TOML = ": not valid TOML: "

# Variables that belong to the shim's caller, not to a long-lived daemon: the guard's
# nesting markers and another service manager's protocol (NOT_INHERITED); PYTHON*, as
# a project's PYTHONPATH could make the daemon import its modules; and the database
# clients' (PG*, MYSQL*, ...), which belong to the first caller's project: in the
# daemon they would reach every later project's pg_dump or mariadb-dump (another
# project's PGPASSWORD sent to this one's server). Each request brings its own.
NOT_INHERITED_PREFIXES = ("PYTHON", "PG", "MYSQL", "MARIADB", "DATABASE_URL")
NOT_INHERITED = (
    "DBGUARD_DEPTH",
    "DBGUARD_PARENT_OP",
    "DBGUARD_PARENT_BACKUPS",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
)


def format_settings(daemon_argv: "list[str]", timeout: float) -> str:
    """The settings file `dbguardctl install` writes (one argv element per line, so paths
    with spaces need no quoting rules)."""
    lines = [
        "# dbguard autostart, written by `dbguardctl install`: when nothing listens on the",
        "# socket, a shim starts the daemon below and waits up to `timeout` seconds for it.",
        "# Delete this file (or set DBGUARD_AUTOSTART=0) to turn autostart off.",
        f"timeout={timeout:g}",
    ]
    lines += [f"argv={arg}" for arg in daemon_argv]
    return "\n".join(lines) + "\n"


def read_settings(shims_dir: str) -> "tuple[list[str], float] | None":
    """The daemon argv and timeout from the shims folder, or None when autostart is off
    (no file, or a file without an absolute daemon path)."""
    try:
        fd = os.open(os.path.join(shims_dir, SETTINGS_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 65536).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)
    argv: list[str] = []
    timeout = DEFAULT_TIMEOUT
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "argv":
            argv.append(value)
        elif key == "timeout":
            timeout = _seconds(value)
    if not argv or not argv[0].startswith("/"):
        return None
    return argv, timeout


def _seconds(text: str) -> float:
    try:
        return min(max(float(text), 0.1), 60.0)
    except ValueError:
        return DEFAULT_TIMEOUT  # a damaged number: the default wait is still a wait


def _not_running(error: OSError) -> bool:
    """Whether `error` (from connecting) means nothing listens there, so starting a
    daemon could help; not EACCES and the like, where one we start would not be
    reachable either."""
    return error.errno in (errno.ENOENT, errno.ECONNREFUSED)


def _enabled(
    shims_dir: str, error: OSError, env: "Mapping[str, str]"
) -> "tuple[list[str], float] | None":
    """The settings to start the daemon with, when autostart is on and could help."""
    if not _not_running(error) or env.get("DBGUARD_AUTOSTART") == "0":
        return None
    return read_settings(shims_dir)


def start_if_configured(
    socket_path: str,
    shims_dir: str,
    error: OSError,
    say: "Callable[[str], None]",
    env: "Mapping[str, str] | None" = None,
) -> bool:
    """The one call after connecting failed with `error` (a shim's, or `dbguardctl
    backup`'s): start the daemon if autostart is on and starting one could help; True
    when it now listens. When a start fails, `say` has been told why and what to do."""
    env = os.environ if env is None else env
    settings = _enabled(shims_dir, error, env)
    if settings is None:
        return False
    argv, timeout = settings
    say(f"dbguardd is not running; starting it ({argv[0]})")
    return ensure_daemon(
        socket_path, argv, timeout, log_path=default_log_path(env), env=env, say=say
    )


def advise(
    socket_path: str,
    shims_dir: str,
    error: OSError,
    env: "Mapping[str, str] | None" = None,
    daemon: "list[str] | None" = None,
    after_start: bool = False,
) -> "tuple[str, str]":
    """What stops a caller reaching dbguardd after connecting failed with `error`, and
    what the user can do: (problem, fix; "" when there is nothing to add). With
    `after_start`, start_if_configured was called first: when autostart is on, it has
    told why its start failed. `daemon` is the command that runs dbguardd, for callers
    that know it better than daemon_command() (dbguardctl knows its own interpreter)."""
    env = os.environ if env is None else env
    problem = f"dbguardd is not reachable at {socket_path} ({error.strerror or error})"
    if not _not_running(error):
        return problem, "`dbguardctl doctor` checks the socket, its folder and who owns them"
    if after_start and _enabled(shims_dir, error, env) is not None:
        return "dbguardd is not running and could not be started (see above)", ""
    doctor = "`dbguardctl doctor` checks the setup"
    if systemd_units(env):
        return problem, (
            f"start it with `systemctl --user start {UNIT}`, then run the command again "
            "(`journalctl --user -u dbguard` says why it stopped); " + doctor
        )
    argv = daemon_command(shims_dir, daemon)
    if argv is None:
        by_hand = (
            "start dbguardd (it is in the bin folder of the virtualenv dbguard is installed in)"
        )
    else:
        by_hand = f"start it with `{shell_join(argv)} &`"
    if read_settings(shims_dir) is not None:
        if env.get("DBGUARD_AUTOSTART") == "0":
            return problem, (
                "autostart is off in this environment (DBGUARD_AUTOSTART=0): unset it and "
                f"run the command again, or {by_hand}; " + doctor
            )
        return problem, (
            f"autostart is on: the next guarded command starts it; or {by_hand}; " + doctor
        )
    return problem, f"{by_hand}, then run the command again; " + doctor


def daemon_command(shims_dir: str, fallback: "list[str] | None" = None) -> "list[str] | None":
    """The command that runs this installation's dbguardd: the one autostart runs, else
    `fallback`, else the dbguardd script beside the running interpreter or in the
    prefix (virtualenv) whose site-packages holds this module; None when none is found
    (a source checkout run by another interpreter)."""
    settings = read_settings(shims_dir)
    if settings is not None:
        return settings[0]
    if fallback:
        return fallback
    # A shim runs the base interpreter, not the virtualenv's (dbguard.shims.interpreter),
    # so the venv is found from where this file lives:
    # PREFIX/lib/pythonX.Y/site-packages/dbguard/client/autostart.py.
    here = os.path.dirname(os.path.realpath(__file__))
    packages = os.path.dirname(os.path.dirname(here))
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(packages)))
    candidates = [os.path.join(os.path.dirname(sys.executable), "dbguardd")]
    if os.path.basename(packages) in ("site-packages", "dist-packages"):
        candidates.append(os.path.join(prefix, "bin", "dbguardd"))
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return [candidate]
    return None


def systemd_units(env: "Mapping[str, str] | None" = None) -> bool:
    """Whether `systemctl --user start dbguard.socket` can start the daemon here: the
    unit is installed (by `dbguardctl install`, which does so only where systemd runs
    the user's session), the system was booted with systemd, and the user's service
    manager runs now (its private socket is there). The same things that
    dbguard.ctl.install.systemd_unavailable asks systemctl, looked at without running it."""
    env = os.environ if env is None else env
    config = env.get("XDG_CONFIG_HOME", "")
    if not config.startswith("/"):
        config = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    if not os.path.exists(os.path.join(config, "systemd", "user", UNIT)):
        return False
    if not os.path.isdir(SYSTEMD_BOOTED):
        return False
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if not runtime.startswith("/"):
        runtime = f"/run/user/{os.getuid()}"
    return os.path.exists(os.path.join(runtime, "systemd", "private"))


def shell_join(argv: "list[str]") -> str:
    """argv as a line to paste into a shell (shlex.join, without importing shlex)."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")
    return " ".join(
        arg if arg and set(arg) <= safe else "'" + arg.replace("'", "'\"'\"'") + "'" for arg in argv
    )


def default_log_path(env: "Mapping[str, str] | None" = None) -> str:
    """$XDG_STATE_HOME/dbguard/dbguardd.log; the same rule as dbguard.paths.state_dir."""
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME", "")
    if not state.startswith("/"):
        state = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local/state")
    return os.path.join(state, "dbguard", "dbguardd.log")


def listening(socket_path: str) -> bool:
    """Whether something accepts connections on the socket now."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def daemon_env(socket_path: str, base: "Mapping[str, str] | None" = None) -> "dict[str, str]":
    """The daemon's environment: the caller's, less what is not the daemon's business,
    with the socket fixed so the daemon listens exactly where the shim looks."""
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if key not in NOT_INHERITED and not key.startswith(NOT_INHERITED_PREFIXES)
    }
    env["DBGUARD_SOCKET"] = socket_path
    return env


def ensure_daemon(
    socket_path: str,
    daemon_argv: "list[str]",
    timeout: float = DEFAULT_TIMEOUT,
    *,
    log_path: "str | None" = None,
    env: "Mapping[str, str] | None" = None,
    say: "Callable[[str], None] | None" = None,
) -> bool:
    """Make sure dbguardd listens on `socket_path`, starting `daemon_argv` if nothing does.

    Returns True once the socket accepts connections, False when it does not within
    `timeout` seconds (counting any wait for another caller's start), when the daemon
    exits during start-up, or when it cannot be started at all; `say` gets one message
    saying which (its later lines indented: what the daemon logged, and what to do).
    The daemon runs detached: its own session, cwd /, stdin /dev/null, stdout and
    stderr appended to `log_path` (default: default_log_path()), and it is not our
    child, so nothing we exec later inherits it.
    """
    deadline = time.monotonic() + timeout
    tell = say or (lambda _text: None)
    if listening(socket_path):
        return True
    log = log_path or default_log_path()
    problem = _own_folder(os.path.dirname(socket_path))
    if problem:
        tell(problem)
        return False
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        lock = os.open(socket_path + ".start-lock", flags, 0o600)
    except OSError as err:
        tell(f"cannot create the start lock beside {socket_path}: {err.strerror}")
        return False
    try:
        if not _take(lock, deadline):
            # Someone else is starting it and has not finished in our time.
            if listening(socket_path):
                return True
            tell(
                f"another shim is starting dbguardd and it was not ready within {timeout:g} s"
                f"\n  run the command again in a moment; its log is {log}"
            )
            return False
        if listening(socket_path):
            return True  # started by whoever held the lock before us
        started = _spawn(daemon_argv, log, daemon_env(socket_path, env), tell)
        if started is None:
            return False
        pid, offset = started
        return _wait_ready(socket_path, pid, deadline, timeout, log, offset, daemon_argv, tell)
    finally:
        os.close(lock)  # closing any descriptor of the file releases our lockf lock


def _own_folder(folder: str) -> str:
    """Create the socket's folder 0700 if needed; refuse one that is not ours."""
    try:
        os.makedirs(folder, 0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError as err:
        return f"cannot create {folder}: {err.strerror}"
    if info.st_uid != os.getuid() or (info.st_mode & 0o170000) != 0o040000:
        return f"{folder} is not a folder owned by you; remove it or choose another socket"
    return ""


def _take(lock: int, deadline: float) -> bool:
    """Take the lock, waiting until the deadline (F_TLOCK in a loop: F_LOCK cannot time out)."""
    while True:
        try:
            os.lockf(lock, os.F_TLOCK, 0)
            return True
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _rotate(log: str) -> None:
    try:
        if os.stat(log).st_size > LOG_MAX_BYTES:
            os.replace(log, log + ".1")
    except OSError:
        pass  # no log yet, or it cannot be moved: appending to it is still fine


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _spawn(
    argv: "list[str]", log: str, env: "dict[str, str]", tell: "Callable[[str], None]"
) -> "tuple[int, int] | None":
    """Start the daemon through a short-lived intermediate process, so it is adopted by
    init (or the nearest subreaper) instead of staying our child; return its pid and
    where in its log what it writes begins."""
    try:
        os.makedirs(os.path.dirname(log), 0o700, exist_ok=True)
    except OSError as err:
        tell(f"cannot create the folder of {log}: {err.strerror}")
        return None
    _rotate(log)
    offset = _size(log)
    reader, writer = os.pipe()  # both close-on-exec: the daemon never holds them
    child = os.fork()
    if child == 0:
        code = 1
        try:
            code = _intermediate(argv, log, env, reader, writer)
        finally:
            os._exit(code)  # whatever happened, the intermediate never returns into the shim
    os.close(writer)
    answer = b""
    try:
        while True:
            chunk = os.read(reader, 4096)
            if not chunk:
                break
            answer += chunk
    finally:
        os.close(reader)
        os.waitpid(child, 0)
    text = answer.decode("utf-8", "replace")
    if not text.isdigit():
        tell(
            f"cannot start {argv[0]}: {text.lstrip('!') or 'the starter died'}\n"
            "  run `dbguardctl install` again (it records where dbguardd is), then the command"
        )
        return None
    return int(text), offset


def _intermediate(
    argv: "list[str]", log: str, env: "dict[str, str]", reader: int, writer: int
) -> int:
    """In the forked intermediate: start the daemon, report its pid (or why it could not
    start) through the pipe, and return the exit code."""
    try:
        os.close(reader)
        # The caller's other descriptors (a pipe on fd 3, a make jobserver) must not live
        # on in the daemon: whoever waits for their other end would wait for ever.
        os.closerange(3, writer)
        os.closerange(writer + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")  # never keep a project folder busy (or unmountable)
        pid = os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,  # no controlling terminal: ^C and hangups are not its business
            setsigmask=(),
            # Python ignores these; the daemon's own Python sets them up again.
            setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ),
        )
        report = str(pid)
    except BaseException as err:
        report = "!" + str(err)
    try:
        os.write(writer, report.encode("utf-8", "replace"))
    except OSError:
        return 2  # the shim is gone; there is no one to tell
    return 0 if report.isdigit() else 1


def alive(pid: int) -> bool:
    """Whether the daemon still runs. A zombie counts as dead: in a container whose
    pid 1 does not reap, an exited daemon stays a zombie and kill(pid, 0) succeeds."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True  # no /proc (macOS): kill(pid, 0) is all we have
    try:
        stat = os.read(fd, 512)
    finally:
        os.close(fd)
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def _wait_ready(
    socket_path: str,
    pid: int,
    deadline: float,
    timeout: float,
    log: str,
    offset: int,
    argv: "list[str]",
    tell: "Callable[[str], None]",
) -> bool:
    while True:
        if listening(socket_path):
            return True
        if not alive(pid):
            # It may have lost a race to a daemon started by hand; that one counts too.
            if listening(socket_path):
                return True
            tell(exited_message(pid, log, log_tail(log, offset), argv))
            return False
        if time.monotonic() >= deadline:
            said = [f"dbguardd (pid {pid}) was not ready within {timeout:g} s; its log is {log}"]
            said += ["  " + line for line in readable(log_tail(log, offset))]
            said.append(
                "  it may still be starting: run the command again in a moment (a slow "
                "machine may need `dbguardctl install --autostart-timeout 15`)"
            )
            tell("\n".join(said))
            return False
        time.sleep(POLL_INTERVAL)


# ---- what a failed start says (only ever run after a start failed) -----------------


def exited_message(pid: int, log: str, lines: "list[str]", argv: "list[str]") -> str:
    """Why dbguardd exited while starting, from what it wrote to its log: a config error
    as the file, each key and its problem; anything else as the last lines it wrote."""
    head = f"dbguardd (pid {pid}) exited while starting"
    config = config_problem(lines)
    if config is not None:
        path, problems = config
        said = [f"{head}: the config file {path} is invalid"]
        said += ["  " + problem for problem in _bounded(problems)]
        said.append(f"  fix it and run the command again (dbguardd's log: {log})")
        return "\n".join(said)
    shown = readable(lines)
    if not shown:
        return (
            f"{head} and wrote nothing to its log ({log})\n"
            f"  run `{shell_join(argv)}` in a terminal to see why, then the command again"
        )
    said = [f"{head}; the end of its log ({log}):"]
    said += ["  " + line for line in shown]
    said.append(
        "  fix what it says and run the command again "
        f"(`{shell_join(argv)}` in a terminal shows dbguardd starting)"
    )
    return "\n".join(said)


def log_tail(log: str, offset: int) -> "list[str]":
    """The lines written to the log from `offset` on (what this start wrote), at most
    TAIL_BYTES of them from the end of the file."""
    try:
        fd = os.open(log, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    data = b""
    try:
        size = os.fstat(fd).st_size
        if size < offset:
            offset = 0  # moved aside and started again meanwhile: all of it is new
        start = max(offset, size - TAIL_BYTES)
        os.lseek(fd, start, os.SEEK_SET)
        while len(data) < size - start:
            chunk = os.read(fd, size - start - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        return []
    finally:
        os.close(fd)
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[1:] if start > offset else lines  # the first may be cut short


def config_problem(lines: "list[str]") -> "tuple[str, list[str]] | None":
    """(config file, its problems) when the daemon's last error was its config."""
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if not line.startswith("dbguardd: "):
            continue
        body = line[len("dbguardd: ") :]
        if body.endswith(INVALID_CONFIG):
            problems = []
            for detail in lines[index + 1 :]:
                if not detail.startswith("  "):
                    break
                problems.append(detail.strip())
            return body[: -len(INVALID_CONFIG)], problems
        toml = body.find(INVALID_TOML)
        if toml > 0:
            return body[:toml], ["not valid TOML: " + body[toml + len(INVALID_TOML) :]]
        return None  # its last words were about something else
    return None


def readable(lines: "list[str]") -> "list[str]":
    """The last few lines that say something, shortened: blank lines and traceback
    frames left out (the exception itself kept), JSON lines as `level: event key=value`,
    and informational ones only when there is nothing else."""
    said: list[str] = []
    quiet: list[str] = []
    in_traceback = False
    for line in lines:
        if not line.strip():
            continue
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
            continue
        if in_traceback and line[:1] in (" ", "\t"):
            continue
        in_traceback = False
        entry = _from_json(line) if line.startswith("{") else None
        if entry is None:
            said.append(line.rstrip())
        elif entry[0]:
            quiet.append(entry[1])
        else:
            said.append(entry[1])
    return _bounded(said or quiet)


def _bounded(lines: "list[str]") -> "list[str]":
    """The last TAIL_LINES lines, each cut to LINE_CHARS, TAIL_CHARS in all."""
    picked = [
        line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 3] + "..."
        for line in lines[-TAIL_LINES:]
    ]
    while len(picked) > 1 and sum(len(line) + 1 for line in picked) > TAIL_CHARS:
        picked.pop(0)
    return picked


def _from_json(line: str) -> "tuple[bool, str] | None":
    """A structlog JSON line as (informational?, `level: event key=value ...`)."""
    import json  # only here: reading a failed start's log is no shim's usual path

    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    level = str(entry.pop("level", ""))
    event = str(entry.pop("event", ""))
    entry.pop("timestamp", None)
    exception = str(entry.pop("exception", "") or "").strip()
    words = [f"{level}: {event}" if level else event]
    words += [f"{key}={value}" for key, value in entry.items()]
    if exception:
        words.append("(" + exception.splitlines()[-1] + ")")
    return level in QUIET_LEVELS, " ".join(words)

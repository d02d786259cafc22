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
        fail closed: exit 69 with the message that says how to start dbguardd

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
import time

TYPE_CHECKING = False  # typing itself would cost start-up time; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable

SETTINGS_FILE = ".autostart"  # in the shims folder; a dot file, so it is never a command
DEFAULT_TIMEOUT = 5.0  # seconds; dbguardd is ready in about 0.2 s with a warm cache
LOG_MAX_BYTES = 8 << 20  # the log is moved to .1 past this, so it never grows unbounded
POLL_INTERVAL = 0.01  # seconds between looks at the socket while the daemon starts

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


def start_if_configured(
    socket_path: str, shims_dir: str, error: OSError, say: "Callable[[str], None]"
) -> bool:
    """The shim's one call after connecting failed with `error`: start the daemon if
    autostart is on and starting one could help; True when it now listens."""
    if error.errno not in (errno.ENOENT, errno.ECONNREFUSED):
        return False  # e.g. EACCES: a daemon we start would not be reachable either
    if os.environ.get("DBGUARD_AUTOSTART") == "0":
        return False
    settings = read_settings(shims_dir)
    if settings is None:
        return False
    argv, timeout = settings
    say(f"dbguardd is not running; starting it ({argv[0]})")
    return ensure_daemon(socket_path, argv, timeout, say=say)


def default_log_path() -> str:
    """$XDG_STATE_HOME/dbguard/dbguardd.log; the same rule as dbguard.paths.state_dir."""
    state = os.environ.get("XDG_STATE_HOME", "")
    if not state.startswith("/"):
        state = os.path.join(os.environ.get("HOME") or os.path.expanduser("~"), ".local/state")
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


def daemon_env(socket_path: str, base: "dict[str, str] | None" = None) -> "dict[str, str]":
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
    env: "dict[str, str] | None" = None,
    say: "Callable[[str], None] | None" = None,
) -> bool:
    """Make sure dbguardd listens on `socket_path`, starting `daemon_argv` if nothing does.

    Returns True once the socket accepts connections, False when it does not within
    `timeout` seconds (counting any wait for another caller's start), when the daemon
    exits during start-up, or when it cannot be started at all; `say` gets one line
    saying which. The daemon runs detached: its own session, cwd /, stdin /dev/null,
    stdout and stderr appended to `log_path` (default: default_log_path()), and it is
    not our child, so nothing we exec later inherits it.
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
            tell(f"another shim is starting dbguardd and it was not ready within {timeout:g} s")
            return False
        if listening(socket_path):
            return True  # started by whoever held the lock before us
        pid = _spawn(daemon_argv, log, daemon_env(socket_path, env), tell)
        if pid is None:
            return False
        return _wait_ready(socket_path, pid, deadline, timeout, log, tell)
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


def _spawn(
    argv: "list[str]", log: str, env: "dict[str, str]", tell: "Callable[[str], None]"
) -> "int | None":
    """Start the daemon through a short-lived intermediate process, so it is adopted by
    init (or the nearest subreaper) instead of staying our child; return its pid."""
    try:
        os.makedirs(os.path.dirname(log), 0o700, exist_ok=True)
    except OSError as err:
        tell(f"cannot create the folder of {log}: {err.strerror}")
        return None
    _rotate(log)
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
        tell(f"cannot start {argv[0]}: {text.lstrip('!') or 'the starter died'}")
        return None
    return int(text)


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
    tell: "Callable[[str], None]",
) -> bool:
    while True:
        if listening(socket_path):
            return True
        if not alive(pid):
            # It may have lost a race to a daemon started by hand; that one counts too.
            if listening(socket_path):
                return True
            tell(f"dbguardd (pid {pid}) exited while starting; its log is {log}")
            return False
        if time.monotonic() >= deadline:
            tell(f"dbguardd (pid {pid}) was not ready within {timeout:g} s; its log is {log}")
            return False
        time.sleep(POLL_INTERVAL)

"""The dbguard shim client: one stdlib-only file that a shim imports and runs as
`shim.run(["-c", NAME, SHIMS_DIR, *ARGS])`.

A shim (a three-line Python script named like the command it guards, run by the
interpreter on its #! line; see dbguard/shims.py) passes its own name and folder. The
client finds the real command on PATH outside that folder, asks dbguardd over its
Unix socket, and then:

    pass   exec the real command at once (not a database operation)
    allow  run it, forward signals, report how it ended, exit with its status
    deny   do not run it; exit 77            (policy said no)
    fail   do not run it; exit 75            (the backup failed)
    no daemon: do not run it; exit 69

It imports only modules built into the interpreter (_socket, _json, _signal, posix,
time), so it starts in the time of a bare `python -IS` (tests/unit/test_shim_client.py
keeps it that way). It owns no policy: every decision comes from the daemon.
"""

import _json
import _signal  # type: ignore[import-not-found]
import _socket
import os
import sys
import time

TYPE_CHECKING = False  # typing itself would cost start-up time; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
MAX_DEPTH = 8  # nested guarded commands (npm run test -> php artisan test -> ...)
REPORT_TIMEOUT = 5.0  # seconds to wait for the daemon to acknowledge a report
# Seconds of silence after which a daemon counts as stopped (SIGSTOP) or stuck: while
# it decides or backs up it sends a message every 0.5 s. DBGUARD_SILENCE_TIMEOUT sets it.
SILENCE_TIMEOUT = 20.0
EXIT_NOT_FOUND = 127
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_TEMPFAIL = 75
EXIT_PROTOCOL = 76
EXIT_NOPERM = 77
PARENT_BACKUPS_ENV = "DBGUARD_PARENT_BACKUPS"  # ids the enclosing guarded command names
SI_KERNEL = 0x80  # si_code of signals the kernel sent (terminal ^C, hangup, resize)
SHIM_MARKER = b"# dbguard shim"  # in the first line of every shim (dbguard/shims.py)
LOGIN_RUNTIME_DIR = "/run/user/{uid}"  # as dbguard.paths

# Signals the child gets from us only when someone sent them to us by pid; terminal
# signals already reach the child, which shares our process group.
FORWARDED = (
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
    _signal.SIGWINCH,
    _signal.SIGALRM,
)
# Python ignores these at start-up; an exec'd command must not inherit that.
RESET_TO_DEFAULT = (_signal.SIGPIPE, _signal.SIGXFSZ)

_encode = _json.make_encoder(
    None,
    None,  # type: ignore[arg-type]
    _json.encode_basestring_ascii,
    None,
    ":",
    ",",
    False,
    False,
    False,
)


class _DecodeContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None
    memo: dict[str, object] = {}  # noqa: RUF012 (what the C scanner expects)


_scan = _json.make_scanner(_DecodeContext())  # type: ignore[arg-type]


def say(text: str) -> None:
    try:
        os.write(2, ("dbguard: " + text + "\n").encode("utf-8", "surrogateescape"))
    except OSError:
        pass  # stderr closed (`2>&-`) or full: the exit status still says what happened


def socket_path() -> str:
    """The daemon's socket; the same rule as dbguard.paths.default_socket."""
    explicit = os.environ.get("DBGUARD_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        return runtime + "/dbguard/dbguard.sock"
    login = LOGIN_RUNTIME_DIR.format(uid=os.getuid())
    try:
        if os.stat(login).st_uid == os.getuid():
            return login + "/dbguard/dbguard.sock"
    except OSError:
        pass
    return f"/tmp/dbguard-{os.getuid()}/dbguard.sock"  # noqa: S108 (checked by the daemon)


def silence_timeout() -> float:
    try:
        seconds = float(os.environ.get("DBGUARD_SILENCE_TIMEOUT", SILENCE_TIMEOUT))
    except ValueError:
        return SILENCE_TIMEOUT
    return seconds if 0 < seconds < 1e6 else SILENCE_TIMEOUT


def is_shim(path: str) -> bool:
    """Whether `path` is a dbguard shim (of any shims folder): its first bytes say so."""
    try:
        # Not blocking: a FIFO found by that name reads as nothing, at once.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return SHIM_MARKER in os.read(fd, 256)
    except OSError:
        return False
    finally:
        os.close(fd)


def find_real(name: str, shims_dir: str) -> str | None:
    """The first `name` on PATH that is not in the shims folder and is not a shim: a
    second shims folder (another install, another user's) must not bounce between the
    two until the depth limit."""
    shims_real = os.path.realpath(shims_dir)
    own = os.path.realpath(os.path.join(shims_dir, name))
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or os.path.realpath(folder) == shims_real:
            continue
        candidate = os.path.join(folder, name)
        if not os.path.isfile(candidate) or not os.access(candidate, os.X_OK):
            continue
        resolved = os.path.realpath(candidate)
        if resolved == own or os.path.dirname(resolved) == shims_real or is_shim(resolved):
            continue
        return candidate
    return None


class Connection:
    def __init__(self, path: str) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, message: "dict[str, Any]") -> None:
        self.sock.sendall("".join(_encode(message, 0)).encode("ascii") + b"\n")

    def receive(self) -> "dict[str, Any] | None":
        """The next message, or None when the daemon closed the connection."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message, _ = _scan(line.decode("utf-8"), 0)
        return message if isinstance(message, dict) else {"type": "unreadable"}

    def close(self) -> None:
        self.sock.close()


class Unreachable(Exception):
    """No daemon to ask: `problem` says why, `fix` what to do ("" when said already)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def connect(path: str, shims_dir: str) -> Connection:
    """Connect to the daemon, starting it first when nothing listens and `dbguardctl
    install` turned autostart on (no systemd to start it); Unreachable when neither
    works."""
    try:
        return Connection(path)
    except OSError as err:
        # Loaded only here: the usual path never pays for it. It sits beside this file,
        # on sys.path through the shim's bootstrap.
        import autostart  # type: ignore[import-not-found]

        if not autostart.start_if_configured(path, shims_dir, err, say):
            problem, fix = autostart.advise(path, shims_dir, err, after_start=True)
            raise Unreachable(problem, fix) from None
    try:
        return Connection(path)
    except OSError as err:  # it listened a moment ago: gone again, or stopping
        import autostart

        raise Unreachable(*autostart.advise(path, shims_dir, err)) from None


class ProgressLine:
    """One updating line on stderr while a backup runs, only on a terminal."""

    def __init__(self) -> None:
        self.enabled = os.isatty(2)
        self.shown = False

    def update(self, message: "dict[str, Any]") -> None:
        if not self.enabled:
            return
        megabytes = message.get("bytes", 0) / 1e6
        database = message.get("database", "?")
        elapsed = message.get("elapsed", 0.0)
        text = f"dbguard: backing up {database}: {megabytes:.1f} MB, {elapsed:.1f} s"
        os.write(2, ("\r\x1b[2K" + text).encode("utf-8", "replace"))
        self.shown = True

    def waiting(self, message: "dict[str, Any]") -> None:
        """The daemon waits before it can decide (a restore of a database the command
        uses): long enough that a person wonders why nothing happens."""
        if not self.enabled:
            return
        elapsed = message.get("elapsed", 0.0)
        text = f"dbguard: waiting for {message.get('waiting', '?')} to end: {elapsed:.1f} s"
        os.write(2, ("\r\x1b[2K" + text).encode("utf-8", "replace"))
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            os.write(2, b"\r\x1b[2K")
            self.shown = False


# ---- the messages this client sends (tests/unit/test_shim_client.py checks them against
# the daemon's pydantic models in dbguard.protocol) ------------------------------------


def invoke_message(command: list[str], real: str, cwd: str) -> "dict[str, Any]":
    return {
        "type": "invoke",
        "v": PROTOCOL_VERSION,
        "argv": command,
        "cwd": cwd,
        "env": dict(os.environ),
        "tty": os.isatty(0),
        "pid": os.getpid(),
        "parent": os.environ.get("DBGUARD_PARENT_OP") or None,
        "executable": real,
    }


def started_message(op: str, pid: int) -> "dict[str, Any]":
    return {"type": "started", "v": PROTOCOL_VERSION, "op": op, "pid": pid}


def report_message(
    op: str, exit_code: int | None, signal: int | None, duration_ms: int
) -> "dict[str, Any]":
    return {
        "type": "report",
        "v": PROTOCOL_VERSION,
        "op": op,
        "exit": exit_code,
        "signal": signal,
        "duration_ms": duration_ms,
    }


def answer_message(code: str, text: str) -> "dict[str, Any]":
    return {"type": "answer", "v": PROTOCOL_VERSION, "code": code, "text": text}


def ask_terminal(question: str) -> str | None:
    """Ask on the terminal itself (/dev/tty, never stdin: a pipe cannot answer)."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        os.write(tty, question.encode("utf-8", "replace"))
        typed = b""
        while not typed.endswith(b"\n"):
            chunk = os.read(tty, 1024)
            if not chunk:  # ^D: end the prompt's line, so what follows starts its own
                os.write(tty, b"\n")
                break
            typed += chunk
        return typed.decode("utf-8", "replace").strip()
    finally:
        os.close(tty)


def reset_signals_for_exec() -> None:
    for sig in RESET_TO_DEFAULT:
        _signal.signal(sig, _signal.SIG_DFL)


def describe_backups(backups: list[dict[str, str]]) -> str:
    return ", ".join(f"{b['id']} ({b['database']})" for b in backups)


def run_allowed(
    conn: Connection,
    op: str,
    argv: list[str],
    env: dict[str, str],
    backups: list[dict[str, str]],
) -> tuple[int | None, int | None]:
    """Run the approved command (argv[0] the program's path), forward signals, report,
    and return how it ended."""
    real = argv[0]
    watched = (*FORWARDED, _signal.SIGCHLD)
    old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, watched)
    started = time.monotonic()
    try:
        pid = os.posix_spawn(real, argv, env, setsigmask=old_mask, setsigdef=RESET_TO_DEFAULT)
    except OSError as err:
        say(f"cannot run {real}: {err.strerror}")
        try:
            conn.send(report_message(op, 126, None, 0))
        except OSError:
            pass  # the daemon went away: its log lacks the outcome, the exit status says it
        return 126, None
    try:
        conn.send(started_message(op, pid))
    except OSError:
        pass  # the daemon went away; the command runs regardless
    while True:
        info = _signal.sigwaitinfo(watched)
        if info.si_signo == _signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                break
        elif info.si_code != SI_KERNEL and info.si_pid != pid:
            try:
                os.kill(pid, info.si_signo)
            except ProcessLookupError:
                pass
    duration_ms = int((time.monotonic() - started) * 1000)
    code = os.waitstatus_to_exitcode(status)
    exit_code, signal = (code, None) if code >= 0 else (None, -code)
    try:
        conn.send(report_message(op, exit_code, signal, duration_ms))
        # Wait for the daemon to log it, so whoever reads the log after us sees it.
        conn.sock.settimeout(REPORT_TIMEOUT)
        conn.receive()
    except (OSError, ValueError):
        say("could not report the outcome to dbguardd (it is no longer running)")
    told = set(os.environ.get(PARENT_BACKUPS_ENV, "").split(","))
    backups = [b for b in backups if b["id"] not in told]
    if exit_code != 0 and backups:
        ended = f"exit {exit_code}" if signal is None else f"signal {signal}"
        name = os.path.basename(real)
        # It may have failed before changing anything (a missing package, a typo), so
        # this is where the data as it was is, not an instruction to restore.
        say(f"{name} ended with {ended}. If it changed data, the state before it is in:")
        for backup in backups:
            earlier = " (an earlier backup: no change since)" if backup.get("reused") else ""
            say(f"  {backup['id']} ({backup['database']}){earlier}")
            say(f"  to undo: dbguardctl restore {backup['id']}")
    return exit_code, signal


def broke(name: str, path: str, err: OSError) -> int:
    """The connection to the daemon broke before it decided: nothing was run."""
    say(
        f"{name} was not run: the connection to dbguardd at {path} broke "
        f"({err.strerror or err}); run the command again"
    )
    return EXIT_UNAVAILABLE


def die_like(signal: int) -> None:
    """Exit the way the child did: by the same signal, so callers see the truth."""
    sys.stdout.flush()
    if signal not in (_signal.SIGKILL, _signal.SIGSTOP):  # (these cannot be caught)
        _signal.signal(signal, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, (signal,))
    os.kill(os.getpid(), signal)
    os._exit(128 + signal)  # a signal whose default action is not to terminate


def main(argv: list[str]) -> int | None:
    if len(argv) < 3:
        say("usage: shim.py NAME SHIMS_DIR [ARGS...] (run through a shim, not by hand)")
        # argv[0] is the script, or "-c" when a shim imports this module
        return EXIT_SOFTWARE
    name, shims_dir, args = argv[1], argv[2], argv[3:]
    try:
        depth = int(os.environ.get("DBGUARD_DEPTH", "0"))
    except ValueError:
        depth = 0
    if depth >= MAX_DEPTH:
        say(
            f"{name}: {depth} guarded commands deep; refusing to recurse (is the shims "
            f"folder {shims_dir} also the real command's folder?)"
        )
        return EXIT_SOFTWARE
    try:
        cwd = os.getcwd()  # before find_real, which resolves relative PATH entries with it
    except OSError as err:
        say(f"{name} was not run: the current folder is gone ({err.strerror}).")
        say("cd into the project's folder (it may have been deleted and made again)")
        return EXIT_SOFTWARE
    real = find_real(name, shims_dir)
    if real is None:
        say(f"{name}: command not found on PATH (outside {shims_dir})")
        return EXIT_NOT_FOUND
    command = [name, *args]
    # The program gets its own path as argv[0], as when typed with a path: a bare name
    # makes Python look itself up on PATH, find the shim first, and lose its virtualenv.
    runs = [real, *args]
    child_env = dict(os.environ)
    child_env["DBGUARD_DEPTH"] = str(depth + 1)

    path = socket_path()
    try:
        conn = connect(path, shims_dir)
        conn.send(invoke_message(command, real, cwd))
    except Unreachable as err:
        say(f"{name} was not run: {err.problem}.")
        if err.fix:
            say(err.fix)
        return EXIT_UNAVAILABLE
    except OSError as err:
        return broke(name, path, err)

    progress = ProgressLine()
    silence = silence_timeout()
    conn.sock.settimeout(silence)
    while True:
        try:
            reply = conn.receive()
        except TimeoutError:
            progress.clear()
            say(
                f"{name} was not run: dbguardd at {path} has sent nothing for {silence:g} s "
                "(it is stopped or stuck)."
            )
            say("`dbguardctl status` shows whether it answers; restart it, then run the command")
            return EXIT_UNAVAILABLE
        except OSError as err:  # reset: dbguardd was killed or restarted meanwhile
            progress.clear()
            return broke(name, path, err)
        except ValueError as err:
            reply = {"type": "error", "message": f"unreadable reply from dbguardd: {err}"}
        if reply is None:
            progress.clear()
            say(
                f"{name} was not run: dbguardd closed the connection before deciding "
                "(it may be stopping); run the command again"
            )
            return EXIT_UNAVAILABLE
        kind = reply.get("type")
        if kind == "working":
            if reply.get("waiting"):
                progress.waiting(reply)
            continue  # the daemon is alive and still deciding
        if kind != "progress":
            progress.clear()
        if kind == "progress":
            progress.update(reply)
        elif kind == "confirm":
            typed = ask_terminal(reply["question"])
            try:
                conn.send(answer_message(reply["code"], typed or ""))
            except OSError as err:  # it stopped while the person read the question
                return broke(name, path, err)
        elif kind == "pass":
            conn.close()
            child_env.update(reply.get("env", {}))
            reset_signals_for_exec()
            try:
                os.execve(real, runs, child_env)  # noqa: S606
            except OSError as err:
                say(f"cannot run {real}: {err.strerror}")
                return 126
        elif kind == "allow":
            child_env.update(reply.get("env", {}))
            child_env["DBGUARD_PARENT_OP"] = reply["op"]
            # A nested guarded command that fails leaves the undo lines of backups this
            # shim names itself when the whole command fails: once, from the outermost.
            ours = [b["id"] for b in reply.get("backups", [])]
            told = os.environ.get(PARENT_BACKUPS_ENV, "")
            child_env[PARENT_BACKUPS_ENV] = ",".join(filter(None, [told, *ours]))
            for note in reply.get("notes", []):
                say(note)
            fresh = [b for b in reply.get("backups", []) if not b.get("reused")]
            if fresh and os.isatty(2):
                say("backed up " + describe_backups(fresh))
            exit_code, signal = run_allowed(
                conn, reply["op"], runs, child_env, reply.get("backups", [])
            )
            conn.close()
            if signal is not None:
                die_like(signal)
            return exit_code
        elif kind in ("deny", "fail"):
            what = "refused" if kind == "deny" else "could not back up"
            say(f"{name} was not run: dbguard {what}.")
            say(reply.get("reason", ""))
            if reply.get("hint"):
                say(reply["hint"])
            return EXIT_NOPERM if kind == "deny" else EXIT_TEMPFAIL
        else:
            say(f"{name} was not run: {reply.get('message', f'unexpected reply {kind!r}')}")
            return EXIT_SOFTWARE if reply.get("internal") else EXIT_PROTOCOL


def run(argv: list[str]) -> None:
    """main, then exit at once: by then the socket is closed and the child reaped, and
    the interpreter's own clean-up would cost about 3 ms (measured: `python -IS`
    importing this module and exiting normally, against os._exit), a quarter of what a
    guarded command that reuses a backup costs over a bare interpreter start."""
    try:
        code = main(argv)
    except KeyboardInterrupt:  # ^C while the daemon backs up (signals pass on later)
        name = argv[1] if len(argv) > 1 else "the command"
        say(f"interrupted: {name} was not run")
        die_like(_signal.SIGINT)  # so that a calling shell loop stops too
        code = 130
    for stream in (sys.stdout, sys.stderr):  # None when started with that fd closed
        try:
            if stream is not None:
                stream.flush()
        except OSError:
            pass
    os._exit(0 if code is None else code)


if __name__ == "__main__":
    run(sys.argv)

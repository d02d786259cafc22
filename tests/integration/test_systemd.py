"""systemd for real, and the daemon's start without it.

Socket activation runs under systemd-socket-activate, which binds the socket, waits for
the first connection and execs the command with LISTEN_FDS/LISTEN_PID exactly as
systemd does. sd_notify is checked with a datagram socket the test listens on.
Auto-start runs the shim's stdlib-only module in `python -IS`, the way a shim does,
and starts a real dbguardd.

Tests marked `needs_daemon_wiring` run once daemon/main.py and server.py use
dbguard.daemon.systemd (until then they are skipped, saying so); `needs_shim_wiring`
once client/shim.py calls autostart.start_if_configured.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dbguard.client import autostart
from dbguard.client import shim as shim_client
from dbguard.ctl import install
from dbguard.daemon import systemd
from tests.helpers import Home, install_stand_in, laravel_sqlite_project

ACTIVATE = shutil.which("systemd-socket-activate")
ANALYZE = shutil.which("systemd-analyze")
CLIENT_DIR = Path(shim_client.__file__).resolve().parent
DEADLINE = 20.0  # seconds for anything that should take well under one

needs_activate = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate is not installed (Debian: systemd)"
)


def _daemon_wired() -> bool:
    """Whether the daemon uses dbguard.daemon.systemd (asked of a fresh interpreter:
    this module imports it itself)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, dbguard.daemon.main as m; print(m.systemd.__name__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() == "dbguard.daemon.systemd"


needs_daemon_wiring = pytest.mark.skipif(
    not _daemon_wired(),
    reason="waits on daemon/main.py and server.py using dbguard.daemon.systemd",
)
needs_shim_wiring = pytest.mark.skipif(
    "start_if_configured" not in Path(shim_client.__file__).read_text(),
    reason="waits on client/shim.py calling autostart.start_if_configured",
)


# ---- helpers ------------------------------------------------------------------------


def poll(condition: object, what: str, timeout: float = DEADLINE) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.01)


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE)
    sock.connect(str(path))
    return sock


def status(path: Path) -> dict[str, object]:
    with connect(path) as sock:
        sock.sendall(b'{"type":"status","v":1}\n')
        reply = sock.makefile("rb").readline()
    data = json.loads(reply)
    assert isinstance(data, dict)
    return data


class Notifications:
    """A NOTIFY_SOCKET to listen on, as systemd's manager does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(DEADLINE)

    def next(self) -> list[str]:
        return self.sock.recv(65536).decode().split("\n")

    def until(self, state: str) -> list[list[str]]:
        """Every message up to and including the one holding `state`."""
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if state in message:
                return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications(home: Home) -> Iterator[Notifications]:
    listener = Notifications(home.runtime / "notify")
    yield listener
    listener.close()


def activate(
    home: Home,
    command: list[str],
    *,
    extra: dict[str, str] | None = None,
    datagram: bool = False,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Run `command` under systemd-socket-activate listening on the home's socket.

    systemd-socket-activate passes only PATH, HOME, TERM and USER on; everything else
    the daemon needs goes through -E, as a unit's Environment= would.
    """
    assert ACTIVATE is not None
    home.socket.parent.mkdir(mode=0o700, exist_ok=True)
    env = {**home.env, **(extra or {})}
    argv = [ACTIVATE, "-l", str(home.socket)]
    if datagram:
        argv.append("--datagram")
    for key in env:
        if key.startswith(("XDG_", "DBGUARD_", "NOTIFY_SOCKET", "JOURNAL_STREAM")):
            argv += ["-E", key]
    stderr = (log or home.root / "activate.log").open("ab")
    process = subprocess.Popen([*argv, "--", *command], env=env, stderr=stderr)
    stderr.close()
    poll(home.socket.exists, "systemd-socket-activate did not bind the socket")
    return process


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=DEADLINE)


DAEMON = [sys.executable, "-m", "dbguard.daemon.main"]


# ---- the unit files -----------------------------------------------------------------


def rendered(tmp_path: Path, socket_spec: str = install.DEFAULT_SOCKET_SPEC) -> Path:
    folder = tmp_path / "units"
    folder.mkdir()
    for name, text in install.render_units(socket_spec, install.daemon_argv(None)).items():
        (folder / name).write_text(text)
    return folder


def verify(folder: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    runtime = tmp_path / "verify-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(
        [ANALYZE, "--user", "verify", *(str(folder / name) for name in install.UNITS)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")
@pytest.mark.parametrize(
    "socket_spec", [install.DEFAULT_SOCKET_SPEC, "/tmp/dbguard test 100%%/dbguard.sock"]
)
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path, socket_spec: str) -> None:
    result = verify(rendered(tmp_path, socket_spec), tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "systemd-analyze warned about the units"


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")
def test_systemd_analyze_does_catch_a_bad_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt option is reported."""
    folder = rendered(tmp_path)
    service = folder / "dbguard.service"
    service.write_text(service.read_text().replace("NoNewPrivileges", "NoNewPrivilege"))

    assert "NoNewPrivilege" in verify(folder, tmp_path).stderr


def test_units_carry_this_installation_and_the_required_settings(tmp_path: Path) -> None:
    units = install.render_units(install.DEFAULT_SOCKET_SPEC, install.daemon_argv(None))
    sock, service = units["dbguard.socket"], units["dbguard.service"]

    assert "ListenStream=%t/dbguard/dbguard.sock\n" in sock
    for line in ("SocketMode=0600", "DirectoryMode=0700", "WantedBy=sockets.target"):
        assert f"\n{line}\n" in sock
    exec_start = re.search(r"^ExecStart=(.*)$", service, re.M)
    assert exec_start is not None
    program = exec_start.group(1).split()[0]
    assert Path(program).is_absolute() and os.access(program, os.X_OK)
    for line in (
        "Type=notify",
        "ExecReload=kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "LockPersonality=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "SystemCallArchitectures=native",
        "UMask=0077",
        'Environment="DBGUARD_SOCKET=%t/dbguard/dbguard.sock"',
    ):
        assert f"\n{line}\n" in service
    # The daemon must see the projects, the databases' sockets in /tmp, and $HOME.
    for option in ("ProtectHome", "PrivateTmp", "ProtectSystem", "PrivateNetwork"):
        assert f"\n{option}=" not in service
    assert "@" not in re.sub(r"(?m)^#.*$", "", sock + service).replace("@system-service", "")


def test_units_escape_a_configured_socket_path() -> None:
    units = install.render_units("/run/a b%%c/x.sock", ["/opt/d b/dbguardd", "--config", "/x$y"])

    assert "ListenStream=/run/a b%%c/x.sock\n" in units["dbguard.socket"]
    assert 'ExecStart="/opt/d b/dbguardd" --config /x$$y\n' in units["dbguard.service"]


# ---- systemd.py: socket activation --------------------------------------------------

CHILD = """
import json, os, sys
from dbguard.daemon import systemd
sock = systemd.activated_socket()
conn, _ = sock.accept()
conn.sendall(json.dumps({
    "name": sock.getsockname(),
    "family": sock.family.name,
    "type": sock.type.name,
    "fd": sock.fileno(),
    "inheritable": os.get_inheritable(sock.fileno()),
    "left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}).encode())
conn.close()
"""


@needs_activate
def test_activated_socket_is_the_one_systemd_passes(home: Home) -> None:
    process = activate(home, [sys.executable, "-c", CHILD])
    try:
        with connect(home.socket) as sock:  # the first connection makes it exec the child
            seen = json.loads(sock.makefile("rb").read())
    finally:
        stop(process)

    assert seen == {
        "name": str(home.socket),
        "family": "AF_UNIX",
        "type": "SOCK_STREAM",
        "fd": 3,
        "inheritable": False,  # dump tools the daemon spawns must not hold it
        "left": [],  # and must not think they were activated
    }


@needs_activate
def test_a_datagram_socket_is_refused(home: Home) -> None:
    child = (
        "import sys\n"
        "from dbguard.daemon import systemd\n"
        "try:\n"
        "    systemd.activated_socket()\n"
        "    result = 'accepted'\n"
        "except systemd.ActivationError as err:\n"
        "    result = str(err)\n"
        "open(sys.argv[1], 'w').write(result)\n"
    )
    out = home.root / "child.out"
    process = activate(home, [sys.executable, "-c", child, str(out)], datagram=True)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"wake up", str(home.socket))  # makes it exec the child
        process.wait(timeout=DEADLINE)
    finally:
        stop(process)

    assert "not a stream socket" in out.read_text()


def test_without_variables_there_is_no_activated_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)

    assert systemd.activated_socket() is None


def test_variables_meant_for_another_process_are_ignored_and_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "dbguard.socket")

    assert systemd.activated_socket() is None
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)


def test_more_than_one_passed_socket_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "2")

    with pytest.raises(systemd.ActivationError, match="exactly one"):
        systemd.activated_socket()


# ---- systemd.py: sd_notify and the journal ------------------------------------------


def test_notify_sends_one_datagram_with_all_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = Notifications(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    try:
        assert systemd.notify("READY=1", "STATUS=serving")
        assert listener.next() == ["READY=1", "STATUS=serving"]
    finally:
        listener.close()


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"dbguard-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(DEADLINE)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        assert systemd.notify("STOPPING=1")
        assert listener.recv(1024) == b"STOPPING=1"


def test_notify_without_a_manager_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert systemd.notify("READY=1") is False  # a vanished manager never crashes the daemon


def test_reloading_carries_the_monotonic_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = Notifications(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    try:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert systemd.notify_reloading()
        states = dict(s.split("=", 1) for s in listener.next())
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    finally:
        listener.close()

    assert states["RELOADING"] == "1"
    assert before <= int(states["MONOTONIC_USEC"]) <= after


@pytest.mark.parametrize("matching", [True, False])
def test_under_journal_only_when_stderr_is_the_named_stream(tmp_path: Path, matching: bool) -> None:
    stderr_file, other = tmp_path / "stderr", tmp_path / "other"
    stderr_file.touch()
    other.touch()
    named = (stderr_file if matching else other).stat()
    with stderr_file.open("wb") as stderr:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from dbguard.daemon import systemd as s; print(s.under_journal())",
            ],
            env={**os.environ, "JOURNAL_STREAM": f"{named.st_dev}:{named.st_ino}"},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            check=True,
        )

    assert result.stdout.strip() == str(matching)


# ---- the daemon under socket activation (needs the wiring) --------------------------


@needs_activate
@needs_daemon_wiring
def test_daemon_serves_on_the_passed_socket_and_leaves_it_to_systemd(
    home: Home, notifications: Notifications
) -> None:
    process = activate(home, DAEMON, extra={"NOTIFY_SOCKET": str(notifications.path)})
    inode = home.socket.stat().st_ino
    try:
        reply = status(home.socket)  # the first connection starts the daemon
        ready = notifications.until("READY=1")
    finally:
        code = stop(process)
    stopping = notifications.until("STOPPING=1")

    assert reply["type"] == "status"
    assert reply["socket"] == str(home.socket)
    assert reply["pid"] == process.pid  # systemd-socket-activate execs: same process
    assert any(state.startswith("STATUS=serving") for state in ready[-1])
    assert stopping[-1][0] == "STOPPING=1"
    assert code == 0
    # The socket is systemd's: still there, the same file, after the daemon stopped.
    assert home.socket.is_socket()
    assert home.socket.stat().st_ino == inode


@needs_activate
@needs_daemon_wiring
def test_reload_notifies_and_a_bad_config_leaves_the_daemon_serving(
    home: Home, notifications: Notifications
) -> None:
    log = home.root / "daemon.log"
    process = activate(home, DAEMON, extra={"NOTIFY_SOCKET": str(notifications.path)}, log=log)
    try:
        status(home.socket)
        notifications.until("READY=1")
        config = home.root / "config" / "dbguard" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text("[backup]\ncompression_level = 99\n")

        process.send_signal(signal.SIGHUP)
        messages = notifications.until("READY=1")
        poll(lambda: "compression_level" in log.read_text(), "the rejection was not logged")
        still = status(home.socket)
    finally:
        stop(process)

    reloading = dict(s.split("=", 1) for s in messages[0])
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert still["pid"] == process.pid


@needs_daemon_wiring
def test_daemon_logs_readable_lines_with_priorities_to_the_journal(home: Home) -> None:
    log = home.root / "journal.log"
    log.touch()
    stream = f"{log.stat().st_dev}:{log.stat().st_ino}"
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            DAEMON, env={**home.env, "JOURNAL_STREAM": stream}, stderr=stderr, cwd=home.root
        )
    try:
        poll(lambda: autostart.listening(str(home.socket)), "the daemon did not listen")
    finally:
        stop(process)

    lines = log.read_text().splitlines()
    ready = next(line for line in lines if "dbguardd ready" in line)
    assert ready.startswith("<6>")  # info, which journald stores as the priority
    assert not ready[3:].lstrip().startswith("{")  # not JSON


@needs_daemon_wiring
def test_a_stop_as_soon_as_the_socket_answers_stops_the_daemon_in_order(home: Home) -> None:
    # What a service manager or a script does; the handlers are in place before listening.
    log = home.root / "daemon.log"
    with log.open("ab") as stderr:
        process = subprocess.Popen(DAEMON, env=home.env, stderr=stderr, cwd=home.root)
    try:
        poll(lambda: autostart.listening(str(home.socket)), "the daemon did not listen")
    finally:
        code = stop(process)

    assert code == 0, log.read_text()
    assert "dbguardd stopped" in log.read_text()
    assert not home.socket.exists()


@needs_activate
@needs_daemon_wiring
def test_a_daemon_started_by_hand_does_not_take_the_socket_from_systemd(home: Home) -> None:
    process = activate(home, ["/bin/sleep", "60"])  # systemd listening, service not started
    inode = home.socket.stat().st_ino
    try:
        by_hand = home.run(DAEMON, cwd=home.root, timeout=DEADLINE)
    finally:
        stop(process)

    assert by_hand.returncode == 1
    assert b"something else listens" in by_hand.stderr
    assert home.socket.stat().st_ino == inode  # not unlinked and rebound


# ---- auto-start without systemd -----------------------------------------------------

CALLER = """
import json, sys, time
sys.path[:0] = [{client!r}]
import autostart
said = []
started = time.monotonic()
ok = autostart.ensure_daemon({socket!r}, {argv!r}, {timeout!r}, say=said.append)
print(json.dumps({{"ok": ok, "said": said, "seconds": time.monotonic() - started}}))
"""


def call_ensure(
    home: Home, argv: list[str], timeout: float = 10.0, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[str]:
    """ensure_daemon in a fresh `python -IS`, the way a shim runs it."""
    code = CALLER.format(
        client=str(CLIENT_DIR), socket=str(home.socket), argv=argv, timeout=timeout
    )
    return subprocess.Popen(
        [sys.executable, "-IS", "-c", code],
        env=home.env,
        cwd=home.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=pass_fds,
    )


@dataclass
class Outcome:
    ok: bool
    said: list[str]
    seconds: float


def outcome(caller: subprocess.Popen[str]) -> Outcome:
    out, err = caller.communicate(timeout=60)
    assert caller.returncode == 0, err
    return Outcome(**json.loads(out))


@pytest.fixture
def started_daemons(home: Home) -> Iterator[list[int]]:
    """Pids of daemons a test started through autostart; each is stopped afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if autostart.alive(pid):
            os.kill(pid, signal.SIGTERM)
            poll(lambda pid=pid: not autostart.alive(pid), f"dbguardd {pid} did not stop")


def proc_stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2 :].split()


def test_autostart_brings_up_a_detached_daemon(home: Home, started_daemons: list[int]) -> None:
    # The caller holds an extra descriptor, as `{ php -v 3>&1; } | cat` or make's
    # jobserver give it: the daemon must not keep it open, or the reader never ends.
    reader, writer = os.pipe()
    # The first caller's project credentials must not become every later backup's.
    home.extra_env.update(PGPASSWORD="project-a", MYSQL_PWD="a", DATABASE_URL="pg://a")
    try:
        caller = call_ensure(home, DAEMON, pass_fds=(writer,))
        result = outcome(caller)
        pipe = f"pipe:[{os.fstat(writer).st_ino}]"
    finally:
        os.close(writer)
    assert result.ok, result.said
    pid = int(str(status(home.socket)["pid"]))
    started_daemons.append(pid)
    try:
        held = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        assert pipe not in held
        assert os.read(reader, 1) == b""  # end of file: no writer is left anywhere
    finally:
        os.close(reader)

    fields = proc_stat(pid)
    assert int(fields[3]) == pid  # its own session: no terminal's ^C or hangup reaches it
    assert int(fields[1]) != caller.pid  # not the shim's child (the intermediate exited)
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"DBGUARD_SOCKET={home.socket}".encode() in environ
    names = {entry.split(b"=", 1)[0] for entry in environ}
    assert not names & {b"PGPASSWORD", b"MYSQL_PWD", b"DATABASE_URL"}
    log = home.root / "state" / "dbguard" / "dbguardd.log"
    assert "dbguardd ready" in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == oct(0o600)


def test_concurrent_callers_start_a_single_daemon(home: Home, started_daemons: list[int]) -> None:
    starts = home.root / "starts"
    wrapper = home.bin / "counting-dbguardd"
    wrapper.write_text(
        f"#!/bin/sh\necho $$ >> {starts}\nexec {sys.executable} -m dbguard.daemon.main\n"
    )
    wrapper.chmod(0o755)

    callers = [call_ensure(home, [str(wrapper)]) for _ in range(4)]
    results = [outcome(caller) for caller in callers]
    started_daemons.append(int(str(status(home.socket)["pid"])))

    assert [r.ok for r in results] == [True] * 4, [r.said for r in results]
    assert len(starts.read_text().split()) == 1
    log = (home.root / "state" / "dbguard" / "dbguardd.log").read_text()
    assert log.count("dbguardd ready") == 1
    assert "already serving" not in log


def test_autostart_fails_closed_when_the_daemon_dies_at_start(home: Home) -> None:
    dying = home.bin / "dying-dbguardd"
    dying.write_text("#!/bin/sh\necho 'dbguardd: config.toml: invalid' >&2\nexit 78\n")
    dying.chmod(0o755)

    result = outcome(call_ensure(home, [str(dying)], timeout=15))

    assert not result.ok
    assert result.seconds < 10  # told at once, not after the whole wait
    [said] = result.said
    assert "exited while starting" in said and "dbguardd.log" in said
    log = home.root / "state" / "dbguard" / "dbguardd.log"
    assert "config.toml: invalid" in log.read_text()


def test_autostart_gives_up_after_its_timeout(home: Home) -> None:
    result = outcome(call_ensure(home, ["/bin/sleep", "30"], timeout=0.5))

    assert not result.ok
    [said] = result.said
    assert "not ready within 0.5 s" in said
    running = re.search(r"pid (\d+)", said)
    assert running is not None
    os.kill(int(running.group(1)), signal.SIGKILL)


def test_autostart_reports_a_daemon_that_cannot_be_run(home: Home) -> None:
    result = outcome(call_ensure(home, ["/nonexistent/dbguardd"], timeout=5))

    assert not result.ok
    assert "cannot start /nonexistent/dbguardd" in " ".join(result.said)


def test_autostart_module_imports_only_built_ins() -> None:
    def imported(code: str) -> set[str]:
        result = subprocess.run(
            [sys.executable, "-IS", "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            check=True,
        )
        return {
            line.rsplit("|", 1)[1].strip()
            for line in result.stderr.splitlines()
            if line.startswith("import time:") and "|" in line
        } - {"imported package"}

    bootstrap = f"import sys; sys.path[:0] = [{str(CLIENT_DIR)!r}]"
    extra = imported(bootstrap + "; import autostart") - imported(bootstrap)
    # os and its helpers are frozen into the interpreter, _socket is what the shim client
    # loads anyway; anything else must be compiled into the interpreter.
    known = {"os", "posixpath", "genericpath", "stat", "_collections_abc", "_socket"}
    assert extra - known - set(sys.builtin_module_names) == {"autostart"}


def test_settings_written_by_install_are_read_back(tmp_path: Path) -> None:
    argv = ["/opt/dbguard/bin/dbguardd", "--config", "/home/u/my config.toml"]
    (tmp_path / autostart.SETTINGS_FILE).write_text(autostart.format_settings(argv, 2.5))

    assert autostart.read_settings(str(tmp_path)) == (argv, 2.5)
    (tmp_path / autostart.SETTINGS_FILE).write_text("argv=relative/dbguardd\n")
    assert autostart.read_settings(str(tmp_path)) is None
    assert autostart.read_settings(str(tmp_path / "missing")) is None


def test_autostart_is_skipped_when_turned_off_or_when_it_cannot_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "started"
    (tmp_path / autostart.SETTINGS_FILE).write_text(
        autostart.format_settings(["/bin/touch", str(marker)], 0.2)
    )
    said: list[str] = []
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    socket_path = str(tmp_path / "run" / "dbguard.sock")

    monkeypatch.setenv("DBGUARD_AUTOSTART", "0")
    assert not autostart.start_if_configured(socket_path, str(tmp_path), refused, said.append)
    monkeypatch.delenv("DBGUARD_AUTOSTART")
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert not autostart.start_if_configured(socket_path, str(tmp_path), denied, said.append)
    assert not marker.exists() and said == []


# ---- the shim with auto-start (needs the shim wiring) -------------------------------


@needs_shim_wiring
def test_a_guarded_command_starts_the_daemon_it_needs(
    home: Home, started_daemons: list[int]
) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    (home.shims / autostart.SETTINGS_FILE).write_text(autostart.format_settings(DAEMON, 10))
    project = laravel_sqlite_project(home.root / "app")

    off = home.run(
        ["php", "artisan", "migrate:status"], cwd=project, env={"DBGUARD_AUTOSTART": "0"}
    )
    assert off.returncode == 69, off.stderr

    started = time.monotonic()
    result = home.run(["php", "artisan", "migrate:status"], cwd=project)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    started_daemons.append(int(str(status(home.socket)["pid"])))
    assert b"starting it" in result.stderr
    assert elapsed < 10

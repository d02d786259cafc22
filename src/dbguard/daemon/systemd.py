"""Talking to systemd without libsystemd: socket activation, readiness, the journal.

The three protocols are small and documented as stable interfaces, so they are spoken
here directly instead of through a C library the daemon would need at run time:

    socket activation   sd_listen_fds(3): LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, fd 3
    readiness           sd_notify(3): datagrams such as READY=1 to $NOTIFY_SOCKET
    the journal         systemd.exec(5): JOURNAL_STREAM names stderr's device and inode

Every function is a no-op (or None/False) when systemd did not start the daemon, so the
daemon calls them unconditionally.
"""

from __future__ import annotations

import os
import socket
import time

from dbguard.errors import DbguardError

SD_LISTEN_FDS_START = 3  # the first passed descriptor, fixed by the protocol

# syslog priorities for log levels: journald reads a "<N>" line prefix as the priority,
# so `journalctl -p warning` and the colours in `journalctl` work (sd-daemon(3)).
PRIORITIES = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}


class ActivationError(DbguardError):
    """systemd passed descriptors the daemon cannot serve on; it must not start."""


def activated_socket() -> socket.socket | None:
    """The listening socket systemd passed us, or None when we were not socket-activated.

    Checks that the variables are meant for this process (LISTEN_PID), that exactly one
    descriptor was passed, and that it is a listening AF_UNIX stream socket bound to a
    path. The variables are removed from the environment either way (as libsystemd's
    sd_listen_fds(1) does), so the dump tools the daemon spawns do not see them.

    Raises ActivationError for descriptors that are passed to us but unusable: serving
    on the wrong kind of socket, or ignoring it and binding our own, would leave the
    shims talking to a socket nobody answers.
    """
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    names = os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return None
    try:
        if int(pid) != os.getpid():
            return None  # inherited from a parent that was activated, not meant for us
        n = int(count)
    except ValueError:
        raise ActivationError(f"LISTEN_PID={pid!r} LISTEN_FDS={count!r} are not numbers") from None
    if n == 0:
        return None
    if n != 1:
        raise ActivationError(
            f"systemd passed {n} sockets ({names or 'unnamed'}); dbguardd serves exactly one",
            "give dbguard.socket a single ListenStream= line",
        )
    fd = SD_LISTEN_FDS_START
    try:
        # systemd leaves the descriptor inheritable; nothing we spawn may hold it open.
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    except OSError as err:
        raise ActivationError(f"descriptor {fd} from systemd is not a socket: {err}") from None
    problem = _unusable(sock)
    if problem:
        sock.detach()  # leave the descriptor to systemd; closing it is not ours to do
        raise ActivationError(
            f"the socket systemd passed is {problem}",
            "dbguard.socket must use ListenStream= with a file path",
        )
    return sock


def _unusable(sock: socket.socket) -> str:
    if sock.family != socket.AF_UNIX:
        return f"not a Unix socket ({sock.family.name})"
    if sock.type != socket.SOCK_STREAM:
        return f"not a stream socket ({sock.type.name})"
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return "not listening"
    name = sock.getsockname()
    if not isinstance(name, str) or not name.startswith("/"):
        return f"not bound to a file path ({name!r})"
    return ""


def _notify_address(value: str) -> str | None:
    if value.startswith("/"):
        return value
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace, written with a leading @
    return None  # vsock: and other transports: not needed for a user service


def notify(*states: str) -> bool:
    """Send sd_notify states (e.g. "READY=1", "STATUS=serving") to $NOTIFY_SOCKET.

    Returns whether a message was sent: False without NOTIFY_SOCKET (not started by
    systemd as Type=notify) or when sending failed. NOTIFY_SOCKET stays in the
    environment because the daemon notifies for its whole life; the children that
    inherit it are ignored by systemd (NotifyAccess=main in dbguard.service).
    """
    address = _notify_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None or not states:
        return False
    message = "\n".join(states).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError:
        return False
    return True


def notify_reloading(status: str = "reloading the config") -> bool:
    """RELOADING=1 with the timestamp that Type=notify-reload (systemd 253+) requires.

    The daemon sends READY=1 again when the reload is done, accepted or not.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")


def under_journal() -> bool:
    """Whether stderr goes straight to the journal (JOURNAL_STREAM matches fd 2).

    Checking the device and inode, not just the variable's presence, matters: a daemon
    started by hand from a shell that systemd launched inherits JOURNAL_STREAM while
    its stderr is a terminal or a file.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat(2)
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def priority_prefix(level: str) -> str:
    """The "<N>" prefix journald turns into the entry's priority (info when unknown)."""
    return f"<{PRIORITIES.get(level.lower(), 6)}>"

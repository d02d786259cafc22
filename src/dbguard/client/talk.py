"""dbguardctl's side of the socket: send one request, read replies until the final one."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel

from dbguard import paths
from dbguard.client import autostart
from dbguard.errors import DaemonNotAnswering, DaemonUnavailable
from dbguard.protocol import Progress, ProtocolError, Reply, Working, decode_reply, encode

__all__ = ["DaemonNotAnswering", "DaemonUnavailable", "holding", "request"]


def request(
    path: Path,
    message: BaseModel,
    on_progress: Callable[[Progress | Working], None] | None = None,
    timeout: float | None = 10.0,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    autostart_say: Callable[[str], None] | None = None,
) -> Reply:
    """Send `message`, return the first reply that is not progress (each is handed to
    `on_progress`). `timeout` is how long the daemon may stay silent (it sends progress
    while it works).

    With `autostart_say`, a daemon that is not running is started first, exactly as a
    shim starts it (the autostart settings in the default shims folder, the same
    DBGUARD_AUTOSTART=0 opt-out, the same messages, told through autostart_say). `env`
    (default: this process's) and `config_file` (dbguardctl's --config) are the
    caller's, for the daemon it starts or the way to start it that the error names."""
    env = os.environ if env is None else env
    sock = _connect(path, timeout)
    if isinstance(sock, OSError):
        shims_dir = str(paths.default_shims_dir(env))
        if autostart_say is not None and autostart.start_if_configured(
            str(path), shims_dir, sock, autostart_say, env
        ):
            sock = _connect(path, timeout)
        if isinstance(sock, OSError):
            from dbguard.ctl.install import daemon_argv  # this installation's dbguardd

            problem, fix = autostart.advise(
                str(path),
                shims_dir,
                sock,
                env,
                daemon=daemon_argv(config_file),
                after_start=autostart_say is not None,
            )
            raise DaemonUnavailable(problem, fix)
    with sock:
        return _exchange(sock, path, message, on_progress, timeout)


@contextlib.contextmanager
def holding(path: Path, message: BaseModel, timeout: float = 10.0) -> Iterator[Reply]:
    """Send `message` and yield its reply, for a request whose effect lasts until the
    block ends (`lend`): the end is told by half-closing the connection, and waited for
    until the daemon has acted on it (its last word, or its closing the connection;
    at most `timeout` seconds). Starts no daemon: raises DaemonUnavailable when none
    listens at `path`, and DaemonNotAnswering as `request` does."""
    sock = _connect(path, timeout)
    if isinstance(sock, OSError):
        raise DaemonUnavailable(f"no dbguardd answers at {path} ({sock.strerror or sock})", "")
    with sock:
        reply = _exchange(sock, path, message, None, timeout)
        try:
            yield reply
        finally:
            # ^C and the stop signals wait for the daemon's answer: the caller's
            # handlers would otherwise end this wait before the daemon has acted.
            stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
            try:
                with contextlib.suppress(OSError):  # a daemon gone has acted on it too
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(1 << 12):
                        pass
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _exchange(
    sock: socket.socket,
    path: Path,
    message: BaseModel,
    on_progress: Callable[[Progress | Working], None] | None,
    timeout: float | None,
) -> Reply:
    restart = "see its log (`dbguardctl doctor` says where), then restart it"
    try:
        with sock.makefile("rb") as replies:
            sock.sendall(encode(message))
            for line in replies:
                reply = decode_reply(line)
                if isinstance(reply, Progress | Working):
                    if on_progress is not None:
                        on_progress(reply)
                    continue  # the timeout counts silence, not the whole request
                return reply
    except TimeoutError:
        raise DaemonNotAnswering(
            f"dbguardd at {path} accepted the request but did not answer within {timeout} s",
            f"it may be stuck or stopped (SIGSTOP); {restart}",
        ) from None
    except ProtocolError as err:
        raise DaemonNotAnswering(
            f"dbguardd at {path} sent a reply dbguardctl cannot read ({err})",
            "the two may be different versions: restart dbguardd after an upgrade",
        ) from None
    except OSError as err:
        raise DaemonNotAnswering(
            f"the connection to dbguardd at {path} broke ({err.strerror or err})", restart
        ) from None
    raise DaemonNotAnswering(
        f"dbguardd at {path} closed the connection without replying (it stopped or died)",
        restart,
    )


def _connect(path: Path, timeout: float | None) -> socket.socket | OSError:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as err:
        sock.close()
        return err
    return sock

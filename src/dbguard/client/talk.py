"""dbguardctl's side of the socket: send one request, read replies until the final one."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from dbguard.errors import DaemonNotAnswering, DaemonUnavailable
from dbguard.protocol import Progress, ProtocolError, Reply, Working, decode_reply, encode

__all__ = ["DaemonNotAnswering", "DaemonUnavailable", "request"]


def request(
    path: Path,
    message: BaseModel,
    on_progress: Callable[[Progress], None] | None = None,
    timeout: float | None = 10.0,
) -> Reply:
    """Send `message`, return the first reply that is not progress. `timeout` is how
    long the daemon may stay silent (it sends progress while it works)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as err:
        sock.close()
        raise DaemonUnavailable(
            f"dbguardd is not reachable at {path} ({err.strerror or err})",
            "start it with `dbguardd` or `systemctl --user start dbguard.socket`",
        ) from None
    restart = "see its log (`dbguardctl doctor` says where), then restart it"
    try:
        with sock, sock.makefile("rb") as replies:
            sock.sendall(encode(message))
            for line in replies:
                reply = decode_reply(line)
                if isinstance(reply, Progress) and on_progress is not None:
                    on_progress(reply)
                if isinstance(reply, Progress | Working):
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

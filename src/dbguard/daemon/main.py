"""dbguardd: run the daemon in the foreground.

Usage: dbguardd [--config PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import NoReturn

import structlog
import uvloop

from dbguard import __version__
from dbguard.config import ConfigError, config_path, load_config
from dbguard.daemon import memory, systemd
from dbguard.daemon.health import BackgroundVerifier
from dbguard.daemon.server import SOCKET_CHECK_SECONDS, Server, StartupError
from dbguard.daemon.service import Guard
from dbguard.errors import DbguardError
from dbguard.paths import file_stamp

EX_CONFIG = 78


def _journal_renderer() -> structlog.typing.Processor:
    """Readable lines for the journal, each with the "<N>" prefix journald reads as the
    priority; no timestamp, the journal keeps its own."""
    console = structlog.dev.ConsoleRenderer(colors=False)

    def render(
        logger: structlog.typing.WrappedLogger, name: str, event: structlog.typing.EventDict
    ) -> str:
        prefix = systemd.priority_prefix(str(event.get("level", "info")))
        return prefix + str(console(logger, name, event))

    return render


def configure_logging() -> None:
    """Readable lines for the journal (under systemd) or a terminal, JSON lines otherwise
    (the auto-started daemon's log file)."""
    journal = systemd.under_journal()
    renderer: structlog.typing.Processor
    if journal:
        renderer = _journal_renderer()
    elif sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    stamp: list[structlog.typing.Processor] = (
        [] if journal else [structlog.processors.TimeStamper(fmt="iso", utc=True)]
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            *stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def reload_config(guard: Guard) -> None:
    """SIGHUP: adopt the config file as it is now, or keep the old one if it is invalid."""
    systemd.notify_reloading()
    guard.reload_from_file()
    # READY=1 either way: a rejected config leaves the daemon serving with the old one.
    systemd.notify("READY=1", f"STATUS=serving on {guard.socket_path}")


async def serve(guard: Guard, activated: socket.socket | None = None) -> None:
    log = structlog.get_logger("dbguard")
    guard.store.ensure()
    unfinished = guard.store.cleanup_stale()
    for stale in unfinished:
        log.info("removed an unfinished backup left by an earlier run", id=stale.id)
    guard.log_unfinished_backups(unfinished)
    if activated is not None:
        passed = Path(activated.getsockname())
        if passed != guard.socket_path:
            log.warning(
                "systemd passed a socket other than the configured one; serving on it",
                passed=str(passed),
                configured=str(guard.socket_path),
            )
            guard.socket_path = passed
    # Before listening: a stop sent as soon as the socket answers (a test, a service
    # manager) must stop the daemon in order, not kill it with the socket left behind.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = Server(guard, guard.socket_path, activated)
    listener = await server.start()
    loop.add_signal_handler(signal.SIGHUP, reload_config, guard)
    log.info(
        "dbguardd ready",
        version=__version__,
        socket=str(guard.socket_path),
        pid=os.getpid(),
        socket_activated=activated is not None,
    )
    systemd.notify("READY=1", f"STATUS=serving on {guard.socket_path}")
    try:
        for op in await asyncio.to_thread(guard.close_orphans):
            log.warning("an earlier dbguardd stopped while this command ran", op=op)
    except Exception:  # a damaged log must not keep the daemon from serving
        log.exception("could not close the operations an earlier dbguardd left running")
    background = BackgroundVerifier(guard)
    verifier = asyncio.create_task(background.run(stop))
    watcher = asyncio.create_task(_watch_socket(server, stop))
    await stop.wait()
    # A verify under way would otherwise run to its end (minutes for a large backup)
    # while the daemon kept serving, until systemd killed it and left its scratch copy.
    background.cancel.set()
    await watcher
    systemd.notify("STOPPING=1", "STATUS=stopping")
    log.info("dbguardd stopping")
    # The server first: no command is accepted while the cancelled verify winds down.
    # That verify uses connections of its own, which closing the engines leaves alone.
    await server.stop(listener)
    await verifier
    log.info("dbguardd stopped")


async def _watch_socket(server: Server, stop: asyncio.Event) -> None:
    """Stop when the socket file is gone: a daemon nobody can reach only holds the lock
    a new one needs (the next guarded command's auto-start, or systemd, starts one)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SOCKET_CHECK_SECONDS)
        if not stop.is_set() and server.socket_lost():
            structlog.get_logger("dbguard").error(
                "the socket file was removed or replaced; stopping", socket=str(server.path)
            )
            stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dbguardd", description="The dbguard daemon.")
    parser.add_argument(
        "--config", help="config file (default: $XDG_CONFIG_HOME/dbguard/config.toml)"
    )
    parser.add_argument("--version", action="version", version=f"dbguardd {__version__}")
    args = parser.parse_args(argv)
    memory.tune_malloc()  # before any thread exists
    try:
        # First, so the LISTEN_* variables are gone before anything can spawn a child.
        activated = systemd.activated_socket()
    except systemd.ActivationError as err:
        print(f"dbguardd: {err}", file=sys.stderr)
        return 1
    configure_logging()
    env = dict(os.environ)
    stamp = file_stamp(config_path(env, args.config))  # before reading: no edit is missed
    try:
        config = load_config(env, args.config)
    except ConfigError as err:
        print(f"dbguardd: {err}", file=sys.stderr)
        return EX_CONFIG
    guard = Guard(config, env, args.config, stamp)
    try:
        uvloop.run(serve(guard, activated))
    except (StartupError, DbguardError) as err:
        print(f"dbguardd: {err}", file=sys.stderr)
        return 1
    return 0


def run() -> NoReturn:
    """main(), then exit without Python's own teardown. By then the socket is gone, the
    engines closed and every log line written; the teardown's garbage collection over
    some 50,000 objects took another 0.15-0.3 s, and 1.5 s on a busy machine, that a
    restart or a stop waited out for nothing."""
    code = main()
    with contextlib.suppress(OSError, ValueError):  # a closed stdout or stderr
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

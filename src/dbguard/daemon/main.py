"""dbguardd: run the daemon in the foreground.

Usage: dbguardd [--config PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import structlog
import uvloop

from dbguard import __version__
from dbguard.config import ConfigError, load_config
from dbguard.daemon.server import Server, StartupError
from dbguard.daemon.service import Guard
from dbguard.errors import DbguardError

EX_CONFIG = 78


def configure_logging() -> None:
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def reload_config(guard: Guard, config_file: str | None) -> None:
    """SIGHUP: adopt the config file as it is now, or keep the old one if it is invalid."""
    log = structlog.get_logger("dbguard")
    try:
        config = load_config(guard.env, config_file)
    except ConfigError as err:
        log.error("new config rejected; the previous one stays in force", error=str(err))
        return
    for note in guard.reload(config):
        log.warning("config reloaded with a change that needs a restart", detail=note)
    log.info("config reloaded")


async def serve(guard: Guard, config_file: str | None = None) -> None:
    log = structlog.get_logger("dbguard")
    guard.store.ensure()
    for stale in guard.store.cleanup_stale():
        log.info("removed an unfinished backup left by an earlier run", id=stale)
    server = Server(guard, guard.socket_path)
    listener = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_config, guard, config_file)
    log.info("dbguardd ready", version=__version__, socket=str(guard.socket_path), pid=os.getpid())
    await stop.wait()
    log.info("dbguardd stopping")
    await server.stop(listener)
    log.info("dbguardd stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dbguardd", description="The dbguard daemon.")
    parser.add_argument(
        "--config", help="config file (default: $XDG_CONFIG_HOME/dbguard/config.toml)"
    )
    parser.add_argument("--version", action="version", version=f"dbguardd {__version__}")
    args = parser.parse_args(argv)
    configure_logging()
    env = dict(os.environ)
    try:
        config = load_config(env, args.config)
    except ConfigError as err:
        print(f"dbguardd: {err}", file=sys.stderr)
        return EX_CONFIG
    guard = Guard(config, env)
    try:
        uvloop.run(serve(guard, args.config))
    except (StartupError, DbguardError) as err:
        print(f"dbguardd: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

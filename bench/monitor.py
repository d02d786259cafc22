"""Who else is using the servers while a figure runs.

PostgreSQL's change signal (the cluster's snapshot) and MariaDB's (an InnoDB counter)
are server-wide: another database's commits move them, which makes
dbguard back up again where it would otherwise reuse or share a backup. On a shared
machine that is someone else's doing, not dbguard's cost, so the report names the
other databases that had active sessions during each figure, and any server restart.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.datasets import PREFIX, Servers, my_open, pg_open

INTERVAL = 0.25  # seconds between samples

# dbguard's own change-signal reads (the daemon's kept session in the maintenance
# database) write nothing and are left out; so are idle sessions.
_PG_SQL = """
SELECT DISTINCT datname FROM pg_stat_activity
WHERE state IS DISTINCT FROM 'idle' AND pid <> pg_backend_pid() AND datname IS NOT NULL
  AND NOT (datname = 'postgres' AND application_name = 'dbguard')
"""
SHOWN = 4  # names listed per server; the rest are counted
_MY_SQL = """
SELECT DISTINCT DB FROM information_schema.PROCESSLIST
WHERE COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump') AND ID <> CONNECTION_ID()
  AND DB IS NOT NULL
"""


@dataclass
class Window:
    """What one figure saw: other databases in use, server (re)starts."""

    postgres: set[str] = field(default_factory=set)
    mariadb: set[str] = field(default_factory=set)
    restarts: set[str] = field(default_factory=set)

    def describe(self) -> str:
        parts = [
            f"{server} {_names(seen)}"
            for server, seen in (("PostgreSQL", self.postgres), ("MariaDB", self.mariadb))
            if seen
        ]
        text = "other sessions were active in " + "; ".join(parts) if parts else ""
        if self.restarts:
            text += ("; " if text else "") + "restarted: " + ", ".join(sorted(self.restarts))
        return text


def _names(names: set[str]) -> str:
    ordered = sorted(names)
    text = ", ".join(ordered[:SHOWN])
    if len(ordered) > SHOWN:
        text += f" and {len(ordered) - SHOWN} more"
    return f"{len(ordered)} database{'s' if len(ordered) > 1 else ''} ({text})"


class Monitor:
    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self._windows: list[Window] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self._started: dict[str, Any] = {}

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def window(self) -> Iterator[Window]:
        seen = Window()
        with self._lock:
            self._windows.append(seen)
        try:
            yield seen
        finally:
            with self._lock:
                self._windows.remove(seen)

    def _record(self, engine: str, names: set[str], started: Any) -> None:
        foreign = {n for n in names if not n.startswith(PREFIX)}
        restarted = engine in self._started and self._started[engine] != started
        self._started[engine] = started
        with self._lock:
            for window in self._windows:
                getattr(window, engine).update(foreign)
                if restarted:
                    window.restarts.add(engine)

    def _run(self) -> None:
        # Kept connections: a new session every sample would load the machine we measure.
        pg: Any = None
        my: Any = None
        while not self._stop.wait(INTERVAL):
            try:
                pg = pg or pg_open(self.servers, retry=False)
                names = {str(r[0]) for r in pg.execute(_PG_SQL)}
                row = pg.execute("SELECT pg_postmaster_start_time()").fetchone()
                self._record("postgres", names, row[0] if row else None)
            except Exception:  # down or restarting: try again next time
                _close(pg)
                pg = None
            try:
                my = my or my_open(self.servers, retry=False)
                with my.cursor() as cur:
                    cur.execute(_MY_SQL)
                    names = {str(r[0]) for r in cur.fetchall()}
                    cur.execute("SHOW GLOBAL STATUS LIKE 'Uptime'")
                    self._record("mariadb", names, _boot(int(cur.fetchone()[1])))
            except Exception:
                _close(my)
                my = None
        _close(pg)
        _close(my)


def _close(conn: Any) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def _boot(uptime: int) -> int:
    """The server's start time, rounded so clock jitter does not look like a restart."""
    return round((time.time() - uptime) / 10)

"""The daemon's own care of the backups: verifying them when idle, and telling someone
when something fails (a command run with the event on stdin, or a webhook POST)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from dbguard import operations
from dbguard.config import NotifySettings
from dbguard.errors import Cancelled, DbguardError
from dbguard.store import Manifest

if TYPE_CHECKING:
    from dbguard.daemon.service import Guard

log = structlog.get_logger("dbguard.health")


class Notifier:
    """Sends failure events; never raises (a broken hook must not break the guard)."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings

    def send(self, event: dict[str, Any]) -> None:
        body = json.dumps(
            {"time": datetime.now(UTC).isoformat(), "host": os.uname().nodename, **event},
            default=str,
        ).encode()
        if self.settings.command:
            try:
                subprocess.run(
                    ["/bin/sh", "-c", self.settings.command],  # the user's own command line
                    input=body,
                    timeout=self.settings.timeout_seconds,
                    capture_output=True,
                    check=True,
                )
            except (OSError, subprocess.SubprocessError) as err:
                log.warning("notify command failed", command=self.settings.command, error=str(err))
        if self.settings.webhook:
            post = urllib.request.Request(  # noqa: S310 (validated http(s) URL)
                self.settings.webhook,
                data=body,
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(post, timeout=self.settings.timeout_seconds):  # noqa: S310
                    pass
            except OSError as err:
                log.warning("notify webhook failed", url=self.settings.webhook, error=str(err))

    def send_soon(self, event: dict[str, Any]) -> None:
        """Fire and forget, off the event loop."""
        if self.settings.command or self.settings.webhook:
            threading.Thread(target=self.send, args=(event,), daemon=True).start()


def _low_priority() -> None:
    # Linux applies nice values per thread; this thread runs only background verifies,
    # and the pg_restore / mariadb processes it starts inherit the value.
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class BackgroundVerifier:
    """When the daemon has been idle for `idle_seconds`, verify the newest unverified
    backup of each database, one at a time, at the lowest CPU priority."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        # Set when dbguardd stops: a verify under way ends at its next check (pg_restore
        # is killed), drops its scratch copy and records nothing.
        self.cancel = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="verify", initializer=_low_priority)

    def _candidates(self) -> list[Manifest]:
        newest: dict[str, Manifest] = {}
        for manifest in self.guard.store.manifests():
            newest.setdefault(manifest.database_key, manifest)
        return [m for m in newest.values() if m.verified is None]

    def _verify(self, manifest: Manifest) -> None:
        target = operations.with_credentials(manifest, self.guard.env)
        result = operations.verify_backup(
            self.guard.store, self.guard.engines, manifest, target, self.cancel
        )
        log.info("background verify", id=manifest.id, ok=result.ok, problems=result.problems)
        if not result.ok:
            self.guard.notifier.send_soon(
                {
                    "event": "verify_failed",
                    "backup": manifest.id,
                    "database": manifest.database_label,
                    "problems": result.problems,
                }
            )

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            settings = self.guard.config.health
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.idle_seconds)
            if stop.is_set() or not settings.background_verify:
                continue
            try:
                candidates = await asyncio.to_thread(self._candidates)
            except DbguardError as err:  # the folder unreadable for now: its mode, say
                log.warning("background verify could not list the backups", error=str(err))
                continue
            for manifest in candidates:
                idle = time.monotonic() - self.guard.last_activity
                if stop.is_set() or idle < settings.idle_seconds or self.guard.backups.in_flight():
                    break  # someone is working: try again after the next quiet spell
                try:
                    await loop.run_in_executor(self._pool, self._verify, manifest)
                except Cancelled:
                    log.info("background verify stopped; backup left unverified", id=manifest.id)
                except DbguardError as err:
                    log.warning("background verify could not run", id=manifest.id, error=str(err))
                except Exception:  # a bug must not end background verification for good
                    log.exception("background verify crashed", id=manifest.id)
        self._pool.shutdown(wait=True)

"""The guard's decisions: for each invocation, pass, deny, fail or allow, and the log.

Transport-free: `Guard.invoke` takes a parsed request and an `emit` callback for
progress lines, and returns the final reply. server.py does the socket work.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from dbguard import __version__
from dbguard.config import Config
from dbguard.daemon.backups import Backups, Outcome
from dbguard.discovery import Found
from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.project import DiscoveryCache, ProjectFiles, project_root
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.errors import BackupFailed
from dbguard.oplog import OperationLog
from dbguard.protocol import (
    Allow,
    BackupNow,
    BackupRef,
    Deny,
    Done,
    Fail,
    Invoke,
    Pass,
    Progress,
    Report,
    Status,
)
from dbguard.rules import Classifier, Kind, Operation, builtin_catalog
from dbguard.store import Reason, Store

log = structlog.get_logger("dbguard.service")

Emit = Callable[[Progress], Awaitable[None]]
PROGRESS_INTERVAL = 0.5  # seconds before the first progress line, and between lines


@dataclass
class Running:
    """An allowed command, between `allow` and its report."""

    record: dict[str, Any]
    allowed_at: float = field(default_factory=time.monotonic)
    pid: int | None = None


class Guard:
    def __init__(self, config: Config, env: dict[str, str]):
        self.env = env
        self.config = config
        self.socket_path = config.socket_path(env)
        self.store = _store(config, env)
        self.engines = Engines(config.backup)
        self.oplog = OperationLog(config.operation_log_path(env))
        self.classifier = Classifier(builtin_catalog())
        self.discovery = DiscoveryCache()
        self.backups = Backups(
            self.store, self.engines, config.backup.max_parallel, config.retention, config.space
        )
        self.started = time.monotonic()
        self.running: dict[str, Running] = {}

    def reload(self, config: Config) -> list[str]:
        """Switch to a new, already validated config (SIGHUP). Backups in flight finish
        under the old settings. Returns what could not change without a restart."""
        pending = []
        if config.socket_path(self.env) != self.socket_path:
            pending.append(f"socket stays {self.socket_path} until dbguardd restarts")
        self.config = config
        self.store = _store(config, self.env)
        self.store.ensure()
        self.engines.settings = config.backup
        self.oplog = OperationLog(config.operation_log_path(self.env))
        self.backups.reconfigure(
            self.store, config.backup.max_parallel, config.retention, config.space
        )
        return pending

    # ---- invoke ----------------------------------------------------------------------

    def classify(self, request: Invoke) -> Operation | None:
        files = ProjectFiles(Path(request.cwd))
        try:
            return self.classifier.classify(request.argv, files.package_script)
        except DiscoveryError:
            # An unreadable package.json: let discovery report it properly.
            return self.classifier.classify(request.argv)

    async def invoke(self, request: Invoke, emit: Emit) -> Pass | Deny | Fail | Allow:
        started = time.monotonic()
        record: dict[str, Any] = {
            "argv": request.argv,
            "cwd": request.cwd,
            "pid": request.pid,
            "tty": request.tty,
            "parent": request.parent,
        }
        operation = self.classify(request)
        if operation is not None:
            record.update(tool=operation.tool, kind=str(operation.kind), command=operation.command)
            if operation.via:
                record["via"] = list(operation.via)
        if operation is None or not operation.kind.needs_backup:
            self._log(record, "pass", started)
            return Pass()
        try:
            root = project_root(request.cwd)
            found = await asyncio.to_thread(self.discovery.discover, root, request.env, operation)
        except DiscoveryError as err:
            self._log(record, "deny", started, reason=str(err))
            return Deny(reason=err.problem, hint=err.fix)
        record["databases"] = [{"database": t.label, "source": t.source} for t in found.targets]
        if found.warnings:
            record["warnings"] = found.warnings
        reason = Reason(
            kind="command",
            argv=record["argv"],
            cwd=request.cwd,
            operation_kind=str(operation.kind),
        )
        try:
            outcomes = await self._ensure_all(found.targets, reason, emit)
        except BackupFailed as err:
            self._log(record, "fail", started, reason=str(err))
            return Fail(reason=err.problem, hint=err.fix)
        op_id = secrets.token_hex(4)
        record["op"] = op_id
        record["backups"] = [_backup_record(o) for o in outcomes if o.manifest is not None]
        record["decision"] = "allow"
        record["decide_ms"] = round((time.monotonic() - started) * 1000, 1)
        self.running[op_id] = Running(record)
        record["notes"] = _notes(found, outcomes)
        # The shim prints only warnings; what was reused or skipped goes to the log.
        return Allow(op=op_id, backups=_refs(outcomes), notes=found.warnings)

    async def _ensure_all(self, targets: list[Target], reason: Reason, emit: Emit) -> list[Outcome]:
        work = asyncio.gather(*(self.backups.ensure(t, reason) for t in targets))
        keys = [t.key for t in targets]
        while True:
            done, _ = await asyncio.wait({work}, timeout=PROGRESS_INTERVAL)
            if done:
                return work.result()
            for line in self.backups.progress(keys):
                await emit(line)

    def started_command(self, op_id: str, pid: int) -> None:
        if op_id in self.running:
            self.running[op_id].pid = pid

    def finish(self, op_id: str, report: Report | None) -> None:
        """The command ended (`report`), or its shim vanished without saying (None)."""
        running = self.running.pop(op_id, None)
        if running is None:
            return
        record = running.record
        if report is None:
            record["outcome"] = "unknown"
            record["detail"] = "the shim disconnected before reporting how the command ended" + (
                f"; command pid {running.pid}" if running.pid else ""
            )
        else:
            record["exit"] = report.exit
            record["signal"] = report.signal
            record["duration_ms"] = report.duration_ms
            record["outcome"] = "ok" if report.exit == 0 else "failed"
        self.oplog.append(record)

    def _log(self, record: dict[str, Any], decision: str, started: float, **extra: Any) -> None:
        record.update(extra)
        record["decision"] = decision
        record["decide_ms"] = round((time.monotonic() - started) * 1000, 1)
        self.oplog.append(record)

    # ---- other requests ------------------------------------------------------------------

    async def backup_now(self, request: BackupNow, emit: Emit) -> Done | Deny | Fail:
        """dbguardctl backup: every database of the project at cwd, now."""
        started = time.monotonic()
        record: dict[str, Any] = {"argv": ["dbguardctl", "backup"], "cwd": request.cwd}
        found = Found()
        try:
            root = project_root(request.cwd)
            # The project's databases: the one it runs against and the one its tests use.
            for kind in (Kind.MIGRATE, Kind.TEST):
                operation = Operation(tool="dbguardctl backup", kind=kind)
                found.extend(
                    await asyncio.to_thread(self.discovery.discover, root, request.env, operation)
                )
        except DiscoveryError as err:
            self._log(record, "deny", started, reason=str(err))
            return Deny(reason=err.problem, hint=err.fix)
        reason = Reason(kind="manual", argv=["dbguardctl", "backup"], cwd=request.cwd)
        try:
            outcomes = await self._ensure_all(found.targets, reason, emit)
        except BackupFailed as err:
            self._log(record, "fail", started, reason=str(err))
            return Fail(reason=err.problem, hint=err.fix)
        record["backups"] = [_backup_record(o) for o in outcomes if o.manifest is not None]
        self._log(record, "backup", started)
        return Done(backups=_refs(outcomes), notes=_notes(found, outcomes))

    def status(self) -> Status:
        return Status(
            version=__version__,
            pid=os.getpid(),
            socket=str(self.socket_path),
            uptime_seconds=round(time.monotonic() - self.started, 1),
            backup_dir=str(self.store.root),
            in_flight=self.backups.in_flight(),
        )

    async def close(self) -> None:
        await self.backups.drain()
        for op_id in list(self.running):
            self.finish(op_id, None)
        self.engines.close()


def _store(config: Config, env: dict[str, str]) -> Store:
    return Store(
        config.backup_path(env),
        config.backup.compression_level,
        config.backup.compression_threads,
    )


def _backup_record(outcome: Outcome) -> dict[str, Any]:
    assert outcome.manifest is not None
    return {"id": outcome.manifest.id, "database": outcome.target.label, "reused": outcome.reused}


def _refs(outcomes: list[Outcome]) -> list[BackupRef]:
    return [
        BackupRef(id=o.manifest.id, database=o.target.label, reused=o.reused)
        for o in outcomes
        if o.manifest is not None
    ]


def _notes(found: Found, outcomes: list[Outcome]) -> list[str]:
    return [*found.warnings, *found.notes, *(o.note for o in outcomes if o.note)]

"""The guard's decisions: for each invocation, pass, deny, fail or allow, and the log.

Transport-free: `Guard.invoke` takes a parsed request, an `emit` callback for progress
lines and an `ask` callback for a question to the person at the shim's terminal, and
returns the final reply. server.py does the socket work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import structlog
from pydantic import BaseModel

from dbguard import __version__, script_shell
from dbguard.approvals import ApprovalError, Approvals
from dbguard.approvals import Request as ApprovalRequest
from dbguard.callers import callers
from dbguard.client.autostart import alive
from dbguard.config import Config, config_path, load_config
from dbguard.daemon.backups import Backups, Outcome
from dbguard.daemon.health import Notifier
from dbguard.discovery import Found
from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.prisma import NoSchema
from dbguard.discovery.project import (
    DiscoveryCache,
    ProjectFiles,
    StampedCache,
    argument_roots,
    project_root,
)
from dbguard.discovery.project_config import (
    ProjectConfig,
    classify_with_project,
    load_project_config,
    project_config_file,
)
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.errors import BackupFailed, DatabaseMissing, DbguardError
from dbguard.marks import ProductionMarks
from dbguard.oplog import RUNNING, OperationLog, redact_argv
from dbguard.paths import Stamp, file_stamp
from dbguard.policy import Approval, Gate, agent_markers, gate
from dbguard.production import Marker, ProductionSettings, Verdict, classify_production
from dbguard.protocol import (
    Allow,
    ApprovalInfo,
    BackupNow,
    BackupRef,
    Confirm,
    Deny,
    Done,
    Fail,
    Invoke,
    Pass,
    Progress,
    Report,
    Status,
    Working,
)
from dbguard.rules import (
    CWD_HINT,
    ENV_FILE_HINT,
    FOLLOWED_HINT,
    SCOPE_HINT,
    Classifier,
    Kind,
    Operation,
    TooManyScripts,
    builtin_catalog,
    program_name,
)
from dbguard.store import DatabaseLock, Reason, Store, Unfinished

log = structlog.get_logger("dbguard")

Emit = Callable[[Progress | Working], Awaitable[None]]
Ask = Callable[[Confirm], Awaitable[str | None]]
PROGRESS_INTERVAL = 0.5  # seconds before the first progress line, and between lines
LOCK_RETRY = 0.1  # seconds between tries of a database lock a restore holds


T = TypeVar("T")
_Reply = TypeVar("_Reply", bound=BaseModel)  # a message to the shim or dbguardctl


class MarkUnread(BackupFailed):
    """A database's production mark could not be read; the command fails as when its
    backup does."""

    def __init__(self, problem: str, fix: str, *, database: str) -> None:
        super().__init__(problem, fix)
        self.database = database


async def _beating(work: Awaitable[T], emit: Emit, lines: Callable[[], list[Progress]] = list) -> T:
    """`work`'s result. Meanwhile, every PROGRESS_INTERVAL, its progress `lines`, or
    Working when there are none: a shim takes long silence for a stopped daemon.

    If `emit` fails (the client left), `work` goes on; its outcome is still collected,
    so asyncio has no "exception never retrieved" to report."""
    task = asyncio.ensure_future(work)
    started = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
            if done:
                return task.result()
            elapsed = round(time.monotonic() - started, 1)
            messages: list[Progress | Working] = [*lines()] or [Working(elapsed=elapsed)]
            for message in messages:
                await emit(message)
    except BaseException:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise


@dataclass
class Running:
    """An allowed command, between `allow` and its report."""

    record: dict[str, Any]
    pid: int | None = None
    # The environment marks its databases carry, put back if the command drops them.
    marks: list[tuple[Target, Marker]] = field(default_factory=list)
    # When those marks were read: one a person sets by hand after that stands.
    marks_read: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Its databases' locks, held shared until it ends: a restore waits for them.
    locks: list[DatabaseLock] = field(default_factory=list)
    shim_pid: int | None = None  # the shim that runs it: the command's parent
    # What a human approved for it on production; what it runs in turn shares it.
    approval: Approval | None = None


class Guard:
    def __init__(
        self,
        config: Config,
        env: dict[str, str],
        config_file: str | None = None,
        config_stamp: Stamp = None,
    ):
        """`config` was read from `config_file` (`--config`; None: the default place)
        when that file's stamp was `config_stamp`."""
        self.env = env
        self.config = config
        self.config_file = config_file
        self._config_path = config_path(env, config_file)
        self._config_stamp = config_stamp
        # What the last reload could not do, shown by `dbguardctl status` until a later
        # reload clears it: a rejected file (also told to every guarded command, whose
        # protection it may concern), and changes that wait for a restart.
        self.config_rejected: str | None = None
        self.restart_needed: list[str] = []
        self.socket_path = config.socket_path(env)
        self.store = _store(config, env, self.log_unfinished_backups)
        self.engines = Engines(config.backup)
        self.oplog = OperationLog(config.operation_log_path(env))
        self.production_marks = ProductionMarks.in_state_dir(
            env, lambda problem: log.warning("production marks register", problem=problem)
        )
        self.classifier = _classifier(config)
        # What each command line is, in each folder: read from the project's files
        # (.dbguard.toml, package.json's scripts), so as long as they are unchanged.
        self.classified: StampedCache[Operation | None] = StampedCache()
        self.discovery = DiscoveryCache()
        self.backups = Backups(
            self.store, self.engines, config.backup.max_parallel, config.retention, config.space
        )
        self.started = time.monotonic()
        self.running: dict[str, Running] = {}
        self.approvals = Approvals(ttl=config.production.approval_minutes * 60)
        self.notifier = Notifier(config.notify)
        self.last_activity = time.monotonic()  # the background verifier waits for quiet
        self.identity = process_identity(os.getpid())
        self._remarking: set[asyncio.Future[None]] = set()  # marks being put back

    def reload_if_changed(self) -> None:
        """Before each request: an edited config file applies to the next command, with
        no SIGHUP to remember (one stat when nothing changed)."""
        if file_stamp(self._config_path) != self._config_stamp:
            self.reload_from_file()

    def reload_from_file(self) -> None:
        """Adopt the config file as it is now, or keep the current config if the file
        is invalid (SIGHUP, or the file changed)."""
        self._config_stamp = file_stamp(self._config_path)  # first: a later edit is seen
        when = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
        try:
            config = load_config(self.env, self.config_file)
            self.restart_needed = self.reload(config)
        except DbguardError as err:  # a ConfigError, or a backup folder that cannot be made
            log.error("new config rejected; the previous one stays in force", error=str(err))
            self.config_rejected = (
                f"the config file changed at {when} but was not applied, the previous "
                f"config stays in force: {err}\n(fix it; it applies at the next command)"
            )
        except Exception as err:  # e.g. a catalog that no longer loads (an upgrade under us)
            log.exception("reload failed; the previous config stays in force")
            self.config_rejected = (
                f"the config file changed at {when} but could not be applied, the previous "
                f"config stays in force: {type(err).__name__}: {err} (see dbguardd's log; "
                "restarting dbguardd may help)"
            )
        else:
            for note in self.restart_needed:
                log.warning("config reloaded with a change that needs a restart", detail=note)
            log.info("config reloaded", file=str(self._config_path))
            self.config_rejected = None

    def with_config_problem(self, reply: _Reply) -> _Reply:
        """A refusal or failure says too when the config file's last edit was not
        applied: the way out it gives (a larger backup_dir, a host that is not
        production) may be the very edit that was rejected. An allowed command says it
        in its notes."""
        if self.config_rejected and isinstance(reply, Deny | Fail):
            hint = "\n".join(filter(None, [reply.hint, self.config_rejected]))
            return cast(_Reply, reply.model_copy(update={"hint": hint}))  # the same type
        return reply

    def reload(self, config: Config) -> list[str]:
        """Switch to a new, already validated config (SIGHUP). Backups in flight finish
        under the old settings. Returns what could not change without a restart.

        Raises BackupFailed, with nothing changed, if the new backup folder cannot be
        made."""
        store = _store(config, self.env, self.log_unfinished_backups)
        store.ensure()  # first: a folder that cannot be made leaves the old config whole
        classifier = _classifier(config)  # and a catalog that does not load
        pending = []
        if config.socket_path(self.env) != self.socket_path:
            pending.append(f"socket stays {self.socket_path} until dbguardd restarts")
        self.config = config
        self.classifier = classifier
        self.classified = StampedCache()  # its answers came from the old catalog
        self.store = store
        self.engines.settings = config.backup
        self.oplog = OperationLog(config.operation_log_path(self.env))
        self.notifier = Notifier(config.notify)
        self.backups.reconfigure(
            self.store, config.backup.max_parallel, config.retention, config.space
        )
        return pending

    # ---- invoke ----------------------------------------------------------------------

    def classify(self, request: Invoke) -> Operation | None:
        """The operation `request` performs, by the user's catalog and the project's
        additions (which can only make a command more guarded)."""
        # A .dbguard.toml that is refused (broken, or loosening a rule) raises
        # DiscoveryError: every command of the project is refused, naming the file, as
        # its own [[tool]] entries may be what guards this one; reading past it would
        # let anyone who breaks the file switch those guards off. So does a
        # package.json that cannot be read: a script not read may be a database operation.
        # (Errors are not cached: the next command reads again.)
        root = project_root(request.cwd)
        config_file = project_config_file(root)
        key = (tuple(request.argv), request.cwd, root, config_file)
        cached = self.classified.get(key)
        if cached is not None:
            return cached.value
        files, root_files = ProjectFiles(Path(request.cwd)), ProjectFiles(root)
        operation = classify_with_project(
            self.classifier,
            load_project_config(root_files.read, config_file),
            request.argv,
            files.package_script,
            files.workspace_members,
            files.workspace_root,
            files.file_start,
        )
        self.classified.put(key, operation, files, root_files)
        return operation

    async def invoke(
        self, request: Invoke, emit: Emit, ask: Ask, peer: int | None = None
    ) -> Pass | Deny | Fail | Allow:
        """Decide on one invocation; `emit` sends progress, `ask` asks the person at the
        shim's terminal a question and returns what they typed (None: no answer).
        `peer`: the shim's pid as the kernel gave it with the connection, in this
        daemon's PID namespace (the pid the shim sends is in its own)."""
        started = self.last_activity = time.monotonic()
        shim_pid = request.pid if peer is None else peer
        record: dict[str, Any] = {
            "argv": request.argv,
            "cwd": request.cwd,
            "pid": request.pid,
            "tty": request.tty,
            "parent": request.parent,
        }
        try:
            operation = self.classify(request)
        except (TooManyScripts, DiscoveryError) as err:
            self._log(record, "deny", started, reason=str(err))
            return Deny(reason=err.problem, hint=err.fix)
        if operation is not None:
            record.update(tool=operation.tool, kind=str(operation.kind), command=operation.command)
            if operation.via:
                record["via"] = list(operation.via)
        script_env = self._script_env(request)  # before anything is held for it
        if operation is None or not operation.kind.needs_backup:
            self._log(record, "pass", started)
            return Pass(env=script_env)
        try:
            if self._remarking:  # the last command's marks are back before this one looks
                await asyncio.wait(set(self._remarking))
            marks_read = datetime.now(UTC)
            found, settings, verdicts, marks, folder = await _beating(
                asyncio.to_thread(self._assess, request, operation), emit
            )
        except DiscoveryError as err:
            self._log(record, "deny", started, reason=str(err))
            return Deny(reason=err.problem, hint=err.fix)
        except MarkUnread as err:
            return self._failed(record, started, err, request, [err.database])
        record["databases"] = [
            {
                "database": t.label,
                "source": t.source,
                "production": verdicts[t.key].production,
                "why": verdicts[t.key].reasons,
            }
            for t in found.targets
        ]
        if found.warnings:
            record["warnings"] = found.warnings
        production = [t for t in found.targets if verdicts[t.key].production]
        # Who runs it matters only on production: only then is /proc read for the
        # programs it runs under (an agent's CLI).
        agents = agent_markers(request.env, settings, callers(shim_pid) if production else ())
        if agents:
            record["agent"] = agents
        need = gate(operation.kind, bool(production), terminal=request.tty, agent=bool(agents))
        approval = None
        if need is not Gate.PROCEED:
            approval = Approval(
                frozenset(step.kind for step in operation.each()),
                frozenset(t.key for t in production),
            )
            inherited = self._approved_parent(request.parent, shim_pid, approval)
            if inherited is not None:
                approval = inherited
                record["approved_with"] = request.parent
            else:
                refusal = await self._human_check(
                    request, production, verdicts, need, ask, settings, agents
                )
                if refusal is not None:
                    self._log(record, "deny", started, reason=refusal.reason)
                    return refusal
            record["approved"] = True
        reason = Reason(
            kind="command",
            argv=redact_argv(record["argv"]),
            cwd=str(folder),
            operation_kind=str(operation.kind),
            production=bool(production),
        )
        # Held from before the backup until the command ends (finish): a `dbguardctl
        # restore` of one of its databases neither swaps under the backup or the
        # command, nor is undone by them; one under way is waited for.
        locks: list[DatabaseLock] = []
        try:
            await self._share(found.targets, locks, emit, inside=request.parent)
            outcomes = await self._ensure_all(found.targets, reason, emit, locks)
        except ConnectionError:
            # ^C at the shim during the backup: it goes on (and is kept); the command
            # never runs, and the log says so.
            detail = "the shim disconnected during the backup; the backup went on"
            if len(locks) < len({t.key for t in found.targets}):  # not all held yet
                detail = "the shim disconnected while the command waited for a restore"
            self._log(record, "allow", started, outcome="not run", detail=detail)
            raise
        except BackupFailed as err:
            return self._failed(record, started, err, request, [t.label for t in found.targets])
        op_id = secrets.token_hex(8)  # unique across a log that keeps 100,000s of them
        record["op"] = op_id
        record["backups"] = [_backup_record(o) for o in outcomes if o.manifest is not None]
        record["decision"] = "allow"
        record["decide_ms"] = round((time.monotonic() - started) * 1000, 1)
        self.running[op_id] = Running(
            record,
            marks=[(t, marks[t.key]) for t in found.targets if t.key in marks],
            marks_read=marks_read,
            locks=locks,
            shim_pid=shim_pid,
            approval=approval,
        )
        record["notes"] = _notes(found, outcomes)
        self._log_running(record)
        # The shim prints only warnings; what was reused or skipped goes to the log.
        rejected = [self.config_rejected] if self.config_rejected else []
        return Allow(
            op=op_id,
            backups=_refs(outcomes),
            notes=[*found.warnings, *rejected],
            env=script_env,
        )

    def _script_env(self, request: Invoke) -> dict[str, str]:
        """For a package manager that runs scripts with npm's script-shell setting: what
        its shim sets so the programs its scripts start meet the shims too (see
        script_shell.py). Nothing for other commands, nor from a shims folder without
        that shell (written by an older dbguard), nor where a settings file names a
        script shell of its own."""
        name = program_name(request.argv[0])
        if name not in self.classifier.catalog.script_shell:
            return {}
        folder = script_shell.shims_folder(name, request.env, request.cwd)
        wrapper = script_shell.wrapper_in(folder) if folder is not None else None
        if wrapper is None:
            return {}
        if not any(k.lower() == script_shell.VARIABLE and v for k, v in request.env.items()):
            real = os.path.realpath(request.executable) if request.executable else None
            prefix = Path(real).parent.parent if real is not None else None  # where it lives
            chosen = script_shell.set_in_files(Path(request.cwd), request.env, prefix)
            if chosen is not None:
                log.info("script shell left to the settings file", file=str(chosen))
                return {}
        return script_shell.environment(request.env, wrapper)

    def _approved_parent(
        self, parent: str | None, shim_pid: int, wanted: Approval
    ) -> Approval | None:
        """The approval of the running command `parent`, when it covers `wanted` and the
        command asking (shim `shim_pid`) runs under it: a human who approved `npm run
        db:reset` is not asked again for the `prisma migrate reset` its script runs. A
        DBGUARD_PARENT_OP copied into another process's environment gets nothing."""
        running = self.running.get(parent) if parent else None
        if running is None or running.approval is None:
            return None
        if not all(running.approval.covers(kind, wanted.databases) for kind in wanted.kinds):
            return None
        if running.shim_pid not in {caller.pid for caller in callers(shim_pid)}:
            log.warning("a command named an approved parent it does not run under", op=parent)
            return None
        return running.approval

    def _failed(
        self,
        record: dict[str, Any],
        started: float,
        err: BackupFailed,
        request: Invoke,
        databases: list[str],
    ) -> Fail:
        """The command does not run: no backup could be made (or a database's production
        mark read). Logged, and the notify hook told."""
        self._log(record, "fail", started, reason=str(err))
        self.notifier.send_soon(
            {
                "event": "backup_failed",
                "command": redact_argv(request.argv),  # a hook may post it anywhere
                "cwd": request.cwd,
                "databases": databases,
                "reason": str(err),
            }
        )
        return Fail(reason=err.problem, hint=err.fix)

    def _assess(
        self, request: Invoke, operation: Operation
    ) -> tuple[Found, ProductionSettings, dict[str, Verdict], dict[str, Marker], Path]:
        """Discovery for each operation of the command, from the folder it runs in (and
        for a test run also in the projects its path arguments lie in), then production
        or not per target, reading each database's own marker: blocking, in one
        worker-thread hop. Also returns the marks found, by key, and the folder the
        command runs in. Raises DiscoveryError."""
        parts: list[Found] = []
        runs_in: list[Path] = []  # the folder of each operation; the first names the command's
        # Members of a run in several where Prisma finds no schema: it fails there and
        # touches nothing, so they are left out if the run reaches a schema elsewhere.
        no_schema: list[tuple[Operation, Path, NoSchema]] = []
        reached: set[tuple[str, Kind, str]] = set()
        for each in operation.each():
            each, folder = _anchored(request, each)
            root = project_root(str(folder))
            runs_in.append(folder)
            others: list[Path] = []
            if each.kind is Kind.TEST:
                others, inside = argument_roots(request.argv[1:], folder, root)
                # Projects the paths lead into are discovered on their own below; the
                # root's sub-projects only where the paths lead (all when none).
                followed = [os.path.relpath(other, root) for other in others]
                scope = [*inside, *followed] if inside or followed else []
                hints = {FOLLOWED_HINT: "\n".join(followed), SCOPE_HINT: "\n".join(scope)}
                each = replace(each, hints={**each.hints, **{k: v for k, v in hints.items() if v}})
            try:
                parts.append(self.discovery.discover(root, request.env, each, cwd=folder))
            except NoSchema as err:
                if not each.member:
                    raise
                no_schema.append((each, folder, err))
                continue
            except DiscoveryError as err:
                if not each.member:
                    raise
                # Which member: a run in many names no folder of its own.
                raise type(err)(f"in {folder}: {err.problem}", err.fix) from None
            if each.member:
                reached.add((each.tool, each.kind, each.command))
            parts += [self.discovery.discover(other, request.env, each) for other in others]
        for each, folder, missing in no_schema:
            if (each.tool, each.kind, each.command) not in reached:
                raise DiscoveryError(
                    f"{each.description} runs in workspace members, and none has a Prisma "
                    f"schema (in {folder}: {missing.problem})",
                    missing.fix,
                )
        skipped = [
            f"{folder}: no Prisma schema, so {each.tool} fails there and touches no "
            "database; nothing backed up for it"
            for each, folder, _ in no_schema
        ]
        found = parts[0]
        if len(parts) > 1 or skipped:
            # A union in a new Found: the cache hands the same object to every caller.
            found = Found()
            for part in parts:
                found.extend(part)
            for warning in skipped:
                found.warn(warning)
        run_env = {**request.env, **operation.assignments}
        verdicts = {}
        marks: dict[str, Marker] = {}
        for target in found.targets:
            # Each database by the rules of the project it came from (its .dbguard.toml).
            origin_root, project = found.origin(target)
            assert origin_root is not None  # every Found from discover() has its root
            marker, exists = self._marker(target)
            facts = found.facts_for(target)
            remembered = self.production_marks.get(target.key)
            if marker == "production":
                self.production_marks.remember(target)
            elif marker is None and exists and remembered and remembered.because is None:
                marks[target.key] = "production"  # marked again when the command ends
            if marker is not None:
                marks[target.key] = marker
            judge = functools.partial(
                classify_production,
                target,
                run_env,
                self._settings(project),
                marker=marker,
                project_root=str(origin_root),
            )
            verdict = judge(facts=facts)
            if marker is None and remembered is not None and not verdict.production:
                # Only when nothing says so now: a project file that still says it would
                # be told twice, once as remembered "though nothing says so now".
                verdict = judge(facts=replace(facts, marked=[*facts.marked, remembered.reason()]))
            if remembered is None and verdict.lasting:
                # What the project's files say now stays said when they are edited.
                self.production_marks.remember(target, because=verdict.lasting[0])
            verdicts[target.key] = verdict
        return found, self._settings(found.project), verdicts, marks, runs_in[0]

    def _settings(self, project: ProjectConfig | None) -> ProductionSettings:
        settings = self.config.production
        return project.production_settings(settings) if project is not None else settings

    def _marker(self, target: Target) -> tuple[Marker | None, bool]:
        """The database's own environment mark, and whether the database exists: one
        that does not exist yet has none. Any other failure to read it (unreachable
        server, SQLite write lock) raises MarkUnread: a mark that cannot be read must
        not count as "not production"."""
        try:
            return self.engines.for_target(target).marker(target), True
        except DatabaseMissing:
            return None, False
        except BackupFailed as err:
            raise MarkUnread(err.problem, err.fix, database=target.label) from None

    async def _human_check(
        self,
        request: Invoke,
        production: list[Target],
        verdicts: dict[str, Verdict],
        need: Gate,
        ask: Ask,
        settings: ProductionSettings,
        agents: list[str],
    ) -> Deny | None:
        """None when a human approved this exact command (now or beforehand), else the
        denial that says why and how to get it approved."""
        bound = ApprovalRequest(
            argv=tuple(request.argv),
            cwd=request.cwd,
            databases=tuple(sorted(t.key for t in production)),
            uid=os.getuid(),
        )
        if self.approvals.consume(bound) is not None:
            return None
        names = tuple(dict.fromkeys(_typed_name(t) for t in production))
        reasons = tuple(r for t in production for r in verdicts[t.key].reasons)
        self.approvals.ttl = settings.approval_minutes * 60
        pending = self.approvals.open(bound, names, reasons)
        command = " ".join(request.argv)
        labels = ", ".join(t.label for t in production)
        why = "; ".join(reasons)
        if need is Gate.CONFIRM:
            typed = await ask(
                Confirm(
                    code=pending.code,
                    question=(
                        f"`{command}` will touch the PRODUCTION database {labels} ({why}).\n"
                        f"A backup is taken first. Type the database name ({' or '.join(names)}) "
                        "to go ahead, anything else to stop: "
                    ),
                    names=list(names),
                )
            )
            try:
                self.approvals.approve(pending.code, typed or "")
            except ApprovalError as err:
                return Deny(reason=f"not confirmed: {err.problem}", hint="nothing was run")
            self.approvals.consume(bound)
            return None
        minutes = f"{settings.approval_minutes:g} minutes"
        if agents:  # a terminal or not: say what made it an agent's
            who = (
                f"It runs in an AI agent's environment ({'; '.join(agents)}), and an "
                "agent never touches production without a human's approval."
            )
        else:
            who = "Production is never touched without a person at a terminal."
        return Deny(
            reason=f"`{command}` would touch the PRODUCTION database {labels}: {why}. {who}",
            hint=(
                "If you are an AI agent: stop here, explain what you were about to do and "
                "why, and ask a human. A human who wants it to run approves it once, within "
                f"{minutes}, in their own terminal with:  dbguardctl approve {pending.code}  "
                f"after which the same command, from the same folder, runs once when run "
                f"again within {minutes}, by the agent or by them (a backup is still taken "
                "first)."
            ),
        )

    async def _share(
        self,
        targets: list[Target],
        locks: list[DatabaseLock],
        emit: Emit,
        *,
        inside: str | None = None,
    ) -> None:
        """Hold each database's lock shared, adding it to `locks` once held; while a
        restore holds one or waits for it, retry on the loop (a blocking flock would tie
        up a worker thread for as long as the restore takes), telling the shim what it
        waits for. In the order of their keys, as every command takes them (see
        DatabaseLock). `inside`: the operation this runs under; while that runs, this
        passes a waiting restore's gate. On any failure (BackupFailed when a lock file
        cannot be made, the client gone) every lock is let go."""
        nested = inside is not None and inside in self.running
        for _, target in sorted({t.key: t for t in targets}.items()):
            lock = self.store.database_lock(target.key)
            try:
                started = next_line = time.monotonic()
                while not lock.try_shared(inside=nested):
                    now = time.monotonic()
                    if now >= next_line:
                        if next_line == started:
                            log.info("waiting for a restore", database=target.label)
                        waiting = f"a restore of {target.label}"
                        await emit(Working(elapsed=round(now - started, 1), waiting=waiting))
                        next_line = now + PROGRESS_INTERVAL
                    await asyncio.sleep(LOCK_RETRY)
            except BaseException:
                lock.release()
                _release(locks)
                raise
            locks.append(lock)

    async def _ensure_all(
        self, targets: list[Target], reason: Reason, emit: Emit, locks: list[DatabaseLock]
    ) -> list[Outcome]:
        """A good backup of each of `targets` (taken, shared or reused). When this fails
        or is left (a backup failed, the client gone), the backups it started or joined
        go on, and `locks` are let go only once all of them have ended: a restore must
        not swap under one."""
        ensures = [asyncio.ensure_future(self.backups.ensure(t, reason)) for t in targets]
        keys = [t.key for t in targets]
        progress = lambda: self.backups.progress(keys)  # noqa: E731
        try:
            return await _beating(asyncio.gather(*ensures), emit, progress)
        except BaseException:
            ended = asyncio.gather(*ensures, return_exceptions=True)
            ended.add_done_callback(lambda _: _release(locks))
            raise

    def started_command(self, op_id: str, pid: int) -> None:
        if op_id in self.running:
            self.running[op_id].pid = pid

    def finish(self, op_id: str, report: Report | None, *, ran: bool = True) -> None:
        """The command ended (`report`), or its shim vanished without saying (None); with
        `ran` False, the shim left before it was told to run the command."""
        running = self.running.pop(op_id, None)
        if running is None:
            return
        _release(running.locks)
        record = running.record
        if not ran:
            record["outcome"] = "not run"
            record["detail"] = "the shim disconnected before it was told to run the command"
        elif report is None:
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
        if running.marks and ran:
            self._put_marks_back(running.marks, record, running.marks_read)

    def lenders(self, op_id: str, key: str, borrower: int | None) -> list[str]:
        """The running commands that hold the database `key` and would lend it to a
        `dbguardctl restore` (process `borrower`) that the command `op_id` runs from its
        script: that command and the running commands it runs under (a guarded `npm run
        ci` that runs a guarded `npm run db:reset`), each only if the restore runs under
        its shim. None when `borrower` is not a process `op_id` started (a
        DBGUARD_PARENT_OP left in some other environment)."""
        if borrower is None or op_id not in self.running:
            return []
        above = {caller.pid for caller in callers(borrower)}
        if self.running[op_id].shim_pid not in above:
            log.warning("refused to lend to a process the command did not start", op=op_id)
            return []
        holding: list[str] = []
        seen: set[str] = set()
        op: str | None = op_id
        while op is not None and op not in seen and (running := self.running.get(op)):
            if running.shim_pid not in above:
                break  # named as a parent, but the restore does not run under it
            seen.add(op)
            if any(lock.key == key for lock in running.locks):
                holding.append(op)
            op = running.record.get("parent")
        return holding

    def lend(self, op_id: str, key: str, borrower: int | None) -> list[str]:
        """Such a restore would wait for the commands holding its database, which wait
        for it: they let go of it (see lenders). The restore has closed the database's
        gate first, so no other restore comes in until they hold it again (take_back).
        Returns the operations that let go."""
        lent = self.lenders(op_id, key, borrower)
        for op in lent:
            running = self.running[op]
            for lock in [lock for lock in running.locks if lock.key == key]:
                running.locks.remove(lock)
                lock.release()
        if lent:
            log.info("lent to a restore run by the command", ops=lent)
        return lent

    async def take_back(self, ops: list[str], key: str) -> None:
        """The restore `lend` let in has let go of the database: each command that lent
        it, if it still runs, holds it again, as it did before."""
        for op_id in ops:
            await self._hold_again(op_id, key)

    async def _hold_again(self, op_id: str, key: str) -> None:
        try:
            lock = self.store.database_lock(key)
        except BackupFailed as err:  # the store's folder is gone: nothing left to hold
            log.error("cannot hold a database again after a restore", op=op_id, error=str(err))
            return
        try:
            while (running := self.running.get(op_id)) is not None:
                if lock.try_shared(inside=True):
                    running.locks.append(lock)
                    return
                await asyncio.sleep(LOCK_RETRY)
        except BaseException:
            lock.release()
            raise
        lock.release()  # the command ended first

    def _put_marks_back(
        self, marks: list[tuple[Target, Marker]], command: dict[str, Any], read: datetime
    ) -> None:
        """A command that drops a database and makes it again (`prisma migrate reset` on
        MySQL, `rails db:reset`, a deleted SQLite file) takes the database's own mark
        with it, and the next command would find it unmarked: put each back (and a
        remembered production mark lost before, see dbguard.marks), in a worker thread
        that the next command waits for. A mark a person set or lowered with dbguardctl
        mark since the marks were `read` (during the approval or the backup, say) stands."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the daemon's loop (a test's Guard)
            self._restore_marks(marks, command, read)
            return
        future = loop.run_in_executor(None, self._restore_marks, marks, command, read)
        self._remarking.add(future)
        future.add_done_callback(self._remarking.discard)

    def _restore_marks(
        self, marks: list[tuple[Target, Marker]], command: dict[str, Any], read: datetime
    ) -> None:
        for target, marker in marks:
            if self.production_marks.set_by_hand_since(target.key, read):
                log.info("environment mark set by hand during the command", database=target.label)
                continue
            engine = self.engines.for_target(target)
            try:
                with contextlib.suppress(DatabaseMissing):  # an empty SQLite file takes one
                    if engine.marker(target) is not None:
                        continue  # still marked, or marked anew since
                engine.set_marker(target, marker)
            except DatabaseMissing:
                outcome, detail = (
                    "failed",
                    (
                        f"the command dropped {target.label}, marked {marker}; mark it again "
                        f"once it exists: dbguardctl mark {marker}"
                    ),
                )
            except BackupFailed as err:
                outcome, detail = (
                    "failed",
                    (
                        f"the {marker} mark of {target.label} is gone, and it could not be "
                        f"put back: {err.problem}; mark it again: dbguardctl mark {marker}"
                    ),
                )
            else:
                outcome, detail = (
                    "ok",
                    (
                        f"put back the {marker} mark of {target.label}, which it had lost "
                        "(the database was dropped and made again)"
                    ),
                )
            log.warning("environment mark", database=target.label, outcome=outcome, detail=detail)
            self.oplog.append(
                {
                    "argv": command["argv"],
                    "cwd": command["cwd"],
                    "decision": "mark",
                    "databases": [{"database": target.label}],
                    "outcome": outcome,
                    "detail": detail,
                }
            )

    def _log_running(self, record: dict[str, Any]) -> None:
        """An operation is logged when it starts as well as when it ends: a daemon killed
        meanwhile leaves this line (close_orphans), and a restore that waits for it
        names it (dbguardctl restore)."""
        self.oplog.append(
            {
                **{
                    k: record[k]
                    for k in ("argv", "cwd", "op", "decision", "backups")
                    if k in record
                },
                "databases": [{"database": d["database"]} for d in record["databases"]],
                "outcome": RUNNING,
                "daemon": self.identity,
            }
        )

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
        try:
            found = await _beating(
                asyncio.to_thread(
                    self.discovery.project_databases,
                    Path(request.cwd),
                    request.env,
                    "dbguardctl backup",
                ),
                emit,
            )
        except DiscoveryError as err:
            self._log(record, "deny", started, reason=str(err))
            return Deny(reason=err.problem, hint=err.fix)
        reason = Reason(kind="manual", argv=["dbguardctl", "backup"], cwd=request.cwd)
        record["op"] = secrets.token_hex(8)
        record["databases"] = [{"database": t.label} for t in found.targets]
        # Held as a guarded command holds them: never a backup of a database that a
        # restore is replacing; one under way is waited for, and then backed up.
        locks: list[DatabaseLock] = []
        try:
            inside = request.env.get("DBGUARD_PARENT_OP")  # run by a guarded command's script
            await self._share(found.targets, locks, emit, inside=inside)
            self._log_running(record | {"decision": "backup"})
            outcomes = await self._ensure_all(found.targets, reason, emit, locks)
        except ConnectionError:
            detail = "dbguardctl left during the backup; the backup went on"
            if len(locks) < len({t.key for t in found.targets}):  # not all held yet
                detail = "dbguardctl left while it waited for a restore"
            self._log(record, "backup", started, outcome="interrupted", detail=detail)
            raise
        except BackupFailed as err:
            self._log(record, "fail", started, reason=str(err))
            return Fail(reason=err.problem, hint=err.fix)
        _release(locks)
        record["backups"] = [_backup_record(o) for o in outcomes if o.manifest is not None]
        self._log(record, "backup", started)
        return Done(backups=_refs(outcomes), notes=_notes(found, outcomes))

    # ---- approvals (dbguardctl approve) ---------------------------------------------

    def approval_info(self, code: str) -> ApprovalInfo:
        """What `code` stands for. Raises ApprovalError."""
        pending = self.approvals.lookup(code)
        return ApprovalInfo(
            code=pending.code,
            argv=list(pending.request.argv),
            cwd=pending.request.cwd,
            databases=list(pending.request.databases),
            reasons=list(pending.reasons),
            names=list(pending.names),
            expires_in_seconds=round(pending.expires_at - self.approvals.clock(), 1),
        )

    def approve(self, code: str, typed: str) -> None:
        """A person typed `typed` for `code` in dbguardctl approve. Raises ApprovalError."""
        pending = self.approvals.approve(code, typed)
        self.oplog.append(
            {
                "argv": ["dbguardctl", "approve", pending.code],
                "decision": "approve",
                "approves": list(pending.request.argv),
                "cwd": pending.request.cwd,
                "databases": [{"database": key} for key in pending.request.databases],
            }
        )

    def status(self) -> Status:
        return Status(
            version=__version__,
            pid=os.getpid(),
            socket=str(self.socket_path),
            uptime_seconds=round(time.monotonic() - self.started, 1),
            backup_dir=str(self.store.root),
            in_flight=self.backups.in_flight(),
            problems=[
                problem
                for problem in (self.oplog.problem, self.config_rejected, *self.restart_needed)
                if problem
            ],
        )

    def close_orphans(self) -> list[str]:
        """Operations an earlier dbguardd logged as running and never saw end (it was
        killed): logged again with outcome "unknown". Returns their ids."""
        closed = []
        for record in self.oplog.unfinished():
            daemon = str(record.get("daemon", ""))
            if daemon == self.identity or _still_running(daemon):
                continue  # ours, or another dbguardd's on the same log
            record = {k: v for k, v in record.items() if k not in ("time", "daemon")}
            record["outcome"] = "unknown"
            record["detail"] = (
                "dbguardd stopped during the backup (killed or crashed)"
                if record.get("decision") == "backup"
                else "dbguardd stopped while the command ran (killed or crashed)"
            )
            self.oplog.append(record)
            closed.append(str(record.get("op")))
        return closed

    def log_unfinished_backups(self, unfinished: list[Unfinished]) -> None:
        """Backups whose writer was killed in the middle (an earlier dbguardd, or a
        dbguardctl restore's pre-restore backup), whose folders this daemon removed when
        it started or began a backup."""
        self.oplog.append_unfinished(unfinished)

    async def close(self) -> None:
        await self.backups.drain()
        for op_id in list(self.running):
            self.finish(op_id, None)
        if self._remarking:
            await asyncio.wait(set(self._remarking))
        self.engines.close()


def _anchored(request: Invoke, operation: Operation) -> tuple[Operation, Path]:
    """The folder the command runs in: the invocation's, as `env -C`, `npm --prefix`,
    a script's own folder and the like move it (discovery starts there, and a backup's
    undo looks there); and the operation with its launchers' dotenv files made absolute,
    since they are named from the invocation's folder, not from the project root."""
    cwd = Path(request.cwd)
    moved = operation.hints.get(CWD_HINT)
    folder = cwd
    if moved:
        # `cd ~/api`, `cd $HOME/api` in a script: as the shell would, from the caller's
        # environment. Wherever it leads must exist: discovery from the nearest existing
        # folder above would find another project's database.
        home = request.env.get("HOME", "")
        expanded = re.sub(r"^~(?=/|$)", lambda _: home, moved)
        expanded = re.sub(
            r"\$(?:\{(\w+)\}|(\w+))",
            lambda m: request.env.get(m.group(1) or m.group(2), "\0"),
            expanded,
        )
        # Also a workspace's package name (yarn workspace @shop/api prisma ...).
        folder = ProjectFiles(cwd).folder(expanded) or Path(os.path.normpath(cwd / expanded))
        if not folder.is_dir():
            raise DiscoveryError(
                f"{operation.description} runs in {moved!r} ({folder}), which is not a "
                "folder dbguard can look in",
                "check the folder the command (or its script's cd) moves to",
            )
    env_files = operation.hints.get(ENV_FILE_HINT)
    if env_files:
        absolute = "\n".join(os.path.normpath(cwd / name) for name in env_files.splitlines())
        operation = replace(operation, hints={**operation.hints, ENV_FILE_HINT: absolute})
    return operation, folder


def process_identity(pid: int) -> str:
    """'boot:pid:start' names one process for good, where a pid alone is reused (after
    a reboot, surely); just the pid where /proc cannot say more."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return str(pid)
    start = stat[stat.rfind(")") + 2 :].split()[19]  # field 22, starttime
    return f"{boot}:{pid}:{start}"


def _still_running(daemon: str) -> bool:
    """Whether the dbguardd that `process_identity` named is alive."""
    pid = daemon.split(":")[1] if daemon.count(":") == 2 else daemon
    if not pid.isdigit():
        return False
    if ":" in daemon:
        return process_identity(int(pid)) == daemon
    return alive(int(pid))


def _typed_name(target: Target) -> str:
    """What a person types to confirm: the database name, or the SQLite file's name."""
    if target.engine == "sqlite":
        return Path(str(target.path)).name
    return target.name or target.label


def _classifier(config: Config) -> Classifier:
    """The built-in catalog with the user's own entries, which may replace built-ins."""
    return Classifier(builtin_catalog().merged(config.rules))


def _store(
    config: Config, env: dict[str, str], on_unfinished: Callable[[list[Unfinished]], None]
) -> Store:
    return Store(
        config.backup_path(env),
        config.backup.compression_level,
        config.backup.compression_threads,
        on_unfinished,
    )


def _release(locks: list[DatabaseLock]) -> None:
    for lock in locks:
        lock.release()


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

"""Restore a backup into its database (the current contents are backed up first).

Usage: dbguardctl restore ID [--yes] [--end-connections]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dbguard import operations
from dbguard.client.talk import DaemonNotAnswering, DaemonUnavailable, holding, request
from dbguard.ctl.confirm import EndOfInput, ask_on_terminal
from dbguard.ctl.context import Context, backup_id, counted, human_size
from dbguard.discovery.project import project_root
from dbguard.engines import Engines
from dbguard.engines.base import Marker, Target, signal_handlers
from dbguard.errors import Damaged, DbguardError, RestoreFailed, RestoreIncomplete
from dbguard.marks import ProductionMarks
from dbguard.production import TargetFacts, classify_production
from dbguard.protocol import PROTOCOL_VERSION, Error, Lend, Lent
from dbguard.store import Manifest, Reason

_STOPS = (signal.SIGTERM, signal.SIGHUP)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=backup_id, help="backup id or unique prefix")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--end-connections",
        action="store_true",
        help="end other sessions connected to the database (PostgreSQL, MySQL) instead of stopping",
    )
    parser.add_argument(
        "--even-if-failed",
        action="store_true",
        help="restore a backup whose last verification failed",
    )


def run(args: argparse.Namespace, ctx: Context) -> int:
    manifest = ctx.store.get(args.id)
    target = operations.with_credentials(manifest, ctx.env)
    tables, rows = len(manifest.tables), sum(manifest.tables.values())
    ctx.print(
        f"backup {manifest.id}: {manifest.database_label}, taken "
        f"{manifest.created_at.astimezone():%Y-%m-%d %H:%M:%S} before "
        f"`{' '.join(manifest.reason.argv) or manifest.reason.kind}`, "
        f"{counted(tables, 'table')}, {counted(rows, 'row')}, "
        f"{human_size(manifest.data.size)}"
    )
    record = {
        "argv": ["dbguardctl", "restore", manifest.id]
        + (["--even-if-failed"] if args.even_if_failed else []),
        "decision": "restore",
        "databases": [{"database": target.label}],
    }
    parent = ctx.env.get("DBGUARD_PARENT_OP") or None  # the guarded command running this
    if parent:
        record["parent"] = parent
    if manifest.verified is not None and not manifest.verified.ok and not args.even_if_failed:
        refused = _failed_verification(ctx, manifest, target)
        _log_failed(ctx, record, manifest, refused)
        raise refused
    refusal = _agent_on_production(ctx, manifest, target)
    if refusal:
        ctx.error(refusal)
        return 77
    if not args.yes:
        try:
            answer = ask_on_terminal(
                f"Replace the current contents of {target.label} with this backup? "
                "(they are backed up first) [y/N] "
            )
        except EndOfInput:
            ctx.print("not restored: no answer was given (end of input)")
            return 1
        if answer is None:
            ctx.error("dbguardctl: no terminal to confirm on; pass --yes to restore from a script")
            return 77
        if answer.lower() not in ("y", "yes"):
            ctx.print("not restored")
            return 1
    # The project folder, as the backup had it: its undo (`dbguardctl restore` of this
    # pre-restore backup) finds the database's password there again.
    reason = Reason(
        kind="pre-restore", argv=["dbguardctl", "restore", manifest.id], cwd=manifest.reason.cwd
    )
    saved: list[Manifest | None] = []  # the pre-restore backup, once taken
    swapped: list[bool] = []  # once the target holds the backup's contents
    left_out: list[str] = []  # what the restored database is without (a setting, grants)

    def warn(note: str) -> None:
        ctx.error(f"dbguardctl: WARNING: {note}")
        left_out.append(note)

    stopped_after_swap = False
    engines = Engines(ctx.config.backup)
    _say_waits(ctx, engines, target)
    mark = _mark(engines, target)
    loan = _Loan(ctx, parent, target)
    try:
        with _stops_interrupt():
            before = operations.restore_backup(
                ctx.store,
                engines,
                manifest,
                target,
                reason,
                end_connections=args.end_connections,
                saved=saved.append,
                swapped=lambda: swapped.append(True),
                warn=warn,
                waiting_for_commands=lambda: _say_held(ctx, target, loan.lenders),
                waiting_for_restore=lambda: ctx.error(
                    f"dbguardctl: waiting for another restore of {target.label} to end"
                    "\n  ^C gives up; nothing is changed until it ends"
                ),
                still_waiting_for_restore=loan.check_waiting if parent else None,
                loan=loan.borrowing,
            )
    except KeyboardInterrupt:
        if not swapped:
            return _stopped_before_swap(ctx, record, manifest, target, saved)
        before, stopped_after_swap = saved[0], True  # the restore itself is done
    except DbguardError as err:
        _log_failed(ctx, record, manifest, err)
        if saved and saved[0] and isinstance(err, RestoreIncomplete):
            ctx.error(
                f"dbguardctl: the pre-restore backup {saved[0].id} holds what "
                f"{target.label} had: dbguardctl restore {saved[0].id}"
            )
        elif saved and saved[0]:
            ctx.error(f"dbguardctl: the pre-restore backup {saved[0].id} is kept")
        raise
    finally:
        engines.close()
    if mark is not None:
        _keep_mark(ctx, target, mark)
    ctx.oplog.append(
        record
        | {
            "backups": [{"id": manifest.id, "restored": True}]
            + ([{"id": before.id, "pre_restore": True}] if before else []),
            "outcome": "ok",
        }
        | ({"warnings": left_out} if left_out else {})
    )
    ctx.print(f"restored {manifest.id} into {target.label}")
    if before is not None:
        ctx.print(
            f"the contents it replaced are backup {before.id} (dbguardctl restore {before.id})"
        )
    if stopped_after_swap:
        ctx.error("dbguardctl: interrupted; it stopped once the restore was complete")
        return 130
    return 0


def _log_failed(
    ctx: Context, record: dict[str, Any], manifest: Manifest, err: DbguardError
) -> None:
    """The log is the audit trail: an attempt that failed is in it too, with why."""
    failed = {"backups": [{"id": manifest.id}], "outcome": "failed", "reason": str(err)}
    ctx.oplog.append(record | failed)


def _failed_verification(ctx: Context, manifest: Manifest, target: Target) -> Damaged:
    """Refuse a backup whose last verification failed: what it would bring back is
    known not to be what the database held. Points at the newest good one instead."""
    assert manifest.verified is not None
    problems = "; ".join(manifest.verified.problems) or "no reason recorded"
    good = ctx.store.newest(target)
    instead = (
        f"the newest good backup of {target.label} is {good.id} (dbguardctl restore {good.id})"
        if good is not None
        else f"{target.label} has no good backup"
    )
    return Damaged(
        f"backup {manifest.id} FAILED verification "
        f"{manifest.verified.at.astimezone():%Y-%m-%d %H:%M:%S}: {problems}; "
        "nothing was changed",
        f"{instead}; to restore {manifest.id} all the same, pass --even-if-failed",
    )


class _Loan:
    """A restore that a guarded command runs (from its script) of a database that
    command holds would wait for the command, which waits for the restore: once this
    restore has closed the database's gate, the command lends it its hold (`lend`),
    and holds it again before the gate opens (DatabaseLock.exclusive); while another
    restore holds the gate, check_waiting stops this one if the two could never go on.
    Anywhere else, and where no dbguardd runs (nothing holds the database then), it
    does nothing."""

    def __init__(self, ctx: Context, parent: str | None, target: Target) -> None:
        self.ctx, self.parent, self.target = ctx, parent, target
        self.lenders: list[str] = []  # the commands that lent their hold
        self.held_at_last_look: list[str] = []  # see check_waiting

    def check_waiting(self) -> None:
        """Called now and then while another restore of the database holds its gate.
        When the commands running this restore hold the database, that restore waits
        for them to end, and they wait for this one: none could go on, and this one
        stops, changing nothing. Only when they held it at two looks in a row: at one
        alone, the other may be a restore of theirs about to borrow it or just giving
        it back."""
        holders = self.holders()
        if holders and self.held_at_last_look:
            raise RestoreFailed(
                f"another restore of {self.target.label} is under way and waits for the "
                f"guarded command running this restore (op {holders[0]}) to end, which "
                "waits for this restore: neither could go on",
                "nothing was changed; run this restore before that command, outside it, "
                "or let the other restore go first",
            )
        self.held_at_last_look = holders

    def holders(self) -> list[str]:
        """The commands running this restore that hold its database (and would lend
        it, see Guard.lenders): none outside a guarded command, or with no dbguardd."""
        if not self.parent:
            return []
        try:
            reply = request(self.ctx.socket, self._lend(self.parent, probe=True))
        except DaemonUnavailable:
            return []
        return reply.ops if isinstance(reply, Lent) else []

    def _lend(self, parent: str, *, probe: bool = False) -> Lend:
        return Lend(
            type="lend", v=PROTOCOL_VERSION, op=parent, database=self.target.key, probe=probe
        )

    @contextlib.contextmanager
    def borrowing(self) -> Iterator[None]:
        if not self.parent:
            yield
            return
        with contextlib.ExitStack() as loan:
            try:
                reply = loan.enter_context(holding(self.ctx.socket, self._lend(self.parent)))
            except DaemonNotAnswering as err:
                self.ctx.error(
                    f"dbguardctl: {err.problem}, so the command running this restore keeps "
                    "its hold on the database: if it holds it, this restore waits for it"
                )
                reply = None
            except DaemonUnavailable:  # none runs, so nothing holds the database
                reply = None
            if isinstance(reply, Lent):
                self.lenders = reply.ops
            elif isinstance(reply, Error):  # a dbguardd from before `lend`
                self.ctx.error(
                    f"dbguardctl: dbguardd cannot let this restore go before the command "
                    f"running it ({reply.message}): restart dbguardd after an upgrade"
                )
            try:
                yield
            finally:
                self.lenders = []


def _say_held(ctx: Context, target: Target, lenders: list[str]) -> None:
    """Guarded commands on the database hold its lock: say which (those the log shows
    running, but for those running this restore that lent it their hold; one still being
    backed up is not there yet) and how to give up."""
    running = [
        record
        for record in ctx.oplog.unfinished()
        if any(d.get("database") == target.label for d in record.get("databases") or [])
        and record.get("op") not in lenders
    ]
    which = "".join(
        f"\n  `{' '.join(map(str, record.get('argv') or []))}` in {record.get('cwd')} "
        f"(op {record.get('op')})"
        for record in running
    )
    ctx.error(
        f"dbguardctl: waiting for guarded commands on {target.label} to end{':' if which else ''}"
        f"{which}\n  ^C gives up; nothing is changed until they end"
    )


def _say_waits(ctx: Context, engines: Engines, target: Target) -> None:
    """A SQLite restore that has to wait for another connection's transaction says so,
    once, when it starts waiting, and for whom: the wait can last half a minute."""
    if target.engine != "sqlite":
        return
    from dbguard.engines.sqlite import SqliteEngine  # only the engine in use is loaded

    def waiting(path: Path, holders: list[str], seconds: float) -> None:
        who = ", ".join(holders) or "another connection"
        theirs = "their transactions" if len(holders) > 1 else "its transaction"
        ctx.error(
            f"dbguardctl: waiting up to {seconds:.0f} s for {who} to end {theirs} on {path} ..."
        )

    engine = engines.for_target(target)
    if isinstance(engine, SqliteEngine):
        engine.restore_waits = waiting


def _mark(engines: Engines, target: Target) -> Marker | None:
    """The database's environment mark before the restore (None when it has none, or
    cannot be read: then there is nothing known to put back)."""
    try:
        return engines.for_target(target).marker(target)
    except DbguardError:
        return None


def _keep_mark(ctx: Context, target: Target, mark: Marker) -> None:
    """The mark belongs to the database, not to its contents: a backup taken before
    `dbguardctl mark production` (or one whose dump drops routines, as MySQL's does)
    must not leave a production database unmarked, open to unattended callers."""
    engines = Engines(ctx.config.backup)
    try:
        engine = engines.for_target(target)
        if engine.marker(target) != mark:
            engine.set_marker(target, mark)
            ctx.print(f"{target.label} keeps its {mark} mark")
    except DbguardError as err:
        ctx.error(
            f"dbguardctl: WARNING: {target.label} was marked {mark} and the restored "
            f"contents are not; setting the mark again failed: {err.problem}\n"
            f"  run `dbguardctl mark {mark}` in its project"
        )
    finally:
        engines.close()


def _stopped_before_swap(
    ctx: Context,
    record: dict[str, Any],
    manifest: Manifest,
    target: Target,
    saved: list[Manifest | None],
) -> int:
    """Stopped before the swap: only the scratch copy and the pre-restore backup were
    made, and the scratch copy is gone."""
    before = saved[0] if saved else None
    kept = f"; the pre-restore backup {before.id} stays" if before else ""
    ctx.error(f"dbguardctl: interrupted: {target.label} was not changed{kept}")
    backups = [{"id": manifest.id}] + ([{"id": before.id, "pre_restore": True}] if before else [])
    stopped = {"backups": backups, "outcome": "interrupted"}
    ctx.oplog.append(record | stopped | {"reason": "interrupted before the swap"})
    return 130


@contextlib.contextmanager
def _stops_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end a restore the way ^C does, so its message and log line say
    what state the database is in (the default would end the process silently)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    with signal_handlers(_STOPS, interrupt):
        yield


def _agent_on_production(ctx: Context, manifest: Manifest, target: Target) -> str | None:
    """Why an AI agent may not run this restore, or None. Production data is replaced by
    a person, as production commands are approved by one (`dbguardctl approve`)."""
    settings = ctx.config.production
    agents = ctx.agents()
    if not agents:
        return None
    engines = Engines(ctx.config.backup)
    try:
        marker = engines.for_target(target).marker(target)
    except DbguardError:
        marker = None  # unreachable or missing: the names and the settings still count
    finally:
        engines.close()
    root = str(project_root(manifest.reason.cwd)) if manifest.reason.cwd else None
    facts = TargetFacts()
    if marker is None and (remembered := ProductionMarks.in_state_dir(ctx.env).get(target.key)):
        facts.marked.append(remembered.reason())  # its mark lost with the database
    verdict = classify_production(
        target, ctx.env, settings, marker=marker, facts=facts, project_root=root
    )
    if verdict.production:
        why = verdict.reasons[0]
    elif any(m.reason.production for m in ctx.store.manifests(target)):
        # What the daemon found from the project (its .env, .dbguard.toml) when it took
        # them; this process does not run discovery for a SQLite file.
        why = "production because dbguardd judged it so when it backed it up"
    else:
        return None
    return (
        f"dbguardctl restore refuses to replace a production database in an AI agent's "
        f"environment ({'; '.join(agents)}): {why}; a person runs this restore, "
        "in their own terminal"
    )

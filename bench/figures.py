"""The figures of issue 5, each measured against its baseline in the same run.

Every function takes the run's `Context` and appends `Figure`s to it. A figure whose
server or tool is missing is reported as skipped with the reason, never dropped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.datasets import Dataset, Datasets, Tools, Unavailable, my_connect, pg_connect
from bench.harness import (
    Installation,
    RssSampler,
    children_cpu_seconds,
    cpu_seconds,
    fresh_backups,
    server_cpu,
    server_cpu_since,
)
from bench.timing import CommandFailed, interleaved, mb, median, ms, run_timed, secs, spread
from dbguard import shims
from dbguard.engines import Engines
from dbguard.errors import DbguardError
from dbguard.store import Store

PASS_TARGET = 0.008  # seconds above `python -IS -c pass`
SKIP_TARGET = 0.015
PG_TIME_TARGET = 0.5  # x the time of pg_dump -Fc
MY_TIME_TARGET = 1.1  # x the time of mariadb-dump > file
MY_BYTES_TARGET = 1 / 3  # x the bytes of mariadb-dump > file
SQLITE_THROUGHPUT_TARGET = 0.8  # x the throughput of the backup API (sqlite3 .backup)
CALLERS_TARGET = 1.3  # x the wall time of a single backup
MEMORY_TARGET = 100 * 1024 * 1024  # bytes of peak RSS


@dataclass(frozen=True)
class Runs:
    """How many timed rounds each figure takes (each after one untimed warm-up round)."""

    pass_: int
    skip: int
    backup: int
    restore: int
    callers: int
    callers_count: int = 16


FULL_RUNS = Runs(pass_=40, skip=30, backup=5, restore=3, callers=5)
QUICK_RUNS = Runs(pass_=15, skip=15, backup=3, restore=1, callers=2)


@dataclass
class Figure:
    group: str  # pass, skip, backup, memory, callers, restore
    name: str
    value: str  # dbguard's figure, for the table
    baseline: str  # what it is compared with, measured in the same run
    ratio: str  # ratio or excess over the baseline
    target: str
    met: bool | None  # None: no target (informational) or not measured
    data: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Context:
    inst: Installation
    data: Datasets
    tools: Tools
    runs: Runs
    work: Path  # scratch files: baseline dumps, copies
    engines: set[str]  # sqlite, postgres, mysql: the ones asked for
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # what later figures reuse from earlier ones
    peak_rss: dict[str, int] = field(default_factory=dict)  # dataset key -> sampled peak
    last_backup: dict[str, str] = field(default_factory=dict)  # dataset key -> backup id
    idle_rss: dict[str, int] = field(default_factory=dict)
    start_costs: tuple[float, float] | None = None  # medians: stand-in direct, python -IS

    def skipped(self, group: str, name: str, why: str) -> None:
        self.figures.append(Figure(group, name, "-", "-", "-", "-", None, {"skipped": why}, why))

    def dataset(self, key: str) -> Dataset:
        return self.data.get(key)


def _engine_of(key: str) -> str:
    return "mysql" if key.startswith("mariadb") else key.split("-")[0]


def _guarded(ctx: Context, project: Path, *args: str) -> Callable[[], float]:
    shim = str(ctx.inst.home.shims / "php")
    env = ctx.inst.home.env
    return lambda: run_timed([shim, *args], cwd=project, env=env)


def _direct(ctx: Context, project: Path, *args: str) -> Callable[[], float]:
    real = str(ctx.inst.home.stand_in)
    env = ctx.inst.home.env
    return lambda: run_timed([real, *args], cwd=project, env=env)


def _python_start(ctx: Context, project: Path) -> Callable[[], float]:
    python = shims.interpreter()
    env = ctx.inst.home.env
    return lambda: run_timed([python, "-IS", "-c", "pass"], cwd=project, env=env)


def _stats(values: list[float]) -> dict[str, Any]:
    low, high = spread(values)
    return {"median": median(values), "min": low, "max": high, "n": len(values), "samples": values}


# ---- pass ---------------------------------------------------------------------------


def pass_overhead(ctx: Context) -> None:
    """`php -v` (not a database operation) through the shim, directly, and the bare
    start of the interpreter the shims use."""
    project = ctx.inst.home.project(
        "pass", {"DB_CONNECTION": "sqlite", "DB_DATABASE": "database/database.sqlite"}
    )
    ctx.inst.oplog.skip_to_end()
    samples = interleaved(
        {
            "direct": _direct(ctx, project, "-v"),
            "python": _python_start(ctx, project),
            "shim": _guarded(ctx, project, "-v"),
        },
        ctx.runs.pass_,
    )
    records = ctx.inst.oplog.new_records()
    decisions = sorted({str(r.get("decision")) for r in records})
    direct, python, shim = (median(samples[k]) for k in ("direct", "python", "shim"))
    overhead = shim - direct
    excess = overhead - python
    ctx.figures.append(
        Figure(
            "pass",
            "pass overhead (php -v, not a db operation)",
            f"{ms(shim)} (direct {ms(direct)})",
            f"python -IS -c pass {ms(python)}",
            f"overhead {ms(overhead)} = python + {excess * 1000:+.1f} ms",
            f"<= python + {PASS_TARGET * 1000:.0f} ms",
            excess <= PASS_TARGET and decisions == ["pass"],
            {
                "shim": _stats(samples["shim"]),
                "direct": _stats(samples["direct"]),
                "python_IS": _stats(samples["python"]),
                "overhead_s": overhead,
                "excess_over_python_s": excess,
                "decisions": decisions,
                "daemon_decide_ms": median([float(r.get("decide_ms", 0)) for r in records]),
            },
            "" if decisions == ["pass"] else f"unexpected decisions {decisions}",
        )
    )


# ---- skip ---------------------------------------------------------------------------


def skip_overhead(ctx: Context) -> None:
    """A guarded command (`php artisan test`) on an unchanged small database: the
    daemon must reuse the backup it took first."""
    for key in ("sqlite-small", "postgres-small", "mariadb-small"):
        name = f"skip overhead, {_engine_of(key)}"
        if _engine_of(key) not in ctx.engines:
            continue
        try:
            dataset = ctx.dataset(key)
            _skip_one(ctx, name, dataset)
        except (Unavailable, CommandFailed, DbguardError) as err:
            ctx.skipped("skip", name, _why(err, ctx))


def _skip_one(ctx: Context, name: str, dataset: Dataset) -> None:
    project = ctx.inst.home.project(f"skip-{dataset.key}", dataset.env)
    ctx.inst.oplog.skip_to_end()
    _guarded(ctx, project, "artisan", "test")()  # the first backup, which the runs reuse
    ctx.inst.oplog.new_records()
    samples = interleaved(
        {
            "direct": _direct(ctx, project, "artisan", "test"),
            "python": _python_start(ctx, project),
            "shim": _guarded(ctx, project, "artisan", "test"),
        },
        ctx.runs.skip,
    )
    records = ctx.inst.oplog.new_records()[-len(samples["shim"]) :]
    reused_flags = [all(b.get("reused") for b in r.get("backups", [])) for r in records]
    reused = [t for t, ok in zip(samples["shim"], reused_flags, strict=True) if ok]
    direct, python = median(samples["direct"]), median(samples["python"])
    ctx.start_costs = ctx.start_costs or (direct, python)
    shim = median(reused) if reused else median(samples["shim"])
    excess = shim - direct - python
    took = len(reused_flags) - sum(reused_flags)
    note = ""
    if took:
        note = (
            f"{took} of {len(reused_flags)} runs backed up instead of reusing (the change "
            "signal moved: another session wrote to the server); median of the reused runs"
        )
    ctx.figures.append(
        Figure(
            "skip",
            f"{name} ({dataset.description})",
            f"{ms(shim)} (direct {ms(direct)})",
            f"python -IS -c pass {ms(python)}",
            f"overhead {ms(shim - direct)} = python + {excess * 1000:+.1f} ms",
            f"<= python + {SKIP_TARGET * 1000:.0f} ms",
            excess <= SKIP_TARGET and bool(reused),
            {
                "dataset": dataset.key,
                "shim_reused": _stats(reused),
                "shim_all": _stats(samples["shim"]),
                "direct": _stats(samples["direct"]),
                "python_IS": _stats(samples["python"]),
                "excess_over_python_s": excess,
                "runs_reused": sum(reused_flags),
                "runs": len(reused_flags),
                "daemon_decide_ms": median([float(r.get("decide_ms", 0)) for r in records]),
            },
            note,
        )
    )


# ---- backup throughput ----------------------------------------------------------------


BACKUP_DATASETS = ("postgres-pgbench", "postgres-text", "mariadb", "sqlite")


@dataclass(frozen=True)
class Baseline:
    label: str
    argv: list[str]
    stdout: Path | None = None  # where stdout goes (None: the tool writes its own file)


def _baseline_commands(ctx: Context, dataset: Dataset, out: Path) -> list[Baseline]:
    """The command users run by hand (first) and, for the servers, the same dump
    uncompressed into /dev/null: the floor any backup by the dump tool stands on.
    PostgreSQL adds a second floor, for any backup at all: see _parallel_copy_floor."""
    s = dataset.servers
    null = Path(os.devnull)
    if dataset.engine == "postgres":
        pg_dump = ctx.tools.pg("pg_dump")
        return [
            Baseline(
                "pg_dump -Fc > file", [pg_dump, "-Fc", *s.pg_args(), "-f", str(out), dataset.name]
            ),
            Baseline(
                "pg_dump -Fc -Z0 > /dev/null",
                [pg_dump, "-Fc", "-Z0", *s.pg_args(), dataset.name],
                null,
            ),
            *_parallel_copy_floor(ctx, dataset),
        ]
    if dataset.engine == "mysql":
        if ctx.tools.mariadb_dump is None:
            raise Unavailable("mariadb-dump / mysqldump is not installed")
        dump = [
            ctx.tools.mariadb_dump,
            "--single-transaction",
            "--quick",
            *s.my_args(),
            dataset.name,
        ]
        return [
            Baseline("mariadb-dump > file", dump, out),
            Baseline("mariadb-dump > /dev/null", dump, null),
        ]
    if ctx.tools.sqlite3 is None:
        raise Unavailable("the sqlite3 command-line shell is not installed")
    return [Baseline("sqlite3 .backup", [ctx.tools.sqlite3, dataset.name, f".backup '{out}'"])]


def _parallel_copy_floor(ctx: Context, dataset: Dataset) -> list[Baseline]:
    """The largest table's rows read by the server in two halves at once (a TID range
    each, PostgreSQL 14 and later), in COPY's cheapest format, and thrown away by
    psql: two cores on the server's part, nothing compressed or kept. On two cores, no
    backup that has the server produce the rows can take less time."""
    with pg_connect(dataset.servers, dataset.name) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int >= 140000, c.relname,"
            " pg_relation_size(c.oid) / current_setting('block_size')::int"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname = 'public'"
            " ORDER BY pg_relation_size(c.oid) DESC LIMIT 1"
        ).fetchone()
    if row is None or not row[0] or row[2] < 2:
        return []
    _, table, pages = row
    name = '"' + table.replace('"', '""') + '"'
    halves = [
        f"COPY (SELECT * FROM {name} WHERE ctid {where} '({pages // 2},0)')"
        " TO STDOUT (FORMAT binary)"
        for where in ("<", ">=")
    ]
    psql = [ctx.tools.pg("psql"), *dataset.servers.pg_args(), "-X", "-q", "-d", dataset.name]
    # Both at once; fails if either fails.
    script = (
        'a=$1 b=$2; shift 2; "$@" -c "$a" >/dev/null & first=$!; '
        '"$@" -c "$b" >/dev/null || exit 1; wait $first'
    )
    label = f"2 parallel COPY halves of {table} > /dev/null"
    return [Baseline(label, ["sh", "-c", script, "sh", *halves, *psql])]


def _run_baseline(
    ctx: Context,
    baseline: Baseline,
    out: Path,
    engine: str,
    cpu: list[tuple[float, float | None]] | None = None,
) -> Callable[[], float]:
    """A timed run of `baseline`; its CPU seconds and the server's go to `cpu`."""
    env = ctx.inst.home.env

    def run() -> float:
        out.unlink(missing_ok=True)
        os.sync()  # as for dbguard's rounds
        before = children_cpu_seconds()
        server = server_cpu(engine)
        if baseline.stdout is None:
            elapsed = run_timed(baseline.argv, cwd=ctx.work, env=env)
        else:
            with baseline.stdout.open("wb") as sink:
                elapsed = run_timed(baseline.argv, cwd=ctx.work, env=env, stdout=sink)
        if cpu is not None:
            cpu.append((children_cpu_seconds() - before, server_cpu_since(engine, server)))
        return elapsed

    return run


def _dbguard_backup(
    ctx: Context,
    dataset: Dataset,
    project: Path,
    ids: list[str] | None = None,
    cpu: list[tuple[float, float, float | None]] | None = None,
    after: list[tuple[float, bool]] | None = None,
) -> Callable[[], float]:
    """One guarded command that must back up (the database was just changed), timed end
    to end, with the daemon's RSS sampled throughout; the backup's id goes to `ids`,
    the CPU seconds (the daemon's own, its dump tool's, the server's) to `cpu`. With `after`, the
    same command runs once more (untimed for the backup figure): its time, and whether
    it reused the new backup, go there."""
    guarded = _guarded(ctx, project, "artisan", "test")
    pid = ctx.inst.daemon.pid

    def run() -> float:
        ctx.data.touch(dataset)
        os.sync()  # the previous round's output is not this round's writeback
        ctx.inst.oplog.skip_to_end()
        own, tools = cpu_seconds(pid)
        server = server_cpu(dataset.engine)
        with RssSampler(pid) as sampler:
            elapsed = guarded()
        own_after, tools_after = cpu_seconds(pid)
        if cpu is not None:
            server_used = server_cpu_since(dataset.engine, server)
            cpu.append((own_after - own, tools_after - tools, server_used))
        ctx.peak_rss[dataset.key] = max(ctx.peak_rss.get(dataset.key, 0), sampler.peak)
        taken = fresh_backups(ctx.inst.oplog.new_records())
        if len(taken) != 1:
            raise CommandFailed(f"expected one new backup of {dataset.key}, got {taken}")
        ctx.last_backup[dataset.key] = taken[0]
        if ids is not None:
            ids.append(taken[0])
        if after is not None:
            again = guarded()
            reused = not fresh_backups(ctx.inst.oplog.new_records())
            after.append((again, reused))
        return elapsed

    return run


def backup_throughput(ctx: Context) -> None:
    for key in BACKUP_DATASETS:
        name = f"backup, {key}"
        if _engine_of(key) not in ctx.engines:
            continue
        try:
            _backup_one(ctx, name, ctx.dataset(key))
        except (Unavailable, CommandFailed, DbguardError) as err:
            ctx.skipped("backup", name, _why(err, ctx))


def _backup_one(ctx: Context, name: str, dataset: Dataset) -> None:
    project = ctx.inst.home.project(f"backup-{dataset.key}", dataset.env)
    out = ctx.work / f"baseline-{dataset.key}.out"
    commands = _baseline_commands(ctx, dataset, out)
    base_cpu: list[tuple[float, float | None]] = []
    variants = {b.label: _run_baseline(ctx, b, out, dataset.engine, base_cpu if i == 0 else None)
                for i, b in enumerate(commands)}  # fmt: skip
    ids: list[str] = []
    cpu: list[tuple[float, float, float | None]] = []
    first: list[tuple[float, bool]] = []
    variants["dbguard"] = _dbguard_backup(ctx, dataset, project, ids, cpu, first)
    samples = interleaved(variants, ctx.runs.backup)
    # the warm-up round is not timed
    ids, cpu, base_cpu, first = ids[1:], cpu[1:], base_cpu[1:], first[1:]
    _first_reuse(ctx, dataset, project, first)
    cpu_daemon = median([c[0] for c in cpu])
    cpu_tool = median([c[1] for c in cpu])
    cpu_base = median([c[0] for c in base_cpu])
    server = _median_known([c[2] for c in cpu])
    server_base = _median_known([c[1] for c in base_cpu])
    baseline_label = commands[0].label
    # The baseline's own output, once more, to weigh it (the runs delete it as they go).
    variants[baseline_label]()
    base_bytes = out.stat().st_size
    out.unlink(missing_ok=True)
    manifests = [ctx.inst.home.manifest(i) for i in ids]
    stored = int(median([float(m["data"]["size"]) for m in manifests]))
    raw = int(median([float(m["data"]["raw_size"]) for m in manifests]))
    in_daemon = median([m["duration_ms"] / 1000 for m in manifests])
    t_dbguard = median(samples["dbguard"])
    t_base = median(samples[baseline_label])
    time_ratio = t_dbguard / t_base
    size_ratio = stored / base_bytes if base_bytes else float("nan")
    data: dict[str, Any] = {
        "dataset": dataset.key,
        "database_bytes": dataset.size,
        "dbguard": _stats(samples["dbguard"]),
        "dbguard_backup_in_daemon_s": in_daemon,
        "dbguard_stored_bytes": stored,
        "dbguard_raw_dump_bytes": raw,
        "dbguard_tool": manifests[-1]["tool"],
        "baselines": {b.label: _stats(samples[b.label]) for b in commands},
        "baseline_bytes": base_bytes,
        "time_ratio": time_ratio,
        "size_ratio": size_ratio,
        "method": "guarded command end to end (shim -> dbguardd -> backup -> stand-in)",
        "cpu_s": {
            "dbguard_daemon": cpu_daemon,
            "dbguard_dump_tool": cpu_tool,
            "baseline": cpu_base,
            "server_during_dbguard": server,
            "server_during_baseline": server_base,
            "note": "user+system seconds; the server's are its local processes' "
            "(None: not visible from here)",
        },
    }
    floor_text = ""
    data["floor_ratios"] = {}
    for floor_run in commands[1:]:
        floor = median(samples[floor_run.label])
        data["floor_ratios"][floor_run.label] = t_dbguard / floor
        floor_text += f"; floor {floor_run.label} {secs(floor)} ({floor / t_base:.2f}x)"
    value = f"{secs(t_dbguard)}, {mb(stored)} stored"
    baseline = f"{baseline_label} {secs(t_base)}, {mb(base_bytes)}{floor_text}"
    if dataset.engine == "postgres":
        ratio = f"{time_ratio:.2f}x time, {size_ratio:.2f}x size"
        target = f"<= {PG_TIME_TARGET}x time"
        met = time_ratio <= PG_TIME_TARGET
    elif dataset.engine == "mysql":
        ratio = f"{time_ratio:.2f}x time, {size_ratio:.2f}x bytes"
        target = f"<= {MY_TIME_TARGET}x time, <= 1/3 bytes"
        met = time_ratio <= MY_TIME_TARGET and size_ratio <= MY_BYTES_TARGET
    else:
        throughput = dataset.size / t_dbguard
        base_throughput = dataset.size / t_base
        ratio = f"{base_throughput and throughput / base_throughput:.2f}x throughput"
        value = f"{secs(t_dbguard)} = {mb(throughput)}/s, {mb(stored)} stored"
        baseline = f"{baseline_label} {secs(t_base)} = {mb(base_throughput)}/s"
        target = f">= {SQLITE_THROUGHPUT_TARGET}x throughput"
        met = throughput / base_throughput >= SQLITE_THROUGHPUT_TARGET
        data["throughput_ratio"] = throughput / base_throughput
    ctx.figures.append(
        Figure(
            "backup",
            f"{name} ({mb(dataset.size)}: {dataset.description})",
            value,
            baseline,
            ratio,
            target,
            met,
            data,
            f"backup inside the daemon {secs(in_daemon)} of the {secs(t_dbguard)}; CPU "
            f"seconds dbguard {cpu_daemon:.2f} (daemon) + {cpu_tool:.2f} (dump tool)"
            f"{_server_text(server)}, {baseline_label} {cpu_base:.2f}"
            f"{_server_text(server_base)}"
            f"{_cpu_floor_text(cpu_daemon + cpu_tool, server, cpu_base, server_base, t_base)}",
        )
    )


def _median_known(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None


def _server_text(seconds: float | None) -> str:
    return "" if seconds is None else f" + {seconds:.2f} (server)"


def _cpu_floor_text(
    dbguard: float, server: float | None, base: float, base_server: float | None, wall: float
) -> str:
    """How busy the baseline keeps the machine, and the least wall time dbguard's CPU
    seconds allow on its cores: near the core count, whatever dbguard adds costs time."""
    if server is None or base_server is None or wall <= 0:
        return ""
    cores = os.cpu_count() or 1
    total = dbguard + server
    return (
        f"; the baseline kept {(base + base_server) / wall:.1f} of {cores} cores busy; "
        f"dbguard's {total:.2f} CPU s take at least {total / cores:.2f} s on {cores} cores"
    )


def _first_reuse(
    ctx: Context, dataset: Dataset, project: Path, runs: list[tuple[float, bool]]
) -> None:
    """The guarded command right after a backup, on the unchanged large database: a
    skip like the skip figure's, but the first one to use that backup."""
    if ctx.start_costs is None:
        samples = interleaved(
            {"direct": _direct(ctx, project, "-v"), "python": _python_start(ctx, project)},
            ctx.runs.skip,
        )
        ctx.start_costs = (median(samples["direct"]), median(samples["python"]))
    direct, python = ctx.start_costs
    reused = [t for t, ok in runs if ok]
    name = f"first reuse after a backup, {dataset.key} ({mb(dataset.size)})"
    if not reused:
        ctx.figures.append(
            Figure(
                "skip",
                name,
                f"backed up again in {len(runs)} of {len(runs)} runs",
                f"python -IS -c pass {ms(python)}",
                "-",
                f"<= python + {SKIP_TARGET * 1000:.0f} ms",
                False,
                {"dataset": dataset.key, "runs_reused": 0, "runs": len(runs)},
                "the change signal moved during every backup, so the next command could "
                "not reuse it (see the README on MariaDB without a binary log)",
            )
        )
        return
    shim = median(reused)
    excess = shim - direct - python
    note = ""
    if len(reused) < len(runs):
        note = f"{len(runs) - len(reused)} of {len(runs)} backed up again (signal moved)"
    ctx.figures.append(
        Figure(
            "skip",
            name,
            f"{ms(shim)} (direct {ms(direct)})",
            f"python -IS -c pass {ms(python)}",
            f"overhead {ms(shim - direct)} = python + {excess * 1000:+.1f} ms",
            f"<= python + {SKIP_TARGET * 1000:.0f} ms",
            excess <= SKIP_TARGET,
            {
                "dataset": dataset.key,
                "shim_reused": _stats(reused),
                "runs_reused": len(reused),
                "runs": len(runs),
                "excess_over_python_s": excess,
            },
            note,
        )
    )


# ---- memory -------------------------------------------------------------------------


def record_idle(ctx: Context, when: str) -> None:
    ctx.idle_rss[when] = ctx.inst.daemon.memory().rss


def memory_only(ctx: Context) -> None:
    """--only memory: back up the largest database twice (no baselines) while sampling."""
    keys = [k for k in BACKUP_DATASETS if _engine_of(k) in ctx.engines]
    candidates = []
    for key in keys:
        try:
            candidates.append(ctx.dataset(key))
        except Unavailable as err:
            ctx.notes.append(f"memory: {key} skipped: {err}")
    if not candidates:
        return
    largest = max(candidates, key=lambda d: d.size)
    project = ctx.inst.home.project(f"backup-{largest.key}", largest.env)
    run = _dbguard_backup(ctx, largest, project)
    for _ in range(2):
        run()


def memory_figures(ctx: Context) -> None:
    mem = ctx.inst.daemon.memory()
    idle = ctx.idle_rss.get("before backups", mem.rss)
    sizes = {k: ctx.data.built[k].size for k in ctx.peak_rss if k in ctx.data.built}
    if sizes:
        largest = max(sizes, key=lambda k: sizes[k])
        peak = ctx.peak_rss[largest]
        per = {k: ctx.peak_rss[k] for k in sizes}
        ctx.figures.append(
            Figure(
                "memory",
                f"memory: daemon peak RSS backing up the largest ({largest}, {mb(sizes[largest])})",
                mb(peak),
                f"idle {mb(idle)}",
                f"VmHWM since start {mb(mem.hwm)}",
                f"< {MEMORY_TARGET / 1024 / 1024:.0f} MiB",
                peak < MEMORY_TARGET and mem.hwm < MEMORY_TARGET,
                {
                    "largest": largest,
                    "peak_rss_bytes": peak,
                    "vmhwm_bytes": mem.hwm,
                    "idle_rss_bytes": ctx.idle_rss,
                    "peak_rss_by_dataset": per,
                    "database_bytes": sizes,
                    "sampling": "VmRSS from /proc/<pid>/status every 10 ms during each backup",
                },
                "peak per database: "
                + ", ".join(f"{k} {mb(v)} ({mb(sizes[k])} db)" for k, v in per.items()),
            )
        )
    ctx.figures.append(
        Figure(
            "memory",
            "memory: daemon idle RSS",
            mb(idle),
            "-",
            f"after all figures {mb(mem.rss)}",
            "-",
            None,
            {"idle_rss_bytes": ctx.idle_rss, "rss_at_end_bytes": mem.rss},
            "idle: after start and the pass/skip figures (engines loaded, connections kept)",
        )
    )


# ---- many callers -----------------------------------------------------------------------


CALLER_DATASETS = ("sqlite", "postgres-text", "mariadb")


def many_callers(ctx: Context) -> None:
    for key in CALLER_DATASETS:
        name = f"many callers, {key}"
        if _engine_of(key) not in ctx.engines:
            continue
        try:
            _callers_one(ctx, name, ctx.dataset(key))
        except (Unavailable, CommandFailed, DbguardError) as err:
            ctx.skipped("callers", name, _why(err, ctx))


def _callers_one(ctx: Context, name: str, dataset: Dataset) -> None:
    project = ctx.inst.home.project(f"callers-{dataset.key}", dataset.env)
    guarded = [str(ctx.inst.home.shims / "php"), "artisan", "test"]
    # A Python shim that adds nothing: it starts and execs the same command.
    bare_shim = [
        shims.interpreter(),
        "-IS",
        "-c",
        "import os, sys; os.execv(sys.argv[1], sys.argv[1:])",
        str(ctx.inst.home.stand_in),
        *guarded[1:],
    ]
    count = ctx.runs.callers_count
    single_times: list[float] = []
    many_times: list[float] = []
    floor_times: list[float] = []
    backups_per_run: list[int] = []
    failures: list[str] = []
    for _ in range(ctx.runs.callers):
        single, records = _burst(ctx, dataset, project, [guarded], failures)
        single_times.append(single)
        _one_backup("the single command", records, failures)
        many, records = _burst(ctx, dataset, project, [guarded] * count, failures)
        many_times.append(many)
        allowed = [r for r in records if r.get("decision") == "allow"]
        if len(allowed) != count:
            failures.append(f"{len(allowed)} of {count} commands were allowed")
        backups_per_run.append(len(fresh_backups(records)))
        # The floor: the same backup with the other callers' commands run beside it by
        # Python shims that add nothing, what any Python shim would cost on these cores.
        beside = [guarded] + [bare_shim] * (count - 1)
        floor, records = _burst(ctx, dataset, project, beside, failures)
        floor_times.append(floor)
        _one_backup("the floor's command", records, failures)
    if failures:
        raise CommandFailed(f"{name}: {failures[0]}")
    single, many, floor = median(single_times), median(many_times), median(floor_times)
    ratio = many / single
    exactly_one = all(n == 1 for n in backups_per_run)
    ctx.figures.append(
        Figure(
            "callers",
            f"{name} ({mb(dataset.size)})",
            f"{count} commands {secs(many)}, backups per run {backups_per_run}",
            f"1 command {secs(single)}; floor 1 command + {count - 1} run by do-nothing "
            f"`python -IS` shims {secs(floor)} ({floor / single:.2f}x)",
            f"{ratio:.2f}x",
            f"1 backup, <= {CALLERS_TARGET}x",
            exactly_one and ratio <= CALLERS_TARGET,
            {
                "dataset": dataset.key,
                "callers": count,
                "many": _stats(many_times),
                "single": _stats(single_times),
                "floor": _stats(floor_times),
                "ratio": ratio,
                "floor_ratio": floor / single,
                "backups_per_run": backups_per_run,
            },
        )
    )


def _one_backup(what: str, records: list[dict[str, Any]], failures: list[str]) -> None:
    """A burst timed as a backup's baseline must have taken exactly one."""
    taken = len(fresh_backups(records))
    if taken != 1:
        failures.append(f"{what} took {taken} backups instead of one")


def _burst(
    ctx: Context, dataset: Dataset, project: Path, commands: list[list[str]], failures: list[str]
) -> tuple[float, list[dict[str, Any]]]:
    """Seconds from starting `commands` at once on a just-changed database to the last
    one's exit, and the operations they logged; a failed command's stderr goes to
    `failures`."""
    ctx.data.touch(dataset)
    os.sync()  # each burst starts with no other round's writeback pending
    ctx.inst.oplog.skip_to_end()
    env = ctx.inst.home.env
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            argv,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for argv in commands
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            failures.append(err.decode(errors="replace").strip())
    elapsed = time.perf_counter() - started
    return elapsed, ctx.inst.oplog.new_records()


# ---- restore ----------------------------------------------------------------------------


RESTORE_DATASETS = ("postgres-pgbench", "postgres-text", "mariadb", "sqlite")


def restore_times(ctx: Context) -> None:
    for key in RESTORE_DATASETS:
        name = f"restore, {key}"
        if _engine_of(key) not in ctx.engines:
            continue
        try:
            _restore_one(ctx, name, ctx.dataset(key))
        except (Unavailable, CommandFailed, DbguardError) as err:
            ctx.skipped("restore", name, _why(err, ctx))


def _restore_one(ctx: Context, name: str, dataset: Dataset) -> None:
    store = Store(ctx.inst.home.backups)
    manifest = None
    if dataset.key in ctx.last_backup:
        # Retention may have pruned it since (the later figures take more backups).
        with contextlib.suppress(DbguardError):
            manifest = store.get(ctx.last_backup[dataset.key])
    if manifest is None:
        project = ctx.inst.home.project(f"backup-{dataset.key}", dataset.env)
        _dbguard_backup(ctx, dataset, project)()
        manifest = store.get(ctx.last_backup[dataset.key])
    backup_id = manifest.id
    out = ctx.work / f"restore-{dataset.key}.dump"
    _run_baseline(
        ctx, _baseline_commands(ctx, dataset, out)[0], out, dataset.engine
    )()  # to restore
    baseline_label, baseline = _baseline_restore(ctx, dataset, out)
    engines = Engines()
    target = dataset.target()
    engine = engines.for_target(target)

    def dbguard_restore() -> float:
        started = time.perf_counter()
        with store.work_folder() as (_, scratch), store.open_data(manifest) as data:
            engine.restore(target, data, manifest.data.format, scratch)
        return time.perf_counter() - started

    try:
        samples = interleaved(
            {baseline_label: baseline, "dbguard": dbguard_restore}, ctx.runs.restore, warmup=0
        )
    finally:
        engines.close()
        out.unlink(missing_ok=True)
        ctx.data.drop_scratch()
    t_base, t_dbguard = median(samples[baseline_label]), median(samples["dbguard"])
    ctx.figures.append(
        Figure(
            "restore",
            f"{name} ({mb(dataset.size)})",
            secs(t_dbguard),
            f"{baseline_label} {secs(t_base)}",
            f"{t_dbguard / t_base:.2f}x time",
            "(reported)",
            None,
            {
                "dataset": dataset.key,
                "backup": backup_id,
                "dbguard": _stats(samples["dbguard"]),
                "baseline": _stats(samples[baseline_label]),
                "method": "engine.restore from the store (checksum, zstd, tool, swap), "
                "in-process; `dbguardctl restore` also backs up the current state first",
            },
        )
    )


def _baseline_restore(
    ctx: Context, dataset: Dataset, dump: Path
) -> tuple[str, Callable[[], float]]:
    """What users run to put their hand-made backup back: into a new database for the
    servers (created and dropped untimed), a file copy for SQLite."""
    env = ctx.inst.home.env
    s = dataset.servers
    scratch = ctx.data.scratch("restore")
    if dataset.engine == "postgres":
        pg_restore = ctx.tools.pg("pg_restore")

        def pg() -> float:
            with pg_connect(s) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{scratch}"')
            argv = [pg_restore, *s.pg_args(), "-d", scratch, str(dump)]
            return run_timed(argv, cwd=ctx.work, env=env)

        return "pg_restore -d new", pg
    if dataset.engine == "mysql":
        client = ctx.tools.mariadb
        if client is None:
            raise Unavailable("the mariadb / mysql client is not installed")

        def my() -> float:
            with my_connect(s) as conn, conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{scratch}`")
                cur.execute(f"CREATE DATABASE `{scratch}`")
            with dump.open("rb") as source:
                return run_timed(
                    [client, *s.my_args(), scratch], cwd=ctx.work, env=env, stdin=source
                )

        return "mariadb new < file", my
    copy = ctx.work / "restored-copy.sqlite"

    def sqlite_copy() -> float:
        copy.unlink(missing_ok=True)
        elapsed = run_timed(["cp", str(dump), str(copy)], cwd=ctx.work, env=env)
        copy.unlink(missing_ok=True)
        return elapsed

    if shutil.which("cp") is None:
        raise Unavailable("cp is not installed")
    return "cp backup db", sqlite_copy


def _why(err: Exception, ctx: Context) -> str:
    text = str(err)
    if isinstance(err, CommandFailed) and "dbguardd" in text:
        tail = ctx.inst.daemon.log_tail(3)
        text += f" | daemon log: {tail[-600:]}"
    return text

"""Run dbguard's benchmark suite and print every figure beside its target and baseline.

Usage (from the repository root, with the project's virtualenv):

    .venv/bin/python -m bench.run                  # the full suite, about 10 minutes
    .venv/bin/python -m bench.run --quick          # small databases, fewer runs (CI)
    .venv/bin/python -m bench.run --only skip,pass --engine sqlite
    .venv/bin/python -m bench.run --keep-data      # keep the databases for the next run

`python bench/run.py` works too. Results: bench/results/<timestamp>.json and
bench/results/latest.md. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import fcntl
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench import figures
from bench.datasets import (
    FULL,
    QUICK,
    Datasets,
    Servers,
    Tools,
    Unavailable,
    my_connect,
    pg_connect,
)
from bench.figures import Context, Figure
from bench.harness import Installation
from bench.monitor import Monitor
from bench.report import summary, table, write
from dbguard import shims

GROUPS = ("pass", "skip", "backup", "memory", "callers", "restore")
ENGINES = ("sqlite", "postgres", "mysql")
ROOT = Path(__file__).resolve().parent.parent


def _names(values: list[str] | None, allowed: tuple[str, ...], what: str) -> list[str]:
    if not values:
        return list(allowed)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise SystemExit(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return [n for n in allowed if n in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="~60 MB databases, fewer runs")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these figures: {', '.join(GROUPS)}",
    )
    parser.add_argument(
        "--engine",
        action="append",
        metavar="NAME",
        help=f"only these engines: {', '.join(ENGINES)}",
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the databases for the next run to reuse"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dbguard-bench",
        help="where the SQLite databases live (default: %(default)s)",
    )
    parser.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results", help="results folder"
    )
    return parser.parse_args(argv)


def _shown_path(path: str) -> str:
    """The interpreter as the user typed it: relative to the repository when inside."""
    absolute = Path(path).absolute()
    return str(absolute.relative_to(ROOT)) if absolute.is_relative_to(ROOT) else path


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, check=False, timeout=10)
    except OSError as err:
        return f"unavailable ({err.strerror})"
    return out.stdout.decode(errors="replace").strip().splitlines()[0] if out.stdout else "?"


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, check=False
    )
    return out.stdout.decode().strip()


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }


def _servers(servers: Servers) -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        with pg_connect(servers) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgres"] = str(row[0]) if row else "?"
    except Unavailable as err:
        found["postgres"] = f"unavailable: {err}"
    try:
        with my_connect(servers) as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            found["mariadb"] = str(cur.fetchone()[0])
    except Unavailable as err:
        found["mariadb"] = f"unavailable: {err}"
    return found


def _tools(tools: Tools) -> dict[str, str]:
    found: dict[str, str] = {}
    if tools.pg_bin is not None:
        for name in ("pg_dump", "pg_restore", "pgbench"):
            found[name] = f"{tools.pg(name)}: {_version([tools.pg(name), '--version'])}"
    for name, path in (
        ("mariadb-dump", tools.mariadb_dump),
        ("mariadb", tools.mariadb),
        ("sqlite3", tools.sqlite3),
    ):
        found[name] = f"{path}: {_version([path, '--version'])}" if path else "not installed"
    return found


def needed_datasets(groups: list[str], engines: list[str]) -> list[str]:
    keys: list[str] = []
    if "skip" in groups:
        keys += ["sqlite-small", "postgres-small", "mariadb-small"]
    if {"backup", "memory", "restore"} & set(groups):
        keys += list(figures.BACKUP_DATASETS)
    if "callers" in groups:
        keys += list(figures.CALLER_DATASETS)
    wanted = {"sqlite": "sqlite", "postgres": "postgres", "mariadb": "mysql"}
    return [k for k in dict.fromkeys(keys) if wanted[k.split("-")[0]] in engines]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    groups = _names(args.only, GROUPS, "figure")
    engines = _names(args.engine, ENGINES, "engine")
    scale = QUICK if args.quick else FULL
    runs = figures.QUICK_RUNS if args.quick else figures.FULL_RUNS
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    servers, tools = Servers(), Tools()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    lock = (args.data_dir / "lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another benchmark run holds {args.data_dir / 'lock'}; wait for it to finish")
        return 75
    meta: dict[str, Any] = {
        "mode": scale.mode,
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(
            [_shown_path(sys.executable), "-m", "bench.run", *(argv or sys.argv[1:])]
        ),
        "groups": groups,
        "engines": engines,
        "runs": vars(runs),
        "machine": _machine(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "servers": _servers(servers),
        "tools": _tools(tools),
        "dbguard": {
            "version": _version(
                [sys.executable, "-c", "import dbguard; print(dbguard.__version__)"]
            ),
            "commit": _git("rev-parse", "--short", "HEAD") or "?",
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "src")),
        },
        "shim_interpreter": shims.interpreter(),
        "page_cache": (
            "warm: every figure runs one untimed round of dbguard and its baseline first, and "
            "the timed rounds alternate between them, so both read the same cached data "
            f"({_machine()['memory']} holds every database)"
        ),
        "config": "dbguard defaults: zstd level 1, 2 compression threads, max_parallel 2",
    }
    print(f"dbguard benchmark ({scale.mode}): {', '.join(groups)} on {', '.join(engines)}")
    data = Datasets(scale, args.data_dir, servers, tools)
    work = Path(tempfile.mkdtemp(prefix="dbguard-bench-"))
    extra_notes: list[str] = []
    built: list[dict[str, Any]] = []
    inst: Installation | None = None
    monitor: Monitor | None = None
    interference: dict[str, str] = {}
    load: dict[str, str] = {}  # 1-minute load average before and after each figure
    ctx: Context | None = None
    try:
        with contextlib.suppress(Unavailable):
            data.drop_scratch()
        for key in needed_datasets(groups, engines):
            print(f"  dataset {key} ...", end="", flush=True)
            try:
                item = data.get(key)
            except Unavailable as err:
                print(" unavailable")
                extra_notes.append(f"dataset {key}: {err}")
                continue
            how = "reused" if item.build_seconds is None else f"built in {item.build_seconds:.1f} s"
            print(f" {item.size / 1e6:.0f} MB, {how}")
            built.append(
                {
                    "key": item.key,
                    "description": item.description,
                    "name": item.name,
                    "size": item.size,
                    "build_seconds": item.build_seconds,
                }
            )
        monitor = Monitor(servers).start()
        inst = Installation.start(work / "home")
        ctx = Context(inst, data, tools, runs, work, set(engines))
        figures.record_idle(ctx, "after start")

        def memory(c: Context) -> None:
            if "backup" not in groups:  # else the backup figure's runs were sampled
                figures.memory_only(c)
            figures.memory_figures(c)

        steps: list[tuple[str, Callable[[Context], None]]] = [
            ("pass", figures.pass_overhead),
            ("skip", figures.skip_overhead),
            ("backup", figures.backup_throughput),
            ("memory", memory),
            ("callers", figures.many_callers),
            ("restore", figures.restore_times),
        ]
        for group, step in steps:
            if group not in groups:
                continue
            if group in ("backup", "memory") and "before backups" not in ctx.idle_rss:
                figures.record_idle(ctx, "before backups")
            print(f"  {group} ...", flush=True)
            load_before = os.getloadavg()[0]
            try:
                with monitor.window() as seen:
                    step(ctx)
            except Exception as err:  # one broken figure must not hide the others
                ctx.figures.append(
                    Figure(
                        group,
                        group,
                        "-",
                        "-",
                        "-",
                        "-",
                        None,
                        {"error": traceback.format_exc()},
                        f"failed: {err}",
                    )
                )
            load[group] = f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"
            if seen.describe():
                extra_notes.append(f"during the {group} figures {seen.describe()}")
                interference[group] = seen.describe()
        figures.record_idle(ctx, "after all figures")
    finally:
        if monitor is not None:
            monitor.stop()
        if inst is not None:
            inst.stop()
        with contextlib.suppress(Unavailable):
            data.drop_scratch()
        if not args.keep_data:
            data.drop_all()
        shutil.rmtree(work, ignore_errors=True)
        lock.close()
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["duration_s"] = time.monotonic() - started
    meta["datasets"] = built
    meta["other_activity"] = interference
    meta["load_by_figure"] = load
    results = sorted(ctx.figures if ctx is not None else [], key=lambda f: GROUPS.index(f.group))
    if args.quick:
        extra_notes.append(
            "--quick: the databases are about 60 MB, and the backup and many-callers "
            "targets are set for 300 MB and more, where fixed costs (starting 16 shims, "
            "fsync, connecting) weigh far less; read those verdicts with that in mind"
        )
    notes = extra_notes + (ctx.notes if ctx is not None else [])
    json_path, md_path = write(args.results, stamp, meta, results, notes)
    print()
    print(table(results))
    print()
    print(summary(results))
    for note in [f"{f.name}: {f.note}" for f in results if f.note] + notes:
        print(f"  - {note}")
    print(
        f"\nresults: {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}"
    )
    print(f"         {md_path.relative_to(ROOT) if md_path.is_relative_to(ROOT) else md_path}")
    print(f"{meta['duration_s']:.0f} s, load average {meta['load_before']} -> {meta['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

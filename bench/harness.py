"""A private dbguard installation for the benchmark: a throwaway home (XDG folders,
shims, a stand-in `php`), one dbguardd, Laravel-shaped projects pointing at the
benchmark databases, and the daemon's memory read from /proc.

Nothing here touches the user's own dbguard: the daemon, its socket, store and log
live in the work folder, and the shims are on PATH only for the commands we run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from dbguard import shims
from dbguard.oplog import RUNNING

READY_TIMEOUT = 30.0
# A stand-in for the guarded tool: the figures are dbguard's cost, not PHP's start-up.
STAND_IN = "#!/bin/sh\n# dbguard benchmark stand-in: does nothing, at once\nexit 0\n"
GUARDED = "php"


def wait_for_socket(path: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dbguardd exited with {process.returncode} before it was ready")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise TimeoutError(f"dbguardd did not listen on {path} within {READY_TIMEOUT:g} s")


@dataclass
class BenchHome:
    """XDG folders, a shims folder and a bin of stand-ins under `root`."""

    root: Path
    runtime: Path  # short: Unix socket paths are limited to 107 bytes

    @classmethod
    def create(cls, root: Path) -> BenchHome:
        runtime = Path(tempfile.mkdtemp(prefix="dbgb", dir="/tmp"))
        runtime.chmod(0o700)
        home = cls(root, runtime)
        home.bin.mkdir(parents=True)
        stand_in = home.bin / GUARDED
        stand_in.write_text(STAND_IN)
        stand_in.chmod(0o755)
        shims.install(home.shims, [GUARDED])
        return home

    def remove(self) -> None:
        shutil.rmtree(self.runtime, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def env(self) -> dict[str, str]:
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DBGUARD_", "XDG_", "DB_", "DATABASE_URL", "APP_ENV", "PG"))
        }
        keep.update(
            XDG_RUNTIME_DIR=str(self.runtime),
            XDG_DATA_HOME=str(self.root / "data"),
            XDG_STATE_HOME=str(self.root / "state"),
            XDG_CONFIG_HOME=str(self.root / "config"),
            PATH=f"{self.shims}:{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        )
        return keep

    @property
    def socket(self) -> Path:
        return self.runtime / "dbguard" / "dbguard.sock"

    @property
    def shims(self) -> Path:
        return self.root / "shims"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def stand_in(self) -> Path:
        return self.bin / GUARDED

    @property
    def backups(self) -> Path:
        return self.root / "data" / "dbguard" / "backups"

    @property
    def oplog(self) -> Path:
        return self.root / "state" / "dbguard" / "operations.jsonl"

    def project(self, name: str, env_lines: dict[str, str]) -> Path:
        """A Laravel-shaped project whose .env points at one database."""
        folder = self.root / "projects" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "artisan").write_text("<?php // benchmark stand-in\n")
        lines = {"APP_ENV": "local", **env_lines}
        (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        return folder

    def manifest(self, backup_id: str) -> dict[str, Any]:
        [path] = self.backups.glob(f"*/{backup_id}/manifest.json")
        return dict(json.loads(path.read_text()))


@dataclass
class OpLog:
    """Reads the records appended to the operation log since the last call."""

    path: Path
    offset: int = 0

    def skip_to_end(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new_records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = [json.loads(line) for line in complete.splitlines() if line.strip()]
        # An allowed command's first line says "running"; its complete line follows.
        return [r for r in records if r.get("outcome") != RUNNING]


def fresh_backups(records: list[dict[str, Any]]) -> list[str]:
    """Ids of the backups these records took (not reused, not shared)."""
    return sorted({b["id"] for r in records for b in r.get("backups", []) if not b.get("reused")})


@dataclass
class Memory:
    rss: int  # bytes resident now
    hwm: int  # the process's peak resident set since it started


def memory(pid: int) -> Memory:
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return Memory(values["VmRSS"], values["VmHWM"])


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) a process used itself, all threads, and those of
    its children it has waited for (the dump tools dbguardd runs)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) / _TICK for x in fields[11:15])
    return utime + stime, cutime + cstime


SERVER_PROCESSES = {"postgres": ("postgres",), "mysql": ("mariadbd", "mysqld")}
SERVER_SETTLE_TIMEOUT = 5.0


@dataclass(frozen=True)
class ServerCpu:
    seconds: float
    pids: frozenset[int]


def server_cpu(engine: str) -> ServerCpu | None:
    """CPU seconds the engine's local server processes have used so far: their own
    and their reaped children's (PostgreSQL's postmaster collects those of backends that
    ended). None when no such process is visible (a remote server, or no access)."""
    names = SERVER_PROCESSES.get(engine)
    if not names:
        return None
    total, pids = 0.0, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile, or not ours to read
        head, _, rest = stat.rpartition(")")
        if head.partition("(")[2] not in names:
            continue
        pids.add(int(entry.name))
        total += sum(int(x) for x in rest.split()[11:15]) / _TICK
    return ServerCpu(total, frozenset(pids)) if pids else None


def server_cpu_since(engine: str, before: ServerCpu | None) -> float | None:
    """The server's CPU seconds since `before`, read once the backends started since
    have ended and been reaped. A backend outlives its client for a moment, and one
    reaped while a scan runs can be missed twice (read before it reached the
    postmaster's total, gone when the scan reaches its own pid); so the reading is the
    scan after the first one that finds none of them."""
    if before is None:
        return None
    deadline = time.monotonic() + SERVER_SETTLE_TIMEOUT
    while True:
        now = server_cpu(engine)
        if now is None:
            return None
        if now.pids <= before.pids or time.monotonic() >= deadline:
            settled = server_cpu(engine)
            return None if settled is None else settled.seconds - before.seconds
        time.sleep(0.01)


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children (the baseline commands)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; `peak` is the
    largest sample (VmHWM gives the all-time peak, this one a window's)."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, memory(self.pid).rss)
                self.samples += 1
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Daemon:
    home: BenchHome
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def start(self) -> Daemon:
        self.log_path = self.home.root / "dbguardd.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dbguard.daemon.main"],
                env=self.home.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.home.root,
            )
        wait_for_socket(self.home.socket, self.process)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def memory(self) -> Memory:
        return memory(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Installation:
    """A home with its daemon running."""

    home: BenchHome
    daemon: Daemon
    oplog: OpLog

    @classmethod
    def start(cls, root: Path) -> Installation:
        home = BenchHome.create(root)
        daemon = Daemon(home).start()
        return cls(home, daemon, OpLog(home.oplog))

    def stop(self) -> None:
        self.daemon.stop()
        self.home.remove()

"""Shared test helpers: a real daemon in a throwaway home, real shims, stand-in tools."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbguard import shims
from dbguard.oplog import OperationLog
from dbguard.protocol import PROTOCOL_VERSION, Confirm, Invoke

if TYPE_CHECKING:
    from dbguard.daemon.service import Guard
    from dbguard.protocol import Allow, Deny, Fail, Pass
    from dbguard.store import Manifest, Store

READY_TIMEOUT = 20.0  # seconds a daemon may take to start on a loaded CI machine


def wait_for_socket(path: Path, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until something accepts connections on `path` (or the process dies)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"dbguardd exited with {process.returncode} before it was ready")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise TimeoutError(f"nothing listened on {path} within {READY_TIMEOUT} s")


@dataclass
class Home:
    """A throwaway user environment: XDG folders, a shims folder, a bin of stand-ins."""

    root: Path
    runtime: Path  # short, because Unix socket paths are limited to 107 bytes
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DBGUARD_", "XDG_", "DB_", "DATABASE_URL", "APP_ENV"))
        }
        env.update(
            XDG_RUNTIME_DIR=str(self.runtime),
            XDG_DATA_HOME=str(self.root / "data"),
            XDG_STATE_HOME=str(self.root / "state"),
            XDG_CONFIG_HOME=str(self.root / "config"),
            PATH=f"{self.shims}:{self.bin}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        )
        env.update(self.extra_env)
        return env

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
    def backups(self) -> Path:
        return self.root / "data" / "dbguard" / "backups"

    @property
    def oplog(self) -> Path:
        return self.root / "state" / "dbguard" / "operations.jsonl"

    def operations(self) -> list[dict[str, Any]]:
        """The operation log as dbguardctl reads it: each operation's latest record."""
        return list(OperationLog(self.oplog).records())

    def run(
        self,
        argv: list[str],
        cwd: Path,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            argv,
            cwd=cwd,
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def ctl(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        return self.run(
            [sys.executable, "-m", "dbguard.ctl.main", *args], cwd=cwd or self.root, input=b""
        )

    def ctl_process(self, *args: str, cwd: Path) -> subprocess.Popen[bytes]:
        """dbguardctl started, not waited for (to signal it while it works)."""
        return subprocess.Popen(
            [sys.executable, "-m", "dbguard.ctl.main", *args],
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def install_shims(self, *names: str) -> None:
        shims.install(self.shims, list(names))


@dataclass
class Daemon:
    home: Home
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> Daemon:
        self.log_path = self.home.root / "dbguardd.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dbguard.daemon.main"],
            env=self.home.env,
            stdout=log,
            stderr=log,
            cwd=self.home.root,
        )
        log.close()
        wait_for_socket(self.home.socket, self.process)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        return code

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


def new_home(base: Path) -> Iterator[Home]:
    runtime = Path(tempfile.mkdtemp(prefix="dbg", dir="/tmp"))
    runtime.chmod(0o700)
    home = Home(base, runtime)
    home.bin.mkdir(parents=True)
    try:
        yield home
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


STAND_IN = '''#!{python}
"""A stand-in for {name}: behaves like the real tool for what the tests need."""
import os, re, signal, sqlite3, sys, time

args = sys.argv[1:]
if args and os.path.basename(args[0]) == "artisan":
    os.chdir(os.path.dirname(args[0]) or ".")  # as artisan: its app is where it lies
    args = args[1:]
command = args[0] if args else ""

def database():
    values = dict(
        line.split("=", 1) for line in open(".env").read().splitlines() if "=" in line
    )
    return values.get("DB_DATABASE", "database/database.sqlite")

if command in ("-v", "--version"):
    print("{name} 0.0 (dbguard test stand-in)")
elif command in ("migrate:fresh", "db:wipe"):
    if "--recreate" in args:  # as a tool that drops the database and makes it again
        os.remove(database())
    conn = sqlite3.connect(database())
    for (table,) in conn.execute("select name from sqlite_master where type='table'").fetchall():
        conn.execute(f'drop table "{{table}}"')
    conn.commit()
    print("Dropped all tables successfully.")
elif command == "migrate:status":
    print("Migration name ... Ran")
elif command == "test":
    # flags: --exit=N, --signal=N, --echo-stdin, --echo-args, --wipe, --wait-for-file=PATH,
    # --count-users, --restore=ID (as a test script that runs `dbguardctl restore ID`),
    # --then-restore=ID (the same, after --wait-for-file)
    opts = dict(
        a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in args[1:] if a.startswith("--")
    )

    def restore(backup):
        import subprocess
        ctl = [sys.executable, "-m", "dbguard.ctl.main", "restore", backup, "--yes"]
        if subprocess.run(ctl, stdin=subprocess.DEVNULL).returncode:
            sys.exit(1)

    if "wipe" in opts:
        conn = sqlite3.connect(database()); conn.execute("delete from users"); conn.commit()
    if "restore" in opts:
        restore(opts["restore"])
    if "count-users" in opts:
        print(sqlite3.connect(database()).execute("select count(*) from users").fetchone()[0])
    if "echo-stdin" in opts:
        sys.stdout.write(sys.stdin.read())
    if "echo-args" in opts:
        sys.stdout.buffer.write(b"\\n".join(os.fsencode(a) for a in args) + b"\\n")
    if "print-env" in opts:
        print(os.environ.get(opts["print-env"], ""))
    if "wait-for-file" in opts:
        open(opts["wait-for-file"] + ".ready", "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(opts["wait-for-file"]) and time.monotonic() < deadline:
            time.sleep(0.01)
    if "then-restore" in opts:
        restore(opts["then-restore"])
    if "signal" in opts:
        sys.stdout.flush()
        os.kill(os.getpid(), int(opts["signal"]))
    sys.exit(int(opts.get("exit", "0")))
sys.exit(0)
'''


def install_stand_in(home: Home, name: str) -> Path:
    path = home.bin / name
    path.write_text(STAND_IN.format(python=sys.executable, name=name))
    path.chmod(0o755)
    return path


def laravel_sqlite_project(root: Path, rows: int = 3, env_line: str = "") -> Path:
    """A Laravel-shaped project on SQLite with a users table of `rows` rows."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "artisan").write_text("<?php // stand-in\n")
    (root / "database").mkdir(exist_ok=True)
    (root / ".env").write_text(
        f"APP_ENV=local\nDB_CONNECTION=sqlite\nDB_DATABASE=database/app.sqlite\n{env_line}"
    )
    conn = sqlite3.connect(root / "database" / "app.sqlite")
    conn.execute("create table users (id integer primary key, name text)")
    conn.executemany("insert into users (name) values (?)", [(f"user{i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return root


def php_project_with_config(home: Home, config_text: str) -> tuple[Path, Path]:
    """A Laravel SQLite project behind a `php` shim, and dbguard's config file holding
    `config_text` (edit it to change the config). Returns (config file, project)."""
    config = home.root / "config.toml"
    config.write_text(config_text)
    home.extra_env["DBGUARD_CONFIG"] = str(config)
    install_stand_in(home, "php")
    home.install_shims("php")
    return config, laravel_sqlite_project(home.root / "app")


def count_users(project: Path) -> int | None:
    conn = sqlite3.connect(project / "database" / "app.sqlite")
    try:
        return int(conn.execute("select count(*) from users").fetchone()[0])
    except sqlite3.OperationalError:
        return None  # the table is gone
    finally:
        conn.close()


@dataclass
class TerminalRun:
    returncode: int
    output: str


def run_in_terminal(
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    answers: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> TerminalRun:
    """Run `argv` on a new pseudo-terminal (its controlling terminal, so /dev/tty is it)
    and type each answer once its prompt text has appeared."""
    import pty

    pending = dict(answers or {})
    pid, fd = pty.fork()
    if pid == 0:  # the child: pty.fork made the terminal its controlling one
        try:
            os.chdir(cwd)
            os.execvpe(argv[0], argv, dict(env))  # noqa: S606
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            text = output.decode(errors="replace")
            for prompt in list(pending):
                if prompt in text:
                    os.write(fd, pending.pop(prompt).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return TerminalRun(os.waitstatus_to_exitcode(status), output.decode(errors="replace"))


def poll(check: Callable[[], bool], seconds: float = 15.0) -> bool:
    """True as soon as `check()` is; False if it never was within the deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
    return False


@contextlib.contextmanager
def fake_daemon(path: Path, answer: Callable[[socket.socket], object]) -> Iterator[None]:
    """A Unix socket at `path` whose every connection gets `answer`."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            conn, _ = server.accept()
            with conn:
                if not stop.is_set():
                    answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        with socket.socket(socket.AF_UNIX) as wake:
            wake.connect(str(path))
        thread.join()
        server.close()


def invoke_in_process(
    guard: Guard,
    home: Home,
    project: Path,
    argv: list[str],
    ask: Callable[[Confirm], Awaitable[str | None]] | None = None,
) -> Pass | Deny | Fail | Allow:
    """`argv` run in `project` as a shim would ask `guard`; with `ask`, from a terminal
    where `ask` answers the confirmation."""

    async def ignore(_progress: object) -> None:
        return None

    async def no_answer(_question: Confirm) -> None:
        return None

    asked = Invoke(
        type="invoke",
        v=PROTOCOL_VERSION,
        argv=argv,
        cwd=str(project),
        env=home.env,
        tty=ask is not None,
        pid=1,
    )
    return asyncio.run(guard.invoke(asked, ignore, ask or no_answer))


def cut_short_keeping_checksum(store: Store, manifest: Manifest) -> Manifest:
    """Cut the backup's data file in half and write the half's size and checksum into
    its manifest: a truncation only the decompressed size can tell."""
    data = store.folder(manifest) / manifest.data.file
    data.write_bytes(data.read_bytes()[: manifest.data.size // 2])
    forged = manifest.model_dump(mode="json")
    forged["data"] |= {
        "size": data.stat().st_size,
        "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
    }
    (store.folder(manifest) / "manifest.json").write_text(json.dumps(forged))
    return store.get(manifest.id)

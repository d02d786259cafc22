"""What the failure tests share: a daemon that can be started under a prefix (a mount
namespace, libfaketime) or a umask, stand-in tools, projects on each engine, and the
figures the suite reports at the end (faults injected, fuzz rate, load, memory)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from dbguard.engines.base import Target
from tests.helpers import Daemon, Home, wait_for_socket

TOOLS = Path(__file__).parent / "tools"
WAIT = 60.0  # seconds any polled condition may take on a loaded 2-core CI machine

# ---- the figures the suite reports (printed by conftest.pytest_terminal_summary) ----

FAULTS: Counter[str] = Counter()
FIGURES: dict[str, object] = {}


def injected(kind: str, count: int = 1) -> None:
    """Count a fault this suite really caused (a kill, a full disk, a stopped server...)."""
    FAULTS[kind] += count


# ---- polling ---------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll `condition` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.005)


# ---- the daemon -------------------------------------------------------------------------


@dataclass
class FaultDaemon(Daemon):
    """The real dbguardd, optionally run under `prefix` (e.g. unshare, env LD_PRELOAD=...)
    and with a `umask`, so tests can show modes do not depend on the caller's umask."""

    prefix: Sequence[str] = ()
    umask: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> FaultDaemon:
        self.log_path = self.home.root / "dbguardd.log"
        umask = self.umask

        def before_exec() -> None:
            if umask is not None:
                os.umask(umask)

        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "dbguard.daemon.main"],
                env={**self.home.env, **self.extra_env},
                stdout=log,
                stderr=log,
                cwd=self.home.root,
                preexec_fn=before_exec if umask is not None else None,
            )
        wait_for_socket(self.home.socket, self.process)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop it with `sig`; one that does not stop within 30 s is SIGKILLed (never
        left running behind a failed test) and the test fails."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            raise AssertionError(f"dbguardd did not stop on signal {sig} within 30 s") from None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> int:
        """SIGKILL, as the OOM killer or a power cut would end it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=30)

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def assert_no_crash(self) -> None:
        """No handler died with an unexpected exception."""
        text = self.log
        assert "Traceback" not in text, text[-4000:]
        assert "connection handler failed" not in text, text[-4000:]
        assert self.process is not None and self.process.poll() is None, "dbguardd died"


def write_config(home: Home, text: str) -> Path:
    config = home.root / "config.toml"
    config.write_text(text)
    home.extra_env["DBGUARD_CONFIG"] = str(config)
    return config


# ---- reading what dbguard recorded -----------------------------------------------------------


def oplog(home: Home) -> list[dict[str, Any]]:
    return home.operations()


def listing(home: Home) -> list[dict[str, Any]]:
    """`dbguardctl list-backups --json`, which must always succeed."""
    result = home.ctl("list-backups", "--json")
    assert result.returncode == 0, result.stderr.decode()
    return list(json.loads(result.stdout))


def good_ids(home: Home) -> set[str]:
    return {entry["id"] for entry in listing(home) if not entry.get("damaged")}


def leftovers(home: Home, backups: Path | None = None) -> list[str]:
    """What is in the store's .tmp (unfinished backups and their locks)."""
    tmp = (backups or home.backups) / ".tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def committed_manifests(backups: Path) -> list[Path]:
    return sorted(backups.glob("*/*/manifest.json"))


def ran(project: Path) -> list[dict[str, Any]]:
    """The stand-in's own record of every time it ran in `project`."""
    log = project / "ran.log"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def stderr_text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode("utf-8", "replace")


def start_guarded(home: Home, project: Path, *argv: str) -> subprocess.Popen[bytes]:
    """A command through the home's shims, in `project`, running in the background
    (a fault is injected while it waits); its stdout and stderr are captured."""
    return subprocess.Popen(
        list(argv), cwd=project, env=home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


# ---- stand-in tools ---------------------------------------------------------------------------


def install_tool(folder: Path, name: str, source: str) -> Path:
    """Copy tools/<source> to folder/<name>, run by this interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\n" + (TOOLS / source).read_text())
    path.chmod(0o755)
    return path


def install_php(home: Home) -> Path:
    """The stand-in `php` behind a real shim."""
    home.install_shims("php")
    return install_tool(home.bin, "php", "standin.py")


@dataclass
class Gate:
    """Files through which a test holds a `gate` run of a fault tool mid-dump."""

    ready: Path
    release: Path
    pids: Path

    def wait_ready(self, timeout: float = WAIT) -> list[int]:
        wait_until(self.ready.exists, f"the dump tool to reach {self.ready}", timeout)
        return [int(p) for p in self.pids.read_text().split()]

    def open(self) -> None:
        self.release.touch()


@dataclass
class FaultTool:
    """tools/fault_dump.py installed as `name` in `folder` (which the daemon searches)."""

    folder: Path
    name: str

    @classmethod
    def install(cls, folder: Path, name: str) -> FaultTool:
        install_tool(folder, name, "fault_dump.py")
        tool = cls(folder, name)
        tool.set("real")
        return tool

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def set(self, mode: str, **extra: object) -> None:
        spec = json.dumps({"mode": mode, **extra})
        temp = self.folder / "fault.json.part"
        temp.write_text(spec)
        temp.replace(self.folder / "fault.json")

    def gate(self, where: Path, head_bytes: int = 4096) -> Gate:
        where.mkdir(parents=True, exist_ok=True)
        gate = Gate(where / "ready", where / "release", where / "pids")
        for path in (gate.ready, gate.release, gate.pids):
            path.unlink(missing_ok=True)
        self.set(
            "gate",
            bytes=head_bytes,
            ready=str(gate.ready),
            release=str(gate.release),
            pids=str(gate.pids),
        )
        return gate


# ---- projects ---------------------------------------------------------------------------


def server_project(root: Path, target: Target, password: str | None = None) -> Path:
    """A Laravel-shaped project whose .env names `target` on PostgreSQL or MySQL."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "artisan").write_text("<?php // stand-in\n")
    connection = "pgsql" if target.engine == "postgres" else "mysql"
    lines = [
        "APP_ENV=local",
        f"DB_CONNECTION={connection}",
        f"DB_HOST={target.host}",
        f"DB_PORT={target.port}",
        f"DB_DATABASE={target.name}",
        f"DB_USERNAME={target.user}",
    ]
    if password is not None:
        lines.append(f"DB_PASSWORD={password}")
    (root / ".env").write_text("\n".join(lines) + "\n")
    return root


def sqlite_rows(path: Path, table: str = "users") -> int | None:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f'select count(*) from "{table}"').fetchone()[0])
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


def fill_pg(target: Target, rows: int, width: int = 200) -> None:
    """A table of text rows: its dump is mostly COPY text, which holds no zero byte."""
    from tests.servers import pg_connect

    with pg_connect(str(target.name)) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, body text NOT NULL)")
        conn.execute(
            "INSERT INTO items SELECT g, repeat(md5(g::text), %s) FROM generate_series(1, %s) g",
            (max(1, width // 32), rows),
        )


def pg_rows(target: Target, table: str = "items") -> int | None:
    import psycopg

    from tests.servers import pg_connect

    try:
        with pg_connect(str(target.name)) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(row[0]) if row else None
    except psycopg.errors.UndefinedTable:
        return None


def fill_mysql(target: Target, rows: int, width: int = 200) -> None:
    from tests.servers import mysql_connect

    conn = mysql_connect(str(target.name))
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, body TEXT NOT NULL)")
            batch = 1000
            for start in range(0, rows, batch):
                values = [
                    (i, f"{i:08d}" * max(1, width // 8))
                    for i in range(start, min(rows, start + batch))
                ]
                cur.executemany("INSERT INTO items VALUES (%s, %s)", values)
    finally:
        conn.close()


def mysql_rows(target: Target, table: str = "items") -> int:
    from tests.servers import mysql_connect

    conn = mysql_connect(str(target.name))
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


# ---- processes ------------------------------------------------------------------------------


def process_exists(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def all_cmdlines() -> Iterator[tuple[int, bytes]]:
    """(pid, argv as NUL-separated bytes) of every process on the machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes()
            except OSError:
                continue


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def mysql_user(target: Target, password: str) -> Iterator[Target]:
    """A MariaDB user with `password` and every right on `target`'s database (dropped
    afterwards): the shared server's root has no password, this one needs its own."""
    from tests.servers import mysql_connect

    user = f"dbg_{secrets.token_hex(4)}"
    conn = mysql_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL ON `{target.name}`.* TO '{user}'@'%'")
            cur.execute(f"GRANT PROCESS ON *.* TO '{user}'@'%'")
            # restore and verify work in scratch schemas named after the database
            scratch = str(target.name).replace("_", "\\_") + "\\_dbguard\\_%"
            cur.execute(f"GRANT ALL ON `{scratch}`.* TO '{user}'@'%'")
        yield target.model_copy(update={"user": user, "password": SecretStr(password)})
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        conn.close()


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real small filesystem at `where` (root only; skips with the reason elsewhere)."""
    import pytest

    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


# ---- private database servers (never stop the shared ones) -------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster of our own, run as the `postgres` system user
    (initdb refuses root), listening on 127.0.0.1:`port`, with password authentication
    (scram-sha-256) for TCP connections."""

    folder: Path
    port: int
    superuser_password: str

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def connect(self, dbname: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.superuser_password,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def target(self, name: str, user: str = "postgres", password: str | None = None) -> Target:
        secret = SecretStr(password or self.superuser_password)
        return Target(
            engine="postgres",
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=secret,
            name=name,
            source="test",
        )


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """Skips (fails in CI) without PostgreSQL 15's server binaries or the postgres user."""
    import pwd
    import shutil
    import tempfile

    from tests.servers import unavailable  # skips, or fails in CI (DBGUARD_REQUIRE_SERVERS)

    if not (PG_BIN / "initdb").exists():
        unavailable("a private PostgreSQL cluster", FileNotFoundError(PG_BIN / "initdb"))
    try:
        pwd.getpwnam("postgres")
    except KeyError as err:
        unavailable("a private PostgreSQL cluster (run as the postgres user)", err)
    # Not under pytest's tmp_path: its 0700 parents keep the postgres user out.
    folder = Path(tempfile.mkdtemp(prefix="dbgpg", dir="/tmp"))
    shutil.chown(folder, "postgres")
    password = f"su-{secrets.token_hex(8)}"
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    shutil.chown(pwfile, "postgres")
    cluster = PrivatePostgres(folder, free_port(), password)
    try:
        subprocess.run(
            [
                "runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(cluster.data),
                "-U", "postgres", "--pwfile", str(pwfile), "--auth-local=trust",
                "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            with contextlib.suppress(subprocess.SubprocessError):
                cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class PrivateMariadb:
    """A throwaway mariadbd of our own on 127.0.0.1:`port` and a private socket, with
    the binary log on if asked; `options` are added to its command line."""

    folder: Path
    port: int
    log_bin: bool = False
    options: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binlog = (
            [f"--log-bin={self.folder / 'data' / 'binlog'}", "--server-id=1"]
            if self.log_bin
            else ["--skip-log-bin"]
        )
        log = (self.folder / "log").open("ab")
        self.process = subprocess.Popen(
            [
                "mariadbd", "--no-defaults", f"--datadir={self.folder / 'data'}",
                f"--socket={self.folder / 'sock'}", f"--port={self.port}",
                "--bind-address=127.0.0.1", "--user=root", *binlog, *self.options,
                "--innodb-buffer-pool-size=32M", f"--pid-file={self.folder / 'pid'}",
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        wait_until(self.accepts, "the private mariadbd to accept connections")

    def accepts(self) -> bool:
        import pymysql

        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"mariadbd exited: {(self.folder / 'log').read_text()[-2000:]}")
        try:
            self.connect().close()
        except pymysql.MySQLError:
            return False
        return True

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    def connect(self, database: str | None = None):  # type: ignore[no-untyped-def]
        import pymysql

        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password="",
            database=database,
            autocommit=True,
            connect_timeout=5,
        )

    def target(self, name: str) -> Target:
        return Target(
            engine="mysql", host="127.0.0.1", port=self.port, user="root", name=name, source="test"
        )


@contextlib.contextmanager
def private_mariadb(*, log_bin: bool = False) -> Iterator[PrivateMariadb]:
    import shutil
    import tempfile

    from tests.servers import unavailable  # skips, or fails in CI (DBGUARD_REQUIRE_SERVERS)

    if shutil.which("mariadb-install-db") is None or shutil.which("mariadbd") is None:
        unavailable("a private MariaDB", FileNotFoundError("mariadb-install-db, mariadbd"))
    folder = Path(tempfile.mkdtemp(prefix="dbgmy", dir="/tmp"))  # short socket path
    server = PrivateMariadb(folder, free_port(), log_bin)
    try:
        subprocess.run(
            [
                "mariadb-install-db", "--no-defaults", f"--datadir={folder / 'data'}",
                "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

"""The database server is unreachable before a backup, or stops in the middle of one.

"Stopped" uses servers of our own (a PostgreSQL cluster made with initdb and run with
pg_ctl, a mariadbd made with mariadb-install-db), never the shared ones: the dump is
held mid-way by the gate tool (tools/fault_dump.py around the real pg_dump or
mariadb-dump), the server is stopped, and the dump is let go against a dead server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dbguard.engines.base import Target
from tests.faults.support import (
    FaultDaemon,
    FaultTool,
    PrivateMariadb,
    PrivatePostgres,
    free_port,
    injected,
    install_php,
    leftovers,
    listing,
    oplog,
    process_exists,
    ran,
    server_project,
    start_guarded,
    stderr_text,
)
from tests.helpers import Home

ROWS = 50_000  # about 10 MB of dump: far more than the pipes and socket buffers hold


def assert_failed_cleanly(
    home: Home, project: Path, code: int, err: bytes, *words: str, records: int = 1
) -> str:
    message = err.decode("utf-8", "replace")
    assert code == 75, message
    for word in words:
        assert word in message, message
    assert ran(project) == []
    assert listing(home) == []
    assert leftovers(home) == []
    assert [r["decision"] for r in oplog(home)] == ["fail"] * records
    return message


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_server_unreachable_before_the_backup(home: Home, engine: str) -> None:
    port = free_port()  # nothing listens there
    target = Target.model_validate(
        {"engine": engine, "host": "127.0.0.1", "port": port, "user": "app", "name": "shop"}
    )
    install_php(home)
    project = server_project(home.root / "app", target, password="s3cret-unreachable")
    daemon = FaultDaemon(home).start()
    try:
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        injected(f"{engine} server unreachable (nothing listens on the port)")

        message = assert_failed_cleanly(
            home, project, result.returncode, result.stderr, f"127.0.0.1:{port}"
        )
        assert "not reachable" in message or "Can't connect" in message, message
        assert "s3cret-unreachable" not in message
        daemon.assert_no_crash()
    finally:
        daemon.stop()


def test_a_postgres_url_at_another_servers_port_says_so(home: Home, mysql_database: Target) -> None:
    """MariaDB's port in a PostgreSQL URL: once "not reachable" (start the server) with
    libpq's "received invalid response to SSL negotiation: d"."""
    port = mysql_database.port
    target = Target.model_validate(
        {"engine": "postgres", "host": "127.0.0.1", "port": port, "user": "app", "name": "shop"}
    )
    install_php(home)
    project = server_project(home.root / "app", target)
    daemon = FaultDaemon(home).start()
    try:
        result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        injected("a PostgreSQL URL naming MariaDB's port")

        message = assert_failed_cleanly(
            home,
            project,
            result.returncode,
            result.stderr,
            f"what answers at 127.0.0.1:{port} is not a PostgreSQL server",
            "check the port",
        )
        assert "not reachable" not in message
        daemon.assert_no_crash()
    finally:
        daemon.stop()


@pytest.mark.slow
def test_postgres_stopped_during_the_backup(home: Home, own_postgres: PrivatePostgres) -> None:
    cluster = own_postgres
    name = "shop_stopped"
    with cluster.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    with cluster.connect(name) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, body text NOT NULL)")
        conn.execute(
            "INSERT INTO items SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, %s) g",
            (ROWS,),
        )
    target = cluster.target(name)
    tool = FaultTool.install(home.bin, "pg_dump")
    install_php(home)
    project = server_project(home.root / "app", target, password=cluster.superuser_password)
    daemon = FaultDaemon(home).start()
    try:
        gate = tool.gate(home.root / "gate")
        command = start_guarded(home, project, "php", "artisan", "migrate:fresh")
        pids = gate.wait_ready()
        cluster.stop("immediate")  # as a crash or an OOM kill of the server would
        injected("PostgreSQL server stopped mid-backup (private cluster, pg_ctl -m immediate)")
        gate.open()
        _, err = command.communicate(timeout=120)

        message = assert_failed_cleanly(home, project, command.returncode, err, "pg_dump")
        assert cluster.superuser_password not in message
        assert not any(process_exists(p) for p in pids)

        # Still down: refused before any dump starts, and said so.
        again = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        injected("PostgreSQL server unreachable (private cluster stopped)")
        assert_failed_cleanly(
            home, project, again.returncode, again.stderr, "not reachable", records=2
        )

        cluster.start()
        tool.set("real")
        served = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert served.returncode == 0, stderr_text(served)
        [backup] = listing(home)
        assert sum(backup["tables"].values()) == ROWS
        assert len(ran(project)) == 1
        daemon.assert_no_crash()
    finally:
        daemon.stop()
        if not cluster.running():
            cluster.start()


@pytest.mark.slow
def test_mariadb_stopped_during_the_backup(home: Home, own_mariadb: PrivateMariadb) -> None:
    server = own_mariadb
    name = "shop_stopped"
    conn = server.connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(f"USE {name}")
        cur.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, body TEXT NOT NULL)")
        cur.execute(f"INSERT INTO items SELECT seq, REPEAT(MD5(seq), 6) FROM seq_1_to_{ROWS}")
    conn.close()
    target = server.target(name)
    tool = FaultTool.install(home.bin, "mariadb-dump")
    install_php(home)
    project = server_project(home.root / "app", target)
    daemon = FaultDaemon(home).start()
    try:
        gate = tool.gate(home.root / "gate")
        command = start_guarded(home, project, "php", "artisan", "migrate:fresh")
        pids = gate.wait_ready()
        server.kill()  # SIGKILL: the server vanishes mid-dump
        injected("MariaDB server killed mid-backup (private mariadbd, SIGKILL)")
        gate.open()
        _, err = command.communicate(timeout=120)

        assert_failed_cleanly(home, project, command.returncode, err, "mariadb-dump")
        assert not any(process_exists(p) for p in pids)

        again = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        injected("MariaDB server unreachable (private mariadbd stopped)")
        assert_failed_cleanly(home, project, again.returncode, again.stderr, records=2)

        server.start()
        tool.set("real")
        served = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
        assert served.returncode == 0, stderr_text(served)
        [backup] = listing(home)
        assert sum(backup["tables"].values()) == ROWS
        daemon.assert_no_crash()
    finally:
        daemon.stop()
        if server.process is None or server.process.poll() is not None:
            server.start()

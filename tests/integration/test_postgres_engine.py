"""The PostgreSQL engine against the real server: backup, restore, verify, change signal
and every way a backup can fail. Each test works in its own throwaway database."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from dbguard import operations
from dbguard.config import BackupSettings
from dbguard.engines import Engines, postgres
from dbguard.engines.base import Engine, EngineName, Target
from dbguard.engines.postgres import PostgresEngine, claim_scratch, scratch_name
from dbguard.errors import BackupFailed, Cancelled, Damaged, DatabaseMissing, RestoreFailed
from dbguard.store import Manifest, Reason, Store
from tests.helpers import Home, poll
from tests.servers import PG_USER

pytestmark = pytest.mark.postgres

REASON = Reason(kind="manual")
TABLES = [
    "app.customers",
    "app.orders",
    "app.documents",
    "audit.log",
    '"Odd Schema"."Table ""Q"" x"',
]
SEQUENCES = ["app.invoice_no", "app.customers_id_seq", "app.orders_id_seq", "audit.log_id_seq"]
BIG_TEXT = "".join(f"line {i}: ünïcödé 🦀 {secrets.token_hex(8)}\n" for i in range(120_000))
BIG_BYTES = os.urandom(3 << 20)

SCHEMA = """
CREATE SCHEMA app;
CREATE SCHEMA audit;
CREATE SCHEMA "Odd Schema";
CREATE TABLE app.customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    note text,
    photo bytea,
    balance numeric(12, 2),
    tags text[],
    profile jsonb,
    born date
) WITH (autovacuum_enabled = off);
CREATE TABLE app.orders (
    id serial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES app.customers (id) ON DELETE CASCADE,
    total numeric(12, 2) NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00+00'
) WITH (autovacuum_enabled = off);
CREATE TABLE app.documents (id int PRIMARY KEY, body text, payload bytea)
    WITH (autovacuum_enabled = off);
CREATE TABLE audit.log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text NOT NULL,
    row_id bigint,
    action text NOT NULL
) WITH (autovacuum_enabled = off);
CREATE TABLE "Odd Schema"."Table ""Q"" x" (v text) WITH (autovacuum_enabled = off);
CREATE FUNCTION audit.record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit.log (table_name, row_id, action) VALUES (TG_TABLE_NAME, NEW.id, TG_OP);
    RETURN NEW;
END $$;
CREATE TRIGGER orders_audit AFTER INSERT OR UPDATE ON app.orders
    FOR EACH ROW EXECUTE FUNCTION audit.record();
CREATE SEQUENCE app.invoice_no START 1000 INCREMENT 7;
CREATE VIEW app.customer_totals AS
    SELECT c.id, c.name, coalesce(sum(o.total), 0) AS total
    FROM app.customers c LEFT JOIN app.orders o ON o.customer_id = c.id
    GROUP BY c.id, c.name;
"""

CUSTOMERS: list[tuple[Any, ...]] = [
    ("Zoë Ångström", "zoe@example.org", None, bytes(range(256)), 12.5, ["a", None], {"k": "ü"}),
    ("東京 太郎", None, "note with 'quotes' and \"doubles\"", None, None, [], None),
    ("Крис", "kris@example.org", "tab\there\nnewline \\ backslash", b"", -1, None, {"n": [1, 2]}),
    ("emoji 🦀🎉 and e\u0301", "e@example.org", None, b"\x00\xff\x00", 0, ["🦀"], {}),
    ("O'Brien; DROP TABLE x;--", "ob@example.org", "\\.", None, 99999.99, None, None),
    ("null byte-free \u2028 separator", None, "", None, None, None, {"deep": {"x": None}}),
    ("plain", "plain@example.org", None, None, None, None, None),
]


def connect(target: Target, **extra: Any) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection of the test's own to `target`, on whichever server it is."""
    return psycopg.connect(
        host=target.socket or target.host,
        port=target.port,
        user=target.user,
        password=target.password.get_secret_value() if target.password else None,
        dbname=target.name,
        autocommit=True,
        connect_timeout=5,
        **extra,
    )


def run(target: Target, *statements: str | sql.Composed, params: Any = None) -> None:
    with connect(target) as conn:
        for statement in statements:
            conn.execute(statement, params)


def query(target: Target, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connect(target) as conn:
        return list(conn.execute(statement, params).fetchall())


def contents(target: Target) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: what "identical" means here."""
    return {
        table: sorted(query(target, f"SELECT * FROM {table}"), key=repr)
        for table in TABLES
        if query(target, "SELECT to_regclass(%s)", (table,))[0][0] is not None
    }


def sequence_values(target: Target) -> dict[str, tuple[int, bool]]:
    return {seq: query(target, f"SELECT last_value, is_called FROM {seq}")[0] for seq in SEQUENCES}


def leftovers(target: Target) -> list[str]:
    """Scratch databases an operation on `target` left behind."""
    rows = query(
        target.model_copy(update={"name": "postgres"}),
        "SELECT datname FROM pg_database WHERE datname LIKE %s",
        (f"{target.name}\\_dbguard\\_%",),
    )
    return [row[0] for row in rows]


def fill(target: Target) -> None:
    run(target, SCHEMA)
    with connect(target) as conn:
        for name, email, note, photo, balance, tags, profile in CUSTOMERS:
            conn.execute(
                "INSERT INTO app.customers (name, email, note, photo, balance, tags, profile,"
                " born) VALUES (%s, %s, %s, %s, %s, %s, %s, DATE '1990-02-28')",
                (
                    name,
                    email,
                    note,
                    photo,
                    balance,
                    tags,
                    Jsonb(profile) if profile is not None else None,
                ),
            )
        conn.execute(
            "INSERT INTO app.orders (customer_id, total) "
            "SELECT c.id, (c.id * 10 + i) / 3.0 FROM app.customers c, generate_series(1, 3) i"
        )
        conn.execute("UPDATE app.orders SET total = total + 1 WHERE id % 4 = 0")
        conn.execute("SELECT nextval('app.invoice_no') FROM generate_series(1, 3)")
        conn.execute(
            "INSERT INTO app.documents VALUES (1, %s, %s), (2, NULL, NULL), (3, '', '')",
            (BIG_TEXT, BIG_BYTES),
        )
        conn.execute("""INSERT INTO "Odd Schema"."Table ""Q"" x" VALUES ('a'), (NULL)""")


@pytest.fixture
def rich(pg_database: Target) -> Target:
    """The throwaway database with a schema that exercises what dumps get wrong."""
    fill(pg_database)
    return pg_database


@pytest.fixture
def engines() -> Iterator[Engines]:
    registry = Engines(BackupSettings())
    yield registry
    registry.close()


@pytest.fixture
def engine(engines: Engines) -> PostgresEngine:
    found = engines.get("postgres")
    assert isinstance(found, PostgresEngine)
    return found


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "backups")


class NullSink:
    def __init__(self, on_write: Callable[[bytes | bytearray], None] | None = None) -> None:
        self.size = 0
        self.on_write = on_write

    def write(self, data: bytes | bytearray, /) -> int:
        if self.on_write is not None:
            self.on_write(data)
        self.size += len(data)
        return len(data)


def dump(engine: PostgresEngine, target: Target, sink: NullSink | None = None) -> Any:
    with tempfile.TemporaryDirectory() as scratch:
        return engine.dump(target, sink or NullSink(), Path(scratch), threading.Event())


def children(name: str) -> list[tuple[int, str]]:
    """Our child processes called `name`, zombies included: (pid, state)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid() and comm == name:
            found.append((int(entry.name), state))
    return found


def nothing_kept(store: Store) -> bool:
    tmp = store.root / ".tmp"
    return store.manifests() == [] and (not tmp.exists() or list(tmp.iterdir()) == [])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---- round trips ----------------------------------------------------------------------


def test_round_trip_gives_back_exactly_the_rows_of_the_backup_moment(
    rich: Target, store: Store, engines: Engines
) -> None:
    # database-level settings live outside the dump; the swap must keep them
    run(
        rich,
        sql.SQL('ALTER DATABASE {} SET search_path = app, "Odd Schema", public').format(
            sql.Identifier(str(rich.name))
        ),
        sql.SQL("COMMENT ON DATABASE {} IS 'the shop'").format(sql.Identifier(str(rich.name))),
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(str(rich.name))),
    )
    before, sequences = contents(rich), sequence_values(rich)

    backup = operations.take_backup(store, engines, rich, REASON)

    assert backup.tables == {
        "app.customers": 7,
        "app.documents": 3,
        "app.orders": 21,
        "audit.log": 26,  # 21 inserts and 5 updates
        'Odd Schema.Table "Q" x': 2,
    }
    assert backup.data.format == "pg-custom" and backup.tool.startswith("pg_dump 15")
    assert backup.data.raw_size > len(BIG_TEXT.encode()) + len(BIG_BYTES)

    run(
        rich,
        "DELETE FROM app.customers WHERE id % 2 = 1",
        "UPDATE app.documents SET body = 'overwritten', payload = NULL",
        "INSERT INTO app.customers (name) VALUES ('added after the backup')",
        "SELECT nextval('app.invoice_no') FROM generate_series(1, 10)",
        'DROP SCHEMA "Odd Schema" CASCADE',
        "DROP SCHEMA audit CASCADE",
    )
    assert contents(rich) != before

    pre_restore = operations.restore_backup(store, engines, backup, rich, REASON)

    assert pre_restore is not None and pre_restore.tables["app.customers"] == 4
    assert contents(rich) == before
    assert sequence_values(rich) == sequences
    last, _ = sequences["app.invoice_no"]
    assert query(rich, "SELECT nextval('app.invoice_no')")[0][0] == last + 7
    # serials and identities continue after the restored rows; the trigger still fires
    run(rich, "INSERT INTO app.orders (customer_id, total) VALUES (1, 5)")
    assert query(rich, "SELECT max(id) FROM app.orders")[0][0] == 22
    assert query(rich, "SELECT max(id), count(*) FROM audit.log")[0] == (27, 27)
    assert query(rich, "SELECT count(*) FROM app.customer_totals")[0][0] == 7
    with connect(rich) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ('app, "Odd Schema", public',)
    assert query(
        rich,
        "SELECT shobj_description(oid, 'pg_database'), datacl::text FROM pg_database "
        "WHERE datname = current_database()",
    )[0] == ("the shop", "{postgres=CTc/postgres}")
    assert leftovers(rich) == []


def test_verify_restores_into_a_scratch_database_and_drops_it(
    rich: Target, store: Store, engines: Engines, engine: PostgresEngine
) -> None:
    backup = operations.take_backup(store, engines, rich, REASON)

    result = operations.verify_backup(store, engines, backup)

    assert result.ok, result.problems
    with store.work_folder() as (_, scratch), store.open_data(backup) as data:
        assert engine.restored_counts(rich, data, backup.data.format, scratch) == backup.tables
    assert leftovers(rich) == []


def test_the_next_verify_drops_a_scratch_database_a_killed_one_left(
    rich: Target, store: Store, engines: Engines
) -> None:
    backup = operations.take_backup(store, engines, rich, REASON)
    admin = rich.model_copy(update={"name": "postgres"})
    assert rich.name is not None
    orphan = scratch_name(rich.name, "verify")  # its verify was killed: nobody claims it
    running = scratch_name(rich.name, "restore")  # claimed by a restore still at work
    replaced = scratch_name(rich.name, "replaced")  # a restore's earlier data: never dropped
    try:
        for name in (orphan, running, replaced):
            run(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with connect(admin) as restore_at_work:
            claim_scratch(restore_at_work, running)
            session = restore_at_work.info.backend_pid

            assert operations.verify_backup(store, engines, backup).ok
            assert sorted(leftovers(rich)) == sorted([running, replaced])

        # The claim ends with its session, as it does when the process is killed.
        gone = "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)"
        assert poll(lambda: query(admin, gone, (session,))[0][0])
        assert operations.verify_backup(store, engines, backup).ok
        assert leftovers(rich) == [replaced]
    finally:
        for name in leftovers(rich):
            run(admin, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def dump_bytes(store: Store, backup: Manifest) -> bytes:
    with store.open_data(backup) as data:
        return data.read()


def test_a_broken_dump_fails_verify_and_restore_and_changes_nothing(
    rich: Target, store: Store, engines: Engines, engine: PostgresEngine, tmp_path: Path
) -> None:
    backup = operations.take_backup(store, engines, rich, REASON)
    raw = dump_bytes(store, backup)
    cut = raw[: len(raw) // 2]  # inside the big document's data
    run(rich, "DELETE FROM app.orders WHERE id > 10")
    now = contents(rich)

    with pytest.raises(Damaged, match="pg_restore failed") as damaged:
        engine.restored_counts(rich, io.BytesIO(cut), "pg-custom", tmp_path)
    assert "could not read from input file: end of file" in str(damaged.value)
    with pytest.raises(RestoreFailed) as caught:
        engine.restore(rich, io.BytesIO(cut), "pg-custom", tmp_path)

    assert f"the database {rich.name} was not changed" in str(caught.value)
    assert contents(rich) == now
    assert leftovers(rich) == []


def test_restore_is_refused_while_another_session_is_connected(
    rich: Target, store: Store, engines: Engines, engine: PostgresEngine
) -> None:
    backup = operations.take_backup(store, engines, rich, REASON)
    before = contents(rich)
    run(rich, "DELETE FROM app.customers")
    emptied = contents(rich)
    other = psycopg.connect(
        host=rich.host, port=rich.port, user=rich.user, dbname=rich.name,
        application_name="dbguard-test-client", autocommit=True,
    )  # fmt: skip
    try:
        with (
            pytest.raises(RestoreFailed) as caught,
            store.work_folder() as (_, scratch),
            store.open_data(backup) as data,
        ):
            engine.restore(rich, data, backup.data.format, scratch)
        message = str(caught.value)
        assert "1 other session is connected" in message
        assert "dbguard-test-client as postgres" in message
        assert "end-connections" in message
        assert contents(rich) == emptied
        assert leftovers(rich) == []

        with store.work_folder() as (_, scratch), store.open_data(backup) as data:
            engine.restore(rich, data, backup.data.format, scratch, end_connections=True)

        assert contents(rich) == before
        with pytest.raises(psycopg.OperationalError):
            other.execute("SELECT 1")
        assert leftovers(rich) == []
        # the swapped-in database accepts connections as before
        assert query(rich, "SELECT datallowconn FROM pg_database WHERE datname = %s",
                     (rich.name,)) == [(True,)]  # fmt: skip
    finally:
        other.close()


def session_pids(target: Target) -> set[int]:
    """The sessions connected to `target`, this query's own left out."""
    rows = query(
        target.model_copy(update={"name": "postgres"}),
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (target.name,),
    )
    return {row[0] for row in rows}


def test_dbguards_own_kept_connections_in_the_database_do_not_stop_a_restore(
    rich: Target,
    store: Store,
    engines: Engines,
    engine: PostgresEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database named `postgres` (Supabase, the official Docker image's default) is the
    one dbguard keeps its connections for change checks and marks in. An ordinary
    database stands in for it here: the shared server's `postgres` is never swapped."""
    backup = operations.take_backup(store, engines, rich, REASON)
    before = contents(rich)
    run(rich, "DELETE FROM app.customers")
    daemon = PostgresEngine(BackupSettings())  # dbguardd's, in another process
    try:
        # Checks of another database on the server keep their connections in it.
        elsewhere = rich.model_copy(update={"name": "postgres"})
        with monkeypatch.context() as patch:
            patch.setattr(postgres, "MAINTENANCE_DB", rich.name)
            daemon.fingerprint(elsewhere)  # dbguardd keeps its connection all along
            engine.marker(elsewhere)  # and so does dbguardctl, once it has read a mark
        kept = session_pids(rich)
        assert len(kept) == 2
        # A session that only looks like dbguard's (its default application name) is
        # someone else's, and stops the restore as any other does.
        with connect(rich, application_name="dbguard"):
            with (
                pytest.raises(RestoreFailed, match=r"1 other session is connected to .*: dbguard"),
                store.work_folder() as (_, scratch),
                store.open_data(backup) as data,
            ):
                engine.restore(rich, data, backup.data.format, scratch)
            assert session_pids(rich) - kept != set()

        with store.work_folder() as (_, scratch), store.open_data(backup) as data:
            engine.restore(rich, data, backup.data.format, scratch)

        assert contents(rich) == before
        assert session_pids(rich) == set()  # the kept connections were ended ...
        assert daemon.fingerprint(rich) is not None  # ... and dbguardd's comes back by itself
        assert leftovers(rich) == []
    finally:
        daemon.close()


def test_checks_of_the_maintenance_database_itself_keep_no_connection_in_it(
    rich: Target, engine: PostgresEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database named `postgres` stands in here too: a connection kept in it would make
    a guarded `DROP DATABASE postgres` (rails db:drop) fail."""
    monkeypatch.setattr(postgres, "MAINTENANCE_DB", rich.name)
    first = engine.fingerprint(rich)
    assert engine.marker(rich) is None
    assert session_pids(rich) == set()
    assert engine.fingerprint(rich) == first
    run(rich, "DELETE FROM app.customers")
    assert engine.fingerprint(rich) != first


@pytest.fixture
def owned(pg_database: Target) -> Iterator[Target]:
    """The throwaway database, owned by a login role that may create databases but is
    no superuser; as that role."""
    role = f"dbguard_test_owner_{secrets.token_hex(4)}"
    name = sql.Identifier(str(pg_database.name))
    admin = pg_database.model_copy(update={"name": "postgres"})
    run(
        admin,
        sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)),
        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, sql.Identifier(role)),
    )
    try:
        yield pg_database.model_copy(update={"user": role})
    finally:
        run(
            admin,
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name),
            sql.SQL("DROP ROLE {}").format(sql.Identifier(role)),
        )


def database_settings(target: Target) -> dict[str, list[str]]:
    """ALTER DATABASE ... SET ('') and ALTER ROLE ... IN DATABASE ... SET (the role)."""
    rows = query(
        target.model_copy(update={"name": "postgres", "user": PG_USER}),
        "SELECT coalesce(r.rolname, ''), s.setconfig FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase "
        "LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = %s",
        (target.name,),
    )
    return {role: sorted(config) for role, config in rows}


def test_the_owner_restores_without_the_settings_only_a_superuser_may_set_and_is_told(
    owned: Target, store: Store, engines: Engines
) -> None:
    name = sql.Identifier(str(owned.name))
    superuser = owned.model_copy(update={"user": PG_USER})
    settings = [
        sql.SQL("ALTER DATABASE {} SET log_min_duration_statement = 250").format(name),
        sql.SQL("ALTER DATABASE {} SET work_mem = '8MB'").format(name),  # the owner may
        sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout = '5min'").format(
            sql.Identifier(PG_USER), name
        ),
    ]
    run(superuser, *settings)
    run(owned, "CREATE TABLE t (x int)", "INSERT INTO t SELECT generate_series(1, 10)")
    backup = operations.take_backup(store, engines, owned, REASON)
    run(owned, "DELETE FROM t")
    warnings: list[str] = []

    operations.restore_backup(store, engines, backup, owned, REASON, warn=warnings.append)

    assert query(owned, "SELECT count(*) FROM t") == [(10,)]
    assert database_settings(owned) == {"": ["work_mem=8MB"]}
    assert len(warnings) == 2, warnings
    said = "\n".join(warnings)
    assert "without its setting log_min_duration_statement = 250" in said, said
    assert f"""ALTER DATABASE "{owned.name}" SET "log_min_duration_statement" TO '250'""" in said
    assert f'GRANT SET ON PARAMETER log_min_duration_statement TO "{owned.user}"' in said
    assert f'ALTER ROLE "{PG_USER}" IN DATABASE "{owned.name}" SET "statement_timeout"' in said

    # A superuser's restore keeps them all, and has nothing to say.
    run(superuser, *settings)
    warnings.clear()
    operations.restore_backup(store, engines, backup, superuser, REASON, warn=warnings.append)
    assert warnings == []
    assert database_settings(owned) == {
        "": ["log_min_duration_statement=250", "work_mem=8MB"],
        PG_USER: ["statement_timeout=5min"],
    }


def test_dbguardctl_restore_says_and_logs_which_setting_it_left_out(
    owned: Target, engines: Engines, home: Home
) -> None:
    run(
        owned.model_copy(update={"user": PG_USER}),
        sql.SQL("ALTER DATABASE {} SET log_min_duration_statement = 250").format(
            sql.Identifier(str(owned.name))
        ),
    )
    backup = operations.take_backup(Store(home.backups), engines, owned, REASON)

    restored = home.ctl("restore", backup.id, "--yes")

    assert restored.returncode == 0, restored.stderr
    said = restored.stderr.decode()
    assert "dbguardctl: WARNING: " in said, said
    assert "restored without its setting log_min_duration_statement = 250" in said, said
    [record] = [op for op in home.operations() if op.get("decision") == "restore"]
    assert record["outcome"] == "ok"
    assert ["log_min_duration_statement" in note for note in record["warnings"]] == [True]


def test_restoring_a_dropped_database_creates_it(
    rich: Target, store: Store, engines: Engines, engine: PostgresEngine
) -> None:
    backup = operations.take_backup(store, engines, rich, REASON)
    before = contents(rich)
    engine.fingerprint(rich)  # the kept connection must not stand in the way of DROP
    run(rich.model_copy(update={"name": "postgres"}),
        sql.SQL("DROP DATABASE {}").format(sql.Identifier(str(rich.name))))  # fmt: skip

    assert operations.restore_backup(store, engines, backup, rich, REASON) is None
    assert contents(rich) == before
    assert leftovers(rich) == []


# ---- a private cluster: password authentication, and quiet ------------------------------


@dataclass
class PrivateServer:
    """A throwaway cluster of our own: its pg_hba demands scram passwords (the shared
    server trusts everyone, so a wrong password cannot be seen there), and nobody else
    writes to it (the change signal is cluster-wide: other test runs on the shared server
    move it). About a second to set up."""

    port: int
    socket: Path
    password: str
    run_as: list[str]
    data: Path
    pg_ctl: Path

    def target(self, name: str, password: str | None, *, via_socket: bool = False) -> Target:
        return Target(
            engine="postgres",
            host=None if via_socket else "127.0.0.1",
            socket=str(self.socket) if via_socket else None,
            port=self.port,
            user="postgres",
            password=SecretStr(password) if password is not None else None,
            name=name,
        )

    def ctl(self, *args: str) -> None:
        # Output to a file: a server started by `restart` would hold a pipe open forever.
        with (self.data.parent / "pg_ctl.log").open("ab") as log:
            subprocess.run(
                [*self.run_as, str(self.pg_ctl), "-D", str(self.data), "-w", *args],
                check=True, stdout=log, stderr=log, timeout=60,
            )  # fmt: skip

    @contextlib.contextmanager
    def database(self) -> Iterator[Target]:
        target = self.target(f"dbguard_test_{secrets.token_hex(4)}", self.password)
        admin = target.model_copy(update={"name": "postgres"})
        run(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(target.name))))
        try:
            yield target
        finally:
            run(admin, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(str(target.name))))  # fmt: skip


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer | None]:
    """The private cluster, or None where one cannot be started here."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if initdb is None or (run_as and shutil.which("runuser") is None):
        yield None  # no server binaries here (e.g. a server in a container)
        return
    root = Path(tempfile.mkdtemp(prefix="dbguard-pg-", dir="/tmp"))
    password = f"right-{secrets.token_hex(6)}"
    (root / "pw").write_text(password)
    (root / "sock").mkdir()
    if run_as:  # the server refuses to run as root
        for path in (root, root / "pw", root / "sock"):
            shutil.chown(path, "postgres")
    server = PrivateServer(
        free_port(), root / "sock", password, run_as, root / "data", Path(initdb).parent / "pg_ctl"
    )
    try:
        subprocess.run(
            [*run_as, str(initdb), "-D", str(server.data), "-U", "postgres", "--no-sync",
             "--auth=scram-sha-256", f"--pwfile={root / 'pw'}"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = (
            f"-p {server.port} -k {server.socket} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c shared_buffers=16MB -c max_connections=20 -c autovacuum=off"
        )
        server.ctl("-o", options, "-l", str(root / "server.log"), "start")
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            server.ctl("-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def password_server(private_server: PrivateServer | None) -> PrivateServer:
    if private_server is None:
        pytest.skip("no initdb here (or root without runuser): no password-checking cluster")
    return private_server


@pytest.fixture
def password_db(password_server: PrivateServer) -> Iterator[Target]:
    with password_server.database() as target:
        run(target, "CREATE TABLE t (id serial PRIMARY KEY, v text)")
        run(target, "INSERT INTO t (v) SELECT 'row ' || i FROM generate_series(1, 50) i")
        yield target


@pytest.fixture
def quiet(private_server: PrivateServer | None, request: pytest.FixtureRequest) -> Iterator[Target]:
    """The rich database on the private cluster; on the shared server where none can be
    started (the tests using it then rely on their retries)."""
    if private_server is None:
        target: Target = request.getfixturevalue("pg_database")
        fill(target)
        yield target
        return
    with private_server.database() as target:
        fill(target)
        yield target


def test_a_database_named_postgres_restores_without_ending_connections(
    password_server: PrivateServer, store: Store, engines: Engines, engine: PostgresEngine
) -> None:
    """On a cluster of our own: the shared server's `postgres` must not be swapped."""
    target = password_server.target("postgres", password_server.password)
    run(target, "CREATE TABLE dbguard_test_t (x int)",
        "INSERT INTO dbguard_test_t SELECT generate_series(1, 10)")  # fmt: skip
    daemon = PostgresEngine(BackupSettings())
    try:
        backup = operations.take_backup(store, engines, target, REASON)
        run(target, "DELETE FROM dbguard_test_t")
        daemon.fingerprint(target)
        engine.marker(target)  # as dbguardctl restore does first

        operations.restore_backup(store, engines, backup, target, REASON)

        assert query(target, "SELECT count(*) FROM dbguard_test_t") == [(10,)]
        assert daemon.fingerprint(target) is not None
        assert leftovers(target) == []
    finally:
        daemon.close()
        run(target, "DROP TABLE IF EXISTS dbguard_test_t")


# ---- the change signal ----------------------------------------------------------------


def stays_put(engine: PostgresEngine, target: Target, action: Callable[[], object]) -> bool:
    """Whether the fingerprint stays put across `action`. The signal is cluster-wide,
    so other work on a shared server can move it: tried a few times, it must hold once."""
    action()  # the first run may prune pages or set hint bits; those write WAL
    for _ in range(5):
        before = engine.fingerprint(target)
        action()
        if engine.fingerprint(target) == before:
            return True
    return False


def test_fingerprint_moves_with_every_committed_change(
    rich: Target, engine: PostgresEngine
) -> None:
    changes = [
        "INSERT INTO app.customers (name) VALUES ('new')",
        "UPDATE app.customers SET note = 'changed' WHERE id = 1",
        "DELETE FROM app.orders WHERE id = 2",
        "ALTER TABLE app.orders ADD COLUMN shipped boolean",
        "CREATE INDEX ON app.customers (name)",
        "TRUNCATE app.documents",
        "SELECT setval('app.invoice_no', 5000)",
    ]
    for change in changes:
        before = engine.fingerprint(rich)
        run(rich, change)
        assert engine.fingerprint(rich) != before, change

    with connect(rich) as other:
        other.execute("BEGIN")
        other.execute("INSERT INTO app.customers (name) VALUES ('in a transaction')")
        other.execute("UPDATE app.customers SET balance = 1")
        before_commit = engine.fingerprint(rich)
        other.execute("COMMIT")
    assert engine.fingerprint(rich) != before_commit


def test_fingerprint_stays_put_after_reads_and_after_its_own_dump(
    quiet: Target, engine: PostgresEngine
) -> None:
    def reads() -> None:
        for table in TABLES:
            query(quiet, f"SELECT count(*), max(length(t::text)) FROM {table} t")
        query(quiet, "SELECT * FROM app.customer_totals")

    assert stays_put(engine, quiet, reads)
    assert stays_put(engine, quiet, lambda: dump(engine, quiet))


def test_fingerprint_names_the_cluster_and_the_database(
    rich: Target, engine: PostgresEngine
) -> None:
    system_id = query(rich, "SELECT system_identifier FROM pg_control_system()")[0][0]
    oid = query(rich, "SELECT oid FROM pg_database WHERE datname = current_database()")[0][0]
    other = rich.model_copy(update={"name": "template1"})

    ours, theirs = engine.fingerprint(rich), engine.fingerprint(other)

    assert ours is not None and theirs is not None
    assert ours.startswith(f"postgres:{system_id}:1:")
    assert f":{oid}:" in ours
    assert ours != theirs  # same cluster, same moment, another database


def test_skip_checks_reuse_one_connection_to_the_maintenance_database(
    pg_database: Target, engine: PostgresEngine
) -> None:
    app = f"dbguard-test-{secrets.token_hex(4)}"
    target = pg_database.model_copy(update={"params": {"application_name": app}})
    sessions = "SELECT pid, datname FROM pg_stat_activity WHERE application_name = %s"

    engine.fingerprint(target)
    first = query(pg_database, sessions, (app,))
    for _ in range(5):
        engine.fingerprint(target)

    assert first == query(pg_database, sessions, (app,))
    assert [datname for _, datname in first] == ["postgres"]
    # ... so the guarded command may drop its own database
    run(target.model_copy(update={"name": "postgres"}),
        sql.SQL("DROP DATABASE {}").format(sql.Identifier(str(target.name))))  # fmt: skip
    with pytest.raises(DatabaseMissing, match="does not exist"):
        engine.fingerprint(target)


@pytest.mark.parametrize("xid", ["the newest", "below a newer commit"])
def test_a_backup_beside_an_open_write_is_reused_until_that_write_commits(
    quiet: Target,
    private_server: PrivateServer | None,
    engine: PostgresEngine,
    store: Store,
    engines: Engines,
    xid: str,
) -> None:
    """The open write's xid is either at the snapshot's xmax (a lone writer: in
    progress, yet not in the xip list) or in the xip list (a newer one committed)."""
    with connect(quiet) as writer:
        writer.execute("BEGIN")
        writer.execute("INSERT INTO app.customers (name) VALUES ('not yet committed')")
        if xid == "below a newer commit":
            run(quiet, "INSERT INTO app.customers (name) VALUES ('committed')")
        own = writer.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert own is not None
        if private_server is not None:  # alone on the cluster, the case is visible
            snapshot = query(quiet, "SELECT pg_current_snapshot()::text")[0][0]
            _, xmax, xip = snapshot.split(":")
            if xid == "below a newer commit":
                assert xip == own[0]
            else:
                assert (xmax, xip) == (own[0], "")
        # Retried: on a shared server any transaction anywhere can end in between.
        for _ in range(5):
            backup = operations.take_backup(store, engines, quiet, REASON)
            if backup.fingerprint == engine.fingerprint(quiet):
                break
        else:
            pytest.fail("no backup's fingerprint matched the next check")
        committed = 8 if xid == "below a newer commit" else 7
        assert backup.tables["app.customers"] == committed  # without the open write
        writer.execute("COMMIT")

    assert engine.fingerprint(quiet) != backup.fingerprint


def test_wal_written_without_a_commit_leaves_the_fingerprint(
    quiet: Target, engine: PostgresEngine
) -> None:
    """A checkpoint moves the WAL position as the background writer's standby snapshots
    do, within 15 s of any write; neither changes what a backup would hold."""
    lsn = "SELECT pg_current_wal_insert_lsn()"
    moved: list[bool] = []

    def checkpoint() -> None:
        before = query(quiet, lsn)[0][0]
        run(quiet, "CHECKPOINT")
        moved.append(query(quiet, lsn)[0][0] != before)

    assert stays_put(engine, quiet, checkpoint)
    assert all(moved)


def test_the_environment_mark_lives_in_the_database_and_survives_a_restore(
    rich: Target, store: Store, engines: Engines, engine: PostgresEngine
) -> None:
    assert engine.marker(rich) is None
    engine.set_marker(rich, "production")
    assert engine.marker(rich) == "production"
    backup = operations.take_backup(store, engines, rich, REASON)

    operations.restore_backup(store, engines, backup, rich, REASON)

    assert engine.marker(rich) == "production"  # the swapped-in database kept it
    engine.set_marker(rich, "development")
    assert engine.marker(rich) == "development"
    engine.set_marker(rich, None)
    assert engine.marker(rich) is None
    absent = rich.model_copy(update={"name": f"{rich.name}_absent"})
    with pytest.raises(DatabaseMissing):
        engine.marker(absent)
    with pytest.raises(DatabaseMissing):
        engine.set_marker(absent, "production")


# ---- failures ---------------------------------------------------------------------------


def test_an_unreachable_server_is_said_so(engine: PostgresEngine, store: Store,
                                          engines: Engines) -> None:  # fmt: skip
    target = Target(engine="postgres", host="127.0.0.1", port=free_port(), user="x", name="db")

    with pytest.raises(BackupFailed, match="is not reachable: Connection refused") as caught:
        engine.fingerprint(target)
    assert not isinstance(caught.value, DatabaseMissing)
    with pytest.raises(BackupFailed, match="is not reachable"):
        operations.take_backup(store, engines, target, REASON)
    assert nothing_kept(store)


def test_a_missing_database_is_database_missing(
    pg_database: Target, engine: PostgresEngine, store: Store, engines: Engines
) -> None:
    target = pg_database.model_copy(update={"name": f"{pg_database.name}_absent"})

    with pytest.raises(DatabaseMissing, match=f"database {target.name} does not exist"):
        engine.fingerprint(target)
    with pytest.raises(DatabaseMissing):
        operations.take_backup(store, engines, target, REASON)
    assert nothing_kept(store)


class OnlyEngine(Engines):
    """A registry serving one given engine (e.g. one with its own tool folders)."""

    def __init__(self, engine: PostgresEngine) -> None:
        super().__init__(engine.settings)
        self.engine = engine

    def get(self, name: EngineName) -> Engine:
        return self.engine

    def close(self) -> None:
        self.engine.close()


def stand_in(folder: Path, version: str, body: str = "exit 0") -> Path:
    """A pg_dump stand-in that reports `version` and otherwise runs `body`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pg_dump"
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) {version}"; exit 0; fi\n'
        f"{body}\n"
    )
    path.chmod(0o755)
    return path


def test_no_fitting_pg_dump_names_the_server_and_the_tools_found(
    rich: Target, tmp_path: Path
) -> None:
    server = query(rich, "SHOW server_version")[0][0].split()[0]
    empty = PostgresEngine(BackupSettings(), tool_dirs=[tmp_path / "empty"])
    old = PostgresEngine(BackupSettings(), tool_dirs=[tmp_path / "old"])
    ran = tmp_path / "ran"
    stand_in(tmp_path / "old", "9.6.24", f"touch {ran}; exit 0")
    try:
        with pytest.raises(BackupFailed) as missing:
            dump(empty, rich)
        with pytest.raises(BackupFailed) as too_old:
            dump(old, rich)
    finally:
        empty.close()
        old.close()

    assert "pg_dump is not installed" in str(missing.value)
    assert f"PostgreSQL {server}" in str(missing.value)
    assert str(tmp_path / "empty") in str(missing.value)
    assert f"PostgreSQL {server}" in str(too_old.value)
    assert f"9.6.24 ({tmp_path / 'old' / 'pg_dump'})" in str(too_old.value)
    assert not ran.exists()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("exit 0", "exited successfully but wrote nothing"),
        ("printf 'PGDMP\\001\\016\\000 some table data'; exit 0", "ends in mid-archive"),
        ("printf 'COPY t FROM stdin;'; exit 0", "not a custom-format archive"),
        (
            "echo 'pg_dump: error: query failed: password=hunter2 x' >&2; "
            "echo 'pg_dump: detail: hunter2 appears again' >&2; exit 1",
            "failed with exit status 1:\npg_dump: error: query failed: password=*** x",
        ),
    ],
)
def test_a_pg_dump_that_misbehaves_is_caught(
    rich: Target, tmp_path: Path, store: Store, body: str, words: str
) -> None:
    stand_in(tmp_path / "tools", "99.0", body)
    engines = OnlyEngine(PostgresEngine(BackupSettings(), [tmp_path / "tools"]))
    target = rich.model_copy(update={"password": SecretStr("hunter2")})
    try:
        with pytest.raises(BackupFailed) as caught:
            operations.take_backup(store, engines, target, REASON)
    finally:
        engines.close()

    assert words in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert nothing_kept(store)
    assert children("pg_dump") == []


def kill_pg_dump_on_first_write(store: Store, engines: Engines, target: Target) -> None:
    killed: list[int] = []

    def progress(_size: int) -> None:
        if not killed:
            [(pid, _)] = children("pg_dump")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    operations.take_backup(store, engines, target, REASON, progress=progress)


def test_a_killed_pg_dump_fails_the_backup_and_leaves_nothing(
    rich: Target, store: Store, engines: Engines
) -> None:
    with pytest.raises(BackupFailed, match="pg_dump was killed by SIGKILL"):
        kill_pg_dump_on_first_write(store, engines, rich)

    assert nothing_kept(store)
    assert children("pg_dump") == []  # reaped: no zombie either


def test_a_user_who_may_not_read_a_table_is_told_so_not_that_the_snapshot_is_gone(
    pg_database: Target, store: Store, engines: Engines
) -> None:
    """The row counts share pg_dump's snapshot: the count of a table the user may not
    read ended the transaction that exported it, and the backup once failed with
    pg_dump's "could not import the requested snapshot" alone."""
    role = f"dbguard_test_reader_{secrets.token_hex(4)}"
    admin = pg_database.model_copy(update={"name": "postgres"})
    run(pg_database, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)")
    run(admin, sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with pytest.raises(BackupFailed) as failed:
            operations.take_backup(
                store, engines, pg_database.model_copy(update={"user": role}), REASON
            )
    finally:
        run(admin, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    said = str(failed.value)
    # Whichever of pg_dump and the counts meets the table first says what is wrong.
    assert "permission denied for table t" in said, said
    assert "requested snapshot" not in said, said
    assert nothing_kept(store)
    assert children("pg_dump") == []


def test_cancel_stops_pg_dump(rich: Target, store: Store, engines: Engines) -> None:
    cancel = threading.Event()

    with pytest.raises(Cancelled):
        operations.take_backup(store, engines, rich, REASON, cancel, lambda _: cancel.set())

    assert nothing_kept(store)
    assert children("pg_dump") == []


def test_a_failing_sink_stops_pg_dump_and_its_error_comes_through(
    rich: Target, engine: PostgresEngine
) -> None:
    def disk_full(_data: bytes | bytearray) -> None:
        raise BackupFailed("no space left in /backups while writing the backup")

    with pytest.raises(BackupFailed, match="no space left"):
        dump(engine, rich, NullSink(disk_full))
    assert children("pg_dump") == []


def test_a_dump_blocked_past_the_timeout_is_killed(rich: Target, tmp_path: Path) -> None:
    engine = PostgresEngine(BackupSettings(dump_timeout_seconds=1.5))
    try:
        with connect(rich) as locker:
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE app.orders IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(BackupFailed, match=r"pg_dump ran longer than 1\.5 s"):
                dump(engine, rich)
            elapsed = time.monotonic() - started
            locker.execute("ROLLBACK")
    finally:
        engine.close()

    assert 1.5 <= elapsed < 10
    assert children("pg_dump") == []


def test_lock_a_dump_blocked_by_a_held_lock_names_the_table_and_the_holder(
    rich: Target, store: Store, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "_LOCK_WAIT_MS", 2000)
    with connect(rich, application_name="hl-locker") as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE app.orders IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(BackupFailed) as caught:
            operations.take_backup(store, engines, rich, REASON)
        elapsed = time.monotonic() - started
        locker.execute("ROLLBACK")
        pid = locker.info.backend_pid

    failure = caught.value
    assert type(failure) is BackupFailed  # exit 75 to the shim, like any failed backup
    assert "pg_dump waited 2 s for a lock on table app.orders" in failure.problem
    assert f"session {pid} (user {rich.user}, application 'hl-locker'" in failure.problem
    assert "idle in transaction" in failure.problem
    assert "holds an ACCESS EXCLUSIVE lock" in failure.problem
    assert f"`SELECT pg_terminate_backend({pid})`" in failure.fix
    assert 2 <= elapsed < 30  # the lock wait, not the hour-long dump timeout
    assert nothing_kept(store)
    assert children("pg_dump") == []


def test_lock_a_batch_of_tables_pg_dump_locked_at_once_names_the_one_in_the_way(
    rich: Target,
) -> None:
    """Newer pg_dumps lock their tables in batches (`LOCK TABLE a, b, ...`): the lookup
    takes every name and says which table the holder is on."""
    with connect(rich) as locker:
        pid = locker.info.backend_pid
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE app.orders IN ACCESS EXCLUSIVE MODE")
        stderr = (
            "pg_dump: error: query failed: ERROR:  canceling statement due to lock timeout\n"
            "pg_dump: detail: Query was: LOCK TABLE app.customers, app.orders IN ACCESS "
            "SHARE MODE"
        )
        relations = postgres.locked_relations(stderr)
        blockers = postgres._lock_blockers(postgres.connection_settings(rich), relations)
        locker.execute("ROLLBACK")

    failure = postgres.lock_wait_failure(relations, 60, blockers)
    assert failure.problem.startswith("pg_dump waited 60 s for a lock on table app.orders and")
    assert f"session {pid} (user {rich.user}" in failure.problem
    assert f"`SELECT pg_terminate_backend({pid})`" in failure.fix


def test_lock_a_dump_queued_behind_an_alter_names_the_alter_and_what_it_waits_for(
    rich: Target, store: Store, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open transaction that read the table holds up an ALTER TABLE; pg_dump's
    request queues behind the ALTER's."""
    monkeypatch.setattr(postgres, "_LOCK_WAIT_MS", 2000)
    with connect(rich) as reader, connect(rich) as alterer:
        alter, read = alterer.info.backend_pid, reader.info.backend_pid
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM app.customers")
        altering = threading.Thread(
            target=alterer.execute, args=("ALTER TABLE app.customers ADD COLUMN extra int",)
        )
        altering.start()
        try:
            waiting = (
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted)",
                (alter,),
            )
            assert poll(lambda: query(rich, *waiting)[0][0])
            with pytest.raises(BackupFailed) as caught:
                operations.take_backup(store, engines, rich, REASON)
        finally:
            reader.execute("ROLLBACK")
            altering.join()

    text = caught.value.problem
    assert "for a lock on table app.customers" in text
    assert f"session {alter} (" in text and "waits for an ACCESS EXCLUSIVE lock" in text
    assert f"session {read} (" in text and f"holds a lock that session {alter} waits for" in text
    assert f"pg_terminate_backend({read})" in caught.value.fix
    assert nothing_kept(store)


def test_lock_a_lookup_that_cannot_finish_still_gives_pg_dumps_own_error(
    rich: Target, store: Store, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup of who holds the lock is bounded, and its failure hides nothing."""
    monkeypatch.setattr(postgres, "_LOCK_WAIT_MS", 2000)
    monkeypatch.setattr(postgres, "_LOOKUP_TIMEOUT_MS", 300)
    monkeypatch.setattr(postgres, "_LOCK_HOLDERS_SQL", "SELECT pg_sleep(30), %(relations)s")
    with connect(rich) as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE app.orders IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(BackupFailed) as caught:
            operations.take_backup(store, engines, rich, REASON)
        elapsed = time.monotonic() - started
        locker.execute("ROLLBACK")

    text = caught.value.problem
    assert "pg_dump waited 2 s for a lock on table app.orders" in text
    assert "who holds the lock could not be looked up: canceling statement" in text
    assert "Query was: LOCK TABLE app.orders IN ACCESS SHARE MODE" in text  # pg_dump's own
    assert elapsed < 30
    assert nothing_kept(store)


def test_a_reloaded_timeout_reaches_an_engine_already_in_use(rich: Target) -> None:
    """SIGHUP hands the daemon's Engines new settings; the engine made before (with its
    warm connections) once kept the old timeout until a restart."""
    engines = Engines(BackupSettings(dump_timeout_seconds=3600))
    try:
        engine = engines.for_target(rich)
        assert engine.fingerprint(rich) is not None  # in use: connected, signal read
        engines.settings = BackupSettings(dump_timeout_seconds=1.5)  # what reload does
        with connect(rich) as locker:
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE app.orders IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(BackupFailed, match=r"pg_dump ran longer than 1\.5 s"):
                dump(engines.for_target(rich), rich)  # type: ignore[arg-type]
            locker.execute("ROLLBACK")
    finally:
        engines.close()
    assert children("pg_dump") == []


def test_the_password_is_never_in_the_argv_of_pg_dump(
    rich: Target, store: Store, engines: Engines
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    target = rich.model_copy(update={"password": SecretStr(password)})  # trust auth ignores it
    seen: dict[str, bytes] = {}

    def progress(_size: int) -> None:
        if not seen:
            [(pid, _)] = children("pg_dump")
            seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes()
            seen["environ"] = Path(f"/proc/{pid}/environ").read_bytes()

    backup = operations.take_backup(store, engines, target, REASON, progress=progress)

    assert b"--snapshot=" in seen["cmdline"]  # it is the real pg_dump, mid-dump
    assert password.encode() not in seen["cmdline"]
    assert f"PGPASSWORD={password}".encode() in seen["environ"].split(b"\0")
    folder = store.folder(backup)
    assert all(password.encode() not in f.read_bytes() for f in folder.iterdir() if f.is_file())


def test_a_unix_socket_target_backs_up(rich: Target, engine: PostgresEngine) -> None:
    folder = query(rich, "SHOW unix_socket_directories")[0][0].split(",")[0].strip()
    if not Path(folder, ".s.PGSQL.5432").exists():
        pytest.skip(f"the server's socket is not visible here ({folder})")
    target = Target(engine="postgres", socket=folder, user="postgres", name=rich.name)

    assert dump(engine, target).tables["app.orders"] == 21


# ---- password authentication ---------------------------------------------------------


def test_a_wrong_password_is_said_so_without_showing_it(
    password_server: PrivateServer, password_db: Target, engine: PostgresEngine
) -> None:
    wrong = password_server.target(str(password_db.name), "wrong-password-123")
    none = password_server.target(str(password_db.name), None)

    with pytest.raises(BackupFailed, match="refused the password for user postgres") as caught:
        engine.fingerprint(wrong)
    assert "wrong-password-123" not in str(caught.value)
    with pytest.raises(BackupFailed, match="refused the password"):
        dump(engine, wrong)
    with pytest.raises(BackupFailed, match="wants a password for user postgres"):
        engine.fingerprint(none)


def test_password_authentication_over_tcp_and_socket_round_trips(
    password_server: PrivateServer, password_db: Target, store: Store, engines: Engines
) -> None:
    for via_socket in (False, True):
        target = password_server.target(
            str(password_db.name), password_server.password, via_socket=via_socket
        )
        backup = operations.take_backup(store, engines, target, REASON)
        assert backup.tables == {"public.t": 50}
        # verify_backup uses the manifest's target, which has no password: count directly
        with store.work_folder() as (_, scratch), store.open_data(backup) as data:
            counts = engines.get("postgres").restored_counts(target, data, "pg-custom", scratch)
        assert counts == backup.tables
        with psycopg.connect(
            host=str(password_server.socket), port=password_server.port, user="postgres",
            password=password_server.password, dbname=password_db.name, autocommit=True,
        ) as conn:  # fmt: skip
            conn.execute("DELETE FROM t")
        # the manifest's target has no password: restore with the one we know
        operations.restore_backup(store, engines, backup, target, REASON)
        with psycopg.connect(
            host="127.0.0.1", port=password_server.port, user="postgres",
            password=password_server.password, dbname=password_db.name,
        ) as conn:  # fmt: skip
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (50,)


def test_fingerprint_moves_across_a_restart_and_reconnects(
    password_server: PrivateServer, password_db: Target, engine: PostgresEngine
) -> None:
    before = engine.fingerprint(password_db)
    password_server.ctl("-m", "fast", "restart")

    after = engine.fingerprint(password_db)  # the kept connection died with the server

    assert before is not None and after is not None and after != before
    assert engine.fingerprint(password_db) == after


def accepts(target: Target) -> bool:
    try:
        connect(target).close()
    except psycopg.OperationalError:
        return False
    return True


def test_fingerprint_moves_across_a_crash_restart(
    password_server: PrivateServer, password_db: Target, engine: PostgresEngine
) -> None:
    """A backend killed by signal makes the postmaster (which keeps running, with its
    start time) end every session and recover: commits made with synchronous_commit
    off may be lost, and their xids handed out again, so equal snapshots across a crash
    would prove nothing."""
    run(password_db, "SET synchronous_commit = off; INSERT INTO t (v) VALUES ('maybe lost')")
    before = engine.fingerprint(password_db)
    with connect(password_db) as victim:
        pid = victim.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        os.kill(pid[0], signal.SIGKILL)
        assert poll(lambda: accepts(password_db))

    after = engine.fingerprint(password_db)  # the kept connection died in the crash

    assert before is not None and after is not None and after != before
    assert engine.fingerprint(password_db) == after


def test_no_backup_fingerprint_with_an_unlogged_sequence(
    password_db: Target, engine: PostgresEngine
) -> None:
    """nextval and setval on an unlogged sequence take no xid: nothing would see them."""
    assert dump(engine, password_db).fingerprint is not None
    run(password_db, "CREATE UNLOGGED SEQUENCE tickets")
    before = engine.fingerprint(password_db)
    run(password_db, "SELECT setval('tickets', 5000)")
    assert engine.fingerprint(password_db) == before  # why: the setval left no trace

    assert dump(engine, password_db).fingerprint is None


def test_a_look_alike_catalog_ahead_on_the_search_path_hides_no_unlogged_sequence(
    password_db: Target, engine: PostgresEngine
) -> None:
    run(
        password_db,
        "CREATE UNLOGGED SEQUENCE tickets",
        "CREATE TABLE public.pg_class (relkind char, relpersistence char)",
        sql.SQL("ALTER DATABASE {} SET search_path = public, pg_catalog").format(
            sql.Identifier(str(password_db.name))
        ),
    )

    info = dump(engine, password_db)

    assert info.fingerprint is None
    assert info.tables == {"public.pg_class": 0, "public.t": 50}


@pytest.fixture
def other_roles(pg_database: Target) -> Iterator[tuple[str, str]]:
    """Two login roles: one owns a table in the database, one only may create databases."""
    suffix = secrets.token_hex(4)
    owner, verifier = f"dbguard_test_owner_{suffix}", f"dbguard_test_verifier_{suffix}"
    admin = pg_database.model_copy(update={"name": "postgres"})
    run(
        admin,
        sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)),
        sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(verifier)),
    )
    roles = sql.SQL(", ").join([sql.Identifier(owner), sql.Identifier(verifier)])
    try:
        yield owner, verifier
    finally:
        run(pg_database, sql.SQL("DROP OWNED BY {}").format(roles))  # the table
        run(admin, sql.SQL("DROP OWNED BY {}").format(roles), sql.SQL("DROP ROLE {}").format(roles))


def test_verify_by_a_user_who_is_not_every_owner_checks_the_rows(
    pg_database: Target, other_roles: tuple[str, str], store: Store, engines: Engines
) -> None:
    owner, verifier = other_roles
    run(
        pg_database,
        "CREATE TABLE theirs (id int)",
        "INSERT INTO theirs VALUES (1), (2)",
        sql.SQL("ALTER TABLE theirs OWNER TO {}").format(sql.Identifier(owner)),
    )
    backup = operations.take_backup(store, engines, pg_database, REASON)
    as_verifier = pg_database.model_copy(update={"user": verifier})

    result = operations.verify_backup(store, engines, backup, as_verifier)

    assert result.ok, result.problems  # not "must be member of role ..."
    assert backup.tables == {"public.theirs": 2}


def test_sessions_of_other_roles_count_for_a_user_who_cannot_see_them(
    pg_database: Target, other_roles: tuple[str, str]
) -> None:
    from dbguard.engines.postgres import _sessions

    owner, verifier = other_roles
    as_verifier = pg_database.model_copy(update={"user": verifier, "name": "postgres"})
    with connect(pg_database.model_copy(update={"user": owner})), connect(as_verifier) as conn:
        sessions = _sessions(conn, str(pg_database.name))
    assert [(x.user, x.app, x.kept) for x in sessions] == [
        (owner, "a session of another role", False)
    ]


def restore_stand_in(folder: Path, says: str) -> None:
    """A pg_restore that reads its input, then fails saying `says` (exit status 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pg_restore"
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "pg_restore (PostgreSQL) 99.0"; exit 0; fi\n'
        f"cat > /dev/null; echo 'pg_restore: error: {says}' >&2; exit 1\n"
    )
    path.chmod(0o755)


@pytest.mark.parametrize(
    "says",
    [
        'could not execute query: ERROR:  could not extend file "base/16384/16390": '
        "No space left on device",
        "could not execute query: server closed the connection unexpectedly",
        'could not execute query: ERROR:  extension "postgis" is not available',
    ],
    ids=["server disk full", "connection lost", "missing extension"],
)
def test_a_verify_stopped_by_the_server_does_not_mark_the_backup_failed(
    rich: Target, store: Store, engines: Engines, tmp_path: Path, says: str
) -> None:
    backup = operations.take_backup(store, engines, rich, REASON)
    restore_stand_in(tmp_path / "tools", says)
    failing = OnlyEngine(PostgresEngine(BackupSettings(), tool_dirs=[tmp_path / "tools"]))
    try:
        with pytest.raises(RestoreFailed) as caught:
            operations.verify_backup(store, failing, backup)
    finally:
        failing.close()

    message = str(caught.value)
    assert says.split(": ")[-1] in message and "not marked failed" in message, message
    assert store.get(backup.id).verified is None
    assert leftovers(rich) == []
    assert operations.verify_backup(store, engines, backup).ok


def test_an_archive_pg_restore_cannot_read_is_marked_failed(
    rich: Target, store: Store, engines: Engines, tmp_path: Path
) -> None:
    backup = operations.take_backup(store, engines, rich, REASON)
    restore_stand_in(tmp_path / "tools", "input file does not appear to be a valid archive")
    failing = OnlyEngine(PostgresEngine(BackupSettings(), tool_dirs=[tmp_path / "tools"]))
    try:
        result = operations.verify_backup(store, failing, backup)
    finally:
        failing.close()

    assert not result.ok
    assert "not appear to be a valid archive" in result.problems[0]
    assert store.get(backup.id).verified == result

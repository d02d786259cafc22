"""Round trips: hypothesis generates tables (odd names, many types) and rows (NULLs,
unicode, binary, extreme and large values) for SQLite, PostgreSQL and MariaDB; the
store backs them up with the real engines, the test destroys the database, restores
the backup, and the restored data must equal what existed at backup time.

One throwaway database per test; every example starts by emptying it. The example
counts are modest to keep the suite within its time budget; each example is a full
dump, a pre-restore dump, a restore and two comparisons.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbguard import operations
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.store import Reason, Store
from tests.faults.support import FIGURES, injected

REASON = Reason(kind="manual")
SETTINGS = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "database": None,  # the databases are reset per example; replays prove little
}
NAMES = st.sampled_from(
    ["t", "Mixed Case", "ünïcødé", "with space", 'quo"te', "it's", "select", "a.b", "x" * 40]
)
UNICODE = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=60)
LARGE_TEXT = st.integers(100_000, 400_000).map(lambda n: "é" * n)  # 2 bytes a character
BLOBS = st.one_of(
    st.binary(max_size=200),
    st.integers(200_000, 600_000).map(lambda n: bytes(range(256)) * (n // 256)),
)


@dataclass
class Table:
    name: str
    columns: list[tuple[str, str]]  # (name, type)
    rows: list[list[Any]]


def tables(
    types: dict[str, st.SearchStrategy[Any]], max_rows: int = 8
) -> st.SearchStrategy[list[Table]]:
    """One or two tables, each with a `rid` key and one to five typed columns."""

    @st.composite
    def table(draw: st.DrawFn, name: str) -> Table:
        kinds = draw(st.lists(st.sampled_from(sorted(types)), min_size=1, max_size=5))
        columns = [(f"c{i} {kind.split('(')[0]}", kind) for i, kind in enumerate(kinds)]
        rows = draw(
            st.lists(
                st.tuples(*(st.none() | types[kind] for kind in kinds)).map(list),
                max_size=max_rows,
            )
        )
        return Table(name, columns, rows)

    return st.lists(NAMES, min_size=1, max_size=2, unique=True).flatmap(
        lambda names: st.tuples(*(table(n) for n in names)).map(list)
    )


def round_trip(
    tmp_path: Path,
    target: Target,
    create: Callable[[list[Table]], None],
    snapshot: Callable[[], object],
    destroy: Callable[[], None],
    data: list[Table],
) -> None:
    """Back up, destroy, restore; the restored state must equal the backed-up one."""
    create(data)
    expected = snapshot()
    store = Store(tmp_path / "store")
    engines = Engines()
    try:
        manifest = operations.take_backup(store, engines, target, REASON)
        destroy()
        assert snapshot() != expected  # really destroyed (a junk table replaced it all)
        operations.restore_backup(store, engines, manifest, target, REASON, end_connections=True)
    finally:
        engines.close()
    assert snapshot() == expected
    # The manifest's row counts are those of the backed-up tables.
    assert sorted(manifest.tables.values()) == sorted(len(t.rows) for t in data)


# ---- SQLite ------------------------------------------------------------------------------

SQLITE_TYPES: dict[str, st.SearchStrategy[Any]] = {
    "INTEGER": st.integers(-(2**63), 2**63 - 1),
    "REAL": st.floats(allow_nan=False),  # SQLite stores NaN as NULL
    "TEXT": st.one_of(UNICODE, LARGE_TEXT),
    "BLOB": BLOBS,
    "NUMERIC": st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False), UNICODE),
    "": st.one_of(st.integers(-(2**63), 2**63 - 1), UNICODE, st.binary(max_size=50)),
}


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.mark.slow
def test_sqlite_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    target = Target(engine="sqlite", path=str(path), source="test")
    examples = 0

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path)

    def create(data: list[Table]) -> None:
        path.unlink(missing_ok=True)
        with connect() as conn:
            for table in data:
                columns = ", ".join(f"{q(n)} {t}" for n, t in table.columns)
                conn.execute(f"CREATE TABLE {q(table.name)} (rid INTEGER PRIMARY KEY, {columns})")
                marks = ", ".join("?" for _ in range(len(table.columns) + 1))
                conn.executemany(
                    f"INSERT INTO {q(table.name)} VALUES ({marks})",
                    [[i, *row] for i, row in enumerate(table.rows)],
                )
        conn.close()

    def snapshot() -> object:
        conn = connect()
        try:
            schema = conn.execute(
                "SELECT type, name, sql FROM sqlite_master ORDER BY name"
            ).fetchall()
            rows = {}
            for kind, name, _ in schema:
                if kind != "table":
                    continue
                columns = conn.execute(f"PRAGMA table_info({q(name)})").fetchall()
                types = ", ".join(f"typeof({q(c[1])})" for c in columns)
                query = f"SELECT *, {types} FROM {q(name)} ORDER BY rid"
                rows[name] = conn.execute(query).fetchall()
            return schema, rows
        finally:
            conn.close()

    def destroy() -> None:
        with connect() as conn:
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'"
            ).fetchall():
                conn.execute(f"DROP TABLE {q(name)}")
            conn.execute("CREATE TABLE junk (rid INTEGER PRIMARY KEY, x)")
            conn.execute("INSERT INTO junk VALUES (1, 'not the backup')")
        conn.close()

    @settings(max_examples=60, **SETTINGS)  # type: ignore[arg-type]
    @given(tables(SQLITE_TYPES))
    def check(data: list[Table]) -> None:
        nonlocal examples
        examples += 1
        round_trip(tmp_path / f"s{examples}", target, create, snapshot, destroy, data)

    check()
    injected("database destroyed and restored from backup (SQLite)", examples)
    FIGURES["round-trip examples (SQLite)"] = examples


# ---- PostgreSQL ---------------------------------------------------------------------------

PG_TYPES: dict[str, st.SearchStrategy[Any]] = {
    "bigint": st.integers(-(2**63), 2**63 - 1),
    "integer": st.integers(-(2**31), 2**31 - 1),
    "numeric": st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: abs(d.adjusted()) < 1000
    ),
    "double precision": st.floats(),  # NaN and ±Infinity included
    "real": st.floats(width=32),
    "text": st.one_of(UNICODE, LARGE_TEXT),
    "bytea": BLOBS,
    "boolean": st.booleans(),
    "timestamptz": st.datetimes(
        min_value=dt.datetime(1, 1, 1),
        max_value=dt.datetime(9999, 12, 31),
        timezones=st.just(dt.UTC),
    ),
    "date": st.dates(),
    "uuid": st.uuids(),
    "jsonb": st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | UNICODE,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(UNICODE, inner, max_size=3),
        max_leaves=6,
    ),
    "integer[]": st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=5),
    "text[]": st.lists(UNICODE, max_size=4),
    "interval": st.timedeltas(
        min_value=dt.timedelta(days=-(10**6)), max_value=dt.timedelta(days=10**6)
    ),
    "time": st.times(),
}


@pytest.mark.slow
def test_postgres_round_trips(tmp_path: Path, pg_database: Target) -> None:
    import psycopg
    from psycopg.types.json import Jsonb

    from tests.servers import pg_connect

    examples = 0

    def adapt(value: Any, kind: str) -> Any:
        return Jsonb(value) if kind == "jsonb" and value is not None else value

    def create(data: list[Table]) -> None:
        with pg_connect(str(pg_database.name)) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")
            for table in data:
                columns = ", ".join(f"{q(n)} {t}" for n, t in table.columns)
                conn.execute(f"CREATE TABLE {q(table.name)} (rid bigint PRIMARY KEY, {columns})")
                marks = ", ".join(f"%s::{t}" for _, t in table.columns)
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {q(table.name)} VALUES (%s, {marks})",
                        [
                            [
                                i,
                                *(
                                    adapt(v, t)
                                    for v, (_, t) in zip(row, table.columns, strict=True)
                                ),
                            ]
                            for i, row in enumerate(table.rows)
                        ],
                    )

    def snapshot() -> object:
        with pg_connect(str(pg_database.name)) as conn:
            schema = conn.execute(
                "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 "
                "AND NOT a.attisdropped ORDER BY 1, a.attnum"
            ).fetchall()
            names = sorted({row[0] for row in schema})
            rows = {
                name: conn.execute(f"SELECT t::text FROM {q(name)} t ORDER BY rid").fetchall()
                for name in names
            }
            return schema, rows

    def destroy() -> None:
        with pg_connect(str(pg_database.name)) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
            conn.execute("CREATE TABLE junk AS SELECT 1 AS rid, 'not the backup'::text AS x")

    @settings(max_examples=25, **SETTINGS)  # type: ignore[arg-type]
    @given(tables(PG_TYPES, max_rows=6))
    def check(data: list[Table]) -> None:
        nonlocal examples
        examples += 1
        round_trip(tmp_path / f"p{examples}", pg_database, create, snapshot, destroy, data)

    try:
        check()
    except psycopg.OperationalError as err:  # pragma: no cover - server trouble
        pytest.fail(f"PostgreSQL failed during the round trips: {err}")
    injected("database destroyed and restored from backup (PostgreSQL)", examples)
    FIGURES["round-trip examples (PostgreSQL)"] = examples


# ---- MariaDB ------------------------------------------------------------------------------

MYSQL_TYPES: dict[str, st.SearchStrategy[Any]] = {
    "BIGINT": st.integers(-(2**63), 2**63 - 1),
    "INT UNSIGNED": st.integers(0, 2**32 - 1),
    "DECIMAL(30,10)": st.decimals(
        min_value=Decimal("-99999999999999999999"),
        max_value=Decimal("99999999999999999999"),
        places=10,
    ),
    "DOUBLE": st.floats(allow_nan=False, allow_infinity=False),
    "VARCHAR(200)": st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=200
    ).map(lambda s: s.rstrip(" ")),  # VARCHAR comparisons ignore trailing spaces in keys only
    "LONGTEXT": st.one_of(UNICODE, LARGE_TEXT),
    "LONGBLOB": BLOBS,
    "DATETIME(6)": st.datetimes(
        min_value=dt.datetime(1000, 1, 1), max_value=dt.datetime(9999, 12, 31)
    ),
    "DATE": st.dates(min_value=dt.date(1000, 1, 1)),
    "TINYINT(1)": st.integers(-128, 127),
    "BIT(8)": st.integers(0, 255),
    "FLOAT": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "TIMESTAMP(6)": st.datetimes(
        min_value=dt.datetime(1971, 1, 2), max_value=dt.datetime(2037, 12, 31)
    ),
    "JSON": st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | UNICODE,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(UNICODE, inner, max_size=3),
        max_leaves=6,
    ).map(json.dumps),
    "ENUM('a','b','ü')": st.sampled_from(["a", "b", "ü"]),
}


def mysql_round_trips(
    tmp_path: Path, target: Target, types: dict[str, st.SearchStrategy[Any]], examples: int
) -> int:
    from tests.servers import mysql_connect

    done = 0

    def qm(name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def connect() -> Any:
        return mysql_connect(str(target.name))

    def create(data: list[Table]) -> None:
        conn = connect()
        try:
            with conn.cursor() as cur:
                for (name,) in list_tables(cur):
                    cur.execute(f"DROP TABLE {qm(name)}")
                for table in data:
                    columns = ", ".join(f"{qm(n)} {t}" for n, t in table.columns)
                    cur.execute(
                        f"CREATE TABLE {qm(table.name)} (rid BIGINT PRIMARY KEY, {columns})"
                    )
                    marks = ", ".join("%s" for _ in range(len(table.columns) + 1))
                    for i, row in enumerate(table.rows):
                        cur.execute(f"INSERT INTO {qm(table.name)} VALUES ({marks})", [i, *row])
        finally:
            conn.close()

    def list_tables(cur: Any) -> list[tuple[str]]:
        cur.execute("SHOW FULL TABLES WHERE Table_type = 'BASE TABLE'")
        return [(row[0],) for row in cur.fetchall()]

    def snapshot() -> object:
        conn = connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLLATION_NAME "
                    "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                    "ORDER BY TABLE_NAME, ORDINAL_POSITION"
                )
                schema = cur.fetchall()
                rows = {}
                for (name,) in sorted(list_tables(cur)):
                    cur.execute(f"SELECT * FROM {qm(name)} ORDER BY rid")
                    rows[name] = [tuple(normal(v) for v in row) for row in cur.fetchall()]
                return schema, rows
        finally:
            conn.close()

    def destroy() -> None:
        conn = connect()
        try:
            with conn.cursor() as cur:
                for (name,) in list_tables(cur):
                    cur.execute(f"DROP TABLE {qm(name)}")
                cur.execute("CREATE TABLE junk (rid BIGINT, x TEXT)")
                cur.execute("INSERT INTO junk VALUES (1, 'not the backup')")
        finally:
            conn.close()

    @settings(max_examples=examples, **SETTINGS)  # type: ignore[arg-type]
    @given(tables(types, max_rows=6))
    def check(data: list[Table]) -> None:
        nonlocal done
        done += 1
        round_trip(tmp_path / f"m{done}", target, create, snapshot, destroy, data)

    check()
    return done


def normal(value: Any) -> Any:
    """Comparable forms: floats by their exact bits (so -0.0 and 0.0 differ)."""
    if isinstance(value, float):
        return ("float", value.hex()) if not math.isnan(value) else ("float", "nan")
    return value


@pytest.mark.slow
def test_mariadb_round_trips(tmp_path: Path, mysql_database: Target) -> None:
    examples = mysql_round_trips(tmp_path, mysql_database, MYSQL_TYPES, 25)
    injected("database destroyed and restored from backup (MariaDB)", examples)
    FIGURES["round-trip examples (MariaDB)"] = examples

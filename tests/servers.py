"""Throwaway databases on the real servers, one per test.

On a developer's machine a missing server skips the test with the reason; in CI
(.ci/run sets DBGUARD_REQUIRE_SERVERS=1) it fails, so a green run proves the engines.
Connection settings can be overridden with DBGUARD_TEST_PG_* / DBGUARD_TEST_MYSQL_*.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import NoReturn

import pytest

from dbguard.engines.base import Target

REQUIRED = os.environ.get("DBGUARD_REQUIRE_SERVERS") == "1"

PG_HOST = os.environ.get("DBGUARD_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DBGUARD_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("DBGUARD_TEST_PG_USER", "postgres")
MYSQL_HOST = os.environ.get("DBGUARD_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("DBGUARD_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("DBGUARD_TEST_MYSQL_USER", "root")


def unavailable(what: str, err: Exception) -> NoReturn:
    message = f"{what} is not reachable ({err}); start it to run this test"
    if REQUIRED:
        pytest.fail(f"CI requires the servers: {message}")
    pytest.skip(message)


def scratch_name() -> str:
    return f"dbguard_test_{secrets.token_hex(4)}"


def pg_connect(dbname: str = "postgres"):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        dbname=dbname,
        autocommit=True,
        connect_timeout=5,
    )


def mysql_connect(database: str | None = None):  # type: ignore[no-untyped-def]
    import pymysql

    return pymysql.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_USER,
        password="",
        database=database,
        autocommit=True,
        connect_timeout=5,
        charset="utf8mb4",
    )


@pytest.fixture
def pg_database() -> Iterator[Target]:
    """A new, empty PostgreSQL database, dropped after the test."""
    name = scratch_name()
    try:
        with pg_connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as err:  # any failure to reach the server
        unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT}", err)
    try:
        yield Target(
            engine="postgres",
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            name=name,
            source="test",
        )
    finally:
        with pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def mysql_database() -> Iterator[Target]:
    """A new, empty MariaDB/MySQL database (schema), dropped after the test."""
    name = scratch_name()
    try:
        conn = mysql_connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        conn.close()
    except Exception as err:
        unavailable(f"MariaDB/MySQL at {MYSQL_HOST}:{MYSQL_PORT}", err)
    try:
        yield Target(
            engine="mysql",
            host=MYSQL_HOST,
            port=MYSQL_PORT,
            user=MYSQL_USER,
            name=name,
            source="test",
        )
    finally:
        conn = mysql_connect()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()

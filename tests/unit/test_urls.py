"""Database URLs in every form frameworks write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbguard.discovery.envfile import DiscoveryError
from dbguard.discovery.urls import parse_database_url, redact_url, url_engine
from dbguard.engines.base import Target

BASE = Path("/srv/app")


def parse(url: str) -> Target:
    target = parse_database_url(url, BASE, "test")
    assert target is not None
    return target


@pytest.mark.parametrize(
    ("url", "engine", "host", "port", "name"),
    [
        ("postgres://u@db:5432/app", "postgres", "db", 5432, "app"),
        ("postgresql://u@db/app", "postgres", "db", None, "app"),
        ("postgresql+psycopg://u@db:5433/app", "postgres", "db", 5433, "app"),
        ("postgresql+asyncpg://u@db/app", "postgres", "db", None, "app"),
        ("pgsql://u@db/app", "postgres", "db", None, "app"),
        ("mysql://u@db:3307/app", "mysql", "db", 3307, "app"),
        ("mysql+pymysql://u@db/app?charset=utf8mb4", "mysql", "db", None, "app"),
        ("mariadb://u@db/app", "mysql", "db", None, "app"),
        ("mysql2://u@db/app", "mysql", "db", None, "app"),
        ("trilogy://u@db/app", "mysql", "db", None, "app"),
        ("jdbc:postgresql://db:5432/app", "postgres", "db", 5432, "app"),
        ("jdbc:mysql://db/app", "mysql", "db", None, "app"),
        ("jdbc:mariadb://db/app", "mysql", "db", None, "app"),
        ("postgres://u@[::1]:5432/app", "postgres", "::1", 5432, "app"),
    ],
)
def test_server_url_forms(url: str, engine: str, host: str, port: int | None, name: str) -> None:
    target = parse(url)
    assert (target.engine, target.host, target.port, target.name) == (engine, host, port, name)


def test_percent_encoded_user_and_password() -> None:
    target = parse("postgresql://my%40user:p%40ss%2Fw%3Ard%25@db/app")
    assert target.user == "my@user"
    assert target.password is not None and target.password.get_secret_value() == "p@ss/w:rd%"


def test_unencoded_at_sign_in_password() -> None:
    target = parse("mysql://u:p@ss@db/app")
    assert target.password is not None and target.password.get_secret_value() == "p@ss"
    assert target.host == "db"


@pytest.mark.parametrize(
    ("url", "socket"),
    [
        ("postgresql://u@/app?host=/var/run/postgresql", "/var/run/postgresql"),
        ("postgresql:///app?host=%2Fvar%2Frun%2Fpostgresql", "/var/run/postgresql"),
        ("postgresql://u@%2FUsers%2FMe%2Fpg/app", "/Users/Me/pg"),
        (
            "mysql+pymysql://u@localhost/app?unix_socket=/run/mysqld/mysqld.sock",
            "/run/mysqld/mysqld.sock",
        ),
        ("mysql://u@localhost/app?socket=/tmp/mysql.sock", "/tmp/mysql.sock"),
    ],
)
def test_socket_paths(url: str, socket: str) -> None:
    assert parse(url).socket == socket


def test_query_parameters_kept_and_libpq_fills() -> None:
    target = parse(
        "postgresql:///app?host=db.example.com&port=6543&user=me&password=pw&sslmode=verify-full&schema=public"
    )
    assert (target.host, target.port, target.user) == ("db.example.com", 6543, "me")
    assert target.password is not None and target.password.get_secret_value() == "pw"
    assert target.params == {"sslmode": "verify-full"}
    assert parse("postgresql://h?dbname=fromquery").name == "fromquery"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative.db", "/srv/app/relative.db"),
        ("sqlite:////abs/app.db", "/abs/app.db"),
        ("sqlite3:///db/x.sqlite3", "/srv/app/db/x.sqlite3"),
        ("file:./dev.db", "/srv/app/dev.db"),
        ("file:../up.db", "/srv/up.db"),
        ("file:///abs/prisma.db", "/abs/prisma.db"),
        ("jdbc:sqlite:data/app.db", "/srv/app/data/app.db"),
        ("sqlite:///with%20space.db", "/srv/app/with space.db"),
    ],
)
def test_sqlite_forms(url: str, path: str) -> None:
    assert parse(url).path == path


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite::memory:",
        "file::memory:?cache=shared",
        "file:x?mode=memory",
    ],
)
def test_in_memory_sqlite_is_none(url: str) -> None:
    assert parse_database_url(url, BASE, "test") is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense", "is not a database URL"),
        ("", "is not a database URL"),
        ("postgres://u:secret@h:99999/db", "does not parse"),
        ("postgres://u:secret@h:port/db", "does not parse"),
        ("postgres:/h/db", "missing the //"),
        ("postgres://u@h1:5432,h2:5432/db", "several hosts"),
        ("sqlserver://h;database=x", "SQL Server database, which dbguard cannot back up"),
        ("mongodb+srv://u:secret@cluster/db", "MongoDB"),
    ],
)
def test_bad_urls_name_where_and_never_the_password(url: str, message: str) -> None:
    with pytest.raises(DiscoveryError, match=message) as info:
        parse_database_url(url, BASE, "source", where=".env, line 7")
    assert str(info.value).startswith(".env, line 7: ")
    assert "secret" not in str(info.value)


def test_redact_and_engine() -> None:
    assert redact_url("postgres://u:secret@h:5432/db") == "postgres://u:***@h:5432/db"
    assert redact_url("postgres://u:secret@h:bad/db") == "postgres://u:***@h:bad/db"
    # A password with unencoded @ : / # ?: everything up to the last @ goes.
    odd = "mysql://u:p@ss:w/rd%41#?&x@127.0.0.1:3306/db"
    assert redact_url(odd) == "mysql://u:***@127.0.0.1:3306/db"
    assert redact_url("postgres://u:pw@[::1]:5432/db") == "postgres://u:***@[::1]:5432/db"
    assert redact_url("postgres://u@h/db") == "postgres://u@h/db"
    assert url_engine("postgresql+psycopg://h/db") == "postgres"
    assert url_engine("jdbc:sqlite:x") == "sqlite"
    assert url_engine("redis://h") is None


def test_a_url_that_does_not_parse_never_shows_its_password() -> None:
    url = "mysql://u:p@ss:w/rd%41#?&x@127.0.0.1:3306/db"
    with pytest.raises(DiscoveryError) as info:
        parse_database_url(url, Path("/srv/app"), ".env", where=".env, line 1")
    text = f"{info.value.problem} {info.value.fix}"
    for piece in ("p@ss", "ss:w", "rd%41", "'w'"):
        assert piece not in text, text
    assert "percent-encode" in str(info.value.fix)

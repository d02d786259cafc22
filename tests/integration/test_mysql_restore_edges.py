"""MariaDB/MySQL restore at its edges: what lies outside the database (another
database's foreign keys into it), the database's own defaults, and a lock held on its
tables from elsewhere during the swap.

Fixtures and helpers are test_mysql_engine's; every database here is a fixture's or
named `dbguard_test_*`, and dropped.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pydantic import SecretStr

from dbguard import operations
from dbguard.engines import Engines
from dbguard.engines.base import Target
from dbguard.engines.mysql import FORMAT
from dbguard.engines.mysql import engine as mysql_engine
from dbguard.engines.mysql.engine import (
    MysqlEngine,
    _aside_names,
    _defaults_to_set,
    _foreign_keys_in,
    _refuse_foreign_keys_in,
)
from dbguard.errors import RestoreFailed
from dbguard.store import Store
from tests.helpers import poll
from tests.integration.test_mysql_engine import (
    PRE_RESTORE,
    REASON,
    UNICODE_TEXT,
    engine,
    engines,
    quote,
    run,
    run_in,
    schemas_like,
    state,
    store,
)
from tests.servers import mysql_connect, scratch_name

pytestmark = pytest.mark.mysql

__all__ = ["engine", "engines", "store"]  # fixtures, used by name

# ---- pure parts ------------------------------------------------------------------------


def test_names_set_aside_are_new_in_the_target() -> None:
    aside = _aside_names(["t", "v"], "0a1b2c3d", ["t", "v", "DBGUARD_ASIDE_0a1b2c3d_1"])
    assert aside == {"t": "dbguard_aside_0a1b2c3d_2", "v": "dbguard_aside_0a1b2c3d_3"}
    assert all(len(name) <= 64 for name in aside.values())


def test_the_backups_defaults_are_set_only_where_they_differ_and_are_known() -> None:
    backup = {"charset": "utf8mb4", "collation": "utf8mb4_unicode_ci"}
    assert _defaults_to_set({"charset": "latin1", "collation": "latin1_swedish_ci"}, backup) == (
        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )
    assert (
        _defaults_to_set({"charset": "UTF8MB4", "collation": "utf8mb4_unicode_ci"}, backup) is None
    )
    assert _defaults_to_set({"charset": "latin1", "collation": "latin1_swedish_ci"}, {}) is None
    odd = {"charset": "utf8mb4", "collation": "x; DROP DATABASE y"}
    assert _defaults_to_set({"charset": "latin1", "collation": "latin1_swedish_ci"}, odd) is None


def test_a_foreign_key_into_the_target_is_told_with_the_statements_around_the_restore() -> None:
    rows = [
        ("b", "child", "fk", "c2", "parent", "k1", "RESTRICT", "CASCADE"),
        ("b", "child", "fk", "c1", "parent", "k2", "RESTRICT", "CASCADE"),
    ]
    (key,) = _foreign_keys_in(rows)
    refused = _refuse_foreign_keys_in("a", [key])
    assert "`b`.`child` constraint `fk` references `a`.`parent`" in refused.problem
    assert "ALTER TABLE `b`.`child` DROP FOREIGN KEY `fk`;" in refused.fix
    assert (
        "ALTER TABLE `b`.`child` ADD CONSTRAINT `fk` FOREIGN KEY (`c2`, `c1`) REFERENCES "
        "`a`.`parent` (`k1`, `k2`) ON DELETE CASCADE ON UPDATE RESTRICT;" in refused.fix
    )
    assert "the database was not changed" in refused.fix


# ---- against the server ----------------------------------------------------------------


@pytest.fixture
def other_database() -> Iterator[str]:
    """A second database on the same server, dropped after the test."""
    name = scratch_name()
    run_as_root(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        run_as_root(f"DROP DATABASE IF EXISTS `{name}`")


def run_as_root(*statements: str) -> list[Any]:
    """Run statements with no database selected; the last one's rows."""
    return run_in(None, *statements)


def references(schema: str) -> list[Any]:
    """Where `schema`'s foreign keys point: (constraint, schema, table, rules)."""
    return run_as_root(
        "SELECT CONSTRAINT_NAME, UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME, "
        "UPDATE_RULE, DELETE_RULE FROM information_schema.REFERENTIAL_CONSTRAINTS "
        f"WHERE CONSTRAINT_SCHEMA = '{schema}' ORDER BY CONSTRAINT_NAME"
    )


def test_a_foreign_key_from_another_database_stops_the_restore_before_anything_changes(
    mysql_database: Target, other_database: str, store: Store, engines: Engines
) -> None:
    """InnoDB carries a foreign key along with the table it references through RENAME
    TABLE: the swap would leave the other database's key pointing into the schema of
    replaced tables, which it drops. Refused, with the way out, which works."""
    db, other = mysql_database.name, other_database
    run(
        mysql_database,
        "CREATE TABLE parent (k1 INT, k2 INT, PRIMARY KEY (k1, k2)) ENGINE=InnoDB",
        "INSERT INTO parent VALUES (1, 10), (2, 20)",
    )
    run_as_root(
        f"CREATE TABLE `{other}`.child (id INT PRIMARY KEY, c1 INT, c2 INT,"
        f" CONSTRAINT into_parent FOREIGN KEY (c2, c1) REFERENCES `{db}`.parent (k1, k2)"
        " ON DELETE CASCADE) ENGINE=InnoDB",
        f"INSERT INTO `{other}`.child VALUES (1, 10, 1)",
    )
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    run(mysql_database, "INSERT INTO parent VALUES (3, 30)")
    current, pointing = state(mysql_database), references(other)
    assert pointing == [("into_parent", db, "parent", "RESTRICT", "CASCADE")]

    with pytest.raises(RestoreFailed) as refused:
        operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)

    problem, fix = refused.value.problem, refused.value.fix
    assert f"`{other}`.`child` constraint `into_parent` references `{db}`.`parent`" in problem
    assert "the database was not changed" in fix
    assert state(mysql_database) == current
    assert references(other) == pointing
    assert schemas_like(f"{db}_dbguard") == []

    # The way out it gives: drop the key, restore, add it again.
    before, after = fix.split("Before:\n")[1].split("\nAfter")
    statements = [line.strip().rstrip(";") for line in after.splitlines()[1:]]
    run_as_root(*(line.strip().rstrip(";") for line in before.splitlines()))
    operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)
    run_as_root(*statements)

    assert references(other) == pointing  # the same key: columns, table and rules
    assert run(mysql_database, "SELECT COUNT(*) FROM parent")[0][0] == 2
    with pytest.raises(pymysql.err.IntegrityError) as orphan:
        run_as_root(f"INSERT INTO `{other}`.child VALUES (2, 30, 3)")
    assert orphan.value.args[0] == 1452
    run(mysql_database, "DELETE FROM parent WHERE k1 = 1")  # ON DELETE CASCADE still
    assert run_as_root(f"SELECT COUNT(*) FROM `{other}`.child")[0][0] == 0


def unquoted(found: dict[str, Any]) -> dict[str, Any]:
    return {key: value.replace("`", "") if isinstance(value, str) else value
            for key, value in found.items()}  # fmt: skip


def test_triggers_that_cannot_be_dropped_leave_the_database_as_it_was(
    mysql_database: Target, store: Store, engines: Engines, tmp_path: Path
) -> None:
    """A user given TRIGGER on a table by its name, not on the database: the swap's
    first RENAME sets the table aside, under a name that grant does not cover, and
    dropping its trigger fails. The names go back and the trigger stays, where the
    tables were left set aside before."""
    db = str(mysql_database.name)
    name = f"dbg_{secrets.token_hex(4)}"
    scratch = db.replace("_", "\\_") + "\\_dbguard\\_%"
    run(
        mysql_database,
        "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE seen (id INT) ENGINE=InnoDB",
        "CREATE TRIGGER t_seen AFTER INSERT ON t FOR EACH ROW INSERT INTO seen VALUES (NEW.id)",
        "INSERT INTO t VALUES (1)",
        f"CREATE USER '{name}'@'%' IDENTIFIED BY 'pw'",
        "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, CREATE VIEW,"
        f" SHOW VIEW, LOCK TABLES, REFERENCES ON `{db}`.* TO '{name}'@'%'",
        f"GRANT ALL ON `{scratch}`.* TO '{name}'@'%'",
        f"GRANT SET USER ON *.* TO '{name}'@'%'",  # to load root's trigger into scratch
        # TRIGGER on the table by its name: a grant that does not follow it aside.
        f"GRANT TRIGGER ON `{db}`.t TO '{name}'@'%'",
    )
    try:
        manifest = operations.take_backup(store, engines, mysql_database, REASON)
        run(mysql_database, "INSERT INTO t VALUES (2)")
        current = state(mysql_database)

        limited = mysql_database.model_copy(update={"user": name, "password": SecretStr("pw")})
        with (
            pytest.raises(RestoreFailed, match="could not drop the triggers") as failed,
            store.open_data(manifest) as data,
        ):
            engines.for_target(limited).restore(limited, data, FORMAT, tmp_path)

        assert "the database was not changed" in failed.value.fix
        # The same, but for quotes: RENAME TABLE writes the trigger's table name quoted.
        assert unquoted(state(mysql_database)) == unquoted(current)
        run(mysql_database, "INSERT INTO t VALUES (3)")  # under its own name, trigger firing
        assert run(mysql_database, "SELECT id FROM seen ORDER BY id") == [(1,), (2,), (3,)]
        assert schemas_like(f"{db}_dbguard") == []
    finally:
        run(mysql_database, f"DROP USER IF EXISTS '{name}'@'%'")


BACKUP_COLLATION = "utf8mb4_unicode_ci"


def collations(target: Target) -> dict[str, Any]:
    """The database's defaults, and those its routines, triggers and views were created
    under."""
    db = target.name
    return {
        "schema": run_as_root(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM "
            f"information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}'"
        ),
        "routines": run_as_root(
            "SELECT ROUTINE_NAME, DATABASE_COLLATION FROM information_schema.ROUTINES "
            f"WHERE ROUTINE_SCHEMA = '{db}' ORDER BY 1"
        ),
        "triggers": run_as_root(
            "SELECT TRIGGER_NAME, DATABASE_COLLATION FROM information_schema.TRIGGERS "
            f"WHERE TRIGGER_SCHEMA = '{db}' ORDER BY 1"
        ),
    }


def with_routines(target: Target) -> None:
    """A database under utf8mb4_unicode_ci (not the server's default) whose function
    and trigger take their text in the database's character set."""
    run(
        target,
        f"ALTER DATABASE CHARACTER SET utf8mb4 COLLATE {BACKUP_COLLATION}",
        "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, s TEXT) ENGINE=InnoDB",
        "CREATE TABLE seen (s TEXT) ENGINE=InnoDB",
        "CREATE FUNCTION echo(s TEXT) RETURNS TEXT DETERMINISTIC RETURN s",
        "CREATE TRIGGER t_seen AFTER INSERT ON t FOR EACH ROW BEGIN"
        " DECLARE copy TEXT; SET copy = NEW.s; INSERT INTO seen VALUES (copy); END",
        "INSERT INTO t (s) VALUES ('plain')",
    )


@pytest.mark.parametrize("change", ["altered", "created again", "dropped"])
def test_a_restore_brings_back_the_databases_default_character_set_and_collation(
    mysql_database: Target, store: Store, engines: Engines, change: str
) -> None:
    """Routines and triggers are created under the database's defaults: a restore into
    one whose defaults changed after the backup must give it the backup's first."""
    with_routines(mysql_database)
    original = collations(mysql_database)
    assert original["schema"] == [("utf8mb4", BACKUP_COLLATION)]
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    db = mysql_database.name
    if change == "altered":
        run(mysql_database, "ALTER DATABASE CHARACTER SET latin1")
    else:
        run_as_root(f"DROP DATABASE `{db}`")
        if change == "created again":
            run_as_root(f"CREATE DATABASE `{db}`")  # the server's default collation

    operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)

    assert collations(mysql_database) == original
    assert run(mysql_database, f"SELECT echo({quote(UNICODE_TEXT)})") == [(UNICODE_TEXT,)]
    run(mysql_database, f"INSERT INTO t (s) VALUES ({quote(UNICODE_TEXT)})")
    assert run(mysql_database, "SELECT s FROM seen WHERE s <> 'plain'") == [(UNICODE_TEXT,)]


def test_a_failure_after_the_swap_puts_the_databases_defaults_back_too(
    mysql_database: Target,
    store: Store,
    engines: Engines,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_routines(mysql_database)
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    run(mysql_database, "ALTER DATABASE CHARACTER SET latin1", "DELETE FROM t")
    current, defaults = state(mysql_database), collations(mysql_database)
    applied = MysqlEngine._apply

    def fail_in_the_target(self: MysqlEngine, cur: Any, *args: Any, events: bool) -> None:
        if events:  # in the target, after the swap; not in the scratch schema
            raise RestoreFailed("a definition failed here")
        applied(self, cur, *args, events=events)

    monkeypatch.setattr(MysqlEngine, "_apply", fail_in_the_target)
    with (
        pytest.raises(RestoreFailed, match="put back as it was"),
        store.open_data(manifest) as data,
    ):
        engines.for_target(mysql_database).restore(
            mysql_database, data, manifest.data.format, tmp_path
        )

    assert collations(mysql_database) == defaults
    assert defaults["schema"] == [("latin1", "latin1_swedish_ci")]
    assert state(mysql_database) == current
    assert schemas_like(f"{mysql_database.name}_dbguard") == []


def test_a_view_named_like_a_table_of_the_backup_no_longer_stops_the_swap(
    mysql_database: Target, store: Store, engines: Engines
) -> None:
    run(
        mysql_database,
        "CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB",
        "INSERT INTO t VALUES (1)",
    )
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    before = state(mysql_database)
    run(mysql_database, "RENAME TABLE t TO t_moved", "CREATE VIEW t AS SELECT id FROM t_moved")

    operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)

    assert state(mysql_database) == before


def restore_waits(database: str) -> list[Any]:
    """Sessions waiting for a metadata lock on one of `database`'s tables (the restore's
    RENAME names them all, and runs from the database it restores)."""
    return run_as_root(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = "
        f"'{database}' AND STATE = 'Waiting for table metadata lock'"
    )


def test_a_lock_held_from_another_database_fails_the_restore_with_the_triggers_in_place(
    mysql_database: Target,
    store: Store,
    engines: Engines,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transaction that holds a row lock on one table, from a session that is not
    "in" the database, holds up the swap: while it waits, the target keeps its tables
    and the triggers of every table, the ones not held too (a write to them queues
    behind the swap, and none runs without its triggers); when it gives up, the
    database is as it was, and the message names the session."""
    monkeypatch.setattr(mysql_engine, "_LOCK_WAIT_SECONDS", 3)
    db = str(mysql_database.name)
    run(
        mysql_database,
        "CREATE TABLE parent (id INT PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE child (id INT PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE audit (id INT) ENGINE=InnoDB",
        "CREATE TRIGGER child_audit AFTER INSERT ON child FOR EACH ROW"
        " INSERT INTO audit VALUES (NEW.id)",
        "INSERT INTO parent VALUES (1)",
        "INSERT INTO child VALUES (1)",
    )
    manifest = operations.take_backup(store, engines, mysql_database, REASON)
    run(mysql_database, "INSERT INTO parent VALUES (2)")
    current = state(mysql_database)
    seen_while_waiting: list[Any] = []

    def look_while_it_waits() -> None:
        if poll(lambda: bool(restore_waits(db)), 30):
            seen_while_waiting.append(
                run_as_root(
                    "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS "
                    f"WHERE TRIGGER_SCHEMA = '{db}'"
                )
            )
            seen_while_waiting.append(
                run_as_root(
                    "SELECT TABLE_NAME FROM information_schema.TABLES "
                    f"WHERE TABLE_SCHEMA = '{db}' ORDER BY 1"
                )
            )

    holder = mysql_connect()  # in no database: not one of the sessions that stop a restore
    watcher = threading.Thread(target=look_while_it_waits)
    try:
        with holder.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(f"SELECT COUNT(*) FROM `{db}`.parent FOR UPDATE")
        watcher.start()
        with pytest.raises(RestoreFailed) as failed:
            operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)
        watcher.join()
        holder.rollback()

        triggers, tables = seen_while_waiting
        assert triggers == [("child_audit", "child")]
        assert tables == [("audit",), ("child",), ("parent",)]
        problem = failed.value.problem
        assert "the restore waited 3 s for a lock on a table of" in problem
        assert "the database was not changed" in problem
        assert f"session {holder.thread_id()} (root@" in problem
        assert "restore again" in failed.value.fix
        assert state(mysql_database) == current
        assert schemas_like(f"{db}_dbguard") == []

        # Once the lock is let go, it goes through, and the trigger fires.
        operations.restore_backup(store, engines, manifest, mysql_database, PRE_RESTORE)
        run(mysql_database, "INSERT INTO child VALUES (5)")
        assert run(mysql_database, "SELECT id FROM audit ORDER BY id") == [(1,), (5,)]
    finally:
        holder.close()

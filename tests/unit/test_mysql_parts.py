"""The MySQL engine's pure parts: counting rows in dump output, splitting a dump into
statements, telling what a statement does, quoting. No server needed."""

from __future__ import annotations

import io

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbguard.engines.mysql.engine import MysqlEngine, _digest_parts
from dbguard.engines.mysql.sqltext import (
    UNREADABLE,
    DumpReader,
    DumpScanner,
    DumpSyntaxError,
    RoutineGrant,
    classify,
    count_tuples,
    dumped_database,
    meta_line,
    not_as_stored,
    option_value,
    qualifiers,
    quote_string,
    statement_head,
    type_word,
    without_database_name,
    without_schema,
)

# What mariadb-dump 10.11 writes (shortened): one row per line.
MARIADB_DUMP = (
    b"/*M!999999\\- enable the sandbox mode */ \n"
    + b"""\
-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
--
/*!40101 SET NAMES utf8mb4 */;
/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;

--
-- Table structure for table `a``b`
--

DROP TABLE IF EXISTS `a``b`;
CREATE TABLE `a``b` (
  `id` int(11) NOT NULL COMMENT 'a;b',
  `ip` inet6 DEFAULT NULL,
  `name` varchar(5) CHARACTER SET sjis COLLATE sjis_bin DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

--
-- Dumping data for table `a``b`
--

LOCK TABLES `a``b` WRITE;
/*!40000 ALTER TABLE `a``b` DISABLE KEYS */;
INSERT INTO `a``b` VALUES
(1,'x;'),
(2,'it\\'s ),( here;'),
(3,NULL);
INSERT INTO `a``b` VALUES
(4,'\\n(not a row)');
/*!40000 ALTER TABLE `a``b` ENABLE KEYS */;
UNLOCK TABLES;
/*!50003 SET sql_mode              = '' */ ;
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 trigger t after insert on `a``b`
for each row begin
  insert into log values ('(1);;'); -- a comment ;;
  insert into log values (2);
end */;;
DELIMITER ;

--
-- Dumping data for table `empty`
--

LOCK TABLES `empty` WRITE;
UNLOCK TABLES;

--
-- Dumping routines for database 'db'
--
/*!50003 ALTER DATABASE `db` CHARACTER SET latin1 COLLATE latin1_swedish_ci */ ;
DELIMITER ;;
CREATE DEFINER=`root`@`%` PROCEDURE `p`()
begin select ';;'; /* ;; */ end ;;
DELIMITER ;

--
-- Final view structure for view `v`
--

/*!50001 DROP VIEW IF EXISTS `v`*/;
/*!50001 CREATE ALGORITHM=UNDEFINED */
/*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */
/*!50001 VIEW `v` AS select 1 AS `one` */;

-- Dump completed on 2024-01-01 10:00:00
"""
)

# What MySQL's mysqldump writes: a whole INSERT on one line.
MYSQL_DUMP = b"""\
-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)

--
-- Dumping data for table `t`
--

LOCK TABLES `t` WRITE;
INSERT INTO `t` VALUES (1,'a),(b'),(2,'it\\'s'),(3,0x28292C28);
INSERT INTO `t` VALUES (4,NULL);
UNLOCK TABLES;

--
-- Dumping data for table `u`
--

LOCK TABLES `u` WRITE;
INSERT INTO `u` (`a`, `b`) VALUES (1,2),(3,4);
UNLOCK TABLES;
-- Dump completed on 2024-01-01 10:00:00
"""


def scan(data: bytes, sizes: list[int]) -> DumpScanner:
    scanner = DumpScanner()
    pos = 0
    for size in sizes:
        scanner.feed(data[pos : pos + size])
        pos += size
    scanner.feed(data[pos:])
    return scanner


@pytest.mark.parametrize(
    ("dump", "expected"),
    [(MARIADB_DUMP, {"a`b": 4, "empty": 0}), (MYSQL_DUMP, {"t": 4, "u": 2})],
)
def test_scanner_counts_rows_per_table(dump: bytes, expected: dict[str, int]) -> None:
    scanner = scan(dump, [])
    assert scanner.rows == expected
    assert scanner.complete


@given(st.lists(st.integers(min_value=1, max_value=64), max_size=80))
def test_scanner_counts_the_same_however_the_stream_is_cut(sizes: list[int]) -> None:
    for dump, expected in ((MARIADB_DUMP, {"a`b": 4, "empty": 0}), (MYSQL_DUMP, {"t": 4, "u": 2})):
        scanner = scan(dump, sizes)
        assert scanner.rows == expected
        assert scanner.complete


# What the table definitions in MARIADB_DUMP name; not the routines section's
# `ALTER DATABASE ... CHARACTER SET latin1`.
DEFINED = ({"sjis", "utf8mb4"}, {"int", "inet6", "varchar"})


@given(st.lists(st.integers(min_value=1, max_value=64), max_size=80))
def test_scanner_collects_what_table_definitions_name_however_the_stream_is_cut(
    sizes: list[int],
) -> None:
    scanner = scan(MARIADB_DUMP, sizes)
    assert (scanner.charsets, scanner.column_types) == DEFINED
    assert not_as_stored(*DEFINED) == ["inet6", "sjis"]


# Text that says CHARSET where no character set is: in a COMMENT, a DEFAULT, a CHECK, a
# partition's comment, and a trigger body dumped after a MERGE table's definition (such
# a table has no data section).
SAYS_CHARSET = b"""\
--
-- Table structure for table `t`
--

CREATE TABLE `t` (
  `a` varchar(10) DEFAULT 'CHARSET=cp1252' COMMENT 'legacy: CHARACTER SET latin1',
  `b` enum('x) CHARACTER SET y','z') CHARACTER SET utf8mb3 COLLATE utf8mb3_bin,
  `c` int(11) DEFAULT NULL,
  CONSTRAINT `k` CHECK (`a` <> 'CHARACTER SET x')
) ENGINE=MRG_MyISAM DEFAULT CHARSET=utf8mb4 COMMENT='DEFAULT CHARSET=latin1'
 PARTITION BY HASH (`c`)
(PARTITION `p0` COMMENT = 'CHARSET=latin1' ENGINE = InnoDB);
DELIMITER ;;
/*!50003 CREATE*/ /*!50003 TRIGGER `g` BEFORE INSERT ON `t` FOR EACH ROW SET NEW.a =
  `c` is null ;;
DELIMITER ;
-- Dump completed on 2024-01-01 10:00:00
"""


def test_only_the_character_sets_a_definition_declares_are_collected() -> None:
    scanner = scan(SAYS_CHARSET, [])
    assert scanner.charsets == {"utf8mb3", "utf8mb4"}
    assert scanner.column_types == {"varchar", "enum", "int"}


def test_a_compressed_column_s_character_set_is_collected() -> None:
    compressed = MARIADB_DUMP.replace(
        b"  `ip` inet6 DEFAULT NULL,",
        b"  `t` mediumtext /*M!100301 COMPRESSED*/ CHARACTER SET latin1 DEFAULT NULL,",
    )
    scanner = scan(compressed, [])
    assert "latin1" in scanner.charsets
    assert "mediumtext" in scanner.column_types


def test_a_definition_line_that_cannot_be_read_counts_as_not_as_stored() -> None:
    newline_in_name = MARIADB_DUMP.replace(b"  `ip` inet6", b"  `i\np` int(11)")
    no_charset = MARIADB_DUMP.replace(b" DEFAULT CHARSET=utf8mb4", b"")
    assert UNREADABLE in scan(newline_in_name, []).column_types
    assert UNREADABLE in scan(no_charset, []).charsets


def test_only_utf8_text_and_built_in_types_are_dumped_as_stored() -> None:
    utf8 = ["utf8mb4", "utf8mb3", "utf8", "ascii", "binary"]
    built_in = ["int", "decimal", "varchar", "enum", "longblob", "datetime", "point", "bit"]
    assert not_as_stored(utf8, built_in) == []
    assert not_as_stored(["latin1", "utf8mb4"], ["uuid", "int", "inet4"]) == [
        "inet4",
        "latin1",
        "uuid",
    ]
    assert not_as_stored([], ["vector"]) == ["vector"]  # a type not known here counts as odd


@pytest.mark.parametrize(
    ("column_type", "word"),
    [
        ("int(11) unsigned", "int"),
        ("enum('a)','b')", "enum"),
        ("INET6", "inet6"),
        ("double", "double"),
        ("", ""),
    ],
)
def test_type_word_is_the_name_a_column_type_starts_with(column_type: str, word: str) -> None:
    assert type_word(column_type) == word


def test_scanner_notices_a_missing_trailer() -> None:
    assert not scan(MARIADB_DUMP[:-45], []).complete
    assert not scan(MARIADB_DUMP + b"INSERT INTO `x` VALUES (1);\n", []).complete


def test_count_tuples_ignores_separators_inside_strings() -> None:
    assert count_tuples(b"INSERT INTO `t` VALUES (1,'a),(b'),(2,'\\'),('),(3,NULL);\n") == 3
    assert count_tuples(b"INSERT INTO `x VALUES ``y` VALUES (1),(2);\n") == 2


def statements(dump: bytes, chunk_size: int = 1 << 20) -> tuple[list[bytes], DumpReader]:
    reader = DumpReader(io.BytesIO(dump), chunk_size=chunk_size)
    return list(reader), reader


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1 << 20])
def test_reader_splits_a_dump_into_statements(chunk_size: int) -> None:
    found, reader = statements(MARIADB_DUMP, chunk_size)

    heads = [statement_head(s, 40) for s in found]
    assert heads[0] == "SET NAMES utf8mb4"  # the sandbox line and comments are skipped
    assert found[3].startswith(b"CREATE TABLE `a``b`")
    assert found[3].endswith(b"COLLATE=utf8mb4_general_ci")
    inserts = [s for s in found if s.startswith(b"INSERT")]
    assert inserts[0] == b"INSERT INTO `a``b` VALUES\n(1,'x;'),\n(2,'it\\'s ),( here;'),\n(3,NULL)"
    assert inserts[1].endswith(b"(4,'\\n(not a row)')")
    trigger = next(s for s in found if b"trigger t" in s)
    assert trigger.endswith(b"end */")  # ;; inside strings and comments ends nothing
    procedure = next(s for s in found if b"PROCEDURE `p`" in s)
    assert procedure.endswith(b"end ")
    assert found[-1].endswith(b"VIEW `v` AS select 1 AS `one` */")
    assert reader.complete


def test_reader_reads_the_metadata_line() -> None:
    found, reader = statements(meta_line({"charset": "latin1"}) + MARIADB_DUMP)
    assert reader.meta == {"charset": "latin1"}
    assert found == statements(MARIADB_DUMP)[0]


@pytest.mark.parametrize(
    "cut",
    [
        MARIADB_DUMP[: MARIADB_DUMP.index(b"(3,NULL)")],  # inside an INSERT
        MARIADB_DUMP[: MARIADB_DUMP.index(b"PRIMARY KEY")],  # inside CREATE TABLE
        MARIADB_DUMP[: MARIADB_DUMP.index(b"here;")],  # inside a string
    ],
)
def test_reader_refuses_a_dump_cut_inside_a_statement(cut: bytes) -> None:
    with pytest.raises(DumpSyntaxError):
        statements(cut)


def test_reader_reports_a_dump_cut_between_statements_as_incomplete() -> None:
    _, reader = statements(MARIADB_DUMP[: MARIADB_DUMP.index(b"-- Dump completed")])
    assert not reader.complete


def test_reader_follows_no_backslash_escapes() -> None:
    dump = b"SELECT 'a\\';\nSELECT 2;\n-- Dump completed\n"
    reader = DumpReader(io.BytesIO(dump))
    reader.backslash_escapes = False
    assert list(reader) == [b"SELECT 'a\\'", b"SELECT 2"]


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        (b"/*!40101 SET NAMES utf8mb4 */", "set"),
        (b"SET @saved_cs_client = @@character_set_client", "set"),
        (b"CREATE TABLE `trigger` (id int)", "data"),
        (b"INSERT INTO `view` VALUES\n(1)", "data"),
        (b"DROP TABLE IF EXISTS `v`", "data"),
        (b"/*!50003 CREATE*/ /*!50017 DEFINER=`a b`@`%`*/ /*!50003 trigger t after", "object"),
        (
            b"/*!50001 CREATE ALGORITHM=UNDEFINED */\n/*!50013 DEFINER=`r`@`l` SQL SECURITY"
            b" DEFINER */\n/*!50001 VIEW `v` AS select 1 */",
            "object",
        ),
        (b"/*!50001 DROP VIEW IF EXISTS `v`*/", "object"),
        (b"CREATE DEFINER=`root`@`%` PROCEDURE `p`()\nbegin end", "object"),
        (b"CREATE DEFINER=CURRENT_USER FUNCTION f() RETURNS int RETURN 1", "object"),
        (b"/*!50106 CREATE*/ /*!50117 DEFINER=`r`@`l`*/ /*!50106 EVENT `e` ON", "event"),
        (b"/*!50106 DROP EVENT IF EXISTS `e` */", "event"),
        (b"/*!50003 ALTER DATABASE `db` CHARACTER SET latin1 */", "alter-database"),
        (b"USE `production`", "forbidden"),
        (b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `db`", "forbidden"),
        (b"DROP SCHEMA db", "forbidden"),
        (b"SET @@GLOBAL.GTID_PURGED='x'", "forbidden"),
        (b"SET GLOBAL event_scheduler = ON", "forbidden"),
    ],
)
def test_classify(statement: bytes, kind: str) -> None:
    assert classify(statement) == kind


def test_alter_database_loses_its_name() -> None:
    assert (
        without_database_name(b"/*!50003 ALTER DATABASE `my``db` CHARACTER SET utf8 */")
        == b"/*!50003 ALTER DATABASE CHARACTER SET utf8 */"
    )
    unnamed = b"ALTER DATABASE CHARACTER SET utf8"
    assert without_database_name(unnamed) == unnamed


@pytest.mark.parametrize(
    ("line", "database"),
    [
        (b"-- Host: 127.0.0.1    Database: shop\n", "shop"),
        (b"-- Host: localhost    Database: my db\r\n", "my db"),
        (b"-- dbguard fallback dump (PyMySQL) of `a``b`\n", "a`b"),
        (b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB\n", None),
        (b"-- Table structure for table `t`\n", None),
        (b"-- Host: localhost    Database: \n", None),
    ],
)
def test_the_dumped_database_is_read_from_the_header(line: bytes, database: str | None) -> None:
    assert dumped_database(line) == database


def test_reader_knows_the_dumped_database() -> None:
    header = b"-- Host: 127.0.0.1    Database: db\n"
    dump = MARIADB_DUMP.replace(b"--\n", b"--\n" + header, 1)
    assert statements(dump)[1].database == "db"
    assert statements(MARIADB_DUMP)[1].database is None


# What mariadb-dump writes for a trigger created as `CREATE TRIGGER db.trg ... ON db.t`.
QUALIFIED_TRIGGER = (
    b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`%`*/ /*!50003 TRIGGER `my``db` . `tr``g`"
    b" AFTER UPDATE ON `my``db`.`t` FOR EACH ROW INSERT INTO `my``db`.audit VALUES (1) */"
)


def test_the_dumped_database_is_taken_off_a_trigger_and_its_table_not_its_body() -> None:
    assert without_schema(QUALIFIED_TRIGGER, "my`db") == (
        b"/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`%`*/ /*!50003 TRIGGER `tr``g`"
        b" AFTER UPDATE ON `t` FOR EACH ROW INSERT INTO `my``db`.audit VALUES (1) */"
    )


@pytest.mark.parametrize(
    ("statement", "unqualified"),
    [
        (
            b"CREATE TRIGGER db.trg BEFORE INSERT ON db.t FOR EACH ROW SET NEW.a = db.f()",
            b"CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW SET NEW.a = db.f()",
        ),
        (  # only the table qualified; comments between the words
            b"CREATE TRIGGER /* x */ trg\nAFTER DELETE ON `db` /* y */ . t FOR EACH ROW DO 1",
            b"CREATE TRIGGER /* x */ trg\nAFTER DELETE ON t FOR EACH ROW DO 1",
        ),
        (  # ANSI_QUOTES
            b'CREATE TRIGGER "db"."trg" AFTER INSERT ON "db"."t" FOR EACH ROW DO 1',
            b'CREATE TRIGGER "trg" AFTER INSERT ON "t" FOR EACH ROW DO 1',
        ),
        (
            b"/*!50003 DROP PROCEDURE IF EXISTS `db`.`p` */",
            b"/*!50003 DROP PROCEDURE IF EXISTS `p` */",
        ),
        (
            b"CREATE DEFINER=`u`@`%` PROCEDURE db.p() SELECT * FROM db.t",
            b"CREATE DEFINER=`u`@`%` PROCEDURE p() SELECT * FROM db.t",
        ),
    ],
)
def test_without_schema_drops_the_dumped_databases_name(
    statement: bytes, unqualified: bytes
) -> None:
    assert without_schema(statement, "db") == unqualified
    assert qualifiers(unqualified) == []


@pytest.mark.parametrize(
    "statement",
    [
        b"CREATE TRIGGER DB.trg AFTER INSERT ON DB.t FOR EACH ROW DO 1",  # names are case-sensitive
        b"CREATE TRIGGER other.trg AFTER INSERT ON other.t FOR EACH ROW DO 1",
        b"CREATE TRIGGER trg AFTER INSERT ON `other`.t FOR EACH ROW DO 1",
        b"/*!50106 CREATE*/ /*!50117 DEFINER=`r`@`l`*/ /*!50106 EVENT `other`.`e` ON SCHEDULE",
    ],
)
def test_another_schemas_name_is_left_for_the_caller_to_refuse(statement: bytes) -> None:
    assert without_schema(statement, "db") == statement
    named = {q.schema for q in qualifiers(statement)}
    assert named in ({"DB"}, {"other"})


@pytest.mark.parametrize(
    "statement",
    [
        b"/*!50001 CREATE ALGORITHM=UNDEFINED */\n/*!50013 DEFINER=`r`@`l` SQL SECURITY"
        b" DEFINER */\n/*!50001 VIEW `v` AS select `db`.`t`.`id` AS `id` from `db`.`t` */",
        b"CREATE DEFINER=`root`@`%` PROCEDURE `p`()\nbegin select db.f(); end",
        b"/*!50003 CREATE*/ /*!50017 DEFINER=`a`@`b`*/ /*!50003 trigger t after insert on `a``b`"
        b"\nfor each row insert into other.log values (1) */",
        b"CREATE PACKAGE BODY IF NOT EXISTS pkg AS BEGIN END",
    ],
)
def test_a_body_that_names_a_schema_is_not_a_qualifier(statement: bytes) -> None:
    assert qualifiers(statement) == []


@pytest.mark.parametrize(
    ("grant", "statement"),
    [
        (
            RoutineGrant("app", "%", "PROCEDURE", "p", "Execute"),
            "GRANT EXECUTE ON PROCEDURE `d``b`.`p` TO 'app'@'%'",
        ),
        (
            RoutineGrant("o'brien", "10.0.0.%", "FUNCTION", "f`x", "Execute,Alter Routine,Grant"),
            "GRANT EXECUTE, ALTER ROUTINE ON FUNCTION `d``b`.`f``x` TO 'o\\'brien'@'10.0.0.%'"
            " WITH GRANT OPTION",
        ),
        (  # a MariaDB role has no host
            RoutineGrant("reporting", "", "PROCEDURE", "p", "Execute"),
            "GRANT EXECUTE ON PROCEDURE `d``b`.`p` TO 'reporting'",
        ),
        (
            RoutineGrant("app", "%", "PROCEDURE", "p", "Grant"),
            "GRANT USAGE ON PROCEDURE `d``b`.`p` TO 'app'@'%' WITH GRANT OPTION",
        ),
    ],
)
def test_a_routine_grant_is_given_again_as_it_was(grant: RoutineGrant, statement: str) -> None:
    assert grant.statement("d`b") == statement


def test_string_literals_never_hold_a_raw_newline() -> None:
    quoted = quote_string("a'b\"c\\d\ne\rf\0g\x1ah")
    assert quoted == "'a\\'b\\\"c\\\\d\\ne\\rf\\0g\\Zh'"
    assert "\n" not in quoted and "\r" not in quoted


def test_option_values_are_quoted_and_escaped() -> None:
    assert option_value('p"a#ss\\w\nord') == '"p\\"a#ss\\\\w\\nord"'


def test_only_mariadb_digests_columns_mysql_lacks() -> None:
    """MySQL 8's INFORMATION_SCHEMA.VIEWS has no ALGORITHM; asking for it would fail
    every change check there."""
    mysql = dict((table, columns) for table, _, columns in _digest_parts(mariadb=False))
    mariadb = dict((table, columns) for table, _, columns in _digest_parts(mariadb=True))
    assert "ALGORITHM" not in mysql["VIEWS"]
    assert "ALGORITHM" in mariadb["VIEWS"]
    assert {t: c for t, c in mariadb.items() if t != "VIEWS"} == {
        t: c for t, c in mysql.items() if t != "VIEWS"
    }


class LosesItsConnection:
    """A cursor whose server goes away once the routines are listed: what a restart
    mid-restore looks like from the grant step, after the swap is done."""

    def __init__(self) -> None:
        self.rows: list[tuple[bytes]] = []

    def execute(self, statement: str | bytes, args: object = None) -> None:
        if isinstance(statement, bytes):
            return  # resetting the session
        if "ROUTINES" in statement:
            self.rows = [(b"p",)] if "'PROCEDURE'" in statement else [(b"f",)]
        else:
            raise pymysql.err.OperationalError(2013, "Lost connection to server")

    def fetchall(self) -> list[tuple[bytes]]:
        return self.rows


def test_a_connection_lost_while_grants_are_given_back_is_told_not_raised() -> None:
    """The database is restored by then: the restore must not report it unchanged."""
    grants = [
        RoutineGrant("app", "%", "PROCEDURE", "p", "Execute"),
        RoutineGrant("app", "%", "FUNCTION", "f", "Execute"),
    ]
    told: list[str] = []
    MysqlEngine()._grant_again(LosesItsConnection(), "shop", grants, None, told.append)
    [warning] = told
    assert "could not be given back" in warning
    for grant in grants:
        assert grant.statement("shop") in warning

"""SQL text in and out of the MySQL/MariaDB engine: pure code, no connections, no files.

- `DumpScanner` watches mysqldump/mariadb-dump output as it streams by: rows per table
  and whether the closing `-- Dump completed` line arrived.
- `DumpReader` splits a dump back into statements for PyMySQL (DELIMITER blocks,
  quotes, comments), without holding more than one statement in memory.
- `classify` says which statements restore data and which recreate views, triggers,
  routines and events (those are replayed in the target after the tables move in).
- Literal quoting for the fallback dumper, and option-file quoting for passwords.

Both dumpers write the layout mysqldump uses, and two properties of it carry the speed
of this module: a string literal never holds a raw newline (newlines are written `\\n`),
so in the data part of a dump every row is one line beginning with `(` (MariaDB's
tools; MySQL's put a whole INSERT on one line) and an INSERT ends at the first `);`
that ends a line. Rows are therefore counted and statements found with `bytes.count`
and `bytes.find`, never a Python loop per byte.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

# ---- quoting ---------------------------------------------------------------------------

_STRING_ESCAPES = str.maketrans(
    {"\\": "\\\\", "'": "\\'", '"': '\\"', "\0": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z"}
)


def quote_ident(name: str) -> str:
    """`name` as a backtick-quoted identifier."""
    return "`" + name.replace("`", "``") + "`"


def quote_string(value: str) -> str:
    """A string literal the way mysqldump writes it: backslash escapes, no raw newline.

    Valid for restore sessions without NO_BACKSLASH_ESCAPES (dumps set sql_mode).
    """
    return "'" + value.translate(_STRING_ESCAPES) + "'"


def hex_literal(value: bytes) -> str:
    """Binary data as a hex literal (`''` for empty: a bare `0x` is not valid SQL)."""
    return "0x" + value.hex().upper() if value else "''"


def option_value(value: str) -> str:
    """A value for a MySQL option file, double-quoted with the escapes the client
    library undoes (mysys my_default.c): backslash, quotes, and control characters."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
        .replace("\b", "\\b")
    )
    return f'"{escaped}"'


def scrub(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced, for messages and logs."""
    if secret:
        text = text.replace(secret, "***")
    return text


# ---- dump metadata line ----------------------------------------------------------------

META_PREFIX = b"-- dbguard: "


def meta_line(meta: dict[str, str]) -> bytes:
    """A first line for a dump that records what restore needs to know about the
    original schema (its default character set and collation). A SQL comment, so the
    dump stays usable with the plain `mariadb` client."""
    return META_PREFIX + json.dumps(meta, sort_keys=True).encode() + b"\n"


# ---- what a dump under binary names gives back exactly ---------------------------------

# Under binary names (`--default-character-set=binary`) the dump tool writes every value
# as stored, and a restore under SET NAMES binary reads each literal as bytes. That gives
# back text in these character sets: the server writes every definition in UTF-8 whatever
# the client asks for, so a latin1 column's non-ASCII ENUM, SET and DEFAULT values would
# be double-encoded. And values of these built-in types (as SHOW CREATE TABLE spells them):
# the tool writes a MariaDB plugin type's value as text ('::1'), which INET4, INET6 and
# UUID read from a binary string as their raw bytes.
AS_STORED_CHARSETS = frozenset({"utf8", "utf8mb3", "utf8mb4", "ascii", "binary"})
AS_STORED_TYPES = frozenset(
    {
        *("tinyint", "smallint", "mediumint", "int", "bigint", "decimal", "float", "double"),
        *("bit", "char", "varchar", "binary", "varbinary", "enum", "set"),
        *("tinytext", "text", "mediumtext", "longtext"),
        *("tinyblob", "blob", "mediumblob", "longblob"),
        *("date", "time", "datetime", "timestamp", "year"),
        *("geometry", "point", "linestring", "polygon", "geometrycollection"),
        *("multipoint", "multilinestring", "multipolygon"),
    }
)
_TYPE_WORD = re.compile(r"[a-z0-9_]*")


def type_word(column_type: str) -> str:
    """A column type's name: `int(11) unsigned` -> `int`, `enum('a','b')` -> `enum`."""
    match = _TYPE_WORD.match(column_type.lower())
    return match[0] if match else ""


def not_as_stored(charsets: Iterable[str], types: Iterable[str]) -> list[str]:
    """The character sets and column types a dump under binary names would not give
    back exactly (none: it may run under binary names)."""
    return sorted({*charsets} - AS_STORED_CHARSETS | {*types} - AS_STORED_TYPES)


# ---- counting rows in a dump as it streams by -----------------------------------------

_DATA_HEADER = b"-- Dumping data for table "
_STRUCTURE_HEADER = b"-- Table structure for table "
# In SHOW CREATE TABLE's text, as the server writes it: a column line (its name, its
# type with any arguments, quoted ENUM values included, then the column's own character
# set, if any, after MariaDB's COMPRESSED); and the closing line's options, where the
# default character set comes before a COMMENT, whose text could say anything.
# Anything else in a column's line (a DEFAULT, a COMMENT) is never read as a character
# set.
_COLUMN_LINE = re.compile(
    rb"  `(?:[^`]|``)*` ([a-z0-9_]+)(?:\((?:'(?:[^'\\]|\\.|'')*'|[^')])*\))?"
    rb"(?: /\*M!\d+ COMPRESSED\*/)?(?: CHARACTER SET (\w+))?"
)
_TABLE_OPTIONS = re.compile(rb"\)(?: [A-Z_]+=\S+)*? DEFAULT CHARSET=(\w+)")
UNREADABLE = "(a definition not read)"  # in column_types: counts as not as stored
_END_OF_TABLES = (
    b"-- Dumping events for database ",
    b"-- Dumping routines for database ",
    b"-- Final view structure for view ",
    b"-- Dump completed",
)
_SINGLE_QUOTED = re.compile(rb"'[^'\\]*(?:\\.[^'\\]*)*'", re.DOTALL)
_INSERT = b"INSERT INTO `"
_TRAILER = b"-- Dump completed"
_TAIL = 512


def _ident_in_comment(text: bytes | bytearray) -> str | None:
    """The table name in mysqldump's `-- ... for table `name`` comment lines."""
    text = text.rstrip(b"\r\n")
    if len(text) < 2 or not (text.startswith(b"`") and text.endswith(b"`")):
        return None
    return text[1:-1].replace(b"``", b"`").decode("utf-8", "replace")


def count_tuples(insert_line: bytes | bytearray) -> int:
    """Rows in one single-line INSERT (`INSERT INTO `t` VALUES (..),(..);`), as MySQL's
    mysqldump writes them: tuple separators outside string literals, plus one."""
    pos = len(_INSERT)
    if not insert_line.startswith(_INSERT):
        return 0
    while True:  # past the table name, whose doubled backticks are not its end
        pos = insert_line.find(b"`", pos)
        if pos < 0:
            return 0
        if insert_line[pos + 1 : pos + 2] != b"`":
            break
        pos += 2
    values = insert_line.find(b" VALUES ", pos)  # after a column list, if there is one
    if values < 0:
        return 0
    outside = _SINGLE_QUOTED.sub(b"", insert_line[values:])
    return outside.count(b"),(") + 1


def _statement_end(chunk: bytes | bytearray, pos: int) -> int:
    """Index of the first ";" followed by a newline at or after `pos`, or -1."""
    while (pos := chunk.find(b";", pos)) >= 0:
        if chunk[pos + 1 : pos + 2] == b"\n":
            return pos
        pos += 1
    return -1


class DumpScanner:
    """Counts the rows of each table in mysqldump-format output and checks its ending;
    collects the character sets and column types its table definitions name.

    Feed it the dump in chunks of any size. Data sections start at mysqldump's
    `-- Dumping data for table` comment and end at `UNLOCK TABLES;` (the tool runs
    with --add-locks) or the next comment header. Counting reads only line starts:
    rows are lines beginning with `(`, and MySQL's single-line INSERTs are counted by
    `count_tuples`.
    """

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.charsets: set[str] = set()  # in CREATE TABLE statements
        self.column_types: set[str] = set()  # as type_word gives them
        self._structure = False  # inside a table's structure section
        self._create = False  # inside its CREATE TABLE statement
        self._table: str | None = None  # inside this table's data section
        self._partial: list[bytes | bytearray] = []  # the start of a line we need whole
        self._in_row = False  # inside a row line (not needed whole)
        self._tables_done = False  # past the last data section: only the tail matters
        self._tail = b""

    @property
    def complete(self) -> bool:
        """The output ended with mysqldump's `-- Dump completed` line."""
        lines = self._tail.rstrip().rsplit(b"\n", 1)
        return lines[-1].startswith(_TRAILER)

    def feed(self, chunk: bytes | bytearray) -> None:
        self._tail = (self._tail + chunk[-_TAIL:])[-_TAIL:]
        if self._tables_done:
            return
        pos, end = 0, len(chunk)
        if self._partial or self._in_row:
            newline = chunk.find(b"\n")
            if newline < 0:
                if self._partial:
                    self._partial.append(chunk)
                return
            if self._partial:
                self._partial.append(chunk[: newline + 1])
                line = b"".join(self._partial)
                self._partial = []
                self._line(line)
            self._in_row = False
            pos = newline + 1
        while pos < end and not self._tables_done:
            if self._table is not None and chunk[pos] == 0x28:  # "(": rows, counted in bulk
                # Each row is one line ending in ")," except the statement's last, which
                # ends in ");": the rows run to the next ";" that ends a line, and are
                # counted as newlines (single-byte searches are the fast ones).
                stop = _statement_end(chunk, pos)
                if stop < 0:
                    self.rows[self._table] += chunk.count(b"\n", pos)
                    self._in_row = not chunk.endswith(b"\n")
                    self.rows[self._table] += self._in_row
                    return
                self.rows[self._table] += chunk.count(b"\n", pos, stop + 2)
                pos = stop + 2
                continue
            newline = chunk.find(b"\n", pos)
            if newline < 0:
                self._partial = [chunk[pos:]]
                return
            self._line(chunk[pos : newline + 1])
            pos = newline + 1

    def _line(self, line: bytes | bytearray) -> None:
        if line.startswith(b"-- "):  # a section header (the "--" lines around it are not)
            self._table = None
            self._structure = line.startswith(_STRUCTURE_HEADER)
            self._create = False
            if line.startswith(_DATA_HEADER):
                name = _ident_in_comment(line[len(_DATA_HEADER) :])
                if name is not None:
                    self._table = name
                    self.rows.setdefault(name, 0)
            elif line.startswith(_END_OF_TABLES):
                self._tables_done = True
        elif self._create:
            self._definition_line(line)
        elif self._structure:
            self._create = line.startswith(b"CREATE TABLE ")
        elif self._table is not None:
            if line.startswith(b"UNLOCK TABLES;"):
                self._table = None
            elif line.startswith(b"INSERT INTO ") and not line.rstrip().endswith(b"VALUES"):
                self.rows[self._table] += count_tuples(line)

    def _definition_line(self, line: bytes | bytearray) -> None:
        """A line of a CREATE TABLE statement after its first."""
        if line.startswith(b")"):  # the statement's last line: nothing after it counts
            self._create = self._structure = False
            options = _TABLE_OPTIONS.match(line)
            self.charsets.add(options[1].decode() if options else UNREADABLE)
        elif line.startswith(b"  `"):
            column = _COLUMN_LINE.match(line)
            if column is None:  # a column name with a newline in it, say
                self.column_types.add(UNREADABLE)
                return
            self.column_types.add(column[1].decode())
            if column[2] is not None:
                self.charsets.add(column[2].decode())


# ---- splitting a dump into statements --------------------------------------------------


class DumpSyntaxError(ValueError):
    """The dump cannot be split into statements (truncated or not a dump)."""


_SANDBOX = b"/*M!999999\\-"  # mariadb-dump's first line: a client command, not SQL
_DELIMITER = re.compile(rb"\s*delimiter\s+(\S+)\s*$", re.IGNORECASE)
_INSERT_END = b");\n"
_QUOTE_END = {0x27: re.compile(rb"[\\']"), 0x22: re.compile(rb'[\\"]')}


@dataclass
class _Lexer:
    """Where a statement is, across lines: in a quote, a comment, or an executable
    `/*! ... */` comment (whose content is SQL the server runs, so quotes count)."""

    delimiter: bytes = b";"
    backslash_escapes: bool = True
    quote: int = 0
    comment: bool = False
    executable: bool = False
    _patterns: dict[bytes, re.Pattern[bytes]] = field(default_factory=dict)

    @property
    def idle(self) -> bool:
        return not (self.quote or self.comment or self.executable)

    def _pattern(self) -> re.Pattern[bytes]:
        pattern = self._patterns.get(self.delimiter)
        if pattern is None:
            pattern = re.compile(re.escape(self.delimiter) + rb"|['\"`]|/\*|\*/|--(?=[ \t\r\n])|#")
            self._patterns[self.delimiter] = pattern
        return pattern

    def find_end(self, line: bytes, pos: int) -> tuple[int, bool]:
        """Where the current statement's delimiter is in `line` from `pos` (-1: not in
        this line), and whether any SQL (not just comments and blanks) was passed."""
        code = False
        end = len(line)
        while pos < end:
            if self.quote == 0x60:  # `identifier`: only a doubled backtick escapes
                close = line.find(b"`", pos)
                if close < 0:
                    return -1, code
                if line[close + 1 : close + 2] == b"`":
                    pos = close + 2
                else:
                    self.quote, pos = 0, close + 1
                continue
            if self.quote:
                found = _QUOTE_END[self.quote].search(line, pos)
                if found is None:
                    return -1, code
                at = found.start()
                if line[at] == 0x5C:  # backslash
                    pos = at + 2 if self.backslash_escapes else at + 1
                elif line[at + 1 : at + 2] == line[at : at + 1]:
                    pos = at + 2  # doubled quote
                else:
                    self.quote, pos = 0, at + 1
                continue
            if self.comment:
                close = line.find(b"*/", pos)
                if close < 0:
                    return -1, code
                self.comment, pos = False, close + 2
                continue
            found = self._pattern().search(line, pos)
            if found is None:
                return -1, code or bool(line[pos:].strip())
            at, token = found.start(), found.group()
            code = code or bool(line[pos:at].strip())
            if token in (b"'", b'"', b"`"):
                self.quote, code, pos = token[0], True, at + 1
            elif token == b"/*":
                if line.startswith((b"/*!", b"/*M!"), at):
                    self.executable, code = True, True
                else:
                    self.comment = True
                pos = at + 2
            elif token == b"*/":
                self.executable, pos = False, at + 2
            elif token in (b"#", b"--"):
                return -1, code  # the rest of the line is a comment
            elif self.executable:
                pos = at + len(token)  # a delimiter inside /*! */ ends nothing
            else:
                return at, code
        return -1, code


class DumpReader:
    """The statements of a dump, one at a time, read from a binary stream.

    Understands what mysqldump, mariadb-dump and the fallback dumper write: DELIMITER
    lines, quotes with backslash escapes (unless the server reports
    NO_BACKSLASH_ESCAPES: set `backslash_escapes` as the session's sql_mode changes,
    as the mysql client does), comments, and executable comments. INSERT statements
    take a fast path (see the module docstring). Raises DumpSyntaxError when the stream
    ends inside a statement. After iterating, `complete` says whether the dump ended
    with its `-- Dump completed` line, and `meta` holds the dbguard metadata line.
    """

    def __init__(self, stream: BinaryIO, chunk_size: int = 1 << 20) -> None:
        self._stream = stream
        self._chunk_size = chunk_size
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._last_line = b""
        self.lexer = _Lexer()
        self.meta: dict[str, str] = {}
        self.database: str | None = None  # the dumped database, from the dump's header
        self.complete = False

    @property
    def backslash_escapes(self) -> bool:
        return self.lexer.backslash_escapes

    @backslash_escapes.setter
    def backslash_escapes(self, value: bool) -> None:
        self.lexer.backslash_escapes = value

    def _fill(self) -> bool:
        """Read more input; False at the end of the stream."""
        if self._eof:
            return False
        chunk = self._stream.read(self._chunk_size)
        if not chunk:
            self._eof = True
            return False
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def _line(self) -> bytes | None:
        searched = self._pos
        while True:
            newline = self._buf.find(b"\n", searched)
            if newline >= 0:
                line = self._buf[self._pos : newline + 1]
                self._pos = newline + 1
                return line
            searched = len(self._buf)
            start = self._pos
            if not self._fill():
                if start >= len(self._buf):
                    return None
                line = self._buf[start:]
                self._pos = len(self._buf)
                return line
            searched -= start

    def _starts_insert(self) -> bool:
        while len(self._buf) - self._pos < len(_INSERT):
            if not self._fill():
                break
        return self._buf.startswith(_INSERT, self._pos)

    def _insert(self) -> bytes:
        searched = self._pos
        while True:
            end = self._buf.find(_INSERT_END, searched)
            if end >= 0:
                statement = self._buf[self._pos : end + 1]
                self._pos = end + 3
                return statement
            searched = max(len(self._buf) - len(_INSERT_END), self._pos)
            start = self._pos
            if not self._fill():
                raise DumpSyntaxError("the dump ends in the middle of an INSERT statement")
            searched -= start

    def __iter__(self) -> Iterator[bytes]:
        lexer = self.lexer
        pieces: list[bytes] = []
        code = False
        while True:
            at_start = not code and lexer.idle
            if at_start and lexer.delimiter == b";" and self._starts_insert():
                self._last_line = b""
                yield self._insert()
                continue
            line = self._line()
            if line is None:
                break
            if line.strip():
                self._last_line = line
            if at_start:
                if line.startswith(_SANDBOX):
                    continue
                if line.startswith(META_PREFIX):
                    self._read_meta(line)
                    continue
                if self.database is None:
                    self.database = dumped_database(line)
                delimiter = _DELIMITER.match(line)
                if delimiter:
                    lexer.delimiter = delimiter.group(1)
                    continue
            pos = 0
            while True:
                end, saw_code = lexer.find_end(line, pos)
                code = code or saw_code
                if end < 0:
                    if code or not lexer.idle:
                        pieces.append(line[pos:])
                    break
                pieces.append(line[pos:end])
                if code:
                    yield b"".join(pieces)
                pieces, code = [], False
                pos = end + len(lexer.delimiter)
        if code or not lexer.idle:
            raise DumpSyntaxError("the dump ends in the middle of a statement")
        self.complete = self._last_line.startswith(_TRAILER)

    def _read_meta(self, line: bytes) -> None:
        try:
            value = json.loads(line[len(META_PREFIX) :])
        except ValueError:
            return
        if isinstance(value, dict):
            self.meta = {str(k): str(v) for k, v in value.items()}


_HOST_HEADER = b"-- Host: "  # mysqldump and mariadb-dump: `-- Host: h    Database: db`
_HOST_DATABASE = b"    Database: "
_FALLBACK_HEADER = b"-- dbguard fallback dump (PyMySQL) of "  # then the quoted name


def dumped_database(line: bytes) -> str | None:
    """The database a dump was made of, from its header line (None: not that line).
    The dump tools write the name as it is; dbguard's fallback dumper quotes it."""
    line = line.rstrip(b"\r\n")
    if line.startswith(_HOST_HEADER) and _HOST_DATABASE in line:
        name = line.split(_HOST_DATABASE, 1)[1]
    elif line.startswith(_FALLBACK_HEADER):
        quoted = line[len(_FALLBACK_HEADER) :]
        if len(quoted) < 2 or not (quoted.startswith(b"`") and quoted.endswith(b"`")):
            return None
        name = quoted[1:-1].replace(b"``", b"`")
    else:
        return None
    return name.decode("utf-8", "replace") or None


# ---- what a statement does -------------------------------------------------------------

Kind = Literal["data", "set", "object", "event", "alter-database", "forbidden"]

_PLAIN_COMMENT = re.compile(r"/\*(?!M?!).*?\*/", re.DOTALL)
_EXECUTABLE_MARK = re.compile(r"/\*M?!\d*|\*/")
_LINE_COMMENT = re.compile(r"(?m)(?:--[ \t].*|#.*)$")
_QUOTED = r"(?:`(?:[^`]|``)*`|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s@`'\"]+)"
_DEFINER = rf"DEFINER\s*=\s*(?:CURRENT_USER(?:\s*\(\s*\))?|{_QUOTED}(?:\s*@\s*{_QUOTED})?)"
_OBJECT = r"(TRIGGER|VIEW|PROCEDURE|FUNCTION|EVENT|PACKAGE)\b"
_CREATE_OBJECT = re.compile(
    rf"CREATE\s+(?:OR\s+REPLACE\s+)?(?:ALGORITHM\s*=\s*\w+\s+)?(?:{_DEFINER}\s+)?"
    rf"(?:SQL\s+SECURITY\s+\w+\s+)?(?:AGGREGATE\s+)?{_OBJECT}",
    re.IGNORECASE | re.DOTALL,
)
_DROP_OBJECT = re.compile(rf"DROP\s+{_OBJECT}", re.IGNORECASE)
_FORBIDDEN = re.compile(
    r"(?:USE\b|(?:CREATE|DROP|ALTER)\s+(?:DATABASE|SCHEMA)\b|SET\s+(?:GLOBAL\b|@@GLOBAL\.)"
    r"|CHANGE\s+MASTER\b|RESET\s+MASTER\b)",
    re.IGNORECASE,
)
_ALTER_DATABASE = re.compile(r"ALTER\s+(?:DATABASE|SCHEMA)\b", re.IGNORECASE)
_SET = re.compile(r"SET\b", re.IGNORECASE)
_ALTER_DATABASE_NAME = re.compile(
    rb"(ALTER\s+(?:DATABASE|SCHEMA))\s+(?!(?:DEFAULT|CHARACTER|CHARSET|COLLATE|COMMENT|UPGRADE)\b)"
    rb"(?:`(?:[^`]|``)*`|\w+)",
    re.IGNORECASE,
)


def statement_head(statement: bytes, size: int = 4096) -> str:
    """The start of a statement with comments removed and executable-comment marks
    dropped, so `/*!50003 CREATE*/ /*!50017 DEFINER=...*/ /*!50003 TRIGGER` reads as
    `CREATE DEFINER=... TRIGGER`."""
    head = statement[:size].decode("latin-1")
    head = _PLAIN_COMMENT.sub(" ", head)
    head = _LINE_COMMENT.sub(" ", head)
    head = _EXECUTABLE_MARK.sub(" ", head)
    return head.strip()


def classify(statement: bytes) -> Kind:
    """What a dump statement does:

    data            create or fill tables (run in the scratch schema)
    set             session settings (run where the statements around them run)
    object/event    a view, trigger or routine / an event (run in the target after the
                    swap; events never run in a scratch schema, where they could fire)
    alter-database  mysqldump's switch of the database collation around routines; it
                    names the original database, so `without_database_name` drops it
    forbidden       USE, CREATE/DROP DATABASE, global settings: never in dbguard's
                    dumps, and they would write outside the schema being restored
    """
    head = statement_head(statement)
    if _SET.match(head):
        return "forbidden" if _FORBIDDEN.match(head) else "set"
    if _ALTER_DATABASE.match(head):
        return "alter-database"
    if _FORBIDDEN.match(head):
        return "forbidden"
    found = _CREATE_OBJECT.match(head) or _DROP_OBJECT.match(head)
    if found:
        return "event" if found.group(1).upper() == "EVENT" else "object"
    return "data"


def without_database_name(statement: bytes) -> bytes:
    """`ALTER DATABASE `orig` CHARACTER SET ...` -> `ALTER DATABASE CHARACTER SET ...`,
    which applies to the session's current database (the one being restored)."""
    return _ALTER_DATABASE_NAME.sub(rb"\1", statement, count=1)


# ---- schema names on the objects a dump recreates --------------------------------------

# What the head of a CREATE/DROP of a view, trigger, routine or event is made of, up to
# the names: blanks and comments (skipped), the marks of executable comments (skipped:
# their content is SQL), quoted names and strings, words, and single characters.
_HEAD_TOKEN = re.compile(
    rb"(?P<skip>\s+|/\*M?!\d*|\*/|/\*.*?\*/|(?:--[ \t\r\n]|#)[^\n]*)"
    rb"|`(?:[^`]|``)*`|\"(?:[^\"\\]|\\.|\"\")*\"|'(?:[^'\\]|\\.|'')*'"
    rb"|[A-Za-z0-9_$\x80-\xff]+|.",  # the same as _WORD
    re.DOTALL,
)
_OBJECT_KINDS = {b"TRIGGER", b"VIEW", b"PROCEDURE", b"FUNCTION", b"EVENT", b"PACKAGE"}
_WORD = re.compile(rb"[A-Za-z0-9_$\x80-\xff]+")  # an unquoted name
_TRIGGER_ON_WITHIN = 8  # a trigger's ON comes a few words after its name (AFTER UPDATE ON)


@dataclass(frozen=True)
class Qualifier:
    """A schema name written before an object's own name (`db`.`name`): the schema, and
    the bytes from its start to the object's name (the dot and any blanks with it)."""

    schema: str
    start: int
    end: int


def _tokens(statement: bytes) -> Iterator[tuple[bytes, int]]:
    """The head's tokens with their offsets, blanks and comments left out."""
    for found in _HEAD_TOKEN.finditer(statement):
        if found.lastgroup != "skip":
            yield found.group(), found.start()


def _identifier(token: bytes) -> str | None:
    """The name a token spells (`a``b`, "a""b" under ANSI_QUOTES, or a bare word)."""
    if token[:1] == b"`":
        return token[1:-1].replace(b"``", b"`").decode("utf-8", "replace")
    if token[:1] == b'"':
        return token[1:-1].replace(b'""', b'"').decode("utf-8", "replace")
    if _WORD.fullmatch(token):
        return token.decode("utf-8", "replace")
    return None


def _qualifier(tokens: Iterator[tuple[bytes, int]]) -> Qualifier | None:
    """Read a name (`a` or `a`.`b`) from `tokens`; its schema part, if it has one."""
    first = next(tokens, None)
    if first is None or _identifier(first[0]) is None:
        return None
    dot = next(tokens, None)
    if dot is None or dot[0] != b".":
        return None
    second = next(tokens, None)
    if second is None or _identifier(second[0]) is None:
        return None
    return Qualifier(str(_identifier(first[0])), first[1], second[1])


def qualifiers(statement: bytes) -> list[Qualifier]:
    """Schema names written on what a deferred statement (see `classify`) creates or
    drops: the object's name, and a trigger's table (`... ON db.t`). Bodies are not
    read: a view or trigger may well read or write another schema."""
    tokens = _tokens(statement)
    kind = b""
    for token, _ in tokens:
        if token.upper() in _OBJECT_KINDS:
            kind = token.upper()
            break
    found: list[Qualifier] = []
    if not kind:
        return found
    ahead = list(itertools.islice(tokens, 3))  # PACKAGE BODY, IF [NOT] EXISTS
    while ahead and ahead[0][0].upper() in (b"BODY", b"IF", b"NOT", b"EXISTS"):
        ahead.pop(0)
    tokens = itertools.chain(ahead, tokens)
    name = _qualifier(tokens)
    if name is not None:
        found.append(name)
    if kind == b"TRIGGER":
        for token, _ in itertools.islice(tokens, _TRIGGER_ON_WITHIN):
            if token.upper() == b"ON":
                table = _qualifier(tokens)
                if table is not None:
                    found.append(table)
                break
    return found


def without_schema(statement: bytes, database: str) -> bytes:
    """`statement` with the schema name `database` taken off the object it creates or
    drops (and a trigger's table), so it acts in the session's current database.

    mariadb-dump keeps a trigger's text as it was written, and `CREATE TRIGGER db.trg
    ... ON db.t` would act on `db` whichever schema it is loaded into. (The server
    drops the schema name from views, routines and events itself.) Database names
    are compared as MariaDB compares them on Linux: case-sensitively."""
    for qualifier in reversed(qualifiers(statement)):
        if qualifier.schema == database:
            statement = statement[: qualifier.start] + statement[qualifier.end :]
    return statement


# ---- grants on routines ----------------------------------------------------------------


@dataclass(frozen=True)
class RoutineGrant:
    """One row of mysql.procs_priv: what a user (or, with no host, a MariaDB role) may
    do with one procedure or function."""

    user: str
    host: str  # '' for a role: MariaDB stores a user's empty host as '%'
    kind: str  # PROCEDURE or FUNCTION
    routine: str
    privileges: str  # as procs_priv's Proc_priv set reads: "Execute,Alter Routine,Grant"

    def statement(self, database: str) -> str:
        """The GRANT that gives it again (quoted for a session without
        NO_BACKSLASH_ESCAPES)."""
        named = [p.strip() for p in self.privileges.split(",") if p.strip()]
        granted = [p.upper() for p in named if p.lower() != "grant"]
        grantee = quote_string(self.user)
        if self.host:
            grantee += "@" + quote_string(self.host)
        return (
            f"GRANT {', '.join(granted) or 'USAGE'} ON {self.kind} "
            f"{quote_ident(database)}.{quote_ident(self.routine)} TO {grantee}"
            + (" WITH GRANT OPTION" if len(granted) < len(named) else "")
        )

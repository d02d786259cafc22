"""The wire protocol between shims, dbguardctl and the daemon.

Newline-delimited JSON over a Unix socket, one object per line, every request carrying
the protocol version `v`. This module only turns bytes into messages and back (no
sockets), so it is tested with plain bytes, h11-style.

A conversation is one of:

    invoke  -> [confirm -> answer] -> progress* -> pass | deny | fail | allow
               after allow: started -> report -> ok     (the command ran)
    approval -> approval (what a code stands for)
    approve  -> ok | error
    status  -> status
    backup  -> progress* -> done | deny | fail
    lend    -> lent -> ok  (the loan lasts until dbguardctl half-closes the connection;
                           ok once the commands hold the database again)
    anything malformed -> error, and the daemon closes the connection

Strings may hold lone surrogates: the shim sends argv and environment values that are
not valid UTF-8 the way Python decodes them (surrogateescape), escaped as \\udcXX.
That is why decoding goes through `json.loads` and then pydantic's Python mode, which
keep them, and why encoding uses `json.dumps` with ASCII escapes.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1
# Whatever the kernel lets a command be started with must fit: Linux allows 2 MiB of
# arguments and environment (a quarter of the default 8 MiB stack), and JSON's ASCII
# escapes can make a byte six. 16 MiB covers that; the socket is the owner's alone.
MAX_MESSAGE_BYTES = 16 << 20
MAX_ITEMS = 1 << 18  # arguments or variables: each takes at least 9 of the 2 MiB

# Exit codes a shim uses when the command does not run (sysexits.h).
EXIT_UNAVAILABLE = 69  # the daemon cannot be reached
EXIT_SOFTWARE = 70  # dbguard itself is misconfigured (no real command, recursion)
EXIT_TEMPFAIL = 75  # the backup failed; trying again later may work
EXIT_PROTOCOL = 76  # shim and daemon do not understand each other
EXIT_NOPERM = 77  # denied by policy


class ProtocolError(Exception):
    """A message that cannot be accepted; the text is safe to send back to the peer."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Plain str: pydantic's length constraints reject lone surrogates, and the message size
# limit already bounds every field.
Text = str


def _a_folder(value: str) -> str:
    """A path this system can have: absolute, no NUL, and bytes again under Python's
    filesystem encoding (a lone surrogate from \\ud800 to \\udc7f cannot be)."""
    try:
        raw = os.fsencode(value)
    except UnicodeEncodeError:
        raise ValueError("not a path this system can have (an unpaired surrogate)") from None
    if not raw.startswith(b"/") or b"\0" in raw:
        raise ValueError("must be an absolute path without NUL bytes")
    return value


Folder = Annotated[str, AfterValidator(_a_folder)]


# ---- requests -----------------------------------------------------------------------


class Invoke(_Message):
    """A shim asks whether it may run `argv` (argv[0] is the command name as typed)."""

    type: Literal["invoke"]
    v: int
    argv: Annotated[list[Text], Field(min_length=1, max_length=MAX_ITEMS)]
    cwd: Folder
    env: Annotated[dict[Text, Text], Field(max_length=MAX_ITEMS)]
    tty: bool
    pid: int
    parent: Text | None = None  # the operation this one runs under, if any
    executable: Text = ""  # the real binary the shim found


class Started(_Message):
    """The shim started the approved command as process `pid`."""

    type: Literal["started"]
    v: int
    op: Text
    pid: int


class Report(_Message):
    """How the approved command ended: `exit` for a normal exit, `signal` for a death."""

    type: Literal["report"]
    v: int
    op: Text
    exit: int | None = None
    signal: int | None = None
    duration_ms: int


class StatusQuery(_Message):
    type: Literal["status"]
    v: int


class BackupNow(_Message):
    """dbguardctl backup: back up the databases of the project at `cwd` now."""

    type: Literal["backup"]
    v: int
    cwd: Folder
    env: Annotated[dict[Text, Text], Field(max_length=MAX_ITEMS)]


class Answer(_Message):
    """What the person typed at the terminal in reply to `confirm`."""

    type: Literal["answer"]
    v: int
    code: Text
    text: Text


class ApprovalQuery(_Message):
    """dbguardctl approve: what does this code stand for?"""

    type: Literal["approval"]
    v: int
    code: Text


class Approve(_Message):
    """dbguardctl approve: a person typed `text` (the database name) for `code`."""

    type: Literal["approve"]
    v: int
    code: Text
    text: Text


class Lend(_Message):
    """dbguardctl restore, run by the guarded command `op` (its script): that command
    (and the running commands it runs under) lets go of its hold on `database` (a
    Target.key), which the restore would otherwise wait for while the command waits for
    the restore, until dbguardctl half-closes this connection."""

    type: Literal["lend"]
    v: int
    op: Text
    database: Text
    # Only say which commands would lend, letting go of nothing: asked by a restore
    # that finds another restore of the database under way (see dbguardctl restore).
    probe: bool = False


Request = Annotated[
    Invoke | Started | Report | StatusQuery | BackupNow | Answer | ApprovalQuery | Approve | Lend,
    Field(discriminator="type"),
]
_request_adapter: TypeAdapter[Request] = TypeAdapter(Request)


# ---- replies ------------------------------------------------------------------------


class BackupRef(_Message):
    id: str
    database: str  # a human label, e.g. "sqlite database/database.sqlite"
    reused: bool = False


class Pass(_Message):
    """Not a database operation: run the command at once."""

    type: Literal["pass"] = "pass"
    env: dict[str, str] = {}  # set for the command (script_shell.py)


class Allow(_Message):
    """Every database is backed up: run the command, then send started and report."""

    type: Literal["allow"] = "allow"
    op: str
    backups: list[BackupRef] = []
    notes: list[str] = []
    env: dict[str, str] = {}  # set for the command (script_shell.py)


class Deny(_Message):
    """Policy says no (exit 77), or the databases could not be determined."""

    type: Literal["deny"] = "deny"
    reason: str
    hint: str = ""


class Fail(_Message):
    """The backup could not be made (exit 75): nothing ran, trying again may work."""

    type: Literal["fail"] = "fail"
    reason: str
    hint: str = ""


class Progress(_Message):
    type: Literal["progress"] = "progress"
    database: str
    bytes: int
    elapsed: float


class Working(_Message):
    """Still deciding (finding databases, waiting for a backup's turn): sent every
    PROGRESS_INTERVAL when nothing else is, so a client can tell a busy daemon from a
    stopped one by silence alone."""

    type: Literal["working"] = "working"
    elapsed: float
    waiting: str | None = None  # what it waits for, when that is worth a line: "a restore of X"


class Confirm(_Message):
    """A production database: the shim asks the person at the terminal to type one of
    `names` and replies with `answer`."""

    type: Literal["confirm"] = "confirm"
    code: str
    question: str
    names: list[str]


class ApprovalInfo(_Message):
    type: Literal["approval"] = "approval"
    code: str
    argv: list[str]
    cwd: str
    databases: list[str]
    reasons: list[str]
    names: list[str]
    expires_in_seconds: float


class Done(_Message):
    """Reply to `backup`: what was backed up (or reused)."""

    type: Literal["done"] = "done"
    backups: list[BackupRef] = []
    notes: list[str] = []


class Lent(_Message):
    """Reply to `lend`: the operations that let go of the database, the command's and
    those of the running commands it runs under; none when it held no such database."""

    type: Literal["lent"] = "lent"
    ops: list[str] = []


class Ok(_Message):
    type: Literal["ok"] = "ok"


class Error(_Message):
    """The request itself was wrong, or (internal) dbguardd failed on it; the connection
    is closed after this."""

    type: Literal["error"] = "error"
    message: str
    internal: bool = False  # a bug in dbguardd, not a request it cannot read


class Status(_Message):
    type: Literal["status"] = "status"
    version: str
    pid: int
    socket: str
    uptime_seconds: float
    backup_dir: str
    in_flight: list[str] = []
    problems: list[str] = []  # what the daemon cannot do right now, and the way out


Reply = Annotated[
    Pass
    | Allow
    | Deny
    | Fail
    | Progress
    | Working
    | Confirm
    | ApprovalInfo
    | Done
    | Lent
    | Ok
    | Error
    | Status,
    Field(discriminator="type"),
]
_reply_adapter: TypeAdapter[Reply] = TypeAdapter(Reply)


# ---- framing ------------------------------------------------------------------------


def encode(message: BaseModel) -> bytes:
    """One message as one line. ASCII escapes keep lone surrogates representable."""
    data = message.model_dump(mode="python", exclude_defaults=False)
    return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def _load(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message too large: {len(line)} bytes (limit {MAX_MESSAGE_BYTES})")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"not a JSON message: {err}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    return data


def decode_request(line: bytes) -> Request:
    """Parse one request line or raise ProtocolError with a message fit for the peer."""
    data = _load(line)
    version = data.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this daemon speaks "
            f"{PROTOCOL_VERSION}); the shims and the daemon are from different "
            "dbguard versions: run `dbguardctl shims install` and restart dbguardd"
        )
    try:
        return _request_adapter.validate_python(data)
    except ValidationError as err:
        raise ProtocolError(_summarize(err)) from None


def decode_reply(line: bytes) -> Reply:
    data = _load(line)
    try:
        return _reply_adapter.validate_python(data)
    except ValidationError as err:
        raise ProtocolError(_summarize(err)) from None


def _summarize(err: ValidationError) -> str:
    problems = []
    for problem in err.errors()[:5]:
        where = ".".join(str(part) for part in problem["loc"]) or "message"
        problems.append(f"{where}: {problem['msg']}")
    return "invalid message: " + "; ".join(problems)

"""A hypothesis fuzz of the socket protocol against ONE real daemon: at least 10,000
generated messages (random bytes, truncated JSON, wrong types, huge fields, unknown
versions, non-UTF-8 argv and environment values, paths with `..`, deep nesting).

Every message gets well-formed replies ending in a final one, or a closed connection;
every message that is malformed by construction gets an `error` reply (or a closed
connection); the daemon never logs a crash, and afterwards it serves a real shim's
guarded command with a backup. The rate (messages/second) is reported.

The daemon closes a connection after each request (only an allowed command keeps it
open, for its report), so each message goes on its own connection; a batch of them is
sent at once over parallel connections, and the replies read afterwards.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbguard.protocol import MAX_MESSAGE_BYTES, ProtocolError, decode_reply
from tests.faults.support import FIGURES, FaultDaemon, install_php, listing, stderr_text
from tests.helpers import Home, laravel_sqlite_project, new_home

TARGET_MESSAGES = 10_000
FAMILIES = (1, 3)  # families of messages (one of each kind) per example, sent in parallel
REPLY_TIMEOUT = 60.0
FINAL = {"pass", "allow", "deny", "fail", "confirm", "approval", "done", "ok", "error", "status"}


@dataclass(frozen=True)
class Message:
    line: bytes
    kind: str  # which generator made it
    malformed: bool  # must get an error reply (or a closed connection)


@dataclass
class Fuzz:
    home: Home
    daemon: FaultDaemon
    sandbox: Path
    sent: int = 0
    seconds: float = 0.0
    kinds: dict[str, int] | None = None


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    homes = new_home(tmp_path_factory.mktemp("fuzz"))
    home = next(homes)
    sandbox = home.root / "sandbox" / "a" / "b"  # no project above it up to home.root
    sandbox.mkdir(parents=True)
    daemon = FaultDaemon(home).start()
    try:
        yield Fuzz(home, daemon, sandbox, kinds={})
    finally:
        daemon.stop()
        next(homes, None)  # runs new_home's clean-up


# ---- strategies --------------------------------------------------------------------------

SURROGATES = st.lists(st.integers(0xDC80, 0xDCFF), min_size=1, max_size=4).map(
    lambda codes: "".join(chr(c) for c in codes)
)  # how the shim sends bytes that are not UTF-8 (surrogateescape)
TRICKS = st.sampled_from(
    ["..", "../../etc/passwd", "/..", "./.", "$(touch pwned)", "`id`", "; rm -rf ~", "-rf",
     "--yes", "\x00", "\n", "a\nb", "\u202e", "php", "artisan", "migrate:fresh", "pytest"]
)  # fmt: skip
TEXT = st.one_of(
    st.text(max_size=30),
    SURROGATES,
    TRICKS,
    st.tuples(st.text(max_size=5), SURROGATES).map("".join),
)
INTS = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**31, 2**63, -(2**63)]))
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | INTS | st.floats(allow_nan=True) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


# Generated messages name the sandbox folder by this placeholder, replaced when sent, so
# the strategies are built once for the module (building them per draw is slow).
SANDBOX = "@SANDBOX@"


def paths() -> st.SearchStrategy[str]:
    segment = st.one_of(st.sampled_from(["..", ".", "x", "a b", ""]), SURROGATES)
    below = st.lists(segment, max_size=5).map(lambda parts: "/".join(parts))
    # at most three '..' upwards: the walk for a project root stays in this home
    return st.one_of(
        below.map(lambda rest: f"{SANDBOX}/{rest}" if rest.count("..") <= 3 else SANDBOX),
        st.just(SANDBOX),
        below.map(lambda rest: f"relative/{rest}"),
        st.just(""),
    )


V1 = st.just(1)


def requests() -> st.SearchStrategy[dict[str, Any]]:
    """Requests of every type whose shape is right, with hostile values."""
    where = paths()
    env = st.dictionaries(TEXT, TEXT, max_size=3)
    return st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.just("invoke"),
                "v": st.just(1),
                "argv": st.lists(TEXT, min_size=1, max_size=6),
                "cwd": where,
                "env": env,
                "tty": st.booleans(),
                "pid": st.integers(1, 2**22),
            },
            optional={"parent": st.none() | TEXT, "executable": TEXT},
        ),
        st.fixed_dictionaries(
            {"type": st.just("started"), "v": st.just(1), "op": TEXT, "pid": st.integers(1, 9)}
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("report"),
                "v": st.just(1),
                "op": TEXT,
                "exit": st.none() | st.integers(0, 255),
                "signal": st.none() | st.integers(1, 64),
                "duration_ms": st.integers(0, 10**6),
            }
        ),
        st.just({"type": "status", "v": 1}),
        st.fixed_dictionaries({"type": st.just("backup"), "v": V1, "cwd": where, "env": env}),
        st.fixed_dictionaries({"type": st.just("answer"), "v": V1, "code": TEXT, "text": TEXT}),
        st.fixed_dictionaries({"type": st.just("approval"), "v": V1, "code": TEXT}),
        st.fixed_dictionaries({"type": st.just("approve"), "v": V1, "code": TEXT, "text": TEXT}),
    )  # fmt: skip


def dump(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()


FIELD_TYPES = {
    "type": "str", "argv": "list", "cwd": "str", "env": "dict", "tty": "bool", "pid": "int",
    "parent": "str", "executable": "str", "op": "str", "exit": "int", "signal": "int",
    "duration_ms": "int", "code": "str", "text": "str",
}  # fmt: skip
# Values pydantic's lax mode can never take for a field of that type.
WRONG = {
    "str": st.one_of(INTS, st.floats(allow_nan=False), st.booleans(), st.lists(TEXT, max_size=2)),
    "int": st.one_of(
        st.text("abcxyz", min_size=1, max_size=5),
        st.lists(INTS, max_size=2),
        st.dictionaries(TEXT, INTS, max_size=2),
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    ),
    "bool": st.one_of(
        st.lists(INTS, max_size=2), st.text("xz", min_size=2, max_size=5), st.integers(2, 1000)
    ),
    "list": st.one_of(
        TEXT, INTS, st.dictionaries(TEXT, TEXT, max_size=2), st.lists(INTS, min_size=1, max_size=3)
    ),
    "dict": st.one_of(
        TEXT, INTS, st.lists(TEXT, max_size=2), st.dictionaries(TEXT, INTS, min_size=1, max_size=2)
    ),
}  # fmt: skip
BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc3\x28",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\x28",
    b"\xc0\xaf",
]
KINDS = [
    "valid", "random bytes", "truncated JSON", "wrong type", "unknown version",
    "missing field", "extra field", "not UTF-8", "raw surrogates", "not an object",
    "deep nesting", "no newline", "numbers", "huge field",
]  # fmt: skip
OPTIONAL = ("parent", "executable", "exit", "signal")


REQUESTS = requests()


@st.composite
def families(draw: st.DrawFn) -> list[Message]:
    """One request of the right shape, and a message of every kind made from it
    (drawing the request is most of the cost of generating). A huge message costs a
    megabyte or more on the wire: one family in eight has one."""
    base = draw(REQUESTS)
    kinds = KINDS if draw(st.integers(0, 7)) == 0 else KINDS[:-1]
    return [variant(draw, base, kind) for kind in kinds]


def variant(draw: st.DrawFn, base: dict[str, Any], kind: str) -> Message:
    if kind == "valid":
        return Message(dump(base) + b"\n", kind, False)
    if kind == "random bytes":
        return Message(draw(st.binary(max_size=300)) + b"\n", kind, True)
    if kind == "truncated JSON":
        text = dump(base)
        return Message(text[: draw(st.integers(0, len(text) - 1))] + b"\n", kind, True)
    if kind == "wrong type":
        field = draw(st.sampled_from(sorted(k for k in base if k != "v")))
        value = draw(WRONG[FIELD_TYPES[field]])
        return Message(dump({**base, field: value}) + b"\n", kind, True)
    if kind == "unknown version":
        version = draw(st.one_of(INTS.filter(lambda v: v != 1), st.none(), TEXT, st.just("1")))
        keep = draw(st.booleans())
        body = {**base, "v": version} if keep else {k: v for k, v in base.items() if k != "v"}
        return Message(dump(body) + b"\n", kind, True)
    if kind == "missing field":
        field = draw(st.sampled_from([k for k in base if k not in OPTIONAL]))
        return Message(dump({k: v for k, v in base.items() if k != field}) + b"\n", kind, True)
    if kind == "extra field":
        name = draw(TEXT.filter(lambda n: n not in base and n not in OPTIONAL))
        return Message(dump({**base, name: draw(JSON_VALUE)}) + b"\n", kind, True)
    if kind in ("not UTF-8", "raw surrogates"):
        # Bytes inside argv and env strings that are not UTF-8 on the wire. Encoded
        # surrogates are what json.loads's surrogatepass takes back (a valid message,
        # like the shim's \\udcXX escapes); anything else must be refused.
        junk = draw(SURROGATES).encode("utf-8", "surrogatepass")
        if kind == "not UTF-8":
            junk = draw(st.sampled_from(BAD_UTF8))
        poisoned = {
            "type": "invoke", "v": 1, "argv": ["php", "@@JUNK@@"], "cwd": SANDBOX,
            "env": {"X": "a@@JUNK@@"}, "tty": False, "pid": 4242,
        }  # fmt: skip
        raw = dump(poisoned).replace(b"@@JUNK@@", junk)
        return Message(raw + b"\n", kind, kind == "not UTF-8")
    if kind == "not an object":
        value = draw(st.one_of(st.lists(JSON_VALUE, max_size=3), TEXT, INTS, st.none()))
        return Message(dump(value) + b"\n", kind, True)
    if kind == "deep nesting":
        depth = draw(st.integers(1_000, 100_000))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        closer = b"]" if opener == b"[" else b"}"
        return Message(opener * depth + closer * depth + b"\n", kind, True)
    if kind == "no newline":  # the connection is half-closed: the daemon reads to EOF
        return Message(dump(base), kind, False)
    if kind == "numbers":
        field = draw(st.sampled_from(["v", "pid", "duration_ms"]))
        number = draw(
            st.sampled_from(
                [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"1.0", b"-0", b"1" * 5000]
            )
        )
        text = dump({**base, field: 0}).replace(
            f'"{field}": 0'.encode(), f'"{field}": '.encode() + number
        )
        acceptable = number == b"1.0" if field == "v" else number in (b"1.0", b"-0")
        return Message(text + b"\n", kind, field not in base or not acceptable)
    # huge field: just under or over the 1 MiB line limit
    size = draw(
        st.sampled_from([MAX_MESSAGE_BYTES - 4096, MAX_MESSAGE_BYTES + 1, 3 * MAX_MESSAGE_BYTES])
    )
    if base["type"] == "invoke":
        # In an environment value: a long argv word is the subject of
        # test_a_long_argument_does_not_stall_the_daemon (a bug, for now).
        line = dump({**base, "env": {"BIG": "x" * size}}) + b"\n"
        return Message(line, kind, len(line) > MAX_MESSAGE_BYTES)
    return Message(dump({**base, "code": "x" * size}) + b"\n", kind, True)


# ---- the conversation ---------------------------------------------------------------------


def send(path: Path, message: Message, sandbox: bytes) -> socket.socket:
    """Connect and send; returns the socket to read the replies from."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REPLY_TIMEOUT)
    sock.connect(str(path))
    try:
        sock.sendall(message.line.replace(SANDBOX.encode(), sandbox))
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # it refused before reading everything (too large); its reply may be there
    return sock


def replies(sock: socket.socket) -> list[dict[str, Any]]:
    """Reply lines up to the first final one (then we hang up), or to EOF."""
    got: list[dict[str, Any]] = []
    buffer = b""
    with sock:
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    reply = decode_reply(line)
                except ProtocolError as err:
                    raise AssertionError(
                        f"a reply the protocol does not define: {line[:300]!r}: {err}"
                    ) from None
                got.append(reply.model_dump())
                if reply.type in FINAL:
                    return got


def check(message: Message, got: list[dict[str, Any]]) -> None:
    if not got:
        return  # a closed connection is an allowed answer
    final = got[-1]
    assert final["type"] in FINAL, (message.kind, message.line[:300], got)
    assert all(r["type"] == "progress" for r in got[:-1]), got
    if message.malformed:
        assert final["type"] == "error", (message.kind, message.line[:300], final)
    if final["type"] == "error":
        assert final["message"] and "internal error" not in final["message"], (
            message.line[:300],
            final,
        )


@pytest.mark.slow
def test_fuzz_the_socket_protocol(fuzz: Fuzz) -> None:
    kinds: dict[str, int] = {}
    sandbox = str(fuzz.sandbox).encode()
    assert b'"' not in sandbox and b"\\" not in sandbox  # safe inside JSON as it is

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,  # the daemon is stateful: replaying stored examples proves little
    )
    @given(st.lists(families(), min_size=FAMILIES[0], max_size=FAMILIES[1]))
    def one_batch(groups: list[list[Message]]) -> None:
        batch = [message for group in groups for message in group]
        started = time.perf_counter()
        socks = [send(fuzz.home.socket, m, sandbox) for m in batch]
        answers = [replies(s) for s in socks]
        fuzz.seconds += time.perf_counter() - started
        fuzz.sent += len(batch)
        for message, got in zip(batch, answers, strict=True):
            kinds[message.kind] = kinds.get(message.kind, 0) + 1
            check(message, got)

    wall = time.perf_counter()
    while fuzz.sent < TARGET_MESSAGES:
        one_batch()
    wall = time.perf_counter() - wall
    rate = fuzz.sent / fuzz.seconds
    FIGURES["fuzz messages/second (with generation and checks)"] = round(fuzz.sent / wall)
    FIGURES["fuzz messages"] = fuzz.sent
    FIGURES["fuzz messages/second (socket time only)"] = round(rate)
    FIGURES["fuzz messages by kind"] = dict(sorted(kinds.items()))
    assert fuzz.sent >= TARGET_MESSAGES
    assert sorted(kinds) == sorted(KINDS), kinds

    # Still alive, never crashed, and it serves a real guarded command with a backup.
    fuzz.daemon.assert_no_crash()
    home = fuzz.home
    install_php(home)
    project = laravel_sqlite_project(home.root / "app")
    result = home.run(["php", "artisan", "migrate:fresh"], cwd=project)
    assert result.returncode == 0, stderr_text(result)
    assert [b["tables"] for b in listing(home)] == [{"users": 3}]


# ---- what the fuzz found -----------------------------------------------------------------


def status_within(path: Path, seconds: float) -> bool:
    """Does the daemon answer a status request within `seconds`?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(seconds)
        try:
            sock.connect(str(path))
            sock.sendall(b'{"type":"status","v":1}\n')
            return b'"status"' in sock.recv(65536)
        except TimeoutError:
            return False


@pytest.mark.parametrize(
    "argv", [["php", "x" * 60_000], ["php", "1" * 25_000 + "x"]], ids=["letters", "digits"]
)
def test_a_long_argument_does_not_stall_the_daemon(home: Home, argv: list[str]) -> None:
    sandbox = home.root / "sandbox"
    sandbox.mkdir()
    daemon = FaultDaemon(home).start()
    try:
        message = {
            "type": "invoke", "v": 1, "argv": argv, "cwd": str(sandbox), "env": {},
            "tty": False, "pid": 4242,
        }  # fmt: skip
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
            slow.connect(str(home.socket))
            slow.sendall(dump(message) + b"\n")
            # Other callers are answered meanwhile, and so is this one, promptly.
            assert status_within(home.socket, 2.0), "dbguardd stopped answering"
            slow.settimeout(2.0)
            assert b'"pass"' in slow.recv(65536)
    finally:
        daemon.kill()  # a stalled daemon would not stop on SIGTERM in time


@pytest.mark.parametrize(
    "suffix", ["x\x00y", "x" * 300, "a/" * 2100], ids=["nul", "long-name", "long-path"]
)
def test_an_unusable_working_folder_is_denied_not_a_crash(home: Home, suffix: str) -> None:
    sandbox = home.root / "sandbox"
    sandbox.mkdir()
    daemon = FaultDaemon(home).start()
    try:
        for message in (
            {"type": "invoke", "v": 1, "argv": ["php", "artisan", "migrate"],
             "cwd": f"{sandbox}/{suffix}", "env": {}, "tty": False, "pid": 4242},
            {"type": "backup", "v": 1, "cwd": f"{sandbox}/{suffix}", "env": {}},
        ):  # fmt: skip
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(30)
                sock.connect(str(home.socket))
                sock.sendall(dump(message) + b"\n")
                reply = json.loads(sock.makefile("rb").readline())
            assert reply["type"] in ("deny", "fail", "error"), reply
            assert "internal error" not in json.dumps(reply), reply
        daemon.assert_no_crash()
    finally:
        daemon.stop()

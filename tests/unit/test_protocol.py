from __future__ import annotations

import json

import pytest

from dbguard.protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Allow,
    BackupRef,
    Invoke,
    Lend,
    Lent,
    ProtocolError,
    decode_reply,
    decode_request,
    encode,
)


def invoke(**changes: object) -> dict[str, object]:
    message: dict[str, object] = {
        "type": "invoke",
        "v": PROTOCOL_VERSION,
        "argv": ["php", "artisan", "migrate"],
        "cwd": "/srv/app",
        "env": {"PATH": "/usr/bin"},
        "tty": False,
        "pid": 42,
    }
    message.update(changes)
    return message


def line(data: object) -> bytes:
    return json.dumps(data).encode() + b"\n"


def test_a_valid_invoke_decodes() -> None:
    request = decode_request(line(invoke()))
    assert isinstance(request, Invoke)
    assert request.argv == ["php", "artisan", "migrate"]


def test_non_utf8_arguments_survive_as_surrogates() -> None:
    raw = (
        b'{"type":"invoke","v":1,"argv":["x\\udcff"],"cwd":"/a",'
        b'"env":{"K\\udc80":"v"},"tty":false,"pid":1}'
    )
    request = decode_request(raw)
    assert isinstance(request, Invoke)
    assert request.argv == ["x\udcff"]
    assert "K\udc80" in request.env


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not a JSON message"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not a JSON message"),
        (line({"type": "status"}), "protocol version None"),
        (line({"type": "status", "v": 2}), "protocol version 2"),
        (line(invoke(argv=[])), "argv"),
        (line(invoke(argv="php")), "argv"),
        (line(invoke(pid="x")), "pid"),
        (line(invoke(type="launch-missiles")), "type"),
        (line(invoke(extra=1)), "extra"),
        # once an internal error (70): discovery could not turn it into bytes
        (line(invoke(cwd="/tmp/\ud800")), "cwd: .*not a path this system can have"),
        (line(invoke(cwd="app")), "cwd: .*must be an absolute path"),
        (b"[" * 100_000, "not a JSON message"),
    ],
)
def test_bad_requests_raise_a_protocol_error(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_request(payload)


def test_oversized_messages_are_refused() -> None:
    with pytest.raises(ProtocolError, match="too large"):
        decode_request(b" " * (MAX_MESSAGE_BYTES + 1))


def test_replies_round_trip() -> None:
    reply = Allow(op="abcd1234", backups=[BackupRef(id="0badc0de", database="sqlite /x")])
    encoded = encode(reply)
    assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
    assert decode_reply(encoded) == reply


def test_a_loan_and_its_answer_round_trip() -> None:
    lend = Lend(type="lend", v=PROTOCOL_VERSION, op="abcd1234", database="sqlite:/srv/app.db")
    assert decode_request(encode(lend)) == lend
    assert decode_reply(encode(Lent(ops=["abcd1234"]))) == Lent(ops=["abcd1234"])

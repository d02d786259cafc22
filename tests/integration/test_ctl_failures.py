"""dbguardctl when things around it fail: a daemon that hangs, dies mid-request or
speaks another protocol, a reader that stops reading, a manifest from a newer version.
Each ends with a message and an exit code, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from dbguard.client.talk import DaemonNotAnswering, request
from dbguard.protocol import PROTOCOL_VERSION, StatusQuery
from tests.helpers import Daemon, Home, fake_daemon, install_stand_in, laravel_sqlite_project


def hang_up(conn: socket.socket) -> None:
    conn.recv(65536)


def garble(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b'{"type": "from the future"}\n')


@pytest.mark.parametrize(
    ("answer", "words"),
    [(hang_up, "closed the connection without replying"), (garble, "cannot read")],
    ids=["dies mid-request", "another protocol"],
)
def test_a_daemon_that_does_not_answer_is_a_message_and_69(
    home: Home, answer: Callable[[socket.socket], None], words: str
) -> None:
    with fake_daemon(home.socket, answer):
        result = home.ctl("backup", cwd=home.root)
    text = result.stderr.decode()
    assert result.returncode == 69, text
    assert words in text and "Traceback" not in text


@pytest.mark.parametrize(("internal", "code"), [(True, 70), (False, 76)])
def test_a_shim_tells_a_daemon_s_bug_from_a_request_it_cannot_read(
    home: Home, internal: bool, code: int
) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    error = {"type": "error", "message": "it broke", "internal": internal}

    def answer(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(json.dumps(error).encode() + b"\n")

    with fake_daemon(home.socket, answer):
        result = home.run(["php", "-v"], cwd=home.root)
    assert result.returncode == code, result.stderr
    assert b"php was not run: it broke" in result.stderr


def test_a_daemon_that_never_answers_times_out_with_a_message(home: Home) -> None:
    silent = threading.Event()
    with fake_daemon(home.socket, lambda conn: silent.wait(30)):
        query = StatusQuery(type="status", v=PROTOCOL_VERSION)
        try:
            with pytest.raises(DaemonNotAnswering, match=r"did not answer within 0\.2 s"):
                request(home.socket, query, timeout=0.2)
        finally:
            silent.set()


def test_a_reader_that_stops_reading_ends_the_listing_quietly(home: Home, daemon: Daemon) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")
    assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
    reader, writer = os.pipe()
    os.close(reader)  # `| head -1` that has already exited
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dbguard.ctl.main", "list-backups"],
            # Buffered, as in a terminal session: the last write happens at the flush.
            env={k: v for k, v in home.env.items() if k != "PYTHONUNBUFFERED"},
            stdout=writer,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        os.close(writer)
    assert result.returncode == 141
    assert result.stderr == b""


def test_a_manifest_from_a_newer_version_is_listed_as_damaged(home: Home, daemon: Daemon) -> None:
    install_stand_in(home, "php")
    home.install_shims("php")
    project = laravel_sqlite_project(home.root / "app")
    assert home.run(["php", "artisan", "test"], cwd=project).returncode == 0
    [manifest_file] = home.backups.glob("*/*/manifest.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["database"]["engine"] = "mssql"
    manifest_file.write_text(json.dumps(manifest))

    listing = home.ctl("list-backups")
    assert listing.returncode == 0
    assert b"cannot use (engine)" in listing.stdout, listing.stdout
    for command in (["verify"], ["restore", "--yes"], ["pin"]):
        result = home.ctl(*command, manifest["id"])
        text = result.stderr.decode()
        assert result.returncode == 65, text  # Damaged
        assert "cannot use" in text and "Traceback" not in text

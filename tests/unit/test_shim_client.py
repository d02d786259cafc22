"""The stdlib-only shim client: its imports, its messages, and its socket rule."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dbguard import paths
from dbguard.client import shim
from dbguard.protocol import Invoke, Report, Started, decode_request

CLIENT = Path(shim.__file__)
# What the client may import beyond a bare `python -IS -c pass`: os and its helpers,
# and three modules compiled into the interpreter.
ALLOWED_EXTRA = {
    "os", "posixpath", "genericpath", "stat", "_stat", "_collections_abc",
    "_json", "_socket",
}  # fmt: skip


def imported_modules(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-IS", "-X", "importtime", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    } - {"imported package"}


def test_the_client_imports_only_built_ins() -> None:
    baseline = imported_modules("-c", "pass")
    bootstrap = f"import sys; sys.path[:0] = [{str(CLIENT.parent)!r}]; import shim"
    extra = imported_modules("-c", bootstrap) - baseline - {"shim"}
    assert extra <= ALLOWED_EXTRA, (
        f"the shim client imports more than it may: {extra - ALLOWED_EXTRA}"
    )


def encoded(message: dict[str, object]) -> bytes:
    return "".join(shim._encode(message, 0)).encode("ascii") + b"\n"


def test_client_messages_are_valid_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODD", "bytes \udcff here")  # a non-UTF-8 environment value
    invoke = decode_request(
        encoded(shim.invoke_message(["php", "x\udc80"], "/usr/bin/php", "/srv/app"))
    )
    assert isinstance(invoke, Invoke)
    assert invoke.argv == ["php", "x\udc80"]
    assert invoke.env["ODD"] == "bytes \udcff here"
    assert isinstance(decode_request(encoded(shim.started_message("ab12cd34", 99))), Started)
    report = decode_request(encoded(shim.report_message("ab12cd34", None, 15, 1200)))
    assert isinstance(report, Report) and report.signal == 15


@pytest.mark.parametrize(
    "env",
    [
        {"DBGUARD_SOCKET": "/custom.sock", "XDG_RUNTIME_DIR": "/run/user/5"},
        {"XDG_RUNTIME_DIR": "/run/user/5"},
        {"XDG_RUNTIME_DIR": "relative"},
        {},
    ],
)
@pytest.mark.parametrize("login_folder", ["ours", "none", "not ours"])
def test_client_and_daemon_agree_on_the_socket(
    env: dict[str, str], login_folder: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("DBGUARD_SOCKET", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    login = tmp_path / "run-user-{uid}"
    if login_folder != "none":
        Path(str(login).format(uid=os.getuid())).mkdir()
    if login_folder == "not ours":
        monkeypatch.setattr(os, "getuid", lambda: 4242)  # another user's uid in the name
        Path(str(login).format(uid=4242)).mkdir()
    for module in (shim, paths):
        monkeypatch.setattr(module, "LOGIN_RUNTIME_DIR", str(login))
    socket = Path(shim.socket_path())
    assert socket == paths.default_socket(env)
    if not env:  # a task runner cleared the environment: the login folder, when ours
        in_login = socket.parent.parent.name.startswith("run-user-")
        assert in_login == (login_folder == "ours"), socket


def test_find_real_skips_the_shims_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shims, real_bin, link_dir = tmp_path / "shims", tmp_path / "bin", tmp_path / "links"
    for folder in (shims, real_bin, link_dir):
        folder.mkdir()
    for path in (shims / "php", real_bin / "php"):
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (link_dir / "php").symlink_to(shims / "php")  # another way to reach the shim
    monkeypatch.setenv("PATH", f"{shims}:{link_dir}:{real_bin}")
    assert shim.find_real("php", str(shims)) == str(real_bin / "php")
    monkeypatch.setenv("PATH", f"{shims}:{link_dir}")
    assert shim.find_real("php", str(shims)) is None


def test_a_command_that_cannot_start_is_126_even_when_the_daemon_is_gone(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The 126 report to a daemon that stopped meanwhile fails: the shim still says why
    the command did not start and exits 126, not with a traceback."""
    folder = Path(tempfile.mkdtemp(prefix="dbg", dir="/tmp"))  # short: a socket's path
    path = folder / "dbguard.sock"
    listener = socket.socket(socket.AF_UNIX)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        listener.bind(str(path))
        listener.listen()
        conn = shim.Connection(str(path))
        accepted, _ = listener.accept()
        accepted.close()  # the daemon stopped after it allowed the command
        broken = folder / "tool"
        broken.write_text("#!/nonexistent/interpreter\n")  # posix_spawn: ENOENT
        broken.chmod(0o755)
        assert shim.run_allowed(conn, "op1", [str(broken)], {}, []) == (126, None)
        assert f"cannot run {broken}" in capfd.readouterr().err
        conn.sock.close()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # run_allowed blocks some
        listener.close()
        shutil.rmtree(folder)

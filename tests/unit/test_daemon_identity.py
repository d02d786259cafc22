"""A dbguardd named by boot, pid and start time: a reused pid is not the same daemon."""

from __future__ import annotations

import os
import subprocess
import sys

from dbguard.daemon.service import _still_running, process_identity


def test_a_live_process_is_known_by_its_identity_and_a_reused_pid_is_not() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        identity = process_identity(child.pid)
        assert identity.count(":") == 2 and f":{child.pid}:" in identity
        assert _still_running(identity)
        boot, pid, start = identity.split(":")
        assert not _still_running(f"{boot}:{pid}:{int(start) + 1}")  # same pid, another process
        assert not _still_running(f"another-boot:{pid}:{start}")
    finally:
        child.communicate(b"")
    assert not _still_running(identity)  # it has ended
    assert _still_running(str(os.getpid()))  # a bare pid, as where /proc says no more
    assert not _still_running("not-a-pid")

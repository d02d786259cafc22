"""Reading a dump tool's stdout while it writes: the one way both server engines do it.

Dump tools write a few kilobytes at a time (mariadb-dump about 64,900 writes for
266 MB, pg_dump 8-30 KB each). Waking the daemon for every write costs both sides more
CPU than letting a megabyte pipe fill for a moment costs time, so the pipe is widened
to a megabyte and read a megabyte at a time, with a short wait whenever a read finds
it nearly empty.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator

CHUNK = 1 << 20
_SHORT_READ = 1 << 16  # a read this small found the pipe nearly empty
_FILL_WAIT = 0.003  # seconds to let it fill: a few hundred KB at a dump tool's pace


def stdout_chunks(proc: subprocess.Popen[bytes]) -> Iterator[bytearray]:
    """The tool's stdout (opened with stdout=PIPE) in chunks of a megabyte, the last one
    shorter, until it is closed. Every chunk but the last is the same buffer, filled
    anew: use or copy it before asking for the next. (A copy of each would cost a
    megabyte more memory and a memcpy of the whole dump.) Reads the descriptor itself:
    a buffered reader would wake up for every write the tool makes."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    patient = _widen(fd)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while n := _read_full(fd, view, patient):
        yield buffer if n == CHUNK else buffer[:n]


def _read_full(fd: int, view: memoryview, patient: bool) -> int:
    """Fill `view`, or stop at the end of the pipe; returns the bytes read."""
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if not n:
            break
        got += n
        if patient and n < _SHORT_READ:
            time.sleep(_FILL_WAIT)
    return got


def _widen(fd: int) -> bool:
    """Make the pipe hold a megabyte; False where the system refuses (above
    /proc/sys/fs/pipe-max-size, or not Linux): the default size works, only slower."""
    try:
        return int(fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)) >= CHUNK
    except (OSError, AttributeError):
        return False

"""Reading a dump tool's stdout: every byte, in order, in megabyte chunks."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from dbguard.engines.pipe import CHUNK, stdout_chunks

# Writes random bytes as a dump tool does, a few kilobytes at a time, now and then
# pausing long enough for the reader to find the pipe empty; then the SHA-256 of all
# it wrote, on stderr.
WRITER = r"""
import hashlib, os, random, sys, time
rng = random.Random(7)
digest = hashlib.sha256()
left = int(sys.argv[1])
while left:
    data = rng.randbytes(min(left, rng.randrange(1, 9000)))
    os.write(1, data)
    digest.update(data)
    left -= len(data)
    if rng.random() < 0.002:
        time.sleep(0.005)
sys.stderr.write(digest.hexdigest())
"""


def run_writer(size: int) -> tuple[list[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(size)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # Copied as they come: the reader fills the same buffer again.
        chunks = [bytes(chunk) for chunk in stdout_chunks(proc)]
    finally:
        assert proc.stderr is not None
        written = proc.stderr.read().decode()
        proc.wait()
    return chunks, written


def test_every_byte_arrives_in_order_in_whole_megabytes() -> None:
    chunks, written = run_writer(3 * CHUNK + CHUNK // 2)
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, CHUNK, CHUNK // 2]
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == written


def test_a_tool_that_writes_nothing_gives_no_chunks() -> None:
    chunks, written = run_writer(0)
    assert chunks == []
    assert written == hashlib.sha256().hexdigest()

"""Keeping the daemon's memory from settling high after backups (glibc only; a no-op
where the C library has neither call).

glibc gives threads arenas of their own, up to eight per core, and keeps what a
thread frees in its arena for later. Every backup starts new zstd worker threads
and runs on whichever executor thread is free, so arenas multiply and each keeps its
high-water mark: SQLite backups of 316 MB in a row, in one process with six worker
threads, took the RSS from 51 to 141 MB by the eighth and 148 MB by the 24th. With
two arenas and the free pages handed back after each backup, 16 of them left it at
52-68 MB after each, with an 86 MB peak.

That still let it drift. glibc raises its mmap threshold to the size of each large
block freed (up to 32 MB), so after the first backup zstd's job buffers and the
dump readers' megabyte buffers come from an arena, and malloc_trim handed back only
part of them: after a second backup of the bench's 329 MB MariaDB database, 17 MB of
free heap stayed resident (mallinfo2), 12 MB more RSS than after the first, and the
bench's full run crept from 67 MB idle to a 100.6 MB peak at its last backup. A fixed
threshold keeps large blocks mmapped, so each goes back to the system when freed:
three backups in a row then ended at the same RSS as the first.
"""

from __future__ import annotations

import ctypes
from typing import Any

ARENAS = 2
MMAP_THRESHOLD = 256 * 1024  # blocks this large and larger are mmapped
TRIM_THRESHOLD = 1024 * 1024  # free memory at the top of the heap beyond this goes back
# mallopt's parameter numbers, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _libc() -> Any:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()


def tune_malloc() -> None:
    """Call before any thread starts: arenas already made stay."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None:
        for parameter, value in (
            (_M_ARENA_MAX, ARENAS),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ):
            mallopt(ctypes.c_int(parameter), ctypes.c_int(value))


def release_free_memory() -> None:
    """Hand the free pages of every arena back to the system."""
    malloc_trim = getattr(_LIBC, "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(ctypes.c_size_t(0))

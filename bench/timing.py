"""Wall-clock timing of commands and the statistics the report prints."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO


class CommandFailed(RuntimeError):
    """A timed command exited non-zero; the message holds its argv and stderr tail."""


def run_timed(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout: int | IO[bytes] = subprocess.DEVNULL,
    stdin: int | IO[bytes] = subprocess.DEVNULL,
    timeout: float = 900,
) -> float:
    """Seconds from spawn to exit of `argv`. Raises CommandFailed on a non-zero exit.

    stderr goes to a pipe read after exit (the commands here print little there), so a
    terminal never slows a run down and a failure can say why."""
    started = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise CommandFailed(f"{' '.join(argv)} exited with {proc.returncode}: {tail}")
    return elapsed


def interleaved(
    variants: Mapping[str, Callable[[], float]], runs: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run every variant `runs` times, round robin, the order rotating each round so no
    variant always runs right after another (cache, CPU frequency and noise drift hit
    them all alike). `warmup` rounds run first and are thrown away. Each callable
    returns the seconds it measured."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(min, max) of the samples, for the JSON results."""
    return (min(values), max(values)) if values else (float("nan"), float("nan"))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def mb(count: float) -> str:
    return f"{count / 1e6:.1f} MB"

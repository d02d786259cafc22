"""The engine registry: one instance of each engine, however many threads ask at once."""

from __future__ import annotations

import threading

import pytest

import dbguard.engines
from dbguard.config import BackupSettings
from dbguard.engines import Engines
from dbguard.engines.base import Engine, EngineName

THREADS = 8


def test_threads_asking_at_once_share_one_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    asked = threading.Semaphore(0)
    original = dbguard.engines._create
    created: list[Engine] = []

    def slow_create(name: EngineName, settings: BackupSettings) -> Engine:
        release.wait(timeout=30)  # until every thread is inside Engines.get
        engine = original(name, settings)
        created.append(engine)
        return engine

    monkeypatch.setattr(dbguard.engines, "_create", slow_create)

    class Counting(Engines):
        def get(self, name: EngineName) -> Engine:
            asked.release()
            return super().get(name)

    engines = Counting()
    got: list[Engine] = []
    threads = [
        threading.Thread(target=lambda: got.append(engines.get("sqlite"))) for _ in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for _ in range(THREADS):
        assert asked.acquire(timeout=30)
    release.set()
    for thread in threads:
        thread.join()

    assert len(created) == 1
    assert len(got) == THREADS and all(engine is created[0] for engine in got)

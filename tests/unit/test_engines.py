"""The engine registry: one instance of each engine, however many threads ask at once."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import dbguard.engines
from dbguard.config import BackupSettings
from dbguard.engines import Engines
from dbguard.engines.base import Engine, EngineName, Target, signals_held

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


def test_signals_held_through_a_swap_are_raised_once_it_is_done(
    capsys: pytest.CaptureFixture[str],
) -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), signals_held("the swap of 'shop'"):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("finished")  # the stops did not cut the step short
    assert steps == ["finished"]
    assert capsys.readouterr().err.count("finishing the swap of 'shop' first") == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back

    # A step that fails says itself what state the database is in: its error wins.
    with pytest.raises(RuntimeError), signals_held("the swap"):
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("rename failed")


@pytest.mark.parametrize(("engine", "port"), [("postgres", 5432), ("mysql", 3306)])
def test_a_database_named_with_and_without_its_default_port_is_one_database(
    engine: EngineName, port: int
) -> None:
    # `psql -d app` and DATABASE_URL=postgresql://u@host:5432/app must share backups.
    bare = Target(engine=engine, host="127.0.0.1", user="u", name="app")
    explicit = Target(engine=engine, host="127.0.0.1", port=port, user="u", name="app")
    other = Target(engine=engine, host="127.0.0.1", port=port + 1, user="u", name="app")
    assert bare.key == explicit.key
    assert bare.slug == explicit.slug
    assert other.key != bare.key

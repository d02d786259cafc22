"""While the daemon works on a request it is never silent for long: the shim takes
silence for a stopped daemon (DBGUARD_SILENCE_TIMEOUT)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from dbguard.daemon import service
from dbguard.protocol import Progress, Working


@pytest.fixture(autouse=True)
def quick_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "PROGRESS_INTERVAL", 0.001)


async def test_silence_is_filled_with_working_until_the_work_ends() -> None:
    finish = asyncio.Event()
    sent: list[Progress | Working] = []

    async def emit(message: Progress | Working) -> None:
        sent.append(message)
        if len(sent) == 3:
            finish.set()

    async def discover() -> str:
        await finish.wait()
        return "found"

    assert await service._beating(discover(), emit) == "found"
    assert [type(m) for m in sent] == [Working] * 3
    assert [m.elapsed for m in sent] == sorted(m.elapsed for m in sent)


async def test_progress_lines_take_the_place_of_working() -> None:
    finish = asyncio.Event()
    line = Progress(database="sqlite /x.sqlite", bytes=10, elapsed=0.5)
    sent: list[Progress | Working] = []

    async def emit(message: Progress | Working) -> None:
        sent.append(message)
        finish.set()

    assert await service._beating(finish.wait(), emit, lambda: [line, line]) is True
    assert sent == [line, line]


async def test_work_goes_on_when_the_client_leaves_and_its_failure_is_collected() -> None:
    finish = asyncio.Event()
    ended = asyncio.Event()
    unhandled: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))

    async def emit(_message: Progress | Working) -> None:
        raise ConnectionResetError("the shim left")

    async def backup() -> None:
        await finish.wait()
        ended.set()
        raise RuntimeError("the backup failed after the shim left")

    with pytest.raises(ConnectionResetError):
        await service._beating(backup(), emit)
    assert not ended.is_set()  # still going
    finish.set()
    await ended.wait()
    await asyncio.sleep(0)  # one more turn: the task is done, its callbacks ran
    gc.collect()  # an unretrieved exception is reported when the task is collected
    assert unhandled == []

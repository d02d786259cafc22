"""The console entry points end quietly on a ^C that arrives while Python loads them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbguard import entry


@pytest.fixture
def program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("interrupted_while_loading", "exits_three"):
        sys.modules.pop(name, None)


def test_a_ctrl_c_while_the_program_loads_exits_130_without_a_traceback(
    program: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (program / "interrupted_while_loading.py").write_text("raise KeyboardInterrupt\n")
    assert entry._run("interrupted_while_loading") == 130
    assert capsys.readouterr().err == ""


def test_the_programs_own_exit_status_passes_through(program: Path) -> None:
    (program / "exits_three.py").write_text("def main():\n    return 3\n")
    assert entry._run("exits_three") == 3

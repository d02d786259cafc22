"""dbguardctl log's table: shortened cells say they are shortened."""

from __future__ import annotations

from dbguard.ctl.log import cut


def test_a_cell_that_fits_is_shown_whole() -> None:
    assert cut("pytest -q", 60) == "pytest -q"
    assert cut("x" * 60, 60) == "x" * 60


def test_a_shortened_cell_ends_in_an_ellipsis_within_its_width() -> None:
    # A reason cut mid-sentence ("... which is not set in the environment") read as the
    # whole reason, leaving out the "or .env" that followed.
    shown = cut("which is not set in the environment or .env", 36)
    assert shown == "which is not set in the environment…"
    assert len(shown) == 36

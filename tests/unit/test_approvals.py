from __future__ import annotations

import pytest

from dbguard.approvals import ApprovalError, Approvals, Request

REQUEST = Request(argv=("php", "artisan", "migrate:fresh"), cwd="/srv/app",
                  databases=("mysql://root@db.prod:3306/shop",), uid=1000)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def approvals() -> tuple[Approvals, Clock]:
    clock = Clock()
    return Approvals(ttl=300, clock=clock), clock


def test_approved_once_then_used_up() -> None:
    book, _ = approvals()
    pending = book.open(REQUEST, ("shop",), ("production because ...",))
    assert book.consume(REQUEST) is None  # not approved yet
    book.approve(pending.code, "shop")
    assert book.consume(REQUEST) is pending
    assert book.consume(REQUEST) is None  # single use
    with pytest.raises(ApprovalError, match="already used"):
        book.approve(pending.code, "shop")


def test_the_typed_name_must_match() -> None:
    book, _ = approvals()
    pending = book.open(REQUEST, ("shop",), ())
    with pytest.raises(ApprovalError, match="not the name"):
        book.approve(pending.code, "yes")
    assert book.consume(REQUEST) is None


@pytest.mark.parametrize("typed", ["", "  \n"])
def test_no_answer_is_told_apart_from_a_wrong_name(typed: str) -> None:
    book, _ = approvals()
    pending = book.open(REQUEST, ("shop",), ())
    with pytest.raises(ApprovalError, match="no answer was given") as refused:
        book.approve(pending.code, typed)
    assert "not the name" not in str(refused.value)
    assert book.consume(REQUEST) is None
    book.approve(pending.code, "shop")  # still open: the name typed afterwards approves
    assert book.consume(REQUEST) is pending


def test_an_approval_applies_only_to_its_own_request() -> None:
    book, _ = approvals()
    book.approve(book.open(REQUEST, ("shop",), ()).code, "shop")
    for other in (
        Request(("php", "artisan", "db:wipe"), REQUEST.cwd, REQUEST.databases, REQUEST.uid),
        Request(REQUEST.argv, "/srv/other", REQUEST.databases, REQUEST.uid),
        Request(REQUEST.argv, REQUEST.cwd, ("mysql://root@db.prod:3306/crm",), REQUEST.uid),
        Request(REQUEST.argv, REQUEST.cwd, REQUEST.databases, 1001),
    ):
        assert book.consume(other) is None
    assert book.consume(REQUEST) is not None


def test_codes_expire() -> None:
    book, clock = approvals()
    pending = book.open(REQUEST, ("shop",), ())
    clock.now = 301
    with pytest.raises(ApprovalError, match="no pending approval"):
        book.approve(pending.code, "shop")

    pending = book.open(REQUEST, ("shop",), ())
    book.approve(pending.code, "shop")
    clock.now += 301
    assert book.consume(REQUEST) is None


def test_asking_again_reuses_the_open_code() -> None:
    book, _ = approvals()
    assert book.open(REQUEST, ("shop",), ()).code == book.open(REQUEST, ("shop",), ()).code

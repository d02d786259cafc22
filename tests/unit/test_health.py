from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dbguard.health import database_health
from dbguard.store import DataFile, Manifest, Reason, Verification

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def manifest(
    seq: int, rows: int, raw: int = 1000, key: str = "sqlite:/a.db", verified: bool | None = None
) -> Manifest:
    return Manifest(
        id=f"{seq:08x}",
        seq=seq,
        created_at=T0 + timedelta(hours=seq),
        duration_ms=1,
        database={"engine": "sqlite", "path": key.removeprefix("sqlite:")},
        database_key=key,
        database_label=f"sqlite {key.removeprefix('sqlite:')}",
        data=DataFile(file="d.zst", size=raw // 4, raw_size=raw, sha256="0" * 64, format="x"),
        tables={"users": rows},
        fingerprint=None,
        tool="t",
        reason=Reason(kind="manual"),
        verified=None if verified is None else Verification(at=T0, ok=verified),
    )


def failure(at: datetime, label: str = "sqlite /a.db") -> dict[str, Any]:
    return {
        "time": at.isoformat(),
        "decision": "fail",
        "databases": [{"database": label}],
        "reason": "disk full\n  free some space",
    }


def test_a_wiped_database_backup_is_flagged() -> None:
    [health] = database_health([manifest(2, rows=0), manifest(1, rows=500)], [])
    assert health.rows_ratio == 0
    assert len(health.warnings) == 1
    assert "was the database wiped" in health.warnings[0]
    assert "dbguardctl restore 00000001" in health.warnings[0]


def test_a_wipe_already_restored_is_not_flagged() -> None:
    # 00000002 is what a restore of 00000001 saved first: the wiped state, now replaced.
    restore = {
        "decision": "restore",
        "outcome": "ok",
        "backups": [{"id": "00000001", "restored": True}, {"id": "00000002", "pre_restore": True}],
    }
    manifests = [manifest(2, rows=0), manifest(1, rows=500)]
    assert database_health(manifests, [restore])[0].warnings == []
    failed = {**restore, "outcome": "failed", "backups": [{"id": "00000001"}]}
    assert len(database_health(manifests, [failed])[0].warnings) == 1  # still wiped


def test_steady_growth_is_quiet() -> None:
    [health] = database_health([manifest(2, rows=510, raw=1100), manifest(1, rows=500)], [])
    assert health.warnings == []


def test_last_verified_and_a_failed_verification() -> None:
    [health] = database_health(
        [manifest(3, 5, verified=False), manifest(2, 5, verified=True), manifest(1, 5)], []
    )
    assert health.last_verified is not None and health.last_verified.seq == 2
    assert any("FAILED verification" in w for w in health.warnings)


def test_failures_since_the_last_good_backup() -> None:
    records = [
        failure(T0),  # before the backup: already recovered from
        failure(T0 + timedelta(hours=5)),
        failure(T0 + timedelta(hours=6), label="sqlite /other.db"),
    ]
    [health] = database_health([manifest(1, 5)], records)
    assert len(health.failures) == 1
    assert "1 backup failure(s) since the last good backup; the last: disk full" in health.warnings


def test_the_last_failure_says_what_its_first_line_introduces() -> None:
    backup = manifest(1, rows=500)
    dump_failed = {
        **failure(T0 + timedelta(hours=5)),
        "reason": "mariadb-dump failed with exit status 2:\nmariadb-dump: SHOW VIEW command "
        "denied to user 'ro'\n  fix what it reports and run the command again",
    }
    [health] = database_health([backup], [dump_failed])
    assert health.warnings[-1].endswith(
        "the last: mariadb-dump failed with exit status 2: mariadb-dump: SHOW VIEW command "
        "denied to user 'ro'"
    )
    # A record with no reason (an older version's, a hand edit) once ended in IndexError.
    for empty in ("", None):
        [health] = database_health([backup], [{**dump_failed, "reason": empty}])
        assert health.warnings[-1].endswith("the last: (no reason logged)")


def test_each_database_separately() -> None:
    healths = database_health([manifest(2, 1, key="sqlite:/b.db"), manifest(1, 9)], [])
    assert [h.key for h in healths] == ["sqlite:/b.db", "sqlite:/a.db"]
    assert all(h.previous is None for h in healths)

"""Retention policy on plain data: no store, no files, no clock but the one passed in."""

from __future__ import annotations

import random
import tomllib
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dbguard.retention import (
    GB,
    MB,
    BackupRecord,
    Plan,
    RetentionSettings,
    SpaceSettings,
    plan,
)

T0 = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)  # a Monday
NO_GFS = {"hourly": 0, "daily": 0, "weekly": 0, "monthly": 0}


def rec(
    seq: int,
    at: datetime,
    db: str = "a",
    size: int = 1,
    **changes: object,
) -> BackupRecord:
    record = BackupRecord(
        id=f"{seq:08x}", database_key=db, seq=seq, created_at=at, size=size, database_label=db
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def policy(**values: object) -> RetentionSettings:
    return RetentionSettings.model_validate(values)


def kept_ids(result: Plan) -> set[str]:
    return {b.id for b in result.keep}


def reasons_of(result: Plan, backup_id: str) -> tuple[str, ...]:
    return next(d.reasons for d in result.decisions if d.backup.id == backup_id)


# ---- count and order ---------------------------------------------------------------


def test_keep_last_keeps_the_newest_by_seq_and_says_why_the_rest_go() -> None:
    backups = [rec(seq, T0 + timedelta(minutes=seq)) for seq in range(1, 8)]
    result = plan(backups, policy(keep_last=3, **NO_GFS), T0 + timedelta(days=1))

    assert kept_ids(result) == {rec(s, T0).id for s in (5, 6, 7)}
    assert [b.seq for b in result.delete] == [4, 3, 2, 1]
    assert "one of the last 3" in reasons_of(result, rec(6, T0).id)
    assert "newest good backup of this database" in reasons_of(result, rec(7, T0).id)
    assert all("not one of the last 3" in reasons_of(result, b.id)[0] for b in result.delete)


def test_order_is_seq_not_the_clock() -> None:
    # The clock went back an hour between seq 3 and seq 4: the timestamps run backwards.
    backups = [rec(seq, T0 - timedelta(minutes=10 * seq)) for seq in range(1, 6)]
    result = plan(backups, policy(keep_last=2, **NO_GFS), T0)

    assert kept_ids(result) == {rec(5, T0).id, rec(4, T0).id}
    assert "newest good backup of this database" in reasons_of(result, rec(5, T0).id)


def test_same_timestamp_keeps_the_later_commit() -> None:
    backups = [rec(1, T0), rec(2, T0)]
    result = plan(backups, policy(keep_last=0, **{**NO_GFS, "hourly": 1}), T0)
    assert kept_ids(result) == {rec(2, T0).id}


def test_reversed_timestamps_in_one_period_never_both_fall_out() -> None:
    # seq 3 is the newest commit but carries the oldest time of the day; seq 1 and 2
    # are in the same day. Whatever the timestamps say, one of them stands for the day.
    backups = [
        rec(1, T0 + timedelta(hours=5), db="a"),
        rec(2, T0 + timedelta(hours=3), db="a"),
        rec(3, T0 + timedelta(hours=1), db="b"),
        rec(4, T0 - timedelta(days=1), db="a"),
    ]
    result = plan(backups, policy(keep_last=0, **{**NO_GFS, "daily": 2}), T0)
    assert kept_ids(result) == {rec(2, T0).id, rec(3, T0).id, rec(4, T0).id}
    assert "newest of day 2024-03-04" in reasons_of(result, rec(2, T0).id)


# ---- grandfather-father-son --------------------------------------------------------


def test_gfs_keeps_the_newest_of_each_recent_period() -> None:
    hourly = [rec(100 + h, T0 + timedelta(hours=h, minutes=m)) for h in range(3) for m in (0,)]
    extra_in_hour = [rec(90, T0 + timedelta(minutes=30))]  # older commit, same hour as 100
    days_ago = [rec(50 - d, T0 - timedelta(days=d)) for d in range(1, 10)]
    backups = hourly + extra_in_hour + days_ago
    settings_ = policy(keep_last=0, hourly=2, daily=3, weekly=0, monthly=0)
    result = plan(backups, settings_, T0 + timedelta(hours=3))

    # hours: 102 and 101; days: today (102), then the two previous days
    assert kept_ids(result) == {rec(s, T0).id for s in (102, 101, 49, 48)}
    assert "newest of hour 2024-03-04 11:00 UTC" in reasons_of(result, rec(102, T0).id)
    assert "newest of day 2024-03-03" in reasons_of(result, rec(49, T0).id)


def test_weeks_are_iso_weeks_and_months_calendar_months() -> None:
    # Sunday 2024-03-03 and Monday 2024-03-04 are in different ISO weeks, same month.
    backups = [rec(1, datetime(2024, 3, 3, 12, tzinfo=UTC)), rec(2, T0)]
    weekly = plan(backups, policy(keep_last=0, **{**NO_GFS, "weekly": 2}), T0)
    monthly = plan(backups, policy(keep_last=0, **{**NO_GFS, "monthly": 2}), T0)
    assert len(weekly.keep) == 2
    assert "newest of week 2024-W09" in reasons_of(weekly, rec(1, T0).id)
    assert [b.seq for b in monthly.keep] == [2]


def test_idle_periods_do_not_use_up_slots() -> None:
    # Backed up daily in January, then untouched until July: January stays kept.
    january = [rec(d, datetime(2024, 1, d, 12, tzinfo=UTC)) for d in range(1, 11)]
    result = plan(january, policy(keep_last=1, **{**NO_GFS, "daily": 7}), datetime(2024, 7, 1))
    assert len(result.keep) == 7


def test_a_failed_verification_does_not_stand_for_its_period() -> None:
    backups = [
        rec(1, T0 - timedelta(days=1)),
        rec(2, T0),
        rec(3, T0 + timedelta(minutes=5), good=False),  # the day's newest, but it failed
        rec(4, T0 + timedelta(days=1)),
    ]
    result = plan(backups, policy(keep_last=0, **{**NO_GFS, "daily": 2}), T0)
    assert kept_ids(result) == {rec(4, T0).id, rec(2, T0).id}
    assert "newest of day 2024-03-04" in reasons_of(result, rec(2, T0).id)


# ---- protections ---------------------------------------------------------------


def test_pinned_survives_count_gfs_and_the_cap() -> None:
    backups = [rec(1, T0 - timedelta(days=400), size=50, pinned=True)] + [
        rec(seq, T0 + timedelta(hours=seq), size=10) for seq in range(2, 6)
    ]
    result = plan(backups, policy(keep_last=0, max_total_bytes=20, **NO_GFS), T0)
    assert kept_ids(result) == {rec(1, T0).id, rec(5, T0).id}
    assert result.cap_exceeded
    assert any("size cap is exceeded" in note for note in result.notes)
    assert "pinned" in reasons_of(result, rec(1, T0).id)


def test_newest_good_is_protected_even_when_newest_failed_verification() -> None:
    backups = [rec(1, T0, size=10), rec(2, T0, size=10, good=False)]
    result = plan(backups, policy(keep_last=0, max_total_bytes=1, **NO_GFS), T0)
    assert kept_ids(result) == {rec(1, T0).id}
    assert result.cap_exceeded

    all_bad = [replace(b, good=False) for b in backups]
    result = plan(all_bad, policy(keep_last=0, max_total_bytes=1, **NO_GFS), T0)
    assert kept_ids(result) == {rec(2, T0).id}
    assert "none passed verification" in reasons_of(result, rec(2, T0).id)[0]


def test_pre_destructive_protection_lasts_its_window() -> None:
    backups = [
        rec(1, T0 - timedelta(days=6, hours=23), pre_destructive=True),
        rec(2, T0 - timedelta(days=7, hours=1), pre_destructive=True),
        rec(3, T0),
    ]
    result = plan(backups, policy(keep_last=0, max_total_bytes=1, **NO_GFS), T0)
    assert kept_ids(result) == {rec(1, T0).id, rec(3, T0).id}
    assert "protected until 2024-03-04 10:00 UTC" in reasons_of(result, rec(1, T0).id)[0]

    longer = policy(keep_last=0, protect_pre_destructive_days=30, **NO_GFS)
    assert len(plan(backups, longer, T0).keep) == 3


def test_future_dated_pre_destructive_counts_as_brand_new() -> None:
    # Taken when the clock was a year ahead; now the clock is right again. Its age
    # would be negative: it must stay protected, not be treated as ancient.
    ahead = rec(1, T0 + timedelta(days=365), pre_destructive=True)
    result = plan([ahead, rec(2, T0)], policy(keep_last=0, **NO_GFS), T0)
    assert ahead.id in kept_ids(result)
    assert any("dated after now" in note for note in result.notes)


# ---- size cap --------------------------------------------------------------------


def test_cap_removes_the_oldest_unprotected_across_databases_until_under() -> None:
    backups = [
        rec(1, T0, db="a", size=30),
        rec(2, T0, db="b", size=30),
        rec(3, T0, db="a", size=30),
        rec(4, T0, db="b", size=30),
        rec(5, T0, db="a", size=30),
        rec(6, T0, db="b", size=30),
    ]
    result = plan(backups, policy(keep_last=10, max_total_bytes=100, **NO_GFS), T0)
    # 180 bytes against 100: seq 1, 2, 3 go (oldest first, whatever the database), 90 left
    assert sorted(b.seq for b in result.delete) == [1, 2, 3]
    assert result.kept_bytes == 90
    assert not result.cap_exceeded
    assert "over the size cap" in reasons_of(result, rec(3, T0).id)[0]


def test_no_cap_when_zero() -> None:
    backups = [rec(seq, T0, size=GB) for seq in range(1, 30)]
    result = plan(backups, policy(keep_last=100, max_total_bytes=0, **NO_GFS), T0)
    assert len(result.keep) == 29
    assert not result.cap_exceeded


# ---- the clock going backwards (issue 7) -----------------------------------------


def steady_state(settings_: RetentionSettings, start: datetime, count: int) -> list[BackupRecord]:
    """Backups every 5 hours, pruned after each one, as the daemon does."""
    kept: list[BackupRecord] = []
    for seq in range(1, count + 1):
        at = start + timedelta(hours=5 * seq)
        kept.append(rec(seq, at, size=1))
        kept = plan(kept, settings_, at).keep
    return kept


def test_a_backward_clock_jump_prunes_no_more_than_a_new_period_would() -> None:
    defaults = RetentionSettings()
    kept = steady_state(defaults, datetime(2024, 1, 1, tzinfo=UTC), 1000)
    last = max(kept, key=lambda b: b.seq)
    seq = last.seq + 1

    # The clock falls back to 1970 (dead RTC battery) for the next backup...
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    backward = plan([*kept, rec(seq, epoch)], defaults, epoch)
    # ...versus the same backup taken normally, in a brand-new hour, day, week and month.
    later = last.created_at + timedelta(days=40)
    forward = plan([*kept, rec(seq, later)], defaults, later)

    assert {b.id for b in backward.delete} == {b.id for b in forward.delete}
    assert len(backward.delete) <= 5  # at most one per rule: last-N, hour, day, week, month
    # and the history is still there: none of the months collapsed into "now"
    months = {(b.created_at.year, b.created_at.month) for b in backward.keep}
    assert len(months) >= 6


def test_future_dated_backups_keep_their_own_periods() -> None:
    # A year of daily backups, then the clock is set back to before all of them.
    daily = [rec(d, datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=d)) for d in range(1, 366)]
    settings_ = policy(keep_last=0, hourly=0, daily=7, weekly=0, monthly=6)
    at_right_time = plan(daily, settings_, datetime(2025, 1, 2, tzinfo=UTC))
    clock_set_back = plan(daily, settings_, datetime(2023, 1, 1, tzinfo=UTC))
    assert kept_ids(clock_set_back) == kept_ids(at_right_time)
    assert len(clock_set_back.keep) == 7 + 6 - 1  # the newest day is also the newest month


# ---- settings --------------------------------------------------------------------


def test_overrides_exact_key_glob_on_label_and_inheritance() -> None:
    config = tomllib.loads(
        """
        keep_last = 10
        hourly = 24
        max_total_bytes = "20 GB"

        [databases."sqlite:/srv/app/db.sqlite"]
        keep_last = 50

        [databases."postgres shop@*"]
        keep_last = 3
        monthly = 12

        [databases."postgres *"]
        keep_last = 1
        """
    )
    settings_ = RetentionSettings.model_validate(config)
    assert settings_.max_total_bytes == 20 * GB
    exact = settings_.policy_for("sqlite:/srv/app/db.sqlite", "sqlite /srv/app/db.sqlite")
    assert exact.keep_last == 50
    shop = settings_.policy_for("postgres://u@db:5432/shop", "postgres shop@db")
    assert (shop.keep_last, shop.monthly, shop.hourly) == (3, 12, 24)  # first match wins
    assert settings_.policy_for("postgres://u@db:5432/crm", "postgres crm@db").keep_last == 1
    assert settings_.policy_for("mysql://u@db:3306/x", "mysql x@db").keep_last == 10


def test_override_applies_in_the_plan() -> None:
    settings_ = RetentionSettings.model_validate(
        {"keep_last": 1, **NO_GFS, "databases": {"b*": {"keep_last": 3}}}
    )
    backups = [rec(s, T0, db="a") for s in range(1, 5)] + [
        rec(s, T0, db="big") for s in range(5, 9)
    ]
    result = plan(backups, settings_, T0)
    assert sorted(b.seq for b in result.keep) == [4, 6, 7, 8]


@pytest.mark.parametrize(
    "bad",
    [
        {"keep_last": -1},
        {"kept_last": 3},
        {"max_total_bytes": "ten gigs"},
        {"databases": {"": {"keep_last": 1}}},
        {"databases": {"x": {"keep_lats": 1}}},
        {"protect_pre_destructive_days": -1},
    ],
)
def test_bad_settings_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RetentionSettings.model_validate(bad)


def test_defaults() -> None:
    defaults = RetentionSettings()
    assert (defaults.keep_last, defaults.hourly, defaults.daily) == (10, 24, 7)
    assert (defaults.weekly, defaults.monthly) == (4, 6)
    assert defaults.max_total_bytes == 10 * GB
    assert defaults.protect_pre_destructive_days == 7


def test_space_floor_is_the_smaller_limit() -> None:
    space = SpaceSettings()
    assert space.floor(2000 * GB) == 1 * GB
    assert space.floor(4 * GB) == 200 * MB
    assert SpaceSettings(min_free_percent=0).floor(4 * GB) == 0
    assert SpaceSettings.model_validate({"min_free_bytes": "2GB"}).floor(1000 * GB) == 2 * GB


# ---- invariants, for any store ------------------------------------------------------

BASE = datetime(2024, 1, 1, tzinfo=UTC)


@st.composite
def records(draw: st.DrawFn) -> list[BackupRecord]:
    count = draw(st.integers(0, 40))
    seqs = draw(st.permutations(list(range(1, count + 1))))
    # Timestamps independent of seq: the clock may have jumped anywhere. Some share a
    # small range, so periods collide; some are spread over more than a year.
    minutes = st.one_of(st.integers(0, 3 * 24 * 60), st.integers(0, 500 * 24 * 60))
    found = []
    for index, seq in enumerate(seqs):
        found.append(
            BackupRecord(
                id=f"{index:08x}",
                database_key=draw(st.sampled_from(["a", "b", "c"])),
                seq=seq,
                created_at=BASE + timedelta(minutes=draw(minutes)),
                size=draw(st.integers(0, 1000)),
                pinned=draw(st.integers(0, 9)) == 0,
                pre_destructive=draw(st.integers(0, 4)) == 0,
                good=draw(st.integers(0, 9)) != 0,
            )
        )
    return found


retention_settings = st.builds(
    RetentionSettings,
    keep_last=st.integers(0, 4),
    hourly=st.integers(0, 4),
    daily=st.integers(0, 4),
    weekly=st.integers(0, 3),
    monthly=st.integers(0, 3),
    protect_pre_destructive_days=st.sampled_from([0, 1, 7, 30]),
    max_total_bytes=st.one_of(st.just(0), st.integers(1, 20_000)),
)
moments = st.integers(-30 * 24 * 60, 600 * 24 * 60).map(lambda m: BASE + timedelta(minutes=m))


def representatives(backups: Iterable[BackupRecord], settings_: RetentionSettings) -> set[str]:
    """Reference GFS, written differently from the module: the periods of good backups
    ranked by their newest commit, each kept through that newest commit."""
    chosen: set[str] = set()
    by_db: dict[str, list[BackupRecord]] = {}
    for b in backups:
        by_db.setdefault(b.database_key, []).append(b)
    formats = {"hourly": "%Y%m%d%H", "daily": "%Y%m%d", "monthly": "%Y%m"}
    for group in by_db.values():
        for field_name in ("hourly", "daily", "weekly", "monthly"):
            periods: dict[object, list[BackupRecord]] = {}
            for b in group:
                if not b.good:
                    continue
                if field_name == "weekly":
                    key: object = b.created_at.isocalendar()[:2]
                else:
                    key = b.created_at.strftime(formats[field_name])
                periods.setdefault(key, []).append(b)
            ranked = sorted(periods.values(), key=lambda ms: -max(m.seq for m in ms))
            for members in ranked[: getattr(settings_, field_name)]:
                chosen.add(max(members, key=lambda m: m.seq).id)
    return chosen


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(records(), retention_settings, moments)
def test_invariants_hold_for_any_store(
    backups: list[BackupRecord], settings_: RetentionSettings, now: datetime
) -> None:
    result = plan(backups, settings_, now)
    kept = kept_ids(result)
    window = timedelta(days=settings_.protect_pre_destructive_days)

    assert sorted(d.backup.id for d in result.decisions) == sorted(b.id for b in backups)
    for b in backups:
        if b.pinned:
            assert b.id in kept, "a pinned backup was pruned"
        if b.pre_destructive and max(now - b.created_at, timedelta(0)) < window:
            assert b.id in kept, "a protected pre-destructive backup was pruned"
    for key in {b.database_key for b in backups}:
        group = sorted((b for b in backups if b.database_key == key), key=lambda b: -b.seq)
        newest = next((b for b in group if b.good), group[0])
        assert newest.id in kept, "the newest good backup of a database was pruned"

    cap = settings_.max_total_bytes
    if cap and not result.cap_exceeded:
        assert result.kept_bytes <= cap
    if result.cap_exceeded:
        assert all(d.protected for d in result.decisions if d.keep)

    by_cap = [d.backup for d in result.decisions if d.reasons[0].startswith("over the size cap")]
    unprotected_kept = [d.backup for d in result.decisions if d.keep and not d.protected]
    for gone in by_cap:
        assert all(gone.seq < k.seq for k in unprotected_kept), "the cap removed a newer one"
    # Everything count and GFS keep is kept unless the cap removed it.
    newest_n = {
        b.id
        for key in {b.database_key for b in backups}
        for b in sorted((x for x in backups if x.database_key == key), key=lambda x: -x.seq)[
            : settings_.keep_last
        ]
    }
    for must in newest_n | representatives(backups, settings_):
        assert must in kept or must in {b.id for b in by_cap}

    # Pruning what the plan says and planning again removes nothing more.
    again = plan(result.keep, settings_, now)
    assert not again.delete


# ---- a year of backups under the default policy (issue 6) --------------------------

DATABASES = {
    # key: (typical compressed size, backups per working day at most)
    "postgres://app@localhost:5432/shop": (220 * MB, 6),
    "mysql://app@localhost:3306/crm": (60 * MB, 4),
    "sqlite:/home/dev/blog/database.sqlite": (4 * MB, 8),
    "sqlite:/home/dev/api/db.sqlite": (900_000, 5),
    "postgres://app@localhost:5432/analytics": (35 * MB, 3),
}


@pytest.mark.slow
def test_a_year_under_the_default_policy() -> None:
    random_ = random.Random(20240301)
    defaults = RetentionSettings()
    cap = int(defaults.max_total_bytes)
    store: list[BackupRecord] = []
    pinned: set[str] = set()
    newest_good: dict[str, str] = {}
    seq = 0
    taken = peak_after = peak_before = removed_for_cap = 0
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for day in range(366):
        moments_today = []
        for key, (typical, most) in DATABASES.items():
            for _ in range(random_.randint(0, most)):
                moments_today.append((random_.uniform(7, 23) * 3600, key, typical))
        moments_today.sort()
        for seconds, key, typical in moments_today:
            seq += 1
            taken += 1
            growth = 1 + day / 365  # databases grow over the year
            backup = BackupRecord(
                id=f"{seq:08x}",
                database_key=key,
                database_label=key,
                seq=seq,
                created_at=start + timedelta(days=day, seconds=seconds),
                size=int(typical * growth * random_.lognormvariate(0, 0.3)),
                pinned=random_.random() < 1 / 150,
                pre_destructive=random_.random() < 1 / 12,
                good=random_.random() > 1 / 100,
            )
            if backup.pinned:
                pinned.add(backup.id)
            store.append(backup)
            peak_before = max(peak_before, sum(b.size for b in store))
            result = plan(store, defaults, backup.created_at)  # prune after each backup
            removed_for_cap += sum(
                1 for d in result.decisions if d.reasons[0].startswith("over the size cap")
            )
            store = result.keep

            assert not result.cap_exceeded
            assert sum(b.size for b in store) <= cap
            ids = {b.id for b in store}
            assert pinned <= ids, "a pinned backup was pruned"
            if backup.good:
                newest_good[key] = backup.id
            assert set(newest_good.values()) <= ids, "the newest good backup was pruned"
            assert backup.id in ids, "the backup just taken was pruned"
            peak_after = max(peak_after, sum(b.size for b in store))

    assert removed_for_cap > 0, "the cap never came into play: the test proves nothing"
    print(
        f"\nyear simulation: {taken} backups taken, {len(store)} kept at the end "
        f"({sum(b.size for b in store) / GB:.2f} GB), {len(pinned)} pinned all kept, "
        f"{removed_for_cap} removed for the cap; peak after pruning "
        f"{peak_after / GB:.2f} GB, peak before pruning {peak_before / GB:.2f} GB, "
        f"cap {cap / GB:.0f} GB"
    )


def test_a_backup_reused_by_a_destructive_command_is_protected_from_that_moment() -> None:
    # Taken a month ago before `php artisan test`; `migrate:fresh` ran on it two days
    # ago (the database had not changed): it is the only copy of what that wiped.
    old = rec(1, T0 - timedelta(days=30), destructive_reuse_at=T0 - timedelta(days=2))
    newer = [rec(seq, T0 - timedelta(hours=12 - seq)) for seq in range(2, 6)]
    result = plan([old, *newer], policy(keep_last=1, **NO_GFS), T0)

    assert old.id in kept_ids(result)
    assert reasons_of(result, old.id) == (
        "reused before a destructive command; protected until 2024-03-09 09:00 UTC",
    )
    later = plan([old, *newer], policy(keep_last=1, **NO_GFS), T0 + timedelta(days=5, hours=1))
    assert old.id not in kept_ids(later)


def test_protection_runs_from_the_later_of_taking_and_reuse() -> None:
    taken_for_one = rec(
        1, T0 - timedelta(days=6), pre_destructive=True, destructive_reuse_at=T0 - timedelta(days=1)
    )
    result = plan([taken_for_one, rec(2, T0)], policy(keep_last=0, **NO_GFS), T0)
    assert (
        "reused before a destructive command; protected until 2024-03-10"
        in (reasons_of(result, taken_for_one.id)[0])
    )
    reused_earlier = replace(taken_for_one, destructive_reuse_at=T0 - timedelta(days=8))
    result = plan([reused_earlier, rec(2, T0)], policy(keep_last=0, **NO_GFS), T0)
    assert (
        "taken before a destructive command; protected until 2024-03-05"
        in (reasons_of(result, taken_for_one.id)[0])
    )

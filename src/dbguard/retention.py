"""Which backups to keep: keep-last, grandfather-father-son, protections and a size cap.

Pure policy: `plan` reads only its arguments (plain `BackupRecord`s, the settings and the
time) and returns a `Plan` saying what to delete and why every other backup is kept.
`dbguard.space` applies a plan to the store; nothing here touches the disk.

The rules, per database (backups ordered by their commit counter `seq`, newest first):

1. Never removed by anything: the newest good backup of each database (the newest one
   whose verification has not failed; the newest one if none is good), and every pinned
   backup (a person asked for it, and only `dbguardctl unpin` takes that back).
2. Never removed while younger than `protect_pre_destructive_days`: a backup taken
   before a destructive or production command (and the one taken before a restore).
   A backup such a command reused (the database had not changed since) is protected
   for as long from the moment of that command.
   It is the copy people reach for after the accident, and accidents are often noticed
   days later.
3. Kept by count: the last `keep_last` backups, and the newest backup of each of the
   last `hourly` hours, `daily` days, `weekly` ISO weeks and `monthly` months that have
   backups (UTC calendar periods, in the manner of restic's --keep-hourly: idle periods
   do not use up slots, so a database left alone for a month keeps its history).
4. The size cap (`max_total_bytes`, whole store): while the backups kept by rule 3 add
   up to more than the cap, the oldest of them (by seq, across all databases) goes.
   Rules 1 and 2 are never broken for the cap: if the protected backups alone exceed
   it, they are kept and the plan says the cap is exceeded.

Clock safety (issue 7, the clock going backwards). Wall-clock time is not trusted for
anything that could delete a backup:

- Order is `seq` only, never `created_at`: "newest", "last N" and "oldest first" for
  the cap all follow the commit counter, which the store increments under a lock.
- The grandfather-father-son periods never look at `now`: a backup's period is read
  from its own timestamp, and which periods are "the last N" is decided by the order
  in which periods first appear walking backups newest-first by seq. A clock that jumps
  back a year simply starts new periods; the old periods stay distinct and keep their
  representatives. (Clamping future timestamps to `now` would instead fold every
  future-dated backup into the current hour, and all but one would fall out at once.)
- Age is only used by rule 2, and a backup dated after `now` has age zero: it is
  treated as brand new and stays protected, never deleted for a negative age.
- Within a period the representative is chosen by seq, so two backups with the same or
  reversed timestamps never both fall out: whichever was committed last stands for the
  period. (Only backups whose verification has not failed stand for periods.)

Defaults (`Policy`, `RetentionSettings`, `SpaceSettings`), and why:

- keep_last = 10: a working session of test runs and migrations produces a handful of
  backups per database; ten lets a person step back through the last several commands.
- hourly = 24, daily = 7, weekly = 4, monthly = 6: a day of hourly points for "what did
  it look like this morning", a week of days, a month of weeks, half a year of months.
  Per database that is at most about 50 backups, usually far fewer (periods overlap).
- protect_pre_destructive_days = 7: long enough to notice over a weekend or a holiday
  that a `migrate:fresh` took something that mattered.
- max_total_bytes = 10 GB: a budget a developer laptop can spare. The measured 880 MB
  PostgreSQL database compresses to 122 MB, so 10 GB holds about 80 such backups.
- Space floor (`SpaceSettings`): keep the smaller of 1 GB and 5 % of the filesystem
  free, so the databases themselves and everything else on the disk still have room;
  the smaller of the two, so a small disk is not held to 1 GB and a 2 TB disk is not
  held to 100 GB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator

GB = 1_000_000_000
MB = 1_000_000


class _Settings(BaseModel):
    # Same rules as dbguard.config's sections (defined here, not imported, because
    # config.py imports this module): unknown keys are errors, values are frozen.
    model_config = ConfigDict(extra="forbid", frozen=True)


Count = Annotated[int, Field(ge=0, le=100_000)]


class Policy(_Settings):
    """How many backups of one database to keep (see the module docstring)."""

    keep_last: Count = Field(10, description="the newest N backups")
    hourly: Count = Field(24, description="the newest backup of each of the last N hours")
    daily: Count = Field(7, description="the newest backup of each of the last N days")
    weekly: Count = Field(4, description="the newest backup of each of the last N ISO weeks")
    monthly: Count = Field(6, description="the newest backup of each of the last N months")
    protect_pre_destructive_days: float = Field(
        7, ge=0, le=36_500, description="days a backup taken before a destructive command is kept"
    )


class PolicyOverride(_Settings):
    """A per-database policy: only the keys given replace the store-wide ones."""

    keep_last: Count | None = None
    hourly: Count | None = None
    daily: Count | None = None
    weekly: Count | None = None
    monthly: Count | None = None
    protect_pre_destructive_days: float | None = Field(None, ge=0, le=36_500)


class RetentionSettings(Policy):
    """The `[retention]` config section: the store-wide policy, the size cap, overrides.

    `databases` maps a database key (exact, e.g. "sqlite:/srv/app/db.sqlite") or a
    glob matched against the label or key (e.g. "postgres shop@*") to an override.
    An exact key wins; otherwise the first matching pattern in file order.
    """

    max_total_bytes: ByteSize = Field(
        ByteSize(10 * GB), ge=0, description="size cap for the whole store; 0 = no cap"
    )
    databases: dict[str, PolicyOverride] = {}

    @field_validator("databases")
    @classmethod
    def _patterns_not_empty(cls, value: dict[str, PolicyOverride]) -> dict[str, PolicyOverride]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError("a database pattern must not be empty")
        return value

    def policy_for(self, database_key: str, label: str = "") -> Policy:
        """The policy of one database: the store-wide one with its override applied."""
        override = self.databases.get(database_key)
        if override is None:
            override = next(
                (
                    o
                    for pattern, o in self.databases.items()
                    if fnmatchcase(label, pattern) or fnmatchcase(database_key, pattern)
                ),
                None,
            )
        base = Policy.model_validate({name: getattr(self, name) for name in Policy.model_fields})
        if override is None:
            return base
        return base.model_copy(update=override.model_dump(exclude_none=True))


class SpaceSettings(_Settings):
    """The `[space]` config section: how much of the backup filesystem must stay free."""

    min_free_bytes: ByteSize = Field(
        ByteSize(1 * GB), ge=0, description="free space a backup must leave, at most"
    )
    min_free_percent: float = Field(
        5, ge=0, le=100, description="free space a backup must leave, as % of the filesystem"
    )
    unknown_size_estimate: ByteSize = Field(
        ByteSize(256 * MB),
        ge=0,
        description="assumed size of a first backup whose database size is unknown",
    )

    def floor(self, filesystem_bytes: int) -> int:
        """The free space to keep: the smaller of the two limits (0 disables either)."""
        by_percent = int(filesystem_bytes * self.min_free_percent / 100)
        return min(int(self.min_free_bytes), by_percent)


@dataclass(frozen=True)
class BackupRecord:
    """What retention needs to know about one backup (built from a Manifest by space.py)."""

    id: str
    database_key: str
    seq: int
    created_at: datetime
    size: int
    pinned: bool = False
    pre_destructive: bool = False  # taken before a destructive/production command or restore
    # ... or reused (or shared) by one later: protected from that moment instead
    destructive_reuse_at: datetime | None = None
    good: bool = True  # False once a verification has failed
    database_label: str = ""


@dataclass(frozen=True)
class Decision:
    backup: BackupRecord
    keep: bool
    reasons: tuple[str, ...]  # why it is kept, or why it goes
    protected: bool  # rules 1-2: the size cap may not remove it


@dataclass(frozen=True)
class Plan:
    """What retention would do: every backup once, newest first, with its reasons."""

    decisions: tuple[Decision, ...]
    max_total_bytes: int  # 0 = no cap
    notes: tuple[str, ...]  # things a person should know (cap exceeded, clock changed)

    @property
    def delete(self) -> list[BackupRecord]:
        return [d.backup for d in self.decisions if not d.keep]

    @property
    def keep(self) -> list[BackupRecord]:
        return [d.backup for d in self.decisions if d.keep]

    @property
    def total_bytes(self) -> int:
        return sum(d.backup.size for d in self.decisions)

    @property
    def kept_bytes(self) -> int:
        return sum(d.backup.size for d in self.decisions if d.keep)

    @property
    def cap_exceeded(self) -> bool:
        return self.max_total_bytes > 0 and self.kept_bytes > self.max_total_bytes


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _utc(moment: datetime) -> datetime:
    # Manifests are written in UTC; a naive time (plain data in tests) is taken as UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _hour(t: datetime) -> tuple[str, str]:
    return (f"h{t:%Y-%m-%dT%H}", f"hour {t:%Y-%m-%d %H}:00 UTC")


def _day(t: datetime) -> tuple[str, str]:
    return (f"d{t:%Y-%m-%d}", f"day {t:%Y-%m-%d}")


def _week(t: datetime) -> tuple[str, str]:
    year, week, _ = t.isocalendar()
    return (f"w{year}-{week}", f"week {year}-W{week:02d}")


def _month(t: datetime) -> tuple[str, str]:
    return (f"m{t:%Y-%m}", f"month {t:%Y-%m}")


# (policy field, period of a timestamp as (identity, readable name))
_PERIODS: tuple[tuple[str, Callable[[datetime], tuple[str, str]]], ...] = (
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
)


def _newest_first(backup: BackupRecord) -> tuple[int, str]:
    # seq is unique in a store; the id only makes the order total for odd input.
    return (-backup.seq, backup.id)


def plan(backups: Iterable[BackupRecord], settings: RetentionSettings, now: datetime) -> Plan:
    """Decide which backups to keep and which to delete, with the reasons for each.

    Pure and deterministic; raises nothing for any list of records (duplicate seqs or
    timestamps in any order are handled: order is seq, then id).
    """
    now = _utc(now)
    ordered = sorted(backups, key=_newest_first)
    # Keyed by position in `ordered`, not by id: the input is plain data and need not
    # have unique ids for the plan to stay sound.
    reasons: list[list[str]] = [[] for _ in ordered]
    protected: set[int] = set()
    notes: list[str] = []

    groups: dict[str, list[int]] = {}
    for index, backup in enumerate(ordered):
        groups.setdefault(backup.database_key, []).append(index)
    policies: dict[str, Policy] = {}
    for key, members in groups.items():
        policy = policies[key] = settings.policy_for(key, ordered[members[0]].database_label)
        _protect(ordered, members, policy, now, reasons, protected)
        for index in members[: policy.keep_last]:
            reasons[index].append(f"one of the last {policy.keep_last}")
        _keep_periods(ordered, members, policy, reasons)

    future = sum(1 for b in ordered if _utc(b.created_at) > now)
    if future:
        notes.append(
            f"{future} backup(s) are dated after now ({now:%Y-%m-%d %H:%M} UTC): the clock "
            "went backwards or was ahead; they are ordered by commit number and count as new"
        )

    cap = int(settings.max_total_bytes)
    dropped_for_cap: dict[int, str] = {}
    kept = [i for i in range(len(ordered)) if reasons[i]]
    total = sum(ordered[i].size for i in kept)
    if cap and total > cap:
        before = total
        # Oldest first across all databases: seq is one counter for the whole store,
        # so it compares backups of different databases soundly, whatever the clock.
        for index in reversed(kept):
            if total <= cap:
                break
            if index in protected:
                continue
            dropped_for_cap[index] = (
                f"over the size cap: the store held {human_size(before)} against "
                f"{human_size(cap)}, and this was among the oldest unprotected backups"
            )
            total -= ordered[index].size
        if total > cap:
            notes.append(
                f"the size cap is exceeded: {human_size(total)} kept against "
                f"{human_size(cap)}, because pinned backups, backups taken before "
                "destructive commands and the newest backup of each database are never "
                "removed for the cap; unpin some (`dbguardctl unpin ID`) or raise "
                "retention.max_total_bytes"
            )

    decisions = []
    for index, backup in enumerate(ordered):
        if index in dropped_for_cap:
            decisions.append(Decision(backup, False, (dropped_for_cap[index],), False))
        elif reasons[index]:
            decisions.append(Decision(backup, True, tuple(reasons[index]), index in protected))
        else:
            surplus = _surplus(policies[backup.database_key])
            decisions.append(Decision(backup, False, (surplus,), False))
    return Plan(tuple(decisions), cap, tuple(notes))


def _protect(
    ordered: Sequence[BackupRecord],
    members: list[int],
    policy: Policy,
    now: datetime,
    reasons: list[list[str]],
    protected: set[int],
) -> None:
    """Rules 1 and 2: what neither count nor cap may remove."""
    good = [i for i in members if ordered[i].good]
    if good:
        newest = good[0]
        reasons[newest].append("newest good backup of this database")
    else:
        newest = members[0]
        reasons[newest].append("newest backup of this database (none passed verification)")
    protected.add(newest)

    window = timedelta(days=policy.protect_pre_destructive_days)
    for index in members:
        backup = ordered[index]
        if backup.pinned:
            reasons[index].append("pinned")
            protected.add(index)
        since, what = None, ""
        if backup.pre_destructive:
            since, what = _utc(backup.created_at), "taken"
        reused = backup.destructive_reuse_at
        if reused is not None and (since is None or _utc(reused) > since):
            since, what = _utc(reused), "reused"
        if since is not None:
            # A time after `now` means the clock went backwards (or was ahead when it
            # was recorded). The true age is unknown, so it counts as brand new: a
            # negative age must never be what ends a protection.
            age = max(now - since, timedelta(0))
            if age < window:
                reasons[index].append(
                    f"{what} before a destructive command; protected until "
                    f"{since + window:%Y-%m-%d %H:%M} UTC"
                )
                protected.add(index)


def _keep_periods(
    ordered: Sequence[BackupRecord],
    members: list[int],
    policy: Policy,
    reasons: list[list[str]],
) -> None:
    """Rule 3's grandfather-father-son part: the newest backup of each recent period.

    "Recent" periods are the first N distinct periods met walking newest-first by seq,
    so `now` plays no part and a clock jump cannot make history look old.
    """
    # Only backups whose verification has not failed stand for a period: a failed one
    # is no history worth keeping, and letting it decide which periods are recent would
    # make a second prune remove what the first one kept (once the failed one is gone).
    good = [index for index in members if ordered[index].good]
    for field_name, period_of in _PERIODS:
        wanted: int = getattr(policy, field_name)
        chosen: dict[str, tuple[int, str]] = {}  # period -> (its newest backup, name)
        for index in good:
            if len(chosen) == wanted:
                break  # the rest are older periods than the last `wanted`
            key, name = period_of(_utc(ordered[index].created_at))
            if key not in chosen:
                chosen[key] = (index, name)
        for index, name in chosen.values():
            reasons[index].append(f"newest of {name}")


def _surplus(policy: Policy) -> str:
    periods = ", ".join(
        f"{getattr(policy, field)} {unit}"
        for field, unit in (
            ("hourly", "hours"),
            ("daily", "days"),
            ("weekly", "weeks"),
            ("monthly", "months"),
        )
    )
    return (
        f"not one of the last {policy.keep_last}, and not the newest of any of the last "
        f"{periods} that have backups"
    )

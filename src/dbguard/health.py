"""How each database's backups are doing: pure, from manifests and log records.

`dbguardctl status` shows it; the warnings are the ones a person should act on: a
backup much smaller than the one before (the classic sign of a wiped database being
backed up), a failed verification, and backup failures since the last success.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dbguard.store import Manifest


@dataclass
class DatabaseHealth:
    key: str
    label: str
    last: Manifest
    previous: Manifest | None = None
    last_verified: Manifest | None = None  # newest backup that passed verification
    failures: list[Mapping[str, Any]] = field(default_factory=list)  # since `last`
    warnings: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float | None:
        """Raw size of the newest backup relative to the one before."""
        if self.previous is None or self.previous.data.raw_size == 0:
            return None
        return self.last.data.raw_size / self.previous.data.raw_size

    @property
    def rows_ratio(self) -> float | None:
        """Rows in the newest backup relative to the one before. SQLite files keep their
        size when rows are deleted, so this is the signal that catches a wipe there."""
        before = sum(self.previous.tables.values()) if self.previous else 0
        if not before:
            return None
        return sum(self.last.tables.values()) / before


def database_health(
    manifests: Iterable[Manifest],
    log_records: Iterable[Mapping[str, Any]],
    shrink_warning_ratio: float = 0.5,
) -> list[DatabaseHealth]:
    """One entry per database that has backups, from `manifests` newest first."""
    by_key: dict[str, DatabaseHealth] = {}
    for manifest in manifests:
        health = by_key.get(manifest.database_key)
        if health is None:
            health = by_key[manifest.database_key] = DatabaseHealth(
                manifest.database_key, manifest.database_label, manifest
            )
        elif health.previous is None:
            health.previous = manifest
        if health.last_verified is None and manifest.verified is not None and manifest.verified.ok:
            health.last_verified = manifest
    records = list(log_records)
    # Backups a restore took of what it then replaced: a wiped database restored.
    restored_over = {
        backup.get("id")
        for r in records
        if r.get("decision") == "restore" and r.get("outcome") == "ok"
        for backup in r.get("backups", [])
        if backup.get("pre_restore")
    }
    for health in by_key.values():
        health.failures = [
            r
            for r in records
            if r.get("decision") == "fail"
            and any(d.get("database") == health.label for d in r.get("databases", []))
            and _after(r.get("time"), health.last.created_at)
        ]
        health.warnings = _warnings(health, shrink_warning_ratio, restored_over)
    return list(by_key.values())


def _after(stamp: object, moment: datetime) -> bool:
    try:
        return datetime.fromisoformat(str(stamp)) > moment
    except ValueError:
        return False


def _warnings(
    health: DatabaseHealth, shrink_warning_ratio: float, restored_over: set[Any]
) -> list[str]:
    warnings = []
    shrunk = [
        f"{ratio:.0%} of the {what}"
        for what, ratio in (("size", health.size_ratio), ("rows", health.rows_ratio))
        if ratio is not None and ratio < shrink_warning_ratio
    ]
    if shrunk and health.previous is not None and health.last.id not in restored_over:
        warnings.append(
            f"backup {health.last.id} has {' and '.join(shrunk)} of {health.previous.id} "
            "before it: was the database wiped before it was backed up? "
            f"(`dbguardctl restore {health.previous.id}` brings the earlier state back)"
        )
    verified = health.last.verified
    if verified is not None and not verified.ok:
        warnings.append(
            f"backup {health.last.id} FAILED verification: {'; '.join(verified.problems)}"
        )
    if health.failures:
        last = health.failures[-1]
        warnings.append(
            f"{len(health.failures)} backup failure(s) since the last good backup; the last: "
            f"{_headline(str(last.get('reason') or ''))}"
        )
    return warnings


def _headline(reason: str) -> str:
    """A logged reason's first line; one that ends in a colon with what it introduces
    (a dump tool's own error, on the next line), which alone it would not say."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    if not lines:
        return "(no reason logged)"
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]

"""Database engines. `Engines` holds one instance of each, created on first use, so the
daemon keeps their connections warm and dbguardctl pays only for the engine it uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbguard.engines.base import Engine, EngineName, Target

if TYPE_CHECKING:  # config imports engines.base (through production): no import cycle
    from dbguard.config import BackupSettings


class Engines:
    def __init__(self, settings: BackupSettings | None = None) -> None:
        from dbguard.config import BackupSettings

        self.settings = settings or BackupSettings()
        self._instances: dict[EngineName, Engine] = {}

    def get(self, name: EngineName) -> Engine:
        engine = self._instances.get(name)
        if engine is None:
            engine = self._instances[name] = _create(name, self.settings)
        return engine

    def for_target(self, target: Target) -> Engine:
        return self.get(target.engine)

    def close(self) -> None:
        for engine in self._instances.values():
            engine.close()
        self._instances.clear()


def _create(name: EngineName, settings: BackupSettings) -> Engine:
    if name == "sqlite":
        from dbguard.engines.sqlite import SqliteEngine

        return SqliteEngine()
    if name == "postgres":
        from dbguard.engines.postgres import PostgresEngine

        return PostgresEngine(settings)
    from dbguard.engines.mysql import MysqlEngine

    return MysqlEngine(settings)

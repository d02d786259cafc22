"""Database engines. `Engines` holds one instance of each, created on first use, so the
daemon keeps their connections warm and dbguardctl pays only for the engine it uses."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from dbguard.engines.base import Engine, EngineName, Target

if TYPE_CHECKING:  # config imports engines.base (through production): no import cycle
    from dbguard.config import BackupSettings


class Engines:
    def __init__(self, settings: BackupSettings | None = None) -> None:
        from dbguard.config import BackupSettings

        self._instances: dict[EngineName, Engine] = {}
        self._creating = threading.Lock()
        self.settings = settings or BackupSettings()

    @property
    def settings(self) -> BackupSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: BackupSettings) -> None:
        """New settings (SIGHUP) reach the engines already made too; a dump in flight
        keeps the timeout it started with."""
        self._settings = settings
        for engine in self._instances.values():
            engine.settings = settings

    def get(self, name: EngineName) -> Engine:
        """The one instance of engine `name`. Worker threads ask at once when the first
        commands arrive; without the lock each could build its own, with its own kept
        connections and change-signal epoch, and a backup's fingerprint would then match
        no later check (16 concurrent commands took two backups that way)."""
        engine = self._instances.get(name)
        if engine is None:
            with self._creating:
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

        return SqliteEngine(settings)
    if name == "postgres":
        from dbguard.engines.postgres import PostgresEngine

        return PostgresEngine(settings)
    from dbguard.engines.mysql import MysqlEngine

    return MysqlEngine(settings)

"""Database engines. `Engines` holds one instance of each, created on first use, so the
daemon keeps their connections warm and dbguardctl pays only for the engine it uses."""

from __future__ import annotations

from dbguard.engines.base import Engine, EngineName, Target


class Engines:
    def __init__(self) -> None:
        self._instances: dict[EngineName, Engine] = {}

    def get(self, name: EngineName) -> Engine:
        engine = self._instances.get(name)
        if engine is None:
            engine = self._instances[name] = _create(name)
        return engine

    def for_target(self, target: Target) -> Engine:
        return self.get(target.engine)

    def close(self) -> None:
        for engine in self._instances.values():
            engine.close()
        self._instances.clear()


def _create(name: EngineName) -> Engine:
    if name == "sqlite":
        from dbguard.engines.sqlite import SqliteEngine

        return SqliteEngine()
    raise NotImplementedError(f"the {name} engine is not available yet")

"""The user's configuration: TOML on disk, validated by pydantic, defaults for everything.

`load_config` is the one way in. It never half-applies a file: it returns a complete
`Config` or raises `ConfigError` naming the file, the key and what is wrong with it.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dbguard import paths
from dbguard.errors import ConfigError
from dbguard.production import ProductionSettings
from dbguard.retention import RetentionSettings, SpaceSettings
from dbguard.rules import Catalog, Classifier, builtin_catalog

# The framework tools and their launchers. The interactive clients (psql, mysql, mariadb,
# sqlite3) and `python` are opt-in: name them to `dbguardctl shims install`.
__all__ = ["Config", "ConfigError", "config_path", "load_config", "parse_config"]

DEFAULT_SHIM_COMMANDS = (
    "php", "pytest", "paratest", "phpunit", "pest", "prisma", "npx", "npm", "pnpm", "pnpx",
    "yarn", "bun", "bunx", "deno", "composer", "alembic", "flask", "django-admin", "rails",
    "rake", "bundle", "rspec", "knex", "sequelize", "typeorm", "drizzle-kit", "flyway",
    "liquibase", "supabase", "turbo", "nx", "lerna", "uv", "poetry", "pipenv",
)  # fmt: skip


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def plain_command_name(name: str) -> bool:
    """A command name safe as a file name and as a word of a shim: no path, no
    option, no shell syntax (`$(...)`, backquotes, `;`, spaces, newlines)."""
    return _PLAIN_NAME.fullmatch(name) is not None


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _absolute(value: Path | None) -> Path | None:
    if value is None:
        return None
    # A NUL byte, or "/" itself (no name to make a file or folder of), once passed here
    # and ended in a traceback at the first mkdir or open.
    if "\0" in str(value):
        raise ValueError("must not contain a NUL byte")
    value = value.expanduser()
    if not value.is_absolute():
        raise ValueError("must be an absolute path (or start with ~)")
    if not value.name:
        raise ValueError("must name a file or folder below /, not / itself")
    return value


class BackupSettings(_Section):
    compression_level: int = Field(1, ge=1, le=19, description="zstd level")
    compression_threads: int = Field(2, ge=0, le=64, description="zstd worker threads, 0 = none")
    max_parallel: int = Field(2, ge=1, le=64, description="backups of different databases at once")
    dump_timeout_seconds: float = Field(
        3600, gt=0, le=7 * 24 * 3600, description="a dump tool running longer is killed"
    )


class HealthSettings(_Section):
    shrink_warning_ratio: float = Field(
        0.5, gt=0, le=1, description="warn when a backup is smaller than this share of the last"
    )
    background_verify: bool = False
    idle_seconds: float = Field(60, ge=1, description="quiet time before a background verify")


class NotifySettings(_Section):
    command: str | None = None  # run with the JSON event on stdin
    webhook: str | None = None  # POSTed the JSON event
    timeout_seconds: float = Field(10, gt=0, le=300)

    @field_validator("webhook")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class ShimSettings(_Section):
    commands: tuple[str, ...] = DEFAULT_SHIM_COMMANDS

    @field_validator("commands")
    @classmethod
    def _plain_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not plain_command_name(name):
                raise ValueError(f"{name!r} is not a plain command name")
        return value


class Config(_Section):
    """Everything the daemon and dbguardctl read from config.toml, with defaults filled in."""

    socket: Path | None = None
    backup_dir: Path | None = None
    operation_log: Path | None = None
    backup: BackupSettings = BackupSettings()
    shims: ShimSettings = ShimSettings()
    retention: RetentionSettings = RetentionSettings()
    space: SpaceSettings = SpaceSettings()
    production: ProductionSettings = ProductionSettings()
    health: HealthSettings = HealthSettings()
    notify: NotifySettings = NotifySettings()
    rules: Catalog = Catalog()  # entries in the catalog.toml schema; yours replace built-ins

    _check_paths = field_validator("socket", "backup_dir", "operation_log")(_absolute)

    @field_validator("rules")
    @classmethod
    def _rules_compile(cls, rules: Catalog) -> Catalog:
        # What only the compiled catalog checks (`extends` naming no tool) fails here,
        # with the key, and not when dbguardd starts or reloads.
        if rules != Catalog():
            Classifier(builtin_catalog().merged(rules))
        return rules

    def socket_path(self, env: Mapping[str, str]) -> Path:
        """DBGUARD_SOCKET, else the `socket` key, else $XDG_RUNTIME_DIR/dbguard/dbguard.sock."""
        if env.get("DBGUARD_SOCKET"):
            return Path(env["DBGUARD_SOCKET"])
        return self.socket or paths.default_socket(env)

    def backup_path(self, env: Mapping[str, str]) -> Path:
        return self.backup_dir or paths.data_dir(env) / "backups"

    def operation_log_path(self, env: Mapping[str, str]) -> Path:
        return self.operation_log or paths.state_dir(env) / "operations.jsonl"


def config_path(env: Mapping[str, str], explicit: str | Path | None = None) -> Path:
    """`--config` wins, then DBGUARD_CONFIG, then $XDG_CONFIG_HOME/dbguard/config.toml."""
    return Path(explicit) if explicit else paths.config_file(env)


def load_config(env: Mapping[str, str], explicit: str | Path | None = None) -> Config:
    """Read and validate the config. A missing default file means defaults; a missing
    file that was asked for by name (`--config`, DBGUARD_CONFIG) is an error."""
    path = config_path(env, explicit)
    asked_for = bool(explicit or env.get("DBGUARD_CONFIG"))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if asked_for:
            raise ConfigError(f"{path}: no such config file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(path, err)) from None


def _describe(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid config"]
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(problem["loc"])
        elif problem["type"] in ("list_type", "tuple_type"):
            message = 'should be a list, such as ["a", "b"]'  # not pydantic's "tuple"
        else:
            message = problem["msg"]
        lines.append(f"  {key}: {message}{_shown(problem)}")
    return "\n".join(lines)


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """`compresion_level` -> "; did you mean compression_level?", from the keys of the
    section it is in."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _shown(problem: Mapping[str, Any]) -> str:
    if problem["type"] == "extra_forbidden" or "input" not in problem:
        return ""
    value = problem["input"]
    if isinstance(value, dict):
        return ""
    return f" (got {value!r})"

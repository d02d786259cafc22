from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from dbguard.config import Config, ConfigError, load_config, parse_config


def test_no_file_means_defaults(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": "/run/user/7"}
    config = load_config(env)
    assert config == Config()
    assert config.socket_path(env) == Path("/run/user/7/dbguard/dbguard.sock")
    assert config.backup_path(env) == tmp_path / ".local/share/dbguard/backups"
    assert config.operation_log_path(env) == tmp_path / ".local/state/dbguard/operations.jsonl"


def test_xdg_variables_move_everything(tmp_path: Path) -> None:
    env = {
        "HOME": "/nowhere",
        "XDG_DATA_HOME": str(tmp_path / "d"),
        "XDG_STATE_HOME": str(tmp_path / "s"),
        "XDG_CONFIG_HOME": str(tmp_path / "c"),
    }
    (tmp_path / "c" / "dbguard").mkdir(parents=True)
    (tmp_path / "c" / "dbguard" / "config.toml").write_text("[backup]\nmax_parallel = 3\n")
    config = load_config(env)
    assert config.backup.max_parallel == 3
    assert config.backup_path(env) == tmp_path / "d/dbguard/backups"
    assert config.operation_log_path(env) == tmp_path / "s/dbguard/operations.jsonl"


def test_socket_precedence(tmp_path: Path) -> None:
    config = parse_config('socket = "/srv/s.sock"', tmp_path / "c.toml")
    assert config.socket_path({"XDG_RUNTIME_DIR": "/run/user/1"}) == Path("/srv/s.sock")
    assert config.socket_path({"DBGUARD_SOCKET": "/env.sock"}) == Path("/env.sock")


def test_explicit_path_beats_environment(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text("[backup]\ncompression_level = 5\n")
    env = {"DBGUARD_CONFIG": str(tmp_path / "other.toml"), "HOME": str(tmp_path)}
    assert load_config(env, chosen).backup.compression_level == 5
    with pytest.raises(ConfigError, match=r"other\.toml: no such config file"):
        load_config(env)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[backup]\ncompresion_level = 3\n",
            r"backup\.compresion_level: unknown key; did you mean compression_level\?",
        ),
        ("[shims]\ncommand = []\n", r"shims\.command: unknown key; did you mean commands\?"),
        ("[shims]\ncommands = 'php'\n", r"shims\.commands: should be a list, such as"),
        ("bakup_dir = '/x'\n", r"bakup_dir: unknown key; did you mean backup_dir\?"),
        (
            "[backup]\ncompression_level = 99\n",
            r"backup\.compression_level: .*less than or equal to 19.*got 99",
        ),
        ('backup_dir = "relative/dir"\n', r"backup_dir: .*absolute path"),
        ('backup_dir = "/tmp/a\\u0000b"\n', r"backup_dir: .*NUL byte"),
        ('operation_log = "/"\n', r"operation_log: .*not / itself"),
        ('socket = "//"\n', r"socket: .*not / itself"),
        ("[backup]\nmax_parallel = 'two'\n", r"backup\.max_parallel: .*integer"),
        # inf once passed, then overflowed the PyMySQL dumper's per-read timeout
        ("[backup]\ndump_timeout_seconds = inf\n", r"backup\.dump_timeout_seconds: .*604800"),
        ('[shims]\ncommands = ["../evil"]\n', r"shims\.commands: .*not a plain command name"),
        ("backup = [\n", r"not valid TOML"),
        ('[[rules.tool]]\nname = "x"\nextends = "nope"\n', r"rules: .*extends unknown .*nope"),
    ],
)
def test_invalid_files_name_file_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    with pytest.raises(ConfigError, match=expected) as caught:
        parse_config(text, path)
    assert str(path) in str(caught.value)


def test_home_relative_paths_expand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = parse_config('backup_dir = "~/b"\n', tmp_path / "c.toml")
    assert config.backup_dir == tmp_path / "b"


EXAMPLE = Path(__file__).parents[2] / "config.example.toml"
_SETTING = re.compile(r"^# ?((\[[\w.]+\])|(\w+ = .*))$")


def _uncommented(text: str) -> str:
    """The example with every documented setting switched on."""
    return "\n".join(
        match.group(1) if (match := _SETTING.match(line)) else line for line in text.splitlines()
    )


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        # The rules catalog's schema is documented in catalog.toml itself.
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and name != "rules":
            keys += _keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_the_example_documents_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    assert parse_config(text, EXAMPLE) == Config()  # as shipped, everything is commented
    switched_on = parse_config(_uncommented(text), EXAMPLE)
    for key in _keys(Config):
        leaf = key.rsplit(".", 1)[-1]  # documented as `# leaf = ...` or in a `[...leaf.` header
        assert re.search(rf"^#\s*(\[\S*\b)?{leaf}( = |\.)", text, re.MULTILINE), key
        default, shown = Config(), switched_on
        for part in key.split("."):
            default, shown = getattr(default, part), getattr(shown, part)
        if default is not None:  # None means "derived from XDG"; the example shows a path
            assert shown == default, key

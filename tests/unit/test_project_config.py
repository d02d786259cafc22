"""`.dbguard.toml`: adds protection, never removes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbguard.discovery.project_config import (
    ProjectConfigError,
    classify_with_project,
    parse_project_config,
    stricter,
)
from dbguard.production import ProductionSettings
from dbguard.rules import Classifier, Kind, Operation, builtin_catalog

FULL = """
version = 1

[[database]]
url = "postgresql://app@127.0.0.1:5432/app"
production = true
label = "the app"

[[database]]
engine = "sqlite"
path = "var/app.sqlite3"

[production]
every_database = true
name_patterns = ["prd"]
hosts = ["db.internal.example.com"]
app_env_variables = ["STAGE"]
production_values = ["live"]
single_label_hosts_are_development = false

[[tool]]
name = "reset-db"
launch = ["reset-db"]
default = "destructive"
"""


def test_full_schema_parses() -> None:
    config = parse_project_config(FULL)
    assert [d.label for d in config.database] == ["the app", None]
    assert config.catalog.tool[0].name == "reset-db"
    [(_, first, facts), (source, second, _)] = config.targets(Path("/srv/app"), {})
    assert first is not None and second is not None
    assert second.path == "/srv/app/var/app.sqlite3"
    assert source == ".dbguard.toml (database[1])"
    assert facts.marked == [".dbguard.toml marks database[0] production"]


def test_production_settings_only_grow() -> None:
    user = ProductionSettings(name_patterns=("prod",), single_label_hosts_are_development=True)
    merged = parse_project_config(FULL).production_settings(user)
    assert merged.name_patterns == ("prod", "prd")
    assert merged.production_hosts == ("db.internal.example.com",)
    assert "STAGE" in merged.app_env_variables and "live" in merged.production_values
    assert merged.single_label_hosts_are_development is False
    assert merged.every_database is True
    # an empty project file changes nothing
    assert parse_project_config("").production_settings(user) == user


@pytest.mark.parametrize(
    "text",
    [
        "[production]\nevery_database = false\n",
        "[production]\nsingle_label_hosts_are_development = true\n",
        "version = 1\n[production]\nname_patterns = []\nhosts = []\n",
    ],
)
@pytest.mark.parametrize("every", [False, True])
@pytest.mark.parametrize("single_label", [False, True])
def test_a_key_at_its_default_is_accepted_and_changes_nothing(
    text: str, every: bool, single_label: bool
) -> None:
    # Writing the default is saying nothing: never "loosening", never a change, whatever
    # the user's own settings are.
    user = ProductionSettings(every_database=every, single_label_hosts_are_development=single_label)
    assert parse_project_config(text).production_settings(user) == user


def test_a_project_can_distrust_single_label_hosts() -> None:
    config = parse_project_config("[production]\nsingle_label_hosts_are_development = false\n")
    merged = config.production_settings(ProductionSettings())
    assert merged.single_label_hosts_are_development is False


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("disable = true\n", "disable", 1),
        ("enabled = false\n", "enabled", 1),
        ('[guard]\nskip = ["migrate"]\n', "guard.skip", 2),
        ('[[database]]\nurl = "sqlite:///a.db"\nproduction = false\n', "database[0].production", 3),
        ('[production]\nunmark = ["app"]\n', "production.unmark", 2),
        (
            '[production]\ndevelopment_hosts = ["db.example.com"]\n',
            "production.development_hosts",
            2,
        ),
        ("allow_agents = true\n", "allow_agents", 1),
        ("[approval]\nauto_approve = true\n", "approval.auto_approve", 2),
        ('ignore_databases = ["x"]\n', "ignore_databases", 1),
        ("[backup]\nenabled = false\n", "backup.enabled", 2),
        ("backup = false\n", "backup", 1),
        ('[[database]]\nurl = "sqlite:///a.db"\nmarker = "development"\n', "database[0].marker", 3),
        ('help = ["migrate"]\n', "help", 1),
        (
            (
                '[[tool]]\nname = "artisan2"\nlaunch = ["artisan"]\n[tool.commands]\n'
                '"migrate:fresh" = "read-only"\n'
            ),
            'tool[0].commands."migrate:fresh"',
            5,
        ),
        ('[[tool]]\nname = "x"\nlaunch = ["x"]\ndefault = "read-only"\n', "tool[0].default", 4),
    ],
)
def test_loosening_is_an_error_naming_file_key_and_line(text: str, key: str, line: int) -> None:
    with pytest.raises(ProjectConfigError) as info:
        parse_project_config(text, "app/.dbguard.toml")
    message = str(info.value)
    assert message.startswith(
        f"app/.dbguard.toml, line {line}: `{key}` would loosen dbguard's protection"
    )
    assert "only your own dbguard config (config.toml) can change this" in message


def test_command_words_that_look_like_settings_are_not_loosening() -> None:
    text = (
        '[[tool]]\nname = "ops"\nlaunch = ["ops"]\n[tool.commands]\n"skip" = "destructive"\n'
        '"disable" = "migrate"\n'
    )
    assert parse_project_config(text).catalog.tool[0].commands["skip"] is Kind.DESTRUCTIVE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[database]\n", r"\.dbguard\.toml, line 1: not valid TOML"),
        ('colour = "blue"\n', r"\.dbguard\.toml, line 1: `colour`: unknown key"),
        ('[[database]]\nengine = "postgres"\n', "needs name"),
        ('[[database]]\nurl = "x"\nengine = "sqlite"\n', "either url, or engine"),
        ('[[database]]\nurl = "nonsense"\n', "not a database URL"),
        ('[[database]]\nengine = "sqlite"\n', "needs path"),
        ('[[database]]\nengine = "oracle"\nname = "x"\n', r"database\[0\]\.engine"),
        ('[[tool]]\nname = "t"\n', r"tool"),
        ("version = 2\n", "version"),
        (
            '[production]\nevery_database = "yes"\n',
            r"production\.every_database`: Input should be a valid boolean",
        ),
        ('[[tool]]\nname = "t"\nextends = "nope"\n', r"\.dbguard\.toml: tool 't' extends unknown"),
    ],
)
def test_invalid_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ProjectConfigError, match=message) as info:
        parse_project_config(text)
    assert info.value.fix.startswith("fix the file")  # and the way out, every time


def test_password_env_must_be_set() -> None:
    config = parse_project_config(
        '[[database]]\nengine = "mysql"\nname = "app"\npassword_env = "APP_PW"\n'
    )
    with pytest.raises(ProjectConfigError, match="password_env names APP_PW, which is not set"):
        list(config.targets(Path("/srv/app"), {}))
    [(_, target, _)] = config.targets(Path("/srv/app"), {"APP_PW": "pw"})
    assert target is not None and target.password is not None
    assert target.password.get_secret_value() == "pw"


def test_stricter_takes_the_more_dangerous() -> None:
    test = Operation("pytest", Kind.TEST)
    wipe = Operation("reset", Kind.DESTRUCTIVE)
    assert stricter(None, test) is test
    assert stricter(test, None) is test
    assert stricter(test, wipe) is wipe
    assert stricter(wipe, test) is wipe


def test_project_catalog_can_only_raise_a_classification() -> None:
    classifier = Classifier(builtin_catalog())
    config = parse_project_config(
        '[[tool]]\nname = "reset-db"\nlaunch = ["reset-db"]\ndefault = "destructive"\n'
        '[[tool]]\nname = "artisan-extra"\nlaunch = ["artisan"]\n'
        '[tool.commands]\n"app:reset" = "destructive"\n'
    )
    reset = classify_with_project(classifier, config, ["reset-db", "--all"])
    assert reset is not None and reset.kind is Kind.DESTRUCTIVE
    # a project entry for the same program never makes a built-in answer weaker
    fresh = classify_with_project(classifier, config, ["php", "artisan", "migrate:fresh"])
    assert fresh is not None and fresh.kind is Kind.DESTRUCTIVE
    assert classify_with_project(classifier, None, ["ls"]) is None


def test_a_project_tool_can_extend_a_built_in_one() -> None:
    config = parse_project_config(
        '[[tool]]\nname = "artisan-house"\nextends = "artisan"\n'
        '[tool.commands]\n"app:reset" = "destructive"\n'
    )
    classifier = Classifier(builtin_catalog())
    reset = classify_with_project(classifier, config, ["php", "artisan", "app:reset"])
    assert reset is not None and reset.kind is Kind.DESTRUCTIVE
    assert classify_with_project(classifier, None, ["php", "artisan", "app:reset"]) is None


@pytest.mark.parametrize(
    "entry",
    ['url = "sqlite:///:memory:"', 'engine = "sqlite"\npath = ":memory:"'],
)
def test_in_memory_sqlite_is_nothing_to_back_up(entry: str) -> None:
    config = parse_project_config(f"[[database]]\n{entry}\n")
    [(_, target, _)] = config.targets(Path("/srv/app"), {})
    assert target is None

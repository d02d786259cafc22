"""Production classification: every signal, positive and negative, with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbguard.engines.base import EngineName, Target
from dbguard.production import (
    ProductionSettings,
    Setting,
    TargetFacts,
    classify_production,
    development_host,
    name_matches,
)


def server(
    host: str | None = "127.0.0.1",
    name: str = "app",
    engine: EngineName = "postgres",
    socket: str | None = None,
) -> Target:
    return Target(
        engine=engine, host=host, port=5432, name=name, socket=socket, source=".env (DB_HOST)"
    )


def sqlite(path: str) -> Target:
    return Target(engine="sqlite", path=path, source=".env (DB_DATABASE)")


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        ("app_prod", True),
        ("prod-db.example.com", True),
        ("production", True),
        ("shop_live", True),
        ("appProd", True),
        ("db-prod01", True),
        ("PROD", True),
        ("product_catalog", False),
        ("products", False),
        ("livestream", False),
        ("reproduction", False),
        ("app_dev", False),
        ("delivery", False),
    ],
)
def test_name_patterns_match_whole_words(name: str, matches: bool) -> None:
    assert (name_matches(name, ("prod", "production", "live")) is not None) == matches


def test_glob_and_multi_word_patterns() -> None:
    assert name_matches("shop-prd3", ("prd*",)) == "prd*"
    assert name_matches("eu_prod_db", ("eu-prod",)) == "eu-prod"
    assert name_matches("prod_eu", ("eu-prod",)) is None


@pytest.mark.parametrize(
    ("host", "development"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("[::1]", True),
        ("/run/postgresql", True),
        ("myapp.local", True),
        ("db.test", True),
        ("app.localhost", True),
        ("host.docker.internal", True),
        ("db", True),
        ("mysql", True),
        ("postgres", True),
        ("db.example.com", False),
        ("10.0.0.5", False),
        ("192.168.1.20", False),
        ("localhost.example.com", False),
    ],
)
def test_development_hosts(host: str, development: bool) -> None:
    assert (development_host(host, ProductionSettings()) is not None) == development


def test_remote_host_is_production_naming_the_setting_and_file() -> None:
    facts = TargetFacts(fields={"host": Setting("DB_HOST", "db.prod.example.com", ".env")})
    verdict = classify_production(server("db.prod.example.com"), {}, facts=facts)
    assert verdict.production
    assert (
        "production because DB_HOST=db.prod.example.com is not a development host (.env)"
        in verdict.reasons
    )
    assert (
        "production because the host db.prod.example.com (DB_HOST, .env) matches 'prod'"
        in verdict.reasons
    )


def test_remote_host_without_facts_names_the_source() -> None:
    verdict = classify_production(server("db.example.com"), {})
    assert verdict.reasons == [
        "production because the host db.example.com is not a development host (.env (DB_HOST))"
    ]


def test_local_database_is_not_production_and_says_why() -> None:
    verdict = classify_production(server("127.0.0.1", "product_catalog"), {})
    assert not verdict.production
    [reason] = verdict.reasons
    assert reason.startswith("not production: host 127.0.0.1 is a loopback address")
    assert "product_catalog matches none of prod, production, live" in reason


def test_database_name_makes_it_production() -> None:
    facts = TargetFacts(fields={"name": Setting("DB_DATABASE", "app_prod", ".env, line 6")})
    verdict = classify_production(server("127.0.0.1", "app_prod"), {}, facts=facts)
    assert verdict.reasons == [
        "production because the database name app_prod (DB_DATABASE, .env, line 6) matches 'prod'"
    ]


@pytest.mark.parametrize(
    "variable",
    ["APP_ENV", "RAILS_ENV", "RACK_ENV", "NODE_ENV", "DJANGO_ENV", "FLASK_ENV", "ENVIRONMENT"],
)
@pytest.mark.parametrize("value", ["production", "prod", "Production"])
def test_app_env_in_the_invoking_environment(variable: str, value: str) -> None:
    verdict = classify_production(server(), {variable: value})
    assert verdict.reasons == [f"production because {variable}={value} (the invoking environment)"]


def test_app_env_from_a_file_discovery_read() -> None:
    facts = TargetFacts(app_env=[Setting("APP_ENV", "production", ".env, line 2")])
    assert classify_production(
        sqlite("/srv/app/database/database.sqlite"), {}, facts=facts
    ).reasons == ["production because APP_ENV=production (.env, line 2)"]


def test_only_what_the_projects_files_say_lasts() -> None:
    """The reasons dbguardd remembers: a file's word and the project's declaration, not
    the run's environment or command line, nor names and hosts (which are the key)."""
    facts = TargetFacts(
        app_env=[Setting("APP_ENV", "production", ".env, line 2", in_file=True)],
        marked=[".dbguard.toml (database[0]) says so"],
    )
    verdict = classify_production(
        server("db.example.com", "app_prod"), {"NODE_ENV": "production"}, facts=facts
    )
    assert verdict.production and len(verdict.reasons) == 5
    assert verdict.lasting == [
        ".dbguard.toml (database[0]) says so",
        "APP_ENV=production (.env, line 2)",
    ]
    assert classify_production(server(), {"APP_ENV": "production"}).lasting == []


def test_staging_and_other_values_are_not_production() -> None:
    assert not classify_production(
        server(), {"APP_ENV": "staging", "NODE_ENV": "development"}
    ).production


def test_marker_production_wins_everywhere() -> None:
    verdict = classify_production(sqlite("/home/me/app/dev.sqlite"), {}, marker="production")
    assert verdict.reasons == ["production because the database itself is marked production"]


def test_development_marker_outranks_names_and_hosts_but_not_app_env() -> None:
    target = server("db.prod.example.com", "app_prod")
    verdict = classify_production(target, {}, marker="development")
    assert not verdict.production
    assert verdict.reasons[0].startswith(
        "not production: the database itself is marked development, which "
        "outranks its names and host"
    )
    assert "db.prod.example.com" in verdict.reasons[0]
    verdict = classify_production(target, {"APP_ENV": "production"}, marker="development")
    assert verdict.production
    assert verdict.reasons == ["production because APP_ENV=production (the invoking environment)"]


def test_sqlite_is_local_production_only_by_marker_app_env_or_path() -> None:
    assert not classify_production(sqlite("/srv/db.example.com/app.sqlite"), {}).production
    assert not classify_production(sqlite("/home/me/live-chat/database/app.sqlite"), {}).production
    verdict = classify_production(sqlite("/srv/app/database/production.sqlite"), {})
    assert verdict.reasons == [
        (
            "production because the SQLite file /srv/app/database/production.sqlite "
            "is named 'production', which matches 'production'"
        )
    ]
    assert classify_production(sqlite("/srv/prod/app.sqlite"), {}).production
    settings = ProductionSettings(sqlite_production_paths=("/var/lib/app/*",))
    verdict = classify_production(sqlite("/var/lib/app/data.db"), {}, settings)
    assert verdict.reasons == [
        "production because the SQLite file /var/lib/app/data.db matches '/var/lib/app/*'"
    ]


def test_a_listed_sqlite_path_counts_through_a_link(tmp_path: Path) -> None:
    """A project's database/app.sqlite (or its database folder) linked into a folder the
    user listed as production is that production file, not a local one."""
    production = tmp_path / "srv" / "keep"
    production.mkdir(parents=True)
    (production / "app.sqlite").touch()
    project = tmp_path / "app" / "database"
    project.mkdir(parents=True)
    (project / "app.sqlite").symlink_to(production / "app.sqlite")
    (project / "shared").symlink_to(production)
    settings = ProductionSettings(sqlite_production_paths=(f"{production}/*",))

    for linked in (project / "app.sqlite", project / "shared" / "app.sqlite"):
        verdict = classify_production(sqlite(str(linked)), {}, settings)
        assert verdict.production, linked
        assert f"is {production / 'app.sqlite'}" in verdict.reasons[0]
    # And a pattern written through a link matches the file where it really is.
    linked_settings = ProductionSettings(sqlite_production_paths=(f"{project}/shared/*",))
    real = sqlite(str(production / "app.sqlite"))
    assert classify_production(real, {}, linked_settings).production
    assert not classify_production(sqlite(str(tmp_path / "x.sqlite")), {}, settings).production


def test_unix_socket_and_no_host_are_local() -> None:
    assert not classify_production(server(None, socket="/run/postgresql"), {}).production
    verdict = classify_production(server(None), {})
    assert "it has no host" in verdict.reasons[0]


def test_configurable_settings() -> None:
    settings = ProductionSettings(
        name_patterns=("prd",),
        development_hosts=("*.corp.internal",),
        single_label_hosts_are_development=False,
        production_hosts=("db1.corp.internal",),
        app_env_variables=("STAGE",),
        production_values=("live",),
    )
    assert not classify_production(server("dev.corp.internal", "app_prod"), {}, settings).production
    assert classify_production(server("db"), {}, settings).production
    assert classify_production(server("127.0.0.1", "shop_prd"), {}, settings).production
    verdict = classify_production(server("db1.corp.internal"), {}, settings)
    assert verdict.reasons == [
        (
            "production because the host db1.corp.internal is listed as a "
            "production host ('db1.corp.internal')"
        )
    ]
    assert classify_production(server(), {"STAGE": "live"}, settings).production
    assert not classify_production(server(), {"APP_ENV": "production"}, settings).production
    assert classify_production(server(), {}, ProductionSettings(every_database=True)).production


def test_project_marking() -> None:
    facts = TargetFacts(marked=[".dbguard.toml marks database[0] production"])
    verdict = classify_production(server(), {}, facts=facts, marker="development")
    assert verdict.reasons == ["production because .dbguard.toml marks database[0] production"]


def test_settings_reject_unknown_keys_and_empty_patterns() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ProductionSettings.model_validate({"disable": True})
    with pytest.raises(ValidationError):
        ProductionSettings(name_patterns=("",))


def test_every_reason_is_plain_words() -> None:
    facts = TargetFacts(app_env=[Setting("RAILS_ENV", "production", "config/database.yml")])
    verdict = classify_production(
        server("prod-db.example.com", "live"), {"NODE_ENV": "prod"}, facts=facts
    )
    assert verdict.production
    assert all(r.startswith("production because ") for r in verdict.reasons)
    assert len(verdict.reasons) == len(set(verdict.reasons)) == 5
    assert str(verdict) == "; ".join(verdict.reasons)


def test_a_sqlite_file_at_the_project_root_is_not_judged_by_the_project_folder_name() -> None:
    # Django's stock db.sqlite3, in a checkout whose folder says "live"; Prisma's dev.db
    # beside prisma/ in "prod-tools".
    for root, path in (("/home/me/live-chat", "db.sqlite3"), ("/w/prod-tools", "dev.db")):
        target = sqlite(f"{root}/{path}")
        assert not classify_production(target, {}, project_root=root).production
        assert classify_production(target, {}).production  # without the root: cautious
    # A folder inside the project still speaks for its data.
    inside = sqlite("/home/me/app/storage/prod/app.db")
    assert classify_production(inside, {}, project_root="/home/me/app").production

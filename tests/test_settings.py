"""Settings: defaults, every variable read, errors that name the variable, the tenants file."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from system.errors import SettingsError
from system.settings import (
    Settings,
    Tenant,
    env_names,
    environment_of,
    insecure_settings,
    load_settings,
    misspelled_variables,
)

TENANTS_TOML = """
[[tenant]]
company_id = 962302
phone_number_id = "106540352242922"
name = "Barbershop on Arbat"
timezone = "Europe/Moscow"

[[tenant]]
company_id = 1000
phone_number_id = "200000000000001"
name = "Barbershop in Novosibirsk"
timezone = "Asia/Novosibirsk"

[[tenant]]
company_id = 1001
phone_number_id = 200000000000002
name = "Barbershop in Kazan"
"""


@pytest.fixture
def tenants_file(tmp_path: Path) -> Callable[[str], str]:
    """Write a tenants TOML file; returns its path as the variable's value."""

    def write(text: str) -> str:
        path = tmp_path / "tenants.toml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


def settings_error(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    return str(caught.value)


def test_defaults() -> None:
    s = load_settings({})
    assert s.redis_url is None
    assert (s.batch_timeout_ms, s.max_batch_size, s.batch_ttl_s) == (9000, 10, 600)
    assert s.default_company_id == 962302
    assert s.tenants_file is None
    assert s.webhook_secret is None and s.stats_token is None
    assert s.rate_limit_allowlist == frozenset()
    assert (s.redis_prefix, s.redis_shards, s.max_attempts) == ("aiadmin", 1, 5)
    assert (s.log_level, s.log_json, s.default_region) == ("INFO", True, "RU")
    assert s.tenants == (Tenant(company_id=962302, phone_number_id=None, name="Салон", timezone="Europe/Moscow"),)


def test_an_explicit_mapping_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIADMIN_BATCH_TIMEOUT_MS", "1234")
    assert load_settings({}).batch_timeout_ms == 9000
    assert load_settings().batch_timeout_ms == 1234


@pytest.mark.parametrize(
    ("env", "value", "attr", "expected"),
    [
        ("REDIS_URL", "redis://cache:6379/0", "redis_url", "redis://cache:6379/0"),
        ("AIADMIN_BATCH_TIMEOUT_MS", "2500", "batch_timeout_ms", 2500),
        ("AIADMIN_MAX_BATCH_SIZE", "3", "max_batch_size", 3),
        ("AIADMIN_DEFAULT_COMPANY_ID", "42", "default_company_id", 42),
        ("AIADMIN_RATE_LIMIT_GLOBAL_PER_S", "0", "rate_limit_global_per_s", 0),
        ("AIADMIN_REDIS_SHARDS", "16", "redis_shards", 16),
        ("AIADMIN_VISIBILITY_TIMEOUT_S", "12.5", "visibility_timeout_s", 12.5),
        ("AIADMIN_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("AIADMIN_LOG_JSON", "false", "log_json", False),
        ("AIADMIN_DEFAULT_REGION", "kz", "default_region", "KZ"),
        ("AIADMIN_REDIS_PREFIX", "test", "redis_prefix", "test"),
    ],
)
def test_each_variable_is_read(env: str, value: str, attr: str, expected: object) -> None:
    assert getattr(load_settings({env: value}), attr) == expected


def test_every_field_has_a_variable_and_a_description() -> None:
    names = env_names()
    for name, info in Settings.model_fields.items():
        assert names[name] in {"REDIS_URL"} or names[name].startswith("AIADMIN_")
        assert info.description, name


def test_secrets_are_read_and_an_empty_one_is_unset() -> None:
    s = load_settings(
        {
            "AIADMIN_WEBHOOK_SECRET": "gw-secret",
            "AIADMIN_WHATSAPP_APP_SECRET": "app-secret",
            "AIADMIN_WHATSAPP_VERIFY_TOKEN": "",
            "AIADMIN_STATS_TOKEN": "  ",
        }
    )
    assert s.webhook_secret is not None and s.webhook_secret.get_secret_value() == "gw-secret"
    assert s.whatsapp_app_secret is not None and s.whatsapp_app_secret.get_secret_value() == "app-secret"
    assert s.whatsapp_verify_token is None
    assert s.stats_token is None
    assert "gw-secret" not in repr(s)


def test_redis_url_is_read_without_the_prefix() -> None:
    assert load_settings({"AIADMIN_REDIS_URL": "redis://prefixed"}).redis_url is None
    assert load_settings({"REDIS_URL": ""}).redis_url is None


def test_allowlist_is_normalized() -> None:
    s = load_settings({"AIADMIN_RATE_LIMIT_ALLOWLIST": "+7 (900) 123-45-67, 89001234568,,79001234569@c.us"})
    assert s.rate_limit_allowlist == frozenset({"79001234567", "79001234568", "79001234569"})


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"AIADMIN_BATCH_TIMEOUT_MS": "abc"}, "AIADMIN_BATCH_TIMEOUT_MS: Input should be a valid integer"),
        ({"AIADMIN_BATCH_TIMEOUT_MS": "0"}, "AIADMIN_BATCH_TIMEOUT_MS: Input should be greater than 0"),
        (
            {"AIADMIN_MAX_BATCH_SIZE": "0"},
            "AIADMIN_MAX_BATCH_SIZE: Input should be greater than or equal to 1",
        ),
        ({"AIADMIN_MAX_BATCH_SIZE": "1001"}, "AIADMIN_MAX_BATCH_SIZE"),
        ({"AIADMIN_REDIS_SHARDS": "0"}, "AIADMIN_REDIS_SHARDS"),
        ({"AIADMIN_LOG_LEVEL": "LOUD"}, "AIADMIN_LOG_LEVEL"),
        ({"AIADMIN_DEFAULT_REGION": "XX"}, "AIADMIN_DEFAULT_REGION: unknown region"),
        (
            {"AIADMIN_RATE_LIMIT_ALLOWLIST": "79001234567,not-a-phone"},
            "AIADMIN_RATE_LIMIT_ALLOWLIST: 'not-a-phone'",
        ),
        ({"AIADMIN_RATE_LIMIT_ALLOWLIST": "1203630252@g.us"}, "group chats are not supported"),
        ({"AIADMIN_TENANTS": "/nonexistent/tenants.toml"}, "AIADMIN_TENANTS: cannot read"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], words: str) -> None:
    assert words in settings_error(env)


def test_every_bad_variable_is_reported() -> None:
    message = settings_error({"AIADMIN_BATCH_TIMEOUT_MS": "0", "AIADMIN_MAX_BATCH_SIZE": "0"})
    assert "AIADMIN_BATCH_TIMEOUT_MS" in message and "AIADMIN_MAX_BATCH_SIZE" in message
    assert "batch_timeout_ms" not in message


def test_visibility_timeout_must_fit_twice_in_the_batch_ttl() -> None:
    message = settings_error({"AIADMIN_VISIBILITY_TIMEOUT_S": "300", "AIADMIN_BATCH_TTL_S": "600"})
    assert "AIADMIN_VISIBILITY_TIMEOUT_S" in message and "AIADMIN_BATCH_TTL_S" in message
    assert load_settings({"AIADMIN_VISIBILITY_TIMEOUT_S": "299", "AIADMIN_BATCH_TTL_S": "600"})


def test_a_turn_record_must_outlive_a_queued_job() -> None:
    message = settings_error({"AIADMIN_TURN_TTL_S": "599", "AIADMIN_BATCH_TTL_S": "600"})
    assert "AIADMIN_TURN_TTL_S" in message and "AIADMIN_BATCH_TTL_S" in message
    short = load_settings({"AIADMIN_TURN_TTL_S": "600", "AIADMIN_DIALOG_TTL_S": "300", "AIADMIN_MESSAGES_TTL_S": "900"})
    assert (short.retention.turn_s, short.retention.dialog_s, short.retention.messages_s) == (600, 300, 900)
    assert load_settings({}).retention.preferences_s == 90 * 24 * 3600


def test_settings_are_frozen() -> None:
    s = load_settings({})
    with pytest.raises(ValueError, match="frozen"):
        s.batch_timeout_ms = 1  # type: ignore[misc]


def test_make_settings_fixture_builds_from_keywords(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(batch_timeout_ms=100).batch_timeout_ms == 100


# --- tenants --------------------------------------------------------------------------------------------


def test_tenants_load_from_toml(tenants_file: Callable[[str], str]) -> None:
    s = load_settings({"AIADMIN_TENANTS": tenants_file(TENANTS_TOML)})
    assert [t.company_id for t in s.tenants] == [962302, 1000, 1001]
    assert s.tenants[1].timezone == "Asia/Novosibirsk"
    assert s.tenants[2].timezone == "Europe/Moscow"
    assert s.tenants[2].phone_number_id == "200000000000002"
    assert s.tenant_for_phone_number_id("200000000000001") == s.tenants[1]
    assert s.tenant_for_phone_number_id("999") is None
    assert s.tenant_for_company(1001) == s.tenants[2]
    assert s.tenant_for_company(5) is None


def test_without_a_file_the_default_tenant_answers_any_phone_number_id() -> None:
    s = load_settings({"AIADMIN_DEFAULT_COMPANY_ID": "77"})
    assert s.tenant_for_phone_number_id("anything") == s.tenants[0]
    assert s.tenant_for_company(77) == s.tenants[0]
    assert s.tenant_for_company(962302) is None


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[[tenant]\ncompany_id = 1", "is not valid TOML"),
        ("", "defines no [[tenant]] tables"),
        ("[[tenant]]\nname = 'A'\n", "tenant[0]: company_id: Field required"),
        ("[[tenant]]\ncompany_id = 1\n", "tenant[0]: name: Field required"),
        (
            "[[tenant]]\ncompany_id = 1\nname = 'A'\n[[tenant]]\ncompany_id = 1\nname = 'B'\n",
            "tenant[1].company_id: duplicate company_id 1 (already used by tenant[0])",
        ),
        (
            "[[tenant]]\ncompany_id = 1\nname = 'A'\nphone_number_id = '5'\n"
            "[[tenant]]\ncompany_id = 2\nname = 'B'\nphone_number_id = '5'\n",
            "tenant[1].phone_number_id: duplicate phone_number_id",
        ),
        (
            "[[tenant]]\ncompany_id = 1\nname = 'A'\ntimezone = 'Mars/Olympus'\n",
            "tenant[0]: timezone: unknown time zone",
        ),
        ("[[tenant]]\ncompany_id = 1\nname = 'A'\ncolour = 'red'\n", "tenant[0]: colour: Extra inputs"),
    ],
)
def test_bad_tenants_file_names_the_variable_and_the_entry(
    tenants_file: Callable[[str], str], toml: str, words: str
) -> None:
    message = settings_error({"AIADMIN_TENANTS": tenants_file(toml)})
    assert message.startswith("AIADMIN_TENANTS")
    assert words in message


# --- issue 12: production vs development, host and port, Redis URL shape, misspellings ----------------------


def test_environment_host_and_port_are_read() -> None:
    s = load_settings({"AIADMIN_ENV": "production", "AIADMIN_HOST": "0.0.0.0", "AIADMIN_PORT": "9000"})
    assert (s.env, s.host, s.port) == ("production", "0.0.0.0", 9000)
    defaults = load_settings({})
    assert (defaults.env, defaults.host, defaults.port) == (None, "127.0.0.1", 8080)


def test_an_unset_environment_takes_the_commands_default() -> None:
    assert environment_of(load_settings({}), default="production") == "production"
    assert environment_of(load_settings({"AIADMIN_ENV": "development"}), default="production") == "development"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"AIADMIN_ENV": "prod"}, "AIADMIN_ENV: Input should be 'production' or 'development'"),
        ({"AIADMIN_PORT": "65536"}, "AIADMIN_PORT"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL: expected a redis://, rediss:// or unix:// URL"),
        ({"REDIS_URL": "http://cache:6379/0"}, "REDIS_URL: expected a redis://"),
        ({"REDIS_URL": "redis://cache:99999/0"}, "REDIS_URL: not a valid URL"),
        ({"REDIS_URL": "redis://cache:6379/zero"}, "REDIS_URL: the database must be a number"),
        ({"REDIS_URL": "redis://:6379/0"}, "REDIS_URL: the URL names no host"),
    ],
)
def test_a_bad_environment_port_or_redis_url_names_the_variable(env: dict[str, str], words: str) -> None:
    assert words in settings_error(env)


@pytest.mark.parametrize("url", ["redis://cache:6379/0", "rediss://user:pw@cache:6380", "unix:///run/redis.sock"])
def test_usable_redis_urls_are_accepted(url: str) -> None:
    assert load_settings({"REDIS_URL": url}).redis_url == url


def test_every_inconsistent_pair_is_reported_at_once() -> None:
    message = settings_error(
        {
            "AIADMIN_VISIBILITY_TIMEOUT_S": "400",
            "AIADMIN_RETRY_BACKOFF_BASE_S": "10",
            "AIADMIN_RETRY_BACKOFF_MAX_S": "5",
            "AIADMIN_HEARTBEAT_STALE_S": "1",
        }
    )
    for variable in ("AIADMIN_BATCH_TTL_S", "AIADMIN_RETRY_BACKOFF_MAX_S", "AIADMIN_HEARTBEAT_STALE_S"):
        assert variable in message


def test_load_settings_never_enforces_production_by_itself() -> None:
    # The simulator, the QA harness, the load runner and the benchmarks build settings without secrets.
    s = load_settings({"AIADMIN_ENV": "production"})
    assert s.webhook_secret is None and s.redis_url is None


def test_insecure_settings_name_each_unset_secret_and_the_missing_redis() -> None:
    problems = insecure_settings(load_settings({}), serves_http=True, sends_replies=True)
    assert [p.split(" ", 1)[0] for p in problems] == [
        "REDIS_URL",
        "AIADMIN_WEBHOOK_SECRET",
        "AIADMIN_WHATSAPP_APP_SECRET",
        "AIADMIN_STATS_TOKEN",
        "AIADMIN_WHATSAPP_PHONE_NUMBER_ID",
    ]


def test_a_secured_deployment_has_no_insecure_settings() -> None:
    s = load_settings(
        {
            "REDIS_URL": "redis://cache:6379/0",
            "AIADMIN_WEBHOOK_SECRET": "a",
            "AIADMIN_WHATSAPP_APP_SECRET": "b",
            "AIADMIN_STATS_TOKEN": "c",
            "AIADMIN_WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
        }
    )
    assert insecure_settings(s, serves_http=True, sends_replies=True) == []


def test_only_the_routes_and_the_sender_a_process_runs_are_checked() -> None:
    s = load_settings({"REDIS_URL": "redis://cache:6379/0"})
    assert insecure_settings(s, serves_http=False, sends_replies=False) == []
    gateway = load_settings({"REDIS_URL": "redis://cache:6379/0", "AIADMIN_WHATSAPP_TRANSPORT": "gateway"})
    assert insecure_settings(gateway, serves_http=False, sends_replies=True) == []


def test_a_misspelled_variable_names_the_closest_setting() -> None:
    found = misspelled_variables(
        {
            "AIADMIN_REDIS_URL": "redis://cache",
            "AIADMIN_STATS_TOKN": "t",
            "AIADMIN_BATCH_TIMEOUT": "100",
            "AIADMIN_QQQQQQ": "1",
            "AIADMIN_LOG_LEVEL": "INFO",
            "aiadmin_port": "80",  # the settings read names case-insensitively
            "AIADMIN_TEST_REDIS_URL": "redis://127.0.0.1/15",  # the tests' own variable
            "PATH": "/usr/bin",
        }
    )
    assert found == {
        "AIADMIN_BATCH_TIMEOUT": "AIADMIN_BATCH_TIMEOUT_MS",
        "AIADMIN_QQQQQQ": None,
        "AIADMIN_REDIS_URL": "REDIS_URL",
        "AIADMIN_STATS_TOKN": "AIADMIN_STATS_TOKEN",
    }


def test_no_variable_the_readme_names_is_taken_for_a_misspelling() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    named = {name: "1" for name in re.findall(r"AIADMIN_[A-Z0-9_]*[A-Z0-9]", readme)}
    assert misspelled_variables(named) == {}

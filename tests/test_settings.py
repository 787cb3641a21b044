"""Settings: defaults, every variable read, errors that name the variable, the tenants file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from system.settings import Settings, SettingsError, Tenant, env_names, load_settings

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

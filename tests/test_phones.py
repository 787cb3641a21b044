"""Phone normalization: every accepted form, every refusal, and properties over random formatting."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from system.phones import (
    PhoneError,
    is_business_scoped_user_id,
    mask_phone,
    normalize_phone,
    normalize_wa_id,
)

CANONICAL = "79001234567"


@pytest.mark.parametrize(
    "raw",
    [
        "+7 (900) 123-45-67",
        "89001234567",
        "8 (900) 123-45-67",
        "79001234567",
        "+79001234567",
        "79001234567@c.us",
        "79001234567@s.whatsapp.net",
        "79001234567:12@s.whatsapp.net",
        " +7 900 123 45 67 ",
        "7.900.123.45.67",
    ],
)
def test_accepted_forms_normalize_to_e164_digits(raw: str) -> None:
    assert normalize_phone(raw) == CANONICAL


def test_foreign_numbers_keep_their_country_code() -> None:
    assert normalize_phone("+49 151 12345678") == "4915112345678"
    assert normalize_phone("4915112345678@c.us") == "4915112345678"


def test_trunk_8_is_national_only_in_russia() -> None:
    with pytest.raises(PhoneError):
        normalize_phone("89001234567", default_region="DE")


@pytest.mark.parametrize(
    ("raw", "reason", "words"),
    [
        ("120363025246125486@g.us", "group_sender", "group chats are not supported"),
        ("79001234567-1591234567@g.us", "group_sender", "group chats are not supported"),
        ("status@broadcast", "broadcast", "broadcast"),
        ("1591234567@broadcast", "broadcast", "broadcast"),
        ("", "invalid", "empty"),
        ("   ", "invalid", "empty"),
        ("hello", "invalid", "not a phone number"),
        ("+7 900 CALL-ME", "invalid", "not a phone number"),
        ("12345", "invalid", "too short"),
        ("+7900123456789012", "invalid", "too long"),
        ("+7 000 000 00 00", "invalid", "not a phone number"),
        ("79001234567@example.com", "invalid", "domain"),
        ("7" * 100, "invalid", "too long"),
        ("7+9001234567", "invalid", "not a phone number"),
    ],
)
def test_refused_forms_name_the_reason(raw: str, reason: str, words: str) -> None:
    with pytest.raises(PhoneError) as caught:
        normalize_phone(raw)
    assert caught.value.reason == reason
    assert words in str(caught.value)


def test_phone_error_is_a_value_error() -> None:
    assert issubclass(PhoneError, ValueError)


def test_non_string_is_refused() -> None:
    with pytest.raises(PhoneError, match="not a phone number"):
        normalize_phone(79001234567)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("phone", "masked"),
    [("79001234567", "79*******67"), ("4915112345678", "49*********78"), ("1234", "****"), ("", "")],
)
def test_mask_keeps_two_digits_at_each_end(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


# --- properties -----------------------------------------------------------------------------------------

# Regions whose mobile numbers do not start with 8, so the bare-digit form is never read as national.
_REGIONS = ["RU", "DE", "US", "GB", "BR", "IN", "KZ", "FR", "IT", "ES", "TR", "UA", "AE"]
_SEPARATORS = st.sampled_from(["", "", "", " ", "-", "(", ")", "  "])


def _example(region: str) -> str:
    number = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).removeprefix("+")


@st.composite
def formatted_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """(canonical digits, the same number with random separators, "+" and "@c.us")."""
    digits = _example(draw(st.sampled_from(_REGIONS)))
    body = "".join(d + draw(_SEPARATORS) for d in digits).rstrip()
    prefix = draw(st.sampled_from(["", "+", " +", "+ "]))
    suffix = draw(st.sampled_from(["", "@c.us", "@s.whatsapp.net", " "]))
    return digits, prefix + body + suffix


@given(formatted_numbers())
def test_any_formatting_of_a_valid_number_gives_the_same_digits(case: tuple[str, str]) -> None:
    digits, formatted = case
    assert normalize_phone(formatted) == digits


@given(formatted_numbers())
def test_normalize_is_idempotent(case: tuple[str, str]) -> None:
    once = normalize_phone(case[1])
    assert normalize_phone(once) == once


@given(st.text(alphabet="0123456789+ -", max_size=40))
def test_mask_never_reveals_more_than_four_digits(phone: str) -> None:
    masked = mask_phone(phone)
    assert len(masked) == len(phone)
    assert sum(ch.isdigit() for ch in masked) <= 4


# --- WhatsApp Cloud API sender ids -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "wa_id",
    [
        "5215512345678",  # a Mexican mobile as WhatsApp sends it: with the old "1" after 52
        "15550783881",  # Meta's test range
        "16505551234",
        "79001234567",
    ],
)
def test_real_whatsapp_ids_that_fail_the_validity_gate_are_accepted(wa_id: str) -> None:
    assert normalize_wa_id(wa_id) == wa_id
    assert normalize_wa_id("+" + wa_id) == wa_id


@pytest.mark.parametrize("raw", ["", "hello", "12345", "7" * 16, "9991234567", "0001234567", "7900 123 45 67"])
def test_wa_id_that_is_not_digits_with_a_country_code_is_refused(raw: str) -> None:
    with pytest.raises(PhoneError, match="not a WhatsApp id"):
        normalize_wa_id(raw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("US.13491208655302741918", True),
        ("BR.1502576394655843", True),
        ("US.ENT.11815799212886844830", True),
        ("79001234567", False),
        ("us.1349", False),
        ("US.", False),
        ("US.12-34", False),
        ("US." + "1" * 129, False),
    ],
)
def test_business_scoped_user_ids_are_told_apart_from_phones(value: str, expected: bool) -> None:
    assert is_business_scoped_user_id(value) is expected

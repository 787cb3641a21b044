"""Phone numbers and WhatsApp sender addresses, reduced to one canonical form: E.164 digits without "+"."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

# A conversation's fragments repeat its sender within minutes, so the cache need only hold the senders writing now.
# At 16,384 entries an hour's soak of ~9,000 new clients kept filling it (about 0.7 KB a sender, two caches): the
# API's RSS grew 10.4% after its first 5 minutes.
_PARSE_CACHE_SIZE = 4_096
# E.164 allows at most 15 digits; no valid number anywhere has fewer than 7.
_MIN_DIGITS = 7
_MAX_DIGITS = 15
# Longer inputs are refused before the cache, so one hostile sender cannot fill it with huge keys.
_MAX_RAW_CHARS = 64
_PERSONAL_DOMAINS = frozenset({"c.us", "s.whatsapp.net"})
_GROUP_DOMAIN = "g.us"
_BROADCAST_DOMAIN = "broadcast"
# Digits with the usual separators and an optional leading "+"; letters are never accepted, although
# phonenumbers would read vanity numbers such as 1-800-FLOWERS.
_PHONE_SHAPE = re.compile(r"\+?[\d\s\-().]+")
_NON_DIGITS = re.compile(r"\D")
_MASK_KEEP = 2  # digits kept at each end by mask_phone
_MASK_MIN_LEN = 8  # shorter strings are masked entirely: keeping 4 of them would reveal too much
# Meta's business-scoped user id (BSUID): a two-letter ISO country code, a period, up to 128 letters and
# digits (US.13491208655302741918); a parent BSUID has "ENT." after the country (US.ENT.11815799212886844830).
_BSUID = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}")
_WA_ID_SHAPE = re.compile(r"\+?\d{7,15}")


class PhoneError(ValueError):
    """A sender address that is not a usable personal phone number; `reason` says why."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason  # invalid | group_sender | broadcast


def normalize_phone(raw: str, *, default_region: str = "RU") -> str:
    """The canonical form of a phone number or WhatsApp JID: E.164 digits without "+"."""
    if not isinstance(raw, str):
        raise PhoneError("not a phone number: expected a string")
    if len(raw) > _MAX_RAW_CHARS:
        raise PhoneError(f"not a phone number: too long ({len(raw)} characters)")
    return _normalize_cached(raw, default_region)


@lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _normalize_cached(raw: str, default_region: str) -> str:
    number = _strip_jid(raw.strip())
    _check_shape(number)
    parsed = _parse(number, default_region)
    if not phonenumbers.is_valid_number(parsed):
        raise PhoneError("not a phone number: no such number is in use")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164).removeprefix("+")


def is_business_scoped_user_id(value: str) -> bool:
    """True for a WhatsApp business-scoped user id (a username user's address), which is not a phone."""
    return _BSUID.fullmatch(value) is not None


def normalize_wa_id(raw: str) -> str:
    """A WhatsApp Cloud API sender id (`from`, `wa_id`) as E.164 digits without "+": parsed, not validated.

    WhatsApp already vouches for the number, and its ids are not always numbers phonenumbers calls valid
    (Mexican mobiles arrive as 521..., test ranges such as 1555...): only the shape and the country code
    are checked.
    """
    if not isinstance(raw, str) or not _WA_ID_SHAPE.fullmatch(raw.strip()):
        raise PhoneError(f"not a WhatsApp id: expected {_MIN_DIGITS} to {_MAX_DIGITS} digits")
    digits = raw.strip().removeprefix("+")
    return _wa_id_cached(digits)


@lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _wa_id_cached(digits: str) -> str:
    try:
        phonenumbers.parse("+" + digits, None)  # raises when no country calling code starts the digits
    except phonenumbers.NumberParseException as exc:
        raise PhoneError("not a WhatsApp id: no known country calling code") from exc
    return digits


def _strip_jid(address: str) -> str:
    """The local part of a personal WhatsApp JID; group and broadcast JIDs are refused."""
    if "@" not in address:
        return address
    local, _, domain = address.partition("@")
    domain = domain.strip().lower()
    if domain == _GROUP_DOMAIN:
        raise PhoneError("group chats are not supported", reason="group_sender")
    if domain == _BROADCAST_DOMAIN:
        raise PhoneError("broadcast messages are not supported", reason="broadcast")
    if domain not in _PERSONAL_DOMAINS:
        raise PhoneError(f"not a phone number: unknown WhatsApp address domain {domain!r}")
    # Multi-device JIDs carry the device after a colon: 79001234567:12@s.whatsapp.net.
    return local.partition(":")[0].strip()


def _check_shape(number: str) -> None:
    if not number:
        raise PhoneError("not a phone number: empty")
    if not _PHONE_SHAPE.fullmatch(number):
        raise PhoneError("not a phone number: only digits, spaces, '-', '(', ')' and a leading '+' are allowed")
    digits = len(_NON_DIGITS.sub("", number))
    if digits < _MIN_DIGITS:
        raise PhoneError(f"not a phone number: too short ({digits} digits)")
    if digits > _MAX_DIGITS:
        raise PhoneError(f"not a phone number: too long ({digits} digits, at most {_MAX_DIGITS})")


def _parse(number: str, default_region: str) -> phonenumbers.PhoneNumber:
    digits = _NON_DIGITS.sub("", number)
    if number.startswith("+"):
        text, region = number, None
    elif default_region == "RU" and len(digits) == 11 and digits.startswith("8"):
        text, region = digits, "RU"  # Russian national format: trunk prefix 8 instead of +7
    else:
        text, region = "+" + digits, None
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise PhoneError("not a phone number: cannot be parsed") from exc


def mask_phone(phone: str) -> str:
    """The phone for logs and stats: first and last 2 characters kept, the rest masked."""
    if len(phone) < _MASK_MIN_LEN:
        return "*" * len(phone)
    hidden = len(phone) - 2 * _MASK_KEEP
    return phone[:_MASK_KEEP] + "*" * hidden + phone[-_MASK_KEEP:]

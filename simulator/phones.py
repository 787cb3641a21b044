"""The simulated clients' phones: distinct valid Russian mobile numbers, reproducible from a seed."""

from __future__ import annotations

import random

import phonenumbers

_MOBILE_CODES = tuple(range(900, 1000))  # Russian mobile codes 9xx; only valid numbers are kept
_MOBILE_TYPES = frozenset({phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE})
_PHONE_TRIES = 1000


class PhonePool:
    """Distinct valid Russian mobile numbers ("79XXXXXXXXX"), reproducible from the seed."""

    def __init__(self, *, seed: int) -> None:
        self._rng = random.Random(seed)
        self._given: set[str] = set()

    def take(self) -> str:
        for _ in range(_PHONE_TRIES):  # bounded: most 9xx numbers are valid, collisions are rare
            phone = f"7{self._rng.choice(_MOBILE_CODES)}{self._rng.randrange(10_000_000):07d}"
            if phone in self._given:
                continue
            parsed = phonenumbers.parse("+" + phone)
            if phonenumbers.is_valid_number(parsed) and phonenumbers.number_type(parsed) in _MOBILE_TYPES:
                self._given.add(phone)
                return phone
        raise RuntimeError(f"no new valid phone in {_PHONE_TRIES} tries")

    @property
    def given(self) -> int:
        return len(self._given)


def russian_mobiles(count: int, *, seed: int = 7) -> list[str]:
    """`count` distinct valid Russian mobile numbers, "79<9 digits>", in a reproducible order."""
    pool = PhonePool(seed=seed)
    return [pool.take() for _ in range(count)]

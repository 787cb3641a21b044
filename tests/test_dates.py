"""Dates in the salon's time zone on the injected clock, and the tools' catalogue matching."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from simulator.clock import VirtualClock
from system.booking.base import Master, Service
from system.turn.dates import DateError, describe_day, parse_day, parse_local_datetime, salon_now
from system.turn.tools import match_master, match_service

JUST_AFTER_MIDNIGHT_MSK = int(datetime(2025, 11, 25, 21, 30, tzinfo=UTC).timestamp() * 1000)  # 00:30 on the 26th


def test_today_just_after_midnight_moscow_is_the_new_day() -> None:
    now = salon_now(VirtualClock(start_ms=JUST_AFTER_MIDNIGHT_MSK), "Europe/Moscow")
    assert (now.date(), now.hour, now.minute) == (date(2025, 11, 26), 0, 30)
    assert parse_day("сегодня", today=now.date()) == date(2025, 11, 26)
    assert parse_day("завтра", today=now.date()) == date(2025, 11, 27)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-11-28", date(2025, 11, 28)),
        ("послезавтра", date(2025, 11, 27)),
        ("28.11", date(2025, 11, 28)),
        ("20.11", date(2026, 11, 20)),  # already past this year: next year
        ("01.02.26", date(2026, 2, 1)),
    ],
)
def test_days_are_read_relative_to_today(text: str, expected: date) -> None:
    assert parse_day(text, today=date(2025, 11, 25)) == expected


def test_unreadable_dates_are_explained() -> None:
    with pytest.raises(DateError, match="ГГГГ-ММ-ДД"):
        parse_day("когда-нибудь", today=date(2025, 11, 25))
    with pytest.raises(DateError, match="нет такой даты"):
        parse_day("31.02.2026", today=date(2025, 11, 25))


def test_local_datetimes_are_in_the_salon_zone() -> None:
    at = parse_local_datetime("2025-11-26T15:00", tz="Europe/Moscow", today=date(2025, 11, 25))
    assert at.isoformat() == "2025-11-26T15:00:00+03:00"
    assert parse_local_datetime("завтра 15:30", tz="Europe/Moscow", today=date(2025, 11, 25)).hour == 15


def test_days_are_named_in_russian() -> None:
    assert describe_day(date(2025, 11, 28)) == "пятница, 28 ноября 2025"


SERVICES = [
    Service(1, "Стрижка машинкой", 800, 800, 30),
    Service(2, "Мужская стрижка", 1500, 1800, 60),
    Service(3, "Оформление бороды", 700, 700, 30),
]


@pytest.mark.parametrize(
    ("wanted", "title"),
    [
        ("стрижка машинкой", "Стрижка машинкой"),
        ("2", "Мужская стрижка"),
        ("бороды", "Оформление бороды"),
        ("машинкой", "Стрижка машинкой"),
    ],
)
def test_services_are_matched_to_the_catalogue(wanted: str, title: str) -> None:
    found = match_service(SERVICES, wanted)
    assert found is not None and found.title == title


@pytest.mark.parametrize("wanted", ["маникюр", "стрижка", ""])
def test_unknown_or_ambiguous_services_are_not_guessed(wanted: str) -> None:
    assert match_service(SERVICES, wanted) is None


@pytest.mark.parametrize("wanted", ["Сергей", "сергею", "Сергея", "10"])
def test_masters_are_matched_in_any_case(wanted: str) -> None:
    found = match_master([Master(10, "Сергей"), Master(11, "Алексей")], wanted)
    assert found is not None and found.id == 10

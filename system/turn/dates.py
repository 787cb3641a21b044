"""Dates and times in the salon's time zone, on the injected clock ("сегодня" at 00:30 is today)."""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from system.clock import Clock

WEEKDAYS = ("понедельник", "вторник", "среда", "четверг", "пятница", "суббота", "воскресенье")
MONTHS_GENITIVE = (
    "января", "февраля", "марта", "апреля", "мая", "июня",
    "июля", "августа", "сентября", "октября", "ноября", "декабря",
)  # fmt: skip
_RELATIVE = {"сегодня": 0, "today": 0, "завтра": 1, "tomorrow": 1, "послезавтра": 2}
_DAY_MONTH = re.compile(r"(\d{1,2})\.(\d{1,2})(?:\.(\d{2,4}))?")
_TIME = re.compile(r"(\d{1,2})[:.](\d{2})")


class DateError(ValueError):
    """A date or time the tools cannot read."""


def salon_now(clock: Clock, tz: str) -> datetime:
    """The clock's now as an aware datetime in the salon's zone."""
    return datetime.fromtimestamp(clock.now_ms() / 1000, tz=ZoneInfo(tz))


def describe_day(day: date) -> str:
    """'среда, 26 ноября 2025' — how the prompt and replies name a date."""
    return f"{WEEKDAYS[day.weekday()]}, {day.day} {MONTHS_GENITIVE[day.month - 1]} {day.year}"


def parse_day(text: str, *, today: date) -> date:
    """ISO 'YYYY-MM-DD', 'DD.MM[.YYYY]', or сегодня/завтра/послезавтра relative to `today`."""
    value = text.strip().lower()
    if value in _RELATIVE:
        return today + timedelta(days=_RELATIVE[value])
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        pass
    match = _DAY_MONTH.fullmatch(value)
    if match:
        day, month, year = int(match[1]), int(match[2]), match[3]
        if year is None:
            candidate = _date(today.year, month, day)
            return candidate if candidate >= today else _date(today.year + 1, month, day)
        return _date(int(year) + (2000 if len(year) == 2 else 0), month, day)
    raise DateError(f"не понимаю дату {text!r}: нужен формат ГГГГ-ММ-ДД")


def parse_local_datetime(text: str, *, tz: str, today: date) -> datetime:
    """'YYYY-MM-DDTHH:MM' (or with a space, seconds or an offset) as an aware datetime in the salon's zone."""
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        day_part, _, time_part = value.replace("T", " ").partition(" ")
        match = _TIME.fullmatch(time_part.strip())
        if not match:
            raise DateError(f"не понимаю дату и время {text!r}: нужен формат ГГГГ-ММ-ДДTЧЧ:ММ") from None
        parsed = datetime.combine(parse_day(day_part, today=today), time(int(match[1]), int(match[2])))
    zone = ZoneInfo(tz)
    return parsed.replace(tzinfo=zone) if parsed.tzinfo is None else parsed.astimezone(zone)


def _date(year: int, month: int, day: int) -> date:
    try:
        return date(year, month, day)
    except ValueError as exc:
        raise DateError(f"нет такой даты: {day:02d}.{month:02d}.{year}") from exc

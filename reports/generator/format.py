"""How the monthly report writes numbers, dates, units and table cells in Russian."""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable, Sequence
from datetime import date

NO_DATA = "нет данных"
DASH = "—"
# A no-break space between thousands keeps "11 244" on one line in a table cell.
NBSP = "\u00a0"

MONTHS_GENITIVE = (
    "января",
    "февраля",
    "марта",
    "апреля",
    "мая",
    "июня",
    "июля",
    "августа",
    "сентября",
    "октября",
    "ноября",
    "декабря",
)

# The benchmarks write units in English; the report speaks Russian.
UNITS = {
    "ms": "мс",
    "s": "с",
    "req/s": "запросов/с",
    "msg/s": "сообщений/с",
    "batches/s": "батчей/с",
    "MB": "МБ",
    "%": "%",
}


def ru_date(day: date) -> str:
    return f"{day.day} {MONTHS_GENITIVE[day.month - 1]} {day.year}"


def dotted(day: date) -> str:
    return day.strftime("%d.%m.%Y")


def next_month(day: date) -> date:
    """The same day a month later, or the month's last day when it is shorter."""
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


# The day of the month `.github/workflows/monthly-report.yml` runs on (cron "0 3 1 * *"; a test keeps them equal).
SCHEDULED_DAY = 1


def next_scheduled_run(day: date) -> date:
    """The workflow's next run after a report of `day`: the scheduled day of the following month."""
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return date(year, month, SCHEDULED_DAY)


def number(value: float | None, *, digits: int | None = None) -> str:
    """A figure with precision that suits its size: 0.63, 48.2, 9 001.1, 6 387 (a whole number stays whole)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NO_DATA
    if digits is None:
        # Lateness hides in the decimals of a 9 001.1 ms timeout, so up to 100 000 one decimal stays.
        digits = 0 if value == int(value) else 2 if abs(value) < 10 else 1 if abs(value) < 100_000 else 0
    text = f"{value:,.{digits}f}"
    return text.replace(",", NBSP)


def count(value: int | None) -> str:
    return NO_DATA if value is None else f"{value:,}".replace(",", NBSP)


def unit(name: str) -> str:
    return UNITS.get(name, name)


UNIT_WORD = re.compile(r"(?<![\w/])(req/s|msg/s|batches/s|ms|MB|s)(?![\w/])")


def ru_units(text: str) -> str:
    """A benchmark's goal in the report's language: `p99 ≤ 5 ms` -> `p99 ≤ 5 мс`."""
    return UNIT_WORD.sub(lambda m: UNITS[m.group(1)], text)


def with_unit(value: float | None, unit_name: str) -> str:
    if value is None:
        return NO_DATA
    shown = unit(unit_name)
    return f"{number(value)}{shown}" if shown == "%" else f"{number(value)} {shown}"


def ms(value: float | None) -> str:
    return with_unit(value, "ms")


def pair_ms(p50: float | None, p99: float | None) -> str:
    if p50 is None and p99 is None:
        return NO_DATA
    return f"{number(p50)} / {number(p99)} мс"


def plural(n: int, forms: tuple[str, str, str]) -> str:
    """Russian plural: 1 сценарий, 2 сценария, 5 сценариев."""
    tail = n % 100
    if 11 <= tail <= 14:
        return forms[2]
    last = n % 10
    return forms[0] if last == 1 else forms[1] if 2 <= last <= 4 else forms[2]


def counted(n: int, forms: tuple[str, str, str]) -> str:
    return f"{count(n)} {plural(n, forms)}"


SCENARIOS = ("сценарий", "сценария", "сценариев")
TURNS = ("ход", "хода", "ходов")
FAILED = ("не прошёл", "не прошли", "не прошли")
SKIPPED = ("пропущен", "пропущено", "пропущено")
REQUESTS = ("запрос", "запроса", "запросов")


def cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    # Only line breaks go: a no-break space inside a number must stay.
    return re.sub(r"\s*[\r\n\t]+\s*", " ", str(text)).strip().replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(cell(value) for value in row) + " |" for row in rows)
    return lines


def enumerate_lines(items: Iterable[str]) -> list[str]:
    return [f"{index}. {item}" for index, item in enumerate(items, start=1)]

"""Dates and times in a Russian client's text, relative to the salon's today (pure functions).

Rules (the nearest reading a barbershop administrator would take):

- a weekday ("в пятницу", "в среду") is the nearest one strictly after today: said on a Wednesday,
  "в среду" is next week's Wednesday (a client who means today says "сегодня");
- "на выходных" is today on a Saturday or Sunday, else the coming Saturday;
- "25 ноября" / "25.11" without a year is this year, or next year when that day has passed;
- a bare hour from 1 to 8 ("в 3", "в 5") is afternoon (15:00, 17:00): the salon is closed at night;
- "после обеда"/"днём" is a window from 13:00, "вечером" from 17:00, "утром" until 12:00;
- of two dates or times without "с" ("запись в пятницу на субботу"), the first is the old one;
- a misspelt day word ("затвра", "пянтицу", "поселзавтра") is read as the day word one typo away (a swapped,
  missing, extra or wrong letter); a word merely like one is unclear, and the day is asked, never assumed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, time, timedelta
from typing import TypeVar

from rapidfuzz import fuzz
from rapidfuzz.distance import OSA

T = TypeVar("T")
MONTH_STEMS = ("январ", "феврал", "март", "апрел", "ма", "июн", "июл", "август", "сентябр", "октябр", "ноябр", "декабр")
_MONTHS_RE = (
    r"(январ\w*|феврал\w*|март\w*|апрел\w*|ма[йяе]\w*|июн\w*|июл\w*|август\w*|сентябр\w*|октябр\w*|ноябр\w*|декабр\w*)"
)
_WEEKDAYS_RE = re.compile(
    r"\b(понедельник|вторник|сред[аыуе]|четверг|пятниц[аыуе]|суббот[аыуе]|воскресень[еяю])\b"
)  # any case form: "в среду", "со среды", "к пятнице"
_HOUR_WORDS = {
    "час": 1, "два": 2, "три": 3, "четыре": 4, "пять": 5, "шесть": 6, "семь": 7, "восемь": 8,
    "девять": 9, "десять": 10, "одиннадцать": 11, "двенадцать": 12,
}  # fmt: skip
# The forms of day words a client writes; a misspelt word is replaced by the nearest of these before parsing.
_DAY_FORMS = (
    "сегодня", "завтра", "послезавтра", "понедельник", "вторник", "среда", "среду", "среды", "четверг",
    "пятница", "пятницу", "пятницы", "суббота", "субботу", "субботы", "воскресенье",
)  # fmt: skip
_DAY_TYPO_MIN_LEN = 5  # shorter words ("сред", "вт") are too near too much
_DAY_UNCLEAR_RATIO = 65  # below it a word is not day-like at all ("стрижку"~"среду" is 50)
_COUNT_WORDS = {"один": 1, "одну": 1, "два": 2, "две": 2, "пару": 2, "три": 3, "четыре": 4, "пять": 5}


@dataclass(frozen=True, slots=True)
class TimeWindow:
    start: time
    end: time

    def __contains__(self, at: time) -> bool:
        return self.start <= at <= self.end


@dataclass(frozen=True, slots=True)
class When:
    """The wanted (new) day and time, the old ones (after "с"), and a time-of-day window."""

    day: date | None = None
    at: time | None = None
    window: TimeWindow | None = None
    from_day: date | None = None
    from_at: time | None = None


def parse_when(t: str, *, today: date) -> When:
    """Dates and times of normalised text (lower case, ё as е)."""
    day, from_day, rest = _dates(t, today)
    at, from_at, window = _times(rest)
    return When(day=day, at=at, window=window, from_day=from_day, from_at=from_at)


def correct_day_words(t: str, *, is_known: Callable[[str], bool]) -> tuple[str, bool]:
    """`t` with misspelt day words replaced by the intended ones, and whether a day-like word stayed unclear.

    A word the dictionary knows (`is_known`: "завтрак", "сорта") is never a typo. One edit (OSA distance, so a
    swapped pair counts once) corrects a word of 5 to 8 letters; two, a longer one ("послезавтра").
    """
    unclear = False

    def fix(m: re.Match[str]) -> str:
        nonlocal unclear
        word = m[0]
        if len(word) < _DAY_TYPO_MIN_LEN or word in _DAY_FORMS or is_known(word):
            return word
        distance, form = min((OSA.distance(word, f), f) for f in _DAY_FORMS)
        if distance <= (1 if len(form) <= 8 else 2):
            return form
        if max(fuzz.ratio(word, f) for f in _DAY_FORMS) >= _DAY_UNCLEAR_RATIO:
            unclear = True
        return word

    return re.sub(r"[а-я]+", fix, t), unclear


def month_number(word: str) -> int | None:
    """1-12 for a month name in any case ("ноября", "май"); None otherwise."""
    w = word.lower()
    if w.startswith("ма") and not w.startswith("март"):
        return 5 if w[2:3] in ("й", "я", "е") else None
    return next((i + 1 for i, stem in enumerate(MONTH_STEMS) if stem != "ма" and w.startswith(stem)), None)


def _dates(t: str, today: date) -> tuple[date | None, date | None, str]:
    """(wanted day, old day after "с"/"со", the text with date phrases blanked for the time parser)."""
    found: list[tuple[int, date, bool]] = []  # (position, day, is_source)
    rest = t

    def take(m: re.Match[str], day: date | None) -> None:
        nonlocal rest
        if day is None:
            return
        before = t[: m.start()].split()
        found.append((m.start(), day, bool(before) and before[-1] in ("с", "со")))
        rest = rest[: m.start()] + " " * (m.end() - m.start()) + rest[m.end() :]

    for m in re.finditer(r"\b(сегодня|послезавтра|завтра)\b", rest):
        take(m, today + timedelta(days={"сегодня": 0, "завтра": 1, "послезавтра": 2}[m[1]]))
    for m in re.finditer(r"\bчерез (\d+|\w+) (дн\w*|день|недел\w*)", rest):
        n = int(m[1]) if m[1].isdigit() else _COUNT_WORDS.get(m[1])
        take(m, None if n is None else today + timedelta(days=n * (7 if m[2].startswith("недел") else 1)))
    for m in re.finditer(r"\bчерез неделю\b", rest):
        take(m, today + timedelta(days=7))
    for m in re.finditer(r"\b(\d{1,2})(?:-?го)?\s+" + _MONTHS_RE + r"(?:\s+(\d{4}))?", rest):
        take(m, _calendar_day(today, int(m[1]), month_number(m[2]), m[3]))
    for m in re.finditer(r"(?<![\d:])\b(\d{1,2})[./](\d{1,2})(?:[./](\d{2,4}))?\b(?![\d:])", rest):
        is_time = rest[: m.start()].endswith("в ") and m[2] in ("00", "15", "30", "45")
        take(m, None if is_time else _calendar_day(today, int(m[1]), int(m[2]), m[3]))
    for m in re.finditer(r"\b(?:на )?(\d{1,2})(?:-?го)? числ\w*|\b(\d{1,2})-го\b", rest):
        take(m, _day_of_month(today, int(m[1] or m[2])))
    for m in re.finditer(r"\b(на|в) выходн\w*", rest):
        take(m, today if today.weekday() >= 5 else today + timedelta(days=5 - today.weekday()))
    for m in re.finditer(r"\bна следующей неделе\b", rest):
        take(m, today + timedelta(days=7 - today.weekday()))
    for m in _WEEKDAYS_RE.finditer(rest):
        weekday = next(
            i for i, stem in enumerate(("пон", "вто", "сре", "чет", "пят", "суб", "вос")) if m[1].startswith(stem)
        )
        take(m, today + timedelta(days=(weekday - today.weekday() - 1) % 7 + 1))
    found.sort()
    return (*_target_and_source([(d, source) for _, d, source in found]), rest)


def _target_and_source(found: list[tuple[T, bool]]) -> tuple[T | None, T | None]:
    """The wanted value is the last one said; the old one follows "с", else is the first of two ("запись в пятницу
    на субботу")."""
    targets = [value for value, source in found if not source]
    sources = [value for value, source in found if source]
    if not sources and len(targets) >= 2:
        sources = targets[:1]
    return (targets[-1] if targets else None), (sources[0] if sources else None)


def _calendar_day(today: date, day: int, month: int | None, year: str | None) -> date | None:
    if month is None:
        return None
    try:
        if year:
            return date(int(year) + (2000 if len(year) == 2 else 0), month, day)
        candidate = date(today.year, month, day)
        return candidate if candidate >= today else date(today.year + 1, month, day)
    except ValueError:
        return None


def _day_of_month(today: date, day: int) -> date | None:
    try:
        if day >= today.day:
            return today.replace(day=day)
        first_next = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
        return first_next.replace(day=day)
    except ValueError:
        return None


def _times(t: str) -> tuple[time | None, time | None, TimeWindow | None]:
    """(wanted time, old time after "с", a window) from text whose dates are blanked."""
    exact: list[tuple[int, time, bool]] = []
    window: TimeWindow | None = None
    pattern = (
        r"\b(?:(в|к|на|с|со|после|до|около|часов в)\s+)?(\d{1,2}|" + "|".join(_HOUR_WORDS) + r")"
        r"\b(?:[:.](\d{2}))?(?:\s*час\w*)?(?:\s+(утра|дня|вечера|ночи))?(?![\d.:])(?!\s*(?:мин|руб|₽|дн|недел|%))"
    )
    for m in re.finditer(pattern, t):
        prep, hour_text, minutes, part = m[1], m[2], m[3], m[4]
        if not (prep or minutes or part):
            continue  # a bare number is a count or a price, not a time
        if prep in ("на",) and not (minutes or part):
            continue  # "на 2 человека"
        said = int(hour_text) if hour_text.isdigit() else _HOUR_WORDS[hour_text]
        hour = _hour(said, part, has_minutes=bool(minutes))
        if hour is None or (minutes and int(minutes) > 59):
            continue
        at = time(hour, int(minutes or 0))
        if prep == "после":
            window = TimeWindow(at, time(23, 59))
        elif prep == "до":
            window = TimeWindow(time(0, 0), at)
        else:
            exact.append((m.start(), at, prep in ("с", "со")))
    if re.search(r"\bв полдень\b", t):
        exact.append((t.index("полдень"), time(12, 0), False))
    if window is None:
        window = _window(t)
    return (*_target_and_source([(at, source) for _, at, source in sorted(exact)]), window)


def _hour(hour: int, part: str | None, *, has_minutes: bool) -> int | None:
    if hour > 23:
        return None
    if part in ("дня", "вечера") and hour < 12:
        return hour + 12
    if part == "ночи" and hour == 12:
        return 0
    if part is None and not has_minutes and 1 <= hour <= 8:
        return hour + 12  # "в 3" at a barbershop is 15:00
    return hour


def _window(t: str) -> TimeWindow | None:
    if re.search(r"\bпосле обед\w*|\bднем\b", t):
        return TimeWindow(time(13, 0), time(23, 59))
    if re.search(r"\bвечер\w*", t) or re.search(r"\bпосле работы\b", t):
        return TimeWindow(time(17, 0), time(23, 59))
    if re.search(r"\bутр[оа]м?\b|\bс утра\b|\bутречком\b", t):
        return TimeWindow(time(0, 0), time(12, 0))
    return None

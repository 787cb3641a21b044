"""How a simulated client reads the bot's reply: offered times, what was booked, what is asked.

Written for the ways a real model phrases a reply, not for the fake LLM's templates: dates as "сегодня",
"в пятницу", "14 января", "14.01"; times as "17:00", "17.30", "в 17 ч", "в 5 вечера"; numbered options; yes/no
questions; confirmations with or without the ✅. It imports nothing from the system or the fake LLM: a user
understands the reply on its own, as a person would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, time, timedelta
from enum import StrEnum

_MONTHS = ("январ", "феврал", "март", "апрел", "ма", "июн", "июл", "август", "сентябр", "октябр", "ноябр", "декабр")
_WEEKDAY_STEMS = ("понедельн", "вторн", "сред", "четверг", "пятниц", "суббот", "воскресень")
_WEEKDAY_SHORT = ("пн", "вт", "ср", "чт", "пт", "сб", "вс")
_RELATIVE = {"сегодня": 0, "завтра": 1, "послезавтра": 2}
_QUARTERS = {"00", "15", "30", "45"}
_DAY_PART = {"утра": 0, "дня": 12, "вечера": 12, "ночи": 0}

_DATE = re.compile(
    r"\b(?P<rel>сегодня|послезавтра|завтра)\b"
    r"|\b(?P<dm>\d{1,2})\s+(?P<month>"
    r"январ[а-я]*|феврал[а-я]*|март[а-я]*|апрел[а-я]*|ма[яй]|июн[а-я]*|июл[а-я]*|август[а-я]*|сентябр[а-я]*"
    r"|октябр[а-я]*|ноябр[а-я]*|декабр[а-я]*|янв|фев|мар|апр|авг|сен|сент|окт|ноя|дек)\b"
    r"|\b(?P<wd>понедельн[а-я]*|вторн[а-я]*|сред[ауы]|четверг[а-я]*|пятниц[а-я]*|суббот[а-я]*|воскресень[а-я]*)"
    r"|\b(?P<short>пн|вт|ср|чт|пт|сб|вс)\b"
    r"|\b(?P<d>\d{1,2})[./](?P<m>\d{1,2})(?:[./](?:\d{2}|\d{4}))?\b"
)
_TIME = re.compile(
    r"(?<![\d.:/])(?P<h>[01]?\d|2[0-3])[:.](?P<mm>[0-5]\d)(?![\d:/]|\.\d)"
    r"|\b(?:в|на|к|с)\s+(?P<h2>[01]?\d|2[0-3])\s*(?:ч\b|час[а-я]*|(?P<part>утра|дня|вечера|ночи))"
    r"|\b(?P<h3>[01]?\d|2[0-3])\s*(?:ч\b|час[а-я]*)"
)
_CLAUSE = re.compile(r"\bно\b|;|\bа вот\b")  # "на 17:00 занято, но есть 15:00": refused, then offered
_NUMBERED = re.compile(r"^\s*(\d{1,2})[.)]\s+(.+)$", re.MULTILINE)
_SENTENCE = re.compile(r"(?:[^.!?\n]|\.(?=\d))+(?:[.!?]+|\n|$)")

_OFFER_CUES = (
    "свободн",
    "есть окн",
    "есть время",
    "есть место",
    "могу предложить",
    "можно предложить",
    "выберите",
    "доступн",
    "вариант",
    "ближайш",
    "какое время",
    "что вам подходит",
    "что подходит",
    "подойдёт ли",
    "подойдет ли",
    "удобно",
    "окошк",
    "можем записать",
    "могу записать на",
    "есть запись",
)
_REFUSED_CUES = ("занят", "нет свободн", "не получится", "недоступн", "не могу", "уже нет", "не работа", "нет окон")
_HOURS_CUES = ("работаем", "часы работы", "открыты", "график")
_NOTHING_FREE = (
    "нет свободн",
    "свободного времени нет",
    "свободного времени уже нет",
    "всё занято",
    "все занято",
    "нет окон",
    "нет мест",
    "полностью занят",
    "занят весь день",
    "нет записи на этот день",
    "свободных окон нет",
)
_BOOKED = (
    "записал",
    "вы записаны",
    "запись подтвержден",
    "запись оформлен",
    "оформил",
    "забронировал",
    "записали вас",
    "жд[её]м вас",
    "бронь подтвержден",
    "запись создан",
)
_MOVED = (r"перенес\b", r"перенесл[аи]", r"перенесен")
_CANCELLED = (r"отменил", r"запись отменен", r"удалил[аи]? запись")
_FAILED = ("не получилось", "не удалось", "ошибк", "не вышло")
_ASKS: dict[str, tuple[str, ...]] = {
    "service": (
        "какую услугу",
        "какая услуга",
        "на какую услугу",
        "какой услуг",
        "что будем делать",
        "на что вас записать",
        "на что записать",
        "какую процедуру",
        "уточните услугу",
        "что именно хотите",
        "какую стрижку",
        "какой вид",
    ),
    "day": (
        r"какой\s+(?:другой\s+)?день",
        "какую дату",
        "какое число",
        "в какой день",
        "на когда",
        "когда вам удобно",
        "на какой день",
    ),
    "time": (
        "какое время",
        r"(?:день|дату|число) и время",
        "во сколько",
        "на какое время",
        "в какое время",
        "какой час",
        "выберите время",
        "когда вам удобно",
        "что вам подходит",
        "что подходит",
        "какой вариант",
        "какой слот",
    ),
    "master": (
        "к какому мастеру",
        "какого мастера",
        "к кому",
        "какой мастер",
        "пожелания по мастеру",
        "мастера предпочит",
    ),
    "name": ("как вас зовут", "ваше имя", "как к вам обращаться", "представьтесь", "на чьё имя", "на чье имя"),
}
_WH_WORDS = ("как", "какой", "какую", "какое", "какая", "когда", "сколько", "кто", "кому", "куда", "что", "где", "чем")


class Ask(StrEnum):
    SERVICE = "service"
    DAY = "day"
    TIME = "time"
    MASTER = "master"
    NAME = "name"


class Done(StrEnum):
    BOOKED = "booked"
    MOVED = "moved"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Slot:
    """A time the reply names, with its day when the reply gives one."""

    day: date | None
    at: time


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What the bot says it has done."""

    done: Done
    slot: Slot | None
    services: tuple[str, ...]
    master: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One reply, read."""

    offers: tuple[Slot, ...] = ()
    confirmed: Confirmation | None = None
    asks: frozenset[Ask] = frozenset()
    yes_no: bool = False
    proposal: Slot | None = None  # what a yes/no question proposes ("Записать вас на завтра в 17:00?")
    options: tuple[str, ...] = ()  # numbered options, in order
    nothing_free: bool = False  # the day (or time) asked for has nothing free; offers may still follow
    taken: bool = False  # the time asked for is taken ("На 17:00 уже занято"); offers may still follow
    services: tuple[str, ...] = ()  # catalogue titles the reply names


def read_reply(text: str, *, today: date, services: Sequence[str] = (), masters: Sequence[str] = ()) -> Reading:
    """Read a reply the way a client does; `today` anchors "завтра" and weekdays."""
    low = text.lower().replace("ё", "е").replace("\u00a0", " ").replace("\u202f", " ")
    named = tuple(s for s in services if _names_service(low, s))
    plain = re.sub(r"\([^)]*\)", " ", low)  # a record quoted in brackets is context, never an offer
    if named:  # a numbered list of records ("1. завтра в 14:00 — Оформление бороды") offers no time
        plain = "\n".join(line for line in plain.split("\n") if not (_NUMBERED.match(line) and "—" in line))
    confirmed = _confirmation(plain, low, today, named, masters)
    sentences = [s for s in _SENTENCE.findall(plain) if s.strip()]
    clauses = [c for s in sentences for c in _CLAUSE.split(s) if c.strip()]
    asks = frozenset(kind for s in sentences if _is_question(s) for kind in _asks_in(s))
    yes_no_sentences = [s for s in sentences if s.strip().endswith("?") and not _is_wh_question(s)]
    proposal = next((p for s in yes_no_sentences for p in _slots(s, today)[:1]), None)
    offers = () if confirmed is not None else _offers(plain, clauses, today)
    if len(offers) == 1 and yes_no_sentences:  # "Да, завтра в 17:00 свободно. Записать вас?": one proposal
        proposal, offers = offers[0], ()
    return Reading(
        offers=offers,
        confirmed=confirmed,
        asks=asks,
        yes_no=bool(yes_no_sentences),
        proposal=None if offers else proposal,
        options=tuple(item.strip() for _, item in _NUMBERED.findall(text)),
        nothing_free=any(cue in low for cue in _NOTHING_FREE),
        taken="занят" in low,
        services=named,
    )


def dates_in(text: str, today: date) -> list[tuple[int, date]]:
    """Every date a text names, with its position."""
    out = []
    for m in _DATE.finditer(text.lower().replace("ё", "е")):
        day = _date_of(m, today)
        if day is not None:
            out.append((m.start(), day))
    return out


def times_in(text: str) -> list[tuple[int, time]]:
    """Every clock time a text names, with its position ("14.01" is a date, "14.30" a time)."""
    out = []
    for m in _TIME.finditer(text.lower()):
        if m.group("h") is not None:
            if m.group(0)[-3] == "." and m.group("mm") not in _QUARTERS:
                continue  # "14.01": a day and month
            out.append((m.start(), time(int(m.group("h")), int(m.group("mm")))))
            continue
        hour = int(m.group("h2") or m.group("h3"))
        part = m.group("part")
        if part and hour < 12:
            hour += _DAY_PART[part]
        out.append((m.start(), time(hour % 24)))
    return out


def _date_of(m: re.Match[str], today: date) -> date | None:
    if m.group("rel"):
        return today + timedelta(days=_RELATIVE[m.group("rel")])
    if m.group("dm"):
        month = next(i for i, stem in enumerate(_MONTHS, 1) if m.group("month").startswith(stem[:3]))
        return _nearest_date(today, int(m.group("dm")), month)
    if m.group("wd") or m.group("short"):
        word = m.group("wd") or m.group("short")
        index = next(
            i
            for i, (stem, short) in enumerate(zip(_WEEKDAY_STEMS, _WEEKDAY_SHORT, strict=True))
            if word.startswith((stem, short))
        )
        ahead = (index - today.weekday()) % 7
        return today + timedelta(days=ahead or 7)
    day, month = int(m.group("d")), int(m.group("m"))
    if not 1 <= month <= 12 or (m.group(0).count(".") == 1 and m.group("m") in _QUARTERS and day <= 23):
        return None  # "17.30" or "10.00" is a time
    return _nearest_date(today, day, month)


def _nearest_date(today: date, day: int, month: int) -> date | None:
    for year in (today.year, today.year + 1):
        try:
            candidate = date(year, month, day)
        except ValueError:
            return None
        if candidate >= today - timedelta(days=31):
            return candidate
    return None


def _slots(text: str, today: date) -> list[Slot]:
    """Times paired with the day named nearest before them in the text (or, failing that, after them)."""
    days = dates_in(text, today)
    out = []
    for pos, at in times_in(text):
        before = [d for p, d in days if p < pos]
        after = [d for p, d in days if p > pos]
        day = before[-1] if before else (after[0] if after else None)
        if Slot(day, at) not in out:
            out.append(Slot(day, at))
    return out


def _offers(plain: str, sentences: Sequence[str], today: date) -> tuple[Slot, ...]:
    if not any(cue in plain for cue in _OFFER_CUES) and not _NUMBERED.search(plain):
        return ()
    last_day: date | None = None
    out: list[Slot] = []
    for sentence in sentences:
        found = _slots(sentence, today)
        named = dates_in(sentence, today)
        refused = any(cue in sentence for cue in _REFUSED_CUES) and not any(c in sentence for c in _OFFER_CUES)
        hours = any(cue in sentence for cue in _HOURS_CUES) or re.search(r"\bс\s+\d{1,2}[:.]\d\d\s+до\b", sentence)
        if not refused and not hours:
            out.extend(Slot(s.day or last_day, s.at) for s in found if Slot(s.day or last_day, s.at) not in out)
        if named:
            last_day = named[-1][1]
    return tuple(out)


def _confirmation(
    plain: str, low: str, today: date, named: tuple[str, ...], masters: Sequence[str]
) -> Confirmation | None:
    if any(cue in plain for cue in _FAILED):
        return None
    done = None
    for kind, cues in ((Done.CANCELLED, _CANCELLED), (Done.MOVED, _MOVED), (Done.BOOKED, _BOOKED)):
        if any(re.search(cue, plain) for cue in cues):
            done = kind
            break
    if done is None and "✅" in low:
        done = Done.BOOKED
    if done is None or any(s.strip().endswith("?") and "запис" in s for s in _SENTENCE.findall(plain) if "✅" not in s):
        return None
    slots = _slots(plain if done is not Done.CANCELLED else low, today)
    slot = (slots[-1] if done is Done.MOVED else slots[0]) if slots else None
    master = next((m for m in masters if _names_master(low, m)), "")
    return Confirmation(done, slot, named, master)


def _is_question(sentence: str) -> bool:
    s = sentence.strip()
    return s.endswith("?") or s.startswith(("уточните", "подскажите", "напишите", "выберите", "скажите"))


def _is_wh_question(sentence: str) -> bool:
    words = re.findall(r"[а-я]+", sentence)
    return any(w in _WH_WORDS for w in words) or bool(_asks_in(sentence))


def _asks_in(sentence: str) -> list[Ask]:
    return [Ask(kind) for kind, cues in _ASKS.items() if any(re.search(cue, sentence) for cue in cues)]


def _stems(words: str) -> list[str]:
    return [w[: max(3, min(len(w) - 1, 5))] for w in re.findall(r"[а-яa-z]+", words.lower().replace("ё", "е"))]


def _names_service(low: str, title: str) -> bool:
    """The title, in any case form ("мужскую стрижку" names "Мужская стрижка")."""
    stems = _stems(title)
    words = re.findall(r"[а-яa-z]+", low)
    for i in range(len(words) - len(stems) + 1):
        if all(words[i + j].startswith(stem) for j, stem in enumerate(stems)):
            return True
    return False


def _names_master(low: str, name: str) -> bool:
    stem = name.lower()[: max(3, len(name) - 2)]
    return re.search(rf"\b{stem}", low) is not None

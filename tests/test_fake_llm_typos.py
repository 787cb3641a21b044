"""The fake LLM reads a sloppy typist as a model would: misspelt days, masters and services are understood, what
stays unclear is asked, and a correction right after a booking moves that booking (issue 16)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pymorphy3
import pytest

from system.turn.context import Dialog
from system.turn.llm import LLMClient
from tests import test_fake_llm as base
from tests.test_fake_llm import _chat, _record, only_call, says

morph = base.morph  # the session's analyser and the client factory over the fake, shared with the base tests
make_llm = base.make_llm

BOOKED = "✅ Готово! «Стрижка машинкой» завтра, 26 ноября в 15:00 к Сергею. Ждём вас!"  # said on Tuesday 25 Nov


# ------------------------------------------------------------------------------------------ days


@pytest.mark.parametrize(
    ("phrase", "day"),
    [
        ("затвра в 18:00", date(2025, 11, 27)),  # said on Wednesday 26 November
        ("поселзавтра в 12", date(2025, 11, 28)),
        ("в пянтицу", date(2025, 11, 28)),
        ("в сбуботу утром", date(2025, 11, 29)),
        ("во вторнки", date(2025, 12, 2)),
    ],
)
def test_a_misspelt_day_word_is_read_as_the_day_one_typo_away(
    morph: pymorphy3.MorphAnalyzer, phrase: str, day: date
) -> None:
    u = says(phrase, morph)
    assert (u.day, u.unclear_day) == (day, False)


def test_a_real_word_near_a_day_word_is_no_day(morph: pymorphy3.MorphAnalyzer) -> None:
    u = says("после завтрака в 12", morph)
    assert (u.day, u.unclear_day) == (None, False)


def test_a_day_like_word_too_far_from_any_day_is_unclear(morph: pymorphy3.MorphAnalyzer) -> None:
    u = says("в птнцу в 18:00", morph)
    assert (u.day, u.unclear_day) == (None, True)


async def test_an_unclear_day_is_asked_not_booked_today(make_llm: Callable[..., LLMClient]) -> None:
    chat = _chat(make_llm(), Dialog(), ("client", "мужская стрижка в птнцу в 18:00"))
    reply = await chat.next()
    assert not reply.tool_calls
    assert "на какой день" in (reply.content or "")


async def test_a_misspelt_tomorrow_is_not_booked_today(make_llm: Callable[..., LLMClient]) -> None:
    chat = _chat(make_llm(), Dialog(), ("client", "мужская стрижка затвра в 18:00"))
    assert only_call(await chat.next()) == (
        "search_slots",
        {"service": "Мужская стрижка", "date": "2025-11-26", "time_from": "17:00"},
    )


# ------------------------------------------------------------------------------------------ masters


@pytest.mark.parametrize("phrase", ["к срегею", "к сегрею завтра", "у сергяе", "запишите к сергею"])
def test_a_misspelt_master_is_read_in_any_case(morph: pymorphy3.MorphAnalyzer, phrase: str) -> None:
    u = says(phrase, morph)
    assert (u.master, u.unclear_master) == ("Сергей", None)


@pytest.mark.parametrize(("phrase", "said"), [("к Петру завтра", "петру"), ("к мастеру вкасилию", "вкасилию")])
def test_a_master_not_on_the_staff_is_unclear(morph: pymorphy3.MorphAnalyzer, phrase: str, said: str) -> None:
    u = says(phrase, morph)
    assert (u.master, u.unclear_master) == (None, said)


def test_to_the_same_master_as_last_time_names_no_one(morph: pymorphy3.MorphAnalyzer) -> None:
    assert says("если можно, к тому же мастеру, что в прошлый раз", morph).unclear_master is None


async def test_an_unknown_master_is_asked_not_replaced(make_llm: Callable[..., LLMClient]) -> None:
    chat = _chat(make_llm(), Dialog(), ("client", "мужская стрижка завтра в 15:00 к Петру"))
    reply = await chat.next()
    assert not reply.tool_calls
    assert "«Петру»" in (reply.content or "") and "Сергей, Алексей" in (reply.content or "")


# ------------------------------------------------------------------------------------------ services


@pytest.mark.parametrize(
    ("phrase", "service"),
    [
        ("мусжкая стрижка", "Мужская стрижка"),
        ("мужскюу стрижку", "Мужская стрижка"),
        ("фоормить бороду", "Оформление бороды"),
        ("стрижка машникой", "Стрижка машинкой"),
    ],
)
def test_a_misspelt_word_of_a_multi_word_title_still_names_it(
    morph: pymorphy3.MorphAnalyzer, phrase: str, service: str
) -> None:
    u = says(phrase, morph)
    assert (u.service.title if u.service else None, u.service_options) == (service, ())


# ------------------------------------------------------------------------------------------ corrections


async def test_a_day_and_time_right_after_a_booking_move_that_booking(make_llm: Callable[..., LLMClient]) -> None:
    dialog = Dialog(stage="booked", draft={"service": "Стрижка машинкой", "master": ""})
    chat = _chat(
        make_llm(),
        dialog,
        ("client", "Хочу записаться на стрижку машинкой завтра в 15:00"),
        ("admin", BOOKED),
        ("client", "нет, мне нужно в пятницу в 18:00"),
    )
    assert only_call(await chat.next()) == ("list_my_bookings", {})
    chat.answer({"bookings": [_record(1001, "2025-11-26", "15:00")]})
    assert only_call(await chat.next()) == ("reschedule_booking", {"record_id": 1001, "datetime": "2025-11-28T18:00"})
    chat.answer({"rescheduled": _record(1001, "2025-11-28", "18:00")})
    reply = await chat.next()
    assert (reply.content or "").startswith("✅ Перенёс")


async def test_a_time_alone_after_a_booking_keeps_its_day_and_offers_when_taken(
    make_llm: Callable[..., LLMClient],
) -> None:
    dialog = Dialog(stage="booked", draft={"service": "Стрижка машинкой", "master": ""})
    chat = _chat(
        make_llm(), dialog, ("client", "на стрижку машинкой завтра в 15"), ("admin", BOOKED), ("client", "в 17")
    )
    assert only_call(await chat.next()) == ("list_my_bookings", {})
    chat.answer({"bookings": [_record(1001, "2025-11-26", "15:00")]})
    assert only_call(await chat.next()) == ("reschedule_booking", {"record_id": 1001, "datetime": "2025-11-26T17:00"})
    chat.answer({"error": "время занято", "next_free": [{"datetime": "2025-11-26T17:30", "time": "17:30"}]})
    reply = await chat.next()
    assert not reply.tool_calls
    assert "17:00 уже занято" in (reply.content or "") and "17:30" in (reply.content or "")

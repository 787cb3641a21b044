"""A simulated client reads replies as a real model phrases them, not only as the fake LLM's templates do."""

from __future__ import annotations

from datetime import date, time

import pytest

from simulator.personas import CATALOGUE, MASTERS
from simulator.reading import Ask, Done, Slot, read_reply

TODAY = date(2026, 1, 12)  # a Monday
TUE, WED, FRI, SAT = date(2026, 1, 13), date(2026, 1, 14), date(2026, 1, 16), date(2026, 1, 17)


def read(text: str):  # type: ignore[no-untyped-def]
    return read_reply(text, today=TODAY, services=CATALOGUE, masters=MASTERS)


def s(day: date | None, hh: int, mm: int = 0) -> Slot:
    return Slot(day, time(hh, mm))


OFFERS = [
    (
        "Свободно: сегодня, 12 января — 10:00, 10:15, 10:30. Что вам подходит?",
        [s(TODAY, 10), s(TODAY, 10, 15), s(TODAY, 10, 30)],
    ),
    ("На завтра есть окна в 14:00 и 16:30. Какое время вам удобнее?", [s(TUE, 14), s(TUE, 16, 30)]),
    ("Могу предложить завтра в 14.30 или в 16 ч. Какой вариант удобнее?", [s(TUE, 14, 30), s(TUE, 16)]),
    (
        "На 17:00 уже занято. Свободно: в пятницу, 16 января — 16:00, 18:00. Какое время выбираете?",
        [s(FRI, 16), s(FRI, 18)],
    ),
    (
        "К сожалению, на 17:00 в пятницу всё занято 😔 Но есть свободное время в 15:00 и в 19:30 того же дня.",
        [s(FRI, 15), s(FRI, 19, 30)],
    ),
    (
        "В субботу, 17 января, свободно:\n1. 11:00\n2. 12:30\n3. 15:45\nНапишите номер или время.",
        [s(SAT, 11), s(SAT, 12, 30), s(SAT, 15, 45)],
    ),
    ("Ближайшие свободные окошки: 14.01 в 10:00, 14.01 в 13:00. Записать?", [s(WED, 10), s(WED, 13)]),
    ("Есть время послезавтра: 12:00, 12:30 или 13:00 — выбирайте 🙂", [s(WED, 12), s(WED, 12, 30), s(WED, 13)]),
    ("Свободные варианты на среду: 10:00–11:00 или 18:00.", [s(WED, 10), s(WED, 11), s(WED, 18)]),
    (
        "Увы, это время уже занято. Ближайшее свободное: завтра, 13 января — 11:30, 11:45.",
        [s(TUE, 11, 30), s(TUE, 11, 45)],
    ),
    (
        "Чтобы перенести запись (в субботу, 17 января в 12:00 — Мужская стрижка к Сергею), выберите время: "
        "в пятницу, 16 января — 10:00, 10:15 (мастер Сергей).",
        [s(FRI, 10), s(FRI, 10, 15)],
    ),
    ("Можем записать вас в пт на 17:00 или 18:00 к Алексею. Как вам удобнее?", [s(FRI, 17), s(FRI, 18)]),
    ("Мы работаем с 10:00 до 21:00. Свободно завтра в 19:00.", [s(TUE, 19)]),
    ("Доступно 16 января: 9:45, 10:30. Что выберете?", [s(FRI, 9, 45), s(FRI, 10, 30)]),
]


@pytest.mark.parametrize(("text", "offers"), OFFERS)
def test_offered_times_are_read_with_their_day(text: str, offers: list[Slot]) -> None:
    r = read(text)
    assert list(r.offers) == offers
    assert r.confirmed is None


CONFIRMATIONS = [
    (
        "✅ Готово! «Мужская стрижка» послезавтра, 14 января в 17:00. Ждём вас!",
        Done.BOOKED,
        s(WED, 17),
        "Мужская стрижка",
        "",
    ),
    (
        "Отлично! Записала вас на мужскую стрижку 14.01 в 17:00 к мастеру Алексею 😊",
        Done.BOOKED,
        s(WED, 17),
        "Мужская стрижка",
        "Алексей",
    ),
    (
        "Вы записаны: стрижка машинкой, пятница 16 января, 15:30, мастер Игорь.",
        Done.BOOKED,
        s(FRI, 15, 30),
        "Стрижка машинкой",
        "Игорь",
    ),
    (
        "Запись подтверждена ✅ Оформление бороды завтра в 11:00. До встречи!",
        Done.BOOKED,
        s(TUE, 11),
        "Оформление бороды",
        "",
    ),
    ("Готово, записал вас к Сергею на субботу в 12 ч. Ждём!", Done.BOOKED, s(SAT, 12), "", "Сергей"),
    (
        "✅ Перенёс: теперь во вторник, 20 января в 10:00 — Мужская стрижка к Сергею. Ждём вас!",
        Done.MOVED,
        s(date(2026, 1, 20), 10),
        "Мужская стрижка",
        "Сергей",
    ),
    ("Перенесла вашу запись с 12:00 на 15:00 в пятницу.", Done.MOVED, s(FRI, 15), "", ""),
    (
        "✅ Отменил запись:\n• в субботу, 17 января в 12:00 — Оформление бороды к Алексею\nБудем рады видеть вас!",
        Done.CANCELLED,
        s(SAT, 12),
        "Оформление бороды",
        "Алексей",
    ),
    ("Ваша запись отменена. Если передумаете — пишите!", Done.CANCELLED, None, "", ""),
    ("Забронировал для вас детскую стрижку на 5 вечера в среду.", Done.BOOKED, s(WED, 17), "Детская стрижка", ""),
]


@pytest.mark.parametrize(("text", "done", "slot", "service", "master"), CONFIRMATIONS)
def test_what_the_bot_says_it_did_is_read(text: str, done: Done, slot: Slot | None, service: str, master: str) -> None:
    c = read(text).confirmed
    assert c is not None
    assert (c.done, c.slot, c.master) == (done, slot, master)
    assert c.services == ((service,) if service else ())


NOT_DONE = [
    "Не получилось записать: это время только что заняли. Выбрать другое?",
    "Записать вас на «Мужская стрижка» завтра в 17:00?",
    "Подскажите, пожалуйста, на какую услугу вас записать?",
    "Хотите, я перенесу запись на другой день?",
]


@pytest.mark.parametrize("text", NOT_DONE)
def test_an_offer_a_question_or_a_failure_is_no_confirmation(text: str) -> None:
    assert read(text).confirmed is None


QUESTIONS = [
    ("Подскажите, на какую услугу? У нас есть: Стрижка машинкой — 800 ₽, Мужская стрижка — 1500 ₽", {Ask.SERVICE}),
    ("Уточните, пожалуйста, какую услугу: Оформление бороды — 700 ₽ или Стрижка + борода — 2000 ₽?", {Ask.SERVICE}),
    ("На какой день и время вас записать?", {Ask.DAY, Ask.TIME}),
    ("Во сколько вам удобно подойти?", {Ask.TIME}),
    ("К какому мастеру хотите записаться — Сергей или Алексей?", {Ask.MASTER}),
    ("Как к вам обращаться?", {Ask.NAME}),
    ("Подскажите ваше имя, пожалуйста, чтобы оформить запись.", {Ask.NAME}),
    ("На 18 января свободного времени нет. На какой другой день перенести запись?", {Ask.DAY}),
    ("Когда вам удобно?", {Ask.DAY, Ask.TIME}),
    ("Какую стрижку хотите: машинкой или модельную?", {Ask.SERVICE}),
    ("Хорошо! На какую дату записать?", {Ask.DAY}),
    ("Спасибо, что написали! Чем могу помочь?", set()),
]


@pytest.mark.parametrize(("text", "asks"), QUESTIONS)
def test_what_the_bot_asks_for_is_read(text: str, asks: set[Ask]) -> None:
    assert set(read(text).asks) == asks


def test_a_yes_no_question_carries_the_slot_it_proposes() -> None:
    r = read("Да, завтра в 17:00 свободно к Сергею. Записать вас на «Мужская стрижка»?")
    assert (r.yes_no, r.proposal, r.offers) == (True, s(TUE, 17), ())
    assert read("Подтверждаете запись на пятницу, 16 января, в 12:30?").proposal == s(FRI, 12, 30)


def test_numbered_records_are_options_not_offers() -> None:
    r = read(
        "Какую запись отменить?\n1. завтра, 13 января в 14:00 — Оформление бороды к Сергею\n"
        "2. в пятницу, 16 января в 12:00 — Мужская стрижка"
    )
    assert r.offers == ()
    assert len(r.options) == 2 and "13 января" in r.options[0]


@pytest.mark.parametrize(
    "text",
    [
        "На 13 января свободного времени уже нет. Свободно: послезавтра, 14 января — 13:45.",
        "К сожалению, на субботу всё занято 🙏 Посмотреть другую дату?",
        "В этот день нет свободных окон.",
    ],
)
def test_a_full_day_is_read(text: str) -> None:
    assert read(text).nothing_free

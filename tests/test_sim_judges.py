"""Turn-level judges and goal-holding users, on the transcript of issue 16 replayed as a fixed scenario.

The transcript (seed 11, a slow typist, counted a success by the end state alone):
    in   Здравствуйте! Хочу записаться на мужскую стрижку
    in   послезавтра в 17                                   (12 s later)
    out  Свободно: сегодня, 12 января — 10:00, 10:15, 10:30. Что вам подходит?
    in   давайте в 10:00
    out  ✅ Готово! «Мужская стрижка» послезавтра, 14 января в 17:00. Ждём вас!
    out  Подскажите, на какую услугу? У нас есть: …
"""

from __future__ import annotations

import functools
import random
from dataclasses import replace
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from simulator.judges import Record, Turn, judge_turns, turns_from_history
from simulator.personas import ASKS_BEFORE_ANOTHER_DAY, PERSONAS, Goal, Style, Want, day_fits
from simulator.reading import Slot
from simulator.salon import Salon
from simulator.simulation import SimOptions, achieved, simulate
from simulator.trials import pass_hat_k
from simulator.users import Part, Said, User

TZ = ZoneInfo("Europe/Moscow")
TODAY = date(2026, 1, 12)
T0 = 1_000_000
OPENING = "Здравствуйте! Хочу записаться на мужскую стрижку"
OFFER = "Свободно: сегодня, 12 января — 10:00, 10:15, 10:30. Что вам подходит?"
BOOKED = "✅ Готово! «Мужская стрижка» послезавтра, 14 января в 17:00. Ждём вас!"
ASK_SERVICE = "Подскажите, на какую услугу? У нас есть: Стрижка машинкой — 800 ₽, Мужская стрижка — 1500–1800 ₽"
WANT = Want(Goal.BOOK, "Мужская стрижка", "на мужскую стрижку", day_offset=2, hour=17)
RECORD = Record(1025, "Мужская стрижка", "Сергей", datetime(2026, 1, 14, 17, 0, tzinfo=TZ), deleted=False)


def slow_typist(*, booked: bool = False) -> User:
    return User(
        phone="79150000012",
        persona=PERSONAS["slow_typist"],
        want=WANT,
        today=TODAY,
        rng=random.Random(11),
        start_ms=T0,
        achieved=lambda _: booked,
    )


def said(user: User, *parts: tuple[int, Part]) -> User:
    user.said = [Said(at, turn, part) for turn, (at, part) in enumerate(parts, 1)]
    return user


def old_transcript() -> tuple[User, list[Turn]]:
    """What happened: the user took a time that contradicts its own message, the system answered stale."""
    user = said(
        slow_typist(),
        (T0, Part(OPENING, service="Мужская стрижка")),
        (T0 + 12_000, Part("послезавтра в 17", day=date(2026, 1, 14), at=time(17))),
        (T0 + 44_000, Part("давайте в 10:00", day=TODAY, at=time(10), accepted=True)),
    )
    history = [
        ("client", OPENING, T0),
        ("admin", OFFER, T0 + 26_000),
        ("client", "послезавтра в 17", T0 + 12_000),
        ("admin", BOOKED, T0 + 56_000),
        ("client", "давайте в 10:00", T0 + 44_000),
        ("admin", ASK_SERVICE, T0 + 68_000),
    ]
    sent = [(T0 + 26_000, OFFER), (T0 + 56_000, BOOKED), (T0 + 68_000, ASK_SERVICE)]
    return user, turns_from_history(history, sent)


def test_the_issue_transcript_fails_the_turn_level_judges() -> None:
    user, turns = old_transcript()
    v = judge_turns(user, turns=turns, records=[RECORD])
    assert len(v.last_word) == 1  # the booking follows "послезавтра в 17", not the later "давайте в 10:00"
    assert len(v.asked_twice) == 1 and "service" in v.asked_twice[0]  # the service it had just booked
    assert v.misfit_accepted == 1  # the user took a time that contradicts its Want
    # The offer went out after "послезавтра в 17" arrived, unread; the booking after "давайте в 10:00" did.
    assert v.stale_replies == 2
    assert v.unrequested_booking == []  # 14.01 17:00 was asked for
    assert v.violations == 2


def test_the_goal_holding_user_refuses_the_offer_that_contradicts_its_message() -> None:
    user = slow_typist()
    user.opening_parts()  # the user has asked for its slot
    answer = user.next_part(OFFER)
    assert answer is not None
    assert (answer.accepted, answer.correction) == (False, True)
    assert (answer.day, answer.at) == (date(2026, 1, 14), time(17))
    assert "послезавтра в 17:00" in answer.text


def test_a_client_who_took_an_offer_that_was_gone_still_judges_the_next_by_its_own_hour() -> None:
    """Wanting 17:00, it took 18:00 (within an hour); 18:00 was gone too. 19:00 is two hours from what it wants:
    it asks again rather than drift an hour at a time (seen at 1,000 users: 16:00 wanted, 18:00 taken)."""
    user = slow_typist()
    asked = [Said(T0, 1, part) for part in user.opening_parts()]
    user.said = list(asked)
    first = user.next_part("На 17:00 уже занято. Свободно: послезавтра, 14 января — 18:00, 18:15. Какое время удобно?")
    assert first is not None and first.accepted and first.at == time(18)
    user.said.append(Said(T0 + 30_000, 2, first))
    again = user.next_part("Увы, это время уже занято. Ближайшее свободное: послезавтра, 14 января — 19:00, 19:15.")
    assert again is not None and not again.accepted
    assert again.at == time(17)  # its own hour again (on another day, the one asked for being full)


def test_a_client_refused_day_after_day_takes_its_time_on_a_day_the_bot_offers() -> None:
    """In a full salon a client wanting one master at one hour asked day after day until it gave up; a real client,
    told «во вторник в 12:00 есть», takes it."""
    asked = {date(2026, 1, 14), date(2026, 1, 15), date(2026, 1, 16), date(2026, 1, 17)}
    tuesday, too_far, before = date(2026, 1, 20), date(2026, 1, 21), date(2026, 1, 13)
    assert not day_fits(tuesday, asked, times_asked=ASKS_BEFORE_ANOTHER_DAY - 1)
    assert day_fits(tuesday, asked, times_asked=ASKS_BEFORE_ANOTHER_DAY)
    assert not day_fits(too_far, asked, times_asked=10) and not day_fits(before, asked, times_asked=10)
    assert day_fits(date(2026, 1, 15), asked, times_asked=1)  # a day it asked about: always


def test_the_goal_holding_user_corrects_a_confirmation_of_the_wrong_time() -> None:
    user = slow_typist(booked=True)  # a booking exists: the end state alone would call it done
    user.opening_parts()
    wrong = user.next_part("✅ Записал вас! «Мужская стрижка» сегодня, 12 января в 10:00. Ждём вас!")
    assert wrong is not None and wrong.correction
    assert user.next_part(BOOKED) is None or not user.next_part(BOOKED).correction  # type: ignore[union-attr]


def test_the_same_conversation_run_well_passes() -> None:
    """The new behaviour: the draft answering only the first fragment is never sent; one turn reads both."""
    user = said(
        slow_typist(booked=True),
        (T0, Part(OPENING, service="Мужская стрижка")),
        (T0 + 12_000, Part("послезавтра в 17", day=date(2026, 1, 14), at=time(17))),
    )
    history = [
        ("client", OPENING, T0),
        ("client", "послезавтра в 17", T0 + 12_000),
        ("admin", BOOKED, T0 + 40_000),
    ]
    v = judge_turns(user, turns=turns_from_history(history, [(T0 + 40_000, BOOKED)]), records=[RECORD])
    assert (v.violations, v.stale_replies, v.misfit_accepted) == (0, 0, 0)


def test_a_booking_nobody_asked_for_is_found() -> None:
    user = said(
        slow_typist(),
        (T0, Part(OPENING + " завтра в 18:00", service="Мужская стрижка", day=date(2026, 1, 13), at=time(18))),
    )
    today_at_18 = Record(1030, "Мужская стрижка", "Алексей", datetime(2026, 1, 12, 18, 0, tzinfo=TZ), deleted=False)
    history = [("client", user.said[0].part.text, T0), ("admin", "✅ Записал вас!", T0 + 30_000)]
    v = judge_turns(user, turns=turns_from_history(history, [(T0 + 30_000, "✅ Записал вас!")]), records=[today_at_18])
    assert len(v.unrequested_booking) == 1 and "never asked" in v.unrequested_booking[0]


def test_a_fragment_no_sent_reply_read_is_unanswered() -> None:
    user = said(
        slow_typist(),
        (T0, Part(OPENING, service="Мужская стрижка")),
        (T0 + 60_000, Part("алло?")),
    )
    history = [("client", OPENING, T0), ("admin", OFFER, T0 + 20_000), ("client", "алло?", T0 + 60_000)]
    v = judge_turns(user, turns=turns_from_history(history, [(T0 + 20_000, OFFER)]), records=[])
    assert v.unanswered_fragment == ["no reply read 'алло?'"]


def test_a_drafted_reply_that_was_never_sent_answers_nothing() -> None:
    turns = turns_from_history(
        [("client", "a", 1), ("admin", "draft", 5), ("client", "b", 3), ("admin", "sent", 9)], [(9, "sent")]
    )
    assert turns == [Turn(1, "draft", None), Turn(3, "sent", 9)]


def test_pass_hat_k_is_tau2_benchs_estimate() -> None:
    # Two users, four trials: one passed all four, one passed two. pass^1 = (4/4 + 2/4) / 2; pass^4 = (1 + 0) / 2.
    assert pass_hat_k([4, 2], n=4, k=1) == 0.75
    assert pass_hat_k([4, 2], n=4, k=4) == 0.5
    assert pass_hat_k([4, 2], n=4, k=2) == (1 + 1 / 6) / 2


class _IssueUser(User):
    """The slow typist of the issue, word for word: the service, then 12 s later the day and hour."""

    def opening_parts(self) -> list[Part]:
        self.choice = Slot(date(2026, 1, 14), time(17))
        return [Part(OPENING, service="Мужская стрижка"), Part("послезавтра в 17", day=date(2026, 1, 14), at=time(17))]


def issue_scenario(salon: Salon, opts: SimOptions) -> list[User]:
    persona = replace(PERSONAS["slow_typist"], style=Style(fragments=(2, 2), gap_ms=(12_000, 12_000)))
    user = _IssueUser(
        phone="79150000012",
        persona=persona,
        want=WANT,
        today=TODAY,
        rng=random.Random(11),
        start_ms=int(opts.start.timestamp() * 1000) + 60_000,
        achieved=functools.partial(achieved, salon=salon, start=opts.start),
    )
    return [user]


async def test_the_issue_scenario_replayed_through_the_system_passes_every_judge() -> None:
    result = await simulate(SimOptions(users=1, seed=11), scenario=issue_scenario)

    (verdict,), (turns,) = result.verdicts, result.turn_verdicts
    assert verdict.success, verdict.reason
    assert (turns.violations, turns.stale_replies, turns.misfit_accepted) == (0, 0, 0), turns
    booked = [e["text"] for e in result.transcript.events if e["dir"] == "out" and "✅" in e["text"]]
    assert len(booked) == 1 and "14 января в 17:00" in booked[0]

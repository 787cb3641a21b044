"""Simulated WhatsApp users: each writes like its persona, holds to its goal, and stops when it is done.

A user never agrees to what contradicts its `Want`: offered times that do not fit, it restates what it asked
for; a confirmation of the wrong thing, it corrects. Every message is kept with what it meant (`Said`), so the
judges know what the user gave and chose without reading the user's words back.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, time, timedelta
from typing import Protocol

from simulator.personas import (
    CATALOGUE,
    GIBBERISH,
    INJECTIONS,
    MASTERS,
    Goal,
    Persona,
    Want,
    in_window,
    minute_of_day,
    time_fits,
)
from simulator.reading import Ask, Confirmation, Done, Reading, Slot, dates_in, read_reply

MAX_TURNS = 6  # answers after the opening; a client still not served by then gives up
REPLY_TIMEOUT_S = 300.0
INTERRUPTION = "если можно, к тому же мастеру, что в прошлый раз"
_ACCUSATIVE = ("понедельник", "вторник", "среду", "четверг", "пятницу", "субботу", "воскресенье")
_DATIVE = {"Сергей": "Сергею", "Алексей": "Алексею", "Дмитрий": "Дмитрию", "Игорь": "Игорю"}


class Channel(Protocol):
    """How a user reaches the salon's WhatsApp and hears back."""

    async def send_text(self, phone: str, text: str) -> None: ...

    async def send_media(self, phone: str, kind: str) -> None: ...

    async def wait_reply(self, phone: str, *, seen: int, timeout_s: float) -> str | None: ...


class Clock(Protocol):
    def now_ms(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Part:
    """Words a user writes, with what they mean: the facts the judges hold the system to."""

    text: str
    service: str = ""  # a catalogue title, named so that only it fits
    day: date | None = None
    at: time | None = None
    master: str = ""
    accepted: bool = False  # takes a time the bot offered or proposed
    correction: bool = False  # says the bot got it wrong


@dataclass(frozen=True, slots=True)
class Said:
    """One message as sent: when, in which of the user's turns, and what it meant."""

    at_ms: int
    turn: int
    part: Part


@dataclass
class User:
    """One client of the salon."""

    phone: str
    persona: Persona
    want: Want
    today: date
    rng: random.Random
    start_ms: int
    achieved: Callable[[User], bool]  # looks at the world: is the goal reached?
    sent: int = 0
    replies: list[str] = field(default_factory=list)
    said: list[Said] = field(default_factory=list)
    turns: int = 0  # messages bursts sent (the opening is the first)
    turns_to_goal: int | None = None  # `turns` when the goal was first seen reached
    min_turns: int = 1  # what a perfect administrator needs (set by the simulation, which knows the salon)
    reply_timeout_s: float = REPLY_TIMEOUT_S  # how long a user waits for the next reply before giving up
    day_shift: int = 0  # days added to the wanted day after the bot said it is full
    choice: Slot | None = None  # the slot the user last chose (asked for or accepted)
    declined: set[Slot] = field(default_factory=set)  # offers the user said no to

    async def run(self, channel: Channel, clock: Clock) -> None:
        await clock.sleep(max(0, self.start_ms - clock.now_ms()) / 1000)
        await self._say(channel, clock, self.opening_parts())
        answers = 0
        while answers < MAX_TURNS:
            reply = await channel.wait_reply(self.phone, seen=len(self.replies), timeout_s=self.reply_timeout_s)
            if reply is None:
                return
            self.replies.append(reply)
            follow = self.next_part(reply)
            if self.turns_to_goal is None and self._done() and not (follow and follow.correction):
                self.turns_to_goal = self.turns
            if follow is None:
                if self._done():
                    return
                continue  # nothing to say to this one (an answer to an earlier message): wait for the next
            answers += 1
            await clock.sleep(self.rng.randint(*self.persona.style.think_ms) / 1000)
            await self._say(channel, clock, [follow])

    def _done(self) -> bool:
        return self.want.goal in (Goal.PRICES, Goal.CHAT, Goal.INJECT) or self.achieved(self)

    async def _say(self, channel: Channel, clock: Clock, parts: Sequence[Part]) -> None:
        style = self.persona.style
        self.turns += 1
        for i, part in enumerate(parts):
            if i:
                await clock.sleep(self.rng.randint(*style.gap_ms) / 1000)
            self.said.append(Said(clock.now_ms(), self.turns, part))
            if part.text.startswith("[") and part.text.endswith("]"):
                await channel.send_media(self.phone, part.text.strip("[]"))
            else:
                await channel.send_text(self.phone, self._styled(part.text))
            self.sent += 1
        if style.interrupts and self.want.goal in (Goal.BOOK, Goal.BOOK_FLEXIBLE) and self.sent == len(parts):
            # Writes again once the batch has gone to the bot, while it is thinking.
            await clock.sleep(self.rng.randint(9_500, 10_500) / 1000)
            self.said.append(Said(clock.now_ms(), self.turns, Part(INTERRUPTION)))
            await channel.send_text(self.phone, self._styled(INTERRUPTION))
            self.sent += 1

    # --- what to say -------------------------------------------------------------------------------------

    # `opening` and `follow_up` are for a driver that sends the texts itself (the load tests): what they return is
    # recorded as said, as `_say` records it, since what the user takes next is judged by what it asked for.

    def opening(self) -> list[str]:
        return self._said_now(self.opening_parts())

    def follow_up(self, reply: str) -> str | None:
        """The next message after the bot's reply, or None when the user has nothing to say to it."""
        part = self.next_part(reply)
        return None if part is None else self._said_now([part])[0]

    def _said_now(self, parts: Sequence[Part]) -> list[str]:
        self.turns += 1
        self.said.extend(Said(self.start_ms, self.turns, part) for part in parts)
        return [part.text for part in parts]

    def opening_parts(self) -> list[Part]:
        w = self.want
        service = Part(w.service_words, service="" if w.vague else w.service)
        match w.goal:
            case Goal.BOOK:
                self.choice = Slot(self._date(w.day_offset), time(w.hour))
                parts = [Part("Здравствуйте!"), Part("Хочу записаться"), service]
                parts += [Part(self._day(w.day_offset), day=self.choice.day), self._hour_part(w.hour)]
                if w.master:
                    parts.append(Part(f"к {_DATIVE.get(w.master, w.master)}", master=w.master))
            case Goal.BOOK_FLEXIBLE:
                parts = [Part("Привет"), Part(f"хочу {w.service_words}", service=service.service), Part(w.window)]
            case Goal.CANCEL:
                parts = [Part("Добрый день"), Part(f"отмените, пожалуйста, мою запись {self._day(w.day_offset)}")]
            case Goal.RESCHEDULE:
                self.choice = Slot(self._date(w.new_day_offset), time(w.new_hour))
                new = f"на {self._day(w.new_day_offset, prefix=False)} {self._hour(w.new_hour)}?"
                parts = [
                    Part("Здравствуйте"),
                    Part(f"можно перенести мою запись {self._day(w.day_offset)}"),
                    Part(new, day=self.choice.day, at=self.choice.at),
                ]
            case Goal.PRICES:
                return [Part(f"Сколько стоит {w.service_words.removeprefix('на ')}?", service=service.service)]
            case Goal.INJECT:
                return [Part(self.rng.choice(INJECTIONS))]
            case _:
                if self.persona.name == "media_sender":
                    return [Part(f"[{self.rng.choice(('voice', 'sticker', 'image'))}]")]
                return [Part(self.rng.choice(GIBBERISH))]
        return self._split(parts)

    def next_part(self, reply: str) -> Part | None:
        """What the user answers to `reply`, holding to its goal; None when there is nothing to say."""
        r = read_reply(reply, today=self.today, services=CATALOGUE, masters=MASTERS)
        wrong = r.confirmed is not None and not self._confirms_my_choice(r.confirmed)
        if self._done() and not (wrong and self.want.goal in (Goal.BOOK, Goal.BOOK_FLEXIBLE, Goal.RESCHEDULE)):
            return Part("спасибо!") if self.rng.random() < 0.3 and len(self.replies) == 1 else None
        match self.want.goal:
            case Goal.BOOK | Goal.BOOK_FLEXIBLE:
                return self._booking_answer(r)
            case Goal.RESCHEDULE:
                return self._move_answer(r)
            case Goal.CANCEL:
                return self._cancel_answer(r)
            case _:
                return None

    def _booking_answer(self, r: Reading) -> Part | None:
        w = self.want
        if r.confirmed is not None and r.confirmed.done is Done.BOOKED:
            return None if self._confirms_my_choice(r.confirmed) else self._restate(correction=True)
        if Ask.SERVICE in r.asks:
            return Part(w.service.lower(), service=w.service)
        times = self._answer_times(r, "давайте")
        if times is not None:
            return times
        if r.asks & {Ask.DAY, Ask.TIME} or len(self.replies) == 1:
            return self._restate(correction=False)
        return None

    def _move_answer(self, r: Reading) -> Part | None:
        if r.confirmed is not None and r.confirmed.done is Done.MOVED:
            return None if self._confirms_my_choice(r.confirmed) else self._restate(correction=True)
        if r.options:
            return self._pick_option(r.options)
        times = self._answer_times(r, "давайте перенесём на")
        if times is not None:
            return times
        if r.yes_no or r.asks & {Ask.DAY, Ask.TIME} or len(self.replies) == 1:
            return self._restate(correction=False)
        return None

    def _answer_times(self, r: Reading, lead: str) -> Part | None:
        """To a proposed or offered time: take one that fits, else ask again, or for another day when it is taken."""
        if r.proposal is not None:
            return self._accept(r.proposal, "да") if self._fits(r.proposal) else self._restate(correction=True)
        if r.offers and any(self._fits(o) for o in r.offers):
            return self._take_offer(r.offers, lead)
        if r.nothing_free or r.taken or (r.offers and set(r.offers) <= self.declined):
            return self._another_day()  # what it asked for is not to be had: the same time on another day
        if r.offers:
            self.declined.update(r.offers)
            return self._restate(correction=True)
        return None

    def _cancel_answer(self, r: Reading) -> Part | None:
        if r.options:
            return self._pick_option(r.options)
        if r.yes_no or len(self.replies) == 1:
            return Part("да")
        return None

    # --- holding to the goal -----------------------------------------------------------------------------

    def _fits(self, slot: Slot) -> bool:
        """Whether the user would take `slot`: its wanted slot, or one its Want allows."""
        day = slot.day or (self.choice.day if self.choice else None)
        if day is None:
            return False
        if self.want.goal is Goal.BOOK_FLEXIBLE:
            return in_window(self.want.window, day, slot.at, today=self.today)
        return time_fits(day, slot.at, [(x.part.day, x.part.at) for x in self.said if not x.part.accepted])

    def _take_offer(self, offers: Sequence[Slot], lead: str) -> Part:
        fitting = [o for o in offers if self._fits(o)]
        if not fitting:
            return self._restate(correction=True)
        if self.choice is not None:  # the wanted time itself, else the nearest to it
            fitting.sort(key=lambda o: abs(minute_of_day(o.at) - minute_of_day(self.choice.at)))  # type: ignore[union-attr]
        best = fitting[0]
        several_days = len({o.day for o in offers}) > 1
        day = best.day or (self.choice.day if self.choice else None)
        when = f"{self._day_of(day)} в {best.at:%H:%M}" if several_days and day else f"в {best.at:%H:%M}"
        return self._accept(Slot(day, best.at), f"{lead} {when}".replace("на в ", "на "))

    def _accept(self, slot: Slot, text: str) -> Part:
        self.choice = slot
        return Part(text, day=slot.day, at=slot.at, accepted=True)

    def _restate(self, *, correction: bool) -> Part:
        """What the user asked for, again; after a wrong offer or confirmation, as a correction."""
        w = self.want
        if w.goal is Goal.BOOK_FLEXIBLE:
            text = self.rng.choice((f"нет, мне бы {w.window}", f"а {w.window} есть что-нибудь?"))
            return Part(text if correction else f"{w.service_words} {w.window}", service=self._service_given())
        if self.choice is None or self.choice.day is None:
            return Part(self._day(w.day_offset))
        when = f"{self._day_of(self.choice.day)} в {self.choice.at:%H:%M}"
        new = f"{self._day((self.choice.day - self.today).days, prefix=False)} в {self.choice.at:%H:%M}"
        lead = self.rng.choice(("нет, я же написал", "нет, мне нужно", "не то, я просил")) if correction else "мне"
        if w.goal is Goal.RESCHEDULE:
            text = f"{lead} перенести на {new}" if correction else f"перенести на {new}"
            return Part(text, day=self.choice.day, at=self.choice.at, correction=correction)
        text = f"{lead} {when}" if correction else f"{w.service_words} {when}"
        master = f" к {_DATIVE.get(w.master, w.master)}" if w.master else ""
        return Part(
            text + master,
            service=self._service_given() if not correction else "",
            day=self.choice.day,
            at=self.choice.at,
            master=w.master,
            correction=correction,
        )

    def _another_day(self) -> Part:
        """The day asked for is full: the same time a day later (a flexible client: any day of its window)."""
        self.day_shift += 1
        if self.want.goal is Goal.BOOK_FLEXIBLE:
            if self.want.window == "на выходных":  # this weekend is full: the next one
                saturday = self._date(self.day_shift) + timedelta(days=(5 - self._date(self.day_shift).weekday()) % 7)
                self.day_shift = (saturday - self.today).days
                return Part(f"а {self._day(self.day_shift)}?")
            return Part(f"а {self._day(self.day_shift)} {self.want.window}?")
        base = self.want.new_day_offset if self.want.goal is Goal.RESCHEDULE else self.want.day_offset
        hour = self.want.new_hour if self.want.goal is Goal.RESCHEDULE else self.want.hour
        self.choice = Slot(self._date(base + self.day_shift), time(hour))
        lead = (
            "а на " + self._day(base + self.day_shift, prefix=False)
            if self.want.goal is Goal.RESCHEDULE
            else "а " + self._day(base + self.day_shift)
        )
        text = f"{lead} в {hour}:00?"
        return Part(text, day=self.choice.day, at=self.choice.at)

    def _pick_option(self, options: Sequence[str]) -> Part:
        """Which of the bot's numbered records: the one on the day the user named."""
        day = self._date(self.want.day_offset)
        for number, option in enumerate(options, 1):
            if day in (d for _, d in dates_in(option, self.today)):
                return Part(str(number))
        return Part(self._day(self.want.day_offset))

    def _confirms_my_choice(self, c: Confirmation) -> bool:
        w = self.want
        if c.services and w.service and w.service not in c.services:
            return False
        if (
            c.master
            and w.master
            and c.master != w.master
            and self.choice == Slot(self._date(w.day_offset), time(w.hour))
        ):
            return False
        if c.slot is None:
            return True  # says it is done without saying when: nothing to contradict
        day = c.slot.day or (self.choice.day if self.choice else None)
        if w.goal is Goal.BOOK_FLEXIBLE and self.choice is None:
            return day is not None and in_window(w.window, day, c.slot.at, today=self.today)
        return self.choice is not None and Slot(day, c.slot.at) == self.choice

    def _service_given(self) -> str:
        return "" if self.want.vague else self.want.service

    # --- words -------------------------------------------------------------------------------------------

    def _split(self, parts: list[Part]) -> list[Part]:
        lo, hi = self.persona.style.fragments
        count = max(1, min(len(parts), self.rng.randint(lo, hi)))
        cuts = sorted(self.rng.sample(range(1, len(parts)), count - 1)) if count > 1 else []
        bounds = [0, *cuts, len(parts)]
        return [_merge(parts[a:b]) for a, b in itertools.pairwise(bounds)]

    def _date(self, offset: int) -> date:
        return self.today + timedelta(days=offset)

    def _day_of(self, day: date) -> str:
        return self._day((day - self.today).days)

    def _day(self, offset: int, *, prefix: bool = True) -> str:
        if offset == 0:
            return "сегодня"
        if offset == 1:
            return "завтра"
        if offset == 2:
            return "послезавтра"
        day = self.today + timedelta(days=offset)
        if offset < 7:
            return ("в " if prefix else "") + _ACCUSATIVE[day.weekday()]
        return f"{day.day:02d}.{day.month:02d}"

    def _hour(self, hour: int) -> str:
        return self.rng.choice((f"в {hour}:00", f"в {hour}", f"на {hour}:00"))

    def _hour_part(self, hour: int) -> Part:
        return Part(self._hour(hour), at=time(hour))

    def _styled(self, text: str) -> str:
        style = self.persona.style
        if style.typos and len(text) > 6 and self.rng.random() < 0.5:
            i = self.rng.randrange(1, len(text) - 2)
            if text[i].isalpha() and text[i + 1].isalpha():
                text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
        if style.lower:
            text = text.lower().rstrip("!?.")
        if style.emoji and self.rng.random() < 0.4:
            text += " " + self.rng.choice(("🙂", "👍", "🙏", "✂️"))
        return text


def _merge(parts: Sequence[Part]) -> Part:
    """Parts sent as one fragment: their words joined, their facts together."""
    return Part(
        " ".join(p.text for p in parts),
        service=next((p.service for p in parts if p.service), ""),
        day=next((p.day for p in parts if p.day), None),
        at=next((p.at for p in parts if p.at), None),
        master=next((p.master for p in parts if p.master), ""),
    )

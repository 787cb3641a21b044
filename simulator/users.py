"""Simulated WhatsApp users: each writes like its persona, reacts to the bot, and stops when it is done."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Protocol

from simulator.personas import GIBBERISH, INJECTIONS, Goal, Persona, Want
from system.clock import Clock
from system.turn.dates import WEEKDAYS

MAX_TURNS = 4
REPLY_TIMEOUT_S = 300.0
_TIME = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b")
_ACCUSATIVE = ("понедельник", "вторник", "среду", "четверг", "пятницу", "субботу", "воскресенье")


class Channel(Protocol):
    """How a user reaches the salon's WhatsApp and hears back."""

    async def send_text(self, phone: str, text: str) -> None: ...

    async def send_media(self, phone: str, kind: str) -> None: ...

    async def wait_reply(self, phone: str, *, seen: int, timeout_s: float) -> str | None: ...


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

    async def run(self, channel: Channel, clock: Clock) -> None:
        await clock.sleep(max(0, self.start_ms - clock.now_ms()) / 1000)
        await self._say(channel, clock, self.opening())
        answers = 0
        while answers < MAX_TURNS:
            reply = await channel.wait_reply(self.phone, seen=len(self.replies), timeout_s=REPLY_TIMEOUT_S)
            if reply is None:
                return
            self.replies.append(reply)
            follow = self.follow_up(reply)
            if follow is None:
                if self._done():
                    return
                continue  # nothing to say to this one (an answer to an earlier message): wait for the next
            answers += 1
            await clock.sleep(self.rng.randint(*self.persona.style.think_ms) / 1000)
            await self._say(channel, clock, [follow])

    def _done(self) -> bool:
        return self.want.goal in (Goal.PRICES, Goal.CHAT, Goal.INJECT) or self.achieved(self)

    async def _say(self, channel: Channel, clock: Clock, parts: list[str]) -> None:
        style = self.persona.style
        for i, part in enumerate(parts):
            if i:
                await clock.sleep(self.rng.randint(*style.gap_ms) / 1000)
            if part.startswith("[") and part.endswith("]"):
                await channel.send_media(self.phone, part.strip("[]"))
            else:
                await channel.send_text(self.phone, self._styled(part))
            self.sent += 1
        if style.interrupts and self.want.goal in (Goal.BOOK, Goal.BOOK_FLEXIBLE) and self.sent == len(parts):
            # Writes again once the batch has gone to the bot, while it is thinking.
            await clock.sleep(self.rng.randint(9_500, 10_500) / 1000)
            await channel.send_text(self.phone, self._styled("если можно, к тому же мастеру, что в прошлый раз"))
            self.sent += 1

    # --- what to say -------------------------------------------------------------------------------------

    def opening(self) -> list[str]:
        w = self.want
        match w.goal:
            case Goal.BOOK:
                words = [
                    "Здравствуйте!",
                    "Хочу записаться",
                    w.service_words,
                    self._day(w.day_offset),
                    self._hour(w.hour),
                ]
                if w.master:
                    words.append(f"к {_dative(w.master)}")
            case Goal.BOOK_FLEXIBLE:
                words = [
                    "Привет",
                    f"хочу {w.service_words}",
                    self.rng.choice(("на выходных", "вечером", "после обеда")),
                ]
            case Goal.CANCEL:
                words = ["Добрый день", f"отмените, пожалуйста, мою запись {self._day(w.day_offset)}"]
            case Goal.RESCHEDULE:
                words = [
                    "Здравствуйте",
                    f"можно перенести мою запись {self._day(w.day_offset)}",
                    f"на {self._day(w.new_day_offset, prefix=False)} {self._hour(w.new_hour)}?",
                ]
            case Goal.PRICES:
                words = [f"Сколько стоит {w.service_words.removeprefix('на ')}?"]
            case Goal.INJECT:
                words = [self.rng.choice(INJECTIONS)]
            case _:
                if self.persona.name == "media_sender":
                    return [f"[{self.rng.choice(('voice', 'sticker', 'image'))}]"]
                words = [self.rng.choice(GIBBERISH)]
        return self._split(words)

    def follow_up(self, reply: str) -> str | None:
        """The next message after the bot's reply, or None when the user is done."""
        if self._done():
            return "спасибо!" if self.rng.random() < 0.3 and len(self.replies) == 1 else None
        if self.want.service and "какую услугу" in reply.lower() and self.want.service.lower() in reply.lower():
            return self.want.service.lower()
        offered = self._offered(reply)
        if offered and self.want.goal in (Goal.BOOK, Goal.BOOK_FLEXIBLE):
            return f"давайте в {offered}"
        if offered and self.want.goal is Goal.RESCHEDULE:
            return f"давайте перенесём на {offered}"
        if "нет" in reply.lower() and "свободн" in reply.lower():  # that day is full: try the next one
            shift = len(self.replies)
            if self.want.goal is Goal.RESCHEDULE:
                return f"а на {self._day(self.want.new_day_offset + shift, prefix=False)}?"
            return f"а {self._day(self.want.day_offset + shift)}?"
        if len(self.replies) == 1:
            return "да" if self.want.goal in (Goal.CANCEL, Goal.RESCHEDULE) else " ".join(self.opening())
        return None

    def _offered(self, reply: str) -> str | None:
        """The first time the bot offers after saying what is free, never one it mentioned before that."""
        low = reply.lower()
        start = max(low.rfind("свободно:"), low.rfind("выберите время:"), low.rfind("есть:"))
        if start < 0:
            return None
        refused = {f"{int(h):02d}:{m}" for h, m in _TIME.findall(low[:start])}
        times = [f"{int(h):02d}:{m}" for h, m in _TIME.findall(low[start:])]
        return next((t for t in times if t not in refused), None)

    def _split(self, words: list[str]) -> list[str]:
        lo, hi = self.persona.style.fragments
        count = max(1, min(len(words), self.rng.randint(lo, hi)))
        cuts = sorted(self.rng.sample(range(1, len(words)), count - 1)) if count > 1 else []
        bounds = [0, *cuts, len(words)]
        return [" ".join(words[a:b]) for a, b in itertools.pairwise(bounds)]

    def _day(self, offset: int, *, prefix: bool = True) -> str:
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


def _dative(name: str) -> str:
    return {"Сергей": "Сергею", "Алексей": "Алексею", "Дмитрий": "Дмитрию", "Игорь": "Игорю"}.get(name, name)


def weekday_name(day: date) -> str:
    return WEEKDAYS[day.weekday()]

"""The fake LLM's scripted dialogue mode: a cheap booking script for load runs (`aiadmin fake llm --mode scripted`).

The full fake (`simulator.fake_llm`) understands free Russian text (pymorphy3, dateparser, fuzzy matching); at a
hundred webhook requests a second that understanding alone would take both cores of the load machine. This mode
reads no words: it follows one script that still drives the booking tools, so the CRM stand-in sees real traffic.

- A client's first turn: `search_slots` for one day (tomorrow plus a seeded draw of 0..SPREAD_DAYS-1 days, so the
  bookings spread over the salon's calendar), then the offer "На DD.MM свободно: 15:00, 15:15, 15:30. …".
- The turn after an offer: with probability `book_share` (seeded), `create_booking` at the first HH:MM the client
  wrote (else the first offered) on the offered day, then "✅ …" or, when the CRM refused, an apology; otherwise
  an answer without tools that does not book (the CRM's calendar would fill within minutes at load-test rates).
- Anything else: one polite answer without tools.

So a turn takes at most two model calls. The protocol is OpenAI's chat completions, as the full fake speaks it
(it shares that fake's request checks, errors and message shapes): a tool call is an assistant message with
`content: null` and `tool_calls: [{"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}]` and
`finish_reason: "tool_calls"`; its result comes back as a `{"role": "tool", "tool_call_id"}` message.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from simulator.fake_llm import (
    MODEL,
    LatencyModel,
    _as_chosen,
    _chars_to_tokens,
    _guarded,
    _message,
    _tool_names,
    read_request,
)
from simulator.llm_replies import DONE, is_real_master
from simulator.llm_turn import Decision, Say, Turn, call, read_turn
from system.clock import Clock

SPREAD_DAYS = 28  # within the fixture salon's 30-day booking horizon
SLOTS_OFFERED = 3
OFFER = re.compile(r"На (\d{2})\.(\d{2}) свободно:")
CLOCK_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
THANKS = "Пожалуйста! Если что-то понадобится, пишите 🙂"
NO_TIME = "На {day} свободного времени не осталось. Напишите, пожалуйста, другой день."
HELD = (
    "Хорошо, {time} на {day} пока свободно. Чтобы записаться, подтвердите, пожалуйста, позже — держать время не могу."
)
REFUSED = "Не получилось записать: {why}. Напишите, пожалуйста, другое время."


@dataclass
class Script:
    """The script's decisions; its draws (day, booking or not) come from the seeded `rng`, one per turn."""

    rng: random.Random
    book_share: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.book_share <= 1:
            raise ValueError(f"book_share must be within 0..1, got {self.book_share}")

    def decide(self, turn: Turn) -> Decision:
        today = turn.facts.now.date()
        offered_day = _offered_day(turn.last_reply(), today)
        if offered_day is None:
            return self._search(turn, today)
        return self._book(turn, offered_day)

    def _search(self, turn: Turn, today: date) -> Decision:
        found = turn.last("search_slots")
        if found is None:
            if not turn.steps and turn.history and DONE in turn.last_reply():
                return Say(THANKS)
            day = today + timedelta(days=1 + self.rng.randrange(SPREAD_DAYS))
            return call("search_slots", service=_service(turn), date=day.isoformat())
        slots = [s for s in found.get("slots") or () if isinstance(s, dict) and "datetime" in s]
        if not slots:
            searched = next((st.args.get("date") for st in reversed(turn.steps) if st.name == "search_slots"), None)
            return Say(NO_TIME.format(day=searched or "этот день"))
        first = datetime.fromisoformat(str(slots[0]["datetime"])[:16])
        times = ", ".join(str(s.get("time") or s["datetime"][11:16]) for s in slots[:SLOTS_OFFERED])
        return Say(f"На {first:%d.%m} свободно: {times}. Во сколько вам удобно?")

    def _book(self, turn: Turn, day: date) -> Decision:
        booked = turn.last("create_booking")
        if booked is not None:
            doc = booked.get("booked")
            if not isinstance(doc, dict):
                return Say(REFUSED.format(why=str(booked.get("error") or "время занято")))
            master = doc.get("master")
            with_master = f", мастер {master}" if is_real_master(master) else ""
            return Say(f"{DONE} Записал вас на {day:%d.%m} в {doc.get('time')}{with_master}. Ждём вас!")
        at = _chosen_time(turn.text) or _chosen_time(turn.last_reply().split("свободно:", 1)[-1])
        if at is None or turn.steps or self.rng.random() >= self.book_share:
            return Say(HELD.format(time=at or "это время", day=f"{day:%d.%m}"))
        return call("create_booking", service=_service(turn), datetime=f"{day.isoformat()}T{at}")


def _service(turn: Turn) -> str:
    """The first of the salon's services the client named (a plain substring), else the salon's first."""
    said = " ".join([turn.text, *(text for role, text in turn.history if role == "user")]).lower()
    services = turn.facts.services
    named = next((s.title for s in services if s.title.lower() in said), None)
    return named or (services[0].title if services else "")


def _offered_day(reply: str, today: date) -> date | None:
    """The day of the offer in the assistant's last reply (this year, or the next one past New Year)."""
    match = OFFER.search(reply)
    if match is None:
        return None
    day, month = int(match[1]), int(match[2])
    try:
        offered = date(today.year, month, day)
    except ValueError:
        return None
    return offered if offered >= today else offered.replace(year=today.year + 1)


def _chosen_time(text: str) -> str | None:
    match = CLOCK_TIME.search(text)
    if match is None or int(match[1]) > 23:
        return None
    return f"{int(match[1]):02d}:{match[2]}"


class ScriptedModel:
    """The framework-free core: a request body in, a chat.completion body out (the full fake's shape)."""

    def __init__(self, *, seed: int, book_share: float) -> None:
        self._seed = seed
        self._script = Script(random.Random(seed), book_share)

    def complete(self, body: dict[str, Any], *, created_s: int) -> dict[str, Any]:
        messages: list[dict[str, Any]] = body["messages"]
        offered = _tool_names(body)
        digest = hashlib.sha256(str(self._seed).encode() + orjson.dumps(messages)).hexdigest()
        turn = read_turn(messages, frozenset(offered))
        decision = _guarded(self._script.decide(turn), turn.steps, turn.tools)
        choice = body.get("tool_choice", "auto")
        message, finish = _message(_as_chosen(decision, choice, offered), digest, malformed=False)
        prompt = _chars_to_tokens(sum(len(str(m.get("content") or "")) for m in messages))
        answer = _chars_to_tokens(
            len(message.get("content") or "")
            + sum(len(c["function"]["arguments"]) for c in message.get("tool_calls", ()))
        )
        return {
            "id": f"chatcmpl-{digest[:24]}",
            "object": "chat.completion",
            "created": created_s,
            "model": str(body.get("model") or MODEL),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer},
        }


def create_app(
    *,
    seed: int = 0,
    latency: LatencyModel | None = None,
    clock: Clock,
    api_key: str | None = None,
    book_share: float = 1.0,
    rng: random.Random | None = None,
) -> FastAPI:
    """The scripted fake LLM server: the full fake's routes, bearer check and request refusals, the script's answers.

    `rng` draws each answer's latency (seeded by `seed` when not given).
    """
    model = ScriptedModel(seed=seed, book_share=book_share)
    draw = rng or random.Random(seed)
    app = FastAPI(title="fake LLM (scripted)", docs_url=None, redoc_url=None, openapi_url=None)

    async def completions(request: Request) -> Response:
        read = await read_request(request, api_key)
        if isinstance(read, Response):
            return read
        _, body = read
        if latency is not None:
            await clock.sleep(latency.sample_s(draw))
        payload = model.complete(body, created_s=clock.now_ms() // 1000)
        return Response(orjson.dumps(payload), media_type="application/json")

    app.add_api_route("/v1/chat/completions", completions, methods=["POST"])
    app.add_api_route("/chat/completions", completions, methods=["POST"])
    return app

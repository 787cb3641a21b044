"""What the simulation observes beside the end state: model calls, the system's turns, the minimum turns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from simulator.judge import Booked
from simulator.judges import Record, TurnVerdict, judge_turns, turns_from_history
from simulator.personas import Goal, Want
from simulator.salon import Salon
from simulator.users import User
from simulator.whatsapp import OutboundMessage
from system.store.keys import Keys
from system.turn.context import ContextStore

History = list[tuple[str, str, int]]  # (role, text, at_ms), oldest first
ReadHistory = Callable[[str], Awaitable[History]]


class CountingApp:
    """An ASGI app that counts the model calls it serves (the fake LLM, wrapped): 2b's added calls."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and str(scope.get("path", "")).endswith("/chat/completions"):
            self.calls += 1
        await self.app(scope, receive, send)


class HistoryReader:
    """Reads one conversation's history from the system's context keys (the QA suite reads them too)."""

    def __init__(self, redis: Redis, *, keys: Keys, company_id: int) -> None:
        self._store = ContextStore(redis, keys=keys)
        self._company_id = company_id

    async def read(self, phone: str) -> History:
        context = await self._store.load(self._company_id, phone)
        return [(item.role, item.text, item.at_ms) for item in context.history]


def judge_conversations(
    users: Sequence[User],
    histories: dict[str, History],
    outbox: Sequence[OutboundMessage],
    *,
    initial: Sequence[Booked],
    final: Sequence[Booked],
) -> list[TurnVerdict]:
    """Turn-level verdicts of every user; none when the system's history could not be read."""
    if not histories:
        return []
    sent: dict[str, list[tuple[int, str]]] = {}
    for m in outbox:
        sent.setdefault(m.to, []).append((m.at_ms, m.text))
    before = {r.id: r for r in initial}
    changed: dict[str, list[Record]] = {}
    for r in final:
        old = before.get(r.id)
        if old is None or (old.start, old.master_id) != (r.start, r.master_id):
            changed.setdefault(r.phone, []).append(Record(r.id, r.service_title, r.master_name, r.start, r.deleted))
    return [
        judge_turns(
            u,
            turns=turns_from_history(histories.get(u.phone, []), sent.get(u.phone, [])),
            records=changed.get(u.phone, []),
        )
        for u in users
    ]


def min_turns(want: Want, salon: Salon, arrival: datetime) -> int:
    """The user turns a perfect administrator needs, the salon's slots as at the start of the day.

    One message that says everything is enough; a vague service costs a question, a taken slot an offer, a
    flexible client always chooses from an offer.
    """
    vague = 1 if want.vague else 0
    match want.goal:
        case Goal.BOOK:
            return 1 + vague + (0 if _free(salon, want, arrival, want.day_offset, want.hour) else 1)
        case Goal.BOOK_FLEXIBLE:
            return 2 + vague
        case Goal.RESCHEDULE:
            return 1 + (0 if _free(salon, want, arrival, want.new_day_offset, want.new_hour) else 1)
        case _:
            return 1


def _free(salon: Salon, want: Want, arrival: datetime, day_offset: int, hour: int) -> bool:
    service = next((s for s in salon.services.values() if s.title == want.service), None)
    if service is None:
        return False
    master = next((m.id for m in salon.masters.values() if m.name == want.master), 0)
    start = (arrival + timedelta(days=day_offset)).astimezone(salon.tz).replace(hour=hour, minute=0)
    return any(s.start == start for s in salon.free_slots(master, start.date(), (service.id,)))

"""Stale replies: a draft the client's newer fragments overtook is dropped while the turn has changed nothing.

A good administrator who sees a new message before answering reads it first. Before a reply goes out, and
before the turn's first booking change, the worker asks whether fragments of the conversation wait for a turn of
their own (the open buffer or a sealed batch: the CLAIM script removed this turn's fragments from both, so
whatever is there came later). If so, and the turn has created, moved or cancelled nothing, the turn stops and
its draft is dropped: the client's text goes into the history with no answer, and the next turn, released when
this one is acked, answers everything at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from typing import Any

from redis.asyncio import Redis

from system.booking.base import BookingBackend, Master, NewBooking, Record, Service, Slot
from system.models import Job
from system.store.keys import Keys
from system.turn.context import HistoryItem

# The tools that change a booking; their success is a side effect the client must hear about at once.
WRITE_TOOLS = frozenset({"create_booking", "cancel_booking", "reschedule_booking"})
# Drafts dropped in a row before a turn answers whatever it finds: a client who writes during every turn
# still gets an answer, and the model calls a dropped draft cost stay bounded.
DROPS_IN_A_ROW_MAX = 2


# Not an `AIAdminError`: an outcome of the turn that the worker handles as a dropped draft, never a failure.
class Overtaken(Exception):
    """The client wrote again before the turn's first booking change: the turn stops; `args[0]` is the write."""


async def fragments_waiting(redis: Redis, keys: Keys, job: Job) -> bool:
    """Whether fragments of the job's conversation arrived that this turn has not read (one round trip)."""
    _, conv = keys.conversation(job.company_id, job.phone)
    # Both keys carry the shard's hash tag: one slot, so one multi-key EXISTS on a cluster too.
    return bool(await redis.exists(conv.buf, conv.sealed))


def drops_in_a_row(history: Sequence[HistoryItem]) -> int:
    """Turns dropped just before this one: a dropped turn leaves the client's text with no answer after it."""
    count = 0
    for item in reversed(history):
        if item.role != "client":
            break
        count += 1
    return count


class TurnEffects(BookingBackend):
    """The CRM as one turn's tools see it, noting whether the turn may have changed a booking.

    A write counts once it is attempted, whatever its outcome: a timed-out cancel or move may have happened,
    and such a reply is sent rather than dropped. `before_first_write` records that in the turn before the CRM
    is asked, so that a redelivery after a crash knows it too (`changed` starts from the record).
    """

    def __init__(
        self, backend: BookingBackend, *, changed: bool, before_first_write: Callable[[], Awaitable[None]]
    ) -> None:
        self._backend = backend
        self.changed = changed
        self._before_first_write = before_first_write

    def saw(self, tool: str, result: dict[str, Any]) -> None:
        """A tool's result: a write tool that succeeded is a side effect even when it wrote nothing now."""
        if tool in WRITE_TOOLS and "error" not in result:
            self.changed = True

    async def _writing(self) -> None:
        if not self.changed:
            await self._before_first_write()
            self.changed = True

    async def services(self, company_id: int) -> list[Service]:
        return await self._backend.services(company_id)

    async def masters(self, company_id: int, *, service_ids: tuple[int, ...] = ()) -> list[Master]:
        return await self._backend.masters(company_id, service_ids=service_ids)

    async def dates(
        self, company_id: int, *, service_ids: tuple[int, ...], master_id: int | None, start: date, end: date
    ) -> list[date]:
        return await self._backend.dates(company_id, service_ids=service_ids, master_id=master_id, start=start, end=end)

    async def times(
        self, company_id: int, *, master_id: int | None, day: date, service_ids: tuple[int, ...]
    ) -> list[Slot]:
        return await self._backend.times(company_id, master_id=master_id, day=day, service_ids=service_ids)

    async def check(self, company_id: int, booking: NewBooking) -> None:
        await self._backend.check(company_id, booking)

    async def records(self, company_id: int, *, phone: str) -> list[Record]:
        return await self._backend.records(company_id, phone=phone)

    async def create(self, company_id: int, booking: NewBooking) -> Record:
        await self._writing()
        return await self._backend.create(company_id, booking)

    async def reschedule(self, company_id: int, record: Record, *, at: datetime, master_id: int) -> Record:
        await self._writing()
        return await self._backend.reschedule(company_id, record, at=at, master_id=master_id)

    async def cancel(self, company_id: int, record_id: int) -> None:
        await self._writing()
        await self._backend.cancel(company_id, record_id)

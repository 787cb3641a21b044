"""The injected clock: every wait in the system (batch deadlines, backoff, heartbeats) goes through it."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Milliseconds since the epoch, and waits measured on the same time line."""

    def now_ms(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """The real clock: `time.time()` and `asyncio.sleep`."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def wait_event(clock: Clock, event: asyncio.Event, *, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` passes on `clock`; True when the event fired."""
    if event.is_set():
        return True
    if timeout_s <= 0:
        return False
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(timeout_s))
    try:
        await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, sleeper):
            if not task.done():
                task.cancel()
    return event.is_set()

"""The virtual clock: time stands still while anything can run, then jumps to the next pending wait."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math


class VirtualClock:
    """A `system.clock.Clock` whose time moves only when every task is waiting on it.

    `drive()` runs beside the system: when the event loop has nothing ready to run it wakes the
    earliest sleeper and sets the time to its deadline, so a 9 s batch timeout takes microseconds.
    """

    IDLE_POLLS = 3  # loop passes with nothing ready before time may jump (lets I/O callbacks land)

    def __init__(self, *, start_ms: int, io_grace_s: float = 0.0) -> None:
        """`io_grace_s`: with real network I/O (a real Redis), how long the loop must stay quiet in wall time
        before time may jump, so that replies in flight land first."""
        self._now_ms = start_ms
        self._io_grace_s = io_grace_s
        self._timers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    def now_ms(self) -> int:
        return self._now_ms

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._now_ms + math.ceil(seconds * 1000), next(self._seq), future))
        self._changed.set()
        await future

    def advance_to(self, when_ms: int) -> None:
        """Move time forward (never back) and wake every sleeper due by then."""
        self._now_ms = max(self._now_ms, when_ms)
        while self._timers and self._timers[0][0] <= self._now_ms:
            _, _, future = heapq.heappop(self._timers)
            if not future.done():
                future.set_result(None)

    @property
    def pending(self) -> int:
        return sum(1 for _, _, f in self._timers if not f.done())

    async def settle(self) -> None:
        """Return once the loop has had nothing to run for a few passes."""
        loop = asyncio.get_running_loop()
        while True:
            idle = 0
            while idle < self.IDLE_POLLS:
                await asyncio.sleep(0)
                ready = getattr(loop, "_ready", None)
                idle = idle + 1 if not ready else 0
            if self._io_grace_s <= 0:
                return
            await asyncio.sleep(self._io_grace_s)  # wall time: let socket replies arrive
            if not getattr(loop, "_ready", None):
                return

    async def run_until(self, when_ms: int) -> None:
        """Let the system run, jumping from wait to wait, until time reaches `when_ms`."""
        while True:
            await self.settle()
            self._drop_cancelled()
            if not self._timers or self._timers[0][0] > when_ms:
                self.advance_to(when_ms)
                await self.settle()
                return
            self.advance_to(self._timers[0][0])

    async def drive(self) -> None:
        """Jump time forever (run as a task; cancel to stop)."""
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await self.settle()
                self._drop_cancelled()
                if self._timers:
                    self.advance_to(self._timers[0][0])
                else:
                    self._changed.clear()
                    await self._changed.wait()

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].done():
            heapq.heappop(self._timers)

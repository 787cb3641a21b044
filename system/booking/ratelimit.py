"""Client-side request budgets: sliding windows on the injected clock, so the CRM never has to say 429."""

from __future__ import annotations

import math
from collections import deque

from system.booking.base import RateLimited
from system.clock import Clock

DEFAULT_MAX_WAIT_S = 10.0


class LimitExhausted(RateLimited):
    """The client-side budget frees later than the caller may wait; `wait_s` is how long it would take."""

    def __init__(self, message: str, *, wait_s: float) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class SlidingWindow:
    """At most `limit` events in any `window_ms` span; pure bookkeeping, time is passed in."""

    def __init__(self, *, limit: int, window_ms: int) -> None:
        if limit < 1 or window_ms < 1:
            raise ValueError("limit and window_ms must be positive")
        self.limit = limit
        self.window_ms = window_ms
        self._stamps: deque[int] = deque(maxlen=limit)

    @classmethod
    def per_second(cls, rate: float) -> SlidingWindow:
        """A window admitting `rate` events per second on average; fractional rates widen the window."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        limit = max(1, math.floor(rate))
        return cls(limit=limit, window_ms=math.ceil(limit / rate * 1000))

    def wait_ms(self, now_ms: int) -> int:
        """How long until one more event fits (0: now)."""
        if len(self._stamps) < self.limit:
            return 0
        return max(0, self._stamps[0] + self.window_ms - now_ms)

    def record(self, now_ms: int) -> None:
        # The deque keeps only the last `limit` stamps: the oldest one is all `wait_ms` needs.
        self._stamps.append(now_ms)


class RequestLimiter:
    """Requests per second and per minute, both enforced; `acquire` waits on the clock, but boundedly."""

    def __init__(self, *, clock: Clock, rps: float, rpm: int, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> None:
        self._clock = clock
        self._windows = (SlidingWindow.per_second(rps), SlidingWindow(limit=rpm, window_ms=60_000))
        self._max_wait_s = max_wait_s

    def wait_ms(self, now_ms: int) -> int:
        return max(window.wait_ms(now_ms) for window in self._windows)

    async def acquire(self) -> None:
        """Take one request from the budget, sleeping until it frees; LimitExhausted past `max_wait_s` in all."""
        waited_s = 0.0
        while True:
            now_ms = self._clock.now_ms()
            wait_s = self.wait_ms(now_ms) / 1000
            if wait_s == 0:
                # No await between the check and the record: concurrent callers cannot both take the last slot.
                for window in self._windows:
                    window.record(now_ms)
                return
            if waited_s + wait_s > self._max_wait_s:
                raise LimitExhausted(
                    f"client-side request budget frees in {wait_s:.1f} s, more than {self._max_wait_s:.1f} s",
                    wait_s=wait_s,
                )
            await self._clock.sleep(wait_s)
            waited_s += wait_s

"""Retries with exponential backoff and full jitter, waiting on the injected clock with a seeded RNG."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

import structlog

from system.clock import Clock

T = TypeVar("T")
log = structlog.get_logger(__name__)


def parse_retry_after(value: str | None, *, now_ms: int) -> float:
    """Seconds a Retry-After header asks to wait (delta seconds or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now_ms / 1000
        except (TypeError, ValueError):
            return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def backoff_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (1-based): exponential with jitter, capped at `max_s`."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry; `retries` counts attempts after the first."""

    retries: int
    base_s: float = 0.5
    max_s: float = 30.0


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    retryable: Callable[[BaseException], float | None],
    clock: Clock,
    rng: random.Random,
    what: str,
) -> T:
    """Run `call`, retrying while `retryable(exc)` gives a delay hint (seconds, 0 = use the backoff).

    `retryable` returns None for an error that must not be retried; that error is raised at once.
    The last error is raised when the retries run out.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            hint = retryable(exc)
            if hint is None or attempt >= policy.retries:
                raise
            attempt += 1
            delay = max(hint, backoff_s(attempt, base_s=policy.base_s, max_s=policy.max_s, rng=rng))
            log.info("retrying", what=what, attempt=attempt, delay_s=round(delay, 3), error=type(exc).__name__)
            await clock.sleep(delay)

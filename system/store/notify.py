"""Wake-ups over Redis Pub/Sub: an event set whenever one of the channels gets a message.

A lost notification costs latency, never correctness: every waiter also wakes on its clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

# While Redis is away the listener tries again from 0.5 s, doubling, at most every 2 s: the waiters'
# own clocks cover the wake-ups missed meanwhile, and once back one wake-up covers what was published.
RESUBSCRIBE_DELAY_S = 0.5
RESUBSCRIBE_MAX_DELAY_S = 2.0
READ_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 2.0


class ChannelListener:
    """Sets `event` on every message published to `channels`."""

    def __init__(self, redis: Redis, channels: Sequence[str], *, event: asyncio.Event | None = None) -> None:
        self._redis = redis
        self._channels = list(channels)
        self.event = event or asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="channel-listener")
        await self._subscribed.wait()

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            _, pending = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            if pending:
                log.warning("pubsub_listener_did_not_stop", timeout_s=STOP_TIMEOUT_S)
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._channels)
                self._subscribed.set()
                if failures:
                    log.info("pubsub_resubscribed", channels=len(self._channels), failed_attempts=failures)
                    failures = 0
                # Anything published while we were (re)subscribing is covered by one extra wake-up.
                self.event.set()
                # Bounded reads rather than listen(): the loop re-checks `_closing` at least every
                # READ_TIMEOUT_S, so a cancellation swallowed inside the client cannot hang shutdown.
                while not self._closing:
                    if await pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_TIMEOUT_S):
                        self.event.set()
            except (RedisError, OSError) as exc:
                failures += 1
                if failures == 1:  # once per outage; the owner of the listener logs the outage itself
                    log.warning("pubsub_lost", error=f"{type(exc).__name__}: {exc}")
                self._subscribed.set()
                await asyncio.sleep(min(RESUBSCRIBE_MAX_DELAY_S, RESUBSCRIBE_DELAY_S * (1 << min(failures - 1, 10))))
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), STOP_TIMEOUT_S)

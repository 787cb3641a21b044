"""The signals the alerting rules need (deploy/prometheus/alerts.yaml): breaker, queue, heartbeat and Redis gauges."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import fakeredis
from redis.exceptions import ConnectionError as RedisConnectionError

from simulator.clock import VirtualClock
from system.metrics import Metrics
from system.runtime import Runtime
from system.settings import Settings
from system.turn.llm import BreakerState, CircuitBreaker

from .conftest import START_MS


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


class Figures:
    """A queue's totals as JobQueue reports them; `down` raises what a lost Redis connection raises."""

    def __init__(self, length: int, in_flight: int, dead: int, *, down: bool = False) -> None:
        self._figures = (length, in_flight, dead)
        self._down = down

    async def _read(self, index: int) -> int:
        if self._down:
            raise RedisConnectionError("Connection refused")
        return self._figures[index]

    async def length(self) -> int:
        return await self._read(0)

    async def in_flight(self) -> int:
        return await self._read(1)

    async def dead_letter_count(self) -> int:
        return await self._read(2)


async def test_queue_gauges_follow_redis_and_read_nan_while_it_is_down() -> None:
    metrics = Metrics()
    await metrics.read_queue(Figures(7, 3, 2))
    assert [sample(metrics, n) for n in ("aiadmin_queue_length", "aiadmin_queue_pending", "aiadmin_dead_letters")] == [
        7,
        3,
        2,
    ]
    await metrics.read_queue(Figures(9, 4, 2, down=True))
    values = [sample(metrics, n) for n in ("aiadmin_queue_length", "aiadmin_queue_pending", "aiadmin_dead_letters")]
    assert all(v is not None and math.isnan(v) for v in values), values


def test_breaker_gauge_reads_the_state_at_scrape_time(clock: VirtualClock) -> None:
    metrics = Metrics()
    breaker = CircuitBreaker(clock=clock, failures=2, reset_s=30)
    metrics.watch_llm_breaker(lambda: breaker.state is BreakerState.OPEN)
    assert sample(metrics, "aiadmin_llm_breaker_open") == 0
    breaker.record_failure()
    breaker.record_failure()
    assert sample(metrics, "aiadmin_llm_breaker_open") == 1
    clock.advance_to(START_MS + 30_000)  # half-open by the clock alone, with no call recorded
    assert sample(metrics, "aiadmin_llm_breaker_open") == 0


async def test_batcher_gauges_show_its_heartbeat_and_a_redis_outage(
    make_settings: Callable[..., Settings], clock: VirtualClock
) -> None:
    server = fakeredis.FakeServer(version=(7,))
    rt = Runtime.build(make_settings(), redis=fakeredis.FakeAsyncRedis(server=server), clock=clock)
    await rt.start()
    processor = rt.batcher(processor_id="p")
    task = asyncio.create_task(processor.run())
    try:
        await clock.settle()
        assert sample(rt.metrics, "aiadmin_redis_up") == 1
        assert sample(rt.metrics, "aiadmin_batcher_heartbeat_timestamp_seconds") == START_MS / 1000
        server.connected = False
        await clock.run_until(START_MS + 5_000)
        assert sample(rt.metrics, "aiadmin_redis_up") == 0
        assert sample(rt.metrics, "aiadmin_batcher_heartbeat_timestamp_seconds") == START_MS / 1000
        server.connected = True
        await rt.redis.script_flush()  # a restarted server has lost the scripts
        await clock.run_until(START_MS + 30_000)
        assert sample(rt.metrics, "aiadmin_redis_up") == 1
        beat = sample(rt.metrics, "aiadmin_batcher_heartbeat_timestamp_seconds")
        assert beat is not None and beat > START_MS / 1000 + 5
    finally:
        processor.stop()
        await task

"""The batch processor's loop on the virtual clock: a 9 s timeout checked in milliseconds of wall time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import fakeredis
import pytest
from redis.asyncio import Redis

from simulator.clock import VirtualClock
from system.batcher import BatchProcessor
from system.clock import WallClock
from system.models import InboundMessage
from system.runtime import Runtime
from system.settings import Settings

from .conftest import START_MS


@pytest.fixture
def redis() -> Redis:
    """The loop tests run on the virtual clock, which needs in-process I/O: fakeredis only."""
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))


@asynccontextmanager
async def running(processor: BatchProcessor) -> AsyncIterator[None]:
    task = asyncio.create_task(processor.run())
    try:
        yield
    finally:
        processor.stop()
        await task


def new_processor(rt: Runtime, *, heartbeat_s: float = 1.0) -> BatchProcessor:
    return BatchProcessor(
        rt.redis, store=rt.store, clock=rt.clock, metrics=rt.metrics, processor_id="p", heartbeat_interval_s=heartbeat_s
    )


async def jobs_now(rt: Runtime, clock: VirtualClock) -> list[str]:
    return [d.job.text for d in await rt.queue.read("w", count=10, now_ms=clock.now_ms())]


async def test_batch_fires_9000_ms_after_the_last_fragment_and_not_before(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Callable[..., InboundMessage]
) -> None:
    rt = make_runtime()
    await rt.start()
    started = time.perf_counter()
    async with running(new_processor(rt)):
        await clock.settle()
        for i, text in enumerate(["Хочу записаться", "на стрижку машинкой", "завтра в 15:00"]):
            await clock.run_until(START_MS + 300 * i)
            await rt.store.append(message(text), now_ms=clock.now_ms())
        last = START_MS + 600

        await clock.run_until(last + 8999)
        assert await jobs_now(rt, clock) == []
        await clock.run_until(last + 9000)
        assert await jobs_now(rt, clock) == ["Хочу записаться на стрижку машинкой завтра в 15:00"]
        stats = await rt.stats.collect()
        assert stats["flush_lateness_ms"]["max"] == 0
    assert time.perf_counter() - started < 2.0  # 9.6 s of salon time


async def test_an_earlier_deadline_wakes_a_sleeping_processor(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Callable[..., InboundMessage]
) -> None:
    rt = make_runtime(max_batch_size=3)
    await rt.start()
    async with running(new_processor(rt)):
        await clock.settle()
        await rt.store.append(message("раз", phone="79001111111"), now_ms=clock.now_ms())
        await clock.settle()  # the processor now sleeps on the clock (heartbeat 1 s, deadline 9 s)
        for text in ("а", "б", "в"):  # a full batch of another client is due at once
            await rt.store.append(message(text, phone="79002222222"), now_ms=clock.now_ms())
        await clock.run_until(START_MS)  # no time passes: only the wake-up can deliver it
        assert await jobs_now(rt, clock) == ["а б в"]


@pytest.mark.redis
async def test_a_sealed_batch_wakes_a_processor_sleeping_on_real_redis(
    real_redis: Redis, make_settings: Callable[..., Settings], message: Callable[..., InboundMessage]
) -> None:
    clock = WallClock()
    rt = Runtime.build(make_settings(max_batch_size=3), redis=real_redis, clock=clock)
    await rt.start()
    async with running(new_processor(rt, heartbeat_s=30)):
        await rt.store.append(message("раз", phone="79001111111"), now_ms=clock.now_ms())
        while not await rt.redis.zcard(rt.keys.batchers):  # the processor has started and gone to sleep
            await asyncio.sleep(0.01)
        sent_at = time.perf_counter()
        for text in ("а", "б", "в"):
            await rt.store.append(message(text, phone="79002222222"), now_ms=clock.now_ms())
        jobs: list[str] = []
        while not jobs and time.perf_counter() - sent_at < 5:
            jobs = [d.job.text for d in await rt.queue.read("w", count=10, now_ms=clock.now_ms())]
        waited = time.perf_counter() - sent_at
    assert jobs == ["а б в"]
    assert waited < 1.0  # the 9 s deadline and the 30 s heartbeat are far away

"""The batch processor's loop on the virtual clock: a 9 s timeout checked in milliseconds of wall time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import fakeredis
import pytest
import structlog
from redis.asyncio import Redis

from simulator.clock import VirtualClock
from simulator.fakeredis_time import fakeredis_on
from system.ingest.batch_processor import BatchProcessor, redis_retry_delay_s
from system.models import InboundMessage
from system.runtime import Runtime
from system.settings import Settings
from system.store.cluster import is_cluster

from .conftest import START_MS

WAKE_TIMEOUT_S = 10.0


@pytest.fixture
def redis() -> Redis:
    """The loop tests run on the virtual clock, which needs in-process I/O: fakeredis only."""
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))


@asynccontextmanager
async def running(processor: BatchProcessor) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(processor.run())
    try:
        yield task
    finally:
        processor.stop()
        await task


def new_processor(rt: Runtime) -> BatchProcessor:
    return rt.batcher(processor_id="p")


async def jobs_now(rt: Runtime, clock: VirtualClock) -> list[str]:
    return [d.job.text for d in await rt.queue.read("w", count=10, now_ms=clock.now_ms())]


async def test_batch_fires_9000_ms_after_the_last_fragment_and_not_before(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Callable[..., InboundMessage]
) -> None:
    rt = make_runtime()
    await rt.start()
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


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.redis), pytest.param("cluster", marks=pytest.mark.cluster)]
)
def live_redis(request: pytest.FixtureRequest) -> Redis:
    """A real server for what fakeredis cannot show (Pub/Sub across connections): one server, and a cluster."""
    fixture = "real_redis" if request.param == "redis" else "cluster_redis"
    client: Redis = request.getfixturevalue(fixture)
    return client


async def test_a_sealed_batch_wakes_a_processor_sleeping_on_real_redis(
    live_redis: Redis, make_settings: Callable[..., Settings], message: Callable[..., InboundMessage]
) -> None:
    # A virtual clock nobody drives: the processor's sleep toward the 9 s deadline and the next heartbeat never
    # ends by itself, so only the Pub/Sub wake-up can have it claim the sealed batch (no wall-clock bound).
    clock = VirtualClock(start_ms=START_MS)
    cluster = "true" if is_cluster(live_redis) else "false"
    rt = Runtime.build(make_settings(max_batch_size=3, redis_cluster=cluster), redis=live_redis, clock=clock)
    await rt.start()
    async with running(new_processor(rt)):
        await rt.store.append(message("раз", phone="79001111111"), now_ms=clock.now_ms())
        while not await rt.redis.zcard(rt.keys.batchers):  # the processor has started and gone to sleep
            await asyncio.sleep(0.01)
        for text in ("а", "б", "в"):
            await rt.store.append(message(text, phone="79002222222"), now_ms=clock.now_ms())
        jobs: list[str] = []
        async with asyncio.timeout(WAKE_TIMEOUT_S):  # a failure's bound, not a speed check
            while not jobs:
                jobs = [d.job.text for d in await rt.queue.read("w", count=10, now_ms=clock.now_ms())]
                await asyncio.sleep(0.01)
    assert jobs == ["а б в"]
    assert clock.now_ms() == START_MS


# --- Redis outages (issue 11): the loop backs off on the clock and carries on; nothing due is dropped ---


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer(version=(7,))


@pytest.fixture
def outage_redis(server: fakeredis.FakeServer) -> Redis:
    """A fakeredis client whose server the test can take down (`server.connected = False`) and bring back."""
    return fakeredis.FakeAsyncRedis(server=server)


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == name]


async def test_batcher_survives_a_redis_outage_backing_off_on_the_clock_and_logging_once(
    outage_redis: Redis,
    server: fakeredis.FakeServer,
    make_settings: Callable[..., Settings],
    clock: VirtualClock,
    message: Callable[..., InboundMessage],
) -> None:
    rt = Runtime.build(make_settings(), redis=outage_redis, clock=clock)
    await rt.start()
    processor = new_processor(rt)
    with structlog.testing.capture_logs() as logs:
        async with running(processor) as task:
            await clock.settle()
            await rt.store.append(message("Хочу записаться"), now_ms=clock.now_ms())
            await clock.settle()  # the wake-up's pass has run: the next is the heartbeat's, at START + 1 s
            server.connected = False
            await clock.run_until(START_MS + 20_000)
            assert not task.done()
            server.connected = True
            await rt.redis.script_flush()  # a restarted server has lost the scripts
            # Passes failed at +1, +1.5, +2.5, +4.5, +8.5 and +16.5 s (0.5 s doubling); the next is at +26.5 s.
            await clock.run_until(START_MS + 26_499)
            assert await jobs_now(rt, clock) == []
            await clock.run_until(START_MS + 26_500)
            assert await jobs_now(rt, clock) == ["Хочу записаться"]
    [error] = events(logs, "batcher_redis_error")
    assert error["log_level"] == "error"
    assert error["retry_in_s"] == 0.5
    [recovered] = events(logs, "batcher_redis_recovered")
    assert (recovered["failed_passes"], recovered["outage_ms"]) == (6, 25_500)


async def test_batcher_started_while_redis_is_down_waits_and_starts_when_it_answers(
    outage_redis: Redis,
    server: fakeredis.FakeServer,
    make_settings: Callable[..., Settings],
    clock: VirtualClock,
    message: Callable[..., InboundMessage],
) -> None:
    rt = Runtime.build(make_settings(), redis=outage_redis, clock=clock)
    await rt.store.append(message("Хочу записаться"), now_ms=clock.now_ms())
    server.connected = False
    processor = new_processor(rt)
    with structlog.testing.capture_logs() as logs:
        async with running(processor) as task:
            await clock.run_until(START_MS + 60_000)
            assert not task.done()
            server.connected = True
            await rt.queue.ensure_groups()  # the worker's part, for `jobs_now`
            await clock.run_until(START_MS + 70_000)  # the backoff has reached its 10 s ceiling
            assert await jobs_now(rt, clock) == ["Хочу записаться"]
            assert await rt.redis.zcard(rt.keys.batchers) == 1
    assert len(events(logs, "batcher_redis_error")) == 1
    assert len(events(logs, "batcher_redis_recovered")) == 1


async def test_batcher_stopped_during_an_outage_returns_without_raising(
    outage_redis: Redis, server: fakeredis.FakeServer, make_settings: Callable[..., Settings], clock: VirtualClock
) -> None:
    rt = Runtime.build(make_settings(), redis=outage_redis, clock=clock)
    processor = new_processor(rt)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(processor.run())
        await clock.settle()
        server.connected = False
        await clock.run_until(START_MS + 5_000)
        processor.stop()  # retire() cannot reach Redis: logged, not raised
        await task
    assert len(events(logs, "batcher_retire_failed")) == 1
    assert len(events(logs, "batcher_stopped")) == 1


def test_redis_retry_delay_doubles_from_half_a_second_to_ten() -> None:
    assert [redis_retry_delay_s(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 10, 10, 10]


# --- A batch outlives its deadline by BATCH_KEEP_MARGIN_MS: a late batcher flushes it, never drops it ---


async def test_batch_whose_batcher_is_late_by_more_than_the_batch_ttl_is_still_flushed(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Callable[..., InboundMessage]
) -> None:
    rt = make_runtime()  # AIADMIN_BATCH_TTL_S = 600: the old lifetime of an open batch's keys
    await rt.start()
    with fakeredis_on(clock):  # key expiry follows the virtual clock
        await rt.store.append(message("Хочу записаться"), now_ms=clock.now_ms())
        clock.advance_to(START_MS + 9000 + 15 * 60_000)  # the batcher comes back 15 minutes late
        assert await new_processor(rt).tick() == 1
        assert await jobs_now(rt, clock) == ["Хочу записаться"]
        stats = await rt.stats.collect()
    assert stats["flush_lateness_ms"]["max"] == 15 * 60_000


async def test_batch_expired_past_its_keep_margin_is_counted_not_dropped_silently(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Callable[..., InboundMessage]
) -> None:
    rt = make_runtime()
    await rt.start()
    processor = new_processor(rt)
    with fakeredis_on(clock), structlog.testing.capture_logs() as logs:
        await rt.store.append(message("Хочу записаться", phone="79001234567"), now_ms=clock.now_ms())
        clock.advance_to(START_MS + rt.store.config.keep_ms + 1)
        assert await processor.tick() == 0
        assert await rt.store.next_deadline_ms() is None  # the due entry is gone too
        expired = await rt.redis.hget(rt.keys.shard(0).stats, "batches_expired")
        stats = await rt.stats.collect()
    assert expired == b"1"
    assert stats["batches_expired"] == 1  # operators see it on the stats route
    assert rt.metrics.batches_expired._value.get() == 1
    [warning] = events(logs, "batch_expired_unflushed")
    assert warning["log_level"] == "warning"
    assert warning["phone"] == "79001234567"  # masked by the log pipeline, not here


async def test_batch_held_back_by_a_full_queue_keeps_its_keys_until_the_queue_drains(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Callable[..., InboundMessage]
) -> None:
    rt = make_runtime(queue_max_len=1)
    await rt.start()
    processor = new_processor(rt)
    with fakeredis_on(clock):
        await rt.store.append(message("первый", phone="79001111111"), now_ms=clock.now_ms())
        clock.advance_to(START_MS + 9000)
        assert await processor.tick() == 1  # the queue is full now
        await rt.store.append(message("второй", phone="79002222222"), now_ms=clock.now_ms())
        for minute in range(1, 121):  # two hours of backpressure, the batcher trying every minute
            clock.advance_to(START_MS + 18_000 + minute * 60_000)
            assert await processor.tick() == 0
        [first] = await rt.queue.read("w", count=10, now_ms=clock.now_ms())
        assert await rt.queue.ack(first, now_ms=clock.now_ms())
        clock.advance_to(clock.now_ms() + 1000)  # a batch held back is tried again a second later
        assert await processor.tick() == 1
        assert await jobs_now(rt, clock) == ["второй"]


async def test_a_runtime_built_processor_beats_at_the_settings_interval(
    make_runtime: Callable[..., Runtime], clock: VirtualClock
) -> None:
    rt = make_runtime(heartbeat_interval_s=30, heartbeat_stale_s=90)
    await rt.start()
    async with running(rt.batcher(processor_id="p")):
        await clock.settle()
        assert await rt.redis.zscore(rt.keys.batchers, "p") == START_MS
        await clock.run_until(START_MS + 29_999)
        assert await rt.redis.zscore(rt.keys.batchers, "p") == START_MS
        await clock.run_until(START_MS + 30_000)
        assert await rt.redis.zscore(rt.keys.batchers, "p") == START_MS + 30_000

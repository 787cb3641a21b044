"""Races on a real Redis server: two batcher processes, concurrent writers, a consumer acking turns."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from redis.asyncio import Redis

from system.clock import WallClock
from system.ingest.batch_store import AppendOutcome, BatchConfig, BatchStore
from system.models import InboundMessage
from system.settings import load_settings
from system.store.keys import Keys
from system.store.queue import JobQueue, QueueConfig

from .conftest import REAL_REDIS_URL

pytestmark = pytest.mark.redis

CONVERSATIONS = [(962302, f"7900{i:07d}") for i in range(6)] + [(100500, "79000000001")]
WRITERS = 4
FRAGMENTS_PER_WRITER = 400
DRAIN_DEADLINE_S = 30.0


def race_env() -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": REAL_REDIS_URL,
        "AIADMIN_ENV": "development",
        "AIADMIN_REDIS_PREFIX": "race",
        "AIADMIN_REDIS_SHARDS": "2",
        "AIADMIN_BATCH_TIMEOUT_MS": "15",
        "AIADMIN_MAX_BATCH_SIZE": "10",
        "AIADMIN_RATE_LIMIT_GLOBAL_PER_S": "0",
        "AIADMIN_RATE_LIMIT_SENDER_BURST": "1000000",
        "AIADMIN_RATE_LIMIT_SENDER_PER_MIN": "1000000",
        "AIADMIN_LOG_LEVEL": "WARNING",
    }


async def write(store: BatchStore, writer: int, rng: random.Random) -> list[str]:
    clock = WallClock()
    accepted = []
    for n in range(FRAGMENTS_PER_WRITER):
        company, phone = rng.choice(CONVERSATIONS)
        msg = InboundMessage(
            company_id=company,
            phone=phone,
            message_id=f"w{writer}-{n}",
            text=f"{writer}:{n}",
            received_ms=clock.now_ms(),
        )
        if await store.append(msg, now_ms=clock.now_ms()) is AppendOutcome.ACCEPTED:
            accepted.append(msg.message_id)
        if rng.random() < 0.3:
            await asyncio.sleep(rng.uniform(0, 0.02))  # pauses longer than the batch timeout split turns
    return accepted


async def consume(queue: JobQueue, seen: list[tuple[str, list[str]]], stop: asyncio.Event) -> None:
    clock = WallClock()
    while not stop.is_set():
        deliveries = await queue.read("consumer", count=50, now_ms=clock.now_ms())
        for d in deliveries:
            assert await queue.hold(d), "a second turn of one conversation was released"
            seen.append((d.job.batch_id, [m.message_id for m in d.job.messages]))
            assert await queue.ack(d, now_ms=clock.now_ms())
        if not deliveries:
            await asyncio.sleep(0.002)


async def test_two_batchers_and_concurrent_writers_put_every_fragment_in_exactly_one_job(
    real_redis: Redis,
) -> None:
    settings = load_settings({k: v for k, v in race_env().items() if k.startswith(("AIADMIN_", "REDIS_URL"))})
    keys = Keys(prefix=settings.redis_prefix, shards=settings.redis_shards)
    queue = JobQueue(real_redis, keys=keys, config=QueueConfig.from_settings(settings), rng=random.Random(1))
    await queue.ensure_groups()
    batchers = [subprocess.Popen([sys.executable, "-m", "system", "batcher"], env=race_env()) for _ in range(2)]
    writer_clients = [Redis.from_url(REAL_REDIS_URL) for _ in range(WRITERS)]
    seen: list[tuple[str, list[str]]] = []
    stop = asyncio.Event()
    consumer = asyncio.create_task(consume(queue, seen, stop))
    try:
        results = await asyncio.gather(
            *(
                write(BatchStore(c, keys=keys, config=BatchConfig.from_settings(settings)), i, random.Random(i))
                for i, c in enumerate(writer_clients)
            )
        )
        accepted = [mid for r in results for mid in r]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_DEADLINE_S
        while sum(len(ids) for _, ids in seen) < len(accepted) and loop.time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await consumer
        for p in batchers:
            p.terminate()
        for p in batchers:
            p.wait(timeout=10)
        for c in writer_clients:
            await c.aclose()

    assert len(accepted) == WRITERS * FRAGMENTS_PER_WRITER
    in_jobs = Counter(mid for _, ids in seen for mid in ids)
    assert not [mid for mid, n in in_jobs.items() if n > 1], "a fragment was in two jobs"
    assert set(in_jobs) == set(accepted), "a fragment was lost"
    assert len({batch for batch, _ in seen}) == len(seen), "a batch was enqueued twice"
    assert max(len(ids) for _, ids in seen) <= 10
    assert len(seen) < len(accepted)  # fragments were really merged
    for p in batchers:
        assert p.returncode == 0

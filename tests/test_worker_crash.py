"""On real Redis: a worker process dies mid-turn; after the reclaim the client has exactly one reply and at
most one booking."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from simulator.clock import VirtualClock
from system.models import InboundMessage
from system.runtime import Runtime, build_worker
from system.settings import load_settings
from system.store.keys import Keys

from .conftest import REAL_REDIS_URL, START_MS
from .crash_worker import CRASH_EXIT, LONG_REPLY
from .world import World, call, say, world_env

pytestmark = pytest.mark.redis

CLIENT = "79001234567"
VISIBILITY_S = 0.3


def crash_env() -> dict[str, str]:
    env = {f"AIADMIN_{k.upper()}": v for k, v in world_env().items()}
    return {
        **env,
        "REDIS_URL": REAL_REDIS_URL,
        "AIADMIN_ENV": "development",
        "AIADMIN_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
    }


async def run_until_killed(
    real_redis: Redis, tmp_path: Path, point: str, message: Callable[..., InboundMessage]
) -> tuple[Runtime, VirtualClock, Path]:
    """A turn is queued; a worker process takes it and dies at `point`; (runtime, clock, the world's journal)."""
    clock = VirtualClock(start_ms=START_MS)
    settings = load_settings(crash_env())
    rt = Runtime.build(settings, redis=real_redis, clock=clock)
    await rt.start()
    await rt.store.append(message("запишите завтра на 15:00 на стрижку машинкой к Сергею"), now_ms=START_MS)
    clock.advance_to(START_MS + 9000)
    await rt.batcher(processor_id="b").tick()

    journal = tmp_path / "world.jsonl"
    child = subprocess.run(
        [sys.executable, "-m", "tests.crash_worker", str(journal), point],
        env={**os.environ, **crash_env(), "CRASH_START_MS": str(clock.now_ms())},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == CRASH_EXIT, child.stderr[-2000:]
    return rt, clock, journal


async def take_over(rt: Runtime, clock: VirtualClock, world: World) -> None:
    """Another worker takes the job over once the dead one's visibility timeout has passed."""
    await asyncio.sleep(VISIBILITY_S + 0.1)  # XAUTOCLAIM measures idleness on the server's clock
    async with world.http() as http:
        worker = build_worker(rt, http=http, consumer="survivor", concurrency=1)
        [delivery] = await rt.queue.reclaim("survivor", count=1, now_ms=clock.now_ms())
        driver = asyncio.create_task(clock.drive())
        try:
            await worker.handle(delivery)
        finally:
            driver.cancel()


@pytest.mark.parametrize("point", ["after_send", "after_booking"])
async def test_killed_worker_leaves_one_reply_and_one_booking_after_the_reclaim(
    real_redis: Redis, tmp_path: Path, point: str, message: Callable[..., InboundMessage]
) -> None:
    rt, clock, journal = await run_until_killed(real_redis, tmp_path, point, message)
    before = World(journal=journal)
    assert len(before.records) == 1
    assert len(before.sent) == (1 if point == "after_send" else 0)

    world = World(journal=journal)
    # A re-run model asks for the same booking again; the CRM must not get a second one.
    world.llm_answers.extend(
        [
            call("create_booking", service="Стрижка машинкой", datetime="2025-11-26T15:00", master="Сергей"),
            say("Записал вас на завтра 15:00 к Сергею."),
        ]
    )
    await take_over(rt, clock, world)

    assert len(world.sent) == 1, world.sent
    assert len(world.records) == 1
    assert world.book_posts == 0  # the survivor never posted a booking
    assert len(world.llm_requests) == (0 if point == "after_send" else 2)
    assert await rt.queue.in_flight() == 0
    assert await rt.queue.dead_letters() == []
    assert await rt.redis.llen(Keys().context(962302, CLIENT).messages) == 2


async def test_long_reply_killed_after_its_first_part_resumes_at_the_second_part(
    real_redis: Redis, tmp_path: Path, message: Callable[..., InboundMessage]
) -> None:
    rt, clock, journal = await run_until_killed(real_redis, tmp_path, "after_first_part", message)
    [(_, first)] = World(journal=journal).sent  # part 1 was delivered, then the worker died

    world = World(journal=journal)
    await take_over(rt, clock, world)

    texts = [text for _, text in world.sent]
    assert texts[0] == first and len(texts) == 2  # part 1 arrived exactly once, part 2 once
    assert " ".join(texts).split() == LONG_REPLY.split()
    assert world.llm_requests == []  # the stored reply was resumed, not thought again
    assert len(world.records) == 1 and world.book_posts == 0
    assert await rt.queue.in_flight() == 0
    assert await rt.queue.dead_letters() == []

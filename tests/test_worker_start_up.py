"""Issue 12: a worker started while Redis is down waits for it with backoff instead of dying, and logs the
outage once (`worker_redis_error`) and its end once (`worker_redis_recovered`), as the batcher does."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from system.clock import WallClock
from system.runtime import Runtime
from system.settings import load_settings

from .test_redis_outage import STARTUP_DEADLINE_S, RedisServer, aiadmin, free_port, stopped_redis_server, system_env

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]
__all__ = ["stopped_redis_server"]  # the fixture, imported for the tests below
DOWN_S = 2.0


async def test_worker_started_while_redis_is_down_waits_and_takes_jobs_when_it_answers(
    stopped_redis_server: RedisServer, tmp_path: Path
) -> None:
    env = system_env(stopped_redis_server.url, {"whatsapp": free_port(), "llm": free_port(), "crm": free_port()})
    settings = load_settings({k: v for k, v in env.items() if k.startswith(("AIADMIN_", "REDIS_URL"))})
    with aiadmin("worker", env=env, logs=tmp_path) as worker:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while "worker_redis_error" not in worker.log_events():
            assert worker.proc.poll() is None, worker.log_events()
            assert time.monotonic() < deadline, worker.log_events()
            await asyncio.sleep(0.05)
        # Retries at 0.5 s and 1 s fail meanwhile: the worker stays, and says so once, not once per retry.
        await asyncio.sleep(DOWN_S)
        assert worker.proc.poll() is None, worker.log_events()
        assert worker.log_events().count("worker_redis_error") == 1, worker.log_events()
        stopped_redis_server.start()
        rt = Runtime.build(settings, clock=WallClock())
        try:
            # The worker's consumer group appears once it reaches Redis: it made it itself, no `rt.start()` here.
            groups: list[object] = []
            while not groups:
                assert worker.proc.poll() is None, worker.log_events()
                assert time.monotonic() < deadline, worker.log_events()
                await asyncio.sleep(0.1)
                if await rt.redis.exists(rt.keys.shard(0).queue):
                    groups = await rt.redis.xinfo_groups(rt.keys.shard(0).queue)
            while "worker_redis_recovered" not in worker.log_events():
                assert time.monotonic() < deadline, worker.log_events()
                await asyncio.sleep(0.1)
        finally:
            await rt.close()
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=15) == 0
    events = worker.log_events()
    assert events.count("worker_redis_error") == 1, events  # once per outage, not once per retry
    assert events.count("worker_redis_recovered") == 1, events

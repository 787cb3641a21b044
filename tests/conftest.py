"""Shared fixtures: one Redis contract (fakeredis and a real server), settings and runtime factories."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from simulator.clock import VirtualClock
from system.models import InboundMessage, MessageKind
from system.runtime import Runtime
from system.settings import Settings, load_settings

REAL_REDIS_URL = os.environ.get("AIADMIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"
START_MS = 1_764_064_800_000  # 2025-11-25 10:00 UTC (13:00 in Moscow)


async def real_redis_or_skip() -> Redis:
    """A client of the test database on the real server; in CI a missing server fails the run."""
    client: Redis = Redis.from_url(REAL_REDIS_URL)
    try:
        await client.ping()
    except (RedisConnectionError, OSError) as exc:
        await client.aclose()
        if IN_CI:
            pytest.fail(f"CI=true but Redis at {REAL_REDIS_URL} does not answer: {exc}")
        pytest.skip(f"no Redis at {REAL_REDIS_URL}")
    return client


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """The contract suite's Redis: every Redis-backed store runs on both."""
    if request.param == "fakeredis":
        client: Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
    else:
        client = await real_redis_or_skip()
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def real_redis() -> AsyncIterator[Redis]:
    client = await real_redis_or_skip()
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    def make(**env: Any) -> Settings:
        values = {f"AIADMIN_{k.upper()}": str(v) for k, v in env.items()}
        return load_settings(values)

    return make


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start_ms=START_MS)


@pytest.fixture
def make_runtime(redis: Redis, clock: VirtualClock, make_settings: Callable[..., Settings]) -> Callable[..., Runtime]:
    def make(**env: Any) -> Runtime:
        return Runtime.build(make_settings(**env), redis=redis, clock=clock)

    return make


@pytest.fixture
def message() -> Iterator[Callable[..., InboundMessage]]:
    """A factory of accepted inbound messages with unique ids."""
    counter = iter(range(1, 1_000_000))

    def make(
        text: str,
        *,
        phone: str = "79001234567",
        company_id: int = 962302,
        message_id: str | None = None,
        received_ms: int = START_MS,
        kind: MessageKind = MessageKind.TEXT,
    ) -> InboundMessage:
        return InboundMessage(
            company_id=company_id,
            phone=phone,
            message_id=message_id or f"wamid.test{next(counter)}",
            text=text,
            kind=kind,
            received_ms=received_ms,
        )

    yield make

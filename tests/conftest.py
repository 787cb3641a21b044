"""Shared fixtures: one Redis contract (fakeredis and a real server), settings and runtime factories."""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from structlog._config import BoundLoggerLazyProxy

from simulator.clock import VirtualClock
from simulator.redis_target import (
    MARKER_KEY,
    Target,
    TargetRefused,
    TargetUnreachable,
    check_target,
    claim,
    mark,
)
from system.models import InboundMessage, MessageKind
from system.runtime import Runtime
from system.settings import Settings, load_settings
from system.store.cluster import connect_cluster, is_cluster
from system.store.keys import Keys
from system.store.queue import Delivery

# The tests' own Redis database (never REDIS_URL, the production variable); flushed by every test that uses it.
REAL_REDIS_URL = os.environ.get("AIADMIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The tests' Redis Cluster, e.g. redis://127.0.0.1:7000 (`.ci/redis-cluster` starts one on 7000-7005 and `.ci/run`
# names it); emptied by every test that uses it. Unset: the cluster backend is skipped, as a cluster is a server
# of its own that a run must be given, not one it may find and empty.
CLUSTER_URL = os.environ.get("AIADMIN_TEST_REDIS_CLUSTER_URL", "")
# A database holding keys no test tool wrote is flushed only when asked; db 0 or a remote host only when forced.
REDIS_FLUSH = os.environ.get("AIADMIN_TEST_REDIS_FLUSH", "") == "1"
REDIS_FORCE = os.environ.get("AIADMIN_TEST_REDIS_FORCE", "") == "1"
IN_CI = os.environ.get("CI", "").lower() == "true"
START_MS = 1_764_064_800_000  # 2025-11-25 10:00 UTC (13:00 in Moscow)
CLIENT_PHONE = "79001234567"  # the default client of `message` and `next_turn`


def target_of_tests(url: str = REAL_REDIS_URL, *, force: bool = REDIS_FORCE) -> Target:
    """The tests' database as the guard sees it; TargetRefused for db 0 or a remote host unless forced."""
    return check_target(
        url,
        owner="pytest (AIADMIN_TEST_REDIS_URL)",
        force=force,
        flush_option="AIADMIN_TEST_REDIS_FLUSH=1",
        force_option="AIADMIN_TEST_REDIS_FORCE=1",
    )


@dataclass
class ClaimedDatabase:
    """The session's claim on the tests' database: checked and flushed once, then each test flushes it."""

    target: Target | None
    refused: str = ""
    claimed: bool = False


def forget_cached_loggers() -> None:
    """Module loggers cache their first configuration (`cache_logger_on_first_use`): make them read it again."""
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("system", "simulator", "reports", "loadtests")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, BoundLoggerLazyProxy):
                vars(value).pop("bind", None)


@pytest.fixture(autouse=True)
def logging_left_as_found() -> Iterator[None]:
    """A test that configures logging (a CLI run in-process) leaves no cached loggers behind for the next."""
    yield
    if structlog.is_configured():
        structlog.reset_defaults()
        forget_cached_loggers()


@pytest.fixture(scope="session")
def claimed_database() -> ClaimedDatabase:
    try:
        return ClaimedDatabase(target_of_tests())
    except TargetRefused as exc:
        return ClaimedDatabase(None, refused=str(exc))


async def real_redis_or_skip(db: ClaimedDatabase) -> Redis:
    """A client of the test database on the real server; in CI a missing server fails the run.

    The first use in a session claims the database (`simulator.redis_target`): one holding keys no test tool
    wrote fails the test instead of being flushed.
    """
    if db.target is None:
        pytest.fail(db.refused)
    client: Redis = Redis.from_url(db.target.url)
    try:
        await client.ping()
    except (RedisConnectionError, OSError) as exc:
        await client.aclose()
        if IN_CI:
            pytest.fail(f"CI=true but Redis at {REAL_REDIS_URL} does not answer: {exc}")
        pytest.skip(f"no Redis at {REAL_REDIS_URL}")
    if not db.claimed:
        try:
            await claim(client, db.target, flush=REDIS_FLUSH)
        except (TargetRefused, TargetUnreachable) as exc:
            await client.aclose()
            pytest.fail(str(exc))
        db.claimed = True
    return client


async def flush_and_mark(client: Redis, db: ClaimedDatabase) -> None:
    """Empty the test database, keeping the marker that makes it ours for the next run."""
    assert db.target is not None
    await client.flushdb()
    await mark(client, db.target)


async def cluster_or_skip() -> Redis:
    """A client of the tests' Redis Cluster, claimed and emptied; in CI a missing cluster fails the run.

    A cluster has database 0 only: the guard (`simulator.redis_target`, as for every test database) empties it only
    when it is on a loopback address (unless forced) and empty or marked by our tools.
    """
    if not CLUSTER_URL:
        pytest.skip("AIADMIN_TEST_REDIS_CLUSTER_URL is unset (.ci/run starts a cluster and sets it)")
    try:
        target = check_target(
            CLUSTER_URL,
            owner="pytest (AIADMIN_TEST_REDIS_CLUSTER_URL)",
            force=REDIS_FORCE,
            flush_option="AIADMIN_TEST_REDIS_FLUSH=1",
            force_option="AIADMIN_TEST_REDIS_FORCE=1",
            cluster=True,
        )
    except TargetRefused as exc:
        pytest.fail(str(exc))
    client = connect_cluster(CLUSTER_URL)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        if IN_CI:
            pytest.fail(f"CI=true but no Redis Cluster answers at {CLUSTER_URL} (.ci/redis-cluster starts one): {exc}")
        pytest.skip(f"no Redis Cluster at {CLUSTER_URL}")
    try:
        await claim(client, target, flush=REDIS_FLUSH)
    except (TargetRefused, TargetUnreachable) as exc:
        await client.aclose()
        pytest.fail(str(exc))
    return client


async def empty_cluster(client: Redis) -> None:
    """Empty every master (FLUSHDB goes to all of them on a cluster client), keeping the marker."""
    await client.flushdb()
    await client.set(MARKER_KEY, "pytest (AIADMIN_TEST_REDIS_CLUSTER_URL)")


@pytest.fixture(
    params=[
        "fakeredis",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
    ]
)
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    """The contract suite's Redis: every Redis-backed store runs on fakeredis, one server and a cluster."""
    if request.param == "fakeredis":
        client: Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
        await client.flushdb()
        yield client
        await client.aclose()
        return
    if request.param == "cluster":
        client = await cluster_or_skip()
        yield client
        await empty_cluster(client)
        await client.aclose()
        return
    db: ClaimedDatabase = request.getfixturevalue("claimed_database")
    client = await real_redis_or_skip(db)
    await flush_and_mark(client, db)
    yield client
    await flush_and_mark(client, db)
    await client.aclose()


@pytest.fixture
async def cluster_redis() -> AsyncIterator[Redis]:
    """The tests' Redis Cluster alone (for what only a cluster has: replicas to wait for, slots, nodes)."""
    client = await cluster_or_skip()
    yield client
    await empty_cluster(client)
    await client.aclose()


@pytest.fixture
async def real_redis(claimed_database: ClaimedDatabase) -> AsyncIterator[Redis]:
    client = await real_redis_or_skip(claimed_database)
    await flush_and_mark(client, claimed_database)
    yield client
    await flush_and_mark(client, claimed_database)
    await client.aclose()


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    def make(**env: Any) -> Settings:
        values = {f"AIADMIN_{k.upper()}": str(v) for k, v in env.items()}
        return load_settings(values)

    return make


class ManualClock:
    """Time stands still except when someone sleeps: each sleep is recorded and jumps the time forward."""

    def __init__(self, *, start_ms: int = START_MS) -> None:
        self.now = start_ms
        self.sleeps: list[float] = []

    def now_ms(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0, math.ceil(seconds * 1000))
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start_ms=START_MS)


@pytest.fixture
async def driven(clock: VirtualClock) -> AsyncIterator[VirtualClock]:
    """The `clock`, its time jumping from wait to wait (backoffs, deadlines, latency) while the test runs."""
    task = asyncio.create_task(clock.drive())
    yield clock
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def make_runtime(redis: Redis, clock: VirtualClock, make_settings: Callable[..., Settings]) -> Callable[..., Runtime]:
    def make(**env: Any) -> Runtime:
        if is_cluster(redis):
            # The same shard count as on the other backends (the contract is the same behaviour); tests of
            # several shards say so, and the cluster then spreads them over its masters.
            env.setdefault("redis_cluster", "true")
            env.setdefault("redis_shards", 1)
        return Runtime.build(make_settings(**env), redis=redis, clock=clock)

    return make


async def next_turn(
    rt: Runtime, clock: VirtualClock, message: Callable[..., InboundMessage], *texts: str, phone: str = CLIENT_PHONE
) -> Delivery:
    """The client writes `texts`; the batch falls due, a batcher pass enqueues it and consumer "w1" reads it."""
    for text in texts:
        await rt.store.append(message(text, phone=phone, received_ms=clock.now_ms()), now_ms=clock.now_ms())
    clock.advance_to(clock.now_ms() + rt.settings.batch_timeout_ms)
    await rt.batcher(processor_id="b").tick()
    [delivery] = await rt.queue.read("w1", count=10, now_ms=clock.now_ms())
    return delivery


@pytest.fixture
def message() -> Iterator[Callable[..., InboundMessage]]:
    """A factory of accepted inbound messages with unique ids."""
    counter = iter(range(1, 1_000_000))

    def make(
        text: str,
        *,
        phone: str = CLIENT_PHONE,
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


def keys_for(redis: Redis, **kwargs: Any) -> Keys:
    """The key builder a process would use on this Redis (hash-tagged context keys on a cluster)."""
    return Keys(cluster=is_cluster(redis), **kwargs)

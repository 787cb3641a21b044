"""What every benchmark sets up: its Redis database (claimed, then flushed) and the settings of the processes.

Every benchmark runs the components as separate OS processes (`loadtests._processes`) on a Redis database
it flushes; it claims that database first through `simulator.redis_target` (loopback, not db 0, ours or empty).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from loadtests._processes import Process, wait_until
from simulator.redis_target import Target, TargetRefused, TargetUnreachable, check_target, claim_url
from system.runtime import connect_redis
from system.settings import ENV_PREFIX, Settings
from system.store.keys import Keys

KEY_PREFIX = "bench"


class BenchError(Exception):
    """The benchmark cannot run or found its own figures inconsistent; the message says which."""


def check_redis_url(url: str, *, force: bool, who: str = "aiadmin bench") -> Target:
    """The benchmark's Redis database; BenchError for db 0 or a remote host unless forced (it is flushed)."""
    try:
        return check_target(url, owner=who, force=force)
    except TargetRefused as exc:
        raise BenchError(str(exc)) from exc


def claim_redis(url: str, *, force: bool, flush: bool, who: str = "aiadmin bench") -> Target:
    """Check `url`, then flush its database and mark it as ours; BenchError when it holds someone else's keys."""
    target = check_redis_url(url, force=force, who=who)
    try:
        claim_url(target, flush=flush)
    except (TargetRefused, TargetUnreachable) as exc:
        raise BenchError(str(exc)) from exc
    return target


def without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else url


def settings_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The settings of every component under test: rate limits out of the way, quiet logs."""
    env = {
        "REDIS_URL": redis_url,
        "AIADMIN_ENV": "development",  # the processes under test run without webhook secrets or stats token
        "AIADMIN_REDIS_PREFIX": KEY_PREFIX,
        "AIADMIN_RATE_LIMIT_GLOBAL_PER_S": "0",
        "AIADMIN_RATE_LIMIT_SENDER_BURST": "1000000",
        "AIADMIN_RATE_LIMIT_SENDER_PER_MIN": "1000000",
        "AIADMIN_LOG_LEVEL": "WARNING",
    }
    return env | {f"{ENV_PREFIX}{k.upper()}": v for k, v in extra.items()}


def process_env(redis_url: str, **extra: str) -> dict[str, str]:
    # Inherited AIADMIN_* variables would make the figures depend on the caller's shell.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return inherited | settings_env(redis_url, **extra)


@contextlib.asynccontextmanager
async def redis_client(settings: Settings) -> AsyncIterator[Redis]:
    """A Redis client built as production builds it, closed however the block ends."""
    redis = connect_redis(settings)
    try:
        yield redis
    finally:
        await redis.aclose()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def wait_batcher_ready(redis: Redis, keys: Keys, proc: Process) -> None:
    """Poll the batchers' heartbeat set: a batcher beats after it has subscribed to its wake-ups."""

    async def beating() -> bool:
        return bool(await redis.zcard(keys.batchers))

    await wait_until(beating, proc, what="sent no heartbeat")

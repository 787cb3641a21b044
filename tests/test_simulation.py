"""A small simulation through the whole system: the world's invariants hold and one seed gives one transcript."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from redis.asyncio import Redis

from simulator.personas import PERSONAS
from simulator.simulation import SimOptions, SimResult, simulate

from .conftest import REAL_REDIS_URL


def digest(result: SimResult) -> str:
    lines = b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in result.transcript.events)
    return hashlib.sha256(lines).hexdigest()


async def test_a_small_salon_day_keeps_every_invariant() -> None:
    result = await simulate(SimOptions(users=2 * len(PERSONAS), seed=7))
    world = result.world
    assert (world.double_bookings, world.foreign_touched, world.turns_answered_twice) == (0, 0, 0)
    assert world.unanswered_users == 0
    assert result.stats["dead_letters"] == 0
    assert result.stats["fragments_flushed"] > result.stats["batches_flushed"]  # fragments were merged
    assert result.bookings_created > 0
    assert {v.persona for v in result.verdicts} == set(PERSONAS)
    assert sum(v.success for v in result.verdicts) >= 0.8 * len(result.verdicts)


async def test_one_seed_gives_one_transcript() -> None:
    first = await simulate(SimOptions(users=12, seed=3))
    second = await simulate(SimOptions(users=12, seed=3))
    other = await simulate(SimOptions(users=12, seed=4))
    assert digest(first) == digest(second)
    assert digest(first) != digest(other)


@pytest.mark.redis
async def test_a_small_salon_day_on_real_redis(real_redis: Redis) -> None:
    result = await simulate(SimOptions(users=len(PERSONAS), seed=11, redis_url=REAL_REDIS_URL))
    world = result.world
    assert (world.double_bookings, world.foreign_touched, world.turns_answered_twice, world.unanswered_users) == (
        0,
        0,
        0,
        0,
    )
    assert result.stats["dead_letters"] == 0
    assert result.stats["flush_lateness_ms"]["p99"] <= 20

"""The load run's Redis memory sampler: the TTL audit and the wait for the conversations to expire (real Redis)."""

from __future__ import annotations

from redis.asyncio import Redis

from loadtests.run._redis_memory import RedisMemory

from .conftest import REAL_REDIS_URL


async def test_the_run_waits_until_every_key_with_a_ttl_has_expired_and_reads_the_memory_then(
    real_redis: Redis,
) -> None:
    memory = RedisMemory(REAL_REDIS_URL, every_s=0.05)
    memory.start()
    await real_redis.set("aiadmin:{s0}:stats", "kept")  # a bounded structure without a TTL
    for i in range(50):
        await real_redis.set(f"dialog:962302:7900000{i:04d}", "x" * 1_000, px=300)
    figures = memory.close(expire_wait_s=30)
    assert figures["keys"]["keys"] == 51 and figures["keys"]["without_ttl"] == 1
    expiry = figures["expiry"]
    assert expiry["keys_expiring_at_end"] == 50 and expiry["keys_with_ttl_left"] == 0
    assert expiry["waited_s"] < 30
    assert await real_redis.dbsize() == 2  # the stats and the test's claim marker
    assert figures["keys_series"][-1][1] == 2


async def test_without_a_wait_the_summary_has_no_expiry(real_redis: Redis) -> None:
    memory = RedisMemory(REAL_REDIS_URL, every_s=0.05)
    memory.start()
    await real_redis.set("messages:962302:79000000001", "x", ex=3_600)
    figures = memory.close()
    assert figures["expiry"] is None
    assert figures["keys"]["longest_ttl_s"] > 3_500


async def test_keys_that_expired_while_the_audit_scanned_do_not_keep_the_wait_going(real_redis: Redis) -> None:
    """The soak's first wait ran to its timeout: its floor was counted as the keys left minus those the audit saw
    expiring, and 9,000 of those had already expired while it scanned."""
    memory = RedisMemory(REAL_REDIS_URL, every_s=0.05)
    memory.start()
    await real_redis.set("aiadmin:{s0}:stats", "kept")
    for i in range(10):
        await real_redis.set(f"dialog:962302:7900000{i:04d}", "x", px=200)
    audit_while_more_lived = {"keys": 61, "without_ttl": 1}  # 50 more had a TTL when the scan passed them
    expiry = memory._wait_for_expiry(audit_while_more_lived, timeout_s=20)
    memory.close()
    assert expiry["keys_with_ttl_left"] == 0 and expiry["waited_s"] < 20

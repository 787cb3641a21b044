"""The batch processor: sleeps until the earliest deadline, is woken by earlier ones, claims due batches."""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from system.clock import Clock, wait_event
from system.ingest.batch_store import BatchStore, ClaimResult, ClaimStatus
from system.metrics import Metrics
from system.store.notify import ChannelListener

log = structlog.get_logger(__name__)

CLAIM_CHUNK = 500
# Backoff of the loop while Redis fails (an outage, or not up yet at start): from 0.5 s, doubling, at most
# 10 s, as the worker's. Due batches wait in Redis meanwhile; they are flushed, late, when it is back.
REDIS_RETRY_BASE_S = 0.5
REDIS_RETRY_MAX_S = 10.0
RETIRE_TIMEOUT_S = 2.0


def redis_retry_delay_s(failures: int) -> float:
    """The wait after the `failures`-th failed pass in a row (1-based)."""
    return min(REDIS_RETRY_MAX_S, REDIS_RETRY_BASE_S * (1 << min(failures - 1, 10)))


class BatchProcessor:
    """Claims every due batch of every shard; any number of processors may run at once."""

    def __init__(
        self,
        redis: Redis,
        *,
        store: BatchStore,
        clock: Clock,
        metrics: Metrics,
        processor_id: str,
        heartbeat_interval_s: float,
    ) -> None:
        self._redis = redis
        self._store = store
        self._keys = store.keys
        self._clock = clock
        self._metrics = metrics
        self._id = processor_id
        self._heartbeat_interval_s = heartbeat_interval_s
        self._last_beat_ms: int | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()  # cuts a backoff short; `_wake` also fires on Pub/Sub

    async def tick(self) -> int:
        """Claim everything due now; returns the number of jobs enqueued."""
        enqueued = 0
        for shard in self._keys.all_shards:
            while True:
                now_ms = self._clock.now_ms()
                members = await self._store.due(shard, now_ms=now_ms, limit=CLAIM_CHUNK)
                if not members:
                    break
                # Cost is CPU and round-trip time, so it is measured on the performance counter.
                started = time.perf_counter()
                results = await self._store.claim(shard, members, now_ms=now_ms)
                per_claim_s = (time.perf_counter() - started) / len(members)
                enqueued += self._record(results, per_claim_s)
                if len(members) < CLAIM_CHUNK:
                    break
        return enqueued

    def _record(self, results: list[ClaimResult], per_claim_s: float) -> int:
        enqueued = 0
        m = self._metrics
        for r in results:
            if r.status is ClaimStatus.ENQUEUED:
                enqueued += 1
                m.batches_flushed.inc()
                m.batch_fragments.observe(r.fragments)
                m.flush_lateness_seconds.observe(r.lateness_ms / 1000)
                m.claim_seconds.observe(per_claim_s)
                log.debug("batch_flushed", batch_id=r.batch_id, fragments=r.fragments, lateness_ms=r.lateness_ms)
            elif r.status is ClaimStatus.TURN_IN_FLIGHT:
                m.deferred.labels("turn_in_flight").inc()
            elif r.status is ClaimStatus.QUEUE_FULL:
                m.deferred.labels("queue_full").inc()
                log.warning("queue_full_backpressure", member_shard=r.member.partition(":")[0])
            elif r.status is ClaimStatus.EXPIRED:
                m.batches_expired.inc()
                company, _, phone = r.member.partition(":")
                log.warning("batch_expired_unflushed", company_id=company, phone=phone)
        return enqueued

    async def heartbeat(self) -> None:
        now_ms = self._clock.now_ms()
        if self._last_beat_ms is not None and now_ms - self._last_beat_ms < self._heartbeat_interval_s * 500:
            return
        self._last_beat_ms = now_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keys.batchers, {self._id: now_ms})
            # Forget processors silent for a minute; /ready only looks at the freshest one.
            pipe.zremrangebyscore(self._keys.batchers, "-inf", now_ms - 60_000)
            await pipe.execute()
        self._metrics.batcher_heartbeat.set(now_ms / 1000)
        self._metrics.redis_up.set(1)

    async def retire(self) -> None:
        """Take this processor off the heartbeat list; never raises (its entry ages out within a minute)."""
        try:
            async with asyncio.timeout(RETIRE_TIMEOUT_S):
                await self._redis.zrem(self._keys.batchers, self._id)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("batcher_retire_failed", processor_id=self._id, error=f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        """Ask `run` to return after the current pass.

        A flag, not task cancellation: a cancel landing inside a Redis client call can be swallowed.
        """
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()

    async def run(self) -> None:
        """Run until `stop()` (or cancellation); a Redis outage, even at start, is waited out."""
        listener = ChannelListener(self._redis, [s.wake_channel for s in self._keys.all_shards], event=self._wake)
        await listener.start()  # returns at once while Redis is down; it subscribes once Redis answers
        log.info("batcher_started", processor_id=self._id, shards=self._keys.shards)
        failures = 0
        outage_started_ms = 0
        scripts_loaded = False
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    if not scripts_loaded:  # at start, and after an outage: a restarted server has lost them
                        await self._store.load_scripts()
                        scripts_loaded = True
                    await self.tick()
                    await self.heartbeat()
                    idle_s = await self._idle_s()
                except (RedisError, OSError) as exc:
                    # The API goes on accepting once Redis is back, so the batcher must never end on an
                    # outage: it backs off, logs once per outage, and carries on where it left off.
                    failures += 1
                    scripts_loaded = False
                    self._metrics.redis_up.set(0)
                    delay_s = redis_retry_delay_s(failures)
                    if failures == 1:
                        outage_started_ms = self._clock.now_ms()
                        log.error(
                            "batcher_redis_error",
                            processor_id=self._id,
                            error=f"{type(exc).__name__}: {exc}",
                            retry_in_s=delay_s,
                        )
                    await wait_event(self._clock, self._stop_requested, timeout_s=delay_s)
                    continue
                if failures:
                    log.info(
                        "batcher_redis_recovered",
                        processor_id=self._id,
                        failed_passes=failures,
                        outage_ms=self._clock.now_ms() - outage_started_ms,
                    )
                    failures = 0
                if not self._stopping:
                    await wait_event(self._clock, self._wake, timeout_s=idle_s)
        finally:
            await listener.stop()
            await asyncio.shield(self.retire())
            log.info("batcher_stopped", processor_id=self._id)

    async def _idle_s(self) -> float:
        wait_s = self._heartbeat_interval_s
        deadline_ms = await self._store.next_deadline_ms()
        if deadline_ms is not None:
            wait_s = min(wait_s, (deadline_ms - self._clock.now_ms()) / 1000)
        return wait_s

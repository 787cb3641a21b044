"""The job queue's consumer side: Redis Streams with one consumer group, retries, reclaim, dead letters."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from system.models import Job
from system.retry import backoff_s
from system.settings import Settings
from system.store.cluster import is_cluster
from system.store.keys import WORKER_GROUP, Keys, ShardKeys
from system.store.scripts import Scripts

DEAD_LETTERS_KEPT = 100_000
PROMOTE_BATCH = 100


@dataclass(frozen=True, slots=True)
class QueueConfig:
    visibility_ms: int
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float

    @classmethod
    def from_settings(cls, s: Settings) -> QueueConfig:
        return cls(
            visibility_ms=int(s.visibility_timeout_s * 1000),
            max_attempts=s.max_attempts,
            backoff_base_s=s.retry_backoff_base_s,
            backoff_max_s=s.retry_backoff_max_s,
        )

    @property
    def lease_ms(self) -> int:
        # Twice the visibility timeout: a reclaimed job re-takes its lease before the lease lapses.
        return 2 * self.visibility_ms


@dataclass(frozen=True, slots=True)
class Delivery:
    """One job handed to one consumer; ack or fail it exactly once."""

    shard: ShardKeys
    entry_id: str
    job: Job
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    shard: int
    entry_id: str
    job: Job | None
    raw_job: str
    error: str
    failed_ms: int


class JobQueue:
    """Read, hold, ack, retry, reclaim and dead-letter jobs of every shard."""

    def __init__(self, redis: Redis, *, keys: Keys, config: QueueConfig, rng: random.Random) -> None:
        self._redis = redis
        self._keys = keys
        self._config = config
        self._rng = rng
        self._scripts = Scripts.register(redis)
        self._next_shard = 0  # where the next read by shard starts (cluster)

    @property
    def config(self) -> QueueConfig:
        return self._config

    @property
    def keys(self) -> Keys:
        return self._keys

    async def ensure_groups(self) -> None:
        for shard in self._keys.all_shards:
            try:
                await self._redis.xgroup_create(shard.queue, WORKER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def promote_due(self, *, now_ms: int) -> int:
        """Move retries whose backoff has passed back into the queue."""
        moved = 0
        for shard in self._keys.all_shards:
            moved += int(
                await self._scripts.promote(
                    keys=[shard.delayed, shard.queue, shard.stats],
                    args=[now_ms, PROMOTE_BATCH, shard.jobs_channel],
                )
            )
        return moved

    async def next_retry_ms(self) -> int | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in self._keys.all_shards:
                pipe.zrange(shard.delayed, 0, 0, withscores=True)
            rows = await pipe.execute()
        scores = [int(row[0][1]) for row in rows if row]
        return min(scores) if scores else None

    async def read(self, consumer: str, *, count: int, now_ms: int) -> list[Delivery]:
        """New jobs for `consumer` (non-blocking); poison entries go to the dead letters at once."""
        if count <= 0:
            return []
        if is_cluster(self._redis):
            return await self._read_by_shard(consumer, count=count, now_ms=now_ms)
        streams: dict[Any, Any] = {shard.queue: ">" for shard in self._keys.all_shards}
        rows: Any = await self._redis.xreadgroup(WORKER_GROUP, consumer, streams, count=count)
        by_queue = {shard.queue: shard for shard in self._keys.all_shards}
        out: list[Delivery] = []
        for stream, entries in rows or []:
            shard = by_queue[_text(stream)]
            out.extend(await self._deliveries(shard, entries, now_ms=now_ms))
        return out

    async def _read_by_shard(self, consumer: str, *, count: int, now_ms: int) -> list[Delivery]:
        """On a cluster one XREADGROUP cannot name streams of several slots: shard by shard, until `count`.

        Each read starts at the next shard, so that a busy shard cannot starve the ones after it.
        """
        shards = self._keys.all_shards
        start, self._next_shard = self._next_shard, (self._next_shard + 1) % len(shards)
        out: list[Delivery] = []
        for shard in shards[start:] + shards[:start]:
            if len(out) >= count:
                break
            rows: Any = await self._redis.xreadgroup(WORKER_GROUP, consumer, {shard.queue: ">"}, count=count - len(out))
            for _, entries in rows or []:
                out.extend(await self._deliveries(shard, entries, now_ms=now_ms))
        return out

    async def reclaim(self, consumer: str, *, count: int, now_ms: int) -> list[Delivery]:
        """Take over jobs idle longer than the visibility timeout (their consumer died)."""
        out: list[Delivery] = []
        for shard in self._keys.all_shards:
            _, entries, _ = await self._redis.xautoclaim(
                shard.queue, WORKER_GROUP, consumer, self._config.visibility_ms, "0-0", count=count
            )
            if not entries:
                continue
            counts = await self._delivery_counts(shard, [_text(e[0]) for e in entries])
            for delivery in await self._deliveries(shard, entries, now_ms=now_ms, counts=counts):
                if delivery.deliveries > self._config.max_attempts:
                    await self.dead_letter(delivery, f"abandoned by {delivery.deliveries - 1} consumers", now_ms=now_ms)
                else:
                    out.append(delivery)
        return out

    async def hold(self, delivery: Delivery) -> bool:
        """Take (or extend) the conversation's turn; False while another turn of it is in flight."""
        job = delivery.job
        _, conv = self._keys.conversation(job.company_id, job.phone)
        held = await self._scripts.hold(keys=[conv.lease], args=[job.batch_id, self._config.lease_ms])
        return bool(held)

    async def ack(self, delivery: Delivery, *, now_ms: int) -> bool:
        """The turn is done: remove the job and release the conversation's next batch."""
        job, shard = delivery.job, delivery.shard
        _, conv = self._keys.conversation(job.company_id, job.phone)
        acked = await self._scripts.ack(
            keys=[shard.queue, conv.lease, shard.due, conv.buf, conv.sealed, conv.meta, shard.stats],
            args=[delivery.entry_id, WORKER_GROUP, job.batch_id, now_ms, conv.member, shard.wake_channel],
        )
        return bool(acked)

    async def fail(self, delivery: Delivery, error: str, *, now_ms: int, retryable: bool = True) -> bool:
        """Record a failed attempt: retry after a backoff, or dead-letter it when attempts run out.

        Returns True when the job will be retried.
        """
        failed = delivery.job.with_failure(error)
        if not retryable or failed.attempt >= self._config.max_attempts:
            await self.dead_letter(delivery, error, now_ms=now_ms)
            return False
        delay_s = backoff_s(
            failed.attempt,
            base_s=self._config.backoff_base_s,
            max_s=self._config.backoff_max_s,
            rng=self._rng,
        )
        due_ms = now_ms + int(delay_s * 1000)
        shard = delivery.shard
        _, conv = self._keys.conversation(failed.company_id, failed.phone)
        await self._scripts.retry(
            keys=[shard.queue, shard.delayed, conv.lease, shard.stats],
            args=[
                delivery.entry_id,
                WORKER_GROUP,
                failed.to_json(),
                due_ms,
                due_ms - now_ms + self._config.lease_ms,
                failed.batch_id,
            ],
        )
        return True

    async def postpone(self, delivery: Delivery, *, delay_ms: int, now_ms: int) -> None:
        """Put the job back for later without counting an attempt (its conversation is busy)."""
        shard, job = delivery.shard, delivery.job
        _, conv = self._keys.conversation(job.company_id, job.phone)
        await self._scripts.retry(
            keys=[shard.queue, shard.delayed, conv.lease, shard.stats],
            args=[delivery.entry_id, WORKER_GROUP, job.to_json(), now_ms + delay_ms, 0, job.batch_id],
        )

    async def extend(self, delivery: Delivery, consumer: str) -> bool:
        """A heartbeat of a turn in progress: keep its lease and reset the entry's idle time.

        Resetting the idle time (XCLAIM to itself, JUSTID) keeps other consumers from reclaiming a job that is
        merely slow (a long LLM call), not abandoned.
        """
        await self._redis.xclaim(delivery.shard.queue, WORKER_GROUP, consumer, 0, [delivery.entry_id], justid=True)
        return await self.hold(delivery)

    async def dead_letter(self, delivery: Delivery, error: str, *, now_ms: int) -> None:
        job = delivery.job.with_failure(error)
        await self._dead_letter_raw(
            delivery.shard,
            delivery.entry_id,
            job.to_json(),
            error,
            now_ms=now_ms,
            company_id=job.company_id,
            phone=job.phone,
            batch_id=job.batch_id,
        )

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for shard in self._keys.all_shards:
            rows: Any = await self._redis.xrange(shard.dlq, count=limit)
            for entry_id, fields in rows:
                out.append(_dead_letter(shard.index, entry_id, fields))
        return out[:limit]

    async def replay(self, shard_index: int, entry_id: str) -> bool:
        """Put a dead letter back into the queue with a fresh attempt count."""
        shard = self._keys.shard(shard_index)
        rows: Any = await self._redis.xrange(shard.dlq, min=entry_id, max=entry_id)
        if not rows:
            return False
        letter = _dead_letter(shard_index, rows[0][0], rows[0][1])
        if letter.job is None:
            return False
        fresh = Job(
            batch_id=letter.job.batch_id,
            company_id=letter.job.company_id,
            phone=letter.job.phone,
            messages=letter.job.messages,
            enqueued_ms=letter.job.enqueued_ms,
            last_error=letter.error,
        )
        return bool(await self._scripts.replay(keys=[shard.dlq, shard.queue], args=[entry_id, fresh.to_json()]))

    async def length(self) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in self._keys.all_shards:
                pipe.xlen(shard.queue)
            return sum(int(n) for n in await pipe.execute())

    async def in_flight(self) -> int:
        total = 0
        for shard in self._keys.all_shards:
            try:
                summary = await self._redis.xpending(shard.queue, WORKER_GROUP)
            except ResponseError:  # no group yet
                continue
            total += int(summary["pending"])
        return total

    async def dead_letter_count(self) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in self._keys.all_shards:
                pipe.xlen(shard.dlq)
            return sum(int(n) for n in await pipe.execute())

    async def _deliveries(
        self,
        shard: ShardKeys,
        entries: Sequence[tuple[object, dict[object, object]]],
        *,
        now_ms: int,
        counts: dict[str, int] | None = None,
    ) -> list[Delivery]:
        out: list[Delivery] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            raw_job = _text(fields.get(b"job", fields.get("job", b"")))
            try:
                job = Job.from_json(raw_job)
            except ValueError as exc:
                await self._dead_letter_raw(shard, entry_id, raw_job, f"poison job: {exc}", now_ms=now_ms)
                continue
            out.append(Delivery(shard=shard, entry_id=entry_id, job=job, deliveries=(counts or {}).get(entry_id, 1)))
        return out

    async def _delivery_counts(self, shard: ShardKeys, entry_ids: list[str]) -> dict[str, int]:
        rows = await self._redis.xpending_range(
            shard.queue,
            WORKER_GROUP,
            min=min(entry_ids, key=_entry_key),
            max=max(entry_ids, key=_entry_key),
            count=len(entry_ids),
        )
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def _dead_letter_raw(
        self,
        shard: ShardKeys,
        entry_id: str,
        raw_job: str,
        error: str,
        *,
        now_ms: int,
        company_id: int | None = None,
        phone: str | None = None,
        batch_id: str = "",
    ) -> None:
        if company_id is not None and phone is not None:
            _, conv = self._keys.conversation(company_id, phone)
            member, lease, buf, sealed, meta = conv.member, conv.lease, conv.buf, conv.sealed, conv.meta
        else:  # a poison job names no conversation: there is no turn to release
            member = lease = buf = sealed = meta = f"{shard.due}:none"
        await self._scripts.dead_letter(
            keys=[shard.queue, shard.dlq, lease, shard.due, buf, sealed, meta, shard.stats],
            args=[
                entry_id,
                WORKER_GROUP,
                raw_job,
                error,
                now_ms,
                member,
                shard.wake_channel,
                batch_id,
                DEAD_LETTERS_KEPT,
            ],
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _dead_letter(shard: int, entry_id: object, fields: dict[object, object]) -> DeadLetter:
    get = {_text(k): _text(v) for k, v in fields.items()}
    raw_job = get.get("job", "")
    try:
        job: Job | None = Job.from_json(raw_job)
    except ValueError:
        job = None
    return DeadLetter(
        shard=shard,
        entry_id=_text(entry_id),
        job=job,
        raw_job=raw_job,
        error=get.get("error", ""),
        failed_ms=int(get.get("failed_ms", "0") or 0),
    )

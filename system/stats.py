"""The batching and queue figures behind `GET /webhook/whatsapp/batched/stats`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from system.clock import Clock
from system.phones import mask_phone
from system.store.keys import Keys
from system.store.queue import JobQueue

OPEN_LISTED = 20
# Global counters that are not about inbound items left unbatched.
_NOT_INBOUND = ("status_", "delivery_failed_", "number_changed")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _int(value: object) -> int:
    return int(value) if value is not None else 0  # type: ignore[call-overload]


class StatsReader:
    """Reads counters and queue state of every shard; phones are masked."""

    def __init__(self, redis: Redis, *, keys: Keys, queue: JobQueue, clock: Clock) -> None:
        self._redis = redis
        self._keys = keys
        self._queue = queue
        self._clock = clock

    async def collect(self) -> dict[str, Any]:
        now_ms = self._clock.now_ms()
        counters: dict[str, int] = {}
        lateness: list[int] = []
        open_batches = 0
        earliest: list[tuple[str, float]] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in self._keys.all_shards:
                pipe.hgetall(shard.stats)
                pipe.lrange(shard.lateness, 0, -1)
                pipe.zcard(shard.due)
                pipe.zrange(shard.due, 0, OPEN_LISTED - 1, withscores=True)
            pipe.hgetall(self._keys.stats)
            pipe.zrevrange(self._keys.batchers, 0, -1, withscores=True)
            rows = await pipe.execute()
        for i in range(self._keys.shards):
            shard_counters, late, card, first = rows[4 * i : 4 * i + 4]
            for k, v in shard_counters.items():
                counters[_text(k)] = counters.get(_text(k), 0) + _int(v)
            lateness.extend(int(x) for x in late)
            open_batches += int(card)
            earliest.extend((_text(member), score) for member, score in first)
        global_counters = {_text(k): _int(v) for k, v in rows[-2].items()}
        batchers = [{"id": _text(m), "heartbeat_age_ms": now_ms - int(s)} for m, s in rows[-1]]
        earliest.sort(key=lambda item: item[1])
        return {
            "open_batches": open_batches,
            "buffered_messages": counters.get("buffered", 0),
            "accepted_messages": counters.get("accepted", 0),
            "duplicates": counters.get("duplicates", 0),
            "rate_limited_messages": counters.get("rate_limited", 0),
            "batches_flushed": counters.get("batches_flushed", 0),
            "fragments_flushed": counters.get("fragments_flushed", 0),
            # Batches whose keys expired before any batch processor came (never silently: see the batcher).
            "batches_expired": counters.get("batches_expired", 0),
            "deferred_for_backpressure": counters.get("backpressure", 0),
            "flush_lateness_ms": {
                "p50": percentile(lateness, 50),
                "p99": percentile(lateness, 99),
                "max": max(lateness) if lateness else None,
                "samples": len(lateness),
            },
            "queue_length": await self._queue.length(),
            "in_flight_jobs": await self._queue.in_flight(),
            "dead_letters": await self._queue.dead_letter_count(),
            "jobs_done": counters.get("jobs_done", 0),
            "jobs_retried": counters.get("jobs_retried", 0),
            # Replies not sent because the client wrote again during the turn; the next turn answered all.
            "stale_drafts_dropped": counters.get("stale_drafts_dropped", 0),
            "not_batched": {k: v for k, v in sorted(global_counters.items()) if not k.startswith(_NOT_INBOUND)},
            "delivery_statuses": _prefixed(global_counters, "status_"),
            # Replies Meta accepted and then failed (failed statuses and value.errors), by error code.
            "delivery_failures": _prefixed(global_counters, "delivery_failed_"),
            "number_changes": global_counters.get("number_changed", 0),
            "batch_processors": batchers,
            "next_batches": [_describe(member, score, now_ms) for member, score in earliest[:OPEN_LISTED]],
        }


def _prefixed(counters: dict[str, int], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in sorted(counters.items()) if k.startswith(prefix)}


def _describe(member: str, score: float, now_ms: int) -> dict[str, Any]:
    company, _, phone = member.partition(":")
    return {"company_id": int(company), "phone": mask_phone(phone), "due_in_ms": int(score) - now_ms}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

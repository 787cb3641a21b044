"""The batch store: atomic append of fragments and atomic claim of due batches into the job queue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from redis.asyncio import Redis
from redis.typing import EncodableT, KeyT

from system.ingest.coalesce import Coalescer
from system.models import InboundMessage
from system.settings import Settings
from system.store.keys import ConversationKeys, Keys, ShardKeys
from system.store.lua import append_script
from system.store.resp import Lane
from system.store.scripts import Script, ScriptBatch, Scripts

LATENESS_KEPT = 1000
# Appends per round trip. A round trip leaves as soon as this many wait (or when the event loop has
# nothing else to do), so Redis works on one chunk while the API parses the next requests; with one
# big round trip per loop pass, the API would sit idle while Redis ran the whole pass. Measured on
# 2 cores at 32 connections: 8 kept the API 98% busy against 86% for 256, at the same CPU per request.
APPEND_PIPELINE_MAX = 8
# Round trips of appends in flight at once, each on a connection of its own kept for the process's
# life: borrowing from the pool costs more than the append. More lanes add no throughput on one core.
APPEND_LANES = 4
# How long an unflushed batch outlives its deadline (measured from its last fragment, like the deadline).
# A batcher that is late or down (a Redis outage, a crash loop, a deploy) finds the batch on its return
# and flushes it; an hour covers what an operator takes to notice and restart one. Only past this margin
# are the keys given up: the claim then counts the batch as expired, never silently.
BATCH_KEEP_MARGIN_MS = 3_600_000


class AppendOutcome(IntEnum):
    ACCEPTED = 1
    DUPLICATE = 2
    SENDER_LIMITED = 3
    COMPANY_LIMITED = 4

    @property
    def rate_limited(self) -> bool:
        return self in (AppendOutcome.SENDER_LIMITED, AppendOutcome.COMPANY_LIMITED)


_OUTCOME_OF = {int(o): o for o in AppendOutcome}  # an enum call per message costs more than the lookup


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """The numbers that govern batching, derived once from the settings."""

    timeout_ms: int
    max_size: int
    keep_ms: int  # lifetime of a batch's keys from its last fragment
    dedup_ttl_ms: int
    sender_burst: int
    sender_refill_per_ms: float
    company_burst: int
    company_refill_per_ms: float
    allowlist: frozenset[str]
    queued_lease_ms: int
    queue_max_len: int
    wait_replicas: int = 0  # an append is acknowledged once this many replicas hold it (WAIT); 0: off
    wait_timeout_ms: int = 0

    @classmethod
    def from_settings(cls, s: Settings) -> BatchConfig:
        shards = s.redis_shards
        # The company-wide limit is split evenly over the shards so that each check stays in one slot.
        company_per_s = s.rate_limit_global_per_s / shards
        return cls(
            timeout_ms=s.batch_timeout_ms,
            max_size=s.max_batch_size,
            keep_ms=max(s.batch_ttl_s * 1000, s.batch_timeout_ms + BATCH_KEEP_MARGIN_MS),
            dedup_ttl_ms=s.dedup_ttl_s * 1000,
            sender_burst=s.rate_limit_sender_burst,
            sender_refill_per_ms=s.rate_limit_sender_per_min / 60_000,
            # Never below one sender's burst: with many shards (a cluster) a shard's share of the company's burst
            # would otherwise stop a single fast sender before his own limit does. The sustained rate stays the
            # company's; only the burst of a company spread over all shards may exceed it, by up to this floor.
            company_burst=max(1, round(company_per_s), s.rate_limit_sender_burst)
            if s.rate_limit_global_per_s > 0
            else 0,
            company_refill_per_ms=company_per_s / 1000,
            allowlist=s.rate_limit_allowlist,
            # A queued job holds its conversation's turn for as long as a fragment may wait.
            queued_lease_ms=s.batch_ttl_s * 1000,
            queue_max_len=s.queue_max_len,
            wait_replicas=s.redis_wait_replicas,
            wait_timeout_ms=s.redis_wait_timeout_ms,
        )


class ClaimStatus(IntEnum):
    """What the CLAIM script did with one due conversation (its return codes)."""

    ENQUEUED = 1
    NOT_DUE = 0
    TURN_IN_FLIGHT = -1
    QUEUE_FULL = -2
    EXPIRED = -3  # due, but its keys had expired unflushed: the due entry is removed and counted


_CLAIM_STATUS_OF = {int(s): s for s in ClaimStatus}


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What one claim attempt did."""

    member: str
    status: ClaimStatus
    lateness_ms: int = 0
    fragments: int = 0
    batch_id: str | None = None


class BatchStore:
    """Appends fragments and claims due batches; every step is one Lua script in one hash slot."""

    def __init__(self, redis: Redis, *, keys: Keys, config: BatchConfig) -> None:
        self._redis = redis
        self._keys = keys
        self._config = config
        self._scripts = Scripts.register(redis)
        self._append_script = Script(
            redis,
            append_script(
                timeout_ms=config.timeout_ms,
                max_size=config.max_size,
                keep_ms=config.keep_ms,
                dedup_ttl_ms=config.dedup_ttl_ms,
                sender_burst=config.sender_burst,
                sender_refill_per_ms=config.sender_refill_per_ms,
                company_burst=config.company_burst,
                company_refill_per_ms=config.company_refill_per_ms,
            ),
        )
        self._appends: Coalescer[tuple[InboundMessage, int], AppendOutcome] = Coalescer(
            self._append_pipeline, max_items=APPEND_PIPELINE_MAX, lanes=APPEND_LANES
        )
        # Borrowed from the pool once and never given back: closing the client disconnects them.
        self._lanes: list[Lane | None] = [None] * APPEND_LANES

    @property
    def keys(self) -> Keys:
        return self._keys

    async def load_scripts(self) -> None:
        await self._append_script.load()
        await self._scripts.load()

    @property
    def config(self) -> BatchConfig:
        return self._config

    async def append(self, message: InboundMessage, *, now_ms: int) -> AppendOutcome:
        return (await self.append_many([message], now_ms=now_ms))[0]

    async def append_many(self, messages: Sequence[InboundMessage], *, now_ms: int) -> list[AppendOutcome]:
        """Append each message to its conversation's open batch, in order.

        Appends of concurrent callers share one pipeline; each append is still its own atomic script.
        """
        return await self._appends.submit([(m, now_ms) for m in messages])

    async def _append_pipeline(
        self, items: list[tuple[InboundMessage, int]], lane: int
    ) -> list[AppendOutcome | BaseException]:
        borrowed = self._lanes[lane]
        if borrowed is None:
            borrowed = self._lanes[lane] = await Lane.borrow(self._redis)
        # One script call per shard; a conversation always maps to one shard, so its order holds.
        calls: dict[int, _ShardAppend] = {}
        allowlist = self._config.allowlist
        for i, (message, now_ms) in enumerate(items):
            shard, conv = self._keys.conversation(message.company_id, message.phone)
            call = calls.get(shard.index)
            if call is None:
                call = calls[shard.index] = _ShardAppend(shard)
            call.add(i, message, conv, now_ms=now_ms, limited=message.phone not in allowlist)
        batch = ScriptBatch(
            self._redis,
            lane=borrowed,
            wait_replicas=self._config.wait_replicas,
            wait_timeout_ms=self._config.wait_timeout_ms,
        )
        for call in calls.values():
            batch.add(self._append_script, keys=call.keys, args=call.args)
        outcomes: dict[int, AppendOutcome | BaseException] = {}
        for call, result in zip(calls.values(), await batch.run(), strict=True):
            outcomes.update(zip(call.indices, _statuses(result, len(call.indices)), strict=True))
        return [outcomes[i] for i in range(len(items))]

    async def due(self, shard: ShardKeys, *, now_ms: int, limit: int) -> list[str]:
        raw: Any = await self._redis.zrangebyscore(shard.due, "-inf", now_ms, start=0, num=limit)
        return [m.decode() if isinstance(m, bytes) else m for m in raw]

    async def claim(self, shard: ShardKeys, members: Sequence[str], *, now_ms: int) -> list[ClaimResult]:
        """Claim each due conversation's batch into the queue; safe to race with other batchers."""
        if not members:
            return []
        batch = ScriptBatch(self._redis)
        for member in members:
            _, conv = self._keys.conversation_of_member(member)
            company, _, phone = member.partition(":")
            batch.add(
                self._scripts.claim,
                keys=[
                    shard.due,
                    conv.buf,
                    conv.sealed,
                    conv.meta,
                    conv.lease,
                    shard.queue,
                    shard.stats,
                    shard.lateness,
                ],
                args=[
                    member,
                    now_ms,
                    self._config.queued_lease_ms,
                    self._config.queue_max_len,
                    self._config.keep_ms,
                    company,
                    phone,
                    shard.jobs_channel,
                    LATENESS_KEPT,
                ],
            )
        results = await batch.run()
        return [_claim_result(member, raw) for member, raw in zip(members, results, strict=True)]

    async def next_deadline_ms(self) -> int | None:
        """The earliest scheduled deadline over all shards."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in self._keys.all_shards:
                pipe.zrange(shard.due, 0, 0, withscores=True)
            results = await pipe.execute()
        scores = [int(row[0][1]) for row in results if row]
        return min(scores) if scores else None


class _ShardAppend:
    """The keys and arguments of one APPEND call: the messages of one round trip in one shard."""

    __slots__ = ("_per_message", "_wake_channel", "indices", "keys", "now_ms")

    def __init__(self, shard: ShardKeys) -> None:
        self.now_ms = 0  # one clock reading for the whole call: the latest
        self.keys: list[KeyT] = [shard.due, shard.stats]
        self.indices: list[int] = []
        self._wake_channel = shard.wake_channel
        self._per_message: list[EncodableT] = []

    @property
    def args(self) -> list[EncodableT]:
        return [self.now_ms, self._wake_channel, *self._per_message]

    def add(self, index: int, message: InboundMessage, conv: ConversationKeys, *, now_ms: int, limited: bool) -> None:
        self.indices.append(index)
        self.now_ms = max(self.now_ms, now_ms)
        self.keys += (
            conv.buf,
            conv.sealed,
            conv.meta,
            conv.lease,
            conv.seen(message.message_id),
            conv.rate,
            conv.rate_company,
        )
        self._per_message += (message.to_json(), message.message_id, conv.member, "1" if limited else "0")


def _statuses(result: Any, count: int) -> list[AppendOutcome | BaseException]:
    """One outcome per message of a shard's call; a failed call fails each of its messages."""
    if isinstance(result, BaseException):
        return [result] * count
    return [_OUTCOME_OF[status] for status in result]


def _claim_result(member: str, raw: list[object] | BaseException) -> ClaimResult:
    if isinstance(raw, BaseException):
        raise raw
    status = _CLAIM_STATUS_OF[int(raw[0])]  # type: ignore[call-overload]
    if status is not ClaimStatus.ENQUEUED:
        return ClaimResult(member=member, status=status)
    batch_id = raw[3].decode() if isinstance(raw[3], bytes) else str(raw[3])
    return ClaimResult(
        member=member,
        status=status,
        lateness_ms=int(raw[1]),  # type: ignore[call-overload]
        fragments=int(raw[2]),  # type: ignore[call-overload]
        batch_id=batch_id,
    )

"""Idempotency records of turns: a redelivered job never sends a part twice or books twice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import orjson
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from system.models import Job
from system.store.keys import Keys

# Hash fields: `part:{i}` / `fallback:{i}` hold the message id of part i of the reply / of the apology.
_PART = "part:"
_FALLBACK_PART = "fallback:"
# Written by the ingest when WhatsApp reports a sent part as failed (see `record_part`).
DELIVERY_FIELD = "delivery"
DELIVERY_ERROR_FIELD = "delivery_error"
STATUS_TURN_FIELD = "turn"  # the status hash's pointer back to the turn that sent the message
# A draft dropped as stale (`system.turn.stale`): its text, when, and the shard's counter of them.
DRAFT_FIELD = "draft"
DROPPED_MS_FIELD = "dropped_ms"
SIDE_EFFECTS_FIELD = "side_effects"  # "1" once the turn may have changed a booking (noted before the CRM is asked)
STALE_DROPPED_COUNTER = "stale_drafts_dropped"


class TurnStage(StrEnum):
    NEW = "new"
    REPLIED = "replied"  # the reply is decided (and any booking made); not yet (wholly) sent
    FALLBACK_SENT = "fallback_sent"  # the client got the apology; a replay may still answer properly
    SENT = "sent"  # every part of the reply reached WhatsApp
    DROPPED = "dropped"  # the draft was dropped as stale, never sent; the client's text is not yet in the history
    DONE = "done"  # the context is saved too


@dataclass(frozen=True, slots=True)
class TurnRecord:
    stage: TurnStage = TurnStage.NEW
    reply: str = ""
    sent_ids: tuple[str, ...] = ()  # message ids of the reply's parts already sent, index-aligned from part 0
    fallback_ids: tuple[str, ...] = ()  # message ids of the apology's parts already sent
    delivery_failed: str | None = None  # WhatsApp's error code when it later reported a sent part as failed
    draft: str = ""  # the reply dropped as stale (kept for the stats), never sent
    dropped: bool = False  # the draft was dropped: nothing of this turn is ever sent
    # Whether the turn may have changed a booking (noted before the CRM is asked); None when not known.
    side_effects: bool | None = None

    @property
    def sent(self) -> bool:
        return self.stage in (TurnStage.SENT, TurnStage.DONE) and not self.dropped


class TurnStore:
    """One hash per turn, keyed by the batch id, in the conversation's hash slot."""

    def __init__(self, redis: Redis, *, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def key(self, job: Job) -> str:
        return self._keys.turn(job.company_id, job.phone, job.batch_id)

    async def get(self, job: Job) -> TurnRecord:
        raw = await self._redis.hgetall(self.key(job))
        if not raw:
            return TurnRecord()
        doc = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        sent_ids = _parts(doc, _PART)
        if not sent_ids and doc.get("sent_ids"):  # a record written before parts were kept one by one
            sent_ids = tuple(orjson.loads(doc["sent_ids"]))
        failed = doc.get(DELIVERY_FIELD) == "failed"
        return TurnRecord(
            stage=TurnStage(doc.get("stage", TurnStage.NEW)),
            reply=doc.get("reply", ""),
            sent_ids=sent_ids,
            fallback_ids=_parts(doc, _FALLBACK_PART),
            delivery_failed=(doc.get(DELIVERY_ERROR_FIELD) or "failed") if failed else None,
            draft=doc.get(DRAFT_FIELD, ""),
            dropped=DROPPED_MS_FIELD in doc,
            side_effects=doc[SIDE_EFFECTS_FIELD] == "1" if SIDE_EFFECTS_FIELD in doc else None,
        )

    async def save_reply(self, job: Job, reply: str, *, side_effects: bool = True) -> None:
        fields: dict[FieldT, EncodableT] = {"stage": TurnStage.REPLIED, "reply": reply}
        fields[SIDE_EFFECTS_FIELD] = "1" if side_effects else "0"
        await self._write(job, fields)

    async def note_side_effects(self, job: Job) -> None:
        """The turn is about to change a booking: from now on its reply is sent, even after a redelivery."""
        await self._write(job, {SIDE_EFFECTS_FIELD: "1"})

    async def drop(self, job: Job, draft: str, *, now_ms: int) -> None:
        """The draft is dropped as stale: kept in the record, never sent, and counted in the shard's stats.

        One MULTI: the turn and the shard's counters share the conversation's hash slot.
        """
        key = self.key(job)
        shard, _ = self._keys.conversation(job.company_id, job.phone)
        fields: dict[FieldT, EncodableT] = {"stage": TurnStage.DROPPED, DRAFT_FIELD: draft, DROPPED_MS_FIELD: now_ms}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._keys.retention.turn_s)
            pipe.hincrby(shard.stats, STALE_DROPPED_COUNTER, 1)
            await pipe.execute()

    async def record_part(self, job: Job, index: int, message_id: str, *, fallback: bool = False) -> None:
        """Part `index` of the reply (or of the apology) went out as `message_id`.

        The same round trip points the message's status hash at this turn, so that a later `failed`
        status from WhatsApp can mark the turn's delivery as failed; the ingest only updates status
        hashes that exist, so the hash is made here, at the send.
        """
        key = self.key(job)
        status = self._keys.status(message_id)
        field = f"{_FALLBACK_PART if fallback else _PART}{index}"
        # Not a MULTI: the status key has no hash tag, so on Redis Cluster it may sit on another node than the
        # turn. The turn's field goes first: losing the pointer only loses a failure report, never a resend.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, field, message_id)
            pipe.expire(key, self._keys.retention.turn_s)
            pipe.hset(status, STATUS_TURN_FIELD, key)
            pipe.expire(status, self._keys.retention.turn_s)  # as long as the ingest keeps the status hash
            await pipe.execute()

    async def mark_sent(self, job: Job, sent_ids: Sequence[str] = (), *, fallback: bool = False) -> None:
        """Every part went out; `sent_ids`, when given, are the ids of all parts from part 0."""
        stage = TurnStage.FALLBACK_SENT if fallback else TurnStage.SENT
        prefix = _FALLBACK_PART if fallback else _PART
        fields: dict[FieldT, EncodableT] = {"stage": stage}
        fields.update({f"{prefix}{i}": message_id for i, message_id in enumerate(sent_ids)})
        await self._write(job, fields)

    def done_fields(self, job: Job) -> dict[str, Mapping[FieldT, EncodableT]]:
        """The hash fields that mark the turn done, for the context transaction."""
        return {self.key(job): {"stage": TurnStage.DONE}}

    async def _write(self, job: Job, mapping: Mapping[FieldT, EncodableT]) -> None:
        key = self.key(job)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self._keys.retention.turn_s)
            await pipe.execute()


def _parts(doc: Mapping[str, str], prefix: str) -> tuple[str, ...]:
    """The ids of parts 0, 1, ... up to the first one missing (parts go out in order)."""
    ids: list[str] = []
    while (message_id := doc.get(f"{prefix}{len(ids)}")) is not None:
        ids.append(message_id)
    return tuple(ids)

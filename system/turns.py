"""Idempotency records of turns: a redelivered job never sends a second reply or books twice."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import orjson
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from system.keys import Keys
from system.models import Job

TURN_TTL_S = 7 * 24 * 3600


class TurnStage(StrEnum):
    NEW = "new"
    REPLIED = "replied"  # the reply is decided (and any booking made); not yet sent
    FALLBACK_SENT = "fallback_sent"  # the client got the apology; a replay may still answer properly
    SENT = "sent"  # the reply reached WhatsApp
    DONE = "done"  # the context is saved too


@dataclass(frozen=True, slots=True)
class TurnRecord:
    stage: TurnStage = TurnStage.NEW
    reply: str = ""
    sent_ids: tuple[str, ...] = ()

    @property
    def sent(self) -> bool:
        return self.stage in (TurnStage.SENT, TurnStage.DONE)


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
        return TurnRecord(
            stage=TurnStage(doc.get("stage", TurnStage.NEW)),
            reply=doc.get("reply", ""),
            sent_ids=tuple(orjson.loads(doc["sent_ids"])) if doc.get("sent_ids") else (),
        )

    async def save_reply(self, job: Job, reply: str) -> None:
        await self._write(job, {"stage": TurnStage.REPLIED, "reply": reply})

    async def mark_sent(self, job: Job, sent_ids: list[str], *, fallback: bool = False) -> None:
        stage = TurnStage.FALLBACK_SENT if fallback else TurnStage.SENT
        await self._write(job, {"stage": stage, "sent_ids": orjson.dumps(sent_ids).decode()})

    def done_fields(self, job: Job) -> dict[str, Mapping[FieldT, EncodableT]]:
        """The hash fields that mark the turn done, for the context transaction."""
        return {self.key(job): {"stage": TurnStage.DONE}}

    async def _write(self, job: Job, mapping: Mapping[FieldT, EncodableT]) -> None:
        key = self.key(job)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, TURN_TTL_S)
            await pipe.execute()

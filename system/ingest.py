"""The framework-free ingest core: what a webhook does after parsing (the simulator calls it too)."""

from __future__ import annotations

from typing import Any, NamedTuple

import structlog
from redis.asyncio import Redis

from system.batching import AppendOutcome, BatchStore
from system.clock import Clock
from system.keys import Keys
from system.metrics import Metrics
from system.models import Rejected
from system.payloads import ParseResult
from system.phones import mask_phone
from system.scripts import ScriptBatch, Scripts

log = structlog.get_logger(__name__)

_OUTCOMES = ("accepted", "duplicate", "rate_limited", "rejected", "ignored")
IGNORED_KEPT = 10_000
STATUS_TTL_MS = 7 * 24 * 3600 * 1000


class IngestReport(NamedTuple):
    """What happened to each part of one webhook request (a named tuple: one is built per request)."""

    accepted: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    rate_limited: tuple[Rejected, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    ignored: tuple[Rejected, ...] = ()
    statuses: int = 0

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "rate_limited" if self.rate_limited else "ok",
            "accepted": len(self.accepted),
            "duplicates": len(self.duplicates),
        }
        if self.rate_limited:
            out["rate_limited"] = [r.as_dict() for r in self.rate_limited]
        if self.rejected:
            out["rejected"] = [r.as_dict() for r in self.rejected]
        if self.ignored:
            out["ignored"] = [r.as_dict() for r in self.ignored]
        if self.statuses:
            out["statuses"] = self.statuses
        return out


class Ingestor:
    """Validates nothing itself: takes parsed messages, de-duplicates and batches them atomically."""

    def __init__(self, redis: Redis, *, store: BatchStore, keys: Keys, clock: Clock, metrics: Metrics) -> None:
        self._redis = redis
        self._store = store
        self._keys = keys
        self._clock = clock
        self._metrics = metrics
        self._scripts = Scripts.register(redis)
        self._outcomes = {o: metrics.messages.labels(o) for o in _OUTCOMES}
        # Bound once: every call through the module's lazy proxy binds again, and the hot path logs
        # (at DEBUG, usually filtered out) once per message.
        self._log = log.bind()

    async def ingest(self, parsed: ParseResult) -> IngestReport:
        accepted: list[str] = []
        duplicates: list[str] = []
        limited: list[Rejected] = []
        if parsed.messages:
            outcomes = await self._store.append_many(parsed.messages, now_ms=self._clock.now_ms())
            for message, outcome in zip(parsed.messages, outcomes, strict=True):
                if outcome is AppendOutcome.ACCEPTED:
                    accepted.append(message.message_id)
                elif outcome is AppendOutcome.DUPLICATE:
                    duplicates.append(message.message_id)
                else:
                    who = "this sender" if outcome is AppendOutcome.SENDER_LIMITED else "this salon"
                    limited.append(
                        Rejected(
                            field=message.message_id,
                            problem=f"rate limited: too many messages from {who}, retry later",
                            reason="rate_limited",
                        )
                    )
                    self._log.warning(
                        "message_rate_limited",
                        reason=outcome.name.lower(),
                        company_id=message.company_id,
                        phone=mask_phone(message.phone),
                        message_id=message.message_id,
                    )
                self._log.debug("message_appended", outcome=outcome.name, text=message.text)
        if parsed.ignored or parsed.rejected:
            await self._record_unbatched(parsed.ignored, parsed.rejected)
        if parsed.statuses:
            await self._record_statuses(parsed)
        counts = (len(accepted), len(duplicates), len(limited), len(parsed.rejected), len(parsed.ignored))
        for label, count in zip(_OUTCOMES, counts, strict=True):
            if count:
                self._outcomes[label].inc(count)
        return IngestReport(
            accepted=tuple(accepted),
            duplicates=tuple(duplicates),
            rate_limited=tuple(limited),
            rejected=parsed.rejected,
            ignored=parsed.ignored,
            statuses=len(parsed.statuses),
        )

    async def _record_unbatched(self, ignored: tuple[Rejected, ...], rejected: tuple[Rejected, ...]) -> None:
        """Acknowledged but never batched: counted and kept where stats and operators can see it."""
        now_ms = self._clock.now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            for kind, items in (("ignored", ignored), ("rejected", rejected)):
                for item in items:
                    pipe.hincrby(self._keys.stats, f"{kind}_{item.reason}", 1)
                    pipe.xadd(
                        self._keys.ignored,
                        {
                            "kind": kind,
                            "reason": item.reason,
                            "field": item.field,
                            "problem": item.problem,
                            "at_ms": str(now_ms),
                        },
                        maxlen=IGNORED_KEPT,
                        approximate=True,
                    )
                    log.info(
                        "inbound_not_batched", kind=kind, reason=item.reason, field=item.field, problem=item.problem
                    )
            await pipe.execute()

    async def _record_statuses(self, parsed: ParseResult) -> None:
        batch = ScriptBatch(self._redis)
        for st in parsed.statuses:
            batch.add(
                self._scripts.status,
                keys=[self._keys.status(st.message_id)],
                args=[
                    st.status.value,
                    st.status.rank,
                    st.timestamp_ms or self._clock.now_ms(),
                    "" if st.error_code is None else st.error_code,
                    STATUS_TTL_MS,
                ],
            )
        for result in await batch.run():
            if isinstance(result, BaseException):
                raise result
        async with self._redis.pipeline(transaction=False) as pipe:
            for st in parsed.statuses:
                pipe.hincrby(self._keys.stats, f"status_{st.status.value}", 1)
                self._metrics.statuses.labels(st.status.value).inc()
            await pipe.execute()

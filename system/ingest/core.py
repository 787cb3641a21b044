"""The framework-free ingest core: what a webhook does after parsing (the simulator calls it too)."""

from __future__ import annotations

from collections import Counter
from enum import IntEnum
from typing import Any, NamedTuple

import structlog
from redis.asyncio import Redis

from system.clock import Clock
from system.ingest.batch_store import AppendOutcome, BatchStore
from system.ingest.payloads import ParseResult, WebhookError
from system.metrics import Metrics
from system.models import DeliveryStatus, Rejected, StatusUpdate
from system.phones import mask_phone
from system.store.keys import Keys
from system.store.scripts import ScriptBatch, Scripts
from system.turn.context import ContextStore
from system.turn.records import DELIVERY_ERROR_FIELD, DELIVERY_FIELD

log = structlog.get_logger(__name__)

_OUTCOMES = ("accepted", "duplicate", "rate_limited", "rejected", "ignored")
IGNORED_KEPT = 10_000
# Per request, at most this many problems are listed in the answer, kept in the stream and logged one by
# one; all of them are counted (one HINCRBY per reason), so a forged body costs a few writes, not thousands.
PROBLEMS_LISTED = 10
# Statuses about one recipient per window: Meta sends about three per message we send (sent, delivered,
# read); more is a replayed body, whose statuses are only counted (`status_rate_limited`).
STATUSES_PER_RECIPIENT = 60
STATUS_WINDOW_S = 60


class StatusApplied(IntEnum):
    """What the STATUS script did with one delivery status (its return codes)."""

    NOT_OURS = -1  # a message we never sent: nothing is stored for it
    STALE = 0  # it would have moved the status backwards
    APPLIED = 1


class IngestReport(NamedTuple):
    """What happened to each part of one webhook request (a named tuple: one is built per request)."""

    accepted: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    rate_limited: tuple[Rejected, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    ignored: tuple[Rejected, ...] = ()
    statuses: int = 0

    def body(self) -> dict[str, Any]:
        """Counts, and the first `PROBLEMS_LISTED` problems of each kind."""
        out: dict[str, Any] = {
            "status": "rate_limited" if self.rate_limited else "ok",
            "accepted": len(self.accepted),
            "duplicates": len(self.duplicates),
        }
        problems = (("rate_limited", self.rate_limited), ("rejected", self.rejected), ("ignored", self.ignored))
        for name, items in problems:
            if items:
                out[name] = [r.as_dict() for r in items[:PROBLEMS_LISTED]]
                out[f"{name}_count"] = len(items)
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
        self._context = ContextStore(redis, keys=keys)
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
            await self._record_statuses(parsed.statuses)
        if parsed.errors:
            await self._record_errors(parsed.errors)
        if parsed.number_changes:
            await self._move_conversations(parsed)
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
        """Acknowledged but never batched: counted per reason, the first few kept where operators see them."""
        now_ms = self._clock.now_ms()
        tagged = [*(("ignored", i) for i in ignored), *(("rejected", r) for r in rejected)]
        counts = Counter(f"{kind}_{item.reason}" for kind, item in tagged)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, count in counts.items():
                pipe.hincrby(self._keys.stats, name, count)
            for kind, item in tagged[:PROBLEMS_LISTED]:
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
                self._log.info(
                    "inbound_not_batched", kind=kind, reason=item.reason, field=item.field, problem=item.problem
                )
            await pipe.execute()
        if len(tagged) > PROBLEMS_LISTED:
            self._log.info("inbound_not_batched_more", counts=dict(counts), listed=PROBLEMS_LISTED)

    async def _allowed_statuses(self, statuses: tuple[StatusUpdate, ...]) -> tuple[StatusUpdate, ...]:
        """The statuses within their recipient's window (one INCRBY per recipient in the body)."""
        per_recipient = Counter(st.recipient or "" for st in statuses)
        window = self._clock.now_ms() // (STATUS_WINDOW_S * 1000)  # the injected clock decides the window
        async with self._redis.pipeline(transaction=False) as pipe:
            for recipient, count in per_recipient.items():
                key = self._keys.status_rate(recipient, window)
                pipe.incrby(key, count)
                pipe.expire(key, 2 * STATUS_WINDOW_S, nx=True)
            totals = (await pipe.execute())[0::2]
        room = {
            recipient: max(0, STATUSES_PER_RECIPIENT - (int(total) - count))
            for (recipient, count), total in zip(per_recipient.items(), totals, strict=True)
        }
        allowed = []
        for st in statuses:
            recipient = st.recipient or ""
            if st.status is DeliveryStatus.FAILED:
                allowed.append(st)  # a failure is never dropped: it applies once, and the turn must learn of it
            elif room[recipient] > 0:
                room[recipient] -= 1
                allowed.append(st)
        if len(allowed) < len(statuses):
            dropped = len(statuses) - len(allowed)
            await self._redis.hincrby(self._keys.stats, "status_rate_limited", dropped)
            self._log.warning("statuses_rate_limited", dropped=dropped, limit_per_window=STATUSES_PER_RECIPIENT)
        return tuple(allowed)

    async def _record_statuses(self, statuses: tuple[StatusUpdate, ...]) -> None:
        """Move the status of messages we sent forward; a failure marks the turn that sent the message."""
        statuses = await self._allowed_statuses(statuses)
        if not statuses:
            return
        batch = ScriptBatch(self._redis)
        for st in statuses:
            batch.add(
                self._scripts.status,
                keys=[self._keys.status(st.message_id)],
                args=[
                    st.status.value,
                    st.status.rank,
                    st.timestamp_ms or self._clock.now_ms(),
                    "" if st.error_code is None else st.error_code,
                    self._keys.retention.turn_s * 1000,
                ],
            )
        counts: Counter[str] = Counter()
        failed: list[tuple[StatusUpdate, str]] = []
        for st, result in zip(statuses, await batch.run(), strict=True):
            if isinstance(result, BaseException):
                raise result
            applied, turn = StatusApplied(int(result[0])), _text(result[1])
            if applied is StatusApplied.NOT_OURS:
                counts["status_unknown"] += 1
                continue
            counts[f"status_{st.status.value}"] += 1
            self._metrics.statuses.labels(st.status.value).inc()
            if applied is StatusApplied.APPLIED and st.status is DeliveryStatus.FAILED:
                failed.append((st, turn))
        async with self._redis.pipeline(transaction=False) as pipe:
            for st, turn in failed:
                code = _code(st.error_code)
                counts[f"delivery_failed_{code}"] += 1
                self._metrics.delivery_failures.labels(code).inc()
                self._log.warning(
                    "delivery_failed",
                    code=code,
                    title=st.error_title,
                    message_id=st.message_id,
                    recipient=mask_phone(st.recipient or ""),
                    turn=turn or None,
                )
                if turn:
                    pipe.hset(turn, mapping={DELIVERY_FIELD: "failed", DELIVERY_ERROR_FIELD: code})
                    # The turn record had expired: do not keep it forever.
                    pipe.expire(turn, self._keys.retention.turn_s, nx=True)
            for name, count in counts.items():
                pipe.hincrby(self._keys.stats, name, count)
            await pipe.execute()

    async def _record_errors(self, errors: tuple[WebhookError, ...]) -> None:
        """`value.errors`: counted like failed deliveries, the first few kept in the stream."""
        now_ms = self._clock.now_ms()
        codes = Counter(_code(e.code) for e in errors)
        async with self._redis.pipeline(transaction=False) as pipe:
            for code, count in codes.items():
                pipe.hincrby(self._keys.stats, f"delivery_failed_{code}", count)
                self._metrics.delivery_failures.labels(code).inc(count)
            for error in errors[:PROBLEMS_LISTED]:
                code = _code(error.code)
                self._log.warning("webhook_error", code=code, title=error.title, field=error.field)
                pipe.xadd(
                    self._keys.ignored,
                    {
                        "kind": "error",
                        "reason": f"delivery_failed_{code}",
                        "field": error.field,
                        "problem": error.title or "",
                        "at_ms": str(now_ms),
                    },
                    maxlen=IGNORED_KEPT,
                    approximate=True,
                )
            await pipe.execute()

    async def _move_conversations(self, parsed: ParseResult) -> None:
        """A client changed numbers: the dialog, history and preferences follow them to the new one."""
        for change in parsed.number_changes:  # bounded by the per-body message cap
            moved = await self._context.move(change.company_id, change.old_phone, change.new_phone)
            self._log.info(
                "conversation_moved" if moved else "conversation_not_moved",
                company_id=change.company_id,
                old_phone=mask_phone(change.old_phone),
                new_phone=mask_phone(change.new_phone),
            )
        await self._redis.hincrby(self._keys.stats, "number_changed", len(parsed.number_changes))


def _code(code: int | None) -> str:
    return "unknown" if code is None else str(code)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

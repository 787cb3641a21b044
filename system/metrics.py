"""Prometheus metrics for every stage, in a registry owned by the process (no global registry)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.exceptions import RedisError

# A scrape must answer even while Redis does not: the queue gauges then read NaN (no value), not stale figures.
QUEUE_READ_TIMEOUT_S = 2.0


class QueueFigures(Protocol):
    """What the queue gauges read (system.store.queue.JobQueue), totals over every shard."""

    async def length(self) -> int: ...

    async def in_flight(self) -> int: ...

    async def dead_letter_count(self) -> int: ...


_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_TURN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120)


class Metrics:
    """All metrics of one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aiadmin_webhook_requests", "Webhook requests by route and status code", ["route", "status"], registry=r
        )
        self.accept_seconds = Histogram(
            "aiadmin_accept_seconds",
            "Time to validate, de-duplicate and append a request",
            ["route"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.messages = Counter(
            "aiadmin_messages",
            "Inbound messages by outcome (accepted, duplicate, rate_limited, rejected, ignored)",
            ["outcome"],
            registry=r,
        )
        self.statuses = Counter("aiadmin_delivery_statuses", "Delivery status callbacks", ["status"], registry=r)
        self.delivery_failures = Counter(
            "aiadmin_delivery_failures",
            "Replies Meta failed after accepting them (failed statuses, value.errors), by error code",
            ["code"],
            registry=r,
        )
        self.batches_flushed = Counter("aiadmin_batches_flushed", "Batches handed to the queue", registry=r)
        self.batch_fragments = Histogram(
            "aiadmin_batch_fragments", "Fragments per flushed batch", buckets=(1, 2, 3, 4, 5, 6, 8, 10, 20), registry=r
        )
        self.flush_lateness_seconds = Histogram(
            "aiadmin_flush_lateness_seconds", "Flush time minus batch deadline", buckets=_FAST_BUCKETS, registry=r
        )
        self.claim_seconds = Histogram(
            "aiadmin_claim_seconds",
            "One claim round (take, remove, enqueue) per batch",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.deferred = Counter(
            "aiadmin_batches_deferred", "Due batches held back (turn in flight, queue full)", ["reason"], registry=r
        )
        self.batches_expired = Counter(
            "aiadmin_batches_expired", "Due batches whose keys had expired before any batcher flushed them", registry=r
        )
        self.jobs = Counter("aiadmin_jobs", "Jobs by outcome (done, retried, dead_letter)", ["outcome"], registry=r)
        self.tool_calls_refused = Counter(
            "aiadmin_tool_calls_refused",
            "Tool calls of the model refused by a limit (per_completion, per_turn, bookings)",
            ["reason"],
            registry=r,
        )
        self.stale_drafts_dropped = Counter(
            "aiadmin_stale_drafts_dropped",
            "Replies dropped unsent: the client wrote again during a turn that changed no booking",
            registry=r,
        )
        self.turn_seconds = Histogram("aiadmin_turn_seconds", "Worker time per turn", buckets=_TURN_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram(
            "aiadmin_queue_wait_seconds", "Enqueue to pick-up", buckets=(*_FAST_BUCKETS, 5.0, 30.0), registry=r
        )
        self.llm_seconds = Histogram(
            "aiadmin_llm_seconds", "One LLM completion, retries included", buckets=_TURN_BUCKETS, registry=r
        )
        # The model's quality and cost, for evaluating any model behind the system (`aiadmin simulate --system-url`).
        self.llm_completions = Counter(
            "aiadmin_llm_completions",
            "Model answers by outcome (ok, malformed: unparseable tool calls)",
            ["outcome"],
            registry=r,
        )
        self.llm_tokens = Counter(
            "aiadmin_llm_tokens",
            "Tokens the provider reported (usage), by kind (prompt, completion)",
            ["kind"],
            registry=r,
        )
        self.llm_tool_calls = Counter(
            "aiadmin_llm_tool_calls",
            "Tool calls of the model by outcome (ok, invalid_arguments, unknown_tool)",
            ["outcome"],
            registry=r,
        )
        self.send_seconds = Histogram(
            "aiadmin_send_seconds", "Sending one reply (every part) to WhatsApp", buckets=_TURN_BUCKETS, registry=r
        )
        self.send_failures = Counter(
            "aiadmin_send_failures",
            "Turns whose reply failed to send (after the sender's retries), by Meta error code or 'none'",
            ["code"],
            registry=r,
        )
        # Alerting signals of the batcher and the worker (deploy/prometheus/alerts.yaml reads them).
        self.batcher_heartbeat = Gauge(
            "aiadmin_batcher_heartbeat_timestamp_seconds", "Unix time of this batcher's last heartbeat", registry=r
        )
        self.redis_up = Gauge("aiadmin_redis_up", "1 when the batcher's last pass reached Redis, else 0", registry=r)
        self.llm_breaker_open = Gauge(
            "aiadmin_llm_breaker_open", "1 while the LLM circuit breaker refuses calls, else 0", registry=r
        )
        # Read from Redis when the API is scraped (read_queue): the same figures from every API replica.
        self.queue_length = Gauge(
            "aiadmin_queue_length", "Jobs in the queue streams, waiting or in flight (XLEN)", registry=r
        )
        self.queue_pending = Gauge(
            "aiadmin_queue_pending", "Jobs delivered to a worker and not yet acknowledged (XPENDING)", registry=r
        )
        self.dead_letters = Gauge("aiadmin_dead_letters", "Entries in the dead-letter streams", registry=r)

    async def read_queue(self, queue: QueueFigures) -> None:
        """Set the queue gauges from Redis; NaN when Redis does not answer in time."""
        figures: tuple[float, float, float]
        try:
            async with asyncio.timeout(QUEUE_READ_TIMEOUT_S):
                figures = (await queue.length(), await queue.in_flight(), await queue.dead_letter_count())
        except (RedisError, OSError, TimeoutError):
            figures = (math.nan, math.nan, math.nan)
        for gauge, value in zip((self.queue_length, self.queue_pending, self.dead_letters), figures, strict=True):
            gauge.set(value)

    def watch_llm_breaker(self, is_open: Callable[[], bool]) -> None:
        """Read the breaker's state at scrape time: it half-opens by the clock, with no call to record it."""
        self.llm_breaker_open.set_function(lambda: float(is_open()))

    def render(self) -> bytes:
        return generate_latest(self.registry)

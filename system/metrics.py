"""Prometheus metrics for every stage, in a registry owned by the process (no global registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

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
        self.turn_seconds = Histogram("aiadmin_turn_seconds", "Worker time per turn", buckets=_TURN_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram(
            "aiadmin_queue_wait_seconds", "Enqueue to pick-up", buckets=(*_FAST_BUCKETS, 5.0, 30.0), registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

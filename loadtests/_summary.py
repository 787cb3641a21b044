"""Figures of a load run: percentiles, bounded samples, Prometheus histograms, and the summary JSON (pure).

The summary's keys are a contract: the monthly report generator reads `<out-dir>/<profile>.json`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from system.stats import percentile

E2E_SAMPLES_KEPT = 20_000  # `e2e_ms_samples` in the summary (enough for a histogram)
ACCEPT_SAMPLES_KEPT = 200_000  # webhook answer times kept for the percentiles of a long soak
QUEUE_WAIT_METRIC = "aiadmin_queue_wait_seconds"

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending, +Inf last


class Reservoir:
    """A uniform sample of at most `cap` values of a stream (algorithm R), with the exact count and maximum."""

    def __init__(self, *, cap: int, rng: random.Random) -> None:
        if cap < 1:
            raise ValueError("cap must be positive")
        self._cap = cap
        self._rng = rng
        self.values: list[float] = []
        self.count = 0
        self.max: float | None = None

    def add(self, value: float) -> None:
        self.count += 1
        self.max = value if self.max is None else max(self.max, value)
        if len(self.values) < self._cap:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.count)
        if slot < self._cap:
            self.values[slot] = value


def latency_block(values: Sequence[float], *, count: int | None = None, max_ms: float | None = None) -> dict[str, Any]:
    """{"p50","p90","p99","max","count"} in ms, rounded to 0.1 ms; zeros when there are no values."""

    def r(x: float | None) -> float:
        return round(x, 1) if x is not None else 0.0

    top = max_ms if max_ms is not None else (max(values) if values else None)
    return {
        "p50": r(percentile(values, 50)),
        "p90": r(percentile(values, 90)),
        "p99": r(percentile(values, 99)),
        "max": r(top),
        "count": len(values) if count is None else count,
    }


# --- Prometheus histograms ----------------------------------------------------------------------------------


def histogram(text: str, name: str) -> Buckets:
    """The cumulative buckets of histogram `name` in a Prometheus text exposition, summed over label sets."""
    sums: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                le = float(sample.labels["le"])
                sums[le] = sums.get(le, 0.0) + sample.value
    return sorted(sums.items())


def add_buckets(a: Buckets, b: Buckets) -> Buckets:
    """Two histograms of the same buckets from two processes, as one."""
    if not a or not b:
        return a or b
    _same_bounds(a, b)
    return [(le, x + y) for (le, x), (_, y) in zip(a, b, strict=True)]


def subtract_buckets(after: Buckets, before: Buckets) -> Buckets:
    """What was observed between two scrapes of one process (`before` empty: everything)."""
    if not before:
        return after
    _same_bounds(after, before)
    return [(le, max(0.0, x - y)) for (le, x), (_, y) in zip(after, before, strict=True)]


def _same_bounds(a: Buckets, b: Buckets) -> None:
    if [le for le, _ in a] != [le for le, _ in b]:
        raise ValueError("the histograms have different buckets")


def histogram_count(buckets: Buckets) -> int:
    return int(buckets[-1][1]) if buckets else 0


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' `histogram_quantile`: linear within the bucket holding rank q×count; None for no observations.

    A rank in the +Inf bucket answers the highest finite bound, as Prometheus does.
    """
    total = histogram_count(buckets)
    if total == 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower_bound
            if cumulative == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
        lower_bound, lower_count = le, cumulative
    return lower_bound


def queue_lag_block(buckets: Buckets) -> dict[str, Any]:
    """{"p50","p99","count"} of the queue wait histogram, in ms."""
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    return {
        "p50": None if p50 is None else round(p50 * 1000, 1),
        "p99": None if p99 is None else round(p99 * 1000, 1),
        "count": histogram_count(buckets),
    }


def lateness_block(stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """{"p50","p99","max"} of `flush_lateness_ms` from the stats route (the last 1,000 flushes), or nulls."""
    lateness = (stats or {}).get("flush_lateness_ms") or {}
    return {k: _number(lateness.get(k)) for k in ("p50", "p99", "max")}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True, slots=True)
class Requests:
    """Webhook POSTs of the run."""

    count: int
    failures: int
    duration_s: float

    def block(self) -> dict[str, Any]:
        rps = self.count / self.duration_s if self.duration_s > 0 else 0.0
        return {"count": self.count, "failures": self.failures, "rps": round(rps, 3)}


def counter_delta(after: Mapping[str, Any] | None, before: Mapping[str, Any] | None, key: str) -> int:
    """How much a stats counter grew during the run (its whole value when there is no earlier reading)."""
    now = (after or {}).get(key)
    then = (before or {}).get(key)
    if not isinstance(now, int):
        return 0
    return max(0, now - then) if isinstance(then, int) else now

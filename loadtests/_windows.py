"""A run's measured noise: its figures in equal sub-windows of its planned length (pure).

The monthly report judges a goal only beyond noise (missed in 2 of 3 repeats, or by more than their spread). A
load run is one long measurement, so instead of running each profile three times (three times the chain's length)
it is cut into `WINDOWS` equal windows of its planned length, each measured on its own: the webhook's answer time
and the e2e latency by when they happened, the queue lag from the worker's histogram scraped at each window's edge,
and the flush lateness from the stats route read at each edge. The stats route keeps the last 1,000 flushes, so a
window's lateness is the p99 of the 1,000 flushes before its end: its own when it flushed at least that many
(`flushes` says), else reaching back into the window before.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtests._summary import ACCEPT_SAMPLES_KEPT, Buckets, Reservoir, histogram_quantile, subtract_buckets
from system.stats import percentile

WINDOWS = 3
LATENESS_FLUSHES_KEPT = 1_000  # the stats route's lateness sample (the last 1,000 flushes)


@dataclass(frozen=True, slots=True)
class Edge:
    """What the system said at one window edge: its stats route and its queue wait histogram (None: unread)."""

    at_ms: int
    stats: dict[str, Any] | None
    queue_wait: Buckets | None


def window_of(at_ms: int, *, started_ms: int, planned_s: float, count: int = WINDOWS) -> int:
    """The window `at_ms` falls in: 0..count-1 (before the start: 0; after the planned end: the last)."""
    if planned_s <= 0:
        return 0
    share = (at_ms - started_ms) / (planned_s * 1000)
    return min(count - 1, max(0, int(share * count)))


def edges_ms(*, started_ms: int, planned_s: float, count: int = WINDOWS) -> list[int]:
    """The inner edges: where window i ends and i+1 begins (count-1 of them)."""
    return [started_ms + round(planned_s * 1000 * i / count) for i in range(1, count)]


@dataclass
class WindowedLatency:
    """A bounded sample of one latency per window."""

    rng: random.Random
    count: int = WINDOWS
    windows: list[Reservoir] = field(init=False)

    def __post_init__(self) -> None:
        cap = max(1, ACCEPT_SAMPLES_KEPT // self.count)
        self.windows = [Reservoir(cap=cap, rng=random.Random(self.rng.getrandbits(32))) for _ in range(self.count)]

    def add(self, window: int, value: float) -> None:
        self.windows[window].add(value)

    def p99(self) -> list[float | None]:
        return [_p99(w.values) for w in self.windows]

    def counts(self) -> list[int]:
        return [w.count for w in self.windows]


def e2e_p99_by_window(
    sent: Sequence[tuple[int, float]], *, started_ms: int, planned_s: float, count: int = WINDOWS
) -> list[float | None]:
    """The e2e p99 of each window from (the turn's last fragment's time, its e2e ms), windowed by that time."""
    by: list[list[float]] = [[] for _ in range(count)]
    for at_ms, e2e_ms in sent:
        by[window_of(at_ms, started_ms=started_ms, planned_s=planned_s, count=count)].append(e2e_ms)
    return [_p99(values) for values in by]


def queue_lag_p99_by_window(edges: Sequence[Edge]) -> list[float | None]:
    """Each window's queue wait p99 in ms: the histogram's growth between its two edges (None: an edge unread)."""
    out: list[float | None] = []
    for before, after in itertools.pairwise(edges):
        if before.queue_wait is None or after.queue_wait is None:
            out.append(None)
            continue
        try:
            grown = subtract_buckets(after.queue_wait, before.queue_wait)
        except ValueError:
            out.append(None)
            continue
        q = histogram_quantile(0.99, grown)
        out.append(None if q is None else round(q * 1000, 1))
    return out


def lateness_by_window(edges: Sequence[Edge]) -> tuple[list[float | None], list[int | None]]:
    """Each window's flush lateness p99 (the stats route at its end) and how many batches it flushed."""
    p99s: list[float | None] = []
    flushes: list[int | None] = []
    for before, after in itertools.pairwise(edges):
        lateness = ((after.stats or {}).get("flush_lateness_ms") or {}).get("p99")
        p99s.append(float(lateness) if isinstance(lateness, int | float) else None)
        then, now = (before.stats or {}).get("batches_flushed"), (after.stats or {}).get("batches_flushed")
        flushes.append(max(0, now - then) if isinstance(then, int) and isinstance(now, int) else None)
    return p99s, flushes


def windows_block(
    *,
    started_ms: int,
    stopped_ms: int,
    planned_s: float,
    accept: WindowedLatency,
    e2e: Sequence[tuple[int, float]],
    edges: Sequence[Edge],
    requests: Sequence[int],
    peak_conversations: Sequence[int],
) -> dict[str, Any]:
    """The summary's `windows`: each figure as a list, one value per window (null where it was not measured)."""
    count = accept.count
    lateness, flushes = lateness_by_window(edges) if len(edges) == count + 1 else ([None] * count, [None] * count)
    queue_lag = queue_lag_p99_by_window(edges) if len(edges) == count + 1 else [None] * count
    window_s = planned_s / count if count else 0.0
    return {
        "count": count,
        "window_s": round(window_s, 3),
        "accept_p99_ms": accept.p99(),
        "e2e_p99_ms": e2e_p99_by_window(e2e, started_ms=started_ms, planned_s=planned_s, count=count),
        "queue_lag_p99_ms": queue_lag,
        "lateness_p99_ms": lateness,
        "flushes": flushes,
        "lateness_flushes_kept": LATENESS_FLUSHES_KEPT,
        "requests": list(requests),
        "rps": [
            _rate(n, i, window_s=window_s, started_ms=started_ms, stopped_ms=stopped_ms) for i, n in enumerate(requests)
        ],
        "peak_conversations": list(peak_conversations),
    }


def _p99(values: Sequence[float]) -> float | None:
    p = percentile(values, 99)
    return None if p is None else round(p, 1)


def _rate(requests: int, window: int, *, window_s: float, started_ms: int, stopped_ms: int) -> float | None:
    """Requests per second over the part of the window the run lasted; None for a window it never reached."""
    covered_s = min(window_s, (stopped_ms - started_ms) / 1000 - window * window_s)
    return round(requests / covered_s, 2) if covered_s > 0 else None

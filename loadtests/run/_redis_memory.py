"""The load run's Redis over time: its memory every few seconds, and at the end whether every key will expire.

`used_memory` is the whole server's: other databases on the same server count in it, so a run that wants this
figure clean gets a Redis server of its own. The number of keys (`DBSIZE`) is the run's database's own.

Whether Redis memory comes back once the conversations expire: at the system's default retention (a dialog 24 h,
its messages 30 days, a seen message id 7 days) no run waits that out, and the run shows that every key it left
has a TTL, with the longest TTL it found. A profile that shortens the retention (`soak`: 15 minutes) also waits,
after the stack has stopped, until every key with a TTL is gone, and reads the memory then (`expiry`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import redis

from simulator.redis_target import MARKER_KEY

MEMORY_EVERY_S = 10.0
SERIES_MAX_POINTS = 720
SCAN_COUNT = 1_000


def used_memory_mb(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("memory")
    return round(float(info["used_memory"]) / 2**20, 2)


def ttl_audit(client: redis.Redis) -> dict[str, Any]:
    """Keys in the database, how many will never expire (the claim marker aside), and the longest TTL in s."""
    keys = without_ttl = 0
    longest_s = 0
    examples: list[str] = []
    for key in client.scan_iter(count=SCAN_COUNT):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name == MARKER_KEY:
            continue
        keys += 1
        ttl_s = int(client.ttl(key))
        if ttl_s == -1:
            without_ttl += 1
            if len(examples) < 5:
                examples.append(name)
        longest_s = max(longest_s, ttl_s)
    return {"keys": keys, "without_ttl": without_ttl, "longest_ttl_s": longest_s, "without_ttl_examples": examples}


class RedisMemory:
    """`used_memory` of the run's Redis every `every_s`, on a thread of its own, from `start` to `close`."""

    def __init__(self, url: str, *, every_s: float = MEMORY_EVERY_S) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5)
        self._every_s = every_s
        self._started = time.monotonic()
        self.series: list[tuple[float, float]] = []
        self.keys_series: list[tuple[float, int]] = []
        self.start_mb: float | None = None
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="redis-memory", daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self.start_mb = self._read()
        self._thread.start()

    def close(self, *, expire_wait_s: float = 0.0) -> dict[str, Any]:
        """Stop sampling; the figures for the summary (start, end, peak, series, TTL audit).

        With `expire_wait_s`, first wait up to that long (still sampling) for every key with a TTL to expire.
        """
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=10)
        end_mb = self._read()
        audit: dict[str, Any] = {}
        expiry: dict[str, Any] | None = None
        try:
            audit = ttl_audit(self._client)
            if expire_wait_s > 0:
                expiry = self._wait_for_expiry(audit, timeout_s=expire_wait_s)
        except redis.RedisError as exc:
            self.errors.append(f"ttl audit: {exc}")
        with contextlib.suppress(redis.RedisError):
            self._client.close()
        values = [mb for _, mb in self.series]
        return {
            "used_memory_start_mb": self.start_mb,
            "used_memory_end_mb": end_mb,
            "used_memory_peak_mb": max(values) if values else end_mb,
            "used_memory_series_mb": [list(point) for point in self.series],
            "keys_series": [list(point) for point in self.keys_series],
            "keys": audit,
            "expiry": expiry,
            "errors": self.errors[:5],
        }

    def _wait_for_expiry(self, audit: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Sample until only the keys without a TTL (and the claim marker) are left, or `timeout_s` passes."""
        expiring = int(audit["keys"]) - int(audit["without_ttl"])
        # What stays: the keys without a TTL and the claim marker. Not "the keys now minus those that expire": keys
        # expire while the audit scans, and a floor counted that way was never reached.
        floor = int(audit["without_ttl"]) + int(self._client.exists(MARKER_KEY))
        started = time.monotonic()
        keys = int(self._client.dbsize())
        while keys > floor and time.monotonic() - started < timeout_s:
            time.sleep(min(self._every_s, MEMORY_EVERY_S))
            self._read()
            keys = self.keys_series[-1][1]
        return {
            "waited_s": round(time.monotonic() - started, 1),
            "keys_expiring_at_end": expiring,
            "keys_with_ttl_left": max(0, keys - floor),
            "used_memory_mb": self.series[-1][1] if self.series else None,
        }

    def _read(self) -> float | None:
        try:
            mb, keys = used_memory_mb(self._client), int(self._client.dbsize())
        except redis.RedisError as exc:
            self.errors.append(str(exc))
            return None
        at = round(time.monotonic() - self._started, 1)
        self.series.append((at, mb))
        self.keys_series.append((at, keys))
        if len(self.series) > SERIES_MAX_POINTS:
            self.series, self.keys_series = self.series[::2], self.keys_series[::2]
            self._every_s *= 2
        return mb

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            self._read()

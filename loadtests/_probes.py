"""What a load run reads besides its own requests: the fake WhatsApp's inbox, the system's stats and metrics,
and the history the worker stored in Redis. Synchronous clients (under Locust they run on gevent's sockets).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import orjson
from redis import Redis
from redis.exceptions import RedisError

from loadtests._ledger import HistoryItem, Reply
from loadtests._summary import QUEUE_WAIT_METRIC, Buckets, add_buckets, histogram
from system.store.keys import Keys

PAGE = 1000  # the fake's most messages per answer
MAX_PAGES = 1000  # bounded: a million replies is far beyond any profile
HISTORY_BATCH = 500  # phones per Redis pipeline


class ProbeError(Exception):
    """A probe could not read what it needs; the message names the source and the cause."""


class FakeWhatsAppInbox:
    """The fake WhatsApp's `GET /_sim/messages`: the messages the system sent to the clients."""

    def __init__(self, base_url: str, *, http: httpx.Client) -> None:
        self._url = base_url.rstrip("/") + "/_sim/messages"
        self._http = http

    def read(self, *, after: int, to: str | None = None, wait_ms: int = 0) -> tuple[list[Reply], int]:
        """(messages numbered after `after`, the fake's last number); waits up to `wait_ms` for the first one."""
        params: dict[str, str | int] = {"after": after, "wait_ms": wait_ms, "limit": PAGE}
        if to is not None:
            params["to"] = to
        try:
            response = self._http.get(self._url, params=params, timeout=wait_ms / 1000 + 10)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProbeError(f"fake WhatsApp {self._url}: {type(exc).__name__}: {exc}") from exc
        return [Reply.from_json(m) for m in doc["messages"]], int(doc["last_seq"])

    def last_seq(self) -> int:
        return self.read(after=2**62)[1]

    def everything_after(self, after: int) -> list[Reply]:
        """Every kept message numbered after `after`, page by page."""
        out: list[Reply] = []
        for _ in range(MAX_PAGES):
            page, _last = self.read(after=after)
            if not page:
                return out
            out.extend(page)
            after = page[-1].seq
        raise ProbeError(f"more than {MAX_PAGES * PAGE} messages at {self._url}")


class SystemProbe:
    """The system's stats route and Prometheus metrics."""

    def __init__(self, host: str, *, http: httpx.Client, stats_token: str, metrics_urls: Sequence[str]) -> None:
        self._stats_url = host.rstrip("/") + "/webhook/whatsapp/batched/stats"
        self._headers = {"Authorization": f"Bearer {stats_token}"} if stats_token else {}
        self._metrics_urls = tuple(metrics_urls) or (host.rstrip("/") + "/metrics",)
        self._http = http

    def stats(self) -> dict[str, Any]:
        try:
            response = self._http.get(self._stats_url, headers=self._headers, timeout=10)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProbeError(f"stats {self._stats_url}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(doc, dict):
            raise ProbeError(f"stats {self._stats_url}: not a JSON object")
        return doc

    def queue_wait(self) -> Buckets:
        """The queue wait histogram summed over every metrics URL (API and worker processes may differ)."""
        total: Buckets = []
        for url in self._metrics_urls:
            try:
                response = self._http.get(url, timeout=10)
                response.raise_for_status()
                total = add_buckets(total, histogram(response.text, QUEUE_WAIT_METRIC))
            except (httpx.HTTPError, ValueError) as exc:
                raise ProbeError(f"metrics {url}: {type(exc).__name__}: {exc}") from exc
        return total


def stored_history(redis_url: str, *, company_id: int, phones: Iterable[str]) -> dict[str, list[HistoryItem]]:
    """The stored messages of each phone's conversation (`messages:{company}:{phone}`), oldest first."""
    out: dict[str, list[HistoryItem]] = {}
    client: Redis = Redis.from_url(redis_url, socket_timeout=10)
    try:
        ordered = list(dict.fromkeys(phones))
        for start in range(0, len(ordered), HISTORY_BATCH):
            chunk = ordered[start : start + HISTORY_BATCH]
            with client.pipeline(transaction=False) as pipe:
                for phone in chunk:
                    pipe.lrange(Keys().context(company_id, phone).messages, 0, -1)
                rows = pipe.execute()
            for phone, raw_items in zip(chunk, rows, strict=True):
                out[phone] = [HistoryItem.from_json(orjson.loads(raw)) for raw in raw_items]
    except (RedisError, OSError, orjson.JSONDecodeError) as exc:
        raise ProbeError(f"history in Redis: {type(exc).__name__}: {exc}") from exc
    finally:
        client.close()
    return out

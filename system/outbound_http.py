"""The outbound HTTP client of a process, with its connections spread over many tiny pools."""

from __future__ import annotations

import math

import httpx

# httpcore checks every idle connection of a pool (a readability syscall each) on every request, so the
# smaller the pool, the cheaper a request: 32 connections per pool cost a worker at 5 s of LLM latency a
# fifth of its throughput against 2 (measured with `aiadmin bench worker`).
CONNECTIONS_PER_POOL = 2


class ShardedTransport(httpx.AsyncBaseTransport):
    """Sends each request through a pool with a free connection, never queueing behind a busy one.

    A round-robin alone would park a reply behind two five-second LLM calls in the same tiny pool; the
    transport counts the requests waiting for an answer per pool and takes the next pool that has room
    (there always is one: the pools hold more connections than a process has requests at once).
    """

    def __init__(self, *, connections: int, per_pool: int = CONNECTIONS_PER_POOL) -> None:
        count = max(1, math.ceil(connections / per_pool))
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        tls = httpx.create_ssl_context()  # one CA bundle in memory, not one per pool
        self._pools = [httpx.AsyncHTTPTransport(limits=limits, verify=tls) for _ in range(count)]
        self._in_flight = [0] * count
        self._per_pool = per_pool
        self._next = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._pick()
        self._in_flight[index] += 1
        try:
            return await self._pools[index].handle_async_request(request)
        finally:
            # The slot is free once the answer's head is in: every caller here reads the (small) body
            # at once, and nothing streams. Waiting for the body's close instead costs a tenth of the
            # worker's throughput for no gain.
            self._in_flight[index] -= 1

    def _pick(self) -> int:
        """The next pool, in turn, with a free connection; the least busy one if all are full."""
        count = len(self._pools)
        for step in range(count):
            index = (self._next + step) % count
            if self._in_flight[index] < self._per_pool:
                self._next = index + 1
                return index
        index = min(range(count), key=self._in_flight.__getitem__)
        self._next = index + 1
        return index

    def _release(self, index: int) -> None:
        self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def outbound_client(*, concurrency: int) -> httpx.AsyncClient:
    """LLM, CRM and WhatsApp share it; a turn holds at most one request, so twice the turns never waits."""
    return httpx.AsyncClient(transport=ShardedTransport(connections=max(64, 2 * concurrency)))

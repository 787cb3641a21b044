"""The outbound HTTP client of a process, with its connections spread over several small pools."""

from __future__ import annotations

import itertools
import math

import httpx

CONNECTIONS_PER_POOL = 32


class ShardedTransport(httpx.AsyncBaseTransport):
    """Round-robins requests over several connection pools.

    httpcore walks every connection of its pool on each request and response, so one pool of a thousand
    connections (a worker with a thousand turns waiting on the LLM) spends its CPU there; small pools don't.
    """

    def __init__(self, *, connections: int, per_pool: int = CONNECTIONS_PER_POOL) -> None:
        pools = max(1, math.ceil(connections / per_pool))
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        tls = httpx.create_ssl_context()  # one CA bundle in memory, not one per pool
        self._pools = [httpx.AsyncHTTPTransport(limits=limits, verify=tls) for _ in range(pools)]
        self._next = itertools.cycle(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def outbound_client(*, concurrency: int) -> httpx.AsyncClient:
    """LLM, CRM and WhatsApp share it; a turn holds at most one request, so twice the turns never waits."""
    return httpx.AsyncClient(transport=ShardedTransport(connections=max(64, 2 * concurrency)))

"""The outbound transport: many tiny pools, and a request never waits behind busy connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from system.outbound_http import ShardedTransport


class SlowServer:
    """HTTP/1.1 keep-alive: `/fast` answers at once, `/slow` only once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.port = 0
        self.held = 0
        self._arrived = asyncio.Condition()

    async def holding(self, count: int) -> None:
        """Return once `count` slow requests are being held."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.held >= count)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                path = head.split(b" ", 2)[1]
                if path == b"/slow":
                    async with self._arrived:
                        self.held += 1
                        self._arrived.notify_all()
                    await self.release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[SlowServer]:
    srv = SlowServer()
    tcp = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = tcp.sockets[0].getsockname()[1]
    async with tcp:
        yield srv
        srv.release.set()


async def test_a_request_takes_a_free_pool_rather_than_queue_behind_slow_ones(server: SlowServer) -> None:
    transport = ShardedTransport(connections=6, per_pool=2)  # three pools of two
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{server.port}") as client:
        slow: list[asyncio.Task[httpx.Response]] = []

        async def start_slow() -> None:
            slow.append(asyncio.ensure_future(client.get("/slow")))
            await server.holding(len(slow))  # it holds its connection now

        await start_slow()  # pool 0
        assert (await client.get("/fast")).status_code == 200  # pool 1, free again
        for _ in range(4):  # pools 2, 0 (now full), 1, 2 (now full)
            await start_slow()
        # A plain round-robin would send this one to the full pool 0 and wait for the slow requests.
        fast = await asyncio.wait_for(client.get("/fast"), timeout=2)
        assert fast.status_code == 200
        server.release.set()
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 5
    assert transport._in_flight == [0, 0, 0]  # every connection was handed back


async def test_with_every_pool_full_a_request_waits_in_the_least_busy_one(server: SlowServer) -> None:
    transport = ShardedTransport(connections=2, per_pool=2)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{server.port}") as client:
        slow = [asyncio.ensure_future(client.get("/slow")) for _ in range(2)]
        await server.holding(2)
        waiting = asyncio.ensure_future(client.get("/fast"))
        with pytest.raises(TimeoutError):  # no connection is free anywhere
            await asyncio.wait_for(asyncio.shield(waiting), timeout=0.2)
        server.release.set()
        assert (await waiting).status_code == 200
        await asyncio.gather(*slow)
    assert transport._in_flight == [0]


async def test_a_failed_request_hands_its_slot_back() -> None:
    transport = ShardedTransport(connections=2, per_pool=2)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9/")  # nothing listens on the discard port
    assert transport._in_flight == [0]

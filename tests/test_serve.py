"""The served API within bounds: real sockets against uvicorn on a free port, with the API's settings."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import uvicorn
from structlog.testing import capture_logs

from system.errors import SettingsError
from system.http_server import raise_open_files_limit, server_config
from system.ingest.routes import GATEWAY_ROUTE, create_app
from system.runtime import Runtime
from system.settings import Settings, load_settings

Serve = Callable[..., Any]  # (**settings) -> async context manager yielding the port
# Generous bounds for a shared, busy machine: what is tested is "closed, not held forever".
SLACK_S = 3.0


@pytest.fixture
def serve(make_settings: Callable[..., Settings]) -> Serve:
    @asynccontextmanager
    async def served(**env: Any) -> AsyncIterator[int]:
        settings = make_settings(**env)
        rt = Runtime.build(settings)  # embedded fakeredis: these tests never reach the ingest core
        # The socket is bound and listening before the server starts, so connecting never races start-up.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        port = sock.getsockname()[1]
        server = uvicorn.Server(server_config(create_app(rt), settings, host="127.0.0.1", port=port))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            yield port
        finally:
            server.should_exit = True
            await task
            sock.close()
            await rt.close()

    return served


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` on a new connection; the status, headers and body of the answer, read until the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        async with asyncio.timeout(SLACK_S * 2):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


HEALTH = b"GET /health HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes this silent connection (EOF) within the slack."""
    try:
        async with asyncio.timeout(SLACK_S * 2):
            return await reader.read() == b""
    except TimeoutError:
        return False


@contextmanager
def soft_open_files_limit(soft: int) -> Iterator[None]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


async def test_idle_connections_beyond_the_limit_get_a_clean_503_then_are_closed(serve: Serve) -> None:
    async with serve(http_limit_concurrency=20, http_header_timeout_s=0.5) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(70)]
        status, _, body = await request(port, HEALTH)
        assert (status, body) == (503, b"Service Unavailable")  # an answer at once, not a hang
        started = time.monotonic()
        assert all(await asyncio.gather(*(closed_by_server(reader) for reader, _ in idle)))
        assert time.monotonic() - started < 0.5 + SLACK_S
        for _, writer in idle:
            writer.close()
        status, _, body = await request(port, HEALTH)
        assert (status, json.loads(body)) == (200, {"status": "ok"})


async def test_a_thousand_idle_connections_get_health_a_clean_503_until_they_are_closed(serve: Serve) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2500:
        pytest.skip("both ends of 1,000 connections need 2,000 descriptors in this one process")
    with soft_open_files_limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0]):
        raise_open_files_limit()  # as `serve_http` does at start-up
        async with serve(http_header_timeout_s=1) as port:
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(1000)]
            try:
                status, _, body = await request(port, HEALTH)
                assert (status, body) == (503, b"Service Unavailable")  # 1000 > the default limit of 512
                assert all(await asyncio.gather(*(closed_by_server(reader) for reader, _ in idle)))
            finally:
                for _, writer in idle:
                    writer.close()
            status, _, body = await request(port, HEALTH)
            assert (status, json.loads(body)) == (200, {"status": "ok"})


async def test_headers_that_never_complete_are_closed_within_the_timeout(serve: Serve) -> None:
    async with serve(http_header_timeout_s=0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: api\r\n")  # no blank line: the headers go on forever
        started = time.monotonic()
        assert await closed_by_server(reader)
        assert 0.4 <= time.monotonic() - started < 0.5 + SLACK_S
        writer.close()


async def test_a_body_shorter_than_its_content_length_gets_408_within_the_timeout(serve: Serve) -> None:
    async with serve(http_body_timeout_s=0.5) as port:
        raw = (
            f"POST {GATEWAY_ROUTE} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n"
            '{"messages": ['
        ).encode()
        started = time.monotonic()
        status, headers, body = await request(port, raw)
        assert 0.4 <= time.monotonic() - started < 0.5 + SLACK_S
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body) == {
            "error": "request_timeout",
            "message": "the request body did not arrive within 0.5 s",
            "errors": [],
        }


async def test_a_body_sent_in_time_is_answered_as_usual(serve: Serve) -> None:
    async with serve(http_body_timeout_s=5) as port:
        payload = b'{"messages": "not a list"}'
        raw = (
            f"POST {GATEWAY_ROUTE} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        writer.write(payload)  # the body in a second packet: a real wait on the body, within the deadline
        async with asyncio.timeout(SLACK_S * 2):
            answer = await reader.read()
        writer.close()
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500 and status != 408


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(serve: Serve) -> None:
    async with serve(http_keepalive_s=1) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: api\r\n\r\n")
        async with asyncio.timeout(SLACK_S):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readexactly(len(b'{"status":"ok"}'))
        started = time.monotonic()
        assert await closed_by_server(reader)
        assert 0.9 <= time.monotonic() - started < 1 + SLACK_S
        writer.close()


def test_start_up_raises_the_soft_open_files_limit_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves nothing to raise")
    with soft_open_files_limit(256), capture_logs() as logs:
        now = raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now > 256
    assert [(e["event"], e["was"]) for e in logs] == [("open_files_limit", 256)]


def test_http_bounds_reach_uvicorn(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(http_limit_concurrency=64, http_keepalive_s=7)
    config = server_config(object(), settings, host="127.0.0.1", port=0)
    assert (config.limit_concurrency, config.timeout_keep_alive) == (64, 7)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AIADMIN_HTTP_LIMIT_CONCURRENCY", "0"),
        ("AIADMIN_HTTP_KEEPALIVE_S", "0"),
        ("AIADMIN_HTTP_HEADER_TIMEOUT_S", "0"),
        ("AIADMIN_HTTP_BODY_TIMEOUT_S", "-1"),
    ],
)
def test_http_bounds_must_be_positive(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})

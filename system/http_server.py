"""Serving the API with uvicorn (only API processes import the web stack), within bounds.

uvicorn bounds the connections (`limit_concurrency`: 503 above it) and the idle time between requests
(`timeout_keep_alive`), but with httptools nothing bounds how long a client may take to send a request:
a socket that never sends, or a body shorter than its Content-Length, is held forever. Here a connection
must deliver its headers within `http_header_timeout_s` (else it is closed) and its body within
`http_body_timeout_s` (else it gets 408 and is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import socket
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Protocol

import orjson
import structlog
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from system.ingest.routes import create_app
from system.lifecycle import STOP_SIGNALS, Service, stop_services
from system.runtime import Runtime
from system.settings import Settings

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server with our signal handling: SIGTERM/SIGINT shut down gracefully and exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._stop)
        try:
            yield
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        self.force_exit = self.should_exit  # a second signal stops at once
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        # One line with where it listens: the bound address, so the real port when 0 was asked for.
        bound = [sock.getsockname() for server in self.servers for sock in server.sockets] if self.started else []
        if bound:
            host, port = bound[0][:2]
            log.info("api_listening", host=host, port=port, sockets=len(bound))


# Objects allocated between young collections. Python's default (700) runs one every few requests
# at full load, about 5% of a busy API's CPU; nearly everything a request allocates is freed by
# reference counting anyway, so collecting ten times less often only delays the rare cycles.
GC_YOUNG_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the collector's sight, and collect less often.

    Modules, the app and settings live as long as the process; without this every full collection
    walks them again, which is a visible share of a busy API's CPU.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


class _Expiring(Protocol):
    def expire(self) -> None: ...


class Deadlines:
    """Things that must be over within `timeout_s`: one timer sweeps them every quarter of it.

    A timer per request costs a few microseconds on the hot path (uvloop's timers are libuv timers); the
    sweep costs a dict entry per request instead, and cuts a late one between 1 and 1.25 timeouts.
    """

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._sweep_s = timeout_s / 4
        self._due: dict[_Expiring, float] = {}  # item -> loop time it must be over by
        self._timer: asyncio.TimerHandle | None = None

    def add(self, item: _Expiring, *, started: float, loop: asyncio.AbstractEventLoop) -> None:
        """Watch `item` from `started` (loop time), unless it is watched already."""
        if item not in self._due:
            self._due[item] = started + self.timeout_s
            if self._timer is None:
                self._timer = loop.call_later(self._sweep_s, self._sweep, loop)

    def discard(self, item: _Expiring) -> None:
        self._due.pop(item, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for item in [item for item, due in self._due.items() if now >= due]:
            del self._due[item]
            item.expire()
        if self._due:
            self._timer = loop.call_later(self._sweep_s, self._sweep, loop)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request headers are not complete in time.

    The deadline starts when the connection is made (a socket that never sends) and when a request's
    first byte arrives (headers trickling in); between requests uvicorn's keep-alive timeout applies.
    """

    header_deadlines: ClassVar[Deadlines]  # one per server: see `header_deadline_protocol`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.header_deadlines.add(self, started=self.loop.time(), loop=self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadlines.discard(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_deadlines.add(self, started=self.loop.time(), loop=self.loop)

    def on_headers_complete(self) -> None:
        self.header_deadlines.discard(self)
        super().on_headers_complete()

    def expire(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(*, header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class of one server (uvicorn builds a protocol per connection from a class)."""
    deadlines = Deadlines(timeout_s=header_timeout_s)
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_deadlines": deadlines})


class BodyDeadline:
    """ASGI middleware: a request body not complete within `timeout_s` of the headers gets 408 and a close.

    The app sees the stalled body as a client disconnect; whatever it answers to that is dropped, as the
    408 has gone out already.
    """

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self._app = app
        self.deadlines = Deadlines(timeout_s=timeout_s)
        self.timeout_body = orjson.dumps(
            {
                "error": "request_timeout",
                "message": f"the request body did not arrive within {timeout_s:g} s",
                "errors": [],
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        read = _BodyRead(self, scope, receive, send)
        try:
            await self._app(scope, read.receive, read.send)
        except Exception:
            if not read.timed_out:
                raise
            # The app failed on the disconnect standing in for the stalled body; the 408 is its answer.
        finally:
            self.deadlines.discard(read)


class _BodyRead:
    """One request's body read; `expire()` (from the sweep) ends it, at once if the app is waiting in it."""

    __slots__ = (
        "_in_receive",
        "_middleware",
        "_receive",
        "_scope",
        "_send",
        "_started_at",
        "_task",
        "done",
        "expired",
        "started",
        "timed_out",
    )

    def __init__(self, middleware: BodyDeadline, scope: Scope, receive: Receive, send: Send) -> None:
        self._middleware = middleware
        self._scope = scope
        self._receive = receive
        self._send = send
        self._started_at = asyncio.get_running_loop().time()
        self._task: asyncio.Task[Any] | None = None
        self._in_receive = False
        self.done = False
        self.expired = False
        self.started = False
        self.timed_out = False

    async def receive(self) -> Message:
        if self.done or self.timed_out:
            return await self._receive()
        if self.expired:
            return await self._time_out()
        loop = asyncio.get_running_loop()
        self._middleware.deadlines.add(self, started=self._started_at, loop=loop)
        self._task = asyncio.current_task()
        self._in_receive = True
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if self._task is None or not self.expired or self._task.uncancel() > 0:
                raise  # not (only) the deadline's cancel: the server is stopping
            return await self._time_out()
        finally:
            self._in_receive = False
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
            self._middleware.deadlines.discard(self)
        return message

    async def send(self, message: Message) -> None:
        if self.timed_out:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    def expire(self) -> None:
        self.expired = True
        if self._in_receive and self._task is not None:
            self._task.cancel()  # otherwise the app's next receive() sees `expired`

    async def _time_out(self) -> Message:
        self.timed_out = True
        log.warning("http.body_timeout", path=self._scope.get("path"), timeout_s=self._middleware.deadlines.timeout_s)
        if not self.started:
            body = self._middleware.timeout_body
            await self._send(
                {
                    "type": "http.response.start",
                    "status": 408,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await self._send({"type": "http.response.body", "body": body})
        return {"type": "http.disconnect"}


# Where the hard limit is unlimited (macOS), the kernel still caps the soft one (OPEN_MAX, 10240 there).
MAX_OPEN_FILES_WITHOUT_HARD_LIMIT = 10240


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to the hard one; returns the soft limit now in force.

    Every connection is a descriptor: at the usual soft limit of 1024, about a thousand sockets stop
    `accept()` and with it every request, health checks included.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, MAX_OPEN_FILES_WITHOUT_HARD_LIMIT)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open_files_limit_unchanged", soft=soft, hard=hard, error=str(exc))
            return soft
    log.info("open_files_limit", soft=max(soft, target), was=soft, hard=hard)
    return max(soft, target)


def server_config(app: ASGIApp, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """uvicorn's configuration for the API: httptools, no access log or lifespan, and the HTTP bounds."""
    return uvicorn.Config(
        BodyDeadline(app, timeout_s=settings.http_body_timeout_s),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=header_deadline_protocol(header_timeout_s=settings.http_header_timeout_s),
        limit_concurrency=settings.http_limit_concurrency,
        timeout_keep_alive=settings.http_keepalive_s,
    )


async def serve_http(rt: Runtime, *, host: str, port: int, services: Sequence[Service] = ()) -> None:
    """Serve the API until SIGINT/SIGTERM; `services` run beside it and are stopped afterwards."""
    raise_open_files_limit()
    server = _Server(server_config(create_app(rt), rt.settings, host=host, port=port))
    freeze_startup_heap()
    tasks = [asyncio.ensure_future(s.run()) for s in services]
    try:
        await server.serve()
    finally:
        await stop_services(services, tasks)

"""A lean HTTP/1.1 keep-alive load generator on asyncio protocols: open loop at a fixed rate, or closed loop.

It shares two cores with Redis and the server under test, so the hot path does almost nothing: requests
are encoded before a phase starts, and of each response only the status line and Content-Length are read.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import orjson

ERROR_STATUS = -1  # recorded when a connection fails or answers garbage mid-request
CONNECT_TIMEOUT_S = 2.0
DRAIN_TIMEOUT_S = 10.0  # how long a phase waits for answers still in flight once it has ended
_MAX_SLEEPS = 1000  # a sleep that woke early is repeated; each repeat is shorter, so a few suffice
_HEAD_END = b"\r\n\r\n"
_LENGTH_HEADER = b"\r\ncontent-length:"
_TEXTS = (
    "Здравствуйте, хочу записаться на стрижку",
    "Можно завтра после 18:00?",
    "Сколько стоит стрижка машинкой и борода?",
    "К Артёму, если свободен",
    "Спасибо!",
)


class ProtocolError(Exception):
    """The server's answer is not an HTTP/1.1 response this client can frame."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go; always a local server."""

    host: str
    port: int
    path: str


class GatewayRequests:
    """Encoded gateway webhook requests rotating over phones; every messageId in one run is unique."""

    def __init__(self, phones: Sequence[str], *, tag: str) -> None:
        if not phones:
            raise ValueError("at least one phone is needed")
        self._phones = phones
        self._tag = tag
        self._next = 0

    @property
    def tag(self) -> str:
        """What every messageId of this run carries, so that another run's ids never repeat them."""
        return self._tag

    def take(self, target: Target, count: int) -> list[bytes]:
        """The next `count` requests, fully encoded for `target`."""
        head = (
            f"POST {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        out: list[bytes] = []
        for i in range(self._next, self._next + count):
            body = orjson.dumps(
                {
                    "from": self._phones[i % len(self._phones)],
                    "message": _TEXTS[i % len(_TEXTS)],
                    "messageId": f"bench-{self._tag}-{i}",
                }
            )
            out.append(b"%s%d\r\n\r\n%s" % (head, len(body), body))
        self._next += count
        return out


@dataclass
class Tally:
    """What one phase saw; latencies in seconds, measured on the performance counter."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    send_lag_s: list[float] = field(default_factory=list)  # open loop: dispatch time minus scheduled time
    service_s: list[float] = field(default_factory=list)  # open loop: answer time minus actual send time
    sent: int = 0
    errors: int = 0  # failed connections, unparseable answers and answers that never came
    elapsed_s: float = 0.0
    max_connections: int = 0
    exhausted: bool = False  # the closed loop ran out of encoded requests before its time was up

    def record(self, status: int, latency_s: float) -> None:
        if status == ERROR_STATUS:
            self.errors += 1
            return
        self.latencies_s.append(latency_s)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def completed(self) -> int:
        return len(self.latencies_s)

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def rate_per_s(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0


def merged(tallies: Sequence[Tally]) -> Tally:
    """One tally for phases run one after another against the same server."""
    out = Tally()
    for t in tallies:
        out.latencies_s += t.latencies_s
        out.send_lag_s += t.send_lag_s
        out.service_s += t.service_s
        for status, count in t.statuses.items():
            out.statuses[status] = out.statuses.get(status, 0) + count
        out.sent += t.sent
        out.errors += t.errors
        out.elapsed_s += t.elapsed_s
        out.max_connections = max(out.max_connections, t.max_connections)
        out.exhausted |= t.exhausted
    return out


def parse_response(buffer: bytearray) -> tuple[int, int]:
    """(status, size in bytes) of the complete response at the start of `buffer`; (0, 0) if incomplete."""
    end = buffer.find(_HEAD_END)
    if end < 0:
        return 0, 0
    if not buffer.startswith(b"HTTP/1.") or len(buffer) < 12:
        raise ProtocolError(f"not an HTTP/1.x status line: {bytes(buffer[:40])!r}")
    status = int(buffer[9:12])
    head = buffer[: end + 2].lower()
    at = head.find(_LENGTH_HEADER)
    if at < 0:
        raise ProtocolError("the response has no Content-Length (chunked answers are not supported)")
    value_at = at + len(_LENGTH_HEADER)
    size = end + len(_HEAD_END) + int(head[value_at : head.find(b"\r\n", value_at)])
    return (status, size) if len(buffer) >= size else (0, 0)


ResponseCallback = Callable[["Connection", int], None]


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; answers go to `on_response`."""

    def __init__(self, on_response: ResponseCallback) -> None:
        self._on_response = on_response
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.busy = False
        self.alive = True
        self.started_s = 0.0  # where this request's latency counts from
        self.sent_s = 0.0  # when it was actually written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, *, started_s: float) -> None:
        assert self._transport is not None
        self.busy = True
        self.started_s = started_s
        self.sent_s = time.perf_counter()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self.busy:
            try:
                status, size = parse_response(self._buffer)
            except (ProtocolError, ValueError):
                self.close()
                return
            if size == 0:
                return
            del self._buffer[:size]
            self.busy = False
            self._on_response(self, status)  # may send the next request at once

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.busy:
            self.busy = False
            self._on_response(self, ERROR_STATUS)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def sleep_until(when_s: float) -> None:
    """Sleep until `when_s` on the performance counter, never returning early.

    uvloop's timers have millisecond resolution and may fire up to a millisecond early; a request sent
    before its scheduled time would have its latency understated, so the remainder is slept again.
    """
    for _ in range(_MAX_SLEEPS):
        delay_s = when_s - time.perf_counter()
        if delay_s <= 0:
            return
        await asyncio.sleep(delay_s)


async def connect(target: Target, on_response: ResponseCallback) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: Connection(on_response), target.host, target.port),
        CONNECT_TIMEOUT_S,
    )
    return conn


async def closed_loop(target: Target, requests: Sequence[bytes], *, connections: int, duration_s: float) -> Tally:
    """Each of `connections` sends its next request as soon as the previous one is answered."""
    runner = _ClosedLoop(requests, duration_s=duration_s)
    conns: list[Connection] = []
    try:
        for _ in range(connections):
            conns.append(await connect(target, runner.on_response))
        return await runner.run(conns)
    finally:
        for conn in conns:
            conn.close()


class _ClosedLoop:
    def __init__(self, requests: Sequence[bytes], *, duration_s: float) -> None:
        self._requests = requests
        self._duration_s = duration_s
        self._next = 0
        self._active = 0
        self._start_s = self._end_s = self._last_s = 0.0
        self._done: asyncio.Future[None] | None = None
        self.tally = Tally()

    async def run(self, conns: list[Connection]) -> Tally:
        self._done = asyncio.get_running_loop().create_future()
        self._active = len(conns)
        self.tally.max_connections = len(conns)
        self._start_s = self._last_s = time.perf_counter()
        self._end_s = self._start_s + self._duration_s
        for conn in conns:
            self._send_next(conn)
        try:
            await asyncio.wait_for(asyncio.shield(self._done), self._duration_s + DRAIN_TIMEOUT_S)
        except TimeoutError:
            self.tally.errors += sum(1 for conn in conns if conn.busy)
        self.tally.elapsed_s = self._last_s - self._start_s
        return self.tally

    def _send_next(self, conn: Connection) -> None:
        now = time.perf_counter()
        if now >= self._end_s or self._next >= len(self._requests) or not conn.alive:
            self.tally.exhausted |= self._next >= len(self._requests) and now < self._end_s
            self._active -= 1
            if self._active == 0 and self._done is not None and not self._done.done():
                self._done.set_result(None)
            return
        request = self._requests[self._next]
        self._next += 1
        self.tally.sent += 1
        conn.send(request, started_s=now)

    def on_response(self, conn: Connection, status: int) -> None:
        self._last_s = time.perf_counter()
        self.tally.record(status, self._last_s - conn.started_s)
        self._send_next(conn)


async def open_loop(
    target: Target,
    requests: Sequence[bytes],
    *,
    rate_per_s: float,
    warm_connections: int = 8,
    max_connections: int = 256,
) -> Tally:
    """Send `requests` at a fixed rate whatever the answers; latency counts from each scheduled send time.

    Counting from the schedule, not from the actual send, keeps a slow answer from hiding the requests
    that would have queued behind it (no coordinated omission).
    """
    runner = _OpenLoop(target, max_connections=max_connections)
    try:
        return await runner.run(requests, rate_per_s=rate_per_s, warm_connections=warm_connections)
    finally:
        runner.close()


class _OpenLoop:
    def __init__(self, target: Target, *, max_connections: int) -> None:
        self._target = target
        self._max = max_connections
        self._conns: list[Connection] = []
        self._idle: deque[Connection] = deque()
        self._backlog: deque[tuple[float, bytes]] = deque()
        self._connecting = 0
        self._outstanding = 0
        self._growers: set[asyncio.Task[None]] = set()
        self._drained = asyncio.Event()
        self.tally = Tally()

    async def run(self, requests: Sequence[bytes], *, rate_per_s: float, warm_connections: int) -> Tally:
        for _ in range(min(warm_connections, self._max)):
            conn = await connect(self._target, self.on_response)
            self._add(conn)
            self._idle.append(conn)
        interval_s = 1.0 / rate_per_s
        start_s = time.perf_counter()
        for i, request in enumerate(requests):
            scheduled_s = start_s + i * interval_s
            await sleep_until(scheduled_s)
            self._dispatch(scheduled_s, request)
        if self._outstanding:
            try:
                await asyncio.wait_for(self._drained.wait(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                self.tally.errors += self._outstanding
        self.tally.elapsed_s = time.perf_counter() - start_s
        return self.tally

    def _dispatch(self, scheduled_s: float, request: bytes) -> None:
        self.tally.sent += 1
        self.tally.send_lag_s.append(time.perf_counter() - scheduled_s)
        self._outstanding += 1
        self._drained.clear()
        while self._idle:
            conn = self._idle.pop()
            if conn.alive:
                conn.send(request, started_s=scheduled_s)
                return
        self._backlog.append((scheduled_s, request))
        # Every connection is busy: grow the pool (bounded) so waiting stays the server's, not ours.
        if len(self._conns) + self._connecting < self._max and len(self._backlog) > self._connecting:
            self._connecting += 1
            task = asyncio.create_task(self._grow())
            self._growers.add(task)
            task.add_done_callback(self._growers.discard)

    async def _grow(self) -> None:
        try:
            conn = await connect(self._target, self.on_response)
        except (OSError, TimeoutError):
            return  # the backlog is served by the connections that exist
        finally:
            self._connecting -= 1
        self._add(conn)
        self._release(conn)

    def _add(self, conn: Connection) -> None:
        self._conns.append(conn)
        self.tally.max_connections = max(self.tally.max_connections, len(self._conns))

    def _release(self, conn: Connection) -> None:
        if not conn.alive:
            return
        if self._backlog:
            scheduled_s, request = self._backlog.popleft()
            conn.send(request, started_s=scheduled_s)
        else:
            self._idle.append(conn)

    def on_response(self, conn: Connection, status: int) -> None:
        now = time.perf_counter()
        self.tally.record(status, now - conn.started_s)
        self.tally.service_s.append(now - conn.sent_s)
        self._outstanding -= 1
        if self._outstanding == 0:
            self._drained.set()
        self._release(conn)

    def close(self) -> None:
        for task in self._growers:
            task.cancel()
        for conn in self._conns:
            conn.close()

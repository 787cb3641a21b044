"""A hand-written RESP client for the hot path: commands packed by hand, sent on a kept connection.

redis-py's pipeline spends more on packing arguments and bookkeeping than the webhook spends on
everything else it does; these helpers write the packed bytes straight onto a pool connection.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT


async def borrow_connection(redis: Redis) -> Connection:
    """A connection of the client's pool, connected; the caller gives it back (or keeps it for good)."""
    conn: Connection = await redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    return conn


@dataclass(frozen=True, slots=True)
class Lane:
    """A pool connection kept for good by one caller; each exchange on it carries its own deadline."""

    connection: Connection | None  # None on a cluster: each call goes to the node of its slot
    timeout_s: float | None

    @classmethod
    async def borrow(cls, redis: Redis) -> Lane:
        if isinstance(redis, RedisCluster):  # a pool per node, none of its own: calls are routed by slot
            return cls(None, None)
        conn = await borrow_connection(redis)
        # Without a socket timeout redis-py writes straight to the socket instead of wrapping each
        # write in a task of its own (asyncio.wait_for); the exchange's deadline bounds it instead.
        timeout_s, conn.socket_timeout = conn.socket_timeout, None
        return cls(conn, timeout_s)


async def exchange(conn: Connection, packed: bytes, replies: int, *, timeout_s: float | None = None) -> list[Any]:
    """Send packed commands and read their replies; an error reply is returned in its place.

    One deadline (`timeout_s`, else the connection's socket timeout) covers the whole exchange instead
    of one per reply.
    """
    deadline_s = conn.socket_timeout if timeout_s is None else timeout_s
    try:
        async with asyncio.timeout(deadline_s):
            await conn.send_packed_command(packed, check_health=False)
            results: list[Any] = []
            for _ in range(replies):
                try:
                    results.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:  # that command failed; the connection still holds the rest
                    results.append(exc)
            return results
    except TimeoutError as exc:
        await conn.disconnect()
        raise RedisTimeoutError(f"no reply from Redis within {deadline_s} s") from exc
    except BaseException:
        await conn.disconnect()  # replies may be left unread on it; it reconnects on its next use
        raise


def pack_command(*parts: EncodableT) -> bytes:
    """One command in RESP: an array of bulk strings (str as UTF-8, numbers in decimal)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        kind = type(part)  # exact types first: this runs for every argument of every append
        if kind is str:
            data = part.encode()  # type: ignore[union-attr]
        elif kind is bytes:
            data = part
        elif kind is int or kind is float:
            data = repr(part).encode()
        else:
            data = _encode_subclass(part)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _encode_subclass(part: object) -> bytes:
    """str, bytes and numbers of subclasses (enums, for instance) as their plain values; nothing else."""
    if isinstance(part, str):
        return str.encode(part)
    if isinstance(part, bytes):
        return bytes(part)
    if isinstance(part, int | float) and not isinstance(part, bool):
        return repr(int(part) if isinstance(part, int) else float(part)).encode()
    raise TypeError(f"cannot send {type(part).__name__} to Redis")

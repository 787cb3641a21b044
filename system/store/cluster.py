"""Redis Cluster: the client, and the hand-packed round trips routed to the node that owns each slot.

Every Lua script and every transaction touches keys of one hash slot (`system.store.keys`), so a call runs
wherever its first key lives. Calls the node refuses with a redirection (MOVED during a resharding or a
failover, ASK during a slot migration) never ran; they are run again through redis-py's cluster client,
which follows the redirection and refreshes its slot map.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from system.store.resp import exchange

REDIRECTIONS = (MovedError, AskError, TryAgainError, ClusterDownError)
# Connections per node; each process keeps at most this many to every master.
NODE_MAX_CONNECTIONS = 256


def connect_cluster(url: str) -> Redis:
    """A cluster client seeded from one node's URL; it reads the slot map from that node on first use.

    Typed as `Redis`: the stores use the command API both share, and `is_cluster` marks where they differ.
    """
    client = RedisCluster.from_url(
        url,
        max_connections=NODE_MAX_CONNECTIONS,
        socket_timeout=5,
        socket_connect_timeout=2,
        # A failover takes the node timeout (seconds) to promote a replica: a slot's command is retried
        # across it (about 6 s in all), refreshing the slot map, instead of failing at once.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=10),
    )
    return cast(Redis, client)


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


def as_cluster(redis: Redis) -> RedisCluster:
    return cast(RedisCluster, redis)


async def exchange_by_node(
    redis: Redis, commands: Sequence[tuple[str, bytes]], *, trailer: bytes = b""
) -> tuple[list[Any], list[Any]]:
    """Send each packed command to the node owning its key: one round trip per node, all nodes at once.

    `commands` pairs each packed command with the key that routes it. `trailer` (one packed command, such as
    WAIT) is sent after a node's commands on the same connection; its replies come back one per node.
    A command answered with a redirection, or sent to a node that failed, is returned as that error; the
    caller runs it again (`must_rerun`).
    """
    cluster = as_cluster(redis)
    if not cluster.nodes_manager.slots_cache:
        await cluster.initialize()
    by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
    for i, (key, _) in enumerate(commands):
        node = cluster.get_node_from_key(key)
        if node is None:  # pragma: no cover - get_node_from_key raises for an uncovered slot
            raise ClusterDownError(f"no node serves key {key!r}")
        by_node.setdefault(node.name, (node, []))[1].append(i)
    results: list[Any] = [None] * len(commands)
    trailers: list[Any] = []
    # The nodes' round trips overlap: the call waits for the slowest node, not for the sum of them.
    replies_by_node = await asyncio.gather(
        *(_exchange_on(node, [commands[i][1] for i in indices], trailer) for node, indices in by_node.values())
    )
    for (_, indices), replies in zip(by_node.values(), replies_by_node, strict=True):
        if trailer:
            trailers.append(replies.pop())
        for i, reply in zip(indices, replies, strict=True):
            results[i] = reply
    return results, trailers


async def _exchange_on(node: ClusterNode, commands: list[bytes], trailer: bytes) -> list[Any]:
    replies = len(commands) + (1 if trailer else 0)
    conn = node.acquire_connection()
    try:
        return await exchange(conn, b"".join(commands) + trailer, replies)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        # The node is gone or slow (a failover): its calls are handed back, for the caller to send again once
        # the slot map names the slot's new owner.
        return [exc] * replies
    finally:
        node.release(conn)


def must_rerun(reply: object) -> bool:
    """Whether a reply says the command went to the wrong node or its node failed: run it again by slot."""
    if isinstance(reply, (*REDIRECTIONS, RedisConnectionError, RedisTimeoutError, OSError)):
        return True
    return isinstance(reply, ResponseError) and str(reply).startswith(("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN"))

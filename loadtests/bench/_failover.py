"""Faults of the scale benchmark: `kill -9` a cluster master mid-load, or restart a single server; time the comeback.

The master killed is the one owning the most of the system's shards (each shard is one hash tag, `{sN}`). Its
replica is promoted after the cluster's node timeout. Resumption is read from Redis itself: the shards' own
counters (`jobs_done`, written by the worker's ack; `batches_flushed`, by the batcher's claim) moving again on
the shards that were down. The killed node is then started again and rejoins as the new master's replica. Every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ClusterDownError, RedisError

from simulator.redis_server import RedisClusterServers, RedisServer
from system.store.cluster import as_cluster
from system.store.keys import Keys

PROMOTION_DEADLINE_S = 30.0
RESUME_DEADLINE_S = 60.0
POLL_S = 0.1
COUNTERS = ("jobs_done", "batches_flushed")


async def kill_master(cluster: RedisClusterServers, redis: Redis, keys: Keys) -> dict[str, Any]:
    """`kill -9` the master owning the most shards; wait for its replica's promotion; time the comeback."""
    client = as_cluster(redis)
    await client.initialize()
    owner = {s.index: _port_of(client.get_node_from_key(f"{{s{s.index}}}")) for s in keys.all_shards}
    victim = max(set(owner.values()), key=lambda port: sum(1 for p in owner.values() if p == port))
    shards = [index for index, port in owner.items() if port == victim]
    replica = await asyncio.to_thread(cluster.replica_of, victim)
    pid = await asyncio.to_thread(cluster.pid_of, victim)
    killed = time.perf_counter()
    await asyncio.to_thread(cluster.kill_9, victim)
    promoted_s = await _until(lambda: cluster.is_master(replica), since=killed)

    async def replica_back() -> float | None:
        # As an orchestrator would, start the dead node again: it rejoins as the new master's replica, so that
        # the shards have a replica again (with WAIT on, their webhooks are refused until one confirms).
        restarted = time.perf_counter()
        await asyncio.to_thread(cluster.restart, victim)
        return await _until(lambda: cluster.is_synced_replica(victim), since=restarted)

    resumed, replica_back_s = await asyncio.gather(resume_after(redis, keys, shards), replica_back())
    return {"killed_port": victim, "killed_pid": pid, "replica_port": replica, "shards": shards} | {
        "promotion_s": promoted_s,
        **resumed,
        "replica_back_s": replica_back_s,
    }


def _port_of(node: ClusterNode | None) -> int:
    if node is None:  # pragma: no cover - get_node_from_key raises for an uncovered slot
        raise ClusterDownError("a shard's slot has no node")
    return int(node.port)


async def restart_server(server: RedisServer, redis: Redis, keys: Keys) -> dict[str, Any]:
    """`kill -9` the single server and start it again on its port (it replays its AOF); time the comeback."""
    pid = server.pid
    killed = time.perf_counter()
    await asyncio.to_thread(server.kill)
    await asyncio.to_thread(server.start)
    restarted_s = time.perf_counter() - killed
    resumed = await resume_after(redis, keys, [s.index for s in keys.all_shards])
    return {"killed_pid": pid, "restart_s": restarted_s, **resumed}


async def _until(check: Callable[[], bool], *, since: float) -> float | None:
    """Seconds from `since` until `check()` (run on a thread: it calls redis-cli) holds; None past the deadline."""
    while time.perf_counter() - since < PROMOTION_DEADLINE_S:
        if await asyncio.to_thread(check):
            return time.perf_counter() - since
        await asyncio.sleep(POLL_S)
    return None


async def resume_after(redis: Redis, keys: Keys, shards: Sequence[int]) -> dict[str, float | None]:
    """Seconds from now until each counter of `shards` moves again (the worker's acks, the batcher's claims).

    The baseline is the first reading Redis answers after the fault, so an increment lost with the old master
    never reads as progress.
    """
    started = time.perf_counter()
    baseline: dict[str, int] | None = None
    resumed: dict[str, float | None] = {f"{name}_resume_s": None for name in COUNTERS}
    while time.perf_counter() - started < RESUME_DEADLINE_S:
        try:
            now = await shard_counters(redis, keys, shards)
        except RedisError:
            now = None  # the slot is still down, or the client is finding its new owner
        if now is not None and baseline is None:
            baseline = now
        elif now is not None and baseline is not None:
            for name in COUNTERS:
                key = f"{name}_resume_s"
                if resumed[key] is None and now[name] > baseline[name]:
                    resumed[key] = time.perf_counter() - started
        if all(value is not None for value in resumed.values()):
            break
        await asyncio.sleep(POLL_S)
    return resumed


async def shard_counters(redis: Redis, keys: Keys, shards: Sequence[int]) -> dict[str, int]:
    """The sum of each counter of COUNTERS over `shards` (their `stats` hashes)."""
    totals = dict.fromkeys(COUNTERS, 0)
    for index in shards:
        values = await redis.hmget(keys.shard(index).stats, list(COUNTERS))
        for name, value in zip(COUNTERS, values, strict=True):
            totals[name] += int(value or 0)
    return totals

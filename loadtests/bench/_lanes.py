"""`aiadmin bench lanes`: the webhook's script round trips on a Redis Cluster, two ways, alternated in one run.

- `packed by node`: the system's way (`system.store.scripts.ScriptBatch` on a cluster): the calls of one round
  trip packed by hand and sent to each node owning their slots, one exchange per node.
- `redis-py pipeline`: redis-py's `ClusterPipeline` with the same EVALSHA calls (it routes by slot itself).

Each round trip carries `batch` calls of one small script over keys of different shards (the appends of
concurrent webhooks land on many shards); `lanes` round trips are in flight at once, as the API's group commit
keeps them. Figures: calls per second and this process's CPU per call, median over repeats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from statistics import median
from typing import Any

from redis.asyncio import Redis

from system.store.cluster import as_cluster, connect_cluster
from system.store.keys import Keys
from system.store.scripts import Script, ScriptBatch

# One key per call in the shard's slot, like an append's keys: enough work for Redis to answer at once.
TOUCH = "redis.call('INCR', KEYS[1]) return redis.call('PEXPIRE', KEYS[1], ARGV[1])"
SHARDS = 16


@dataclass(frozen=True, slots=True)
class LanesConfig:
    cluster_url: str
    rounds: int = 2000  # round trips per lane and measurement
    batch: int = 8  # calls per round trip (the API's APPEND_PIPELINE_MAX)
    lanes: int = 4  # round trips in flight at once (the API's APPEND_LANES)
    repeats: int = 3


async def run_lanes(config: LanesConfig) -> dict[str, Any]:
    client = connect_cluster(config.cluster_url)
    try:
        script = Script(client, TOUCH)
        await script.load()
        keys = [f"{shard.stats}:bench" for shard in Keys(shards=SHARDS, cluster=True).all_shards]
        ways: dict[str, Callable[[int], Awaitable[None]]] = {
            "packed by node": lambda i: _packed(client, script, keys, i, config.batch),
            "redis-py pipeline": lambda i: _pipeline(client, script, keys, i, config.batch),
        }
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for _ in range(config.repeats):
            for name, way in ways.items():  # alternated, so that drift in the machine's speed hits both
                runs[name].append(await _measure(way, config))
        await client.delete(*keys)
    finally:
        await client.aclose()
    rate = {name: median(r for r, _ in values) for name, values in runs.items()}
    figures: dict[str, Any] = {
        name: {
            "calls_per_s": round(rate[name]),
            "cpu_us_per_call": round(median(c for _, c in values), 1),
            "runs_calls_per_s": [round(r) for r, _ in values],
        }
        for name, values in runs.items()
    }
    ratio = rate["packed by node"] / max(1.0, rate["redis-py pipeline"])
    figures["ratio_packed_to_pipeline"] = round(ratio, 2)
    figures["kept"] = "packed by node" if ratio >= 1 else "redis-py pipeline"
    return figures


async def _measure(way: Callable[[int], Awaitable[None]], config: LanesConfig) -> tuple[float, float]:
    async def lane(offset: int) -> None:
        for i in range(config.rounds):
            await way(offset + i * config.batch)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(lane(n * 7) for n in range(config.lanes)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    calls = config.rounds * config.lanes * config.batch
    return calls / wall, cpu / calls * 1e6


async def _packed(client: Redis, script: Script, keys: list[str], start: int, batch: int) -> None:
    calls = ScriptBatch(client)
    for i in range(start, start + batch):
        calls.add(script, keys=[keys[i % len(keys)]], args=[60_000])
    await calls.run()


async def _pipeline(client: Redis, script: Script, keys: list[str], start: int, batch: int) -> None:
    async with as_cluster(client).pipeline(transaction=False) as pipe:
        for i in range(start, start + batch):
            pipe.evalsha(script.sha, 1, keys[i % len(keys)], 60_000)
        await pipe.execute()


def render_lanes(figures: dict[str, Any]) -> list[str]:
    lines = ["Script round trips on a Redis Cluster (median of repeats, alternated):"]
    for name in ("packed by node", "redis-py pipeline"):
        f = figures[name]
        lines.append(
            f"  {name:<18} {f['calls_per_s']:>8,} calls/s   {f['cpu_us_per_call']:>6} µs CPU per call   "
            f"(runs {', '.join(f'{r:,}' for r in f['runs_calls_per_s'])})"
        )
    lines.append(f"  packed / pipeline: {figures['ratio_packed_to_pipeline']}x — kept: {figures['kept']}")
    return lines

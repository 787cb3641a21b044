"""The wrk section of `aiadmin bench ingest`: its sides (the API, an API on a Redis Cluster, the empty endpoint)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.cluster import RedisCluster

from loadtests._processes import LOCALHOST, Process, spawned, wait_http_ready
from loadtests.bench._empty_app import EMPTY_ROUTE
from loadtests.bench._env import BenchError, process_env
from loadtests.bench._wrk import Side, wrk_comparison
from simulator.redis_server import free_port
from simulator.redis_target import TargetRefused, TargetUnreachable, check_target, claim, is_loopback, mark
from system.ingest.routes import GATEWAY_ROUTE
from system.store.cluster import as_cluster, connect_cluster

Flush = Callable[[], Awaitable[None]]


async def wrk_section(
    api: Process,
    empty: Process,
    *,
    flush: Flush,
    redis_pid: int | None,
    cluster_url: str | None,
    repeats: int,
    connections: int,
    duration_s: int,
    tag: str,
    log_dir: Path,
) -> dict[str, Any]:
    """API and empty endpoint alternated under wrk (`loadtests.bench._wrk`), Redis flushed before each run.

    With `cluster_url`, an API on that Redis Cluster runs between them, so that the single-server and the
    cluster figures come from the same minutes of the same machine.
    """
    sides = [Side("api_", api, GATEWAY_ROUTE, flush, redis_pid)]
    async with contextlib.AsyncExitStack() as stack:
        if cluster_url:
            on_cluster, flush_cluster = await stack.enter_async_context(cluster_api(cluster_url, log_dir=log_dir))
            sides.append(Side("cluster_", on_cluster, GATEWAY_ROUTE, flush_cluster))
        sides.append(Side("empty_", empty, EMPTY_ROUTE, flush, redis_pid))  # its Redis figures: a control
        return await wrk_comparison(sides, repeats=repeats, connections=connections, duration_s=duration_s, tag=tag)


def wrk_brief(by_wrk: dict[str, Any]) -> str:
    if "skipped" in by_wrk:
        return str(by_wrk["skipped"])
    m = by_wrk["median"]
    cluster = f", on a cluster {m['cluster_rps']:,.0f} req/s" if "cluster_rps" in m else ""
    return f"{m['api_rps']:,.0f} req/s{cluster}, empty {m['empty_rps']:,.0f} req/s, ratio {m['ratio']:.2f}"


def check_cluster_url(url: str, *, force: bool) -> None:
    """The cluster is flushed before each of its runs: only a loopback one, unless forced."""
    host = urlsplit(url).hostname or ""
    if not (is_loopback(host) or force):
        raise BenchError(f"--cluster-url {url} is not a loopback address; it would be FLUSHED (--force)")


@contextlib.asynccontextmanager
async def cluster_api(url: str, *, log_dir: Path) -> AsyncIterator[tuple[Process, Flush]]:
    """`aiadmin api` on the cluster at `url`, and a function that empties every primary of the cluster."""
    port = free_port()
    args = [sys.executable, "-m", "system", "api", "--host", LOCALHOST, "--port", str(port)]
    redis = connect_cluster(url)
    client = as_cluster(redis)
    target = check_target(url, owner="aiadmin bench ingest", force=True, cluster=True)

    async def flush() -> None:
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
        await mark(redis, target)  # the next run knows the cluster for ours

    try:
        # Claimed like every database a bench flushes: only when empty or marked by a tool of ours.
        try:
            await claim(redis, target, flush=False)
        except (TargetRefused, TargetUnreachable) as exc:
            raise BenchError(str(exc)) from exc
        env = process_env(url, redis_cluster="true")
        with spawned("api-cluster", args, env=env, log_dir=log_dir, port=port) as proc:
            await wait_http_ready(proc)
            yield proc, flush
        await flush()
    finally:
        await client.aclose()

"""The sections of `aiadmin bench ingest`: accept latency, throughput (own load generator and wrk), append,
flush lateness, claim.

The API, the empty endpoint and the batcher run as separate processes, as in production; the load
generator shares the machine with them and Redis. Every section flushes the benchmark database before
and after it.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from rich.console import Console

from loadtests._processes import LOCALHOST, CpuWindow, Process, rss_mb, spawned, wait_http_ready
from loadtests.bench._empty_app import EMPTY_ROUTE
from loadtests.bench._env import BenchError, now_ms, process_env, redis_client, settings_env, wait_batcher_ready
from loadtests.bench._figures import brief, section, spread
from loadtests.bench._loadgen import GatewayRequests, Tally, Target, closed_loop, merged, open_loop, sleep_until
from loadtests.bench._wrk_section import wrk_brief, wrk_section
from simulator.redis_server import free_port
from system.clock import WallClock
from system.ingest.batch_processor import CLAIM_CHUNK
from system.ingest.batch_store import AppendOutcome, BatchConfig, BatchStore
from system.ingest.routes import GATEWAY_ROUTE
from system.models import InboundMessage, Job
from system.settings import Settings, load_settings
from system.stats import StatsReader
from system.store.keys import WORKER_GROUP, Keys, ShardKeys
from system.store.queue import JobQueue, QueueConfig

PHONES = 10_000
# The reference's own batch timeout, so the delay from the last fragment is measured, not derived;
# --quick uses a shorter one.
LATENESS_TIMEOUT_MS = 9000
QUICK_LATENESS_TIMEOUT_MS = 2000
# Encoded requests per second of a closed-loop phase: far above what two shared cores can serve.
CLOSED_LOOP_CAP_PER_S = 20_000
THROUGHPUT_SLICES = 10  # closed-loop slices per server and repeat, interleaved with the other server's
WRK_DURATION_S = 6  # one wrk run, whole seconds (the issue measured 6-8 s); --quick: 1 s
CONSUMER_BLOCK_MS = 100
DUPLICATE_GRACE_S = 0.3  # reading on after the last expected job, to catch a late duplicate
PREPARE_CHUNK = 500
TEXT = "Хочу записаться на стрижку"


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Sizes of every phase, fixed once from the command line."""

    redis_url: str
    repeats: int
    duration_s: float
    rate_per_s: int
    connections: int
    open_batches: int
    spread_s: float
    appends: int
    claims: int
    warmup_requests: int
    warmup_s: float
    lateness_timeout_ms: int
    wrk_duration_s: int
    quick: bool
    cluster_url: str | None = None  # a Redis Cluster node: the wrk section runs an API on it as well

    @classmethod
    def build(
        cls,
        *,
        redis_url: str,
        repeats: int,
        duration_s: float,
        rate_per_s: int,
        connections: int,
        quick: bool,
        cluster_url: str | None = None,
    ) -> BenchConfig:
        return cls(
            redis_url=redis_url,
            repeats=1 if quick else repeats,
            duration_s=1.0 if quick else duration_s,
            rate_per_s=rate_per_s,
            connections=connections,
            open_batches=200 if quick else 1000,
            spread_s=2.0,
            appends=500 if quick else 5000,
            claims=200 if quick else 1000,
            warmup_requests=1000 if quick else PHONES,  # every sender once: the phone parse cache is warm
            warmup_s=1.0 if quick else 10.0,
            lateness_timeout_ms=QUICK_LATENESS_TIMEOUT_MS if quick else LATENESS_TIMEOUT_MS,
            wrk_duration_s=1 if quick else WRK_DURATION_S,
            quick=quick,
            cluster_url=cluster_url,
        )


def http_figures(tally: Tally, prefix: str) -> dict[str, Any]:
    return {
        **spread(tally.latencies_s, f"{prefix}latency_ms", scale=1000),
        f"{prefix}sent": tally.sent,
        f"{prefix}completed": tally.completed,
        f"{prefix}non_2xx": tally.non_2xx,
        f"{prefix}errors": tally.errors,
        f"{prefix}rps": tally.rate_per_s,
        f"{prefix}connections": tally.max_connections,
        f"{prefix}requests_exhausted": int(tally.exhausted),
    }


@dataclass
class Bench:
    """What every section shares: the configuration, a Redis client and the senders."""

    cfg: BenchConfig
    settings: Settings
    redis: Redis
    keys: Keys
    phones: list[str]
    requests: GatewayRequests
    console: Console
    log_dir: Path
    redis_pid: int | None

    async def flush(self) -> None:
        await self.redis.flushdb()

    def store(self, settings: Settings | None = None) -> BatchStore:
        """A batch store built as `system.runtime` builds it."""
        return BatchStore(self.redis, keys=self.keys, config=BatchConfig.from_settings(settings or self.settings))

    def message(self, index: int, *, tag: str, received_ms: int) -> InboundMessage:
        return InboundMessage(
            company_id=self.settings.default_company_id,
            phone=self.phones[index % len(self.phones)],
            message_id=f"{tag}-{index}",
            text=TEXT,
            received_ms=received_ms,
        )


# --- sections 1 and 2: the HTTP API ---------------------------------------------------------------------


async def http_sections(b: Bench) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Accept latency (open loop), and throughput beside the empty endpoint (closed loops, then wrk)."""
    api_port, empty_port = free_port(), free_port()
    api_args = [sys.executable, "-m", "system", "api", "--host", LOCALHOST, "--port", str(api_port)]
    empty_args = [sys.executable, "-m", "loadtests.bench._empty_app", "--host", LOCALHOST, "--port", str(empty_port)]
    env = process_env(b.cfg.redis_url)
    await b.flush()
    with (
        spawned("api", api_args, env=env, log_dir=b.log_dir, port=api_port) as api,
        spawned("empty", empty_args, env=env, log_dir=b.log_dir, port=empty_port) as empty,
    ):
        await wait_http_ready(api)
        await wait_http_ready(empty)
        idle_rss_mb = {"api_idle_rss_mb": rss_mb(api.pid), "empty_idle_rss_mb": rss_mb(empty.pid)}
        await warm_up(b, api, empty)
        latency = await accept_latency(b, api)
        b.console.print(f"[1/6] accept latency: {brief(latency['median'], 'latency_ms')}")
        throughput = await max_throughput(b, api, empty) | idle_rss_mb
        m = throughput["median"]
        b.console.print(f"[2/6] throughput: {m['api_rps']:,.0f} req/s, empty {m['empty_rps']:,.0f} req/s")
        by_wrk = await wrk_section(
            api,
            empty,
            flush=b.flush,
            redis_pid=b.redis_pid,
            cluster_url=b.cfg.cluster_url,
            repeats=b.cfg.repeats,
            connections=b.cfg.connections,
            duration_s=b.cfg.wrk_duration_s,
            tag=b.requests.tag,
            log_dir=b.log_dir,
        )
        await b.flush()
        b.console.print(f"[3/6] wrk: {wrk_brief(by_wrk)}")
        api.check_alive()
        empty.check_alive()
    await b.flush()
    return latency, throughput, by_wrk


async def warm_up(b: Bench, api: Process, empty: Process) -> None:
    """One request per sender (the API caches parsed phones), then a short run on the empty endpoint."""
    for proc, path, count in ((api, GATEWAY_ROUTE, b.cfg.warmup_requests), (empty, EMPTY_ROUTE, 2000)):
        target = Target(LOCALHOST, proc.port, path)
        await closed_loop(
            target, b.requests.take(target, count), connections=b.cfg.connections, duration_s=b.cfg.warmup_s
        )
    await b.flush()


async def accept_latency(b: Bench, api: Process) -> dict[str, Any]:
    target = Target(LOCALHOST, api.port, GATEWAY_ROUTE)
    runs: list[dict[str, Any]] = []
    for _ in range(b.cfg.repeats):
        await b.flush()
        requests = b.requests.take(target, round(b.cfg.rate_per_s * b.cfg.duration_s))
        with CpuWindow({"api": api.pid, "redis": b.redis_pid}) as cpu:
            tally = await open_loop(target, requests, rate_per_s=b.cfg.rate_per_s)
        runs.append(
            http_figures(tally, "")
            | spread(tally.send_lag_s, "send_lag_ms", scale=1000)
            | spread(tally.service_s, "service_ms", scale=1000)
            | cpu.figures("")
        )
    await b.flush()
    return section(runs, rate_per_s=b.cfg.rate_per_s, duration_s=b.cfg.duration_s)


async def max_throughput(b: Bench, api: Process, empty: Process) -> dict[str, Any]:
    """Closed loops on the API and on the empty endpoint, interleaved in short slices.

    A shared machine's speed drifts by tens of percent within seconds; slices in the order ABBA… give
    both servers the same mix of fast and slow moments, so their ratio measures the servers.
    """
    targets = {"api_": (api, GATEWAY_ROUTE), "empty_": (empty, EMPTY_ROUTE)}
    order = [("api_", "empty_"), ("empty_", "api_")] * (THROUGHPUT_SLICES // 2)
    slice_s = b.cfg.duration_s / len(order)
    runs: list[dict[str, Any]] = []
    for _ in range(b.cfg.repeats):
        tallies: dict[str, list[Tally]] = {prefix: [] for prefix in targets}
        cpu_s: dict[str, Counter[str]] = {prefix: Counter() for prefix in targets}
        for turn in order:
            for prefix in turn:
                proc, path = targets[prefix]
                await b.flush()
                target = Target(LOCALHOST, proc.port, path)
                requests = b.requests.take(target, round(CLOSED_LOOP_CAP_PER_S * slice_s))
                with CpuWindow({"server": proc.pid, "redis": b.redis_pid}) as cpu:
                    tally = await closed_loop(target, requests, connections=b.cfg.connections, duration_s=slice_s)
                del requests
                tallies[prefix].append(tally)
                cpu_s[prefix].update({name: pct * tally.elapsed_s for name, pct in cpu.pct.items()})
        run: dict[str, Any] = {}
        for prefix in targets:
            tally = merged(tallies[prefix])
            pct = {name: total / tally.elapsed_s for name, total in cpu_s[prefix].items()} if tally.elapsed_s else {}
            per_request_us = 1e4 * pct["server"] / tally.rate_per_s if tally.rate_per_s else None
            run |= http_figures(tally, prefix) | {f"{prefix}{name}_cpu_pct": v for name, v in pct.items()}
            run[f"{prefix}cpu_us_per_request"] = per_request_us
        run["ratio_pct"] = 100 * run["api_rps"] / run["empty_rps"] if run["empty_rps"] else None
        runs.append(run)
    await b.flush()
    return section(
        runs,
        connections=b.cfg.connections,
        duration_s=b.cfg.duration_s,
        slices=len(order),
        api_rss_mb=rss_mb(api.pid),
        empty_rss_mb=rss_mb(empty.pid),
    )


# --- section 4: one append ------------------------------------------------------------------------------


async def append_cost(b: Bench) -> dict[str, Any]:
    """Sequential BatchStore.append calls, each one round trip to Redis."""
    store = b.store()
    runs: list[dict[str, Any]] = []
    for repeat in range(b.cfg.repeats):
        await b.flush()
        received_ms = now_ms()
        messages = [b.message(i, tag=f"append{repeat}", received_ms=received_ms) for i in range(b.cfg.appends)]
        samples: list[float] = []
        errors = 0
        for message in messages:
            started = time.perf_counter()
            outcome = await store.append(message, now_ms=now_ms())
            samples.append(time.perf_counter() - started)
            errors += outcome is not AppendOutcome.ACCEPTED
        runs.append({**spread(samples, "append_us", scale=1e6), "appends": len(samples), "errors": errors})
    await b.flush()
    return section(runs)


# --- section 5: flush lateness with many open batches ---------------------------------------------------


async def flush_lateness(b: Bench) -> dict[str, Any]:
    """Open batches spread over a few seconds; a batcher process flushes them; we read the queue."""
    timeout_ms = str(b.cfg.lateness_timeout_ms)
    settings = load_settings(settings_env(b.cfg.redis_url, batch_timeout_ms=timeout_ms))
    args = [sys.executable, "-m", "system", "batcher"]
    env = process_env(b.cfg.redis_url, batch_timeout_ms=timeout_ms)
    await b.flush()
    runs: list[dict[str, Any]] = []
    async with redis_client(settings) as consumer_redis:
        with spawned("batcher", args, env=env, log_dir=b.log_dir) as batcher:
            await wait_batcher_ready(b.redis, b.keys, batcher)
            batcher_idle_rss_mb = rss_mb(batcher.pid)
            for repeat in range(b.cfg.repeats):
                runs.append(await lateness_run(b, settings, consumer_redis, tag=f"late{repeat}"))
                batcher.check_alive()
            batcher_rss_mb = rss_mb(batcher.pid)
    await b.flush()
    return section(
        runs,
        open_batches=b.cfg.open_batches,
        timeout_ms=b.cfg.lateness_timeout_ms,
        batcher_rss_mb=batcher_rss_mb,
        batcher_idle_rss_mb=batcher_idle_rss_mb,
    )


async def lateness_run(b: Bench, settings: Settings, consumer_redis: Redis, *, tag: str) -> dict[str, Any]:
    await b.flush()
    queue = JobQueue(b.redis, keys=b.keys, config=QueueConfig.from_settings(settings), rng=random.Random(0))
    await queue.ensure_groups()
    phones = b.phones[: b.cfg.open_batches]
    timeout_ms = b.cfg.lateness_timeout_ms
    wait_s = b.cfg.spread_s + timeout_ms / 1000 + 10
    consumer = asyncio.create_task(consume(consumer_redis, b.keys, expected=len(phones), timeout_s=wait_s))
    try:
        errors = await paced_appends(b, b.store(settings), tag=tag)
        jobs = await consumer
    finally:
        consumer.cancel()
    delays = [visible_ms - job.last_received_ms for visible_ms, job in jobs]
    stats = StatsReader(b.redis, keys=b.keys, queue=queue, clock=WallClock())
    recorded = (await stats.collect())["flush_lateness_ms"]
    return {
        **spread([d - timeout_ms for d in delays], "observed_ms", scale=1),
        **spread(delays, "delay_ms", scale=1),
        "recorded_ms_p50": recorded["p50"],
        "recorded_ms_p99": recorded["p99"],
        "recorded_ms_max": recorded["max"],
        "recorded_samples": recorded["samples"],
        **delivery_check(phones, [job for _, job in jobs]),
        "append_errors": errors,
    }


async def paced_appends(b: Bench, store: BatchStore, *, tag: str) -> int:
    """One fragment per conversation, sent uniformly over the spread; returns the appends not accepted."""
    interval_s = b.cfg.spread_s / b.cfg.open_batches
    start_s = time.perf_counter()
    errors = 0
    for i in range(b.cfg.open_batches):
        await sleep_until(start_s + i * interval_s)
        received_ms = now_ms()
        outcome = await store.append(b.message(i, tag=tag, received_ms=received_ms), now_ms=received_ms)
        errors += outcome is not AppendOutcome.ACCEPTED
    return errors


async def consume(redis: Redis, keys: Keys, *, expected: int, timeout_s: float) -> list[tuple[float, Job]]:
    """(wall-clock ms when the job became visible, job) for each job, as a worker would read them."""
    streams: dict[Any, Any] = {shard.queue: ">" for shard in keys.all_shards}
    jobs: list[tuple[float, Job]] = []
    deadline_s = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline_s:
        rows: Any = await redis.xreadgroup(WORKER_GROUP, "bench", streams, count=1000, block=CONSUMER_BLOCK_MS)
        visible_ms = time.time_ns() / 1e6
        for _, entries in rows or []:
            jobs.extend((visible_ms, Job.from_json(fields[b"job"])) for _, fields in entries)
        if len(jobs) >= expected:
            deadline_s = min(deadline_s, time.perf_counter() + DUPLICATE_GRACE_S)
    return jobs


def delivery_check(phones: Sequence[str], jobs: Sequence[Job]) -> dict[str, int]:
    """Every conversation's batch must reach the queue exactly once, with its one fragment."""
    counts = Counter(job.phone for job in jobs)
    expected = set(phones)
    return {
        "jobs": len(jobs),
        "missing": sum(1 for phone in expected if phone not in counts),
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "unexpected": sum(n for phone, n in counts.items() if phone not in expected),
        "wrong_fragments": sum(1 for job in jobs if len(job.messages) != 1),
    }


# --- section 6: claim and enqueue -----------------------------------------------------------------------


async def claim_cost(b: Bench) -> dict[str, Any]:
    """BatchStore.claim over due conversations: in chunks as the batcher does, then one at a time."""
    store = b.store()
    runs: list[dict[str, Any]] = []
    for repeat in range(b.cfg.repeats):
        chunked_s, chunked_errors = await _claim_chunked(b, store, tag=f"chunk{repeat}")
        singles, single_errors = await _claim_singly(b, store, tag=f"single{repeat}")
        runs.append(
            {
                "chunked_per_batch_us": 1e6 * chunked_s / b.cfg.claims,
                **spread(singles, "single_us", scale=1e6),
                "claims": b.cfg.claims,
                "errors": chunked_errors + single_errors,
            }
        )
    await b.flush()
    return section(runs, chunk=CLAIM_CHUNK)


async def _prepare_due(b: Bench, store: BatchStore, *, tag: str) -> list[tuple[ShardKeys, str]]:
    """`claims` conversations with one fragment each, appended an hour ago so they are all due now."""
    await b.flush()
    past_ms = now_ms() - 3_600_000
    messages = [b.message(i, tag=tag, received_ms=past_ms) for i in range(b.cfg.claims)]
    for at in range(0, len(messages), PREPARE_CHUNK):
        await store.append_many(messages[at : at + PREPARE_CHUNK], now_ms=past_ms)
    due: list[tuple[ShardKeys, str]] = []
    for shard in b.keys.all_shards:
        due.extend((shard, member) for member in await store.due(shard, now_ms=now_ms(), limit=b.cfg.claims))
    if len(due) != b.cfg.claims:
        raise BenchError(f"prepared {b.cfg.claims} due conversations, found {len(due)}")
    return due


async def _claim_chunked(b: Bench, store: BatchStore, *, tag: str) -> tuple[float, int]:
    due = await _prepare_due(b, store, tag=tag)
    elapsed_s = 0.0
    enqueued = 0
    for shard in b.keys.all_shards:
        members = [member for s, member in due if s is shard]
        for at in range(0, len(members), CLAIM_CHUNK):
            started = time.perf_counter()
            results = await store.claim(shard, members[at : at + CLAIM_CHUNK], now_ms=now_ms())
            elapsed_s += time.perf_counter() - started
            enqueued += sum(1 for r in results if r.status == 1)
    return elapsed_s, len(due) - enqueued


async def _claim_singly(b: Bench, store: BatchStore, *, tag: str) -> tuple[list[float], int]:
    due = await _prepare_due(b, store, tag=tag)
    samples: list[float] = []
    enqueued = 0
    for shard, member in due:
        started = time.perf_counter()
        results = await store.claim(shard, [member], now_ms=now_ms())
        samples.append(time.perf_counter() - started)
        enqueued += results[0].status == 1
    return samples, len(due) - enqueued

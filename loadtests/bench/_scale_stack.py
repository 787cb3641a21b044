"""The processes of the scale benchmark on one Redis (a cluster or a single server): N APIs, batchers and workers.

Each is `python -m system …` as in production (`loadtests._processes`), pointed at the stand-ins of
`loadtests.bench._standins` (an LLM with a set latency, YClients, WhatsApp). The batchers log at DEBUG, so
that their logs name every batch each one flushed (`batch_flushed`): the proof that no batch was flushed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from loadtests._processes import LOCALHOST, Process, spawn, stop, wait_http_ready
from loadtests.bench._env import BenchError, process_env, settings_env, wait_batcher_ready
from loadtests.bench._worker_cases import worker_env
from simulator.redis_server import free_port
from system.runtime import connect_redis
from system.settings import Settings, load_settings
from system.store.keys import Keys

APP_SECRET = "scale-bench-app-secret"  # the APIs check Meta's signature with it; no real secret
POLL_S = 0.05


@dataclass
class Stack:
    """The processes on one Redis, the benchmark's own client and keys, and the stand-ins they talk to."""

    name: str
    settings: Settings
    redis: Redis
    keys: Keys
    standins: Process
    log_dir: Path
    extra: dict[str, str]
    concurrency: int
    apis: list[Process] = field(default_factory=list)
    batchers: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.settings.redis_url)

    @property
    def api_ports(self) -> list[int]:
        return [api.port for api in self.apis]

    def start_workers(self, count: int) -> None:
        env = worker_env(self.url, self.standins) | process_env(self.url, **self.extra)
        args = [sys.executable, "-m", "system", "worker", "--concurrency", str(self.concurrency)]
        for _ in range(count):
            name = f"{self.name}-worker-{len(self.workers) + 1}"
            self.workers.append(spawn(name, args, env=env, log_dir=self.log_dir))

    def stop_workers(self) -> None:
        """SIGTERM: each finishes its turns in flight first."""
        for worker in self.workers:
            stop(worker)
        self.workers.clear()

    def batcher_logs(self) -> dict[str, Path]:
        return {proc.name: proc.log_path for proc in self.batchers}

    def check_alive(self) -> None:
        for proc in (*self.apis, *self.batchers, *self.workers):
            proc.check_alive()

    async def queued(self) -> int:
        """Jobs in the shards' queues (acked jobs are deleted)."""
        return sum([int(await self.redis.xlen(s.queue)) for s in self.keys.all_shards])

    async def open_batches(self) -> int:
        return sum([int(await self.redis.zcard(s.due)) for s in self.keys.all_shards])

    async def dead_letters(self) -> int:
        return sum([int(await self.redis.xlen(s.dlq)) for s in self.keys.all_shards])

    async def wait_queued(self, count: int, *, timeout_s: float) -> None:
        """Until `count` jobs wait in the queues (the batchers have flushed every batch); bounded."""
        deadline = time.perf_counter() + timeout_s
        while (queued := await self.queued()) < count:
            self.check_alive()
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name}: {queued} of {count} jobs queued after {timeout_s:.0f} s")
            await asyncio.sleep(POLL_S)


@contextlib.asynccontextmanager
async def running_stack(
    name: str,
    redis_url: str,
    *,
    standins: Process,
    log_dir: Path,
    apis: int,
    batchers: int,
    concurrency: int,
    settings: dict[str, str],
) -> AsyncIterator[Stack]:
    """`apis` APIs and `batchers` batchers on `redis_url`, ready; workers are started by the caller."""
    extra = {"whatsapp_app_secret": APP_SECRET, **settings}
    parsed = load_settings(settings_env(redis_url, **extra))
    keys = Keys(prefix=parsed.redis_prefix, shards=parsed.redis_shards, cluster=parsed.redis_cluster)
    redis = connect_redis(parsed)
    stack = Stack(name, parsed, redis, keys, standins, log_dir, extra, concurrency)
    try:
        batcher_env = process_env(redis_url, **extra, log_level="DEBUG")
        for i in range(batchers):
            args = [sys.executable, "-m", "system", "batcher"]
            stack.batchers.append(spawn(f"{name}-batcher-{i + 1}", args, env=batcher_env, log_dir=log_dir))
        for batcher in stack.batchers:
            await wait_batcher_ready(redis, keys, batcher)
        for i in range(apis):
            port = free_port()
            args = [sys.executable, "-m", "system", "api", "--host", LOCALHOST, "--port", str(port)]
            env = process_env(redis_url, **extra)
            stack.apis.append(spawn(f"{name}-api-{i + 1}", args, env=env, log_dir=log_dir, port=port))
        for api in stack.apis:
            await wait_http_ready(api)
        yield stack
    finally:
        stack.stop_workers()
        for proc in (*stack.apis, *stack.batchers):
            stop(proc)
        await redis.aclose()


def flushed_by_batcher(logs: Mapping[str, Path], *, tag: str) -> dict[str, Any]:
    """Batch ids of this run each batcher logged as flushed (`logs`: name → its log file): counts per batcher,
    and ids flushed more than once, by one batcher or by two."""
    seen: Counter[str] = Counter()
    per: dict[str, int] = {}
    needle = f"wamid.scale-{tag}-"
    for name, path in logs.items():
        count = 0
        for line in path.read_bytes().splitlines():
            if b"batch_flushed" not in line:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                batch_id = str(orjson.loads(line).get("batch_id", ""))
                if needle in batch_id:
                    seen[batch_id] += 1
                    count += 1
        per[name] = count
    return {
        "per_batcher": per,
        "batches": len(seen),
        "flushed_twice": sum(n - 1 for n in seen.values() if n > 1),
    }

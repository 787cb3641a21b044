"""`aiadmin bench ingest`: the ingest path (webhook → batch → queue) measured on a real Redis.

The API, the empty endpoint and the batcher run as separate processes, as in production; the load
generator shares the machine with them and Redis. Every section flushes the benchmark database before
and after it. Figures go to a table beside the reference report's figures and the goals, and to JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import uvloop
from redis.asyncio import Redis
from redis.connection import parse_url
from rich.console import Console
from rich.table import Table

from reports.empty_app import EMPTY_ROUTE
from reports.loadgen import GatewayRequests, Tally, Target, closed_loop, open_loop, russian_mobiles, sleep_until
from system.api import GATEWAY_ROUTE
from system.batcher import CLAIM_CHUNK
from system.batching import AppendOutcome, BatchConfig, BatchStore
from system.clock import WallClock
from system.keys import WORKER_GROUP, Keys, ShardKeys
from system.models import InboundMessage, Job
from system.queue import JobQueue, QueueConfig
from system.runtime import connect_redis
from system.settings import ENV_PREFIX, Settings, load_settings
from system.stats import StatsReader, percentile

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Benchmarks on a real Redis.")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
DEFAULT_OUT = Path("out/bench-ingest.json")
LOCALHOST = "127.0.0.1"
LOCAL_REDIS_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
KEY_PREFIX = "bench"
PHONES = 10_000
LATENESS_TIMEOUT_MS = 2000
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
# Encoded requests per second of a closed-loop phase: far above what two shared cores can serve.
CLOSED_LOOP_CAP_PER_S = 20_000
CONSUMER_BLOCK_MS = 100
DUPLICATE_GRACE_S = 0.3  # reading on after the last expected job, to catch a late duplicate
PREPARE_CHUNK = 500
TEXT = "Хочу записаться на стрижку"


class BenchError(Exception):
    """The benchmark cannot run or a process under test misbehaved; the message says which."""


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
    quick: bool

    @classmethod
    def build(
        cls, *, redis_url: str, repeats: int, duration_s: float, rate_per_s: int, connections: int, quick: bool
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
            quick=quick,
        )


def check_redis_url(url: str, *, force: bool) -> int:
    """The database number of `url`; refuses db 0 and remote servers, which the benchmark would flush."""
    try:
        parts = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise BenchError(f"--redis-url {url!r}: {exc}") from exc
    db = int(parts.get("db", 0) or 0)
    host = str(parts.get("host", LOCALHOST))
    if not force and db == 0:
        raise BenchError("the benchmark flushes its database: refusing db 0 without --force (default db 14)")
    if not force and "path" not in parts and host not in LOCAL_REDIS_HOSTS:
        raise BenchError(f"the benchmark flushes its database: refusing remote host {host!r} without --force")
    return db


def settings_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The settings of every component under test: rate limits out of the way, quiet logs."""
    env = {
        "REDIS_URL": redis_url,
        "AIADMIN_REDIS_PREFIX": KEY_PREFIX,
        "AIADMIN_RATE_LIMIT_GLOBAL_PER_S": "0",
        "AIADMIN_RATE_LIMIT_SENDER_BURST": "1000000",
        "AIADMIN_RATE_LIMIT_SENDER_PER_MIN": "1000000",
        "AIADMIN_LOG_LEVEL": "WARNING",
    }
    return env | {f"{ENV_PREFIX}{k.upper()}": v for k, v in extra.items()}


def process_env(redis_url: str, **extra: str) -> dict[str, str]:
    # Inherited AIADMIN_* variables would make the figures depend on the caller's shell.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return inherited | settings_env(redis_url, **extra)


# --- processes under test ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Process:
    """A process under test, its log file and (for servers) its port."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def spawned(name: str, args: list[str], *, env: dict[str, str], log_dir: Path, port: int = 0) -> Iterator[Process]:
    """Start a process; it is stopped (SIGTERM, then SIGKILL) however the block ends."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Process(name=name, popen=popen, log_path=log_path, port=port)
    finally:
        stop(popen)


def stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(STOP_TIMEOUT_S)


def rss_mb(pid: int) -> float:
    """Resident memory in MiB, from /proc (psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """CPU use of named processes and of the benchmark itself over a block, in % of one core."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.pct: dict[str, float] = {}

    def __enter__(self) -> CpuWindow:
        self._start = time.perf_counter()
        self._own = time.process_time()
        self._cpu = {name: cpu_s(pid) for name, pid in self._pids.items()}
        return self

    def __exit__(self, *_: object) -> None:
        wall_s = max(time.perf_counter() - self._start, 1e-9)
        self.pct = {name: 100 * (cpu_s(pid) - self._cpu[name]) / wall_s for name, pid in self._pids.items()}
        self.pct["bench"] = 100 * (time.process_time() - self._own) / wall_s

    def figures(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}{name}_cpu_pct": pct for name, pct in self.pct.items()}


def local_redis_pid(info: dict[str, Any]) -> int | None:
    """The Redis server's pid when it runs on this machine, so its CPU use can be read too."""
    pid = info.get("process_id")
    with contextlib.suppress(OSError, ValueError, TypeError):
        if Path(f"/proc/{int(pid)}/comm").read_text().startswith("redis"):  # type: ignore[arg-type]
            return int(pid)  # type: ignore[arg-type]
    return None


async def wait_http_ready(proc: Process, *, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll GET /health until the server answers with any HTTP status (bounded)."""
    request = f"GET /health HTTP/1.1\r\nHost: {LOCALHOST}\r\nConnection: close\r\n\r\n".encode()
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        _check_alive(proc)
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, proc.port), 1.0)
            try:
                writer.write(request)
                if (await asyncio.wait_for(reader.readuntil(b"\r\n"), 1.0)).startswith(b"HTTP/1.1 "):
                    return
            finally:
                writer.close()
        await asyncio.sleep(0.1)
    raise BenchError(f"{proc.name} did not answer within {timeout_s:.0f} s:\n{proc.log_tail()}")


async def wait_batcher_ready(redis: Redis, keys: Keys, proc: Process, *, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll the batchers' heartbeat set: a batcher beats after it has subscribed to its wake-ups."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        _check_alive(proc)
        if await redis.zcard(keys.batchers):
            return
        await asyncio.sleep(0.1)
    raise BenchError(f"{proc.name} sent no heartbeat within {timeout_s:.0f} s:\n{proc.log_tail()}")


def _check_alive(proc: Process) -> None:
    code = proc.popen.poll()
    if code is not None:
        raise BenchError(f"{proc.name} exited with code {code}:\n{proc.log_tail()}")


# --- figures ------------------------------------------------------------------------------------------------


def spread(samples: Sequence[float], name: str, *, scale: float) -> dict[str, float | None]:
    """p50, p99 and max of `samples` times `scale`, under keys named after the figure."""

    def at(q: float) -> float | None:
        value = percentile(samples, q)
        return None if value is None else value * scale

    return {f"{name}_p50": at(50), f"{name}_p99": at(99), f"{name}_max": at(100)}


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


def section(runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Every run's figures and their median over the runs."""
    median: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
        median[key] = statistics.median(values) if values else None
    return {"median": median, "runs": runs, **extra}


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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- sections 1 and 2: the HTTP API ---------------------------------------------------------------------


async def http_sections(b: Bench) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accept latency (open loop) and throughput beside the empty endpoint (closed loop)."""
    api_port, empty_port = free_port(), free_port()
    api_args = [sys.executable, "-m", "system", "api", "--host", LOCALHOST, "--port", str(api_port)]
    empty_args = [sys.executable, "-m", "reports.empty_app", "--host", LOCALHOST, "--port", str(empty_port)]
    env = process_env(b.cfg.redis_url)
    await b.flush()
    with (
        spawned("api", api_args, env=env, log_dir=b.log_dir, port=api_port) as api,
        spawned("empty", empty_args, env=env, log_dir=b.log_dir, port=empty_port) as empty,
    ):
        await wait_http_ready(api)
        await wait_http_ready(empty)
        await warm_up(b, api, empty)
        latency = await accept_latency(b, api)
        b.console.print(f"[1/5] accept latency: {_brief(latency['median'], 'latency_ms')}")
        throughput = await max_throughput(b, api, empty)
        m = throughput["median"]
        b.console.print(f"[2/5] throughput: {m['api_rps']:,.0f} req/s, empty {m['empty_rps']:,.0f} req/s")
        _check_alive(api)
        _check_alive(empty)
    await b.flush()
    return latency, throughput


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
    runs: list[dict[str, Any]] = []
    for _ in range(b.cfg.repeats):
        run: dict[str, Any] = {}
        for proc, path, prefix in ((api, GATEWAY_ROUTE, "api_"), (empty, EMPTY_ROUTE, "empty_")):
            await b.flush()
            target = Target(LOCALHOST, proc.port, path)
            requests = b.requests.take(target, round(CLOSED_LOOP_CAP_PER_S * b.cfg.duration_s))
            with CpuWindow({"server": proc.pid, "redis": b.redis_pid}) as cpu:
                tally = await closed_loop(target, requests, connections=b.cfg.connections, duration_s=b.cfg.duration_s)
            del requests
            per_request_us = 1e4 * cpu.pct["server"] / tally.rate_per_s if tally.rate_per_s else None
            run |= http_figures(tally, prefix) | cpu.figures(prefix) | {f"{prefix}cpu_us_per_request": per_request_us}
        run["ratio_pct"] = 100 * run["api_rps"] / run["empty_rps"] if run["empty_rps"] else None
        runs.append(run)
    await b.flush()
    return section(
        runs,
        connections=b.cfg.connections,
        duration_s=b.cfg.duration_s,
        api_rss_mb=rss_mb(api.pid),
        empty_rss_mb=rss_mb(empty.pid),
    )


# --- section 3: one append ------------------------------------------------------------------------------


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


# --- section 4: flush lateness with many open batches ---------------------------------------------------


async def flush_lateness(b: Bench) -> dict[str, Any]:
    """Open batches spread over a few seconds; a batcher process flushes them; we read the queue."""
    settings = load_settings(settings_env(b.cfg.redis_url, batch_timeout_ms=str(LATENESS_TIMEOUT_MS)))
    args = [sys.executable, "-m", "system", "batcher"]
    env = process_env(b.cfg.redis_url, batch_timeout_ms=str(LATENESS_TIMEOUT_MS))
    await b.flush()
    runs: list[dict[str, Any]] = []
    async with _client(settings) as consumer_redis:
        with spawned("batcher", args, env=env, log_dir=b.log_dir) as batcher:
            await wait_batcher_ready(b.redis, b.keys, batcher)
            for repeat in range(b.cfg.repeats):
                runs.append(await lateness_run(b, settings, consumer_redis, tag=f"late{repeat}"))
                _check_alive(batcher)
            batcher_rss_mb = rss_mb(batcher.pid)
    await b.flush()
    return section(runs, open_batches=b.cfg.open_batches, timeout_ms=LATENESS_TIMEOUT_MS, batcher_rss_mb=batcher_rss_mb)


@contextlib.asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[Redis]:
    redis = connect_redis(settings)
    try:
        yield redis
    finally:
        await redis.aclose()


async def lateness_run(b: Bench, settings: Settings, consumer_redis: Redis, *, tag: str) -> dict[str, Any]:
    await b.flush()
    queue = JobQueue(b.redis, keys=b.keys, config=QueueConfig.from_settings(settings), rng=random.Random(0))
    await queue.ensure_groups()
    phones = b.phones[: b.cfg.open_batches]
    wait_s = b.cfg.spread_s + LATENESS_TIMEOUT_MS / 1000 + 10
    consumer = asyncio.create_task(consume(consumer_redis, b.keys, expected=len(phones), timeout_s=wait_s))
    try:
        errors = await paced_appends(b, b.store(settings), tag=tag)
        jobs = await consumer
    finally:
        consumer.cancel()
    observed = [visible_ms - (job.last_received_ms + LATENESS_TIMEOUT_MS) for visible_ms, job in jobs]
    stats = StatsReader(b.redis, keys=b.keys, queue=queue, clock=WallClock())
    recorded = (await stats.collect())["flush_lateness_ms"]
    return {
        **spread(observed, "observed_ms", scale=1),
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


# --- section 5: claim and enqueue -----------------------------------------------------------------------


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


# --- the report -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the final table."""

    stage: str
    ours: str
    reference: str
    goal: str
    met: bool | None = None  # None: no goal


def summary_rows(s: dict[str, dict[str, Any]]) -> list[Row]:
    lat, thr, app_, late, claim = (
        s["accept_latency"]["median"],
        s["throughput"]["median"],
        s["append"]["median"],
        s["flush_lateness"]["median"],
        s["claim"]["median"],
    )
    api_rss = s["throughput"]["api_rss_mb"]
    return [
        Row(
            f"API accept latency @{s['accept_latency']['rate_per_s']} req/s (open loop)",
            _pair(lat["latency_ms_p50"], lat["latency_ms_p99"], "ms"),
            "10-15 ms",
            "p99 ≤ 5 ms",
            _le(lat["latency_ms_p99"], 5),
        ),
        Row(
            f"API max throughput (closed loop, {s['throughput']['connections']} conns)",
            f"{thr['api_rps']:,.0f} req/s (p99 {thr['api_latency_ms_p99']:.1f} ms)",
            "100 req/s",
            "≥ 1,500 req/s",
            thr["api_rps"] >= 1500,
        ),
        Row(
            "API throughput / empty endpoint",
            f"{_whole(thr['ratio_pct'])}% (empty {thr['empty_rps']:,.0f} req/s)",
            "—",
            "≥ 70%",
            thr["ratio_pct"] is not None and thr["ratio_pct"] >= 70,
        ),
        Row("API RSS after the run", f"{api_rss:.1f} MB", "88 MB", "≤ 70 MB", api_rss <= 70),
        Row(
            "API CPU per request at max throughput",
            f"{_whole(thr['api_cpu_us_per_request'])} µs ({thr['api_server_cpu_pct']:.0f}% of a core; "
            f"empty {_whole(thr['empty_cpu_us_per_request'])} µs; Redis {_whole(thr.get('api_redis_cpu_pct'))}%)",
            "—",
            "—",
        ),
        Row("Append to batch (1 round trip)", _pair(app_["append_us_p50"], app_["append_us_p99"], "µs"), "~5 ms", "—"),
        Row(
            f"Flush lateness, observed ({s['flush_lateness']['open_batches']} open batches)",
            _pair(late["observed_ms_p50"], late["observed_ms_p99"], "ms") + f", max {late['observed_ms_max']:.0f}",
            "455 ms",
            "p99 ≤ 20 ms",
            _le(late["observed_ms_p99"], 20),
        ),
        Row(
            "Flush lateness, batcher-recorded",
            _pair(late["recorded_ms_p50"], late["recorded_ms_p99"], "ms") + f", max {late['recorded_ms_max']:.0f}",
            "455 ms",
            "p99 ≤ 20 ms",
            _le(late["recorded_ms_p99"], 20),
        ),
        Row("Batcher RSS", f"{s['flush_lateness']['batcher_rss_mb']:.1f} MB", "61 MB", "—"),
        Row(
            f"Claim + enqueue per batch (chunks of {s['claim']['chunk']})",
            f"{claim['chunked_per_batch_us']:.0f} µs",
            "~12 ms + ~5 ms",
            "≤ 1 ms",
            _le(claim["chunked_per_batch_us"], 1000),
        ),
        Row(
            "Claim + enqueue, one batch per round trip",
            _pair(claim["single_us_p50"], claim["single_us_p99"], "µs"),
            "~12 ms + ~5 ms",
            "p99 ≤ 1 ms",
            _le(claim["single_us_p99"], 1000),
        ),
    ]


def problems(s: dict[str, dict[str, Any]]) -> list[str]:
    """Correctness failures, which make every figure suspect: they must all be zero."""
    checks = {
        "accept_latency": ("non_2xx", "errors"),
        # An exhausted closed loop ran out of encoded requests: its throughput is a floor, not a figure.
        "throughput": (
            "api_non_2xx",
            "api_errors",
            "api_requests_exhausted",
            "empty_non_2xx",
            "empty_errors",
            "empty_requests_exhausted",
        ),
        "append": ("errors",),
        "flush_lateness": ("missing", "duplicates", "unexpected", "wrong_fragments", "append_errors"),
        "claim": ("errors",),
    }
    found: list[str] = []
    for name, keys in checks.items():
        for run_index, run in enumerate(s[name]["runs"]):
            found.extend(f"{name} run {run_index + 1}: {key}={run[key]}" for key in keys if run[key])
    return found


def _pair(p50: float | None, p99: float | None, unit: str) -> str:
    fmt = "{:.2f}" if unit == "ms" else "{:.0f}"
    return f"{_num(fmt, p50)} / {_num(fmt, p99)} {unit} (p50 / p99)"


def _num(fmt: str, value: float | None) -> str:
    return "n/a" if value is None else fmt.format(value)


def _whole(value: float | None) -> str:
    return _num("{:.0f}", value)


def _le(value: float | None, bound: float) -> bool:
    return value is not None and value <= bound


def render(console: Console, rows: list[Row], found: list[str], out: Path) -> None:
    table = Table(title="aiadmin bench ingest — medians over repeats")
    for column in ("stage", "ours", "reference", "goal", "met?"):
        table.add_column(column)
    for row in rows:
        met = "—" if row.met is None else ("[green]yes[/]" if row.met else "[red]no[/]")
        table.add_row(row.stage, row.ours, row.reference, row.goal, met)
    console.print(table)
    if found:
        console.print("[red]correctness problems:[/] " + "; ".join(found))
    else:
        console.print("non-2xx answers, errors, missing and duplicate batches: 0")
    console.print(f"figures written to {out}")


def _brief(median: dict[str, Any], name: str, *, unit: str = "ms") -> str:
    return _pair(median[f"{name}_p50"], median[f"{name}_p99"], unit)


# --- the command ----------------------------------------------------------------------------------------


async def run_bench(cfg: BenchConfig, console: Console, log_dir: Path) -> dict[str, Any]:
    settings = load_settings(settings_env(cfg.redis_url))
    async with _client(settings) as redis:
        phones = russian_mobiles(PHONES)
        b = Bench(
            cfg=cfg,
            settings=settings,
            redis=redis,
            keys=Keys(prefix=settings.redis_prefix, shards=settings.redis_shards),
            phones=phones,
            requests=GatewayRequests(phones, tag=str(time.time_ns())),
            console=console,
            log_dir=log_dir,
            redis_pid=local_redis_pid(await redis.info("server")),
        )
        started = datetime.now(UTC).isoformat()
        try:
            latency, throughput = await http_sections(b)
            appends = await append_cost(b)
            console.print(f"[3/5] append: {_brief(appends['median'], 'append_us', unit='µs')}")
            lateness = await flush_lateness(b)
            console.print(f"[4/5] flush lateness: {_brief(lateness['median'], 'observed_ms')}")
            claims = await claim_cost(b)
            console.print(f"[5/5] claim: {claims['median']['chunked_per_batch_us']:.0f} µs per batch in chunks")
        finally:
            await b.flush()
        redis_version = (await redis.info("server")).get("redis_version")
    sections = {
        "accept_latency": latency,
        "throughput": throughput,
        "append": appends,
        "flush_lateness": lateness,
        "claim": claims,
    }
    return {
        "benchmark": "ingest",
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "redis": redis_version},
        "options": asdict(cfg) | {"redis_url": _without_password(cfg.redis_url)},
        "sections": sections,
        "summary": [asdict(row) for row in summary_rows(sections)],
        "problems": problems(sections),
    }


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else url


@app.callback()
def bench() -> None:
    """Benchmarks against a real Redis; each flushes the database it is given."""


@app.command()
def ingest(
    redis_url: Annotated[
        str, typer.Option("--redis-url", envvar="REDIS_URL", help="Redis to benchmark on; its database is FLUSHED.")
    ] = DEFAULT_REDIS_URL,
    repeats: Annotated[int, typer.Option(min=1, max=20, help="Runs of each section; medians are reported.")] = 3,
    duration_s: Annotated[float, typer.Option("--duration-s", min=0.5, max=120, help="Each HTTP phase.")] = 5.0,
    rate: Annotated[int, typer.Option(min=1, max=5000, help="Open-loop rate for the accept latency.")] = 500,
    connections: Annotated[int, typer.Option(min=1, max=256, help="Connections of the closed loops.")] = 32,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke test: 1 repeat, 1 s phases, 200 batches.")] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go.")] = DEFAULT_OUT,
    force: Annotated[bool, typer.Option("--force", help="Allow db 0 and a non-local Redis.")] = False,
) -> None:
    """The ingest path: accept latency, throughput, append, flush lateness, claim (real Redis)."""
    try:
        check_redis_url(redis_url, force=force)
    except BenchError as exc:
        typer.echo(f"aiadmin bench ingest: {exc}", err=True)
        raise typer.Exit(2) from exc
    cfg = BenchConfig.build(
        redis_url=redis_url,
        repeats=repeats,
        duration_s=duration_s,
        rate_per_s=rate,
        connections=connections,
        quick=quick,
    )
    # A wide table when piped to a file or a CI log; the terminal's own width otherwise.
    console = Console(width=None if sys.stdout.isatty() else 160)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / "bench-logs"
    log_dir.mkdir(exist_ok=True)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            report = runner.run(run_bench(cfg, console, log_dir))
    except BenchError as exc:
        typer.echo(f"aiadmin bench ingest: {exc}", err=True)
        raise typer.Exit(1) from exc
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    render(console, summary_rows(report["sections"]), report["problems"], out)
    if report["problems"]:
        raise typer.Exit(1)

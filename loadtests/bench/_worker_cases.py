"""One case of `aiadmin bench worker`: a worker process, its stand-ins, jobs enqueued, replies timed.

The worker runs as `aiadmin worker --concurrency N`, pointed at `loadtests.bench._standins` (an LLM stand-in with a
configured latency, YClients and WhatsApp). Jobs of distinct conversations enter the queue through the
production path (BatchStore.append, then BatchStore.claim); a repeat's time runs from the first claim to
the stand-in's last received reply. Each case gets fresh processes and a flushed database.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from loadtests._processes import (
    LOCALHOST,
    CpuWindow,
    Process,
    cpu_s,
    rss_mb,
    spawned,
    wait_http_ready,
    wait_until,
)
from loadtests.bench._env import BenchError, now_ms, process_env
from loadtests.bench._figures import section
from loadtests.bench._standins import LLM_PREFIX, YCLIENTS_PREFIX
from simulator.redis_server import free_port
from system.ingest.batch_processor import CLAIM_CHUNK
from system.ingest.batch_store import AppendOutcome, BatchStore
from system.models import InboundMessage
from system.settings import Settings
from system.stats import StatsReader
from system.store.keys import Keys

PHONE_NUMBER_ID = "106540352242922"
TEXT = "Здравствуйте, хочу записаться на стрижку завтра после 18:00"
APPEND_CHUNK = 500
PAST_MS = 3_600_000  # fragments appended an hour ago: every batch is due at once
POLL_S = 0.05
ACK_GRACE_S = 10.0  # after the last reply the worker still saves the context and acks
SETTLE_S = 1.0  # after start-up, before the idle RSS is read


@dataclass(frozen=True, slots=True)
class WorkerCase:
    """One worker configuration: the stand-in LLM's latency, the turns at once, the jobs of a repeat."""

    name: str
    llm_latency_s: float
    concurrency: int
    jobs: int
    repeats: int
    warmup_jobs: int

    @property
    def bound_per_s(self) -> float | None:
        """The most messages/s `concurrency` turns of one LLM call each can give at this latency."""
        return self.concurrency / self.llm_latency_s if self.llm_latency_s else None

    @property
    def stall_s(self) -> float:
        """No new reply for this long ends a repeat: a working worker replies at least every LLM latency."""
        return 10.0 + 2 * self.llm_latency_s

    @property
    def timeout_s(self) -> float:
        """The longest a repeat may take: four times what the concurrency bound allows, and a minute."""
        rounds = -(-self.jobs // self.concurrency)
        return 60.0 + 4 * rounds * self.llm_latency_s


def worker_env(redis_url: str, standins: Process) -> dict[str, str]:
    """A worker's settings pointing at the stand-ins; the YClients client-side limits far out of the way."""
    base = f"http://{LOCALHOST}:{standins.port}"
    return process_env(
        redis_url,
        llm_base_url=base + LLM_PREFIX,
        llm_api_key="bench",
        yclients_base_url=base + YCLIENTS_PREFIX,
        yclients_partner_token="bench",
        yclients_rps="1000",
        yclients_rpm="100000",
        whatsapp_api_url=base,  # the settings' default Graph API version is appended; the stand-in takes any
        whatsapp_token="bench",
        whatsapp_phone_number_id=PHONE_NUMBER_ID,
    )


@dataclass
class WorkerBench:
    """What every case shares: the settings, a Redis client, the production batch store, the phones."""

    redis_url: str
    settings: Settings
    redis: Redis
    keys: Keys
    store: BatchStore
    stats: StatsReader
    phones: list[str]
    log_dir: Path
    redis_pid: int | None
    next_phone: int = 0

    def take_phones(self, count: int) -> list[str]:
        """Phones no earlier run used: every job is a new conversation."""
        taken = self.phones[self.next_phone : self.next_phone + count]
        if len(taken) < count:
            raise BenchError(f"{len(self.phones)} phones are too few for {self.next_phone + count} conversations")
        self.next_phone += count
        return taken

    async def counters(self) -> dict[str, int]:
        collected = await self.stats.collect()
        return {key: int(collected[key]) for key in ("jobs_done", "jobs_retried", "dead_letters")}


async def run_case(b: WorkerBench, case: WorkerCase) -> dict[str, Any]:
    """Fresh stand-ins and a fresh worker on a flushed database; idle RSS, warm-up, the repeats, RSS after."""
    await b.redis.flushdb()  # never while a worker runs: it would lose its consumer group
    standins_port = free_port()
    standins_args = [
        sys.executable,
        "-m",
        "loadtests.bench._standins",
        "--host",
        LOCALHOST,
        "--port",
        str(standins_port),
    ]
    standins_args += ["--llm-latency-s", str(case.llm_latency_s)]
    worker_args = [sys.executable, "-m", "system", "worker", "--concurrency", str(case.concurrency)]
    env = process_env(b.redis_url)
    runs: list[dict[str, Any]] = []
    warm: dict[str, Any] | None = None
    async with httpx.AsyncClient(base_url=f"http://{LOCALHOST}:{standins_port}", timeout=5.0) as http:
        with spawned(f"standins-{case.name}", standins_args, env=env, log_dir=b.log_dir, port=standins_port) as si:
            await wait_http_ready(si)
            with spawned(f"worker-{case.name}", worker_args, env=worker_env(b.redis_url, si), log_dir=b.log_dir) as w:
                await wait_worker_ready(b, w)
                await asyncio.sleep(SETTLE_S)
                idle_rss_mb = rss_mb(w.pid)
                if case.warmup_jobs:
                    warm = await one_run(b, case, http, w, si, jobs=case.warmup_jobs, tag=f"{case.name}-warm")
                    if warm["lost_replies"]:
                        raise BenchError(f"warm-up of {case.name}: {warm['lost_replies']} jobs got no reply")
                for repeat in range(case.repeats):
                    runs.append(await one_run(b, case, http, w, si, jobs=case.jobs, tag=f"{case.name}-{repeat}"))
                    w.check_alive()
                    if runs[-1]["lost_replies"]:
                        break  # replies still to come would be counted in the next repeat
                after_rss_mb = rss_mb(w.pid)
    await b.redis.flushdb()
    return section(
        runs,
        stall_s=case.stall_s,
        timeout_s=case.timeout_s,
        llm_latency_ms=case.llm_latency_s * 1000,
        concurrency=case.concurrency,
        jobs=case.jobs,
        bound_per_s=case.bound_per_s,
        idle_rss_mb=idle_rss_mb,
        after_rss_mb=after_rss_mb,
        warmup=warm,
    )


async def wait_worker_ready(b: WorkerBench, worker: Process) -> None:
    """The worker listens for new jobs once it has created the consumer groups and subscribed."""
    channels = [shard.jobs_channel for shard in b.keys.all_shards]

    async def subscribed() -> bool:
        counts: Any = await b.redis.pubsub_numsub(*channels)
        return all(int(n) > 0 for _, n in counts)

    await wait_until(subscribed, worker, what="did not subscribe to its jobs")


async def one_run(
    b: WorkerBench,
    case: WorkerCase,
    http: httpx.AsyncClient,
    worker: Process,
    standins: Process,
    *,
    jobs: int,
    tag: str,
) -> dict[str, Any]:
    """Enqueue `jobs` new conversations and time the replies; every figure is a delta over this run."""
    await http.post("/stats/reset")
    before = await b.counters()
    phones = b.take_phones(jobs)
    append_errors = await append_due(b, phones, tag=tag)
    worker_cpu_s = cpu_s(worker.pid)
    with CpuWindow({"worker": worker.pid, "standins": standins.pid, "redis": b.redis_pid}) as cpu:
        started = time.perf_counter()
        claimed = await claim_all(b, expected=jobs)
        sent, elapsed_s, ended = await wait_for_sends(http, worker, case, expected=jobs, started=started)
    worker_cpu_s = cpu_s(worker.pid) - worker_cpu_s
    acked = await wait_for_acks(b, before["jobs_done"] + sent)  # a job without a reply is not acked either
    after = await b.counters()
    received = (await http.get("/stats")).json()
    return {
        "messages_per_s": sent / elapsed_s,
        "elapsed_s": elapsed_s,
        # 1 when the run ended without every reply: no new one for `stall_s`, or past `timeout_s`.
        "stalled": int(ended == "stalled"),
        "timed_out": int(ended == "timed_out"),
        "jobs": jobs,
        "claimed": claimed,
        "replies": received["sends"],
        "recipients": received["recipients"],
        "lost_replies": max(0, jobs - received["recipients"]),
        "double_replies": received["double_replies"],
        "jobs_done": after["jobs_done"] - before["jobs_done"],
        "not_acked": max(0, jobs - (acked - before["jobs_done"])),
        "retried": after["jobs_retried"] - before["jobs_retried"],
        "dead_letters": after["dead_letters"] - before["dead_letters"],
        "append_errors": append_errors,
        "read_receipts": received["read_receipts"],
        "llm_requests": received["llm_requests"],
        "llm_in_flight_max": received["llm_in_flight_max"],
        "yclients_requests": received["yclients_requests"],
        "worker_cpu_ms_per_message": 1000 * worker_cpu_s / sent if sent else None,
        **cpu.figures(""),
        "worker_rss_mb": rss_mb(worker.pid),
    }


async def append_due(b: WorkerBench, phones: list[str], *, tag: str) -> int:
    """One fragment per conversation, appended an hour ago; returns the appends not accepted."""
    past_ms = now_ms() - PAST_MS
    messages = [
        InboundMessage(
            company_id=b.settings.default_company_id,
            phone=phone,
            message_id=f"wamid.bench-{tag}-{i}",  # a Cloud API id: the worker sends a read receipt, as in production
            text=TEXT,
            received_ms=past_ms,
        )
        for i, phone in enumerate(phones)
    ]
    errors = 0
    for at in range(0, len(messages), APPEND_CHUNK):
        outcomes = await b.store.append_many(messages[at : at + APPEND_CHUNK], now_ms=past_ms)
        errors += sum(1 for outcome in outcomes if outcome is not AppendOutcome.ACCEPTED)
    return errors


async def claim_all(b: WorkerBench, *, expected: int) -> int:
    """Claim every due batch into the queue in chunks, as the batcher does; returns the jobs enqueued."""
    enqueued = 0
    for shard in b.keys.all_shards:
        while True:
            members = await b.store.due(shard, now_ms=now_ms(), limit=CLAIM_CHUNK)
            if not members:
                break
            results = await b.store.claim(shard, members, now_ms=now_ms())
            enqueued += sum(1 for r in results if r.status == 1)
    if enqueued != expected:
        raise BenchError(f"claimed {enqueued} jobs, expected {expected}")
    return enqueued


async def wait_for_sends(
    http: httpx.AsyncClient, worker: Process, case: WorkerCase, *, expected: int, started: float
) -> tuple[int, float, str]:
    """Poll the stand-in until `expected` sends, a stall or the timeout; (sends, seconds to the last one, why)."""
    sends, last_s = 0, started
    while True:
        now_s = time.perf_counter()
        current = int((await http.get("/stats")).json()["sends"])
        if current > sends:
            sends, last_s = current, now_s
        ended = _ended(case, sends=sends, expected=expected, quiet_s=now_s - last_s, elapsed_s=now_s - started)
        if ended:
            return sends, max(last_s - started, 1e-9), ended
        worker.check_alive()
        await asyncio.sleep(POLL_S)


def _ended(case: WorkerCase, *, sends: int, expected: int, quiet_s: float, elapsed_s: float) -> str:
    """Why a run is over ("" while it is not): every reply is in, no new reply for a while, or the timeout."""
    if sends >= expected:
        return "replied"
    if quiet_s > case.stall_s:
        return "stalled"
    if elapsed_s > case.timeout_s:
        return "timed_out"
    return ""


async def wait_for_acks(b: WorkerBench, target: int) -> int:
    """Poll the done counter until it reaches `target` (bounded); its last value."""
    deadline = time.perf_counter() + ACK_GRACE_S
    done = 0
    while time.perf_counter() < deadline:
        done = (await b.counters())["jobs_done"]
        if done >= target:
            break
        await asyncio.sleep(POLL_S)
    return done

"""The stages after the batch: hand-over to a worker, the LLM call and sending, timed one at a time.

Each stage runs the production class against real Redis or the local stand-ins (`loadtests.bench._standins`):
- hand-over: a due batch is claimed into the queue, and a consumer woken the way the worker is woken
  (Pub/Sub on the jobs channel, then a non-blocking read) has the job;
- LLM: one completion through `LLMClient` from a stand-in that answers at once, so the figure is our
  client's own cost; a real model adds its latency (5-15 s in the reference), which is stated, not timed;
- sending: one reply through the WhatsApp Cloud API sender to the stand-in on loopback, so Meta's network
  time is not in it.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from rich.console import Console

from loadtests._processes import LOCALHOST, spawned, wait_http_ready
from loadtests.bench._env import process_env, redis_client, settings_env
from loadtests.bench._figures import brief, section, spread
from loadtests.bench._worker_cases import PHONE_NUMBER_ID, worker_env
from simulator.phones import russian_mobiles
from simulator.redis_server import free_port
from system.channels.whatsapp import build_sender
from system.clock import WallClock
from system.ingest.batch_store import BatchConfig, BatchStore
from system.models import InboundMessage
from system.settings import Settings, load_settings
from system.store.keys import Keys
from system.store.notify import ChannelListener
from system.store.queue import JobQueue, QueueConfig
from system.turn.llm import LLMClient, system_message, user_message

WAKE_TIMEOUT_S = 5.0
REPLY = "Здравствуйте! На завтра есть 15:00 и 17:30 у Артёма. Записать вас?"


@dataclass(frozen=True, slots=True)
class TurnStagesConfig:
    """How many of each call are timed, and how often the whole series is repeated."""

    redis_url: str
    repeats: int
    calls: int

    @classmethod
    def build(cls, *, redis_url: str, repeats: int, quick: bool) -> TurnStagesConfig:
        return cls(redis_url=redis_url, repeats=1 if quick else repeats, calls=50 if quick else 300)


async def run_turn_stages(cfg: TurnStagesConfig, console: Console, log_dir: Path) -> dict[str, Any]:
    """Medians over the repeats of each stage's p50/p99; the database is flushed before and after."""
    settings = load_settings(settings_env(cfg.redis_url))
    port = free_port()
    args = [sys.executable, "-m", "loadtests.bench._standins", "--host", LOCALHOST, "--port", str(port)]
    sections: dict[str, Any] = {}
    async with redis_client(settings) as redis:
        await redis.flushdb()
        try:
            sections["handover"] = section([await handover_run(cfg, settings, redis) for _ in range(cfg.repeats)])
            console.print(f"hand-over: {brief(sections['handover']['median'], 'handover_ms')}")
            with spawned("standins-turn", args, env=process_env(cfg.redis_url), log_dir=log_dir, port=port) as si:
                await wait_http_ready(si)
                stand_in = load_settings(worker_env(cfg.redis_url, si))  # as the worker benchmark's worker
                async with httpx.AsyncClient() as http:
                    runs = [await llm_run(cfg, stand_in, http) for _ in range(cfg.repeats)]
                    sections["llm"] = section(runs)
                    console.print(
                        f"LLM client, stand-in answering at once: {brief(sections['llm']['median'], 'llm_ms')}"
                    )
                    runs = [await sending_run(cfg, stand_in, http, index) for index in range(cfg.repeats)]
                    sections["sending"] = section(runs)
                    console.print(f"sending one reply: {brief(sections['sending']['median'], 'send_ms')}")
        finally:
            await redis.flushdb()
    return sections


async def handover_run(cfg: TurnStagesConfig, settings: Settings, redis: Redis) -> dict[str, Any]:
    """Claim a due batch, then wait as the worker waits until a read returns its job."""
    keys = Keys(prefix=settings.redis_prefix, shards=settings.redis_shards)
    store = BatchStore(redis, keys=keys, config=BatchConfig.from_settings(settings))
    queue = JobQueue(redis, keys=keys, config=QueueConfig.from_settings(settings), rng=random.Random(0))
    await queue.ensure_groups()
    listener = ChannelListener(redis, [s.jobs_channel for s in keys.all_shards])
    await listener.start()
    samples: list[float] = []
    errors = 0
    try:
        for i, phone in enumerate(russian_mobiles(cfg.calls, seed=11)):
            sent_ms = int(time.time() * 1000) - settings.batch_timeout_ms - 1  # due at once
            message = InboundMessage(
                company_id=settings.default_company_id,
                phone=phone,
                message_id=f"handover-{i}",
                text="Хочу записаться",
                received_ms=sent_ms,
            )
            await store.append(message, now_ms=sent_ms)
            shard, conv = keys.conversation(message.company_id, phone)
            listener.event.clear()
            started = time.perf_counter()
            claimed = await store.claim(shard, [conv.member], now_ms=int(time.time() * 1000))
            got = await _wait_for_job(queue, listener.event, phone) if claimed[0].status == 1 else False
            if got:
                samples.append(time.perf_counter() - started)
            else:
                errors += 1
    finally:
        await listener.stop()
        await redis.flushdb()
    return {**spread(samples, "handover_ms", scale=1000), "calls": len(samples), "errors": errors}


async def _wait_for_job(queue: JobQueue, wake: asyncio.Event, phone: str) -> bool:
    """What the worker does: sleep until the jobs channel speaks, then read; True once the job is read."""
    deadline = time.perf_counter() + WAKE_TIMEOUT_S
    while time.perf_counter() < deadline:
        try:
            await asyncio.wait_for(wake.wait(), timeout=deadline - time.perf_counter())
        except TimeoutError:
            return False
        wake.clear()
        deliveries = await queue.read("stage-bench", count=10, now_ms=int(time.time() * 1000))
        if any(d.job.phone == phone for d in deliveries):
            return True  # left unacked: the database is flushed after the run
    return False


async def llm_run(cfg: TurnStagesConfig, settings: Settings, http: httpx.AsyncClient) -> dict[str, Any]:
    client = LLMClient.from_settings(settings, http=http, clock=WallClock(), rng=random.Random(0))
    messages = [system_message("Ты администратор барбершопа."), user_message("Хочу записаться на стрижку")]
    samples: list[float] = []
    for _ in range(cfg.calls):
        started = time.perf_counter()
        await client.complete(messages)
        samples.append(time.perf_counter() - started)
    return {**spread(samples, "llm_ms", scale=1000), "calls": len(samples)}


async def sending_run(cfg: TurnStagesConfig, settings: Settings, http: httpx.AsyncClient, index: int) -> dict[str, Any]:
    sender = build_sender(settings, http=http, clock=WallClock(), rng=random.Random(0))
    # A new recipient per reply: the sender paces replies to one recipient, as Meta requires.
    phones = russian_mobiles(cfg.calls * (index + 1), seed=13)[cfg.calls * index :]
    samples: list[float] = []
    for phone in phones:
        started = time.perf_counter()
        await sender.send_text(phone_number_id=PHONE_NUMBER_ID, to=phone, text=REPLY)
        samples.append(time.perf_counter() - started)
    return {**spread(samples, "send_ms", scale=1000), "calls": len(samples)}

"""The whole system in one process: the API (through ASGI), a batch processor and workers, over the fakes.

The one assembly `aiadmin simulate`, the QA harness and the tests share: its settings (the fakes' hosts and
tokens, the virtual clock's I/O grace, processor and consumer names) live here and nowhere else.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
from redis.asyncio import Redis

from simulator.clock import VirtualClock
from system.clock import Clock
from system.ingest.routes import create_app
from system.runtime import Runtime, build_worker
from system.settings import Settings
from system.turn.worker import Worker

if TYPE_CHECKING:
    from system.ingest.batch_processor import BatchProcessor

ASGIApp = Callable[..., Awaitable[None]]

APP_SECRET = "sim-app-secret"
TOKENS = {"whatsapp": "sim-wa-token", "partner": "sim-partner", "user": "sim-user", "llm": "sim"}
# Where the system finds each fake: hosts of no network, served by the fakes' ASGI apps mounted on the client.
HOSTS = {"llm": "http://llm.sim", "crm": "http://crm.sim", "whatsapp": "http://wa.sim", "system": "http://system.sim"}
WHATSAPP_PHONE_NUMBER_ID = "106540352242922"
# With a real Redis, time may only jump once the loop has been quiet for 10 ms of wall time: at 2 ms a reply
# still on its way over a busy machine's loopback let time run past it (1-2 simulations in 4 went wrong).
IO_GRACE_S = 0.01
PROCESSOR_ID = "inproc-batcher"
FIRST_CONSUMER = "inproc-worker"
STOP_TIMEOUT_S = 30.0  # wall time a stopping batcher and worker get to finish before they are cancelled


def fakes_env() -> dict[str, str]:
    """The settings that point the system at the mounted fakes (no Redis: the caller passes a client)."""
    return {
        "AIADMIN_LLM_BASE_URL": f"{HOSTS['llm']}/v1",
        "AIADMIN_LLM_API_KEY": TOKENS["llm"],
        "AIADMIN_LLM_MODEL": "fake-admin",
        "AIADMIN_DEFAULT_SALON_NAME": "Барбершоп «Борода»",
        "AIADMIN_YCLIENTS_BASE_URL": f"{HOSTS['crm']}/api/v1",
        "AIADMIN_YCLIENTS_PARTNER_TOKEN": TOKENS["partner"],
        "AIADMIN_YCLIENTS_USER_TOKEN": TOKENS["user"],
        "AIADMIN_WHATSAPP_API_URL": HOSTS["whatsapp"],
        "AIADMIN_WHATSAPP_TOKEN": TOKENS["whatsapp"],
        "AIADMIN_WHATSAPP_PHONE_NUMBER_ID": WHATSAPP_PHONE_NUMBER_ID,
        "AIADMIN_WHATSAPP_APP_SECRET": APP_SECRET,
        "AIADMIN_LOG_LEVEL": "WARNING",
        "AIADMIN_WORKER_CONCURRENCY": "256",
        # In virtual time every idle wake-up is work with no wall-clock wait to hide it: the processes are woken by
        # Pub/Sub anyway, so their safety-net polls can be rare.
        "AIADMIN_WORKER_IDLE_POLL_S": "300",
        "AIADMIN_HEARTBEAT_INTERVAL_S": "300",
        "AIADMIN_HEARTBEAT_STALE_S": "900",
    }


def virtual_clock(*, start_ms: int, real_redis: bool) -> VirtualClock:
    """The clock of an in-process system; over a real Redis it lets socket replies land before time jumps."""
    return VirtualClock(start_ms=start_ms, io_grace_s=IO_GRACE_S if real_redis else 0.0)


class InProcessSystem:
    """API, batch processor and workers of one system in this process, the fakes mounted at `HOSTS`.

    `inbound` is a client of the API (as WhatsApp or an operator reaches it); `rt` is the runtime they share.
    Use as `async with`: entering starts the batcher and the first worker, leaving stops them all.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        clock: Clock,
        rng: random.Random,
        fakes: Mapping[str, ASGIApp],
    ) -> None:
        self.rt = Runtime.build(settings, redis=redis, clock=clock, rng=rng)
        mounts = {HOSTS[name]: httpx.ASGITransport(app=app) for name, app in fakes.items()}
        self.outbound = httpx.AsyncClient(mounts=mounts)
        self.inbound = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(self.rt)), base_url=HOSTS["system"]
        )
        self.workers: list[tuple[Worker, asyncio.Task[None]]] = []
        self._batcher: tuple[BatchProcessor, asyncio.Task[None]] | None = None

    async def __aenter__(self) -> InProcessSystem:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Prepare Redis, then start the batch processor and the first worker."""
        await self.rt.start()
        batcher = self.rt.batcher(processor_id=PROCESSOR_ID)
        self._batcher = (batcher, asyncio.create_task(batcher.run()))
        self.start_worker(FIRST_CONSUMER)

    def start_worker(self, consumer: str) -> Worker:
        """Another worker joins the consumer group as `consumer`."""
        worker = build_worker(self.rt, http=self.outbound, consumer=consumer)
        self.workers.append((worker, asyncio.get_running_loop().create_task(worker.run())))
        return worker

    async def kill_worker(self) -> None:
        """The last worker dies where it stands, as a killed process would: its turns stop mid-way (no ack, no
        release, no drain); what it held stays pending in Redis until another worker reclaims it."""
        worker, task = self.workers.pop()
        turns = list(worker._tasks)  # its in-flight turns: a process's death takes them with it
        for turn in turns:
            turn.cancel()
        task.cancel()
        await asyncio.gather(*turns, task, return_exceptions=True)

    async def stats(self) -> dict[str, Any]:
        return await self.rt.stats.collect()

    async def stop(self) -> None:
        """Stop the batcher and the workers (in-flight turns finish, bounded), then close the clients."""
        tasks = [task for _, task in self.workers]
        for worker, _ in self.workers:
            worker.stop()
        if self._batcher is not None:
            batcher, task = self._batcher
            batcher.stop()
            tasks.append(task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()
        self._batcher = None
        await self.inbound.aclose()
        await self.outbound.aclose()

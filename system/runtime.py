"""Wires the components of one process from the settings; every piece of I/O is passed in here."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from system.clock import Clock, WallClock
from system.errors import AIAdminError, SettingsError
from system.ingest.batch_store import BatchConfig, BatchStore
from system.ingest.core import Ingestor
from system.metrics import Metrics
from system.settings import Settings
from system.stats import StatsReader
from system.store.cluster import connect_cluster
from system.store.keys import Keys
from system.store.queue import JobQueue, QueueConfig

if TYPE_CHECKING:
    import httpx

    from system.ingest.batch_processor import BatchProcessor
    from system.turn.worker import Worker

log = structlog.get_logger(__name__)
T = TypeVar("T")

REDIS_MAX_CONNECTIONS = 256
REDIS_POOL_WAIT_S = 10.0


class RedisUnavailable(AIAdminError):
    """REDIS_URL names a server that does not answer (or refuses us); the message names the variable."""

    retryable = True  # the batcher and the worker wait for it; the API and `dlq` exit instead


def redacted_redis_url(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


def connect_redis(settings: Settings) -> Redis:
    """A client for REDIS_URL (a cluster's with AIADMIN_REDIS_CLUSTER), or an embedded fakeredis when it is unset."""
    if settings.redis_url and settings.redis_cluster:
        return connect_cluster(settings.redis_url)
    if settings.redis_url:
        # A blocking pool: with more turns in flight than connections, a turn waits for a free connection
        # (up to the timeout) instead of failing.
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=REDIS_MAX_CONNECTIONS,
            timeout=REDIS_POOL_WAIT_S,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
        return Redis.from_pool(pool)  # closing the client closes its pool
    try:
        import fakeredis  # the embedded default only; production never loads it
    except ImportError as exc:
        raise SettingsError(
            "REDIS_URL is unset and the embedded Redis needs the `sim` extra: pip install 'ai-admin[sim]', "
            "or set REDIS_URL"
        ) from exc
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))


@dataclass
class Runtime:
    """The components of one process, sharing one Redis client, clock and metrics registry."""

    settings: Settings
    redis: Redis
    clock: Clock
    rng: random.Random
    keys: Keys
    metrics: Metrics
    store: BatchStore
    queue: JobQueue
    ingestor: Ingestor
    stats: StatsReader

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        redis: Redis | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> Runtime:
        redis = redis if redis is not None else connect_redis(settings)
        clock = clock or WallClock()
        rng = rng or random.Random()
        keys = Keys(
            prefix=settings.redis_prefix,
            shards=settings.redis_shards,
            cluster=settings.redis_cluster,
            retention=settings.retention,
        )
        metrics = Metrics()
        store = BatchStore(redis, keys=keys, config=BatchConfig.from_settings(settings))
        queue = JobQueue(redis, keys=keys, config=QueueConfig.from_settings(settings), rng=rng)
        return cls(
            settings=settings,
            redis=redis,
            clock=clock,
            rng=rng,
            keys=keys,
            metrics=metrics,
            store=store,
            queue=queue,
            ingestor=Ingestor(redis, store=store, keys=keys, clock=clock, metrics=metrics),
            stats=StatsReader(redis, keys=keys, queue=queue, clock=clock),
        )

    async def start(self) -> None:
        """Make the queue's consumer groups and load the batch scripts; RedisUnavailable when Redis fails."""
        try:
            await self.queue.ensure_groups()
            await self.store.load_scripts()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def ping(self) -> None:
        """RedisUnavailable unless Redis answers."""
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> RedisUnavailable:
        where = redacted_redis_url(self.settings.redis_url) if self.settings.redis_url else "the embedded Redis"
        return RedisUnavailable(f"REDIS_URL: cannot use {where}: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        await self.redis.aclose()

    def batcher(self, *, processor_id: str) -> BatchProcessor:
        """A batch processor over this runtime, known to the others by `processor_id` (its heartbeat)."""
        # Imported here, as the worker is in `build_worker`: only the processes that claim batches load it.
        from system.ingest.batch_processor import BatchProcessor

        return BatchProcessor(
            self.redis,
            store=self.store,
            clock=self.clock,
            metrics=self.metrics,
            processor_id=processor_id,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
        )

    async def readiness(self) -> dict[str, str]:
        """Why the process is not ready, per check; all "ok" when it is."""
        checks = {"redis": "ok", "batch_processor": "ok"}
        try:
            await self.redis.ping()
            freshest = await self.redis.zrevrange(self.keys.batchers, 0, 0, withscores=True)
        except (RedisError, OSError) as exc:
            # The error text names hosts and internals: it goes to the log; the API shows it only to the
            # holder of the stats token.
            log.warning("readiness_redis_unavailable", error=f"{type(exc).__name__}: {exc}")
            return {"redis": f"unavailable: {exc}", "batch_processor": "unknown"}
        stale_ms = int(self.settings.heartbeat_stale_s * 1000)
        if not freshest:
            checks["batch_processor"] = "no heartbeat"
        elif self.clock.now_ms() - int(freshest[0][1]) > stale_ms:
            checks["batch_processor"] = f"heartbeat older than {stale_ms} ms"
        return checks


def build_worker(rt: Runtime, *, http: httpx.AsyncClient, consumer: str, concurrency: int | None = None) -> Worker:
    """A worker over this runtime whose LLM, CRM and WhatsApp clients share `http`."""
    # Imported here: API and batcher processes never load the worker's stack (memory per process).
    from system.booking.yclients import YClientsBackend
    from system.channels.whatsapp import build_sender
    from system.turn.context import ContextStore
    from system.turn.llm import BreakerState, LLMClient
    from system.turn.records import TurnStore
    from system.turn.worker import Worker

    s = rt.settings
    problems: list[str] = []  # every client's refusal at once, not the first only
    llm = _refusal_to(problems, lambda: LLMClient.from_settings(s, http=http, clock=rt.clock, rng=rt.rng))
    backend = _refusal_to(problems, lambda: YClientsBackend.from_settings(s, http=http, clock=rt.clock, rng=rt.rng))
    sender = _refusal_to(problems, lambda: build_sender(s, http=http, clock=rt.clock, rng=rt.rng))
    if llm is None or backend is None or sender is None:
        raise SettingsError("\n".join(problems))
    rt.metrics.watch_llm_breaker(lambda: llm.breaker.state is BreakerState.OPEN)
    return Worker(
        rt.redis,
        settings=s,
        queue=rt.queue,
        context=ContextStore(rt.redis, keys=rt.keys),
        turns=TurnStore(rt.redis, keys=rt.keys),
        llm=llm,
        backend=backend,
        sender=sender,
        clock=rt.clock,
        metrics=rt.metrics,
        consumer=consumer,
        concurrency=concurrency or s.worker_concurrency,
    )


def _refusal_to(problems: list[str], make: Callable[[], T]) -> T | None:
    """`make()`, or None with its settings error appended to `problems`."""
    try:
        return make()
    except SettingsError as exc:
        problems.append(str(exc))
        return None

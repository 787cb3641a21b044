"""The AI worker: one turn per job — context, prompt, LLM with tools, reply, send, save, ack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from system.booking.base import BookingBackend
from system.channels.whatsapp import Sender
from system.clock import Clock, wait_event
from system.errors import AIAdminError, LLMError, SendError
from system.metrics import Metrics
from system.models import Job
from system.settings import Settings, Tenant
from system.store.notify import ChannelListener
from system.store.queue import Delivery, JobQueue
from system.turn.context import Context, ContextStore, ContextUpdate, Dialog, HistoryItem, Preferences
from system.turn.llm import LLMClient
from system.turn.prompt import turn_text
from system.turn.records import TurnRecord, TurnStage, TurnStore
from system.turn.stale import DROPS_IN_A_ROW_MAX, Overtaken, TurnEffects, drops_in_a_row, fragments_waiting
from system.turn.thinking import CONFUSED_REPLY as CONFUSED_REPLY  # the worker's answers, named in one place
from system.turn.thinking import Thinker
from system.turn.tools import TurnState

log = structlog.get_logger(__name__)

FALLBACK_REPLY = (
    "Извините, у меня сейчас техническая заминка 🙏 Администратор ответит вам в ближайшее время. "
    "Если срочно — позвоните, пожалуйста, в салон."
)
BUSY_RETRY_MS = 1000
# Backoff of the worker's loop while Redis fails: from 0.5 s, doubling, at most 10 s.
REDIS_RETRY_BASE_S = 0.5
REDIS_RETRY_MAX_S = 10.0


class UnanswerableTurn(AIAdminError):
    """The turn can never succeed as it is: dead-letter the job with this error, at once."""

    retryable = False


class Worker:
    """Consumes the queue and runs up to `concurrency` turns of different conversations at once."""

    def __init__(
        self,
        redis: Redis,
        *,
        settings: Settings,
        queue: JobQueue,
        context: ContextStore,
        turns: TurnStore,
        llm: LLMClient,
        backend: BookingBackend,
        sender: Sender,
        clock: Clock,
        metrics: Metrics,
        consumer: str,
        concurrency: int,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._queue = queue
        self._context = context
        self._turns = turns
        self._backend = backend
        self._thinker = Thinker(settings=settings, llm=llm, backend=backend, clock=clock, metrics=metrics)
        self._sender = sender
        self._clock = clock
        self._metrics = metrics
        self._consumer = consumer
        self._concurrency = concurrency
        self._stopping = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_reclaim_ms: int | None = None

    def stop(self) -> None:
        """Stop reading; in-flight turns finish (see `run`)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Run until `stop()`; a Redis outage, even at start, is waited out with backoff."""
        listener = ChannelListener(self._redis, [s.jobs_channel for s in self._queue.keys.all_shards], event=self._wake)
        await listener.start()  # returns at once while Redis is down; it subscribes once Redis answers
        log.info("worker_started", consumer=self._consumer, concurrency=self._concurrency)
        failures = 0
        outage_started_ms = 0
        groups_ready = False
        try:
            while not self._stopping:
                try:
                    if not groups_ready:  # at start, when Redis may not be up yet
                        await self._queue.ensure_groups()
                        groups_ready = True
                    await self._poll()
                except (RedisError, OSError) as exc:
                    # An outage or a lost consumer group must not end the worker while the API goes on
                    # accepting: it waits, backing off, and carries on when Redis is back.
                    failures += 1
                    if failures == 1:
                        outage_started_ms = self._clock.now_ms()
                    await self._recover(exc, failures)
                    continue
                if failures:
                    log.info(
                        "worker_redis_recovered",
                        consumer=self._consumer,
                        failed_polls=failures,
                        outage_ms=self._clock.now_ms() - outage_started_ms,
                    )
                    failures = 0
        finally:
            await listener.stop()
            await self._drain()
            log.info("worker_stopped", consumer=self._consumer)

    async def _poll(self) -> None:
        """Start what the free slots can take, then sleep until woken or the next retry is due."""
        self._wake.clear()
        now_ms = self._clock.now_ms()
        await self._queue.promote_due(now_ms=now_ms)
        free = self._concurrency - len(self._tasks)
        if free > 0:
            deliveries = []
            last = self._last_reclaim_ms
            if last is None or now_ms - last >= self._queue.config.visibility_ms // 2:
                self._last_reclaim_ms = now_ms
                deliveries += await self._queue.reclaim(self._consumer, count=free, now_ms=now_ms)
            deliveries += await self._queue.read(self._consumer, count=free - len(deliveries), now_ms=now_ms)
            for delivery in deliveries:
                self._start(delivery)
            if deliveries and len(self._tasks) < self._concurrency:
                return  # there may be more waiting
        await wait_event(self._clock, self._wake, timeout_s=await self._idle_s(now_ms))

    async def _recover(self, exc: RedisError | OSError, failures: int) -> None:
        delay_s = min(REDIS_RETRY_MAX_S, REDIS_RETRY_BASE_S * 2 ** min(failures - 1, 10))
        if failures == 1:  # once per outage; `worker_redis_recovered` closes it
            log.error("worker_redis_error", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay_s)
        await self._clock.sleep(delay_s)
        if "NOGROUP" in str(exc):  # the queue's stream or group was deleted (a flush): make them again
            try:
                await self._queue.ensure_groups()
            except RedisError as again:
                log.error("worker_group_not_restored", error=f"{type(again).__name__}: {again}")

    async def _idle_s(self, now_ms: int) -> float:
        poll_s = self._settings.worker_idle_poll_s
        next_retry_ms = await self._queue.next_retry_ms()
        if next_retry_ms is None:
            return poll_s
        return max(0.0, min(poll_s, (next_retry_ms - now_ms) / 1000))

    def _start(self, delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self.handle(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # a free slot: read more

    async def _drain(self) -> None:
        """Let in-flight turns finish within the deadline; what is left is reclaimed by other workers."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._settings.worker_shutdown_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("turns_left_for_reclaim", count=len(pending))

    # --- one turn ----------------------------------------------------------------------------------------

    async def handle(self, delivery: Delivery) -> None:
        """Process one delivery to its end: ack, retry later, or dead letter."""
        try:
            await self._handle(delivery)
        except RedisError as exc:
            # Redis failed outside the turn (taking the lease, acking): the job stays pending and another
            # worker reclaims it after the visibility timeout; the turn records keep that redelivery safe.
            log.error("job_left_for_reclaim", batch_id=delivery.job.batch_id, error=f"{type(exc).__name__}: {exc}")

    async def _handle(self, delivery: Delivery) -> None:
        job = delivery.job
        now_ms = self._clock.now_ms()
        self._metrics.queue_wait_seconds.observe(max(0, now_ms - job.enqueued_ms) / 1000)
        tenant = self._settings.tenant_for_company(job.company_id)
        if tenant is None:
            await self._queue.fail(delivery, f"company {job.company_id} is not served", now_ms=now_ms, retryable=False)
            self._metrics.jobs.labels("dead_letter").inc()
            return
        if not await self._queue.hold(delivery):
            await self._queue.postpone(delivery, delay_ms=BUSY_RETRY_MS, now_ms=now_ms)
            return
        started = time.perf_counter()
        finished = asyncio.Event()
        keeper = asyncio.get_running_loop().create_task(self._keep_lease(delivery, finished))
        try:
            settle = await self._settle_turn(job, tenant)
        finally:
            # The heartbeat stops before the ack: a late heartbeat must not re-take the released lease.
            # A flag, not cancel(): a cancel inside a Redis call can be swallowed.
            finished.set()
            await keeper
            self._metrics.turn_seconds.observe(time.perf_counter() - started)
        await settle(delivery)

    async def _settle_turn(self, job: Job, tenant: Tenant) -> Callable[[Delivery], Awaitable[None]]:
        """Run the turn; returns what to do with the job afterwards (ack, retry or dead letter)."""
        try:
            await self._turn(job, tenant)
        except (AIAdminError, RedisError, OSError) as exc:
            if isinstance(exc, SendError):
                self._metrics.send_failures.labels(str(exc.code) if exc.code is not None else "none").inc()
            return partial(self._fail, error=failure_text(exc), retryable=retry_may_help(exc))
        return self._done

    async def _done(self, delivery: Delivery) -> None:
        await self._queue.ack(delivery, now_ms=self._clock.now_ms())
        self._metrics.jobs.labels("done").inc()

    async def _fail(self, delivery: Delivery, *, error: str, retryable: bool) -> None:
        """Retry later when `retryable` and attempts are left, else dead-letter the job."""
        retried = await self._queue.fail(delivery, error, now_ms=self._clock.now_ms(), retryable=retryable)
        self._metrics.jobs.labels("retried" if retried else "dead_letter").inc()
        log.warning("turn_failed" if retried else "turn_dead_lettered", batch_id=delivery.job.batch_id, error=error)

    async def _keep_lease(self, delivery: Delivery, finished: asyncio.Event) -> None:
        period_s = self._queue.config.visibility_ms / 3000
        while not await wait_event(self._clock, finished, timeout_s=period_s):
            if not await self._queue.extend(delivery, self._consumer):
                log.warning("lease_lost", batch_id=delivery.job.batch_id)
                return

    async def _turn(self, job: Job, tenant: Tenant) -> None:
        record = await self._turns.get(job)
        context = await self._context.load(job.company_id, job.phone)
        if record.dropped:  # redelivered after its draft was dropped as stale: never send it later
            if record.stage is not TurnStage.DONE:
                await self._save(job, context.dialog, context.preferences, None)
            return
        if record.sent:  # redelivered after the reply went out: never send it twice
            if record.stage is not TurnStage.DONE:
                await self._save(job, context.dialog, context.preferences, record.reply)
            return
        pnid = self._sending_number(job, tenant)
        if job.messages[-1].message_id.startswith("wamid."):
            await self._sender.mark_read(phone_number_id=pnid, message_id=job.messages[-1].message_id)
        state = TurnState(
            company_id=job.company_id,
            phone=job.phone,
            timezone=tenant.timezone,
            batch_id=job.batch_id,
            dialog=context.dialog,
            preferences=context.preferences,
        )
        replayed = record.stage is TurnStage.REPLIED
        # A decided reply in a record older than the field may have changed a booking: assume it did.
        changed = record.side_effects is not False if replayed else record.side_effects is True
        effects = TurnEffects(
            self._backend, changed=changed, before_first_write=partial(self._turns.note_side_effects, job)
        )
        if replayed:
            reply = record.reply
        else:
            overtaken = partial(self._is_stale, job, context, effects)
            try:
                reply = await self._thinker.think(job, tenant, context, state, effects, overtaken=overtaken)
            except LLMError as exc:
                await self._apologise(job, pnid, record)
                raise UnanswerableTurn(f"LLM: {type(exc).__name__}: {exc}") from exc
            except Overtaken as exc:  # about to book while the client was saying more: read it first
                await self._drop(job, context, f"[{exc.args[0]}]")
                return
        # Parts already sent by an earlier attempt (a crash, a failed send) are not sent again.
        already = record.sent_ids if replayed else ()
        if not already and await self._is_stale(job, context, effects):
            await self._drop(job, context, reply)
            return
        if not replayed:
            await self._turns.save_reply(job, reply, side_effects=effects.changed)
        with self._metrics.send_seconds.time():
            sent_ids = await self._sender.send_text(
                phone_number_id=pnid,
                to=job.phone,
                text=reply,
                first_part=len(already),
                on_sent=partial(self._turns.record_part, job),
            )
        await self._turns.mark_sent(job, [*already, *sent_ids])
        await self._save(job, state.dialog, state.preferences, reply)
        log.info(
            "turn_done",
            batch_id=job.batch_id,
            phone=job.phone,
            fragments=len(job.messages),
            replayed=replayed,
            parts_resumed=len(already),
        )

    async def _is_stale(self, job: Job, context: Context, effects: TurnEffects) -> bool:
        """The client wrote again during a turn that changed nothing: its draft answers an outdated question."""
        if not self._settings.drop_stale_replies or effects.changed:
            return False
        if drops_in_a_row(context.history) >= DROPS_IN_A_ROW_MAX:
            return False  # a client writing during every turn is answered all the same
        return await fragments_waiting(self._redis, self._queue.keys, job)

    async def _drop(self, job: Job, context: Context, draft: str) -> None:
        """Keep the draft in the turn record, unsent; the client's text joins the history unanswered.

        The ack then releases the waiting fragments as the next turn, whose model reads this text in the
        history and answers both. The dialog is saved as it was loaded: slots the draft offered were never seen.
        """
        await self._turns.drop(job, draft, now_ms=self._clock.now_ms())
        self._metrics.stale_drafts_dropped.inc()
        log.info("stale_draft_dropped", batch_id=job.batch_id, phone=job.phone, fragments=len(job.messages))
        await self._save(job, context.dialog, context.preferences, None)

    def _sending_number(self, job: Job, tenant: Tenant) -> str:
        """The business number the reply goes out from: the one the client wrote to, else the salon's."""
        pnid = job.reply_from or tenant.phone_number_id or self._settings.whatsapp_phone_number_id
        if pnid:
            return pnid
        if self._settings.whatsapp_transport == "gateway":
            return ""  # a bridge sends from the one number it is logged in with
        # Never a POST to `{api}//messages`: with no number to send from, the turn cannot be answered.
        raise UnanswerableTurn(
            "no sending number: the message names no phone_number_id, and neither the tenant "
            "nor AIADMIN_WHATSAPP_PHONE_NUMBER_ID gives one"
        )

    async def _apologise(self, job: Job, pnid: str, record: TurnRecord) -> None:
        """The LLM is down: tell the client once, politely; the job goes to the dead letters."""
        if record.stage is TurnStage.FALLBACK_SENT:
            return
        ids = await self._sender.send_text(
            phone_number_id=pnid,
            to=job.phone,
            text=FALLBACK_REPLY,
            first_part=len(record.fallback_ids),
            on_sent=partial(self._turns.record_part, job, fallback=True),
        )
        await self._turns.mark_sent(job, [*record.fallback_ids, *ids], fallback=True)

    async def _save(self, job: Job, dialog: Dialog, preferences: Preferences, reply: str | None) -> None:
        """The turn's context and its record's `done`, in one transaction; no `reply` for a dropped draft."""
        client = HistoryItem("client", turn_text(job), job.last_received_ms)
        update = ContextUpdate(
            new_messages=(client,) if reply is None else (client, HistoryItem("admin", reply, self._clock.now_ms())),
            dialog=dialog,
            preferences=preferences,
        )
        await self._context.save(job.company_id, job.phone, update, also=self._turns.done_fields(job))


def retry_may_help(exc: AIAdminError | RedisError | OSError) -> bool:
    """Retry or dead letter, decided in one place: our errors say (`retryable`); Redis and network trouble passes."""
    return exc.retryable if isinstance(exc, AIAdminError) else True


def failure_text(exc: BaseException) -> str:
    """What a retry or a dead letter records: the error's type, the vendor's code when it has one, the message."""
    if isinstance(exc, UnanswerableTurn):
        return str(exc)
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}{'' if code is None else f' {code}'}: {exc}"

"""Queue contract (consumer side): runs on fakeredis and on a real Redis server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from simulator.clock import VirtualClock
from system.models import InboundMessage
from system.retry import backoff_s
from system.runtime import Runtime
from system.store.keys import WORKER_GROUP
from system.store.queue import Delivery, JobQueue, QueueConfig

from .conftest import next_turn

Factory = Callable[..., InboundMessage]
SERVER_TIMEOUT_MS = 1000  # a timeout the Redis server measures on its own (wall) clock
PAST_SERVER_TIMEOUT_S = SERVER_TIMEOUT_MS / 1000 + 0.1


@pytest.fixture
async def rt(make_runtime: Callable[..., Runtime]) -> Runtime:
    runtime = make_runtime(max_attempts=3, retry_backoff_base_s=1, retry_backoff_max_s=10)
    await runtime.start()
    return runtime


async def one_job(rt: Runtime, clock: VirtualClock, message: Factory, text: str = "привет") -> Delivery:
    return await next_turn(rt, clock, message, text)


async def test_ack_removes_the_job(rt: Runtime, clock: VirtualClock, message: Factory) -> None:
    delivery = await one_job(rt, clock, message)
    assert await rt.queue.in_flight() == 1
    assert await rt.queue.ack(delivery, now_ms=clock.now_ms())
    assert await rt.queue.in_flight() == 0
    assert await rt.queue.length() == 0
    assert await rt.queue.read("w1", count=10, now_ms=clock.now_ms()) == []


async def test_failed_job_is_retried_after_backoff_with_its_last_error(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    delivery = await one_job(rt, clock, message)
    assert await rt.queue.fail(delivery, "LLM timeout", now_ms=clock.now_ms())
    assert await rt.queue.read("w1", count=10, now_ms=clock.now_ms()) == []

    due = await rt.queue.next_retry_ms()
    assert due is not None and clock.now_ms() + 500 <= due <= clock.now_ms() + 1000
    assert await rt.queue.promote_due(now_ms=due - 1) == 0
    assert await rt.queue.promote_due(now_ms=due) == 1
    [again] = await rt.queue.read("w1", count=10, now_ms=due)
    assert again.job.batch_id == delivery.job.batch_id
    assert (again.job.attempt, again.job.last_error) == (1, "LLM timeout")


async def test_job_goes_to_dead_letters_after_max_attempts_keeping_the_last_error(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    delivery = await one_job(rt, clock, message)
    for attempt in range(1, 3):
        assert await rt.queue.fail(delivery, f"error {attempt}", now_ms=clock.now_ms())
        await rt.queue.promote_due(now_ms=clock.now_ms() + 60_000)
        [delivery] = await rt.queue.read("w1", count=10, now_ms=clock.now_ms())
    assert not await rt.queue.fail(delivery, "error 3", now_ms=clock.now_ms())

    [letter] = await rt.queue.dead_letters()
    assert letter.error == "error 3"
    assert letter.job is not None and letter.job.attempt == 3
    assert await rt.queue.dead_letter_count() == 1
    assert await rt.queue.in_flight() == 0


async def test_dead_letter_releases_the_conversation_next_batch(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    delivery = await one_job(rt, clock, message, "первый")
    await rt.store.append(message("второй"), now_ms=clock.now_ms())
    await rt.queue.fail(delivery, "bad", now_ms=clock.now_ms(), retryable=False)
    clock.advance_to(clock.now_ms() + 9000)
    await rt.batcher(processor_id="b").tick()
    [next_turn] = await rt.queue.read("w1", count=10, now_ms=clock.now_ms())
    assert next_turn.job.text == "второй"


async def test_poison_job_goes_to_dead_letters_at_once(rt: Runtime, clock: VirtualClock) -> None:
    shard = rt.keys.shard(0)
    await rt.redis.xadd(shard.queue, {"job": '{"from": null}'})
    assert await rt.queue.read("w1", count=10, now_ms=clock.now_ms()) == []
    [letter] = await rt.queue.dead_letters()
    assert letter.job is None
    assert letter.error.startswith("poison job")
    assert await rt.queue.in_flight() == 0


async def test_replayed_dead_letter_is_queued_again(rt: Runtime, clock: VirtualClock, message: Factory) -> None:
    delivery = await one_job(rt, clock, message)
    await rt.queue.fail(delivery, "WhatsApp down", now_ms=clock.now_ms(), retryable=False)
    [letter] = await rt.queue.dead_letters()

    assert await rt.queue.replay(letter.shard, letter.entry_id)
    assert await rt.queue.dead_letters() == []
    [again] = await rt.queue.read("w2", count=10, now_ms=clock.now_ms())
    assert again.job.batch_id == delivery.job.batch_id
    assert (again.job.attempt, again.job.last_error) == (0, "WhatsApp down")


async def test_jobs_of_a_dead_consumer_are_reclaimed_after_the_visibility_timeout(
    redis: object, make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Factory
) -> None:
    rt = make_runtime(max_attempts=2)
    await rt.start()
    # XAUTOCLAIM measures idle time on the server's clock, in wall time. A second is short enough for a quick test
    # and long enough that a busy machine cannot let it pass before the "not idle long enough" check.
    config = QueueConfig(SERVER_TIMEOUT_MS, 2, 1.0, 1.0)
    queue = JobQueue(rt.redis, keys=rt.keys, config=config, rng=random.Random(1))
    delivery = await one_job(rt, clock, message)  # read by "w1", which then dies

    assert await queue.reclaim("w2", count=10, now_ms=clock.now_ms()) == []  # not idle long enough
    await asyncio.sleep(PAST_SERVER_TIMEOUT_S)
    [reclaimed] = await queue.reclaim("w2", count=10, now_ms=clock.now_ms())
    assert reclaimed.job.batch_id == delivery.job.batch_id
    assert reclaimed.deliveries == 2

    await asyncio.sleep(PAST_SERVER_TIMEOUT_S)  # w2 dies too: the job has been abandoned more often than allowed
    assert await queue.reclaim("w3", count=10, now_ms=clock.now_ms()) == []
    [letter] = await queue.dead_letters()
    assert letter.error == "abandoned by 2 consumers"
    pending = await rt.redis.xpending(rt.keys.shard(0).queue, WORKER_GROUP)
    assert pending["pending"] == 0


async def test_hold_refuses_a_second_turn_of_one_conversation(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    delivery = await one_job(rt, clock, message)
    assert await rt.queue.hold(delivery)
    other = Delivery(
        shard=delivery.shard,
        entry_id="0-1",
        job=delivery.job.__class__(
            batch_id="962302:79001234567:other",
            company_id=962302,
            phone="79001234567",
            messages=delivery.job.messages,
            enqueued_ms=0,
        ),
    )
    assert not await rt.queue.hold(other)


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    delays = [backoff_s(a, base_s=1, max_s=30, rng=rng) for a in range(1, 10)]
    assert 0.5 <= delays[0] <= 1
    assert 4 <= delays[3] <= 8
    assert all(15 <= d <= 30 for d in delays[5:])
    again = random.Random(7)
    assert delays == [backoff_s(a, base_s=1, max_s=30, rng=again) for a in range(1, 10)]

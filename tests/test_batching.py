"""Batching contract: runs on fakeredis and on a real Redis server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.crc import key_slot
from redis.exceptions import TimeoutError as RedisTimeoutError

from simulator.clock import VirtualClock
from system.ingest.batch_processor import BatchProcessor
from system.ingest.batch_store import AppendOutcome, BatchStore, ClaimResult, ClaimStatus
from system.models import BatchedMessage, InboundMessage, Job
from system.runtime import Runtime
from system.settings import Settings
from system.store.keys import Keys
from system.store.queue import Delivery

from .conftest import REAL_REDIS_URL, START_MS

Factory = Callable[..., InboundMessage]
LEASE_MS = 1000  # a queued batch's lease in the lease test: the Redis server times it on its own (wall) clock


def processor(rt: Runtime, name: str = "b1") -> BatchProcessor:
    return rt.batcher(processor_id=name)


async def flush_at(rt: Runtime, clock: VirtualClock, at_ms: int) -> list[Delivery]:
    """Run one batcher pass at `at_ms` and take every job it enqueued."""
    clock.advance_to(at_ms)
    await processor(rt).tick()
    return await rt.queue.read("w1", count=100, now_ms=at_ms)


async def append(rt: Runtime, clock: VirtualClock, msg: InboundMessage, at_ms: int) -> AppendOutcome:
    clock.advance_to(at_ms)
    return await rt.store.append(msg, now_ms=at_ms)


@pytest.fixture
async def rt(make_runtime: Callable[..., Runtime]) -> Runtime:
    runtime = make_runtime()
    await runtime.start()
    return runtime


async def test_reference_fragments_merge_into_one_job(rt: Runtime, clock: VirtualClock, message: Factory) -> None:
    texts = ["Хочу записаться", "на стрижку машинкой  ", "завтра в 15:00"]
    sent = [message(t, received_ms=START_MS + 400 * i) for i, t in enumerate(texts)]
    for i, m in enumerate(sent):
        assert await append(rt, clock, m, START_MS + 400 * i) is AppendOutcome.ACCEPTED

    [delivery] = await flush_at(rt, clock, START_MS + 800 + 9000)

    job = delivery.job
    assert job.text == "Хочу записаться на стрижку машинкой завтра в 15:00"
    assert [m.message_id for m in job.messages] == [m.message_id for m in sent]
    assert [m.received_ms for m in job.messages] == [START_MS, START_MS + 400, START_MS + 800]
    assert (job.company_id, job.phone) == (962302, "79001234567")
    assert job.batch_id == f"962302:79001234567:{sent[0].message_id}"


async def test_batch_is_not_released_before_timeout_after_last_fragment(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    await append(rt, clock, message("привет"), START_MS)
    await append(rt, clock, message("хочу на стрижку"), START_MS + 5000)

    assert await flush_at(rt, clock, START_MS + 9000) == []  # 9 s after the first, 4 s after the last
    assert await flush_at(rt, clock, START_MS + 5000 + 8999) == []
    [delivery] = await flush_at(rt, clock, START_MS + 5000 + 9000)
    assert len(delivery.job.messages) == 2
    stats = await rt.stats.collect()
    assert stats["flush_lateness_ms"]["max"] == 0
    assert stats["batches_flushed"] == 1


async def test_max_size_seals_at_once_and_the_next_fragment_starts_a_new_batch(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    for i in range(11):
        await append(rt, clock, message(f"часть {i}"), START_MS + i)

    [first] = await flush_at(rt, clock, START_MS + 11)  # sealed: due at once, no 9 s wait
    assert [m.text for m in first.job.messages] == [f"часть {i}" for i in range(10)]
    assert await rt.queue.ack(first, now_ms=START_MS + 20)

    assert await flush_at(rt, clock, START_MS + 20) == []  # the 11th waits for its own deadline
    [second] = await flush_at(rt, clock, START_MS + 10 + 9000)
    assert [m.text for m in second.job.messages] == ["часть 10"]


async def test_redelivered_message_id_is_batched_once(rt: Runtime, clock: VirtualClock, message: Factory) -> None:
    m = message("Хочу записаться", message_id="wamid.same")
    assert await append(rt, clock, m, START_MS) is AppendOutcome.ACCEPTED
    assert await append(rt, clock, m, START_MS + 100) is AppendOutcome.DUPLICATE

    [delivery] = await flush_at(rt, clock, START_MS + 100 + 9000)
    assert len(delivery.job.messages) == 1
    assert (await rt.stats.collect())["duplicates"] == 1


async def test_same_phone_in_two_salons_makes_two_conversations(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    await append(rt, clock, message("в салон один", company_id=962302), START_MS)
    await append(rt, clock, message("в салон два", company_id=100500), START_MS)

    deliveries = await flush_at(rt, clock, START_MS + 9000)
    assert sorted((d.job.company_id, d.job.text) for d in deliveries) == [
        (100500, "в салон два"),
        (962302, "в салон один"),
    ]


async def test_two_clients_writing_at_once_never_mix(rt: Runtime, clock: VirtualClock, message: Factory) -> None:
    for i in range(3):
        await append(rt, clock, message(f"a{i}", phone="79001111111"), START_MS + 10 * i)
        await append(rt, clock, message(f"b{i}", phone="79002222222"), START_MS + 10 * i + 5)

    deliveries = await flush_at(rt, clock, START_MS + 30 + 9000)
    texts = {d.job.phone: d.job.text for d in deliveries}
    assert texts == {"79001111111": "a0 a1 a2", "79002222222": "b0 b1 b2"}


async def test_fragments_during_a_turn_wait_and_are_released_as_one_turn_after_the_ack(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    await append(rt, clock, message("первый вопрос"), START_MS)
    [first] = await flush_at(rt, clock, START_MS + 9000)
    assert await rt.queue.hold(first)

    await append(rt, clock, message("ещё"), START_MS + 9500)
    await append(rt, clock, message("и вот это"), START_MS + 9600)
    # their deadline passes while the first turn is still in flight: nothing is released
    assert await flush_at(rt, clock, START_MS + 9600 + 9000) == []
    assert await flush_at(rt, clock, START_MS + 30_000) == []

    assert await rt.queue.ack(first, now_ms=START_MS + 30_000)
    [second] = await flush_at(rt, clock, START_MS + 30_000)
    assert second.job.text == "ещё и вот это"


async def test_ack_releases_a_waiting_batch_only_at_its_own_deadline(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    await append(rt, clock, message("раз"), START_MS)
    [first] = await flush_at(rt, clock, START_MS + 9000)
    await append(rt, clock, message("два"), START_MS + 9100)
    await rt.queue.ack(first, now_ms=START_MS + 9200)

    assert await flush_at(rt, clock, START_MS + 9200) == []
    [second] = await flush_at(rt, clock, START_MS + 9100 + 9000)
    assert second.job.text == "два"


async def test_sender_flood_is_limited_and_counted_while_a_fast_typist_passes(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    typist = [await append(rt, clock, message(f"t{i}", phone="79003333333"), START_MS + 500 * i) for i in range(10)]
    assert set(typist) == {AppendOutcome.ACCEPTED}

    flood_ms = START_MS + 10_000  # after the typist: the limits measure time forwards
    flood = [await append(rt, clock, message(f"f{i}", phone="79004444444"), flood_ms + i) for i in range(40)]
    limited = [o for o in flood if o.rate_limited]
    assert flood[:20] == [AppendOutcome.ACCEPTED] * 20
    assert len(limited) == 20
    assert (await rt.stats.collect())["rate_limited_messages"] == 20


async def test_rate_limited_message_is_accepted_when_sent_again_later(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Factory
) -> None:
    rt = make_runtime(rate_limit_sender_burst=2, rate_limit_sender_per_min=60)
    sent = [message(f"{i}", phone="79006666666") for i in range(3)]
    assert [await append(rt, clock, m, START_MS) for m in sent] == [
        AppendOutcome.ACCEPTED,
        AppendOutcome.ACCEPTED,
        AppendOutcome.SENDER_LIMITED,
    ]
    # the refused message was not marked as seen: its retry, a second later, is batched
    assert await append(rt, clock, sent[2], START_MS + 1000) is AppendOutcome.ACCEPTED
    assert await append(rt, clock, sent[2], START_MS + 5000) is AppendOutcome.DUPLICATE


async def test_one_round_trip_over_many_shards_keeps_each_conversation_in_order(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Factory
) -> None:
    rt = make_runtime(redis_shards=4)
    await rt.start()
    phones = [f"7902{i:07d}" for i in range(12)]
    sent = [message(f"{phone[-2:]}-{n}", phone=phone) for n in range(3) for phone in phones]
    again = replace(sent[5], text="повтор")
    outcomes = await rt.store.append_many([*sent, again], now_ms=START_MS)

    assert outcomes == [AppendOutcome.ACCEPTED] * len(sent) + [AppendOutcome.DUPLICATE]
    assert len({rt.keys.shard_of(962302, p) for p in phones}) > 1
    clock.advance_to(START_MS + 9000)
    await processor(rt).tick()
    jobs = await rt.queue.read("w1", count=100, now_ms=START_MS + 9000)
    assert sorted(d.job.text for d in jobs) == sorted(" ".join(f"{p[-2:]}-{n}" for n in range(3)) for p in phones)


async def test_allowlisted_test_number_is_never_rate_limited(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Factory
) -> None:
    rt = make_runtime(rate_limit_allowlist="+7 900 555-55-55")
    outcomes = [await append(rt, clock, message(f"{i}", phone="79005555555"), START_MS + i) for i in range(100)]
    assert set(outcomes) == {AppendOutcome.ACCEPTED}


async def test_company_wide_limit_stops_a_flood_from_many_senders(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Factory
) -> None:
    rt = make_runtime(rate_limit_global_per_s=50)
    outcomes = [await append(rt, clock, message("спам", phone=f"7900{i:07d}"), START_MS + i // 10) for i in range(200)]
    accepted = outcomes.count(AppendOutcome.ACCEPTED)
    assert 50 <= accepted <= 52
    assert outcomes.count(AppendOutcome.COMPANY_LIMITED) == 200 - accepted


async def test_claim_by_two_processors_enqueues_once(rt: Runtime, clock: VirtualClock, message: Factory) -> None:
    for i in range(50):
        await append(rt, clock, message("x", phone=f"7901{i:07d}"), START_MS)
    clock.advance_to(START_MS + 9000)
    a, b = processor(rt, "a"), processor(rt, "b")
    assert await a.tick() + await b.tick() == 50
    jobs = await rt.queue.read("w", count=200, now_ms=START_MS + 9000)
    assert len({d.job.batch_id for d in jobs}) == len(jobs) == 50


async def test_stats_show_open_batches_with_masked_phones(rt: Runtime, clock: VirtualClock, message: Factory) -> None:
    await append(rt, clock, message("привет", phone="79001234567"), START_MS)
    stats = await rt.stats.collect()
    assert stats["open_batches"] == 1
    assert stats["buffered_messages"] == 1
    assert stats["next_batches"] == [{"company_id": 962302, "phone": "79*******67", "due_in_ms": 9000}]
    assert "79001234567" not in str(stats)


def test_job_json_round_trip(message: Factory) -> None:
    m = BatchedMessage.from_doc(orjson.loads(message("текст").to_json()))  # as a fragment is stored
    job = Job(batch_id="962302:7900:x", company_id=962302, phone="79001234567", messages=(m,), enqueued_ms=5)
    assert Job.from_json(job.to_json()) == job


async def test_next_batch_is_released_when_the_lease_of_a_lost_turn_expires(
    redis: object, make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Factory
) -> None:
    rt = make_runtime()
    await rt.start()
    # The lease lives on the server's (wall) clock: a second keeps the test quick, and a busy machine cannot let
    # it lapse before the claim that must find it held.
    store = BatchStore(rt.redis, keys=rt.keys, config=replace(rt.store.config, queued_lease_ms=LEASE_MS))
    await store.append(message("первый"), now_ms=START_MS)
    clock.advance_to(START_MS + 9000)
    await store.claim(rt.keys.shard(0), ["962302:79001234567"], now_ms=START_MS + 9000)
    [lost] = await rt.queue.read("dies", count=10, now_ms=START_MS + 9000)  # this consumer never acks
    await store.append(message("второй"), now_ms=START_MS + 9001)

    assert await store.claim(rt.keys.shard(0), ["962302:79001234567"], now_ms=START_MS + 18_001) == [
        ClaimResult(member="962302:79001234567", status=-1)
    ]
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    due_at = await store.next_deadline_ms()
    assert due_at is not None
    [result] = await store.claim(rt.keys.shard(0), ["962302:79001234567"], now_ms=max(due_at, START_MS + 18_001))
    assert result.status == 1
    [second] = await rt.queue.read("w2", count=10, now_ms=START_MS + 18_001)
    assert second.job.text == "второй"
    assert lost.job.text == "первый"


async def test_due_batch_whose_keys_expired_is_reported_expired_and_counted(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    await append(rt, clock, message("привет"), START_MS)
    _, conv = rt.keys.conversation(962302, "79001234567")
    await rt.redis.delete(conv.buf, conv.meta)  # what expiry does to a batch no batcher came for

    [result] = await rt.store.claim(rt.keys.shard(0), [conv.member], now_ms=START_MS + 9000)

    assert result == ClaimResult(member=conv.member, status=ClaimStatus.EXPIRED)
    assert await rt.store.next_deadline_ms() is None
    assert await rt.redis.hget(rt.keys.shard(0).stats, "batches_expired") == b"1"


async def test_open_batch_keys_live_past_the_deadline_by_the_keep_margin(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    await append(rt, clock, message("привет"), START_MS)
    _, conv = rt.keys.conversation(962302, "79001234567")
    keep_ms = rt.store.config.keep_ms
    assert keep_ms >= rt.store.config.timeout_ms + 3_600_000
    for key in (conv.buf, conv.meta):
        assert keep_ms - 5000 < await rt.redis.pttl(key) <= keep_ms  # measured from the last fragment


def test_every_key_a_script_touches_for_a_conversation_is_in_one_hash_slot() -> None:
    keys = Keys(prefix="aiadmin", shards=16)
    for i in range(200):
        shard, conv = keys.conversation(962302 + i % 3, f"7900{i:07d}")
        names = [
            conv.buf,
            conv.sealed,
            conv.meta,
            conv.lease,
            conv.rate,
            conv.rate_company,
            conv.seen("wamid.x"),
            shard.due,
            shard.queue,
            shard.delayed,
            shard.dlq,
            shard.stats,
            shard.lateness,
        ]
        assert len({key_slot(n.encode()) for n in names}) == 1
    assert len({key_slot(s.due.encode()) for s in keys.all_shards}) == 16


async def test_scripts_lost_by_the_server_are_loaded_again(rt: Runtime, clock: VirtualClock, message: Factory) -> None:
    await rt.redis.script_flush()  # what a restart or a failover does
    assert await append(rt, clock, message("после рестарта"), START_MS) is AppendOutcome.ACCEPTED
    await rt.redis.script_flush()
    [delivery] = await flush_at(rt, clock, START_MS + 9000)
    await rt.redis.script_flush()
    assert await rt.queue.ack(delivery, now_ms=START_MS + 9000)


@pytest.mark.redis
async def test_append_gives_up_at_its_deadline_when_redis_stops_answering(
    real_redis: Redis, make_settings: Callable[..., Settings], message: Factory
) -> None:
    pool = BlockingConnectionPool.from_url(REAL_REDIS_URL, socket_timeout=0.3)
    client: Redis = Redis(connection_pool=pool)
    rt = Runtime.build(make_settings(), redis=client, clock=VirtualClock(start_ms=START_MS))
    try:
        await rt.start()
        assert await rt.store.append(message("до паузы"), now_ms=START_MS) is AppendOutcome.ACCEPTED
        await real_redis.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            with pytest.raises(RedisTimeoutError):
                await rt.store.append(message("во время паузы"), now_ms=START_MS + 1)
        finally:
            await real_redis.execute_command("CLIENT", "UNPAUSE")
        # the lane reconnects on its next use
        assert await rt.store.append(message("после паузы"), now_ms=START_MS + 2) is AppendOutcome.ACCEPTED
    finally:
        await rt.close()
        await pool.disconnect()  # a client given its pool leaves closing it to the owner

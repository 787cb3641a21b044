"""The one in-process assembly of the whole system (`simulator.stack`) that the simulator and the QA harness use."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime

import fakeredis
import pytest

from simulator import crm, fake_llm
from simulator import whatsapp as fake_whatsapp
from simulator.clock import VirtualClock
from simulator.delivery import WebhookDelivery
from simulator.fakeredis_time import fakeredis_on
from simulator.salon import BARBERSHOP_FIXTURE, Salon
from simulator.simulation import TZ
from simulator.stack import APP_SECRET, FIRST_CONSUMER, PROCESSOR_ID, TOKENS, InProcessSystem, fakes_env
from system.settings import load_settings
from system.store.keys import WORKER_GROUP

from .conftest import START_MS

PHONE = "79001234567"
REPLY_WITHIN_MS = 120_000  # the 9 s batch window and a few LLM answers of the fake's latency


@pytest.fixture
def outbox() -> fake_whatsapp.Outbox:
    return fake_whatsapp.Outbox()


@pytest.fixture
def fake_time(clock: VirtualClock) -> Iterator[None]:
    with fakeredis_on(clock):
        yield


@pytest.fixture
def make_system(clock: VirtualClock, outbox: fake_whatsapp.Outbox, fake_time: None) -> Callable[[], InProcessSystem]:
    def make() -> InProcessSystem:
        salon = Salon.from_fixture(BARBERSHOP_FIXTURE, start=datetime.fromtimestamp(START_MS / 1000, TZ))
        fakes = {
            "llm": fake_llm.create_app(seed=1, clock=clock, api_key=TOKENS["llm"]),
            "crm": crm.create_app(salon, partner_token=TOKENS["partner"], user_token=TOKENS["user"], clock=clock),
            "whatsapp": fake_whatsapp.create_app(
                token=TOKENS["whatsapp"], clock=clock, rng=random.Random(1), outbox=outbox
            ),
        }
        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
        return InProcessSystem(load_settings(fakes_env()), redis=redis, clock=clock, rng=random.Random(1), fakes=fakes)

    return make


@asynccontextmanager
async def running(system: InProcessSystem) -> AsyncIterator[InProcessSystem]:
    async with system:
        yield system
    await system.rt.redis.aclose()


async def test_a_signed_webhook_is_answered_once_through_the_mounted_fakes(
    make_system: Callable[[], InProcessSystem], clock: VirtualClock, outbox: fake_whatsapp.Outbox
) -> None:
    async with running(make_system()) as system:
        delivery = WebhookDelivery(system.inbound, clock=clock, secret=APP_SECRET)
        status = await delivery.deliver_text(
            sender=PHONE, text="Сколько стоит мужская стрижка?", message_id="wamid.stack1", at_ms=START_MS
        )
        assert status == 200
        await clock.run_until(START_MS + REPLY_WITHIN_MS)
        stats = await system.stats()
    [reply] = outbox.messages_to(PHONE)
    assert reply.at_ms >= START_MS + system.rt.settings.batch_timeout_ms  # not before the batch window closed
    assert (stats["batches_flushed"], stats["queue_length"], stats["in_flight_jobs"]) == (1, 0, 0)


async def test_the_batcher_and_the_workers_go_by_the_stacks_names(
    make_system: Callable[[], InProcessSystem], clock: VirtualClock
) -> None:
    async with running(make_system()) as system:
        system.start_worker("second")
        await clock.settle()
        beating = await system.rt.redis.zrange(system.rt.keys.batchers, 0, -1)
        stream = system.rt.keys.shard(0).queue
        consumers = {c["name"].decode() for c in await system.rt.redis.xinfo_consumers(stream, WORKER_GROUP)}
    assert beating == [PROCESSOR_ID.encode()]
    assert consumers == {FIRST_CONSUMER, "second"}


async def test_leaving_stops_the_batcher_and_every_worker(
    make_system: Callable[[], InProcessSystem], clock: VirtualClock
) -> None:
    system = make_system()
    async with running(system):
        system.start_worker("second")
        await clock.settle()
        tasks = [task for _, task in system.workers]
        assert len(tasks) == 2 and not any(task.done() for task in tasks)
    assert all(task.done() and not task.cancelled() for task in tasks)  # stopped, not cancelled
    assert system.workers == []
    assert system.inbound.is_closed and system.outbound.is_closed


async def test_a_killed_worker_dies_at_once_and_the_others_run_on(
    make_system: Callable[[], InProcessSystem], clock: VirtualClock
) -> None:
    async with running(make_system()) as system:
        system.start_worker("doomed")
        await clock.settle()
        [(_, first), (_, doomed)] = system.workers
        await system.kill_worker()
        await clock.settle()
        assert doomed.cancelled() and not first.done()
        assert [task for _, task in system.workers] == [first]

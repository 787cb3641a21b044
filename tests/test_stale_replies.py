"""No stale replies: a draft the client's newer fragments overtook is dropped while the turn changed nothing.

The transcript of the issue: "Хочу записаться на мужскую стрижку", then, while the bot thinks, "послезавтра в 17";
the first draft (today's slots) must never reach the client, and the next turn answers both messages at once.
A fragment "arrives during the turn" once its batch is claimed and before the worker sends (the system cannot
tell when in that span): it is appended between the claim and `handle`. No sleeps, the injected clock only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest

from simulator.clock import VirtualClock
from system.booking.base import BackendUnavailable
from system.models import InboundMessage
from system.runtime import Runtime, build_worker
from system.store.queue import Delivery
from system.turn.context import Context, ContextStore, HistoryItem
from system.turn.records import TurnStage, TurnStore
from system.turn.stale import TurnEffects, drops_in_a_row
from system.turn.worker import Worker

from .conftest import next_turn
from .world import TZ, World, call, say, world_env

Factory = Callable[..., InboundMessage]
CLIENT = "79001234567"
FIRST = "Хочу записаться на мужскую стрижку"
SECOND = "послезавтра в 17"
STALE_DRAFT = "Свободно сегодня: 10:00, 10:15, 10:30. Какое время удобно?"

pytestmark = pytest.mark.usefixtures("driven")


@pytest.fixture
async def world() -> World:
    return World()


@pytest.fixture
async def start(make_runtime: Callable[..., Runtime], world: World) -> AsyncIterator[Callable[..., Any]]:
    """A started runtime (`env` adds settings to the world's) and a worker of it; or, given `rt`, another worker."""
    async with world.http() as http:

        async def make(*, rt: Runtime | None = None, consumer: str = "w1", **env: str) -> tuple[Runtime, Worker]:
            if rt is None:
                rt = make_runtime(**{**world_env(), "llm_max_retries": "0", **env})
                await rt.start()
            return rt, build_worker(rt, http=http, consumer=consumer, concurrency=1)

        yield make


async def client_writes(rt: Runtime, clock: VirtualClock, message: Factory, text: str, *, phone: str = CLIENT) -> None:
    """The client sends `text` while a turn of theirs is in flight: it waits in the open batch."""
    await rt.store.append(message(text, phone=phone, received_ms=clock.now_ms()), now_ms=clock.now_ms())


async def next_released(rt: Runtime, clock: VirtualClock) -> Delivery:
    """The batch the ack released, once its deadline passed: flushed and read."""
    clock.advance_to(clock.now_ms() + rt.settings.batch_timeout_ms)
    await rt.batcher(processor_id="b").tick()
    [delivery] = await rt.queue.read("w1", count=10, now_ms=clock.now_ms())
    return delivery


async def drafted_while_the_client_wrote(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory, *later: str, **env: str
) -> tuple[Runtime, Worker, Delivery]:
    """The client writes FIRST; the fragments `later` arrive while the turn drafts STALE_DRAFT; the turn is run."""
    rt, worker = await start(**env)
    world.llm_answers.appendleft(say(STALE_DRAFT))
    first = await next_turn(rt, clock, message, FIRST)
    for text in later:
        await client_writes(rt, clock, message, text)
    await worker.handle(first)
    return rt, worker, first


def dropped_total(rt: Runtime) -> float:
    return rt.metrics.registry.get_sample_value("aiadmin_stale_drafts_dropped_total") or 0.0


async def worker_context(rt: Runtime) -> Context:
    return await ContextStore(rt.redis, keys=rt.keys).load(962302, CLIENT)


def user_texts(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def test_a_draft_overtaken_by_new_fragments_is_dropped_and_the_next_turn_answers_both(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.append(say("Записать вас на мужскую стрижку послезавтра в 17:00?"))  # the next turn's
    rt, worker, first = await drafted_while_the_client_wrote(start, world, clock, message, SECOND)

    assert world.sent == []  # the stale draft never reaches the client
    record = await TurnStore(rt.redis, keys=rt.keys).get(first.job)
    assert (record.dropped, record.draft, record.stage, record.sent) == (True, STALE_DRAFT, TurnStage.DONE, False)
    assert dropped_total(rt) == 1
    assert (await rt.stats.collect())["stale_drafts_dropped"] == 1
    assert await rt.queue.in_flight() == 0  # acked: the waiting fragment is released as the next turn

    second = await next_released(rt, clock)
    assert second.job.text == SECOND
    await worker.handle(second)
    assert world.sent == [(CLIENT, "Записать вас на мужскую стрижку послезавтра в 17:00?")]
    # The model of the next turn reads the first message too, in one user message (some providers refuse two in
    # a row), and answers both.
    assert [m["role"] for m in world.llm_requests[-1]["messages"]] == ["system", "user"]
    assert user_texts(world.llm_requests[-1]) == [f"{FIRST}\n{SECOND}"]
    history = (await worker_context(rt)).history
    assert [(h.role, h.text) for h in history] == [
        ("client", FIRST),
        ("client", SECOND),
        ("admin", "Записать вас на мужскую стрижку послезавтра в 17:00?"),
    ]


async def test_a_redelivered_job_whose_draft_was_dropped_sends_nothing_and_asks_no_model(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    rt, _, first = await drafted_while_the_client_wrote(start, world, clock, message, SECOND)
    calls = len(world.llm_requests)

    _, again = await start(rt=rt, consumer="w2")
    await again.handle(first)  # the same job delivered again, as after a crash before the ack

    assert world.sent == [] and len(world.llm_requests) == calls
    assert [h.text for h in (await worker_context(rt)).history] == [FIRST]  # the client's text saved once
    assert dropped_total(rt) == 1


async def test_a_crash_after_the_drop_before_the_history_saves_it_on_redelivery(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    rt, worker = await start()
    first = await next_turn(rt, clock, message, FIRST)
    turns = TurnStore(rt.redis, keys=rt.keys)
    await turns.drop(first.job, STALE_DRAFT, now_ms=clock.now_ms())  # the worker died right after this write

    await worker.handle(first)

    assert world.sent == [] and world.llm_requests == []
    assert [h.text for h in (await worker_context(rt)).history] == [FIRST]
    assert (await turns.get(first.job)).stage is TurnStage.DONE
    assert await rt.queue.in_flight() == 0


BOOK_AT_15 = call("create_booking", service="Стрижка машинкой", datetime="2025-11-26T15:00", master="Сергей")
BOOKED_AT_15 = "Записал вас на стрижку машинкой завтра в 15:00 к Сергею."


async def test_a_turn_about_to_book_while_the_client_wrote_again_books_nothing_and_the_next_turn_decides(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    rt, worker = await start()
    world.llm_answers.extend([BOOK_AT_15, say(BOOKED_AT_15), say("Записал на 17:00.")])
    first = await next_turn(rt, clock, message, "запишите завтра на 15:00 на стрижку машинкой к Сергею")
    await client_writes(rt, clock, message, "нет, лучше в 17")
    await worker.handle(first)

    # The model asked to book at 15 after the client had changed his mind: the call never reached the CRM.
    assert world.records == {} and world.book_posts == 0 and world.sent == []
    assert len(world.llm_requests) == 1  # the turn stopped there: no answer was asked for
    record = await TurnStore(rt.redis, keys=rt.keys).get(first.job)
    assert record.dropped and record.draft.startswith("[create_booking ")
    assert dropped_total(rt) == 1

    await worker.handle(await next_released(rt, clock))
    assert user_texts(world.llm_requests[-1]) == [
        "запишите завтра на 15:00 на стрижку машинкой к Сергею\nнет, лучше в 17"
    ]
    assert world.sent == [(CLIENT, BOOKED_AT_15)]  # the scripted model booked again; what it read is what counts


async def test_a_turn_whose_earlier_attempt_began_a_booking_sends_its_reply_although_the_client_wrote(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    rt, worker = await start()
    world.llm_answers.extend([BOOK_AT_15, say(BOOKED_AT_15)])
    first = await next_turn(rt, clock, message, "запишите завтра на 15:00 на стрижку машинкой к Сергею")
    turns = TurnStore(rt.redis, keys=rt.keys)
    await turns.note_side_effects(first.job)  # an attempt that died while asking the CRM to book
    await client_writes(rt, clock, message, "и бороду тоже")
    await worker.handle(first)

    assert world.sent == [(CLIENT, BOOKED_AT_15)] and len(world.records) == 1
    record = await turns.get(first.job)
    assert (record.dropped, record.side_effects) == (False, True)
    assert dropped_total(rt) == 0


async def test_with_the_setting_off_the_stale_reply_is_sent_as_before(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    rt, _, _ = await drafted_while_the_client_wrote(start, world, clock, message, SECOND, drop_stale_replies="false")
    assert world.sent == [(CLIENT, STALE_DRAFT)]
    assert dropped_total(rt) == 0


async def test_a_client_writing_during_every_turn_is_answered_after_two_dropped_drafts(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    rt, worker = await start()
    world.llm_answers.extend(say(f"черновик {i}") for i in range(3))
    delivery = await next_turn(rt, clock, message, "вопрос")
    for i in range(3):
        await client_writes(rt, clock, message, f"ещё {i}")
        await worker.handle(delivery)
        if world.sent:
            break
        delivery = await next_released(rt, clock)

    assert world.sent == [(CLIENT, "черновик 2")]
    assert dropped_total(rt) == 2
    # The fragment written during the answered turn is still waiting for a turn of its own: nothing lost.
    assert (await next_released(rt, clock)).job.text == "ещё 2"


async def test_a_decided_reply_is_dropped_on_replay_only_when_its_turn_changed_nothing(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    rt, worker = await start()
    turns = TurnStore(rt.redis, keys=rt.keys)
    unchanged = await next_turn(rt, clock, message, FIRST, phone="79001112233")
    changed = await next_turn(rt, clock, message, FIRST, phone="79004445566")
    # Both replies were decided by an attempt that failed to send; then the clients wrote again.
    await turns.save_reply(unchanged.job, STALE_DRAFT, side_effects=False)
    await turns.save_reply(changed.job, "Записал вас!", side_effects=True)
    for job in (unchanged.job, changed.job):
        await client_writes(rt, clock, message, SECOND, phone=job.phone)

    await worker.handle(unchanged)
    await worker.handle(changed)

    assert world.sent == [("79004445566", "Записал вас!")] and world.llm_requests == []
    assert (await turns.get(unchanged.job)).draft == STALE_DRAFT


async def test_a_sealed_batch_written_during_the_turn_overtakes_the_draft_too(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    # The second fragment seals the batch (at most 2): no open buffer is left, only the sealed one.
    rt, _, _ = await drafted_while_the_client_wrote(
        start, world, clock, message, SECOND, "к Сергею", max_batch_size="2"
    )
    assert world.sent == [] and dropped_total(rt) == 1
    _, conv = rt.keys.conversation(962302, CLIENT)
    assert (await rt.redis.exists(conv.buf), await rt.redis.exists(conv.sealed)) == (0, 1)  # still waiting


async def test_without_new_fragments_nothing_is_dropped(
    start: Callable[..., Any], world: World, clock: VirtualClock, message: Factory
) -> None:
    rt, worker = await start()
    world.llm_answers.append(say("Здравствуйте!"))
    await worker.handle(await next_turn(rt, clock, message, "привет"))
    assert world.sent == [(CLIENT, "Здравствуйте!")]
    assert (await rt.stats.collect())["stale_drafts_dropped"] == 0


# --- the pieces ------------------------------------------------------------------------------------------


def test_drops_in_a_row_count_the_unanswered_client_texts_at_the_end_of_the_history() -> None:
    client, admin = HistoryItem("client", "a", 1), HistoryItem("admin", "b", 2)
    assert drops_in_a_row(()) == 0
    assert drops_in_a_row((client, admin)) == 0
    assert drops_in_a_row((client, admin, client, client)) == 2


class _DownCrm:
    """A CRM whose writes time out (whether they happened is unknown); it logs what it was asked, in order."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def cancel(self, company_id: int, record_id: int) -> None:
        self.log.append("cancel")
        raise BackendUnavailable("timeout")


def _effects(log: list[str]) -> TurnEffects:
    async def noted() -> None:
        log.append("noted")

    return TurnEffects(_DownCrm(log), changed=False, before_first_write=noted)  # type: ignore[arg-type]


async def test_a_write_counts_as_a_side_effect_once_attempted_whatever_its_outcome() -> None:
    log: list[str] = []
    effects = _effects(log)
    effects.saw("create_booking", {"error": "это время занято", "next_free": []})
    effects.saw("search_slots", {"slots": []})
    assert effects.changed is False
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await effects.cancel(962302, 1)
    assert effects.changed is True
    assert log == ["noted", "cancel", "cancel"]  # the turn record knows before the CRM is asked, once


def test_a_booking_found_made_by_an_earlier_attempt_is_a_side_effect() -> None:
    effects = _effects([])
    at = datetime(2025, 11, 26, 15, 0, tzinfo=TZ).isoformat()
    effects.saw("create_booking", {"booked": {"datetime": at}, "note": "клиент уже записан на это время"})
    assert effects.changed is True

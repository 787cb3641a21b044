"""The worker's turns against the respx world (LLM, YClients, WhatsApp), on fakeredis and on real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from simulator.clock import VirtualClock
from system.ingest.payloads import ParseResult
from system.models import DeliveryStatus, InboundMessage, StatusUpdate
from system.runtime import Runtime, build_worker
from system.settings import Settings
from system.store.cluster import is_cluster
from system.store.queue import Delivery
from system.turn.records import TurnStore
from system.turn.worker import FALLBACK_REPLY, Worker

from .conftest import START_MS, next_turn
from .world import TZ, USAGE, World, call, say, world_env

Factory = Callable[..., InboundMessage]
CLIENT = "79001234567"
TOMORROW_15 = datetime(2025, 11, 26, 15, 0, tzinfo=TZ)  # START_MS is 2025-11-25 13:00 in Moscow
# Two paragraphs of about 3,800 characters: more than one WhatsApp text (4,096), so two parts.
LONG_REPLY = ("Первый абзац ответа. " * 180).strip() + "\n\n" + ("Второй абзац ответа. " * 180).strip()
CLIENT_WROTE_TO = "109876543210987"  # another business number of the same salon


pytestmark = pytest.mark.usefixtures("driven")  # waits on the clock (rate limits, backoffs) end at once


@pytest.fixture
async def world() -> World:
    return World()


@pytest.fixture
async def http(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async with world.http() as client:
        yield client


@pytest.fixture
async def rt(make_runtime: Callable[..., Runtime]) -> Runtime:
    runtime = make_runtime(**{**world_env(), "llm_max_retries": "0"})
    await runtime.start()
    return runtime


@pytest.fixture
def worker(rt: Runtime, http: httpx.AsyncClient) -> Worker:
    return build_worker(rt, http=http, consumer="w1", concurrency=4)


async def test_booking_end_to_end_creates_the_record_and_answers_once(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.extend(
        [
            call("search_slots", service="стрижка машинкой", date="2025-11-26"),
            call("create_booking", service="Стрижка машинкой", datetime="2025-11-26T15:00", master="Сергей"),
            say("Записал вас на стрижку машинкой завтра в 15:00 к Сергею."),
        ]
    )
    delivery = await next_turn(rt, clock, message, "Хочу записаться", "на стрижку машинкой", "завтра в 15:00")
    await worker.handle(delivery)

    assert world.sent == [(CLIENT, "Записал вас на стрижку машинкой завтра в 15:00 к Сергею.")]
    [record] = world.records.values()
    assert (record["staff_id"], record["services"][0]["id"]) == (10, 1)
    assert datetime.fromisoformat(record["datetime"]) == TOMORROW_15
    assert record["client"]["phone"] == "+" + CLIENT
    first_request = world.llm_requests[0]
    assert first_request["messages"][-1] == {
        "role": "user",
        "content": "Хочу записаться на стрижку машинкой завтра в 15:00",
    }
    assert "вторник, 25 ноября 2025" in first_request["messages"][0]["content"]
    assert {t["function"]["name"] for t in first_request["tools"]} >= {
        "search_slots",
        "create_booking",
        "cancel_booking",
    }
    assert await rt.queue.in_flight() == 0
    assert world.read_receipts == [delivery.job.messages[-1].message_id]  # read receipt + typing first


async def test_context_keys_are_written_with_their_ttls(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.extend([call("save_client_name", name="Иван"), say("Приятно познакомиться, Иван!")])
    await worker.handle(await next_turn(rt, clock, message, "Меня зовут Иван"))

    keys = rt.keys.context(962302, CLIENT)
    # The reference system's name; on a cluster its client part is a hash tag (one slot for the three keys).
    assert keys.dialog == (f"dialog:{{962302:{CLIENT}}}" if rt.settings.redis_cluster else f"dialog:962302:{CLIENT}")
    ttl = {name: await rt.redis.ttl(name) for name in (keys.dialog, keys.messages, keys.preferences)}
    assert 0 < ttl[keys.dialog] <= 24 * 3600
    assert 24 * 3600 < ttl[keys.messages] <= 30 * 24 * 3600
    assert 30 * 24 * 3600 < ttl[keys.preferences] <= 90 * 24 * 3600
    assert (await rt.redis.hget(keys.preferences, "name")) == b"\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd"
    assert await rt.redis.llen(keys.messages) == 2


async def test_slot_taken_offers_the_next_free_slots(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.busy.add(TOMORROW_15)  # another client took it
    seen: list[dict[str, Any]] = []

    def answer_after_tool(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body["messages"][-1])
        return say("15:00 занято, есть 16:00.")

    world.llm_answers.extend(
        [
            call("create_booking", service="Стрижка машинкой", datetime="2025-11-26T15:00", master="Сергей"),
            answer_after_tool,
        ]
    )
    await worker.handle(await next_turn(rt, clock, message, "запишите на завтра в 15 на стрижку машинкой"))

    assert world.records == {}
    tool_result = seen[0]
    assert tool_result["role"] == "tool"
    assert "занято" in tool_result["content"] and "2025-11-26T16:00" in tool_result["content"]


async def test_unknown_service_is_not_invented(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    results: list[str] = []
    world.llm_answers.extend(
        [
            call("search_slots", service="маникюр", date="2025-11-26"),
            lambda body: results.append(body["messages"][-1]["content"]) or say("Маникюра у нас нет."),  # type: ignore[func-returns-value]
        ]
    )
    await worker.handle(await next_turn(rt, clock, message, "хочу маникюр"))
    assert "нет услуги" in results[0] and "Стрижка машинкой" in results[0]
    assert world.records == {}


async def test_cancel_own_booking_and_nobody_elses(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    mine = world.add_record(phone=CLIENT, at=TOMORROW_15)
    theirs = world.add_record(phone="79007654321", at=TOMORROW_15.replace(hour=16))
    world.llm_answers.extend(
        [
            call("cancel_booking", record_id=theirs),
            call("list_my_bookings"),
            call("cancel_booking", record_id=mine),
            say("Отменил вашу запись."),
        ]
    )
    await worker.handle(await next_turn(rt, clock, message, "отмените все записи"))
    assert set(world.records) == {theirs}


async def test_reschedule_moves_own_booking(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    mine = world.add_record(phone=CLIENT, at=TOMORROW_15)
    world.llm_answers.extend(
        [call("reschedule_booking", record_id=mine, datetime="2025-11-27T12:00"), say("Перенёс на послезавтра 12:00.")]
    )
    await worker.handle(await next_turn(rt, clock, message, "перенесите на послезавтра в 12"))
    assert datetime.fromisoformat(world.records[mine]["datetime"]) == datetime(2025, 11, 27, 12, 0, tzinfo=TZ)


async def test_llm_down_sends_a_polite_fallback_and_dead_letters_the_job(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.append(httpx.Response(503, json={"error": {"message": "overloaded"}}))
    await worker.handle(await next_turn(rt, clock, message, "привет"))
    assert world.sent == [(CLIENT, FALLBACK_REPLY)]
    [letter] = await rt.queue.dead_letters()
    assert "LLM" in letter.error
    assert await rt.queue.in_flight() == 0


async def test_outside_24h_window_is_not_retried_and_is_recorded(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.whatsapp_errors.append((400, 131047))
    world.llm_answers.append(say("Здравствуйте!"))
    await worker.handle(await next_turn(rt, clock, message, "привет"))
    assert world.sent == []
    [letter] = await rt.queue.dead_letters()
    assert "131047" in letter.error
    assert letter.job is not None and letter.job.attempt == 1


async def test_redelivered_job_sends_no_second_reply_and_books_once(
    rt: Runtime, http: httpx.AsyncClient, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.extend(
        [
            call("create_booking", service="Стрижка машинкой", datetime="2025-11-26T15:00", master="Сергей"),
            say("Записал!"),
        ]
    )
    delivery = await next_turn(rt, clock, message, "запишите завтра на 15:00 на стрижку машинкой к Сергею")
    first = build_worker(rt, http=http, consumer="w1", concurrency=1)
    await first.handle(delivery)
    # The same job delivered again (as after a crash before the ack): nothing new reaches the client or the CRM.
    second = build_worker(rt, http=http, consumer="w2", concurrency=1)
    await second.handle(delivery)
    assert world.sent == [(CLIENT, "Записал!")]
    assert len(world.records) == 1
    assert len(world.llm_requests) == 2


async def test_whatsapp_throughput_limit_is_retried_and_delivered(
    make_runtime: Callable[..., Runtime], http: httpx.AsyncClient, world: World, clock: VirtualClock, message: Factory
) -> None:
    rt = make_runtime(**world_env())
    await rt.start()
    worker = build_worker(rt, http=http, consumer="w1", concurrency=1)
    world.whatsapp_errors.append((400, 130429))
    world.llm_answers.append(say("Здравствуйте!"))
    await worker.handle(await next_turn(rt, clock, message, "привет"))
    assert world.sent == [(CLIENT, "Здравствуйте!")]
    assert await rt.queue.dead_letters() == []


async def test_fragments_written_while_the_bot_thinks_are_answered_in_the_next_turn(
    make_runtime: Callable[..., Runtime], http: httpx.AsyncClient, world: World, clock: VirtualClock, message: Factory
) -> None:
    # With stale drafts sent (the setting off) both replies go out; with it on, see tests/test_stale_replies.py.
    rt = make_runtime(**world_env(), drop_stale_replies="false")
    await rt.start()
    worker = build_worker(rt, http=http, consumer="w1", concurrency=1)
    world.llm_answers.extend([say("Первый ответ"), say("Второй ответ")])
    first = await next_turn(rt, clock, message, "вопрос один")
    await rt.store.append(message("вопрос два", received_ms=clock.now_ms()), now_ms=clock.now_ms())
    clock.advance_to(clock.now_ms() + 9000)
    processor = rt.batcher(processor_id="b")
    await processor.tick()
    assert await rt.queue.read("w1", count=10, now_ms=clock.now_ms()) == []  # held back while the first turn runs
    await worker.handle(first)
    await processor.tick()
    [second] = await rt.queue.read("w1", count=10, now_ms=clock.now_ms())
    assert second.job.text == "вопрос два"
    await worker.handle(second)
    assert [text for _, text in world.sent] == ["Первый ответ", "Второй ответ"]
    assert world.llm_requests[1]["messages"][-3:-1] == [
        {"role": "user", "content": "вопрос один"},
        {"role": "assistant", "content": "Первый ответ"},
    ]


async def test_stop_lets_a_turn_in_flight_finish(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    thinking, answer = asyncio.Event(), asyncio.Event()

    async def slow_model(body: dict[str, Any]) -> dict[str, Any]:
        thinking.set()
        await answer.wait()
        return say("Готово!")

    world.llm_answers.append(slow_model)
    await next_turn_enqueued(rt, clock, message, "привет")
    runner = asyncio.create_task(worker.run())
    await thinking.wait()
    worker.stop()
    answer.set()
    await runner
    assert world.sent == [(CLIENT, "Готово!")]
    assert await rt.queue.in_flight() == 0


async def test_turns_past_the_shutdown_deadline_are_left_for_the_reclaim(
    redis: Redis, make_settings: Callable[..., Settings], http: httpx.AsyncClient, world: World, message: Factory
) -> None:
    # A clock of its own that nothing drives: the stuck model call never times out during the test.
    clock = VirtualClock(start_ms=START_MS)
    rt = Runtime.build(make_settings(**{**world_env(), "worker_shutdown_s": "0.05"}), redis=redis, clock=clock)
    await rt.start()
    worker = build_worker(rt, http=http, consumer="w1", concurrency=2)
    thinking = asyncio.Event()

    async def stuck_model(body: dict[str, Any]) -> dict[str, Any]:
        thinking.set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    world.llm_answers.append(stuck_model)
    await next_turn_enqueued(rt, clock, message, "привет")
    runner = asyncio.create_task(worker.run())
    await thinking.wait()
    worker.stop()
    await runner
    assert world.sent == []
    assert await rt.queue.in_flight() == 1  # still pending: another worker reclaims it after the visibility timeout


async def test_a_flush_that_deletes_the_consumer_group_does_not_stop_the_worker(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    answered = asyncio.Event()

    async def model(body: dict[str, Any]) -> dict[str, Any]:
        answered.set()
        return say("Ответ после сброса")

    world.llm_answers.append(model)
    runner = asyncio.create_task(worker.run())
    channel = rt.queue.keys.all_shards[0].jobs_channel
    while (await subscribers(rt.redis, channel)) == 0:  # the worker is up: groups made, listening
        await asyncio.sleep(0)
    await rt.redis.flushdb()  # the queue streams and the workers' group are gone
    await next_turn_enqueued(rt, clock, message, "привет")
    # The clock is driven (the fixtures' driver): the worker's failed polls, its backoff and the group made
    # again pass in virtual time; the wall-clock bound only stops a broken worker from hanging the test.
    await asyncio.wait_for(answered.wait(), timeout=20)
    worker.stop()
    await runner
    assert world.sent == [(CLIENT, "Ответ после сброса")]
    assert await rt.queue.in_flight() == 0


async def subscribers(redis: Redis, channel: str) -> int:
    """Subscribers of `channel`; on a cluster every node counts only its own, so all are asked."""
    if is_cluster(redis):
        [(_, count)] = await redis.pubsub_numsub(channel, target_nodes=RedisCluster.ALL_NODES)  # type: ignore[call-arg]
    else:
        [(_, count)] = await redis.pubsub_numsub(channel)
    return int(count)


async def next_turn_enqueued(rt: Runtime, clock: VirtualClock, message: Factory, *texts: str) -> None:
    for text in texts:
        await rt.store.append(message(text, received_ms=clock.now_ms()), now_ms=clock.now_ms())
    clock.advance_to(clock.now_ms() + rt.settings.batch_timeout_ms)
    processor = rt.batcher(processor_id="b")
    await processor.tick()


# --- sending: parts resumed, the number replied from, status pointers -----------------------------------


class FlakyWorld(World):
    """WhatsApp fails the sends of the texts starting with `failing_prefix`, `failures` times (HTTP 500, 131000)."""

    def __init__(self, *, failing_prefix: str, failures: int) -> None:
        super().__init__()
        self.failing_prefix = failing_prefix
        self.failures = failures

    def _whatsapp(self, request: httpx.Request) -> httpx.Response:
        text = orjson.loads(request.content).get("text", {}).get("body", "")
        if self.failures and text.startswith(self.failing_prefix):
            self.failures -= 1
            return httpx.Response(500, json={"error": {"message": "error", "type": "OAuthException", "code": 131000}})
        return super()._whatsapp(request)


async def redeliver(rt: Runtime, clock: VirtualClock) -> Delivery:
    """The job retried after a failed attempt: due again after its backoff, read again."""
    clock.advance_to(clock.now_ms() + int(rt.settings.retry_backoff_max_s * 1000) + 1000)
    await rt.queue.promote_due(now_ms=clock.now_ms())
    [delivery] = await rt.queue.read("w1", count=10, now_ms=clock.now_ms())
    return delivery


def posted_to(world: World) -> list[str]:
    """The path of every WhatsApp request (sends and read receipts), in order."""
    return [call.request.url.path for call in world.router.calls if "/messages" in call.request.url.path]


async def test_long_reply_whose_second_part_failed_resends_only_the_second_part(
    rt: Runtime, clock: VirtualClock, message: Factory
) -> None:
    flaky = FlakyWorld(failing_prefix="Второй", failures=rt.settings.whatsapp_max_retries + 1)
    flaky.llm_answers.append(say(LONG_REPLY))
    async with flaky.http() as http:
        worker = build_worker(rt, http=http, consumer="w1", concurrency=1)
        await worker.handle(await next_turn(rt, clock, message, "расскажите подробно про все услуги"))
        [(_, first)] = flaky.sent  # part 1 reached the client; part 2 failed every retry of this attempt
        assert first.startswith("Первый") and len(first) <= 4096
        assert await rt.queue.dead_letters() == []  # a transient failure: the job is retried

        await worker.handle(await redeliver(rt, clock))

    assert [text for _, text in flaky.sent] == [first, flaky.sent[1][1]]
    assert flaky.sent[1][1].startswith("Второй")
    assert " ".join(text for _, text in flaky.sent).split() == LONG_REPLY.split()  # nothing lost, nothing twice
    assert len(flaky.llm_requests) == 1  # the redelivery replayed the stored reply
    assert await rt.queue.in_flight() == 0


async def test_each_sent_part_is_recorded_in_the_turn_with_a_status_pointer(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.append(say(LONG_REPLY))
    delivery = await next_turn(rt, clock, message, "расскажите подробно")
    await worker.handle(delivery)

    turns = TurnStore(rt.redis, keys=rt.keys)
    record = await turns.get(delivery.job)
    assert record.sent_ids == ("wamid.out1", "wamid.out2")  # index-aligned with the parts
    for wamid in record.sent_ids:
        status = rt.keys.status(wamid)
        assert await rt.redis.hget(status, "turn") == turns.key(delivery.job).encode()
        assert 6 * 24 * 3600 < await rt.redis.ttl(status) <= 7 * 24 * 3600


async def test_a_failed_delivery_reported_on_the_turn_is_read_back(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.append(say("Здравствуйте!"))
    delivery = await next_turn(rt, clock, message, "привет")
    await worker.handle(delivery)
    turns = TurnStore(rt.redis, keys=rt.keys)
    assert (await turns.get(delivery.job)).delivery_failed is None
    # What the ingest does on a `failed` status (131047: outside the 24-hour window): it follows the pointer.
    turn_key = await rt.redis.hget(rt.keys.status("wamid.out1"), "turn")
    assert turn_key is not None
    await rt.redis.hset(turn_key, mapping={"delivery": "failed", "delivery_error": "131047"})
    assert (await turns.get(delivery.job)).delivery_failed == "131047"


async def test_a_reply_rejected_later_outside_the_window_marks_its_turn_failed(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.append(say(LONG_REPLY))
    delivery = await next_turn(rt, clock, message, "расскажите подробно")
    await worker.handle(delivery)
    # Meta accepted both parts (200 and a wamid), then reports the second one failed: 131047.
    failed = StatusUpdate("wamid.out2", DeliveryStatus.FAILED, CLIENT, clock.now_ms(), error_code=131047)
    await rt.ingestor.ingest(ParseResult(statuses=(failed,)))
    assert (await TurnStore(rt.redis, keys=rt.keys).get(delivery.job)).delivery_failed == "131047"


async def test_the_apology_parts_get_status_pointers_too(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.append(httpx.Response(503, json={"error": {"message": "overloaded"}}))
    delivery = await next_turn(rt, clock, message, "привет")
    await worker.handle(delivery)
    assert world.sent == [(CLIENT, FALLBACK_REPLY)]
    turns = TurnStore(rt.redis, keys=rt.keys)
    record = await turns.get(delivery.job)
    assert (record.fallback_ids, record.sent_ids) == (("wamid.out1",), ())
    assert await rt.redis.hget(rt.keys.status("wamid.out1"), "turn") == turns.key(delivery.job).encode()


async def test_reply_goes_out_from_the_number_the_client_wrote_to(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    def to_other_number(text: str, **kwargs: object) -> InboundMessage:
        return dataclasses.replace(message(text, **kwargs), phone_number_id=CLIENT_WROTE_TO)

    world.llm_answers.append(say("Здравствуйте!"))
    await worker.handle(await next_turn(rt, clock, to_other_number, "привет"))
    assert world.sent == [(CLIENT, "Здравствуйте!")]
    # The read receipt and the reply both use the number written to, not AIADMIN_WHATSAPP_PHONE_NUMBER_ID.
    paths = posted_to(world)
    assert len(paths) == 2 and all(p.endswith(f"/{CLIENT_WROTE_TO}/messages") for p in paths)


async def test_without_any_sending_number_the_job_is_a_dead_letter_and_nothing_is_posted(
    make_runtime: Callable[..., Runtime], world: World, clock: VirtualClock, message: Factory
) -> None:
    env = {k: v for k, v in world_env().items() if k != "whatsapp_phone_number_id"}
    rt = make_runtime(**env)
    await rt.start()
    world.llm_answers.append(say("Здравствуйте!"))
    async with world.http() as http:
        worker = build_worker(rt, http=http, consumer="w1", concurrency=1)
        # A gateway-format message names no number; the default salon has none and neither has the setting.
        await worker.handle(await next_turn(rt, clock, message, "привет"))
    [letter] = await rt.queue.dead_letters()
    assert "no sending number" in letter.error
    assert posted_to(world) == []  # never a POST to `{api}//messages`
    assert world.llm_requests == []  # refused before the model or the CRM were asked anything


async def test_a_gateway_needs_no_sending_number(
    make_runtime: Callable[..., Runtime], clock: VirtualClock, message: Factory
) -> None:
    env = {k: v for k, v in world_env().items() if k != "whatsapp_phone_number_id"}
    rt = make_runtime(**env, whatsapp_transport="gateway", whatsapp_gateway_url="http://gateway.test")
    await rt.start()
    sent: list[bytes] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(200, json={"id": "gw-1"})

    world = World()
    world.router.post("http://gateway.test/send").mock(side_effect=gateway)
    world.llm_answers.append(say("Здравствуйте!"))
    async with world.http() as http:
        worker = build_worker(rt, http=http, consumer="w1", concurrency=1)
        await worker.handle(await next_turn(rt, clock, message, "привет"))
    assert len(sent) == 1
    assert await rt.queue.dead_letters() == []


# --- limits on what one model answer may do ------------------------------------------------------------------


def calls_at_once(tool: str, arguments: list[dict[str, Any]]) -> dict[str, Any]:
    """One crafted model answer calling `tool` once per item of `arguments`."""
    answer = call(tool)
    answer["choices"][0]["message"]["tool_calls"] = [
        {"id": f"call_{i}", "type": "function", "function": {"name": tool, "arguments": orjson.dumps(args).decode()}}
        for i, args in enumerate(arguments)
    ]
    return answer


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool results the model was shown in one request, decoded."""
    return [orjson.loads(m["content"]) for m in request["messages"] if m["role"] == "tool"]


def refused(rt: Runtime, reason: str) -> float:
    return rt.metrics.registry.get_sample_value("aiadmin_tool_calls_refused_total", {"reason": reason}) or 0.0


async def test_one_model_answer_with_44_bookings_books_one_visit(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    slots = [f"2025-11-{day}T{hour}:00" for day in (26, 27, 28, 29) for hour in range(10, 21)]
    world.llm_answers.extend(
        [
            calls_at_once("create_booking", [{"service": "Стрижка машинкой", "datetime": at} for at in slots]),
            say("Записал вас на завтра в 10:00."),
        ]
    )
    await worker.handle(await next_turn(rt, clock, message, "запишите меня"))

    assert len(slots) == 44 and len(world.records) == 1 and world.book_posts == 1
    results = tool_results(world.llm_requests[1])
    assert len(results) == 44  # every call is answered, as the API requires
    assert "booked" in results[0]
    assert all("error" in r and "refused" in r for r in results[1:])  # the model sees why: never executed
    assert (refused(rt, "bookings"), refused(rt, "per_completion")) == (7, 36)
    assert world.sent == [(CLIENT, "Записал вас на завтра в 10:00.")]


async def test_rounds_of_200_searches_run_at_most_the_turns_tool_calls(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    search = {"service": "Стрижка машинкой", "date": "2025-11-26"}
    world.llm_answers.extend([calls_at_once("search_slots", [search] * 200) for _ in range(5)])
    world.llm_answers.append(say("Есть время завтра с 10:00."))
    await worker.handle(await next_turn(rt, clock, message, "когда можно подстричься?"))

    per_turn = rt.settings.llm_max_tool_calls_per_turn
    executed = [r for r in tool_results(world.llm_requests[-1]) if "refused" not in r]
    assert len(executed) == per_turn == 16
    crm_slot_requests = [c for c in world.router.calls if "/book_times/" in c.request.url.path]
    assert len(crm_slot_requests) <= per_turn  # one day each: at most one CRM slot request per executed search
    assert refused(rt, "per_completion") == 5 * (200 - rt.settings.llm_max_tool_calls)
    assert refused(rt, "per_turn") == 3 * rt.settings.llm_max_tool_calls
    assert world.sent == [(CLIENT, "Есть время завтра с 10:00.")]


async def test_a_second_booking_in_one_turn_is_allowed_when_the_salon_allows_several(
    make_runtime: Callable[..., Runtime], http: httpx.AsyncClient, world: World, clock: VirtualClock, message: Factory
) -> None:
    rt = make_runtime(**world_env(), max_bookings_per_turn="2")
    await rt.start()
    worker = build_worker(rt, http=http, consumer="w1", concurrency=1)
    visits = [{"service": "Стрижка машинкой", "datetime": f"2025-11-2{day}T12:00"} for day in (6, 7, 8)]
    world.llm_answers.extend([calls_at_once("create_booking", visits), say("Записал на два визита.")])
    await worker.handle(await next_turn(rt, clock, message, "запишите на два визита"))
    assert len(world.records) == 2
    assert refused(rt, "bookings") == 1


async def test_model_quality_and_cost_are_counted_for_evaluating_a_model(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.llm_answers.extend(
        [
            call("save_client_name", name="Иван"),
            call("book_everything"),  # no such tool
            call("search_slots", date=17),  # arguments of the wrong type
            say("Приятно познакомиться, Иван!"),
        ]
    )
    await worker.handle(await next_turn(rt, clock, message, "Меня зовут Иван"))

    def sample(name: str, **labels: str) -> float | None:
        return rt.metrics.registry.get_sample_value(name, labels)

    assert sample("aiadmin_llm_completions_total", outcome="ok") == 4
    assert sample("aiadmin_llm_tool_calls_total", outcome="ok") == 1
    assert sample("aiadmin_llm_tool_calls_total", outcome="unknown_tool") == 1
    assert sample("aiadmin_llm_tool_calls_total", outcome="invalid_arguments") == 1
    assert sample("aiadmin_llm_tokens_total", kind="prompt") == 4 * USAGE["prompt_tokens"]
    assert sample("aiadmin_llm_tokens_total", kind="completion") == 4 * USAGE["completion_tokens"]

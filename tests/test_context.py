"""Context and turn-record stores: one contract on fakeredis and on real Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from system.models import BatchedMessage, Job, MessageKind
from system.store.keys import Retention
from system.turn.context import ContextStore, ContextUpdate, Dialog, HistoryItem, Preferences, remember_service
from system.turn.records import TurnStage, TurnStore
from tests.conftest import keys_for

PHONE = "79001234567"


def update(n: int) -> ContextUpdate:
    return ContextUpdate(
        new_messages=(HistoryItem("client", f"вопрос {n}", n), HistoryItem("admin", f"ответ {n}", n + 1)),
        dialog=Dialog(stage="choosing", draft={"service": "Стрижка машинкой"}, offered_slots=("2025-11-26T15:00",)),
        preferences=remember_service(Preferences(name="Иван"), "Стрижка машинкой"),
    )


def turn_job(message_id: str) -> Job:
    """The job of a one-message turn of PHONE's."""
    return Job(
        batch_id=f"962302:{PHONE}:{message_id}",
        company_id=962302,
        phone=PHONE,
        messages=(BatchedMessage(message_id, "привет", MessageKind.TEXT, 1),),
        enqueued_ms=1,
    )


async def test_a_turn_is_read_back_as_written(redis: Redis) -> None:
    store = ContextStore(redis, keys=keys_for(redis))
    await store.save(962302, PHONE, update(1))
    ctx = await store.load(962302, PHONE)
    assert ctx.dialog.draft == {"service": "Стрижка машинкой"}
    assert ctx.dialog.offered_slots == ("2025-11-26T15:00",)
    assert ctx.preferences.usual_services == ("Стрижка машинкой",)
    assert [h.text for h in ctx.history] == ["вопрос 1", "ответ 1"]


async def test_history_keeps_the_last_50_messages(redis: Redis) -> None:
    store = ContextStore(redis, keys=keys_for(redis))
    for n in range(40):
        await store.save(962302, PHONE, update(n))
    ctx = await store.load(962302, PHONE)
    assert len(ctx.history) == 50
    assert ctx.history[-1].text == "ответ 39"
    assert await redis.llen(keys_for(redis).context(962302, PHONE).messages) == 50


async def test_an_unknown_client_has_an_empty_context(redis: Redis) -> None:
    ctx = await ContextStore(redis, keys=keys_for(redis)).load(962302, PHONE)
    assert (ctx.dialog, ctx.history, ctx.preferences) == (Dialog(), (), Preferences())


async def test_the_same_phone_in_two_salons_has_two_contexts(redis: Redis) -> None:
    store = ContextStore(redis, keys=keys_for(redis))
    await store.save(962302, PHONE, update(1))
    assert (await store.load(100500, PHONE)).history == ()


async def test_turn_records_move_forward_and_expire(redis: Redis) -> None:
    turns = TurnStore(redis, keys=keys_for(redis))
    job = turn_job("wamid.1")
    assert (await turns.get(job)).stage is TurnStage.NEW
    await turns.save_reply(job, "Здравствуйте!")
    assert (await turns.get(job)).reply == "Здравствуйте!"
    await turns.mark_sent(job, ["wamid.out1"])
    record = await turns.get(job)
    assert (record.sent, record.sent_ids) == (True, ("wamid.out1",))
    assert 0 < await redis.ttl(turns.key(job)) <= 7 * 24 * 3600


async def test_changed_number_moves_the_conversation_to_the_new_number(redis: Redis) -> None:
    store = ContextStore(redis, keys=keys_for(redis))
    await store.save(962302, PHONE, update(1))
    assert await store.move(962302, PHONE, "79009998877") is True
    moved = await store.load(962302, "79009998877")
    assert [h.text for h in moved.history] == ["вопрос 1", "ответ 1"]
    assert moved.preferences.name == "Иван"
    assert 0 < await redis.ttl(keys_for(redis).context(962302, "79009998877").dialog) <= 24 * 3600
    assert (await store.load(962302, PHONE)).history == ()
    assert await store.move(962302, PHONE, "79009998877") is False  # a repeat finds nothing to move


async def test_changed_number_keeps_a_context_the_new_number_already_has(redis: Redis) -> None:
    store = ContextStore(redis, keys=keys_for(redis))
    await store.save(962302, PHONE, update(1))
    await store.save(962302, "79009998877", update(7))
    assert await store.move(962302, PHONE, "79009998877") is False
    assert [h.text for h in (await store.load(962302, "79009998877")).history] == ["вопрос 7", "ответ 7"]
    assert [h.text for h in (await store.load(962302, PHONE)).history] == ["вопрос 1", "ответ 1"]


async def test_turn_saved_twice_after_a_crash_between_its_two_writes_lands_in_the_context_once(redis: Redis) -> None:
    # The context and the turn record are two writes (two slots on a cluster); a redelivery repeats both.
    keys = keys_for(redis)
    store, turns = ContextStore(redis, keys=keys), TurnStore(redis, keys=keys)
    job = Job(
        batch_id="962302:79001234567:wamid.9",
        company_id=962302,
        phone=PHONE,
        messages=(BatchedMessage("wamid.9", "вопрос 1", MessageKind.TEXT, 1),),
        enqueued_ms=1,
    )
    assert await store.save(962302, PHONE, update(1), also=turns.done_fields(job)) is True
    assert await store.save(962302, PHONE, update(1), also=turns.done_fields(job)) is False
    assert [h.text for h in (await store.load(962302, PHONE)).history] == ["вопрос 1", "ответ 1"]
    assert (await turns.get(job)).stage is TurnStage.DONE
    assert await store.save(962302, PHONE, update(2)) is True  # the next turn is written as usual
    assert len((await store.load(962302, PHONE)).history) == 4


async def test_the_deployment_s_retention_sets_every_context_and_turn_ttl(redis: Redis) -> None:
    keys = keys_for(redis, retention=Retention(dialog_s=60, messages_s=120, preferences_s=180, turn_s=240))
    store, turns = ContextStore(redis, keys=keys), TurnStore(redis, keys=keys)
    await store.save(962302, PHONE, update(1))
    job = turn_job("wamid.7")
    await turns.save_reply(job, "Здравствуйте!")
    k = keys.context(962302, PHONE)
    ttls = {key: await redis.ttl(key) for key in (k.dialog, k.messages, k.preferences, turns.key(job))}
    assert list(ttls.values()) == [60, 120, 180, 240], ttls  # just written: whole seconds left

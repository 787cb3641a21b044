"""Redis Cluster specifics: slots per script, shards spread over the masters, the WAIT for replicas."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from loadtests.bench._lanes import TOUCH, LanesConfig, run_lanes
from simulator.clock import VirtualClock
from system.ingest.batch_store import AppendOutcome
from system.ingest.routes import create_app
from system.models import InboundMessage
from system.runtime import Runtime
from system.settings import CLUSTER_SHARDS, Settings
from system.store.cluster import as_cluster
from system.store.keys import Keys
from system.store.scripts import ReplicaWaitTimeout, Script, ScriptBatch

from .conftest import CLUSTER_URL, START_MS

Factory = Callable[..., InboundMessage]
GATEWAY = "/webhook/whatsapp/batched"
JSON = {"content-type": "application/json"}


def test_cluster_keys_tag_the_context_and_keep_the_reference_names_on_one_server() -> None:
    assert Keys().context(962302, "79001234567").dialog == "dialog:962302:79001234567"
    tagged = Keys(cluster=True).context(962302, "79001234567")
    assert (tagged.dialog, tagged.messages, tagged.preferences) == (
        "dialog:{962302:79001234567}",
        "messages:{962302:79001234567}",
        "preferences:{962302:79001234567}",
    )
    assert len({key_slot(k.encode()) for k in (tagged.dialog, tagged.messages, tagged.preferences)}) == 1


def test_every_conversation_key_of_a_shard_shares_its_slot() -> None:
    keys = Keys(shards=CLUSTER_SHARDS, cluster=True)
    for phone in ("79001234567", "79007654321", "79990000000"):
        shard, conv = keys.conversation(962302, phone)
        names = (shard.due, shard.queue, conv.buf, conv.lease, conv.seen("x"), keys.turn(962302, phone, "b"))
        slots = {key_slot(name.encode()) for name in names}
        assert len(slots) == 1


def test_cluster_default_shards_give_every_master_of_a_three_master_cluster_several(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis_cluster="true")
    assert settings.redis_shards == CLUSTER_SHARDS
    # `redis-cli --cluster create` with 3 masters splits the 16,384 slots in three even ranges.
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    slots = [key_slot(s.queue.encode()) for s in Keys(shards=settings.redis_shards, cluster=True).all_shards]
    owned = [sum(lo <= slot <= hi for slot in slots) for lo, hi in ranges]
    assert min(owned) >= 3, owned


@pytest.mark.redis
async def test_append_answers_replica_wait_timeout_when_no_replica_confirms(
    real_redis: Redis, clock: VirtualClock, make_settings: Callable[..., Settings], message: Factory
) -> None:
    # The tests' single server has no replica: with one required, every append must be refused (a 503 upstream).
    rt = Runtime.build(make_settings(redis_wait_replicas=1, redis_wait_timeout_ms=20), redis=real_redis, clock=clock)
    await rt.start()
    with pytest.raises(ReplicaWaitTimeout):
        await rt.store.append(message("привет"), now_ms=START_MS)


@pytest.mark.cluster
async def test_append_on_a_cluster_waits_for_the_replica_of_each_master_it_wrote_to(
    cluster_redis: Redis, clock: VirtualClock, make_settings: Callable[..., Settings], message: Factory
) -> None:
    settings = make_settings(redis_cluster="true", redis_wait_replicas=1, redis_wait_timeout_ms=2000)
    rt = Runtime.build(settings, redis=cluster_redis, clock=clock)
    await rt.start()
    phones = [f"7900000{i:04d}" for i in range(40)]  # spread over every shard, so over every master
    outcomes = await rt.store.append_many([message("привет", phone=p) for p in phones], now_ms=START_MS)
    assert outcomes == [AppendOutcome.ACCEPTED] * len(phones)
    nodes = {as_cluster(cluster_redis).get_node_from_key(rt.keys.conversation(962302, p)[0].due) for p in phones}
    assert len({node.name for node in nodes if node is not None}) == 3


@pytest.mark.redis
async def test_webhook_whose_replicas_did_not_confirm_answers_503_and_its_retry_is_accepted_once(
    real_redis: Redis, clock: VirtualClock, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(redis_wait_replicas=1, redis_wait_timeout_ms=20)
    rt = Runtime.build(settings, redis=real_redis, clock=clock)
    await rt.start()
    body = orjson.dumps({"from": "79001234567", "message": "привет", "messageId": "m1"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://test") as client:
        refused = await client.post(GATEWAY, content=body, headers=JSON)
        assert refused.status_code == 503
        assert refused.json()["error"] == "unavailable"
        assert refused.headers["retry-after"]
    # The master kept the message: the sender's retry (here against a deployment that stopped waiting, as
    # after a replica came back) is recognised by its id, so it is accepted once, never twice.
    relaxed = Runtime.build(make_settings(), redis=real_redis, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(relaxed)), base_url="http://test") as c:
        retried = (await c.post(GATEWAY, content=body, headers=JSON)).json()
    assert (retried["accepted"], retried["duplicates"]) == (0, 1)
    assert (await rt.stats.collect())["buffered_messages"] == 1


@pytest.mark.cluster
async def test_script_call_sent_to_a_node_that_lost_its_slot_follows_the_move_and_runs_once(
    cluster_redis: Redis,
) -> None:
    # As after a failover or a resharding: the client's slot map names a node that no longer owns the slot.
    cluster = as_cluster(cluster_redis)
    await cluster.initialize()
    key = f"{Keys(shards=CLUSTER_SHARDS, cluster=True).shard(0).stats}:moved"
    owner = cluster.get_node_from_key(key)
    assert owner is not None
    stale = next(node for node in cluster.get_primaries() if node.name != owner.name)
    cluster.nodes_manager.slots_cache[cluster.keyslot(key)] = [stale]
    script = Script(cluster_redis, TOUCH)
    await script.load()
    batch = ScriptBatch(cluster_redis)
    batch.add(script, keys=[key], args=[60_000])
    assert await batch.run() == [1]
    assert await cluster_redis.get(key) == b"1"  # refused by the stale node, run once by the owner
    refreshed = cluster.get_node_from_key(key)
    assert refreshed is not None and refreshed.name == owner.name


@pytest.mark.cluster
async def test_lanes_benchmark_measures_both_ways_on_the_cluster(cluster_redis: Redis) -> None:
    figures = await run_lanes(LanesConfig(CLUSTER_URL, rounds=10, repeats=1))
    assert figures["packed by node"]["calls_per_s"] > 0 and figures["redis-py pipeline"]["calls_per_s"] > 0
    assert figures["kept"] in ("packed by node", "redis-py pipeline")

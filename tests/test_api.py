"""The HTTP API through its public routes (in-process ASGI), on fakeredis and on a real Redis server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import orjson
import pytest
from starlette.types import Message

from simulator import meta_payloads as meta
from simulator.clock import VirtualClock
from system.ingest.routes import create_app
from system.ingest.signatures import sign
from system.runtime import Runtime
from system.settings import Settings

from .conftest import START_MS

ApiFactory = Callable[..., Any]
GATEWAY = "/webhook/whatsapp/batched"
META = "/webhook/whatsapp"
JSON = {"content-type": "application/json"}


@pytest.fixture
async def make_api(make_runtime: Callable[..., Runtime]) -> AsyncIterator[ApiFactory]:
    clients: list[httpx.AsyncClient] = []

    async def make(**env: Any) -> tuple[httpx.AsyncClient, Runtime]:
        rt = make_runtime(**env)
        await rt.start()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://test")
        clients.append(client)
        return client, rt

    yield make
    for c in clients:
        await c.aclose()


def post_json(client: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        path, content=orjson.dumps(body), headers={"content-type": "application/json", **(headers or {})}
    )


async def test_gateway_single_message_is_accepted_and_buffered(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    r = await post_json(
        client, GATEWAY, {"from": "+7 (900) 123-45-67", "message": "Хочу записаться", "messageId": "m1"}
    )
    assert r.status_code == 200
    assert r.json()["accepted"] == 1
    stats = await rt.stats.collect()
    assert (stats["open_batches"], stats["buffered_messages"]) == (1, 1)


async def test_gateway_batch_accepts_good_entries_and_lists_the_bad(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    body = {
        "messages": [
            {"from": "79001234567", "message": "раз", "messageId": "a"},
            {"from": "not a phone", "message": "два", "messageId": "b"},
            {"from": "89001234567", "body": "три", "messageId": "c"},
        ]
    }
    r = await post_json(client, GATEWAY, body)
    assert r.status_code == 200
    out = r.json()
    assert out["accepted"] == 2
    assert [e["field"] for e in out["rejected"]] == ["messages[1].from"]
    assert (await rt.stats.collect())["buffered_messages"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"from": 79001234567, "message": "x"}, "from"),
        ({"from": "79001234567", "message": ["x"]}, "message"),
        ({"from": "79001234567", "message": "   "}, "message"),
        ({"from": "79001234567"}, "message"),
        ({"message": "x"}, "from"),
        ({"from": "120363042345678901@g.us", "message": "x"}, "from"),
        ({"from": "status@broadcast", "message": "x"}, "from"),
    ],
)
async def test_gateway_bad_message_gets_422_naming_the_field(make_api: ApiFactory, body: Any, field: str) -> None:
    client, rt = await make_api()
    r = await post_json(client, GATEWAY, body)
    assert r.status_code == 422
    errors = r.json()["rejected"] if "rejected" in r.json() else r.json()["errors"]
    assert [e["field"] for e in errors] == [field]
    assert all(e["problem"] for e in errors)
    assert (await rt.stats.collect())["buffered_messages"] == 0


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"[1, 2]", 422, "invalid_payload"),
        (b'{"messages": []}', 422, "invalid_payload"),
        (b'{"messages": "x"}', 422, "invalid_payload"),
    ],
)
async def test_malformed_gateway_body_is_a_4xx_with_a_json_reason(
    make_api: ApiFactory, raw: bytes, status: int, code: str
) -> None:
    client, _ = await make_api()
    r = await client.post(GATEWAY, content=raw, headers=JSON)
    assert r.status_code == status
    assert r.json()["error"] == code
    assert r.json()["message"]


async def test_body_over_the_limit_is_refused_with_413(make_api: ApiFactory) -> None:
    client, _ = await make_api(max_body_bytes=1024)
    r = await post_json(client, GATEWAY, {"from": "79001234567", "message": "я" * 2000})
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"


async def test_redelivered_gateway_message_is_acknowledged_once(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    body = {"from": "79001234567", "message": "Хочу записаться", "messageId": "same"}
    first, second = await post_json(client, GATEWAY, body), await post_json(client, GATEWAY, body)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.json()["accepted"], second.json()["duplicates"]) == (1, 1)
    assert (await rt.stats.collect())["buffered_messages"] == 1


async def test_gateway_signature_is_required_when_a_secret_is_set(make_api: ApiFactory) -> None:
    client, _ = await make_api(webhook_secret="s3cret")
    raw = orjson.dumps({"from": "79001234567", "message": "привет"})
    assert (await client.post(GATEWAY, content=raw, headers=JSON)).status_code == 401
    bad = await client.post(GATEWAY, content=raw, headers={**JSON, "X-Signature": sign(raw, "other")})
    assert (bad.status_code, bad.json()["error"]) == (403, "bad_signature")
    ok = await client.post(GATEWAY, content=raw, headers={**JSON, "X-Signature": sign(raw, "s3cret")})
    assert ok.status_code == 200


async def test_rate_limited_flood_gets_429_while_an_allowlisted_number_passes(make_api: ApiFactory) -> None:
    client, rt = await make_api(rate_limit_allowlist="79990000000")
    codes = [
        (
            await post_json(client, GATEWAY, {"from": "79001112233", "message": f"spam {i}", "messageId": f"s{i}"})
        ).status_code
        for i in range(25)
    ]
    assert codes[:20] == [200] * 20
    assert codes[20:] == [429] * 5
    r = await post_json(client, GATEWAY, {"from": "79001112233", "message": "ещё", "messageId": "s99"})
    assert r.headers["retry-after"]
    assert r.json()["rate_limited"][0]["reason"] == "rate_limited"
    allowed = [
        (
            await post_json(client, GATEWAY, {"from": "79990000000", "message": f"t{i}", "messageId": f"t{i}"})
        ).status_code
        for i in range(40)
    ]
    assert set(allowed) == {200}
    assert (await rt.stats.collect())["rate_limited_messages"] == 6


async def test_meta_verification_handshake(make_api: ApiFactory) -> None:
    client, _ = await make_api(whatsapp_verify_token="verify-me")
    ok = await client.get(
        META, params={"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "42"}
    )
    assert (ok.status_code, ok.text) == (200, "42")
    bad = await client.get(META, params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "42"})
    assert bad.status_code == 403
    missing = await client.get(META)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


async def test_meta_signature_missing_is_401_and_wrong_is_403(make_api: ApiFactory) -> None:
    client, _ = await make_api(whatsapp_app_secret="app-secret")
    raw = orjson.dumps(
        meta.webhook(meta.change(messages=[meta.message("79001234567", "wamid.1", timestamp_s=1, text="hi")]))
    )
    assert (await client.post(META, content=raw, headers=JSON)).status_code == 401
    wrong = {**JSON, "X-Hub-Signature-256": sign(raw, "nope")}
    assert (await client.post(META, content=raw, headers=wrong)).status_code == 403
    ok = await client.post(META, content=raw, headers={**JSON, "X-Hub-Signature-256": sign(raw, "app-secret")})
    assert ok.status_code == 200 and ok.json()["accepted"] == 1


async def test_meta_payload_batches_text_media_and_location_and_records_what_it_cannot_batch(
    make_api: ApiFactory,
) -> None:
    client, rt = await make_api()
    sender = "79001234567"
    messages = [
        meta.message(sender, "wamid.t", timestamp_s=1, text="Хочу записаться"),
        meta.message(sender, "wamid.v", timestamp_s=2, kind="audio", body={"id": "media1", "voice": True}),
        meta.message(sender, "wamid.s", timestamp_s=3, kind="sticker", body={"id": "media2"}),
        meta.message(sender, "wamid.l", timestamp_s=4, kind="location", body={"latitude": 55.7, "longitude": 37.6}),
        meta.message(sender, "wamid.r", timestamp_s=5, kind="reaction", body={"message_id": "wamid.x", "emoji": "👍"}),
        meta.message(sender, "wamid.u", timestamp_s=6, kind="unsupported", body={}),
    ]
    second_change = meta.change(messages=[meta.message("79007654321", "wamid.o", timestamp_s=7, text="и я")])
    r = await post_json(client, META, meta.webhook(meta.change(messages=messages), second_change))
    assert r.status_code == 200
    assert r.json()["accepted"] == 5
    stats = await rt.stats.collect()
    assert stats["buffered_messages"] == 5
    assert stats["open_batches"] == 2
    assert stats["not_batched"] == {"ignored_reaction": 1, "ignored_unsupported": 1}


async def test_meta_message_for_an_unknown_number_is_acknowledged_and_recorded(
    make_api: ApiFactory, tmp_path: Path
) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text('[[tenant]]\ncompany_id = 962302\nphone_number_id = "106540352242922"\nname = "Барбершоп"\n')
    client, rt = await make_api(tenants=tenants)
    change = meta.change(
        messages=[meta.message("79001234567", "wamid.z", timestamp_s=1, text="привет")], phone_number_id="999"
    )
    r = await post_json(client, META, meta.webhook(change))
    assert r.status_code == 200  # Meta would retry a non-200 for days; this can never succeed
    assert r.json()["accepted"] == 0
    stats = await rt.stats.collect()
    assert stats["not_batched"] == {"ignored_unknown_tenant": 1}
    assert stats["buffered_messages"] == 0


async def test_delivery_statuses_never_move_backwards(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    await rt.redis.hset(rt.keys.status("wamid.out"), "turn", "t")  # the worker's record of what it sent
    for state in ("read", "delivered", "sent"):
        r = await post_json(
            client,
            META,
            meta.webhook(
                meta.change(statuses=[meta.status("wamid.out", state, recipient="79001234567", timestamp_s=1)])
            ),
        )
        assert r.status_code == 200
    stored = await rt.redis.hgetall(rt.keys.status("wamid.out"))
    assert stored[b"status"] == b"read"
    assert (await rt.stats.collect())["delivery_statuses"] == {"delivered": 1, "read": 1, "sent": 1}


async def test_stats_need_the_bearer_token_when_one_is_set(make_api: ApiFactory) -> None:
    client, _ = await make_api(stats_token="t0ken")
    assert (await client.get(f"{GATEWAY}/stats")).status_code == 401
    assert (await client.get(f"{GATEWAY}/stats", headers={"Authorization": "Bearer nope"})).status_code == 403
    r = await client.get(f"{GATEWAY}/stats", headers={"Authorization": "Bearer t0ken"})
    assert r.status_code == 200
    assert {
        "open_batches",
        "buffered_messages",
        "batches_flushed",
        "flush_lateness_ms",
        "queue_length",
        "in_flight_jobs",
        "dead_letters",
        "rate_limited_messages",
    } <= set(r.json())


async def test_ready_needs_a_fresh_batch_processor_heartbeat(make_api: ApiFactory, clock: VirtualClock) -> None:
    client, rt = await make_api()
    assert (await client.get("/health")).status_code == 200
    not_ready = await client.get("/ready")
    assert (not_ready.status_code, not_ready.json()["checks"]["batch_processor"]) == (503, "unavailable")
    processor = rt.batcher(processor_id="p")
    await processor.heartbeat()
    assert (await client.get("/ready")).status_code == 200
    clock.advance_to(START_MS + 6000)
    assert (await client.get("/ready")).status_code == 503


async def test_metrics_are_exposed_for_prometheus(make_api: ApiFactory) -> None:
    client, _ = await make_api()
    await post_json(client, GATEWAY, {"from": "79001234567", "message": "привет"})
    text = (await client.get("/metrics")).text
    assert 'aiadmin_webhook_requests_total{route="/webhook/whatsapp/batched",status="200"} 1.0' in text
    assert 'aiadmin_messages_total{outcome="accepted"} 1.0' in text


async def test_redis_outage_answers_503_and_loses_nothing_already_accepted(
    make_settings: Callable[..., Settings], clock: VirtualClock
) -> None:
    server = fakeredis.FakeServer(version=(7,))
    rt = Runtime.build(make_settings(), redis=fakeredis.FakeAsyncRedis(server=server), clock=clock)
    await rt.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://test")
    async with client:
        first = {"from": "79001234567", "message": "раз", "messageId": "m1"}
        second = {"from": "79001234567", "message": "два", "messageId": "m2"}
        assert (await post_json(client, GATEWAY, first)).status_code == 200
        server.connected = False
        down = await post_json(client, GATEWAY, second)
        assert down.status_code == 503
        assert down.json()["error"] == "unavailable"
        assert down.headers["retry-after"]
        assert (await client.get("/ready")).status_code == 503
        server.connected = True
        assert (await post_json(client, GATEWAY, second)).json()["accepted"] == 1
        assert (await rt.stats.collect())["buffered_messages"] == 2


# --- Content-Type, caps, replays, readiness -------------------------------------------------------------


@pytest.mark.parametrize("route", [GATEWAY, META])
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        None,
    ],
)
async def test_body_that_is_not_declared_json_is_refused_with_415(
    make_api: ApiFactory, route: str, content_type: str | None
) -> None:
    client, rt = await make_api()
    raw = orjson.dumps({"from": "79001234567", "message": "привет", "messageId": "m1"})
    headers = {"content-type": content_type} if content_type else {}
    r = await client.post(route, content=raw, headers=headers)
    assert r.status_code == 415
    assert r.json()["error"] == "unsupported_media_type"
    assert [e["field"] for e in r.json()["errors"]] == ["Content-Type"]
    assert (await rt.stats.collect())["buffered_messages"] == 0


async def test_json_with_a_charset_parameter_is_accepted(make_api: ApiFactory) -> None:
    client, _ = await make_api()
    raw = orjson.dumps({"from": "79001234567", "message": "привет", "messageId": "m1"})
    r = await client.post(GATEWAY, content=raw, headers={"content-type": "Application/JSON; charset=utf-8"})
    assert (r.status_code, r.json()["accepted"]) == (200, 1)


async def test_meta_body_of_empty_messages_is_refused_at_once_with_a_small_answer(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    r = await post_json(client, META, meta.webhook(meta.change(messages=[{}] * 5000)))
    assert r.status_code == 413
    assert r.json()["error"] == "too_many_items"
    assert [e["field"] for e in r.json()["errors"]] == ["messages"]
    assert len(r.content) < 300
    assert await rt.redis.xlen(rt.keys.ignored) == 0


async def test_unbatched_items_are_counted_per_reason_and_listed_only_ten_times(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    reactions = [
        meta.message("79001234567", f"wamid.r{i}", timestamp_s=1, kind="reaction", body={"emoji": "👍"})
        for i in range(60)
    ]
    bad = [meta.message("79001234567", f"wamid.b{i}", timestamp_s=1, text=" ") for i in range(40)]
    r = await post_json(client, META, meta.webhook(meta.change(messages=reactions + bad)))
    assert r.status_code == 200
    body = r.json()
    assert (body["ignored_count"], len(body["ignored"])) == (60, 10)
    assert (body["rejected_count"], len(body["rejected"])) == (40, 10)
    assert (await rt.stats.collect())["not_batched"] == {"ignored_reaction": 60, "rejected_invalid": 40}
    assert await rt.redis.xlen(rt.keys.ignored) == 10


async def test_status_for_a_message_we_never_sent_creates_nothing(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    statuses = [
        meta.status(f"wamid.forged{i}", "delivered", recipient=f"7900123{i:04}", timestamp_s=1) for i in range(100)
    ]
    r = await post_json(client, META, meta.webhook(meta.change(statuses=statuses)))
    assert r.status_code == 200
    assert await rt.redis.keys(rt.keys.status("*")) == []
    assert (await rt.stats.collect())["delivery_statuses"] == {"unknown": 100}


async def test_replayed_signed_gateway_body_without_id_or_timestamp_gives_one_turn(make_api: ApiFactory) -> None:
    client, rt = await make_api(webhook_secret="s3cret")
    raw = orjson.dumps({"from": "79001234567", "message": "Хочу записаться"})
    headers = {**JSON, "X-Signature": sign(raw, "s3cret")}
    answers = [(await client.post(GATEWAY, content=raw, headers=headers)).json() for _ in range(4)]
    assert [(a["accepted"], a["duplicates"]) for a in answers] == [(1, 0), (0, 1), (0, 1), (0, 1)]
    assert (await rt.stats.collect())["buffered_messages"] == 1


async def test_signed_x_timestamp_tells_repeats_apart_and_expires_replays(
    make_api: ApiFactory, clock: VirtualClock
) -> None:
    client, rt = await make_api(webhook_secret="s3cret")
    raw = orjson.dumps({"from": "79001234567", "message": "да"})

    def signed(ts_s: int) -> dict[str, str]:
        return {**JSON, "X-Timestamp": str(ts_s), "X-Signature": sign(f"{ts_s}.".encode() + raw, "s3cret")}

    now_s = START_MS // 1000
    first = await client.post(GATEWAY, content=raw, headers=signed(now_s))
    replay = await client.post(GATEWAY, content=raw, headers=signed(now_s))
    again_later = await client.post(GATEWAY, content=raw, headers=signed(now_s + 60))
    assert [r.json()["accepted"] for r in (first, replay, again_later)] == [1, 0, 1]
    clock.advance_to(START_MS + 301_000)
    stale = await client.post(GATEWAY, content=raw, headers=signed(now_s))
    assert (stale.status_code, stale.json()["error"]) == (403, "stale_timestamp")
    unsigned_stamp = {**JSON, "X-Timestamp": str(now_s + 301), "X-Signature": sign(raw, "s3cret")}
    assert (await client.post(GATEWAY, content=raw, headers=unsigned_stamp)).status_code == 403
    assert (await rt.stats.collect())["buffered_messages"] == 2


async def test_ready_hides_the_redis_error_unless_the_stats_token_is_given(
    make_settings: Callable[..., Settings], clock: VirtualClock
) -> None:
    server = fakeredis.FakeServer(version=(7,))
    rt = Runtime.build(make_settings(stats_token="t0ken"), redis=fakeredis.FakeAsyncRedis(server=server), clock=clock)
    await rt.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(rt)), base_url="http://test") as client:
        server.connected = False
        public = await client.get("/ready")
        assert public.status_code == 503
        assert public.json()["checks"] == {"redis": "unavailable", "batch_processor": "unavailable"}
        private = await client.get("/ready", headers={"Authorization": "Bearer t0ken"})
        assert private.json()["checks"]["redis"].startswith("unavailable: ")
        assert private.json()["checks"]["redis"] != "unavailable: "


# --- username users, changed numbers, asynchronous failures ---------------------------------------------

BSUID = "US.13491208655302741918"


async def test_username_user_without_a_phone_is_batched_under_the_bsuid(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    message = meta.message(None, "wamid.u1", timestamp_s=1, text="Можно записаться?", user_id=BSUID)
    r = await post_json(client, META, meta.webhook(meta.change(messages=[message])))
    assert (r.status_code, r.json()["accepted"]) == (200, 1)
    _, conversation = rt.keys.conversation(962302, BSUID)
    [fragment] = await rt.redis.lrange(conversation.buf, 0, -1)
    assert orjson.loads(fragment)["pnid"] == meta.PHONE_NUMBER_ID


async def test_changed_number_moves_the_conversation(make_api: ApiFactory) -> None:
    from system.turn.context import ContextStore, ContextUpdate, Dialog, HistoryItem, Preferences

    client, rt = await make_api()
    store = ContextStore(rt.redis, keys=rt.keys)
    update = ContextUpdate((HistoryItem("client", "Привет", 1),), Dialog(stage="choosing"), Preferences(name="Ира"))
    await store.save(962302, "79001234567", update)
    change = meta.number_change("79001234567", "79009998877", "wamid.sys", timestamp_s=1)
    r = await post_json(client, META, meta.webhook(meta.change(messages=[change])))
    assert (r.status_code, r.json()["accepted"]) == (200, 0)
    moved = await store.load(962302, "79009998877")
    assert ([h.text for h in moved.history], moved.preferences.name) == (["Привет"], "Ира")
    assert (await rt.stats.collect())["number_changes"] == 1


async def test_order_is_accepted_as_a_client_message(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    order = meta.order("5215512345678", "wamid.o1", timestamp_s=1, items=[("haircut", 1, 1500)])
    r = await post_json(client, META, meta.webhook(meta.change(messages=[order])))
    assert (r.status_code, r.json()["accepted"]) == (200, 1)
    assert (await rt.stats.collect())["buffered_messages"] == 1


@pytest.mark.parametrize("code", [131047, 131026])
async def test_reply_failed_after_sending_marks_the_turn_and_is_counted(make_api: ApiFactory, code: int) -> None:
    client, rt = await make_api()
    turn = rt.keys.turn(962302, "79001234567", "b1")
    await rt.redis.hset(turn, mapping={"stage": "done", "part:0": "wamid.out"})
    await rt.redis.expire(turn, 3600)
    await rt.redis.hset(rt.keys.status("wamid.out"), "turn", turn)  # written by the worker when it sent
    for state in ("sent", "failed", "failed"):
        st = meta.status("wamid.out", state, recipient="79001234567", timestamp_s=2, error_code=code)
        assert (await post_json(client, META, meta.webhook(meta.change(statuses=[st])))).status_code == 200
    assert await rt.redis.hmget(turn, ["delivery", "delivery_error"]) == [b"failed", str(code).encode()]
    assert 0 < await rt.redis.ttl(turn) <= 3600
    stats = await rt.stats.collect()
    assert stats["delivery_failures"] == {str(code): 1}
    assert f'aiadmin_delivery_failures_total{{code="{code}"}} 1.0' in (await client.get("/metrics")).text


async def test_change_level_errors_are_recorded_and_counted(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    body = meta.webhook(meta.change(errors=[meta.error(131026, "Message Undeliverable")]))
    r = await post_json(client, META, body)
    assert r.status_code == 200
    assert (await rt.stats.collect())["delivery_failures"] == {"131026": 1}
    [(_, entry)] = await rt.redis.xrange(rt.keys.ignored)
    assert entry[b"reason"] == b"delivery_failed_131026"


async def test_statuses_about_one_recipient_are_rate_limited_per_window(
    make_api: ApiFactory, clock: VirtualClock
) -> None:
    client, rt = await make_api()
    for i in range(80):
        await rt.redis.hset(rt.keys.status(f"wamid.out{i}"), "turn", "t")

    async def post(state: str, ids: range, recipient: str = "79001234567") -> None:
        statuses = [meta.status(f"wamid.out{i}", state, recipient=recipient, timestamp_s=1) for i in ids]
        assert (await post_json(client, META, meta.webhook(meta.change(statuses=statuses)))).status_code == 200

    await post("delivered", range(70))  # a replayed body: 70 statuses about one client in a minute
    await post("delivered", range(70, 80), recipient="79007654321")
    stats = (await rt.stats.collect())["delivery_statuses"]
    assert stats == {"delivered": 70, "rate_limited": 10}
    assert await rt.redis.hget(rt.keys.status("wamid.out69"), "status") is None
    await post("failed", range(69, 70))  # a failure passes even over the limit
    assert await rt.redis.hget(rt.keys.status("wamid.out69"), "status") == b"failed"
    clock.advance_to(START_MS + 60_000)
    await post("read", range(60, 69))
    assert await rt.redis.hget(rt.keys.status("wamid.out68"), "status") == b"read"


# --- the webhook routes in front of the FastAPI app -----------------------------------------------------


async def test_other_methods_on_a_webhook_path_still_reach_the_fastapi_app(make_api: ApiFactory) -> None:
    client, _ = await make_api()
    r = await client.put(GATEWAY, content=b"{}", headers=JSON)
    assert (r.status_code, r.headers["allow"]) == (405, "POST")  # FastAPI's answer: only POSTs are taken first
    assert (await client.put(META, content=b"{}", headers=JSON)).status_code == 405
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_a_client_gone_before_its_body_is_counted_and_not_answered(make_api: ApiFactory) -> None:
    client, rt = await make_api()
    app = create_app(rt)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": GATEWAY, "headers": [(b"content-type", b"application/json")]}
    await app(scope, receive, send)
    assert sent == []
    text = (await client.get("/metrics")).text
    assert 'aiadmin_webhook_requests_total{route="/webhook/whatsapp/batched",status="499"} 1.0' in text

"""The HTTP API through its public routes (in-process ASGI), on fakeredis and on a real Redis server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import orjson
import pytest

from simulator import meta_payloads as meta
from simulator.clock import VirtualClock
from system.api import create_app
from system.batcher import BatchProcessor
from system.runtime import Runtime
from system.settings import Settings
from system.signatures import sign

from .conftest import START_MS

ApiFactory = Callable[..., Any]
GATEWAY = "/webhook/whatsapp/batched"
META = "/webhook/whatsapp"


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
    r = await client.post(GATEWAY, content=raw)
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
    assert (await client.post(GATEWAY, content=raw)).status_code == 401
    bad = await client.post(GATEWAY, content=raw, headers={"X-Signature": sign(raw, "other")})
    assert (bad.status_code, bad.json()["error"]) == (403, "bad_signature")
    ok = await client.post(GATEWAY, content=raw, headers={"X-Signature": sign(raw, "s3cret")})
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
    assert (await client.post(META, content=raw)).status_code == 401
    assert (await client.post(META, content=raw, headers={"X-Hub-Signature-256": sign(raw, "nope")})).status_code == 403
    ok = await client.post(META, content=raw, headers={"X-Hub-Signature-256": sign(raw, "app-secret")})
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
    assert (not_ready.status_code, not_ready.json()["checks"]["batch_processor"]) == (503, "no heartbeat")
    processor = BatchProcessor(
        rt.redis, store=rt.store, clock=clock, metrics=rt.metrics, processor_id="p", heartbeat_interval_s=1
    )
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

"""Outbound WhatsApp against Meta's documented answers: bodies, errors, retries, pacing, splitting, the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.clock import VirtualClock
from system.channels.whatsapp import (
    RECIPIENT_BACKOFF_BASE_S,
    AccountRestricted,
    CloudApiSender,
    GatewaySender,
    OutsideWindow,
    RecipientThrottled,
    SendRejected,
    ThroughputLimited,
    TokenExpired,
    TransientSendError,
    Undeliverable,
    _Pacer,
    build_sender,
    classify,
    cloud_api_base,
    split_text,
)
from system.errors import SendError, SettingsError
from system.retry import RetryPolicy
from system.settings import Settings

from .conftest import START_MS, ManualClock

API = "https://graph.facebook.com/v21.0"
PNID = "106540352242922"
MESSAGES_URL = f"{API}/{PNID}/messages"
GATEWAY = "http://gateway.local:3000"
TOKEN = "EAAG-test-token"
PHONE = "79001234567"
OTHER_PHONE = "79007654321"
RETRIES = 2
GAP_MS = 1000


def sent(wamid: str) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": PHONE, "wa_id": PHONE}],
            "messages": [{"id": wamid}],
        },
    )


def meta_error(status: int, code: int, message: str, **headers: str) -> httpx.Response:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbCdEf123"}
    if code != 190:
        error["error_data"] = {"messaging_product": "whatsapp", "details": message}
    return httpx.Response(status, json={"error": error}, headers=headers)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False)


@pytest.fixture
async def http(router: respx.Router) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        yield client


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start_ms=START_MS)


@pytest.fixture
def cloud(http: httpx.AsyncClient, clock: ManualClock) -> CloudApiSender:
    return CloudApiSender(
        http,
        api_url=API,
        token=TOKEN,
        clock=clock,
        rng=random.Random(7),
        retry=RetryPolicy(retries=RETRIES),
        recipient_gap_ms=GAP_MS,
    )


@pytest.fixture
def gateway(http: httpx.AsyncClient, clock: ManualClock) -> Callable[[int], GatewaySender]:
    def make(seed: int = 7) -> GatewaySender:
        return GatewaySender(
            http, base_url=GATEWAY, clock=clock, rng=random.Random(seed), retry=RetryPolicy(retries=RETRIES)
        )

    return make


# split_text


def test_short_text_is_one_chunk() -> None:
    assert split_text("Добрый день! Записала вас на 15:00.") == ["Добрый день! Записала вас на 15:00."]


def test_blank_text_gives_no_chunks() -> None:
    assert split_text(" \n\t ") == []


def test_split_prefers_the_last_sentence_end_within_the_limit() -> None:
    text = "Первое предложение. Второе предложение! Третье? Хвост без точки"
    assert split_text(text, limit=45) == ["Первое предложение. Второе предложение!", "Третье? Хвост без точки"]


def test_split_falls_back_to_whitespace_then_to_a_hard_cut() -> None:
    assert split_text("стрижка машинкой бороды", limit=18) == ["стрижка машинкой", "бороды"]
    assert split_text("абвгдежзий", limit=4) == ["абвг", "дежз", "ий"]


def test_split_cuts_at_line_breaks() -> None:
    assert split_text("Услуги:\nстрижка\nборода", limit=16) == ["Услуги:\nстрижка", "борода"]


def test_split_refuses_a_non_positive_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        split_text("текст", limit=0)


russian_text = st.text(alphabet=st.sampled_from(list("абвгдеёжзийклмнопрстуфхцчшщъыьэюя АБВ.!?…,\n\t")), max_size=400)


@settings(database=None, max_examples=300)
@given(text=st.one_of(russian_text, st.text(max_size=200)), limit=st.integers(min_value=1, max_value=60))
def test_split_text_keeps_every_character_and_the_limit(text: str, limit: int) -> None:
    chunks = split_text(text, limit=limit)
    assert all(0 < len(chunk) <= limit for chunk in chunks)
    assert all(chunk == chunk.strip() for chunk in chunks)

    def visible(s: str) -> str:
        return "".join(c for c in s if not c.isspace())

    assert visible("".join(chunks)) == visible(text)


# Cloud API: the happy path


async def test_send_text_posts_the_documented_body_with_the_bearer_token(
    cloud: CloudApiSender, router: respx.Router
) -> None:
    route = router.post(MESSAGES_URL).mock(return_value=sent("wamid.HBgLNzkwMDEyMzQ1NjcVAgARGBI"))
    ids = await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Записала вас на завтра, 15:00.")
    assert ids == ["wamid.HBgLNzkwMDEyMzQ1NjcVAgARGBI"]
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert body(request) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": PHONE,
        "type": "text",
        "text": {"body": "Записала вас на завтра, 15:00.", "preview_url": False},
    }


async def test_long_reply_is_sent_as_chunks_in_order(cloud: CloudApiSender, router: respx.Router) -> None:
    text = " ".join(f"Предложение номер {i}: мастер Алексей свободен в {i % 12 + 9}:00." for i in range(300))
    assert len(text) > 2 * 4096
    route = router.post(MESSAGES_URL).mock(side_effect=[sent(f"wamid.{i}") for i in range(10)])
    ids = await cloud.send_text(phone_number_id=PNID, to=PHONE, text=text)
    bodies = [body(call.request)["text"]["body"] for call in route.calls]
    assert len(bodies) >= 3
    assert ids == [f"wamid.{i}" for i in range(len(bodies))]
    assert all(len(b) <= 4096 for b in bodies)
    assert " ".join(bodies) == text
    assert all(b.endswith(".") for b in bodies)


async def test_blank_reply_sends_nothing(cloud: CloudApiSender, router: respx.Router) -> None:
    route = router.post(MESSAGES_URL).mock(return_value=sent("wamid.x"))
    assert await cloud.send_text(phone_number_id=PNID, to=PHONE, text="  ") == []
    assert route.call_count == 0


async def test_logs_mask_the_phone_and_keep_the_text_at_debug(cloud: CloudApiSender, router: respx.Router) -> None:
    router.post(MESSAGES_URL).mock(return_value=sent("wamid.x"))
    with structlog.testing.capture_logs() as logs:
        await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Секретный текст")
    assert logs and all(PHONE not in repr(entry) for entry in logs)
    assert all("Секретный" not in repr(entry) for entry in logs if entry["log_level"] != "debug")


# Cloud API: errors and retries


async def test_throughput_limit_is_retried_after_a_backoff(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock
) -> None:
    route = router.post(MESSAGES_URL).mock(
        side_effect=[meta_error(400, 130429, "(#130429) Rate limit hit"), sent("wamid.ok")]
    )
    assert await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["wamid.ok"]
    assert route.call_count == 2
    assert len(clock.sleeps) == 1 and clock.sleeps[0] > 0


async def test_recipient_throttle_waits_the_longer_per_recipient_delay(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock
) -> None:
    throttled = meta_error(400, 131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit")
    route = router.post(MESSAGES_URL).mock(side_effect=[throttled, throttled, sent("wamid.ok")])
    assert await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["wamid.ok"]
    assert route.call_count == 3
    assert clock.sleeps[0] >= RECIPIENT_BACKOFF_BASE_S
    assert clock.sleeps[1] >= 2 * RECIPIENT_BACKOFF_BASE_S


async def test_retry_after_is_honoured(cloud: CloudApiSender, router: respx.Router, clock: ManualClock) -> None:
    limited = meta_error(429, 80007, "(#80007) Rate limit issues", **{"Retry-After": "12"})
    router.post(MESSAGES_URL).mock(side_effect=[limited, sent("wamid.ok")])
    assert await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["wamid.ok"]
    assert clock.sleeps == [12.0]


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (meta_error(400, 131047, "(#131047) Re-engagement message"), OutsideWindow),
        (meta_error(400, 131026, "(#131026) Message Undeliverable"), Undeliverable),
        (meta_error(401, 190, "Error validating access token: Session has expired"), TokenExpired),
        (meta_error(400, 100, "(#100) Invalid parameter"), SendRejected),
        (httpx.Response(403, text="<html>Forbidden</html>"), SendRejected),
    ],
)
async def test_permanent_errors_are_raised_after_one_post(
    cloud: CloudApiSender,
    router: respx.Router,
    clock: ManualClock,
    response: httpx.Response,
    error: type[SendError],
) -> None:
    route = router.post(MESSAGES_URL).mock(return_value=response)
    with pytest.raises(error) as raised:
        await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert route.call_count == 1
    assert clock.sleeps == []
    assert not raised.value.retryable


async def test_expired_token_is_logged_at_error(cloud: CloudApiSender, router: respx.Router) -> None:
    router.post(MESSAGES_URL).mock(return_value=meta_error(401, 190, "Error validating access token"))
    with structlog.testing.capture_logs() as logs, pytest.raises(TokenExpired) as raised:
        await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert raised.value.code == 190
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["whatsapp_token_expired"]


async def test_server_errors_are_retried_then_raised_as_transient(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock
) -> None:
    route = router.post(MESSAGES_URL).mock(return_value=meta_error(500, 131000, "Something went wrong"))
    with pytest.raises(TransientSendError) as raised:
        await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert route.call_count == RETRIES + 1
    assert len(clock.sleeps) == RETRIES
    assert raised.value.retryable and raised.value.code == 131000


async def test_bare_502_is_transient(cloud: CloudApiSender, router: respx.Router) -> None:
    route = router.post(MESSAGES_URL).mock(return_value=httpx.Response(502, text="Bad Gateway"))
    with pytest.raises(TransientSendError):
        await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert route.call_count == RETRIES + 1


@pytest.mark.parametrize("failure", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.ConnectError])
async def test_timeouts_and_transport_errors_are_transient_after_retries(
    cloud: CloudApiSender, router: respx.Router, failure: type[Exception]
) -> None:
    route = router.post(MESSAGES_URL).mock(side_effect=failure)
    with pytest.raises(TransientSendError) as raised:
        await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert route.call_count == RETRIES + 1
    assert not isinstance(raised.value, httpx.HTTPError)


async def test_success_without_a_message_id_is_not_retried(cloud: CloudApiSender, router: respx.Router) -> None:
    route = router.post(MESSAGES_URL).mock(return_value=httpx.Response(200, json={"messaging_product": "whatsapp"}))
    with pytest.raises(SendRejected):
        await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert route.call_count == 1


# Cloud API: pacing


async def test_two_sends_to_one_recipient_are_a_gap_apart(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock
) -> None:
    times: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        times.append(clock.now_ms())
        return sent(f"wamid.{len(times)}")

    router.post(MESSAGES_URL).mock(side_effect=answer)
    await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Первое")
    await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Второе")
    assert times[1] - times[0] >= GAP_MS
    assert sum(clock.sleeps) * 1000 >= GAP_MS


async def test_concurrent_sends_to_one_recipient_queue_up(http: httpx.AsyncClient, router: respx.Router) -> None:
    clock = VirtualClock(start_ms=START_MS)
    sender = CloudApiSender(
        http, api_url=API, token=TOKEN, clock=clock, rng=random.Random(7), retry=RetryPolicy(retries=RETRIES)
    )
    times: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        times.append(clock.now_ms())
        return sent(f"wamid.{len(times)}")

    router.post(MESSAGES_URL).mock(side_effect=answer)
    driver = asyncio.create_task(clock.drive())
    try:
        await asyncio.gather(*(sender.send_text(phone_number_id=PNID, to=PHONE, text=f"№{i}") for i in range(3)))
    finally:
        driver.cancel()
        await driver
    assert times == [START_MS, START_MS + GAP_MS, START_MS + 2 * GAP_MS]


async def test_sends_to_different_recipients_do_not_wait(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock
) -> None:
    router.post(MESSAGES_URL).mock(side_effect=[sent("wamid.1"), sent("wamid.2")])
    await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Первому")
    await cloud.send_text(phone_number_id=PNID, to=OTHER_PHONE, text="Второму")
    assert clock.sleeps == []


async def test_a_send_after_the_gap_has_passed_does_not_wait(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock
) -> None:
    router.post(MESSAGES_URL).mock(side_effect=[sent("wamid.1"), sent("wamid.2")])
    await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Первое")
    clock.now += GAP_MS
    await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Второе")
    assert clock.sleeps == []


async def test_the_pacer_remembers_only_recipients_still_inside_their_gap(clock: ManualClock) -> None:
    pacer = _Pacer(clock, gap_ms=GAP_MS)
    for i in range(100):
        await pacer.wait(("pnid", f"7900000{i:04d}"))
    assert len(pacer) == 100  # every one of them must still wait a gap
    clock.now += GAP_MS // 2
    await pacer.wait(("pnid", PHONE))
    assert len(pacer) == 101
    clock.now += GAP_MS // 2
    await pacer.wait(("pnid", OTHER_PHONE))
    assert len(pacer) == 2  # the first hundred's gaps have passed; the last two still pace
    await pacer.wait(("pnid", PHONE))
    assert clock.sleeps == [GAP_MS / 2 / 1000]


# Cloud API: read receipts


async def test_mark_read_posts_the_read_receipt_with_typing(cloud: CloudApiSender, router: respx.Router) -> None:
    route = router.post(MESSAGES_URL).mock(return_value=httpx.Response(200, json={"success": True}))
    await cloud.mark_read(phone_number_id=PNID, message_id="wamid.inbound1")
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert body(request) == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.inbound1",
        "typing_indicator": {"type": "text"},
    }


@pytest.mark.parametrize(
    "failure",
    [
        meta_error(500, 131000, "Something went wrong"),
        meta_error(401, 190, "Error validating access token"),
        httpx.ReadTimeout("timed out"),
    ],
)
async def test_a_failing_mark_read_does_not_raise(
    cloud: CloudApiSender, router: respx.Router, failure: httpx.Response | Exception
) -> None:
    route = router.post(MESSAGES_URL).mock(side_effect=[failure])
    await cloud.mark_read(phone_number_id=PNID, message_id="wamid.inbound1")
    assert route.call_count == 1


# Gateway


async def test_gateway_posts_phone_and_message_and_reads_the_id(
    gateway: Callable[..., GatewaySender], router: respx.Router
) -> None:
    route = router.post(f"{GATEWAY}/send").mock(
        side_effect=[httpx.Response(200, json={"id": "gw-1"}), httpx.Response(201, json={"messageId": 42})]
    )
    sender = gateway()
    assert await sender.send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["gw-1"]
    assert await sender.send_text(phone_number_id=PNID, to=PHONE, text="Ещё") == ["42"]
    assert body(route.calls[0].request) == {"phone": PHONE, "message": "Привет"}


async def test_gateway_without_an_id_generates_a_deterministic_one(
    gateway: Callable[..., GatewaySender], router: respx.Router
) -> None:
    router.post(f"{GATEWAY}/send").mock(return_value=httpx.Response(200, text="OK"))
    first = await gateway(3).send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    again = await gateway(3).send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert first == again
    assert first[0].startswith("gw-out-")


async def test_gateway_retries_server_errors(
    gateway: Callable[..., GatewaySender], router: respx.Router, clock: ManualClock
) -> None:
    route = router.post(f"{GATEWAY}/send").mock(
        side_effect=[httpx.Response(503), httpx.ReadTimeout("slow"), httpx.Response(200, json={"id": "gw-9"})]
    )
    assert await gateway().send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["gw-9"]
    assert route.call_count == 3
    assert len(clock.sleeps) == 2


async def test_gateway_rejects_client_errors_at_once(
    gateway: Callable[..., GatewaySender], router: respx.Router
) -> None:
    route = router.post(f"{GATEWAY}/send").mock(return_value=httpx.Response(400, json={"error": "invalid phone"}))
    with pytest.raises(SendRejected, match="invalid phone"):
        await gateway().send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert route.call_count == 1


async def test_gateway_mark_read_is_a_no_op(gateway: Callable[..., GatewaySender], router: respx.Router) -> None:
    await gateway().mark_read(phone_number_id=PNID, message_id="wamid.1")
    assert router.calls.call_count == 0


# build_sender


def test_build_sender_picks_the_transport(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: ManualClock
) -> None:
    cloud = make_settings(whatsapp_token="t")
    gw = make_settings(whatsapp_transport="gateway", whatsapp_gateway_url=GATEWAY)
    assert isinstance(build_sender(cloud, http=http, clock=clock, rng=random.Random(1)), CloudApiSender)
    assert isinstance(build_sender(gw, http=http, clock=clock, rng=random.Random(1)), GatewaySender)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "AIADMIN_WHATSAPP_TOKEN"),
        ({"whatsapp_transport": "gateway"}, "AIADMIN_WHATSAPP_GATEWAY_URL"),
    ],
)
def test_build_sender_names_the_missing_setting(
    make_settings: Callable[..., Settings],
    http: httpx.AsyncClient,
    clock: ManualClock,
    env: dict[str, str],
    variable: str,
) -> None:
    with pytest.raises(SettingsError, match=variable):
        build_sender(make_settings(**env), http=http, clock=clock, rng=random.Random(1))


async def test_from_settings_uses_the_configured_url_and_token(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: ManualClock, router: respx.Router
) -> None:
    settings_ = make_settings(whatsapp_token="secret", whatsapp_api_url="https://graph.example/v99.0/")
    route = router.post(f"https://graph.example/v99.0/{PNID}/messages").mock(return_value=sent("wamid.s"))
    with structlog.testing.capture_logs() as logs:
        sender = build_sender(settings_, http=http, clock=clock, rng=random.Random(1))
    assert await sender.send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["wamid.s"]
    assert route.calls.last.request.headers["Authorization"] == "Bearer secret"
    # The old form of the setting still works, but says that AIADMIN_WHATSAPP_API_VERSION is not applied.
    assert "whatsapp_api_url_has_version" in [e["event"] for e in logs if e["log_level"] == "warning"]


def test_throughput_limited_is_a_retryable_send_error() -> None:
    assert issubclass(ThroughputLimited, SendError) and ThroughputLimited.retryable


# Point 10: the number a reply goes out from


@pytest.mark.parametrize("pnid", ["", "  ", "106540352242922/../1", "1 2"])
async def test_reply_without_a_sending_number_never_posts_to_double_slash_messages(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock, pnid: str
) -> None:
    anything = router.route().mock(return_value=sent("wamid.never"))
    with pytest.raises(SendRejected, match="AIADMIN_WHATSAPP_PHONE_NUMBER_ID") as raised:
        await cloud.send_text(phone_number_id=pnid, to=PHONE, text="Привет")
    assert not raised.value.retryable
    assert anything.call_count == 0
    assert clock.sleeps == []


async def test_mark_read_without_a_sending_number_posts_nothing(cloud: CloudApiSender, router: respx.Router) -> None:
    anything = router.route().mock(return_value=httpx.Response(200, json={"success": True}))
    await cloud.mark_read(phone_number_id="", message_id="wamid.inbound1")
    assert anything.call_count == 0


def write_tenants(tmp_path: Any, *entries: str) -> str:
    path = tmp_path / "tenants.toml"
    path.write_text("\n".join(f"[[tenant]]\n{entry}" for entry in entries), encoding="utf-8")
    return str(path)


def test_cloud_start_up_is_refused_when_a_tenant_could_never_be_answered(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: ManualClock, tmp_path: Any
) -> None:
    tenants = write_tenants(
        tmp_path,
        'company_id = 1\nname = "С номером"\nphone_number_id = "111"',
        'company_id = 2\nname = "Без номера"',
    )
    settings_ = make_settings(whatsapp_token="t", tenants=tenants)
    with pytest.raises(SettingsError, match="AIADMIN_WHATSAPP_PHONE_NUMBER_ID") as raised:
        build_sender(settings_, http=http, clock=clock, rng=random.Random(1))
    assert "AIADMIN_TENANTS" in str(raised.value) and "company 2" in str(raised.value)
    assert "company 1" not in str(raised.value)


def test_a_fallback_number_or_numbered_tenants_start(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: ManualClock, tmp_path: Any
) -> None:
    unnumbered = write_tenants(tmp_path, 'company_id = 2\nname = "Без номера"')
    fallback = make_settings(whatsapp_token="t", tenants=unnumbered, whatsapp_phone_number_id=PNID)
    assert isinstance(build_sender(fallback, http=http, clock=clock, rng=random.Random(1)), CloudApiSender)
    numbered = write_tenants(tmp_path, 'company_id = 1\nname = "С номером"\nphone_number_id = "111"')
    assert isinstance(
        build_sender(make_settings(whatsapp_token="t", tenants=numbered), http=http, clock=clock, rng=random.Random(1)),
        CloudApiSender,
    )


def test_the_default_salon_starts_without_a_number_and_warns_about_gateway_messages(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: ManualClock
) -> None:
    # Meta webhook messages are answered from the number they came to; only gateway-format ones name none.
    with structlog.testing.capture_logs() as logs:
        sender = build_sender(make_settings(whatsapp_token="t"), http=http, clock=clock, rng=random.Random(1))
    assert isinstance(sender, CloudApiSender)
    assert "whatsapp_gateway_messages_unanswerable" in [e["event"] for e in logs if e["log_level"] == "warning"]


def test_the_gateway_transport_needs_no_sending_number(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: ManualClock, tmp_path: Any
) -> None:
    tenants = write_tenants(tmp_path, 'company_id = 2\nname = "Без номера"')
    settings_ = make_settings(whatsapp_transport="gateway", whatsapp_gateway_url=GATEWAY, tenants=tenants)
    assert isinstance(build_sender(settings_, http=http, clock=clock, rng=random.Random(1)), GatewaySender)


def test_aiadmin_run_exits_2_when_a_tenant_could_never_be_answered(tmp_path: Any) -> None:
    tenants = write_tenants(tmp_path, 'company_id = 2\nname = "Без номера"')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIADMIN_") and k != "REDIS_URL"}
    env.update(
        AIADMIN_LOG_LEVEL="WARNING",
        AIADMIN_TENANTS=tenants,
        AIADMIN_LLM_BASE_URL="http://127.0.0.1:9/v1",
        AIADMIN_YCLIENTS_BASE_URL="http://127.0.0.1:9/api/v1",
        AIADMIN_YCLIENTS_PARTNER_TOKEN="partner",
        AIADMIN_WHATSAPP_API_URL="http://127.0.0.1:9",
        AIADMIN_WHATSAPP_TOKEN="token",
    )
    result = subprocess.run(
        [sys.executable, "-m", "system", "run", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "AIADMIN_WHATSAPP_PHONE_NUMBER_ID" in result.stderr


# Point 11: username users, addressed by their business-scoped user id

BSUID = "US.13491208655302741918"


@pytest.mark.parametrize("user_id", [BSUID, "RU.ENT.11815799212886844830"])
async def test_a_username_user_is_sent_to_by_recipient_not_to(
    cloud: CloudApiSender, router: respx.Router, user_id: str
) -> None:
    route = router.post(MESSAGES_URL).mock(
        return_value=httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": user_id, "user_id": user_id}],
                "messages": [{"id": "wamid.bsuid"}],
            },
        )
    )
    assert await cloud.send_text(phone_number_id=PNID, to=user_id, text="Записала вас.") == ["wamid.bsuid"]
    sent_body = body(route.calls.last.request)
    assert sent_body["recipient"] == user_id
    assert "to" not in sent_body
    assert sent_body["recipient_type"] == "individual"


async def test_logs_do_not_show_a_username_users_id(cloud: CloudApiSender, router: respx.Router) -> None:
    router.post(MESSAGES_URL).mock(return_value=sent("wamid.x"))
    with structlog.testing.capture_logs() as logs:
        await cloud.send_text(phone_number_id=PNID, to=BSUID, text="Привет")
    assert logs and all(BSUID not in repr(entry) for entry in logs)


# Point 13: the Graph API version is one setting


async def test_the_default_api_is_graph_facebook_com_at_a_current_version(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: ManualClock, router: respx.Router
) -> None:
    settings_ = make_settings(whatsapp_token="t", whatsapp_phone_number_id=PNID)
    version = settings_.whatsapp_api_version
    # v21.0 reaches its end of life on 2027-01-21; the default must be a later one.
    major, minor = (int(part) for part in version.removeprefix("v").split("."))
    assert (major, minor) >= (23, 0)
    route = router.post(f"https://graph.facebook.com/{version}/{PNID}/messages").mock(return_value=sent("wamid.v"))
    sender = build_sender(settings_, http=http, clock=clock, rng=random.Random(1))
    assert await sender.send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["wamid.v"]
    assert route.call_count == 1


async def test_the_api_version_setting_moves_every_call(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: ManualClock, router: respx.Router
) -> None:
    settings_ = make_settings(
        whatsapp_token="t", whatsapp_api_url="https://graph.example/", whatsapp_api_version="v25.0"
    )
    messages = router.post(f"https://graph.example/v25.0/{PNID}/messages")
    messages.mock(side_effect=[httpx.Response(200, json={"success": True}), sent("wamid.v25")])
    sender = build_sender(settings_, http=http, clock=clock, rng=random.Random(1))
    await sender.mark_read(phone_number_id=PNID, message_id="wamid.in")
    assert await sender.send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["wamid.v25"]
    assert messages.call_count == 2


@pytest.mark.parametrize(
    ("url", "version", "base"),
    [
        ("https://graph.facebook.com", "v26.0", "https://graph.facebook.com/v26.0"),
        ("https://graph.facebook.com/", "v23.0", "https://graph.facebook.com/v23.0"),
        ("http://127.0.0.1:8091/v21.0", "v26.0", "http://127.0.0.1:8091/v21.0"),
        ("http://proxy.local/graph/v9.1/", "v26.0", "http://proxy.local/graph/v9.1"),
        ("http://proxy.local/v26.0x", "v26.0", "http://proxy.local/v26.0x/v26.0"),
    ],
)
def test_cloud_api_base_appends_the_version_unless_the_url_names_one(url: str, version: str, base: str) -> None:
    assert cloud_api_base(url, version) == base


@pytest.mark.parametrize("version", ["21.0", "v21", "v21.0.1", "latest", "v123.0"])
def test_a_malformed_api_version_is_refused_naming_the_variable(
    make_settings: Callable[..., Settings], version: str
) -> None:
    with pytest.raises(SettingsError, match="AIADMIN_WHATSAPP_API_VERSION"):
        make_settings(whatsapp_api_version=version)


# Point 13: Meta's error codes, retryable or not


@pytest.mark.parametrize(
    ("code", "http_status", "kind", "retryable"),
    [
        (130429, 400, ThroughputLimited, True),
        (4, 400, ThroughputLimited, True),
        (80007, 400, ThroughputLimited, True),
        (131056, 400, RecipientThrottled, True),
        (131000, 500, TransientSendError, True),
        (131016, 503, TransientSendError, True),
        (131057, 500, TransientSendError, True),  # account in maintenance: it ends by itself
        (2, 503, TransientSendError, True),
        (131047, 400, OutsideWindow, False),
        (131026, 400, Undeliverable, False),
        (190, 401, TokenExpired, False),
        (0, 401, TokenExpired, False),
        (131048, 400, AccountRestricted, False),  # spam rate limit: retrying adds to the quality signal
        (131049, 400, AccountRestricted, False),
        (368, 403, AccountRestricted, False),
        (131031, 403, AccountRestricted, False),
        (131042, 400, AccountRestricted, False),
        (133010, 400, AccountRestricted, False),
        (10, 403, AccountRestricted, False),
        (200, 403, AccountRestricted, False),
        (299, 403, AccountRestricted, False),
        (3, 500, AccountRestricted, False),  # a 500 that no retry fixes
        (131045, 500, AccountRestricted, False),
        (100, 400, SendRejected, False),
        (131008, 400, SendRejected, False),
        (131009, 400, SendRejected, False),
        (131021, 400, SendRejected, False),
        (131050, 400, SendRejected, False),
        (131051, 400, SendRejected, False),
        (131052, 400, SendRejected, False),
        (131053, 400, SendRejected, False),
        (131062, 400, SendRejected, False),
        (999999, 400, SendRejected, False),  # unknown codes: by the HTTP status
        (999999, 502, TransientSendError, True),
        (999999, 429, ThroughputLimited, True),
        (None, 401, TokenExpired, False),
    ],
)
def test_cloud_api_error_codes_are_classified(
    code: int | None, http_status: int, kind: type[SendError], retryable: bool
) -> None:
    assert classify(code, http_status=http_status) is kind
    assert kind.retryable is retryable


async def test_account_in_maintenance_131057_is_retried_not_dead_lettered(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock
) -> None:
    maintenance = meta_error(500, 131057, "(#131057) Account in maintenance mode")
    route = router.post(MESSAGES_URL).mock(side_effect=[maintenance, sent("wamid.after")])
    assert await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["wamid.after"]
    assert route.call_count == 2
    assert len(clock.sleeps) == 1


@pytest.mark.parametrize(("code", "status"), [(131048, 400), (368, 403), (3, 500), (131045, 500)])
async def test_account_restrictions_are_not_retried_and_logged_at_error(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock, code: int, status: int
) -> None:
    route = router.post(MESSAGES_URL).mock(return_value=meta_error(status, code, f"(#{code}) refused"))
    with structlog.testing.capture_logs() as logs, pytest.raises(AccountRestricted) as raised:
        await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert raised.value.code == code
    assert route.call_count == 1 and clock.sleeps == []
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["whatsapp_account_restricted"]


async def test_expired_token_190_is_not_retried_the_job_is_dead_lettered(
    cloud: CloudApiSender, router: respx.Router, clock: ManualClock
) -> None:
    # README "Failures": 190 is logged at ERROR and dead-lettered at once, to be replayed after the renewal.
    route = router.post(MESSAGES_URL).mock(return_value=meta_error(401, 190, "Session has expired"))
    with pytest.raises(TokenExpired) as raised:
        await cloud.send_text(phone_number_id=PNID, to=PHONE, text="Привет")
    assert route.call_count == 1 and clock.sleeps == []
    assert raised.value.retryable is False

"""Outbound WhatsApp against Meta's documented answers: bodies, errors, retries, pacing, splitting, the gateway."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.clock import VirtualClock
from system.retry import RetryPolicy
from system.settings import Settings
from system.whatsapp import (
    RECIPIENT_BACKOFF_BASE_S,
    CloudApiSender,
    GatewaySender,
    OutsideWindow,
    SendError,
    SendRejected,
    ThroughputLimited,
    TokenExpired,
    TransientSendError,
    Undeliverable,
    build_sender,
    split_text,
)

from .conftest import START_MS

API = "https://graph.facebook.com/v21.0"
PNID = "106540352242922"
MESSAGES_URL = f"{API}/{PNID}/messages"
GATEWAY = "http://gateway.local:3000"
TOKEN = "EAAG-test-token"
PHONE = "79001234567"
OTHER_PHONE = "79007654321"
RETRIES = 2
GAP_MS = 1000


class ManualClock:
    """Time stands still except when someone sleeps; every sleep is recorded."""

    def __init__(self, *, start_ms: int) -> None:
        self.now = start_ms
        self.sleeps: list[float] = []

    def now_ms(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0, math.ceil(seconds * 1000))
        await asyncio.sleep(0)


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
    with pytest.raises(ValueError, match=variable):
        build_sender(make_settings(**env), http=http, clock=clock, rng=random.Random(1))


async def test_from_settings_uses_the_configured_url_and_token(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: ManualClock, router: respx.Router
) -> None:
    settings_ = make_settings(whatsapp_token="secret", whatsapp_api_url="https://graph.example/v99.0/")
    route = router.post(f"https://graph.example/v99.0/{PNID}/messages").mock(return_value=sent("wamid.s"))
    sender = build_sender(settings_, http=http, clock=clock, rng=random.Random(1))
    assert await sender.send_text(phone_number_id=PNID, to=PHONE, text="Привет") == ["wamid.s"]
    assert route.calls.last.request.headers["Authorization"] == "Bearer secret"


def test_throughput_limited_is_a_retryable_send_error() -> None:
    assert issubclass(ThroughputLimited, SendError) and ThroughputLimited.retryable

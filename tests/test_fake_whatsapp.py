"""The fake WhatsApp Cloud API against the system's own sender, and webhook delivery against the system's API.

What Meta documents for the sending side (the success body, `to` and `recipient`, the bearer check, the error
object, the text limit, any version) is held by `tests/contracts/test_whatsapp_contract.py`, for every stand-in;
this file keeps what only the fake has: its records, injected faults, the inspection route, webhook delivery.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import httpx
import orjson
import pytest

from simulator.clock import VirtualClock
from simulator.delivery import (
    DELIVERED_STEPS,
    FAILED_AFTER_S,
    BusinessNumber,
    DeliveryRetry,
    Mode,
    UnsupportedInGateway,
    WebhookDelivery,
    WebhookUnreachable,
    meta_webhook,
)
from simulator.whatsapp import OutboundMessage, Outbox, ReadReceipt, WhatsAppFaults, create_app
from system.channels.whatsapp import CloudApiSender, OutsideWindow, SendRejected, TokenExpired, split_text
from system.ingest import routes as api
from system.retry import RetryPolicy
from system.runtime import Runtime
from system.settings import load_settings
from system.turn.records import DELIVERY_ERROR_FIELD, DELIVERY_FIELD, STATUS_TURN_FIELD

from .conftest import START_MS

API_URL = "http://graph.test/v21.0"
PNID = "106540352242922"
TOKEN = "EAAG-fake-token"
PHONE = "79001234567"
GAP_MS = 1000


@dataclass
class Graph:
    """The fake Cloud API, a client of it and the system's sender over that client."""

    http: httpx.AsyncClient
    outbox: Outbox
    faults: WhatsAppFaults

    def sender(self, clock: VirtualClock, *, token: str = TOKEN) -> CloudApiSender:
        return CloudApiSender(
            self.http,
            api_url=API_URL,
            token=token,
            clock=clock,
            rng=random.Random(1),
            retry=RetryPolicy(retries=2),
            recipient_gap_ms=GAP_MS,
        )


@pytest.fixture
async def make_graph(driven: VirtualClock) -> AsyncIterator[Callable[..., Graph]]:
    clients: list[httpx.AsyncClient] = []

    def make(*, seed: int = 7, faults: WhatsAppFaults | None = None) -> Graph:
        faults = faults or WhatsAppFaults()
        outbox = Outbox()
        app = create_app(token=TOKEN, clock=driven, rng=random.Random(seed), faults=faults, outbox=outbox)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://graph.test")
        clients.append(http)
        return Graph(http, outbox, faults)

    yield make
    for client in clients:
        await client.aclose()


def send_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": PHONE,
        "type": "text",
        "text": {"body": "Здравствуйте!", "preview_url": False},
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def post(graph: Graph, body: Any, *, token: str | None = TOKEN, path: str = f"/v21.0/{PNID}/messages") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return await graph.http.post(path, content=orjson.dumps(body), headers=headers)


# --- the fake against the system's sender ----------------------------------------------------------------


async def test_text_is_delivered_and_recorded_at_the_clocks_time(
    make_graph: Callable[..., Graph], driven: VirtualClock
) -> None:
    graph = make_graph()
    ids = await graph.sender(driven).send_text(phone_number_id=PNID, to=PHONE, text="Записал вас на 18:00.")
    assert list(graph.outbox.messages) == [OutboundMessage(ids[0], PNID, PHONE, "Записал вас на 18:00.", START_MS)]
    assert ids[0].startswith("wamid.")
    assert graph.outbox.count == 1
    assert graph.outbox.texts_to("+" + PHONE) == ["Записал вас на 18:00."]


async def test_long_text_arrives_as_several_paced_messages(
    make_graph: Callable[..., Graph], driven: VirtualClock
) -> None:
    graph = make_graph()
    text = " ".join(f"Предложение номер {i} о записи к мастеру." for i in range(300))
    ids = await graph.sender(driven).send_text(phone_number_id=PNID, to=PHONE, text=text)
    sent = graph.outbox.messages_to(PHONE)
    assert len(sent) == len(ids) == len(split_text(text)) > 1
    assert [m.text for m in sent] == split_text(text)
    assert [m.wamid for m in sent] == ids
    assert [m.at_ms for m in sent] == [START_MS + i * GAP_MS for i in range(len(sent))]


async def test_read_receipt_with_typing_is_recorded(make_graph: Callable[..., Graph], driven: VirtualClock) -> None:
    graph = make_graph()
    await graph.sender(driven).mark_read(phone_number_id=PNID, message_id="wamid.in1")
    assert list(graph.outbox.receipts) == [ReadReceipt("wamid.in1", True, START_MS, PNID)]
    assert graph.outbox.count == 0


async def test_wrong_token_is_token_expired(make_graph: Callable[..., Graph], driven: VirtualClock) -> None:
    graph = make_graph()
    with pytest.raises(TokenExpired) as caught:
        await graph.sender(driven, token="stale").send_text(phone_number_id=PNID, to=PHONE, text="привет")
    assert caught.value.code == 190
    assert graph.outbox.count == 0
    assert [(r.code, r.http_status) for r in graph.outbox.refusals] == [(190, 401)]


async def test_throughput_limit_is_retried_and_the_message_recorded_once(
    make_graph: Callable[..., Graph], driven: VirtualClock
) -> None:
    graph = make_graph()
    graph.faults.fail_next(130429)
    ids = await graph.sender(driven).send_text(phone_number_id=PNID, to=PHONE, text="привет")
    assert [m.wamid for m in graph.outbox.messages] == ids
    assert [(r.code, r.http_status) for r in graph.outbox.refusals] == [(130429, 400)]
    assert graph.outbox.messages[0].at_ms > START_MS  # sent after the backoff, on the virtual clock


async def test_recipient_outside_the_window_is_refused_and_nothing_recorded(
    make_graph: Callable[..., Graph], driven: VirtualClock
) -> None:
    graph = make_graph(faults=WhatsAppFaults(outside_window={PHONE}))
    with pytest.raises(OutsideWindow):
        await graph.sender(driven).send_text(phone_number_id=PNID, to=PHONE, text="напоминаем о записи")
    assert graph.outbox.count == 0
    assert len(graph.outbox.refused(131047)) == 1  # not retried


async def test_wamids_are_deterministic_per_seed(make_graph: Callable[..., Graph], driven: VirtualClock) -> None:
    async def wamids(seed: int) -> list[str]:
        sender = make_graph(seed=seed).sender(driven)
        return [(await sender.send_text(phone_number_id=PNID, to=p, text="hi"))[0] for p in (PHONE, "79007654321")]

    first, again, other = await wamids(7), await wamids(7), await wamids(8)
    assert first == again
    assert first != other
    assert len(set(first)) == 2


async def test_random_faults_are_drawn_from_the_seed(make_graph: Callable[..., Graph]) -> None:
    async def statuses(seed: int) -> list[int]:
        graph = make_graph(seed=seed, faults=WhatsAppFaults(throughput_p=0.2, server_error_p=0.2, pair_rate_p=0.1))
        return [(await post(graph, send_body())).status_code for _ in range(40)]

    first = await statuses(3)
    assert first == await statuses(3)
    assert {200, 400, 500} <= set(first)


# --- the fake's answers on the wire -----------------------------------------------------------------------


async def test_the_answers_wamid_is_recorded_and_a_receipt_without_typing_too(make_graph: Callable[..., Graph]) -> None:
    graph = make_graph()
    r = await post(graph, send_body(to="+" + PHONE))
    assert r.json()["messages"][0]["id"] == graph.outbox.messages[0].wamid
    assert graph.outbox.messages[0].to == PHONE
    receipt = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.x"}
    assert (await post(graph, receipt)).status_code == 200
    assert graph.outbox.receipts[0].typing is False


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (send_body(messaging_product=None), "messaging_product"),
        (send_body(to="not-a-phone"), "to"),
        (send_body(text={"body": "я" * 4097}), "text['body']"),
        (send_body(type="image"), "type"),
        ({"messaging_product": "whatsapp", "status": "read"}, "message_id"),
        ([1, 2], "JSON object"),
    ],
)
async def test_invalid_payload_is_code_100_naming_the_parameter(
    make_graph: Callable[..., Graph], body: Any, named: str
) -> None:
    graph = make_graph()
    r = await post(graph, body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 100 and error["type"] == "OAuthException" and error["fbtrace_id"]
    assert named in error["message"]
    assert graph.outbox.count == 0


async def test_fail_next_names_any_code_and_read_receipts_separately(make_graph: Callable[..., Graph]) -> None:
    graph = make_graph()
    graph.faults.fail_next(131016, kind="read")
    graph.faults.fail_next(131056, times=2)
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.x"}
    assert (await post(graph, read)).status_code == 503
    answers = [(await post(graph, send_body())) for _ in range(3)]
    assert [a.status_code for a in answers] == [400, 400, 200]
    assert answers[0].json()["error"]["code"] == 131056
    assert "error_data" in answers[0].json()["error"]


async def test_health(make_graph: Callable[..., Graph]) -> None:
    r = await make_graph().http.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_fault_probabilities_are_checked() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        WhatsAppFaults(throughput_p=0.7, server_error_p=0.5)


async def test_fake_serves_over_a_real_socket() -> None:
    uvicorn = pytest.importorskip("uvicorn")
    outbox = Outbox()
    app = create_app(token=TOKEN, clock=VirtualClock(start_ms=START_MS), rng=random.Random(1), outbox=outbox)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.post(
                f"/v21.0/{PNID}/messages", json=send_body(), headers={"Authorization": f"Bearer {TOKEN}"}
            )
        assert r.status_code == 200
        assert outbox.count == 1
    finally:
        server.should_exit = True
        await serving


# --- webhook delivery against the system's API ------------------------------------------------------------

APP_SECRET = "app-secret"
GATEWAY_SECRET = "gw-secret"
System = tuple[httpx.AsyncClient, Runtime]


@pytest.fixture
async def make_system() -> AsyncIterator[Callable[..., Awaitable[System]]]:
    made: list[System] = []

    async def make(**env: str) -> System:
        settings = load_settings({f"AIADMIN_{k.upper()}": v for k, v in env.items()})
        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
        rt = Runtime.build(settings, redis=redis, clock=VirtualClock(start_ms=START_MS))
        await rt.start()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.create_app(rt)), base_url="http://aiadmin.test")
        made.append((http, rt))
        return http, rt

    yield make
    for http, rt in made:
        await http.aclose()
        await rt.close()


FRAGMENTS = ("Здравствуйте", "хочу постричься", "завтра после 18")


async def stats(http: httpx.AsyncClient) -> Any:
    r = await http.get(f"{api.GATEWAY_ROUTE}/stats")
    assert r.status_code == 200
    return r.json()


@pytest.mark.parametrize(
    ("mode", "env"), [("meta", {"whatsapp_app_secret": APP_SECRET}), ("gateway", {"webhook_secret": GATEWAY_SECRET})]
)
async def test_three_fragments_are_buffered_in_one_open_batch(
    make_system: Callable[..., Awaitable[System]], mode: Mode, env: dict[str, str]
) -> None:
    http, rt = await make_system(**env)
    secret = APP_SECRET if mode == "meta" else GATEWAY_SECRET
    delivery = WebhookDelivery(http, clock=rt.clock, mode=mode, secret=secret)
    for i, text in enumerate(FRAGMENTS):
        status = await delivery.deliver_text(
            sender=PHONE, text=text, message_id=f"wamid.in{i}", at_ms=START_MS + i * 1000, profile_name="Иван"
        )
        assert status == 200
    out = await stats(http)
    assert (out["open_batches"], out["buffered_messages"]) == (1, 3)
    assert (delivery.stats.delivered, delivery.stats.retried, delivery.stats.refused) == (3, 0, 0)


@pytest.mark.parametrize("mode", ["meta", "gateway"])
async def test_wrong_secret_is_refused_with_403(make_system: Callable[..., Awaitable[System]], mode: Mode) -> None:
    http, rt = await make_system(whatsapp_app_secret=APP_SECRET, webhook_secret=GATEWAY_SECRET)
    delivery = WebhookDelivery(http, clock=rt.clock, mode=mode, secret="wrong")
    assert await delivery.deliver_text(sender=PHONE, text="привет", message_id="wamid.a", at_ms=START_MS) == 403
    assert (delivery.stats.refused, delivery.stats.retried, delivery.stats.by_status) == (1, 0, {403: 1})
    assert (await stats(http))["buffered_messages"] == 0


async def test_status_callback_is_counted(make_system: Callable[..., Awaitable[System]]) -> None:
    http, rt = await make_system(whatsapp_app_secret=APP_SECRET)
    # The system counts statuses of messages it sent: a sent part leaves a status hash pointing at its turn.
    await rt.redis.hset(rt.keys.status("wamid.out1"), STATUS_TURN_FIELD, "turn")
    delivery = WebhookDelivery(http, clock=rt.clock, secret=APP_SECRET)
    assert await delivery.deliver_status(wamid="wamid.out1", status="delivered", recipient=PHONE, at_ms=START_MS) == 200
    assert (await stats(http))["delivery_statuses"] == {"delivered": 1}


async def test_voice_note_is_batched_as_a_marker(make_system: Callable[..., Awaitable[System]]) -> None:
    http, rt = await make_system(whatsapp_app_secret=APP_SECRET)
    delivery = WebhookDelivery(http, clock=rt.clock, secret=APP_SECRET)
    assert await delivery.deliver_media(kind="voice", sender=PHONE, message_id="wamid.v", at_ms=START_MS) == 200
    _, conv = rt.keys.conversation(rt.settings.default_company_id, PHONE)
    fragments = [orjson.loads(raw) for raw in await rt.redis.lrange(conv.buf, 0, -1)]
    assert [(f["kind"], f["text"]) for f in fragments] == [("voice", "")]
    assert fragments[0]["extra"] == {"media_id": "media-wamid.v"}


async def test_gateway_mode_carries_text_only(make_system: Callable[..., Awaitable[System]]) -> None:
    http, rt = await make_system()
    delivery = WebhookDelivery(http, clock=rt.clock, mode="gateway")
    with pytest.raises(UnsupportedInGateway):
        await delivery.deliver_media(kind="image", sender=PHONE, message_id="m", at_ms=START_MS)
    with pytest.raises(UnsupportedInGateway):
        await delivery.deliver_status(wamid="w", status="read", recipient=PHONE, at_ms=START_MS)


def test_business_number_is_configurable() -> None:
    number = BusinessNumber(phone_number_id="222", display_phone_number="79990001122", waba_id="333")
    body = meta_webhook(number, messages=[])
    value = body["entry"][0]["changes"][0]["value"]
    assert body["entry"][0]["id"] == "333"
    assert value["metadata"] == {"display_phone_number": "79990001122", "phone_number_id": "222"}


# --- retries, on a scripted transport ---------------------------------------------------------------------


def scripted(answers: list[int | type[httpx.TransportError]]) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue: Iterator[int | type[httpx.TransportError]] = iter(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = next(queue)
        if not isinstance(answer, int):
            raise answer("scripted", request=request)
        return httpx.Response(answer, json={}, headers={"Retry-After": "5"} if answer == 429 else {})

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://aiadmin.test"), seen


async def test_5xx_and_429_are_retried_with_delays_on_the_clock(driven: VirtualClock) -> None:
    http, seen = scripted([503, 429, 200])
    async with http:
        delivery = WebhookDelivery(http, clock=driven, secret=APP_SECRET)
        assert await delivery.deliver_text(sender=PHONE, text="привет", message_id="m1", at_ms=START_MS) == 200
    assert len(seen) == 3 and len({r.content for r in seen}) == 1  # the same signed body each time
    assert (delivery.stats.attempts, delivery.stats.retried, delivery.stats.delivered) == (3, 2, 1)
    assert driven.now_ms() == START_MS + 1000 + 5000  # 1 s backoff, then Retry-After 5 s over the 2 s backoff


async def test_retries_are_bounded(driven: VirtualClock) -> None:
    http, seen = scripted([500, 500, 500])
    async with http:
        delivery = WebhookDelivery(http, clock=driven, retry=DeliveryRetry(retries=2))
        assert await delivery.deliver_text(sender=PHONE, text="привет", message_id="m1", at_ms=START_MS) == 500
    assert (len(seen), delivery.stats.refused, delivery.stats.retried) == (3, 1, 2)


async def test_no_answer_at_all_is_webhook_unreachable(driven: VirtualClock) -> None:
    http, _ = scripted([httpx.ConnectError, httpx.ReadTimeout])
    async with http:
        delivery = WebhookDelivery(http, clock=driven, retry=DeliveryRetry(retries=1))
        with pytest.raises(WebhookUnreachable):
            await delivery.deliver_text(sender=PHONE, text="привет", message_id="m1", at_ms=START_MS)
    assert (delivery.stats.unreachable, delivery.stats.retried) == (1, 1)


# --- username users: the business-scoped user id in `recipient` -------------------------------------------

BSUID = "US.13491208655302741918"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (send_body(to=None), "to"),
        (send_body(to=None, recipient="13491208655302741918"), "recipient"),
        (send_body(to=None, recipient="us.1349120865"), "recipient"),
        (send_body(to=None, recipient=["US.1349"]), "recipient"),
    ],
)
async def test_a_body_without_a_usable_recipient_is_code_100(
    make_graph: Callable[..., Graph], body: Any, named: str
) -> None:
    graph = make_graph()
    r = await post(graph, body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 100 and named in error["message"]
    assert graph.outbox.count == 0


async def test_the_systems_sender_reaches_a_username_user(
    make_graph: Callable[..., Graph], driven: VirtualClock
) -> None:
    graph = make_graph()
    ids = await graph.sender(driven).send_text(phone_number_id=PNID, to=BSUID, text="Записала вас на 18:00.")
    assert [(m.wamid, m.to, m.text) for m in graph.outbox.messages] == [(ids[0], BSUID, "Записала вас на 18:00.")]
    listed = (await graph.http.get("/_sim/messages", params={"to": BSUID})).json()["messages"]
    assert [m["wamid"] for m in listed] == ids


async def test_the_systems_sender_refuses_an_empty_sending_number_before_the_fake_sees_it(
    make_graph: Callable[..., Graph], driven: VirtualClock
) -> None:
    graph = make_graph()
    with pytest.raises(SendRejected):
        await graph.sender(driven).send_text(phone_number_id="", to=PHONE, text="привет")
    assert graph.outbox.count == 0 and list(graph.outbox.refusals) == []


@pytest.mark.parametrize("version", ["v26", "26.0", "latest", "v260.0"])
async def test_the_fake_refuses_a_path_without_a_version(make_graph: Callable[..., Graph], version: str) -> None:
    r = await post(make_graph(), send_body(), path=f"/{version}/{PNID}/messages")
    assert (r.status_code, r.json()["error"]["code"]) == (400, 100)


# --- failures Meta reports later, in a `failed` status webhook --------------------------------------------


def capturing() -> tuple[httpx.AsyncClient, list[dict[str, Any]]]:
    """A client standing for the system's webhook: answers 200 and keeps every body."""
    bodies: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        return httpx.Response(200)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://aiadmin.test"), bodies


def only_status(body: dict[str, Any]) -> dict[str, Any]:
    value = body["entry"][0]["changes"][0]["value"]
    assert value["metadata"]["phone_number_id"] == PNID
    (status,) = value["statuses"]
    return dict(status)


@pytest.mark.parametrize(
    ("faults", "code", "title"),
    [
        (WhatsAppFaults(window_closed={PHONE}), 131047, "Re-engagement message"),
        (WhatsAppFaults(unreachable={PHONE}), 131026, "Message undeliverable"),
    ],
)
async def test_a_reply_meta_cannot_deliver_is_accepted_then_reported_failed(
    make_graph: Callable[..., Graph], driven: VirtualClock, faults: WhatsAppFaults, code: int, title: str
) -> None:
    graph = make_graph(faults=faults)
    # Accepted as Meta accepts it: 200 and a wamid, nothing refused; the sender cannot tell.
    ids = await graph.sender(driven).send_text(phone_number_id=PNID, to=PHONE, text="Напоминаем о записи")
    assert list(graph.outbox.refusals) == []
    (message,) = graph.outbox.messages
    assert (message.wamid, message.failure) == (ids[0], code)

    http, bodies = capturing()
    async with http:
        delivery = WebhookDelivery(http, clock=driven, secret=APP_SECRET)
        assert await delivery.deliver_outcome(message) == [200]
    (body,) = bodies
    status = only_status(body)
    assert status["id"] == ids[0] and status["status"] == "failed" and status["recipient_id"] == PHONE
    assert int(status["timestamp"]) == (START_MS + int(FAILED_AFTER_S * 1000)) // 1000
    (error,) = status["errors"]
    assert error["code"] == code and error["title"] == error["message"] == title
    assert error["error_data"]["details"] and error["href"].endswith("/error-codes")
    assert "pricing" not in status and "conversation" not in status  # a failed message is not billed


async def test_a_delivered_reply_is_reported_sent_delivered_read_with_pricing(
    make_graph: Callable[..., Graph], driven: VirtualClock
) -> None:
    graph = make_graph()
    await graph.sender(driven).send_text(phone_number_id=PNID, to=PHONE, text="Записал вас на 18:00.")
    (message,) = graph.outbox.messages
    assert message.failure is None
    http, bodies = capturing()
    async with http:
        delivery = WebhookDelivery(http, clock=driven)
        assert await delivery.deliver_outcome(message) == [200, 200, 200]
    statuses = [only_status(b) for b in bodies]
    assert [s["status"] for s in statuses] == [state for state, _ in DELIVERED_STEPS]
    assert all("errors" not in s and s["pricing"]["category"] == "service" for s in statuses)
    assert all(s["pricing"]["billable"] is False for s in statuses)  # a reply inside the window is free


async def test_a_status_to_a_username_user_names_recipient_user_id(driven: VirtualClock) -> None:
    http, bodies = capturing()
    async with http:
        delivery = WebhookDelivery(http, clock=driven)
        await delivery.deliver_status(wamid="wamid.b", status="delivered", recipient=BSUID, at_ms=START_MS)
    status = only_status(bodies[0])
    assert status["recipient_user_id"] == BSUID and "recipient_id" not in status


async def test_the_systems_webhook_takes_the_failed_status_and_marks_the_turn(
    make_graph: Callable[..., Graph],
    make_system: Callable[..., Awaitable[System]],
    driven: VirtualClock,
) -> None:
    graph = make_graph(faults=WhatsAppFaults(window_closed={PHONE}))
    ids = await graph.sender(driven).send_text(phone_number_id=PNID, to=PHONE, text="Напоминаем о записи")
    http, rt = await make_system(whatsapp_app_secret=APP_SECRET)
    turn = "aiadmin:turn:test"
    await rt.redis.hset(turn, "stage", "sent")
    await rt.redis.hset(rt.keys.status(ids[0]), STATUS_TURN_FIELD, turn)
    delivery = WebhookDelivery(http, clock=driven, secret=APP_SECRET)
    assert await delivery.deliver_outcome(graph.outbox.messages[0]) == [200]
    assert (await stats(http))["delivery_statuses"] == {"failed": 1}
    assert await rt.redis.hmget(turn, [DELIVERY_FIELD, DELIVERY_ERROR_FIELD]) == [b"failed", b"131047"]

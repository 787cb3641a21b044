"""One WhatsApp Cloud API contract (the sending side), run against every stand-in of it.

The stand-ins: the simulator's fake Cloud API (`simulator/whatsapp.py`, in process over ASGI), the worker tests'
respx world (`tests/world.py`, a MockTransport) and the benchmark stand-ins (`loadtests/bench/_standins.py`). The two
last serve the simulator's fake core with their own bookkeeping, so there is one implementation of Meta's rules.
What is asserted is what Meta documents for `POST /{version}/{phone_number_id}/messages` (the messages reference,
the typing-indicators guide, the Graph API error-handling guide): where a test is about our client, it drives the
production `CloudApiSender`; where it is about a documented answer, it posts the body itself with httpx.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from loadtests.bench import _standins as standins
from simulator import whatsapp
from simulator.clock import VirtualClock
from system.channels.whatsapp import CloudApiSender, TokenExpired
from system.retry import RetryPolicy
from tests import world

from .imports import forbidden

STANDINS = ("simulator", "world", "standins")
VERSION = "v23.0"
PNID = "106540352242922"
PHONE = "79001234567"
BSUID = "US.13491208655302741918"  # Meta's example of a business-scoped user id
TEXT_LIMIT_CHARS = 4096  # Meta, messages reference: a text body is at most 4096 characters
# Meta's Graph API error object: these four always, the others when they apply.
ERROR_REQUIRED = {"message", "type", "code", "fbtrace_id"}
ERROR_KEYS = ERROR_REQUIRED | {"error_subcode", "error_data", "error_user_title", "error_user_msg", "is_transient"}


pytestmark = pytest.mark.usefixtures("driven")  # the clock of tests/conftest.py, its time jumping


@dataclass
class StandIn:
    """A Cloud API stand-in behind an httpx client: its base URL (no version), its token, what it accepted."""

    name: str
    http: httpx.AsyncClient
    base_url: str
    token: str
    accepted: Callable[[], list[tuple[str, str]]]  # (recipient, text) of the accepted messages, in order
    receipts: Callable[[], int]  # read receipts accepted

    def sender(self, clock: VirtualClock, *, token: str | None = None, version: str = VERSION) -> CloudApiSender:
        return CloudApiSender(
            self.http,
            api_url=f"{self.base_url}/{version}",
            token=token or self.token,
            clock=clock,
            rng=random.Random(0),
            retry=RetryPolicy(retries=0),
            recipient_gap_ms=0,
        )

    async def post(self, body: Any, *, token: str | None = "", version: str = VERSION) -> httpx.Response:
        """`token` "" is the stand-in's own; None sends no Authorization header."""
        given = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {given}"} if given is not None else {}
        url = f"{self.base_url}/{version}/{PNID}/messages"
        return await self.http.post(url, content=orjson.dumps(body), headers=headers)


def _outbox_view(outbox: whatsapp.Outbox) -> tuple[Callable[[], list[tuple[str, str]]], Callable[[], int]]:
    return (lambda: [(m.to, m.text) for m in outbox.messages]), (lambda: len(outbox.receipts))


@pytest.fixture(params=STANDINS)
async def standin(request: pytest.FixtureRequest, clock: VirtualClock) -> AsyncIterator[StandIn]:
    name = request.param
    if name == "world":
        w = world.World()
        http = w.http()
        found = StandIn(
            name,
            http,
            world.WHATSAPP_URL,
            world.WHATSAPP_TOKEN,
            lambda: [(to.removeprefix("+"), text) for to, text in w.sent],
            lambda: len(w.read_receipts),
        )
    elif name == "simulator":
        outbox = whatsapp.Outbox()
        app = whatsapp.create_app(token="EAAG-contract", clock=clock, rng=random.Random(7), outbox=outbox)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        found = StandIn(name, http, "http://graph.test", "EAAG-contract", *_outbox_view(outbox))
    else:
        app = standins.create_app(llm_latency_s=0, clock=clock)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        found = StandIn(
            name, http, "http://standins.test", standins.WHATSAPP_TOKEN, *_outbox_view(app.state.whatsapp.outbox)
        )
    async with http:
        yield found


def text_message(**fields: Any) -> dict[str, Any]:
    """A text message as the messages reference shows it; a field given as None is left out."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": PHONE,
        "type": "text",
        "text": {"preview_url": False, "body": "Здравствуйте!"},
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def meta_error(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of a refusal, checked against the Graph API error-handling guide."""
    error: dict[str, Any] = response.json()["error"]
    assert ERROR_REQUIRED <= set(error) <= ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["code"], int) and not isinstance(error["code"], bool)
    assert isinstance(error["fbtrace_id"], str) and error["fbtrace_id"]
    assert isinstance(error.get("error_subcode", 0), int)
    return error


# --- sending through the system's sender ----------------------------------------------------------------------


async def test_a_reply_goes_out_through_the_systems_sender(standin: StandIn, clock: VirtualClock) -> None:
    ids = await standin.sender(clock).send_text(phone_number_id=PNID, to=PHONE, text="Записал вас на 18:00.")

    assert len(ids) == 1 and ids[0]
    assert standin.accepted() == [(PHONE, "Записал вас на 18:00.")]


async def test_a_long_reply_goes_out_in_parts_meta_accepts(standin: StandIn, clock: VirtualClock) -> None:
    """A client that cut replies longer than Meta's limit would be refused here (code 100), not pass."""
    text = " ".join(f"Предложение номер {i} о записи к мастеру." for i in range(300))

    ids = await standin.sender(clock).send_text(phone_number_id=PNID, to=PHONE, text=text)

    parts = [sent for _, sent in standin.accepted()]
    assert len(parts) == len(ids) > 1
    assert all(len(part) <= TEXT_LIMIT_CHARS for part in parts)
    assert " ".join(parts) == text


@pytest.mark.parametrize("version", ["v21.0", "v23.0", "v26.0", "v9.1"])
async def test_any_graph_api_version_is_served(standin: StandIn, clock: VirtualClock, version: str) -> None:
    await standin.sender(clock, version=version).send_text(phone_number_id=PNID, to=PHONE, text="Привет!")

    assert standin.accepted() == [(PHONE, "Привет!")]


async def test_a_username_user_is_reached_by_business_scoped_user_id(standin: StandIn, clock: VirtualClock) -> None:
    """A client that put the BSUID in `to` would be refused: `to` is a phone number."""
    await standin.sender(clock).send_text(phone_number_id=PNID, to=BSUID, text="Записала вас на 18:00.")

    assert standin.accepted() == [(BSUID, "Записала вас на 18:00.")]


async def test_a_read_receipt_with_typing_indicator_is_taken(standin: StandIn, clock: VirtualClock) -> None:
    await standin.sender(clock).mark_read(phone_number_id=PNID, message_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZC")

    assert standin.receipts() == 1
    assert standin.accepted() == []


async def test_the_systems_sender_takes_a_wrong_token_as_token_expired(standin: StandIn, clock: VirtualClock) -> None:
    with pytest.raises(TokenExpired) as caught:
        await standin.sender(clock, token="EAAG-stale").send_text(phone_number_id=PNID, to=PHONE, text="привет")

    assert caught.value.code == 190
    assert standin.accepted() == []


# --- Meta's answers on the wire -------------------------------------------------------------------------------


async def test_the_success_answer_has_metas_shape(standin: StandIn) -> None:
    answer = await standin.post(text_message(to="+" + PHONE))

    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"messaging_product", "contacts", "messages"}
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+" + PHONE, "wa_id": PHONE}]
    [message] = body["messages"]
    assert isinstance(message["id"], str) and message["id"].startswith("wamid.")


async def test_a_bsuid_recipient_is_answered_with_user_id(standin: StandIn) -> None:
    answer = await standin.post(text_message(to=None, recipient=BSUID))

    assert answer.status_code == 200
    assert answer.json()["contacts"] == [{"input": BSUID, "user_id": BSUID}]


async def test_to_wins_over_recipient(standin: StandIn) -> None:
    answer = await standin.post(text_message(recipient=BSUID))

    assert answer.json()["contacts"] == [{"input": PHONE, "wa_id": PHONE}]
    assert [to for to, _ in standin.accepted()] == [PHONE]


async def test_a_read_receipt_is_answered_success_true(standin: StandIn) -> None:
    receipt = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in1"}

    answer = await standin.post(receipt | {"typing_indicator": {"type": "text"}})

    assert (answer.status_code, answer.json()) == (200, {"success": True})


async def test_a_wrong_token_is_401_code_190_with_metas_error_object(standin: StandIn) -> None:
    answer = await standin.post(text_message(), token="EAAG-stale")

    assert answer.status_code == 401
    error = meta_error(answer)
    assert (error["code"], error["type"]) == (190, "OAuthException")
    assert standin.accepted() == []


async def test_no_token_is_the_graph_apis_2500(standin: StandIn) -> None:
    """The Graph API answers a request without a token with 2500 ("An active access token must be used..."),
    HTTP 400, not with 190 (which is for a token it cannot use)."""
    answer = await standin.post(text_message(), token=None)

    assert answer.status_code == 400
    error = meta_error(answer)
    assert (error["code"], error["type"]) == (2500, "OAuthException")
    assert standin.accepted() == []


async def test_a_text_over_4096_characters_is_refused_with_code_100(standin: StandIn) -> None:
    refused = await standin.post(text_message(text={"body": "я" * (TEXT_LIMIT_CHARS + 1)}))
    taken = await standin.post(text_message(text={"body": "я" * TEXT_LIMIT_CHARS}))

    assert refused.status_code == 400
    assert meta_error(refused)["code"] == 100
    assert taken.status_code == 200
    assert [len(text) for _, text in standin.accepted()] == [TEXT_LIMIT_CHARS]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(text_message(messaging_product=None), id="no-messaging-product"),
        pytest.param(text_message(to=None), id="no-recipient"),
        pytest.param(text_message(to=BSUID), id="bsuid-in-to"),
        pytest.param(text_message(text={"body": "   "}), id="blank-body"),
        pytest.param({"messaging_product": "whatsapp", "status": "read"}, id="receipt-without-message-id"),
    ],
)
async def test_an_invalid_body_is_refused_with_code_100(standin: StandIn, body: dict[str, Any]) -> None:
    answer = await standin.post(body)

    assert answer.status_code == 400
    assert meta_error(answer)["code"] == 100
    assert standin.accepted() == [] and standin.receipts() == 0


# --- written from the docs, not from our client ---------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        "simulator/whatsapp.py",
        "loadtests/bench/_standins.py",
        "tests/world.py",
        "simulator/delivery.py",
    ],
)
def test_the_stand_in_decides_no_protocol_fact_with_a_system_helper(module: str) -> None:
    assert forbidden(module) == {}

"""The fake WhatsApp's inspection route that the load run reads its replies from (on the virtual clock)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from simulator.clock import VirtualClock
from simulator.whatsapp import Arrivals, OutboundMessage, Outbox, create_app

from .conftest import START_MS
from .loadtests_support import PHONE


@pytest.fixture
async def fake_whatsapp(driven: VirtualClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(token="t", clock=driven, rng=random.Random(1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wa.test") as http:
        yield http


async def send(http: httpx.AsyncClient, to: str, text: str) -> None:
    body = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": text}}
    response = await http.post("/v21.0/106540352242922/messages", json=body, headers={"Authorization": "Bearer t"})
    assert response.status_code == 200


async def test_inspection_lists_messages_by_number_and_recipient(fake_whatsapp: httpx.AsyncClient) -> None:
    for to, text in ((PHONE, "один"), ("79000000001", "чужое"), (PHONE, "два")):
        await send(fake_whatsapp, to, text)
    doc = (await fake_whatsapp.get("/_sim/messages", params={"to": PHONE})).json()
    assert [(m["seq"], m["text"]) for m in doc["messages"]] == [(1, "один"), (3, "два")]
    assert doc["last_seq"] == 3
    assert doc["messages"][0]["at_ms"] == START_MS  # when the fake accepted it, on its clock
    after = (await fake_whatsapp.get("/_sim/messages", params={"after": 1})).json()
    assert [m["to"] for m in after["messages"]] == ["79000000001", PHONE]
    assert (await fake_whatsapp.get("/_sim/messages", params={"after": -1})).status_code == 422


async def test_inspection_long_poll_returns_when_the_reply_arrives(
    fake_whatsapp: httpx.AsyncClient, driven: VirtualClock
) -> None:
    """It bounded real seconds (0.3 < t < 3.0), which a slow machine missed; the long poll waits on the fake's clock."""

    async def reply_later() -> None:
        await driven.sleep(0.2)
        await send(fake_whatsapp, "79000000001", "не тому")
        await driven.sleep(0.2)
        await send(fake_whatsapp, PHONE, "ответ")

    task = asyncio.create_task(reply_later())
    doc = (await fake_whatsapp.get("/_sim/messages", params={"to": PHONE, "wait_ms": 5_000})).json()
    await task
    assert [m["text"] for m in doc["messages"]] == ["ответ"]
    assert driven.now_ms() - START_MS == 400  # woken by the reply to PHONE, not by the other one or the deadline
    empty = (await fake_whatsapp.get("/_sim/messages", params={"to": PHONE, "after": 2, "wait_ms": 300})).json()
    assert empty["messages"] == [] and driven.now_ms() - START_MS == 400 + 300


def test_outbox_numbers_messages_past_what_it_keeps() -> None:
    box = Outbox(max_kept=3)
    for i in range(5):
        box.record_message(OutboundMessage(f"w{i}", "1", PHONE if i % 2 else "79000000001", f"t{i}", i))
    assert [(n, m.text) for n, m in box.since(0)] == [(3, "t2"), (4, "t3"), (5, "t4")]
    assert [n for n, _ in box.since(3, limit=1)] == [4]
    assert [(n, m.text) for n, m in box.since(0, to=PHONE)] == [(2, "t1"), (4, "t3")]
    assert box.since(5) == [] and box.count == 5


async def test_a_message_wakes_only_its_recipient_s_polls_and_a_poll_that_gave_up_leaves_nothing(
    driven: VirtualClock,
) -> None:
    """Waking every poll on every message took the fake WhatsApp a core with a thousand clients polling."""
    arrivals = Arrivals()
    mine = asyncio.create_task(arrivals.wait(driven, to=PHONE, timeout_s=5))
    also_mine = asyncio.create_task(arrivals.wait(driven, to=PHONE, timeout_s=5))
    other = asyncio.create_task(arrivals.wait(driven, to="79000000001", timeout_s=1))
    anyone = asyncio.create_task(arrivals.wait(driven, to=None, timeout_s=5))
    await asyncio.sleep(0)
    arrivals.notify(PHONE)
    assert await asyncio.gather(mine, also_mine, anyone) == [True, True, True]
    assert driven.now_ms() == START_MS
    assert await other is False  # timed out, never woken by PHONE's message
    assert driven.now_ms() == START_MS + 1_000
    assert arrivals.waiting == 0

"""The fake LLM's scripted dialogue for load runs: OpenAI's chat-completions shapes, and a booking script that
still drives the booking tools (search, then book a share of the offers)."""

from __future__ import annotations

import random
from typing import Any

import httpx
import orjson

from simulator.clock import VirtualClock
from simulator.llm_turn import Calls, Say, read_turn
from simulator.scripted_llm import SPREAD_DAYS, Script, create_app

START_MS = 1_764_140_400_000  # 2025-11-26 07:00 UTC
PROMPT = (
    "Салон: Барбершоп.\n"
    "Сегодня среда, 26 ноября 2025, сейчас 10:00.\n"
    "- Стрижка машинкой: 1000 ₽, 30 мин (id 1)\n"
    "- Мужская стрижка: 1500 ₽, 45 мин (id 2)\n"
)
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
    for name in ("search_slots", "create_booking")
]
SLOTS = {
    "slots": [
        {"datetime": "2025-11-28T15:00", "time": "15:00", "master": "Сергей"},
        {"datetime": "2025-11-28T15:15", "time": "15:15", "master": "Сергей"},
    ]
}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def tool_round(name: str, args: dict[str, Any], result: dict[str, Any]) -> list[dict[str, Any]]:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": orjson.dumps(args).decode()}}
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": orjson.dumps(result).decode()},
    ]


async def complete(messages: list[dict[str, Any]], *, book_share: float = 1.0) -> dict[str, Any]:
    app = create_app(seed=7, clock=VirtualClock(start_ms=START_MS), book_share=book_share, api_key="sk-test")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://llm") as http:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": PROMPT}, *messages], "tools": TOOLS}
        response = await http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-test"})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_a_first_turn_searches_slots_with_an_openai_tool_call() -> None:
    done = await complete([user("Хочу записаться: мужская стрижка, завтра")])  # named as listed: no inflection

    choice = done["choices"][0]
    assert done["object"] == "chat.completion" and choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant" and message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "search_slots"
    args = orjson.loads(call["function"]["arguments"])  # a JSON string, as the reference sends it
    assert args["service"] == "Мужская стрижка"
    assert "2025-11-27" <= args["date"] <= "2025-12-24"  # tomorrow + 0..27 days


async def test_the_search_result_becomes_an_offer_the_client_can_pick_from() -> None:
    done = await complete([user("Хочу записаться"), *tool_round("search_slots", {"date": "2025-11-28"}, SLOTS)])

    choice = done["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == "На 28.11 свободно: 15:00, 15:15. Во сколько вам удобно?"


async def test_the_answer_to_an_offer_books_the_chosen_time_then_confirms() -> None:
    offered = [
        user("Хочу записаться"),
        {"role": "assistant", "content": "На 28.11 свободно: 15:00, 15:15. Во сколько вам удобно?"},
    ]

    booking = await complete([*offered, user("давайте в 15:15")])
    [call] = booking["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "create_booking"
    assert orjson.loads(call["function"]["arguments"]) == {
        "service": "Стрижка машинкой",
        "datetime": "2025-11-28T15:15",
    }

    booked = {"booked": {"datetime": "2025-11-28T15:15", "time": "15:15", "master": "Сергей"}}
    confirmed = await complete([*offered, user("давайте в 15:15"), *tool_round("create_booking", {}, booked)])
    assert confirmed["choices"][0]["message"]["content"] == "✅ Записал вас на 28.11 в 15:15, мастер Сергей. Ждём вас!"


async def test_outside_the_booked_share_an_offer_is_answered_without_booking() -> None:
    offered = [user("Хочу записаться"), {"role": "assistant", "content": "На 28.11 свободно: 15:00. Во сколько?"}]

    done = await complete([*offered, user("давайте в 15:00")], book_share=0.0)

    message = done["choices"][0]["message"]
    assert "tool_calls" not in message and "15:00 на 28.11 пока свободно" in message["content"]


async def test_a_wrong_key_gets_the_real_apis_401() -> None:
    app = create_app(seed=7, clock=VirtualClock(start_ms=START_MS), api_key="sk-test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://llm") as http:
        response = await http.post(
            "/v1/chat/completions", json={"messages": [user("x")]}, headers={"Authorization": "Bearer no"}
        )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_the_share_booked_and_the_days_searched_follow_the_seeded_draws() -> None:
    offered = [
        {"role": "system", "content": PROMPT},
        user("Хочу записаться"),
        {"role": "assistant", "content": "На 28.11 свободно: 15:00. Во сколько?"},
        user("давайте в 15:00"),
    ]
    script = Script(random.Random(1), book_share=0.25)
    booked = sum(isinstance(script.decide(read_turn(offered, frozenset())), Calls) for _ in range(2000))
    assert 400 <= booked <= 600  # a quarter of 2,000, give or take the draw

    opening = read_turn([{"role": "system", "content": PROMPT}, user("Хочу записаться")], frozenset())
    days = set()
    searching = Script(random.Random(2), book_share=1.0)
    for _ in range(500):
        decision = searching.decide(opening)
        assert not isinstance(decision, Say)
        days.add(decision.calls[0][1]["date"])
    assert len(days) > SPREAD_DAYS // 2  # the searches spread over the salon's calendar

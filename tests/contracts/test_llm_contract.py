"""One OpenAI chat-completions contract, run against every stand-in of the LLM.

The stand-ins: the simulator's fake model (`simulator/fake_llm.py`, in process over ASGI), the worker tests'
scripted LLM (`tests/world.py`, a MockTransport) and the benchmark's one-answer LLM (`loadtests/bench/_standins.py`).
What is asserted is what OpenAI's API reference documents for `POST /v1/chat/completions`: the completion
object, tool calls whose `function.arguments` is a JSON string, `tool_choice` none/required/named, the
`max_completion_tokens` parameter, and the 401 `invalid_api_key` error object (`code` a string or null).

Not every stand-in implements every part, and the suite says which: request validation (an impossible
`tool_choice`, refused with 400) is implemented by the simulator's fake and the bench stand-in, not by the world,
whose requests come only from our client, already held to it here; OpenAI's reasoning-model rules
(`max_tokens` refused, temperature 1 only) only by the simulator's fake, the one stand-in a reasoning model is
configured against. Those tests name their stand-ins in `STANDIN_PARTS`.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import httpx
import pymorphy3
import pytest

from loadtests.bench import _standins as standins
from simulator import fake_llm
from simulator.clock import VirtualClock
from system.booking.base import BookingBackend, Master, Service
from system.retry import RetryPolicy
from system.turn.context import Context, Dialog, Preferences
from system.turn.llm import (
    CircuitBreaker,
    LLMAccessDenied,
    LLMClient,
    Message,
    system_message,
    user_message,
)
from system.turn.prompt import system_prompt
from system.turn.tools import BookingTools
from tests import world

from ..conftest import START_MS
from .imports import forbidden

STANDINS = ("simulator", "world", "standins")
# The parts of the contract only some stand-ins implement (see the module's docstring for why).
STANDIN_PARTS = {
    "request validation": ("simulator", "standins"),
    "reasoning models": ("simulator",),
}
ERROR_KEYS = {"message", "type", "param", "code"}  # OpenAI's error object
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}
MSK = ZoneInfo("Europe/Moscow")


@dataclass
class StandIn:
    """An LLM stand-in behind an httpx client: its base URL (with /v1), its key, and a way to script a call."""

    name: str
    http: httpx.AsyncClient
    base_url: str
    key: str
    script_call: Callable[[str], None]  # where the stand-in is scripted: its next answer calls this tool

    def client(self, clock: VirtualClock, *, key: str | None = None) -> LLMClient:
        return LLMClient(
            self.http,
            base_url=self.base_url,
            api_key=key or self.key,
            model="gpt-4.1-mini",
            clock=clock,
            rng=random.Random(0),
            timeout_s=60,
            retry=RetryPolicy(retries=0),
            breaker=CircuitBreaker(clock=clock, failures=100, reset_s=30.0),
            token_param="max_completion_tokens",
        )

    async def post(self, body: dict[str, Any], *, key: str | None = "") -> httpx.Response:
        """`key` "" is the stand-in's own; None sends no Authorization header."""
        given = self.key if key == "" else key
        headers = {"Authorization": f"Bearer {given}"} if given is not None else {}
        return await self.http.post(f"{self.base_url}/chat/completions", json=body, headers=headers)

    async def complete(self, **fields: Any) -> dict[str, Any]:
        response = await self.post(request(**fields))
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


@pytest.fixture(scope="session")
def morph() -> pymorphy3.MorphAnalyzer:
    """One analyser for the session: loading the dictionaries takes a while."""
    return pymorphy3.MorphAnalyzer()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start_ms=START_MS)


@pytest.fixture(params=STANDINS)
async def standin(
    request: pytest.FixtureRequest, clock: VirtualClock, morph: pymorphy3.MorphAnalyzer
) -> AsyncIterator[StandIn]:
    name = request.param
    if name == "world":
        w = world.World()
        http = w.http()
        found = StandIn(
            name,
            http,
            world.LLM_URL,
            world.LLM_API_KEY,
            lambda tool: w.llm_answers.append(world.call(tool, service="Стрижка машинкой")),
        )
    elif name == "simulator":
        app = fake_llm.create_app(clock=clock, morph=morph, api_key="sk-contract")
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        found = StandIn(name, http, "http://llm.test/v1", "sk-contract", lambda tool: None)
    else:
        app = standins.create_app(llm_latency_s=0, clock=clock)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        found = StandIn(name, http, "http://standins.test" + standins.LLM_PREFIX, standins.LLM_API_KEY, lambda _: None)
    async with http:
        yield found


def only(*names: str) -> pytest.MarkDecorator:
    """Run a test against the named stand-ins only (the parts of the contract they implement)."""
    return pytest.mark.parametrize("standin", names, indirect=True)


def prompt() -> str:
    services = [Service(1, "Стрижка машинкой", 800, 800, 30), Service(2, "Мужская стрижка", 1500, 1800, 60)]
    return system_prompt(
        salon_name="Барбершоп на Ленина",
        now=datetime.fromtimestamp(START_MS / 1000, MSK),
        working_hours="10:00–21:00",
        services=services,
        masters=[Master(10, "Сергей"), Master(11, "Алексей")],
        context=Context(dialog=Dialog(), history=(), preferences=Preferences()),
    )


def tools() -> list[dict[str, Any]]:
    return BookingTools(cast(BookingBackend, None), clock=VirtualClock(start_ms=START_MS)).schemas()


def hello() -> list[Message]:
    return [system_message(prompt()), user_message("Здравствуйте")]


def booking() -> list[Message]:
    """A turn a model answers with a tool call (the simulator's fake searches for slots)."""
    return [system_message(prompt()), user_message("Здравствуйте! Запишите на стрижку машинкой послезавтра")]


def request(**fields: Any) -> dict[str, Any]:
    body = {"model": "gpt-4.1-mini", "messages": hello(), "tools": tools(), "max_completion_tokens": 800}
    return {**body, **fields}


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of a refusal, as OpenAI's reference shapes it: `code` a string or null."""
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    return error


def tool_calls_of(answer: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The tool calls of a completion, each checked: an id, type function, a name, arguments a JSON object string."""
    [choice] = answer["choices"]
    message = choice["message"]
    assert message["role"] == "assistant" and message.get("content") is None
    assert choice["finish_reason"] in {"tool_calls", "stop"}  # "stop" where a named function was forced
    assert message["tool_calls"]
    for tool_call in message["tool_calls"]:
        assert isinstance(tool_call["id"], str) and tool_call["id"]
        assert tool_call["type"] == "function"
        assert isinstance(tool_call["function"]["arguments"], str)
        assert isinstance(json.loads(tool_call["function"]["arguments"]), dict)
        yield tool_call


# --- the completion -------------------------------------------------------------------------------------------


async def test_a_completion_has_the_documented_shape(standin: StandIn) -> None:
    answer = await standin.complete()

    assert answer["object"] == "chat.completion"
    assert isinstance(answer["id"], str) and answer["id"]
    assert isinstance(answer["created"], int) and not isinstance(answer["created"], bool)
    assert isinstance(answer["model"], str) and answer["model"]
    [choice] = answer["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in FINISH_REASONS
    assert choice["message"]["role"] == "assistant"
    usage = answer["usage"]
    assert all(isinstance(usage[k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_the_systems_client_gets_a_reply_in_words(standin: StandIn, clock: VirtualClock) -> None:
    completion = await standin.client(clock).complete(hello())

    assert completion.content and not completion.tool_calls
    assert completion.finish_reason == "stop"


async def test_max_completion_tokens_is_accepted(standin: StandIn) -> None:
    response = await standin.post(request(max_completion_tokens=50))

    assert response.status_code == 200


# --- tool_choice ----------------------------------------------------------------------------------------------


async def test_a_named_tool_choice_calls_that_function(standin: StandIn) -> None:
    name = tools()[-1]["function"]["name"]

    answer = await standin.complete(tool_choice={"type": "function", "function": {"name": name}})

    assert [c["function"]["name"] for c in tool_calls_of(answer)] == [name]


async def test_tool_choice_required_calls_at_least_one_offered_tool(standin: StandIn) -> None:
    offered = {t["function"]["name"] for t in tools()}

    answer = await standin.complete(tool_choice="required")  # to a greeting, answered in words under auto

    called = [c["function"]["name"] for c in tool_calls_of(answer)]
    assert called and set(called) <= offered


async def test_tool_choice_none_never_calls_a_tool(standin: StandIn) -> None:
    standin.script_call("search_slots")  # where the stand-in is scripted, the script would call a tool

    answer = await standin.complete(messages=booking(), tool_choice="none")

    [choice] = answer["choices"]
    assert "tool_calls" not in choice["message"] and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"


@only(*STANDIN_PARTS["request validation"])
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"tool_choice": {"type": "function", "function": {"name": "launch_rockets"}}}, id="unknown"),
        pytest.param({"tool_choice": "always"}, id="bad-mode"),
        pytest.param({"tools": None, "tool_choice": "auto"}, id="no-tools"),
    ],
)
async def test_an_impossible_tool_choice_is_refused(standin: StandIn, fields: dict[str, Any]) -> None:
    response = await standin.post(request(**fields))

    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", "tool_choice")


@only(*STANDIN_PARTS["request validation"])
async def test_a_request_without_messages_is_refused(standin: StandIn) -> None:
    response = await standin.post(request(messages=[]))

    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"


# --- the key --------------------------------------------------------------------------------------------------


async def test_a_wrong_key_gets_401_invalid_api_key(standin: StandIn) -> None:
    response = await standin.post(request(), key="sk-wrong-key-0123")

    assert response.status_code == 401
    error = error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert "sk-wrong-key-0123" not in error["message"]  # OpenAI shows only the key's first characters


async def test_a_missing_key_gets_401(standin: StandIn) -> None:
    response = await standin.post(request(), key=None)

    assert response.status_code == 401
    error = error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", None)  # no key is not a wrong key


async def test_the_systems_client_takes_a_wrong_key_as_access_denied(standin: StandIn, clock: VirtualClock) -> None:
    with pytest.raises(LLMAccessDenied, match="HTTP 401"):
        await standin.client(clock, key="sk-wrong").complete(hello(), tools=tools())


# --- reasoning models -----------------------------------------------------------------------------------------


@only(*STANDIN_PARTS["reasoning models"])
async def test_max_tokens_with_max_completion_tokens_is_refused(standin: StandIn) -> None:
    response = await standin.post(request(max_tokens=800))

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_parameter_combination"


@only(*STANDIN_PARTS["reasoning models"])
@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"max_tokens": 800, "max_completion_tokens": None}, "max_tokens", "unsupported_parameter"),
        ({"temperature": 0.2}, "temperature", "unsupported_value"),
    ],
)
async def test_a_reasoning_model_refuses_max_tokens_and_a_temperature(
    standin: StandIn, fields: dict[str, Any], param: str, code: str
) -> None:
    response = await standin.post(request(model="o3-mini", **fields))

    assert response.status_code == 400
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)


@only(*STANDIN_PARTS["reasoning models"])
async def test_a_reasoning_model_accepts_what_the_systems_client_sends(
    standin: StandIn, clock: VirtualClock, make_settings: Callable[..., Any]
) -> None:
    settings = make_settings(llm_base_url=standin.base_url, llm_api_key=standin.key, llm_model="o3-mini")
    client = LLMClient.from_settings(settings, http=standin.http, clock=clock, rng=random.Random(1))

    completion = await client.complete(booking(), tools=tools())

    assert completion.tool_calls


# --- written from the docs, not from our client ---------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        "loadtests/bench/_standins.py",
        "tests/world.py",
        "simulator/fake_llm.py",
    ],
)
def test_the_stand_in_decides_no_protocol_fact_with_a_system_helper(module: str) -> None:
    assert forbidden(module) == {}

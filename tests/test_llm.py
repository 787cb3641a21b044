"""The LLM client against OpenAI-shaped responses served by respx, on the virtual clock."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from simulator.clock import VirtualClock
from system.errors import SettingsError
from system.models import InboundMessage
from system.retry import RetryPolicy
from system.runtime import Runtime, build_worker
from system.settings import Settings, load_settings
from system.turn.llm import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    Completion,
    LLMAccessDenied,
    LLMClient,
    LLMQuotaExhausted,
    LLMRequestRejected,
    LLMUnavailable,
    MalformedToolCall,
    ToolCall,
    assistant_message,
    function_tool,
    is_reasoning_model,
    parse_retry_after,
    system_message,
    token_param_for,
    tool_message,
    user_message,
)
from system.turn.worker import FALLBACK_REPLY
from tests.conftest import START_MS
from tests.world import World, world_env

BASE = "https://llm.test/v1"
URL = f"{BASE}/chat/completions"
RETRIES = 2
TIMEOUT_S = 60.0
MESSAGES = [system_message("You are the salon administrator."), user_message("Хочу подстричься завтра")]
TOOLS = [
    function_tool(
        name="find_slots",
        description="Free times of a master on a day.",
        parameters={
            "type": "object",
            "properties": {"date": {"type": "string"}, "master_id": {"type": "integer"}},
            "required": ["date"],
        },
    )
]

# A DeepSeek chat-completions answer asking for a tool (shape as returned by api.deepseek.com).
DEEPSEEK_TOOL_CALLS: dict[str, Any] = {
    "id": "9f2c6b1e-4a57-4a7e-9a8b-3f1d2c3b4a5e",
    "object": "chat.completion",
    "created": 1764064800,
    "model": "deepseek-chat",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_0_5e8a2f0c-1b7d-4c3e-8f6a-2d9b0e1c4a7f",
                        "type": "function",
                        "function": {"name": "find_slots", "arguments": '{"date": "2025-11-26", "master_id": 42}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 412,
        "completion_tokens": 27,
        "total_tokens": 439,
        "prompt_tokens_details": {"cached_tokens": 384},
        "prompt_cache_hit_tokens": 384,
        "prompt_cache_miss_tokens": 28,
    },
    "system_fingerprint": "fp_8802369eaa_prod0425fp8",
}


RATE_LIMITED = {
    "error": {
        "message": "Rate limit reached for requests",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
QUOTA = {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota",
    "param": None,
}
CLIENT = "79001234567"


def answer(content: str = "Завтра в 12:00 свободно у Ивана.", *, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1764064800,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    }


def ok(payload: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json=payload if payload is not None else answer())


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(assert_all_called=False)


@pytest.fixture
async def http(router: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        yield client


@pytest.fixture
def make_client(http: httpx.AsyncClient, clock: VirtualClock) -> Callable[..., LLMClient]:
    def make(
        *, base_url: str = BASE, api_key: str | None = "sk-test", failures: int = 5, reset_s: float = 30.0
    ) -> LLMClient:
        return LLMClient(
            http,
            base_url=base_url,
            api_key=api_key,
            model="deepseek-chat",
            clock=clock,
            rng=random.Random(7),
            timeout_s=TIMEOUT_S,
            retry=RetryPolicy(retries=RETRIES, base_s=0.5, max_s=30.0),
            breaker=CircuitBreaker(clock=clock, failures=failures, reset_s=reset_s),
        )

    return make


def state_of(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so mypy does not carry a narrowed state across record_*()


def sent_body(route: respx.Route) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls.last.request.content)
    return body


# ------------------------------------------------------------------------------------------ request


async def test_request_carries_model_messages_tools_and_bearer(
    router: respx.MockRouter, make_client: Callable[..., LLMClient]
) -> None:
    route = router.post(URL).mock(return_value=ok())
    await make_client().complete(MESSAGES, tools=TOOLS)
    body = sent_body(route)
    assert body == {
        "model": "deepseek-chat",
        "messages": MESSAGES,
        "tools": TOOLS,
        "tool_choice": "auto",
        "max_tokens": 800,
    }
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-test"


async def test_without_key_or_tools_neither_is_sent(
    router: respx.MockRouter, make_client: Callable[..., LLMClient]
) -> None:
    route = router.post(URL).mock(return_value=ok())
    await make_client(api_key=None).complete(MESSAGES)
    assert "authorization" not in route.calls.last.request.headers
    assert "tools" not in sent_body(route) and "tool_choice" not in sent_body(route)


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        ("https://api.deepseek.com", "https://api.deepseek.com/chat/completions"),
        ("https://api.deepseek.com/", "https://api.deepseek.com/chat/completions"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
        ("http://localhost:11434/v1/", "http://localhost:11434/v1/chat/completions"),
    ],
)
async def test_base_url_with_or_without_v1_and_slash(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], base_url: str, url: str
) -> None:
    route = router.post(url).mock(return_value=ok())
    await make_client(base_url=base_url).complete(MESSAGES)
    assert route.call_count == 1


def test_from_settings_takes_the_llm_fields(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, clock: VirtualClock
) -> None:
    settings = make_settings(llm_base_url="http://vllm:8000/v1/", llm_api_key="k", llm_breaker_failures=2)
    client = LLMClient.from_settings(settings, http=http, clock=clock, rng=random.Random(1))
    client.breaker.record_failure()
    client.breaker.record_failure()
    assert client.breaker.state is BreakerState.OPEN


async def _body_sent_by(settings: Settings, router: respx.MockRouter, http: httpx.AsyncClient) -> dict[str, Any]:
    route = router.post(f"{settings.llm_base_url.rstrip('/')}/chat/completions").mock(return_value=ok())
    client = LLMClient.from_settings(settings, http=http, clock=VirtualClock(start_ms=START_MS), rng=random.Random(1))
    await client.complete(MESSAGES)
    return sent_body(route)


@pytest.mark.parametrize("model", ["o3-mini", "o4-mini", "gpt-5-mini", "openai/o3"])
async def test_reasoning_models_get_max_completion_tokens_and_no_temperature(
    make_settings: Callable[..., Settings], router: respx.MockRouter, http: httpx.AsyncClient, model: str
) -> None:
    settings = make_settings(llm_base_url="https://api.openai.com/v1", llm_model=model, llm_max_output_tokens=1500)
    body = await _body_sent_by(settings, router, http)
    assert body["max_completion_tokens"] == 1500
    assert "max_tokens" not in body and "temperature" not in body


async def test_any_model_at_openai_gets_max_completion_tokens(
    make_settings: Callable[..., Settings], router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    settings = make_settings(llm_base_url="https://api.openai.com/v1", llm_model="gpt-4o-mini", llm_temperature=0.2)
    body = await _body_sent_by(settings, router, http)
    assert body["max_completion_tokens"] == 800 and "max_tokens" not in body
    assert body["temperature"] == 0.2


async def test_deepseek_gets_max_tokens_as_its_docs_say(
    make_settings: Callable[..., Settings], router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    body = await _body_sent_by(make_settings(), router, http)  # the default: api.deepseek.com, deepseek-chat
    assert body["max_tokens"] == 800
    assert "max_completion_tokens" not in body and "temperature" not in body


async def test_token_param_setting_overrides_the_guess(
    make_settings: Callable[..., Settings], router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    settings = make_settings(llm_base_url="http://vllm:8000/v1", llm_token_param="max_completion_tokens")
    body = await _body_sent_by(settings, router, http)
    assert body["max_completion_tokens"] == 800 and "max_tokens" not in body


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"llm_model": "o3-mini", "llm_temperature": "0.2"}, "AIADMIN_LLM_TEMPERATURE"),
        ({"llm_model": "gpt-5", "llm_token_param": "max_tokens"}, "AIADMIN_LLM_TOKEN_PARAM"),
    ],
)
def test_a_reasoning_model_with_what_it_refuses_stops_start_up(
    make_settings: Callable[..., Settings], http: httpx.AsyncClient, env: dict[str, str], variable: str
) -> None:
    settings = make_settings(llm_base_url="https://api.openai.com/v1", **env)
    with pytest.raises(SettingsError, match=variable):
        LLMClient.from_settings(settings, http=http, clock=VirtualClock(start_ms=START_MS), rng=random.Random(1))


@pytest.mark.parametrize(
    ("base_url", "model", "param"),
    [
        ("https://api.openai.com/v1", "gpt-4o", "max_completion_tokens"),
        ("https://openrouter.ai/api/v1", "openai/o1", "max_completion_tokens"),
        ("https://my-azure.example/v1", "gpt-5-nano", "max_completion_tokens"),
        ("https://api.deepseek.com", "deepseek-reasoner", "max_tokens"),
        ("http://localhost:11434/v1", "llama3.1", "max_tokens"),
        ("https://openrouter.ai/api/v1", "openai/gpt-5-chat", "max_tokens"),
    ],
)
def test_auto_token_param_by_provider_and_model_family(base_url: str, model: str, param: str) -> None:
    assert token_param_for("auto", base_url=base_url, model=model) == param


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AIADMIN_LLM_TOKEN_PARAM", "max_output"),
        ("AIADMIN_LLM_TEMPERATURE", "2.5"),
        ("AIADMIN_LLM_MAX_OUTPUT_TOKENS", "0"),
    ],
)
def test_llm_output_settings_are_validated(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})


def test_reasoning_model_family() -> None:
    assert [
        m for m in ("o1", "o3", "o4-mini", "gpt-5", "gpt-5.1", "gpt-4o", "gpt-5-chat-latest") if is_reasoning_model(m)
    ] == [
        "o1",
        "o3",
        "o4-mini",
        "gpt-5",
        "gpt-5.1",
    ]


# ------------------------------------------------------------------------------------------ replies


async def test_content_answer_is_parsed(router: respx.MockRouter, make_client: Callable[..., LLMClient]) -> None:
    router.post(URL).mock(return_value=ok())
    completion = await make_client().complete(MESSAGES)
    assert completion == Completion(
        content="Завтра в 12:00 свободно у Ивана.",
        tool_calls=(),
        finish_reason="stop",
        usage={"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    )
    assert completion.as_message() == {"role": "assistant", "content": "Завтра в 12:00 свободно у Ивана."}


async def test_deepseek_tool_calls_are_parsed(router: respx.MockRouter, make_client: Callable[..., LLMClient]) -> None:
    router.post(URL).mock(return_value=ok(DEEPSEEK_TOOL_CALLS))
    completion = await make_client().complete(MESSAGES, tools=TOOLS)
    (call,) = completion.tool_calls
    assert call.id == "call_0_5e8a2f0c-1b7d-4c3e-8f6a-2d9b0e1c4a7f"
    assert call.name == "find_slots"
    assert call.parsed_arguments() == {"date": "2025-11-26", "master_id": 42}
    assert completion.finish_reason == "tool_calls"
    assert completion.usage["prompt_cache_hit_tokens"] == 384
    assert "prompt_tokens_details" not in completion.usage
    assert completion.raw == DEEPSEEK_TOOL_CALLS
    assert completion.as_message() == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": "find_slots", "arguments": '{"date": "2025-11-26", "master_id": 42}'},
            }
        ],
    }


def test_message_helpers_have_the_wire_shape() -> None:
    call = ToolCall(id="c1", name="find_slots", arguments="{}")
    assert assistant_message(None, [call]) == {"role": "assistant", "content": None, "tool_calls": [call.to_wire()]}
    assert tool_message("c1", '{"slots": []}') == {"role": "tool", "tool_call_id": "c1", "content": '{"slots": []}'}


@pytest.mark.parametrize("arguments", ['{"date": ', "[1, 2]", '"2025-11-26"', "null"])
def test_parsed_arguments_rejects_anything_but_a_json_object(arguments: str) -> None:
    with pytest.raises(MalformedToolCall):
        ToolCall(id="c1", name="find_slots", arguments=arguments).parsed_arguments()


def test_blank_arguments_are_an_empty_object() -> None:
    assert ToolCall(id="c1", name="list_services", arguments="").parsed_arguments() == {}


def _with_tool_call(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(json.dumps(DEEPSEEK_TOOL_CALLS))
    call = payload["choices"][0]["message"]["tool_calls"][0]
    for key, value in changes.items():
        target = call["function"] if key in ("name", "arguments") else call
        if value is None:
            target.pop(key)
        else:
            target[key] = value
    return payload


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_with_tool_call(id=None), id="no-id"),
        pytest.param(_with_tool_call(name=None), id="no-name"),
        pytest.param(_with_tool_call(arguments={"date": "2025-11-26"}), id="arguments-not-a-string"),
        pytest.param({**answer(), "choices": []}, id="no-choices"),
        pytest.param({"error": "overloaded"}, id="no-choices-key"),
    ],
)
async def test_malformed_reply_is_not_retried(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], payload: dict[str, Any]
) -> None:
    route = router.post(URL).mock(return_value=ok(payload))
    client = make_client()
    with pytest.raises(MalformedToolCall):
        await client.complete(MESSAGES, tools=TOOLS)
    assert route.call_count == 1
    assert client.breaker.state is BreakerState.CLOSED


async def test_body_that_is_not_json_is_malformed(
    router: respx.MockRouter, make_client: Callable[..., LLMClient]
) -> None:
    router.post(URL).mock(return_value=httpx.Response(200, text="<html>gateway</html>"))
    with pytest.raises(MalformedToolCall):
        await make_client().complete(MESSAGES)


# ------------------------------------------------------------------------------------------ retries


async def test_429_waits_retry_after_then_succeeds(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock
) -> None:
    limited = httpx.Response(429, headers={"Retry-After": "7"}, json={"error": {"message": "Rate limit reached"}})
    route = router.post(URL).mock(side_effect=[limited, ok()])
    completion = await make_client().complete(MESSAGES)
    assert completion.content
    assert route.call_count == 2
    assert driven.now_ms() - START_MS >= 7000


async def test_retry_after_longer_than_the_longest_backoff_is_not_waited(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock
) -> None:
    route = router.post(URL).mock(return_value=httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(LLMUnavailable, match="429"):
        await make_client().complete(MESSAGES)
    assert route.call_count == 1
    assert driven.now_ms() == START_MS


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_every_time_is_unavailable_after_all_retries(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock, status: int
) -> None:
    route = router.post(URL).mock(return_value=httpx.Response(status, text="Service Unavailable"))
    with pytest.raises(LLMUnavailable, match=f"after {RETRIES + 1} attempt") as caught:
        await make_client().complete(MESSAGES)
    assert route.call_count == RETRIES + 1
    assert type(caught.value) is LLMUnavailable and caught.value.retryable


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.ConnectError, httpx.RemoteProtocolError]
)
async def test_timeouts_and_transport_errors_are_retried_then_unavailable(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock, error: type[Exception]
) -> None:
    route = router.post(URL).mock(side_effect=error)
    with pytest.raises(LLMUnavailable) as caught:
        await make_client().complete(MESSAGES)
    assert route.call_count == RETRIES + 1
    assert type(caught.value) is LLMUnavailable


async def test_slow_llm_times_out_on_the_injected_clock(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock
) -> None:
    started: list[int] = []  # respx records a call only once it returns

    async def slow(request: httpx.Request) -> httpx.Response:
        started.append(driven.now_ms())
        await driven.sleep(TIMEOUT_S * 2)
        return ok()

    router.post(URL).mock(side_effect=slow)
    with pytest.raises(LLMUnavailable, match="no response within 60s"):
        await make_client().complete(MESSAGES)
    assert len(started) == RETRIES + 1
    elapsed_s = (driven.now_ms() - START_MS) / 1000
    assert (RETRIES + 1) * TIMEOUT_S <= elapsed_s < (RETRIES + 1) * TIMEOUT_S * 2


async def test_timeout_then_success_returns_the_answer(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock
) -> None:
    route = router.post(URL).mock(side_effect=[httpx.ReadTimeout("slow"), ok()])
    assert (await make_client().complete(MESSAGES)).content
    assert route.call_count == 2


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 422])
async def test_client_errors_are_rejected_after_one_request(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], status: int
) -> None:
    body = {"error": {"message": "Authentication Fails (no such user)", "type": "authentication_error"}}
    route = router.post(URL).mock(return_value=httpx.Response(status, json=body))
    with pytest.raises(LLMRequestRejected, match=f"HTTP {status}: Authentication Fails") as caught:
        await make_client().complete(MESSAGES)
    assert route.call_count == 1
    assert not caught.value.retryable


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("2.5", now_ms=START_MS) == 2.5
    assert parse_retry_after("Tue, 25 Nov 2025 10:00:30 GMT", now_ms=START_MS) == 30.0
    assert parse_retry_after("soon", now_ms=START_MS) == 0.0
    assert parse_retry_after(None, now_ms=START_MS) == 0.0


async def test_429_with_only_retry_after_ms_waits_that_long(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock
) -> None:
    limited = httpx.Response(429, headers={"retry-after-ms": "7500"}, json=RATE_LIMITED)
    route = router.post(URL).mock(side_effect=[limited, ok()])
    assert (await make_client().complete(MESSAGES)).content
    assert route.call_count == 2
    # The backoff of the first retry is at most 0.5 s, so the wait is the header's.
    assert driven.now_ms() - START_MS == 7500


async def test_retry_after_ms_takes_precedence_over_retry_after(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock
) -> None:
    limited = httpx.Response(429, headers={"retry-after-ms": "2500", "retry-after": "20"}, json=RATE_LIMITED)
    router.post(URL).mock(side_effect=[limited, ok()])
    await make_client().complete(MESSAGES)
    assert driven.now_ms() - START_MS == 2500


async def test_retry_after_ms_beyond_the_longest_backoff_is_not_waited(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock
) -> None:
    route = router.post(URL).mock(return_value=httpx.Response(429, headers={"retry-after-ms": "600000"}))
    with pytest.raises(LLMUnavailable, match="429"):
        await make_client().complete(MESSAGES)
    assert route.call_count == 1
    assert driven.now_ms() == START_MS


@pytest.mark.parametrize(
    "error",
    [
        pytest.param({**QUOTA, "code": "insufficient_quota"}, id="code"),
        pytest.param({**QUOTA, "code": None}, id="type-only"),
    ],
)
async def test_insufficient_quota_is_permanent_and_not_retried(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock, error: dict[str, Any]
) -> None:
    route = router.post(URL).mock(return_value=httpx.Response(429, headers={"retry-after": "1"}, json={"error": error}))
    client = make_client()
    with capture_logs() as logs, pytest.raises(LLMQuotaExhausted, match="exceeded your current quota") as caught:
        await client.complete(MESSAGES)
    assert route.call_count == 1
    assert not caught.value.retryable
    assert driven.now_ms() == START_MS
    assert client.breaker.state is BreakerState.CLOSED
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["llm.account_problem"]


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_access_denied_and_not_retried(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], status: int
) -> None:
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-wrong.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    route = router.post(URL).mock(return_value=httpx.Response(status, json=body))
    with pytest.raises(LLMAccessDenied, match=f"HTTP {status}: Incorrect API key") as caught:
        await make_client().complete(MESSAGES)
    assert route.call_count == 1
    assert isinstance(caught.value, LLMRequestRejected) and not caught.value.retryable


async def test_402_insufficient_balance_is_quota_exhausted(
    router: respx.MockRouter, make_client: Callable[..., LLMClient]
) -> None:
    router.post(URL).mock(return_value=httpx.Response(402, json={"error": {"message": "Insufficient Balance"}}))
    with pytest.raises(LLMQuotaExhausted, match="Insufficient Balance"):
        await make_client().complete(MESSAGES)


async def test_exhausted_quota_ends_the_turn_in_one_apology_and_a_dead_letter(
    make_runtime: Callable[..., Runtime], driven: VirtualClock, message: Callable[..., InboundMessage]
) -> None:
    clock = driven
    world = World()
    world.llm_answers.extend([httpx.Response(429, json={"error": {**QUOTA, "code": "insufficient_quota"}})] * 2)
    rt = make_runtime(**world_env())  # one LLM retry allowed: a quota error must not use it
    await rt.start()
    async with world.http() as http:
        worker = build_worker(rt, http=http, consumer="w1", concurrency=1)
        await rt.store.append(message("привет", phone=CLIENT, received_ms=clock.now_ms()), now_ms=clock.now_ms())
        clock.advance_to(clock.now_ms() + rt.settings.batch_timeout_ms)
        await rt.batcher(processor_id="b").tick()
        [delivery] = await rt.queue.read("w1", count=1, now_ms=clock.now_ms())
        await worker.handle(delivery)
    assert len(world.llm_requests) == 1
    assert world.sent == [(CLIENT, FALLBACK_REPLY)]
    [letter] = await rt.queue.dead_letters()
    assert "LLMQuotaExhausted" in letter.error


# ------------------------------------------------------------------------------------------ breaker


async def test_open_circuit_refuses_without_a_request_until_a_trial_succeeds(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock
) -> None:
    route = router.post(URL).mock(return_value=httpx.Response(503))
    client = make_client(failures=2, reset_s=30.0)
    for _ in range(2):
        with pytest.raises(LLMUnavailable):
            await client.complete(MESSAGES)
    assert route.call_count == 2 * (RETRIES + 1)

    with pytest.raises(CircuitOpen):
        await client.complete(MESSAGES)
    assert route.call_count == 2 * (RETRIES + 1)

    driven.advance_to(driven.now_ms() + 30_000)
    route.mock(return_value=ok())
    assert (await client.complete(MESSAGES)).content
    assert client.breaker.state is BreakerState.CLOSED


async def test_failed_trial_reopens_the_circuit(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], driven: VirtualClock
) -> None:
    route = router.post(URL).mock(side_effect=httpx.ConnectError)
    client = make_client(failures=1, reset_s=10.0)
    client.breaker.record_failure()
    driven.advance_to(START_MS + 10_000)
    with pytest.raises(LLMUnavailable):
        await client.complete(MESSAGES)
    assert client.breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        await client.complete(MESSAGES)
    assert route.call_count == RETRIES + 1


def test_breaker_opens_after_n_consecutive_failures(clock: VirtualClock) -> None:
    breaker = CircuitBreaker(clock=clock, failures=3, reset_s=30.0)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow() and state_of(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN and not breaker.allow()


def test_half_open_admits_one_trial_and_success_closes(clock: VirtualClock) -> None:
    breaker = CircuitBreaker(clock=clock, failures=1, reset_s=30.0)
    breaker.record_failure()
    clock.advance_to(START_MS + 29_999)
    assert not breaker.allow()
    clock.advance_to(START_MS + 30_000)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED and breaker.allow()


def test_failed_trial_reopens_for_another_reset_period(clock: VirtualClock) -> None:
    breaker = CircuitBreaker(clock=clock, failures=1, reset_s=30.0)
    breaker.record_failure()
    clock.advance_to(START_MS + 30_000)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance_to(START_MS + 59_999)
    assert not breaker.allow()
    clock.advance_to(START_MS + 60_000)
    assert breaker.allow()


def test_abandoned_trial_frees_the_slot(clock: VirtualClock) -> None:
    breaker = CircuitBreaker(clock=clock, failures=1, reset_s=30.0)
    breaker.record_failure()
    clock.advance_to(START_MS + 30_000)
    assert breaker.allow()
    breaker.abandon()
    assert breaker.allow()


async def test_cancelled_trial_does_not_wedge_the_breaker(
    router: respx.MockRouter, make_client: Callable[..., LLMClient], clock: VirtualClock
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await clock.sleep(3600)
        return ok()

    router.post(URL).mock(side_effect=hang)
    client = make_client(failures=1, reset_s=30.0)
    client.breaker.record_failure()
    clock.advance_to(START_MS + 30_000)
    call = asyncio.create_task(client.complete(MESSAGES))
    await clock.settle()
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    assert client.breaker.allow()


def test_late_failure_does_not_extend_the_open_period(clock: VirtualClock) -> None:
    breaker = CircuitBreaker(clock=clock, failures=1, reset_s=30.0)
    breaker.record_failure()
    clock.advance_to(START_MS + 20_000)
    breaker.record_failure()
    clock.advance_to(START_MS + 30_000)
    assert breaker.allow()


# ------------------------------------------------------------------------------------------ logs


async def test_info_logs_metrics_but_never_the_prompt_or_reply(
    router: respx.MockRouter, make_client: Callable[..., LLMClient]
) -> None:
    router.post(URL).mock(return_value=ok())
    with capture_logs() as logs:
        await make_client().complete(MESSAGES)
    (info,) = [entry for entry in logs if entry["log_level"] == "info"]
    assert info["event"] == "llm.completion"
    assert info["model"] == "deepseek-chat"
    assert info["prompt_tokens"] == 30 and info["completion_tokens"] == 12
    assert info["finish_reason"] == "stop" and "latency_ms" in info
    assert "Ивана" not in json.dumps([e for e in logs if e["log_level"] != "debug"], ensure_ascii=False)
    assert "подстричься" not in json.dumps([e for e in logs if e["log_level"] != "debug"], ensure_ascii=False)

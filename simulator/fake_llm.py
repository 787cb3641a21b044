"""The fake LLM: an OpenAI-compatible `/chat/completions` server that answers like a competent model.

Everything it says is decided by `simulator.llm_policy` from the request alone (prompt, history, this turn's
tool results). Wording varies with a hash of the conversation and the seed; latency and faults are drawn
from a `random.Random` seeded by the seed, the request's hash and how often that request was seen, so a run
is reproducible however the conversations interleave, and a retried request can succeed.

Where our client depends on it, it answers as OpenAI's chat-completions reference says: errors are
`{"error": {"message", "type", "param", "code"}}` with `code` a string or null; a wrong bearer key is a 401
`invalid_api_key` (when the fake is given a key); `tool_choice` is honoured; `max_tokens` and
`max_completion_tokens` together, `max_tokens` for a reasoning model (o-series, gpt-5) and a temperature
other than 1 for one are refused with 400, as the real API refuses them.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
import pymorphy3
from fastapi import FastAPI, Request, Response

from simulator.llm_policy import Policy
from simulator.llm_turn import Calls, Decision, Say, Step, read_turn
from simulator.nlu import CachedMorph, Morph
from system.clock import Clock

MODEL = "fake-admin-1"
SEEN_REQUESTS_KEPT = 100_000  # request hashes remembered for the per-request attempt counter
FALLBACK_TEXT = "Минутку, уточню и вернусь с ответом 🙏 Если удобно, напишите, пожалуйста, что именно нужно."
# OpenAI's reasoning models (the o-series and gpt-5 but not gpt-5-chat), also behind a provider prefix.
REASONING_MODEL = re.compile(r"^(o\d|gpt-5(?!.*-chat))")
TOOL_CHOICE_MODES = frozenset({"none", "auto", "required"})


def _chars_to_tokens(chars: int) -> int:
    return max(1, chars // 4)  # roughly 4 characters a token


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Seconds an answer takes: triangular between `min_s` and `max_s`, most often `mode_s`."""

    min_s: float = 5.0
    mode_s: float = 8.0
    max_s: float = 15.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_s <= self.mode_s <= self.max_s:
            raise ValueError("need 0 <= min_s <= mode_s <= max_s")

    def sample_s(self, rng: random.Random) -> float:
        return rng.triangular(self.min_s, self.max_s, self.mode_s)


class Fault(StrEnum):
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    MALFORMED = "malformed"
    QUOTA = "quota"


@dataclass(frozen=True, slots=True)
class LlmFaults:
    """Probabilities (summing to at most 1) that a request fails, and how."""

    timeout: float = 0.0  # no answer for `timeout_s`: longer than any client's deadline
    rate_limited: float = 0.0  # 429 with Retry-After
    server_error: float = 0.0  # 500
    malformed: float = 0.0  # a tool call whose arguments are not JSON
    quota: float = 0.0  # 429 insufficient_quota: the account has no credit left
    timeout_s: float = 3600.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        odds = (self.timeout, self.rate_limited, self.server_error, self.malformed, self.quota)
        if any(p < 0 for p in odds) or sum(odds) > 1 + 1e-9:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")

    def draw(self, rng: random.Random) -> Fault | None:
        roll = rng.random()
        for fault, p in (
            (Fault.TIMEOUT, self.timeout),
            (Fault.RATE_LIMITED, self.rate_limited),
            (Fault.SERVER_ERROR, self.server_error),
            (Fault.MALFORMED, self.malformed),
            (Fault.QUOTA, self.quota),
        ):
            if roll < p:
                return fault
            roll -= p
        return None


class FakeModel:
    """The framework-free core: a request body in, a chat.completion body out."""

    def __init__(self, *, seed: int, morph: Morph) -> None:
        self._seed = seed
        self._morph = morph

    def complete(self, body: dict[str, Any], *, created_s: int, malformed: bool = False) -> dict[str, Any]:
        messages: list[dict[str, Any]] = body["messages"]
        tools = frozenset(
            str((t.get("function") or {}).get("name")) for t in body.get("tools") or () if isinstance(t, dict)
        )
        key = hashlib.sha256(str(self._seed).encode() + orjson.dumps(messages, option=orjson.OPT_SORT_KEYS))
        digest = key.hexdigest()

        def pick(label: str, options: Sequence[str]) -> str:
            index = int(hashlib.sha256(f"{digest}:{label}".encode()).hexdigest()[:8], 16) % len(options)
            return options[index]

        turn = read_turn(messages, tools)
        decision = _guarded(Policy(morph=self._morph, pick=pick).decide(turn), turn.steps, tools)
        choice = body.get("tool_choice", "auto")
        decision = _as_chosen(decision, choice, _tool_names(body))
        # A cut-off tool call is a tool call: not where none may be made.
        message, finish = _message(decision, digest, malformed=malformed and choice != "none")
        prompt_chars = sum(len(str(m.get("content") or "")) for m in messages) + len(orjson.dumps(body.get("tools")))
        answer_chars = len(message.get("content") or "") + sum(
            len(c["function"]["arguments"]) for c in message.get("tool_calls", ())
        )
        usage = {"prompt_tokens": _chars_to_tokens(prompt_chars), "completion_tokens": _chars_to_tokens(answer_chars)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"chatcmpl-{digest[:24]}",
            "object": "chat.completion",
            "created": created_s,
            "model": str(body.get("model") or MODEL),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }


def _guarded(decision: Decision, steps: Sequence[Step], tools: frozenset[str]) -> Decision:
    """Never call a tool the request did not offer, and never repeat a call of this turn (a loop)."""
    if isinstance(decision, Say):
        return decision
    done = {(s.name, orjson.dumps(s.args, option=orjson.OPT_SORT_KEYS)) for s in steps}
    for name, args in decision.calls:
        if name not in tools or (name, orjson.dumps(args, option=orjson.OPT_SORT_KEYS)) in done:
            return Say(FALLBACK_TEXT)
    return decision


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [str((t.get("function") or {}).get("name")) for t in body.get("tools") or () if isinstance(t, dict)]


def _as_chosen(decision: Decision, choice: Any, offered: Sequence[str]) -> Decision:
    """`tool_choice` as the reference defines it: none never calls, required calls one or more, a named
    function is the one called; auto leaves the choice to the model."""
    if choice == "none":
        return decision if isinstance(decision, Say) else Say(FALLBACK_TEXT)
    if choice == "required":
        return decision if isinstance(decision, Calls) or not offered else Calls(((offered[0], {}),))
    if isinstance(choice, dict):
        name = str(choice["function"]["name"])
        calls = tuple(c for c in decision.calls if c[0] == name) if isinstance(decision, Calls) else ()
        return Calls(calls or ((name, {}),))
    return decision


def _message(decision: Decision, digest: str, *, malformed: bool) -> tuple[dict[str, Any], str]:
    if isinstance(decision, Say) and not malformed:
        return {"role": "assistant", "content": decision.text}, "stop"
    calls = decision.calls if isinstance(decision, Calls) else (("search_slots", {"service": ""}),)
    tool_calls = []
    for i, (name, args) in enumerate(calls):
        arguments = orjson.dumps(args).decode()
        if malformed:
            arguments = arguments[: max(1, len(arguments) // 2)]  # cut mid-object, as a truncated model reply is
        tool_calls.append(
            {"id": f"call_{digest[:12]}_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        )
    return {"role": "assistant", "content": None, "tool_calls": tool_calls}, "tool_calls"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: a 400 `invalid_request_error` naming the parameter."""

    message: str
    param: str | None = None
    code: str | None = None


def _read(raw: bytes) -> tuple[dict[str, Any], Refusal | None]:
    """The request body and what is wrong with it (None when it can be answered)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}, Refusal("invalid request: body is not JSON")
    if not isinstance(body, dict):
        return {}, Refusal("invalid request: body is not an object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return {}, Refusal("invalid request: messages must be a non-empty list of objects", "messages")
    return body, _refusal(body)


def _refusal(body: dict[str, Any]) -> Refusal | None:
    """The parameters the real API refuses, with its messages and codes."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return Refusal(f"Invalid '{name}': expected an integer of at least 1.", name, "invalid_value")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        return Refusal(
            "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
            "max_tokens",
            "invalid_parameter_combination",
        )
    if REASONING_MODEL.match(str(body.get("model") or "").rsplit("/", 1)[-1].lower()):
        if body.get("max_tokens") is not None:
            return Refusal(
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            return Refusal(
                f"Unsupported value: 'temperature' does not support {temperature} with this model. "
                "Only the default (1) value is supported.",
                "temperature",
                "unsupported_value",
            )
    return _tool_choice_refusal(body.get("tool_choice"), _tool_names(body))


def _tool_choice_refusal(choice: Any, offered: Sequence[str]) -> Refusal | None:
    if choice is None:
        return None
    if not offered:
        return Refusal(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            "tool_choice",
        )
    if isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        return None
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        return Refusal(
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}.',
            "tool_choice",
        )
    if name not in offered:
        return Refusal(f"Invalid value for 'tool_choice': no function named {name!r} in 'tools'.", "tool_choice")
    return None


async def read_request(request: Request, api_key: str | None) -> tuple[bytes, dict[str, Any]] | Response:
    """The request's bytes and body, or the real API's refusal: 401 without the key, 400 for a body it would refuse."""
    if api_key is not None:
        refused = _unauthorized(request.headers.get("authorization"), api_key)
        if refused is not None:
            return refused
    raw = await request.body()
    body, problem = _read(raw)
    if problem is not None:
        return _error(400, problem.message, "invalid_request_error", param=problem.param, code=problem.code)
    return raw, body


def _unauthorized(authorization: str | None, api_key: str) -> Response | None:
    """None when the bearer key matches; otherwise the 401 the real API answers."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        return _error(401, message, "invalid_request_error")
    if hmac.compare_digest(given.strip().encode(), api_key.encode()):
        return None
    shown = given.strip()[:4] + "*" * 4
    message = f"Incorrect API key provided: {shown}. You can find your API key in your account settings."
    return _error(401, message, "invalid_request_error", code="invalid_api_key")


async def _failure(fault: Fault, faults: LlmFaults, clock: Clock) -> Response:
    if fault is Fault.TIMEOUT:
        await clock.sleep(faults.timeout_s)  # the client gives up long before; its cancel ends this wait
        return _error(504, "upstream timed out", "timeout")
    if fault is Fault.RATE_LIMITED:
        headers = {"retry-after": str(faults.retry_after_s)}
        message = f"Rate limit reached for requests. Please try again in {faults.retry_after_s}s."
        return _error(429, message, "requests", code="rate_limit_exceeded", headers=headers)
    if fault is Fault.QUOTA:
        message = "You exceeded your current quota, please check your plan and billing details."
        return _error(429, message, "insufficient_quota", code="insufficient_quota")
    return _error(500, "The server had an error while processing your request. Sorry about that!", "server_error")


def _error(
    status: int,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The reference's error object: `code` is a string or null, never the HTTP status."""
    body = orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def create_app(
    *,
    seed: int = 0,
    latency: LatencyModel | None = None,
    faults: LlmFaults | None = None,
    clock: Clock,
    morph: Morph | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The fake LLM server; `morph` defaults to a new pymorphy3 MorphAnalyzer (loaded once for this app), and
    its parses are cached per word.

    With `api_key`, a request without `Authorization: Bearer <api_key>` gets the real API's 401;
    without it any key (or none) is accepted, as a local vLLM or Ollama does.
    """
    model = FakeModel(seed=seed, morph=CachedMorph(morph or pymorphy3.MorphAnalyzer()))
    seen: OrderedDict[str, int] = OrderedDict()
    app = FastAPI(title="fake LLM", docs_url=None, redoc_url=None, openapi_url=None)

    async def completions(request: Request) -> Response:
        read = await read_request(request, api_key)
        if isinstance(read, Response):
            return read
        raw, body = read
        request_key = hashlib.sha256(raw).hexdigest()
        attempt = seen.pop(request_key, 0)
        seen[request_key] = attempt + 1
        if len(seen) > SEEN_REQUESTS_KEPT:
            seen.popitem(last=False)
        rng = random.Random(f"{seed}:{request_key}:{attempt}")
        if latency is not None:
            await clock.sleep(latency.sample_s(rng))
        fault = faults.draw(rng) if faults is not None else None
        if faults is not None and fault is not None and fault is not Fault.MALFORMED:
            return await _failure(fault, faults, clock)
        payload = model.complete(body, created_s=clock.now_ms() // 1000, malformed=fault is Fault.MALFORMED)
        return Response(orjson.dumps(payload), media_type="application/json")

    app.add_api_route("/v1/chat/completions", completions, methods=["POST"])
    app.add_api_route("/chat/completions", completions, methods=["POST"])
    return app

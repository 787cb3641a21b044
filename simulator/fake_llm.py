"""The fake LLM: an OpenAI-compatible `/chat/completions` server that answers like a competent model.

Everything it says is decided by `simulator.llm_policy` from the request alone (prompt, history, this turn's
tool results). Wording varies with a hash of the conversation and the seed; latency and faults are drawn
from a `random.Random` seeded by the seed, the request's hash and how often that request was seen, so a run
is reproducible however the conversations interleave, and a retried request can succeed.
"""

from __future__ import annotations

import hashlib
import random
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
from simulator.nlu import Morph
from system.clock import Clock

MODEL = "fake-admin-1"
SEEN_REQUESTS_KEPT = 100_000  # request hashes remembered for the per-request attempt counter
FALLBACK_TEXT = "Минутку, уточню и вернусь с ответом 🙏 Если удобно, напишите, пожалуйста, что именно нужно."


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


@dataclass(frozen=True, slots=True)
class LlmFaults:
    """Probabilities (summing to at most 1) that a request fails, and how."""

    timeout: float = 0.0  # no answer for `timeout_s`: longer than any client's deadline
    rate_limited: float = 0.0  # 429 with Retry-After
    server_error: float = 0.0  # 500
    malformed: float = 0.0  # a tool call whose arguments are not JSON
    timeout_s: float = 3600.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        odds = (self.timeout, self.rate_limited, self.server_error, self.malformed)
        if any(p < 0 for p in odds) or sum(odds) > 1 + 1e-9:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")

    def draw(self, rng: random.Random) -> Fault | None:
        roll = rng.random()
        for fault, p in (
            (Fault.TIMEOUT, self.timeout),
            (Fault.RATE_LIMITED, self.rate_limited),
            (Fault.SERVER_ERROR, self.server_error),
            (Fault.MALFORMED, self.malformed),
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
        message, finish = _message(decision, digest, malformed=malformed)
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


def _read(raw: bytes) -> tuple[dict[str, Any], str]:
    """The request body and what is wrong with it ("" when it can be answered)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}, "body is not JSON"
    if not isinstance(body, dict):
        return {}, "body is not an object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return {}, "messages must be a non-empty list of objects"
    return body, ""


async def _failure(fault: Fault, faults: LlmFaults, clock: Clock) -> Response:
    if fault is Fault.TIMEOUT:
        await clock.sleep(faults.timeout_s)  # the client gives up long before; its cancel ends this wait
        return _error(504, "upstream timed out", "timeout")
    if fault is Fault.RATE_LIMITED:
        headers = {"retry-after": str(faults.retry_after_s)}
        return _error(429, "Rate limit reached, please retry later", "rate_limit_error", headers)
    return _error(500, "The server had an error while processing your request", "server_error")


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": status}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def create_app(
    *,
    seed: int = 0,
    latency: LatencyModel | None = None,
    faults: LlmFaults | None = None,
    clock: Clock,
    morph: Morph | None = None,
) -> FastAPI:
    """The fake LLM server; `morph` defaults to a new pymorphy3 MorphAnalyzer (loaded once for this app)."""
    if morph is None:
        morph = pymorphy3.MorphAnalyzer()
    model = FakeModel(seed=seed, morph=morph)
    seen: OrderedDict[str, int] = OrderedDict()
    app = FastAPI(title="fake LLM", docs_url=None, redoc_url=None, openapi_url=None)

    async def completions(request: Request) -> Response:
        raw = await request.body()
        body, problem = _read(raw)
        if problem:
            return _error(400, f"invalid request: {problem}", "invalid_request_error")
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

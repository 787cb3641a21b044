"""The LLM client: one OpenAI-compatible chat completion (DeepSeek, OpenAI, vLLM, Ollama) with tools.

Retries, the per-request deadline and the circuit breaker live here; the tool loop belongs to the worker.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import httpx
import structlog

from system.clock import Clock
from system.errors import LLMError, SettingsError
from system.retry import RetryPolicy, parse_retry_after, retrying
from system.settings import Settings

log = structlog.get_logger(__name__)

Message = dict[str, Any]  # one chat message in the exact wire shape
_DETAIL_CHARS = 200  # error details quoted from a response body; bodies may be long HTML pages
_RETRY_STATUSES = frozenset({408, 429})
# OpenAI's 429 for an account with no credit or over its spending limit: waiting does not help. The error
# object says so in `type` (older answers carry `"code": null`) or in `code`.
_QUOTA_ERROR = "insufficient_quota"
OPENAI_HOST = "api.openai.com"

TokenParam = Literal["max_completion_tokens", "max_tokens"]
# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5 but not gpt-5-chat), also behind a provider prefix
# ("openai/o3"): they refuse `max_tokens` and any temperature but the default.
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5(?!.*-chat))")


# ---------------------------------------------------------------------------------------------- errors


class LLMUnavailable(LLMError):
    """No answer: timeouts, 408/429/5xx, connection errors after the retries, or an open circuit."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CircuitOpen(LLMUnavailable):
    """The circuit breaker refused the call without sending a request."""


class LLMRequestRejected(LLMError):
    """The API refused the request (400/404/422, a bad URL): a configuration or request bug."""


class LLMAccessDenied(LLMRequestRejected):
    """401/403: the key is wrong, revoked or not allowed this model; every request fails until it is fixed."""


class LLMQuotaExhausted(LLMRequestRejected):
    """402, or OpenAI's 429 `insufficient_quota`: no credit left; only a top-up or a new month helps."""


class MalformedToolCall(LLMError):
    """The reply is unusable: not JSON, no choices, or a tool call that is not well-formed."""


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function the model asked to call; `arguments` is the model's raw JSON text."""

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a JSON object (blank text is `{}`); MalformedToolCall otherwise."""
        if not self.arguments.strip():
            return {}  # some models send "" for a function without parameters
        try:
            value = json.loads(self.arguments)
        except json.JSONDecodeError as exc:
            raise MalformedToolCall(f"tool call {self.name!r}: arguments are not JSON ({exc.msg})") from exc
        if not isinstance(value, dict):
            raise MalformedToolCall(f"tool call {self.name!r}: arguments are not a JSON object")
        return value

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class Completion:
    """The model's answer: text, tool calls, or both; `raw` is the response body as received."""

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    usage: dict[str, int]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def as_message(self) -> Message:
        """This answer as the assistant message to append to the conversation."""
        return assistant_message(self.content, self.tool_calls)


def system_message(text: str) -> Message:
    return {"role": "system", "content": text}


def user_message(text: str) -> Message:
    return {"role": "user", "content": text}


def assistant_message(content: str | None, tool_calls: Sequence[ToolCall] = ()) -> Message:
    """An assistant turn; `tool_calls` is omitted when empty (OpenAI rejects an empty list)."""
    message: Message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [call.to_wire() for call in tool_calls]
    return message


def tool_message(tool_call_id: str, content: str) -> Message:
    return {"role": "tool", "tool_call_id": tool_call_id, "content": content}


def function_tool(*, name: str, description: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A tool definition for `complete(tools=...)`; `parameters` is a JSON Schema object."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


# ---------------------------------------------------------------------------------------------- parsing


def parse_completion(payload: Any) -> Completion:
    """Parse a chat-completions response body; MalformedToolCall when it cannot be used."""
    if not isinstance(payload, dict):
        raise MalformedToolCall("response is not a JSON object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedToolCall("response has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise MalformedToolCall("response choice has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise MalformedToolCall("message content is not text")
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise MalformedToolCall("tool_calls is not a list")
    return Completion(
        content=content,
        tool_calls=tuple(_parse_tool_call(item) for item in raw_calls),
        finish_reason=str(choices[0].get("finish_reason") or "unknown"),
        usage=_parse_usage(payload.get("usage")),
        raw=payload,
    )


def _parse_tool_call(item: Any) -> ToolCall:
    if not isinstance(item, dict) or item.get("type", "function") != "function":
        raise MalformedToolCall("tool call is not a function call")
    function = item.get("function")
    if not isinstance(function, dict):
        raise MalformedToolCall("tool call has no function")
    call_id, name, arguments = item.get("id"), function.get("name"), function.get("arguments")
    if not isinstance(call_id, str) or not call_id:
        raise MalformedToolCall("tool call has no id")
    if not isinstance(name, str) or not name:
        raise MalformedToolCall("tool call has no function name")
    if not isinstance(arguments, str):
        raise MalformedToolCall(f"tool call {name!r}: arguments are not a JSON string")
    return ToolCall(id=call_id, name=name, arguments=arguments)


def _parse_usage(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    # Flat counters only: nested details (prompt_tokens_details) differ between providers.
    return {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}


def status_error(response: httpx.Response, *, now_ms: int) -> LLMError:
    """The typed error of an unsuccessful answer: retryable only for 408, 429 (not quota) and 5xx."""
    status = response.status_code
    error = _error_object(response)
    message = f"HTTP {status}: {_error_detail(response, error)}"
    if status in (401, 403):
        return LLMAccessDenied(message)
    if status == 402 or _QUOTA_ERROR in (error.get("type"), error.get("code")):
        return LLMQuotaExhausted(message)
    if status in _RETRY_STATUSES or status >= 500:
        return LLMUnavailable(message, retry_after_s=retry_after_s(response.headers, now_ms=now_ms))
    return LLMRequestRejected(message)


def retry_after_s(headers: httpx.Headers, *, now_ms: int) -> float:
    """The wait a response asks for: `retry-after-ms` (OpenAI, Azure) first, then `Retry-After`; 0 when none."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = 0.0
        if math.isfinite(ms) and ms > 0:
            return ms / 1000
    return parse_retry_after(headers.get("retry-after"), now_ms=now_ms)


def _error_object(response: httpx.Response) -> dict[str, Any]:
    """The `{"error": {"message", "type", "param", "code"}}` object of an error answer; {} when absent."""
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return {"message": error}
    return error if isinstance(error, dict) else {}


def _error_detail(response: httpx.Response, error: Mapping[str, Any]) -> str:
    text = error.get("message")
    text = text if isinstance(text, str) and text else response.text or response.reason_phrase
    return " ".join(text.split())[:_DETAIL_CHARS]


def is_reasoning_model(model: str) -> bool:
    """OpenAI's reasoning models, which take `max_completion_tokens` and no temperature but the default."""
    return bool(_REASONING_MODEL.match(model.rsplit("/", 1)[-1].lower()))


def token_param_for(setting: str, *, base_url: str, model: str) -> TokenParam:
    """The request field of the output limit: `auto` picks by provider and model family.

    OpenAI deprecated `max_tokens` for `max_completion_tokens` and its reasoning models refuse the old name;
    DeepSeek documents only `max_tokens`, and vLLM or Ollama may not know the new one.
    """
    if setting == "max_completion_tokens":
        return "max_completion_tokens"
    if setting == "max_tokens":
        return "max_tokens"
    if setting != "auto":
        raise ValueError(f"unknown token parameter {setting!r}")
    try:
        host = httpx.URL(base_url).host
    except httpx.InvalidURL:
        host = ""
    if host == OPENAI_HOST or is_reasoning_model(model):
        return "max_completion_tokens"
    return "max_tokens"


# ---------------------------------------------------------------------------------------------- breaker


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed → open after `failures` consecutive failures → after `reset_s` one trial → closed or open again."""

    def __init__(self, *, clock: Clock, failures: int, reset_s: float) -> None:
        if failures < 1 or reset_s <= 0:
            raise ValueError("failures must be >= 1 and reset_s > 0")
        self._clock = clock
        self._threshold = failures
        self._reset_ms = reset_s * 1000
        self._failures = 0
        self._opened_at_ms: int | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at_ms is None:
            return BreakerState.CLOSED
        if self._clock.now_ms() - self._opened_at_ms >= self._reset_ms:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open, only the first caller gets the trial."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at_ms = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._trial_in_flight or (self._opened_at_ms is None and self._failures >= self._threshold):
            self._opened_at_ms = self._clock.now_ms()
        # A late failure of a call admitted before the circuit opened does not extend the open period.
        self._trial_in_flight = False

    def abandon(self) -> None:
        """An admitted call ended without a verdict (cancelled): free the half-open trial for the next caller."""
        self._trial_in_flight = False


# ---------------------------------------------------------------------------------------------- client


class _DeadlineExceeded(Exception):
    pass


class LLMClient:
    """Chat completions against an OpenAI-compatible API; keep one per process so the breaker sees all calls.

    `complete()` raises only LLMError subclasses. Each call takes at most about
    `timeout_s * (retry.retries + 1)` plus the backoff (and Retry-After waits up to `retry.max_s`).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        clock: Clock,
        rng: random.Random,
        timeout_s: float = 60,
        retry: RetryPolicy,
        breaker: CircuitBreaker,
        temperature: float | None = None,
        max_output_tokens: int = 800,
        token_param: TokenParam = "max_tokens",
    ) -> None:
        self._http = http
        self._url = completions_url(base_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._clock = clock
        self._rng = rng
        self._timeout_s = timeout_s
        self._retry = retry
        self._breaker = breaker
        self._temperature = temperature
        self._max_output_tokens = max_output_tokens
        self._token_param = token_param

    @classmethod
    def from_settings(
        cls, settings: Settings, *, http: httpx.AsyncClient, clock: Clock, rng: random.Random
    ) -> LLMClient:
        """The client the settings describe; SettingsError for a model that would refuse every request."""
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        model = settings.llm_model
        token_param = token_param_for(settings.llm_token_param, base_url=settings.llm_base_url, model=model)
        if is_reasoning_model(model):
            if settings.llm_temperature is not None:
                raise SettingsError(
                    f"AIADMIN_LLM_TEMPERATURE: {model} is a reasoning model and refuses a temperature; unset it"
                )
            if token_param == "max_tokens":
                raise SettingsError(
                    f"AIADMIN_LLM_TOKEN_PARAM: {model} is a reasoning model and refuses max_tokens; "
                    "use max_completion_tokens or auto"
                )
        breaker = CircuitBreaker(
            clock=clock, failures=settings.llm_breaker_failures, reset_s=settings.llm_breaker_reset_s
        )
        return cls(
            http,
            base_url=settings.llm_base_url,
            api_key=key,
            model=model,
            clock=clock,
            rng=rng,
            timeout_s=settings.llm_timeout_s,
            retry=RetryPolicy(retries=settings.llm_max_retries),
            breaker=breaker,
            temperature=settings.llm_temperature,
            max_output_tokens=settings.llm_max_output_tokens,
            token_param=token_param,
        )

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    async def complete(self, messages: list[Message], *, tools: list[dict[str, Any]] | None = None) -> Completion:
        """One completion; CircuitOpen at once when the breaker refuses, without a request."""
        if not self._breaker.allow():
            raise CircuitOpen("LLM circuit is open")
        body = self._body(messages, tools)
        started_ms = self._clock.now_ms()
        log.debug("llm.request", model=self._model, messages=messages, tools=len(tools or ()))
        try:
            completion = await self._with_retries(body)
        except LLMUnavailable as exc:
            self._on_failure(exc)
            raise
        except LLMError as exc:
            self._breaker.record_success()  # the API answered; the request or the reply was at fault
            if isinstance(exc, LLMAccessDenied | LLMQuotaExhausted):
                # Every turn fails the same way until someone fixes the key or the balance: say so loudly.
                log.error("llm.account_problem", model=self._model, error=exc.message)
            raise
        except BaseException:
            self._breaker.abandon()
            raise
        self._breaker.record_success()
        self._log_completion(completion, latency_ms=self._clock.now_ms() - started_ms)
        return completion

    def _body(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._model, "messages": messages}
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        if self._temperature is not None:
            body["temperature"] = self._temperature
        body[self._token_param] = self._max_output_tokens
        return body

    async def _with_retries(self, body: dict[str, Any]) -> Completion:
        attempts = 0

        async def once() -> Completion:
            nonlocal attempts
            attempts += 1
            return await self._attempt(body)

        try:
            return await retrying(
                once, policy=self._retry, retryable=self._retry_hint, clock=self._clock, rng=self._rng, what="llm"
            )
        except LLMUnavailable as exc:
            raise LLMUnavailable(f"LLM unavailable after {attempts} attempt(s): {exc.message}") from exc

    def _retry_hint(self, exc: BaseException) -> float | None:
        if not isinstance(exc, LLMUnavailable):
            return None
        # A server asking for a longer pause than our longest backoff: answer with the fallback instead.
        return exc.retry_after_s if exc.retry_after_s <= self._retry.max_s else None

    async def _attempt(self, body: dict[str, Any]) -> Completion:
        response = await self._send(body)
        if not response.is_success:
            raise status_error(response, now_ms=self._clock.now_ms())
        try:
            payload = response.json()
        except ValueError as exc:
            raise MalformedToolCall("response body is not JSON") from exc
        return parse_completion(payload)

    async def _send(self, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self._within_deadline(
                self._http.post(self._url, json=body, headers=self._headers, timeout=self._timeout_s)
            )
        except (_DeadlineExceeded, httpx.TimeoutException) as exc:
            raise LLMUnavailable(f"no response within {self._timeout_s:g}s") from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise LLMRequestRejected(f"bad LLM URL {self._url!r}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise LLMUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _within_deadline(self, request: Coroutine[Any, Any, httpx.Response]) -> httpx.Response:
        # The deadline runs on the injected clock too, so a simulated slow LLM times out in virtual time;
        # httpx's own timeout still guards the real network.
        sending = asyncio.ensure_future(request)
        timer = asyncio.ensure_future(self._clock.sleep(self._timeout_s))
        try:
            await asyncio.wait((sending, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not sending.done():
                sending.cancel()
        if not sending.done():  # cancelled above: the timer fired first
            raise _DeadlineExceeded
        return sending.result()

    def _on_failure(self, exc: LLMUnavailable) -> None:
        was_open = self._breaker.state is BreakerState.OPEN
        self._breaker.record_failure()
        opened = not was_open and self._breaker.state is BreakerState.OPEN
        log.warning("llm.unavailable", model=self._model, error=exc.message, circuit_opened=opened)

    def _log_completion(self, completion: Completion, *, latency_ms: int) -> None:
        log.info(
            "llm.completion",
            model=self._model,
            latency_ms=latency_ms,
            prompt_tokens=completion.usage.get("prompt_tokens"),
            completion_tokens=completion.usage.get("completion_tokens"),
            finish_reason=completion.finish_reason,
            tool_calls=[call.name for call in completion.tool_calls],
        )
        log.debug("llm.reply", model=self._model, reply=completion.content)


def completions_url(base_url: str) -> str:
    """`{base}/chat/completions`; the base may or may not end with /v1 or a slash."""
    return base_url.rstrip("/") + "/chat/completions"

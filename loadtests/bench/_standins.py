"""Stand-ins for the outside world of a worker benchmark: an LLM with a set latency, YClients, WhatsApp.

One small local server speaks the three vendors' wire formats, just enough for a worker turn: the LLM
answers every completion with the same Russian text after `llm_latency_s` (a stand-in with a configured
latency, not a model; it checks the bearer key and honours `tool_choice` as OpenAI documents, calling the
forced function with no arguments), YClients is the simulator's fake CRM over the barbershop fixture, and the
WhatsApp Cloud API is the simulator's fake Cloud API (any `vNN.N` version, Meta's bearer check and error
objects). Each is held to its vendor's contract suite under `tests/contracts/`. `GET /stats` tells what it
received, so that the benchmark can count replies without trusting the system under test. Served as
`system.cli.serve_http` serves the API.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import uvicorn
import uvloop
from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from simulator import crm
from simulator.salon import BARBERSHOP_FIXTURE, Salon
from simulator.whatsapp import FakeCloudApi, Outbox, WhatsAppFaults
from system.clock import Clock, WallClock

LLM_PREFIX = "/v1"
YCLIENTS_PREFIX = crm.API_PREFIX
PARTNER_TOKEN = "bench"  # what `loadtests.bench._worker_cases` configures the worker with
LLM_API_KEY = "bench"  # likewise
WHATSAPP_TOKEN = "bench"  # likewise
OUTBOX_KEPT = 1000  # sends the WhatsApp stand-in keeps: the benchmark reads the counters, not the messages
REPLY = (
    "Здравствуйте! Конечно, запишу вас на стрижку 💈 На какой день и время вам удобно? "
    "Свободны Сергей и Алексей, стрижка машинкой — 800 ₽, мужская стрижка — от 1 500 ₽."
)
_USAGE = {"prompt_tokens": 1200, "completion_tokens": 60, "total_tokens": 1260}
_JSON = "application/json"


class Received:
    """What the stand-ins were sent since the last reset; sends are counted per recipient."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.llm_requests = 0
        self.llm_in_flight = 0
        self.llm_in_flight_max = 0
        self.yclients_requests = 0
        self.read_receipts = 0
        self.sends: Counter[str] = Counter()

    def figures(self) -> dict[str, int]:
        return {
            "sends": sum(self.sends.values()),
            "recipients": len(self.sends),
            "double_replies": sum(n - 1 for n in self.sends.values() if n > 1),
            "read_receipts": self.read_receipts,
            "llm_requests": self.llm_requests,
            "llm_in_flight_max": self.llm_in_flight_max,
            "yclients_requests": self.yclients_requests,
        }


class _Counted:
    """An ASGI app that counts the HTTP requests it passes on to `app`."""

    def __init__(self, app: ASGIApp, received: Received) -> None:
        self._app = app
        self._received = received

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self._received.yclients_requests += 1
        await self._app(scope, receive, send)


def create_app(
    *,
    llm_latency_s: float,
    clock: Clock | None = None,
    partner_token: str = PARTNER_TOKEN,
    llm_api_key: str = LLM_API_KEY,
    whatsapp_token: str = WHATSAPP_TOKEN,
) -> FastAPI:
    """The stand-in server; every completion takes `llm_latency_s` (asyncio.sleep) before it is answered.

    `app.state.whatsapp` is the WhatsApp stand-in's core, whose `.outbox` holds the latest sends.
    """
    app = FastAPI(title="Stand-ins", docs_url=None, redoc_url=None)
    received = Received()
    clock = clock or WallClock()
    salon = Salon.from_fixture(BARBERSHOP_FIXTURE, start=datetime.fromtimestamp(clock.now_ms() / 1000, tz=UTC))
    yclients = crm.create_app(salon, partner_token=partner_token, user_token=None, clock=clock)
    whatsapp = FakeCloudApi(
        token=whatsapp_token,
        clock=clock,
        rng=random.Random(0),
        faults=WhatsAppFaults(),
        outbox=Outbox(max_kept=OUTBOX_KEPT),
    )
    app.state.whatsapp = whatsapp  # its `.outbox`: what the contract suite reads

    @app.post(f"{LLM_PREFIX}/chat/completions")
    async def chat_completions(request: Request) -> Response:
        refused = _llm_unauthorized(request.headers.get("authorization"), llm_api_key)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        problem = _llm_problem(body)
        if problem is not None:
            return _llm_error(400, problem[1], "invalid_request_error", param=problem[0])
        received.llm_requests += 1
        received.llm_in_flight += 1
        received.llm_in_flight_max = max(received.llm_in_flight_max, received.llm_in_flight)
        try:
            await asyncio.sleep(llm_latency_s)
        finally:
            received.llm_in_flight -= 1
        return Response(orjson.dumps(_completion(body, created_s=clock.now_ms() // 1000)), media_type=_JSON)

    @app.post("/{version}/{phone_number_id}/messages")
    async def messages(version: str, phone_number_id: str, request: Request) -> Response:
        status, answer = whatsapp.handle(
            version=version,
            phone_number_id=phone_number_id,
            authorization=request.headers.get("authorization"),
            body=await request.body(),
        )
        if status == 200 and answer.get("success") is True:
            received.read_receipts += 1
        elif status == 200:
            contact = answer["contacts"][0]
            received.sends[str(contact.get("wa_id") or contact.get("user_id"))] += 1
        return Response(orjson.dumps(answer), status_code=status, media_type=_JSON)

    @app.get("/stats")
    async def stats() -> Response:
        return Response(orjson.dumps(received.figures()), media_type=_JSON)

    @app.post("/stats/reset")
    async def reset() -> Response:
        received.reset()
        return Response(b"{}", media_type=_JSON)

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type=_JSON)

    app.mount("/", _Counted(yclients, received))  # last: everything the routes above do not take is YClients'
    return app


def _completion(body: dict[str, Any], *, created_s: int) -> dict[str, Any]:
    """The one reply in words, or, when `tool_choice` forces a call, a call of the forced (or first) function.

    The arguments of a forced call are `{}`: the stand-in is no model; it only keeps OpenAI's promise that
    `required` and a named function end in a tool call.
    """
    choice = body.get("tool_choice")
    forced = choice["function"]["name"] if isinstance(choice, dict) else None
    if choice == "required":
        forced = _tool_names(body)[0]
    message: dict[str, Any] = {"role": "assistant", "content": REPLY}
    finish = "stop"
    if forced is not None:
        call = {"id": "call_bench_0", "type": "function", "function": {"name": forced, "arguments": "{}"}}
        message, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": created_s,
        "model": str(body.get("model") or "bench"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": _USAGE,
    }


def _tool_names(body: dict[str, Any]) -> list[str]:
    tools = body.get("tools") or []
    return [str(t["function"]["name"]) for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]


def _llm_problem(body: Any) -> tuple[str | None, str] | None:
    """(the parameter, why) when OpenAI would refuse the request with 400; None when it can be answered."""
    if not isinstance(body, dict):
        return None, "We could not parse the JSON body of your request."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "Invalid 'messages': expected a non-empty array."
    choice = body.get("tool_choice")
    if choice is None:
        return None
    offered = _tool_names(body)
    if not offered:
        return (
            "tool_choice",
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
        )
    if choice in ("none", "auto", "required"):
        return None
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or name not in offered:
        return (
            "tool_choice",
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or an offered function.",
        )
    return None


def _llm_unauthorized(authorization: str | None, api_key: str) -> Response | None:
    """None when the bearer key matches; otherwise OpenAI's 401, which shows only the key's first characters."""
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return _llm_error(401, "You didn't provide an API key.", "invalid_request_error")
    if hmac.compare_digest(given.encode(), api_key.encode()):
        return None
    message = f"Incorrect API key provided: {given[:3]}****. You can find your API key in your account settings."
    return _llm_error(401, message, "invalid_request_error", code="invalid_api_key")


def _llm_error(status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None) -> Response:
    """OpenAI's error object: `code` a string or null."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


async def serve(*, host: str, port: int, llm_latency_s: float) -> None:
    config = uvicorn.Config(
        create_app(llm_latency_s=llm_latency_s),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="httptools",
        backlog=4096,  # a worker opens its whole connection pool at once
    )
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench._standins", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--llm-latency-s", type=float, default=0.0, help="Seconds each completion takes.")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(host=args.host, port=args.port, llm_latency_s=args.llm_latency_s))


if __name__ == "__main__":
    main()

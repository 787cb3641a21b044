"""Stand-ins for the outside world of a worker benchmark: an LLM with a set latency, YClients, WhatsApp.

One small local server speaks the three vendors' wire formats, just enough for a worker turn: the LLM
answers every completion with the same Russian text after `llm_latency_s` (a stand-in with a configured
latency, not a model), YClients is the simulator's fake CRM over the barbershop fixture (one YClients
stand-in for the simulator, the QA suite and the benchmarks, held to the YClients contract suite), and the
WhatsApp Cloud API accepts sends and read receipts. `GET /stats` tells what it received, so that the
benchmark can count replies without trusting the system under test. Served as `system.cli.serve_http`
serves the API.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
from system.clock import Clock, WallClock

LLM_PREFIX = "/v1"
YCLIENTS_PREFIX = crm.API_PREFIX
WHATSAPP_PREFIX = "/v21.0"
PARTNER_TOKEN = "bench"  # what `reports.worker_cases` configures the worker with
REPLY = (
    "Здравствуйте! Конечно, запишу вас на стрижку 💈 На какой день и время вам удобно? "
    "Свободны Сергей и Алексей, стрижка машинкой — 800 ₽, мужская стрижка — от 1 500 ₽."
)
_COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "model": "deepseek-chat",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1200, "completion_tokens": 60, "total_tokens": 1260},
}
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


def create_app(*, llm_latency_s: float, clock: Clock | None = None, partner_token: str = PARTNER_TOKEN) -> FastAPI:
    """The stand-in server; every completion takes `llm_latency_s` (asyncio.sleep) before it is answered."""
    app = FastAPI(title="Stand-ins", docs_url=None, redoc_url=None)
    received = Received()
    completion = orjson.dumps(_COMPLETION)
    wamids = itertools.count(1)
    clock = clock or WallClock()
    salon = Salon.from_fixture(BARBERSHOP_FIXTURE, start=datetime.fromtimestamp(clock.now_ms() / 1000, tz=UTC))
    yclients = crm.create_app(salon, partner_token=partner_token, user_token=None, clock=clock)

    @app.post(f"{LLM_PREFIX}/chat/completions")
    async def chat_completions(request: Request) -> Response:
        await request.body()  # the prompt is not read: every turn gets the same answer
        received.llm_requests += 1
        received.llm_in_flight += 1
        received.llm_in_flight_max = max(received.llm_in_flight_max, received.llm_in_flight)
        try:
            await asyncio.sleep(llm_latency_s)
        finally:
            received.llm_in_flight -= 1
        return Response(completion, media_type=_JSON)

    @app.post(WHATSAPP_PREFIX + "/{phone_number_id}/messages")
    async def messages(phone_number_id: str, request: Request) -> Response:
        body: dict[str, Any] = orjson.loads(await request.body())
        if body.get("status") == "read":
            received.read_receipts += 1
            return Response(b'{"success":true}', media_type=_JSON)
        to = str(body.get("to", ""))
        received.sends[to] += 1
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": f"wamid.{next(wamids)}"}],
        }
        return Response(orjson.dumps(answer), media_type=_JSON)

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
    parser = argparse.ArgumentParser(prog="python -m reports.standins", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--llm-latency-s", type=float, default=0.0, help="Seconds each completion takes.")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(host=args.host, port=args.port, llm_latency_s=args.llm_latency_s))


if __name__ == "__main__":
    main()

"""Stand-ins for the outside world of a worker benchmark: an LLM with a set latency, YClients, WhatsApp.

One small local server speaks the three vendors' wire formats, just enough for a worker turn: the LLM
answers every completion with the same Russian text after `llm_latency_s` (a stand-in with a configured
latency, not a model), YClients lists a small catalogue for the prompt, and the WhatsApp Cloud API
accepts sends and read receipts. `GET /stats` tells what it received, so that the benchmark can count
replies without trusting the system under test. Served as `system.cli.serve_http` serves the API.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections import Counter
from typing import Any

import orjson
import uvicorn
import uvloop
from fastapi import FastAPI, Request, Response

LLM_PREFIX = "/v1"
YCLIENTS_PREFIX = "/api/v1"
WHATSAPP_PREFIX = "/v21.0"
REPLY = (
    "Здравствуйте! Конечно, запишу вас на стрижку 💈 На какой день и время вам удобно? "
    "Свободны Сергей и Алексей, стрижка машинкой — 800 ₽, мужская стрижка — от 1 500 ₽."
)
SERVICES = [
    {"id": 1, "title": "Стрижка машинкой", "price_min": 800, "price_max": 800, "seance_length": 1800},
    {"id": 2, "title": "Мужская стрижка", "price_min": 1500, "price_max": 1800, "seance_length": 3600},
    {"id": 3, "title": "Оформление бороды", "price_min": 700, "price_max": 700, "seance_length": 1800},
]
STAFF = [
    {"id": 10, "name": "Сергей", "specialization": "барбер", "bookable": True},
    {"id": 11, "name": "Алексей", "specialization": "барбер", "bookable": True},
]
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


def create_app(*, llm_latency_s: float) -> FastAPI:
    """The stand-in server; every completion takes `llm_latency_s` (asyncio.sleep) before it is answered."""
    app = FastAPI(title="Stand-ins", docs_url=None, redoc_url=None)
    received = Received()
    completion = orjson.dumps(_COMPLETION)
    services = _envelope({"services": SERVICES, "category": []})
    staff = _envelope(STAFF)
    wamids = itertools.count(1)

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

    @app.get(YCLIENTS_PREFIX + "/book_services/{company_id}")
    async def book_services(company_id: int) -> Response:
        received.yclients_requests += 1
        return Response(services, media_type=_JSON)

    @app.get(YCLIENTS_PREFIX + "/book_staff/{company_id}")
    async def book_staff(company_id: int) -> Response:
        received.yclients_requests += 1
        return Response(staff, media_type=_JSON)

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

    return app


def _envelope(data: Any) -> bytes:
    """A YClients answer: its envelope around `data`."""
    return orjson.dumps({"success": True, "data": data, "meta": []})


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

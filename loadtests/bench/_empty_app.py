"""The empty endpoint on the API's stack: the ceiling the webhook's throughput is compared against.

Served exactly as `system.http_server.serve_http` serves the API: the same `server_config` (uvicorn,
httptools, the header and body deadlines, the connection bound, no logs, no lifespan), uvloop and the
frozen start-up heap. Its one route is a plain FastAPI endpoint that parses the body with orjson, as an
ordinary service would; the difference between the two is the cost of our own code and of Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import orjson
import uvicorn
import uvloop
from fastapi import FastAPI, Request, Response

from system.http_server import freeze_startup_heap, server_config
from system.settings import load_settings

EMPTY_ROUTE = "/empty"


def create_empty_app() -> FastAPI:
    """A FastAPI app with one POST route that parses the JSON body and answers `{}`."""
    # The same constructor options as `system.ingest.routes.create_app`, so routing costs the same.
    app = FastAPI(title="Empty", docs_url=None, redoc_url=None)

    @app.post(EMPTY_ROUTE)
    async def empty(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(b"{}", media_type="application/json")

    return app


async def serve(*, host: str, port: int) -> None:
    # The API's HTTP bounds come from the same settings the API process is given.
    config = server_config(create_empty_app(), load_settings(os.environ), host=host, port=port)
    freeze_startup_heap()  # as serve_http does
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench._empty_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(host=args.host, port=args.port))


if __name__ == "__main__":
    main()

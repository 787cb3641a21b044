"""The empty endpoint on the API's stack: the ceiling the webhook's throughput is compared against.

Served exactly as `system.cli.serve_http` serves the API (uvicorn, httptools, uvloop, no logs, no
lifespan), so the difference between the two is the cost of our own code and of Redis.
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
import uvloop
from fastapi import FastAPI, Request, Response

from system.http_server import freeze_startup_heap

EMPTY_ROUTE = "/empty"


def create_empty_app() -> FastAPI:
    """A FastAPI app with one POST route that reads the raw body and answers `{}`."""
    # The same constructor options as `system.ingest.routes.create_app`, so routing costs the same.
    app = FastAPI(title="Empty", docs_url=None, redoc_url=None)

    @app.post(EMPTY_ROUTE)
    async def empty(request: Request) -> Response:
        await request.body()
        return Response(b"{}", media_type="application/json")

    return app


async def serve(*, host: str, port: int) -> None:
    config = uvicorn.Config(
        create_empty_app(),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="httptools",
    )
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

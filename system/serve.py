"""Serving the API with uvicorn (only API processes import the web stack)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator, Sequence

import uvicorn

from system.api import create_app
from system.runtime import Runtime
from system.services import STOP_SIGNALS, Service, stop_services


class _Server(uvicorn.Server):
    """uvicorn's server with our signal handling: SIGTERM/SIGINT shut down gracefully and exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._stop)
        try:
            yield
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        self.force_exit = self.should_exit  # a second signal stops at once
        self.should_exit = True


# Objects allocated between young collections. Python's default (700) runs one every few requests
# at full load, about 5% of a busy API's CPU; nearly everything a request allocates is freed by
# reference counting anyway, so collecting ten times less often only delays the rare cycles.
GC_YOUNG_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the collector's sight, and collect less often.

    Modules, the app and settings live as long as the process; without this every full collection
    walks them again, which is a visible share of a busy API's CPU.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve_http(rt: Runtime, *, host: str, port: int, services: Sequence[Service] = ()) -> None:
    """Serve the API until SIGINT/SIGTERM; `services` run beside it and are stopped afterwards."""
    config = uvicorn.Config(
        create_app(rt), host=host, port=port, log_config=None, access_log=False, lifespan="off", http="httptools"
    )
    server = _Server(config)
    freeze_startup_heap()
    tasks = [asyncio.ensure_future(s.run()) for s in services]
    try:
        await server.serve()
    finally:
        await stop_services(services, tasks)

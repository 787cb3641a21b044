"""Long-running components (batch processor, worker) and how a process starts and stops them."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SHUTDOWN_TIMEOUT_S = 10.0


class Service(Protocol):
    """A long-running component: `run()` until `stop()` is called."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


async def stop_services(services: Sequence[Service], tasks: Sequence[asyncio.Future[None]]) -> None:
    for service in services:
        service.stop()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S)
        for task in pending:  # past the deadline: what is left is reclaimed by other processes
            task.cancel()


async def run_until_stopped(service: Service) -> None:
    """Run `service` until it ends or SIGINT/SIGTERM stops it."""
    task = asyncio.ensure_future(service.run())
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("stop_signal", signal=sig.name)
        service.stop()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await task
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

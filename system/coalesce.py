"""Coalescing: the requests of one event-loop pass share one Redis pipeline (one round trip)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Collects the items submitted during one loop pass and runs them with one `run_batch` call.

    `run_batch` returns one result per item, or an exception instance for an item that failed; an
    exception raised by `run_batch` itself fails every caller of that pass.
    """

    def __init__(self, run_batch: Callable[[list[T]], Awaitable[list[R | BaseException]]], *, max_items: int) -> None:
        self._run_batch = run_batch
        self._max_items = max_items
        self._pending: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        self._size = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[R]] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((items, future))
        self._size += len(items)
        if self._size >= self._max_items:
            self._flush()
        return await future

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending, self._size = self._pending, [], 0
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]]) -> None:
        items = [item for chunk, _ in batch for item in chunk]
        try:
            results = await self._run_batch(items)
        except BaseException as exc:  # every caller of this pass sees the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for chunk, future in batch:
            part = results[start : start + len(chunk)]
            start += len(chunk)
            if future.done():  # the caller went away; its items were still applied
                continue
            error = next((r for r in part if isinstance(r, BaseException)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(part)  # type: ignore[arg-type]

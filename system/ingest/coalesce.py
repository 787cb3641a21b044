"""Coalescing: concurrent requests share Redis round trips ("group commit") on a few dedicated lanes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Runs the items submitted meanwhile as one `run_batch(items, lane)` call, at most `lanes` at once.

    While every lane is busy, new items wait and leave together with the next free lane, so the busier
    the process, the more items share one round trip. `run_batch` returns one result per item, or an
    exception instance for an item that failed; an exception raised by `run_batch` itself fails every
    caller of that batch.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T], int], Awaitable[list[R | BaseException]]],
        *,
        max_items: int,
        lanes: int,
    ) -> None:
        if lanes < 1 or max_items < 1:
            raise ValueError("lanes and max_items must be positive")
        self._run_batch = run_batch
        self._max_items = max_items
        self._free_lanes = list(range(lanes - 1, -1, -1))
        self._pending: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        self._size = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[R]] = loop.create_future()
        self._pending.append((items, future))
        self._size += len(items)
        if self._size >= self._max_items:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after the other requests of this loop pass have submitted
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._free_lanes:
            batch = self._take()
            lane = self._free_lanes.pop()
            task = asyncio.get_running_loop().create_task(self._run(batch, lane))
            self._tasks.add(task)  # keep a reference until done
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[tuple[Sequence[T], asyncio.Future[list[R]]]]:
        """The oldest pending submissions, up to `max_items` items (at least one submission)."""
        count = size = 0
        for items, _ in self._pending:
            if count and size + len(items) > self._max_items:
                break
            count += 1
            size += len(items)
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._size -= size
        return batch

    async def _run(self, batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]], lane: int) -> None:
        try:
            await self._settle(batch, lane)
        finally:
            self._free_lanes.append(lane)
            if self._pending:
                self._flush()

    async def _settle(self, batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]], lane: int) -> None:
        items = [item for chunk, _ in batch for item in chunk]
        try:
            results = await self._run_batch(items, lane)
        except BaseException as exc:  # every caller of this batch sees the failure
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

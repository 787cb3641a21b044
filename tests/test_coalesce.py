"""The coalescer: group commit of concurrent submissions over a bounded number of lanes."""

from __future__ import annotations

import asyncio

import pytest

from system.ingest.coalesce import Coalescer


class Recorder:
    """A run_batch that records each batch and its lane, and holds it until released."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[int], int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()

    async def __call__(self, items: list[int], lane: int) -> list[int | BaseException]:
        self.batches.append((list(items), lane))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await self.gate.wait()
        self.in_flight -= 1
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_submissions_of_one_loop_pass_share_one_batch() -> None:
    rec = Recorder()
    rec.gate.set()
    co: Coalescer[int, int] = Coalescer(rec, max_items=100, lanes=2)
    results = await asyncio.gather(co.submit([1]), co.submit([2, 3]), co.submit([4]))
    assert results == [[10], [20, 30], [40]]
    assert rec.batches == [([1, 2, 3, 4], 0)]


async def test_while_every_lane_is_busy_submissions_wait_and_leave_together() -> None:
    rec = Recorder()
    co: Coalescer[int, int] = Coalescer(rec, max_items=100, lanes=1)
    first = asyncio.ensure_future(co.submit([1]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first batch is in flight on the only lane
    later = [asyncio.ensure_future(co.submit([i])) for i in (2, 3, 4)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert [b for b, _ in rec.batches] == [[1]]  # nothing else may start meanwhile
    rec.gate.set()
    assert await first == [10]
    assert [await f for f in later] == [[20], [30], [40]]
    assert [b for b, _ in rec.batches] == [[1], [2, 3, 4]]
    assert rec.most_in_flight == 1


async def test_batches_never_exceed_max_items_and_lanes_bound_the_round_trips_in_flight() -> None:
    rec = Recorder()
    co: Coalescer[int, int] = Coalescer(rec, max_items=3, lanes=2)
    futures = [asyncio.ensure_future(co.submit([i])) for i in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert rec.most_in_flight == 2
    rec.gate.set()
    assert [await f for f in futures] == [[i * 10] for i in range(10)]
    assert all(len(b) <= 3 for b, _ in rec.batches)
    assert sorted(i for b, _ in rec.batches for i in b) == list(range(10))
    assert {lane for _, lane in rec.batches} <= {0, 1}


async def test_an_item_that_fails_fails_only_its_own_caller() -> None:
    rec = Recorder()
    rec.gate.set()
    co: Coalescer[int, int] = Coalescer(rec, max_items=100, lanes=1)
    good, bad = await asyncio.gather(co.submit([1]), co.submit([-1]), return_exceptions=True)
    assert good == [10]
    assert isinstance(bad, ValueError)


async def test_a_failed_round_trip_fails_its_callers_and_frees_the_lane() -> None:
    calls = 0

    async def flaky(items: list[int], lane: int) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis went away")
        return items

    co: Coalescer[int, int] = Coalescer(flaky, max_items=100, lanes=1)
    with pytest.raises(ConnectionError):
        await co.submit([1])
    assert await co.submit([2]) == [2]

"""Large runs as a chain of salons, and trials, each an independent world, run in parallel processes.

A barbershop of four masters hears from about a hundred clients a day. Past a working week of them
(`SimOptions.salon_users`, 500 by default) one salon is full for days ahead and every further user only makes the
search longer, so a larger run is a chain of salons: the same fixture, each with its own CRM, Redis and system, and
users of its own (the run's users from salon × salon_users on). The cost per user stays flat however many users
there are, and the salons, like the trials of pass^k, run side by side in `jobs` processes.

Which users a salon gets and its seeds depend on the seed and the user count only, never on `jobs`: one seed
gives one transcript, the salons' in their order.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from itertools import groupby
from typing import Any

from simulator.judge import WorldVerdict
from simulator.simulation import SimOptions, SimResult, Transcript, simulate

Progress = Callable[[int, int], None]  # (users done, users in all)


def salons_of(opts: SimOptions) -> list[SimOptions]:
    """The run's salons: one when it is small or not on the embedded default (a real Redis, real time)."""
    if opts.users <= opts.salon_users or opts.redis_url or opts.realtime or opts.system_url:
        return [opts]
    return [
        replace(opts, users=min(opts.salon_users, opts.users - first), salon=index)
        for index, first in enumerate(range(0, opts.users, opts.salon_users))
    ]


def run_worlds(opts: SimOptions, *, trials: int, jobs: int, progress: Progress | None = None) -> list[SimResult]:
    """Trials 0..trials-1 of the run, each merged from its salons; in `jobs` processes when more than one."""
    worlds = [replace(salon, trial=trial) for trial in range(trials) for salon in salons_of(opts)]
    total, done = trials * opts.users, 0
    started = time.perf_counter()
    if jobs <= 1 or len(worlds) == 1:
        results = []
        for world in worlds:
            results.append(_run_world(world))
            done += world.users
            if progress:
                progress(done, total)
    else:
        with ProcessPoolExecutor(
            max_workers=min(jobs, len(worlds)), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = {pool.submit(_run_world, world): world for world in worlds}
            for future in as_completed(futures):
                done += futures[future].users
                if progress:
                    progress(done, total)
            results = [future.result() for future in futures]  # in the worlds' order, whatever finished first
    wall_s = time.perf_counter() - started
    by_trial = groupby(zip(worlds, results, strict=True), key=lambda pair: pair[0].trial)
    return [merge([r for _, r in pairs], wall_s=wall_s) for _, pairs in by_trial]


def _run_world(opts: SimOptions) -> SimResult:
    from system.logs import configure_logging

    configure_logging(level="WARNING", json=True)  # a spawned process starts with no logging set up
    # The users look at the world through closures: they stay in the process; their verdicts travel.
    return replace(asyncio.run(simulate(opts)), users=[])


def merge(salons: Sequence[SimResult], *, wall_s: float) -> SimResult:
    """One trial's result from its salons': everything they saw, in the salons' order, counted together."""
    if len(salons) == 1:
        return replace(salons[0], wall_s=wall_s)
    return SimResult(
        verdicts=[v for r in salons for v in r.verdicts],
        world=WorldVerdict(
            double_bookings=sum(r.world.double_bookings for r in salons),
            foreign_touched=sum(r.world.foreign_touched for r in salons),
            turns_answered_twice=sum(r.world.turns_answered_twice for r in salons),
            unanswered_users=sum(r.world.unanswered_users for r in salons),
        ),
        transcript=Transcript(events=[e for r in salons for e in r.transcript.events]),
        stats=merge_stats([r.stats for r in salons]),
        bookings_created=sum(r.bookings_created for r in salons),
        reply_latency_ms=[ms for r in salons for ms in r.reply_latency_ms],
        wall_s=wall_s,
        virtual_s=max(r.virtual_s for r in salons),  # the salons live the same days side by side
        users=[u for r in salons for u in r.users],
        turn_verdicts=[v for r in salons for v in r.turn_verdicts],
        model_calls=sum(r.model_calls for r in salons),
        turns_observed=all(r.turns_observed for r in salons),
    )


def merge_stats(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The systems' stats as one: counters add up, lists join, a percentile is the worst salon's."""
    merged: dict[str, Any] = {}
    for key in stats[0]:
        values = [s[key] for s in stats if key in s]
        merged[key] = _merged(key, values)
    return merged


def _merged(key: str, values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):
        keys = dict.fromkeys(k for v in present for k in v)
        return {k: _merged(k, [v.get(k) for v in present]) for k in keys}
    if isinstance(first, list):
        return [item for v in present for item in v]
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    if (key.startswith("p") and key[1:].isdigit()) or key == "max":
        return max(present)
    return sum(present)

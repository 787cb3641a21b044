"""A load run's measured noise: its figures in three equal windows of its planned length, from synthetic samples."""

from __future__ import annotations

import random

from loadtests._ledger import reconcile
from loadtests._load import LoadOptions, LoadRun
from loadtests._profiles import Profile, Stage, profile_named
from loadtests._summary import Buckets
from loadtests._windows import (
    Edge,
    WindowedLatency,
    e2e_p99_by_window,
    edges_ms,
    lateness_by_window,
    queue_lag_p99_by_window,
    window_of,
)

from .loadtests_support import make_turn, reply

START_MS = 1_000_000


def buckets(*counts: float) -> Buckets:
    """A cumulative queue-wait histogram over 0.01, 0.1, 1 s and +Inf."""
    return list(zip((0.01, 0.1, 1.0, float("inf")), counts, strict=True))


def test_a_moment_falls_in_the_window_of_its_third_of_the_planned_length() -> None:
    assert [window_of(START_MS + s * 1000, started_ms=START_MS, planned_s=90) for s in (0, 29, 30, 59, 60, 89)] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    assert window_of(START_MS - 5, started_ms=START_MS, planned_s=90) == 0  # before the start: the first
    assert window_of(START_MS + 200_000, started_ms=START_MS, planned_s=90) == 2  # the drain: the last
    assert edges_ms(started_ms=START_MS, planned_s=90) == [START_MS + 30_000, START_MS + 60_000]


def test_e2e_is_windowed_by_when_the_turn_was_sent() -> None:
    sent = [(START_MS + 1_000, 100.0), (START_MS + 2_000, 200.0), (START_MS + 40_000, 900.0), (START_MS + 70_000, 50.0)]

    assert e2e_p99_by_window(sent, started_ms=START_MS, planned_s=90) == [200.0, 900.0, 50.0]
    assert e2e_p99_by_window([], started_ms=START_MS, planned_s=90) == [None, None, None]


def test_queue_lag_of_a_window_is_the_histograms_growth_between_its_edges() -> None:
    edges = [
        Edge(START_MS, None, buckets(0, 0, 0, 0)),
        Edge(START_MS + 30_000, None, buckets(100, 100, 100, 100)),  # all under 10 ms
        Edge(START_MS + 60_000, None, buckets(100, 100, 200, 200)),  # the next 100 between 0.1 and 1 s
        Edge(START_MS + 90_000, None, None),  # the last scrape failed
    ]

    lags = queue_lag_p99_by_window(edges)

    assert lags[0] is not None and lags[0] <= 10.0
    assert lags[1] is not None and 100.0 < lags[1] <= 1000.0
    assert lags[2] is None


def test_lateness_of_a_window_is_the_stats_route_at_its_end_with_the_flushes_it_made() -> None:
    def stats(p99: float, flushed: int) -> dict[str, object]:
        return {"flush_lateness_ms": {"p50": 1, "p99": p99, "max": p99}, "batches_flushed": flushed}

    edges = [
        Edge(START_MS + i, stats(p99, n), None) for i, (p99, n) in enumerate([(0, 0), (5, 1500), (80, 1700), (9, 4000)])
    ]

    assert lateness_by_window(edges) == ([5.0, 80.0, 9.0], [1500, 200, 2300])


def test_accept_times_are_sampled_per_window_and_bounded() -> None:
    windows = WindowedLatency(random.Random(3))
    for i in range(1, 101):
        windows.add(0, float(i))
    windows.add(2, 7.0)

    assert windows.p99() == [99.0, None, 7.0]
    assert windows.counts() == [100, 0, 1]


def test_the_summary_carries_each_windows_figures() -> None:
    profile = Profile("p", "three windows of 30 s", (Stage(90, 1, 1),), profile_named("steady").typing)
    run = LoadRun.create(LoadOptions(profile=profile, host="http://127.0.0.1:1", seed=5))
    run.start(now_ms=START_MS)
    run.conversation_opened(now_ms=START_MS + 1_000)  # one client, in conversation the whole run
    turns = []
    for index, at_s in enumerate((5, 35, 65)):  # one turn in each window, answered after 1, 2 and 9 s
        turn = make_turn(index, ["Хочу записаться"], at_ms=START_MS + at_s * 1000)
        run.turns.append(turn)
        run.answered(turn.fragments[0], outcome="accepted", accept_ms=float(index + 1), now_ms=turn.last_sent_ms)
        turns.append(turn)
    run.edges = [Edge(START_MS + s * 1000, {"batches_flushed": s}, None) for s in (0, 30, 60, 90)]
    run.stopped_ms = START_MS + 90_000
    replies = [
        reply(i + 1, t.last_sent_ms + e2e) for i, (t, e2e) in enumerate(zip(turns, (1000, 2000, 9000), strict=True))
    ]

    windows = run.summary(
        reconciliation=reconcile(run.turns, replies, reply_timeout_ms=60_000),
        merge=None,
        stats_after=None,
        queue_wait=[],
        drain_s=0.0,
    )["windows"]

    assert windows["count"] == 3
    assert windows["accept_p99_ms"] == [1.0, 2.0, 3.0]
    assert windows["e2e_p99_ms"] == [1000.0, 2000.0, 9000.0]
    assert windows["requests"] == [1, 1, 1]
    assert windows["rps"] == [round(1 / 30, 2)] * 3
    assert windows["flushes"] == [30, 30, 30]
    assert windows["peak_conversations"] == [1, 1, 1]


def test_a_window_the_run_never_reached_has_no_rate() -> None:
    profile = Profile("p", "stopped at 40 s of 90", (Stage(90, 1, 1),), profile_named("steady").typing)
    run = LoadRun.create(LoadOptions(profile=profile, host="http://127.0.0.1:1", seed=5))
    run.start(now_ms=START_MS)
    turn = make_turn(0, ["Хочу записаться"], at_ms=START_MS + 35_000)
    run.turns.append(turn)
    run.answered(turn.fragments[0], outcome="accepted", accept_ms=1.0, now_ms=turn.last_sent_ms)
    run.stopped_ms = START_MS + 40_000

    windows = run.summary(
        reconciliation=reconcile(run.turns, [], reply_timeout_ms=60_000),
        merge=None,
        stats_after=None,
        queue_wait=[],
        drain_s=0.0,
    )["windows"]

    assert windows["requests"] == [0, 1, 0]
    assert windows["rps"] == [0.0, 0.1, None]  # 1 request in the 10 s the second window lasted

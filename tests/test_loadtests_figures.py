"""The load run's figures: nearest-rank percentiles, bounded samples, Prometheus histograms, and the run's summary."""

from __future__ import annotations

import random

import orjson
import pytest

from loadtests._ledger import check_merge, reconcile
from loadtests._load import LoadOptions, LoadRun
from loadtests._profiles import profile_named
from loadtests._script import tagged
from loadtests._summary import (
    Reservoir,
    add_buckets,
    histogram,
    histogram_count,
    histogram_quantile,
    latency_block,
    lateness_block,
    percentile,
    queue_lag_block,
    subtract_buckets,
)

from .loadtests_support import PHONE, PROM_TEXT, SUMMARY_KEYS, history, reply


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unordered on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_latency_block_rounds_and_counts() -> None:
    block = latency_block([1.04, 2.0, 3.0, 400.26])
    assert block == {"p50": 2.0, "p90": 400.3, "p99": 400.3, "max": 400.3, "count": 4}
    assert latency_block([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "count": 0}


def test_reservoir_is_bounded_but_counts_everything() -> None:
    kept = Reservoir(cap=100, rng=random.Random(1))
    for v in range(10_000):
        kept.add(float(v))
    assert len(kept.values) == 100
    assert kept.count == 10_000
    assert kept.max == 9_999.0
    assert 2_500 < percentile(kept.values, 50) < 7_500  # type: ignore[operator]  # a uniform sample's median


def test_queue_wait_histogram_is_parsed_and_interpolated_like_prometheus() -> None:
    buckets = histogram(PROM_TEXT, "aiadmin_queue_wait_seconds")
    assert buckets[0] == (0.001, 0.0)
    assert buckets[-1][1] == 100.0 and histogram_count(buckets) == 100
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)  # rank 50 is the top of the 1-10 ms bucket
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert queue_lag_block(buckets) == {"p50": 10.0, "p99": 910.0, "count": 100}


def test_queue_wait_is_the_difference_between_scrapes_and_sums_processes() -> None:
    after = histogram(PROM_TEXT, "aiadmin_queue_wait_seconds")
    before = [(le, count / 2) for le, count in after]
    assert histogram_count(subtract_buckets(after, before)) == 50
    assert subtract_buckets(after, []) == after
    assert histogram_count(add_buckets(after, after)) == 200
    with pytest.raises(ValueError, match="different buckets"):
        subtract_buckets(after, [(1.0, 0.0)])
    assert queue_lag_block([]) == {"p50": None, "p99": None, "count": 0}
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 3.0)]) == 0.1  # +Inf: the highest finite bound


def test_lateness_comes_from_the_stats_route_or_is_null() -> None:
    stats = {"flush_lateness_ms": {"p50": 1, "p99": 12, "max": 40, "samples": 9}}
    assert lateness_block(stats) == {"p50": 1.0, "p99": 12.0, "max": 40.0}
    assert lateness_block({"flush_lateness_ms": {"p50": None, "p99": None, "max": None}}) == {
        "p50": None,
        "p99": None,
        "max": None,
    }
    assert lateness_block(None) == {"p50": None, "p99": None, "max": None}


def test_summary_has_the_report_generators_keys_and_types() -> None:
    run = LoadRun.create(LoadOptions(profile=profile_named("steady", scale=0.1), host="http://127.0.0.1:1", seed=9))
    run.start(now_ms=1_000_000)
    turn = run.begin_turn(PHONE, 0, now_ms=1_000_100)
    for i, text in enumerate(["Хочу записаться", "завтра в 15:00"]):
        fragment = run.fragment(turn, tagged(text, turn=0, fragment=i), now_ms=1_000_200 + i)
        run.answered(fragment, outcome="accepted", accept_ms=3.5 + i)
    run.stopped_ms = 1_030_000
    summary = run.summary(
        reconciliation=reconcile(run.turns, [reply(1, 1_004_000)], reply_timeout_ms=60_000),
        merge=check_merge(run.turns, history("Хочу записаться #aa завтра в 15:00 #ab")),
        stats_after={"flush_lateness_ms": {"p50": 1, "p99": 3, "max": 4}, "dead_letters": 0},
        queue_wait=histogram(PROM_TEXT, "aiadmin_queue_wait_seconds"),
        drain_s=1.0,
    )
    for key, kind in SUMMARY_KEYS.items():
        assert isinstance(summary[key], kind), key
    assert summary["started_at"] == "1970-01-01T00:16:40Z"
    assert summary["duration_s"] == 30.0
    assert summary["requests"] == {"count": 2, "failures": 0, "rps": 0.067}
    assert summary["e2e_ms"] == {"p50": 3799.0, "p90": 3799.0, "p99": 3799.0, "max": 3799.0, "count": 1}
    assert summary["e2e_ms_samples"] == [3799.0]
    assert (summary["turns_sent"], summary["turns_answered"], summary["lost_turns"], summary["replies"]) == (1, 1, 0, 1)
    assert summary["merge"] == {
        "turns_checked": 1,
        "mismatched": 0,
        "fragments_sent": 2,
        "fragments_processed": 2,
        "unprocessed_turns": 0,
    }
    assert summary["settings"]["batch_timeout_ms"] == 9000
    assert isinstance(summary["settings"]["llm_latency_s"], str)
    assert set(summary["accept_ms"]) == {"p50", "p90", "p99", "max", "count"}
    assert summary["queue_lag_ms"]["count"] == 100
    orjson.dumps(summary)  # serialisable as it is

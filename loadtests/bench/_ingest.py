"""`aiadmin bench ingest`: the ingest path (webhook → batch → queue) measured on a real Redis.

Runs the sections of `loadtests.bench._ingest_sections` in order and sets their medians beside the reference
report's figures and the goals.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtests._processes import local_redis_pid
from loadtests.bench._env import redis_client, settings_env, without_password
from loadtests.bench._figures import Row, brief, failures, ge, le, machine, num, pair, render, whole
from loadtests.bench._ingest_sections import (
    PHONES,
    Bench,
    BenchConfig,
    append_cost,
    claim_cost,
    flush_lateness,
    http_sections,
)
from loadtests.bench._loadgen import GatewayRequests
from loadtests.bench._wrk import GOAL_RATIO
from simulator.phones import russian_mobiles
from system.settings import load_settings
from system.store.keys import Keys

TITLE = "aiadmin bench ingest — medians over repeats"
ALL_CLEAR = "non-2xx answers, errors, missing and duplicate batches: 0"
MUST_BE_ZERO = {
    "accept_latency": ("non_2xx", "errors"),
    # An exhausted closed loop ran out of encoded requests: its throughput is a floor, not a figure.
    "throughput": (
        "api_non_2xx",
        "api_errors",
        "api_requests_exhausted",
        "empty_non_2xx",
        "empty_errors",
        "empty_requests_exhausted",
    ),
    "wrk": ("api_non_2xx", "api_errors", "empty_non_2xx", "empty_errors"),
    "append": ("errors",),
    "flush_lateness": ("missing", "duplicates", "unexpected", "wrong_fragments", "append_errors"),
    "claim": ("errors",),
}


async def run_ingest(cfg: BenchConfig, console: Console, log_dir: Path) -> dict[str, Any]:
    settings = load_settings(settings_env(cfg.redis_url))
    async with redis_client(settings) as redis:
        phones = russian_mobiles(PHONES)
        b = Bench(
            cfg=cfg,
            settings=settings,
            redis=redis,
            keys=Keys(prefix=settings.redis_prefix, shards=settings.redis_shards),
            phones=phones,
            requests=GatewayRequests(phones, tag=str(time.time_ns())),
            console=console,
            log_dir=log_dir,
            redis_pid=local_redis_pid(await redis.info("server")),
        )
        started = datetime.now(UTC).isoformat()
        try:
            latency, throughput, by_wrk = await http_sections(b)
            appends = await append_cost(b)
            console.print(f"[4/6] append: {brief(appends['median'], 'append_us', unit='µs')}")
            lateness = await flush_lateness(b)
            console.print(f"[5/6] flush lateness: {brief(lateness['median'], 'observed_ms')}")
            claims = await claim_cost(b)
            console.print(f"[6/6] claim: {claims['median']['chunked_per_batch_us']:.0f} µs per batch in chunks")
        finally:
            await b.flush()
        redis_version = (await redis.info("server")).get("redis_version")
    sections = {
        "accept_latency": latency,
        "throughput": throughput,
        "wrk": by_wrk,
        "append": appends,
        "flush_lateness": lateness,
        "claim": claims,
    }
    return {
        "benchmark": "ingest",
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": machine(redis_version),
        "options": asdict(cfg) | {"redis_url": without_password(cfg.redis_url)},
        "sections": sections,
        "summary": [asdict(row) for row in summary_rows(sections)],
        "problems": problems(sections),
    }


def summary_rows(s: dict[str, dict[str, Any]]) -> list[Row]:
    lat, thr, app_, late, claim = (
        s["accept_latency"]["median"],
        s["throughput"]["median"],
        s["append"]["median"],
        s["flush_lateness"]["median"],
        s["claim"]["median"],
    )
    api_rss = s["throughput"]["api_rss_mb"]
    return [
        Row(
            f"API accept latency @{s['accept_latency']['rate_per_s']} req/s (open loop)",
            pair(lat["latency_ms_p50"], lat["latency_ms_p99"], "ms"),
            "10-15 ms",
            "p99 ≤ 5 ms",
            le(lat["latency_ms_p99"], 5),
        ),
        Row(
            f"API max throughput (closed loop, {s['throughput']['connections']} conns)",
            f"{thr['api_rps']:,.0f} req/s (p99 {thr['api_latency_ms_p99']:.1f} ms)",
            "100 req/s",
            "≥ 1,500 req/s",
            thr["api_rps"] >= 1500,
        ),
        Row(
            "API throughput / empty endpoint, own load generator",
            f"{whole(thr['ratio_pct'])}% (empty {thr['empty_rps']:,.0f} req/s)",
            "—",
            "≥ 70%",
            thr["ratio_pct"] is not None and thr["ratio_pct"] >= 70,
        ),
        *wrk_rows(s["wrk"]),
        Row("API RSS after the run", f"{api_rss:.1f} MB", "88 MB", "≤ 70 MB", api_rss <= 70),
        Row(
            "API CPU per request at max throughput",
            f"{whole(thr['api_cpu_us_per_request'])} µs ({thr['api_server_cpu_pct']:.0f}% of a core; "
            f"empty {whole(thr['empty_cpu_us_per_request'])} µs; Redis {whole(thr.get('api_redis_cpu_pct'))}%)",
            "—",
            "—",
        ),
        Row("Append to batch (1 round trip)", pair(app_["append_us_p50"], app_["append_us_p99"], "µs"), "~5 ms", "—"),
        Row(
            f"Flush lateness, observed ({s['flush_lateness']['open_batches']} open batches)",
            pair(late["observed_ms_p50"], late["observed_ms_p99"], "ms") + f", max {late['observed_ms_max']:.0f}",
            "455 ms",
            "p99 ≤ 20 ms",
            le(late["observed_ms_p99"], 20),
        ),
        Row(
            "Flush lateness, batcher-recorded",
            pair(late["recorded_ms_p50"], late["recorded_ms_p99"], "ms") + f", max {late['recorded_ms_max']:.0f}",
            "455 ms",
            "p99 ≤ 20 ms",
            le(late["recorded_ms_p99"], 20),
        ),
        Row("Batcher RSS", f"{s['flush_lateness']['batcher_rss_mb']:.1f} MB", "61 MB", "—"),
        Row(
            f"Claim + enqueue per batch (chunks of {s['claim']['chunk']})",
            f"{claim['chunked_per_batch_us']:.0f} µs",
            "~12 ms + ~5 ms",
            "≤ 1 ms",
            le(claim["chunked_per_batch_us"], 1000),
        ),
        Row(
            "Claim + enqueue, one batch per round trip",
            pair(claim["single_us_p50"], claim["single_us_p99"], "µs"),
            "~12 ms + ~5 ms",
            "p99 ≤ 1 ms",
            le(claim["single_us_p99"], 1000),
        ),
    ]


def wrk_rows(by_wrk: dict[str, Any]) -> list[Row]:
    """The wrk comparison (the median of the per-alternation ratios against the goal), and the cluster's when run."""
    stage = "API throughput / empty endpoint, by wrk"
    goal = f"≥ {GOAL_RATIO:.2f}"
    if "skipped" in by_wrk:
        return [Row(stage, by_wrk["skipped"], "—", goal)]
    m = by_wrk["median"]
    stage += f" ({by_wrk['threads']} thread, {by_wrk['connections']} conns, {len(by_wrk['runs'])} alternations)"
    ours = (
        f"{m['ratio']:.2f} (API {m['api_rps']:,.0f} req/s, {whole(m['api_cpu_us_per_request'])} µs CPU; "
        f"empty {m['empty_rps']:,.0f} req/s, {whole(m['empty_cpu_us_per_request'])} µs; "
        f"Redis waited for a CPU {whole(m['api_redis_runqueue_wait_pct'])}% of the API's runs; "
        f"CPU per request, empty / API: {num('{:.2f}', m['cpu_ratio'])})"
    )
    rows = [Row(stage, ours, "—", goal, ge(m["ratio"], GOAL_RATIO))]
    if "cluster_rps" in m:
        cluster_cpu_us = whole(m["cluster_cpu_us_per_request"])
        ours = f"{m['cluster_ratio']:.2f} ({m['cluster_rps']:,.0f} req/s, {cluster_cpu_us} µs CPU)"
        rows.append(Row("API on a Redis Cluster / empty endpoint, by wrk (same alternations)", ours, "—", "—"))
    return rows


def problems(s: dict[str, dict[str, Any]]) -> list[str]:
    """Correctness failures, which make every figure suspect: they must all be zero."""
    return failures(s, MUST_BE_ZERO)


def render_ingest(console: Console, report: dict[str, Any], out: Path) -> None:
    rows = summary_rows(report["sections"])
    render(console, rows, report["problems"], out, title=TITLE, all_clear=ALL_CLEAR)

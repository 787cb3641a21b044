"""`aiadmin bench worker`: one worker process's throughput (messages/s) and memory on a real Redis.

Two cases, run by `loadtests.bench._worker_cases`: an LLM stand-in answering at once (the worker's own cost) and
one taking 5 s (throughput bound by the turns in flight: concurrency / latency). Their medians go beside
the reference report's figures and the goals.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtests._processes import local_redis_pid
from loadtests.bench._env import redis_client, settings_env, without_password
from loadtests.bench._figures import Row, failures, ge, le, machine, num, render, whole
from loadtests.bench._worker_cases import WorkerBench, WorkerCase, run_case
from simulator.phones import russian_mobiles
from system.clock import WallClock
from system.ingest.batch_store import BatchConfig, BatchStore
from system.settings import load_settings
from system.stats import StatsReader
from system.store.keys import Keys
from system.store.queue import JobQueue, QueueConfig

WORKER_DEFAULT_DB = 13
TITLE = "aiadmin bench worker — medians over repeats (LLM: a local stand-in with a set latency)"
ALL_CLEAR = "lost replies, double replies, unacked jobs, retries and dead letters: 0"
MUST_BE_ZERO = ("lost_replies", "double_replies", "not_acked", "dead_letters", "retried", "append_errors")
REFERENCE_RATE = "3-5 messages/s (AI 5-15 s)"
REFERENCE_RSS = "62 MB"
GOAL_PER_S = 100  # at 5 s of LLM latency, per process
GOAL_IDLE_RSS_MB = 70


@dataclass(frozen=True, slots=True)
class WorkerBenchConfig:
    """The two cases, fixed once from the command line."""

    redis_url: str
    fast: WorkerCase
    slow: WorkerCase
    quick: bool

    @classmethod
    def build(cls, *, redis_url: str, repeats: int, slow_repeats: int, quick: bool) -> WorkerBenchConfig:
        fast = WorkerCase(
            name="llm_0ms",
            llm_latency_s=0.0,
            concurrency=32,
            jobs=200 if quick else 1000,
            repeats=1 if quick else repeats,
            warmup_jobs=50 if quick else 200,
        )
        slow = WorkerCase(
            name="llm_5s",
            llm_latency_s=5.0,
            concurrency=500 if quick else 1000,
            jobs=1000 if quick else 3000,
            repeats=1 if quick else slow_repeats,
            warmup_jobs=0,  # a warm-up would cost another 5 s; the 0 ms case shows the warm figures
        )
        return cls(redis_url=redis_url, fast=fast, slow=slow, quick=quick)

    @property
    def cases(self) -> tuple[WorkerCase, WorkerCase]:
        return self.fast, self.slow


async def run_worker_bench(cfg: WorkerBenchConfig, console: Console, log_dir: Path) -> dict[str, Any]:
    settings = load_settings(settings_env(cfg.redis_url))
    keys = Keys(prefix=settings.redis_prefix, shards=settings.redis_shards)
    conversations = sum(case.warmup_jobs + case.jobs * case.repeats for case in cfg.cases)
    async with redis_client(settings) as redis:
        queue = JobQueue(redis, keys=keys, config=QueueConfig.from_settings(settings), rng=random.Random(0))
        b = WorkerBench(
            redis_url=cfg.redis_url,
            settings=settings,
            redis=redis,
            keys=keys,
            store=BatchStore(redis, keys=keys, config=BatchConfig.from_settings(settings)),
            stats=StatsReader(redis, keys=keys, queue=queue, clock=WallClock()),
            phones=russian_mobiles(conversations),
            log_dir=log_dir,
            redis_pid=local_redis_pid(await redis.info("server")),
        )
        started = datetime.now(UTC).isoformat()
        sections: dict[str, dict[str, Any]] = {}
        try:
            for index, case in enumerate(cfg.cases, 1):
                sections[case.name] = await run_case(b, case)
                m = sections[case.name]["median"]
                console.print(
                    f"[{index}/{len(cfg.cases)}] LLM stand-in {case.llm_latency_s * 1000:.0f} ms, concurrency "
                    f"{case.concurrency}: {m['messages_per_s']:,.1f} messages/s, {m['replies']:.0f} replies "
                    f"to {case.jobs} jobs"
                )
        finally:
            await redis.flushdb()
        redis_version = (await redis.info("server")).get("redis_version")
    return {
        "benchmark": "worker",
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": machine(redis_version),
        "options": asdict(cfg) | {"redis_url": without_password(cfg.redis_url)},
        "sections": sections,
        "summary": [asdict(row) for row in summary_rows(cfg, sections)],
        "problems": problems(sections),
    }


def summary_rows(cfg: WorkerBenchConfig, s: dict[str, dict[str, Any]]) -> list[Row]:
    fast, slow = s[cfg.fast.name], s[cfg.slow.name]
    fm, sm = fast["median"], slow["median"]
    cpu_us = None if fm["worker_cpu_ms_per_message"] is None else fm["worker_cpu_ms_per_message"] * 1000
    return [
        Row(
            f"Worker throughput, LLM stand-in 0 ms, concurrency {fast['concurrency']} ({fast['jobs']} jobs)",
            f"{fm['messages_per_s']:,.0f} messages/s ({whole(cpu_us)} µs worker CPU per message, "
            f"{fm['worker_cpu_pct']:.0f}% of a core)",
            REFERENCE_RATE,
            "—",
        ),
        Row(
            f"Worker throughput, LLM stand-in 5 s, concurrency {slow['concurrency']} ({slow['jobs']} jobs)",
            f"{sm['messages_per_s']:,.1f} messages/s ({_ending(slow)}bound {slow['bound_per_s']:,.0f} = "
            f"concurrency / latency; at most {whole(sm['llm_in_flight_max'])} LLM calls at once; "
            f"worker {sm['worker_cpu_pct']:.0f}% of a core)",
            REFERENCE_RATE,
            f"≥ {GOAL_PER_S} messages/s",
            ge(sm["messages_per_s"], GOAL_PER_S),
        ),
        Row(
            "Worker RSS, idle after start-up",
            f"{fast['idle_rss_mb']:.1f} MB ({slow['idle_rss_mb']:.1f} MB with {slow['concurrency']} slots)",
            REFERENCE_RSS,
            f"≤ {GOAL_IDLE_RSS_MB} MB",
            le(max(fast["idle_rss_mb"], slow["idle_rss_mb"]), GOAL_IDLE_RSS_MB),
        ),
        Row(
            "Worker RSS after the runs",
            f"{fast['after_rss_mb']:.1f} MB (0 ms case), {slow['after_rss_mb']:.1f} MB (5 s case)",
            REFERENCE_RSS,
            "—",
        ),
        Row(
            "Replies: sent / jobs, double, acked, dead letters",
            f"0 ms: {_replies(fast)}; 5 s: {_replies(slow)}",
            "—",
            "one reply per job",
            all(c["median"]["replies"] == c["jobs"] and not c["median"]["double_replies"] for c in (fast, slow)),
        ),
        Row(
            "YClients catalogue requests, cold cache (5 s case)",
            f"{whole(slow['runs'][0]['yclients_requests'])} for one company",
            "—",
            "—",
        ),
    ]


def _ending(case: dict[str, Any]) -> str:
    """How a case's runs ended when not every job got its reply."""
    m = case["median"]
    if m["stalled"]:
        return f"stopped after {whole(case['stall_s'])} s without a new reply; "
    if m["timed_out"]:
        return f"stopped at the {whole(case['timeout_s'])} s timeout; "
    return ""


def _replies(case: dict[str, Any]) -> str:
    m = case["median"]
    return (
        f"{num('{:.0f}', m['replies'])}/{case['jobs']}, {whole(m['double_replies'])} double, "
        f"{whole(m['jobs_done'])} acked, {whole(m['dead_letters'])} dead"
    )


def problems(s: dict[str, dict[str, Any]]) -> list[str]:
    """Lost or double replies, unacked or failed jobs: each makes the figures suspect."""
    return failures(s, dict.fromkeys(s, MUST_BE_ZERO))


def render_worker(console: Console, report: dict[str, Any], out: Path) -> None:
    rows = [Row(**row) for row in report["summary"]]
    render(console, rows, report["problems"], out, title=TITLE, all_clear=ALL_CLEAR)

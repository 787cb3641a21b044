"""`aiadmin bench stages`: every figure of the reference report's performance section, measured.

The notes beside the figures are in Russian: they go into the monthly report as they are.

It runs the ingest benchmark, the worker benchmark and the turn stages on one Redis (each flushes it),
then sets each stage, throughput and process beside the reference figure and the goal. The result,
`out/bench-stages.json`, is what the monthly report reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtests.bench._env import without_password
from loadtests.bench._figures import Row, machine, num, render
from loadtests.bench._ingest import run_ingest
from loadtests.bench._ingest_sections import BenchConfig
from loadtests.bench._turn_stages import TurnStagesConfig, run_turn_stages
from loadtests.bench._worker import WorkerBenchConfig, run_worker_bench
from system.settings import Settings, load_settings

TITLE = "aiadmin bench stages — the reference report's performance section, measured"
ALL_CLEAR = "errors, lost or double jobs and replies: 0"

# Goals of the issue on this machine; "typical" reference figures (~N ms) are compared with medians.
GOAL_ACCEPT_P99_MS = 5.0
GOAL_LATENESS_P99_MS = 20.0
GOAL_BATCH_P50_MS = 1.0
GOAL_HANDOVER_P50_MS = 2.0
GOAL_API_RPS = 1500.0
GOAL_API_RATIO_PCT = 70.0
GOAL_WORKER_PER_S = 100.0
GOAL_RSS_MB = 70.0


@dataclass(frozen=True, slots=True)
class StagesConfig:
    """The three benchmarks' settings, fixed once from the command line."""

    redis_url: str
    ingest: BenchConfig
    worker: WorkerBenchConfig
    turn: TurnStagesConfig

    @classmethod
    def build(cls, *, redis_url: str, repeats: int, duration_s: float, quick: bool) -> StagesConfig:
        return cls(
            redis_url=redis_url,
            ingest=BenchConfig.build(
                redis_url=redis_url, repeats=repeats, duration_s=duration_s, rate_per_s=500, connections=32, quick=quick
            ),
            # The 5 s case repeats as often as the others: the report judges every goal across its repeats.
            worker=WorkerBenchConfig.build(redis_url=redis_url, repeats=repeats, slow_repeats=repeats, quick=quick),
            turn=TurnStagesConfig.build(redis_url=redis_url, repeats=repeats, quick=quick),
        )


async def run_stages(cfg: StagesConfig, console: Console, log_dir: Path) -> dict[str, Any]:
    started = datetime.now(UTC).isoformat()
    console.rule("ingest: webhook → batch → queue")
    ingest = await run_ingest(cfg.ingest, console, log_dir)
    console.rule("worker: queue → LLM → reply")
    worker = await run_worker_bench(cfg.worker, console, log_dir)
    console.rule("turn stages: hand-over, LLM client, sending")
    turn = await run_turn_stages(cfg.turn, console, log_dir)
    settings = load_settings({})
    report = compose(ingest, worker, turn, settings)
    return {
        "benchmark": "stages",
        "generated_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "host": machine(ingest["machine"]["redis"]),
        "repeats": cfg.ingest.repeats,
        "options": {"redis_url": without_password(cfg.redis_url), "quick": cfg.ingest.quick},
        **report,
        "benchmarks": {"ingest": ingest, "worker": worker, "turn": turn},
    }


def compose(ingest: dict[str, Any], worker: dict[str, Any], turn: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The stages, throughput, processes, configuration and problems, in the report's schema."""
    s, w = ingest["sections"], worker["sections"]
    return {
        "stages": stages(s, turn),
        "throughput": throughput(s, w),
        "processes": processes(s, w),
        "config": config(settings, worker),
        "problems": [*ingest["problems"], *worker["problems"], *_turn_problems(turn)],
    }


def stages(s: dict[str, Any], turn: dict[str, Any]) -> list[dict[str, Any]]:
    accept, append, late, claim = (s[k]["median"] for k in ("accept_latency", "append", "flush_lateness", "claim"))
    hand, llm, send = (turn[k]["median"] for k in ("handover", "llm", "sending"))
    timeout_ms = s["flush_lateness"]["timeout_ms"]
    timeout = _stage(
        "timeout",
        "Ожидание таймаута",
        late["delay_ms_p50"],
        late["delay_ms_p99"],
        reference="9000 ms (fired at 9455 ms)",
        goal=f"lateness p99 ≤ {GOAL_LATENESS_P99_MS:g} ms",
        met=_le(late["observed_ms_p99"], GOAL_LATENESS_P99_MS),
        note=(
            f"последний фрагмент → задача в очереди, таймаут {timeout_ms} мс, "
            f"{s['flush_lateness']['open_batches']} открытых батчей; опоздание p50/p99 "
            f"{num('{:.1f}', late['observed_ms_p50'])}/{num('{:.1f}', late['observed_ms_p99'])} мс"
        ),
    ) | {"timeout_ms": timeout_ms}
    return [
        _stage(
            "api_accept",
            "Прием сообщения API",
            accept["latency_ms_p50"],
            accept["latency_ms_p99"],
            reference="~10-15 ms",
            goal=f"p99 ≤ {GOAL_ACCEPT_P99_MS:g} ms",
            met=_le(accept["latency_ms_p99"], GOAL_ACCEPT_P99_MS),
            note=f"{s['accept_latency']['rate_per_s']} запросов/с, открытый цикл, один процесс API",
        ),
        _stage(
            "add_to_batch",
            "Добавление в батч",
            _ms(append["append_us_p50"]),
            _ms(append["append_us_p99"]),
            reference="~5 ms",
            note="один атомарный скрипт: дедупликация, лимиты, добавление, дедлайн, TTL; один обмен с Redis",
        ),
        timeout,
        _stage(
            "batch_processing",
            "Обработка батча",
            _ms(claim["single_us_p50"]),
            _ms(claim["single_us_p99"]),
            reference="~12 ms",
            goal=f"p50 ≤ {GOAL_BATCH_P50_MS:g} ms",
            met=_le(_ms(claim["single_us_p50"]), GOAL_BATCH_P50_MS),
            note=(
                "claim = взять, склеить, удалить и поставить в очередь одним скриптом, один батч за обмен; "
                f"{num('{:.0f}', claim['chunked_per_batch_us'])} мкс на батч пачками, как в batch processor"
            ),
        ),
        _stage(
            "queue_handover",
            "Передача в очередь",
            hand["handover_ms_p50"],
            hand["handover_ms_p99"],
            reference="~5 ms",
            goal=f"p50 ≤ {GOAL_HANDOVER_P50_MS:g} ms",
            met=_le(hand["handover_ms_p50"], GOAL_HANDOVER_P50_MS),
            note="claim → потребитель, разбуженный как воркер (Pub/Sub, затем чтение), получил задачу",
        ),
        _stage(
            "ai_processing",
            "Обработка AI",
            llm["llm_ms_p50"],
            llm["llm_ms_p99"],
            reference="5-15 s",
            note=(
                "наш клиент LLM против заглушки, отвечающей сразу; задержку самой модели мы не измеряем "
                "(в замере воркера заглушка отвечает за заданные 5 с)"
            ),
        ),
        _stage(
            "sending",
            "Отправка ответа",
            send["send_ms_p50"],
            send["send_ms_p99"],
            reference="1-2 s",
            note="один ответ через клиент Cloud API к заглушке на loopback (без сети до Meta)",
        ),
    ]


def throughput(s: dict[str, Any], w: dict[str, Any]) -> list[dict[str, Any]]:
    thr, claim = s["throughput"]["median"], s["claim"]["median"]
    slow, fast = w["llm_5s"], w["llm_0ms"]
    per_batch_us = claim["chunked_per_batch_us"]
    return [
        _rate(
            "api",
            "API",
            thr["api_rps"],
            "req/s",
            reference="до 100 запросов/сек",
            goal=f"≥ {GOAL_API_RPS:,.0f} req/s",
            met=_ge(thr["api_rps"], GOAL_API_RPS),
            note=f"замкнутый цикл, {s['throughput']['connections']} соединения, p99 "
            f"{num('{:.1f}', thr['api_latency_ms_p99'])} мс",
        ),
        _rate(
            "api_vs_empty",
            "API / пустой endpoint",
            thr["ratio_pct"],
            "%",
            goal=f"≥ {GOAL_API_RATIO_PCT:g}%",
            met=_ge(thr["ratio_pct"], GOAL_API_RATIO_PCT),
            note=f"пустой endpoint FastAPI того же стека, тот же прогон: {num('{:,.0f}', thr['empty_rps'])} запросов/с",
        ),
        _rate(
            "batcher",
            "Batch Processor",
            1e6 / per_batch_us if per_batch_us else None,
            "batches/s",
            reference="проверка каждую секунду",
            note="claim + постановка в очередь пачками; спит до ближайшего дедлайна, без опроса",
        ),
        _rate(
            "worker",
            "Worker",
            slow["median"]["messages_per_s"],
            "msg/s",
            reference="3-5 сообщений/сек (с AI)",
            goal=f"≥ {GOAL_WORKER_PER_S:g} msg/s",
            met=_ge(slow["median"]["messages_per_s"], GOAL_WORKER_PER_S),
            note=f"заглушка LLM отвечает за 5 с, параллельность {slow['concurrency']}, {slow['jobs']} задач",
        ),
        _rate(
            "worker_no_llm_wait",
            "Worker (LLM без задержки)",
            fast["median"]["messages_per_s"],
            "msg/s",
            note=f"заглушка LLM без задержки, параллельность {fast['concurrency']}: потолок самого воркера",
        ),
    ]


def processes(s: dict[str, Any], w: dict[str, Any]) -> list[dict[str, Any]]:
    """RSS at rest, as the reference's process table was read, and after each benchmark's load."""
    thr, late = s["throughput"], s["flush_lateness"]
    slow, fast = w["llm_5s"], w["llm_0ms"]
    return [
        _process(
            "aiadmin api",
            thr["api_idle_rss_mb"],
            thr["api_rss_mb"],
            thr["median"]["api_server_cpu_pct"],
            reference_mb=88,
            load=f"после {s['throughput']['connections']} соединений на полной скорости и 10 000 отправителей",
        ),
        _process(
            "aiadmin batcher",
            late["batcher_idle_rss_mb"],
            late["batcher_rss_mb"],
            None,
            reference_mb=61,
            load=f"после сброса {late['open_batches']} открытых батчей за повтор",
        ),
        _process(
            "aiadmin worker",
            max(slow["idle_rss_mb"], fast["idle_rss_mb"]),
            max(slow["after_rss_mb"], fast["after_rss_mb"]),
            slow["median"]["worker_cpu_pct"],
            reference_mb=62,
            load=f"после {slow['concurrency']} ходов одновременно (LLM 5 с)",
        ),
    ]


def config(settings: Settings, worker: dict[str, Any]) -> dict[str, Any]:
    """The defaults the figures were measured with (benchmarks change only what they state)."""
    return {
        "batch_timeout_ms": settings.batch_timeout_ms,
        "max_batch_size": settings.max_batch_size,
        "batch_ttl_s": settings.batch_ttl_s,
        "dedup_ttl_s": settings.dedup_ttl_s,
        "redis_shards": settings.redis_shards,
        "worker_concurrency": settings.worker_concurrency,
        "worker_concurrency_benchmarked": worker["sections"]["llm_5s"]["concurrency"],
        "queue_max_len": settings.queue_max_len,
        "rate_limit_sender_burst": settings.rate_limit_sender_burst,
        "rate_limit_sender_per_min": settings.rate_limit_sender_per_min,
        "rate_limit_global_per_s": settings.rate_limit_global_per_s,
    }


def summary_rows(report: dict[str, Any]) -> list[Row]:
    rows = [
        Row(
            f"{x['name']} ({x['key']})",
            f"{num('{:.2f}', x['p50_ms'])} / {num('{:.2f}', x['p99_ms'])} ms (p50 / p99)",
            x["reference"] or "—",
            x["goal"] or "—",
            x["met"],
        )
        for x in report["stages"]
    ]
    rows += [
        Row(
            f"{x['name']} ({x['key']})",
            f"{num('{:,.0f}', x['value'])} {x['unit']}",
            x["reference"] or "—",
            x["goal"] or "—",
            x["met"],
        )
        for x in report["throughput"]
    ]
    rows += [
        Row(
            f"{x['name']}: RSS at rest (under load), CPU under load",
            f"{num('{:.1f}', x['rss_mb'])} MB ({num('{:.1f}', x['rss_under_load_mb'])} MB), "
            f"{num('{:.0f}', x['cpu_pct'])}% of a core",
            f"{x['reference_rss_mb']} MB",
            f"≤ {x['goal_rss_mb']:g} MB",
            x["met"],
        )
        for x in report["processes"]
    ]
    return rows


def render_stages(console: Console, report: dict[str, Any], out: Path) -> None:
    render(console, summary_rows(report), report["problems"], out, title=TITLE, all_clear=ALL_CLEAR)


def _stage(
    key: str,
    name: str,
    p50_ms: float | None,
    p99_ms: float | None,
    *,
    reference: str,
    goal: str | None = None,
    met: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    return asdict(_Figure(key, name, reference, goal, met, note)) | {"p50_ms": p50_ms, "p99_ms": p99_ms}


def _rate(
    key: str,
    name: str,
    value: float | None,
    unit: str,
    *,
    reference: str | None = None,
    goal: str | None = None,
    met: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    return asdict(_Figure(key, name, reference, goal, met, note)) | {"value": value, "unit": unit}


def _process(
    name: str, rss_mb: float | None, loaded_rss_mb: float | None, cpu_pct: float | None, *, reference_mb: int, load: str
) -> dict[str, Any]:
    return {
        "name": name,
        "instances": 1,
        "rss_mb": rss_mb,
        "rss_under_load_mb": loaded_rss_mb,
        "load": load,
        "cpu_pct": cpu_pct,
        "reference_rss_mb": reference_mb,
        "goal_rss_mb": GOAL_RSS_MB,
        "met": _le(rss_mb, GOAL_RSS_MB),
    }


@dataclass(frozen=True, slots=True)
class _Figure:
    key: str
    name: str
    reference: str | None
    goal: str | None
    met: bool | None
    note: str


def _turn_problems(turn: dict[str, Any]) -> list[str]:
    runs = turn["handover"]["runs"]
    return [f"hand-over run {i + 1}: errors={run['errors']}" for i, run in enumerate(runs) if run["errors"]]


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def _le(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def _ge(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound

"""Every figure that has a goal, checked: the stage benchmark's own verdicts and the goals of the load runs."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from reports.generator import reference as ref
from reports.generator.format import number, ru_units, unit
from reports.generator.inputs import BenchProcess, Rate, Stage
from reports.generator.model import LoadFig, ReportFigures


@dataclass(frozen=True, slots=True)
class Goal:
    op: Literal["le", "ge"]
    limit: float
    unit: str
    percentile: str | None = None
    of: str | None = None  # "lateness": the goal bounds the delay past the batch timeout


@dataclass(frozen=True, slots=True)
class Check:
    """One figure against its goal; `key` stays the same from month to month."""

    key: str
    source: str
    label: str
    value: float | None
    unit: str
    goal: str
    met: bool | None  # None: not measured, or no verdict possible
    # How much of the goal the figure uses: value / limit for "≤", limit / value for "≥"; over 1 is missed.
    used: float | None = None
    runs: tuple[float, ...] = ()  # each repeat's value, when there were repeats: the spread is shown
    runs_word: str = "повторы"  # what the runs are: the benchmark's repeats, or a load run's windows ("окна")

    @property
    def shown(self) -> str:
        if self.value is None:
            return "не измерено"
        shown_unit = unit(self.unit)
        text = f"{number(self.value)}{shown_unit}" if shown_unit == "%" else f"{number(self.value)} {shown_unit}"
        if len(self.runs) > 1:
            text += f" ({self.runs_word}: {' / '.join(number(v) for v in self.runs)}; разброс {number(self.spread)})"
        return text

    @property
    def spread(self) -> float | None:
        """The noise across repeats: the largest minus the smallest; None without repeats."""
        return max(self.runs) - min(self.runs) if len(self.runs) > 1 else None


def beyond_noise(value: float, runs: Sequence[float], goal: Goal) -> bool:
    """Whether a figure misses its goal for real: in at least two thirds of its repeats (2 of 3), or the reported
    value by more than the spread across repeats. Without repeats there is no noise to measure: any miss counts."""

    def misses(v: float) -> bool:
        return v > goal.limit if goal.op == "le" else v < goal.limit

    if len(runs) < 2:
        return misses(value)
    missed_runs = sum(misses(v) for v in runs)
    by = value - goal.limit if goal.op == "le" else goal.limit - value
    return 3 * missed_runs >= 2 * len(runs) or by > max(runs) - min(runs)


GOAL_TEXT = re.compile(
    r"^\s*(?:(lateness)\s+)?(?:(p\d{1,2}|max)\s+)?(≤|<=|<|≥|>=|>)\s*(\d[\d\s\u00a0\u202f,.]*)\s*(.*?)\s*$",
    re.IGNORECASE,
)
TIMEOUT_NOTE = re.compile(r"timeout\s+(\d[\d\s\u00a0,]*)\s*ms", re.IGNORECASE)
SECONDS = frozenset({"s", "с", "sec"})


def parse_goal(text: str | None) -> Goal | None:
    """`p99 ≤ 5 ms`, `≥ 1 500 req/s`, `≥ 1,500 req/s`, `≥ 70%`, `lateness p99 ≤ 20 ms`; None for anything else."""
    match = GOAL_TEXT.match(text or "")
    if not match:
        return None
    of, percentile, op, raw, goal_unit = match.groups()
    digits = re.sub(r"[\s\u00a0\u202f]", "", raw).rstrip(".,")
    digits = digits.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", digits) else digits.replace(",", ".")
    try:
        limit = float(digits)
    except ValueError:
        return None
    return Goal(
        "le" if op in ("≤", "<=", "<") else "ge",
        limit,
        goal_unit,
        percentile.lower() if percentile else None,
        of.lower() if of else None,
    )


def used(value: float | None, goal: Goal) -> float | None:
    if value is None:
        return None
    if goal.op == "le":
        return value / goal.limit if goal.limit > 0 else (math.inf if value > 0 else 0.0)
    return goal.limit / value if value > 0 else math.inf


def checks(figures: ReportFigures) -> list[Check]:
    config_timeout = figures.bench.config.get("batch_timeout_ms") if figures.bench else None
    found = [
        check
        for stage in figures.stages
        if (check := stage_check(stage, timeout_ms=stage_timeout_ms(stage, config_timeout))) is not None
    ]
    found.extend(check for rate in figures.throughput if (check := rate_check(rate)) is not None)
    found.extend(process_check(process) for process in figures.processes if process.rss_mb is not None)
    for run in figures.load:
        found.extend(load_checks(run))
    return found


def stage_timeout_ms(stage: Stage, config_timeout: object) -> float | None:
    """The batch timeout the `timeout` stage ran with: its own field, its note, else the configured one."""
    if stage.key != "timeout":
        return None
    if stage.timeout_ms is not None:
        return stage.timeout_ms
    noted = TIMEOUT_NOTE.search(stage.note or "")
    if noted:
        return float(re.sub(r"[\s\u00a0,]", "", noted.group(1)))
    if isinstance(config_timeout, int | float) and not isinstance(config_timeout, bool):
        return float(config_timeout)
    return None


def stage_check(stage: Stage, *, timeout_ms: float | None = None) -> Check | None:
    if stage.goal is None and stage.met is None:
        return None
    goal = parse_goal(stage.goal)
    percentile = goal.percentile if goal and goal.percentile in ("p50", "p99") else "p99"
    value = stage.p50_ms if percentile == "p50" else stage.p99_ms
    label = f"{stage.name}, {percentile}"
    if goal is not None and goal.of == "lateness":
        # The goal bounds the delay past the timeout: without the timeout there is nothing to compare.
        if timeout_ms is None or value is None:
            goal = None
        else:
            value, label = value - timeout_ms, f"{stage.name}, опоздание {percentile}"
    share = None
    runs = stage.runs_p50_ms if percentile == "p50" else stage.runs_p99_ms
    met = None
    if goal is not None:
        limit = goal.limit * 1000 if goal.unit.lower() in SECONDS else goal.limit
        share = used(value, Goal(goal.op, limit, "ms", percentile))
        if goal.of == "lateness" and timeout_ms is not None:
            runs = tuple(r - timeout_ms for r in runs)
        if value is not None and len(runs) > 1:
            met = not beyond_noise(value, runs, Goal(goal.op, limit, "ms"))
    return Check(
        key=f"stage:{stage.key}",
        source="stages",
        label=label,
        value=value,
        unit="ms",
        goal=ru_units(stage.goal) if stage.goal else "—",
        met=met if met is not None else _verdict(value, stage.met, share),
        used=share,
        runs=runs,
    )


def rate_check(rate: Rate) -> Check | None:
    if rate.goal is None and rate.met is None:
        return None
    goal = parse_goal(rate.goal)
    share = used(rate.value, goal) if goal else None
    met = _verdict(rate.value, rate.met, share)
    if goal is not None and rate.value is not None and len(rate.runs) > 1:
        met = not beyond_noise(rate.value, rate.runs, goal)  # the repeats outrank the benchmark's own verdict
    return Check(
        key=f"throughput:{rate.key}",
        source="stages",
        label=f"Пропускная способность: {rate.name}",
        value=rate.value,
        unit=rate.unit,
        goal=ru_units(rate.goal) if rate.goal else "—",
        met=met,
        used=share,
        runs=rate.runs,
    )


def process_check(process: BenchProcess) -> Check:
    limit = process.goal_rss_mb or ref.GOAL_RSS_MB
    share = used(process.rss_mb, Goal("le", limit, "MB"))
    return Check(
        key=f"process:{process.name}",
        source="stages",
        label=f"Память {process.name}",
        value=process.rss_mb,
        unit="MB",
        goal=f"≤ {number(limit)} МБ",
        met=_verdict(process.rss_mb, process.met, share),
        used=share,
    )


def load_checks(run: LoadFig) -> list[Check]:
    """A load run's goals; where its windows were measured, a goal counts as missed only beyond their noise."""
    p = run.profile
    e2e = e2e_goal(run)
    e2e_runs = tuple(v / 1000 for v in run.runs_e2e_p99_ms)
    Wanted = tuple[str, str, float | None, Goal | None, tuple[float, ...], str | None]
    wanted: list[Wanted] = [
        (
            "accept_p99",
            "приём сообщения p99",
            run.accept_p99_ms,
            _le(ref.ACCEPT_P99_GOAL_MS, "ms"),
            run.runs_accept_p99_ms,
            None,
        ),
        (
            "e2e_p99",
            "ответ клиенту (e2e) p99",
            _s(run.e2e_p99_ms),
            _le(e2e[0] / 1000, "s") if e2e else None,
            e2e_runs,
            e2e[1] if e2e else None,
        ),
        (
            "lateness_p99",
            "опоздание сброса батча p99",
            run.lateness_p99_ms,
            _le(ref.LATENESS_P99_GOAL_MS, "ms"),
            run.runs_lateness_p99_ms,
            None,
        ),
        (
            "queue_lag_p99",
            "ожидание в очереди p99",
            run.queue_lag_p99_ms,
            _le(ref.QUEUE_LAG_P99_GOAL_MS, "ms"),
            run.runs_queue_lag_p99_ms,
            None,
        ),
    ]
    if run.target_rps is not None:  # the profile's own rate (steady: the reference's 100 requests/s)
        wanted.append(
            ("rps", "запросов вебхука в секунду", run.rps, Goal("ge", run.target_rps, "req/s"), run.runs_rps, None)
        )
    found = []
    for key, label, value, goal, runs, goal_text in wanted:
        if value is None or goal is None:
            continue
        share = used(value, goal)
        met = not beyond_noise(value, runs, goal) if len(runs) > 1 else share is not None and share <= 1
        sign = "≤" if goal.op == "le" else "≥"
        found.append(
            Check(
                key=f"load:{p}:{key}",
                source=f"load:{p}",
                label=f"Нагрузка {p}: {label}",
                value=value,
                unit=goal.unit,
                goal=goal_text or f"{sign} {number(goal.limit)} {unit(goal.unit)}",
                met=met,
                used=share,
                runs=runs,
                runs_word="окна",
            )
        )
    found.extend(_rss_growth_checks(run))
    found.extend(_redis_return_checks(run))
    return found


def _le(limit: float, figure_unit: str) -> Goal:
    return Goal("le", limit, figure_unit)


def is_system_process(name: str) -> bool:
    """One of ours (`aiadmin run`, `aiadmin api`, …), not a stand-in or the load generator, which keep what they
    saw on purpose (the fake WhatsApp every message, Locust every turn) and so grow with the run."""
    return name.replace(" ", "-").startswith("aiadmin-")


def _rss_growth_checks(run: LoadFig) -> list[Check]:
    """Memory flat over a long run: each of our processes' RSS growth after the warm-up (runs that outlast it)."""
    goal = Goal("le", ref.RSS_GROWTH_GOAL_PCT, "%")
    found = []
    for process in run.processes:
        if process.rss_growth_pct is None or not is_system_process(process.name):
            continue
        share = used(max(process.rss_growth_pct, 0.0), goal)
        found.append(
            Check(
                key=f"load:{run.profile}:rss_growth:{process.name}",
                source=f"load:{run.profile}",
                label=f"Нагрузка {run.profile}: рост памяти {process.name} после 5 мин",
                value=process.rss_growth_pct,
                unit="%",
                goal=f"< {number(ref.RSS_GROWTH_GOAL_PCT)}%",
                met=process.rss_growth_pct < ref.RSS_GROWTH_GOAL_PCT,
                used=share,
            )
        )
    return found


def _redis_return_checks(run: LoadFig) -> list[Check]:
    """Redis memory back at its starting level once the conversations expired (runs that waited for it)."""
    after, start = run.redis_after_expiry_mb, run.redis_start_mb
    if after is None or start is None:
        return []
    grown = round(after - start, 2)
    left = run.redis_keys_left_after_expiry or 0
    return [
        Check(
            key=f"load:{run.profile}:redis_memory_back",
            source=f"load:{run.profile}",
            label=f"Нагрузка {run.profile}: память Redis после истечения TTL разговоров, сверх начальной",
            value=grown,
            unit=" МБ",
            goal=f"≤ {number(ref.REDIS_RETURN_SLACK_MB)} МБ, все ключи с TTL истекли",
            met=grown <= ref.REDIS_RETURN_SLACK_MB and left == 0,
            used=used(max(grown, 0.0), Goal("le", ref.REDIS_RETURN_SLACK_MB, " МБ")),
        )
    ]


def e2e_goal(run: LoadFig) -> tuple[float, str] | None:
    """The end-to-end bound this run's own settings imply, with how it is made up; None without them."""
    timeout_ms = run.settings.get("batch_timeout_ms")
    llm = run.settings.get("llm_latency_s")
    if not isinstance(timeout_ms, int | float) or isinstance(timeout_ms, bool):
        return None
    slowest_s = _slowest_latency_s(llm)
    if slowest_s is None:
        return None
    calls = ref.SCRIPTED_CALLS_PER_TURN if run.settings.get("llm_mode") == "scripted" else ref.MODEL_CALLS_PER_TURN
    limit = float(timeout_ms) + calls * slowest_s * 1000 + ref.SENDING_ALLOWANCE_MS
    text = (
        f"≤ {number(limit / 1000)} с (таймаут {number(timeout_ms / 1000)} с + {calls} вызова LLM до "
        f"{number(slowest_s)} с + {number(ref.SENDING_ALLOWANCE_MS / 1000)} с на отправку)"
    )
    return limit, text


def _s(value_ms: float | None) -> float | None:
    return None if value_ms is None else value_ms / 1000


def _slowest_latency_s(value: object) -> float | None:
    """The maximum of the simulator's `min,mode,max` latency (or a single number)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        return max(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        return None


def _verdict(value: float | None, given: bool | None, share: float | None) -> bool | None:
    """The benchmark's own verdict wins; without one, the parsed goal decides; unmeasured is no verdict."""
    if value is None:
        return None
    if given is not None:
        return given
    return None if share is None else share <= 1


def missed(found: Sequence[Check]) -> list[Check]:
    return [check for check in found if check.met is False]

"""The report's inputs, read and validated at the edge: the features run, the stage benchmark, the load runs.

A missing or unreadable input is not an error here: it becomes a note the report prints, and `--strict`
turns into a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from reports.generator.cucumber import Feature, parse_cucumber

# The load profiles in the order the report lists them; others follow by name.
PROFILE_ORDER = ("steady", "burst", "spike", "soak")

T = TypeVar("T")


class _Input(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Stage(_Input):
    key: str
    name: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    reference: str | None = None
    goal: str | None = None
    met: bool | None = None
    note: str | None = None
    # The `timeout` stage may say which batch timeout it ran with (its delays are that timeout + lateness).
    timeout_ms: float | None = None
    # Each repeat's own p50 / p99, when the benchmark keeps them: the goal is judged across them (noise).
    runs_p50_ms: tuple[float, ...] = ()
    runs_p99_ms: tuple[float, ...] = ()


class Rate(_Input):
    key: str
    name: str
    value: float | None = None
    unit: str = ""
    reference: str | None = None
    goal: str | None = None
    met: bool | None = None
    note: str | None = None
    runs: tuple[float, ...] = ()  # each repeat's own value, when the benchmark keeps them


class BenchProcess(_Input):
    name: str
    instances: int | None = None
    rss_mb: float | None = None  # at rest, as the reference's PM2 table was read: the one the goal applies to
    rss_under_load_mb: float | None = None
    cpu_pct: float | None = None
    reference_rss_mb: float | None = None
    goal_rss_mb: float | None = None
    met: bool | None = None


class StageBench(_Input):
    """`out/bench-stages.json`, written by `aiadmin bench stages`."""

    generated_at: str | None = None
    host: dict[str, JsonValue] = {}
    repeats: int | None = None
    stages: tuple[Stage, ...]
    throughput: tuple[Rate, ...]
    processes: tuple[BenchProcess, ...]
    config: dict[str, JsonValue] = {}
    problems: tuple[str, ...] = ()
    benchmarks: dict[str, JsonValue] = {}  # the raw benchmarks, each section with its `runs` (one per repeat)


# Where `aiadmin bench stages` keeps each repeat of the figures that have goals: (benchmark, section) and the
# field(s) of each run. The figure itself is the median; the runs give the noise a goal is judged against.
STAGE_RUNS = {
    "api_accept": ("ingest", "accept_latency", "latency_ms_p50", "latency_ms_p99"),
    "timeout": ("ingest", "flush_lateness", "delay_ms_p50", "delay_ms_p99"),
}
RATE_RUNS = {
    "api": ("ingest", "throughput", "api_rps"),
    "api_vs_empty": ("ingest", "throughput", "ratio_pct"),
    "worker": ("worker", "llm_5s", "messages_per_s"),
}


def with_repeats(bench: StageBench) -> StageBench:
    """The benchmark with each goal-bearing figure's per-repeat values taken from its raw sections."""
    stages = []
    for stage in bench.stages:
        where = STAGE_RUNS.get(stage.key)
        if where and not stage.runs_p99_ms:
            runs = _section_runs(bench, where[0], where[1])
            stage = stage.model_copy(
                update={"runs_p50_ms": _field(runs, where[2]), "runs_p99_ms": _field(runs, where[3])}
            )
        stages.append(stage)
    rates = []
    for rate in bench.throughput:
        found = RATE_RUNS.get(rate.key)
        if found and not rate.runs:
            rate = rate.model_copy(update={"runs": _field(_section_runs(bench, found[0], found[1]), found[2])})
        rates.append(rate)
    return bench.model_copy(update={"stages": tuple(stages), "throughput": tuple(rates)})


def _section_runs(bench: StageBench, benchmark: str, section: str) -> list[JsonValue]:
    raw = bench.benchmarks.get(benchmark)
    sections = raw.get("sections") if isinstance(raw, dict) else None
    part = sections.get(section) if isinstance(sections, dict) else None
    runs = part.get("runs") if isinstance(part, dict) else None
    return runs if isinstance(runs, list) else []


def _field(runs: list[JsonValue], name: str) -> tuple[float, ...]:
    """`name` of every run, or nothing when a run lacks it (a partial series would fake the spread)."""
    values = [run.get(name) if isinstance(run, dict) else None for run in runs]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return ()
    return tuple(float(v) for v in values)  # type: ignore[arg-type]


class Percentiles(_Input):
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None
    count: int | None = None


class Requests(_Input):
    count: int
    failures: int
    rps: float | None = None


class Merge(_Input):
    turns_checked: int
    mismatched: int
    fragments_sent: int | None = None
    fragments_processed: int | None = None


class LoadProcess(_Input):
    name: str
    rss_mb: float | None = None
    cpu_pct: float | None = None
    rss_series_mb: tuple[tuple[float, float], ...] = ()  # (s since the run's start, RSS MB); older runs: none


class Windows(_Input):
    """The run's figures in equal sub-windows of its planned length (`loadtests._windows`): its measured noise."""

    count: int = 0
    window_s: float | None = None
    accept_p99_ms: tuple[float | None, ...] = ()
    e2e_p99_ms: tuple[float | None, ...] = ()
    queue_lag_p99_ms: tuple[float | None, ...] = ()
    lateness_p99_ms: tuple[float | None, ...] = ()
    rps: tuple[float | None, ...] = ()
    peak_conversations: tuple[int, ...] = ()


class RedisUse(_Input):
    """The run's Redis: memory at the start and the end, over time, and keys that would never expire."""

    used_memory_start_mb: float | None = None
    used_memory_end_mb: float | None = None
    used_memory_series_mb: tuple[tuple[float, float], ...] = ()
    keys: dict[str, JsonValue] = {}
    expiry: dict[str, JsonValue] | None = None  # after the run, once every key with a TTL expired (short retention)


class LoadRun(_Input):
    """`out/load/<profile>.json`, the summary of one Locust profile.

    The correctness counts have no defaults: a summary without them proves nothing and is refused.
    """

    profile: str
    started_at: str | None = None
    duration_s: float | None = None
    peak_users: int | None = None
    host: str | None = None
    format: str | None = None
    settings: dict[str, JsonValue] = {}
    requests: Requests
    accept_ms: Percentiles
    e2e_ms: Percentiles
    e2e_ms_samples: tuple[float, ...] = ()
    fragments_sent: int | None = None
    turns_sent: int
    turns_answered: int
    lost_turns: int
    double_replies: int
    replies: int | None = None
    merge: Merge
    flush_lateness_ms: Percentiles
    queue_lag_ms: Percentiles
    dead_letters: int
    errors: tuple[str, ...]
    processes: tuple[LoadProcess, ...] = ()
    # Newer summaries only; an older file without them still loads.
    windows: Windows | None = None
    profile_definition: dict[str, JsonValue] = {}  # `target_rps`: the rate the profile must sustain
    peak_conversations: int | None = None
    redis: RedisUse | None = None


@dataclass(frozen=True, slots=True)
class InputNote:
    """An input the report could not use: which one, where it was looked for, and why (in Russian)."""

    input: str
    path: Path
    problem: str


@dataclass(frozen=True, slots=True)
class InputPaths:
    cucumber: Path
    stages: Path
    load_dir: Path
    features_root: Path | None = None


@dataclass(frozen=True, slots=True)
class Inputs:
    paths: InputPaths
    features: tuple[Feature, ...] | None
    stages: StageBench | None
    load: tuple[LoadRun, ...]
    notes: tuple[InputNote, ...]


def load_inputs(paths: InputPaths) -> Inputs:
    notes: list[InputNote] = []
    features = _read("cucumber", paths.cucumber, notes, lambda b: parse_cucumber(b, features_root=paths.features_root))
    stages = _read("stages", paths.stages, notes, lambda b: with_repeats(StageBench.model_validate_json(b)))
    return Inputs(
        paths=paths, features=features, stages=stages, load=_load_runs(paths.load_dir, notes), notes=tuple(notes)
    )


def _load_runs(load_dir: Path, notes: list[InputNote]) -> tuple[LoadRun, ...]:
    files = sorted(load_dir.glob("*.json")) if load_dir.is_dir() else []
    if not files:
        problem = "нет файлов *.json" if load_dir.is_dir() else "каталог не найден"
        notes.append(InputNote("load", load_dir, problem))
        return ()
    runs: dict[str, LoadRun] = {}
    for path in files:
        run = _read("load", path, notes, LoadRun.model_validate_json)
        if run is None:
            continue
        if run.profile in runs:
            notes.append(InputNote("load", path, f"профиль {run.profile} повторяется; взят первый файл"))
            continue
        runs[run.profile] = run
    return tuple(sorted(runs.values(), key=lambda r: profile_rank(r.profile)))


def profile_rank(profile: str) -> tuple[int, str]:
    return (PROFILE_ORDER.index(profile) if profile in PROFILE_ORDER else len(PROFILE_ORDER), profile)


def _read(name: str, path: Path, notes: list[InputNote], parse: Callable[[bytes], T]) -> T | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        notes.append(InputNote(name, path, "файл не найден"))
        return None
    except OSError as exc:
        notes.append(InputNote(name, path, f"не читается: {exc.strerror or exc}"))
        return None
    try:
        return parse(data)
    except ValidationError as exc:
        notes.append(InputNote(name, path, f"не соответствует формату: {_validation_summary(exc)}"))
        return None


def _validation_summary(exc: ValidationError, *, limit: int = 3) -> str:
    errors = exc.errors(include_url=False)
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'документ'}: {e['msg']}" for e in errors[:limit])
    return shown + (f" (и ещё {len(errors) - limit})" if len(errors) > limit else "")

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

from reports.report_cucumber import Feature, parse_cucumber

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


class Rate(_Input):
    key: str
    name: str
    value: float | None = None
    unit: str = ""
    reference: str | None = None
    goal: str | None = None
    met: bool | None = None
    note: str | None = None


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
    stages = _read("stages", paths.stages, notes, StageBench.model_validate_json)
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

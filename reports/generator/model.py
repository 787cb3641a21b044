"""The figures of one monthly report, as saved to `reports/monthly/YYYY-MM-DD.json` and read back as "previous".

Everything the Markdown shows comes from here, so next month's report compares with exactly what this one
printed. `schema_version` changes when a field changes meaning; a report of another version is not compared.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from reports.generator.inputs import BenchProcess, Rate, Stage

SCHEMA_VERSION = 1
DATED = re.compile(r"^(\d{4}-\d{2}-\d{2})\.json$")

Severity = Literal["error", "goal", "input"]


class _Fig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class InputFig(_Fig):
    """One input: where it was read from, and why it could not be used (None when it was)."""

    input: str
    path: str
    problem: str | None = None


class ScenarioFig(_Fig):
    feature: str
    uri: str
    id: str
    title: str
    tags: list[str]
    status: Literal["passed", "failed", "skipped"]
    duration_s: float
    error: str | None = None


class ComponentFig(_Fig):
    name: str
    tags: list[str]
    tag: str | None
    passed: int
    failed: int
    skipped: int
    status: Literal["passed", "failed", "untested"]
    failed_scenarios: list[str]


class BenchFig(_Fig):
    """What the stage benchmark says about itself: when, where, how often, with which settings."""

    generated_at: str | None = None
    host: dict[str, JsonValue] = {}
    repeats: int | None = None
    config: dict[str, JsonValue] = {}
    problems: list[str] = []


class LoadProcessFig(_Fig):
    name: str
    rss_mb: float | None = None
    cpu_pct: float | None = None
    # RSS growth from the end of the warm-up (the first 5 minutes) to the end of the run; None for short runs.
    rss_after_warmup_mb: float | None = None
    rss_growth_pct: float | None = None


class LoadFig(_Fig):
    """One load profile's summary, without the raw samples (those only feed the histograms)."""

    profile: str
    started_at: str | None = None
    duration_s: float | None = None
    peak_users: int | None = None
    format: str | None = None
    settings: dict[str, JsonValue] = {}
    requests: int
    failures: int
    rps: float | None = None
    accept_p50_ms: float | None = None
    accept_p99_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p99_ms: float | None = None
    e2e_max_ms: float | None = None
    turns_sent: int
    turns_answered: int
    lost_turns: int
    double_replies: int
    merge_checked: int
    merge_mismatched: int
    fragments_sent: int | None = None
    fragments_processed: int | None = None
    lateness_p50_ms: float | None = None
    lateness_p99_ms: float | None = None
    lateness_max_ms: float | None = None
    queue_lag_p50_ms: float | None = None
    queue_lag_p99_ms: float | None = None
    dead_letters: int
    errors: list[str] = []
    processes: list[LoadProcessFig] = []
    peak_conversations: int | None = None
    target_rps: float | None = None  # the webhook rate the profile is defined to sustain: a goal
    # Each window's figure (the run cut into equal windows): a goal is judged beyond this noise. Empty when a
    # window was not measured (a partial series would fake the spread).
    runs_rps: tuple[float, ...] = ()
    runs_accept_p99_ms: tuple[float, ...] = ()
    runs_e2e_p99_ms: tuple[float, ...] = ()
    runs_lateness_p99_ms: tuple[float, ...] = ()
    runs_queue_lag_p99_ms: tuple[float, ...] = ()
    redis_start_mb: float | None = None
    redis_end_mb: float | None = None
    redis_keys_without_ttl: int | None = None
    redis_after_expiry_mb: float | None = None  # once every key with a TTL expired; None when the run did not wait
    redis_expiry_wait_s: float | None = None
    redis_keys_left_after_expiry: int | None = None

    @property
    def arrival_per_s(self) -> float | None:
        """Turns the clients sent per second, on average over the run."""
        return self.turns_sent / self.duration_s if self.duration_s else None


class ProblemFig(_Fig):
    """A finding; `key` is stable from month to month, `source` is the input that can confirm it is gone."""

    key: str
    source: str
    severity: Severity
    text: str


class AdviceFig(_Fig):
    audience: Literal["production", "development"]
    text: str


class ReportFigures(_Fig):
    schema_version: int = SCHEMA_VERSION
    date: str
    generated_at: str
    version: str
    previous: str | None = None
    inputs: list[InputFig]
    # The sources this run read (`cucumber`, `stages`, `load:<profile>`, `inputs`): only their problems can be
    # declared fixed.
    checked: list[str]
    scenarios: list[ScenarioFig] | None = None
    components: list[ComponentFig] | None = None
    bench: BenchFig | None = None
    stages: list[Stage] = []
    throughput: list[Rate] = []
    processes: list[BenchProcess] = []
    load: list[LoadFig] = []
    problems: list[ProblemFig] = []
    fixed: list[ProblemFig] = []
    unchecked: list[ProblemFig] = []
    recommendations: list[AdviceFig] = []
    verdict: Literal["ready", "goals_missed", "not_ready", "incomplete"] = "incomplete"
    images: list[str] = []

    def stage(self, key: str) -> Stage | None:
        return next((s for s in self.stages if s.key == key), None)

    def rate(self, key: str) -> Rate | None:
        return next((r for r in self.throughput if r.key == key), None)

    def process(self, name: str) -> BenchProcess | None:
        return next((p for p in self.processes if p.name == name), None)

    def load_run(self, profile: str) -> LoadFig | None:
        return next((run for run in self.load if run.profile == profile), None)


def find_previous(out_dir: Path, day: date) -> tuple[ReportFigures | None, list[str]]:
    """The newest readable report in `out_dir` dated before `day`, and a note for each one skipped."""
    dated = []
    for path in out_dir.glob("*.json") if out_dir.is_dir() else ():
        match = DATED.match(path.name)
        if match and match.group(1) < day.isoformat():
            dated.append(path)
    skipped: list[str] = []
    for path in sorted(dated, reverse=True):
        try:
            previous = ReportFigures.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            skipped.append(f"{path.name}: не читается ({type(exc).__name__})")
            continue
        if previous.schema_version != SCHEMA_VERSION:
            skipped.append(f"{path.name}: другая версия схемы ({previous.schema_version})")
            continue
        return previous, skipped
    return None, skipped

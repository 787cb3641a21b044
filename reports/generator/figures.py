"""The inputs of one run turned into the figures the report prints and saves (findings come later)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime

from reports.generator.cucumber import Component, Scenario, components
from reports.generator.inputs import Inputs, LoadProcess, LoadRun
from reports.generator.model import (
    BenchFig,
    ComponentFig,
    InputFig,
    LoadFig,
    LoadProcessFig,
    ReportFigures,
    ScenarioFig,
)

INPUTS = ("cucumber", "stages", "load")
WARMUP_S = 300.0  # RSS growth is judged after the first 5 minutes (imports, pools and caches filled by then)


def build_figures(inputs: Inputs, *, day: date, generated_at: datetime, version: str) -> ReportFigures:
    stages = inputs.stages
    checked = ["inputs"]
    if inputs.features is not None:
        checked.append("cucumber")
    if stages is not None:
        checked.append("stages")
    checked.extend(f"load:{run.profile}" for run in inputs.load)
    return ReportFigures(
        date=day.isoformat(),
        generated_at=generated_at.isoformat(timespec="seconds"),
        version=version,
        inputs=_inputs(inputs),
        checked=checked,
        scenarios=None if inputs.features is None else [_scenario(s) for f in inputs.features for s in f.scenarios],
        components=None if inputs.features is None else [_component(c) for c in components(inputs.features)],
        bench=None
        if stages is None
        else BenchFig(
            generated_at=stages.generated_at,
            host=stages.host,
            repeats=stages.repeats,
            config=stages.config,
            problems=list(stages.problems),
        ),
        stages=list(stages.stages) if stages else [],
        throughput=list(stages.throughput) if stages else [],
        processes=list(stages.processes) if stages else [],
        load=[load_figures(run) for run in inputs.load],
    )


def features_of(figures: ReportFigures) -> list[tuple[str, str, list[ScenarioFig]]]:
    """Scenarios grouped by feature (name, uri), in the order of the run."""
    groups: dict[tuple[str, str], list[ScenarioFig]] = {}
    for scenario in figures.scenarios or []:
        groups.setdefault((scenario.feature, scenario.uri), []).append(scenario)
    return [(name, uri, scenarios) for (name, uri), scenarios in groups.items()]


def peak_under_load(figures: ReportFigures, name: str) -> tuple[float, str] | None:
    """The highest RSS a process reached under load, and where: a load profile or the stage benchmark."""
    seen = [(p.rss_mb, run.profile) for run in figures.load for p in run.processes if p.name == name and p.rss_mb]
    bench = figures.process(name)
    if bench is not None and bench.rss_under_load_mb:
        seen.append((bench.rss_under_load_mb, "замер этапов"))
    return max(seen) if seen else None


def load_figures(run: LoadRun) -> LoadFig:
    return LoadFig(
        profile=run.profile,
        started_at=run.started_at,
        duration_s=run.duration_s,
        peak_users=run.peak_users,
        format=run.format,
        settings=run.settings,
        requests=run.requests.count,
        failures=run.requests.failures,
        rps=run.requests.rps,
        accept_p50_ms=run.accept_ms.p50,
        accept_p99_ms=run.accept_ms.p99,
        e2e_p50_ms=run.e2e_ms.p50,
        e2e_p99_ms=run.e2e_ms.p99,
        e2e_max_ms=run.e2e_ms.max,
        turns_sent=run.turns_sent,
        turns_answered=run.turns_answered,
        lost_turns=run.lost_turns,
        double_replies=run.double_replies,
        merge_checked=run.merge.turns_checked,
        merge_mismatched=run.merge.mismatched,
        fragments_sent=run.merge.fragments_sent if run.merge.fragments_sent is not None else run.fragments_sent,
        fragments_processed=run.merge.fragments_processed,
        lateness_p50_ms=run.flush_lateness_ms.p50,
        lateness_p99_ms=run.flush_lateness_ms.p99,
        lateness_max_ms=run.flush_lateness_ms.max,
        queue_lag_p50_ms=run.queue_lag_ms.p50,
        queue_lag_p99_ms=run.queue_lag_ms.p99,
        dead_letters=run.dead_letters,
        errors=list(run.errors),
        processes=[_load_process(p) for p in run.processes],
        peak_conversations=run.peak_conversations,
        target_rps=_number(run.profile_definition.get("target_rps")),
        runs_rps=_complete(w.rps) if (w := run.windows) else (),
        runs_accept_p99_ms=_complete(w.accept_p99_ms) if w else (),
        runs_e2e_p99_ms=_complete(w.e2e_p99_ms) if w else (),
        runs_lateness_p99_ms=_complete(w.lateness_p99_ms) if w else (),
        runs_queue_lag_p99_ms=_complete(w.queue_lag_p99_ms) if w else (),
        redis_start_mb=run.redis.used_memory_start_mb if run.redis else None,
        redis_end_mb=run.redis.used_memory_end_mb if run.redis else None,
        redis_keys_without_ttl=_int(run.redis.keys.get("without_ttl")) if run.redis else None,
        redis_after_expiry_mb=_number(expiry.get("used_memory_mb")) if (expiry := _expiry(run)) else None,
        redis_expiry_wait_s=_number(expiry.get("waited_s")) if expiry else None,
        redis_keys_left_after_expiry=_int(expiry.get("keys_with_ttl_left")) if expiry else None,
    )


def _expiry(run: LoadRun) -> Mapping[str, object] | None:
    return run.redis.expiry if run.redis is not None else None


def _complete(values: Sequence[float | None]) -> tuple[float, ...]:
    """Every window's value, or nothing when one is missing (a partial series would fake the spread)."""
    if len(values) < 2 or any(v is None for v in values):
        return ()
    return tuple(float(v) for v in values if v is not None)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _load_process(p: LoadProcess) -> LoadProcessFig:
    """The process's figures, with its RSS growth after the warm-up when its series outlasts it."""
    after = next((mb for at_s, mb in p.rss_series_mb if at_s >= WARMUP_S), None)
    last = p.rss_series_mb[-1] if p.rss_series_mb else None
    growth = None
    if after and last is not None and last[0] > WARMUP_S:
        growth = round(100 * (last[1] - after) / after, 1)
    return LoadProcessFig(
        name=p.name, rss_mb=p.rss_mb, cpu_pct=p.cpu_pct, rss_after_warmup_mb=after, rss_growth_pct=growth
    )


def _inputs(inputs: Inputs) -> list[InputFig]:
    paths = {"cucumber": inputs.paths.cucumber, "stages": inputs.paths.stages, "load": inputs.paths.load_dir}
    noted = {(note.input, note.path) for note in inputs.notes}
    rows = [InputFig(input=note.input, path=str(note.path), problem=note.problem) for note in inputs.notes]
    rows.extend(InputFig(input=name, path=str(path)) for name, path in paths.items() if (name, path) not in noted)
    return sorted(rows, key=lambda row: (INPUTS.index(row.input), row.path))


def _scenario(scenario: Scenario) -> ScenarioFig:
    return ScenarioFig(
        feature=scenario.feature,
        uri=scenario.uri,
        id=scenario.id,
        title=scenario.title,
        tags=sorted(scenario.tags),
        status=scenario.status,
        duration_s=round(scenario.duration_s, 4),
        error=scenario.error,
    )


def _component(component: Component) -> ComponentFig:
    return ComponentFig(
        name=component.name,
        tags=list(component.tags),
        tag=component.tag,
        passed=component.passed,
        failed=component.failed,
        skipped=component.skipped,
        status=component.status,
        failed_scenarios=list(component.failed_names),
    )

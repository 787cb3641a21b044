"""The inputs of one run turned into the figures the report prints and saves (findings come later)."""

from __future__ import annotations

from datetime import date, datetime

from reports.generator.cucumber import Component, Scenario, components
from reports.generator.inputs import Inputs, LoadRun
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
        processes=[LoadProcessFig(name=p.name, rss_mb=p.rss_mb, cpu_pct=p.cpu_pct) for p in run.processes],
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

"""Latency pictures for the report: PNGs drawn on matplotlib's Agg canvas (no pyplot, no global backend)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from reports.generator import reference as ref
from reports.generator.checks import e2e_goal, stage_timeout_ms
from reports.generator.inputs import LoadRun, Stage
from reports.generator.model import LoadFig, ReportFigures

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CHART_NAMES = ("e2e", "lateness", "stages", "rss")
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
GOAL_COLOR = "#C44E52"
DPI = 100


@dataclass(frozen=True, slots=True)
class Chart:
    name: str
    path: Path
    caption: str


class ChartsUnavailable(Exception):
    """matplotlib is not installed (it comes with the `report` extra)."""


def draw_charts(
    runs: Sequence[LoadRun], figures: ReportFigures, *, img_dir: Path, day: str
) -> tuple[list[Chart], str | None]:
    """Every chart the inputs allow, and why there are none when matplotlib is missing.

    Charts of this date that the inputs no longer allow are removed, so a re-run never links a stale picture.
    """
    try:
        drawn, reason = _draw_all(runs, figures, img_dir=img_dir, day=day), None
    except ChartsUnavailable as exc:
        drawn, reason = [], str(exc)
    kept = {chart.name for chart in drawn}
    for name in CHART_NAMES:
        stale = img_dir / f"{day}-{name}.png"
        if name not in kept and stale.exists():
            stale.unlink()
    return drawn, reason


def _draw_all(runs: Sequence[LoadRun], figures: ReportFigures, *, img_dir: Path, day: str) -> list[Chart]:
    with_samples = [run for run in runs if run.e2e_ms_samples]
    late = [run for run in figures.load if run.lateness_p99_ms is not None]
    config_timeout = figures.bench.config.get("batch_timeout_ms") if figures.bench else None
    reference_timeout = ref.CONFIG["batch_timeout_ms"][1]
    stages = [
        s
        for s in figures.stages
        if s.p99_ms is not None
        and s.key in ref.STAGES_MS
        and not ref.STAGES_MS[s.key].external
        # A timeout stage run with a shorter timeout than the reference's would compare two different waits.
        and (s.key != "timeout" or stage_timeout_ms(s, config_timeout) == reference_timeout)
    ]
    jobs: list[tuple[str, str, Callable[[Figure], None]]] = []
    if with_samples:
        goals = {run.profile: e2e_goal(run) for run in figures.load}
        jobs.append(
            ("e2e", "Задержка ответа клиенту (e2e) по профилям нагрузки", partial(_e2e, runs=with_samples, goals=goals))
        )
    if late:
        jobs.append(("lateness", "Опоздание сброса батча по профилям нагрузки", partial(_lateness, runs=late)))
    if stages:
        jobs.append(("stages", "Время наших этапов (p99) и эталона", partial(_stages, stages=stages)))
    with_series = [run for run in runs if any(len(p.rss_series_mb) > 1 for p in run.processes)]
    if with_series:
        caption = "Память процессов (RSS) и Redis по ходу нагрузочных прогонов"
        jobs.append(("rss", caption, partial(_rss, runs=with_series)))
    if not jobs:
        return []
    new_figure = _figure_factory()
    img_dir.mkdir(parents=True, exist_ok=True)
    charts = []
    for name, caption, draw in jobs:
        figure = new_figure()
        draw(figure)
        path = img_dir / f"{day}-{name}.png"
        figure.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
        charts.append(Chart(name=name, path=path, caption=caption))
    return charts


def _figure_factory() -> Callable[[], Figure]:
    """A new figure bound to the Agg canvas at birth: saving it never looks for an interactive backend."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ChartsUnavailable("matplotlib не установлен (`pip install -e '.[report]'`)") from exc

    def new() -> Figure:
        figure = Figure(figsize=(8, 3), dpi=DPI)
        FigureCanvasAgg(figure)
        return figure

    return new


def _e2e(figure: Figure, *, runs: Sequence[LoadRun], goals: dict[str, tuple[float, str] | None]) -> None:
    figure.set_figheight(1.9 * len(runs) + 0.6)
    axes = figure.subplots(len(runs), 1, squeeze=False)[:, 0]
    for index, (ax, run) in enumerate(zip(axes, runs, strict=True)):
        seconds = [value / 1000 for value in run.e2e_ms_samples]
        ax.hist(seconds, bins=40, color=COLORS[index % len(COLORS)], alpha=0.85)
        _mark(ax, run.e2e_ms.p50, "p50", "#333333", ":")
        _mark(ax, run.e2e_ms.p99, "p99", "#333333", "--")
        goal = goals.get(run.profile)
        if goal is not None:
            _mark(ax, goal[0], "цель", GOAL_COLOR, "-")
        total = run.e2e_ms.count if run.e2e_ms.count is not None else len(seconds)
        ax.set_title(f"{run.profile}: выборка {len(seconds)} из {total} ходов", fontsize=9, loc="left")
        ax.set_ylabel("ходов", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("секунды до ответа клиенту", fontsize=8)
    figure.subplots_adjust(hspace=0.7)


def _mark(ax: Axes, value_ms: float | None, label: str, color: str, style: str) -> None:
    if value_ms is not None:
        seconds = value_ms / 1000
        ax.axvline(seconds, color=color, linestyle=style, linewidth=1, label=f"{label} {seconds:.1f} с")


def _lateness(figure: Figure, *, runs: Sequence[LoadFig]) -> None:
    figure.set_figheight(3.2)
    ax = figure.subplots()
    width = 0.25
    series = (
        ("p50", [run.lateness_p50_ms for run in runs]),
        ("p99", [run.lateness_p99_ms for run in runs]),
        ("max", [run.lateness_max_ms for run in runs]),
    )
    for offset, (label, values) in enumerate(series):
        positions = [i + (offset - 1) * width for i in range(len(runs))]
        ax.bar(positions, [v or 0.0 for v in values], width, label=label, color=COLORS[offset])
    ax.axhline(ref.LATENESS_P99_GOAL_MS, color=GOAL_COLOR, linestyle="--", linewidth=1, label="цель для p99")
    shown = [v for _, values in series for v in values if v]
    if shown and max(shown) / max(min(shown), 0.01) > 50:
        ax.set_yscale("log")
    ax.set_xticks(range(len(runs)), [run.profile for run in runs], fontsize=8)
    ax.set_ylabel("мс после срока сброса", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)


def _stages(figure: Figure, *, stages: Sequence[Stage]) -> None:
    figure.set_figheight(0.45 * len(stages) + 1.2)
    ax = figure.subplots()
    positions = list(range(len(stages)))
    ours = [s.p99_ms or 0.0 for s in stages]
    reference = [ref.STAGES_MS[s.key].high or 0.0 for s in stages]
    ax.barh([p - 0.2 for p in positions], ours, 0.4, label="наш p99", color=COLORS[0])
    ax.barh([p + 0.2 for p in positions], reference, 0.4, label="эталон (верхняя оценка)", color=COLORS[1])
    ax.set_yticks(positions, [s.name for s in stages], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("мс (логарифмическая шкала)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)


def _rss(figure: Figure, *, runs: Sequence[LoadRun]) -> None:
    figure.set_figheight(2.4 * len(runs) + 0.6)
    axes = figure.subplots(len(runs), 1, squeeze=False)[:, 0]
    for ax, run in zip(axes, runs, strict=True):
        lines = [(p.name, p.rss_series_mb) for p in run.processes if len(p.rss_series_mb) > 1]
        if run.redis is not None and len(run.redis.used_memory_series_mb) > 1:
            lines.append(("redis (used_memory)", run.redis.used_memory_series_mb))
        for index, (name, series) in enumerate(lines):
            shown = [(t, mb) for t, mb in series if mb > 0]  # a process read before it had mapped anything
            ax.plot([t / 60 for t, _ in shown], [mb for _, mb in shown], label=name, color=COLORS[index % len(COLORS)])
        ax.set_title(f"{run.profile}", fontsize=9, loc="left")
        ax.set_ylabel("МБ", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="upper left", ncol=3)
    axes[-1].set_xlabel("минуты от начала прогона", fontsize=8)
    figure.subplots_adjust(hspace=0.6)

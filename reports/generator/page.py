"""What every section of the Markdown report is rendered from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reports.generator.charts import Chart
from reports.generator.checks import Check
from reports.generator.format import DASH, NO_DATA
from reports.generator.model import ReportFigures

SOURCE_NAMES = {
    "cucumber": "результаты сценариев",
    "stages": "замер этапов",
    "load": "нагрузочные прогоны",
}

MET = {True: "✅ да", False: "❌ нет", None: DASH}


@dataclass(frozen=True, slots=True)
class Page:
    figures: ReportFigures
    previous: ReportFigures | None
    checks: tuple[Check, ...]
    charts: tuple[Chart, ...]
    charts_note: str | None
    previous_notes: tuple[str, ...]
    out_dir: Path

    def check(self, key: str) -> Check | None:
        return next((c for c in self.checks if c.key == key), None)

    def image(self, name: str) -> list[str]:
        """The chart's Markdown image, linked relative to the report, or nothing when it was not drawn."""
        chart = next((c for c in self.charts if c.name == name), None)
        if chart is None:
            return []
        link = Path(os.path.relpath(chart.path, self.out_dir)).as_posix()
        return [f"![{chart.caption}]({link})", ""]

    def missing(self, source: str) -> str | None:
        """Why an input's figures are absent, or None when they are there."""
        figures = self.figures
        present = {
            "cucumber": figures.scenarios is not None,
            "stages": figures.bench is not None,
            "load": bool(figures.load),
        }
        if present[source]:
            return None
        reasons = "; ".join(f"`{r.path}`: {r.problem}" for r in figures.inputs if r.input == source and r.problem)
        return f"{NO_DATA} — {SOURCE_NAMES[source]}: {reasons or 'не получены'}"

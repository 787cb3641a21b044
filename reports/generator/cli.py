"""`aiadmin report` and `python -m reports`: the monthly test report, in Russian, from the outputs of the runs.

Reads the features run (cucumber JSON), the stage benchmark and the load runs; writes `YYYY-MM-DD.md`, the
figures it printed as `YYYY-MM-DD.json` (next month's "previous"), and latency histograms under `img/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer

from reports.generator.advice import advise
from reports.generator.charts import draw_charts
from reports.generator.checks import checks
from reports.generator.figures import build_figures
from reports.generator.findings import compare, problems, verdict
from reports.generator.inputs import InputNote, InputPaths, load_inputs
from reports.generator.markdown import render
from reports.generator.model import find_previous
from reports.generator.page import Page

DIST_NAME = "ai-admin"


@dataclass(frozen=True, slots=True)
class ReportOptions:
    cucumber: Path
    stages: Path
    load_dir: Path
    out_dir: Path
    day: date
    strict: bool = False
    # Where the cucumber JSON's feature paths resolve; None skips the check for scenarios skipped mid-way.
    features_root: Path | None = None


@dataclass(frozen=True, slots=True)
class Written:
    markdown: Path
    figures: Path
    images: tuple[Path, ...]
    notes: tuple[InputNote, ...]
    verdict: str
    problems: int
    severities: frozenset[str] = frozenset()  # of the problems: "error", "goal", "input"


class MissingInputs(Exception):
    """`--strict` and an input could not be used."""

    def __init__(self, notes: tuple[InputNote, ...]) -> None:
        super().__init__("; ".join(f"{n.path}: {n.problem}" for n in notes))
        self.notes = notes


def generate(options: ReportOptions, *, now: datetime, version: str) -> Written:
    """Read the inputs, derive the findings, write the Markdown, the JSON figures and the images."""
    paths = InputPaths(options.cucumber, options.stages, options.load_dir, options.features_root)
    inputs = load_inputs(paths)
    if options.strict and inputs.notes:
        raise MissingInputs(inputs.notes)
    day = options.day.isoformat()
    figures = build_figures(inputs, day=options.day, generated_at=now, version=version)
    previous, previous_notes = find_previous(options.out_dir, options.day)
    found = checks(figures)
    current = problems(figures, found)
    figures = figures.model_copy(update={"previous": previous.date if previous else None, "problems": current})
    fixed, unchecked = compare(current, figures, previous)
    figures = figures.model_copy(
        update={
            "fixed": fixed,
            "unchecked": unchecked,
            "verdict": verdict(current, figures),
            "recommendations": advise(figures, found, current),
        }
    )
    charts, charts_note = draw_charts(inputs.load, figures, img_dir=options.out_dir / "img", day=day)
    figures = figures.model_copy(
        update={"images": [Path(os.path.relpath(c.path, options.out_dir)).as_posix() for c in charts]}
    )
    page = Page(
        figures=figures,
        previous=previous,
        checks=tuple(found),
        charts=tuple(charts),
        charts_note=charts_note,
        previous_notes=tuple(previous_notes),
        out_dir=options.out_dir,
    )
    markdown_path = options.out_dir / f"{day}.md"
    figures_path = options.out_dir / f"{day}.json"
    _write(markdown_path, render(page))
    _write(figures_path, figures.model_dump_json(indent=2) + "\n")
    return Written(
        markdown=markdown_path,
        figures=figures_path,
        images=tuple(c.path for c in charts),
        notes=inputs.notes,
        verdict=figures.verdict,
        problems=len(current),
        severities=frozenset(p.severity for p in current),
    )


def _write(path: Path, text: str) -> None:
    """Replace the file whole, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def installed_version() -> str:
    try:
        return version(DIST_NAME)
    except PackageNotFoundError:
        return "неизвестна"


def report(
    cucumber: Annotated[Path, typer.Option(help="Cucumber JSON of the features run.")] = Path("out/cucumber.json"),
    stages: Annotated[Path, typer.Option(help="The stage benchmark (`aiadmin bench stages`).")] = Path(
        "out/bench-stages.json"
    ),
    load_dir: Annotated[Path, typer.Option("--load-dir", help="Load run summaries: every *.json in it.")] = Path(
        "out/load"
    ),
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where the report, its JSON and img/ go; earlier reports are read here.")
    ] = Path("reports/monthly"),
    day: Annotated[
        datetime | None, typer.Option("--date", formats=["%Y-%m-%d"], help="Report date, YYYY-MM-DD (default: today).")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="A missing or unreadable input is an error (exit 2).")
    ] = False,
    allow_missed: Annotated[
        bool,
        typer.Option("--allow-missed", help="Exit 0 when the only problems are figures over their goals."),
    ] = False,
    features_root: Annotated[
        Path, typer.Option("--features-root", help="Where the feature paths of the cucumber JSON resolve.")
    ] = Path("."),
) -> None:
    """Write the monthly test report (Markdown in Russian, JSON figures, latency histograms)."""
    now = datetime.now().astimezone()
    options = ReportOptions(
        cucumber=cucumber,
        stages=stages,
        load_dir=load_dir,
        out_dir=out_dir,
        day=day.date() if day else now.date(),
        strict=strict,
        features_root=features_root,
    )
    try:
        written = generate(options, now=now, version=installed_version())
    except MissingInputs as exc:
        for note in exc.notes:
            typer.echo(f"aiadmin report: {note.input}: {note.path}: {note.problem}", err=True)
        typer.echo("aiadmin report: --strict: no report written", err=True)
        raise typer.Exit(2) from exc
    for note in written.notes:
        typer.echo(f"aiadmin report: missing input, marked «нет данных»: {note.path}: {note.problem}", err=True)
    typer.echo(
        f"report written: {written.markdown} (figures {written.figures}, {len(written.images)} images); "
        f"verdict {written.verdict}, {written.problems} problems"
    )
    if fails(written, allow_missed=allow_missed):
        # The report is written either way; the exit code is what tells the chain (and the workflow) something failed.
        kinds = ", ".join(sorted(written.severities)) or "no data"
        typer.echo(
            f"aiadmin report: verdict {written.verdict} ({kinds}): exit 1; the problems are in the report", err=True
        )
        raise typer.Exit(1)


def fails(written: Written, *, allow_missed: bool = False) -> bool:
    """Anything short of `ready` fails the run; `allow_missed` forgives figures over their goals, and only those."""
    if written.verdict == "ready":
        return False
    return not (allow_missed and written.severities == frozenset({"goal"}))


app = typer.Typer(add_completion=False, help="The monthly test report.")
app.command(name="report")(report)

"""Figures of a benchmark: percentiles, medians over repeats, the table beside the reference, the JSON report."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from system.stats import percentile


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the final table."""

    stage: str
    ours: str
    reference: str
    goal: str
    met: bool | None = None  # None: no goal


def spread(samples: Sequence[float], name: str, *, scale: float) -> dict[str, float | None]:
    """p50, p99 and max of `samples` times `scale`, under keys named after the figure."""

    def at(q: float) -> float | None:
        value = percentile(samples, q)
        return None if value is None else value * scale

    return {f"{name}_p50": at(50), f"{name}_p99": at(99), f"{name}_max": at(100)}


def section(runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Every run's figures and their median over the runs."""
    median: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
        median[key] = statistics.median(values) if values else None
    return {"median": median, "runs": runs, **extra}


def failures(sections: dict[str, dict[str, Any]], checks: dict[str, tuple[str, ...]]) -> list[str]:
    """Every non-zero correctness figure of every run, named `section run N: key=value`."""
    found: list[str] = []
    for name, keys in checks.items():
        for run_index, run in enumerate(sections[name]["runs"]):
            found.extend(f"{name} run {run_index + 1}: {key}={run[key]}" for key in keys if run[key])
    return found


def machine(redis_version: object) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "redis": redis_version}


def pair(p50: float | None, p99: float | None, unit: str) -> str:
    fmt = "{:.2f}" if unit == "ms" else "{:.0f}"
    return f"{num(fmt, p50)} / {num(fmt, p99)} {unit} (p50 / p99)"


def num(fmt: str, value: float | None) -> str:
    return "n/a" if value is None else fmt.format(value)


def whole(value: float | None) -> str:
    return num("{:.0f}", value)


def le(value: float | None, bound: float) -> bool:
    return value is not None and value <= bound


def ge(value: float | None, bound: float) -> bool:
    return value is not None and value >= bound


def brief(median: dict[str, Any], name: str, *, unit: str = "ms") -> str:
    return pair(median[f"{name}_p50"], median[f"{name}_p99"], unit)


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


def render(console: Console, rows: list[Row], found: list[str], out: Path, *, title: str, all_clear: str) -> None:
    """The table; then the correctness problems, or `all_clear` when there are none."""
    table = Table(title=title)
    for column in ("stage", "ours", "reference", "goal", "met?"):
        table.add_column(column)
    for row in rows:
        met = "—" if row.met is None else ("[green]yes[/]" if row.met else "[red]no[/]")
        table.add_row(row.stage, row.ours, row.reference, row.goal, met)
    console.print(table)
    if found:
        console.print("[red]correctness problems:[/] " + "; ".join(found))
    else:
        console.print(all_clear)
    console.print(f"figures written to {out}")

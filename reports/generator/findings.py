"""What the figures say: the problems of this run, the ones of last month that are gone, and the verdict."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reports.generator.checks import Check, missed
from reports.generator.format import TURNS, count, counted, number
from reports.generator.model import LoadFig, ProblemFig, ReportFigures

INPUT_NAMES = {
    "cucumber": "результаты сценариев (cucumber JSON)",
    "stages": "замер этапов (bench stages)",
    "load": "нагрузочные прогоны (Locust)",
}
SEVERITY_ORDER = {"error": 0, "goal": 1, "input": 2}
# "из 1 запроса", "из 5 запросов": the genitive after "из".
REQUESTS_FORMS = ("запроса", "запросов", "запросов")


def problems(figures: ReportFigures, found: Sequence[Check]) -> list[ProblemFig]:
    """Failed scenarios, correctness counts, every figure over its goal and every missing input."""
    result = [
        ProblemFig(
            key=f"scenario:{s.uri}:{s.id}",
            source="cucumber",
            severity="error",
            text=f"Сценарий «{s.title}» ({s.feature}) не прошёл" + (f": `{s.error}`" if s.error else ""),
        )
        for s in figures.scenarios or []
        if s.status == "failed"
    ]
    if figures.bench is not None:
        result.extend(
            ProblemFig(key=f"bench:{text}", source="stages", severity="error", text=f"Замер этапов: {text}")
            for text in figures.bench.problems
        )
    result.extend(
        ProblemFig(
            key=f"stage:{stage.key}:unmeasured",
            source="stages",
            severity="input",
            text=f"Этап «{stage.name}» не измерен",
        )
        for stage in figures.stages
        if stage.p50_ms is None and stage.p99_ms is None
    )
    for run in figures.load:
        result.extend(load_problems(run))
    result.extend(
        ProblemFig(
            key=check.key,
            source=check.source,
            severity="goal",
            text=f"{check.label}: {check.shown} при цели {check.goal}",
        )
        for check in missed(found)
    )
    result.extend(
        ProblemFig(
            key=f"input:{row.input}:{Path(row.path).name}",
            source="inputs",
            severity="input",
            text=f"Нет данных: {INPUT_NAMES.get(row.input, row.input)} — `{row.path}`: {row.problem}",
        )
        for row in figures.inputs
        if row.problem
    )
    if figures.scenarios == []:
        result.append(
            ProblemFig(
                key="input:cucumber:empty",
                source="cucumber",
                severity="input",
                text="Нет данных: в результатах сценариев нет ни одного сценария",
            )
        )
    return sorted(result, key=lambda p: SEVERITY_ORDER[p.severity])


def load_problems(run: LoadFig) -> list[ProblemFig]:
    """The counts of a load run that must be zero."""
    p = run.profile
    found: list[tuple[str, str]] = []
    if run.failures:
        share = run.failures / run.requests * 100 if run.requests else 0.0
        of = counted(run.requests, REQUESTS_FORMS)
        found.append(("failures", f"{count(run.failures)} из {of} ({number(share)}%) завершились ошибкой"))
    if run.errors:
        shown = "; ".join(run.errors[:3]) + (f" (и ещё {len(run.errors) - 3})" if len(run.errors) > 3 else "")
        found.append(("errors", f"ошибки: {shown}"))
    if run.lost_turns:
        found.append(("lost_turns", f"потеряно {counted(run.lost_turns, TURNS)} из {count(run.turns_sent)}"))
    unanswered = run.turns_sent - run.turns_answered
    if unanswered > run.lost_turns:
        found.append(("unanswered", f"без ответа {counted(unanswered, TURNS)} из {count(run.turns_sent)}"))
    if run.double_replies:
        found.append(("double_replies", f"двойных ответов: {count(run.double_replies)}"))
    if run.merge_mismatched:
        found.append(
            ("merge", f"склейка не совпала в {count(run.merge_mismatched)} из {count(run.merge_checked)} ходов")
        )
    sent, processed = run.fragments_sent, run.fragments_processed
    if sent is not None and processed is not None and processed < sent:
        found.append(("fragments", f"обработано {count(processed)} из {count(sent)} фрагментов"))
    if run.dead_letters:
        found.append(("dead_letters", f"мёртвых писем: {count(run.dead_letters)}"))
    return [
        ProblemFig(key=f"load:{p}:{key}", source=f"load:{p}", severity="error", text=f"Нагрузка {p}: {text}")
        for key, text in found
    ]


def compare(
    current: Sequence[ProblemFig], figures: ReportFigures, previous: ReportFigures | None
) -> tuple[list[ProblemFig], list[ProblemFig]]:
    """Last month's problems that are gone (their source was checked again) and those not checked this time."""
    if previous is None:
        return [], []
    keys = {p.key for p in current}
    gone = [p for p in previous.problems if p.key not in keys]
    fixed = [p for p in gone if p.source in figures.checked]
    unchecked = [p for p in gone if p.source not in figures.checked]
    return fixed, unchecked


def verdict(found: Sequence[ProblemFig], figures: ReportFigures) -> str:
    severities = {p.severity for p in found}
    if "error" in severities:
        return "not_ready"
    if "goal" in severities:
        return "goals_missed"
    if "input" in severities or not (figures.scenarios or figures.stages or figures.load):
        return "incomplete"
    return "ready"

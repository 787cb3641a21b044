"""Recommendations, each a rule over this run's figures: a rule that finds nothing says nothing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from reports.generator import reference as ref
from reports.generator.checks import Check, missed
from reports.generator.figures import peak_under_load
from reports.generator.format import SCENARIOS, count, counted, number
from reports.generator.model import AdviceFig, LoadFig, ProblemFig, ReportFigures

HIGH_CPU_PCT = 80.0

API_KEYS = ("stage:api_accept", "throughput:api", "throughput:api_vs_empty")
CAPACITY_KEYS = ("throughput:worker",)
LATENESS_KEYS = ("stage:timeout", "throughput:batcher")
# What to look at first when a figure without a rule of its own misses its goal.
HINTS = {
    "stage:add_to_batch": "проверить задержку Redis (`redis-cli --latency`) и что добавление остаётся одним скриптом",
    "stage:batch_processing": "проверить задержку Redis (`redis-cli --latency`) и размер забираемых пачек",
    "stage:queue_handover": "проверить длину потоков очереди и задержку Redis",
    "stage:ai_processing": "проверить модель, длину подсказки и число вызовов инструментов за ход",
    "stage:sending": "проверить пул HTTP-соединений к WhatsApp и ответы о лимите (130429)",
}
MISSING_INPUT_COMMANDS = {
    "cucumber": "`pytest features --cucumberjson=out/cucumber.json`",
    "stages": "`aiadmin bench stages` (пишет out/bench-stages.json)",
    "load": "профили Locust из `loadtests/` (сводки в out/load/<профиль>.json)",
}

Rule = Callable[[ReportFigures, Sequence[Check], Sequence[ProblemFig]], list[AdviceFig]]


def advise(figures: ReportFigures, found: Sequence[Check], problems: Sequence[ProblemFig]) -> list[AdviceFig]:
    rules: tuple[Rule, ...] = (
        _failed_scenarios,
        _lost_work,
        _load_errors,
        _bench_problems,
        _capacity,
        _lateness,
        _memory,
        _api,
        _other_goals,
        _dead_letters,
        _skipped_scenarios,
        _missing_inputs,
        _watch,
    )
    return [advice for rule in rules for advice in rule(figures, found, problems)]


def _failed_scenarios(figures: ReportFigures, _: Sequence[Check], __: Sequence[ProblemFig]) -> list[AdviceFig]:
    failed = [s for s in figures.scenarios or [] if s.status == "failed"]
    if not failed:
        return []
    names = ", ".join(f"«{s.title}»" for s in failed)
    tests = " or ".join(dict.fromkeys(s.id.split("[", 1)[0] for s in failed))
    return [
        _dev(
            f"**Сценарии**: исправить {counted(len(failed), SCENARIOS)} с ошибкой до выпуска: {names}. "
            f'Повторить только их: `pytest features -k "{tests}"`.'
        )
    ]


def _lost_work(figures: ReportFigures, _: Sequence[Check], problems: Sequence[ProblemFig]) -> list[AdviceFig]:
    kinds = ("lost_turns", "unanswered", "double_replies", "merge", "fragments")
    advice = []
    for run in figures.load:
        found = [p.text.split(": ", 1)[1] for p in problems if p.key in {f"load:{run.profile}:{k}" for k in kinds}]
        if found:
            advice.append(
                _dev(
                    f"**Потери и повторы** (профиль {run.profile}: {'; '.join(found)}) блокируют выпуск: повторить "
                    "профиль, сверить batch id этих ходов в логах API, batch processor и воркера, проверить "
                    "`aiadmin dlq list`."
                )
            )
    return advice


def _load_errors(figures: ReportFigures, _: Sequence[Check], __: Sequence[ProblemFig]) -> list[AdviceFig]:
    advice = []
    for run in figures.load:
        facts = []
        if run.failures:
            facts.append(f"{count(run.failures)} из {count(run.requests)} запросов не прошли")
        facts.extend(run.errors[:3])
        if facts:
            advice.append(_dev(f"**Ошибки нагрузки** (профиль {run.profile}): разобрать — {'; '.join(facts)}."))
    return advice


def _bench_problems(figures: ReportFigures, _: Sequence[Check], __: Sequence[ProblemFig]) -> list[AdviceFig]:
    if figures.bench is None or not figures.bench.problems:
        return []
    shown = "; ".join(figures.bench.problems)
    return [_dev(f"**Замер этапов** отметил проблемы ({shown}): пока они есть, его цифры под сомнением.")]


def _capacity(figures: ReportFigures, found: Sequence[Check], _: Sequence[ProblemFig]) -> list[AdviceFig]:
    """Turns arrive faster than the worker answers them, or wait in the queue past the goal."""
    worker = figures.rate("worker")
    evidence = []
    busiest = max(
        (run for run in figures.load if run.arrival_per_s is not None),
        key=lambda run: run.arrival_per_s or 0.0,
        default=None,
    )
    need = None
    if worker and worker.value and busiest and busiest.arrival_per_s and busiest.arrival_per_s > worker.value:
        evidence.append(
            f"в профиле {busiest.profile} клиенты присылали в среднем {number(busiest.arrival_per_s)} ходов/с, "
            f"а воркер в замере этапов обрабатывает {number(worker.value)} сообщений/с"
            + (f" ({worker.note})" if worker.note else "")
        )
        concurrency = _int_setting(figures, "worker_concurrency")
        if concurrency:
            need = (concurrency, math.ceil(concurrency * busiest.arrival_per_s / worker.value))
    evidence.extend(_evidence(c for c in missed(found) if c.key.endswith(":queue_lag_p99") or c.key in CAPACITY_KEYS))
    if not evidence:
        return []
    target = f" (сейчас {need[0]}; для такого потока нужно не меньше {need[1]})" if need else ""
    return [
        _prod(
            f"**Параллельность воркера**: {'; '.join(evidence)}. Поднять `AIADMIN_WORKER_CONCURRENCY`{target} "
            "или запустить ещё процессы `aiadmin worker` — они делят одну очередь."
        )
    ]


def _lateness(figures: ReportFigures, found: Sequence[Check], _: Sequence[ProblemFig]) -> list[AdviceFig]:
    late = [c for c in missed(found) if c.key.endswith(":lateness_p99") or c.key in LATENESS_KEYS]
    if not late:
        return []
    cpus = figures.bench.host.get("cpus") if figures.bench else None
    runs = [run for c in late if (run := figures.load_run(c.source.removeprefix("load:"))) is not None]
    batcher = _max_cpu(runs, "batcher") or _bench_cpu(figures, "batcher")
    total = max((sum(p.cpu_pct or 0.0 for p in run.processes) for run in runs), default=None)
    if batcher is not None and batcher >= HIGH_CPU_PCT:
        step = (
            f"batch processor занимал {number(batcher)}% CPU — упирается в ядро: запустить второй `aiadmin batcher` "
            "(процессы делят батчи без повторов)"
        )
    elif isinstance(cpus, int) and total is not None and total >= HIGH_CPU_PCT * cpus:
        own = f"batch processor занимал {number(batcher)}% CPU, но " if batcher is not None else ""
        step = (
            f"{own}процессы системы вместе заняли {number(total)}% CPU при {cpus} ядрах — машине не хватает CPU: "
            "разнести API и batch processor по разным ядрам или машинам"
        )
    else:
        shown = f" ({number(batcher)}% CPU)" if batcher is not None else ""
        step = f"batch processor не упирается в CPU{shown}: проверить задержку Redis (`redis-cli --latency`)"
    evidence = "; ".join(_evidence(late))
    return [_prod(f"**Опоздание сброса батчей** ({evidence}): проверить загрузку CPU batch processor — {step}.")]


def _memory(figures: ReportFigures, found: Sequence[Check], _: Sequence[ProblemFig]) -> list[AdviceFig]:
    advice = []
    for check in missed(found):
        if not check.key.startswith("process:"):
            continue
        name = check.key.removeprefix("process:")
        role = ref.process_role(name)
        reference = f", у эталона {number(ref.RSS_MB[role])} МБ" if role is not None and role in ref.RSS_MB else ""
        peak = peak_under_load(figures, name)
        loaded = f"; под нагрузкой до {number(peak[0])} МБ ({peak[1]})" if peak else ""
        advice.append(
            _prod(
                f"**Память `{name}`**: {check.shown} в покое при цели {check.goal}{reference}{loaded}. "
                "Проверить, что процесс импортирует только свой стек (`python -X importtime`), и границы кэшей."
            )
        )
    return advice


def _api(figures: ReportFigures, found: Sequence[Check], _: Sequence[ProblemFig]) -> list[AdviceFig]:
    over = [c for c in missed(found) if c.key in API_KEYS or c.key.endswith(":accept_p99")]
    if not over:
        return []
    cpu = _bench_cpu(figures, "api")
    scale = (
        f" API занимал {number(cpu)}% CPU ядра: под такой нагрузкой запускать несколько `aiadmin api` "
        "за балансировщиком."
        if cpu is not None and cpu >= HIGH_CPU_PCT
        else ""
    )
    return [
        _dev(
            f"**Приём в API** ({'; '.join(_evidence(over))}): профилировать обработчик webhook под нагрузкой "
            f"(`py-spy record -- aiadmin api`) и сравнить с пустым endpoint того же стека.{scale}"
        )
    ]


def _other_goals(figures: ReportFigures, found: Sequence[Check], _: Sequence[ProblemFig]) -> list[AdviceFig]:
    handled = (*API_KEYS, *CAPACITY_KEYS, *LATENESS_KEYS)
    suffixes = (":queue_lag_p99", ":lateness_p99", ":accept_p99")
    advice = []
    for check in missed(found):
        if check.key in handled or check.key.endswith(suffixes) or check.key.startswith("process:"):
            continue
        if check.key.endswith(":e2e_p99"):
            run = figures.load_run(check.source.removeprefix("load:"))
            hint = _e2e_parts(run) if run else ""
        else:
            hint = HINTS.get(check.key, "разобрать, какой этап дал прирост")
        advice.append(_dev(f"**{check.label}**: {check.shown} при цели {check.goal} — {hint}."))
    return advice


def _dead_letters(figures: ReportFigures, _: Sequence[Check], __: Sequence[ProblemFig]) -> list[AdviceFig]:
    runs = [run for run in figures.load if run.dead_letters]
    if not runs:
        return []
    where = ", ".join(f"{run.profile}: {count(run.dead_letters)}" for run in runs)
    return [
        _prod(
            f"**Мёртвые письма** ({where}): посмотреть причины (`aiadmin dlq list`), устранить их и вернуть задачи "
            "в очередь (`aiadmin dlq replay --all`)."
        )
    ]


def _skipped_scenarios(figures: ReportFigures, _: Sequence[Check], __: Sequence[ProblemFig]) -> list[AdviceFig]:
    skipped = [s for s in figures.scenarios or [] if s.status == "skipped"]
    if not skipped:
        return []
    names = ", ".join(f"«{s.title}»" for s in skipped)
    realtime = (
        " Сценарии @realtime идут на настоящих часах и Redis: `pytest features -m realtime --redis-url redis://127.0.0.1:6379/12`."
        if any("realtime" in s.tags for s in skipped)
        else ""
    )
    return [_dev(f"**Пропущенные сценарии** ({count(len(skipped))}): {names} — выполнить их отдельно.{realtime}")]


def _missing_inputs(figures: ReportFigures, _: Sequence[Check], __: Sequence[ProblemFig]) -> list[AdviceFig]:
    steps = []
    for row in figures.inputs:
        if row.problem:
            command = MISSING_INPUT_COMMANDS.get(row.input, "")
            steps.append(f"`{row.path}` ({row.problem}){' — ' + command if command else ''}")
    if not steps:
        return []
    return [_dev(f"**Недостающие данные**: собрать до выводов — {'; '.join(steps)}.")]


def _watch(figures: ReportFigures, found: Sequence[Check], _: Sequence[ProblemFig]) -> list[AdviceFig]:
    """Nothing over its goal: name the figures with the least room left."""
    if missed(found):
        return []
    closest = sorted((c for c in found if c.used is not None and c.met), key=lambda c: c.used or 0.0, reverse=True)
    if not closest:
        return []
    shown = "; ".join(
        f"{c.label} — {c.shown} при цели {c.goal} (запас {number(max(0.0, 1 - (c.used or 0.0)) * 100, digits=0)}%)"
        for c in closest[:3]
    )
    return [_prod(f"**Наблюдать**: все показатели в пределах целей; меньше всего запаса у: {shown}.")]


def _evidence(checks: Iterable[Check]) -> list[str]:
    return [f"{c.label}: {c.shown} при цели {c.goal}" for c in checks]


def _e2e_parts(run: LoadFig) -> str:
    return (
        "ответ складывается из таймаута батча, опоздания сброса "
        f"(p99 {number(run.lateness_p99_ms)} мс), ожидания в очереди (p99 {number(run.queue_lag_p99_ms)} мс) "
        "и ответа LLM: уменьшать ту часть, что выросла"
    )


def _int_setting(figures: ReportFigures, key: str) -> int | None:
    """A whole-number setting as the stage benchmark recorded it, else as a load run did."""
    recorded = [figures.bench.config] if figures.bench else []
    recorded += [run.settings for run in figures.load]
    return next((v for r in recorded if isinstance(v := r.get(key), int) and not isinstance(v, bool)), None)


def _max_cpu(runs: Sequence[LoadFig], role: str) -> float | None:
    values = [
        p.cpu_pct for run in runs for p in run.processes if ref.process_role(p.name) == role and p.cpu_pct is not None
    ]
    return max(values, default=None)


def _bench_cpu(figures: ReportFigures, role: str) -> float | None:
    values = [p.cpu_pct for p in figures.processes if ref.process_role(p.name) == role and p.cpu_pct is not None]
    return max(values, default=None)


def _dev(text: str) -> AdviceFig:
    return AdviceFig(audience="development", text=text)


def _prod(text: str) -> AdviceFig:
    return AdviceFig(audience="production", text=text)

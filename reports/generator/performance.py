"""Sections of the report about figures: performance, the configuration measured, the processes."""

from __future__ import annotations

from pydantic import JsonValue

from reports.generator import reference as ref
from reports.generator.figures import peak_under_load
from reports.generator.format import DASH, NO_DATA, count, ms, number, pair_ms, ru_units, table, with_unit
from reports.generator.inputs import Rate, Stage
from reports.generator.load_spread import memory_lines, windows_lines
from reports.generator.model import LoadFig
from reports.generator.page import MET, Page


def performance(page: Page) -> list[str]:
    return [*_stages(page), *_throughput(page), *_load(page)]


def _stages(page: Page) -> list[str]:
    lines = ["### Временные метрики", ""]
    bench = page.figures.bench
    if bench is None:
        return [*lines, page.missing("stages") or NO_DATA, ""]
    if bench.generated_at:
        lines += [
            f"Замер этапов (`aiadmin bench stages`) от {bench.generated_at}, повторов: {bench.repeats or DASH}.",
            "",
        ]
    rows = [_stage_row(page, stage) for stage in page.figures.stages]
    if not rows:
        return [*lines, f"{NO_DATA} — замер этапов не записал ни одного этапа.", ""]
    header = ("Этап", "Наш p50 / p99", "Прошлый отчёт", "Эталон", "Цель", "Выполнено", "Примечание")
    return [*lines, *table(header, rows), "", *page.image("stages")]


def _stage_row(page: Page, stage: Stage) -> tuple[str, ...]:
    previous = page.previous.stage(stage.key) if page.previous else None
    reference = ref.STAGES_MS.get(stage.key)
    ours = pair_ms(stage.p50_ms, stage.p99_ms)
    before = pair_ms(previous.p50_ms, previous.p99_ms) if previous else DASH
    reference_text = reference.text if reference else stage.reference
    return _row(page, f"stage:{stage.key}", stage.name, ours, before, reference_text, stage.goal, stage.note)


def _rate_row(page: Page, rate: Rate) -> tuple[str, ...]:
    previous = page.previous.rate(rate.key) if page.previous else None
    reference = ref.THROUGHPUT.get(rate.key)
    ours = with_unit(rate.value, rate.unit)
    before = with_unit(previous.value, previous.unit) if previous else DASH
    reference_text = reference.text if reference else rate.reference
    return _row(page, f"throughput:{rate.key}", rate.name, ours, before, reference_text, rate.goal, rate.note)


def _row(
    page: Page,
    check_key: str,
    name: str,
    ours: str,
    previous: str,
    reference: str | None,
    goal: str | None,
    note: str | None,
) -> tuple[str, ...]:
    """One line of a figures table: ours, the previous report's, the reference's, the goal and whether it was met."""
    check = page.check(check_key)
    return (
        name,
        ours,
        previous,
        reference or DASH,
        ru_units(goal) if goal else DASH,
        MET[check.met if check else None],
        note or "",
    )


def _throughput(page: Page) -> list[str]:
    lines = ["### Пропускная способность", ""]
    if page.figures.bench is None:
        return [*lines, page.missing("stages") or NO_DATA, ""]
    rows = [_rate_row(page, rate) for rate in page.figures.throughput]
    if not rows:
        return [*lines, f"{NO_DATA} — замер этапов не записал пропускную способность.", ""]
    header = ("Компонент", "Значение", "Прошлый отчёт", "Эталон", "Цель", "Выполнено", "Примечание")
    return [*lines, *table(header, rows), ""]


def _load(page: Page) -> list[str]:
    lines = ["### Нагрузочные прогоны", ""]
    runs = page.figures.load
    if not runs:
        return [*lines, page.missing("load") or NO_DATA, ""]
    header = (
        "Профиль",
        "Пользователи",
        "Запросов/с",
        "Приём p99",
        "e2e p50 / p99",
        "Ходы: отвечено / отправлено",
        "Потеряно",
        "Двойные ответы",
        "Склейка не совпала",
        "Опоздание сброса p99",
        "Очередь p99",
        "Прошлый отчёт: запросов/с; e2e p99",
    )
    lines += table(header, (_load_row(page, run) for run in runs))
    lines += [
        "",
        f"Цели под нагрузкой: приём p99 ≤ {number(ref.ACCEPT_P99_GOAL_MS)} мс (не медленнее эталона), "
        f"опоздание сброса p99 ≤ {number(ref.LATENESS_P99_GOAL_MS)} мс (граница сценария @realtime), "
        f"ожидание в очереди p99 ≤ {number(ref.QUEUE_LAG_P99_GOAL_MS)} мс, e2e p99 ≤ таймаут батча + "
        f"{ref.MODEL_CALLS_PER_TURN} вызова LLM с самой долгой задержкой (у сценарной заглушки LLM — "
        f"{ref.SCRIPTED_CALLS_PER_TURN}) + "
        f"{number(ref.SENDING_ALLOWANCE_MS / 1000)} с; потерь, двойных ответов и расхождений "
        "склейки — 0. "
        "⚠️ — вне цели, ❌ — ошибка.",
        "",
    ]
    details = (
        (
            run.profile,
            run.started_at or DASH,
            f"{number(run.duration_s)} с" if run.duration_s is not None else NO_DATA,
            f"{count(run.requests)} ({count(run.failures)} с ошибкой)",
            f"{number(run.arrival_per_s)} ходов/с" if run.arrival_per_s is not None else NO_DATA,
            count(run.dead_letters),
            run.format or DASH,
        )
        for run in runs
    )
    columns = ("Профиль", "Начат", "Длительность", "Запросов", "Поток ходов", "Мёртвые письма", "Формат")
    return [
        *lines,
        *table(columns, details),
        "",
        *windows_lines(page),
        *memory_lines(page),
        *page.image("e2e"),
        *page.image("lateness"),
    ]


def _load_row(page: Page, run: LoadFig) -> tuple[str, ...]:
    def flagged(text: str, key: str) -> str:
        check = page.check(f"load:{run.profile}:{key}")
        return f"{text} ⚠️" if check is not None and check.met is False else text

    def bad(value: int, text: str | None = None) -> str:
        shown = text or count(value)
        return f"{shown} ❌" if value else shown

    previous = page.previous.load_run(run.profile) if page.previous else None
    return (
        run.profile,
        count(run.peak_users),
        number(run.rps),
        flagged(ms(run.accept_p99_ms), "accept_p99"),
        flagged(_seconds_pair(run.e2e_p50_ms, run.e2e_p99_ms), "e2e_p99"),
        bad(run.turns_sent - run.turns_answered, f"{count(run.turns_answered)} / {count(run.turns_sent)}"),
        bad(run.lost_turns),
        bad(run.double_replies),
        bad(run.merge_mismatched, f"{count(run.merge_mismatched)} из {count(run.merge_checked)}"),
        flagged(ms(run.lateness_p99_ms), "lateness_p99"),
        flagged(ms(run.queue_lag_p99_ms), "queue_lag_p99"),
        f"{number(previous.rps)}; {_seconds(previous.e2e_p99_ms)}" if previous else DASH,
    )


def _seconds(value_ms: float | None) -> str:
    return NO_DATA if value_ms is None else f"{number(value_ms / 1000)} с"


def _seconds_pair(p50_ms: float | None, p99_ms: float | None) -> str:
    if p50_ms is None and p99_ms is None:
        return NO_DATA
    return f"{NO_DATA if p50_ms is None else number(p50_ms / 1000)} / {_seconds(p99_ms)}"


def configuration(page: Page) -> list[str]:
    bench, runs = page.figures.bench, page.figures.load
    if bench is None and not runs:
        return [page.missing("stages") or NO_DATA, ""]
    lines = ["### Батчинг", ""]
    rows = []
    for key, (name, value, unit_name) in ref.CONFIG.items():
        ours, source = _setting(page, key)
        rows.append((f"`{key}`", _json_text(ours), source, f"{name}: {value} {unit_name}"))
    lines += [*table(("Параметр", "Значение", "Источник", "Эталон"), rows), ""]
    if bench is not None:
        other = [(f"`{k}`", _json_text(v)) for k, v in bench.config.items() if k not in ref.CONFIG]
        if other:
            lines += ["### Прочие настройки замера этапов", "", *table(("Параметр", "Значение"), other), ""]
        host = ", ".join(f"{k}: {_json_text(v)}" for k, v in bench.host.items())
        lines += [f"Стенд замера этапов: {host or NO_DATA}.", ""]
    if runs:
        keys = list(dict.fromkeys(k for run in runs for k in run.settings))
        settings = [(run.profile, run.format or DASH, *(_json_text(run.settings.get(k)) for k in keys)) for run in runs]
        lines += ["### Настройки нагрузочных прогонов", "", *table(("Профиль", "Формат", *keys), settings), ""]
    conflicts = _conflicts(page)
    if conflicts:
        lines += ["⚠️ **Расхождения настроек между входами:**", *(f"- {text}" for text in conflicts), ""]
    return lines


def _setting(page: Page, key: str) -> tuple[JsonValue, str]:
    bench = page.figures.bench
    if bench is not None and key in bench.config:
        return bench.config[key], "замер этапов"
    values = {str(run.settings[key]) for run in page.figures.load if key in run.settings}
    if len(values) == 1:
        return next(run.settings[key] for run in page.figures.load if key in run.settings), "нагрузка"
    return None, DASH


def _conflicts(page: Page) -> list[str]:
    bench = page.figures.bench
    if bench is None:
        return []
    return [
        f"`{key}`: замер этапов {_json_text(bench.config[key])}, нагрузка {run.profile} {_json_text(value)}"
        for run in page.figures.load
        for key, value in run.settings.items()
        if key in bench.config and bench.config[key] != value
    ]


def _json_text(value: JsonValue) -> str:
    if value is None:
        return NO_DATA
    if isinstance(value, bool):
        return "да" if value else "нет"
    if isinstance(value, int | float):
        return number(value) if isinstance(value, float) else str(value)
    return str(value)


def processes(page: Page) -> list[str]:
    bench = page.figures.processes
    names = list(dict.fromkeys([p.name for p in bench] + [p.name for run in page.figures.load for p in run.processes]))
    if not names:
        return [page.missing("stages") or "нет данных — входы не записали процессы", ""]
    rows = []
    for name in names:
        measured = page.figures.process(name)
        previous = page.previous.process(name) if page.previous else None
        role = ref.process_role(name)
        reference = ref.RSS_MB.get(role) if role else None
        if reference is None and measured is not None:
            reference = measured.reference_rss_mb
        goal = measured.goal_rss_mb if measured and measured.goal_rss_mb else ref.GOAL_RSS_MB
        check = page.check(f"process:{name}")
        rows.append(
            (
                f"`{name}`",
                count(measured.instances) if measured else NO_DATA,
                number(measured.rss_mb) if measured else NO_DATA,
                number(measured.cpu_pct) if measured else NO_DATA,
                number(previous.rss_mb) if previous else DASH,
                f"{number(reference)} ({ref.PROCESS_NAMES[role]})" if reference is not None and role else DASH,
                f"≤ {number(goal)} МБ",
                MET[check.met if check else None],
                _under_load(page, name),
            )
        )
    header = (
        "Процесс",
        "Экземпляры",
        "Память, МБ",
        "CPU, %",
        "Прошлый отчёт, МБ",
        "Эталон, МБ",
        "Цель",
        "Выполнено",
        "Под нагрузкой, МБ (макс.)",
    )
    lines = [
        *table(header, rows),
        "",
        f"Цель ≤ {number(ref.GOAL_RSS_MB)} МБ — память в покое, как читалась таблица PM2 эталона; "
        "память под нагрузкой — для сведения.",
        "",
    ]
    matched = {ref.process_role(name) for name in names}
    unpaired = [f"{ref.PROCESS_NAMES[r]} ({number(mb)} МБ)" for r, mb in ref.RSS_MB.items() if r not in matched]
    if unpaired:
        lines += [f"Процессы эталона без пары в замерах: {', '.join(unpaired)}.", ""]
    return lines


def _under_load(page: Page, name: str) -> str:
    peak = peak_under_load(page.figures, name)
    return DASH if peak is None else f"{number(peak[0])} ({peak[1]})"

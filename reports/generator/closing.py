"""The closing sections of the report: problems, recommendations, conclusion, monitoring, sources."""

from __future__ import annotations

from datetime import date

from reports.generator import reference as ref
from reports.generator.checks import Check, stage_timeout_ms
from reports.generator.format import (
    FAILED,
    SCENARIOS,
    TURNS,
    count,
    counted,
    dotted,
    enumerate_lines,
    next_scheduled_run,
    number,
    plural,
    ru_date,
    with_unit,
)
from reports.generator.page import SOURCE_NAMES, Page

MARK = {"error": "❌", "goal": "⚠️", "input": "📭"}
TIMES = ("раз", "раза", "раз")
FIGURES = ("показатель", "показателя", "показателей")
MONITORING = """```bash
# Мёртвые письма: задачи, упавшие окончательно (повтор: aiadmin dlq replay --all)
aiadmin dlq list

# Батчи, очередь, опоздание сброса, задачи в работе
curl http://<server>:8080/webhook/whatsapp/batched/stats

# Метрики Prometheus (aiadmin_flush_lateness_seconds, aiadmin_queue_wait_seconds, aiadmin_jobs_total, ...)
curl http://<server>:8080/metrics

# Готовность: Redis отвечает, batch processor жив
curl http://<server>:8080/ready
```"""


def problems_section(page: Page) -> list[str]:
    figures = page.figures
    lines = ["### Исправленные:", ""]
    if page.previous is None:
        lines += ["Прошлого отчёта нет — сравнивать не с чем.", ""]
    elif figures.fixed:
        lines += [*enumerate_lines(f"✅ ~~{p.text}~~ — в этом прогоне нет" for p in figures.fixed), ""]
    else:
        lines += [f"Нет: ни одна проблема отчёта от {_ru(page.previous.date)} не ушла.", ""]
    lines += ["### Требуют внимания:", ""]
    if figures.problems:
        lines += [*enumerate_lines(f"{MARK[p.severity]} {p.text}" for p in figures.problems), ""]
    else:
        lines += ["Нет: все сценарии пройдены, все показатели в пределах целей.", ""]
    if figures.unchecked:
        lines += [
            "### Не проверены в этом прогоне (нет данных):",
            "",
            *enumerate_lines(f"❔ {p.text}" for p in figures.unchecked),
            "",
        ]
    return lines


def recommendations(page: Page) -> list[str]:
    lines = []
    for audience, title in (("production", "### Для продакшена:"), ("development", "### Для разработки:")):
        items = [a.text for a in page.figures.recommendations if a.audience == audience]
        lines += [title, "", *(enumerate_lines(items) or ["Замечаний по данным этого прогона нет."]), ""]
    return lines


def conclusion(page: Page) -> list[str]:
    lines = [_verdict_text(page), "", *_areas(page), ""]
    versus = _versus_reference(page)
    if versus:
        lines += ["### По сравнению с эталоном:", "", *enumerate_lines(versus), ""]
    if page.previous is not None:
        before = {p.key for p in page.previous.problems}
        new = [p for p in page.figures.problems if p.key not in before]
        lines += [
            "### По сравнению с прошлым отчётом:",
            "",
            f"- Проблем ушло: {count(len(page.figures.fixed))}; новых: {count(len(new))}; "
            f"осталось: {count(len(page.figures.problems) - len(new))}.",
            "",
        ]
    return [*lines, "### Команды для мониторинга:", "", MONITORING, ""]


def _verdict_text(page: Page) -> str:
    figures = page.figures
    goals = [c for c in page.checks if c.met is False]
    absent = [SOURCE_NAMES[s] for s in SOURCE_NAMES if page.missing(s)]
    incomplete = f" Отчёт неполон: нет данных — {', '.join(absent)}; выводы только по имеющимся." if absent else ""
    if figures.verdict == "not_ready":
        return f"❌ **Система не готова к выпуску**: {'; '.join(_errors(page))}.{incomplete}"
    if figures.verdict == "goals_missed":
        shown = ", ".join(c.label for c in goals[:3]) + (f" и ещё {len(goals) - 3}" if len(goals) > 3 else "")
        proven = [
            text
            for present, text in (
                (figures.scenarios is not None, "сценарии пройдены"),
                (bool(figures.load), "под нагрузкой потерь и двойных ответов нет"),
            )
            if present
        ]
        works = f" ({', '.join(proven)})" if proven else ""
        return (
            f"⚠️ **Функционально система работает**{works}, но "
            f"{counted(len(goals), FIGURES)} вне целей: {shown}.{incomplete}"
        )
    if figures.verdict == "incomplete":
        return f"📭 **Вывод сделать нельзя**: по имеющимся данным проблем нет.{incomplete}"
    return "✅ **Система готова к эксплуатации**: все сценарии пройдены, все показатели в пределах целей."


def _errors(page: Page) -> list[str]:
    """The correctness failures in a few words each; the details are under «Требуют внимания»."""
    figures = page.figures
    failed = sum(s.status == "failed" for s in figures.scenarios or [])
    loads = figures.load
    totals = (
        (failed, f"{counted(failed, SCENARIOS)} {plural(failed, FAILED)}"),
        (sum(r.lost_turns for r in loads), "потеряно ходов: {}"),
        (sum(max(0, r.turns_sent - r.turns_answered - r.lost_turns) for r in loads), "ходов без ответа: {}"),
        (sum(r.double_replies for r in loads), "двойных ответов: {}"),
        (sum(r.merge_mismatched for r in loads), "расхождений склейки: {}"),
        (sum(r.failures for r in loads), "запросов нагрузки с ошибкой: {}"),
        (sum(r.dead_letters for r in loads), "мёртвых писем: {}"),
        (len(figures.bench.problems) if figures.bench else 0, "замечаний замера этапов: {}"),
    )
    found = [text.format(count(n)) for n, text in totals if n]
    other = [p.text for p in figures.problems if p.severity == "error" and p.key.endswith(":errors")]
    return found or other or ["см. «Требуют внимания»"]


def _areas(page: Page) -> list[str]:
    figures = page.figures
    lines = []
    if not figures.scenarios:
        lines.append("- 📭 **Сценарии**: нет данных")
    else:
        passed = sum(s.status == "passed" for s in figures.scenarios)
        failed = sum(s.status == "failed" for s in figures.scenarios)
        mark = "❌" if failed else "✅"
        lines.append(f"- {mark} **Сценарии**: пройдено {count(passed)} из {count(len(figures.scenarios))}")
    judged = [c for c in page.checks if c.met is not None and not c.key.startswith("load:")]
    lines.append(_share_line("Замер этапов", judged, present=figures.bench is not None))
    if figures.load:
        lost = sum(run.lost_turns for run in figures.load)
        double = sum(run.double_replies for run in figures.load)
        mismatched = sum(run.merge_mismatched for run in figures.load)
        dead = sum(run.dead_letters for run in figures.load)
        load_checks = [c for c in page.checks if c.key.startswith("load:") and c.met is not None]
        met = sum(bool(c.met) for c in load_checks)
        mark = "❌" if lost or double or mismatched or dead else "⚠️" if met < len(load_checks) else "✅"
        lines.append(
            f"- {mark} **Нагрузка** ({', '.join(run.profile for run in figures.load)}): потеряно "
            f"{counted(lost, TURNS)}, двойных ответов {count(double)}, расхождений склейки {count(mismatched)}, "
            f"мёртвых писем {count(dead)}; в пределах целей {count(met)} из {count(len(load_checks))}"
        )
    else:
        lines.append("- 📭 **Нагрузка**: нет данных")
    return lines


def _share_line(title: str, judged: list[Check], *, present: bool) -> str:
    if not present:
        return f"- 📭 **{title}**: нет данных"
    if not judged:
        return f"- ⚠️ **{title}**: нет показателей с целями"
    met = sum(bool(c.met) for c in judged)
    mark = "✅" if met == len(judged) else "⚠️"
    return f"- {mark} **{title}**: в пределах целей {count(met)} из {count(len(judged))}"


def _versus_reference(page: Page) -> list[str]:
    """Our figures beside the reference's, where both are numbers."""
    lines = []
    config_timeout = page.figures.bench.config.get("batch_timeout_ms") if page.figures.bench else None
    for stage in page.figures.stages:
        span = ref.STAGES_MS.get(stage.key)
        if span is None or span.low is None or stage.p99_ms is None:
            continue
        if stage.key == "timeout":
            # The reference's timeout was late by 455 ms; compare lateness, not the time both wait on purpose.
            timeout_ms = stage_timeout_ms(stage, config_timeout)
            if timeout_ms is not None and stage.p99_ms >= timeout_ms:
                ours = stage.p99_ms - timeout_ms
                theirs = span.low - ref.CONFIG["batch_timeout_ms"][1]
                lines.append(f"{stage.name}: опоздание p99 {number(ours)} мс против {number(theirs)} мс у эталона")
            continue
        if span.external:
            lines.append(
                f"{stage.name}: p99 {number(stage.p99_ms)} мс против {span.text} у эталона — не сравнимо: "
                "у нас внешний сервис заменён заглушкой"
            )
            continue
        versus = _factor(stage.p99_ms, span, lower=True)
        lines.append(f"{stage.name}: p99 {number(stage.p99_ms)} мс против {span.text} у эталона{versus}")
    for rate in page.figures.throughput:
        span = ref.THROUGHPUT.get(rate.key)
        if span is None or span.high is None or rate.value is None:
            continue
        versus = _factor(rate.value, span, lower=False)
        lines.append(f"{rate.name}: {with_unit(rate.value, rate.unit)} против {span.text} у эталона{versus}")
    for process in page.figures.processes:
        role = ref.process_role(process.name)
        if role is not None and role in ref.RSS_MB and process.rss_mb is not None:
            theirs_mb = ref.RSS_MB[role]
            change = (process.rss_mb / theirs_mb - 1) * 100
            lines.append(
                f"Память `{process.name}`: {number(process.rss_mb)} МБ против {number(theirs_mb)} МБ у "
                f"{ref.PROCESS_NAMES[role]} ({'+' if change > 0 else ''}{number(change, digits=0)}%)"
            )
    return lines


def _factor(ours: float, span: ref.Span, *, lower: bool) -> str:
    """`быстрее в 5.8 раза` when ours is better than the reference's whole range, else where it stands."""
    low, high = span.low or 0.0, span.high or 0.0
    if lower and 0 < ours < low:
        return f" (быстрее в {_times(low / ours)})"
    if not lower and ours > high > 0:
        return f" (больше в {_times(ours / high)})"
    if (lower and ours > high) or (not lower and ours < low):
        return " (хуже эталона)"
    return " (на уровне эталона)"


def _times(factor: float) -> str:
    """`5.8 раза` (a fraction takes "раза"), `64 раза`, `100 раз`."""
    if factor < 10:
        return f"{number(factor, digits=1)} раза"
    whole = round(factor)
    return f"{count(whole)} {plural(whole, TIMES)}"


def sources(page: Page) -> list[str]:
    figures = page.figures
    lines = ["## 📂 Исходные данные", ""]
    profiles = ", ".join(run.profile for run in figures.load)
    for row in figures.inputs:
        state = f"❌ {row.problem}" if row.problem else "✅ прочитан"
        if row.input == "load" and not row.problem:
            state = f"✅ профили: {profiles}" if profiles else "✅ прочитан"
        lines.append(f"- {SOURCE_NAMES.get(row.input, row.input)}: `{row.path}` — {state}")
    if page.previous is not None:
        lines.append(f"- прошлый отчёт: `{page.previous.date}.json`")
    lines.extend(f"- прошлый отчёт пропущен: {note}" for note in page.previous_notes)
    if page.charts_note:
        lines.append(f"- графики не построены: {page.charts_note}")
    day = date.fromisoformat(figures.date)
    lines += [
        "- эталон: `system-test-report-2025-08-26.ru.md` (цифры записаны в `reports/generator/reference.py`)",
        "",
        "---",
        "",
        f"*Отчёт сформирован: {dotted(day)} ({figures.generated_at})*",
        f"*Следующее плановое тестирование: {dotted(next_scheduled_run(day))}*",
    ]
    return lines


def _ru(iso: str) -> str:
    return ru_date(date.fromisoformat(iso))

"""The monthly report in Markdown, in the reference report's structure: header, summary, the tests run.

The later sections live in `report_performance` (performance, configuration, processes) and `report_closing`
(problems, recommendations, conclusion).
"""

from __future__ import annotations

from datetime import date

from reports.generator.closing import conclusion, problems_section, recommendations, sources
from reports.generator.figures import features_of
from reports.generator.format import (
    FAILED,
    NO_DATA,
    SCENARIOS,
    SKIPPED,
    cell,
    count,
    counted,
    number,
    plural,
    ru_date,
    table,
)
from reports.generator.model import ComponentFig, ScenarioFig
from reports.generator.page import SOURCE_NAMES, Page
from reports.generator.performance import configuration, performance, processes

TITLE = "# Отчет о комплексном тестировании системы AI Admin"
SECTIONS = (
    "## 📊 Итоги тестирования",
    "## 🧪 Проведенные тесты",
    "## 📈 Производительность",
    "## 🔧 Конфигурация системы",
    "## 🖥️ Процессы",
    "## 🐛 Обнаруженные проблемы",
    "## 📝 Рекомендации",
    "## 🎯 Заключение",
)
STATUS = {"passed": "✅ пройден", "failed": "❌ не пройден", "skipped": "⏭️ пропущен"}
# Genitive after "из": "из 1 сценария", "из 5 сценариев".
SCENARIOS_OF = ("сценария", "сценариев", "сценариев")
FIGURES_OF = ("показателя", "показателей", "показателей")


def render(page: Page) -> str:
    lines = header(page)
    lines += [SECTIONS[0], "", *summary(page)]
    lines += [SECTIONS[1], "", *tests(page)]
    lines += [SECTIONS[2], "", *performance(page)]
    lines += [SECTIONS[3], "", *configuration(page)]
    lines += [SECTIONS[4], "", *processes(page)]
    lines += [SECTIONS[5], "", *problems_section(page)]
    lines += [SECTIONS[6], "", *recommendations(page)]
    lines += [SECTIONS[7], "", *conclusion(page)]
    lines += sources(page)
    return "\n".join(lines).rstrip() + "\n"


def header(page: Page) -> list[str]:
    figures = page.figures
    lines = [
        TITLE,
        "",
        f"## Дата: {ru_date(date.fromisoformat(figures.date))}",
        f"## Версия системы: {figures.version}",
        "",
    ]
    if page.previous is not None:
        previous = page.previous.date
        lines.append(f"**Прошлый отчёт**: [{ru_date(date.fromisoformat(previous))}]({previous}.md).")
    else:
        lines.append("**Прошлый отчёт**: нет — столбцы «Прошлый отчёт» пусты (—).")
    lines.append("")
    lines.append("**Эталон**: отчёт о тестировании AI Admin v2 (Node.js) от 26.08.2025.")
    lines.append("")
    absent = [reason for source in SOURCE_NAMES if (reason := page.missing(source))]
    unread = [f"`{r.path}`: {r.problem}" for r in figures.inputs if r.problem and r.input == "load" and figures.load]
    if absent or unread:
        lines.append("> ⚠️ **Неполные данные.** Разделы без входных данных помечены «нет данных».")
        lines.extend(f"> - {cell(text)}" for text in absent)
        lines.extend(f"> - не прочитан файл нагрузки {cell(text)}" for text in unread)
        lines.append("")
    return lines


def summary(page: Page) -> list[str]:
    figures = page.figures
    reason = page.missing("cucumber")
    lines: list[str] = []
    if figures.scenarios:
        lines += [_scenario_totals(figures.scenarios), ""]
    judged = [c for c in page.checks if c.met is not None]
    if judged:
        met = sum(bool(c.met) for c in judged)
        lines += [f"Показатели с целями: {count(met)} из {counted(len(judged), FIGURES_OF)} в пределах целей.", ""]
    lines += ["### Компоненты", ""]
    if figures.components is None:
        return [*lines, reason or "нет данных", ""]
    lines += table(("Компонент", "Статус", "Результаты"), (_component_row(c) for c in figures.components))
    return [*lines, ""]


def _scenario_totals(scenarios: list[ScenarioFig]) -> str:
    passed = sum(s.status == "passed" for s in scenarios)
    failed = sum(s.status == "failed" for s in scenarios)
    skipped = sum(s.status == "skipped" for s in scenarios)
    text = f"Сценарии: {count(passed)} из {counted(len(scenarios), SCENARIOS_OF)} пройдены"
    text += f", {count(failed)} {plural(failed, FAILED)}" if failed else ""
    text += f", {count(skipped)} {plural(skipped, SKIPPED)}" if skipped else ""
    return text + f" (время сценариев {number(sum(s.duration_s for s in scenarios))} с)."


def _component_row(component: ComponentFig) -> tuple[str, str, str]:
    if component.status == "failed":
        status = f"❌ {component.failed} {plural(component.failed, FAILED)}"
    elif component.status == "passed":
        status = "✅ Работает"
    else:
        status = "⚠️ Нет сценариев"
    if component.tag is None:
        return (
            f"**{component.name}**",
            status,
            "нет сценариев с тегом " + " или ".join(f"@{t}" for t in component.tags),
        )
    total = component.passed + component.failed
    result = f"{component.passed}/{total} {plural(total, SCENARIOS)} @{component.tag}"
    if component.tag != component.tags[0]:
        result += f" (сценариев @{component.tags[0]} нет)"
    if component.skipped:
        result += f"; пропущено {component.skipped}"
    if component.failed_scenarios:
        result += "; не прошли: " + ", ".join(f"«{name}»" for name in component.failed_scenarios)
    return (f"**{component.name}**", status, result)


def tests(page: Page) -> list[str]:
    reason = page.missing("cucumber")
    if reason:
        return [reason, ""]
    if not page.figures.scenarios:
        return [f"{NO_DATA} — в результатах сценариев нет ни одного сценария.", ""]
    lines = []
    for number_, (name, uri, scenarios) in enumerate(features_of(page.figures), start=1):
        common = set.intersection(*(set(s.tags) for s in scenarios)) if scenarios else set()
        passed = sum(s.status == "passed" for s in scenarios)
        tags = " ".join(f"@{t}" for t in sorted(common)) or "без тегов"
        lines += [f"### Тест {number_}: {name}", f"`{uri}` · {tags} · пройдено {passed} из {len(scenarios)}", ""]
        rows = (
            (
                s.title,
                " ".join(f"@{t}" for t in s.tags if t not in common),
                STATUS[s.status],
                f"{number(s.duration_s)} с",
            )
            for s in scenarios
        )
        lines += table(("Сценарий", "Свои теги", "Результат", "Время"), rows)
        errors = [s for s in scenarios if s.status == "failed"]
        if errors:
            lines += ["", "**Ошибки:**"]
            lines += [f"- ❌ «{s.title}»: `{s.error or 'без сообщения'}`" for s in errors]
        lines.append("")
    return lines

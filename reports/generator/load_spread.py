"""The load section's second half: each run's figures by window (the noise its goals are judged against), its
conversations, the memory of its processes and of Redis over the run."""

from __future__ import annotations

from collections.abc import Sequence

from reports.generator import reference as ref
from reports.generator.checks import is_system_process
from reports.generator.format import DASH, NO_DATA, count, number, table
from reports.generator.model import LoadFig
from reports.generator.page import Page


def windows_lines(page: Page) -> list[str]:
    """The table of each run's windows; nothing when no run measured them (older summaries)."""
    runs = [run for run in page.figures.load if _has_windows(run)]
    if not runs:
        return []
    header = ("Профиль", "Запросов/с", "Приём p99, мс", "e2e p99, с", "Опоздание сброса p99, мс", "Очередь p99, мс")
    rows = (
        (
            run.profile,
            _spread(run.runs_rps),
            _spread(run.runs_accept_p99_ms),
            _spread(tuple(v / 1000 for v in run.runs_e2e_p99_ms)),
            _spread(run.runs_lateness_p99_ms),
            _spread(run.runs_queue_lag_p99_ms),
        )
        for run in runs
    )
    return [
        "Разброс внутри прогона: каждый прогон делится на три равных окна по плановой длительности, и каждая "
        "величина измеряется в каждом окне отдельно (значения через «/», в скобках — разброс, наибольшее минус "
        "наименьшее). Цель считается пропущенной, только если она не выполнена в двух окнах из трёх или итог "
        "хуже цели больше, чем на этот разброс. Опоздание сброса в окне — p99 последних 1 000 сбросов к концу окна.",
        "",
        *table(header, rows),
        "",
    ]


def memory_lines(page: Page) -> list[str]:
    """Conversations at once, RSS growth after the warm-up and Redis memory, for the runs that recorded them."""
    runs = [run for run in page.figures.load if run.peak_conversations is not None or run.redis_end_mb is not None]
    if not runs:
        return []
    header = ("Профиль", "Разговоров одновременно (пик)", "Рост RSS после 5 мин", "Redis: в начале → в конце, МБ")
    rows = ((run.profile, count(run.peak_conversations), _growth(run), _redis(run)) for run in runs)
    return [
        *table(header, rows),
        "",
        f"Цель долгого прогона: RSS каждого нашего процесса (aiadmin …) после первых 5 минут растёт меньше чем "
        f"на {number(ref.RSS_GROWTH_GOAL_PCT)}%; заглушки и Locust хранят всё увиденное (сообщения, ходы) и растут "
        "с прогоном, их рост показан без оценки. Память Redis возвращается к исходной, когда истекают разговоры "
        "(диалог живёт 24 ч, история 30 дней): прогон этого не дожидается, а проверяет, что у каждого оставленного "
        "ключа есть срок жизни («ключей без TTL»).",
        "",
        *page.image("rss"),
    ]


def _has_windows(run: LoadFig) -> bool:
    return any((run.runs_rps, run.runs_accept_p99_ms, run.runs_e2e_p99_ms, run.runs_lateness_p99_ms))


def _spread(values: Sequence[float]) -> str:
    if len(values) < 2:
        return NO_DATA
    return f"{' / '.join(number(v) for v in values)} ({number(max(values) - min(values))})"


def _growth(run: LoadFig) -> str:
    grown = [(p.name, p.rss_growth_pct) for p in run.processes if p.rss_growth_pct is not None]
    if not grown:
        return DASH
    return "; ".join(
        f"{name} {number(pct)}%{' ⚠️' if is_system_process(name) and pct >= ref.RSS_GROWTH_GOAL_PCT else ''}"
        for name, pct in grown
    )


def _redis(run: LoadFig) -> str:
    if run.redis_end_mb is None:
        return DASH
    start = NO_DATA if run.redis_start_mb is None else number(run.redis_start_mb)
    without = run.redis_keys_without_ttl
    keys = "" if without is None else f"; ключей без TTL: {count(without)}"
    expired = ""
    if run.redis_after_expiry_mb is not None:
        left = run.redis_keys_left_after_expiry
        expired = (
            f"; через {number(run.redis_expiry_wait_s or 0)} с после остановки, когда истекли TTL: "
            f"{number(run.redis_after_expiry_mb)}" + ("" if not left else f" (не истекли ещё {count(left)} ключей)")
        )
    return f"{start} → {number(run.redis_end_mb)}{keys}{expired}"

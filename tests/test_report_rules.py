"""The report's pieces on their own: parsing the inputs, goals, findings, advice and Russian wording."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from reports.generator.advice import advise
from reports.generator.checks import (
    Goal,
    beyond_noise,
    checks,
    e2e_goal,
    parse_goal,
    rate_check,
    stage_check,
    stage_timeout_ms,
)
from reports.generator.cucumber import components, error_summary, parse_cucumber, unescape_id, written_steps
from reports.generator.figures import build_figures
from reports.generator.findings import load_problems, problems, verdict
from reports.generator.format import SCENARIOS, SCHEDULED_DAY, counted, next_month, next_scheduled_run, number
from reports.generator.inputs import InputPaths, Rate, Stage, load_inputs
from reports.generator.model import LoadFig, ProblemFig, ReportFigures

DATA = Path(__file__).parent / "data" / "report"
ROOT = Path(__file__).resolve().parents[1]


def fixture_figures(*, load_dir: Path = DATA / "load") -> ReportFigures:
    inputs = load_inputs(InputPaths(DATA / "cucumber.json", DATA / "bench-stages.json", load_dir, DATA))
    return build_figures(inputs, day=date(2026, 11, 25), generated_at=datetime(2026, 11, 25, tzinfo=UTC), version="t")


def with_run(figures: ReportFigures, profile: str, **changes: object) -> ReportFigures:
    runs = [run.model_copy(update=changes) if run.profile == profile else run for run in figures.load]
    return figures.model_copy(update={"load": runs})


@pytest.mark.parametrize(
    ("text", "op", "limit", "unit", "percentile"),
    [
        ("p99 ≤ 5 ms", "le", 5.0, "ms", "p99"),
        ("p99 ≤ 9 020 ms", "le", 9020.0, "ms", "p99"),
        ("≥ 1 500 req/s", "ge", 1500.0, "req/s", None),
        ("≥ 1\u00a0500 req/s", "ge", 1500.0, "req/s", None),
        ("≥ 1,500 req/s", "ge", 1500.0, "req/s", None),
        ("≥ 70%", "ge", 70.0, "%", None),
        ("p50 <= 1,5 s", "le", 1.5, "s", "p50"),
        ("lateness p99 ≤ 20 ms", "le", 20.0, "ms", "p99"),
    ],
)
def test_goals_are_read_as_the_benchmarks_write_them(
    text: str, op: str, limit: float, unit: str, percentile: str | None
) -> None:
    goal = parse_goal(text)

    assert goal is not None
    assert (goal.op, goal.limit, goal.unit, goal.percentile) == (op, limit, unit, percentile)


@pytest.mark.parametrize("text", [None, "", "one reply per job", "—"])
def test_a_goal_in_words_has_no_bound(text: str | None) -> None:
    assert parse_goal(text) is None


def test_a_stage_without_a_verdict_is_judged_by_its_goal_in_seconds() -> None:
    stage = Stage(key="sending", name="Отправка ответа", p50_ms=900.0, p99_ms=2100.0, goal="p99 ≤ 2 s", met=None)

    check = stage_check(stage)

    assert check is not None
    assert check.met is False
    assert check.used == pytest.approx(1.05)


def test_a_lateness_goal_is_checked_past_the_timeout_the_stage_ran_with() -> None:
    stage = Stage(
        key="timeout",
        name="Ожидание таймаута",
        p50_ms=2001.8,
        p99_ms=2032.5,
        goal="lateness p99 ≤ 20 ms",
        met=None,
        note="last fragment → job in the queue, timeout 2000 ms, 200 open batches",
    )

    timeout_ms = stage_timeout_ms(stage, 9000)
    check = stage_check(stage, timeout_ms=timeout_ms)

    assert timeout_ms == 2000.0
    assert stage_timeout_ms(stage.model_copy(update={"note": None}), 9000) == 9000.0
    assert stage_timeout_ms(stage.model_copy(update={"timeout_ms": 9000.0}), 2000) == 9000.0
    assert check is not None
    assert check.value == pytest.approx(32.5)
    assert check.met is False
    assert check.label == "Ожидание таймаута, опоздание p99"


def test_an_unmeasured_stage_has_no_verdict_and_is_a_problem() -> None:
    figures = fixture_figures()
    unmeasured = {"p50_ms": None, "p99_ms": None}
    stages = [s.model_copy(update=unmeasured) if s.key == "sending" else s for s in figures.stages]
    figures = figures.model_copy(update={"stages": stages})

    found = checks(figures)

    assert next(c for c in found if c.key == "stage:sending").met is None
    assert "stage:sending:unmeasured" in {p.key for p in problems(figures, found)}


def test_the_end_to_end_goal_comes_from_the_runs_own_settings() -> None:
    run = fixture_figures().load[0]

    goal = e2e_goal(run)

    assert goal is not None
    assert goal[0] == 9000 + 3 * 3000 + 2000  # the timeout, three model calls at the slowest latency, sending
    assert e2e_goal(run.model_copy(update={"settings": {"batch_timeout_ms": 9000}})) is None


def test_a_skipped_scenario_is_told_from_the_feature_file() -> None:
    data = (DATA / "cucumber.json").read_bytes()
    name = "The 9 s batch timeout holds on the wall clock against a real Redis"

    with_files = {s.name: s.status for f in parse_cucumber(data, features_root=DATA) for s in f.scenarios}
    # Without the feature files pytest-bdd's record is all there is, and it says "passed".
    without = {s.name: s.status for f in parse_cucumber(data, features_root=None) for s in f.scenarios}

    assert with_files[name] == "skipped"
    assert without[name] == "passed"
    assert with_files["Three quick messages become one turn"] == "passed"


def test_written_steps_count_the_background_and_skip_tables_and_docstrings() -> None:
    source = "\n".join(
        [
            "Feature: f",
            "  Background:",
            "    Given a salon",
            "  Scenario: s",
            "    When the client writes",
            "      | message |",
            "      | Привет  |",
            "    And the body is",
            '      """',
            "      Then not a step",
            '      """',
            "    Then one turn",
            "  Scenario: next",
            "    Given other",
        ]
    )

    assert written_steps(source, 4) == 4
    assert written_steps(source, 13) == 2
    assert written_steps(source, 3) is None


RUSSIAN_FEATURE = """# language: ru
@batching
Функция: Быстрые сообщения
  Предыстория:
    Дано салон открыт

  Сценарий: Три сообщения — один ход
    Когда клиент 79001234567 быстро пишет
      | сообщение |
      | Привет    |
    И тело такое
      \"\"\"
      Тогда это не шаг
      \"\"\"
    Тогда администратор читает 1 ход

  @realtime
  Сценарий: По настоящим часам
    Дано настоящие часы и настоящий Redis
    Когда клиент 79001234567 пишет "Привет"
    Тогда батч сбрасывается вовремя

  Правило: Своя предыстория
    Предыстория:
      Дано мастер свободен

    Структура сценария: Дата словами
      Когда клиент пишет "<день>"
      Но ничего не ломается

      Примеры:
        | день   |
        | завтра |
"""


def test_written_steps_read_a_feature_file_in_any_gherkin_language() -> None:
    assert written_steps(RUSSIAN_FEATURE, 7) == 1 + 3
    assert written_steps(RUSSIAN_FEATURE, 18) == 1 + 3
    assert written_steps(RUSSIAN_FEATURE, 27) == 1 + 1 + 2  # the feature's background, the rule's, its own
    assert written_steps(RUSSIAN_FEATURE, 8) is None  # a step, not a scenario
    assert written_steps("# language: ru\nСценарий: без функции\n  Дано шаг\n", 2) is None  # not Gherkin
    assert written_steps(RUSSIAN_FEATURE.replace("# language: ru", "# language: xx"), 7) is None


def test_a_russian_run_reads_with_its_names_and_its_skipped_scenario(tmp_path: Path) -> None:
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "batching.feature").write_text(RUSSIAN_FEATURE, encoding="utf-8")
    passed = {"result": {"status": "passed", "duration": 1_000_000}}
    document = [
        {
            "uri": "features/batching.feature",
            "name": "Быстрые сообщения",
            "tags": [{"name": "batching"}],
            "elements": [
                {"id": "test_три", "name": "Три сообщения — один ход", "line": 7, "steps": [passed] * 4},
                # pytest-bdd lists a scenario skipped in its first step as passed, with that step only.
                {"id": "test_часы", "name": "По настоящим часам", "line": 18, "steps": [passed]},
                {
                    "id": "test_дата[\\u0437\\u0430\\u0432\\u0442\\u0440\\u0430]",
                    "name": "Дата словами",
                    "line": 27,
                    "steps": [passed] * 4,
                },
            ],
        }
    ]

    [feature] = parse_cucumber(json.dumps(document).encode(), features_root=tmp_path)

    assert [(s.title, s.status) for s in feature.scenarios] == [
        ("Три сообщения — один ход", "passed"),
        ("По настоящим часам", "skipped"),
        ("Дата словами [завтра]", "passed"),
    ]
    batching = next(c for c in components([feature]) if c.tag == "batching")
    assert (batching.passed, batching.skipped) == (2, 1)


def test_a_batcher_tag_is_preferred_to_the_batching_fallback() -> None:
    document = json.loads((DATA / "cucumber.json").read_text(encoding="utf-8"))
    document[0]["elements"][0]["tags"].append({"name": "batcher", "line": 1})

    rows = {c.name: c for c in components(parse_cucumber(json.dumps(document).encode(), features_root=None))}

    assert (rows["Batch Processor"].tag, rows["Batch Processor"].passed) == ("batcher", 1)
    assert rows["Redis батчинг"].tag == "batching"


def test_test_ids_and_errors_read_like_the_feature_file() -> None:
    assert unescape_id("\\u0437\\u0430\\u0432\\u0442\\u0440\\u0430-17:00") == "завтра-17:00"
    message = "    def step():\n>       assert a == b\nE   assert 1 == 2\nE     extra\n\nfile.py:3: AssertionError"
    assert error_summary(message) == "assert 1 == 2 extra"
    assert error_summary("boom") == "boom"


def test_load_counts_that_must_be_zero_become_problems() -> None:
    run = fixture_figures().load_run("steady")
    assert run is not None
    assert load_problems(run) == []

    broken = run.model_copy(update={"turns_answered": run.turns_sent - 3, "lost_turns": 1, "double_replies": 2})

    keys = {p.key.split(":", 2)[2] for p in load_problems(broken)}
    assert keys == {"lost_turns", "unanswered", "double_replies"}


@pytest.mark.parametrize(
    ("severities", "expected"),
    [
        (["goal", "error", "input"], "not_ready"),
        (["input", "goal"], "goals_missed"),
        (["input"], "incomplete"),
        ([], "ready"),
    ],
)
def test_the_worst_finding_decides_the_verdict(severities: list[str], expected: str) -> None:
    found = [ProblemFig(key=str(i), source="x", severity=s, text="t") for i, s in enumerate(severities)]  # type: ignore[arg-type]

    assert verdict(found, fixture_figures()) == expected


def test_lateness_with_a_busy_batcher_asks_for_a_second_batcher() -> None:
    figures = fixture_figures()
    spike = figures.load_run("spike")
    assert spike is not None
    busy = [p.model_copy(update={"cpu_pct": 95.0}) if "batcher" in p.name else p for p in spike.processes]
    figures = with_run(figures, "spike", processes=busy)
    found = checks(figures)

    texts = [a.text for a in advise(figures, found, problems(figures, found))]

    lateness = next(t for t in texts if t.startswith("**Опоздание сброса батчей**"))
    assert "batch processor занимал 95% CPU" in lateness
    assert "второй `aiadmin batcher`" in lateness


def test_lateness_on_an_idle_batcher_points_at_redis() -> None:
    figures = fixture_figures()
    spike = figures.load_run("spike")
    assert spike is not None
    calm = [p.model_copy(update={"cpu_pct": 10.0}) for p in spike.processes]
    figures = with_run(figures, "spike", processes=calm)
    found = checks(figures)

    texts = [a.text for a in advise(figures, found, problems(figures, found))]

    lateness = next(t for t in texts if t.startswith("**Опоздание сброса батчей**"))
    assert "не упирается в CPU (10% CPU)" in lateness
    assert "redis-cli --latency" in lateness


def test_what_the_benchmark_flagged_is_a_problem_with_advice() -> None:
    figures = fixture_figures()
    assert figures.bench is not None
    bench = figures.bench.model_copy(update={"problems": ["worker run 1: double_replies=2"]})
    figures = figures.model_copy(update={"bench": bench})
    found = checks(figures)

    flagged = [p for p in problems(figures, found) if p.source == "stages" and p.severity == "error"]
    advice = [a.text for a in advise(figures, found, problems(figures, found))]

    assert [p.text for p in flagged] == ["Замер этапов: worker run 1: double_replies=2"]
    assert any(a.startswith("**Замер этапов** отметил проблемы (worker run 1: double_replies=2)") for a in advice)


def test_a_features_run_without_scenarios_is_no_evidence() -> None:
    figures = fixture_figures().model_copy(update={"scenarios": []})

    found = problems(figures, checks(figures))

    assert "input:cucumber:empty" in {p.key for p in found}


def test_dead_letters_point_at_the_dlq_commands() -> None:
    figures = with_run(fixture_figures(), "steady", dead_letters=4)
    found = checks(figures)

    advice = advise(figures, found, problems(figures, found))

    dead = next(a for a in advice if a.text.startswith("**Мёртвые письма**"))
    assert dead.audience == "production"
    assert "(steady: 4)" in dead.text
    assert "`aiadmin dlq list`" in dead.text


def test_arrival_rate_is_turns_over_the_run() -> None:
    run = LoadFig(
        profile="p",
        requests=10,
        failures=0,
        turns_sent=50,
        turns_answered=50,
        lost_turns=0,
        double_replies=0,
        merge_checked=50,
        merge_mismatched=0,
        dead_letters=0,
        duration_s=10.0,
    )

    assert run.arrival_per_s == 5.0
    assert run.model_copy(update={"duration_s": None}).arrival_per_s is None


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.634, "0.63"),
        (48.31, "48.3"),
        (6387.0, "6\u00a0387"),
        (9001.14, "9\u00a0001.1"),
        (70.0, "70"),
        (None, "нет данных"),
    ],
)
def test_numbers_keep_the_precision_their_size_needs(value: float | None, shown: str) -> None:
    assert number(value) == shown


@pytest.mark.parametrize(
    ("n", "text"), [(1, "1 сценарий"), (2, "2 сценария"), (5, "5 сценариев"), (11, "11 сценариев"), (21, "21 сценарий")]
)
def test_russian_plurals(n: int, text: str) -> None:
    assert counted(n, SCENARIOS) == text


def test_next_planned_test_is_a_month_later() -> None:
    assert next_month(date(2026, 1, 31)) == date(2026, 2, 28)
    assert next_month(date(2026, 12, 15)) == date(2027, 1, 15)


def test_the_next_planned_run_is_the_workflows_next_scheduled_day() -> None:
    """The report of 2026-11-25 said 25.12.2026 while the workflow runs on the 1st (issue 12)."""
    workflow = (ROOT / ".github" / "workflows" / "monthly-report.yml").read_text(encoding="utf-8")
    (cron,) = re.findall(r'^\s*- cron: "([^"]+)"', workflow, re.MULTILINE)
    _minute, _hour, day_of_month, month, weekday = cron.split()
    assert (day_of_month, month, weekday) == (str(SCHEDULED_DAY), "*", "*")

    assert next_scheduled_run(date(2026, 11, 25)) == date(2026, 12, 1)
    assert next_scheduled_run(date(2026, 12, 1)) == date(2027, 1, 1)
    assert next_scheduled_run(date(2026, 1, 31)) == date(2026, 2, 1)


# --- goals outside measurement noise (issue 12) ------------------------------------------------------------


def worker_rate(value: float, runs: tuple[float, ...], *, met: bool | None = None) -> Rate:
    return Rate(key="worker", name="Worker", value=value, unit="msg/s", goal="≥ 100 msg/s", met=met, runs=runs)


def test_a_figure_missing_its_goal_in_one_repeat_of_three_is_not_flagged() -> None:
    check = rate_check(worker_rate(101.0, (98.0, 104.0, 101.0)))  # the median, as the benchmark reports it

    assert check is not None
    assert check.met is True
    assert check.spread == pytest.approx(6.0)
    assert check.shown == "101 сообщений/с (повторы: 98 / 104 / 101; разброс 6)"


def test_a_figure_missing_its_goal_in_two_repeats_of_three_is_flagged() -> None:
    check = rate_check(worker_rate(99.0, (99.0, 98.0, 103.0)))

    assert check is not None
    assert check.met is False


def test_a_figure_missing_by_more_than_its_spread_is_flagged() -> None:
    assert beyond_noise(120.0, (119.0, 120.0, 90.0), Goal("le", 100.0, "ms"))  # 2 of 3 over
    assert beyond_noise(90.0, (90.0, 91.0, 92.0), Goal("ge", 100.0, "msg/s"))  # 10 under, spread 2
    assert not beyond_noise(101.0, (101.0, 95.0, 99.0), Goal("le", 100.0, "ms"))  # 1 over, by 1 < spread 6


def test_a_stage_is_judged_across_its_repeats() -> None:
    stage = Stage(
        key="api_accept",
        name="Приём",
        p50_ms=1.0,
        p99_ms=5.2,
        goal="p99 ≤ 5 ms",
        runs_p99_ms=(5.2, 4.1, 4.6),
    )

    check = stage_check(stage)

    assert check is not None
    assert check.met is True
    assert check.runs == (5.2, 4.1, 4.6)


def test_without_repeats_any_miss_counts() -> None:
    check = rate_check(worker_rate(99.0, ()))

    assert check is not None
    assert check.met is False
    assert check.spread is None


def test_the_repeats_come_from_the_stage_benchmarks_raw_sections(tmp_path: Path) -> None:
    bench = json.loads((DATA / "bench-stages.json").read_text(encoding="utf-8"))
    for rate in bench["throughput"]:
        if rate["key"] == "api_vs_empty":
            rate.update(value=71.0, met=True)  # the median of the runs below
    bench["benchmarks"] = {
        "ingest": {
            "sections": {
                "accept_latency": {"runs": [{"latency_ms_p50": 1.0, "latency_ms_p99": p} for p in (5.4, 4.2, 4.8)]},
                "throughput": {"runs": [{"api_rps": 6000.0, "ratio_pct": r} for r in (56.0, 72.0, 71.0)]},
            }
        },
        "worker": {"sections": {"llm_5s": {"runs": [{"messages_per_s": 6.3}, {"elapsed_s": 1.0}]}}},  # one lacks it
    }
    stages = tmp_path / "bench-stages.json"
    stages.write_text(json.dumps(bench), encoding="utf-8")

    loaded = load_inputs(InputPaths(DATA / "cucumber.json", stages, DATA / "load")).stages

    assert loaded is not None
    accept = next(s for s in loaded.stages if s.key == "api_accept")
    ratio = next(r for r in loaded.throughput if r.key == "api_vs_empty")
    worker = next(r for r in loaded.throughput if r.key == "worker")
    assert accept.runs_p99_ms == (5.4, 4.2, 4.8)
    assert ratio.runs == (56.0, 72.0, 71.0)
    assert worker.runs == ()  # a partial series would fake the spread
    check = rate_check(ratio)
    assert check is not None
    assert check.met is True  # 56% < 70% in one repeat of three: noise, not a missed goal
    assert check.shown == "71% (повторы: 56 / 72 / 71; разброс 16)"

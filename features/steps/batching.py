"""Batching: fragments merge into one turn after the quiet time; a burst is cut at the batch size."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from harness import Runner, Setup
from pytest_bdd import given, parsers, then, when

from steps.common import QUICK_GAP_S


@when(parsers.re(r"клиент (?P<phone>\d+) быстро пишет (?P<count>\d+) сообщени(?:е|я|й)"), converters={"count": int})
def client_quickly_writes_many(runner: Runner, phone: str, count: int) -> None:
    for i in range(1, count + 1):
        if i > 1:
            runner.wait(QUICK_GAP_S)
        assert runner.send(phone, f"сообщение {i}") == 200


@then(parsers.parse('администратор читает один ход "{text}"'))
def one_turn(runner: Runner, text: str) -> None:
    assert runner.turn_texts() == [text]


@then("администратор читает ходы")
def these_turns(runner: Runner, datatable: list[list[str]]) -> None:
    assert runner.turn_texts() == [row[0] for row in datatable[1:]]


FLUSHED = r"статистика показывает (?P<batches>\d+) сброшенн(?:ый|ых) батч(?:а|ей)?"  # "1 сброшенный батч", "2 … батча"


@then(parsers.re(FLUSHED), converters={"batches": int})
def batches_flushed(runner: Runner, batches: int) -> None:
    assert runner.stats()["batches_flushed"] == batches


@then(
    parsers.re(FLUSHED + r" с (?P<fragments>\d+) фрагмент(?:ом|ами)"),
    converters={"batches": int, "fragments": int},
)
def batches_flushed_with(runner: Runner, batches: int, fragments: int) -> None:
    stats = runner.stats()
    assert (stats["batches_flushed"], stats["fragments_flushed"]) == (batches, fragments)


@then(parsers.re(r"статистика показывает (?P<count>\d+) открыт(?:ый|ых) батч(?:а|ей)?"), converters={"count": int})
def open_batches(runner: Runner, count: int) -> None:
    assert runner.stats()["open_batches"] == count


REALTIME_REPORT = Path(__file__).resolve().parents[2] / "out" / "realtime-timeout.json"


@given("настоящие часы и настоящий Redis")
def wall_clock(setup: Setup, request: pytest.FixtureRequest) -> None:
    # Skipped here, in the scenario's first step, not at collection: the cucumber JSON then lists it too.
    markexpr = str(request.config.getoption("markexpr", "") or "")
    if os.environ.get("AIADMIN_REALTIME") != "1" and ("realtime" not in markexpr or "not realtime" in markexpr):
        pytest.skip("@realtime runs on the wall clock: select it with -m realtime or AIADMIN_REALTIME=1")
    if setup.redis is None:
        pytest.skip("@realtime needs a real Redis: --redis-url or AIADMIN_FEATURES_REDIS_URL")
    setup.realtime = True


@then(
    parsers.re(r"батч сбрасывается через (?P<low>\d+)–(?P<high>\d+) мс после последнего сообщения"),
    converters={"low": int, "high": int},
)
def flushed_on_time(runner: Runner, low: int, high: int) -> None:
    deadline = runner.last_sent_s + high / 1000 + 5
    while runner.stats()["batches_flushed"] < 1 and time.perf_counter() < deadline:
        runner.wait(0.01)
    flushed = time.perf_counter()
    delay_ms = (flushed - runner.last_sent_s) * 1000
    timeout_ms = 9000
    REALTIME_REPORT.parent.mkdir(exist_ok=True)
    REALTIME_REPORT.write_text(
        json.dumps(
            {
                "batch_timeout_ms": timeout_ms,
                "delay_ms": round(delay_ms, 1),
                "lateness_ms": round(delay_ms - timeout_ms, 1),
                "bounds_ms": [low, high],
                "poll_interval_ms": 10,
                "stats": runner.stats(),
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    assert low <= delay_ms <= high, f"flushed {delay_ms:.1f} ms after the last message"

"""Evaluating a model behind the system: its counters read from /metrics, before and after a run."""

from __future__ import annotations

import pytest

from simulator.model_eval import ModelUsage, Prices, model_summary, usage_of
from system.metrics import Metrics


def exposition(*, turns: int, ok: int, malformed: int, good: int, bad: int, prompt: int, completion: int) -> str:
    """A worker's real /metrics text after the given counts (the system's own registry, not a hand-written text)."""
    m = Metrics()
    m.jobs.labels("done").inc(turns)
    m.llm_completions.labels("ok").inc(ok)
    m.llm_completions.labels("malformed").inc(malformed)
    m.llm_tool_calls.labels("ok").inc(good)
    m.llm_tool_calls.labels("invalid_arguments").inc(bad)
    m.llm_tokens.labels("prompt").inc(prompt)
    m.llm_tokens.labels("completion").inc(completion)
    return m.render().decode()


def test_usage_is_read_from_the_workers_metrics_and_diffed_over_the_run() -> None:
    before = usage_of(exposition(turns=2, ok=4, malformed=0, good=2, bad=0, prompt=4000, completion=100))
    after = usage_of(exposition(turns=12, ok=34, malformed=2, good=20, bad=2, prompt=64000, completion=1100))
    run = after - before
    assert run == ModelUsage(
        completions=32,
        malformed_completions=2,
        tool_calls=20,
        bad_tool_calls=2,
        prompt_tokens=60000,
        completion_tokens=1000,
        turns=10,
    )
    summary = model_summary(run, bookings=4, prices=Prices(input_per_1m=0.27, output_per_1m=1.10))
    assert summary["tokens_per_turn"] == 6100
    assert summary["model_calls_per_turn"] == 3.2
    assert summary["malformed_tool_call_rate"] == pytest.approx(4 / 22, abs=1e-4)
    assert summary["cost"] == pytest.approx((60000 * 0.27 + 1000 * 1.10) / 1e6)
    assert summary["cost_per_booked_visit"] == pytest.approx(summary["cost"] / 4)


def test_a_run_without_turns_or_prices_reports_no_rates_instead_of_dividing_by_zero() -> None:
    summary = model_summary(ModelUsage(), bookings=0, prices=None)
    assert summary["tokens_per_turn"] is None and summary["malformed_tool_call_rate"] is None
    assert summary["cost_per_booked_visit"] is None

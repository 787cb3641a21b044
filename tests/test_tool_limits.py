"""The tool-call budget of one turn: pure decisions, no I/O."""

from __future__ import annotations

from system.turn.tool_limits import Refusal, ToolBudget, ToolLimits


def test_calls_past_the_per_completion_limit_are_refused() -> None:
    budget = ToolBudget(ToolLimits(per_completion=2, per_turn=10, bookings_per_turn=1))
    assert [budget.admit("search_slots", position=i) for i in range(3)] == [None, None, Refusal.PER_COMPLETION]


def test_calls_past_the_per_turn_limit_are_refused_across_answers() -> None:
    budget = ToolBudget(ToolLimits(per_completion=8, per_turn=3, bookings_per_turn=1))
    for position in range(3):
        assert budget.admit("list_services", position=position) is None
        budget.spent("list_services", {"services": []})
    assert budget.admit("list_services", position=0) is Refusal.PER_TURN


def test_only_a_booking_made_counts_against_the_bookings_limit() -> None:
    budget = ToolBudget(ToolLimits(per_completion=8, per_turn=16, bookings_per_turn=1))
    budget.spent("create_booking", {"error": "это время занято"})  # a failed attempt: the model may try another slot
    assert budget.admit("create_booking", position=1) is None
    budget.spent("create_booking", {"booked": {"record_id": 1}})
    assert budget.admit("create_booking", position=2) is Refusal.BOOKINGS
    assert budget.admit("list_my_bookings", position=3) is None  # other tools still run


def test_a_refusal_tells_the_model_the_limit() -> None:
    budget = ToolBudget(ToolLimits(per_completion=8, per_turn=16, bookings_per_turn=1))
    result = budget.refusal_result(Refusal.PER_COMPLETION)
    assert result["refused"] == "per_completion" and "8" in result["error"]

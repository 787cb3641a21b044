"""What one model answer, and one turn, may do with the tools: the excess is refused, never executed.

A crafted or confused model answer must not turn one client message into dozens of bookings or
hundreds of CRM requests (YClients allows 200 requests a minute per IP, shared by every salon).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from system.settings import Settings

BOOKING_TOOL = "create_booking"


class Refusal(StrEnum):
    """Why a tool call was not executed (the metric's label)."""

    PER_COMPLETION = "per_completion"
    PER_TURN = "per_turn"
    BOOKINGS = "bookings"


# Said back to the model as the tool's result: what happened and what to do instead.
_EXPLAINED = {
    Refusal.PER_COMPLETION: (
        "вызов не выполнен: в одном ответе можно сделать не больше {limit} вызовов инструментов. "
        "Выполнены только первые; повторите нужные вызовы по одному, если они ещё нужны."
    ),
    Refusal.PER_TURN: (
        "вызов не выполнен: лимит вызовов инструментов на одно сообщение клиента ({limit}) исчерпан. "
        "Ответьте клиенту тем, что уже известно."
    ),
    Refusal.BOOKINGS: (
        "запись не создана: лимит новых записей на одно сообщение клиента ({limit}) исчерпан. "
        "Подтвердите клиенту уже созданную запись и предложите оформить следующий визит в следующем сообщении."
    ),
}


@dataclass(frozen=True, slots=True)
class ToolLimits:
    """The limits of one turn's tool calls (the AIADMIN_LLM_MAX_TOOL_CALLS* and MAX_BOOKINGS_PER_TURN settings)."""

    per_completion: int  # tool calls executed of one model answer
    per_turn: int  # tool calls executed in one turn, over all its model answers
    bookings_per_turn: int  # bookings made (or found made by this turn) before create_booking is refused

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolLimits:
        return cls(
            per_completion=settings.llm_max_tool_calls,
            per_turn=settings.llm_max_tool_calls_per_turn,
            bookings_per_turn=settings.max_bookings_per_turn,
        )


class ToolBudget:
    """The tool calls one turn has left; `admit` decides, `spent` records what an executed call did."""

    def __init__(self, limits: ToolLimits) -> None:
        self._limits = limits
        self._calls = 0
        self._bookings = 0

    def admit(self, name: str, *, position: int) -> Refusal | None:
        """None when the call at `position` (0-based) of its model answer may run; else why not."""
        if position >= self._limits.per_completion:
            return Refusal.PER_COMPLETION
        if self._calls >= self._limits.per_turn:
            return Refusal.PER_TURN
        if name == BOOKING_TOOL and self._bookings >= self._limits.bookings_per_turn:
            return Refusal.BOOKINGS
        return None

    def spent(self, name: str, result: dict[str, Any]) -> None:
        self._calls += 1
        # A booking found already made by this turn (a redelivery) counts as well: one turn, one visit.
        if name == BOOKING_TOOL and "booked" in result:
            self._bookings += 1

    def refusal_result(self, refusal: Refusal) -> dict[str, Any]:
        """The tool result the model sees for a refused call."""
        limit = {
            Refusal.PER_COMPLETION: self._limits.per_completion,
            Refusal.PER_TURN: self._limits.per_turn,
            Refusal.BOOKINGS: self._limits.bookings_per_turn,
        }[refusal]
        return {"error": _EXPLAINED[refusal].format(limit=limit), "refused": refusal.value}

"""A chat-completions request read as the fake LLM's policy sees it: prompt facts, history, this turn's tool steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from simulator.nlu import PromptFacts, parse_prompt

ARG_ERROR = "неверные аргументы"  # system.turn.tools' answer to arguments it cannot read: the call did not happen


@dataclass(frozen=True, slots=True)
class Step:
    """One tool call of this turn with its result."""

    name: str
    args: dict[str, Any]
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Turn:
    """The request as the policy sees it."""

    facts: PromptFacts
    text: str
    history: tuple[tuple[str, str], ...]  # (role, text) before the client's current message
    steps: tuple[Step, ...]
    tools: frozenset[str]

    def results(self, name: str) -> list[dict[str, Any]]:
        return [s.result for s in self.steps if s.name == name]

    def last(self, name: str) -> dict[str, Any] | None:
        found = self.results(name)
        return found[-1] if found else None

    def last_reply(self) -> str:
        return next((text for role, text in reversed(self.history) if role == "assistant"), "")


@dataclass(frozen=True, slots=True)
class Say:
    text: str


@dataclass(frozen=True, slots=True)
class Calls:
    calls: tuple[tuple[str, dict[str, Any]], ...]


Decision = Say | Calls


def call(name: str, /, **args: Any) -> Calls:
    return Calls(((name, {k: v for k, v in args.items() if v is not None}),))


def read_turn(messages: list[dict[str, Any]], tools: frozenset[str]) -> Turn:
    """Split the messages into prompt, history, the current client message and this turn's tool steps."""
    system = next((str(m.get("content") or "") for m in messages if m.get("role") == "system"), "")
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    history = tuple(
        (str(m["role"]), str(m.get("content") or ""))
        for m in messages[: max(last_user, 0)]
        if m.get("role") in ("user", "assistant") and m.get("content")
    )
    pending: dict[str, tuple[str, dict[str, Any] | None]] = {}
    steps: list[Step] = []
    for m in messages[last_user + 1 :]:
        for tc in m.get("tool_calls") or () if m.get("role") == "assistant" else ():
            function = tc.get("function") or {}
            pending[str(tc.get("id"))] = (str(function.get("name")), _json_object(function.get("arguments")))
        if m.get("role") == "tool" and str(m.get("tool_call_id")) in pending:
            name, args = pending.pop(str(m.get("tool_call_id")))
            result = _json_object(m.get("content")) or {"error": "пустой ответ инструмента"}
            if args is not None and not str(result.get("error", "")).startswith(ARG_ERROR):
                steps.append(Step(name, args, result))
    text = str(messages[last_user].get("content") or "") if last_user >= 0 else ""
    return Turn(parse_prompt(system), text, history, tuple(steps), tools)


def _json_object(raw: Any) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None

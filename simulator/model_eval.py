"""A model behind a separately running system, judged by what the system counted: `/metrics` before and after.

`aiadmin simulate --system-url` reads the worker's counters (the api's `/metrics` under `aiadmin run`, or each
worker's `--metrics-port`) at the start and at the end of the run, and reports per answered turn the tokens the
provider reported, the model calls, the share of malformed tool calls, and, at a given price per token, what
one booked visit cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import httpx
from prometheus_client.parser import text_string_to_metric_families

# The worker's counters (system/metrics.py), by the sample they are read from.
_SAMPLES = {
    "completions": ("aiadmin_llm_completions_total", None),
    "malformed_completions": ("aiadmin_llm_completions_total", ("outcome", "malformed")),
    "tool_calls": ("aiadmin_llm_tool_calls_total", None),
    "bad_tool_calls": ("aiadmin_llm_tool_calls_total", ("outcome", "!ok")),
    "prompt_tokens": ("aiadmin_llm_tokens_total", ("kind", "prompt")),
    "completion_tokens": ("aiadmin_llm_tokens_total", ("kind", "completion")),
    "turns": ("aiadmin_jobs_total", ("outcome", "done")),
}


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Counter totals of one or more processes (or their growth over a run)."""

    completions: float = 0.0  # answers of the model, malformed ones included
    malformed_completions: float = 0.0  # answers whose tool calls could not be parsed at all
    tool_calls: float = 0.0
    bad_tool_calls: float = 0.0  # an unknown tool, or arguments that are not valid for it
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    turns: float = 0.0  # turns the workers finished

    def __add__(self, other: ModelUsage) -> ModelUsage:
        return ModelUsage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: ModelUsage) -> ModelUsage:
        return ModelUsage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class Prices:
    """A provider's prices, per million tokens (any one currency)."""

    input_per_1m: float
    output_per_1m: float


def usage_of(exposition: str) -> ModelUsage:
    """The counters in one Prometheus text exposition; absent ones count 0."""
    totals = dict.fromkeys(_SAMPLES, 0.0)
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            for field, (name, label) in _SAMPLES.items():
                if sample.name == name and _matches(sample.labels, label):
                    totals[field] += sample.value
    return ModelUsage(**totals)


def _matches(labels: dict[str, str], wanted: tuple[str, str] | None) -> bool:
    if wanted is None:
        return True
    key, value = wanted
    if value.startswith("!"):
        return labels.get(key) != value[1:]
    return labels.get(key) == value


async def read_usage(client: httpx.AsyncClient, urls: Sequence[str]) -> ModelUsage:
    """The counters summed over every process's `/metrics`."""
    total = ModelUsage()
    for url in urls:
        response = await client.get(url)
        response.raise_for_status()
        total += usage_of(response.text)
    return total


def model_summary(usage: ModelUsage, *, bookings: int, prices: Prices | None) -> dict[str, float | None]:
    """Per answered turn: tokens and model calls; the malformed tool-call rate; the cost per booked visit."""
    turns = usage.turns or None
    attempts = usage.tool_calls + usage.malformed_completions
    cost = None
    if prices is not None:
        cost = (usage.prompt_tokens * prices.input_per_1m + usage.completion_tokens * prices.output_per_1m) / 1e6
    return {
        "turns": usage.turns,
        "tokens_per_turn": round((usage.prompt_tokens + usage.completion_tokens) / turns, 1) if turns else None,
        "prompt_tokens_per_turn": round(usage.prompt_tokens / turns, 1) if turns else None,
        "completion_tokens_per_turn": round(usage.completion_tokens / turns, 1) if turns else None,
        "model_calls_per_turn": round(usage.completions / turns, 2) if turns else None,
        "malformed_tool_call_rate": round((usage.bad_tool_calls + usage.malformed_completions) / attempts, 4)
        if attempts
        else None,
        "cost": None if cost is None else round(cost, 6),
        "cost_per_booked_visit": None if cost is None or not bookings else round(cost / bookings, 6),
    }

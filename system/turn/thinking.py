"""The bounded LLM loop of one turn: the prompt, the model's calls, the tools run for this client only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog

from system.booking.base import BookingBackend, Master, Service
from system.clock import Clock
from system.errors import BookingError
from system.metrics import Metrics
from system.models import Job
from system.settings import Settings, Tenant
from system.turn.context import Context
from system.turn.dates import salon_now
from system.turn.llm import (
    Completion,
    LLMClient,
    MalformedToolCall,
    ToolCall,
    assistant_message,
    system_message,
    tool_message,
)
from system.turn.prompt import conversation, system_prompt
from system.turn.stale import WRITE_TOOLS, Overtaken, TurnEffects
from system.turn.tool_limits import ToolBudget, ToolLimits
from system.turn.tools import BookingTools, TurnState

log = structlog.get_logger(__name__)

CONFUSED_REPLY = (
    "Простите, не совсем понял 🙈 Подскажите, пожалуйста: хотите записаться, перенести или отменить запись?"
)


class Thinker:
    """Asks the model, runs the tools it calls within the limits, and returns its answer."""

    def __init__(
        self, *, settings: Settings, llm: LLMClient, backend: BookingBackend, clock: Clock, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._llm = llm
        self._backend = backend
        self._clock = clock
        self._metrics = metrics
        self._limits = ToolLimits.from_settings(settings)
        self._schemas = BookingTools(backend, clock=clock).schemas()  # built once: the same for every turn

    async def think(
        self,
        job: Job,
        tenant: Tenant,
        context: Context,
        state: TurnState,
        effects: TurnEffects,
        *,
        overtaken: Callable[[], Awaitable[bool]],
    ) -> str:
        """The model's answer; tool calls run for this client only, their writes noted in `effects`.

        Raises `Overtaken` instead of making the turn's first booking change when `overtaken()` says the client
        has written again meanwhile: the next turn decides with everything the client said.
        """
        tools = BookingTools(effects, clock=self._clock)  # this turn's: its CRM notes the turn's writes
        services, masters = await self._catalogue(job.company_id)
        now = salon_now(self._clock, tenant.timezone)
        prompt = system_prompt(
            salon_name=tenant.name,
            now=now,
            working_hours=tenant.working_hours,
            services=services,
            masters=masters,
            context=context,
        )
        messages = joined_client_turns(
            conversation(prompt, context, job, max_client_chars=self._settings.max_message_chars)
        )
        schemas = self._schemas
        budget = ToolBudget(self._limits)
        for _ in range(self._settings.llm_max_tool_rounds):
            try:
                with self._metrics.llm_seconds.time():
                    completion = await self._llm.complete(messages, tools=schemas)
            except MalformedToolCall as exc:
                self._metrics.llm_completions.labels("malformed").inc()
                messages.append(system_message(f"Твой вызов инструмента не разобрать ({exc}). Повтори корректно."))
                continue
            self._count(completion, tools)
            if completion.tool_calls:
                messages.append(assistant_message(completion.content, completion.tool_calls))
                results = await self._run_tools(completion.tool_calls, budget, state, tools, effects, overtaken)
                messages.extend(tool_message(call.id, orjson.dumps(result).decode()) for call, result in results)
                continue
            if completion.content and completion.content.strip():
                return completion.content.strip()
            break
        return CONFUSED_REPLY

    def _count(self, completion: Completion, tools: BookingTools) -> None:
        self._metrics.llm_completions.labels("ok").inc()
        for kind in ("prompt", "completion"):
            if tokens := completion.usage.get(f"{kind}_tokens"):
                self._metrics.llm_tokens.labels(kind).inc(tokens)
        for call in completion.tool_calls:
            self._metrics.llm_tool_calls.labels(tools.problem_of(call.name, call.arguments) or "ok").inc()

    async def _run_tools(
        self,
        calls: tuple[ToolCall, ...],
        budget: ToolBudget,
        state: TurnState,
        tools: BookingTools,
        effects: TurnEffects,
        overtaken: Callable[[], Awaitable[bool]],
    ) -> list[tuple[ToolCall, dict[str, Any]]]:
        """Each call's result; a call over a limit is not executed, its result is an error the model reads."""
        results: list[tuple[ToolCall, dict[str, Any]]] = []
        refused: dict[str, int] = {}  # by reason
        for position, call in enumerate(calls):
            refusal = budget.admit(call.name, position=position)
            if refusal is None:
                if call.name in WRITE_TOOLS and not effects.changed and await overtaken():
                    raise Overtaken(f"{call.name} {call.arguments}")
                result = await tools.call(call.name, call.arguments, state)
                budget.spent(call.name, result)
                effects.saw(call.name, result)
            else:
                result = budget.refusal_result(refusal)
                refused[refusal.value] = refused.get(refusal.value, 0) + 1
            results.append((call, result))
        for reason, count in refused.items():
            self._metrics.tool_calls_refused.labels(reason).inc(count)
        if refused:
            log.warning("tool_calls_refused", batch_id=state.batch_id, calls=len(calls), **refused)
        return results

    async def _catalogue(self, company_id: int) -> tuple[list[Service], list[Master]]:
        """Services and masters for the prompt; a CRM outage leaves them to the tools."""
        try:
            return await self._backend.services(company_id), await self._backend.masters(company_id)
        except BookingError as exc:
            log.warning("catalogue_unavailable", company_id=company_id, error=type(exc).__name__)
            return [], []


def joined_client_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Successive client messages joined into one, a line each.

    A dropped stale draft leaves the client's text with no answer before this turn's; some providers refuse two
    user messages in a row (deepseek-reasoner: "does not support successive user or assistant messages").
    """
    joined: list[dict[str, Any]] = []
    for message in messages:
        previous = joined[-1] if joined else None
        if previous is not None and message.get("role") == previous.get("role") == "user":
            joined[-1] = {**previous, "content": f"{previous['content']}\n{message['content']}"}
        else:
            joined.append(message)
    return joined

"""What a turn does with each kind of WhatsApp refusal, as README "Failures" says: retry, or dead letter at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import structlog

from simulator.clock import VirtualClock
from system.models import InboundMessage
from system.runtime import Runtime, build_worker
from system.turn.worker import Worker

from .conftest import next_turn
from .world import World, say, world_env

Factory = Callable[..., InboundMessage]
CLIENT = "79001234567"
REPLY = "Здравствуйте! Мужская стрижка стоит 1500 ₽."


pytestmark = pytest.mark.usefixtures("driven")  # backoffs and rate limits on the clock end at once


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def rt(make_runtime: Callable[..., Runtime]) -> Runtime:
    runtime = make_runtime(**world_env())
    await runtime.start()
    return runtime


@pytest.fixture
async def worker(rt: Runtime, world: World) -> AsyncIterator[Worker]:
    """One worker, one turn at a time, its clients talking to `world`."""
    async with world.http() as http:
        yield build_worker(rt, http=http, consumer="w1", concurrency=1)


async def test_account_maintenance_131057_is_retried_and_the_reply_goes_out(
    rt: Runtime, worker: Worker, world: World, clock: VirtualClock, message: Factory
) -> None:
    world.whatsapp_errors.append((500, 131057))
    world.llm_answers.append(say(REPLY))
    await worker.handle(await next_turn(rt, clock, message, "Сколько стоит стрижка?"))
    assert world.sent == [(CLIENT, REPLY)]
    assert await rt.queue.dead_letters() == []


@pytest.mark.parametrize(
    ("status", "code", "logged"),
    [
        (401, 190, "whatsapp_token_expired"),
        (400, 131048, "whatsapp_account_restricted"),
        (403, 368, "whatsapp_account_restricted"),
    ],
)
async def test_token_and_account_errors_dead_letter_the_job_at_once_with_an_error_log(
    rt: Runtime,
    worker: Worker,
    world: World,
    clock: VirtualClock,
    message: Factory,
    status: int,
    code: int,
    logged: str,
) -> None:
    # Every send fails until a human acts: the job is not retried (which would only delay the alarm) but kept
    # in the dead letters, to be replayed once the token is renewed or the account fixed.
    world.whatsapp_errors.append((status, code))
    world.llm_answers.append(say(REPLY))
    with structlog.testing.capture_logs() as logs:
        await worker.handle(await next_turn(rt, clock, message, "Сколько стоит стрижка?"))
    assert world.sent == []
    [letter] = await rt.queue.dead_letters()
    assert str(code) in letter.error
    assert await rt.queue.in_flight() == 0
    assert logged in [e["event"] for e in logs if e["log_level"] == "error"]

"""Reliability: the language model, WhatsApp or Redis failing, and a flood from one sender."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from harness import RedisTarget, Runner, Setup
from pytest_bdd import given, parsers, then, when

from simulator.fake_llm import LlmFaults
from simulator.redis_server import RedisServer
from simulator.redis_target import check_target


@given("the language model answers every request with a server error")
def llm_down(setup: Setup) -> None:
    setup.llm_faults = LlmFaults(server_error=1.0)


@given(parsers.parse("the number {phone} is exempt from rate limits"))
def allowlisted(setup: Setup, phone: str) -> None:
    setup.env["AIADMIN_RATE_LIMIT_ALLOWLIST"] = phone


@when(parsers.parse("WhatsApp refuses the next message with error {code:d}"))
def refuse_next(runner: Runner, code: int) -> None:
    runner.whatsapp_faults.fail_next(code)


@when(parsers.parse("the client {phone} has not written for more than 24 hours as far as WhatsApp knows"))
def outside_window(runner: Runner, phone: str) -> None:
    runner.whatsapp_faults.outside_window.add(phone)


@when(parsers.parse("the client {phone} floods the webhook with {count:d} messages at once"), target_fixture="statuses")
def flood(runner: Runner, phone: str, count: int) -> list[int]:
    return [runner.post_webhook(runner.text_webhook(phone, f"сообщение {i}")).status_code for i in range(count)]


@then(parsers.parse("the webhook takes the first {taken:d} and answers 429 to the other {refused:d}"))
def first_taken_rest_refused(statuses: list[int], taken: int, refused: int) -> None:
    assert statuses == [200] * taken + [429] * refused, statuses


@then(parsers.parse("the webhook takes all {count:d}"))
def all_taken(statuses: list[int], count: int) -> None:
    assert statuses == [200] * count, statuses


@then(parsers.parse('the client {phone} gets an apology "{text}"'))
def apology(runner: Runner, phone: str, text: str) -> None:
    [reply] = runner.replies_to(phone)
    assert text in reply, reply


@then(parsers.parse("the stats show {count:d} dead letter"))
@then(parsers.parse("the stats show {count:d} dead letters"))
def dead_letters(runner: Runner, count: int) -> None:
    assert runner.stats()["dead_letters"] == count


@then(parsers.parse("WhatsApp refused {count:d} message with error {code:d}"))
@then(parsers.parse("WhatsApp refused {count:d} messages with error {code:d}"))
def refused(runner: Runner, count: int, code: int) -> None:
    assert len(runner.refusals(code)) == count, runner.refusals(code)


@given("Redis can be switched off from the test")
def redis_switchable(setup: Setup, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if setup.redis is not None:
        # The suite's shared server is never switched off: on a real Redis the scenario starts one of its own.
        own_redis_server(setup, request, tmp_path)


def own_redis_server(setup: Setup, request: pytest.FixtureRequest, directory: Path) -> None:
    """Point the scenario at a redis-server of its own, stopped (killed) when the scenario ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but there is no redis-server binary for a scenario's own Redis")
        pytest.skip("no redis-server binary for a scenario's own Redis")
    server = RedisServer(binary, directory)
    request.addfinalizer(server.close)  # after the runner's close, which was set up later
    server.start()
    setup.redis = RedisTarget(check_target(server.url, owner="pytest features", force=False), flush=True)
    setup.own_server = server


@when("Redis becomes unreachable")
def redis_down(runner: Runner) -> None:
    runner.redis_off()


@when("Redis is reachable again")
def redis_up(runner: Runner) -> None:
    runner.redis_on()


@then(parsers.parse("a webhook from the client {phone} is answered 503 with a Retry-After"))
def answered_503(runner: Runner, phone: str) -> None:
    response = runner.post_webhook(runner.text_webhook(phone, "Алло?"))
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after"), response.headers


@given(parsers.parse("a job whose worker went silent is taken over after {seconds:d} seconds"))
def visibility_timeout(setup: Setup, seconds: int) -> None:
    if setup.redis is not None:
        # A real Redis measures a job's idleness on its own wall clock, which a virtual clock cannot move: the
        # scenario runs on the wall clock and waits the reclaim out (about two minutes).
        setup.realtime = True
    setup.env["AIADMIN_VISIBILITY_TIMEOUT_S"] = str(seconds)
    setup.env["AIADMIN_WORKER_IDLE_POLL_S"] = str(seconds // 3)  # the survivors look for abandoned jobs this often


@when("the worker dies mid-turn")
def worker_dies(runner: Runner) -> None:
    runner.kill_worker()


@when("another worker starts")
def another_worker(runner: Runner) -> None:
    runner.start_worker("qa-survivor")

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


@given("языковая модель отвечает на каждый запрос ошибкой сервера")
def llm_down(setup: Setup) -> None:
    setup.llm_faults = LlmFaults(server_error=1.0)


@given(parsers.parse("номер {phone} освобождён от ограничений частоты"))
def allowlisted(setup: Setup, phone: str) -> None:
    setup.env["AIADMIN_RATE_LIMIT_ALLOWLIST"] = phone


@when(parsers.parse("WhatsApp отклоняет следующее сообщение с ошибкой {code:d}"))
def refuse_next(runner: Runner, code: int) -> None:
    runner.whatsapp_faults.fail_next(code)


@when(parsers.parse("клиент {phone}, насколько известно WhatsApp, не писал больше 24 часов"))
def outside_window(runner: Runner, phone: str) -> None:
    runner.whatsapp_faults.outside_window.add(phone)


@when(parsers.parse("клиент {phone} засыпает вебхук {count:d} сообщениями разом"), target_fixture="statuses")
def flood(runner: Runner, phone: str, count: int) -> list[int]:
    return [runner.post_webhook(runner.text_webhook(phone, f"сообщение {i}")).status_code for i in range(count)]


@then(parsers.parse("вебхук принимает первые {taken:d} и отвечает 429 на остальные {refused:d}"))
def first_taken_rest_refused(statuses: list[int], taken: int, refused: int) -> None:
    assert statuses == [200] * taken + [429] * refused, statuses


@then(parsers.parse("вебхук принимает все {count:d}"))
def all_taken(statuses: list[int], count: int) -> None:
    assert statuses == [200] * count, statuses


@then(parsers.parse('клиент {phone} получает извинение "{text}"'))
def apology(runner: Runner, phone: str, text: str) -> None:
    [reply] = runner.replies_to(phone)
    assert text in reply, reply


@then(parsers.re(r"статистика показывает (?P<count>\d+) мёртв(?:ое|ых) пис(?:ьмо|ем|ьма)"), converters={"count": int})
def dead_letters(runner: Runner, count: int) -> None:
    assert runner.stats()["dead_letters"] == count


@then(
    parsers.re(r"WhatsApp отклонил (?P<count>\d+) сообщени(?:е|я|й) с ошибкой (?P<code>\d+)"),
    converters={"count": int, "code": int},
)
def refused(runner: Runner, count: int, code: int) -> None:
    assert len(runner.refusals(code)) == count, runner.refusals(code)


@given("Redis можно выключить из теста")
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


@when("Redis становится недоступен")
def redis_down(runner: Runner) -> None:
    runner.redis_off()


@when("Redis снова доступен")
def redis_up(runner: Runner) -> None:
    runner.redis_on()


@then(parsers.parse("на вебхук от клиента {phone} приходит ответ 503 с Retry-After"))
def answered_503(runner: Runner, phone: str) -> None:
    response = runner.post_webhook(runner.text_webhook(phone, "Алло?"))
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after"), response.headers


@given(parsers.parse("задание, чей воркер замолчал, перехватывается через {seconds:d} секунд"))
def visibility_timeout(setup: Setup, seconds: int) -> None:
    if setup.redis is not None:
        # A real Redis measures a job's idleness on its own wall clock, which a virtual clock cannot move: the
        # scenario runs on the wall clock and waits the reclaim out (about two minutes).
        setup.realtime = True
    setup.env["AIADMIN_VISIBILITY_TIMEOUT_S"] = str(seconds)
    setup.env["AIADMIN_WORKER_IDLE_POLL_S"] = str(seconds // 3)  # the survivors look for abandoned jobs this often


@when("воркер умирает посреди хода")
def worker_dies(runner: Runner) -> None:
    runner.kill_worker()


@when("запускается другой воркер")
def another_worker(runner: Runner) -> None:
    runner.start_worker("qa-survivor")

"""The webhook's edge: signatures, malformed bodies and redelivered messages."""

from __future__ import annotations

import httpx
from harness import Runner
from pytest_bdd import parsers, then, when


@when(parsers.parse('сообщение от {phone} "{text}" приходит без подписи'), target_fixture="response")
def unsigned_message(runner: Runner, phone: str, text: str) -> httpx.Response:
    return runner.post_webhook(runner.text_webhook(phone, text), secret=None)


@when(
    parsers.parse('сообщение от {phone} "{text}" приходит с подписью секретом "{secret}"'),
    target_fixture="response",
)
def wrongly_signed_message(runner: Runner, phone: str, text: str, secret: str) -> httpx.Response:
    return runner.post_webhook(runner.text_webhook(phone, text), secret=secret)


@when(parsers.parse("на вебхук приходит подписанное тело {body}"), target_fixture="response")
def signed_body(runner: Runner, body: str) -> httpx.Response:
    return runner.post_webhook(body.encode())


@when(parsers.re(r'клиент (?P<phone>\d+) пишет "(?P<text>[^"]*)" сообщением "(?P<message_id>[^"]+)"'))
def client_writes_message(runner: Runner, phone: str, text: str, message_id: str) -> None:
    assert runner.send(phone, text, message_id=message_id) == 200


@when(parsers.parse('WhatsApp повторно доставляет сообщение "{message_id}"'))
def delivered_again(runner: Runner, message_id: str) -> None:
    assert runner.redeliver(message_id) == 200


@then(parsers.re(r'вебхук отвечает (?P<status>\d+) с ошибкой "(?P<error>[^"]+)"'), converters={"status": int})
def answers_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


@then(
    parsers.re(r'вебхук отвечает (?P<status>\d+) с ошибкой "(?P<error>[^"]+)" и называет "(?P<problem>[^"]+)"'),
    converters={"status": int},
)
def answers_error_naming(response: httpx.Response, status: int, error: str, problem: str) -> None:
    answers_error(response, status, error)
    body = response.json()
    named = [body["message"], *(e["field"] for e in body["errors"])]
    assert any(problem in text for text in named), body


@then(parsers.re(r"статистика показывает (?P<count>\d+) принят(?:ое|ых) сообщени(?:е|я|й)"), converters={"count": int})
def accepted(runner: Runner, count: int) -> None:
    assert runner.stats()["accepted_messages"] == count


@then(
    parsers.re(
        r"статистика показывает (?P<accepted>\d+) принят(?:ое|ых) сообщени(?:е|я|й)"
        r" и (?P<duplicates>\d+) дубликат(?:а|ов)?"
    ),
    converters={"accepted": int, "duplicates": int},
)
def accepted_and_duplicates(runner: Runner, accepted: int, duplicates: int) -> None:
    stats = runner.stats()
    assert (stats["accepted_messages"], stats["duplicates"]) == (accepted, duplicates)

"""The webhook's edge: signatures, malformed bodies and redelivered messages."""

from __future__ import annotations

import httpx
from harness import Runner
from pytest_bdd import parsers, then, when


@when(parsers.parse('a message from {phone} "{text}" arrives without a signature'), target_fixture="response")
def unsigned_message(runner: Runner, phone: str, text: str) -> httpx.Response:
    return runner.post_webhook(runner.text_webhook(phone, text), secret=None)


@when(
    parsers.parse('a message from {phone} "{text}" arrives signed with the secret "{secret}"'),
    target_fixture="response",
)
def wrongly_signed_message(runner: Runner, phone: str, text: str, secret: str) -> httpx.Response:
    return runner.post_webhook(runner.text_webhook(phone, text), secret=secret)


@when(parsers.parse("the signed body {body} arrives at the webhook"), target_fixture="response")
def signed_body(runner: Runner, body: str) -> httpx.Response:
    return runner.post_webhook(body.encode())


@when(parsers.re(r'the client (?P<phone>\d+) writes "(?P<text>[^"]*)" as message "(?P<message_id>[^"]+)"'))
def client_writes_message(runner: Runner, phone: str, text: str, message_id: str) -> None:
    assert runner.send(phone, text, message_id=message_id) == 200


@when(parsers.parse('WhatsApp delivers message "{message_id}" again'))
def delivered_again(runner: Runner, message_id: str) -> None:
    assert runner.redeliver(message_id) == 200


@then(parsers.parse('the webhook answers {status:d} with the error "{error}"'))
def answers_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


@then(parsers.parse('the webhook answers {status:d} with the error "{error}" naming "{problem}"'))
def answers_error_naming(response: httpx.Response, status: int, error: str, problem: str) -> None:
    answers_error(response, status, error)
    body = response.json()
    named = [body["message"], *(e["field"] for e in body["errors"])]
    assert any(problem in text for text in named), body


@then(parsers.parse("the stats show {count:d} messages accepted"))
def accepted(runner: Runner, count: int) -> None:
    assert runner.stats()["accepted_messages"] == count


@then(parsers.parse("the stats show {accepted:d} message accepted and {duplicates:d} duplicate"))
@then(parsers.parse("the stats show {accepted:d} message accepted and {duplicates:d} duplicates"))
def accepted_and_duplicates(runner: Runner, accepted: int, duplicates: int) -> None:
    stats = runner.stats()
    assert (stats["accepted_messages"], stats["duplicates"]) == (accepted, duplicates)

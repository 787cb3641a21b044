"""Steps every area shares: the client writes, time passes, the administrator answers, the stats tell.

The feature files are Russian Gherkin (`# language: ru`): step texts are matched in Russian, so a count's noun
takes any of its forms ("1 ответ", "2 ответа", "0 ответов") and a fraction may be written with a comma ("8,9").
"""

from __future__ import annotations

from harness import Runner
from pytest_bdd import parsers, then, when

QUICK_GAP_S = 0.3  # "quickly": well under the reference's one second between fragments


def number(text: str) -> float:
    """A number as Russian writes it: "8,9" or "8.9"."""
    return float(text.replace(",", "."))


@when(parsers.re(r'клиент (?P<phone>\d+) пишет "(?P<text>[^"]*)"'))
def client_writes(runner: Runner, phone: str, text: str) -> None:
    assert runner.send(phone, text) == 200


@when(parsers.parse("клиент {phone} быстро пишет"))
def client_quickly_writes(runner: Runner, phone: str, datatable: list[list[str]]) -> None:
    texts = [row[0] for row in datatable[1:]]
    for i, text in enumerate(texts):
        if i:
            runner.wait(QUICK_GAP_S)
        assert runner.send(phone, text) == 200


@when(parsers.re(r"проход(?:ит|ят) (?P<seconds>\d+(?:[.,]\d+)?) секунд[аы]?"), converters={"seconds": number})
def seconds_pass(runner: Runner, seconds: float) -> None:
    runner.wait(seconds)


@when(parsers.parse("администратор отвечает клиенту {phone}"))
def administrator_answers(runner: Runner, phone: str) -> None:
    assert runner.wait_for_reply(phone), f"no reply to {phone} within the time allowed"


@then(parsers.re(r"клиент (?P<phone>\d+) получает (?P<count>\d+) ответ(?:а|ов)?"), converters={"count": int})
def client_gets_replies(runner: Runner, phone: str, count: int) -> None:
    assert len(runner.replies_to(phone)) == count, runner.replies_to(phone)


@then(parsers.re(r"администратор читает (?P<count>\d+) ход(?:а|ов)?"), converters={"count": int})
def administrator_reads_turns(runner: Runner, count: int) -> None:
    assert len(runner.turn_texts()) == count, runner.turn_texts()

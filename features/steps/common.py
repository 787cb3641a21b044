"""Steps every area shares: the client writes, time passes, the administrator answers, the stats tell."""

from __future__ import annotations

from harness import Runner
from pytest_bdd import parsers, then, when

QUICK_GAP_S = 0.3  # "quickly": well under the reference's one second between fragments


@when(parsers.re(r'the client (?P<phone>\d+) writes "(?P<text>[^"]*)"'))
def client_writes(runner: Runner, phone: str, text: str) -> None:
    assert runner.send(phone, text) == 200


@when(parsers.parse("the client {phone} quickly writes"))
def client_quickly_writes(runner: Runner, phone: str, datatable: list[list[str]]) -> None:
    texts = [row[0] for row in datatable[1:]]
    for i, text in enumerate(texts):
        if i:
            runner.wait(QUICK_GAP_S)
        assert runner.send(phone, text) == 200


@when(parsers.parse("{seconds:g} seconds pass"))
def seconds_pass(runner: Runner, seconds: float) -> None:
    runner.wait(seconds)


@when(parsers.parse("the administrator answers the client {phone}"))
def administrator_answers(runner: Runner, phone: str) -> None:
    assert runner.wait_for_reply(phone), f"no reply to {phone} within the time allowed"


@then(parsers.parse("the client {phone} gets {count:d} reply"))
@then(parsers.parse("the client {phone} gets {count:d} replies"))
def client_gets_replies(runner: Runner, phone: str, count: int) -> None:
    assert len(runner.replies_to(phone)) == count, runner.replies_to(phone)


@then(parsers.parse("the administrator reads {count:d} turn"))
@then(parsers.parse("the administrator reads {count:d} turns"))
def administrator_reads_turns(runner: Runner, count: int) -> None:
    assert len(runner.turn_texts()) == count, runner.turn_texts()

"""Batching: fragments merge into one turn after the quiet time; a burst is cut at the batch size."""

from __future__ import annotations

from harness import Runner
from pytest_bdd import parsers, then, when

from steps.common import QUICK_GAP_S


@when(parsers.parse("the client {phone} quickly writes {count:d} messages"))
def client_quickly_writes_many(runner: Runner, phone: str, count: int) -> None:
    for i in range(1, count + 1):
        if i > 1:
            runner.wait(QUICK_GAP_S)
        assert runner.send(phone, f"сообщение {i}") == 200


@then(parsers.parse('the administrator reads one turn "{text}"'))
def one_turn(runner: Runner, text: str) -> None:
    assert runner.turn_texts() == [text]


@then("the administrator reads the turns")
def these_turns(runner: Runner, datatable: list[list[str]]) -> None:
    assert runner.turn_texts() == [row[0] for row in datatable[1:]]


@then(parsers.parse("the stats show {batches:d} batches flushed"))
def batches_flushed(runner: Runner, batches: int) -> None:
    assert runner.stats()["batches_flushed"] == batches


@then(parsers.parse("the stats show {batches:d} batch flushed with {fragments:d} fragments"))
@then(parsers.parse("the stats show {batches:d} batches flushed with {fragments:d} fragments"))
def batches_flushed_with(runner: Runner, batches: int, fragments: int) -> None:
    stats = runner.stats()
    assert (stats["batches_flushed"], stats["fragments_flushed"]) == (batches, fragments)


@then(parsers.parse("the stats show {count:d} open batch"))
@then(parsers.parse("the stats show {count:d} open batches"))
def open_batches(runner: Runner, count: int) -> None:
    assert runner.stats()["open_batches"] == count

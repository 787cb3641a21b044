"""The queue and the worker: one turn at a time per conversation, conversations kept apart."""

from __future__ import annotations

from harness import SECOND_COMPANY_ID, Runner, Setup
from pytest_bdd import given, parsers, then, when

from steps.common import QUICK_GAP_S

SALONS = {"first": 962302, "second": SECOND_COMPANY_ID}


@given(parsers.parse("the administrator takes {seconds:g} seconds to think"))
def administrator_thinks(setup: Setup, seconds: float) -> None:
    setup.llm_latency_s = seconds


@given("the chain has two salons, each with its own WhatsApp number")
def two_salons(setup: Setup) -> None:
    setup.two_salons = True


@when("the clients write at once")
def clients_write_at_once(runner: Runner, datatable: list[list[str]]) -> None:
    for i, (phone, text) in enumerate(datatable[1:]):
        if i:
            runner.wait(QUICK_GAP_S)
        assert runner.send(phone, text) == 200


@when(parsers.re(r'the client (?P<phone>\d+) writes "(?P<text>[^"]*)" to the (?P<salon>first|second) salon'))
def client_writes_to_salon(runner: Runner, phone: str, text: str, salon: str) -> None:
    assert runner.send(phone, text, company=SALONS[salon]) == 200


@then("the administrator reads the turns in any order")
def turns_any_order(runner: Runner, datatable: list[list[str]]) -> None:
    assert sorted(runner.turn_texts()) == sorted(row[0] for row in datatable[1:])


@then(parsers.parse("the second turn began only after the client {phone} got the first reply"))
def second_turn_after_first_reply(runner: Runner, phone: str) -> None:
    turns = runner.llm.turns()
    assert len(turns) == 2, turns
    first_reply_ms = runner.reply_times_ms(phone)[0]
    assert turns[0][1] < first_reply_ms <= turns[1][1], (turns, first_reply_ms)


@then(parsers.parse("the client {phone} gets {count:d} reply from the {salon} salon"))
def replies_from_salon(runner: Runner, phone: str, count: int, salon: str) -> None:
    assert len(runner.replies_from(SALONS[salon], phone)) == count, runner.replies_to(phone)


@then(parsers.parse("the client {phone} has a conversation with each salon"))
def conversation_with_each(runner: Runner, phone: str) -> None:
    for company in SALONS.values():
        assert runner.redis_exists(f"dialog:{company}:{phone}"), company


@then("no turn of the administrator mixes the two salons' messages")
def turns_not_mixed(runner: Runner, datatable: list[list[str]]) -> None:
    texts = [row[0] for row in datatable[1:]]
    heard = dict.fromkeys(texts, 0)
    for body in runner.llm.bodies:
        said = [str(m.get("content")) for m in body["messages"] if m.get("role") == "user"]
        in_turn = [text for text in texts if any(text in s for s in said)]
        assert len(in_turn) <= 1, said
        for text in in_turn:
            heard[text] += 1
    # Each salon's message reached the administrator: with no turns at all there would be nothing to mix.
    assert all(heard.values()), heard

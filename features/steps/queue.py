"""The queue and the worker: one turn at a time per conversation, conversations kept apart."""

from __future__ import annotations

from harness import SECOND_COMPANY_ID, Runner, Setup
from pytest_bdd import given, parsers, then, when

from steps.common import QUICK_GAP_S, number

SALONS = {"first": 962302, "second": SECOND_COMPANY_ID}
# The salons as the feature files name them: "в первый салон", "от второго салона".
SALON_WORDS = {"первый": "first", "первого": "first", "второй": "second", "второго": "second"}


@given(parsers.re(r"администратор думает (?P<seconds>\d+(?:[.,]\d+)?) секунд[аы]?"), converters={"seconds": number})
def administrator_thinks(setup: Setup, seconds: float) -> None:
    setup.llm_latency_s = seconds


@given("в сети два салона, у каждого свой номер WhatsApp")
def two_salons(setup: Setup) -> None:
    setup.two_salons = True


@when("клиенты пишут одновременно")
def clients_write_at_once(runner: Runner, datatable: list[list[str]]) -> None:
    for i, (phone, text) in enumerate(datatable[1:]):
        if i:
            runner.wait(QUICK_GAP_S)
        assert runner.send(phone, text) == 200


@when(parsers.re(r'клиент (?P<phone>\d+) пишет "(?P<text>[^"]*)" во? (?P<salon>первый|второй) салон'))
def client_writes_to_salon(runner: Runner, phone: str, text: str, salon: str) -> None:
    assert runner.send(phone, text, company=SALONS[SALON_WORDS[salon]]) == 200


@then("администратор читает ходы в любом порядке")
def turns_any_order(runner: Runner, datatable: list[list[str]]) -> None:
    assert sorted(runner.turn_texts()) == sorted(row[0] for row in datatable[1:])


@then(parsers.parse("второй ход начался только после того, как клиент {phone} получил первый ответ"))
def second_turn_after_first_reply(runner: Runner, phone: str) -> None:
    turns = runner.llm.turns()
    assert len(turns) == 2, turns
    first_reply_ms = runner.reply_times_ms(phone)[0]
    assert turns[0][1] < first_reply_ms <= turns[1][1], (turns, first_reply_ms)


@then(
    parsers.re(r"клиент (?P<phone>\d+) получает (?P<count>\d+) ответ(?:а|ов)? от (?P<salon>первого|второго) салона"),
    converters={"count": int},
)
def replies_from_salon(runner: Runner, phone: str, count: int, salon: str) -> None:
    assert len(runner.replies_from(SALONS[SALON_WORDS[salon]], phone)) == count, runner.replies_to(phone)


@then(parsers.parse("у клиента {phone} есть разговор с каждым салоном"))
def conversation_with_each(runner: Runner, phone: str) -> None:
    for company in SALONS.values():
        assert runner.redis_exists(f"dialog:{company}:{phone}"), company


@then("ни один ход администратора не смешивает сообщения двух салонов")
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

"""Context: the reference's dialog, history and preferences keys and how long they live."""

from __future__ import annotations

from harness import Runner
from pytest_bdd import then

# The unit of a lifetime as the feature file writes it, in any of its Russian forms.
UNITS_S = {"час": 3600, "часа": 3600, "часов": 3600, "день": 86400, "дня": 86400, "дней": 86400}
SLACK_S = 300  # the turn wrote the keys a little (virtual) time before they are read


def lifetime_s(text: str) -> int:
    amount, unit = text.split()
    return int(amount) * UNITS_S[unit]


@then("контекст клиента сохранён")
def context_kept(runner: Runner, datatable: list[list[str]]) -> None:
    for key, lifetime in datatable[1:]:
        expected = lifetime_s(lifetime)
        ttl = runner.redis_ttl(key)
        assert expected - SLACK_S < ttl <= expected, f"{key}: TTL {ttl} s, expected {lifetime}"

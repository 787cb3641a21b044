"""Context: the reference's dialog, history and preferences keys and how long they live."""

from __future__ import annotations

from harness import Runner
from pytest_bdd import then

UNITS_S = {"hours": 3600, "days": 86400}
SLACK_S = 300  # the turn wrote the keys a little (virtual) time before they are read


def lifetime_s(text: str) -> int:
    amount, unit = text.split()
    return int(amount) * UNITS_S[unit]


@then("the client's context is kept")
def context_kept(runner: Runner, datatable: list[list[str]]) -> None:
    for key, lifetime in datatable[1:]:
        expected = lifetime_s(lifetime)
        ttl = runner.redis_ttl(key)
        assert expected - SLACK_S < ttl <= expected, f"{key}: TTL {ttl} s, expected {lifetime}"

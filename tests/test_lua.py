"""The Lua sources name their KEYS and ARGV at their head, and their return codes are the Python IntEnums."""

from __future__ import annotations

import re

import pytest

from system.ingest.batch_store import AppendOutcome, ClaimStatus
from system.ingest.core import StatusApplied
from system.store import lua

SOURCES = {
    "APPEND": lua.APPEND.template,
    "CLAIM": lua.CLAIM,
    "HOLD": lua.HOLD,
    "ACK": lua.ACK,
    "RETRY": lua.RETRY,
    "DEAD_LETTER": lua.DEAD_LETTER,
    "PROMOTE": lua.PROMOTE,
    "REPLAY": lua.REPLAY,
    "STATUS": lua.STATUS,
}


@pytest.mark.parametrize("name", SOURCES)
def test_every_script_reads_keys_and_args_only_into_named_locals(name: str) -> None:
    # Before: `KEYS[6]` in the middle of a script, explained only by a Python comment above it.
    lines = [line.strip() for line in SOURCES[name].splitlines()]
    reads = [line for line in lines if re.search(r"\b(KEYS|ARGV)\[", line)]
    assert reads, name
    assert [line for line in reads if not re.fullmatch(r"local [\w, ]+ = (KEYS|ARGV)\[.+", line)] == []


def _codes(source: str, pattern: str) -> set[int]:
    return {int(code) for code in re.findall(pattern, source)}


def test_claim_returns_exactly_the_claim_status_codes() -> None:
    assert _codes(lua.CLAIM, r"return \{(-?\d+)") == {int(s) for s in ClaimStatus}


def test_status_returns_exactly_the_status_applied_codes() -> None:
    assert _codes(lua.STATUS, r"return \{(-?\d+)") == {int(s) for s in StatusApplied}


def test_append_returns_exactly_the_append_outcomes() -> None:
    # `status` starts as a duplicate, becomes accepted, or takes a limit's refusal (`return 3`, `return 4`).
    source = lua.APPEND.template
    codes = _codes(source, r"status = (\d)\b") | _codes(source, r"return (\d)\b")
    assert codes == {int(o) for o in AppendOutcome}

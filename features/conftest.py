"""The Gherkin QA suite: one runner per scenario; step definitions live in `steps/`, one module per area."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Runner, Setup

pytest_plugins = [
    "steps.common",
    "steps.batching",
    "steps.context",
    "steps.api",
    "steps.booking",
    "steps.queue",
    "steps.reliability",
]


@pytest.fixture
def setup() -> Setup:
    """What the scenario's Given steps change before the system starts (they must come before any other step)."""
    return Setup()


@pytest.fixture
def runner(setup: Setup) -> Iterator[Runner]:
    """The whole system on a virtual clock against the simulator's fakes, driven synchronously."""
    system = Runner(setup)
    yield system
    system.close()

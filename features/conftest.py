"""The Gherkin QA suite: one runner per scenario; step definitions live in `steps/`, one module per area."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Runner

pytest_plugins = ["steps.common", "steps.batching", "steps.context", "steps.api", "steps.booking"]


@pytest.fixture
def runner() -> Iterator[Runner]:
    """The whole system on a virtual clock against the simulator's fakes, driven synchronously."""
    system = Runner()
    yield system
    system.close()

"""The Gherkin QA suite: one runner per scenario; step definitions live in `steps/`, one module per area."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from harness import RedisTarget, Runner, Setup

from simulator.redis_target import TargetRefused, TargetUnreachable, check_target, claim_url

pytest_plugins = [
    "steps.common",
    "steps.batching",
    "steps.context",
    "steps.api",
    "steps.booking",
    "steps.queue",
    "steps.reliability",
]

# The suite's own variables; REDIS_URL (the production one) never chooses its Redis.
REDIS_URL_ENV = "AIADMIN_FEATURES_REDIS_URL"
FLUSH_ENV = "AIADMIN_FEATURES_REDIS_FLUSH"
FORCE_ENV = "AIADMIN_FEATURES_REDIS_FORCE"
CLUSTER_ENV = "AIADMIN_FEATURES_REDIS_CLUSTER"


# The @reliability scenarios on a real Redis wait out real time (a worker's death: the visibility timeout and the
# reclaim, about 50 s), more than the suite's per-test timeout allows on a busy machine.
RELIABILITY_TIMEOUT_S = 180


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("reliability") is not None:
            item.add_marker(pytest.mark.timeout(RELIABILITY_TIMEOUT_S))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aiadmin QA suite")
    group.addoption(
        "--redis-url",
        metavar="URL",
        default=os.environ.get(REDIS_URL_ENV) or None,
        help=f"run the scenarios on this real Redis database instead of fakeredis (env {REDIS_URL_ENV}); "
        "flushed only when empty or written by an aiadmin test tool",
    )
    group.addoption(
        "--redis-cluster",
        action="store_true",
        default=os.environ.get(CLUSTER_ENV, "") == "1",
        help=f"--redis-url names a node of a Redis Cluster (env {CLUSTER_ENV}=1); the system runs in cluster mode",
    )
    group.addoption(
        "--redis-flush",
        action="store_true",
        default=os.environ.get(FLUSH_ENV, "") == "1",
        help=f"flush --redis-url even when it holds keys no aiadmin test tool wrote (env {FLUSH_ENV}=1)",
    )
    group.addoption(
        "--redis-force",
        action="store_true",
        default=os.environ.get(FORCE_ENV, "") == "1",
        help=f"allow database 0 or a non-loopback --redis-url (env {FORCE_ENV}=1)",
    )


@pytest.fixture(scope="session")
def redis_target(pytestconfig: pytest.Config) -> RedisTarget | None:
    """The suite's real Redis, claimed once: db 0, a remote host or someone else's keys stop the run."""
    url = pytestconfig.getoption("redis_url")
    if not url:
        return None
    try:
        target = check_target(
            url,
            owner="pytest features",
            force=bool(pytestconfig.getoption("redis_force")),
            flush_option=f"--redis-flush ({FLUSH_ENV}=1)",
            force_option=f"--redis-force ({FORCE_ENV}=1)",
            cluster=bool(pytestconfig.getoption("redis_cluster")),
        )
        flush = bool(pytestconfig.getoption("redis_flush"))
        # Claimed once here too, so that a database holding someone else's keys stops the run at once rather than
        # failing every scenario; each scenario's runner claims it again (it is ours by then).
        claim_url(target, flush=flush)
    except (TargetRefused, TargetUnreachable) as exc:
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
    return RedisTarget(target, flush=flush)


@pytest.fixture
def setup(redis_target: RedisTarget | None) -> Setup:
    """What the scenario's Given steps change before the system starts (they must come before any other step)."""
    return Setup(redis=redis_target)


@pytest.fixture
def runner(setup: Setup) -> Iterator[Runner]:
    """The whole system on a virtual clock against the simulator's fakes, driven synchronously."""
    system = Runner(setup)
    yield system
    system.close()

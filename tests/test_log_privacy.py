"""No log line at INFO or above carries a client's phone: a whole simulated day, every line scanned."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from simulator.personas import PERSONAS
from simulator.simulation import SimOptions, simulate
from system.logs import configure_logging, mask_phone_runs

from .conftest import forget_cached_loggers


@pytest.fixture
def info_log() -> Iterator[io.StringIO]:
    """Every log line of the process, JSON at INFO, as production configures it, into a buffer."""
    buffer = io.StringIO()
    forget_cached_loggers()
    configure_logging(level="INFO", json=True, stream=buffer, cache=False)
    yield buffer
    structlog.reset_defaults()
    forget_cached_loggers()


async def test_no_log_line_of_a_simulated_day_carries_a_client_phone(info_log: io.StringIO) -> None:
    result = await simulate(SimOptions(users=2 * len(PERSONAS), seed=5))
    lines = info_log.getvalue().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    # The scan means something only if the lines that used to carry phones were written.
    assert events.count("turn_done") >= len(result.users)
    assert "booking_created" in events

    phones = {user.phone for user in result.users}
    leaks = [line for line in lines for phone in phones if phone in line]  # "+7..." contains the digits too
    assert leaks == []


def test_a_batch_id_in_any_field_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", json=True, cache=False)
    try:
        structlog.get_logger("t").warning(
            "turn_failed",
            batch_id="962302:79001234567:wamid.HBgL",
            error="HTTP 422 for /api/v1/records/962302?client_phone=%2B79001234567",
            nested={"ids": ["962302:79001234567:wamid.x"]},
            phone_number_id="106540352242922",
            record_id=1234567890123,
        )
    finally:
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().err)
    assert line["batch_id"] == "962302:79*******67:wamid.HBgL"
    assert "79001234567" not in json.dumps(line)
    assert line["phone_number_id"] == "106540352242922"  # a business's Meta id, not a client's phone
    assert line["record_id"] == 1234567890123  # numbers are not strings: ids and times stay as they are


def test_phone_runs_are_masked_and_other_numbers_kept() -> None:
    assert mask_phone_runs("+79001234567 и 79001234568") == "+79*******67 и 79*******68"
    assert mask_phone_runs("company 962302, record 51234567") == "company 962302, record 51234567"
    assert mask_phone_runs("1234567890123456") == "1234567890123456"  # 16 digits: longer than any phone

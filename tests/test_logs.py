"""Log lines: JSON, phones masked, message texts only at DEBUG."""

from __future__ import annotations

import json

import pytest
import structlog

from system.logs import configure_logging


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    yield
    structlog.reset_defaults()


def test_info_lines_mask_phones_and_drop_message_texts(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", json=True)
    structlog.get_logger("t").info("message_rate_limited", phone="79001234567", text="Хочу записаться", reply="Ок")
    line = json.loads(capsys.readouterr().err)
    assert line["phone"] == "79*******67"
    assert "text" not in line and "reply" not in line
    assert line["level"] == "info"


def test_debug_lines_may_carry_texts(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="DEBUG", json=True)
    structlog.get_logger("t").debug("message_appended", phone="79001234567", text="Хочу записаться")
    line = json.loads(capsys.readouterr().err)
    assert (line["text"], line["phone"]) == ("Хочу записаться", "79*******67")


def test_below_the_level_nothing_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="WARNING", json=True)
    structlog.get_logger("t").info("batch_flushed", phone="79001234567")
    assert capsys.readouterr().err == ""

"""One error tree: every error of ours derives from `AIAdminError`; `retryable` alone decides retry or dead letter."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from system.booking.base import BackendUnavailable, BookingRefused, ClientBlocked, RateLimited, SlotTaken, Unauthorized
from system.channels.whatsapp import AccountRestricted, OutsideWindow, ThroughputLimited, TokenExpired
from system.errors import AIAdminError, BookingError, LLMError, PayloadError, SendError, SettingsError
from system.ingest.signatures import SignatureError
from system.runtime import RedisUnavailable
from system.turn.llm import LLMQuotaExhausted, LLMUnavailable
from system.turn.worker import UnanswerableTurn, failure_text, retry_may_help


@pytest.mark.parametrize(
    "family",
    [
        LLMError,
        BookingError,
        SendError,
        PayloadError,
        SettingsError,
        UnanswerableTurn,
        SignatureError,
        RedisUnavailable,
    ],
)
def test_every_error_family_derives_from_the_one_root(family: type[Exception]) -> None:
    assert issubclass(family, AIAdminError)


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        # A refusal the client was told about: the same booking again gets the same answer.
        (BookingRefused("the salon refused"), False),
        (ClientBlocked("blocked", code=434), False),
        (Unauthorized("partner token refused", code=401), False),
        (BackendUnavailable("HTTP 503"), True),
        (RateLimited("429"), True),
        (OutsideWindow("outside the window", code=131047), False),
        (TokenExpired("expired", code=190), False),
        (AccountRestricted("locked", code=131031), False),
        (ThroughputLimited("slow down", code=130429), True),
        (LLMUnavailable("timeout"), True),
        (LLMQuotaExhausted("no credit"), False),
        (UnanswerableTurn("no sending number"), False),
        (RedisConnectionError("refused"), True),
        (ConnectionResetError("reset"), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_a_permanent_booking_refusal_is_dead_lettered_not_retried(error: Exception, retried: bool) -> None:
    # Before: the worker listed the families one by one and retried every BookingError, BookingRefused too.
    assert retry_may_help(error) is retried


def test_an_instance_may_override_its_family_retryable() -> None:
    assert AIAdminError("passing", retryable=True).retryable is True
    assert BookingError("x").retryable is False and BackendUnavailable("x").retryable is True


def test_a_dead_letter_records_the_vendor_code_and_the_message() -> None:
    assert (
        failure_text(OutsideWindow("re-engagement needed", code=131047)) == "OutsideWindow 131047: re-engagement needed"
    )
    assert failure_text(UnanswerableTurn("LLM: LLMUnavailable: timeout")) == "LLM: LLMUnavailable: timeout"
    assert failure_text(RedisConnectionError("refused")) == "ConnectionError: refused"


def test_slot_taken_stays_a_tool_result_below_the_worker() -> None:
    # The tools answer the model with it (the next free time is offered); it is a booking error like the others.
    assert issubclass(SlotTaken, BookingError) and not SlotTaken("taken", code=433).retryable

"""Structured JSON logs: phones masked, message texts only at DEBUG."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from system.phones import mask_phone

_TEXT_FIELDS = ("text", "reply", "body")
# A phone-like run of digits: E.164 numbers have at most 15 digits, and the shortest mobile numbers of the
# countries served have 10 or more with the country code (Russia: 11). Company ids (6-7 digits), record ids
# and counters are shorter and stay readable; a longer run (an id, a hash) is not a phone.
_PHONE_RUN = re.compile(r"(?<![0-9])\+?[0-9]{10,15}(?![0-9])")
_NEST_DEPTH = 3  # lists and dicts in a log field are scanned this deep
# Fields whose digits are a business's own Meta id, never a client's phone: kept whole for operators.
_NOT_PHONES = frozenset({"phone_number_id"})


def _mask_phones(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in ("phone", "to", "sender"):
        value = event.get(key)
        if isinstance(value, str) and "*" not in value:
            event[key] = mask_phone(value)
    return event


def mask_phone_runs(text: str) -> str:
    """`text` with every phone-like run of digits masked as `mask_phone` masks a phone."""
    if len(text) < 10:
        return text
    return _PHONE_RUN.sub(_mask_run, text)


def _mask_run(match: re.Match[str]) -> str:
    run = match[0]
    plus = "+" if run.startswith("+") else ""
    return plus + mask_phone(run.removeprefix("+"))


def _masked(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return mask_phone_runs(value)
    if depth <= 0:
        return value
    if isinstance(value, dict):
        return {k: _masked(v, depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, depth - 1) for v in value]
    return value


def _mask_phone_runs(_: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """At INFO and above, no string field carries a whole phone: batch ids, errors and URLs embed them.

    One processor for every field rather than masking at each call site: a new log line, or an error text
    quoting a CRM URL with `client_phone=...`, cannot leak a phone by being forgotten.
    """
    if method != "debug":
        for key, value in event.items():
            if key not in _NOT_PHONES:
                event[key] = _masked(value, _NEST_DEPTH)
    return event


def _drop_texts_above_debug(_: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if method != "debug":
        for key in _TEXT_FIELDS:
            event.pop(key, None)
    return event


class _Stderr:
    """Whatever `sys.stderr` is at each write: a test runner that swaps it (and closes its own) breaks nothing."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    *, level: str = "INFO", json: bool = True, stream: TextIO | None = None, cache: bool = True
) -> None:
    """Configure structlog once per process; `stream` (default stderr) and `cache=False` are for tests."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_phones,
            _drop_texts_above_debug,
            structlog.processors.format_exc_info,
            _mask_phone_runs,  # after format_exc_info: a traceback's text is masked too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream if stream is not None else _Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=cache,
    )

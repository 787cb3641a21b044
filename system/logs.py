"""Structured JSON logs: phones masked, message texts only at DEBUG."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from system.phones import mask_phone

_TEXT_FIELDS = ("text", "reply", "body")


def _mask_phones(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in ("phone", "to", "sender"):
        value = event.get(key)
        if isinstance(value, str) and "*" not in value:
            event[key] = mask_phone(value)
    return event


def _drop_texts_above_debug(_: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if method != "debug":
        for key in _TEXT_FIELDS:
            event.pop(key, None)
    return event


def configure_logging(*, level: str = "INFO", json: bool = True) -> None:
    """Configure structlog once per process."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_phones,
            _drop_texts_above_debug,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

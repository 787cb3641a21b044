"""The system's error tree: every error it raises on purpose, and whether trying again may help.

Like `httpx/_exceptions.py`, one root and one family per boundary; the leaves that name a vendor's
answer live beside the code that translates it (the Meta and YClients code tables, the LLM client):

    AIAdminError            retryable: may the same work succeed later?
    ├── LLMError            system.turn.llm: LLMUnavailable (retryable), LLMRequestRejected, ...
    ├── BookingError        system.booking.base: RateLimited, BackendUnavailable (retryable), BookingRefused, ...
    ├── SendError           system.channels.whatsapp: ThroughputLimited (retryable), OutsideWindow, TokenExpired, ...
    ├── PayloadError        a webhook body no retry can make valid (answered 400/422)
    ├── SettingsError       the environment describes no usable configuration (the CLI exits 2)
    └── single errors beside their code: SignatureError (system.ingest.signatures), RedisUnavailable
        (system.runtime, retryable), UnanswerableTurn (system.turn.worker: dead-letter at once)

A caller that decides retry or give up (the worker) reads `retryable`, never the class list.
"""

from __future__ import annotations

from typing import Any

from system.models import Rejected


class AIAdminError(Exception):
    """Base of every error the system raises on purpose; `retryable` says whether trying again may help.

    A class attribute, so a family sets it once; an instance may override it where one answer decides.
    """

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class LLMError(AIAdminError):
    """Base of every LLM error."""


class BookingError(AIAdminError):
    """Base of every booking backend error; `code` is the CRM's error code, when it sent one."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SendError(AIAdminError):
    """Base of every send error; `code` is Meta's error code, `retry_after_s` the server's Retry-After."""

    def __init__(self, message: str, *, code: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class PayloadError(AIAdminError):
    """The whole webhook body is unusable; `body()` is the JSON answer for the caller."""

    def __init__(self, *, status_code: int, code: str, message: str, errors: list[Rejected] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code  # 400 malformed JSON, 422 wrong shape
        self.code = code
        self.errors: list[Rejected] = errors or []

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "errors": [r.as_dict() for r in self.errors]}


class SettingsError(AIAdminError):
    """The environment does not describe a usable configuration; the message names each variable."""

"""Typed, frozen models that travel past the API layer (raw payload dicts never do)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import orjson


class MessageKind(StrEnum):
    """What a client sent; everything but text and interactive is batched as a marker."""

    TEXT = "text"
    INTERACTIVE = "interactive"
    VOICE = "voice"
    AUDIO = "audio"
    IMAGE = "image"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One accepted client message, already validated and routed to a company."""

    company_id: int
    phone: str  # canonical: E.164 digits without "+"
    message_id: str
    text: str  # stripped; "" for a marker without a caption
    kind: MessageKind = MessageKind.TEXT
    sent_ms: int | None = None  # the sender's timestamp, when the payload had one
    received_ms: int = 0  # when the API accepted it (injected clock)
    profile_name: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # media id, button id, coordinates
    # The business number the client wrote to (Meta's `metadata.phone_number_id`); the reply goes out from it.
    phone_number_id: str | None = None

    def to_json(self) -> bytes:
        """The fragment as stored in a batch (the shape `BatchedMessage.from_doc` reads)."""
        return orjson.dumps(message_doc(self))


@dataclass(frozen=True, slots=True)
class BatchedMessage:
    """One fragment inside a job, as stored in Redis."""

    message_id: str
    text: str
    kind: MessageKind
    received_ms: int
    sent_ms: int | None = None
    profile_name: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    phone_number_id: str | None = None  # the business number the client wrote to

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> BatchedMessage:
        pnid = doc.get("pnid")
        return cls(
            message_id=str(doc["id"]),
            text=str(doc.get("text", "")),
            kind=MessageKind(doc.get("kind", "text")),
            received_ms=int(doc.get("received_ms", 0)),
            sent_ms=doc.get("sent_ms"),
            profile_name=doc.get("name"),
            extra=dict(doc.get("extra") or {}),
            phone_number_id=str(pnid) if pnid else None,
        )


def merge_texts(texts: Sequence[str]) -> str:
    """Join fragment texts by one space in arrival order, each trimmed, empty ones skipped."""
    return " ".join(t for t in (s.strip() for s in texts) if t)


@dataclass(frozen=True, slots=True)
class Job:
    """One merged turn of one conversation, as handed to the workers."""

    batch_id: str
    company_id: int
    phone: str
    messages: tuple[BatchedMessage, ...]
    enqueued_ms: int
    attempt: int = 0
    last_error: str | None = None

    @property
    def text(self) -> str:
        return merge_texts([m.text for m in self.messages])

    @property
    def markers(self) -> tuple[MessageKind, ...]:
        """Kinds of the non-text fragments (voice notes, images, ...) the reply should address."""
        return tuple(m.kind for m in self.messages if m.kind not in (MessageKind.TEXT, MessageKind.INTERACTIVE))

    @property
    def reply_from(self) -> str | None:
        """The business number the client last wrote to: the reply goes out from it (None: not known)."""
        return next((m.phone_number_id for m in reversed(self.messages) if m.phone_number_id), None)

    @property
    def last_received_ms(self) -> int:
        return max(m.received_ms for m in self.messages)

    def to_json(self) -> str:
        """The stream entry's `job` field; the inverse of `from_json`."""
        doc: dict[str, Any] = {
            "batch_id": self.batch_id,
            "company_id": self.company_id,
            "phone": self.phone,
            "messages": [message_doc(m) for m in self.messages],
            "enqueued_ms": self.enqueued_ms,
            "attempt": self.attempt,
        }
        if self.last_error is not None:
            doc["last_error"] = self.last_error
        return orjson.dumps(doc).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Job:
        """Parse a stored job; raises ValueError (a poison job) when it is not one."""
        try:
            doc = orjson.loads(raw)
            messages = tuple(BatchedMessage.from_doc(d) for d in doc["messages"])
            if not messages:
                raise ValueError("job has no messages")
            return cls(
                batch_id=str(doc["batch_id"]),
                company_id=int(doc["company_id"]),
                phone=str(doc["phone"]),
                messages=messages,
                enqueued_ms=int(doc.get("enqueued_ms", 0)),
                attempt=int(doc.get("attempt", 0)),
                last_error=doc.get("last_error"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a job: {exc}") from exc

    def with_failure(self, error: str) -> Job:
        return replace(self, attempt=self.attempt + 1, last_error=error)


def message_doc(m: InboundMessage | BatchedMessage) -> dict[str, Any]:
    """A fragment as stored: the two types share these fields."""
    doc: dict[str, Any] = {"id": m.message_id, "text": m.text, "kind": m.kind.value, "received_ms": m.received_ms}
    if m.sent_ms is not None:
        doc["sent_ms"] = m.sent_ms
    if m.profile_name:
        doc["name"] = m.profile_name
    if m.extra:
        doc["extra"] = m.extra
    if m.phone_number_id:
        doc["pnid"] = m.phone_number_id
    return doc


class DeliveryStatus(StrEnum):
    """Outbound message statuses from WhatsApp; `rank` never moves backwards."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"  # a voice message was listened to: after read
    FAILED = "failed"

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]


_STATUS_RANK = {
    DeliveryStatus.SENT: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.READ: 3,
    DeliveryStatus.PLAYED: 4,
    DeliveryStatus.FAILED: 5,
}


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A delivery status callback for a message we sent."""

    message_id: str
    status: DeliveryStatus
    recipient: str | None
    timestamp_ms: int | None
    error_code: int | None = None
    error_title: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A part of a payload that was not accepted: which field, what is wrong with it."""

    field: str
    problem: str
    reason: str = "invalid"  # invalid | unknown_tenant | unsupported | group_sender

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "problem": self.problem, "reason": self.reason}

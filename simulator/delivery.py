"""Webhook delivery: simulated clients' messages and delivery statuses posted to the system as WhatsApp would.

Mode "meta" posts Cloud API webhooks signed with the app secret (X-Hub-Signature-256); mode "gateway" posts the
old bridge format `{"from","message","messageId","timestamp"}` signed with the webhook secret (X-Signature).
Unsigned when no secret is given. 5xx, 429 and transport errors are retried a bounded number of times, waiting
on the injected clock; Meta retries every non-200 for days, but a 4xx here is the system's deliberate answer and
re-sending it proves nothing, so it is counted as refused at once.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
import orjson

from simulator import meta_payloads as meta
from simulator.whatsapp import BSUID_SHAPE, OutboundMessage, status_error
from system.clock import Clock

Mode = Literal["meta", "gateway"]
MediaKind = Literal["voice", "image", "sticker", "location"]
StatusKind = Literal["sent", "delivered", "read", "failed"]

# What WhatsApp reports of a delivered reply: (status, seconds after the previous one).
DELIVERED_STEPS: tuple[tuple[StatusKind, float], ...] = (("sent", 0.5), ("delivered", 1.0), ("read", 5.0))
FAILED_AFTER_S = 1.0  # a `failed` status comes alone, shortly after the send was accepted
# Per-message pricing of a service reply inside the 24-hour window: free, not billable.
_SERVICE_PRICING = {"billable": False, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"}

META_PATH = "/webhook/whatsapp"
GATEWAY_PATH = "/webhook/whatsapp/batched"
META_USER_AGENT = "facebookexternalua"


class WebhookUnreachable(Exception):
    """No HTTP answer at all (connection refused, timeout) after every retry."""


class UnsupportedInGateway(ValueError):
    """The gateway format carries text only: no media, no delivery statuses."""


@dataclass(frozen=True, slots=True)
class BusinessNumber:
    """The salon's WhatsApp number as the webhooks name it; `company_id` is put in gateway bodies when set."""

    phone_number_id: str = meta.PHONE_NUMBER_ID
    display_phone_number: str = meta.DISPLAY_PHONE
    waba_id: str = meta.WABA_ID
    company_id: int | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRetry:
    """Bounded retries with a doubling delay: `retries` re-sends after the first attempt."""

    retries: int = 3
    base_s: float = 1.0
    max_s: float = 60.0
    honour_retry_after: bool = True  # a floor on the delay, capped at max_s

    def delay_s(self, retry: int, *, retry_after_s: float | None = None) -> float:
        """Delay before re-send number `retry` (1-based)."""
        delay = min(self.max_s, self.base_s * 2.0 ** (retry - 1))
        if self.honour_retry_after and retry_after_s is not None:
            delay = max(delay, min(self.max_s, retry_after_s))
        return delay


@dataclass
class DeliveryStats:
    """What the delivery did; `by_status` counts final answers per HTTP status."""

    attempts: int = 0  # HTTP requests made, retries included
    delivered: int = 0  # webhooks finally answered 2xx
    retried: int = 0  # re-sends
    refused: int = 0  # webhooks finally answered with anything else
    unreachable: int = 0  # webhooks that never got an answer
    by_status: dict[int, int] = field(default_factory=dict)


def meta_webhook(
    number: BusinessNumber,
    *,
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Cloud API webhook body for `number` (its phone number id, display number and WABA id)."""
    change = meta.change(messages=messages, statuses=statuses, phone_number_id=number.phone_number_id, names=names)
    change["value"]["metadata"]["display_phone_number"] = number.display_phone_number
    body = meta.webhook(change)
    body["entry"][0]["id"] = number.waba_id
    return body


def media_body(
    kind: MediaKind,
    *,
    media_id: str,
    caption: str = "",
    latitude: float = 55.7558,
    longitude: float = 37.6173,
) -> tuple[str, dict[str, Any]]:
    """(Meta's message type, its body) for a media message; a voice note is audio with `voice: true`."""
    if kind == "voice":
        return "audio", {"id": media_id, "mime_type": "audio/ogg; codecs=opus", "voice": True}
    if kind == "image":
        body: dict[str, Any] = {"id": media_id, "mime_type": "image/jpeg"}
        if caption:
            body["caption"] = caption
        return "image", body
    if kind == "sticker":
        return "sticker", {"id": media_id, "mime_type": "image/webp", "animated": False}
    return "location", {"latitude": latitude, "longitude": longitude}


class WebhookDelivery:
    """Posts simulated WhatsApp traffic to the system's webhook over the injected client; returns HTTP statuses."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        clock: Clock,
        mode: Mode = "meta",
        secret: str | None = None,
        url: str | None = None,
        number: BusinessNumber | None = None,
        retry: DeliveryRetry | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._http = http
        self._clock = clock
        self.mode: Mode = mode
        self._secret = secret
        self._url = url or (META_PATH if mode == "meta" else GATEWAY_PATH)
        self.number = number or BusinessNumber()
        self._retry = retry or DeliveryRetry()
        self._timeout_s = timeout_s
        self.stats = DeliveryStats()

    async def deliver_text(self, *, sender: str, text: str, message_id: str, at_ms: int, profile_name: str = "") -> int:
        """One text message from `sender` (digits) sent at `at_ms`."""
        if self.mode == "gateway":
            body: dict[str, Any] = {"from": sender, "message": text, "messageId": message_id, "timestamp": at_ms}
            if self.number.company_id is not None:
                body["companyId"] = self.number.company_id
            return await self.deliver_payload(body)
        message = meta.message(sender, message_id, timestamp_s=at_ms // 1000, text=text)
        return await self.deliver_payload(meta_webhook(self.number, messages=[message], names={sender: profile_name}))

    async def deliver_media(
        self,
        *,
        kind: MediaKind,
        sender: str,
        message_id: str,
        at_ms: int,
        profile_name: str = "",
        media_id: str | None = None,
        caption: str = "",
    ) -> int:
        """A voice note, image, sticker or location (Meta mode only)."""
        self._require_meta(f"{kind} messages")
        meta_kind, content = media_body(kind, media_id=media_id or f"media-{message_id}", caption=caption)
        message = meta.message(sender, message_id, timestamp_s=at_ms // 1000, kind=meta_kind, body=content)
        return await self.deliver_payload(meta_webhook(self.number, messages=[message], names={sender: profile_name}))

    async def deliver_status(
        self, *, wamid: str, status: StatusKind, recipient: str, at_ms: int, error_code: int | None = None
    ) -> int:
        """A sent/delivered/read/failed callback for a message the system sent (Meta mode only).

        Shaped as Meta's status webhook: a failed status carries `errors[]` (code, title, message,
        error_data.details, href) and no pricing; the others carry the per-message pricing of a service reply.
        A message sent to a business-scoped user id is named by `recipient_user_id` instead of `recipient_id`.
        """
        self._require_meta("delivery statuses")
        entry = meta.status(wamid, status, recipient=recipient, timestamp_s=at_ms // 1000)
        if BSUID_SHAPE.fullmatch(recipient):
            del entry["recipient_id"]
            entry["recipient_user_id"] = recipient
        if status == "failed":
            entry["errors"] = [status_error(error_code if error_code is not None else 131000)]
        else:
            entry["pricing"] = dict(_SERVICE_PRICING)
        return await self.deliver_payload(meta_webhook(self.number, statuses=[entry]))

    async def deliver_outcome(self, message: OutboundMessage) -> list[int]:
        """Everything WhatsApp reports of one accepted reply, waiting on the clock between the webhooks.

        A delivered reply gets sent, delivered and read; one Meta accepted but could not deliver (the 24-hour
        window closed, 131047; the recipient unreachable, 131026) gets one `failed` status with that error.
        Returns the HTTP status of each webhook.
        """
        if message.failure is not None:
            await self._clock.sleep(FAILED_AFTER_S)
            status = await self.deliver_status(
                wamid=message.wamid,
                status="failed",
                recipient=message.to,
                at_ms=self._clock.now_ms(),
                error_code=message.failure,
            )
            return [status]
        answers = []
        for state, delay_s in DELIVERED_STEPS:
            await self._clock.sleep(delay_s)
            answers.append(
                await self.deliver_status(
                    wamid=message.wamid, status=state, recipient=message.to, at_ms=self._clock.now_ms()
                )
            )
        return answers

    async def deliver_payload(self, body: dict[str, Any]) -> int:
        """Any body, signed and posted with retries (redeliveries and malformed payloads go through here)."""
        raw = orjson.dumps(body)
        headers = self._headers(raw)
        retry = 0
        while True:
            self.stats.attempts += 1
            try:
                response = await self._http.post(self._url, content=raw, headers=headers, timeout=self._timeout_s)
            except httpx.RequestError as exc:
                if retry >= self._retry.retries:
                    self.stats.unreachable += 1
                    raise WebhookUnreachable(f"{self._url}: {type(exc).__name__}: {exc}") from exc
                retry_after_s = None
            else:
                status = response.status_code
                if not _retryable(status) or retry >= self._retry.retries:
                    self._final(status)
                    return status
                retry_after_s = _retry_after_s(response.headers.get("Retry-After"), now_ms=self._clock.now_ms())
            retry += 1
            self.stats.retried += 1
            await self._clock.sleep(self._retry.delay_s(retry, retry_after_s=retry_after_s))

    def _headers(self, raw: bytes) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.mode == "meta":
            headers["user-agent"] = META_USER_AGENT
        if self._secret:
            header = "X-Hub-Signature-256" if self.mode == "meta" else "X-Signature"
            headers[header] = _signature(raw, self._secret)
        return headers

    def _final(self, status: int) -> None:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        if 200 <= status < 300:
            self.stats.delivered += 1
        else:
            self.stats.refused += 1

    def _require_meta(self, what: str) -> None:
        if self.mode != "meta":
            raise UnsupportedInGateway(f"the gateway format cannot carry {what}")


def _retryable(status: int) -> bool:
    return status == httpx.codes.TOO_MANY_REQUESTS or status >= httpx.codes.INTERNAL_SERVER_ERROR


def _signature(raw: bytes, secret: str) -> str:
    """Meta's `X-Hub-Signature-256` (the bridge's `X-Signature` alike): `sha256=` + HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def _retry_after_s(value: str | None, *, now_ms: int) -> float | None:
    """RFC 9110 Retry-After: delay seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        seconds = parsedate_to_datetime(value).timestamp() - now_ms / 1000
    except (TypeError, ValueError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None

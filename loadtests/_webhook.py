"""Webhook requests as WhatsApp sends them: Meta's signed Cloud API format, or the gateway format.

Meta: `POST /webhook/whatsapp` with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>` keyed with
the app secret (the body built as `simulator.delivery` builds it). Gateway: `POST /webhook/whatsapp/batched`
with `{"from","message","messageId","timestamp"}`, signed in `X-Signature` when a webhook secret is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

from simulator import meta_payloads as meta
from simulator.delivery import GATEWAY_PATH, META_PATH, META_USER_AGENT, BusinessNumber, meta_webhook
from system.ingest.signatures import sign

WebhookFormat = Literal["meta", "gateway"]
FORMATS: tuple[WebhookFormat, ...] = ("meta", "gateway")


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """One encoded request: the path, the raw body and its headers."""

    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Webhook:
    """Builds a client's text messages as webhook requests in one format."""

    format: WebhookFormat = "meta"
    secret: str = ""  # the app secret (meta) or the webhook secret (gateway); empty = unsigned
    phone_number_id: str = meta.PHONE_NUMBER_ID
    company_id: int | None = None  # put in gateway bodies when set

    def text(self, *, sender: str, text: str, message_id: str, at_ms: int) -> WebhookRequest:
        if self.format == "gateway":
            doc: dict[str, object] = {"from": sender, "message": text, "messageId": message_id, "timestamp": at_ms}
            if self.company_id is not None:
                doc["companyId"] = self.company_id
            return self._signed(GATEWAY_PATH, orjson.dumps(doc), "X-Signature", {})
        number = BusinessNumber(phone_number_id=self.phone_number_id)
        message = meta.message(sender, message_id, timestamp_s=at_ms // 1000, text=text)
        raw = orjson.dumps(meta_webhook(number, messages=[message], names={sender: "Клиент"}))
        return self._signed(META_PATH, raw, "X-Hub-Signature-256", {"user-agent": META_USER_AGENT})

    def _signed(self, path: str, raw: bytes, header: str, extra: dict[str, str]) -> WebhookRequest:
        headers = {"content-type": "application/json", **extra}
        if self.secret:
            headers[header] = sign(raw, self.secret)
        return WebhookRequest(path, raw, headers)


def message_id(run_tag: str, phone: str, turn: int, fragment: int) -> str:
    """A message id unique to the run, the client, the turn and the fragment (the system de-duplicates by id)."""
    return f"wamid.load-{run_tag}-{phone}-{turn:02d}-{fragment:02d}"

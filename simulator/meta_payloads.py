"""WhatsApp Cloud API webhook payloads, shaped as Meta sends them (used by the fake WhatsApp and tests)."""

from __future__ import annotations

from typing import Any

WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_PHONE = "15550783881"


def message(
    sender: str,
    message_id: str,
    *,
    timestamp_s: int,
    kind: str = "text",
    body: dict[str, Any] | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    """One entry of `value.messages[]`; `text` is a shortcut for a text message's body."""
    out: dict[str, Any] = {"from": sender, "id": message_id, "timestamp": str(timestamp_s), "type": kind}
    if text is not None:
        out["text"] = {"body": text}
    if body is not None:
        out[kind] = body
    return out


def status(
    message_id: str, state: str, *, recipient: str, timestamp_s: int, error_code: int | None = None
) -> dict[str, Any]:
    """One entry of `value.statuses[]` for a message we sent."""
    out: dict[str, Any] = {
        "id": message_id,
        "status": state,
        "timestamp": str(timestamp_s),
        "recipient_id": recipient,
    }
    if error_code is not None:
        out["errors"] = [{"code": error_code, "title": "error"}]
    return out


def change(
    *,
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    phone_number_id: str = PHONE_NUMBER_ID,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One `changes[]` item of field "messages"; `names` maps wa_id to the profile name."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_PHONE, "phone_number_id": phone_number_id},
    }
    if messages is not None:
        senders = names or {m["from"]: "Клиент" for m in messages}
        value["contacts"] = [{"profile": {"name": n}, "wa_id": w} for w, n in senders.items()]
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {"field": "messages", "value": value}


def webhook(*changes: dict[str, Any]) -> dict[str, Any]:
    """A whole webhook body with one entry holding `changes`."""
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": list(changes)}]}

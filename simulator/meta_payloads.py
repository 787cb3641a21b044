"""WhatsApp Cloud API webhook payloads, shaped as Meta sends them (used by the fake WhatsApp and tests)."""

from __future__ import annotations

from typing import Any

WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_PHONE = "15550783881"


def message(
    sender: str | None,
    message_id: str,
    *,
    timestamp_s: int,
    kind: str = "text",
    body: dict[str, Any] | None = None,
    text: str | None = None,
    user_id: str | None = None,
) -> dict[str, Any]:
    """One entry of `value.messages[]`; `text` is a shortcut for a text message's body.

    `user_id` is the sender's business-scoped user id (`from_user_id`); a username user who hides the phone
    number comes with `sender=None`: the message then has no `from`.
    """
    out: dict[str, Any] = {"id": message_id, "timestamp": str(timestamp_s), "type": kind}
    if sender is not None:
        out["from"] = sender
    if user_id is not None:
        out["from_user_id"] = user_id
    if text is not None:
        out["text"] = {"body": text}
    if body is not None:
        out[kind] = body
    return out


def number_change(old: str, new: str, message_id: str, *, timestamp_s: int) -> dict[str, Any]:
    """A `system` message: the user moved from `old` to `new` (such messages come without `contacts`)."""
    return message(
        old,
        message_id,
        timestamp_s=timestamp_s,
        kind="system",
        body={"body": f"User changed from {old} to {new}", "wa_id": new, "type": "user_changed_number"},
    )


def order(
    sender: str, message_id: str, *, timestamp_s: int, items: list[tuple[str, int, float]], note: str | None = None
) -> dict[str, Any]:
    """A catalog order: (product_retailer_id, quantity, item price in RUB) per item."""
    body: dict[str, Any] = {
        "catalog_id": "194836987003835",
        "product_items": [
            {"product_retailer_id": p, "quantity": q, "item_price": price, "currency": "RUB"} for p, q, price in items
        ],
    }
    if note is not None:
        body["text"] = note
    return message(sender, message_id, timestamp_s=timestamp_s, kind="order", body=body)


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
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One `changes[]` item of field "messages"; `names` maps wa_id (or user_id) to the profile name.

    `errors` are change-level errors (`value.errors`), which Meta sends without any status.
    """
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_PHONE, "phone_number_id": phone_number_id},
    }
    if messages is not None:
        senders = names or {
            who: "Клиент"
            for m in messages
            if m.get("type") != "system" and (who := m.get("from") or m.get("from_user_id"))
        }
        if senders:
            value["contacts"] = [_contact(who, name) for who, name in senders.items()]
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    if errors is not None:
        value["errors"] = errors
    return {"field": "messages", "value": value}


def error(code: int, title: str) -> dict[str, Any]:
    """One error object, as in `value.errors[]` and `statuses[].errors[]`."""
    return {"code": code, "title": title, "message": title, "error_data": {"details": title}}


def _contact(who: str, name: str) -> dict[str, Any]:
    # A business-scoped user id ("US.1349...") goes in `user_id`, a phone number in `wa_id`.
    key = "user_id" if "." in who else "wa_id"
    return {"profile": {"name": name}, key: who}


def webhook(*changes: dict[str, Any]) -> dict[str, Any]:
    """A whole webhook body with one entry holding `changes`."""
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": list(changes)}]}

"""Webhook bodies (the old gateway format and the WhatsApp Cloud API) parsed at the edge into typed models.

Framework-free: the API layer hands over raw bytes and gets a `ParseResult` or a `PayloadError` back.
A bad entry never spoils its neighbours: it is listed in `rejected` and the rest is accepted.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

import orjson

from system.errors import PayloadError
from system.models import DeliveryStatus, InboundMessage, MessageKind, Rejected, StatusUpdate
from system.phones import PhoneError, is_business_scoped_user_id, normalize_phone, normalize_wa_id
from system.settings import Settings

MAX_GATEWAY_MESSAGES = 100
MAX_MESSAGE_ID_CHARS = 256
# Meta sends a handful of items per body; these caps are far above that and far below what a forged body
# can carry in 1 MiB (349,458 empty messages). A body over a cap is refused whole before it is walked.
MAX_META_ENTRIES = 10
MAX_META_CHANGES = 10  # per entry
MAX_META_MESSAGES = 100  # per body, all changes together
MAX_META_STATUSES = 100  # per body, all changes together
# The longest client text accepted (the body cap applies too); the model sees at most
# `Settings.max_message_chars` of it, the history keeps it whole.
MAX_INBOUND_TEXT_CHARS = 65_536
ORDER_ITEMS_LISTED = 20
MAX_RECIPIENT_CHARS = 140  # a phone, or a business-scoped user id (2 + 1 + "ENT." + 128 characters)
META_OBJECT = "whatsapp_business_account"
# Numbers above this are milliseconds (1e12 ms is 2001; 1e12 s is year 33658).
_MS_THRESHOLD = 1e12
_MAX_TIMESTAMP_MS = 10**14  # year 5138: anything later is garbage, not a clock
# Bounded so that int() never meets a huge digit string (Python refuses those past 4300 digits).
_NUMERIC = re.compile(r"\d{1,20}(\.\d{1,9})?")
_DIGITS = re.compile(r"\d{1,18}")


@dataclass(frozen=True, slots=True)
class NumberChange:
    """A client moved to a new phone number (Meta's `user_changed_number`): the conversation follows."""

    company_id: int
    old_phone: str
    new_phone: str


@dataclass(frozen=True, slots=True)
class WebhookError:
    """An asynchronous failure Meta reported in `value.errors` (no status, no message id)."""

    field: str
    code: int | None
    title: str | None


class ParseResult(NamedTuple):
    """What one body yielded: messages to batch, entries to report back, entries only counted, statuses.

    A named tuple rather than a frozen dataclass: one is built per request, and a frozen dataclass's
    field-by-field `object.__setattr__` costs more than the parse of a one-message body.
    """

    messages: tuple[InboundMessage, ...] = ()
    rejected: tuple[Rejected, ...] = ()  # bad entries, listed back to the caller
    ignored: tuple[Rejected, ...] = ()  # acknowledged but never batched; recorded in stats
    statuses: tuple[StatusUpdate, ...] = ()
    number_changes: tuple[NumberChange, ...] = ()
    errors: tuple[WebhookError, ...] = ()


class _Bad(Exception):
    """One entry (or one of its fields) is rejected; raised inside the parsers, never outside."""

    def __init__(self, path: str, problem: str, reason: str = "invalid") -> None:
        super().__init__(problem)
        self.rejected = Rejected(field=path, problem=problem, reason=reason)


class _Ignore(Exception):
    """One entry is acknowledged but not batched."""

    def __init__(self, path: str, problem: str, reason: str) -> None:
        super().__init__(problem)
        self.ignored = Rejected(field=path, problem=problem, reason=reason)


@dataclass
class _Collector:
    messages: list[InboundMessage] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    ignored: list[Rejected] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    number_changes: list[NumberChange] = field(default_factory=list)
    errors: list[WebhookError] = field(default_factory=list)

    def result(self) -> ParseResult:
        return ParseResult(
            messages=tuple(self.messages),
            rejected=tuple(self.rejected),
            ignored=tuple(self.ignored),
            statuses=tuple(self.statuses),
            number_changes=tuple(self.number_changes),
            errors=tuple(self.errors),
        )


# --- shared field rules ---------------------------------------------------------------------------------


def _load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(status_code=400, code="malformed_json", message=f"body is not valid JSON: {exc}") from None


def _shape_error(message: str, path: str = "") -> PayloadError:
    errors = [Rejected(field=path, problem=message)] if path else []
    return PayloadError(status_code=422, code="invalid_payload", message=message, errors=errors)


def _too_many(path: str, count: int, cap: int) -> PayloadError:
    message = f"too many items in {path}: {count}, at most {cap}"
    errors = [Rejected(field=path, problem=f"at most {cap} items", reason="too_many_items")]
    return PayloadError(status_code=413, code="too_many_items", message=message, errors=errors)


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(path, "must be an object")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(path, "must be a list")
    return value


def _required_text(value: Any, path: str) -> str:
    """A non-empty string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise _Bad(path, "must be a non-empty string")
    return value.strip()


def _optional_text(value: Any, path: str) -> str:
    """A string, stripped; "" when absent."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Bad(path, "must be a string")
    return value.strip()


def _bounded_text(text: str, path: str, *, max_chars: int = MAX_INBOUND_TEXT_CHARS) -> str:
    if len(text) > max_chars:
        raise _Bad(path, f"is too long: {len(text)} characters, at most {max_chars}")
    return text


def _phone(value: Any, path: str, *, region: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(path, "must be a non-empty string")
    try:
        return normalize_phone(value, default_region=region)
    except PhoneError as exc:
        problem = f"is {exc}" if exc.reason == "invalid" else str(exc)
        raise _Bad(path, problem, exc.reason) from None


def _message_id(value: Any, path: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MESSAGE_ID_CHARS:
        raise _Bad(path, f"must be a non-empty string of at most {MAX_MESSAGE_ID_CHARS} characters")
    return value.strip()


def _timestamp_ms(value: Any, path: str) -> int | None:
    """Unix seconds, unix milliseconds (numbers or numeric strings) or ISO-8601 → ms; None when absent."""
    if value is None:
        return None
    ms = _number_ms(value) if not isinstance(value, str) else _text_ms(value.strip())
    if ms is None or not 0 < ms < _MAX_TIMESTAMP_MS:
        raise _Bad(path, "must be unix seconds, unix milliseconds or an ISO-8601 time")
    return ms


def _number_ms(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < _MAX_TIMESTAMP_MS:
        return None  # the range check also keeps int() away from an infinite float
    return int(value) if value > _MS_THRESHOLD else int(value * 1000)


def _text_ms(text: str) -> int | None:
    if _NUMERIC.fullmatch(text):
        return _number_ms(float(text) if "." in text else int(text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a time without an offset is taken as UTC
    return int(moment.timestamp() * 1000)


# --- the old gateway format -----------------------------------------------------------------------------


def parse_gateway(body: bytes, *, settings: Settings, received_ms: int, signed_ms: int | None = None) -> ParseResult:
    """Parse `{"from","message",...}` or `{"companyId"?,"messages":[...]}`.

    A message with neither `messageId` nor `timestamp` gets an id derived from the body's bytes (and the
    signed `X-Timestamp`, `signed_ms`, when there was one), so a replayed body is a duplicate, not a new turn.
    """
    doc = _load_json(body)
    if not isinstance(doc, dict):
        raise _shape_error("body must be a JSON object")
    parse = partial(
        _gateway_message,
        top_company=doc.get("companyId"),
        settings=settings,
        received_ms=received_ms,
        body_id=partial(_body_id, body, signed_ms),
    )
    if "messages" not in doc:  # the single form, the common one: no collector needed
        try:
            return ParseResult(messages=(parse(doc, ""),))
        except _Bad as bad:
            return ParseResult(rejected=(bad.rejected,))
    out = _Collector()
    for prefix, item in _gateway_items(doc):
        _collect(out, parse, item, prefix)
    return out.result()


def _gateway_items(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    """(field path prefix, message object) of the batch form."""
    items = doc["messages"]
    if not isinstance(items, list):
        raise _shape_error("messages must be a list", "messages")
    if not items:
        raise _shape_error("messages must not be empty", "messages")
    if len(items) > MAX_GATEWAY_MESSAGES:
        raise _too_many("messages", len(items), MAX_GATEWAY_MESSAGES)
    return [(f"messages[{i}].", item) for i, item in enumerate(items)]


def _gateway_company(entry: dict[str, Any], top: Any, prefix: str, *, settings: Settings) -> int:
    """The message's own companyId, else the body's, else the default; it must be a served company."""
    if "companyId" in entry:
        value, path = entry["companyId"], prefix + "companyId"
    elif top is not None:
        value, path = top, "companyId"
    else:
        value, path = settings.default_company_id, "companyId"
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(path, "must be an integer company id")
    if settings.tenant_for_company(value) is None:
        raise _Bad(path, "unknown company", "unknown_tenant")
    return value


def _gateway_message(
    item: Any,
    prefix: str,
    *,
    top_company: Any,
    settings: Settings,
    received_ms: int,
    body_id: Callable[[str], str],
) -> InboundMessage:
    """One gateway message; `prefix` is its field path prefix ("" or "messages[i].")."""
    entry = _object(item, prefix.removesuffix(".") or "body")
    company = _gateway_company(entry, top_company, prefix, settings=settings)
    phone = _phone(entry.get("from"), prefix + "from", region=settings.default_region)
    text_key = "message" if "message" in entry or "body" not in entry else "body"
    text = _required_text(entry.get(text_key), prefix + text_key)
    text = _bounded_text(text, prefix + text_key)
    sent_ms = _timestamp_ms(entry.get("timestamp"), prefix + "timestamp")
    raw_id = entry.get("messageId")
    if raw_id is not None:
        message_id = _message_id(raw_id, prefix + "messageId")
    elif sent_ms is not None:
        message_id = _derived_id(company, phone, sent_ms, text)
    else:
        message_id = body_id(prefix)
    return InboundMessage(
        company_id=company,
        phone=phone,
        message_id=message_id,
        text=text,
        kind=MessageKind.TEXT,
        sent_ms=sent_ms,
        received_ms=received_ms,
    )


def _derived_id(company: int, phone: str, sent_ms: int, text: str) -> str:
    """A retried identical request gets the same id, so de-duplication drops it."""
    digest = hashlib.sha256(f"{company}|{phone}|{sent_ms}|{text}".encode()).hexdigest()
    return "gw-" + digest[:32]


def _body_id(body: bytes, signed_ms: int | None, prefix: str) -> str:
    """The id of a message that brought none: the same signed bytes (and X-Timestamp) give the same id."""
    digest = hashlib.sha256(f"{signed_ms or ''}|{prefix}|".encode() + body).hexdigest()
    return "gw-" + digest[:32]


# --- WhatsApp Cloud API ---------------------------------------------------------------------------------

# (kind, text, extra) of one message, as its type's extractor reads them.
_Content = tuple[MessageKind, str, dict[str, str]]


def parse_meta(body: bytes, *, settings: Settings, received_ms: int) -> ParseResult:
    """Parse a WhatsApp Cloud API webhook: every entry, change, message and status (within the caps)."""
    doc = _load_json(body)
    if not isinstance(doc, dict) or doc.get("object") != META_OBJECT:
        raise _shape_error(f"object must be {META_OBJECT!r}", "object")
    entries = doc.get("entry")
    if not isinstance(entries, list):
        raise _shape_error("entry must be a list", "entry")
    _check_meta_caps(entries)
    out = _Collector()
    for i, entry in enumerate(entries):
        try:
            _meta_entry(entry, f"entry[{i}]", out, settings=settings, received_ms=received_ms)
        except _Bad as bad:
            out.rejected.append(bad.rejected)
    return out.result()


def _check_meta_caps(entries: list[Any]) -> None:
    """Refuse a body over a cap, looking only at list lengths: at most 10 entries x 10 changes are visited."""
    if len(entries) > MAX_META_ENTRIES:
        raise _too_many("entry", len(entries), MAX_META_ENTRIES)
    totals = {"messages": 0, "statuses": 0}
    for i, entry in enumerate(entries):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            continue
        if len(changes) > MAX_META_CHANGES:
            raise _too_many(f"entry[{i}].changes", len(changes), MAX_META_CHANGES)
        for change in changes:
            value = change.get("value") if isinstance(change, dict) else None
            if not isinstance(value, dict):
                continue
            for key, cap in (("messages", MAX_META_MESSAGES), ("statuses", MAX_META_STATUSES)):
                items = value.get(key)
                if isinstance(items, list):
                    totals[key] += len(items)
                    if totals[key] > cap:
                        raise _too_many(key, totals[key], cap)


def _meta_entry(entry: Any, path: str, out: _Collector, *, settings: Settings, received_ms: int) -> None:
    changes = _list(_object(entry, path).get("changes"), path + ".changes")
    for j, change in enumerate(changes):
        try:
            _meta_change(change, f"{path}.changes[{j}]", out, settings=settings, received_ms=received_ms)
        except _Bad as bad:
            out.rejected.append(bad.rejected)
        except _Ignore as ignore:
            out.ignored.append(ignore.ignored)


def _meta_change(change: Any, path: str, out: _Collector, *, settings: Settings, received_ms: int) -> None:
    change = _object(change, path)
    if change.get("field") != "messages":
        raise _Ignore(path + ".field", f"change field {change.get('field')!r} is not handled", "unsupported")
    value = _object(change.get("value"), path + ".value")
    vpath = path + ".value"
    messages = _list(value.get("messages", []), vpath + ".messages")
    statuses = _list(value.get("statuses", []), vpath + ".statuses")
    company, pnid = _meta_company(value, vpath, settings=settings)
    if company is None:
        out.ignored.extend(
            Rejected(field=f"{vpath}.{key}[{k}]", problem="unknown phone_number_id", reason="unknown_tenant")
            for key, items in (("messages", messages), ("statuses", statuses))
            for k in range(len(items))
        )
        return
    out.errors.extend(_change_errors(value.get("errors"), vpath + ".errors"))
    ctx = _MetaContext(
        company=company,
        phone_number_id=pnid,
        names=_profile_names(value.get("contacts")),
        received_ms=received_ms,
    )
    for k, message in enumerate(messages):
        _collect(out, partial(_meta_message, ctx=ctx), message, f"{vpath}.messages[{k}]")
    for k, status in enumerate(statuses):
        _collect(out, _meta_status, status, f"{vpath}.statuses[{k}]")


def _collect(
    out: _Collector, parse: Callable[[Any, str], InboundMessage | StatusUpdate | NumberChange], item: Any, path: str
) -> None:
    """Parse one message or status into `out`, or record why it was rejected or ignored."""
    try:
        parsed = parse(item, path)
    except _Bad as bad:
        out.rejected.append(bad.rejected)
    except _Ignore as ignore:
        out.ignored.append(ignore.ignored)
    else:
        if isinstance(parsed, InboundMessage):
            out.messages.append(parsed)
        elif isinstance(parsed, NumberChange):
            out.number_changes.append(parsed)
        else:
            out.statuses.append(parsed)


def _meta_company(value: dict[str, Any], path: str, *, settings: Settings) -> tuple[int | None, str]:
    """The company the receiving phone number id belongs to (None: not a served tenant), and that id."""
    metadata = _object(value.get("metadata"), path + ".metadata")
    pnid = metadata.get("phone_number_id")
    if isinstance(pnid, int) and not isinstance(pnid, bool):
        pnid = str(pnid)
    pnid = _required_text(pnid, path + ".metadata.phone_number_id")
    tenant = settings.tenant_for_phone_number_id(pnid)
    return (None if tenant is None else tenant.company_id), pnid


def _change_errors(errors: Any, path: str) -> list[WebhookError]:
    """`value.errors`: failures Meta reports outside any status (at most a few are read)."""
    if not isinstance(errors, list):
        return []
    out = []
    for i, error in enumerate(errors[:MAX_META_ENTRIES]):
        code, title = _error_fields(error)
        out.append(WebhookError(field=f"{path}[{i}]", code=code, title=title))
    return out


def _profile_names(contacts: Any) -> dict[str, str]:
    """wa_id and user_id (BSUID) → profile name; the key "" holds the only contact's name, if there is one."""
    names: dict[str, str] = {}
    if not isinstance(contacts, list):
        return names
    for contact in contacts[:MAX_META_MESSAGES]:
        if not isinstance(contact, dict) or not isinstance(contact.get("profile"), dict):
            continue
        name = contact["profile"].get("name")
        if isinstance(name, str) and name.strip():
            for key in ("wa_id", "user_id"):
                if contact.get(key):
                    names[str(contact[key])] = name.strip()
    if len(contacts) == 1 and names:
        names[""] = next(iter(names.values()))
    return names


@dataclass(frozen=True)
class _MetaContext:
    company: int
    phone_number_id: str
    names: dict[str, str]
    received_ms: int


def _meta_message(message: Any, path: str, *, ctx: _MetaContext) -> InboundMessage | NumberChange:
    message = _object(message, path)
    sender, user_id = _meta_sender(message, path)
    if message.get("type") == "system":
        return _number_change(message, path, sender=sender, company=ctx.company)
    kind, text, extra = _meta_content(message, path)
    text = _bounded_text(text, path)
    if user_id and user_id != sender:
        extra["user_id"] = user_id
    return InboundMessage(
        company_id=ctx.company,
        phone=sender,
        message_id=_message_id(message.get("id"), path + ".id"),
        text=text,
        kind=kind,
        sent_ms=_timestamp_ms(message.get("timestamp"), path + ".timestamp"),
        received_ms=ctx.received_ms,
        profile_name=ctx.names.get(sender) or ctx.names.get(user_id or "") or ctx.names.get(""),
        extra=extra,
        phone_number_id=ctx.phone_number_id,
    )


def _meta_sender(message: dict[str, Any], path: str) -> tuple[str, str | None]:
    """The conversation key and the BSUID: the phone (`from`) when Meta sent one, else `from_user_id`.

    A username user's messages may come without a phone number; the key is then the business-scoped user
    id exactly as Meta sent it, and the reply goes to it.
    """
    user_id = message.get("from_user_id")
    if user_id is not None and not (isinstance(user_id, str) and is_business_scoped_user_id(user_id)):
        raise _Bad(path + ".from_user_id", "must be a business-scoped user id such as US.13491208655302741918")
    raw_from = message.get("from")
    if raw_from is None or raw_from == "":
        if user_id is None:
            raise _Bad(path + ".from", "must be a WhatsApp id, or from_user_id a business-scoped user id")
        return user_id, user_id
    return _wa_id(raw_from, path + ".from"), user_id


def _wa_id(value: Any, path: str) -> str:
    try:
        return normalize_wa_id(value)
    except PhoneError as exc:
        raise _Bad(path, str(exc), exc.reason) from None


def _number_change(message: dict[str, Any], path: str, *, sender: str, company: int) -> NumberChange:
    """A `system` message: only `user_changed_number` matters (the conversation moves to the new number)."""
    system = _object(message.get("system"), path + ".system")
    kind = system.get("type")
    if kind != "user_changed_number":
        raise _Ignore(path + ".system.type", f"system message {kind!r} is not handled", "unsupported")
    # Meta's current reference names the new id `wa_id`; older payloads call it `new_wa_id`.
    new = _wa_id(system.get("wa_id", system.get("new_wa_id")), path + ".system.wa_id")
    if new == sender:
        raise _Ignore(path + ".system.wa_id", "the new number is the old one", "unsupported")
    return NumberChange(company_id=company, old_phone=sender, new_phone=new)


def _meta_content(message: dict[str, Any], path: str) -> _Content:
    kind = message.get("type")
    if kind == "reaction":
        raise _Ignore(path, "reactions are not batched", "reaction")
    extract = _EXTRACTORS.get(kind) if isinstance(kind, str) else None
    if extract is None:
        raise _Ignore(path + ".type", f"message type {kind!r} is not supported", "unsupported")
    return extract(message, f"{path}.{kind}")


def _text_content(message: dict[str, Any], path: str) -> _Content:
    body = _object(message.get("text"), path)
    return MessageKind.TEXT, _required_text(body.get("body"), path + ".body"), {}


def _interactive_content(message: dict[str, Any], path: str) -> _Content:
    interactive = _object(message.get("interactive"), path)
    for key in ("button_reply", "list_reply"):
        if key in interactive:
            reply = _object(interactive[key], f"{path}.{key}")
            title = _required_text(reply.get("title"), f"{path}.{key}.title")
            reply_id = _optional_text(reply.get("id"), f"{path}.{key}.id")
            return MessageKind.INTERACTIVE, title, {"reply_id": reply_id} if reply_id else {}
    raise _Ignore(path + ".type", f"interactive type {interactive.get('type')!r} is not supported", "unsupported")


def _button_content(message: dict[str, Any], path: str) -> _Content:
    button = _object(message.get("button"), path)
    payload = _optional_text(button.get("payload"), path + ".payload")
    text = _required_text(button.get("text"), path + ".text")
    return MessageKind.INTERACTIVE, text, {"reply_id": payload} if payload else {}


def _media_id(media: dict[str, Any], path: str) -> dict[str, str]:
    return {"media_id": _required_text(media.get("id"), path + ".id")}


def _audio_content(message: dict[str, Any], path: str) -> _Content:
    audio = _object(message.get("audio"), path)
    kind = MessageKind.VOICE if audio.get("voice") is True else MessageKind.AUDIO
    return kind, "", _media_id(audio, path)


def _captioned(kind: MessageKind) -> Callable[[dict[str, Any], str], _Content]:
    """An extractor for image, video or document: the caption is the text."""

    def extract(message: dict[str, Any], path: str) -> _Content:
        media = _object(message.get(kind.value), path)
        extra = _media_id(media, path)
        if kind is MessageKind.DOCUMENT and isinstance(media.get("filename"), str):
            extra["filename"] = media["filename"]
        return kind, _optional_text(media.get("caption"), path + ".caption"), extra

    return extract


def _sticker_content(message: dict[str, Any], path: str) -> _Content:
    return MessageKind.STICKER, "", _media_id(_object(message.get("sticker"), path), path)


def _location_content(message: dict[str, Any], path: str) -> _Content:
    location = _object(message.get("location"), path)
    extra = {key: _coordinate(location.get(key), f"{path}.{key}") for key in ("latitude", "longitude")}
    for key in ("name", "address"):
        value = _optional_text(location.get(key), f"{path}.{key}")
        if value:
            extra[key] = value
    return MessageKind.LOCATION, "", extra


def _coordinate(value: Any, path: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(path, "must be a number")
    return str(value)


def _contacts_content(message: dict[str, Any], path: str) -> _Content:
    contacts = _list(message.get("contacts"), path)
    return MessageKind.CONTACTS, "", {"count": str(len(contacts))}


def _order_content(message: dict[str, Any], path: str) -> _Content:
    """A catalog order: a real request that needs an answer, so it reaches the model as text."""
    order = _object(message.get("order"), path)
    items = _list(order.get("product_items"), path + ".product_items")
    lines = [_order_item(item, f"{path}.product_items[{i}]") for i, item in enumerate(items[:ORDER_ITEMS_LISTED])]
    if len(items) > ORDER_ITEMS_LISTED:
        lines.append(f"и ещё позиций: {len(items) - ORDER_ITEMS_LISTED}")
    note = _optional_text(order.get("text"), path + ".text")
    text = "Заказ из каталога: " + "; ".join(lines) + (f". Комментарий: {note}" if note else "")
    extra = {"order_items": str(len(items))}
    catalog = order.get("catalog_id")
    if isinstance(catalog, str) and catalog:
        extra["catalog_id"] = catalog
    return MessageKind.TEXT, text, extra


def _order_item(item: Any, path: str) -> str:
    item = _object(item, path)
    product = _required_text(item.get("product_retailer_id"), path + ".product_retailer_id")
    quantity, price, currency = item.get("quantity"), item.get("item_price"), item.get("currency")
    line = f"{quantity} × {product}" if isinstance(quantity, (int, str)) and not isinstance(quantity, bool) else product
    if isinstance(price, (int, float)) and not isinstance(price, bool):
        line += f" по {price:g} {currency if isinstance(currency, str) else ''}".rstrip()
    return line


_EXTRACTORS: dict[str, Callable[[dict[str, Any], str], _Content]] = {
    "text": _text_content,
    "interactive": _interactive_content,
    "button": _button_content,
    "audio": _audio_content,
    "image": _captioned(MessageKind.IMAGE),
    "video": _captioned(MessageKind.VIDEO),
    "document": _captioned(MessageKind.DOCUMENT),
    "sticker": _sticker_content,
    "location": _location_content,
    "contacts": _contacts_content,
    "order": _order_content,
}


_STATUSES = {s.value: s for s in DeliveryStatus}


def _meta_status(status: Any, path: str) -> StatusUpdate:
    status = _object(status, path)
    value = _STATUSES.get(status["status"]) if isinstance(status.get("status"), str) else None
    if value is None:
        expected = "expected sent, delivered, read, played or failed"
        raise _Bad(path + ".status", f"unknown status {status.get('status')!r}; {expected}")
    # A username user's status may name only the business-scoped user id.
    recipient = status.get("recipient_id") or status.get("recipient_user_id")
    if not isinstance(recipient, str) or len(recipient) > MAX_RECIPIENT_CHARS:
        recipient = None  # it names a Redis key (the status rate limit): never an arbitrary string
    code, title = _status_error(status.get("errors"), path + ".errors")
    return StatusUpdate(
        message_id=_message_id(status.get("id"), path + ".id"),
        status=value,
        recipient=recipient or None,
        timestamp_ms=_timestamp_ms(status.get("timestamp"), path + ".timestamp"),
        error_code=code,
        error_title=title,
    )


def _status_error(errors: Any, path: str) -> tuple[int | None, str | None]:
    """Code and title of the first error of a failed status, when present."""
    if not isinstance(errors, list) or not errors:
        return None, None
    return _error_fields(errors[0])


def _error_fields(error: Any) -> tuple[int | None, str | None]:
    if not isinstance(error, dict):
        return None, None
    code, title = error.get("code"), error.get("title")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        title if isinstance(title, str) and title else None,
    )

"""Webhook bodies parsed at the edge: the old gateway format and the WhatsApp Cloud API."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from system.errors import PayloadError
from system.ingest.payloads import (
    MAX_INBOUND_TEXT_CHARS,
    NumberChange,
    ParseResult,
    WebhookError,
    parse_gateway,
    parse_meta,
)
from system.models import DeliveryStatus, MessageKind, Rejected
from system.phones import is_business_scoped_user_id
from system.settings import Settings, load_settings

DATA = Path(__file__).parent / "data" / "meta"
RECEIVED_MS = 1_764_064_800_000
BSUID = "US.13491208655302741918"
PNID = "106540352242922"
OTHER_PNID = "200000000000001"
PHONE = "79001234567"
TENANTS = f"""
[[tenant]]
company_id = 962302
phone_number_id = "{PNID}"
name = "Arbat"

[[tenant]]
company_id = 1000
phone_number_id = "{OTHER_PNID}"
name = "Kazan"
timezone = "Europe/Moscow"
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS, encoding="utf-8")
    return load_settings({"AIADMIN_TENANTS": str(path), "AIADMIN_MAX_MESSAGE_CHARS": "50"})


def gateway(doc: Any, settings: Settings) -> ParseResult:
    return parse_gateway(orjson.dumps(doc), settings=settings, received_ms=RECEIVED_MS)


def meta(doc: Any, settings: Settings) -> ParseResult:
    return parse_meta(orjson.dumps(doc), settings=settings, received_ms=RECEIVED_MS)


def payload_error(parse: Any, body: bytes, settings: Settings) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse(body, settings=settings, received_ms=RECEIVED_MS)
    return caught.value


# --- gateway --------------------------------------------------------------------------------------------


def test_gateway_single_message(settings: Settings) -> None:
    result = gateway(
        {"from": "+7 (900) 123-45-67", "message": "  Hi, a haircut tomorrow?  ", "messageId": "m1"}, settings
    )
    assert result.rejected == () and result.ignored == () and result.statuses == ()
    (m,) = result.messages
    assert (m.company_id, m.phone, m.message_id, m.text) == (962302, PHONE, "m1", "Hi, a haircut tomorrow?")
    assert (m.kind, m.sent_ms, m.received_ms) == (MessageKind.TEXT, None, RECEIVED_MS)


def test_gateway_batch_with_body_alias_and_company_override(settings: Settings) -> None:
    result = gateway(
        {
            "companyId": "1000",
            "messages": [
                {"from": "89001234567", "body": "one", "messageId": 17, "timestamp": 1_764_064_700},
                {"from": "79001234568@c.us", "message": "two", "messageId": "b", "companyId": 962302},
            ],
        },
        settings,
    )
    assert result.rejected == ()
    first, second = result.messages
    assert (first.company_id, first.text, first.message_id, first.sent_ms) == (
        1000,
        "one",
        "17",
        1_764_064_700_000,
    )
    assert (second.company_id, second.phone) == (962302, "79001234568")


def test_gateway_keeps_good_messages_and_lists_bad_ones(settings: Settings) -> None:
    result = gateway(
        {
            "messages": [
                {"from": PHONE, "message": "fine", "messageId": "ok"},
                {"from": "hello", "message": "x"},
                {"from": PHONE, "message": "   "},
                {"from": "120363025246125486@g.us", "message": "group"},
                {"from": PHONE, "message": "x" * (MAX_INBOUND_TEXT_CHARS + 1)},
                {"from": PHONE, "message": "x", "companyId": 5},
                {"from": PHONE, "message": "x", "companyId": "abc"},
                {"from": PHONE, "message": "x", "messageId": ""},
                {"from": PHONE, "message": "x", "timestamp": "yesterday"},
                "not an object",
                {"from": 79001234567, "message": "x"},
            ]
        },
        settings,
    )
    assert [m.message_id for m in result.messages] == ["ok"]
    assert [(r.field, r.reason) for r in result.rejected] == [
        ("messages[1].from", "invalid"),
        ("messages[2].message", "invalid"),
        ("messages[3].from", "group_sender"),
        ("messages[4].message", "invalid"),
        ("messages[5].companyId", "unknown_tenant"),
        ("messages[6].companyId", "invalid"),
        ("messages[7].messageId", "invalid"),
        ("messages[8].timestamp", "invalid"),
        ("messages[9]", "invalid"),
        ("messages[10].from", "invalid"),
    ]
    problems = [r.problem for r in result.rejected]
    assert problems[0].startswith("is not a phone number")
    assert problems[1] == "must be a non-empty string"
    assert problems[2] == "group chats are not supported"
    assert problems[3] == f"is too long: {MAX_INBOUND_TEXT_CHARS + 1} characters, at most {MAX_INBOUND_TEXT_CHARS}"
    assert problems[4] == "unknown company"


def test_gateway_single_form_uses_bare_field_paths(settings: Settings) -> None:
    result = gateway({"from": PHONE}, settings)
    assert result.messages == ()
    assert result.rejected == (Rejected(field="message", problem="must be a non-empty string"),)


def test_gateway_unknown_default_company_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(f'[[tenant]]\ncompany_id = 1\nname = "A"\nphone_number_id = "{PNID}"\n', encoding="utf-8")
    result = gateway({"from": PHONE, "message": "hi"}, load_settings({"AIADMIN_TENANTS": str(path)}))
    assert result.rejected == (Rejected(field="companyId", problem="unknown company", reason="unknown_tenant"),)


@pytest.mark.parametrize(
    ("timestamp", "sent_ms"),
    [
        (1_764_064_700, 1_764_064_700_000),
        (1_764_064_700.5, 1_764_064_700_500),
        ("1764064700", 1_764_064_700_000),
        (1_764_064_700_123, 1_764_064_700_123),
        ("2025-11-25T10:00:00Z", 1_764_064_800_000),
        ("2025-11-25T13:00:00+03:00", 1_764_064_800_000),
        ("2025-11-25T10:00:00", 1_764_064_800_000),
    ],
)
def test_gateway_timestamp_forms(settings: Settings, timestamp: object, sent_ms: int) -> None:
    (m,) = gateway({"from": PHONE, "message": "hi", "timestamp": timestamp}, settings).messages
    assert m.sent_ms == sent_ms


def test_gateway_id_is_deterministic_when_a_timestamp_is_present(settings: Settings) -> None:
    doc = {"from": "+7 900 123 45 67", "message": "hi", "timestamp": 1_764_064_700}
    (first,) = gateway(doc, settings).messages
    (retry,) = gateway(doc, settings).messages
    digest = hashlib.sha256(f"962302|{PHONE}|1764064700000|hi".encode()).hexdigest()[:32]
    assert first.message_id == retry.message_id == "gw-" + digest


def test_replayed_gateway_body_without_id_or_timestamp_gets_the_same_id(settings: Settings) -> None:
    raw = b'{"from": "79001234567", "message": "hi"}'
    ids = {parse_gateway(raw, settings=settings, received_ms=ms).messages[0].message_id for ms in (1, 2, 3, 4)}
    digest = hashlib.sha256(b"||" + raw).hexdigest()[:32]
    assert ids == {"gw-" + digest}


def test_gateway_id_without_id_or_timestamp_follows_the_signed_timestamp(settings: Settings) -> None:
    raw = b'{"from": "79001234567", "message": "hi"}'
    first, again, later = (
        parse_gateway(raw, settings=settings, received_ms=0, signed_ms=ms).messages[0].message_id
        for ms in (1_764_064_700_000, 1_764_064_700_000, 1_764_064_760_000)
    )
    assert first == again != later


def test_same_text_twice_in_one_gateway_batch_gets_two_ids(settings: Settings) -> None:
    result = gateway({"messages": [{"from": PHONE, "message": "да"}, {"from": PHONE, "message": "да"}]}, settings)
    first, second = (m.message_id for m in result.messages)
    assert first != second


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"[1, 2]", 422, "invalid_payload"),
        (b'"text"', 422, "invalid_payload"),
        (b'{"messages": []}', 422, "invalid_payload"),
        (b'{"messages": {"from": "x"}}', 422, "invalid_payload"),
        (orjson.dumps({"messages": [{"from": PHONE, "message": "x"}] * 101}), 413, "too_many_items"),
    ],
)
def test_gateway_unusable_bodies(settings: Settings, body: bytes, status: int, code: str) -> None:
    error = payload_error(parse_gateway, body, settings)
    assert (error.status_code, error.code) == (status, code)
    answer = error.body()
    assert answer["error"] == code and answer["message"] == error.message
    assert isinstance(answer["errors"], list)


def test_payload_error_lists_the_field(settings: Settings) -> None:
    error = payload_error(parse_gateway, b'{"messages": []}', settings)
    assert error.body() == {
        "error": "invalid_payload",
        "message": "messages must not be empty",
        "errors": [{"field": "messages", "problem": "messages must not be empty", "reason": "invalid"}],
    }


# --- WhatsApp Cloud API ---------------------------------------------------------------------------------


def wa_message(kind: str, content: Any = None, *, sender: str = PHONE, wamid: str = "wamid.1") -> dict[str, Any]:
    """One message object as Meta sends it; `content` goes under the key named by the type."""
    message: dict[str, Any] = {"from": sender, "id": wamid, "timestamp": "1764064700", "type": kind}
    if content is not None:
        message[kind] = content
    return message


def wa_change(
    *messages: dict[str, Any],
    statuses: list[dict[str, Any]] | None = None,
    pnid: str = PNID,
    contacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "74950000000", "phone_number_id": pnid},
        "contacts": contacts if contacts is not None else [{"profile": {"name": "Ivan"}, "wa_id": PHONE}],
    }
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = statuses
    return {"field": "messages", "value": value}


def wa_body(*changes: dict[str, Any], entries: int = 1) -> dict[str, Any]:
    """A webhook body with `entries` copies of one entry holding `changes`."""
    entry = {"id": "WABA_ID", "changes": list(changes)}
    return {"object": "whatsapp_business_account", "entry": [entry] * entries}


def only_message(result: ParseResult) -> Any:
    assert result.rejected == () and result.ignored == ()
    (message,) = result.messages
    return message


def test_meta_text(settings: Settings) -> None:
    m = only_message(meta(wa_body(wa_change(wa_message("text", {"body": "  Hello  "}))), settings))
    assert (m.company_id, m.phone, m.message_id, m.text, m.kind) == (
        962302,
        PHONE,
        "wamid.1",
        "Hello",
        "text",
    )
    assert (m.sent_ms, m.received_ms, m.profile_name) == (1_764_064_700_000, RECEIVED_MS, "Ivan")


def test_meta_routes_by_phone_number_id(settings: Settings) -> None:
    m = only_message(meta(wa_body(wa_change(wa_message("text", {"body": "hi"}), pnid=OTHER_PNID)), settings))
    assert m.company_id == 1000


@pytest.mark.parametrize(
    ("interactive", "text", "reply_id"),
    [
        ({"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}}, "Yes", "yes"),
        ({"type": "list_reply", "list_reply": {"id": "s2", "title": "Beard trim"}}, "Beard trim", "s2"),
    ],
)
def test_meta_interactive(settings: Settings, interactive: dict[str, Any], text: str, reply_id: str) -> None:
    m = only_message(meta(wa_body(wa_change(wa_message("interactive", interactive))), settings))
    assert (m.kind, m.text, m.extra) == (MessageKind.INTERACTIVE, text, {"reply_id": reply_id})


def test_meta_template_button(settings: Settings) -> None:
    m = only_message(meta(wa_body(wa_change(wa_message("button", {"text": "Confirm", "payload": "c"}))), settings))
    assert (m.kind, m.text, m.extra) == (MessageKind.INTERACTIVE, "Confirm", {"reply_id": "c"})


@pytest.mark.parametrize(("voice", "kind"), [(True, MessageKind.VOICE), (False, MessageKind.AUDIO)])
def test_meta_voice_and_audio(settings: Settings, voice: bool, kind: MessageKind) -> None:
    audio = {"id": "media-1", "mime_type": "audio/ogg; codecs=opus", "voice": voice}
    m = only_message(meta(wa_body(wa_change(wa_message("audio", audio))), settings))
    assert (m.kind, m.text, m.extra) == (kind, "", {"media_id": "media-1"})


def test_meta_image_with_caption(settings: Settings) -> None:
    image = {"id": "media-2", "caption": " like this ", "mime_type": "image/jpeg"}
    m = only_message(meta(wa_body(wa_change(wa_message("image", image))), settings))
    assert (m.kind, m.text, m.extra) == (MessageKind.IMAGE, "like this", {"media_id": "media-2"})


def test_meta_document_keeps_the_filename(settings: Settings) -> None:
    document = {"id": "media-3", "filename": "price.pdf"}
    m = only_message(meta(wa_body(wa_change(wa_message("document", document))), settings))
    assert (m.kind, m.text, m.extra) == (
        MessageKind.DOCUMENT,
        "",
        {"media_id": "media-3", "filename": "price.pdf"},
    )


def test_meta_sticker(settings: Settings) -> None:
    m = only_message(meta(wa_body(wa_change(wa_message("sticker", {"id": "media-4"}))), settings))
    assert (m.kind, m.text, m.extra) == (MessageKind.STICKER, "", {"media_id": "media-4"})


def test_meta_location(settings: Settings) -> None:
    location = {"latitude": 55.7522, "longitude": 37.6156, "name": "Home", "address": "Arbat 1"}
    m = only_message(meta(wa_body(wa_change(wa_message("location", location))), settings))
    assert (m.kind, m.text) == (MessageKind.LOCATION, "")
    assert m.extra == {"latitude": "55.7522", "longitude": "37.6156", "name": "Home", "address": "Arbat 1"}


def test_meta_contacts(settings: Settings) -> None:
    m = only_message(meta(wa_body(wa_change(wa_message("contacts", [{"name": {}}, {"name": {}}]))), settings))
    assert (m.kind, m.extra) == (MessageKind.CONTACTS, {"count": "2"})


def test_meta_reaction_is_ignored(settings: Settings) -> None:
    result = meta(wa_body(wa_change(wa_message("reaction", {"message_id": "wamid.0", "emoji": "👍"}))), settings)
    assert result.messages == () and result.rejected == ()
    assert [(r.field, r.reason) for r in result.ignored] == [("entry[0].changes[0].value.messages[0]", "reaction")]


@pytest.mark.parametrize("kind", ["unsupported", "system", "brand_new_type"])
def test_meta_unsupported_types_are_ignored(settings: Settings, kind: str) -> None:
    result = meta(wa_body(wa_change(wa_message(kind, {}))), settings)
    assert result.messages == () and result.rejected == ()
    assert [r.reason for r in result.ignored] == ["unsupported"]


def test_meta_unknown_phone_number_id_is_ignored(settings: Settings) -> None:
    change = wa_change(wa_message("text", {"body": "a"}), wa_message("text", {"body": "b"}), pnid="999")
    result = meta(wa_body(change), settings)
    assert result.messages == () and result.rejected == ()
    assert [(r.field, r.reason) for r in result.ignored] == [
        ("entry[0].changes[0].value.messages[0]", "unknown_tenant"),
        ("entry[0].changes[0].value.messages[1]", "unknown_tenant"),
    ]


def test_meta_non_message_changes_are_ignored(settings: Settings) -> None:
    result = meta(wa_body({"field": "account_update", "value": {}}), settings)
    assert [(r.field, r.reason) for r in result.ignored] == [("entry[0].changes[0].field", "unsupported")]


def test_meta_iterates_every_entry_change_and_message(settings: Settings) -> None:
    change = wa_change(
        wa_message("text", {"body": "a"}, wamid="w1"),
        wa_message("text", {"body": "b"}, wamid="w2", sender="79001234568"),
        contacts=[
            {"profile": {"name": "Ivan"}, "wa_id": PHONE},
            {"profile": {"name": "Olga"}, "wa_id": "79001234568"},
        ],
    )
    other = wa_change(wa_message("text", {"body": "c"}, wamid="w3"), pnid=OTHER_PNID)
    result = meta(wa_body(change, other, entries=2), settings)
    assert [m.message_id for m in result.messages] == ["w1", "w2", "w3"] * 2
    assert [m.profile_name for m in result.messages[:3]] == ["Ivan", "Olga", "Ivan"]
    assert [m.company_id for m in result.messages[:3]] == [962302, 962302, 1000]


def test_meta_bad_messages_are_rejected_with_their_path(settings: Settings) -> None:
    no_id = wa_message("text", {"body": "a"})
    del no_id["id"]
    no_from = wa_message("text", {"body": "a"})
    del no_from["from"]
    change = wa_change(
        wa_message("text", {"body": "fine"}),
        no_id,
        no_from,
        wa_message("text", {"body": "  "}),
        wa_message("text", {"body": "a"}, sender="12345"),
        wa_message("location", {"latitude": "north"}),
    )
    result = meta(wa_body(change), settings)
    assert len(result.messages) == 1
    prefix = "entry[0].changes[0].value.messages"
    assert [r.field for r in result.rejected] == [
        f"{prefix}[1].id",
        f"{prefix}[2].from",
        f"{prefix}[3].text.body",
        f"{prefix}[4].from",
        f"{prefix}[5].location.latitude",
    ]


def test_meta_statuses(settings: Settings) -> None:
    statuses = [
        {"id": "wamid.out1", "status": "delivered", "timestamp": "1764064700", "recipient_id": PHONE},
        {
            "id": "wamid.out2",
            "status": "failed",
            "timestamp": "1764064701",
            "recipient_id": PHONE,
            "errors": [{"code": 131047, "title": "Re-engagement message"}],
        },
        {"id": "wamid.out3", "status": "deleted", "timestamp": "1764064702"},
    ]
    result = meta(wa_body(wa_change(statuses=statuses)), settings)
    delivered, failed = result.statuses
    assert (delivered.message_id, delivered.status, delivered.recipient) == (
        "wamid.out1",
        DeliveryStatus.DELIVERED,
        PHONE,
    )
    assert delivered.timestamp_ms == 1_764_064_700_000 and delivered.error_code is None
    assert (failed.status, failed.error_code, failed.error_title) == (
        DeliveryStatus.FAILED,
        131047,
        "Re-engagement message",
    )
    assert [r.field for r in result.rejected] == ["entry[0].changes[0].value.statuses[2].status"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (orjson.dumps({"object": "page", "entry": []}), 422),
        (orjson.dumps({"entry": []}), 422),
        (orjson.dumps({"object": "whatsapp_business_account", "entry": {}}), 422),
        (orjson.dumps({"object": "whatsapp_business_account"}), 422),
        (b"[]", 422),
    ],
)
def test_meta_unusable_bodies(settings: Settings, body: bytes, status: int) -> None:
    assert payload_error(parse_meta, body, settings).status_code == status


def test_meta_without_a_tenants_file_serves_the_default_company() -> None:
    result = meta(wa_body(wa_change(wa_message("text", {"body": "hi"}), pnid="anything")), load_settings({}))
    assert only_message(result).company_id == 962302


# --- Meta: caps, username users, orders, system messages, statuses and errors --------------------------


def corpus(name: str, settings: Settings) -> ParseResult:
    return parse_meta((DATA / name).read_bytes(), settings=settings, received_ms=RECEIVED_MS)


@pytest.mark.parametrize(
    ("body", "field", "cap"),
    [
        (wa_body(wa_change(wa_message("text", {"body": "a"})), entries=11), "entry", 10),
        (wa_body(*[wa_change(wa_message("text", {"body": "a"}))] * 11), "entry[0].changes", 10),
        (wa_body(*[wa_change(*[wa_message("text", {"body": "a"})] * 51)] * 2), "messages", 100),
        (wa_body(wa_change(statuses=[{"id": "w", "status": "read"}] * 101)), "statuses", 100),
        (wa_body(*[wa_change(*[{}] * 34)] * 3), "messages", 100),  # empty messages count too
    ],
)
def test_meta_body_over_a_cap_is_refused_whole_naming_the_field(
    settings: Settings, body: dict[str, Any], field: str, cap: int
) -> None:
    error = payload_error(parse_meta, orjson.dumps(body), settings)
    assert (error.status_code, error.code) == (413, "too_many_items")
    assert [(r.field, r.problem) for r in error.errors] == [(field, f"at most {cap} items")]


def test_meta_body_of_empty_messages_is_refused_fast(settings: Settings) -> None:
    # The reported attack: 1 MiB of empty messages took 36 s and answered 45 MB; now it is one list length.
    body = (
        b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"messages":['
        + b",".join([b"{}"] * 300_000)
        + b"]}}]}]}"
    )
    error = payload_error(parse_meta, body, settings)
    assert error.status_code == 413
    assert len(orjson.dumps(error.body())) < 300


def test_meta_username_user_without_a_phone_is_keyed_by_the_bsuid(settings: Settings) -> None:
    m = only_message(corpus("username_text.json", settings))
    assert (m.phone, m.profile_name, m.phone_number_id) == (BSUID, "Sheena Nelson", PNID)
    assert m.text == "Здравствуйте, можно записаться на стрижку?"


def test_meta_message_with_a_phone_and_a_user_id_keeps_the_phone_as_key(settings: Settings) -> None:
    message = {**wa_message("text", {"body": "hi"}), "from_user_id": BSUID}
    m = only_message(meta(wa_body(wa_change(message)), settings))
    assert (m.phone, m.extra) == (PHONE, {"user_id": BSUID})


@pytest.mark.parametrize(
    ("fields", "path"),
    [({"from_user_id": "not a bsuid"}, "from_user_id"), ({}, "from"), ({"from_user_id": 17}, "from_user_id")],
)
def test_meta_sender_without_a_phone_or_a_bsuid_is_rejected(
    settings: Settings, fields: dict[str, Any], path: str
) -> None:
    message = {k: v for k, v in wa_message("text", {"body": "hi"}).items() if k != "from"} | fields
    result = meta(wa_body(wa_change(message)), settings)
    assert [r.field for r in result.rejected] == [f"entry[0].changes[0].value.messages[0].{path}"]


@pytest.mark.parametrize("sender", ["5215512345678", "15550783881", "16505551234"])
def test_meta_real_sender_ids_that_fail_the_validity_gate_are_accepted(settings: Settings, sender: str) -> None:
    m = only_message(meta(wa_body(wa_change(wa_message("text", {"body": "hi"}, sender=sender))), settings))
    assert m.phone == sender


def test_meta_message_carries_the_phone_number_id_it_was_sent_to(settings: Settings) -> None:
    change = wa_change(wa_message("text", {"body": "hi"}), pnid=OTHER_PNID)
    assert only_message(meta(wa_body(change), settings)).phone_number_id == OTHER_PNID


def test_meta_long_text_is_accepted_whole(settings: Settings) -> None:
    text = "очень длинное сообщение " * 400  # 9,600 characters; settings cut the model's copy at 50
    m = only_message(meta(wa_body(wa_change(wa_message("text", {"body": text}))), settings))
    assert m.text == text.strip()


def test_meta_order_is_batched_as_a_text_the_model_answers(settings: Settings) -> None:
    m = only_message(corpus("order.json", settings))
    assert (m.phone, m.kind) == ("5215512345678", MessageKind.TEXT)
    assert m.text == (
        "Заказ из каталога: 1 × haircut-men по 1500 RUB; 2 × beard по 700 RUB. Комментарий: На субботу, если можно"
    )
    assert m.extra == {"order_items": "2", "catalog_id": "194836987003835"}


def test_meta_changed_number_moves_the_conversation(settings: Settings) -> None:
    result = corpus("system_user_changed_number.json", settings)
    assert result.messages == () and result.rejected == () and result.ignored == ()
    assert result.number_changes == (NumberChange(company_id=962302, old_phone=PHONE, new_phone="79009998877"),)


def test_meta_played_status_is_accepted_and_ranks_after_read(settings: Settings) -> None:
    result = corpus("status_played.json", settings)
    assert result.rejected == ()
    (played,) = result.statuses
    assert (played.status, played.recipient) == (DeliveryStatus.PLAYED, BSUID)
    assert DeliveryStatus.READ.rank < DeliveryStatus.PLAYED.rank < DeliveryStatus.FAILED.rank


def test_meta_failed_status_carries_its_error_code(settings: Settings) -> None:
    (failed,) = corpus("status_failed_131047.json", settings).statuses
    assert (failed.status, failed.error_code, failed.error_title) == (
        DeliveryStatus.FAILED,
        131047,
        "Re-engagement message",
    )


def test_meta_change_level_errors_are_read(settings: Settings) -> None:
    result = corpus("value_errors.json", settings)
    assert result.errors == (
        WebhookError(field="entry[0].changes[0].value.errors[0]", code=131026, title="Message Undeliverable"),
    )


# --- robustness -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        {"timestamp": "9" * 5000},
        {"timestamp": 1e306},
        {"timestamp": -5},
        {"timestamp": True},
        {"companyId": "9" * 5000},
        {"messageId": "x" * 257},
    ],
)
def test_huge_or_odd_values_are_rejected_not_crashing(settings: Settings, field: dict[str, Any]) -> None:
    result = gateway({"from": PHONE, "message": "hi", **field}, settings)
    assert result.messages == ()
    assert [r.field for r in result.rejected] == list(field)


_KEYS = [
    *("from", "message", "body", "messageId", "timestamp", "companyId", "messages", "object", "entry"),
    *("changes", "field", "value", "metadata", "phone_number_id", "type", "text", "id", "statuses", "status"),
]
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from([PHONE, PNID, "text", "messages", "whatsapp_business_account"])
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), children, max_size=6),
    max_leaves=30,
)


@given(_JSON)
def test_any_json_gives_a_result_or_a_payload_error(doc: Any) -> None:
    body = orjson.dumps(doc)
    for parse in (parse_gateway, parse_meta):
        try:
            result = parse(body, settings=load_settings({}), received_ms=RECEIVED_MS)
        except PayloadError as exc:
            assert exc.status_code in (400, 413, 422)
        else:
            # Whatever arbitrary JSON gets through is canonical, and every entry turned away names its field.
            for m in result.messages:
                assert m.phone.isdigit() or is_business_scoped_user_id(m.phone), m
                assert m.message_id and m.received_ms == RECEIVED_MS and m.company_id > 0, m
            for r in (*result.rejected, *result.ignored):
                assert r.field and r.problem, r


def test_meta_changed_number_in_the_older_new_wa_id_form_is_read(settings: Settings) -> None:
    system = {"body": "User changed number", "new_wa_id": "79009998877", "type": "user_changed_number"}
    result = meta(wa_body(wa_change(wa_message("system", system))), settings)
    assert [c.new_phone for c in result.number_changes] == ["79009998877"]


@pytest.mark.parametrize("kind", ["user_changed_user_id", "customer_identity_changed"])
def test_meta_other_system_messages_are_ignored(settings: Settings, kind: str) -> None:
    result = meta(wa_body(wa_change(wa_message("system", {"body": "x", "type": kind}))), settings)
    assert (result.number_changes, result.messages) == ((), ())
    assert [(r.field, r.reason) for r in result.ignored] == [
        ("entry[0].changes[0].value.messages[0].system.type", "unsupported")
    ]

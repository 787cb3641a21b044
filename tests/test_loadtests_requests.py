"""What the simulated clients send: signed webhooks, message ids, fragment tags, phones and the conversation."""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import date

import orjson
import phonenumbers
import pytest

from loadtests._script import Conversation, split_words, tag, tagged, tags_in
from loadtests._webhook import Webhook, message_id
from simulator.phones import PhonePool
from system.ingest.payloads import parse_gateway, parse_meta
from system.ingest.signatures import verify
from system.settings import load_settings

from .loadtests_support import PHONE


def test_meta_webhook_is_signed_with_the_app_secret_over_the_raw_body() -> None:
    at_ms = 1_764_064_800_000
    request = Webhook("meta", "s3cret").text(sender=PHONE, text="Хочу записаться #aa", message_id="w.x", at_ms=at_ms)
    expected = "sha256=" + hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert request.path == "/webhook/whatsapp"
    assert request.headers["X-Hub-Signature-256"] == expected
    verify(request.body, request.headers["X-Hub-Signature-256"], "s3cret", header="X-Hub-Signature-256")
    parsed = parse_meta(request.body, settings=load_settings({}), received_ms=at_ms + 100)
    [message] = parsed.messages
    assert (message.phone, message.text, message.message_id) == (PHONE, "Хочу записаться #aa", "w.x")
    assert message.sent_ms == at_ms


def test_gateway_webhook_carries_the_company_and_is_signed_only_with_a_secret() -> None:
    unsigned = Webhook("gateway", "", company_id=777).text(sender=PHONE, text="завтра", message_id="m1", at_ms=5_000)
    assert unsigned.path == "/webhook/whatsapp/batched"
    assert "X-Signature" not in unsigned.headers
    assert orjson.loads(unsigned.body) == {
        "from": PHONE,
        "message": "завтра",
        "messageId": "m1",
        "timestamp": 5_000,
        "companyId": 777,
    }
    signed = Webhook("gateway", "gw").text(sender=PHONE, text="завтра", message_id="m1", at_ms=1_764_064_800_000)
    verify(signed.body, signed.headers["X-Signature"], "gw", header="X-Signature")
    [message] = parse_gateway(signed.body, settings=load_settings({}), received_ms=1_764_064_800_100).messages
    assert message.text == "завтра"


def test_message_ids_are_unique_per_run_phone_turn_and_fragment() -> None:
    ids = {message_id(run, PHONE, turn, frag) for run in ("a", "b") for turn in range(3) for frag in range(3)}
    assert len(ids) == 18


def test_tags_number_turn_and_fragment_without_digits() -> None:
    assert tag(0, 1) == "#ab"
    text = " ".join(tagged(w, turn=2, fragment=i) for i, w in enumerate(["Хочу записаться", "завтра в 15:00"]))
    assert text == "Хочу записаться #ca завтра в 15:00 #cb"
    assert tags_in(text) == [(2, 0), (2, 1)]
    assert tags_in("в 15:00 #abc") == []  # three letters are no tag
    with pytest.raises(ValueError, match=r"0\.\.25"):
        tag(26, 0)


def test_phones_are_distinct_valid_russian_mobiles_reproducible_by_seed() -> None:
    phones = _take(PhonePool(seed=3), 500)
    assert len(set(phones)) == 500
    for phone in phones[:100]:
        parsed = phonenumbers.parse("+" + phone)
        assert phonenumbers.is_valid_number(parsed) and phonenumbers.region_code_for_number(parsed) == "RU"
        assert phone.startswith("79") and len(phone) == 11
    assert _take(PhonePool(seed=3), 20) == phones[:20]
    assert _take(PhonePool(seed=4), 20) != phones[:20]


def _take(pool: PhonePool, n: int) -> list[str]:
    return [pool.take() for _ in range(n)]


def test_split_words_keeps_the_text_and_bounds_the_count() -> None:
    text = "Здравствуйте! Хочу записаться на стрижку машинкой завтра в 15:00"
    rng = random.Random(5)
    for count in range(1, 12):
        parts = split_words(text, count, rng)
        assert " ".join(parts) == text
        assert len(parts) == min(count, 9)
        assert all(parts)
    assert split_words("", 3, rng) == []


def test_conversation_books_with_phrases_the_fake_llm_understands() -> None:
    talk = Conversation(PHONE, random.Random(2), date(2026, 1, 12), opening_fragments=(3, 3), follow_fragments=(1, 1))
    opening = talk.opening()
    assert len(opening) == 3
    assert "записаться" in " ".join(opening).lower()
    answer = talk.answer("На завтра свободно: 15:00, 16:30. Какое время удобно?")
    assert answer == ["давайте в 15:00"]
    assert not talk.booked
    # The client wants «Мужская стрижка» (seed 2): a confirmation of it is what it takes, without a correction.
    assert talk.answer("✅ Отлично, записал! «Мужская стрижка» завтра в 15:00.") in (None, ["спасибо!"])
    assert talk.booked

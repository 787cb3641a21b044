"""The load tests' pure parts (profiles, payloads and signatures, turns and replies, merge check, figures), the fake
WhatsApp's inspection route, and one short steady run of the whole chain (`python -m loadtests.run`).

Nothing here imports Locust: it monkey-patches the process with gevent on import, so it only ever runs as its
own process (the locustfile is exercised by the end-to-end run).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import orjson
import phonenumbers
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from loadtests._drain import check_merges, collect_replies
from loadtests._ledger import Fragment, HistoryItem, MergeCheck, Reply, Turn, check_merge, reconcile
from loadtests._load import LoadOptions, LoadRun, wall_ms
from loadtests._profiles import PROFILES, SPIKE_SPAWN_RATE, Profile, Stage, Typing, profile_named
from loadtests._script import Conversation, split_words, tag, tagged, tags_in
from loadtests._summary import (
    Reservoir,
    add_buckets,
    histogram,
    histogram_count,
    histogram_quantile,
    latency_block,
    lateness_block,
    percentile,
    queue_lag_block,
    subtract_buckets,
)
from loadtests._webhook import Webhook, message_id
from loadtests.run import _stack as stack
from loadtests.run.__main__ import locust_command
from reports.loadgen import PhonePool
from simulator.redis_target import mark_sync
from simulator.whatsapp import OutboundMessage, Outbox, create_app
from system.clock import WallClock
from system.payloads import parse_gateway, parse_meta
from system.settings import load_settings
from system.signatures import verify

from .conftest import IN_CI, REAL_REDIS_URL, REDIS_FLUSH, REDIS_FORCE

ROOT = Path(__file__).resolve().parents[1]
# The load run's database: the tests' own (AIADMIN_TEST_REDIS_URL) unless AIADMIN_LOAD_REDIS_URL names another.
LOAD_REDIS_URL = os.environ.get("AIADMIN_LOAD_REDIS_URL") or REAL_REDIS_URL
PHONE = "79161234567"
SUMMARY_KEYS = {
    "profile": str,
    "started_at": str,
    "duration_s": float,
    "peak_users": int,
    "host": str,
    "format": str,
    "settings": dict,
    "requests": dict,
    "accept_ms": dict,
    "e2e_ms": dict,
    "e2e_ms_samples": list,
    "fragments_sent": int,
    "turns_sent": int,
    "turns_answered": int,
    "lost_turns": int,
    "double_replies": int,
    "replies": int,
    "merge": dict,
    "flush_lateness_ms": dict,
    "queue_lag_ms": dict,
    "dead_letters": int,
    "errors": list,
}


# --- figures ---------------------------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # unordered on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_latency_block_rounds_and_counts() -> None:
    block = latency_block([1.04, 2.0, 3.0, 400.26])
    assert block == {"p50": 2.0, "p90": 400.3, "p99": 400.3, "max": 400.3, "count": 4}
    assert latency_block([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "count": 0}


def test_reservoir_is_bounded_but_counts_everything() -> None:
    kept = Reservoir(cap=100, rng=random.Random(1))
    for v in range(10_000):
        kept.add(float(v))
    assert len(kept.values) == 100
    assert kept.count == 10_000
    assert kept.max == 9_999.0
    assert 2_500 < percentile(kept.values, 50) < 7_500  # type: ignore[operator]  # a uniform sample's median


PROM_TEXT = """# HELP aiadmin_queue_wait_seconds Enqueue to pick-up
# TYPE aiadmin_queue_wait_seconds histogram
aiadmin_queue_wait_seconds_bucket{le="0.001"} 0.0
aiadmin_queue_wait_seconds_bucket{le="0.01"} 50.0
aiadmin_queue_wait_seconds_bucket{le="0.1"} 90.0
aiadmin_queue_wait_seconds_bucket{le="1.0"} 100.0
aiadmin_queue_wait_seconds_bucket{le="+Inf"} 100.0
aiadmin_queue_wait_seconds_count 100.0
aiadmin_queue_wait_seconds_sum 3.0
# HELP aiadmin_turn_seconds Worker time per turn
# TYPE aiadmin_turn_seconds histogram
aiadmin_turn_seconds_bucket{le="1.0"} 5.0
aiadmin_turn_seconds_bucket{le="+Inf"} 5.0
aiadmin_turn_seconds_count 5.0
aiadmin_turn_seconds_sum 1.0
"""


def test_queue_wait_histogram_is_parsed_and_interpolated_like_prometheus() -> None:
    buckets = histogram(PROM_TEXT, "aiadmin_queue_wait_seconds")
    assert buckets[0] == (0.001, 0.0)
    assert buckets[-1][1] == 100.0 and histogram_count(buckets) == 100
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)  # rank 50 is the top of the 1-10 ms bucket
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert queue_lag_block(buckets) == {"p50": 10.0, "p99": 910.0, "count": 100}


def test_queue_wait_is_the_difference_between_scrapes_and_sums_processes() -> None:
    after = histogram(PROM_TEXT, "aiadmin_queue_wait_seconds")
    before = [(le, count / 2) for le, count in after]
    assert histogram_count(subtract_buckets(after, before)) == 50
    assert subtract_buckets(after, []) == after
    assert histogram_count(add_buckets(after, after)) == 200
    with pytest.raises(ValueError, match="different buckets"):
        subtract_buckets(after, [(1.0, 0.0)])
    assert queue_lag_block([]) == {"p50": None, "p99": None, "count": 0}
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 3.0)]) == 0.1  # +Inf: the highest finite bound


def test_lateness_comes_from_the_stats_route_or_is_null() -> None:
    stats = {"flush_lateness_ms": {"p50": 1, "p99": 12, "max": 40, "samples": 9}}
    assert lateness_block(stats) == {"p50": 1.0, "p99": 12.0, "max": 40.0}
    assert lateness_block({"flush_lateness_ms": {"p50": None, "p99": None, "max": None}}) == {
        "p50": None,
        "p99": None,
        "max": None,
    }
    assert lateness_block(None) == {"p50": None, "p99": None, "max": None}


# --- what the clients send --------------------------------------------------------------------------------------


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
    assert talk.answer("✅ Отлично, записал! «Стрижка машинкой» завтра в 15:00.") in (None, ["спасибо!"])
    assert talk.booked


# --- profiles --------------------------------------------------------------------------------------------------


def test_profile_ticks_through_its_stages_then_stops() -> None:
    spike = profile_named("spike")
    assert spike.tick(0) == (3, 3)
    assert spike.tick(60) == (12, SPIKE_SPAWN_RATE)  # the newcomers come in over seconds, not at once
    assert spike.tick(239.9) == (3, 9)
    assert spike.tick(240) is None
    assert spike.peak_users == 12
    short = profile_named("spike", scale=0.1)
    assert short.duration_s == pytest.approx(24.0)
    assert short.tick(6.5) == (12, SPIKE_SPAWN_RATE)


def test_profiles_are_known_by_name_and_steady_is_the_default() -> None:
    assert set(PROFILES) == {"steady", "burst", "spike", "soak"}
    assert profile_named(None).name == "steady"
    with pytest.raises(ValueError, match="known: steady, burst, spike, soak"):
        profile_named("stress")
    with pytest.raises(ValueError, match="positive"):
        profile_named("steady", scale=0)


def test_every_turn_fits_one_batch() -> None:
    """At most the default batch size (10) per turn, and gaps well under the batch timeout, else a turn splits."""
    for p in PROFILES.values():
        assert max(p.typing.opening_fragments + p.typing.follow_fragments) <= 10, p.name
        for timeout_ms in (500, 1000, 1500, 9000):
            low, high = p.typing.gap_range_ms(timeout_ms)
            assert low <= high <= 0.4 * timeout_ms
    assert PROFILES["burst"].typing.opening_fragments[0] >= 5  # rapid-fire means many fragments


def test_profile_description_goes_into_the_summary() -> None:
    typing = Typing((1, 2), (1, 1), (10, 20), (0, 0), (0, 0))
    described = Profile("x", "test", (Stage(10, 2, 1),), typing).scaled(0.5).describe()
    assert described["stages"] == [{"until_s": 5.0, "users": 2, "spawn_rate": 1}]


# --- turns, replies, merge ---------------------------------------------------------------------------------------


def make_turn(index: int, texts: list[str], *, at_ms: int, phone: str = PHONE, outcomes: str = "") -> Turn:
    turn = Turn(phone=phone, index=index, first_sent_ms=at_ms, last_sent_ms=at_ms + 500)
    for i, text in enumerate(texts):
        outcome = {"a": "accepted", "r": "refused", "p": "pending"}[(outcomes or "a" * len(texts))[i]]
        turn.fragments.append(Fragment(tagged(text, turn=index, fragment=i), outcome))  # type: ignore[arg-type]
    return turn


def reply(seq: int, at_ms: int, to: str = PHONE) -> Reply:
    return Reply(seq=seq, to=to, text=f"ответ {seq}", at_ms=at_ms)


def test_each_turn_answered_once_is_reconciled_with_its_latency() -> None:
    turns = [make_turn(0, ["привет"], at_ms=1_000), make_turn(1, ["давайте в 15:00"], at_ms=20_000)]
    result = reconcile(
        turns, [reply(1, 4_500), reply(2, 23_000), reply(3, 9_000, to="79000000000")], reply_timeout_ms=10_000
    )
    assert (len(result.counted), result.turns_answered, result.lost, result.double, result.replies) == (2, 2, 0, 0, 2)
    assert result.e2e_ms() == [3_000.0, 2_500.0]
    assert result.problems() == []


def test_missing_and_late_replies_are_lost() -> None:
    turns = [make_turn(0, ["привет"], at_ms=1_000, phone="79000000001"), make_turn(0, ["привет"], at_ms=1_000)]
    result = reconcile(turns, [reply(1, 30_000)], reply_timeout_ms=10_000)  # PHONE's reply came 28.5 s late
    assert result.lost == 2 and result.turns_answered == 0
    assert result.e2e_ms() == []
    assert any("after 28500 ms" in p for p in result.problems())


def test_second_reply_is_a_double_whether_before_or_after_the_next_turn() -> None:
    first = make_turn(0, ["привет"], at_ms=1_000)
    second = make_turn(1, ["давайте"], at_ms=20_000)
    before = reconcile([first, second], [reply(1, 3_000), reply(2, 4_000), reply(3, 22_000)], reply_timeout_ms=10_000)
    assert before.double == 1 and before.verdicts[0].double
    after = reconcile([first, second], [reply(1, 3_000), reply(2, 20_100), reply(3, 22_000)], reply_timeout_ms=10_000)
    assert after.double == 1 and after.verdicts[1].double


def test_a_turn_with_nothing_accepted_is_owed_no_reply() -> None:
    refused = make_turn(0, ["привет"], at_ms=1_000, outcomes="r")
    result = reconcile([refused], [reply(1, 500)], reply_timeout_ms=10_000)
    assert result.counted == [] and result.lost == 0
    assert len(result.unattributed) == 1  # before any turn of the phone


def history(*texts: str, at_ms: int = 10) -> list[HistoryItem]:
    items: list[HistoryItem] = []
    for text in texts:
        items += [HistoryItem("client", text, at_ms), HistoryItem("admin", "ответ", at_ms)]
    return items


def test_merged_message_holding_exactly_the_turns_fragments_passes() -> None:
    turns = [make_turn(0, ["Хочу записаться", "на стрижку", "завтра в 15:00"], at_ms=0), make_turn(1, ["да"], at_ms=9)]
    stored = history("Хочу записаться #aa на стрижку #ab завтра в 15:00 #ac", "да #ba")
    assert check_merge(turns, stored) == MergeCheck(turns_checked=2, fragments_sent=4, fragments_processed=4)


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        (["Хочу #aa завтра #ac"], "fragments [0, 2] stored, [0, 1, 2] sent"),
        (["Хочу #aa завтра #ac стрижку #ab"], "fragments [0, 2, 1] stored"),
        (["Хочу #aa стрижку #ab", "завтра #ac"], "split over 2 stored messages"),
        (["Хочу #aa стрижку #ab завтра #ac да #ba"], "merged with another turn"),
        (["Хочу #aa  стрижку #ab завтра #ac"], "stored 'Хочу #aa  стрижку"),
    ],
)
def test_merge_mismatches_are_found(stored: list[str], problem: str) -> None:
    turn = make_turn(0, ["Хочу", "стрижку", "завтра"], at_ms=0)
    result = check_merge([turn], history(*stored))
    assert result.mismatched == 1, result
    assert problem in result.problems[0]


def test_refused_fragments_must_be_missing_and_unanswered_ones_may_be_either() -> None:
    turn = make_turn(0, ["Хочу", "стрижку", "завтра"], at_ms=0, outcomes="arp")
    assert check_merge([turn], history("Хочу #aa")) == MergeCheck(
        turns_checked=1, fragments_sent=1, fragments_processed=1
    )
    assert check_merge([turn], history("Хочу #aa завтра #ac")) == MergeCheck(
        turns_checked=1, fragments_sent=2, fragments_processed=2
    )
    assert check_merge([turn], history("Хочу #aa стрижку #ab")).mismatched == 1
    lost = make_turn(1, ["да"], at_ms=5)
    assert check_merge([lost], history("Хочу #aa")) == MergeCheck(unprocessed=1)


class StubInbox:
    """The fake WhatsApp's inbox: replies appear at given wall-clock times; numbered from 1."""

    def __init__(self, replies: list[tuple[float, str]]) -> None:
        self._due = replies  # (seconds from now, recipient)
        self._start = time.monotonic()
        self.reads = 0

    def read(self, *, after: int, to: str | None = None, wait_ms: int = 0) -> tuple[list[Reply], int]:
        self.reads += 1
        time.sleep(min(wait_ms, 50) / 1000)
        now = time.monotonic() - self._start
        ready = [
            Reply(seq=i + 1, to=phone, text="ответ", at_ms=wall_ms())
            for i, (at_s, phone) in enumerate(self._due)
            if at_s <= now and i + 1 > after and (to is None or phone == to)
        ]
        return ready, len(self._due)


def drain_run(*, reply_timeout_s: float, settle_s: float) -> LoadRun:
    options = LoadOptions(
        profile=profile_named("steady"),
        host="http://x",
        reply_timeout_s=reply_timeout_s,
        settle_s=settle_s,
        redis_url="redis://unused/11",
        seed=1,
    )
    run = LoadRun.create(options)
    run.start(now_ms=wall_ms())
    for phone in (PHONE, "79000000001"):
        turn = run.begin_turn(phone, 0, now_ms=wall_ms())
        run.answered(run.fragment(turn, "привет #aa", now_ms=wall_ms()), outcome="accepted", accept_ms=1.0)
    return run


def test_drain_waits_for_replies_due_then_settles_for_late_doubles() -> None:
    run = drain_run(reply_timeout_s=5, settle_s=0.3)
    inbox = StubInbox([(0.0, PHONE), (0.2, "79000000001"), (0.35, PHONE)])
    started = time.monotonic()
    replies = collect_replies(inbox, run)
    assert [r.to for r in sorted(replies, key=lambda r: r.seq)] == [PHONE, "79000000001", PHONE]
    assert 0.5 <= time.monotonic() - started < 3  # until the second turn's reply, then the settle time
    assert reconcile(run.turns, replies, reply_timeout_ms=5_000).double == 1


def test_drain_gives_up_on_a_turn_at_its_reply_timeout() -> None:
    run = drain_run(reply_timeout_s=0.4, settle_s=0)
    started = time.monotonic()
    replies = collect_replies(StubInbox([(0.0, PHONE)]), run)
    assert 0.3 <= time.monotonic() - started < 2
    assert reconcile(run.turns, replies, reply_timeout_ms=400).lost == 1


def test_merges_are_checked_against_this_runs_stored_messages_only() -> None:
    run = drain_run(reply_timeout_s=5, settle_s=0)
    old = HistoryItem("client", "привет #aa привет #ab", run.started_ms - 60_000)  # a previous run on this phone
    stored = {PHONE: [old, *history("привет #aa", at_ms=run.started_ms + 1)], "79000000001": []}
    asked: list[tuple[str, int, list[str]]] = []

    def reader(redis_url: str, *, company_id: int, phones: Iterable[str]) -> dict[str, list[HistoryItem]]:
        asked.append((redis_url, company_id, list(phones)))
        return stored

    assert check_merges(run, history=reader) == MergeCheck(
        turns_checked=1, fragments_sent=1, fragments_processed=1, unprocessed=1
    )
    assert asked == [("redis://unused/11", 962302, [PHONE, "79000000001"])]


# --- the run's summary ---------------------------------------------------------------------------------------


def test_summary_has_the_report_generators_keys_and_types() -> None:
    run = LoadRun.create(LoadOptions(profile=profile_named("steady", scale=0.1), host="http://127.0.0.1:1", seed=9))
    run.start(now_ms=1_000_000)
    turn = run.begin_turn(PHONE, 0, now_ms=1_000_100)
    for i, text in enumerate(["Хочу записаться", "завтра в 15:00"]):
        fragment = run.fragment(turn, tagged(text, turn=0, fragment=i), now_ms=1_000_200 + i)
        run.answered(fragment, outcome="accepted", accept_ms=3.5 + i)
    run.stopped_ms = 1_030_000
    summary = run.summary(
        reconciliation=reconcile(run.turns, [reply(1, 1_004_000)], reply_timeout_ms=60_000),
        merge=check_merge(run.turns, history("Хочу записаться #aa завтра в 15:00 #ab")),
        stats_after={"flush_lateness_ms": {"p50": 1, "p99": 3, "max": 4}, "dead_letters": 0},
        queue_wait=histogram(PROM_TEXT, "aiadmin_queue_wait_seconds"),
        drain_s=1.0,
    )
    for key, kind in SUMMARY_KEYS.items():
        assert isinstance(summary[key], kind), key
    assert summary["started_at"] == "1970-01-01T00:16:40Z"
    assert summary["duration_s"] == 30.0
    assert summary["requests"] == {"count": 2, "failures": 0, "rps": 0.067}
    assert summary["e2e_ms"] == {"p50": 3799.0, "p90": 3799.0, "p99": 3799.0, "max": 3799.0, "count": 1}
    assert summary["e2e_ms_samples"] == [3799.0]
    assert (summary["turns_sent"], summary["turns_answered"], summary["lost_turns"], summary["replies"]) == (1, 1, 0, 1)
    assert summary["merge"] == {
        "turns_checked": 1,
        "mismatched": 0,
        "fragments_sent": 2,
        "fragments_processed": 2,
        "unprocessed_turns": 0,
    }
    assert summary["settings"]["batch_timeout_ms"] == 9000
    assert isinstance(summary["settings"]["llm_latency_s"], str)
    assert set(summary["accept_ms"]) == {"p50", "p90", "p99", "max", "count"}
    assert summary["queue_lag_ms"]["count"] == 100
    orjson.dumps(summary)  # serialisable as it is


# --- the fake WhatsApp's inspection route --------------------------------------------------------------------------


@pytest.fixture
async def fake_whatsapp() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(token="t", clock=WallClock(), rng=random.Random(1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wa.test") as http:
        yield http


async def send(http: httpx.AsyncClient, to: str, text: str) -> None:
    body = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": text}}
    response = await http.post("/v21.0/106540352242922/messages", json=body, headers={"Authorization": "Bearer t"})
    assert response.status_code == 200


async def test_inspection_lists_messages_by_number_and_recipient(fake_whatsapp: httpx.AsyncClient) -> None:
    for to, text in ((PHONE, "один"), ("79000000001", "чужое"), (PHONE, "два")):
        await send(fake_whatsapp, to, text)
    doc = (await fake_whatsapp.get("/_sim/messages", params={"to": PHONE})).json()
    assert [(m["seq"], m["text"]) for m in doc["messages"]] == [(1, "один"), (3, "два")]
    assert doc["last_seq"] == 3
    assert abs(doc["messages"][0]["at_ms"] - time.time() * 1000) < 10_000
    after = (await fake_whatsapp.get("/_sim/messages", params={"after": 1})).json()
    assert [m["to"] for m in after["messages"]] == ["79000000001", PHONE]
    assert (await fake_whatsapp.get("/_sim/messages", params={"after": -1})).status_code == 422


async def test_inspection_long_poll_returns_when_the_reply_arrives(fake_whatsapp: httpx.AsyncClient) -> None:
    async def reply_later() -> None:
        await asyncio.sleep(0.2)
        await send(fake_whatsapp, "79000000001", "не тому")
        await asyncio.sleep(0.2)
        await send(fake_whatsapp, PHONE, "ответ")

    started = time.perf_counter()
    task = asyncio.create_task(reply_later())
    doc = (await fake_whatsapp.get("/_sim/messages", params={"to": PHONE, "wait_ms": 5_000})).json()
    await task
    assert [m["text"] for m in doc["messages"]] == ["ответ"]
    assert 0.3 < time.perf_counter() - started < 3.0
    started = time.perf_counter()
    empty = (await fake_whatsapp.get("/_sim/messages", params={"to": PHONE, "after": 2, "wait_ms": 300})).json()
    assert empty["messages"] == [] and time.perf_counter() - started >= 0.29


def test_outbox_numbers_messages_past_what_it_keeps() -> None:
    box = Outbox(max_kept=3)
    for i in range(5):
        box.record_message(OutboundMessage(f"w{i}", "1", PHONE if i % 2 else "79000000001", f"t{i}", i))
    assert [(n, m.text) for n, m in box.since(0)] == [(3, "t2"), (4, "t3"), (5, "t4")]
    assert [n for n, _ in box.since(3, limit=1)] == [4]
    assert [(n, m.text) for n, m in box.since(0, to=PHONE)] == [(2, "t1"), (4, "t3")]
    assert box.since(5) == [] and box.count == 5


# --- the runner ---------------------------------------------------------------------------------------------------


def test_runner_refuses_to_flush_db_0_or_a_remote_redis() -> None:
    assert stack.check_redis_url("redis://127.0.0.1:6379/11", force=False).db == 11
    with pytest.raises(stack.StackError, match=r"refusing database 0 .* without --force"):
        stack.check_redis_url("redis://127.0.0.1:6379/0", force=False)
    with pytest.raises(stack.StackError, match=r"non-loopback host .cache\.example. without --force"):
        stack.check_redis_url("redis://cache.example:6379/3", force=False)
    assert stack.check_redis_url("redis://cache.example:6379/0", force=True).db == 0


def test_runner_ports_are_chosen_free_at_run_time_not_fixed() -> None:
    ports = stack.Ports.free()
    chosen = [ports.system, *ports.fakes.values()]
    assert len(set(chosen)) == 4
    for port in chosen:  # each is free: a server can bind it now
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    with socket.socket() as held:  # a port in use is never chosen
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert all(taken not in (p.system, *p.fakes.values()) for p in (stack.Ports.free() for _ in range(20)))
    assert stack.Ports.from_base(18640).fakes == {"whatsapp": 18641, "llm": 18642, "crm": 18643}


def test_runner_points_the_system_at_its_fakes_and_masks_secrets() -> None:
    env = stack.system_env(
        stack.Ports.from_base(18640),
        redis_url="redis://127.0.0.1:6379/11",
        batch_timeout_ms=1200,
        overrides=stack.parse_overrides(["yclients_rps=50", "AIADMIN_LOG_LEVEL=INFO"]),
    )
    assert env["AIADMIN_WHATSAPP_API_URL"] == "http://127.0.0.1:18641"
    assert env["AIADMIN_LLM_BASE_URL"] == "http://127.0.0.1:18642/v1"
    assert env["AIADMIN_YCLIENTS_BASE_URL"] == "http://127.0.0.1:18643/api/v1"
    assert (env["AIADMIN_BATCH_TIMEOUT_MS"], env["AIADMIN_YCLIENTS_RPS"], env["AIADMIN_LOG_LEVEL"]) == (
        "1200",
        "50",
        "INFO",
    )
    public = stack.public_settings(env)
    assert public["AIADMIN_WHATSAPP_TOKEN"] == "***" and public["AIADMIN_WHATSAPP_APP_SECRET"] == "***"
    assert public["REDIS_URL"] == "redis://127.0.0.1:6379/11"
    with pytest.raises(stack.StackError, match="KEY=VALUE"):
        stack.parse_overrides(["nothing"])
    with pytest.raises(stack.StackError, match="--redis-url"):
        stack.parse_overrides(["redis_url=redis://127.0.0.1:6379/0"])


def test_locust_command_runs_the_folder_headless_with_the_profile() -> None:
    args = locust_command(
        profile="burst",
        host="http://127.0.0.1:18600",
        out_dir=Path("/tmp/x"),
        duration_scale=0.2,
        whatsapp_url="http://127.0.0.1:18601",
        redis_url="redis://127.0.0.1:6379/11",
        webhook_format="meta",
        app_secret="a",
        webhook_secret="",
        stats_token="",
        batch_timeout_ms=1500,
        llm_latency_s="0,0,0",
        reply_timeout_s=30,
        settle_s=1,
        seed=3,
        extra=["--loglevel", "WARNING"],
    )
    assert args[1:5] == ["-m", "locust", "-f", str(ROOT / "loadtests")]
    assert args[args.index("--profile") + 1] == "burst"
    assert args[args.index("--csv") + 1] == "/tmp/x/burst"
    assert "--headless" in args and args[-2:] == ["--loglevel", "WARNING"]


def test_locust_picks_up_only_the_locustfile_and_the_helpers_never_import_locust() -> None:
    """`locust -f loadtests/` imports every .py under it not starting with "_"; our pure modules stay gevent-free."""
    code = (
        "import sys\n"
        "import loadtests._drain, loadtests._ledger, loadtests._load, loadtests._probes, loadtests._script\n"
        "import loadtests._summary\n"
        "import loadtests._webhook, loadtests.run._stack, loadtests.run.__main__\n"
        "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'a helper imported locust'\n"
        "from locust.util.directory import get_abspaths_in\n"
        "print(sorted(p.rsplit('/loadtests/', 1)[1] for p in get_abspaths_in('loadtests', extension='.py')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['locustfile.py']"


# --- end to end -----------------------------------------------------------------------------------------------------


@pytest.fixture
def load_redis() -> Any:
    """The run's database (the run claims it itself); emptied afterwards and left marked as a test tool's."""
    try:
        target = stack.check_redis_url(LOAD_REDIS_URL, force=REDIS_FORCE)
    except stack.StackError as exc:
        pytest.fail(f"AIADMIN_LOAD_REDIS_URL: {exc} (AIADMIN_TEST_REDIS_FORCE=1 allows it)")
    client: Redis = Redis.from_url(LOAD_REDIS_URL)
    try:
        client.ping()
    except (RedisConnectionError, OSError) as exc:
        client.close()
        if IN_CI:
            pytest.fail(f"CI=true but Redis at {LOAD_REDIS_URL} does not answer: {exc}")
        pytest.skip(f"no Redis at {LOAD_REDIS_URL}")
    yield client
    client.flushdb()
    mark_sync(client, target)
    client.close()


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_short_steady_run_answers_every_turn_once_with_exact_merges(load_redis: Redis, tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.run",
            "--profile",
            "steady",
            "--duration-scale",
            "0.05",
            "--redis-url",
            LOAD_REDIS_URL,
            "--out-dir",
            str(tmp_path),
            *(["--flush"] if REDIS_FLUSH else []),
            *(["--force"] if REDIS_FORCE else []),
            "--batch-timeout-ms",
            "1000",
            "--llm-latency-s",
            "0.05,0.1,0.3",
            "--reply-timeout-s",
            "15",
            "--settle-s",
            "2",
            "--seed",
            "11",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.monotonic() - started < 60
    summary = orjson.loads((tmp_path / "steady.json").read_bytes())
    for key, kind in SUMMARY_KEYS.items():
        assert isinstance(summary[key], kind), key
    assert summary["turns_sent"] >= 8  # 8 clients open one conversation each at least
    assert summary["lost_turns"] == 0 and summary["double_replies"] == 0
    assert summary["turns_answered"] == summary["turns_sent"] == summary["replies"] == summary["e2e_ms"]["count"]
    merge = summary["merge"]
    assert merge["mismatched"] == 0 and merge["turns_checked"] == summary["turns_sent"]
    assert merge["fragments_sent"] == merge["fragments_processed"]
    assert summary["requests"]["failures"] == 0
    # A client stopped at the end while posting leaves one fragment without an answer, at most.
    answered = summary["requests"]["count"]
    assert answered <= merge["fragments_sent"] <= summary["fragments_sent"] <= answered + 8
    assert 1000 <= summary["e2e_ms"]["p50"] < 15_000  # at least the batch timeout, never the reply timeout
    assert summary["queue_lag_ms"]["count"] >= summary["turns_sent"]
    assert summary["flush_lateness_ms"]["p99"] is not None and summary["dead_letters"] == 0
    assert summary["settings"]["batch_timeout_ms"] == 1000 and summary["settings"]["llm_latency_s"] == "0.05,0.1,0.3"
    assert [p["name"] for p in summary["processes"]] == [
        "fake-whatsapp",
        "fake-llm",
        "fake-crm",
        "aiadmin-run",
        "locust",
    ]
    assert all(p["rss_mb"] > 10 and p["cpu_pct"] is not None for p in summary["processes"])
    assert (tmp_path / "steady_stats.csv").read_text().count("E2E,reply") == 1

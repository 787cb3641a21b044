"""Turns and replies: reconciliation, the merge check, and the drain at the end of a run (on a test clock)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from loadtests._drain import check_merges, check_merges_as_they_close, collect_replies
from loadtests._ledger import HistoryItem, MergeCheck, Reply, check_merge, reconcile
from loadtests._load import LoadOptions, LoadRun
from loadtests._profiles import profile_named

from .loadtests_support import PHONE, history, make_turn, reply


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


class DrainClock:
    """Milliseconds that move only when the drain waits: on the stub inbox's long polls or on its own sleeps."""

    def __init__(self, start_ms: int) -> None:
        self.now = start_ms

    def now_ms(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += round(seconds * 1000)


class StubInbox:
    """The fake WhatsApp's inbox on a `DrainClock`: replies arrive at set times, numbered from 1; a long poll
    with nothing to return moves the clock to the next arrival or to its own end, whichever is first."""

    def __init__(self, clock: DrainClock, replies: list[tuple[int, str]]) -> None:
        self._clock = clock
        self._due = [(clock.now + in_ms, phone) for in_ms, phone in replies]  # (arrival, recipient)

    def _ready(self, after: int, to: str | None) -> list[Reply]:
        return [
            Reply(seq=i + 1, to=phone, text="ответ", at_ms=at_ms)
            for i, (at_ms, phone) in enumerate(self._due)
            if at_ms <= self._clock.now and i + 1 > after and (to is None or phone == to)
        ]

    def read(self, *, after: int, to: str | None = None, wait_ms: int = 0) -> tuple[list[Reply], int]:
        if not self._ready(after, to):
            later = [at_ms for at_ms, _ in self._due[after:] if at_ms > self._clock.now]
            self._clock.now = min([self._clock.now + wait_ms, *later])
        return self._ready(after, to), len(self._due)


START_MS = 1_764_064_800_000


def drain_run(clock: DrainClock, *, reply_timeout_s: float, settle_s: float) -> LoadRun:
    options = LoadOptions(
        profile=profile_named("steady"),
        host="http://x",
        reply_timeout_s=reply_timeout_s,
        settle_s=settle_s,
        redis_url="redis://unused/11",
        seed=1,
    )
    run = LoadRun.create(options)
    run.start(now_ms=clock.now_ms())
    for phone in (PHONE, "79000000001"):
        turn = run.begin_turn(phone, 0, now_ms=clock.now_ms())
        run.answered(run.fragment(turn, "привет #aa", now_ms=clock.now_ms()), outcome="accepted", accept_ms=1.0)
    return run


def collect(inbox: StubInbox, run: LoadRun, clock: DrainClock) -> list[Reply]:
    return collect_replies(inbox, run, now_ms=clock.now_ms, sleep=clock.sleep)


def test_drain_waits_for_replies_due_then_settles_for_late_doubles() -> None:
    clock = DrainClock(START_MS)
    run = drain_run(clock, reply_timeout_s=5, settle_s=0.3)
    replies = collect(StubInbox(clock, [(10, PHONE), (200, "79000000001"), (350, PHONE)]), run, clock)
    assert [r.to for r in sorted(replies, key=lambda r: r.seq)] == [PHONE, "79000000001", PHONE]
    assert clock.now - START_MS == 200 + 300  # until the second turn's reply, then the settle time
    assert reconcile(run.turns, replies, reply_timeout_ms=5_000).double == 1


def test_drain_gives_up_on_a_turn_at_its_reply_timeout() -> None:
    clock = DrainClock(START_MS)
    run = drain_run(clock, reply_timeout_s=0.4, settle_s=0)
    replies = collect(StubInbox(clock, [(10, PHONE)]), run, clock)
    assert clock.now - START_MS == 400
    assert reconcile(run.turns, replies, reply_timeout_ms=400).lost == 1


def test_drain_measures_its_waits_on_the_clock_it_is_given() -> None:
    """The drain read the wall clock itself, so its tests bounded real seconds and failed on a slow machine."""
    clock = DrainClock(START_MS)
    run = drain_run(clock, reply_timeout_s=3_600, settle_s=600)  # an hour's timeout, ten minutes' settle
    replies = collect(StubInbox(clock, [(10, PHONE), (20, "79000000001")]), run, clock)
    assert len(replies) == 2 and clock.now - START_MS == 20 + 600_000  # in no real time at all


def test_merges_are_checked_against_this_runs_stored_messages_only() -> None:
    run = drain_run(DrainClock(START_MS), reply_timeout_s=5, settle_s=0)
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


def test_merges_are_checked_as_conversations_close_each_phone_once() -> None:
    """A soak whose retention is shorter than the run would find the first clients' history expired at its end."""
    clock = DrainClock(START_MS)
    run = drain_run(clock, reply_timeout_s=5, settle_s=1)
    stored = {PHONE: history("привет #aa", at_ms=run.started_ms + 1), "79000000001": []}
    asked: list[list[str]] = []

    def reader(redis_url: str, *, company_id: int, phones: Iterable[str]) -> dict[str, list[HistoryItem]]:
        asked.append(list(phones))
        return {phone: stored[phone] for phone in phones}

    run.conversation_closed(PHONE, now_ms=START_MS + 1_000)
    checked_at: list[tuple[int, list[str]]] = []

    def sleep(seconds: float) -> None:
        checked_at.append((clock.now - START_MS, [p for batch in asked for p in batch]))
        if len(checked_at) == 4:
            raise StopIteration  # the run kills the loop; here the fourth nap ends it
        clock.sleep(seconds)

    with pytest.raises(StopIteration):
        check_merges_as_they_close(run, history=reader, every_s=3, now_ms=clock.now_ms, sleep=sleep)
    # PHONE closed at 1 s; its late replies may come for 5 s of timeout and 1 s of settle: checked at 9 s, not before.
    assert checked_at == [(0, []), (3_000, []), (6_000, []), (9_000, [PHONE])]
    assert run.merge_so_far.turns_checked == 1
    total = check_merges(run, history=reader)  # the end of the run: the rest, and never PHONE again
    assert asked == [[PHONE], ["79000000001"]]
    assert total == MergeCheck(turns_checked=1, fragments_sent=1, fragments_processed=1, unprocessed=1)


def test_a_turn_the_client_paused_for_a_batch_timeout_is_the_clients_split() -> None:
    turn = make_turn(0, ["Хочу", "записаться", "завтра"], at_ms=0)
    turn.fragments[0].sent_ms, turn.fragments[0].answered_ms = 0, 30
    turn.fragments[1].sent_ms, turn.fragments[1].answered_ms = 500, 2_600  # the webhook answered after 2.1 s
    turn.fragments[2].sent_ms, turn.fragments[2].answered_ms = 4_200, 4_230  # posted 1.6 s after that answer

    assert turn.client_gap_ms() == 1_600
    assert make_turn(1, ["Хочу"], at_ms=0).client_gap_ms() == 0  # one fragment: no gap

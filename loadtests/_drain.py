"""The end of a run: collect the replies still due and late second ones, and check every stored merged message.

Blocking waits (`time.sleep`, the probes' HTTP): under Locust gevent has patched them to yield to other greenlets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from loadtests._ledger import HistoryItem, MergeCheck, Reply, Turn, check_merge, reconcile
from loadtests._load import LoadRun, wall_ms
from loadtests._probes import PAGE, ProbeError

HISTORY_SLACK_MS = 5_000  # stored messages this much older than the run's start are a previous run's
PULL_MS = 1_000  # one long poll while draining, so the deadlines are re-checked at least this often
MERGE_CHECK_EVERY_S = 60.0


class Inbox(Protocol):
    """What the drain reads: the fake WhatsApp's messages numbered after `after` (`FakeWhatsAppInbox`)."""

    def read(self, *, after: int, to: str | None = None, wait_ms: int = 0) -> tuple[list[Reply], int]: ...


class HistoryReader(Protocol):
    """Reads each phone's stored conversation (`_probes.stored_history`)."""

    def __call__(self, redis_url: str, *, company_id: int, phones: Iterable[str]) -> dict[str, list[HistoryItem]]: ...


def collect_replies(
    inbox: Inbox,
    load: LoadRun,
    *,
    now_ms: Callable[[], int] = wall_ms,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Reply]:
    """Every message since the run started: until each turn is answered or past its timeout, then `settle_s` more.

    `now_ms` and `sleep` are the wall clock under Locust; a test passes its own, which the inbox moves.
    """
    o = load.options
    timeout_ms = round(o.reply_timeout_s * 1000)
    seen: dict[int, Reply] = {}
    after = load.start_seq

    def pull(wait_ms: int) -> None:
        nonlocal after
        try:
            for reply in _pages(inbox, after, wait_ms):
                seen[reply.seq] = reply
                after = max(after, reply.seq)
        except ProbeError as exc:
            load.error(f"collecting replies: {exc}")
            sleep(min(1.0, wait_ms / 1000))

    pull(0)
    while True:
        verdicts = reconcile(load.turns, seen.values(), reply_timeout_ms=timeout_ms).verdicts
        due_ms = [v.turn.last_sent_ms + timeout_ms for v in verdicts if v.turn.accepted and not v.replies]
        left_ms = max(due_ms, default=0) - now_ms()
        if left_ms <= 0:
            break
        pull(min(left_ms, PULL_MS))
    settle_until_ms = now_ms() + round(o.settle_s * 1000)
    while (left_ms := settle_until_ms - now_ms()) > 0:
        pull(min(left_ms, PULL_MS))
    return list(seen.values())


def _pages(inbox: Inbox, after: int, wait_ms: int) -> Iterator[Reply]:
    page, _ = inbox.read(after=after, wait_ms=wait_ms)
    yield from page
    while len(page) >= PAGE:
        page, _ = inbox.read(after=page[-1].seq)
        yield from page


def check_merges(load: LoadRun, *, history: HistoryReader, closed_by_ms: int | None = None) -> MergeCheck:
    """Every client's turns against the messages the worker stored for its phone during this run; the total so far.

    Each phone is checked once. With `closed_by_ms`, only the phones whose conversation closed by then: the run
    checks as it goes, so a system whose retention (`AIADMIN_MESSAGES_TTL_S`) is shorter than the run is checked
    before it forgets.
    """
    o = load.options
    by_phone: dict[str, list[Turn]] = {}
    for turn in load.turns:
        if turn.phone in load.merge_checked:
            continue
        if closed_by_ms is not None and load.closed_ms.get(turn.phone, closed_by_ms + 1) > closed_by_ms:
            continue
        by_phone.setdefault(turn.phone, []).append(turn)
    if by_phone:
        stored = history(o.redis_url, company_id=o.company_id, phones=by_phone)
        since_ms = load.started_ms - HISTORY_SLACK_MS
        for phone, turns in by_phone.items():
            load.merge_so_far += check_merge(turns, _since(stored.get(phone, []), since_ms))
        load.merge_checked.update(by_phone)
    return load.merge_so_far


def check_merges_as_they_close(
    load: LoadRun,
    *,
    history: HistoryReader,
    every_s: float = MERGE_CHECK_EVERY_S,
    now_ms: Callable[[], int] = wall_ms,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Forever (the run kills it): every `every_s`, check the conversations closed long enough ago that no reply
    to them is still due."""
    o = load.options
    quiet_ms = round((o.reply_timeout_s + o.settle_s) * 1000)
    while True:
        sleep(every_s)
        try:
            check_merges(load, history=history, closed_by_ms=now_ms() - quiet_ms)
        except ProbeError as exc:
            load.error(f"merge check: {exc}")


def _since(items: Iterable[HistoryItem], since_ms: int) -> list[HistoryItem]:
    return [item for item in items if item.at_ms >= since_ms]

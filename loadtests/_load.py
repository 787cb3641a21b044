"""One load run's options and state: phones handed out, turns sent, webhook answer times; then the summary.

Lives in the Locust process (one per process: a distributed run is summarised by each worker for its own clients)
and never imports Locust, so the tests drive it directly. Locust's users run as gevent greenlets that switch only
on I/O, and no method here does I/O, so nothing needs a lock.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from loadtests._abort import AbortRule
from loadtests._ledger import Fragment, MergeCheck, Outcome, Reconciliation, Turn
from loadtests._profiles import Profile
from loadtests._script import Conversation
from loadtests._summary import (
    ACCEPT_SAMPLES_KEPT,
    E2E_SAMPLES_KEPT,
    Buckets,
    Requests,
    Reservoir,
    counter_delta,
    latency_block,
    lateness_block,
    queue_lag_block,
)
from loadtests._webhook import Webhook, WebhookFormat
from loadtests._windows import WINDOWS, Edge, WindowedLatency, window_of, windows_block
from simulator.phones import PhonePool

SALON_TZ = ZoneInfo("Europe/Moscow")  # the fixture barbershop's zone: "завтра" is its tomorrow
MAX_ERRORS = 50


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """Everything a run needs to know about the system under test and itself."""

    profile: Profile
    host: str
    format: WebhookFormat = "meta"
    whatsapp_url: str = "http://127.0.0.1:8091"
    redis_url: str = ""  # where the worker stores the history; empty skips the merge check
    secret: str = ""  # signs the webhooks (the app secret, or the gateway's webhook secret)
    stats_token: str = ""
    metrics_urls: tuple[str, ...] = ()
    batch_timeout_ms: int = 9000
    llm_latency_s: str = "unknown"
    company_id: int = 962302
    phone_number_id: str = "106540352242922"
    reply_timeout_s: float = 60.0
    settle_s: float = 5.0
    out_dir: Path = Path("out/load")
    seed: int = 0
    duration_scale: float = 1.0
    abort: AbortRule = field(default_factory=AbortRule)

    def webhook(self) -> Webhook:
        company = self.company_id if self.format == "gateway" else None
        return Webhook(self.format, self.secret, self.phone_number_id, company)

    def settings(self) -> dict[str, Any]:
        return {
            "batch_timeout_ms": self.batch_timeout_ms,
            "llm_latency_s": self.llm_latency_s,
            "duration_scale": self.duration_scale,
            "reply_timeout_s": self.reply_timeout_s,
            "settle_s": self.settle_s,
            "company_id": self.company_id,
            "seed": self.seed,
            "abort_no_answer_s": self.abort.no_answer_s,
            "abort_failure_ratio": self.abort.failure_ratio,
            "abort_min_requests": self.abort.min_requests,
        }


@dataclass
class LoadRun:
    """The state of one run in one Locust process."""

    options: LoadOptions
    run_tag: str
    phones: PhonePool
    rng: random.Random
    turns: list[Turn] = field(default_factory=list)
    fragments_sent: int = 0
    requests: int = 0
    failures: int = 0
    peak_users: int = 0
    started_at: datetime | None = None
    started_ms: int = 0
    stopped_ms: int = 0
    start_seq: int = 0  # the fake WhatsApp's last message number when the run started
    stats_before: dict[str, Any] | None = None
    queue_wait_before: Buckets = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    aborted: str = ""  # why the guard stopped the run early; empty when it ran to its end
    accept: Reservoir = field(init=False)
    # The measured noise (`loadtests._windows`): figures per window of the planned length, edges read at run time.
    accept_windows: WindowedLatency = field(init=False)
    window_requests: list[int] = field(default_factory=lambda: [0] * WINDOWS)
    window_peak_conversations: list[int] = field(default_factory=lambda: [0] * WINDOWS)
    edges: list[Edge] = field(default_factory=list)
    open_conversations: int = 0
    peak_conversations: int = 0
    # The merge check as the run goes (`loadtests._drain.check_merges`): when each phone's conversation closed,
    # the phones checked, and their total so far.
    closed_ms: dict[str, int] = field(default_factory=dict)
    merge_checked: set[str] = field(default_factory=set)
    merge_so_far: MergeCheck = field(default_factory=MergeCheck)

    def __post_init__(self) -> None:
        self.accept = Reservoir(cap=ACCEPT_SAMPLES_KEPT, rng=random.Random(self.rng.getrandbits(32)))
        self.accept_windows = WindowedLatency(random.Random(self.rng.getrandbits(32)))

    def window(self, now_ms: int) -> int:
        return window_of(now_ms, started_ms=self.started_ms, planned_s=self.options.profile.duration_s)

    def conversation_opened(self, *, now_ms: int) -> None:
        self.open_conversations += 1
        self.peak_conversations = max(self.peak_conversations, self.open_conversations)
        w = self.window(now_ms)
        self.window_peak_conversations[w] = max(self.window_peak_conversations[w], self.open_conversations)

    def conversation_closed(self, phone: str, *, now_ms: int) -> None:
        self.open_conversations = max(0, self.open_conversations - 1)
        self.closed_ms[phone] = now_ms

    @classmethod
    def create(cls, options: LoadOptions) -> LoadRun:
        seed = options.seed or random.SystemRandom().randrange(1, 2**31)
        rng = random.Random(seed)
        return cls(options=options, run_tag=f"{seed:x}", phones=PhonePool(seed=seed), rng=rng)

    def start(self, *, now_ms: int) -> None:
        self.started_at = datetime.fromtimestamp(now_ms / 1000, UTC)
        self.started_ms = now_ms

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def user_rng(self) -> random.Random:
        return random.Random(self.rng.getrandbits(64))

    def conversation(self, rng: random.Random, *, today: date | None = None) -> Conversation:
        """A new client with a phone of its own."""
        typing = self.options.profile.typing
        return Conversation(
            phone=self.phones.take(),
            rng=rng,
            today=today or datetime.now(SALON_TZ).date(),
            opening_fragments=typing.opening_fragments,
            follow_fragments=typing.follow_fragments,
        )

    def begin_turn(self, phone: str, index: int, *, now_ms: int) -> Turn:
        turn = Turn(phone=phone, index=index, first_sent_ms=now_ms)
        self.turns.append(turn)
        return turn

    def fragment(self, turn: Turn, text: str, *, now_ms: int) -> Fragment:
        """A fragment about to be posted: it is recorded first, so a client stopped mid-request leaves a trace."""
        fragment = Fragment(text, sent_ms=now_ms)
        turn.fragments.append(fragment)
        turn.last_sent_ms = now_ms
        self.fragments_sent += 1
        return fragment

    def answered(self, fragment: Fragment, *, outcome: Outcome, accept_ms: float, now_ms: int | None = None) -> None:
        fragment.outcome = outcome
        fragment.answered_ms = wall_ms() if now_ms is None else now_ms
        self.requests += 1
        self.failures += outcome != "accepted"
        self.accept.add(accept_ms)
        w = self.window(wall_ms() if now_ms is None else now_ms)
        self.window_requests[w] += 1
        self.window_peak_conversations[w] = max(self.window_peak_conversations[w], self.open_conversations)
        self.accept_windows.add(w, accept_ms)

    def summary(
        self,
        *,
        reconciliation: Reconciliation,
        merge: MergeCheck | None,
        stats_after: dict[str, Any] | None,
        queue_wait: Buckets,
        drain_s: float,
    ) -> dict[str, Any]:
        """The summary JSON (the keys the report generator reads, then extras)."""
        o = self.options
        duration_s = max(0.0, (self.stopped_ms - self.started_ms) / 1000)
        e2e = reconciliation.e2e_ms()
        e2e_kept = Reservoir(cap=E2E_SAMPLES_KEPT, rng=random.Random(self.rng.getrandbits(32)))
        for value in e2e:
            e2e_kept.add(value)
        merge = merge or MergeCheck()
        return {
            "profile": o.profile.name,
            "started_at": (self.started_at or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
            "duration_s": round(duration_s, 3),
            "peak_users": self.peak_users,
            "host": o.host,
            "format": o.format,
            "settings": o.settings(),
            "requests": Requests(self.requests, self.failures, duration_s).block(),
            "accept_ms": latency_block(self.accept.values, count=self.accept.count, max_ms=self.accept.max),
            "e2e_ms": latency_block(e2e),
            "e2e_ms_samples": [round(v, 1) for v in e2e_kept.values],
            "fragments_sent": self.fragments_sent,
            "turns_sent": len(reconciliation.counted),
            "turns_answered": reconciliation.turns_answered,
            "lost_turns": reconciliation.lost,
            "double_replies": reconciliation.double,
            "replies": reconciliation.replies,
            "merge": {
                "turns_checked": merge.turns_checked,
                "mismatched": merge.mismatched,
                "fragments_sent": merge.fragments_sent,
                "fragments_processed": merge.fragments_processed,
                "unprocessed_turns": merge.unprocessed,
            },
            "flush_lateness_ms": lateness_block(stats_after),
            "queue_lag_ms": queue_lag_block(queue_wait),
            "dead_letters": counter_delta(stats_after, self.stats_before, "dead_letters"),
            "errors": [*self.errors, *merge.problems, *reconciliation.problems()[:20]],
            "aborted": self.aborted or None,
            "peak_conversations": self.peak_conversations,
            # Turns the client itself split: a fragment posted a batch timeout or more after the previous one was
            # answered (a starved load generator); their split merges and second replies are the client's doing.
            "client_split_turns": sum(t.client_gap_ms() >= o.batch_timeout_ms for t in self.turns),
            "windows": windows_block(
                started_ms=self.started_ms,
                stopped_ms=self.stopped_ms,
                planned_s=o.profile.duration_s,
                accept=self.accept_windows,
                e2e=[
                    (v.turn.last_sent_ms, e)
                    for v in reconciliation.verdicts
                    if v.answered and (e := v.e2e_ms) is not None
                ],
                edges=self.edges,
                requests=self.window_requests,
                peak_conversations=self.window_peak_conversations,
            ),
            # extras
            "profile_definition": o.profile.describe(),
            "clients": self.phones.given,
            "unattributed_replies": len(reconciliation.unattributed),
            "drain_s": round(drain_s, 3),
            "system": {
                key: counter_delta(stats_after, self.stats_before, key)
                for key in (
                    "accepted_messages",
                    "duplicates",
                    "rate_limited_messages",
                    "batches_flushed",
                    "fragments_flushed",
                    "jobs_done",
                    "jobs_retried",
                    "deferred_for_backpressure",
                )
            },
        }

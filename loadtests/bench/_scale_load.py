"""The scale benchmark's conversations: signed Meta webhooks sent as WhatsApp sends them, retried as Meta retries.

Each conversation is one client writing `fragments` messages in a row to one of the API processes (round robin).
Every message has a unique id and carries a token (`[m<conversation>.<fragment>]`) in its text, so that the
history the worker saves (`messages:{…}`) shows which accepted messages were answered. A 503, a 429 or a failed
connection is retried with a doubling backoff until `retry_deadline_s`, as Meta retries a webhook it could not
deliver; the retry carries the same message id, so the system de-duplicates it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from loadtests._webhook import Webhook
from system.stats import percentile

RETRY_STATUSES = frozenset({429, 503})
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 2.0
TEXT = "Здравствуйте, хочу записаться на стрижку"
_TOKEN = re.compile(r"\[m(\d+)\.(\d+)\]")


def token(conversation: int, fragment: int) -> str:
    return f"[m{conversation}.{fragment}]"


def tokens_in(text: str) -> set[tuple[int, int]]:
    """The (conversation, fragment) tokens a history text holds."""
    return {(int(c), int(f)) for c, f in _TOKEN.findall(text)}


@dataclass
class Ledger:
    """What the clients sent: per message its final status and attempts; per 200 its latency (s)."""

    phones: Sequence[str]
    fragments: int
    final: dict[tuple[int, int], int] = field(default_factory=dict)  # (conversation, fragment) → last status
    attempts: int = 0
    retries: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # every attempt's status; -1 a failed connection
    accept_s: list[float] = field(default_factory=list)
    done: int = 0  # conversations whose every message got a final answer
    elapsed_s: float = 0.0

    @property
    def accepted(self) -> set[tuple[int, int]]:
        return {key for key, status in self.final.items() if status == 200}

    def accepted_conversations(self) -> set[int]:
        return {conversation for conversation, _ in self.accepted}

    @property
    def accepted_per_s(self) -> float:
        return len(self.accepted) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def accept_ms(self, q: float) -> float | None:
        value = percentile(self.accept_s, q)
        return None if value is None else value * 1000


@dataclass(frozen=True, slots=True)
class Drive:
    """How the conversations are sent: to which API ports, how many at once, signed with which app secret."""

    api_ports: Sequence[int]
    secret: str
    tag: str  # unique to the run: message ids never repeat another run's
    concurrency: int = 32
    retry_deadline_s: float = 60.0


async def drive(d: Drive, ledger: Ledger, *, first: int = 0, progress: Callable[[int], None] | None = None) -> Ledger:
    """Send every conversation of `ledger` (numbered from `first` in tokens); `progress(done)` after each."""
    webhook = Webhook(format="meta", secret=d.secret)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(ledger.phones)):
        queue.put_nowait(index)
    limits = httpx.Limits(max_connections=d.concurrency, max_keepalive_connections=d.concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            port = d.api_ports[index % len(d.api_ports)]
            for fragment in range(ledger.fragments):
                number = first + index
                request = webhook.text(
                    sender=ledger.phones[index],
                    text=f"{TEXT} {token(number, fragment)}",
                    message_id=f"wamid.scale-{d.tag}-{number}-{fragment}",
                    at_ms=time.time_ns() // 1_000_000,
                )
                url = f"http://127.0.0.1:{port}{request.path}"
                ledger.final[(number, fragment)] = await _post(http, d, ledger, url, request.body, request.headers)
            ledger.done += 1
            if progress is not None:
                progress(ledger.done)

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(d.concurrency)))
    ledger.elapsed_s = time.perf_counter() - started
    return ledger


async def _post(
    http: httpx.AsyncClient, d: Drive, ledger: Ledger, url: str, body: bytes, headers: dict[str, str]
) -> int:
    """POST until a final status (anything but 429/503/a failed connection) or the retry deadline; the last status."""
    deadline = time.perf_counter() + d.retry_deadline_s
    backoff_s = RETRY_FIRST_S
    while True:
        ledger.attempts += 1
        sent = time.perf_counter()
        try:
            status = (await http.post(url, content=body, headers=headers)).status_code
        except httpx.HTTPError:
            status = -1
        ledger.statuses[status] = ledger.statuses.get(status, 0) + 1
        if status == 200:
            ledger.accept_s.append(time.perf_counter() - sent)
        if (status != -1 and status not in RETRY_STATUSES) or time.perf_counter() + backoff_s > deadline:
            return status
        ledger.retries += 1
        await asyncio.sleep(backoff_s)  # Meta's retry: later, with the same message id
        backoff_s = min(backoff_s * 2, RETRY_MAX_S)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Accepted vs answered, from the ledger, the history, the replies and the turn records."""

    accepted: int
    answered: int  # accepted messages found in an answered turn (the saved history)
    lost: int  # accepted (200) but in no answered turn
    conversations: int  # with at least one accepted message
    replied: int  # of those, answered at least once
    replies: int
    turns: int  # distinct batches processed (turn records)
    replied_turns: int  # of those, the turns that sent a reply (the others' drafts were dropped as stale)
    answered_twice: int  # replies beyond one per replying turn
    lost_examples: tuple[str, ...]


def outcome(
    ledger: Ledger, *, history: dict[int, str], replies: int, recipients: int, turns: int, replied_turns: int
) -> Outcome:
    """Compare what was accepted with what the saved history holds; `history` maps conversation → its user texts."""
    accepted = ledger.accepted
    found = {key for conversation, text in history.items() for key in tokens_in(text) if key[0] == conversation}
    lost = sorted(accepted - found)
    return Outcome(
        accepted=len(accepted),
        answered=len(accepted & found),
        lost=len(lost),
        conversations=len(ledger.accepted_conversations()),
        replied=recipients,
        replies=replies,
        turns=turns,
        replied_turns=replied_turns,
        answered_twice=max(0, replies - replied_turns),
        lost_examples=tuple(f"wamid.scale-…-{c}-{f}" for c, f in lost[:10]),
    )

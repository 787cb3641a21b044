"""What the clients sent and what came back: turns, their replies, and the merge check (pure functions).

A turn is the fragments a client sends between two replies; it must get exactly one reply. Replies are
attributed by time: a reply to a phone belongs to that phone's latest turn begun before the reply arrived.
So a late second reply to a turn counts against it, or — if the client has written again meanwhile — against
the next turn, which then has two; either way it is a double reply.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from loadtests._script import tags_in

Outcome = Literal["pending", "accepted", "refused"]
MAX_PROBLEMS = 20  # examples kept in the summary; the counts are complete


@dataclass
class Fragment:
    """One message of a turn as sent (tag included); `pending` until the webhook answered."""

    text: str
    outcome: Outcome = "pending"
    sent_ms: int = 0  # when the client began posting it
    answered_ms: int = 0  # when the webhook's answer came back (0: never)


@dataclass
class Turn:
    """One turn of one client; times are wall-clock ms of the client's process."""

    phone: str
    index: int
    first_sent_ms: int
    last_sent_ms: int = 0
    fragments: list[Fragment] = field(default_factory=list)
    reported: bool = False  # an E2E result (reply or timeout) was already fired for it

    @property
    def accepted(self) -> list[int]:
        return [i for i, f in enumerate(self.fragments) if f.outcome == "accepted"]

    def client_gap_ms(self) -> int:
        """The longest quiet between one fragment's answer and the next one's post: when it reaches the batch timeout
        the client itself (a starved load generator) split the turn, and a split and a second reply are expected."""
        gaps = [
            nxt.sent_ms - prev.answered_ms
            for prev, nxt in zip(self.fragments, self.fragments[1:], strict=False)
            if prev.answered_ms and nxt.sent_ms
        ]
        return max(gaps, default=0)

    @property
    def uncertain(self) -> list[int]:
        """Fragments whose request never got an answer (the client was stopped, the connection failed)."""
        return [i for i, f in enumerate(self.fragments) if f.outcome == "pending"]


@dataclass(frozen=True, slots=True)
class Reply:
    """A message the fake WhatsApp accepted for a client; `at_ms` on the fake's (wall) clock."""

    seq: int
    to: str
    text: str
    at_ms: int

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Reply:
        return cls(seq=int(doc["seq"]), to=str(doc["to"]), text=str(doc["text"]), at_ms=int(doc["at_ms"]))


@dataclass(frozen=True, slots=True)
class Verdict:
    """A turn with the replies attributed to it; `e2e_ms` from its last fragment to its first reply."""

    turn: Turn
    replies: tuple[Reply, ...]
    reply_timeout_ms: int

    @property
    def e2e_ms(self) -> float | None:
        if not self.replies:
            return None
        return float(max(0, self.replies[0].at_ms - self.turn.last_sent_ms))

    @property
    def answered(self) -> bool:
        e2e = self.e2e_ms
        return e2e is not None and e2e <= self.reply_timeout_ms

    @property
    def counted(self) -> bool:
        """A turn the system must answer: a fragment was accepted (or an unanswered request got a reply anyway)."""
        return bool(self.turn.accepted) or bool(self.replies)

    @property
    def lost(self) -> bool:
        return self.counted and not self.answered

    @property
    def double(self) -> bool:
        return len(self.replies) > 1


@dataclass(frozen=True, slots=True)
class Reconciliation:
    verdicts: tuple[Verdict, ...]
    unattributed: tuple[Reply, ...]  # replies to our phones before any turn of theirs (never expected)

    @property
    def counted(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.counted]

    @property
    def turns_answered(self) -> int:
        return sum(v.answered for v in self.verdicts)

    @property
    def lost(self) -> int:
        return sum(v.lost for v in self.verdicts)

    @property
    def double(self) -> int:
        return sum(v.double for v in self.verdicts)

    @property
    def replies(self) -> int:
        return sum(len(v.replies) for v in self.verdicts)

    def e2e_ms(self) -> list[float]:
        """Every answered turn's latency, in the order the turns were sent."""
        return [e for v in self.verdicts if v.answered and (e := v.e2e_ms) is not None]

    def problems(self) -> list[str]:
        out: list[str] = []
        for v in self.verdicts:
            if v.lost:
                late = "" if v.e2e_ms is None else f" (the reply came after {v.e2e_ms:.0f} ms)"
                out.append(f"turn {v.turn.index} of {v.turn.phone} lost: no reply within {v.reply_timeout_ms} ms{late}")
            if v.double:
                out.append(f"turn {v.turn.index} of {v.turn.phone} answered {len(v.replies)} times")
        return out


def reconcile(turns: Iterable[Turn], replies: Iterable[Reply], *, reply_timeout_ms: int) -> Reconciliation:
    """Attribute every reply to its turn and judge each turn."""
    by_phone: dict[str, list[Turn]] = {}
    for turn in sorted(turns, key=lambda t: (t.phone, t.first_sent_ms, t.index)):
        by_phone.setdefault(turn.phone, []).append(turn)
    starts = {phone: [t.first_sent_ms for t in ts] for phone, ts in by_phone.items()}
    attributed: dict[int, list[Reply]] = {}
    unattributed: list[Reply] = []
    for reply in sorted(replies, key=lambda r: r.seq):
        if reply.to not in by_phone:
            continue  # someone else's client (another run against the same fake)
        i = bisect.bisect_right(starts[reply.to], reply.at_ms) - 1
        if i < 0:
            unattributed.append(reply)
            continue
        attributed.setdefault(id(by_phone[reply.to][i]), []).append(reply)
    verdicts = tuple(
        Verdict(t, tuple(attributed.get(id(t), ())), reply_timeout_ms) for ts in by_phone.values() for t in ts
    )
    return Reconciliation(verdicts=verdicts, unattributed=tuple(unattributed))


# --- merge correctness ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One item of `messages:{company}:{phone}` as the worker stores it."""

    role: str
    text: str
    at_ms: int

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> HistoryItem:
        return cls(role=str(doc.get("role", "")), text=str(doc.get("text", "")), at_ms=int(doc.get("at_ms", 0)))


@dataclass(frozen=True, slots=True)
class MergeCheck:
    """Turns found in the stored history, those whose merged message is not exactly their fragments, and counts."""

    turns_checked: int = 0
    mismatched: int = 0
    fragments_sent: int = 0  # what the checked turns' stored messages must hold: accepted (or unanswered but there)
    fragments_processed: int = 0  # tags of the checked turns found in the stored client messages
    unprocessed: int = 0  # turns with accepted fragments that no stored client message holds
    problems: tuple[str, ...] = ()

    def __add__(self, other: MergeCheck) -> MergeCheck:
        return MergeCheck(
            turns_checked=self.turns_checked + other.turns_checked,
            mismatched=self.mismatched + other.mismatched,
            fragments_sent=self.fragments_sent + other.fragments_sent,
            fragments_processed=self.fragments_processed + other.fragments_processed,
            unprocessed=self.unprocessed + other.unprocessed,
            problems=(self.problems + other.problems)[:MAX_PROBLEMS],
        )


def check_merge(turns: Sequence[Turn], history: Sequence[HistoryItem]) -> MergeCheck:
    """Compare one client's turns with the client messages the worker stored for that phone.

    A turn passes when exactly one stored message holds its tags, that message holds no other turn's tags, and
    its text is the turn's accepted fragments joined by one space in the order sent. A fragment whose request
    got no answer may be in it or not.
    """
    client = [item for item in history if item.role == "client"]
    holders: dict[int, list[int]] = {}  # turn index → positions of the stored messages holding its tags
    tags_of = [tags_in(item.text) for item in client]
    for pos, tags in enumerate(tags_of):
        for turn_index in dict.fromkeys(t for t, _ in tags):
            holders.setdefault(turn_index, []).append(pos)
    result = MergeCheck()
    for turn in turns:
        found = holders.get(turn.index, [])
        if not found:
            if turn.accepted:
                result += MergeCheck(unprocessed=1)
            continue
        got = [f for pos in found for t, f in tags_of[pos] if t == turn.index]
        problem = _merge_problem(turn, [client[pos] for pos in found], [tags_of[pos] for pos in found])
        result += MergeCheck(
            turns_checked=1,
            mismatched=int(problem is not None),
            fragments_sent=len(_expected(turn, got)),
            fragments_processed=len(got),
            problems=() if problem is None else (f"turn {turn.index} of {turn.phone}: {problem}",),
        )
    return result


def _expected(turn: Turn, got: list[int]) -> list[int]:
    """The fragments a turn's stored message must hold: the accepted ones, and the unanswered ones it does hold."""
    return [i for i, f in enumerate(turn.fragments) if f.outcome == "accepted" or (f.outcome == "pending" and i in got)]


def _merge_problem(turn: Turn, items: list[HistoryItem], tags: list[list[tuple[int, int]]]) -> str | None:
    if len(items) > 1:
        return f"split over {len(items)} stored messages: {[item.text for item in items]}"
    item, item_tags = items[0], tags[0]
    if any(t != turn.index for t, _ in item_tags):
        return f"merged with another turn: {item.text!r}"
    got = [f for _, f in item_tags]
    wanted = _expected(turn, got)
    if got != wanted:
        return f"fragments {got} stored, {wanted} sent"
    expected = " ".join(turn.fragments[i].text.strip() for i in wanted)
    if item.text != expected:
        return f"stored {item.text!r}, sent {expected!r}"
    return None

"""Turn-level judges: what any good human administrator gets right, beyond the end state.

Each user is judged on the conversation as it happened: what the user said and meant (`Said`, written by the
user itself), what the system answered and when (the fake WhatsApp's outbox), which of the user's fragments each
answer had read (the system's history: a turn's client entry carries the newest fragment it merged), and the
CRM's records. The checks, each counted apart:

- unrequested booking: a record created or moved to a slot, service or master the user never asked for or accepted;
- last word: the booking does not follow the user's latest explicit choice;
- asked twice: a question for what the user had already given before the turn began (service, day, time, master);
- unanswered fragment: a message no sent reply had read;
- stale reply: a reply sent while fragments the turn had not read were waiting (measured, for the worker's
  stale-reply drop; a violation only of the first three kinds is a reason to fail a run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time

from simulator.personas import CATALOGUE, MASTERS, Goal, in_window, time_fits
from simulator.reading import Ask, read_reply
from simulator.users import Said, User

# A fragment counts as read by a turn whose newest fragment arrived at most this long after it: the user's
# clock reading and the API's receipt are the same virtual instant, less than the shortest typing gap apart.
SAME_INSTANT_MS = 100
VIOLATIONS = ("unrequested_booking", "last_word", "asked_twice", "unanswered_fragment")


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of the system that produced a reply: the newest fragment it read, its reply, when it was sent."""

    read_up_to_ms: int
    reply: str
    sent_ms: int | None


@dataclass(frozen=True, slots=True)
class Record:
    """A record of the user's created or moved during the run, as the judges need it."""

    id: int
    service: str
    master: str
    start: datetime
    deleted: bool


@dataclass
class TurnVerdict:
    """The turn-level findings for one user; each list holds one line per finding."""

    phone: str
    persona: str
    unrequested_booking: list[str] = field(default_factory=list)
    last_word: list[str] = field(default_factory=list)
    asked_twice: list[str] = field(default_factory=list)
    unanswered_fragment: list[str] = field(default_factory=list)
    stale_replies: int = 0
    misfit_accepted: int = 0  # offers the user took that did not fit its goal: a simulator bug, never the system's
    turns_to_goal: int | None = None
    min_turns: int = 1

    @property
    def violations(self) -> int:
        return sum(len(getattr(self, kind)) for kind in VIOLATIONS)


def turns_from_history(history: Sequence[tuple[str, str, int]], sent: Sequence[tuple[int, str]]) -> list[Turn]:
    """The answered turns: each admin entry after its client entry, matched in order to the replies WhatsApp carried."""
    turns: list[Turn] = []
    pending = list(sent)
    read_up_to: int | None = None
    for role, text, at_ms in history:
        if role == "client":
            read_up_to = at_ms
            continue
        if read_up_to is None:
            continue
        match = next((i for i, (_, t) in enumerate(pending) if t == text), None)
        sent_ms = pending[match][0] if match is not None else None
        if match is not None:
            del pending[: match + 1]
        turns.append(Turn(read_up_to, text, sent_ms))
        read_up_to = None
    return turns


def judge_turns(user: User, *, turns: Sequence[Turn], records: Sequence[Record]) -> TurnVerdict:
    """Every turn-level check for one user."""
    v = TurnVerdict(user.phone, user.persona.name, turns_to_goal=user.turns_to_goal, min_turns=user.min_turns)
    choices = _choices(user.said)
    _check_records(user, v, choices, records)
    _check_questions(user, v, turns)
    _check_fragments(user, v, turns)
    v.misfit_accepted = sum(1 for s in user.said if s.part.accepted and not _fits(user, s))
    return v


def _choices(said: Sequence[Said]) -> list[tuple[int, date, time]]:
    """Every (day, time) the user asked for or accepted, in order: a day and an hour may come in two fragments."""
    out: list[tuple[int, date, time]] = []
    day: date | None = None
    at: time | None = None
    for s in said:
        if s.part.day is not None:
            day = s.part.day
        if s.part.at is not None:
            at = s.part.at
        if day is not None and at is not None and (s.part.day is not None or s.part.at is not None):
            out.append((s.at_ms, day, at))
    return out


def _check_records(
    user: User, v: TurnVerdict, choices: Sequence[tuple[int, date, time]], records: Sequence[Record]
) -> None:
    named_services = {s.part.service for s in user.said if s.part.service}
    named_masters = {s.part.master for s in user.said if s.part.master}
    chosen = {(d, t) for _, d, t in choices}
    for r in records:
        slot = (r.start.date(), r.start.time().replace(tzinfo=None))
        where = f"record {r.id}: {r.service} {r.start:%d.%m %H:%M} {r.master}"
        if user.want.goal not in (Goal.BOOK, Goal.BOOK_FLEXIBLE, Goal.RESCHEDULE):
            v.unrequested_booking.append(f"{where}: the user came for {user.want.goal}")
        elif slot not in chosen:
            v.unrequested_booking.append(f"{where}: a time the user never asked for or accepted")
        elif user.want.goal is not Goal.RESCHEDULE and r.service not in named_services:
            v.unrequested_booking.append(f"{where}: a service the user never named")
        elif named_masters and r.master not in named_masters:
            v.unrequested_booking.append(f"{where}: the user asked for {', '.join(sorted(named_masters))}")
    active = [r for r in records if not r.deleted]
    if choices and active:
        _, day, at = choices[-1]
        last = active[-1]
        if (last.start.date(), last.start.time().replace(tzinfo=None)) != (day, at):
            v.last_word.append(
                f"record {last.id} at {last.start:%d.%m %H:%M}, the user's latest choice {day:%d.%m} {at:%H:%M}"
            )


def _check_questions(user: User, v: TurnVerdict, turns: Sequence[Turn]) -> None:
    for turn in turns:
        given = [s.part for s in user.said if s.at_ms <= turn.read_up_to_ms + SAME_INSTANT_MS]
        r = read_reply(turn.reply, today=user.today, services=CATALOGUE, masters=MASTERS)
        days = [p.day for p in given if p.day is not None]
        explained = r.nothing_free or "занят" in turn.reply.lower() or any(o.day in days[-1:] for o in r.offers)
        had = {
            Ask.SERVICE: any(p.service for p in given),
            Ask.DAY: bool(days) and not explained,
            Ask.TIME: any(p.at for p in given) and not explained,
            Ask.MASTER: any(p.master for p in given),
            Ask.NAME: False,  # users never give their names
        }
        for ask in sorted(r.asks):
            if had[ask]:
                v.asked_twice.append(f"asked for the {ask} again: {turn.reply[:80]!r}")


def _check_fragments(user: User, v: TurnVerdict, turns: Sequence[Turn]) -> None:
    sent = [t for t in turns if t.sent_ms is not None]
    for s in user.said:
        if not any(t.read_up_to_ms + SAME_INSTANT_MS >= s.at_ms for t in sent):
            v.unanswered_fragment.append(f"no reply read {s.part.text[:40]!r}")
    for t in sent:
        assert t.sent_ms is not None
        if any(t.read_up_to_ms + SAME_INSTANT_MS < s.at_ms < t.sent_ms for s in user.said):
            v.stale_replies += 1


def _fits(user: User, s: Said) -> bool:
    """Whether an offer the user accepted fits its Want (the judge's own check of the user's reading)."""
    w, day, at = user.want, s.part.day, s.part.at
    if day is None or at is None:
        return False
    if w.goal is Goal.BOOK_FLEXIBLE:
        return in_window(w.window, day, at, today=user.today)
    return time_fits(day, at, [(x.part.day, x.part.at) for x in user.said if x.at_ms < s.at_ms and not x.part.accepted])

"""Judges: each user by the world's end state (never by the wording of replies), and the world as a whole.

Users with nothing to book (price askers, gibberish, injections, media) are judged by what they must see: a
real answer (the system's apology for a failed turn is none; a price asker's names the service's price) and
nothing changed.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo

import orjson

from simulator.personas import PERSONAS, Goal
from simulator.salon import BARBERSHOP_FIXTURE, Salon
from simulator.users import User
from simulator.whatsapp import OutboundMessage
from system.turn.worker import FALLBACK_REPLY

CHUNK_WINDOW_MS = 60_000  # parts of one long reply arrive within this window of each other
# What the system sends when a turn failed for good (dead letter): an apology, not an answer.
FAULT_REPLIES = frozenset({FALLBACK_REPLY})
_NUMBER = re.compile(r"\d[\d\s\u00a0\u202f]*\d|\d")


@dataclass(frozen=True, slots=True)
class Booked:
    """A CRM record as the judges see it."""

    id: int
    phone: str
    service_title: str
    master_id: int
    master_name: str
    start: datetime
    duration_min: int
    deleted: bool


def snapshot(salon: Salon, *, phone: str | None = None) -> list[Booked]:
    """Every record of the salon (cancelled ones too), frozen; only the client's own when `phone` is given."""
    out = []
    for r in salon.all_records() if phone is None else salon.records_by_phone(phone):
        service = salon.services.get(r.service_ids[0]) if r.service_ids else None
        master = salon.masters.get(r.master_id)
        out.append(
            Booked(
                id=r.id,
                phone=r.phone,
                service_title=service.title if service else "",
                master_id=r.master_id,
                master_name=master.name if master else "",
                start=r.start,
                duration_min=r.duration_min,
                deleted=r.deleted,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    phone: str
    persona: str
    success: bool
    reason: str


@dataclass(frozen=True, slots=True)
class WorldVerdict:
    double_bookings: int
    foreign_touched: int
    turns_answered_twice: int
    unanswered_users: int


def judge_user(user: User, *, initial: Sequence[Booked], final: Sequence[Booked], tz: tzinfo) -> Verdict:
    """The user's verdict; `initial`/`final` may hold every record or only the user's own (faster)."""
    mine_before = [r for r in initial if r.phone == user.phone and not r.deleted]
    mine_after = [r for r in final if r.phone == user.phone and not r.deleted]
    w = user.want
    start = datetime.combine(user.today, time(), tzinfo=tz)  # the day the user writes
    ok, reason = True, "ok"
    match w.goal:
        case Goal.BOOK:
            wanted = _at(start, w.day_offset, w.hour)
            booked = [r for r in mine_after if r.service_title == w.service]
            if len(mine_after) != 1 or not booked:
                ok, reason = False, f"{len(mine_after)} active bookings, {len(booked)} of {w.service}"
            elif booked[0].start != wanted and not user.replies:
                ok, reason = False, "booked without a reply"
            elif w.master and booked[0].start == wanted and booked[0].master_name != w.master:
                ok, reason = False, f"master {booked[0].master_name}, wanted {w.master}"
        case Goal.BOOK_FLEXIBLE:
            booked = [r for r in mine_after if r.service_title == w.service]
            if len(mine_after) != 1 or not booked:
                ok, reason = False, f"{len(mine_after)} active bookings, {len(booked)} of {w.service}"
        case Goal.CANCEL:
            if mine_after:
                ok, reason = False, f"{len(mine_after)} bookings left"
        case Goal.RESCHEDULE:
            # Moved to the wanted day, or to a time the bot offered when that day was full.
            original = _at(start, w.day_offset, w.hour)
            if len(mine_after) != 1:
                ok, reason = False, f"{len(mine_after)} active bookings"
            elif mine_after[0].start == original:
                ok, reason = False, "not moved"
        case _:
            if _state(mine_after) != _state(mine_before):
                ok, reason = False, "bookings changed"
    answers = [r for r in user.replies if r not in FAULT_REPLIES]
    if ok and not user.replies:
        ok, reason = False, "no reply"
    elif ok and not answers:
        ok, reason = False, "only the fault apology"
    elif ok and w.goal is Goal.PRICES and not any(_names_price(r, w.service) for r in answers):
        ok, reason = False, f"no price of {w.service}"
    return Verdict(user.phone, user.persona.name, ok, reason)


def _names_price(reply: str, service: str) -> bool:
    """The reply carries one of the catalogue prices of `service` (digits grouped by spaces or not)."""
    prices = _catalogue_prices().get(service, frozenset())
    return any(int(re.sub(r"\D", "", n)) in prices for n in _NUMBER.findall(reply))


@functools.cache
def _catalogue_prices() -> dict[str, frozenset[int]]:
    """Service title -> its price_min and price_max, from the salon fixture the simulation runs on."""
    services = orjson.loads(BARBERSHOP_FIXTURE.read_bytes())["services"]
    return {
        str(s["title"]): frozenset({int(s["price_min"]), int(s.get("price_max", s["price_min"]))}) for s in services
    }


def judge_world(
    users: Sequence[User],
    *,
    initial: Sequence[Booked],
    final: Sequence[Booked],
    inbound: dict[str, list[int]],
    outbound: Sequence[OutboundMessage],
) -> WorldVerdict:
    return WorldVerdict(
        double_bookings=_double_bookings(final),
        foreign_touched=_foreign_touched(users, initial, final),
        turns_answered_twice=_answered_twice(inbound, outbound),
        unanswered_users=sum(1 for u in users if not u.replies),
    )


def _at(start: datetime, day_offset: int, hour: int) -> datetime:
    return (start + timedelta(days=day_offset)).replace(hour=hour, minute=0, second=0, microsecond=0)


def _state(records: Sequence[Booked]) -> set[tuple[int, datetime, int]]:
    return {(r.id, r.start, r.master_id) for r in records}


def _double_bookings(records: Sequence[Booked]) -> int:
    """Active records of one master that overlap in time."""
    clashes = 0
    by_master: dict[int, list[Booked]] = {}
    for r in records:
        if not r.deleted:
            by_master.setdefault(r.master_id, []).append(r)
    for items in by_master.values():
        items.sort(key=lambda r: r.start)
        for a, b in itertools.pairwise(items):
            if b.start < a.start + timedelta(minutes=a.duration_min):
                clashes += 1
    return clashes


def _foreign_touched(users: Sequence[User], initial: Sequence[Booked], final: Sequence[Booked]) -> int:
    """Records changed (cancelled or moved) whose owner did not ask for that."""
    allowed = {u.phone for u in users if u.want.goal in (Goal.CANCEL, Goal.RESCHEDULE)}
    after = {r.id: r for r in final}
    touched = 0
    for before in initial:
        now = after.get(before.id)
        changed = now is None or now.deleted != before.deleted or now.start != before.start
        if changed and before.phone not in allowed:
            touched += 1
    return touched


def _answered_twice(inbound: dict[str, list[int]], outbound: Sequence[OutboundMessage]) -> int:
    """Replies with no client message since the previous reply (parts of one long reply excepted)."""
    twice = 0
    out_by_phone: dict[str, list[int]] = {}
    for m in outbound:
        out_by_phone.setdefault(m.to, []).append(m.at_ms)
    for phone, replies in out_by_phone.items():
        sent = inbound.get(phone, [])
        for prev, cur in itertools.pairwise(replies):
            if cur - prev > CHUNK_WINDOW_MS and not any(prev <= t < cur for t in sent):
                twice += 1
    return twice


def success_rates(verdicts: Sequence[Verdict]) -> dict[str, dict[str, float | int]]:
    total: Counter[str] = Counter(v.persona for v in verdicts)
    good: Counter[str] = Counter(v.persona for v in verdicts if v.success)
    return {p: {"users": n, "succeeded": good[p], "rate": round(good[p] / n, 4)} for p, n in sorted(total.items())}


def run_failures(rates: dict[str, dict[str, float | int]], *, world: WorldVerdict, dead_letters: int) -> list[str]:
    """Why a simulated run failed (empty: it passed): a persona under its rate, a dead letter, a broken invariant."""
    reasons = [
        f"{name} {100 * r['rate']:.1f}% < {100 * PERSONAS[name].min_rate:.0f}%"
        for name, r in rates.items()
        if name in PERSONAS and r["rate"] < PERSONAS[name].min_rate
    ]
    counts = (
        (dead_letters, "dead letters"),
        (world.unanswered_users, "users never answered"),
        (world.double_bookings, "double bookings"),
        (world.foreign_touched, "foreign bookings touched"),
        (world.turns_answered_twice, "turns answered twice"),
    )
    reasons.extend(f"{what} {n}" for n, what in counts if n)
    return reasons

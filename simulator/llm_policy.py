"""The fake LLM's policy: what a competent administrator model does next, read from the request alone.

A request carries the system prompt, the history, the client's message and this turn's tool calls with their
results. The policy decides the next step (tool calls or a Russian reply) from exactly that; it books only
what a tool confirmed and acts only on record ids that list_my_bookings returned in this turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from simulator.llm_replies import (
    ASK_WHICH_CANCEL,
    ASK_WHICH_MOVE,
    DONE,
    MOVE_MARK,
    SLOTS_LEAD,
    Replies,
    day_month,
    is_real_master,
)
from simulator.llm_turn import Calls, Decision, Say, Turn, call
from simulator.nlu import Intent, Morph, ServiceRef, Understanding, understand
from simulator.nlu_when import TimeWindow, month_number

CARRY_MESSAGES = 4  # earlier client messages of the same request a booking may take its details from
Pick = Callable[[str, Sequence[str]], str]


@dataclass(frozen=True, slots=True)
class _Want:
    service: ServiceRef | None
    master: str | None
    day: date | None
    at: time | None
    window: TimeWindow | None
    slot: datetime | None  # a slot offered earlier that the client picked
    unclear_day: bool = False  # a day-like word was not understood and no day is known: ask
    unclear_master: str | None = None  # "к X" named no master and none is known: ask


class Policy:
    """Decides the next step of a turn; deterministic given the request and `pick`."""

    def __init__(self, *, morph: Morph, pick: Pick) -> None:
        self._morph = morph
        self._pick = pick

    def decide(self, turn: Turn) -> Decision:
        f = turn.facts
        u = understand(turn.text, now=f.now, services=f.services, masters=f.masters, morph=self._morph)
        saved = turn.last("save_client_name")
        if u.name and saved is None and u.name != f.client_name and "save_client_name" in turn.tools:
            return call("save_client_name", name=u.name)
        r = Replies(facts=f, pick=self._pick, morph=self._morph, name=str((saved or {}).get("saved") or f.client_name))
        intent = _followup(u, turn.last_reply())
        if intent is Intent.GIVE_NAME:
            return Say(r.name_saved(saved or ({"saved": u.name} if u.name else None)))
        if intent is Intent.CANCEL:
            return self._cancel(turn, u, r)
        if intent is Intent.RESCHEDULE:
            return self._reschedule(turn, u, r)
        if intent is Intent.MY_BOOKINGS:
            listed = turn.last("list_my_bookings")
            return call("list_my_bookings") if listed is None else Say(r.bookings(listed))
        if intent is Intent.PRICES:
            return self._prices(turn, u, r)
        if intent is Intent.BOOK and _amends_booking(u, turn):
            moved = self._amend(turn, u, r)
            if moved is not None:
                return moved
        if intent in (Intent.BOOK, Intent.AVAILABILITY):
            return self._book(turn, u, r, confirm_first=intent is Intent.AVAILABILITY)
        return Say(r.small_talk(intent))

    # --- booking -----------------------------------------------------------------------------------------

    def _book(self, turn: Turn, u: Understanding, r: Replies, *, confirm_first: bool) -> Decision:
        if (booked := turn.last("create_booking")) is not None:
            return Say(r.booked(booked))
        if u.unknown_service:
            return Say(r.unknown_service(u.unknown_service))
        if u.service_options:
            return Say(r.which_service(u.service_options))
        want = self._want(turn, u)
        if want.service is None:
            if not turn.facts.services and turn.last("list_services") is None and "list_services" in turn.tools:
                return call("list_services")
            return Say(r.ask_service(turn.last("list_services")))
        if want.unclear_master:
            return Say(r.ask_master(want.unclear_master))
        if want.unclear_day:
            return Say(r.ask_day())
        if want.slot is not None and turn.last("search_slots") is None:
            return call("create_booking", service=want.service.title, datetime=_iso(want.slot), master=want.master)
        searches = turn.results("search_slots")
        if not searches:
            return call(
                "search_slots",
                service=want.service.title,
                date=want.day.isoformat() if want.day else None,
                master=want.master,
                time_from=_from(want.at, want.window),
            )
        found = searches[-1]
        if "error" in found:
            return Say(r.tool_error(found))
        slots = found.get("slots") or []
        if not slots:
            if want.day is not None and len(searches) == 1:
                start = want.day + timedelta(days=1)
                return call(
                    "search_slots",
                    service=want.service.title,
                    date_from=start.isoformat(),
                    date_to=(start + timedelta(days=6)).isoformat(),
                    master=want.master,
                    time_from=_from(want.at, want.window),
                )
            return Say(r.nothing_free(want.day))
        busy_day = want.day if len(searches) > 1 else None
        if want.at is not None:
            exact = [s for s in slots if s.get("time") == _hhmm(want.at) and _same_day(s, want.day)]
            if exact and not confirm_first:
                slot = exact[0]
                master = want.master or (slot["master"] if is_real_master(slot.get("master")) else None)
                return call("create_booking", service=want.service.title, datetime=slot["datetime"], master=master)
            if not exact and want.day is not None and _beyond_listing(found, want.day, want.at) and not confirm_first:
                at = _iso(datetime.combine(want.day, want.at))
                return call("create_booking", service=want.service.title, datetime=at, master=want.master)
            if exact:
                return Say(r.is_free(exact[0], want.service.title))
            return Say(r.offer(_nearest(slots, want.at), taken=want.at, busy_day=busy_day))
        if want.window is not None:
            inside = [s for s in slots if _slot_time(s) in want.window]
            return Say(r.offer(inside[:3] or slots[:3], outside_window=not inside, busy_day=busy_day))
        return Say(r.offer(slots[:3], busy_day=busy_day))

    def _amend(self, turn: Turn, u: Understanding, r: Replies) -> Decision | None:
        """ "к Сергею" or "нет, в пятницу в 18:00" right after a booking: move that booking to the master, day or
        time said, keeping what was not said (None: the booking is not found)."""
        listed = turn.last("list_my_bookings")
        if listed is None:
            return call("list_my_bookings")
        if "error" in listed:
            return Say(r.tool_error(listed))
        last = turn.last_reply()
        just_booked = [b for b in listed.get("bookings") or [] if _mentioned(b, last)]
        if len(just_booked) != 1:
            return None
        record = just_booked[0]
        moved = turn.last("reschedule_booking")
        was = datetime.fromisoformat(str(record["datetime"])[:16])
        wanted = datetime.combine(u.day or was.date(), u.at or was.time())
        master = u.master if u.master != record.get("master") else None
        if moved is None:
            if wanted == was and master is None:
                return Say(r.booked({"booked": record}))
            return call("reschedule_booking", record_id=record["record_id"], datetime=_iso(wanted), master=master)
        if "rescheduled" in moved or not moved.get("next_free"):
            return Say(r.rescheduled(moved))
        return Say(r.move_offer(record, moved["next_free"][:3], taken=wanted.time(), day=wanted.date()))

    def _want(self, turn: Turn, u: Understanding) -> _Want:
        f = turn.facts
        carried = self._carry(turn)
        draft = f.draft if f.stage == "choosing" else {}  # after "booked" the draft is history, not a wish
        draft_service = draft.get("service", "")
        service = (
            u.service
            or carried.service
            or next((s for s in f.services if s.title == draft_service), None)
            or (ServiceRef(0, draft_service) if draft_service else None)
        )
        master = u.master or carried.master or draft.get("master") or None
        slot = _picked_slot(u, f.offered, turn.last_reply())
        # the latest explicit choice wins: a time picked from an earlier offer takes that offer's day
        earlier = _offered_day(turn, u.at) if u.at is not None and slot is None else None
        day = u.day or (slot.date() if slot else None) or earlier or carried.day
        if day is None and u.at is not None and len({o.date() for o in f.offered}) == 1:
            day = f.offered[0].date()
        at = u.at or (slot.time() if slot else None) or (carried.at if not u.window else None)
        window = u.window or (carried.window if not u.at else None)
        return _Want(
            service=service,
            master=master,
            day=day,
            at=at,
            window=window,
            slot=slot,
            unclear_day=day is None and (u.unclear_day or carried.unclear_day),
            unclear_master=None if master else (u.unclear_master or carried.unclear_master),
        )

    def _carry(self, turn: Turn) -> Understanding:
        """Details the client gave earlier in this request (service, master, day) for a message that omits them."""
        f = turn.facts
        service: ServiceRef | None = None
        master: str | None = None
        day: date | None = None
        at: time | None = None
        window: TimeWindow | None = None
        unclear_day, unclear_master = False, None
        said: set[str] = set()
        for role, text in reversed(turn.history):
            if role == "assistant":
                if DONE in text:
                    break
                continue
            if text in said:  # a repeated message ("мужская стрижка" again) adds nothing and must not push details out
                continue
            said.add(text)
            if len(said) > CARRY_MESSAGES:
                break
            earlier = understand(text, now=f.now, services=f.services, masters=f.masters, morph=self._morph)
            service = service or earlier.service
            master = master or earlier.master
            at = at or earlier.at
            window = window or earlier.window
            unclear_day = unclear_day or earlier.unclear_day
            unclear_master = unclear_master or earlier.unclear_master
            if day is None and earlier.day is not None and earlier.day >= f.now.date():
                day = earlier.day
        return Understanding(
            intent=Intent.BOOK,
            service=service,
            master=master,
            day=day,
            at=at,
            window=window,
            unclear_day=unclear_day,
            unclear_master=unclear_master,
        )

    def _previous(self, turn: Turn) -> Understanding:
        f = turn.facts
        text = next((t for role, t in reversed(turn.history) if role == "user"), "")
        return understand(text, now=f.now, services=f.services, masters=f.masters, morph=self._morph)

    # --- prices ------------------------------------------------------------------------------------------

    def _prices(self, turn: Turn, u: Understanding, r: Replies) -> Decision:
        if u.unknown_service:
            return Say(r.unknown_service(u.unknown_service))
        listed = turn.last("list_services")
        if not turn.facts.services and listed is None and "list_services" in turn.tools:
            return call("list_services")
        chosen = (u.service,) if u.service else u.service_options
        return Say(r.prices(chosen, listed))

    # --- cancel and reschedule ---------------------------------------------------------------------------

    def _cancel(self, turn: Turn, u: Understanding, r: Replies) -> Decision:
        listed = turn.last("list_my_bookings")
        if listed is None:
            return call("list_my_bookings")
        if "error" in listed:
            return Say(r.tool_error(listed))
        done = turn.results("cancel_booking")
        if done:
            return Say(r.cancelled(done))
        bookings: list[dict[str, Any]] = listed.get("bookings") or []
        if not bookings:
            return Say(r.no_bookings(cancel=True))
        if u.everything:
            return Calls(tuple(("cancel_booking", {"record_id": b["record_id"]}) for b in bookings))
        chosen = _matching(bookings, u.day or u.from_day, u.at or u.from_at, u.service, u.choice, u.record_id)
        if len(chosen) == 1:
            return call("cancel_booking", record_id=chosen[0]["record_id"])
        return Say(r.which_booking(bookings, ASK_WHICH_CANCEL, none_matched=not chosen))

    def _reschedule(self, turn: Turn, u: Understanding, r: Replies) -> Decision:
        listed = turn.last("list_my_bookings")
        if listed is None:
            return call("list_my_bookings")
        if "error" in listed:
            return Say(r.tool_error(listed))
        if (moved := turn.last("reschedule_booking")) is not None:
            return Say(r.rescheduled(moved))
        bookings: list[dict[str, Any]] = listed.get("bookings") or []
        if not bookings:
            return Say(r.no_bookings(cancel=False))
        last = turn.last_reply()
        target_day, target_at = u.day, u.at
        mentioned = [b for b in bookings if _mentioned(b, last)] if MOVE_MARK in last else []
        if len(mentioned) == 1:
            record = mentioned[0]
        else:
            if ASK_WHICH_MOVE in last and u.intent is not Intent.RESCHEDULE:  # the answer to "which one?"
                chosen = _matching(bookings, u.day, u.at, u.service, u.choice)
                asked = self._previous(turn)  # the message that asked for the move may have named the new time
                target_day, target_at = asked.day, asked.at
            else:
                chosen = _matching(bookings, u.from_day, u.from_at, u.service, u.choice, u.record_id)
            if len(chosen) != 1:
                return Say(r.which_booking(bookings, ASK_WHICH_MOVE, none_matched=not chosen))
            record = chosen[0]
        slot = _picked_slot(u, turn.facts.offered, last) if mentioned else None
        if slot is not None and turn.last("search_slots") is None:
            master = u.master or _offered_master(last)
            master = master if master != record.get("master") else None
            return call("reschedule_booking", record_id=record["record_id"], datetime=_iso(slot), master=master)
        if target_day is None and (target_at is not None or u.window is not None):
            offered_days = {o.date() for o in turn.facts.offered}
            target_day = offered_days.pop() if len(offered_days) == 1 else date.fromisoformat(record["datetime"][:10])
        if target_day is None:
            return Say(r.ask_new_time(record))
        found = turn.last("search_slots")
        if found is None:
            services = record.get("services") or []
            return call(
                "search_slots",
                service=services[0] if services else "",
                date=target_day.isoformat(),
                master=record.get("master") or None,
                time_from=_from(target_at, u.window),
            )
        if "error" in found:
            return Say(r.tool_error(found))
        slots = [s for s in found.get("slots") or [] if s.get("datetime") != record.get("datetime")]
        if target_at is not None:
            exact = [s for s in slots if s.get("time") == _hhmm(target_at)]
            if exact or _beyond_listing(found, target_day, target_at):
                at = exact[0]["datetime"] if exact else _iso(datetime.combine(target_day, target_at))
                return call("reschedule_booking", record_id=record["record_id"], datetime=at)
        if u.window is not None:
            slots = [s for s in slots if _slot_time(s) in u.window] or slots
        return Say(r.move_offer(record, slots[:3], taken=target_at, day=target_day))


def _followup(u: Understanding, last_reply: str) -> Intent:
    """A bare date, time or "да" answers the question the administrator asked last."""
    details = u.day or u.at or u.window or u.choice is not None
    if u.affirmative and not details and not u.service and DONE in last_reply:
        return Intent.THANKS_BYE  # "да", "ок" after a done booking
    if (
        u.intent in (Intent.BOOK, Intent.AVAILABILITY, Intent.OFF_TOPIC)
        and (details or u.affirmative)
        and not u.service
    ):
        if ASK_WHICH_CANCEL in last_reply:
            return Intent.CANCEL
        if ASK_WHICH_MOVE in last_reply or MOVE_MARK in last_reply:
            return Intent.RESCHEDULE
    return u.intent


def _amends_booking(u: Understanding, turn: Turn) -> bool:
    """A master, day or time alone, just after the administrator booked: the client corrects that booking."""
    other = u.service or u.service_options or u.window or u.choice is not None
    return bool(u.master or u.day or u.at) and not other and turn.facts.stage == "booked" and DONE in turn.last_reply()


def _picked_slot(u: Understanding, offered: tuple[datetime, ...], last_reply: str) -> datetime | None:
    """The offered slot the client chose: by time ("в 16:00"), by position ("второй") or by a plain "да"."""
    if not offered:
        return None
    if u.at is not None:
        return next((o for o in offered if o.time() == u.at and (u.day is None or o.date() == u.day)), None)
    if u.day is not None:
        return None
    shown = _shown(offered, last_reply)
    if u.choice is not None and -len(shown) <= u.choice < len(shown):
        return shown[u.choice]
    if u.affirmative and len(shown) == 1:
        return shown[0]
    return None


def _offered_master(text: str) -> str | None:
    """The master whose times the administrator's last message listed ("… (мастер Сергей)."), if one was."""
    m = re.search(r"\(мастер ([^)]+)\)\.", re.split(SLOTS_LEAD, text)[-1])
    return m[1] if m else None


def _offered_day(turn: Turn, at: time) -> date | None:
    """The day of the latest earlier offer that listed `at` ("Свободно: завтра, 26 ноября — 15:00, 16:00")."""
    hhmm = _hhmm(at)
    today = turn.facts.now.date()
    for role, text in reversed(turn.history):
        if role != "assistant" or not re.search(SLOTS_LEAD, text):
            continue
        listing = re.split(SLOTS_LEAD, text)[-1]
        for day, month, times in re.findall(r"(\d{1,2}) ([а-я]+) — ([\d:, ]+)", listing):
            number = month_number(month)
            if number is None or hhmm not in times:
                continue
            found = date(today.year, number, int(day))
            return found if found >= today else date(today.year + 1, number, int(day))
    return None


def _shown(offered: tuple[datetime, ...], text: str) -> list[datetime]:
    """The offered slots named in the administrator's last message, in the order named."""
    out: list[datetime] = []
    rest = list(offered)
    listing = re.split(SLOTS_LEAD, text)[-1]  # the slots follow the lead; earlier times name the old record
    for hhmm in re.findall(r"\b\d{2}:\d{2}\b", listing):
        match = next((o for o in rest if _hhmm(o.time()) == hhmm), None)
        if match is not None:
            out.append(match)
            rest = rest[rest.index(match) + 1 :]
    return out


def _matching(
    bookings: list[dict[str, Any]],
    day: date | None,
    at: time | None,
    service: ServiceRef | None,
    choice: int | None,
    record_id: int | None = None,
) -> list[dict[str, Any]]:
    """The client's bookings that fit what they said; a record number not among them matches nothing."""
    if record_id is not None:
        return [b for b in bookings if b.get("record_id") == record_id]
    if choice is not None and -len(bookings) <= choice < len(bookings):
        return [bookings[choice]]
    found = bookings
    if day is not None:
        found = [b for b in found if str(b.get("datetime", ""))[:10] == day.isoformat()]
    if at is not None:
        found = [b for b in found if b.get("time") == _hhmm(at)]
    if service is not None:
        found = [b for b in found if service.title in (b.get("services") or [])]
    return found


def _mentioned(booking: dict[str, Any], text: str) -> bool:
    at = datetime.fromisoformat(str(booking["datetime"])[:16])
    return f"{day_month(at.date())} в {_hhmm(at.time())}" in text


def _from(at: time | None, window: Any) -> str | None:
    """Where a search should start on the clock: an hour before the wanted time, or where the window opens."""
    if at is not None:
        return f"{max(0, at.hour - 1):02d}:{at.minute:02d}"
    start = getattr(window, "start", None)
    return start.strftime("%H:%M") if isinstance(start, time) else None


def _nearest(slots: list[dict[str, Any]], at: time) -> list[dict[str, Any]]:
    wanted = at.hour * 60 + at.minute
    by_distance = sorted(slots, key=lambda s: (s["datetime"][:10], abs(_minutes(s) - wanted)))
    day = by_distance[0]["datetime"][:10]
    return sorted([s for s in by_distance if s["datetime"][:10] == day][:3], key=lambda s: str(s["datetime"]))


def _beyond_listing(found: dict[str, Any], day: date, at: time) -> bool:
    """The listing says it is cut (`more`): a later time that day may be free; the booking tool checks."""
    slots = found.get("slots") or []
    on_day = [s for s in slots if _same_day(s, day)]
    return bool(found.get("more")) and bool(on_day) and on_day[-1] is slots[-1] and _slot_time(on_day[-1]) < at


def _same_day(slot: dict[str, Any], day: date | None) -> bool:
    return day is None or str(slot.get("datetime", ""))[:10] == day.isoformat()


def _slot_time(slot: dict[str, Any]) -> time:
    return datetime.fromisoformat(str(slot["datetime"])[:16]).time()


def _minutes(slot: dict[str, Any]) -> int:
    at = _slot_time(slot)
    return at.hour * 60 + at.minute


def _hhmm(at: time) -> str:
    return at.strftime("%H:%M")


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M")

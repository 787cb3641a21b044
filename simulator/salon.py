"""The fake salon behind the fake CRM: services, masters, weekly schedules and records, as pure deterministic logic.

Time is always an argument (`now`); nothing here reads a clock or draws a random number.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from simulator.salon_records import ClientBase, RecordBook

BARBERSHOP_FIXTURE = Path(__file__).parent / "fixtures" / "barbershop.json"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FIRST_RECORD_ID = 1001
FIRST_CLIENT_ID = 501
MAX_APPOINTMENTS = 10
# A fixture booking whose day is the master's day off (the start weekday varies) moves on day by day, this far.
FIXTURE_SHIFT_DAYS = 14

# YClients booking error codes (HTTP 422, `meta.errors[].code`).
SLOT_TAKEN = 433
NO_MASTER_FREE = 436
APPOINTMENTS_OVERLAP = 437
SERVICE_UNAVAILABLE = 438

# Record attendance as YClients keeps it: -1 no-show, 0 awaited, 1 came, 2 confirmed. Cancelling never changes it.
ATTENDANCE_VALUES = frozenset({-1, 0, 1, 2})


class SalonError(Exception):
    """Base of the salon's errors."""


class FixtureError(SalonError, ValueError):
    """The salon fixture is malformed or inconsistent."""


class BookingConflict(SalonError):
    """The CRM would refuse this booking; `code` is the YClients error code (433, 436, 437, 438)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnknownRecord(SalonError):
    """No such record, or it was deleted."""


class UnknownMaster(SalonError):
    """No such master."""


@dataclass(frozen=True, slots=True)
class SalonService:
    id: int
    title: str
    price_min: int  # roubles
    price_max: int
    duration_min: int
    category_id: int = 0


@dataclass(frozen=True, slots=True)
class SalonMaster:
    """A master, the services they do and their weekly hours (index 0 = Monday; None = day off)."""

    id: int
    name: str
    specialization: str
    service_ids: tuple[int, ...]
    hours: tuple[tuple[time, time] | None, ...]

    def does(self, service_ids: Iterable[int]) -> bool:
        return set(service_ids) <= set(self.service_ids)

    def hours_on(self, day: date) -> tuple[time, time] | None:
        return self.hours[day.weekday()]


@dataclass(frozen=True, slots=True)
class Appointment:
    """One appointment of a booking request; `master_id` 0 means any master."""

    service_ids: tuple[int, ...]
    master_id: int
    start: datetime  # aware


@dataclass(frozen=True, slots=True)
class FreeSlot:
    """A start time a master can take; also what a checked appointment resolves to."""

    master_id: int
    start: datetime
    duration_min: int


@dataclass(frozen=True, slots=True)
class SalonClient:
    """A client of the salon's base; YClients adds one with the first booking from a new phone."""

    id: int
    phone: str  # canonical digits
    name: str = ""


@dataclass(frozen=True, slots=True)
class SalonRecord:
    """A record as the CRM keeps it; cancelled records stay with `deleted=True` for the judges."""

    id: int
    phone: str  # canonical digits
    client_name: str
    master_id: int
    service_ids: tuple[int, ...]
    start: datetime  # in the salon's time zone
    duration_min: int
    api_id: str = ""
    email: str = ""
    comment: str = ""
    created_at: datetime | None = None
    deleted: bool = False
    deleted_at: datetime | None = None
    attendance: int = 0
    client_id: int = 0
    changed_at: datetime | None = None  # the last change (created, moved, deleted, attendance)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.duration_min)


class Salon:
    """One salon's catalogue, masters' schedules and records; every method is deterministic."""

    def __init__(
        self,
        *,
        company_id: int,
        name: str,
        tz: ZoneInfo,
        services: Sequence[SalonService],
        masters: Sequence[SalonMaster],
        categories: Mapping[int, str] | None = None,
        slot_step_min: int = 15,
        booking_horizon_days: int = 30,
    ) -> None:
        if slot_step_min < 1 or not services or not masters:
            raise FixtureError("a salon needs services, masters and a positive slot step")
        self.company_id = company_id
        self.name = name
        self.tz = tz
        self.services = {service.id: service for service in services}
        self.masters = {master.id: master for master in masters}  # insertion order: the stable "any master" order
        self.categories = dict(categories or {})
        self.slot_step_min = slot_step_min
        self.booking_horizon_days = booking_horizon_days
        self._records = RecordBook(tz)
        self._ids = itertools.count(FIRST_RECORD_ID)
        self._clients = ClientBase()
        self._client_ids = itertools.count(FIRST_CLIENT_ID)
        self.blocked_phones: set[str] = set()  # canonical phones the salon takes no online bookings from

    @classmethod
    def from_fixture(cls, path: str | Path, *, start: datetime) -> Salon:
        """Load a fixture file; its bookings are placed relative to `start` (the simulation's start)."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), start=start)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, start: datetime) -> Salon:
        if start.tzinfo is None:
            raise FixtureError("start must be an aware datetime")
        try:
            salon = cls(
                company_id=int(data["company_id"]),
                name=str(data["name"]),
                tz=ZoneInfo(str(data["timezone"])),
                services=[_service(item) for item in data["services"]],
                masters=[_master(item) for item in data["masters"]],
                categories={int(item["id"]): str(item["title"]) for item in data.get("categories", [])},
                slot_step_min=int(data.get("slot_step_min", 15)),
                booking_horizon_days=int(data.get("booking_horizon_days", 30)),
            )
            opening = data.get("opening_hours")
            if opening:
                salon._check_hours_within(_hhmm(opening["start"]), _hhmm(opening["end"]))
            for booking in data.get("bookings", []):
                salon._place_fixture_booking(booking, start=start.astimezone(salon.tz))
        except (KeyError, TypeError, ValueError) as exc:
            raise FixtureError(f"bad salon fixture: {type(exc).__name__}: {exc}") from exc
        return salon

    # --- catalogue -----------------------------------------------------------------------------------------

    def masters_for(self, service_ids: Iterable[int]) -> list[SalonMaster]:
        """Masters doing every one of `service_ids`, in the stable order."""
        wanted = tuple(service_ids)
        return [master for master in self.masters.values() if master.does(wanted)]

    def duration_min(self, service_ids: Iterable[int]) -> int:
        """The appointment's length: its services one after another (the shortest service when none is given)."""
        ids = tuple(service_ids)
        if not ids:
            return min(service.duration_min for service in self.services.values())
        unknown = [service_id for service_id in ids if service_id not in self.services]
        if unknown:
            raise BookingConflict(SERVICE_UNAVAILABLE, f"no services {unknown}")
        return sum(self.services[service_id].duration_min for service_id in ids)

    # --- availability --------------------------------------------------------------------------------------

    def free_slots(
        self, master_id: int, day: date, service_ids: Sequence[int] = (), *, now: datetime | None = None
    ) -> list[FreeSlot]:
        """Free start times on the slot grid; master 0: the union over masters, each time given to the first free."""
        by_start: dict[datetime, FreeSlot] = {}
        for slot in self._free_starts(master_id, day, service_ids, now=now):
            by_start.setdefault(slot.start, slot)
        return [by_start[start] for start in sorted(by_start)]

    def has_free_slot(
        self, master_id: int, day: date, service_ids: Sequence[int] = (), *, now: datetime | None = None
    ) -> bool:
        """Whether `free_slots` would list anything, stopping at the first free time (the month's booking days)."""
        return next(self._free_starts(master_id, day, service_ids, now=now), None) is not None

    def _free_starts(
        self, master_id: int, day: date, service_ids: Sequence[int], *, now: datetime | None
    ) -> Iterator[FreeSlot]:
        """Each candidate master's free starts in turn, master by master in the usual order."""
        masters = self._candidates(master_id, service_ids)
        if any(service_id not in self.services for service_id in service_ids):
            return
        duration = self.duration_min(service_ids)
        for master in masters:
            for start in self._grid(master, day, duration, now=now):
                yield FreeSlot(master.id, start, duration)

    def check(self, appointments: Sequence[Appointment], *, now: datetime | None = None) -> list[FreeSlot]:
        """Where each appointment would go (masters resolved), or BookingConflict with the code YClients gives."""
        if not 1 <= len(appointments) <= MAX_APPOINTMENTS:
            raise BookingConflict(SERVICE_UNAVAILABLE, f"a booking has 1 to {MAX_APPOINTMENTS} appointments")
        durations = [self._duration_or_conflict(appointment.service_ids) for appointment in appointments]
        spans = sorted((a.start, a.start + timedelta(minutes=d)) for a, d in zip(appointments, durations, strict=True))
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)):
            raise BookingConflict(APPOINTMENTS_OVERLAP, "the appointments overlap in time")
        return [
            self._place(appointment, duration, now=now)
            for appointment, duration in zip(appointments, durations, strict=True)
        ]

    # --- records -------------------------------------------------------------------------------------------

    def book(
        self,
        *,
        phone: str,
        client_name: str,
        appointments: Sequence[Appointment],
        api_id: str = "",
        email: str = "",
        comment: str = "",
        now: datetime | None = None,
    ) -> list[SalonRecord]:
        """Create one record per appointment, all or none; ids increase from 1001."""
        placements = self.check(appointments, now=now)
        client = self.client(phone, name=client_name)
        created = []
        for appointment, slot in zip(appointments, placements, strict=True):
            record = SalonRecord(
                id=next(self._ids),
                phone=client.phone,
                client_name=client_name,
                master_id=slot.master_id,
                service_ids=appointment.service_ids,
                start=slot.start,
                duration_min=slot.duration_min,
                api_id=api_id,
                email=email,
                comment=comment,
                created_at=now,
                client_id=client.id,
                changed_at=now,
            )
            self._records.put(record)
            created.append(record)
        return created

    def client(self, phone: str, *, name: str = "") -> SalonClient:
        """The client with this phone, added to the base if new (the name is kept from the first booking)."""
        canonical = canonical_phone(phone)
        known = self._clients.get(canonical)
        if known is None:
            known = SalonClient(id=next(self._client_ids), phone=canonical, name=name)
            self._clients.add(known)
        return known

    def clients(self) -> list[SalonClient]:
        """The client base, by id."""
        return self._clients.all()  # ids are handed out in the order clients are added

    def clients_matching(self, text: str) -> list[SalonClient]:
        """Clients, by id, whose phone contains the digits of `text` or whose name contains it (any case)."""
        folded = text.casefold()
        return self._clients.matching(digits=canonical_phone(folded), text=folded)

    def record(self, record_id: int) -> SalonRecord:
        """A record, deleted or not."""
        record = self._records.get(record_id)
        if record is None:
            raise UnknownRecord(f"no record {record_id}")
        return record

    def records_by_phone(self, phone: str) -> list[SalonRecord]:
        """The client's records, cancelled ones included, by start time."""
        return self._records.of_phone(canonical_phone(phone))

    def records_of_client(self, client_id: int) -> list[SalonRecord]:
        """The records of the client with this id, cancelled ones included, by start time."""
        return self._records.of_client(client_id)

    def all_records(self) -> list[SalonRecord]:
        """Every record ever made, cancelled ones included, in creation order."""
        return self._records.all()

    def move(
        self,
        record_id: int,
        *,
        start: datetime,
        master_id: int,
        service_ids: Sequence[int] = (),
        duration_min: int | None = None,
        now: datetime | None = None,
        force: bool = False,
    ) -> SalonRecord:
        """Reschedule an active record (master 0: its own master if free, else any); `force` skips the checks."""
        record = self._active(record_id)
        services = tuple(service_ids) or record.service_ids
        duration = self._duration_or_conflict(services)
        if duration_min is not None and duration_min > 0:
            duration = duration_min
        if force:
            if start.tzinfo is None:
                raise BookingConflict(SLOT_TAKEN, "the time has no UTC offset")
            master = self._master(master_id or record.master_id)
            slot = FreeSlot(master.id, start.astimezone(self.tz), duration)
        else:
            slot = self._place(Appointment(services, master_id, start), duration, now=now, ignore_id=record.id)
        moved = replace(
            record,
            master_id=slot.master_id,
            start=slot.start,
            duration_min=slot.duration_min,
            service_ids=services,
            changed_at=now or record.changed_at,
        )
        self._records.put(moved)
        return moved

    def cancel(self, record_id: int, *, now: datetime | None = None) -> SalonRecord:
        """Delete an active record (a cancellation, not a no-show: `attendance` is left as it was)."""
        cancelled = replace(self._active(record_id), deleted=True, deleted_at=now, changed_at=now)
        self._records.put(cancelled)
        return cancelled

    def set_attendance(self, record_id: int, attendance: int) -> SalonRecord:
        """Mark whether the client came (1), did not (-1), confirmed (2) or is awaited (0)."""
        if attendance not in ATTENDANCE_VALUES:
            raise ValueError(f"attendance must be one of {sorted(ATTENDANCE_VALUES)}")
        marked = replace(self._active(record_id), attendance=attendance)
        self._records.put(marked)
        return marked

    # --- internals -----------------------------------------------------------------------------------------

    def _master(self, master_id: int) -> SalonMaster:
        try:
            return self.masters[master_id]
        except KeyError:
            raise UnknownMaster(f"no master {master_id}") from None

    def _active(self, record_id: int) -> SalonRecord:
        record = self.record(record_id)
        if record.deleted:
            raise UnknownRecord(f"record {record_id} is deleted")
        return record

    def _candidates(self, master_id: int, service_ids: Sequence[int]) -> list[SalonMaster]:
        if master_id == 0:
            return self.masters_for(service_ids)
        master = self._master(master_id)
        return [master] if master.does(service_ids) else []

    def _duration_or_conflict(self, service_ids: Sequence[int]) -> int:
        if not service_ids:
            raise BookingConflict(SERVICE_UNAVAILABLE, "an appointment needs at least one service")
        return self.duration_min(service_ids)

    def _working_span(self, master: SalonMaster, day: date) -> tuple[datetime, datetime] | None:
        hours = master.hours_on(day)
        if hours is None:
            return None
        return datetime.combine(day, hours[0], self.tz), datetime.combine(day, hours[1], self.tz)

    def _grid(self, master: SalonMaster, day: date, duration: int, *, now: datetime | None) -> Iterator[datetime]:
        span = self._working_span(master, day)
        if span is None:
            return
        step, length = timedelta(minutes=self.slot_step_min), timedelta(minutes=duration)
        busy = [(r.start, r.end) for r in self._records.busy(master.id, span[0], span[1])]
        start = span[0]
        while start + length <= span[1]:
            free = not any(start < busy_end and busy_start < start + length for busy_start, busy_end in busy)
            if free and (now is None or start >= now):
                yield start
            start += step

    def _refusal(
        self, master: SalonMaster, start: datetime, duration: int, *, now: datetime | None, ignore_id: int | None
    ) -> int | None:
        """Why `master` cannot take [start, start + duration): 436 off duty, 433 past or busy; None when free."""
        end = start + timedelta(minutes=duration)
        span = self._working_span(master, start.date())
        if span is None or start < span[0] or end > span[1]:
            return NO_MASTER_FREE
        if now is not None and start < now:
            return SLOT_TAKEN
        if any(self._records.busy(master.id, start, end, ignore_id=ignore_id)):
            return SLOT_TAKEN
        return None

    def _place(
        self, wanted: Appointment, duration: int, *, now: datetime | None, ignore_id: int | None = None
    ) -> FreeSlot:
        """The master and local time for `wanted`; master 0 prefers `ignore_id`'s own master (a move)."""
        if wanted.start.tzinfo is None:
            raise BookingConflict(SLOT_TAKEN, "the time has no UTC offset")
        local, master_id, service_ids = wanted.start.astimezone(self.tz), wanted.master_id, wanted.service_ids
        if master_id:
            if master_id not in self.masters:
                raise BookingConflict(NO_MASTER_FREE, f"no master {master_id}")
            master = self.masters[master_id]
            if not master.does(service_ids):
                raise BookingConflict(NO_MASTER_FREE, f"{master.name} does not do services {list(service_ids)}")
            code = self._refusal(master, local, duration, now=now, ignore_id=ignore_id)
            if code is not None:
                raise BookingConflict(code, f"{master.name} is not free at {local.isoformat()}")
            return FreeSlot(master.id, local, duration)
        candidates = self.masters_for(service_ids)
        prefer = self.record(ignore_id).master_id if ignore_id is not None else None
        # The preferred master first, then the one with the fewest visits that day, then the usual order: a salon
        # spreads its "any master" clients, or the first master of the list fills up and a client who asks for him
        # by name finds him booked day after day.
        load = {m.id: self._visits_on(m, local.date()) for m in candidates}
        candidates.sort(key=lambda m: (m.id != prefer, load[m.id]))
        for master in candidates:
            if self._refusal(master, local, duration, now=now, ignore_id=ignore_id) is None:
                return FreeSlot(master.id, local, duration)
        raise BookingConflict(NO_MASTER_FREE, f"no master is free at {local.isoformat()}")

    def _visits_on(self, master: SalonMaster, day: date) -> int:
        span = self._working_span(master, day)
        return 0 if span is None else sum(1 for _ in self._records.busy(master.id, span[0], span[1]))

    def _check_hours_within(self, opens: time, closes: time) -> None:
        for master in self.masters.values():
            for hours in filter(None, master.hours):
                if hours[0] < opens or hours[1] > closes or hours[0] >= hours[1]:
                    raise FixtureError(f"{master.name} works {hours} outside the opening hours {opens}-{closes}")

    def _place_fixture_booking(self, booking: Mapping[str, Any], *, start: datetime) -> None:
        master = next((m for m in self.masters.values() if m.name == booking["master"]), None)
        title = str(booking["service"]).casefold()
        service = next((s for s in self.services.values() if s.title.casefold() == title), None)
        if master is None or service is None:
            raise FixtureError(f"fixture booking names an unknown master or service: {dict(booking)}")
        first_day = start.date() + timedelta(days=int(booking["day_offset"]))
        for shift in range(FIXTURE_SHIFT_DAYS):
            at = datetime.combine(first_day + timedelta(days=shift), _hhmm(booking["time"]), self.tz)
            appointment = Appointment(service_ids=(service.id,), master_id=master.id, start=at)
            try:
                self.book(
                    phone=str(booking["phone"]),
                    client_name=str(booking.get("name", "")),
                    appointments=[appointment],
                    now=start,
                )
                return
            except BookingConflict:
                continue
        raise FixtureError(f"fixture booking cannot be placed within {FIXTURE_SHIFT_DAYS} days: {dict(booking)}")


def canonical_phone(phone: str) -> str:
    """The phone's digits, as YClients writes them in its examples ("79161502239"): "+", spaces and dashes go."""
    return "".join(char for char in phone if char.isdigit())


def _hhmm(value: Any) -> time:
    return time.fromisoformat(str(value))


def _service(item: Mapping[str, Any]) -> SalonService:
    service = SalonService(
        id=int(item["id"]),
        title=str(item["title"]),
        price_min=int(item["price_min"]),
        price_max=int(item.get("price_max", item["price_min"])),
        duration_min=int(item["duration_min"]),
        category_id=int(item.get("category_id", 0)),
    )
    if service.duration_min <= 0 or service.price_max < service.price_min:
        raise FixtureError(f"bad service {service}")
    return service


def _master(item: Mapping[str, Any]) -> SalonMaster:
    schedule: Mapping[str, Sequence[str]] = item["schedule"]
    unknown = set(schedule) - set(WEEKDAYS)
    if unknown:
        raise FixtureError(f"unknown weekdays {sorted(unknown)} in the schedule of {item.get('name')}")
    hours = tuple((_hhmm(schedule[day][0]), _hhmm(schedule[day][1])) if day in schedule else None for day in WEEKDAYS)
    return SalonMaster(
        id=int(item["id"]),
        name=str(item["name"]),
        specialization=str(item.get("specialization", "")),
        service_ids=tuple(int(service_id) for service_id in item["services"]),
        hours=hours,
    )

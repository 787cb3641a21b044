"""The booking backend interface: the salon's CRM as the worker's tools see it, and its typed errors."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol

from system.errors import BookingError


@dataclass(frozen=True, slots=True)
class Service:
    id: int
    title: str
    price_min: float
    price_max: float
    duration_min: int
    category: str = ""


@dataclass(frozen=True, slots=True)
class Master:
    id: int
    name: str
    specialization: str = ""
    service_ids: tuple[int, ...] = ()  # empty: unknown (the CRM did not say)


@dataclass(frozen=True, slots=True)
class Slot:
    """A bookable start time; `at` is the CRM's own aware datetime, passed back unchanged."""

    master_id: int
    at: datetime
    duration_min: int = 0


@dataclass(frozen=True, slots=True)
class RecordService:
    """One service of a record with its price as the CRM keeps it (roubles), sent back unchanged on a move."""

    id: int
    title: str = ""
    cost: float = 0.0  # the final price
    first_cost: float = 0.0  # the price before the discount
    discount: float = 0.0  # percent


@dataclass(frozen=True, slots=True)
class Record:
    """A booking of one client."""

    id: int
    company_id: int
    phone: str  # canonical
    master_id: int
    at: datetime
    service_ids: tuple[int, ...]
    client_name: str = ""
    master_name: str = ""
    service_titles: tuple[str, ...] = ()
    duration_min: int = 0
    api_id: str = ""
    cancelled: bool = False
    client_id: int = 0  # the CRM's id of the client, 0 when unknown
    services: tuple[RecordService, ...] = ()  # with prices; empty when the CRM did not say

    def made_for(self, key: str) -> bool:
        """Whether this record was booked under our idempotency key `key` (as the CRM keeps it)."""
        return bool(self.api_id) and self.api_id == wire_api_id(key)


# api_id: 15 digits, below 2**53, so it survives as a JSON number anywhere; no leading zero.
API_ID_LOW = 10**14
API_ID_SPAN = 9 * 10**14


def wire_api_id(key: str) -> str:
    """The `api_id` a CRM stores for our idempotency key: 15 digits, a number and a string alike."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return str(API_ID_LOW + digest % API_ID_SPAN)


@dataclass(frozen=True, slots=True)
class NewBooking:
    """What `create` books: one appointment for one client."""

    phone: str  # canonical, digits without "+"
    client_name: str
    service_ids: tuple[int, ...]
    master_id: int
    at: datetime  # aware, as the CRM offered it
    api_id: str  # our idempotency key (the turn's batch id), stored in the CRM record
    comment: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class SlotTaken(BookingError):
    """YClients 433: the chosen time is no longer free."""


class MasterUnavailable(BookingError):
    """YClients 436: no master is free at that time."""


class AppointmentsOverlap(BookingError):
    """YClients 437: the appointments overlap."""


class NotFound(BookingError):
    """The record, service or master does not exist."""


class InvalidRequest(BookingError):
    """The CRM refused a request that is not a booking as invalid (a 4xx without a known code)."""


class BookingRefused(BookingError):
    """The CRM refused a booking, or a change of one, for a reason the client can be told (a 4xx on a booking)."""


class InvalidPhone(BookingRefused):
    """YClients 431: the client's phone number is not in a format the CRM accepts."""


class PhoneNotConfirmed(BookingRefused):
    """YClients 432: the salon wants the phone confirmed by an SMS code, and the code is missing or wrong."""


class ClientBlocked(BookingRefused):
    """YClients 434 (HTTP 403): the salon does not take online bookings from this phone."""


class NameRequired(BookingRefused):
    """YClients 435: the client's name is missing."""


class Unauthorized(BookingError):
    """The partner or user token was refused (HTTP 401): an operator must act."""


class RateLimited(BookingError):
    """429, or the client-side limit would be exceeded for longer than the caller may wait."""

    retryable = True


class BackendUnavailable(BookingError):
    """5xx, connection errors, timeouts: the CRM may answer later."""

    retryable = True


class BookingBackend(Protocol):
    """The salon's CRM."""

    async def services(self, company_id: int) -> list[Service]: ...

    async def masters(self, company_id: int, *, service_ids: tuple[int, ...] = ()) -> list[Master]: ...

    async def dates(
        self, company_id: int, *, service_ids: tuple[int, ...], master_id: int | None, start: date, end: date
    ) -> list[date]: ...

    async def times(
        self, company_id: int, *, master_id: int | None, day: date, service_ids: tuple[int, ...]
    ) -> list[Slot]: ...

    async def check(self, company_id: int, booking: NewBooking) -> None: ...

    async def create(self, company_id: int, booking: NewBooking) -> Record: ...

    async def records(self, company_id: int, *, phone: str) -> list[Record]:
        """The client's records from yesterday on (at least; deleted ones may be left out), by time."""
        ...

    async def reschedule(self, company_id: int, record: Record, *, at: datetime, master_id: int) -> Record: ...

    async def cancel(self, company_id: int, record_id: int) -> None: ...

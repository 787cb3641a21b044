"""The fake salon's records and client base, indexed so that a lookup costs what one day or one client holds.

A salon that has booked for months keeps thousands of records and clients; the questions asked of them (is this
master free at this time, what has this client booked, who has this phone) concern one master's day or one
client. Scanning every record or client in Python for each made a simulation's cost grow with the square of its
users.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.salon import SalonClient, SalonRecord

_SEPARATOR = "\x00"  # between the entries of the searched texts; a search for a text holding it scans instead


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where an active record sits in the day index."""

    master_id: int
    day: date


class RecordBook:
    """Every record by id (cancelled ones too, in creation order), with indexes by phone, client and master-day."""

    def __init__(self, tz: tzinfo) -> None:
        self._tz = tz
        self._by_id: dict[int, SalonRecord] = {}
        self._by_phone: dict[str, dict[int, None]] = {}  # ids, in creation order
        self._by_client: dict[int, dict[int, None]] = {}
        self._active: dict[_Slot, dict[int, SalonRecord]] = {}  # not deleted, by master and local start day
        # The longest active record ever seen: how many days back a record may start and still reach a time.
        self._longest = timedelta(0)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, record_id: int) -> SalonRecord | None:
        return self._by_id.get(record_id)

    def put(self, record: SalonRecord) -> None:
        """Add a record or replace the one with its id, keeping every index in step."""
        old = self._by_id.get(record.id)
        if old is not None:
            self._unindex(old)
        self._by_id[record.id] = record
        self._by_phone.setdefault(record.phone, {})[record.id] = None
        self._by_client.setdefault(record.client_id, {})[record.id] = None
        if not record.deleted:
            self._active.setdefault(self._slot(record), {})[record.id] = record
            self._longest = max(self._longest, record.end - record.start)

    def all(self) -> list[SalonRecord]:
        """Every record ever made, in creation order."""
        return list(self._by_id.values())

    def of_phone(self, phone: str) -> list[SalonRecord]:
        """A canonical phone's records, cancelled ones included, by start time."""
        return self._sorted(self._by_phone.get(phone, {}))

    def of_client(self, client_id: int) -> list[SalonRecord]:
        """A client's records, cancelled ones included, by start time."""
        return self._sorted(self._by_client.get(client_id, {}))

    def busy(
        self, master_id: int, start: datetime, end: datetime, *, ignore_id: int | None = None
    ) -> Iterator[SalonRecord]:
        """The master's active records overlapping [start, end), except `ignore_id`."""
        first = (start - self._longest).astimezone(self._tz).date()
        last = end.astimezone(self._tz).date()
        for offset in range((last - first).days + 1):
            day_records = self._active.get(_Slot(master_id, first + timedelta(days=offset)))
            for record in (day_records or {}).values():
                if record.id != ignore_id and record.start < end and start < record.end:
                    yield record

    def _slot(self, record: SalonRecord) -> _Slot:
        return _Slot(record.master_id, record.start.astimezone(self._tz).date())

    def _unindex(self, record: SalonRecord) -> None:
        self._by_phone.get(record.phone, {}).pop(record.id, None)
        self._by_client.get(record.client_id, {}).pop(record.id, None)
        if not record.deleted:
            self._active.get(self._slot(record), {}).pop(record.id, None)

    def _sorted(self, ids: dict[int, None]) -> list[SalonRecord]:
        return sorted((self._by_id[record_id] for record_id in ids), key=lambda r: (r.start, r.id))


class ClientBase:
    """The salon's clients by canonical phone, in the order they were added, with a substring search.

    The search runs `str.find` over all phones (and all names) joined in one string, so it costs a C scan of
    the text instead of a Python test per client.
    """

    def __init__(self) -> None:
        self._by_phone: dict[str, SalonClient] = {}
        self._clients: list[SalonClient] = []
        self._phones = _Joined()
        self._names = _Joined()

    def get(self, phone: str) -> SalonClient | None:
        return self._by_phone.get(phone)

    def add(self, client: SalonClient) -> None:
        self._by_phone[client.phone] = client
        self._clients.append(client)
        self._phones.add(client.phone)
        self._names.add(client.name.casefold())

    def all(self) -> list[SalonClient]:
        return list(self._clients)

    def matching(self, *, digits: str, text: str) -> list[SalonClient]:
        """Clients whose phone contains `digits` (when given) or whose casefolded name contains `text`."""
        if not text or _SEPARATOR in text:  # every name contains "", and a separator could join two names
            return [c for c in self._clients if (digits and digits in c.phone) or text in c.name.casefold()]
        found = self._names.containing(text)
        if digits:
            found |= self._phones.containing(digits)
        return [self._clients[index] for index in sorted(found)]


class _Joined:
    """Texts joined by the separator, with where each starts."""

    def __init__(self) -> None:
        self._text = ""
        self._starts: list[int] = []

    def add(self, entry: str) -> None:
        self._starts.append(len(self._text))
        self._text += entry + _SEPARATOR

    def containing(self, part: str) -> set[int]:
        """Indexes of the entries containing `part`, which holds no separator (so no match spans two entries)."""
        found: set[int] = set()
        at = self._text.find(part)
        while at >= 0:
            found.add(bisect.bisect_right(self._starts, at) - 1)
            at = self._text.find(part, at + 1)
        return found

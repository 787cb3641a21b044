"""YClients as a BookingBackend: one place unwraps answers and maps errors, and a booking is never posted twice.

Written from the YClients API Blueprint: a client's records are found through the client search
(`POST company/{id}/clients/search`, filter `quick_search`) and then `GET records/{id}?client_id=`, page by page;
phones go out as the Blueprint's examples write them (`79161502239`); `api_id` is a digits-only key, which fits both
the Blueprint's "number" and its "string".
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx
import structlog

from system.booking.base import (
    AppointmentsOverlap,
    BackendUnavailable,
    BookingRefused,
    ClientBlocked,
    InvalidPhone,
    InvalidRequest,
    Master,
    MasterUnavailable,
    NameRequired,
    NewBooking,
    NotFound,
    PhoneNotConfirmed,
    RateLimited,
    Record,
    RecordService,
    Service,
    Slot,
    SlotTaken,
    Unauthorized,
    wire_api_id,
)
from system.booking.ratelimit import LimitExhausted, RequestLimiter
from system.clock import Clock
from system.errors import BookingError, SettingsError
from system.phones import PhoneError, mask_phone, normalize_phone
from system.retry import RetryPolicy, parse_retry_after, retrying

if TYPE_CHECKING:
    from system.settings import Settings

T = TypeVar("T")
V = TypeVar("V")
Params = dict[str, str | int | list[int]]
Json = Any
log = structlog.get_logger(__name__)

ACCEPT = "application/vnd.yclients.v2+json"
CACHE_MAX_ENTRIES = 256
DEFAULT_RETRY = RetryPolicy(retries=3, base_s=0.5, max_s=8.0)
# After an unanswered booking POST: about 15 s in all for the record to show up in the client's list.
LOOKUP_RETRY = RetryPolicy(retries=4, base_s=1.0, max_s=8.0)
# A longer Retry-After is not waited out here: the caller gets RateLimited and decides.
MAX_RETRY_AFTER_S = 30.0
IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "DELETE"})
# The Blueprint's booking error codes (book_check, book_record). They come with HTTP 422, except 434 (HTTP 403);
# where the code sits in the body is not documented, so it is looked for anywhere in it (`_crm_errors`).
CRM_ERRORS: dict[int, type[BookingError]] = {
    431: InvalidPhone,
    432: PhoneNotConfirmed,
    433: SlotTaken,
    434: ClientBlocked,
    435: NameRequired,
    436: MasterUnavailable,
    437: AppointmentsOverlap,
    438: NotFound,  # the service is gone ("Компания уже удалила выбранные услуги")
}
# How deep and how wide an error body is searched for codes: bounded, an error body is small.
ERROR_SEARCH_DEPTH = 4
ERROR_SEARCH_ITEMS = 50
# The client search answers at most 200 rows a page (Blueprint: page_size "Максимум 200").
CLIENT_PAGE_SIZE = 50
CLIENT_PAGES_MAX = 4
# `records` pages (Blueprint default count 300); a client with more records from yesterday on is cut off.
RECORDS_PAGE_SIZE = 100
RECORDS_PAGES_MAX = 10
# book_dates answers one month per `date`; a longer range is asked month by month, this many at most.
DATE_MONTHS_MAX = 13
# Failures where the request never left this process: a booking POST that failed so is known not to exist.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class UnexpectedResponse(BookingError):
    """The CRM answered successfully, but in a shape this client does not understand."""


class CrmRateLimited(RateLimited):
    """HTTP 429 from the CRM; `retry_after_s` is its Retry-After (0 when it gave none)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OutcomeUnknown(BackendUnavailable):
    """A booking POST went unanswered and the record could not be found: it may or may not exist.

    Not retryable: posting again could book twice. Look the client's records up later instead.
    """

    retryable = False


class _MaybeDelivered(BackendUnavailable):
    """The request may have reached the CRM and taken effect (timeout, broken connection, 5xx)."""


class _NotVisibleYet(BookingError):
    retryable = True


class _TtlCache(Generic[V]):
    """A bounded map whose entries expire `ttl_ms` after they were put; time is passed in."""

    def __init__(self, *, ttl_ms: int, max_entries: int) -> None:
        self._ttl_ms = ttl_ms
        self._max_entries = max_entries
        self._entries: dict[Hashable, tuple[int, V]] = {}

    def get(self, key: Hashable, *, now_ms: int) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now_ms:
            return None
        return entry[1]

    def put(self, key: Hashable, value: V, *, now_ms: int) -> None:
        if self._ttl_ms <= 0:
            return
        self._entries.pop(key, None)
        if len(self._entries) >= self._max_entries:
            self._evict(now_ms)
        self._entries[key] = (now_ms + self._ttl_ms, value)

    def _evict(self, now_ms: int) -> None:
        for key in [key for key, (expires_ms, _) in self._entries.items() if expires_ms <= now_ms]:
            del self._entries[key]
        while len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest insertion


class YClientsBackend:
    """The YClients REST API (v2 answers) over an injected `httpx.AsyncClient`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        partner_token: str,
        user_token: str | None,
        clock: Clock,
        rng: random.Random,
        rps: float = 5,
        rpm: int = 200,
        cache_ttl_s: float = 300,
        timeout_s: float = 15,
        retry: RetryPolicy | None = None,
        send_sms: bool = False,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._clock = clock
        self._rng = rng
        self._timeout_s = timeout_s
        self._retry = retry or DEFAULT_RETRY
        self._limiter = RequestLimiter(clock=clock, rps=rps, rpm=rpm)
        ttl_ms = round(cache_ttl_s * 1000)
        self._services: _TtlCache[list[Service]] = _TtlCache(ttl_ms=ttl_ms, max_entries=CACHE_MAX_ENTRIES)
        self._masters: _TtlCache[list[Master]] = _TtlCache(ttl_ms=ttl_ms, max_entries=CACHE_MAX_ENTRIES)
        # Only found clients are cached: a client the CRM does not know yet appears with their first booking.
        self._clients: _TtlCache[tuple[int, ...]] = _TtlCache(ttl_ms=ttl_ms, max_entries=CACHE_MAX_ENTRIES)
        self._send_sms = send_sms
        self._fetching: dict[tuple[Any, ...], asyncio.Lock] = {}
        auth = f"Bearer {partner_token}" + (f", User {user_token}" if user_token else "")
        self._headers = {"Accept": ACCEPT, "Content-Type": "application/json", "Authorization": auth}

    @classmethod
    def from_settings(
        cls, settings: Settings, *, http: httpx.AsyncClient, clock: Clock, rng: random.Random
    ) -> YClientsBackend:
        if settings.yclients_partner_token is None:
            raise SettingsError("AIADMIN_YCLIENTS_PARTNER_TOKEN is required by the YClients backend")
        user_token = settings.yclients_user_token
        return cls(
            http,
            base_url=settings.yclients_base_url,
            partner_token=settings.yclients_partner_token.get_secret_value(),
            user_token=user_token.get_secret_value() if user_token else None,
            clock=clock,
            rng=rng,
            rps=settings.yclients_rps,
            rpm=settings.yclients_rpm,
            cache_ttl_s=settings.yclients_cache_ttl_s,
            timeout_s=settings.yclients_timeout_s,
            send_sms=settings.yclients_send_sms,
        )

    async def services(self, company_id: int) -> list[Service]:
        key = (company_id,)
        async with self._single_flight(("services", key)):
            cached = self._services.get(key, now_ms=self._clock.now_ms())
            if cached is None:
                data = await self._request("GET", f"book_services/{company_id}")
                cached = _parsed("services", lambda: _parse_services(data))
                self._services.put(key, cached, now_ms=self._clock.now_ms())
        return list(cached)

    async def masters(self, company_id: int, *, service_ids: tuple[int, ...] = ()) -> list[Master]:
        key = (company_id, tuple(sorted(set(service_ids))))
        async with self._single_flight(("masters", key)):
            cached = self._masters.get(key, now_ms=self._clock.now_ms())
            if cached is None:
                data = await self._request("GET", f"book_staff/{company_id}", params=_service_params(service_ids))
                cached = _parsed("staff", lambda: _parse_masters(data))
                self._masters.put(key, cached, now_ms=self._clock.now_ms())
        return list(cached)

    def _single_flight(self, key: tuple[Any, ...]) -> asyncio.Lock:
        """One catalogue request per key at a time: concurrent turns wait for it instead of all asking."""
        lock = self._fetching.get(key)
        if lock is None:
            if len(self._fetching) >= CACHE_MAX_ENTRIES:
                self._fetching.clear()  # bounded: a lock is only needed while a fetch is running
            lock = self._fetching[key] = asyncio.Lock()
        return lock

    async def dates(
        self, company_id: int, *, service_ids: tuple[int, ...], master_id: int | None, start: date, end: date
    ) -> list[date]:
        """Bookable days within [start, end]; the Blueprint's `date` selects a month, so each month is asked once."""
        found: set[date] = set()
        for day in _months(start, end):
            params = _service_params(service_ids) | {"date": day.isoformat()}
            if master_id:
                params["staff_id"] = master_id
            data = await self._request("GET", f"book_dates/{company_id}", params=params)
            found.update(_parsed("dates", partial(_parse_dates, data, start=start, end=end)))
        return sorted(found)

    async def times(
        self, company_id: int, *, master_id: int | None, day: date, service_ids: tuple[int, ...]
    ) -> list[Slot]:
        staff_id = master_id or 0  # 0: any master
        path = f"book_times/{company_id}/{staff_id}/{day.isoformat()}"
        data = await self._request("GET", path, params=_service_params(service_ids))
        return _parsed("times", lambda: _parse_slots(data, master_id=staff_id))

    async def check(self, company_id: int, booking: NewBooking) -> None:
        """Raise SlotTaken, MasterUnavailable, ... when the booking would be refused; None when bookable."""
        # book_check only validates, so retrying it is as safe as a GET.
        body = {"appointments": [_appointment(booking)]}
        await self._request("POST", f"book_check/{company_id}", body=body, idempotent=True, booking=True)

    async def create(self, company_id: int, booking: NewBooking) -> Record:
        """Book once; if the answer is lost, find the record instead of posting again (OutcomeUnknown if absent)."""
        try:
            data = await self._request("POST", f"book_record/{company_id}", body=_booking_body(booking), booking=True)
        except _MaybeDelivered as exc:
            log.warning("booking answer lost, looking the record up", company_id=company_id, error=exc.message)
            return await self._find_created(company_id, booking)
        return _parsed("book_record", lambda: _created_record(data, company_id=company_id, booking=booking))

    async def records(self, company_id: int, *, phone: str) -> list[Record]:
        """The client's records from yesterday on (YClients leaves deleted ones out), by time."""
        return await self._records(company_id, phone=phone, retry=True)

    async def reschedule(self, company_id: int, record: Record, *, at: datetime, master_id: int) -> Record:
        """PUT the record with every field the Blueprint marks required; prices and length are kept as they were."""
        services = record.services or await self._priced_services(company_id, record.service_ids)
        length_s = record.duration_min * 60 or await self._length_s(company_id, record.service_ids)
        body: dict[str, Any] = {
            "staff_id": master_id,
            "services": [
                {"id": s.id, "first_cost": s.first_cost, "discount": s.discount, "cost": s.cost} for s in services
            ],
            "client": {"phone": record.phone, "name": record.client_name},
            "datetime": at.isoformat(),
            "seance_length": length_s,
            "save_if_busy": False,
            "send_sms": self._send_sms,
        }
        data = await self._request("PUT", f"record/{company_id}/{record.id}", body=body, booking=True)
        moved = _parsed("record", lambda: _parse_record(data, company_id=company_id))
        return moved if moved.phone else replace(moved, phone=record.phone)

    async def _priced_services(self, company_id: int, service_ids: tuple[int, ...]) -> tuple[RecordService, ...]:
        """The services at their catalogue price (the lower bound), for a record whose prices were not read."""
        catalogue = {service.id: service for service in await self.services(company_id)}
        priced = []
        for service_id in service_ids:
            price = catalogue[service_id].price_min if service_id in catalogue else 0.0
            priced.append(RecordService(id=service_id, cost=price, first_cost=price))
        return tuple(priced)

    async def _length_s(self, company_id: int, service_ids: tuple[int, ...]) -> int:
        catalogue = {service.id: service for service in await self.services(company_id)}
        length_min = sum(catalogue[s].duration_min for s in service_ids if s in catalogue)
        if length_min <= 0:
            raise InvalidRequest("the record's length is unknown: its services are not in the catalogue")
        return length_min * 60

    async def cancel(self, company_id: int, record_id: int) -> None:
        """Delete the record: a cancellation by the client, never a no-show."""
        path = f"record/{company_id}/{record_id}"
        maybe_deleted = False

        async def delete() -> None:
            nonlocal maybe_deleted
            try:
                await self._attempt("DELETE", path, booking=True)
            except _MaybeDelivered:
                maybe_deleted = True
                raise
            except NotFound:
                if not maybe_deleted:
                    raise  # an unanswered earlier attempt may have deleted it: then 404 is success

        await self._retrying(delete, what=f"yclients DELETE {path}")

    async def _records(self, company_id: int, *, phone: str, retry: bool) -> list[Record]:
        try:
            canonical = normalize_phone(phone)
        except PhoneError as exc:
            raise InvalidRequest(f"not a phone number: {exc}") from exc
        found: dict[int, Record] = {}
        for client_id in await self._client_ids(company_id, canonical, retry=retry):
            for record in await self._client_records(company_id, client_id, retry=retry):
                found[record.id] = record
        # Filters are not trusted (an ignored one answers with everyone's records): another client's records must
        # never reach this conversation.
        mine = [record for record in found.values() if record.phone == canonical]
        return sorted(mine, key=lambda r: (r.at, r.id))

    async def _client_ids(self, company_id: int, phone: str, *, retry: bool) -> tuple[int, ...]:
        """The CRM's ids of the clients with this phone (usually one), found by the client search."""
        key = (company_id, phone)
        cached = self._clients.get(key, now_ms=self._clock.now_ms())
        if cached is not None:
            return cached
        ids: list[int] = []
        for page in range(1, CLIENT_PAGES_MAX + 1):
            body = {
                "page": page,
                "page_size": CLIENT_PAGE_SIZE,
                "fields": ["id", "name", "phone"],
                "filters": [{"type": "quick_search", "state": {"value": phone}}],
            }
            data = await self._request("POST", f"company/{company_id}/clients/search", body=body, idempotent=retry)
            rows = _parsed("clients/search", partial(_parse_clients, data))
            # quick_search matches parts of phones and names too: only this very phone is this client.
            ids.extend(client_id for client_id, client_phone in rows if client_phone == phone)
            if len(rows) < CLIENT_PAGE_SIZE:
                break
        else:
            log.warning("client search cut off", company_id=company_id, phone=mask_phone(phone), pages=CLIENT_PAGES_MAX)
        found = tuple(dict.fromkeys(ids))
        if found:
            self._clients.put(key, found, now_ms=self._clock.now_ms())
        return found

    async def _client_records(self, company_id: int, client_id: int, *, retry: bool) -> list[Record]:
        # Yesterday in UTC is on or before yesterday in any salon's zone: every caller wants records from today on.
        today_utc = datetime.fromtimestamp(self._clock.now_ms() / 1000, tz=UTC).date()
        since = (today_utc - timedelta(days=1)).isoformat()
        records: list[Record] = []
        for page in range(1, RECORDS_PAGES_MAX + 1):
            params: Params = {"client_id": client_id, "start_date": since, "page": page, "count": RECORDS_PAGE_SIZE}
            data = await self._request("GET", f"records/{company_id}", params=params, idempotent=retry)
            items = _parsed("records", partial(_parse_records, data, company_id=company_id))
            records.extend(r for r in items if r.client_id in (0, client_id))
            if len(items) < RECORDS_PAGE_SIZE:
                break
        else:
            log.warning("client records cut off", company_id=company_id, client_id=client_id, pages=RECORDS_PAGES_MAX)
        return records

    async def _find_created(self, company_id: int, booking: NewBooking) -> Record:
        async def find() -> Record:
            for record in await self._records(company_id, phone=booking.phone, retry=False):
                if _is_created(record, booking):
                    return record
            raise _NotVisibleYet("the record is not in the client's list")

        try:
            return await retrying(
                find, policy=LOOKUP_RETRY, retryable=_lookup_delay, clock=self._clock, rng=self._rng, what="lookup"
            )
        except BookingError as exc:
            log.error("booking outcome unknown", company_id=company_id, phone=mask_phone(booking.phone))
            raise OutcomeUnknown(
                "the booking's outcome is unknown: the request went unanswered and no such record was found; "
                "check the client's records before booking again"
            ) from exc

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: dict[str, Any] | None = None,
        idempotent: bool | None = None,
        booking: bool = False,
    ) -> Any:
        """The `data` of the answer; retried only when the request is idempotent.

        `booking`: a request that makes or changes a booking, whose refusal (a 4xx) the client is told about.
        """

        async def call() -> Any:
            return await self._attempt(method, path, params=params, body=body, booking=booking)

        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        if not idempotent:
            return await call()
        return await self._retrying(call, what=f"yclients {method} {path}")

    async def _retrying(self, call: Callable[[], Awaitable[T]], *, what: str) -> T:
        return await retrying(
            call, policy=self._retry, retryable=_retry_delay, clock=self._clock, rng=self._rng, what=what
        )

    async def _attempt(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: dict[str, Any] | None = None,
        booking: bool = False,
    ) -> Any:
        await self._limiter.acquire()
        try:
            response = await self._http.request(
                method,
                f"{self._base_url}/{path}",
                params=params,
                json=body,
                headers=self._headers,
                timeout=self._timeout_s,
            )
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        return _unwrap(response, now_ms=self._clock.now_ms(), booking=booking)


def _retry_delay(exc: BaseException) -> float | None:
    """The delay hint for `retrying`, or None when trying again cannot help (or would wait too long)."""
    if isinstance(exc, LimitExhausted):
        return None
    if isinstance(exc, CrmRateLimited):
        return exc.retry_after_s if exc.retry_after_s <= MAX_RETRY_AFTER_S else None
    if isinstance(exc, BackendUnavailable):
        return 0.0
    return None


def _lookup_delay(exc: BaseException) -> float | None:
    return 0.0 if isinstance(exc, _NotVisibleYet) else _retry_delay(exc)


def _transport_error(exc: httpx.HTTPError) -> BackendUnavailable:
    what = type(exc).__name__
    if isinstance(exc, _NOT_SENT):
        return BackendUnavailable(f"YClients is unreachable ({what})")
    return _MaybeDelivered(f"YClients did not answer ({what})")


def _unwrap(response: httpx.Response, *, now_ms: int, booking: bool = False) -> Any:
    """The `data` of a `{"success", "data", "meta"}` envelope, or the typed error the answer means."""
    body = _json_or_none(response)
    failed = isinstance(body, dict) and body.get("success") is False
    if response.is_success and not failed:
        if body is None and response.content.strip():
            raise UnexpectedResponse("YClients answered with a body that is not JSON")
        return body.get("data") if isinstance(body, dict) else body
    raise _error(response, body, now_ms=now_ms, booking=booking)


def _error(response: httpx.Response, body: Any, *, now_ms: int, booking: bool = False) -> BookingError:
    """The typed error: by a known code wherever the body has it, then by HTTP status.

    Only 401 means the tokens were refused; 434 comes with 403 and is a refused client, and any other 4xx on a
    booking is a refusal of that booking, not an operator's problem.
    """
    status = response.status_code
    errors = _crm_errors(body)
    for code, message in errors:
        if code in CRM_ERRORS:
            return CRM_ERRORS[code](message or _error_message(body, []) or f"YClients error {code}", code=code)
    message = _error_message(body, errors) or f"YClients refused the request (HTTP {status})"
    first_code = errors[0][0] if errors else None
    if status == httpx.codes.TOO_MANY_REQUESTS:
        return CrmRateLimited(
            message, retry_after_s=parse_retry_after(response.headers.get("Retry-After"), now_ms=now_ms)
        )
    if status >= httpx.codes.INTERNAL_SERVER_ERROR:
        return _MaybeDelivered(message)
    if status == httpx.codes.UNAUTHORIZED:
        return Unauthorized(message, code=first_code)
    if status == httpx.codes.NOT_FOUND:
        return NotFound(message, code=first_code)
    if booking:
        return BookingRefused(message, code=first_code)
    return InvalidRequest(message, code=first_code)


def _error_message(body: Any, errors: list[tuple[int, str]]) -> str:
    # The specific error says more than the envelope's generic "An error has occurred".
    if errors and errors[0][1]:
        return errors[0][1]
    if not isinstance(body, dict):
        return ""
    meta = body.get("meta")
    if isinstance(meta, dict) and meta.get("message"):
        return str(meta["message"])
    return str(body.get("message") or "")


def _crm_errors(body: Json) -> list[tuple[int, str]]:
    """(code, message) of every object with a numeric `code`, anywhere in the body, in document order.

    The Blueprint names the codes but not where they sit (`meta.errors[]`, `errors`, a top-level `code`...).
    """
    found: list[tuple[int, str]] = []

    def walk(node: Json, depth: int) -> None:
        if depth > ERROR_SEARCH_DEPTH:
            return
        if isinstance(node, dict):
            code = node.get("code")
            if (isinstance(code, int) and not isinstance(code, bool)) or (isinstance(code, str) and code.isdigit()):
                found.append((int(code), str(node.get("message") or "")))
            children = list(node.values())
        elif isinstance(node, list):
            children = list(node)
        else:
            return
        for child in children[:ERROR_SEARCH_ITEMS]:
            walk(child, depth + 1)

    walk(body, 0)
    return found


def _json_or_none(response: httpx.Response) -> Any:
    if not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _parsed(what: str, parse: Callable[[], T]) -> T:
    try:
        return parse()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UnexpectedResponse(f"unexpected YClients {what} answer: {type(exc).__name__}: {exc}") from exc


def _service_params(service_ids: tuple[int, ...]) -> Params:
    return {"service_ids[]": list(service_ids)} if service_ids else {}


def _months(start: date, end: date) -> list[date]:
    """One day in each month of [start, end]: `start`, then the first of each later month (bounded)."""
    days: list[date] = []
    day = start
    while day <= end and len(days) < DATE_MONTHS_MAX:
        days.append(day)
        day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    return days


def _appointment(booking: NewBooking) -> dict[str, Any]:
    return {
        "id": 1,
        "services": list(booking.service_ids),
        "staff_id": booking.master_id,
        "datetime": booking.at.isoformat(),
    }


def _booking_body(booking: NewBooking) -> dict[str, Any]:
    """The book_record body; `booking.extra` may add fields (e.g. "email") but never replace ours."""
    return {
        "email": "",
        **booking.extra,
        "phone": booking.phone,  # as the Blueprint's examples: 79161502239
        "fullname": booking.client_name,
        "comment": booking.comment,
        "api_id": wire_api_id(booking.api_id),
        "appointments": [_appointment(booking)],
    }


def _is_created(record: Record, booking: NewBooking) -> bool:
    """Whether `record` is what an unanswered `book_record` of `booking` created."""
    return (
        not record.cancelled
        and record.at == booking.at  # aware datetimes: the same instant whatever the offset
        and (not record.api_id or record.api_id == wire_api_id(booking.api_id))
        and (not booking.master_id or record.master_id == booking.master_id)
    )


def _parse_datetime(value: Any) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError(f"datetime without an offset: {value!r}")
    return parsed


def _canonical_or_empty(phone: Any) -> str:
    try:
        return normalize_phone(str(phone)) if phone else ""
    except PhoneError:
        return ""


def _parse_services(data: Any) -> list[Service]:
    categories = {int(item["id"]): str(item.get("title") or "") for item in data.get("category") or []}
    return [
        Service(
            id=int(item["id"]),
            title=str(item["title"]),
            price_min=float(item.get("price_min") or 0),
            price_max=float(item.get("price_max") or 0),
            duration_min=int(item.get("seance_length") or 0) // 60,
            category=categories.get(int(item.get("category_id") or 0), ""),
        )
        for item in data["services"]
    ]


def _parse_masters(data: Any) -> list[Master]:
    return [
        Master(id=int(item["id"]), name=str(item["name"]), specialization=str(item.get("specialization") or ""))
        for item in data
        if item.get("bookable", True) is not False
    ]


def _parse_dates(data: Any, *, start: date, end: date) -> list[date]:
    days = {date.fromisoformat(str(value)) for value in data["booking_dates"]}
    return sorted(day for day in days if start <= day <= end)


def _parse_slots(data: Any, *, master_id: int) -> list[Slot]:
    return [
        Slot(
            master_id=master_id,
            at=_parse_datetime(item["datetime"]),
            duration_min=int(item.get("seance_length") or 0) // 60,
        )
        for item in data
    ]


def _parse_clients(data: Any) -> list[tuple[int, str]]:
    """(id, canonical phone) of each row of a client search ("" when the phone is missing or unreadable)."""
    return [(int(row["id"]), _canonical_or_empty(row.get("phone"))) for row in data]


def _parse_records(data: Any, *, company_id: int) -> list[Record]:
    return [_parse_record(item, company_id=company_id) for item in data]


def _parse_record(item: Any, *, company_id: int) -> Record:
    client = item.get("client") or {}
    staff = item.get("staff") or {}
    services = item.get("services") or []
    return Record(
        id=int(item["id"]),
        company_id=company_id,
        phone=_canonical_or_empty(client.get("phone")),
        master_id=int(item.get("staff_id") or staff.get("id") or 0),
        at=_parse_datetime(item["datetime"]),
        service_ids=tuple(int(service["id"]) for service in services),
        client_name=str(client.get("name") or ""),
        master_name=str(staff.get("name") or ""),
        service_titles=tuple(str(service.get("title") or "") for service in services),
        duration_min=int(item.get("seance_length") or 0) // 60,
        api_id=str(item.get("api_id") or ""),
        cancelled=bool(item.get("deleted")),
        client_id=int(client.get("id") or 0),
        services=tuple(_record_service(service) for service in services),
    )


def _record_service(item: Any) -> RecordService:
    cost = float(item.get("cost") or 0)
    return RecordService(
        id=int(item["id"]),
        title=str(item.get("title") or ""),
        cost=cost,
        first_cost=float(item.get("first_cost") or cost),
        discount=float(item.get("discount") or 0),
    )


def _created_record(data: Any, *, company_id: int, booking: NewBooking) -> Record:
    created = next((item for item in data if int(item.get("id", 0)) == 1), data[0])
    return Record(
        id=int(created["record_id"]),
        company_id=company_id,
        phone=booking.phone,
        master_id=booking.master_id,
        at=booking.at,
        service_ids=booking.service_ids,
        client_name=booking.client_name,
        api_id=wire_api_id(booking.api_id),
    )

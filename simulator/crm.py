"""A fake YClients over a `Salon`, written from the YClients API Blueprint (not from our client).

Only documented routes and parameters are implemented; an undocumented query parameter is ignored, as any web
API ignores what it does not know (`GET records?client_phone=` answers the company's records, unfiltered).
Time ("today", past slots) comes from the injected clock; injected faults (429, 5xx, latency) are drawn from the
injected seeded RNG, so a run is repeatable. Every handler is `async`: nothing runs in a thread pool, which keeps
the salon single-threaded and the virtual clock in charge.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from simulator.salon import (
    MAX_APPOINTMENTS,
    Appointment,
    BookingConflict,
    Salon,
    SalonClient,
    SalonMaster,
    SalonRecord,
    UnknownMaster,
    UnknownRecord,
    canonical_phone,
)
from system.clock import Clock

API_PREFIX = "/api/v1"
DEFAULT_RECORDS_PAGE = 300  # Blueprint: records `count` (number, `300`)
MAX_RECORDS_PAGE = 1000  # the Blueprint names no maximum; the fake bounds it anyway
DEFAULT_CLIENTS_PAGE = 25  # Blueprint: FullClientSearchRequest page_size, Default 25, "Максимум 200"
MAX_CLIENTS_PAGE = 200
# Blueprint, bulk client creation: "Телефон должен содержать от 9 до 15 цифр".
PHONE_DIGITS = range(9, 16)
# The Blueprint's booking error codes with its wording; where a code sits in the body it does not say, and the
# fake puts it in `meta.errors[]` beside the message.
INVALID_PHONE, CLIENT_BLOCKED, NAME_MISSING = 431, 434, 435
CONFLICT_MESSAGES = {
    INVALID_PHONE: "Номер телефона пользователя в неправильном формате",
    433: "Выбранное время уже занято",
    CLIENT_BLOCKED: "Пользователь с указанным телефоном в черном списке и не может записываться",
    NAME_MISSING: "Не указано имя клиента",
    436: "Нет свободных сотрудников на выбранное время",
    437: "Записи пересекаются по времени",
    438: "Услуга недоступна для онлайн-записи",
}
_AUTHORIZATION = re.compile(r"\s*Bearer\s+(?P<partner>[^\s,]+)\s*(?:,\s*User\s+(?P<user>[^\s,]+)\s*)?", re.I)

ServiceIds = Annotated[list[int] | None, Query(alias="service_ids[]", max_length=MAX_APPOINTMENTS)]


@dataclass(frozen=True, slots=True)
class CrmFaults:
    """Failures injected per request, drawn from the app's seeded RNG; the default injects none."""

    rate_limit_p: float = 0.0  # answer 429 with Retry-After: retry_after_s
    server_error_p: float = 0.0  # answer 503 (before touching the salon)
    slow_ms: int = 0  # latency before every answer, waited on the injected clock
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        probabilities = (self.rate_limit_p, self.server_error_p)
        if any(not 0 <= p <= 1 for p in probabilities) or sum(probabilities) > 1:
            raise ValueError("fault probabilities must be within [0, 1] and sum to at most 1")
        if self.slow_ms < 0 or self.retry_after_s < 0:
            raise ValueError("slow_ms and retry_after_s must not be negative")


class CrmError(Exception):
    """An error answer in YClients' envelope."""

    def __init__(
        self, status: int, message: str, *, code: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, coerce_numbers_to_str=True)


class AppointmentIn(_Body):
    id: int = 1
    services: list[int] = Field(min_length=1, max_length=MAX_APPOINTMENTS)
    staff_id: int = Field(default=0, ge=0)
    at: datetime = Field(alias="datetime")


class BookCheckIn(_Body):
    appointments: list[AppointmentIn] = Field(min_length=1, max_length=MAX_APPOINTMENTS)


class BookRecordIn(BookCheckIn):
    """book_record: phone and fullname required (431/435 when unusable), `api_id` a string or a number."""

    phone: str = Field(max_length=32)
    fullname: str = Field(default="", max_length=200)
    email: str = Field(default="", max_length=200)
    comment: str = Field(default="", max_length=2000)
    api_id: str = Field(default="", max_length=200)
    code: str = Field(default="", max_length=20)
    notify_by_sms: int = Field(default=0, ge=0)
    notify_by_email: int = Field(default=0, ge=0)
    type: str = Field(default="", max_length=50)


class ServiceLine(_Body):
    """ServiceArray: the fake holds the price (`cost`) required, as every Blueprint example sends it."""

    id: int
    cost: float = Field(ge=0)
    first_cost: float | None = Field(default=None, ge=0)
    discount: float = Field(default=0, ge=0, le=100)


class ClientIn(_Body):
    phone: str = Field(default="", max_length=32)
    name: str = Field(default="", max_length=200)
    email: str = Field(default="", max_length=200)


class RecordUpdateIn(_Body):
    """PUT record: every field the Blueprint marks required is required here too."""

    staff_id: int = Field(ge=0)
    services: list[ServiceLine] = Field(max_length=MAX_APPOINTMENTS)
    client: ClientIn
    at: datetime = Field(alias="datetime")
    seance_length: int = Field(gt=0, le=24 * 3600)
    save_if_busy: bool
    send_sms: bool
    comment: str | None = Field(default=None, max_length=2000)


class FilterState(_Body):
    value: Any = None


class ClientFilter(_Body):
    type: str
    state: FilterState = Field(default_factory=FilterState)


ClientField = Literal["id", "name", "phone", "email"]


class ClientSearchIn(_Body):
    """FullClientSearchRequest; of the filters the fake knows `quick_search` and `id`, and refuses the rest."""

    page: int = Field(default=1, ge=1)
    page_size: int = Field(default=DEFAULT_CLIENTS_PAGE, ge=1, le=MAX_CLIENTS_PAGE)
    fields: list[ClientField] = Field(default_factory=lambda: list[ClientField](["id"]), max_length=10)
    order_by: Literal["id", "name", "phone"] = "id"
    order_by_direction: Literal["ASC", "DESC", "asc", "desc"] = "ASC"
    operation: Literal["AND", "OR"] = "AND"
    filters: list[ClientFilter] = Field(default_factory=list, max_length=20)


def create_app(
    salon: Salon,
    *,
    partner_token: str,
    user_token: str | None,
    clock: Clock,
    rng: random.Random | None = None,
    faults: CrmFaults | None = None,
) -> FastAPI:
    """The fake YClients API over `salon`; booking endpoints need the partner token, records also the user token."""
    crm = _Crm(salon, (partner_token, user_token), clock, rng or random.Random(0), faults or CrmFaults())
    app = FastAPI(title=f"Fake YClients: {salon.name}", openapi_url=None, docs_url=None, redoc_url=None)
    public, private = [Depends(crm.public_gate)], [Depends(crm.user_gate)]
    routes: Sequence[tuple[str, str, Any, list[Any]]] = (
        ("GET", "/book_services/{company_id}", crm.services, public),
        ("GET", "/book_staff/{company_id}", crm.staff, public),
        ("GET", "/book_dates/{company_id}", crm.dates, public),
        ("GET", "/book_times/{company_id}/{staff_id}/{day}", crm.times, public),
        ("POST", "/book_check/{company_id}", crm.check, public),
        ("POST", "/book_record/{company_id}", crm.book, public),
        ("POST", "/company/{company_id}/clients/search", crm.search_clients, private),
        ("GET", "/records/{company_id}", crm.records, private),
        ("GET", "/record/{company_id}/{record_id}", crm.record, private),
        ("PUT", "/record/{company_id}/{record_id}", crm.update, private),
        ("DELETE", "/record/{company_id}/{record_id}", crm.delete, private),
    )
    for method, path, endpoint, dependencies in routes:
        app.add_api_route(API_PREFIX + path, endpoint, methods=[method], dependencies=dependencies)
    app.add_exception_handler(CrmError, _crm_error)
    app.add_exception_handler(BookingConflict, _conflict)
    app.add_exception_handler(UnknownRecord, _not_found)
    app.add_exception_handler(UnknownMaster, _not_found)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    return app


class _Crm:
    """The endpoints: each parses its request, calls the salon and shapes the answer."""

    def __init__(
        self, salon: Salon, tokens: tuple[str, str | None], clock: Clock, rng: random.Random, faults: CrmFaults
    ) -> None:
        self._salon, (self._partner_token, self._user_token) = salon, tokens
        self._clock, self._rng, self._faults = clock, rng, faults

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now_ms() / 1000, tz=self._salon.tz)

    # --- gates: latency and faults first (they happen before anything is looked at), then auth, then company --

    async def public_gate(self, request: Request) -> None:
        await self._gate(request, need_user=False)

    async def user_gate(self, request: Request) -> None:
        await self._gate(request, need_user=True)

    async def _gate(self, request: Request, *, need_user: bool) -> None:
        faults = self._faults
        if faults.slow_ms:
            await self._clock.sleep(faults.slow_ms / 1000)
        if faults.rate_limit_p or faults.server_error_p:
            roll = self._rng.random()
            if roll < faults.rate_limit_p:
                headers = {"Retry-After": str(faults.retry_after_s)}
                raise CrmError(429, "Слишком много запросов", headers=headers)
            if roll < faults.rate_limit_p + faults.server_error_p:
                raise CrmError(503, "Сервис временно недоступен")
        self._authorize(request.headers.get("authorization", ""), need_user=need_user)
        if request.path_params.get("company_id") != str(self._salon.company_id):
            raise CrmError(404, "Компания не найдена")

    def _authorize(self, header: str, *, need_user: bool) -> None:
        match = _AUTHORIZATION.fullmatch(header)
        if match is None or not _same(match["partner"], self._partner_token):
            raise CrmError(401, "Партнёрский токен не указан или неверен")
        user = match["user"]
        if user is not None and (self._user_token is None or not _same(user, self._user_token)):
            raise CrmError(401, "Пользовательский токен неверен")
        if need_user and self._user_token is not None and user is None:
            raise CrmError(401, "Нужен пользовательский токен")

    # --- public booking ----------------------------------------------------------------------------------------

    async def services(self, company_id: int, staff_id: int = 0) -> JSONResponse:
        services = list(self._salon.services.values())
        if staff_id:
            master = self._master(staff_id)
            services = [service for service in services if master.does([service.id])]
        categories = [{"id": id_, "title": title, "weight": 0} for id_, title in self._salon.categories.items()]
        items = [
            {
                "id": service.id,
                "title": service.title,
                "category_id": service.category_id,
                "price_min": service.price_min,
                "price_max": service.price_max,
                "seance_length": service.duration_min * 60,
                "weight": 0,
                "active": 1,
                "comment": "",
            }
            for service in services
        ]
        return _ok({"events": [], "services": items, "category": categories})

    async def staff(self, company_id: int, service_ids: ServiceIds = None) -> JSONResponse:
        masters = self._salon.masters_for(service_ids or ())
        return _ok([{**_staff_json(master), "avatar": "", "bookable": True, "rating": 5} for master in masters])

    async def dates(
        self, company_id: int, service_ids: ServiceIds = None, staff_id: int = 0, date: date | None = None
    ) -> JSONResponse:
        """Blueprint: `date` is a day "в рамках месяца": that month; without it, from today to the horizon."""
        now = self.now()
        today, horizon = now.date(), now.date() + timedelta(days=self._salon.booking_horizon_days)
        if date is None:
            start, end = today, horizon
        else:
            start = date.replace(day=1)
            end = (start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        ids = service_ids or []
        if staff_id:
            self._master(staff_id)
        masters = [m for m in self._salon.masters_for(ids) if staff_id in (0, m.id)]
        days = [start + timedelta(days=offset) for offset in range((end - start).days + 1)]
        working = [day for day in days if today <= day <= horizon and any(m.hours_on(day) for m in masters)]
        bookable = [day for day in working if self._salon.has_free_slot(staff_id, day, ids, now=now)]
        return _ok(
            {
                "booking_days": _by_month(bookable),
                "booking_dates": [d.isoformat() for d in bookable],
                "working_days": _by_month(working),
                "working_dates": [d.isoformat() for d in working],
            }
        )

    async def times(self, company_id: int, staff_id: int, day: date, service_ids: ServiceIds = None) -> JSONResponse:
        slots = self._salon.free_slots(staff_id, day, service_ids or [], now=self.now())
        return _ok(
            [
                {
                    "time": slot.start.strftime("%H:%M"),
                    "seance_length": slot.duration_min * 60,
                    "sum_length": slot.duration_min * 60,
                    "datetime": slot.start.isoformat(),
                }
                for slot in slots
            ]
        )

    async def check(self, company_id: int, body: BookCheckIn) -> JSONResponse:
        self._salon.check(self._appointments(body.appointments), now=self.now())
        return _ok(None, status=201)

    async def book(self, company_id: int, body: BookRecordIn) -> JSONResponse:
        phone = _phone(body.phone)
        if not body.fullname.strip():
            raise CrmError(422, CONFLICT_MESSAGES[NAME_MISSING], code=NAME_MISSING)
        if phone in self._salon.blocked_phones:
            raise CrmError(403, CONFLICT_MESSAGES[CLIENT_BLOCKED], code=CLIENT_BLOCKED)
        records = self._salon.book(
            phone=phone,
            client_name=body.fullname,
            appointments=self._appointments(body.appointments),
            api_id=body.api_id,
            email=body.email,
            comment=body.comment,
            now=self.now(),
        )
        data = [
            {"id": appointment.id, "record_id": record.id, "record_hash": _record_hash(company_id, record.id)}
            for appointment, record in zip(body.appointments, records, strict=True)
        ]
        return _ok(data, status=201)

    # --- records (user token) ----------------------------------------------------------------------------------

    async def search_clients(self, company_id: int, body: ClientSearchIn) -> JSONResponse:
        """POST company/{id}/clients/search: `quick_search` matches a part of the phone or of the name."""
        tests = [_client_test(item) for item in body.filters]
        only = body.filters[0] if len(body.filters) == 1 else None
        if only is not None and only.type == "quick_search":  # the usual search: the salon's index, no scan
            found = self._salon.clients_matching(str(only.state.value).strip())
        elif tests:
            combine = all if body.operation == "AND" else any
            found = [client for client in self._salon.clients() if combine(t(client) for t in tests)]
        else:
            found = self._salon.clients()
        found.sort(key=lambda c: getattr(c, body.order_by), reverse=body.order_by_direction.upper() == "DESC")
        shown = found[(body.page - 1) * body.page_size : body.page * body.page_size]
        rows = [{field: _client_json(client)[field] for field in body.fields} for client in shown]
        return _ok(rows, meta={"total_count": len(found)})

    async def records(
        self,
        company_id: int,
        page: Annotated[int, Query(ge=1)] = 1,
        count: Annotated[int, Query(ge=1, le=MAX_RECORDS_PAGE)] = DEFAULT_RECORDS_PAGE,
        staff_id: int = 0,
        client_id: int = 0,
        start_date: date | None = None,
        end_date: date | None = None,
        c_start_date: date | None = None,
        c_end_date: date | None = None,
        changed_after: datetime | None = None,
        changed_before: datetime | None = None,
        with_deleted: int = 0,
    ) -> JSONResponse:
        """GET records/{id} with the Blueprint's filters; deleted records only with `with_deleted`."""
        changed_after, changed_before = (self._aware(t) if t else None for t in (changed_after, changed_before))

        def wanted(r: SalonRecord) -> bool:
            created = r.created_at.date() if r.created_at else None
            return (
                (bool(with_deleted) or not r.deleted)
                and staff_id in (0, r.master_id)
                and client_id in (0, r.client_id)
                and (start_date is None or r.start.date() >= start_date)
                and (end_date is None or r.start.date() <= end_date)
                and (c_start_date is None or (created is not None and created >= c_start_date))
                and (c_end_date is None or (created is not None and created <= c_end_date))
                and (changed_after is None or (r.changed_at is not None and r.changed_at >= changed_after))
                and (changed_before is None or (r.changed_at is not None and r.changed_at <= changed_before))
            )

        # A client's records come from the salon's index: scanning every record per lookup grew with the square of
        # the clients.
        source = self._salon.records_of_client(client_id) if client_id else self._salon.all_records()
        found = sorted(filter(wanted, source), key=lambda r: (r.start, r.id))
        shown = found[(page - 1) * count : page * count]
        return _ok([self._record_json(record) for record in shown], meta={"page": page, "total_count": len(found)})

    async def record(self, company_id: int, record_id: int) -> JSONResponse:
        return _ok(self._record_json(self._salon.record(record_id)))

    async def update(self, company_id: int, record_id: int, body: RecordUpdateIn) -> JSONResponse:
        moved = self._salon.move(
            record_id,
            start=self._aware(body.at),
            master_id=body.staff_id,
            service_ids=[service.id for service in body.services],
            duration_min=-(-body.seance_length // 60),
            now=self.now(),
            force=body.save_if_busy,
        )
        return _ok(self._record_json(moved))

    async def delete(self, company_id: int, record_id: int) -> Response:
        self._salon.cancel(record_id, now=self.now())
        return Response(status_code=204)

    # --- helpers -----------------------------------------------------------------------------------------------

    def _master(self, master_id: int) -> SalonMaster:
        master = self._salon.masters.get(master_id)
        if master is None:
            raise UnknownMaster(f"no master {master_id}")
        return master

    def _aware(self, value: datetime) -> datetime:
        """YClients also takes "2025-11-26 10:00:00": a local time of the salon."""
        return value.replace(tzinfo=self._salon.tz) if value.tzinfo is None else value

    def _appointments(self, items: Sequence[AppointmentIn]) -> list[Appointment]:
        return [Appointment(tuple(item.services), item.staff_id, self._aware(item.at)) for item in items]

    def _record_json(self, record: SalonRecord) -> dict[str, Any]:
        master = self._salon.masters[record.master_id]
        services = [self._salon.services[service_id] for service_id in record.service_ids]
        return {
            "id": record.id,
            "company_id": self._salon.company_id,
            "staff_id": master.id,
            "staff": _staff_json(master),
            "services": [
                {"id": s.id, "title": s.title, "cost": s.price_min, "price_min": s.price_min, "price_max": s.price_max}
                for s in services
            ],
            "date": record.start.strftime("%Y-%m-%d %H:%M:%S"),
            "datetime": record.start.isoformat(),
            "create_date": record.created_at.isoformat() if record.created_at else None,
            "seance_length": record.duration_min * 60,
            "length": record.duration_min * 60,
            "comment": record.comment,
            "client": {
                "id": record.client_id,
                "name": record.client_name,
                "phone": "+" + record.phone,
                "email": record.email,
            },
            "api_id": record.api_id,
            "online": True,
            "deleted": record.deleted,
            "attendance": record.attendance,
        }


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _phone(raw: str) -> str:
    """The phone's digits, "+" or not (the Blueprint's examples have none); 431 unless 9 to 15 digits."""
    digits = canonical_phone(raw)
    if len(digits) not in PHONE_DIGITS or not re.fullmatch(r"\+?[\d\s()-]+", raw.strip()):
        raise CrmError(422, CONFLICT_MESSAGES[INVALID_PHONE], code=INVALID_PHONE)
    return digits


def _client_json(client: SalonClient) -> dict[str, Any]:
    return {"id": client.id, "name": client.name, "phone": "+" + client.phone, "email": ""}


def _client_test(item: ClientFilter) -> Callable[[SalonClient], bool]:
    """A predicate for one documented filter the fake implements; 400 as the Blueprint answers a bad one."""
    value = item.state.value
    if item.type == "quick_search" and isinstance(value, str) and value.strip():
        text = value.strip().casefold()
        digits = canonical_phone(text)
        return lambda c: bool(digits and digits in c.phone) or text in c.name.casefold()
    if item.type == "id" and isinstance(value, list) and all(isinstance(v, int) for v in value):
        return lambda c: c.id in value
    raise CrmError(400, "Недопустимое значение фильтра")


def _by_month(days: Sequence[date]) -> dict[str, list[str]]:
    """The Blueprint's `booking_days` / `working_days`: month number -> day numbers, as strings."""
    months: dict[str, list[str]] = {}
    for day in days:
        months.setdefault(str(day.month), []).append(str(day.day))
    return months


def _record_hash(company_id: int, record_id: int) -> str:
    return hashlib.sha256(f"{company_id}:{record_id}".encode()).hexdigest()[:32]


def _staff_json(master: SalonMaster) -> dict[str, Any]:
    return {"id": master.id, "name": master.name, "specialization": master.specialization}


def _ok(data: Any, *, status: int = 200, meta: Any = None) -> JSONResponse:
    return JSONResponse({"success": True, "data": data, "meta": meta if meta is not None else []}, status_code=status)


def _failed(
    status: int, message: str, *, errors: list[dict[str, Any]] | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    meta: dict[str, Any] = {"message": message}
    if errors:
        meta["errors"] = errors
    return JSONResponse({"success": False, "data": None, "meta": meta}, status_code=status, headers=headers)


async def _crm_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CrmError)
    errors = [{"code": exc.code, "message": exc.message}] if exc.code is not None else None
    return _failed(exc.status, exc.message, errors=errors, headers=exc.headers)


async def _conflict(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BookingConflict)
    message = CONFLICT_MESSAGES.get(exc.code, exc.message)
    return _failed(422, message, errors=[{"code": exc.code, "message": message}])


async def _not_found(request: Request, exc: Exception) -> Response:
    return _failed(404, "Запись не найдена" if isinstance(exc, UnknownRecord) else "Сотрудник не найден")


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = list(exc.errors())
    # YClients answers 400 to a body that is not JSON at all, 422 to fields it does not accept.
    status = 400 if any(problem.get("type") == "json_invalid" for problem in problems) else 422
    fields = [
        {"field": ".".join(str(part) for part in problem.get("loc", ())), "message": str(problem.get("msg", ""))}
        for problem in problems
    ]
    message = "; ".join(f"{field['field']}: {field['message']}" for field in fields) or "Неверный запрос"
    return _failed(status, message, errors=fields)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _failed(exc.status_code, str(exc.detail), headers=exc.headers)

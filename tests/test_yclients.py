"""The YClients backend against respx routes answering in YClients' documented envelopes, on a manual clock."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import respx

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
from system.booking.ratelimit import LimitExhausted, RequestLimiter, SlidingWindow
from system.booking.yclients import (
    CLIENT_PAGE_SIZE,
    LOOKUP_RETRY,
    RECORDS_PAGE_SIZE,
    OutcomeUnknown,
    UnexpectedResponse,
    YClientsBackend,
)
from system.errors import BookingError, SettingsError
from system.retry import RetryPolicy
from system.settings import Settings

from .conftest import ManualClock

BASE = "https://api.yclients.test/api/v1"
COMPANY = 962302
PHONE = "79001234567"
OTHER_PHONE = "79161234567"
MSK = timezone(timedelta(hours=3))
AT = datetime(2025, 11, 26, 10, 0, tzinfo=MSK)


def ok(data: Any, *, status: int = 200, meta: Any = None) -> httpx.Response:
    return httpx.Response(status, json={"success": True, "data": data, "meta": meta if meta is not None else []})


def failed(status: int, message: str, *, errors: list[dict[str, Any]] | None = None, **kw: Any) -> httpx.Response:
    meta: dict[str, Any] = {"message": message}
    if errors is not None:
        meta["errors"] = errors
    return httpx.Response(status, json={"success": False, "data": None, "meta": meta}, **kw)


CLIENT_ID = 42
KEY = wire_api_id("batch-1")  # what the CRM keeps for our key "batch-1"


def crm_record(
    record_id: int = 555,
    *,
    phone: str = "+" + PHONE,
    at: str = "2025-11-26T10:00:00+03:00",
    api_id: str = KEY,
    deleted: bool = False,
    client_id: int = CLIENT_ID,
) -> dict[str, Any]:
    return {
        "id": record_id,
        "company_id": COMPANY,
        "staff_id": 7,
        "services": [{"id": 101, "title": "Мужская стрижка", "cost": 1350, "first_cost": 1500, "discount": 10}],
        "staff": {"id": 7, "name": "Алексей", "specialization": "барбер"},
        "client": {"id": client_id, "name": "Иван", "phone": phone},
        "datetime": at,
        "seance_length": 3600,
        "api_id": api_id,
        "deleted": deleted,
        "attendance": 0,
    }


def booking(**changes: Any) -> NewBooking:
    values: dict[str, Any] = {
        "phone": PHONE,
        "client_name": "Иван",
        "service_ids": (101,),
        "master_id": 7,
        "at": AT,
        "api_id": "batch-1",
        "comment": "from WhatsApp",
    }
    return NewBooking(**(values | changes))


def clients_found(router: respx.MockRouter, *rows: tuple[int, str]) -> respx.Route:
    """The client search answering `rows` of (id, phone)."""
    data = [{"id": client_id, "name": "Иван", "phone": phone} for client_id, phone in rows]
    return router.post(f"/company/{COMPANY}/clients/search").mock(
        return_value=ok(data, meta={"total_count": len(data)})
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(base_url=BASE, assert_all_called=False)


@pytest.fixture
async def http(router: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        yield client


@pytest.fixture
def make_backend(http: httpx.AsyncClient, clock: ManualClock) -> Callable[..., YClientsBackend]:
    def make(**options: Any) -> YClientsBackend:
        values: dict[str, Any] = {"partner_token": "partner-secret", "user_token": "user-secret"} | options
        return YClientsBackend(http, base_url=BASE, clock=clock, rng=random.Random(7), **values)

    return make


@pytest.fixture
def backend(make_backend: Callable[..., YClientsBackend]) -> YClientsBackend:
    return make_backend()


# --- headers and settings ---------------------------------------------------------------------------


async def test_headers_carry_partner_and_user_tokens(router: respx.MockRouter, backend: YClientsBackend) -> None:
    route = router.get(f"/book_services/{COMPANY}").mock(return_value=ok({"services": []}))
    await backend.services(COMPANY)
    headers = route.calls.last.request.headers
    assert headers["Accept"] == "application/vnd.yclients.v2+json"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer partner-secret, User user-secret"


async def test_headers_carry_only_the_partner_token_without_a_user_token(
    router: respx.MockRouter, make_backend: Callable[..., YClientsBackend]
) -> None:
    route = router.get(f"/book_services/{COMPANY}").mock(return_value=ok({"services": []}))
    await make_backend(user_token=None).services(COMPANY)
    assert route.calls.last.request.headers["Authorization"] == "Bearer partner-secret"


async def test_from_settings_takes_tokens_and_base_url(
    router: respx.MockRouter, http: httpx.AsyncClient, clock: ManualClock, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(yclients_base_url=BASE, yclients_partner_token="p-token")
    route = router.get(f"/book_services/{COMPANY}").mock(return_value=ok({"services": []}))
    backend = YClientsBackend.from_settings(settings, http=http, clock=clock, rng=random.Random(1))
    await backend.services(COMPANY)
    assert route.calls.last.request.headers["Authorization"] == "Bearer p-token"


async def test_from_settings_takes_send_sms_for_a_moved_record(
    router: respx.MockRouter, http: httpx.AsyncClient, clock: ManualClock, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(yclients_base_url=BASE, yclients_partner_token="p", yclients_send_sms=True)
    route = router.put(f"/record/{COMPANY}/555").mock(return_value=ok(crm_record(555)))
    record = Record(id=555, company_id=COMPANY, phone=PHONE, master_id=7, at=AT, service_ids=(101,), duration_min=60,
                    services=(RecordService(101, cost=1500, first_cost=1500),))  # fmt: skip
    backend = YClientsBackend.from_settings(settings, http=http, clock=clock, rng=random.Random(1))
    await backend.reschedule(COMPANY, record, at=AT, master_id=7)
    assert json.loads(route.calls.last.request.read())["send_sms"] is True


def test_from_settings_without_a_partner_token_is_refused(
    http: httpx.AsyncClient, clock: ManualClock, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(SettingsError, match="PARTNER_TOKEN"):
        YClientsBackend.from_settings(make_settings(), http=http, clock=clock, rng=random.Random(1))


# --- parsing of each endpoint -----------------------------------------------------------------------


async def test_services_are_parsed_with_minutes_and_category(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    data = {
        "services": [
            {"id": 101, "title": "Мужская стрижка", "price_min": 1500, "price_max": 2000, "seance_length": 3600,
             "category_id": 9},
            {"id": 102, "title": "Бритьё", "price_min": 800, "price_max": 800, "seance_length": 1800, "category_id": 0},
        ],
        "category": [{"id": 9, "title": "Стрижки"}],
    }  # fmt: skip
    router.get(f"/book_services/{COMPANY}").mock(return_value=ok(data))
    assert await backend.services(COMPANY) == [
        Service(id=101, title="Мужская стрижка", price_min=1500, price_max=2000, duration_min=60, category="Стрижки"),
        Service(id=102, title="Бритьё", price_min=800, price_max=800, duration_min=30),
    ]


async def test_masters_skip_unbookable_and_send_service_ids(router: respx.MockRouter, backend: YClientsBackend) -> None:
    staff = [
        {"id": 7, "name": "Алексей", "specialization": "барбер", "bookable": True},
        {"id": 8, "name": "Пётр", "specialization": "стажёр", "bookable": False},
        {"id": 9, "name": "Олег", "specialization": ""},
    ]
    route = router.get(f"/book_staff/{COMPANY}").mock(return_value=ok(staff))
    masters = await backend.masters(COMPANY, service_ids=(101, 102))
    assert masters == [Master(id=7, name="Алексей", specialization="барбер"), Master(id=9, name="Олег")]
    assert route.calls.last.request.url.params.get_list("service_ids[]") == ["101", "102"]


async def test_dates_are_kept_within_the_range_and_staff_is_sent(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    data = {"booking_dates": ["2025-11-25", "2025-11-27", "2025-11-26", "2025-12-10"], "working_dates": []}
    route = router.get(f"/book_dates/{COMPANY}").mock(return_value=ok(data))
    days = await backend.dates(
        COMPANY, service_ids=(101,), master_id=7, start=date(2025, 11, 26), end=date(2025, 11, 30)
    )
    assert days == [date(2025, 11, 26), date(2025, 11, 27)]
    params = route.calls.last.request.url.params
    assert params["staff_id"] == "7"
    assert params.get_list("service_ids[]") == ["101"]


async def test_book_dates_asks_each_month_by_the_documented_date_not_an_undocumented_range(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    """Issue 11.15: the Blueprint's book_dates takes `date` (a day within the month); date_from/date_to are not."""
    months = {
        "2025-11-26": ok({"booking_dates": ["2025-11-29", "2025-11-30"]}),
        "2025-12-01": ok({"booking_dates": ["2025-12-01", "2025-12-03", "2025-12-31"]}),
    }
    route = router.get(f"/book_dates/{COMPANY}").mock(side_effect=lambda r: months[r.url.params["date"]])

    days = await backend.dates(COMPANY, service_ids=(), master_id=None, start=date(2025, 11, 26), end=date(2025, 12, 3))

    assert days == [date(2025, 11, 29), date(2025, 11, 30), date(2025, 12, 1), date(2025, 12, 3)]
    sent = [call.request.url.params for call in route.calls]
    assert [params["date"] for params in sent] == ["2025-11-26", "2025-12-01"]
    assert not any({"date_from", "date_to"} & set(params.keys()) for params in sent)


async def test_dates_for_any_master_omit_staff_id(router: respx.MockRouter, backend: YClientsBackend) -> None:
    route = router.get(f"/book_dates/{COMPANY}").mock(return_value=ok({"booking_dates": []}))
    await backend.dates(COMPANY, service_ids=(101,), master_id=None, start=date(2025, 11, 26), end=date(2025, 11, 30))
    assert "staff_id" not in route.calls.last.request.url.params


async def test_times_are_aware_slots_of_the_asked_master(router: respx.MockRouter, backend: YClientsBackend) -> None:
    data = [
        {"time": "10:00", "seance_length": 3600, "datetime": "2025-11-26T10:00:00+03:00"},
        {"time": "11:30", "seance_length": 3600, "datetime": "2025-11-26T11:30:00.000+03:00"},
    ]
    route = router.get(f"/book_times/{COMPANY}/0/2025-11-26").mock(return_value=ok(data))
    slots = await backend.times(COMPANY, master_id=None, day=date(2025, 11, 26), service_ids=(101,))
    assert slots == [
        Slot(master_id=0, at=AT, duration_min=60),
        Slot(master_id=0, at=datetime(2025, 11, 26, 11, 30, tzinfo=MSK), duration_min=60),
    ]
    assert slots[0].at.utcoffset() == timedelta(hours=3)
    assert route.calls.last.request.url.params.get_list("service_ids[]") == ["101"]


async def test_a_naive_datetime_from_the_crm_is_an_unexpected_response(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    data = [{"time": "10:00", "seance_length": 3600, "datetime": "2025-11-26T10:00:00"}]
    router.get(f"/book_times/{COMPANY}/7/2025-11-26").mock(return_value=ok(data))
    with pytest.raises(UnexpectedResponse):
        await backend.times(COMPANY, master_id=7, day=date(2025, 11, 26), service_ids=(101,))


async def test_check_passes_on_201(router: respx.MockRouter, backend: YClientsBackend) -> None:
    route = router.post(f"/book_check/{COMPANY}").mock(return_value=ok(None, status=201, meta={"message": "Created"}))
    await backend.check(COMPANY, booking())
    sent = route.calls.last.request.read()
    assert b'"datetime":"2025-11-26T10:00:00+03:00"' in sent.replace(b" ", b"")


async def test_book_record_posts_the_booking_and_returns_the_record(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    route = router.post(f"/book_record/{COMPANY}").mock(
        return_value=ok([{"id": 1, "record_id": 123, "record_hash": "abc"}], status=201)
    )
    record = await backend.create(COMPANY, booking())
    assert record == Record(
        id=123, company_id=COMPANY, phone=PHONE, master_id=7, at=AT, service_ids=(101,), client_name="Иван",
        api_id=KEY,
    )  # fmt: skip
    body = json.loads(route.calls.last.request.read())
    assert body == {
        "phone": "79001234567",
        "fullname": "Иван",
        "email": "",
        "comment": "from WhatsApp",
        "api_id": KEY,
        "appointments": [{"id": 1, "services": [101], "staff_id": 7, "datetime": "2025-11-26T10:00:00+03:00"}],
    }


async def test_phone_is_sent_as_the_blueprint_writes_it_without_plus(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    """Issue 11.18: the Blueprint's examples send `79161502239`; we sent `+79001234567`."""
    route = router.post(f"/book_record/{COMPANY}").mock(return_value=ok([{"id": 1, "record_id": 1}], status=201))
    await backend.create(COMPANY, booking())
    assert json.loads(route.calls.last.request.read())["phone"] == PHONE


@pytest.mark.parametrize("key", ["batch-1", "962302:79001234567:1764064800000-0#1", "", "ключ"])
def test_api_id_is_a_key_that_fits_a_documented_number(key: str) -> None:
    """Issue 11.18: `api_id` is "number" in the Blueprint's attributes (and "string" in its tables): send digits
    below 2**53 that read the same as either, always the same for one key."""
    sent = wire_api_id(key)
    assert sent.isdigit() and not sent.startswith("0")
    assert int(sent) < 2**53 and str(int(sent)) == sent
    assert wire_api_id(key) == sent
    assert wire_api_id(key + "x") != sent


async def test_records_are_parsed_and_foreign_phones_dropped(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    data = [
        crm_record(555),
        crm_record(556, phone="7900 123-45-67", deleted=True),
        crm_record(557, phone="+" + OTHER_PHONE),
        crm_record(558) | {"client": None},
    ]
    clients_found(router, (CLIENT_ID, "+7 900 123-45-67"))
    router.get(f"/records/{COMPANY}").mock(return_value=ok(data, meta={"page": 1, "total_count": 4}))
    records = await backend.records(COMPANY, phone=PHONE)
    assert [(r.id, r.cancelled) for r in records] == [(555, False), (556, True)]
    assert records[0] == Record(
        id=555, company_id=COMPANY, phone=PHONE, master_id=7, at=AT, service_ids=(101,), client_name="Иван",
        master_name="Алексей", service_titles=("Мужская стрижка",), duration_min=60, api_id=KEY,
        client_id=CLIENT_ID, services=(RecordService(101, "Мужская стрижка", cost=1350, first_cost=1500, discount=10),),
    )  # fmt: skip


async def test_records_are_found_through_the_client_search_not_an_undocumented_phone_filter(
    router: respx.MockRouter, backend: YClientsBackend, clock: ManualClock
) -> None:
    """Issue 11.14: `records?client_phone=` is not in the Blueprint and a real YClients ignores it. The documented
    way: the client search (quick_search by phone), then `records?client_id=`."""
    search = clients_found(router, (7, "+79001234999"), (CLIENT_ID, "+79001234567"))  # quick_search: parts match
    records = router.get(f"/records/{COMPANY}").mock(return_value=ok([crm_record(555)]))

    assert [r.id for r in await backend.records(COMPANY, phone="+7 900 123-45-67")] == [555]

    body = json.loads(search.calls.last.request.read())
    assert body["filters"] == [{"type": "quick_search", "state": {"value": PHONE}}]
    assert {"id", "phone"} <= set(body["fields"])
    [call] = records.calls
    params = call.request.url.params
    assert params["client_id"] == str(CLIENT_ID)
    assert "client_phone" not in params
    assert params["start_date"] == "2025-11-24"  # from yesterday (UTC): past visits are not read


async def test_a_phone_the_crm_does_not_know_has_no_records_and_reads_none(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    clients_found(router, (7, "+79001234999"))
    records = router.get(f"/records/{COMPANY}").mock(return_value=ok([crm_record(555)]))
    assert await backend.records(COMPANY, phone=PHONE) == []
    assert records.call_count == 0


async def test_client_records_are_read_page_by_page(router: respx.MockRouter, backend: YClientsBackend) -> None:
    """Issue 11.14: one page of records is not all of a client's records."""
    clients_found(router, (CLIENT_ID, "+" + PHONE))
    first = [crm_record(1000 + i, at=f"2025-11-26T10:{i % 60:02d}:00+03:00") for i in range(RECORDS_PAGE_SIZE)]
    pages = {"1": ok(first), "2": ok([crm_record(2000, at="2025-12-01T10:00:00+03:00")])}
    route = router.get(f"/records/{COMPANY}").mock(side_effect=lambda r: pages[r.url.params["page"]])

    found = await backend.records(COMPANY, phone=PHONE)

    assert len(found) == RECORDS_PAGE_SIZE + 1 and found[-1].id == 2000
    assert [c.request.url.params["count"] for c in route.calls] == [str(RECORDS_PAGE_SIZE)] * 2


async def test_client_search_pages_until_a_short_page(router: respx.MockRouter, backend: YClientsBackend) -> None:
    full = [{"id": i, "phone": f"+7900123{i:04d}"} for i in range(CLIENT_PAGE_SIZE)]
    pages = {1: ok(full), 2: ok([{"id": CLIENT_ID, "phone": "+" + PHONE}])}
    search = router.post(f"/company/{COMPANY}/clients/search").mock(
        side_effect=lambda r: pages[json.loads(r.read())["page"]]
    )
    router.get(f"/records/{COMPANY}").mock(return_value=ok([crm_record(555)]))

    assert [r.id for r in await backend.records(COMPANY, phone=PHONE)] == [555]
    assert search.call_count == 2


async def test_a_crm_ignoring_the_client_filter_leaks_no_other_clients_records(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    clients_found(router, (CLIENT_ID, "+" + PHONE))
    everyone = [crm_record(555), crm_record(556, phone="+" + OTHER_PHONE, client_id=43)]
    router.get(f"/records/{COMPANY}").mock(return_value=ok(everyone))
    assert [r.id for r in await backend.records(COMPANY, phone=PHONE)] == [555]


async def test_a_found_client_is_remembered_within_the_ttl(
    router: respx.MockRouter, backend: YClientsBackend, clock: ManualClock
) -> None:
    search = clients_found(router, (CLIENT_ID, "+" + PHONE))
    router.get(f"/records/{COMPANY}").mock(return_value=ok([]))
    await backend.records(COMPANY, phone=PHONE)
    await backend.records(COMPANY, phone=PHONE)
    assert search.call_count == 1
    clock.now += 301_000
    await backend.records(COMPANY, phone=PHONE)
    assert search.call_count == 2


async def test_reschedule_puts_the_record(router: respx.MockRouter, backend: YClientsBackend) -> None:
    new_at = "2025-11-27T12:00:00+03:00"
    route = router.put(f"/record/{COMPANY}/555").mock(return_value=ok(crm_record(555, at=new_at) | {"staff_id": 9}))
    original = Record(id=555, company_id=COMPANY, phone=PHONE, master_id=7, at=AT, service_ids=(101,),
                      client_name="Иван", duration_min=60,
                      services=(RecordService(101, cost=1350, first_cost=1500, discount=10),))  # fmt: skip
    moved = await backend.reschedule(COMPANY, original, at=datetime.fromisoformat(new_at), master_id=9)
    assert (moved.id, moved.master_id, moved.at, moved.phone) == (555, 9, datetime.fromisoformat(new_at), PHONE)
    body = json.loads(route.calls.last.request.read())
    assert body == {
        "staff_id": 9,
        "services": [{"id": 101, "first_cost": 1500, "discount": 10, "cost": 1350}],
        "client": {"phone": PHONE, "name": "Иван"},
        "datetime": new_at,
        "seance_length": 3600,
        "save_if_busy": False,
        "send_sms": False,
    }


async def test_reschedule_of_a_record_of_unknown_length_and_prices_sends_the_catalogues(
    router: respx.MockRouter, make_backend: Callable[..., YClientsBackend]
) -> None:
    """Issue 11.16: `seance_length`, `send_sms` and the services' cost are required by the Blueprint's PUT record;
    `seance_length` was left out when unknown, `send_sms` and the cost always."""
    catalogue = {"services": [{"id": 101, "title": "Стрижка", "price_min": 1500, "price_max": 1800,
                               "seance_length": 2700}]}  # fmt: skip
    router.get(f"/book_services/{COMPANY}").mock(return_value=ok(catalogue))
    route = router.put(f"/record/{COMPANY}/555").mock(return_value=ok(crm_record(555)))
    original = Record(id=555, company_id=COMPANY, phone=PHONE, master_id=7, at=AT, service_ids=(101,))

    await make_backend(send_sms=True).reschedule(COMPANY, original, at=AT, master_id=7)

    body = json.loads(route.calls.last.request.read())
    assert body["seance_length"] == 2700
    assert body["send_sms"] is True
    assert body["services"] == [{"id": 101, "first_cost": 1500, "discount": 0, "cost": 1500}]


async def test_cancel_sends_delete(router: respx.MockRouter, backend: YClientsBackend) -> None:
    route = router.delete(f"/record/{COMPANY}/555").mock(return_value=httpx.Response(204))
    await backend.cancel(COMPANY, 555)
    assert route.call_count == 1


async def test_cancel_whose_answer_was_lost_accepts_404_on_the_retry(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    route = router.delete(f"/record/{COMPANY}/555").mock(
        side_effect=[httpx.ReadTimeout("lost"), failed(404, "Record not found")]
    )
    await backend.cancel(COMPANY, 555)
    assert route.call_count == 2


async def test_cancel_of_an_unknown_record_is_not_found(router: respx.MockRouter, backend: YClientsBackend) -> None:
    router.delete(f"/record/{COMPANY}/555").mock(return_value=failed(404, "Record not found"))
    with pytest.raises(NotFound):
        await backend.cancel(COMPANY, 555)


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (431, InvalidPhone),
        (432, PhoneNotConfirmed),
        (433, SlotTaken),
        (435, NameRequired),
        (436, MasterUnavailable),
        (437, AppointmentsOverlap),
    ],
)
async def test_booking_error_codes_become_typed_errors(
    router: respx.MockRouter, backend: YClientsBackend, code: int, error: type[BookingError]
) -> None:
    message = f"CRM says {code}"
    answer = failed(422, "An error has occurred", errors=[{"code": code, "message": message}])
    check = router.post(f"/book_check/{COMPANY}").mock(return_value=answer)
    record = router.post(f"/book_record/{COMPANY}").mock(return_value=answer)
    with pytest.raises(error) as raised:
        await backend.check(COMPANY, booking())
    assert (raised.value.message, raised.value.code) == (message, code)
    with pytest.raises(error):
        await backend.create(COMPANY, booking())
    assert (check.call_count, record.call_count) == (1, 1)


async def test_error_code_in_top_level_errors_object_is_understood(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    answer = httpx.Response(422, json={"errors": {"code": 433, "message": "Время занято"}})
    router.post(f"/book_record/{COMPANY}").mock(return_value=answer)
    with pytest.raises(SlotTaken, match="Время занято"):
        await backend.create(COMPANY, booking())


@pytest.mark.parametrize(
    "body",
    [
        {"success": False, "data": None, "meta": {"message": "Время занято", "errors": [{"code": 433}]}},
        {"success": False, "data": None, "meta": {"message": "Время занято", "code": 433}},
        {"success": False, "data": None, "meta": {"message": "Время занято"}, "code": 433},
        {"success": False, "data": None, "meta": {"message": "Время занято"}, "code": "433"},
        {"errors": [{"code": 433, "message": "Время занято"}]},
        {"success": False, "data": {"errors": {"code": 433, "message": "Время занято"}}, "meta": []},
    ],
    ids=["meta.errors[]", "meta.code", "code", "code-string", "errors[]", "data.errors"],
)
async def test_an_error_code_is_read_wherever_the_body_has_it(
    router: respx.MockRouter, backend: YClientsBackend, body: dict[str, Any]
) -> None:
    """Issue 11.17: the Blueprint does not say where the code sits; only our fake put it in `meta.errors[]`."""
    router.post(f"/book_record/{COMPANY}").mock(return_value=httpx.Response(422, json=body))
    with pytest.raises(SlotTaken, match="Время занято"):
        await backend.create(COMPANY, booking())


async def test_434_with_http_403_is_a_blocked_client_not_unauthorized(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    """Issue 11.17: the Blueprint answers a blacklisted phone with HTTP 403 and code 434; it was read as a token
    problem (Unauthorized)."""
    answer = failed(403, "An error has occurred", errors=[{"code": 434, "message": "Клиент в черном списке"}])
    router.post(f"/book_record/{COMPANY}").mock(return_value=answer)
    with pytest.raises(ClientBlocked) as raised:
        await backend.create(COMPANY, booking())
    assert isinstance(raised.value, BookingRefused) and not isinstance(raised.value, Unauthorized)
    assert (raised.value.code, raised.value.retryable) == (434, False)


@pytest.mark.parametrize("status", [400, 403, 409, 422])
async def test_an_unmapped_4xx_on_a_booking_is_a_refusal_not_an_auth_failure(
    router: respx.MockRouter, backend: YClientsBackend, status: int
) -> None:
    """Issue 11.17: a 4xx without a known code on booking is a booking failure the model is told about."""
    answer = failed(status, "Запись невозможна", errors=[{"code": 499, "message": "Онлайн-запись закрыта"}])
    router.post(f"/book_check/{COMPANY}").mock(return_value=answer)
    router.put(f"/record/{COMPANY}/555").mock(return_value=answer)
    with pytest.raises(BookingRefused, match="Онлайн-запись закрыта") as raised:
        await backend.check(COMPANY, booking())
    assert raised.value.code == 499
    record = Record(id=555, company_id=COMPANY, phone=PHONE, master_id=7, at=AT, service_ids=(101,), duration_min=60,
                    services=(RecordService(101, cost=1500, first_cost=1500),))  # fmt: skip
    with pytest.raises(BookingRefused):
        await backend.reschedule(COMPANY, record, at=AT, master_id=7)


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, Unauthorized), (403, InvalidRequest), (404, NotFound), (400, InvalidRequest), (422, InvalidRequest)],
)
async def test_client_errors_are_typed_and_not_retried(
    router: respx.MockRouter, backend: YClientsBackend, clock: ManualClock, status: int, error: type[BookingError]
) -> None:
    route = router.get(f"/book_services/{COMPANY}").mock(return_value=failed(status, "Authentication needed."))
    with pytest.raises(error, match="Authentication needed"):
        await backend.services(COMPANY)
    assert route.call_count == 1
    assert clock.sleeps == []


async def test_429_on_a_get_is_retried_after_retry_after(
    router: respx.MockRouter, backend: YClientsBackend, clock: ManualClock
) -> None:
    route = router.get(f"/book_services/{COMPANY}").mock(
        side_effect=[failed(429, "Too many requests", headers={"Retry-After": "7"}), ok({"services": []})]
    )
    assert await backend.services(COMPANY) == []
    assert route.call_count == 2
    assert clock.sleeps == [7.0]


async def test_429_on_book_record_is_not_retried(
    router: respx.MockRouter, backend: YClientsBackend, clock: ManualClock
) -> None:
    route = router.post(f"/book_record/{COMPANY}").mock(
        return_value=failed(429, "Too many requests", headers={"Retry-After": "1"})
    )
    with pytest.raises(RateLimited):
        await backend.create(COMPANY, booking())
    assert route.call_count == 1
    assert clock.sleeps == []


async def test_5xx_on_a_get_is_retried_then_backend_unavailable(
    router: respx.MockRouter, make_backend: Callable[..., YClientsBackend], clock: ManualClock
) -> None:
    route = router.get(f"/book_services/{COMPANY}").mock(return_value=httpx.Response(502, text="Bad Gateway"))
    backend = make_backend(retry=RetryPolicy(retries=2, base_s=0.5, max_s=4))
    with pytest.raises(BackendUnavailable):
        await backend.services(COMPANY)
    assert route.call_count == 3
    assert len(clock.sleeps) == 2


async def test_transport_errors_never_leak_httpx(router: respx.MockRouter, backend: YClientsBackend) -> None:
    router.get(f"/book_services/{COMPANY}").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(BackendUnavailable) as raised:
        await backend.services(COMPANY)
    assert not isinstance(raised.value, httpx.HTTPError)


# --- idempotent creation ----------------------------------------------------------------------------


async def test_timed_out_booking_is_found_by_lookup_and_not_posted_again(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    post = router.post(f"/book_record/{COMPANY}").mock(side_effect=httpx.ReadTimeout("no answer"))
    # The record shows up on the second look, its time in UTC: the same instant as the booking's.
    found = crm_record(777, at="2025-11-26T07:00:00+00:00")
    other = crm_record(778, at="2025-11-27T10:00:00+03:00", api_id=wire_api_id("batch-0"))
    clients_found(router, (CLIENT_ID, "+" + PHONE))
    lookup = router.get(f"/records/{COMPANY}").mock(side_effect=[ok([other]), ok([other, found])])
    record = await backend.create(COMPANY, booking())
    assert record.id == 777
    assert record.at == AT
    assert post.call_count == 1
    assert lookup.call_count == 2


async def test_broken_connection_with_no_record_found_is_outcome_unknown(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    post = router.post(f"/book_record/{COMPANY}").mock(side_effect=httpx.RemoteProtocolError("peer closed"))
    clients_found(router, (CLIENT_ID, "+" + PHONE))
    lookup = router.get(f"/records/{COMPANY}").mock(return_value=ok([crm_record(1, api_id="123456789012345")]))
    with pytest.raises(BackendUnavailable, match="unknown") as raised:
        await backend.create(COMPANY, booking())
    assert isinstance(raised.value, OutcomeUnknown)
    assert raised.value.retryable is False
    assert post.call_count == 1
    assert lookup.call_count == LOOKUP_RETRY.retries + 1


async def test_gateway_timeout_on_booking_is_looked_up_not_reposted(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    post = router.post(f"/book_record/{COMPANY}").mock(return_value=httpx.Response(504, text="Gateway Timeout"))
    clients_found(router, (CLIENT_ID, "+" + PHONE))
    router.get(f"/records/{COMPANY}").mock(return_value=ok([crm_record(779)]))
    assert (await backend.create(COMPANY, booking())).id == 779
    assert post.call_count == 1


async def test_booking_that_could_not_connect_is_not_looked_up(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    post = router.post(f"/book_record/{COMPANY}").mock(side_effect=httpx.ConnectError("refused"))
    lookup = router.get(f"/records/{COMPANY}").mock(return_value=ok([]))
    with pytest.raises(BackendUnavailable) as raised:
        await backend.create(COMPANY, booking())
    assert not isinstance(raised.value, OutcomeUnknown)
    assert (post.call_count, lookup.call_count) == (1, 0)


# --- cache ------------------------------------------------------------------------------------------


async def test_services_are_cached_within_the_ttl_and_refetched_after(
    router: respx.MockRouter, make_backend: Callable[..., YClientsBackend], clock: ManualClock
) -> None:
    route = router.get(f"/book_services/{COMPANY}").mock(return_value=ok({"services": []}))
    backend = make_backend(cache_ttl_s=300)
    await backend.services(COMPANY)
    clock.now += 299_000
    await backend.services(COMPANY)
    assert route.call_count == 1
    clock.now += 1_000
    await backend.services(COMPANY)
    assert route.call_count == 2


async def test_masters_are_cached_per_service_set(router: respx.MockRouter, backend: YClientsBackend) -> None:
    route = router.get(f"/book_staff/{COMPANY}").mock(return_value=ok([{"id": 7, "name": "Алексей"}]))
    await backend.masters(COMPANY, service_ids=(101, 102))
    await backend.masters(COMPANY, service_ids=(102, 101))
    assert route.call_count == 1
    await backend.masters(COMPANY, service_ids=(101,))
    assert route.call_count == 2


# --- client-side rate limit -------------------------------------------------------------------------


async def _ask_dates(backend: YClientsBackend, times: int) -> None:
    for _ in range(times):
        await backend.dates(COMPANY, service_ids=(), master_id=None, start=date(2025, 11, 26), end=date(2025, 11, 26))


async def test_sixth_request_within_a_second_waits(
    router: respx.MockRouter, make_backend: Callable[..., YClientsBackend], clock: ManualClock
) -> None:
    router.get(f"/book_dates/{COMPANY}").mock(return_value=ok({"booking_dates": []}))
    backend = make_backend(rps=5, rpm=200)
    await _ask_dates(backend, 5)
    assert clock.sleeps == []
    await _ask_dates(backend, 1)
    assert clock.sleeps == [1.0]


async def test_201st_request_within_a_minute_waits(
    router: respx.MockRouter, make_backend: Callable[..., YClientsBackend], clock: ManualClock
) -> None:
    route = router.get(f"/book_dates/{COMPANY}").mock(return_value=ok({"booking_dates": []}))
    backend = make_backend(rps=1000, rpm=200)
    await _ask_dates(backend, 200)
    clock.now += 55_000
    await _ask_dates(backend, 1)
    assert clock.sleeps == [5.0]
    assert route.call_count == 201


async def test_request_that_would_wait_too_long_is_rate_limited_without_calling(
    router: respx.MockRouter, make_backend: Callable[..., YClientsBackend], clock: ManualClock
) -> None:
    route = router.get(f"/book_dates/{COMPANY}").mock(return_value=ok({"booking_dates": []}))
    backend = make_backend(rps=1000, rpm=200)
    await _ask_dates(backend, 200)
    with pytest.raises(RateLimited):
        await _ask_dates(backend, 1)
    assert route.call_count == 200
    assert clock.sleeps == []


def test_sliding_window_frees_when_the_oldest_event_leaves() -> None:
    window = SlidingWindow(limit=2, window_ms=1000)
    window.record(0)
    window.record(400)
    assert window.wait_ms(500) == 500
    assert window.wait_ms(1000) == 0
    window.record(1000)
    assert window.wait_ms(1000) == 400


def test_fractional_rate_widens_the_window() -> None:
    window = SlidingWindow.per_second(0.5)
    assert (window.limit, window.window_ms) == (1, 2000)


async def test_limiter_waits_on_the_clock_and_gives_up_past_its_bound() -> None:
    clock = ManualClock(start_ms=0)
    limiter = RequestLimiter(clock=clock, rps=1, rpm=2, max_wait_s=10)
    await limiter.acquire()
    await limiter.acquire()
    assert clock.sleeps == [1.0]
    with pytest.raises(LimitExhausted) as raised:
        await limiter.acquire()
    assert raised.value.wait_s == 59.0

"""The YClients backend against respx routes answering in YClients' documented envelopes, on a manual clock."""

from __future__ import annotations

import asyncio
import json
import math
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
    BookingError,
    InvalidRequest,
    Master,
    MasterUnavailable,
    NewBooking,
    NotFound,
    RateLimited,
    Record,
    Service,
    Slot,
    SlotTaken,
    Unauthorized,
)
from system.booking.ratelimit import LimitExhausted, RequestLimiter, SlidingWindow
from system.booking.yclients import LOOKUP_RETRY, OutcomeUnknown, UnexpectedResponse, YClientsBackend
from system.retry import RetryPolicy
from system.settings import Settings, SettingsError

from .conftest import START_MS

BASE = "https://api.yclients.test/api/v1"
COMPANY = 962302
PHONE = "79001234567"
OTHER_PHONE = "79161234567"
MSK = timezone(timedelta(hours=3))
AT = datetime(2025, 11, 26, 10, 0, tzinfo=MSK)


class ManualClock:
    """Time moves only when someone sleeps: each sleep is recorded and jumps the time forward."""

    def __init__(self, *, start_ms: int = START_MS) -> None:
        self.now = start_ms
        self.sleeps: list[float] = []

    def now_ms(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += math.ceil(seconds * 1000)
        await asyncio.sleep(0)


def ok(data: Any, *, status: int = 200, meta: Any = None) -> httpx.Response:
    return httpx.Response(status, json={"success": True, "data": data, "meta": meta if meta is not None else []})


def failed(status: int, message: str, *, errors: list[dict[str, Any]] | None = None, **kw: Any) -> httpx.Response:
    meta: dict[str, Any] = {"message": message}
    if errors is not None:
        meta["errors"] = errors
    return httpx.Response(status, json={"success": False, "data": None, "meta": meta}, **kw)


def crm_record(
    record_id: int = 555,
    *,
    phone: str = "+" + PHONE,
    at: str = "2025-11-26T10:00:00+03:00",
    api_id: str = "batch-1",
    deleted: bool = False,
) -> dict[str, Any]:
    return {
        "id": record_id,
        "company_id": COMPANY,
        "staff_id": 7,
        "services": [{"id": 101, "title": "Мужская стрижка", "cost": 1500}],
        "staff": {"id": 7, "name": "Алексей", "specialization": "барбер"},
        "client": {"id": 42, "name": "Иван", "phone": phone},
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
    assert params["date_from"] == "2025-11-26"
    assert params["date_to"] == "2025-11-30"
    assert params.get_list("service_ids[]") == ["101"]


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
        api_id="batch-1",
    )  # fmt: skip
    body = json.loads(route.calls.last.request.read())
    assert body == {
        "phone": "+79001234567",
        "fullname": "Иван",
        "email": "",
        "comment": "from WhatsApp",
        "api_id": "batch-1",
        "appointments": [{"id": 1, "services": [101], "staff_id": 7, "datetime": "2025-11-26T10:00:00+03:00"}],
    }


async def test_records_are_parsed_and_foreign_phones_dropped(
    router: respx.MockRouter, backend: YClientsBackend
) -> None:
    data = [
        crm_record(555),
        crm_record(556, phone="7900 123-45-67", deleted=True),
        crm_record(557, phone="+" + OTHER_PHONE),
        crm_record(558) | {"client": None},
    ]
    route = router.get(f"/records/{COMPANY}").mock(return_value=ok(data, meta={"page": 1, "total_count": 4}))
    records = await backend.records(COMPANY, phone=PHONE)
    assert [(r.id, r.cancelled) for r in records] == [(555, False), (556, True)]
    assert records[0] == Record(
        id=555, company_id=COMPANY, phone=PHONE, master_id=7, at=AT, service_ids=(101,), client_name="Иван",
        master_name="Алексей", service_titles=("Мужская стрижка",), duration_min=60, api_id="batch-1",
    )  # fmt: skip
    assert route.calls.last.request.url.params["client_phone"] == "+79001234567"


async def test_reschedule_puts_the_record(router: respx.MockRouter, backend: YClientsBackend) -> None:
    new_at = "2025-11-27T12:00:00+03:00"
    route = router.put(f"/record/{COMPANY}/555").mock(return_value=ok(crm_record(555, at=new_at) | {"staff_id": 9}))
    original = Record(id=555, company_id=COMPANY, phone=PHONE, master_id=7, at=AT, service_ids=(101,),
                      client_name="Иван", duration_min=60)  # fmt: skip
    moved = await backend.reschedule(COMPANY, original, at=datetime.fromisoformat(new_at), master_id=9)
    assert (moved.id, moved.master_id, moved.at, moved.phone) == (555, 9, datetime.fromisoformat(new_at), PHONE)
    body = json.loads(route.calls.last.request.read())
    assert body == {
        "staff_id": 9,
        "services": [{"id": 101}],
        "client": {"phone": "+79001234567", "name": "Иван"},
        "datetime": new_at,
        "seance_length": 3600,
        "save_if_busy": False,
    }


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


@pytest.mark.parametrize(("code", "error"), [(433, SlotTaken), (436, MasterUnavailable), (437, AppointmentsOverlap)])
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
    ("status", "error"),
    [(401, Unauthorized), (403, Unauthorized), (404, NotFound), (400, InvalidRequest), (422, InvalidRequest)],
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
    other = crm_record(778, at="2025-11-27T10:00:00+03:00", api_id="batch-0")
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
    lookup = router.get(f"/records/{COMPANY}").mock(return_value=ok([crm_record(1, api_id="someone-else")]))
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

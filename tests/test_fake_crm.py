"""The simulator's salon and its fake YClients CRM, the CRM driven through the system's own YClientsBackend."""

from __future__ import annotations

import ast
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI

from simulator.clock import VirtualClock
from simulator.crm import CrmFaults, create_app
from simulator.salon import (
    BARBERSHOP_FIXTURE,
    Appointment,
    BookingConflict,
    Salon,
    SalonRecord,
)
from simulator.salon_records import RecordBook
from system.booking.base import (
    BookingRefused,
    ClientBlocked,
    MasterUnavailable,
    NewBooking,
    NotFound,
    SlotTaken,
    Unauthorized,
    wire_api_id,
)
from system.booking.yclients import YClientsBackend
from system.turn.context import Dialog, Preferences
from system.turn.tools import BookingTools, TurnState

from .conftest import START_MS

MSK = ZoneInfo("Europe/Moscow")
START = datetime.fromtimestamp(START_MS / 1000, MSK)  # Tuesday 2025-11-25 13:00
TODAY = START.date()
WED = TODAY + timedelta(days=1)
COMPANY = 962302
BASE = "http://crm.test/api/v1"
PHONE = "79001234567"
OTHER_PHONE = "79161234567"
SERGEY, ALEXEY, DMITRY, IGOR = 10, 11, 12, 13
CLIPPER, HAIRCUT, KIDS, BEARD, SHAVE, GREY, COMBO = 1, 2, 3, 4, 5, 6, 7
AUTH = {"Authorization": "Bearer partner, User user"}

Connect = Callable[..., YClientsBackend]


def at(day: date, hhmm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hhmm), MSK)


def make_salon(start: datetime = START) -> Salon:
    return Salon.from_fixture(BARBERSHOP_FIXTURE, start=start)


def crm(salon: Salon, clock: VirtualClock, **options: Any) -> FastAPI:
    return create_app(salon, partner_token="partner", user_token="user", clock=clock, **options)


def booking(
    when: datetime, *, master: int = SERGEY, services: tuple[int, ...] = (HAIRCUT,), phone: str = PHONE
) -> NewBooking:
    return NewBooking(
        phone=phone, client_name="Иван", service_ids=services, master_id=master, at=when, api_id=f"batch-{phone}"
    )


pytestmark = pytest.mark.usefixtures("driven")  # waits on the clock (rate limits, backoffs) end at once


@pytest.fixture
async def connect(clock: VirtualClock) -> AsyncIterator[Connect]:
    """A factory of YClientsBackend clients of an app, in process; `statuses` collects every HTTP status seen."""
    clients: list[httpx.AsyncClient] = []

    def make(
        app: FastAPI, *, partner: str = "partner", user: str | None = "user", statuses: list[int] | None = None
    ) -> YClientsBackend:
        async def seen(response: httpx.Response) -> None:
            if statuses is not None:
                statuses.append(response.status_code)

        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), event_hooks={"response": [seen]})
        clients.append(http)
        return YClientsBackend(
            http, base_url=BASE, partner_token=partner, user_token=user, clock=clock, rng=random.Random(0)
        )

    yield make
    for http in clients:
        await http.aclose()


# --- the CRM through the production client ----------------------------------------------------------------------


async def test_catalogue_dates_and_times_parse_through_the_client(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock))

    services = {service.id: service for service in await backend.services(COMPANY)}
    assert len(services) == 7
    haircut = services[HAIRCUT]
    assert (haircut.title, haircut.price_min, haircut.price_max, haircut.duration_min) == (
        "Мужская стрижка",
        1500,
        1800,
        60,
    )
    assert haircut.category == "Стрижки"
    assert [m.name for m in await backend.masters(COMPANY, service_ids=(SHAVE,))] == ["Сергей", "Дмитрий"]

    week = await backend.dates(COMPANY, service_ids=(HAIRCUT,), master_id=SERGEY, start=TODAY, end=TODAY + timedelta(6))
    assert [d.strftime("%a") for d in week] == ["Tue", "Wed", "Thu", "Fri", "Sat"]  # off on Sunday and Monday

    slots = await backend.times(COMPANY, master_id=SERGEY, day=WED, service_ids=(HAIRCUT,))
    starts = [slot.at for slot in slots]
    assert starts[0] == at(WED, "10:00") and starts[-1] == at(WED, "20:00")
    assert at(WED, "14:15") not in starts and at(WED, "14:00") in starts  # the fixture's 15:00 booking
    assert str(starts[0].utcoffset()) == "3:00:00"
    assert {(slot.master_id, slot.duration_min) for slot in slots} == {(SERGEY, 60)}


async def test_booking_shows_in_the_clients_records(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock))

    created = await backend.create(COMPANY, booking(at(WED, "10:00")))

    [record] = await backend.records(COMPANY, phone=PHONE)
    assert record.id == created.id > 1006  # after the fixture's six records
    assert (record.at, record.master_id, record.master_name) == (at(WED, "10:00"), SERGEY, "Сергей")
    assert (record.service_ids, record.service_titles, record.duration_min) == ((HAIRCUT,), ("Мужская стрижка",), 60)
    assert (record.api_id, record.client_name, record.cancelled) == (wire_api_id(f"batch-{PHONE}"), "Иван", False)


async def test_double_booking_the_same_slot_is_slot_taken(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock))
    await backend.check(COMPANY, booking(at(WED, "10:00")))
    await backend.create(COMPANY, booking(at(WED, "10:00")))

    with pytest.raises(SlotTaken) as taken:
        await backend.create(COMPANY, booking(at(WED, "10:00"), phone=OTHER_PHONE))
    assert taken.value.code == 433
    with pytest.raises(SlotTaken):
        await backend.check(COMPANY, booking(at(WED, "10:30"), phone=OTHER_PHONE))  # overlaps the first hour


async def test_any_master_booking_gets_a_free_master(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock))
    offered = await backend.times(COMPANY, master_id=None, day=WED, service_ids=(HAIRCUT,))
    assert at(WED, "15:00") in [slot.at for slot in offered]

    await backend.create(COMPANY, booking(at(WED, "15:00"), master=0))

    [record] = await backend.records(COMPANY, phone=PHONE)
    assert (record.master_id, record.master_name) == (ALEXEY, "Алексей")  # Сергей has the fixture's 15:00


async def test_cancel_deletes_the_record_keeps_attendance_and_frees_the_slot(
    clock: VirtualClock, connect: Connect
) -> None:
    salon = make_salon()
    backend = connect(crm(salon, clock))
    created = await backend.create(COMPANY, booking(at(WED, "10:00")))
    salon.set_attendance(created.id, 2)  # the client had confirmed

    await backend.cancel(COMPANY, created.id)

    assert await backend.records(COMPANY, phone=PHONE) == []  # YClients lists deleted records only when asked
    kept = salon.record(created.id)
    assert (kept.deleted, kept.attendance) == (True, 2)
    assert kept in salon.all_records()
    free = await backend.times(COMPANY, master_id=SERGEY, day=WED, service_ids=(HAIRCUT,))
    assert at(WED, "10:00") in [slot.at for slot in free]
    with pytest.raises(NotFound):
        await backend.cancel(COMPANY, created.id)


async def test_reschedule_moves_the_record(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock))
    created = await backend.create(COMPANY, booking(at(WED, "10:00")))
    [record] = await backend.records(COMPANY, phone=PHONE)

    with pytest.raises(SlotTaken):
        await backend.reschedule(COMPANY, record, at=at(WED, "11:00"), master_id=DMITRY)  # his fixture 11:00
    moved = await backend.reschedule(COMPANY, record, at=at(WED, "12:00"), master_id=DMITRY)

    assert (moved.id, moved.at, moved.master_id, moved.phone) == (created.id, at(WED, "12:00"), DMITRY, PHONE)
    free = await backend.times(COMPANY, master_id=SERGEY, day=WED, service_ids=(HAIRCUT,))
    assert at(WED, "10:00") in [slot.at for slot in free]


async def test_another_phones_records_are_never_returned(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock))
    await backend.create(COMPANY, booking(at(WED, "10:00")))
    await backend.create(COMPANY, booking(at(WED, "12:00"), phone=OTHER_PHONE))

    assert {r.phone for r in await backend.records(COMPANY, phone=PHONE)} == {PHONE}
    assert [r.id for r in await backend.records(COMPANY, phone="79990000001")] == [1001, 1006]


async def test_wrong_tokens_are_unauthorized(clock: VirtualClock, connect: Connect) -> None:
    app = crm(make_salon(), clock)

    with pytest.raises(Unauthorized):
        await connect(app, partner="stolen").services(COMPANY)
    with pytest.raises(Unauthorized):
        await connect(app, user="stolen").records(COMPANY, phone=PHONE)
    partner_only = connect(app, user=None)
    assert await partner_only.services(COMPANY)  # the public booking API needs only the partner token
    with pytest.raises(Unauthorized):
        await partner_only.records(COMPANY, phone=PHONE)


async def test_unknown_company_and_invalid_requests(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock))

    with pytest.raises(NotFound):
        await backend.services(1)
    with pytest.raises(BookingRefused):  # a 422 on a booking: refused, told to the client
        await backend.create(COMPANY, booking(at(WED, "10:00"), services=()))
    with pytest.raises(NotFound):  # 438: no such service
        await backend.create(COMPANY, booking(at(WED, "10:00"), services=(99,)))


async def test_overlapping_appointments_and_bad_json_answer_like_yclients(clock: VirtualClock) -> None:
    app = crm(make_salon(), clock)
    appointments = [
        {"id": 1, "services": [HAIRCUT], "staff_id": SERGEY, "datetime": at(WED, "10:00").isoformat()},
        {"id": 2, "services": [BEARD], "staff_id": DMITRY, "datetime": at(WED, "10:30").isoformat()},
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=AUTH) as http:
        overlap = await http.post(
            f"{BASE}/book_record/{COMPANY}", json={"phone": PHONE, "fullname": "Иван", "appointments": appointments}
        )
        broken = await http.post(
            f"{BASE}/book_record/{COMPANY}", content=b"{", headers={"Content-Type": "application/json"}
        )

    assert overlap.status_code == 422
    assert overlap.json()["meta"]["errors"] == [{"code": 437, "message": "Записи пересекаются по времени"}]
    assert broken.status_code == 400 and broken.json()["success"] is False


async def test_no_slots_on_a_masters_day_off(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock))  # Алексей is off on Tuesdays

    assert await backend.times(COMPANY, master_id=ALEXEY, day=TODAY, service_ids=(HAIRCUT,)) == []
    week = await backend.dates(COMPANY, service_ids=(HAIRCUT,), master_id=ALEXEY, start=TODAY, end=TODAY + timedelta(6))
    assert TODAY not in week and WED in week
    with pytest.raises(MasterUnavailable):
        await backend.create(COMPANY, booking(at(TODAY, "15:00"), master=ALEXEY))


async def test_past_times_today_are_not_offered(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock))

    slots = await backend.times(COMPANY, master_id=SERGEY, day=TODAY, service_ids=(HAIRCUT,))
    assert slots[0].at == at(TODAY, "13:00")  # it is 13:00 now
    with pytest.raises(SlotTaken):
        await backend.create(COMPANY, booking(at(TODAY, "11:00")))

    clock.advance_to(START_MS + 2 * 3600 * 1000)
    later = await backend.times(COMPANY, master_id=SERGEY, day=TODAY, service_ids=(HAIRCUT,))
    assert later[0].at == at(TODAY, "15:00")


async def test_rate_limited_and_failed_gets_are_retried(clock: VirtualClock, connect: Connect) -> None:
    faults = CrmFaults(rate_limit_p=0.25, server_error_p=0.1, retry_after_s=1)
    statuses: list[int] = []
    backend = connect(crm(make_salon(), clock, rng=random.Random(7), faults=faults), statuses=statuses)

    for offset in range(6):
        assert await backend.times(COMPANY, master_id=0, day=WED + timedelta(offset), service_ids=(CLIPPER,))

    assert 429 in statuses and 503 in statuses
    assert statuses.count(200) == 6


async def test_the_same_seed_gives_the_same_faults(clock: VirtualClock) -> None:
    async def statuses(seed: int) -> list[int]:
        app = crm(make_salon(), clock, rng=random.Random(seed), faults=CrmFaults(rate_limit_p=0.3, server_error_p=0.1))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), headers=AUTH) as http:
            return [(await http.get(f"{BASE}/book_services/{COMPANY}")).status_code for _ in range(40)]

    first = await statuses(7)
    assert first == await statuses(7)
    assert {200, 429, 503} <= set(first)
    assert first != await statuses(8)


async def test_latency_is_waited_on_the_injected_clock(clock: VirtualClock, connect: Connect) -> None:
    backend = connect(crm(make_salon(), clock, faults=CrmFaults(slow_ms=250)))

    await backend.services(COMPANY)

    assert clock.now_ms() - START_MS >= 250


async def test_a_blacklisted_phone_is_434_with_403_and_the_model_is_told_why(
    clock: VirtualClock, connect: Connect
) -> None:
    """Issue 11.17: 434 comes with HTTP 403; it was read as Unauthorized, and the model heard a generic failure."""
    salon = make_salon()
    salon.blocked_phones.add(PHONE)
    statuses: list[int] = []
    backend = connect(crm(salon, clock), statuses=statuses)

    with pytest.raises(ClientBlocked) as blocked:
        await backend.create(COMPANY, booking(at(WED, "10:00")))
    assert (blocked.value.code, statuses[-1]) == (434, 403)

    tools = BookingTools(backend, clock=clock)
    state = TurnState(COMPANY, PHONE, "Europe/Moscow", "batch-1", Dialog(), Preferences())
    args = '{"service": "Мужская стрижка", "datetime": "2025-11-26T10:00", "master": "Сергей", "client_name": "Иван"}'
    result = await tools.call("create_booking", args, state)
    assert result["refused"] is True
    assert "черном списке" in result["error"]
    assert salon.records_by_phone(PHONE) == []


async def test_refused_tokens_tell_the_model_the_booking_system_is_down_not_the_crms_words(
    clock: VirtualClock, connect: Connect
) -> None:
    tools = BookingTools(connect(crm(make_salon(), clock), partner="stolen"), clock=clock)
    state = TurnState(COMPANY, PHONE, "Europe/Moscow", "batch-1", Dialog(), Preferences())

    result = await tools.call("list_services", "{}", state)

    assert result["error"] == "система записи салона сейчас недоступна"
    assert "refused" not in result


async def test_book_dates_date_selects_its_month(clock: VirtualClock) -> None:
    app = crm(make_salon(), clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), headers=AUTH) as http:
        december = (await http.get(f"{BASE}/book_dates/{COMPANY}", params={"date": "2025-12-15"})).json()["data"]
        default = (await http.get(f"{BASE}/book_dates/{COMPANY}")).json()["data"]

    assert {d[:7] for d in december["booking_dates"]} == {"2025-12"}
    assert december["booking_dates"][-1] <= (TODAY + timedelta(days=30)).isoformat()  # the booking horizon
    assert december["booking_days"] == {"12": [str(int(d[8:])) for d in december["booking_dates"]]}
    assert default["booking_dates"][0] == TODAY.isoformat()  # no `date`: from today to the booking horizon
    assert default["booking_dates"][-1] <= (TODAY + timedelta(days=30)).isoformat()


async def test_client_search_finds_by_part_of_phone_or_name_with_the_asked_fields(clock: VirtualClock) -> None:
    salon = make_salon()
    salon.client("+7 900 123-45-67", name="Иван Петров")
    app = crm(salon, clock)

    async def search(**body: Any) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), headers=AUTH) as http:
            return await http.post(f"{BASE}/company/{COMPANY}/clients/search", json=body)

    quick = [{"type": "quick_search", "state": {"value": "1234567"}}]
    by_phone = await search(filters=quick, fields=["id", "phone", "name"])
    by_name = await search(filters=[{"type": "quick_search", "state": {"value": "петров"}}])
    unknown = await search(filters=[{"type": "birthday", "state": {"from": "2000-01-01"}}])

    [client] = by_phone.json()["data"]
    assert client["phone"] == "+79001234567" and client["name"] == "Иван Петров"
    assert by_name.json()["data"] == [{"id": client["id"]}]  # `fields` defaults to id only
    assert by_phone.json()["meta"] == {"total_count": 1}
    assert unknown.status_code == 400  # a documented filter the fake does not serve is refused, not ignored


async def test_deleted_records_are_listed_only_with_with_deleted(clock: VirtualClock, connect: Connect) -> None:
    salon = make_salon()
    backend = connect(crm(salon, clock))
    created = await backend.create(COMPANY, booking(at(WED, "10:00")))
    await backend.cancel(COMPANY, created.id)
    client = salon.client(PHONE).id

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=crm(salon, clock)), headers=AUTH) as http:
        plain = (await http.get(f"{BASE}/records/{COMPANY}", params={"client_id": client})).json()
        deleted = (await http.get(f"{BASE}/records/{COMPANY}", params={"client_id": client, "with_deleted": 1})).json()

    assert plain["data"] == []
    assert [(r["id"], r["deleted"]) for r in deleted["data"]] == [(created.id, True)]


async def test_records_come_page_by_page(clock: VirtualClock) -> None:
    app = crm(make_salon(), clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), headers=AUTH) as http:
        pages = [
            (await http.get(f"{BASE}/records/{COMPANY}", params={"page": page, "count": 4})).json() for page in (1, 2)
        ]

    assert [len(p["data"]) for p in pages] == [4, 2]  # the fixture's six records
    assert pages[1]["meta"] == {"page": 2, "total_count": 6}


@pytest.mark.parametrize("module", ["crm.py", "salon.py"])
def test_the_fake_decides_no_protocol_fact_with_a_system_helper(module: str) -> None:
    """The fake is written from the Blueprint: of `system/` it may use the clock's type, nothing that decides a
    protocol fact (phone normalisation, Retry-After parsing, the client's constants)."""
    tree = ast.parse((Path(__file__).parents[1] / "simulator" / module).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name.split(".")[0] == "system"} <= {"system.clock"}


# --- the salon's slot logic --------------------------------------------------------------------------------------


def test_the_fixture_is_the_barbershop() -> None:
    salon = make_salon()

    assert (salon.company_id, salon.name, str(salon.tz)) == (COMPANY, "Барбершоп «Борода»", "Europe/Moscow")
    durations = {s.title: s.duration_min for s in salon.services.values()}
    assert durations["Стрижка + борода"] == 90 and durations["Детская стрижка"] == 45
    assert [m.name for m in salon.masters.values()] == ["Сергей", "Алексей", "Дмитрий", "Игорь"]
    assert all(1 <= sum(hours is None for hours in m.hours) <= 2 for m in salon.masters.values())
    records = salon.all_records()
    assert [r.id for r in records] == list(range(1001, 1007))
    assert all(r.start > START and not r.deleted for r in records)


@pytest.mark.parametrize("weekday_offset", range(7))
def test_fixture_bookings_land_on_working_days_whatever_the_start(weekday_offset: int) -> None:
    start = START + timedelta(days=weekday_offset)
    salon = make_salon(start)

    for record in salon.all_records():
        assert record.start > start
        assert salon.masters[record.master_id].hours_on(record.start.date()) is not None


def test_slots_follow_the_grid_working_hours_and_records() -> None:
    salon = make_salon()

    starts = [slot.start.strftime("%H:%M") for slot in salon.free_slots(ALEXEY, WED, [HAIRCUT])]

    # Алексей works 12:00-21:00; the fixture's 16:00-16:30 beard trim blocks hour-long starts from 15:15 to 16:15.
    grid = [at(WED, "12:00") + timedelta(minutes=15 * i) for i in range(33)]
    expected = [t.strftime("%H:%M") for t in grid if not at(WED, "15:00") < t < at(WED, "16:30")]
    assert starts == expected
    assert starts[-1] == "20:00"


def test_the_whole_duration_must_fit() -> None:
    salon = make_salon()

    starts = [slot.start for slot in salon.free_slots(DMITRY, WED, [COMBO])]

    assert starts[0] == at(WED, "11:30")  # 10:00-11:30 would run into his 11:00 booking
    assert starts[-1] == at(WED, "17:30")  # he leaves at 19:00
    assert salon.free_slots(IGOR, WED, [SHAVE]) == []  # Игорь does not shave


def test_any_master_is_the_union_given_to_the_first_free_master() -> None:
    salon = make_salon()

    slots = {slot.start: slot.master_id for slot in salon.free_slots(0, WED, [HAIRCUT])}

    assert slots[at(WED, "10:00")] == SERGEY
    assert slots[at(WED, "15:00")] == ALEXEY
    assert slots[at(WED, "19:30")] == SERGEY  # Дмитрий has left; Алексей comes after Сергей in the order
    assert salon.free_slots(0, WED, [HAIRCUT], now=at(WED, "18:00"))[0].start == at(WED, "18:00")


@pytest.mark.parametrize(
    ("appointments", "code"),
    [
        ([Appointment((HAIRCUT,), SERGEY, at(WED, "14:30"))], 433),  # overlaps his 15:00
        ([Appointment((HAIRCUT,), SERGEY, at(TODAY, "11:00"))], 433),  # in the past
        ([Appointment((SHAVE,), IGOR, at(WED, "12:00"))], 436),  # not his service
        ([Appointment((HAIRCUT,), ALEXEY, at(TODAY, "15:00"))], 436),  # his day off
        ([Appointment((HAIRCUT,), SERGEY, at(WED, "20:30"))], 436),  # runs past closing
        ([Appointment((HAIRCUT,), SERGEY, at(WED, "10:00")), Appointment((BEARD,), 0, at(WED, "10:30"))], 437),
        ([Appointment((99,), SERGEY, at(WED, "10:00"))], 438),
    ],
)
def test_booking_conflicts_carry_yclients_codes(appointments: list[Appointment], code: int) -> None:
    salon = make_salon()

    with pytest.raises(BookingConflict) as conflict:
        salon.book(phone=PHONE, client_name="Иван", appointments=appointments, now=START)

    assert conflict.value.code == code
    assert len(salon.all_records()) == 6  # all or nothing


def test_no_master_free_for_any_master_is_436() -> None:
    salon = make_salon()
    for phone in ("79001111111", "79002222222"):  # Сергей and Дмитрий work today; Алексей and Игорь are off
        salon.book(phone=phone, client_name="", appointments=[Appointment((SHAVE,), 0, at(TODAY, "16:00"))], now=START)

    with pytest.raises(BookingConflict) as conflict:
        salon.check([Appointment((SHAVE,), 0, at(TODAY, "16:00"))], now=START)
    assert conflict.value.code == 436


def test_cancel_is_not_a_no_show_and_frees_the_slot() -> None:
    salon = make_salon()
    [record] = salon.book(
        phone=PHONE, client_name="Иван", appointments=[Appointment((HAIRCUT,), SERGEY, at(WED, "10:00"))]
    )

    cancelled = salon.cancel(record.id, now=START)

    assert (cancelled.deleted, cancelled.deleted_at, cancelled.attendance) == (True, START, 0)
    assert at(WED, "10:00") in [slot.start for slot in salon.free_slots(SERGEY, WED, [HAIRCUT])]
    assert salon.records_by_phone("+7 900 123-45-67") == [cancelled]


def test_move_with_any_master_keeps_the_master_when_free() -> None:
    salon = make_salon()
    [record] = salon.book(phone=PHONE, client_name="", appointments=[Appointment((HAIRCUT,), DMITRY, at(WED, "12:00"))])

    moved = salon.move(record.id, start=at(WED, "13:00"), master_id=0, now=START)
    assert (moved.master_id, moved.start) == (DMITRY, at(WED, "13:00"))
    with pytest.raises(BookingConflict):
        salon.move(record.id, start=at(WED, "11:00"), master_id=DMITRY, now=START)  # his fixture booking
    assert salon.move(record.id, start=at(WED, "11:00"), master_id=DMITRY, force=True).start == at(WED, "11:00")


def test_an_any_master_booking_goes_to_the_master_with_the_fewest_visits_that_day() -> None:
    """Given to the first master of the list, "any master" clients filled Сергей first, and a client asking for
    Сергей by name found him booked day after day."""
    salon = make_salon()
    masters = [
        salon.book(
            phone=f"7900000{hour:04d}", client_name="", appointments=[Appointment((CLIPPER,), 0, at(WED, f"{hour}:00"))]
        )[0].master_id
        for hour in (12, 13, 14, 15)
    ]

    assert len(set(masters)) == 4  # each went to a master who had fewer visits that day than the others
    assert set(masters) == {SERGEY, ALEXEY, DMITRY, IGOR}


def test_a_free_day_is_one_with_a_free_time_whoever_asks() -> None:
    salon = make_salon()
    for hour in range(10, 20):
        for master in (SERGEY, ALEXEY):
            with contextlib.suppress(BookingConflict):
                salon.book(
                    phone=PHONE, client_name="", appointments=[Appointment((HAIRCUT,), master, at(WED, f"{hour}:00"))]
                )
    answers = set()
    for master in (0, SERGEY, ALEXEY, DMITRY, IGOR):
        for day in (TODAY, WED, WED + timedelta(days=1)):
            for services in ([HAIRCUT], [SHAVE], [COMBO]):
                expected = bool(salon.free_slots(master, day, services, now=START))
                assert salon.has_free_slot(master, day, services, now=START) is expected, (master, day, services)
                answers.add(expected)
    assert answers == {True, False}  # full days and free ones both asked about


def test_the_salon_is_deterministic() -> None:
    def run() -> list[Any]:
        salon = make_salon()
        for hour in range(10, 18):
            salon.book(phone=PHONE, client_name="", appointments=[Appointment((CLIPPER,), 0, at(WED, f"{hour}:00"))])
        return salon.all_records()

    assert run() == run()


def test_indexed_record_lookups_answer_as_a_scan_of_every_record_would() -> None:
    """Bookings, moves (to another master, across midnight, longer than a day) and cancels keep the indexes true."""
    rng = random.Random(16)
    book = RecordBook(MSK)
    phones = {PHONE: 1, OTHER_PHONE: 2, "79990000000": 3}
    for _ in range(300):
        if len(book) and rng.random() < 0.4:  # change an earlier record instead of adding one
            old = rng.choice(book.all())
            book.put(replace(old, deleted=True) if rng.random() < 0.3 else _random_spot(rng, old))
        else:
            phone = rng.choice(list(phones))
            new = SalonRecord(len(book) + 1, phone, "", SERGEY, (HAIRCUT,), START, 30, client_id=phones[phone])
            book.put(_random_spot(rng, new))
        records = book.all()
        start = START + timedelta(minutes=15 * rng.randrange(-96, 96 * 6))
        end = start + timedelta(minutes=rng.choice((15, 60, 600, 3000)))
        master, ignore = rng.choice((SERGEY, ALEXEY)), rng.choice((None, rng.randrange(1, len(book) + 1)))
        scanned = [
            r.id
            for r in records
            if not r.deleted and r.master_id == master and r.id != ignore and r.start < end and start < r.end
        ]
        assert sorted(r.id for r in book.busy(master, start, end, ignore_id=ignore)) == scanned
        phone = rng.choice(list(phones))
        mine = sorted((r for r in records if r.phone == phone), key=lambda r: (r.start, r.id))
        assert book.of_phone(phone) == mine == book.of_client(phones[phone])
    assert [r.id for r in book.all()] == sorted(r.id for r in book.all())  # creation order


def _random_spot(rng: random.Random, record: SalonRecord) -> SalonRecord:
    """The record at a random time (some in UTC), with a random master and length (some past midnight)."""
    start = START + timedelta(minutes=15 * rng.randrange(0, 96 * 5))
    return replace(
        record,
        start=start.astimezone(UTC) if rng.random() < 0.2 else start,
        master_id=rng.choice((SERGEY, ALEXEY)),
        duration_min=rng.choice((30, 60, 90, 600, 1500)),
    )


def test_the_client_search_finds_what_a_scan_of_every_client_would() -> None:
    """Parts of phones, of names in any case, texts in both, and a text only a scan can answer."""
    rng = random.Random(6)
    salon = make_salon()
    names = ("Иван", "иванов 2", "Анна-Мария", "", "Ann\x00a", "Олег")
    for _ in range(200):
        salon.client(f"+7 9{rng.randrange(10**9):09d}", name=rng.choice(names))
    texts = ["9", "2", "ан", "ИВАН", "n\x00a", "Ann\x00a", "нет такого", "+7 9", " "] + [
        c.phone[rng.randrange(3) : rng.randrange(5, 12)] for c in rng.sample(salon.clients(), 20)
    ]
    for text in texts:
        folded = text.casefold()
        digits = "".join(ch for ch in folded if ch.isdigit())
        scanned = [c for c in salon.clients() if (digits and digits in c.phone) or folded in c.name.casefold()]
        assert salon.clients_matching(text) == scanned, text

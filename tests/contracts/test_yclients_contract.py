"""One YClients contract, run against every stand-in of YClients, through the production `YClientsBackend`.

The stand-ins: the simulator's fake CRM (`simulator/crm.py`, in process over ASGI), the worker tests' respx world
(`tests/world.py`, over a MockTransport) and the benchmark stand-ins (`loadtests/bench/_standins.py`, which serve the
simulator's fake CRM). What is asserted is what the YClients API Blueprint documents, so a bug in our client that
a real YClients would expose (an undocumented filter, a missing required field) is exposed here too.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from loadtests.bench import _standins as standins
from simulator import crm
from simulator.clock import VirtualClock
from simulator.salon import BARBERSHOP_FIXTURE, Salon
from system.booking.base import InvalidPhone, NameRequired, NewBooking, Slot, SlotTaken, Unauthorized
from system.booking.yclients import YClientsBackend, wire_api_id
from system.errors import BookingError
from tests import world

from ..conftest import START_MS

COMPANY = 962302
PHONE = "79001234567"
OTHER_PHONE = "79161234567"
STANDINS = ("simulator", "world", "standins")


pytestmark = pytest.mark.usefixtures("driven")  # the clock of tests/conftest.py, its time jumping


@dataclass
class StandIn:
    """A YClients stand-in behind an httpx client, and the tokens it takes."""

    name: str
    http: httpx.AsyncClient
    base_url: str
    partner: str
    user: str | None

    @property
    def auth(self) -> dict[str, str]:
        user = f", User {self.user}" if self.user else ""
        return {"Authorization": f"Bearer {self.partner}{user}", "Accept": "application/vnd.yclients.v2+json"}

    def backend(self, clock: VirtualClock, *, partner: str | None = None) -> YClientsBackend:
        return YClientsBackend(
            self.http,
            base_url=self.base_url,
            partner_token=partner or self.partner,
            user_token=self.user,
            clock=clock,
            rng=random.Random(0),
        )

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.http.get(f"{self.base_url}/{path}", params=params, headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(params=STANDINS)
async def standin(request: pytest.FixtureRequest, clock: VirtualClock) -> AsyncIterator[StandIn]:
    name = request.param
    if name == "world":
        http = world.World().http()
        found = StandIn(name, http, world.YCLIENTS_URL, world.PARTNER_TOKEN, world.USER_TOKEN)
    elif name == "simulator":
        salon = Salon.from_fixture(BARBERSHOP_FIXTURE, start=datetime.fromtimestamp(START_MS / 1000, tz=UTC))
        app = crm.create_app(salon, partner_token="partner", user_token="user", clock=clock)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        found = StandIn(name, http, "http://crm.test" + crm.API_PREFIX, "partner", "user")
    else:
        app = standins.create_app(llm_latency_s=0, clock=clock)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        found = StandIn(name, http, "http://standins.test" + standins.YCLIENTS_PREFIX, standins.PARTNER_TOKEN, None)
    async with http:
        yield found


async def free_slots(backend: YClientsBackend, clock: VirtualClock) -> tuple[int, list[Slot]]:
    """A service and the free slots of its first master on the first bookable day after today."""
    service = (await backend.services(COMPANY))[0]
    master = (await backend.masters(COMPANY, service_ids=(service.id,)))[0]
    today = datetime.fromtimestamp(clock.now_ms() / 1000, tz=UTC).date()
    days = await backend.dates(
        COMPANY, service_ids=(service.id,), master_id=master.id, start=today + timedelta(1), end=today + timedelta(14)
    )
    slots = await backend.times(COMPANY, master_id=master.id, day=days[0], service_ids=(service.id,))
    return service.id, slots


def booking(service_id: int, slot: Slot, *, phone: str = PHONE, name: str = "Иван", key: str = "turn-1") -> NewBooking:
    return NewBooking(
        phone=phone, client_name=name, service_ids=(service_id,), master_id=slot.master_id, at=slot.at, api_id=key
    )


# --- the catalogue and availability ---------------------------------------------------------------------------


async def test_catalogue_days_and_times_are_served(standin: StandIn, clock: VirtualClock) -> None:
    backend = standin.backend(clock)

    services = await backend.services(COMPANY)
    assert services and all(service.duration_min > 0 for service in services)
    assert await backend.masters(COMPANY, service_ids=(services[0].id,))
    _, slots = await free_slots(backend, clock)
    assert slots and all(slot.at.utcoffset() is not None for slot in slots)


async def test_book_dates_ignore_an_undocumented_range(standin: StandIn, clock: VirtualClock) -> None:
    """Blueprint: book_dates takes `date` (a month), not `date_from`/`date_to`: those change nothing."""
    month = {"date": "2025-11-26"}
    plain = await standin.get(f"book_dates/{COMPANY}", **month)
    ranged = await standin.get(f"book_dates/{COMPANY}", **month, date_from="2025-11-27", date_to="2025-11-28")

    assert ranged["data"]["booking_dates"] == plain["data"]["booking_dates"]
    assert len(plain["data"]["booking_dates"]) > 2


# --- a client's records ---------------------------------------------------------------------------------------


async def test_a_booking_is_found_by_the_clients_phone_and_only_theirs(standin: StandIn, clock: VirtualClock) -> None:
    backend = standin.backend(clock)
    service_id, slots = await free_slots(backend, clock)

    created = await backend.create(COMPANY, booking(service_id, slots[0]))
    await backend.create(COMPANY, booking(service_id, slots[-1], phone=OTHER_PHONE, name="Пётр", key="turn-2"))

    mine = await backend.records(COMPANY, phone=PHONE)
    assert [(r.id, r.at, r.phone) for r in mine] == [(created.id, slots[0].at, PHONE)]
    assert mine[0].api_id == wire_api_id("turn-1")
    assert mine[0].client_id > 0
    assert [r.at for r in await backend.records(COMPANY, phone=OTHER_PHONE)] == [slots[-1].at]


async def test_records_ignore_an_undocumented_phone_filter(standin: StandIn, clock: VirtualClock) -> None:
    """`client_phone` is not in the Blueprint: the stand-in answers as if it were not there (all records)."""
    backend = standin.backend(clock)
    service_id, slots = await free_slots(backend, clock)
    await backend.create(COMPANY, booking(service_id, slots[0]))
    await backend.create(COMPANY, booking(service_id, slots[-1], phone=OTHER_PHONE, key="turn-2"))

    everyone = await standin.get(f"records/{COMPANY}")
    filtered = await standin.get(f"records/{COMPANY}", client_phone="+" + PHONE)

    assert filtered["data"] == everyone["data"]
    assert {record["client"]["phone"] for record in filtered["data"]} >= {"+" + PHONE, "+" + OTHER_PHONE}


async def test_records_are_filtered_by_client_id(standin: StandIn, clock: VirtualClock) -> None:
    backend = standin.backend(clock)
    service_id, slots = await free_slots(backend, clock)
    await backend.create(COMPANY, booking(service_id, slots[0]))
    await backend.create(COMPANY, booking(service_id, slots[-1], phone=OTHER_PHONE, key="turn-2"))
    search = {"page": 1, "page_size": 10, "fields": ["id", "phone"], "filters": [{"type": "quick_search",
              "state": {"value": PHONE}}]}  # fmt: skip
    answer = await standin.http.post(
        f"{standin.base_url}/company/{COMPANY}/clients/search", json=search, headers=standin.auth
    )
    [client] = answer.json()["data"]

    records = (await standin.get(f"records/{COMPANY}", client_id=client["id"]))["data"]

    assert client["phone"].lstrip("+") == PHONE
    assert records and {record["client"]["id"] for record in records} == {client["id"]}


# --- booking, moving, cancelling ------------------------------------------------------------------------------


async def test_the_same_slot_twice_is_slot_taken(standin: StandIn, clock: VirtualClock) -> None:
    backend = standin.backend(clock)
    service_id, slots = await free_slots(backend, clock)
    await backend.create(COMPANY, booking(service_id, slots[0]))

    with pytest.raises(SlotTaken) as taken:
        await backend.create(COMPANY, booking(service_id, slots[0], phone=OTHER_PHONE, key="turn-2"))
    assert taken.value.code == 433


@pytest.mark.parametrize(
    ("phone", "name", "error", "code"),
    [
        ("12-34", "Иван", InvalidPhone, 431),
        ("+7 (900) 12a-45-67", "Иван", InvalidPhone, 431),
        (PHONE, " ", NameRequired, 435),
    ],
)
async def test_unusable_phone_or_name_is_refused_with_its_code(
    standin: StandIn, clock: VirtualClock, phone: str, name: str, error: type[BookingError], code: int
) -> None:
    backend = standin.backend(clock)
    service_id, slots = await free_slots(backend, clock)

    with pytest.raises(error) as refused:
        await backend.create(COMPANY, booking(service_id, slots[0], phone=phone, name=name))
    assert refused.value.code == code
    assert await backend.records(COMPANY, phone=PHONE) == []


async def test_a_record_moves_to_a_free_time(standin: StandIn, clock: VirtualClock) -> None:
    backend = standin.backend(clock)
    service_id, slots = await free_slots(backend, clock)
    await backend.create(COMPANY, booking(service_id, slots[0]))
    [record] = await backend.records(COMPANY, phone=PHONE)

    await backend.reschedule(COMPANY, record, at=slots[-1].at, master_id=record.master_id)

    assert [r.at for r in await backend.records(COMPANY, phone=PHONE)] == [slots[-1].at]


async def test_a_move_without_a_required_field_is_refused(standin: StandIn, clock: VirtualClock) -> None:
    """Blueprint, PUT record: staff_id, services, client, datetime, seance_length, save_if_busy, send_sms."""
    backend = standin.backend(clock)
    service_id, slots = await free_slots(backend, clock)
    created = await backend.create(COMPANY, booking(service_id, slots[0]))
    full = {
        "staff_id": created.master_id or slots[0].master_id,
        "services": [{"id": service_id, "first_cost": 1000, "discount": 0, "cost": 1000}],
        "client": {"phone": PHONE, "name": "Иван"},
        "datetime": slots[-1].at.isoformat(),
        "seance_length": 3600,
        "save_if_busy": False,
        "send_sms": False,
    }
    url = f"{standin.base_url}/record/{COMPANY}/{created.id}"

    for field in ("seance_length", "send_sms"):
        answer = await standin.http.put(url, json={k: v for k, v in full.items() if k != field}, headers=standin.auth)
        assert 400 <= answer.status_code < 500, field
    priceless = full | {"services": [{"id": service_id}]}
    assert 400 <= (await standin.http.put(url, json=priceless, headers=standin.auth)).status_code < 500

    assert [r.at for r in await backend.records(COMPANY, phone=PHONE)] == [slots[0].at]


async def test_a_cancelled_record_leaves_the_clients_list(standin: StandIn, clock: VirtualClock) -> None:
    backend = standin.backend(clock)
    service_id, slots = await free_slots(backend, clock)
    created = await backend.create(COMPANY, booking(service_id, slots[0]))

    await backend.cancel(COMPANY, created.id)

    assert await backend.records(COMPANY, phone=PHONE) == []


async def test_a_wrong_partner_token_is_unauthorized(standin: StandIn, clock: VirtualClock) -> None:
    with pytest.raises(Unauthorized):
        await standin.backend(clock, partner="stolen").services(COMPANY)

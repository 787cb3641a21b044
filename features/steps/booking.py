"""Booking: the record the administrator made in the salon's CRM."""

from __future__ import annotations

from datetime import datetime

from harness import Runner, Setup
from pytest_bdd import given, parsers, then

from simulator.judge import Booked
from simulator.simulation import TZ

TIME_FORMAT = "%Y-%m-%d %H:%M"  # a time as the feature files write it


@then(parsers.parse("в CRM одна запись клиента {phone}"))
def one_booking(runner: Runner, phone: str, datatable: list[list[str]]) -> None:
    """The table names what the booking must be: its service, master and time, or only some of them."""
    [header, row] = datatable
    bookings = runner.bookings(phone)
    assert len(bookings) == 1, bookings
    [booking] = bookings
    seen = {
        "услуга": booking.service_title,
        "мастер": booking.master_name,
        "время": booking.start.replace(tzinfo=None).strftime(TIME_FORMAT),
    }
    booked = {column: seen[column] for column in header}
    assert booked == dict(zip(header, row, strict=True)), f"booked {booked}"


@given(parsers.parse("часы салона показывают {moment} по Москве"))
def salon_clock(setup: Setup, moment: str) -> None:
    setup.start = datetime.fromisoformat(moment).replace(tzinfo=TZ)


@given("записи салона запомнены", target_fixture="noted")
def records_noted(runner: Runner) -> list[Booked]:
    return runner.records()


@then(parsers.parse("в CRM нет записей клиента {phone}"))
def no_booking(runner: Runner, phone: str) -> None:
    assert runner.bookings(phone) == []


@then(parsers.parse("у клиента {phone} нет записи на {time}"))
def no_record_at(runner: Runner, phone: str, time: str) -> None:
    at = datetime.fromisoformat(time)
    holders = [b.phone for b in runner.records() if b.start.replace(tzinfo=None) == at]
    # The time is someone else's (else there would be nothing to refuse), and the client did not get it.
    assert holders and phone not in holders, holders


@then(parsers.parse("у клиента {phone} не осталось записей в CRM"))
def no_record(runner: Runner, phone: str) -> None:
    assert runner.records_of(phone) == []


@then(parsers.parse("запись клиента {phone} перенесена на {time}"))
def record_moved(runner: Runner, phone: str, time: str) -> None:
    [record] = runner.records_of(phone)
    assert record.start.replace(tzinfo=None) == datetime.fromisoformat(time)


@then("записи салона не изменились")
def records_unchanged(runner: Runner, noted: list[Booked]) -> None:
    assert runner.records() == noted


@then(parsers.parse('последний ответ клиенту {phone} упоминает "{text}"'))
def reply_mentions(runner: Runner, phone: str, text: str) -> None:
    assert text in runner.replies_to(phone)[-1], runner.replies_to(phone)


@then(parsers.parse("последний ответ клиенту {phone} называет услугу салона"))
def reply_names_service(runner: Runner, phone: str) -> None:
    titles = [s.title for s in runner.salon.services.values()]
    assert any(title in runner.replies_to(phone)[-1] for title in titles), runner.replies_to(phone)

"""Booking: the record the administrator made in the salon's CRM."""

from __future__ import annotations

from datetime import datetime

from harness import Runner, Setup
from pytest_bdd import given, parsers, then

from simulator.judge import Booked
from simulator.simulation import TZ


@then(parsers.parse("the CRM has one booking for {phone}"))
def one_booking(runner: Runner, phone: str, datatable: list[list[str]]) -> None:
    [(service, master, time)] = datatable[1:]
    [booking] = runner.bookings(phone)
    assert (booking.service_title, booking.master_name) == (service, master)
    assert booking.start.replace(tzinfo=None) == datetime.fromisoformat(time)


@given(parsers.parse("the salon's clock shows {moment} Moscow time"))
def salon_clock(setup: Setup, moment: str) -> None:
    setup.start = datetime.fromisoformat(moment).replace(tzinfo=TZ)


@given("the salon's records are noted", target_fixture="noted")
def records_noted(runner: Runner) -> list[Booked]:
    return runner.records()


@then(parsers.parse("the CRM has no booking for {phone}"))
def no_booking(runner: Runner, phone: str) -> None:
    assert runner.bookings(phone) == []


@then(parsers.parse("the client {phone} has no record at {time}"))
def no_record_at(runner: Runner, phone: str, time: str) -> None:
    at = datetime.fromisoformat(time)
    holders = [b.phone for b in runner.records() if b.start.replace(tzinfo=None) == at]
    # The time is someone else's (else there would be nothing to refuse), and the client did not get it.
    assert holders and phone not in holders, holders


@then(parsers.parse("the client {phone} has no record in the CRM"))
def no_record(runner: Runner, phone: str) -> None:
    assert runner.records_of(phone) == []


@then(parsers.parse("the record of {phone} is moved to {time}"))
def record_moved(runner: Runner, phone: str, time: str) -> None:
    [record] = runner.records_of(phone)
    assert record.start.replace(tzinfo=None) == datetime.fromisoformat(time)


@then("the salon's records are as noted")
def records_unchanged(runner: Runner, noted: list[Booked]) -> None:
    assert runner.records() == noted


@then(parsers.parse('the last reply to {phone} mentions "{text}"'))
def reply_mentions(runner: Runner, phone: str, text: str) -> None:
    assert text in runner.replies_to(phone)[-1], runner.replies_to(phone)


@then(parsers.parse("the last reply to {phone} names a service of the salon"))
def reply_names_service(runner: Runner, phone: str) -> None:
    titles = [s.title for s in runner.salon.services.values()]
    assert any(title in runner.replies_to(phone)[-1] for title in titles), runner.replies_to(phone)

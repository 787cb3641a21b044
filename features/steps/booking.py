"""Booking: the record the administrator made in the salon's CRM."""

from __future__ import annotations

from datetime import datetime

from harness import Runner
from pytest_bdd import parsers, then


@then(parsers.parse("the CRM has one booking for {phone}"))
def one_booking(runner: Runner, phone: str, datatable: list[list[str]]) -> None:
    [(service, master, time)] = datatable[1:]
    [booking] = runner.bookings(phone)
    assert (booking.service_title, booking.master_name) == (service, master)
    assert booking.start.replace(tzinfo=None) == datetime.fromisoformat(time)

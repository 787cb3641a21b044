"""The booking tools the LLM may call: JSON schemas, validated arguments, and actions only for the sender."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from system.booking.base import (
    AppointmentsOverlap,
    BookingBackend,
    BookingRefused,
    Master,
    MasterUnavailable,
    NewBooking,
    Record,
    Service,
    Slot,
    SlotTaken,
    Unauthorized,
)
from system.clock import Clock
from system.errors import BookingError
from system.turn.context import Dialog, Preferences, remember_service
from system.turn.dates import DateError, describe_day, parse_day, parse_local_datetime, salon_now

log = structlog.get_logger(__name__)

SLOTS_SHOWN = 8
SEARCH_DAYS_MAX = 14
ANY_MASTER = 0


@dataclass
class TurnState:
    """What the tools of one turn act on: the sender only, and the context they update."""

    company_id: int
    phone: str
    timezone: str
    batch_id: str
    dialog: Dialog
    preferences: Preferences
    bookings: list[int] = field(default_factory=list)


class ToolError(Exception):
    """A result the LLM can recover from: said back to it as {"error": ..., plus hints}."""

    def __init__(self, message: str, **hints: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hints = hints


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class NoArgs(_Args):
    pass


class SearchSlotsArgs(_Args):
    service: str = Field(min_length=1, description="Название или id услуги из каталога")
    date: str | None = Field(default=None, description="День: ГГГГ-ММ-ДД (или 'сегодня'/'завтра')")
    date_from: str | None = Field(default=None, description="Начало периода, ГГГГ-ММ-ДД")
    date_to: str | None = Field(default=None, description="Конец периода, ГГГГ-ММ-ДД")
    master: str | None = Field(default=None, description="Имя или id мастера; пусто — любой мастер")
    time_from: str | None = Field(
        default=None, description="Не раньше, ЧЧ:ММ (например, желаемое время или 17:00 для «вечером»)"
    )
    time_to: str | None = Field(default=None, description="Не позже, ЧЧ:ММ")


class CreateBookingArgs(_Args):
    service: str = Field(min_length=1, description="Название или id услуги из каталога")
    datetime: str = Field(min_length=10, description="Начало визита: ГГГГ-ММ-ДДTЧЧ:ММ по времени салона")
    master: str | None = Field(default=None, description="Имя или id мастера; пусто — любой свободный")
    client_name: str | None = Field(default=None, max_length=60, description="Имя клиента, если он его назвал")


class RecordArgs(_Args):
    record_id: int = Field(gt=0, description="id записи из list_my_bookings")


class RescheduleArgs(_Args):
    record_id: int = Field(gt=0, description="id записи из list_my_bookings")
    datetime: str = Field(min_length=10, description="Новое время: ГГГГ-ММ-ДДTЧЧ:ММ по времени салона")
    master: str | None = Field(default=None, description="Новый мастер; пусто — тот же")


class NameArgs(_Args):
    name: str = Field(min_length=1, max_length=60, description="Имя клиента")


class ScheduleArgs(_Args):
    master: str = Field(min_length=1, description="Имя или id мастера")
    date_from: str | None = Field(default=None, description="Начало периода, ГГГГ-ММ-ДД")
    date_to: str | None = Field(default=None, description="Конец периода, ГГГГ-ММ-ДД")


@dataclass(frozen=True, slots=True)
class _Tool:
    description: str
    args: type[_Args]
    run: Callable[[Any, TurnState], Awaitable[dict[str, Any]]]


class BookingTools:
    """Executes tool calls against the salon's CRM; a call never raises, errors are results."""

    def __init__(self, backend: BookingBackend, *, clock: Clock) -> None:
        self._backend = backend
        self._clock = clock
        self._schemas: list[dict[str, Any]] | None = None
        self._tools: dict[str, _Tool] = {
            "list_services": _Tool("Каталог услуг салона с ценами и длительностью.", NoArgs, self.list_services),
            "search_slots": _Tool(
                "Свободное время на услугу: на день или за период, у мастера или у любого.",
                SearchSlotsArgs,
                self.search_slots,
            ),
            "create_booking": _Tool(
                "Записать клиента на услугу на свободное время, которое подтвердил search_slots.",
                CreateBookingArgs,
                self.create_booking,
            ),
            "list_my_bookings": _Tool("Будущие записи этого клиента.", NoArgs, self.list_my_bookings),
            "cancel_booking": _Tool("Отменить запись этого клиента по её id.", RecordArgs, self.cancel_booking),
            "reschedule_booking": _Tool(
                "Перенести запись этого клиента на другое свободное время.", RescheduleArgs, self.reschedule_booking
            ),
            "save_client_name": _Tool("Запомнить, как зовут клиента.", NameArgs, self.save_client_name),
            "check_master_schedule": _Tool("Рабочие дни мастера за период.", ScheduleArgs, self.check_master_schedule),
        }

    def schemas(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI function-calling format (built once: pydantic schema generation is costly)."""
        if self._schemas is None:
            self._schemas = self._build_schemas()
        return self._schemas

    def _build_schemas(self) -> list[dict[str, Any]]:
        out = []
        for name, tool in self._tools.items():
            params = tool.args.model_json_schema()
            params.pop("title", None)
            for prop in params.get("properties", {}).values():
                prop.pop("title", None)
            out.append(
                {"type": "function", "function": {"name": name, "description": tool.description, "parameters": params}}
            )
        return out

    def problem_of(self, name: str, arguments: str) -> str | None:
        """Why a call cannot run ("unknown_tool", "invalid_arguments"), or None: for the model's quality figures."""
        parsed = self._parse(name, arguments)
        if isinstance(parsed, dict):
            return "unknown_tool" if "tools" in parsed else "invalid_arguments"
        return None

    def _parse(self, name: str, arguments: str) -> tuple[_Tool, Any] | dict[str, Any]:
        """The tool and its validated arguments, or the error result the model reads."""
        tool = self._tools.get(name)
        if tool is None:
            return {"error": f"нет такого инструмента: {name}", "tools": list(self._tools)}
        try:
            return tool, tool.args.model_validate(orjson.loads(arguments or "{}"))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            return {"error": f"неверные аргументы для {name}: {_short(exc)}"}

    async def call(self, name: str, arguments: str, state: TurnState) -> dict[str, Any]:
        parsed = self._parse(name, arguments)
        if isinstance(parsed, dict):
            return parsed
        tool, args = parsed
        try:
            return await tool.run(args, state)
        except ToolError as exc:
            return {"error": exc.message, **exc.hints}
        except DateError as exc:
            return {"error": str(exc)}
        except BookingError as exc:
            log.warning("booking_error", tool=name, error=type(exc).__name__, code=exc.code)
            if isinstance(exc, BookingRefused):  # the salon's CRM said no to this booking: the client hears why
                return {
                    "error": f"салон не принял запись: {exc.message}",
                    "refused": True,
                    "hint": "объясните клиенту причину; ту же запись повторять бесполезно, "
                    "можно предложить другое время или связаться с салоном",
                }
            if isinstance(exc, Unauthorized):  # the salon's tokens: an operator must act, the client cannot
                log.error("booking_backend_unauthorized", tool=name, code=exc.code)
                return {
                    "error": "система записи салона сейчас недоступна",
                    "hint": "извинитесь и предложите записаться позже или по телефону салона",
                }
            retry = " Попробуйте чуть позже." if exc.retryable else ""
            return {"error": f"CRM ответила ошибкой: {exc.message}.{retry}"}

    # --- tools -------------------------------------------------------------------------------------------

    async def list_services(self, _: NoArgs, state: TurnState) -> dict[str, Any]:
        services = await self._backend.services(state.company_id)
        return {"services": [_service_doc(s) for s in services]}

    async def search_slots(self, args: SearchSlotsArgs, state: TurnState) -> dict[str, Any]:
        service = await self._service(state, args.service)
        master = await self._master(state, args.master, service) if args.master else None
        days = await self._days(state, args, service, master)
        earliest, latest = _clock_time(args.time_from, time.min), _clock_time(args.time_to, time.max)
        slots: list[Slot] = []
        for day in days:
            slots.extend(s for s in await self._free(state, day, service, master) if earliest <= s.at.time() <= latest)
            if len(slots) >= SLOTS_SHOWN:
                break
        shown = slots[:SLOTS_SHOWN]
        state.dialog = replace(
            state.dialog,
            stage="choosing",
            draft={**state.dialog.draft, "service": service.title, "master": master.name if master else ""},
            offered_slots=tuple(s.at.isoformat() for s in shown),
        )
        names = await self._master_names(state)
        result: dict[str, Any] = {
            "service": service.title,
            "slots": [_slot_doc(s, names) for s in shown],
            "note": "свободного времени нет" if not shown else "",
        }
        if len(slots) >= SLOTS_SHOWN:
            result["more"] = True  # the listing is cut: a later time may be free too (create_booking checks it)
        return result

    async def create_booking(self, args: CreateBookingArgs, state: TurnState) -> dict[str, Any]:
        service = await self._service(state, args.service)
        master = await self._master(state, args.master, service) if args.master else None
        at = self._datetime(state, args.datetime)
        already = await self._already_booked(state, at, service)
        if already is not None:  # a redelivered turn or a repeated request: never book the same visit twice
            return {"booked": _record_doc(already, state.timezone), "note": "клиент уже записан на это время"}
        free = await self._free(state, at.date(), service, master)
        slot = next((s for s in free if s.at == at), None)
        if slot is None:
            raise ToolError(
                "это время занято или не существует", next_free=await self._alternatives(state, at, service, master)
            )
        name = args.client_name or state.dialog.client_name or state.preferences.name
        booking = NewBooking(
            phone=state.phone,
            client_name=name or "Клиент WhatsApp",
            service_ids=(service.id,),
            master_id=slot.master_id,
            at=slot.at,
            api_id=booking_key(state),
            comment="Запись через WhatsApp",
        )
        try:
            await self._backend.check(state.company_id, booking)
            record = await self._backend.create(state.company_id, booking)
        except BookingError as exc:
            if isinstance(exc, SlotTaken | MasterUnavailable | AppointmentsOverlap):
                raise ToolError(
                    "это время только что заняли", next_free=await self._alternatives(state, at, service, master)
                ) from exc
            raise
        state.bookings.append(record.id)
        master_name = (await self._master_names(state)).get(record.master_id, "")
        state.dialog = replace(
            state.dialog,
            stage="booked",
            draft={
                "service": service.title,
                "master": master_name,
                "date": at.date().isoformat(),
                "time": at.strftime("%H:%M"),
            },
            offered_slots=(),
        )
        prefs = remember_service(state.preferences, service.title)
        state.preferences = replace(prefs, favourite_master=master_name or prefs.favourite_master)
        log.info("booking_created", company_id=state.company_id, phone=state.phone, record_id=record.id)
        return {
            "booked": _record_doc(
                replace(record, master_name=master_name, service_titles=(service.title,)), state.timezone
            )
        }

    async def list_my_bookings(self, _: NoArgs, state: TurnState) -> dict[str, Any]:
        records = await self._own_future(state)
        return {"bookings": [_record_doc(r, state.timezone) for r in records]}

    async def cancel_booking(self, args: RecordArgs, state: TurnState) -> dict[str, Any]:
        record = await self._own(state, args.record_id)
        await self._backend.cancel(state.company_id, record.id)
        state.dialog = replace(state.dialog, stage="cancelled")
        log.info("booking_cancelled", company_id=state.company_id, phone=state.phone, record_id=record.id)
        return {"cancelled": _record_doc(record, state.timezone)}

    async def reschedule_booking(self, args: RescheduleArgs, state: TurnState) -> dict[str, Any]:
        record = await self._own(state, args.record_id)
        services = await self._backend.services(state.company_id)
        service = next((s for s in services if s.id in record.service_ids), None)
        if service is None:
            raise ToolError("не нашёл услугу этой записи в каталоге")
        master = await self._master(state, args.master, service) if args.master else None
        at = self._datetime(state, args.datetime)
        master_id = master.id if master else record.master_id
        free = await self._free(state, at.date(), service, _Master(master_id))
        slot = next((s for s in free if s.at == at), None)
        if slot is None:
            raise ToolError(
                "это время занято", next_free=await self._alternatives(state, at, service, _Master(master_id))
            )
        moved = await self._backend.reschedule(state.company_id, record, at=slot.at, master_id=master_id)
        state.dialog = replace(state.dialog, stage="rescheduled")
        log.info("booking_rescheduled", company_id=state.company_id, phone=state.phone, record_id=record.id)
        return {"rescheduled": _record_doc(moved, state.timezone)}

    async def save_client_name(self, args: NameArgs, state: TurnState) -> dict[str, Any]:
        name = " ".join(args.name.split()).title()
        if not any(ch.isalpha() for ch in name):
            raise ToolError("это не похоже на имя")
        state.dialog = replace(state.dialog, client_name=name)
        state.preferences = replace(state.preferences, name=name)
        return {"saved": name}

    async def check_master_schedule(self, args: ScheduleArgs, state: TurnState) -> dict[str, Any]:
        master = await self._master(state, args.master, None)
        today = salon_now(self._clock, state.timezone).date()
        start = parse_day(args.date_from, today=today) if args.date_from else today
        end = parse_day(args.date_to, today=today) if args.date_to else start + timedelta(days=6)
        end = min(end, start + timedelta(days=SEARCH_DAYS_MAX))
        days = await self._backend.dates(state.company_id, service_ids=(), master_id=master.id, start=start, end=end)
        return {"master": master.name, "working_days": [describe_day(d) for d in days]}

    # --- helpers -----------------------------------------------------------------------------------------

    async def _service(self, state: TurnState, wanted: str) -> Service:
        services = await self._backend.services(state.company_id)
        found = match_service(services, wanted)
        if found is None:
            raise ToolError(
                f"в салоне нет услуги «{wanted}»; не придумывайте услуги",
                available=[s.title for s in services],
            )
        return found

    async def _master(self, state: TurnState, wanted: str | None, service: Service | None) -> Master:
        masters = await self._backend.masters(state.company_id, service_ids=(service.id,) if service else ())
        found = match_master(masters, wanted or "")
        if found is None:
            raise ToolError(f"нет мастера «{wanted}» для этой услуги", masters=[m.name for m in masters])
        return found

    async def _master_names(self, state: TurnState) -> dict[int, str]:
        return {m.id: m.name for m in await self._backend.masters(state.company_id)}

    def _datetime(self, state: TurnState, text: str) -> datetime:
        now = salon_now(self._clock, state.timezone)
        at = parse_local_datetime(text, tz=state.timezone, today=now.date())
        if at <= now:
            raise ToolError("это время уже прошло")
        return at

    async def _days(
        self, state: TurnState, args: SearchSlotsArgs, service: Service, master: Master | None
    ) -> list[date]:
        today = salon_now(self._clock, state.timezone).date()
        if args.date:
            return [parse_day(args.date, today=today)]
        start = parse_day(args.date_from, today=today) if args.date_from else today
        end = parse_day(args.date_to, today=today) if args.date_to else start + timedelta(days=6)
        end = min(end, start + timedelta(days=SEARCH_DAYS_MAX))
        return await self._backend.dates(
            state.company_id, service_ids=(service.id,), master_id=master.id if master else None, start=start, end=end
        )

    async def _free(self, state: TurnState, day: date, service: Service, master: Master | _Master | None) -> list[Slot]:
        now = salon_now(self._clock, state.timezone)
        slots = await self._backend.times(
            state.company_id, master_id=master.id if master else None, day=day, service_ids=(service.id,)
        )
        return [s for s in slots if s.at > now]

    async def _alternatives(
        self, state: TurnState, at: datetime, service: Service, master: Master | _Master | None
    ) -> list[dict[str, str]]:
        """The next free slots after `at`: the rest of that day, then the following days."""
        names = await self._master_names(state)
        found: list[Slot] = []
        for offset in range(SEARCH_DAYS_MAX):
            day = at.date() + timedelta(days=offset)
            found.extend(s for s in await self._free(state, day, service, master) if s.at > at)
            if len(found) >= 3:
                break
        state.dialog = replace(state.dialog, offered_slots=tuple(s.at.isoformat() for s in found[:SLOTS_SHOWN]))
        return [_slot_doc(s, names) for s in found[:5]]

    async def _own_future(self, state: TurnState) -> list[Record]:
        now = salon_now(self._clock, state.timezone)
        records = await self._backend.records(state.company_id, phone=state.phone)
        return [r for r in records if r.phone == state.phone and not r.cancelled and r.at > now]

    async def _own(self, state: TurnState, record_id: int) -> Record:
        record = next((r for r in await self._own_future(state) if r.id == record_id), None)
        if record is None:  # someone else's, past, cancelled or made up: the answer is the same
            raise ToolError("среди ваших будущих записей такой нет; посмотрите list_my_bookings")
        return record

    async def _already_booked(self, state: TurnState, at: datetime, service: Service) -> Record | None:
        """This client's active booking at that time: made by this turn before a crash, or asked for twice."""
        records = await self._backend.records(state.company_id, phone=state.phone)
        key = booking_key(state)
        return next(
            (r for r in records if r.at == at and not r.cancelled and (service.id in r.service_ids or r.made_for(key))),
            None,
        )


@dataclass(frozen=True, slots=True)
class _Master:
    """A master known only by id (rescheduling with the same master)."""

    id: int


def _clock_time(text: str | None, default: time) -> time:
    if not text:
        return default
    match = re.fullmatch(r"(\d{1,2})[:.](\d{2})", text.strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ToolError(f"не понимаю время {text!r}: нужен формат ЧЧ:ММ")
    return time(int(match[1]), int(match[2]))


def _norm(text: str) -> str:
    return " ".join(text.casefold().replace("ё", "е").split())


def match_service(services: list[Service], wanted: str) -> Service | None:
    """By id, by exact title, or by a title containing every word stem of `wanted`."""
    key = _norm(wanted)
    for s in services:
        if key == str(s.id) or key == _norm(s.title):
            return s
    stems = [w[: max(4, len(w) - 2)] for w in key.split() if len(w) > 2]
    candidates = [s for s in services if stems and all(st in _norm(s.title) for st in stems)]
    return candidates[0] if len(candidates) == 1 else None


def match_master(masters: list[Master], wanted: str) -> Master | None:
    """By id, exact name, or the stem of a name in any grammatical case ("Сергею" → "Сергей")."""
    key = _norm(wanted)
    if not key:
        return None
    for m in masters:
        if key == str(m.id) or key == _norm(m.name):
            return m
    stem = key.split()[0][: max(3, len(key.split()[0]) - 2)]
    candidates = [m for m in masters if _norm(m.name).startswith(stem)]
    return candidates[0] if len(candidates) == 1 else None


def _service_doc(s: Service) -> dict[str, Any]:
    price = f"{s.price_min:g}" if s.price_min == s.price_max else f"{s.price_min:g}–{s.price_max:g}"
    return {"id": s.id, "title": s.title, "price_rub": price, "duration_min": s.duration_min}


def _slot_doc(s: Slot, names: dict[int, str]) -> dict[str, str]:
    return {
        "datetime": s.at.strftime("%Y-%m-%dT%H:%M"),
        "day": describe_day(s.at.date()),
        "time": s.at.strftime("%H:%M"),
        "master": names.get(s.master_id, "любой мастер"),
    }


def booking_key(state: TurnState) -> str:
    """The idempotency key of the turn's next booking: a redelivered turn books under the same keys again."""
    return f"{state.batch_id}#{len(state.bookings) + 1}"


def _record_doc(r: Record, tz: str) -> dict[str, Any]:
    at = r.at.astimezone(ZoneInfo(tz))
    return {
        "record_id": r.id,
        "datetime": at.strftime("%Y-%m-%dT%H:%M"),
        "day": describe_day(at.date()),
        "time": at.strftime("%H:%M"),
        "master": r.master_name,
        "services": list(r.service_titles),
    }


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'аргументы'}: {e['msg']}" for e in exc.errors())
    return str(exc)

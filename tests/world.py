"""The outside world of worker tests over respx: a scripted LLM, a small YClients salon, WhatsApp Cloud API.

Each speaks its vendor's wire format, so the worker's real httpx clients are what is tested, and each passes its
vendor's contract suite under `tests/contracts/`. The YClients part follows the API Blueprint: documented routes
and parameters only, an undocumented query parameter ignored. The WhatsApp part is the simulator's fake Cloud API
(any `vNN.N` version, Meta's bearer check and error objects) with this world's bookkeeping and scripted errors.
The LLM part answers what the test scripted, checked against the request as OpenAI documents: the bearer key,
and `tool_choice` (a script that calls a tool where `none` was asked is answered in words; one that does not call
where `required` or a named function was asked calls the forced function with no arguments).
"""

from __future__ import annotations

import inspect
import itertools
import os
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import respx

from simulator.clock import VirtualClock
from simulator.whatsapp import FakeCloudApi, MetaError, Outbox, WhatsAppFaults

LLM_URL = "http://llm.test/v1"
LLM_API_KEY = "sk-test"
YCLIENTS_URL = "http://yclients.test/api/v1"
WHATSAPP_URL = "http://graph.test"  # without the version: the settings' version is appended, and any is served
WHATSAPP_TOKEN = "wa-token"
PHONE_NUMBER_ID = "106540352242922"
PARTNER_TOKEN = "partner"
USER_TOKEN = "user"
FALLBACK_TEXT = "Чем могу помочь?"  # what the LLM says when the test scripted nothing
TZ = ZoneInfo("Europe/Moscow")

SERVICES = [
    {"id": 1, "title": "Стрижка машинкой", "price_min": 800, "price_max": 800, "seance_length": 1800},
    {"id": 2, "title": "Мужская стрижка", "price_min": 1500, "price_max": 1800, "seance_length": 3600},
    {"id": 3, "title": "Оформление бороды", "price_min": 700, "price_max": 700, "seance_length": 1800},
]
STAFF = [
    {"id": 10, "name": "Сергей", "specialization": "барбер"},
    {"id": 11, "name": "Алексей", "specialization": "барбер"},
]
OPEN_HOURS = range(10, 21)
PHONE_DIGITS = range(9, 16)  # Blueprint: "Телефон должен содержать от 9 до 15 цифр"
PUT_REQUIRED = ("staff_id", "services", "client", "datetime", "seance_length", "save_if_busy", "send_sms")

LLMAnswer = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]] | httpx.Response


def world_env() -> dict[str, str]:
    """Settings that point the worker's clients at this world."""
    return {
        "llm_base_url": LLM_URL,
        "llm_api_key": LLM_API_KEY,
        "llm_max_retries": "1",
        "yclients_base_url": YCLIENTS_URL,
        "yclients_partner_token": PARTNER_TOKEN,
        "yclients_user_token": USER_TOKEN,
        "whatsapp_api_url": WHATSAPP_URL,
        "whatsapp_token": WHATSAPP_TOKEN,
        "whatsapp_phone_number_id": PHONE_NUMBER_ID,
        "whatsapp_max_retries": "2",
        "whatsapp_recipient_gap_ms": "0",
    }


def say(text: str) -> dict[str, Any]:
    """An LLM answer with text."""
    return _completion({"role": "assistant", "content": text}, "stop")


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    """An LLM answer calling one tool."""
    tool_call = {
        "id": f"call_{tool}",
        "type": "function",
        "function": {"name": tool, "arguments": orjson.dumps(arguments).decode()},
    }
    return _completion({"role": "assistant", "content": None, "tool_calls": [tool_call]}, "tool_calls")


USAGE = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}  # what every scripted answer reports


def _completion(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1764064800,  # a fixed Unix time: scripted answers are compared whole
        "model": "deepseek-chat",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": dict(USAGE),
    }


class World:
    """respx routes for the LLM, YClients and WhatsApp, with what each received."""

    def __init__(self, *, journal: Path | None = None) -> None:
        """`journal`: a file where sends and bookings are appended, so that a world outlives a killed process."""
        self.journal = journal
        self.router = respx.MockRouter(assert_all_called=False)
        self.llm_answers: deque[LLMAnswer] = deque()
        self.llm_requests: list[dict[str, Any]] = []
        self.sent: list[tuple[str, str]] = []  # (to, text)
        self.read_receipts: list[str] = []
        self.whatsapp_errors: deque[tuple[int, int]] = deque()  # (http status, Meta error code) of the next sends
        self.whatsapp = FakeCloudApi(
            token=WHATSAPP_TOKEN,
            clock=VirtualClock(start_ms=0),  # the world keeps no time: what was sent is read from `sent`
            rng=random.Random(0),
            faults=WhatsAppFaults(),
            outbox=Outbox(max_kept=1000),
        )
        self.records: dict[int, dict[str, Any]] = {}
        self.clients: dict[str, int] = {}  # phone digits -> client id
        self.busy: set[datetime] = set()  # taken by other clients
        self.book_posts = 0
        self._ids = itertools.count(1000)
        self._wamids = itertools.count(1)
        self._routes()
        if journal is not None and journal.exists():
            self._replay(journal)

    def _replay(self, journal: Path) -> None:
        for line in journal.read_text().splitlines():
            event = orjson.loads(line)
            if event["kind"] == "sent":
                self.sent.append((event["to"], event["text"]))
            elif event["kind"] == "record":
                record = event["record"]
                self.records[record["id"]] = record
                self.clients[_digits(record["client"]["phone"])] = record["client"]["id"]
                self._ids = itertools.count(record["id"] + 1)

    def _log(self, **event: Any) -> None:
        if self.journal is not None:
            with self.journal.open("ab") as f:
                f.write(orjson.dumps(event) + b"\n")
                f.flush()
                os.fsync(f.fileno())

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.router.async_handler))

    def add_record(self, *, phone: str, at: datetime, staff_id: int = 10, service_id: int = 1) -> int:
        record_id = next(self._ids)
        client = self._client(phone)
        self.records[record_id] = _record(
            record_id, client=client, phone=phone, at=at, staff_id=staff_id, service_id=service_id
        )
        return record_id

    def _client(self, phone: str) -> int:
        """The client id of a phone, added with the first booking, as YClients does."""
        return self.clients.setdefault(_digits(phone), 500 + len(self.clients) + 1)

    # --- routes ------------------------------------------------------------------------------------------

    def _routes(self) -> None:
        r = self.router
        r.post(f"{LLM_URL}/chat/completions").mock(side_effect=self._llm)
        r.post(url__regex=rf"{WHATSAPP_URL}/[^/]+/[^/]+/messages").mock(side_effect=self._whatsapp)
        public, private = self._public, self._private
        r.get(url__regex=rf"{YCLIENTS_URL}/book_services/\d+").mock(
            side_effect=public(lambda _: _ok({"services": SERVICES, "category": []}))
        )
        r.get(url__regex=rf"{YCLIENTS_URL}/book_staff/\d+").mock(
            side_effect=public(lambda _: _ok([{**s, "bookable": True} for s in STAFF]))
        )
        r.get(url__regex=rf"{YCLIENTS_URL}/book_dates/\d+").mock(side_effect=public(self._dates))
        r.get(url__regex=rf"{YCLIENTS_URL}/book_times/\d+/(?P<staff>\d+)/(?P<day>[\d-]+)").mock(
            side_effect=public(self._times)
        )
        r.post(url__regex=rf"{YCLIENTS_URL}/book_check/\d+").mock(side_effect=public(self._check))
        r.post(url__regex=rf"{YCLIENTS_URL}/book_record/\d+").mock(side_effect=public(self._book))
        r.post(url__regex=rf"{YCLIENTS_URL}/company/\d+/clients/search").mock(side_effect=private(self._search_clients))
        r.get(url__regex=rf"{YCLIENTS_URL}/records/\d+").mock(side_effect=private(self._records))
        r.delete(url__regex=rf"{YCLIENTS_URL}/record/\d+/(?P<record>\d+)").mock(side_effect=private(self._delete))
        r.put(url__regex=rf"{YCLIENTS_URL}/record/\d+/(?P<record>\d+)").mock(side_effect=private(self._put))

    @staticmethod
    def _public(handler: Callable[..., httpx.Response]) -> Callable[..., httpx.Response]:
        """The public booking API: the partner token, a user token optional (and then right)."""
        return _gated(handler, allowed={f"Bearer {PARTNER_TOKEN}", f"Bearer {PARTNER_TOKEN}, User {USER_TOKEN}"})

    @staticmethod
    def _private(handler: Callable[..., httpx.Response]) -> Callable[..., httpx.Response]:
        """Records and clients: the partner and the user token."""
        return _gated(handler, allowed={f"Bearer {PARTNER_TOKEN}, User {USER_TOKEN}"})

    async def _llm(self, request: httpx.Request) -> httpx.Response:
        refused = _llm_unauthorized(request.headers.get("authorization"))
        if refused is not None:
            return refused
        body = orjson.loads(request.content)
        self.llm_requests.append(body)
        answer = self.llm_answers.popleft() if self.llm_answers else say(FALLBACK_TEXT)
        if isinstance(answer, httpx.Response):
            return answer
        if callable(answer):
            result = answer(body)
            answer = await result if inspect.isawaitable(result) else result
        return httpx.Response(200, json=_as_chosen(answer, body))

    def _whatsapp(self, request: httpx.Request) -> httpx.Response:
        version, phone_number_id = request.url.path.split("/")[1:3]
        body = orjson.loads(request.content)
        if self.whatsapp_errors and isinstance(body, dict) and body.get("status") != "read":
            status, code = self.whatsapp_errors.popleft()
            return httpx.Response(status, json=MetaError(code).body(fbtrace_id="AWorldScriptedError"))
        status, answer = self.whatsapp.handle(
            version=version,
            phone_number_id=phone_number_id,
            authorization=request.headers.get("authorization"),
            body=request.content,
        )
        if status == 200 and answer.get("success") is True:
            self.read_receipts.append(body["message_id"])
        elif status == 200:
            # The fake's wamids are opaque; the world's count up, so that a test can name the part it sent.
            answer["messages"][0]["id"] = f"wamid.out{next(self._wamids)}"
            to = str(body["to"] if "to" in body else body["recipient"])  # Meta: `to` wins over `recipient`
            self.sent.append((to, body["text"]["body"]))
            self._log(kind="sent", to=to, text=body["text"]["body"])
        return httpx.Response(status, json=answer)

    def _free(self, staff_id: int, day: date) -> list[datetime]:
        taken = {datetime.fromisoformat(r["datetime"]) for r in self.records.values() if r["staff_id"] == staff_id}
        slots = [datetime.combine(day, time(h), TZ) for h in OPEN_HOURS]
        return [s for s in slots if s not in taken and s not in self.busy]

    def _dates(self, request: httpx.Request) -> httpx.Response:
        """Every day of the month of `date` (Blueprint: a day "в рамках месяца"); without it, this month."""
        given = request.url.params.get("date")
        start = (date.fromisoformat(given) if given else date.today()).replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days)]
        return _ok({"booking_dates": days, "working_dates": days})

    def _times(self, request: httpx.Request, staff: str, day: str) -> httpx.Response:
        staff_ids = [int(staff)] if staff != "0" else [s["id"] for s in STAFF]
        free = sorted({at for sid in staff_ids for at in self._free(sid, date.fromisoformat(day))})
        return _ok([{"time": at.strftime("%H:%M"), "seance_length": 3600, "datetime": at.isoformat()} for at in free])

    def _appointment(self, request: httpx.Request) -> tuple[int, datetime]:
        """(master, time); master 0 ("any") becomes the first master free then."""
        appointment = orjson.loads(request.content)["appointments"][0]
        staff_id, at = int(appointment["staff_id"]), datetime.fromisoformat(appointment["datetime"])
        if staff_id == 0:
            staff_id = next((s["id"] for s in STAFF if at in self._free(s["id"], at.date())), STAFF[0]["id"])
        return staff_id, at

    def _check(self, request: httpx.Request) -> httpx.Response:
        staff_id, at = self._appointment(request)
        if at not in self._free(staff_id, at.date()):
            return _error(433, "Выбранное время уже занято")
        return httpx.Response(201, json={"success": True, "data": None, "meta": []})

    def _book(self, request: httpx.Request) -> httpx.Response:
        self.book_posts += 1
        body = orjson.loads(request.content)
        phone = str(body.get("phone", ""))
        if len(_digits(phone)) not in PHONE_DIGITS or not re.fullmatch(r"\+?[\d\s()-]+", phone.strip()):
            return _error(431, "Номер телефона пользователя в неправильном формате")
        if not str(body.get("fullname", "")).strip():
            return _error(435, "Не указано имя клиента")
        staff_id, at = self._appointment(request)
        if at not in self._free(staff_id, at.date()):
            return _error(433, "Выбранное время уже занято")
        record_id = next(self._ids)
        self.records[record_id] = _record(
            record_id,
            client=self._client(phone),
            phone=_digits(phone),
            at=at,
            staff_id=staff_id,
            service_id=body["appointments"][0]["services"][0],
            api_id=str(body.get("api_id", "")),
            name=str(body["fullname"]),
        )
        self._log(kind="record", record=self.records[record_id])
        return httpx.Response(201, json={"success": True, "data": [{"id": 1, "record_id": record_id}], "meta": []})

    def _search_clients(self, request: httpx.Request) -> httpx.Response:
        """The client search with `quick_search` (a part of the phone); other filters are not served here."""
        body = orjson.loads(request.content or b"{}")
        filters = body.get("filters") or []
        if any(f.get("type") != "quick_search" for f in filters):
            return _error(None, "Недопустимое значение фильтра", status=400)
        wanted = [_digits(str(f.get("state", {}).get("value", ""))) for f in filters]
        found = [(p, i) for p, i in sorted(self.clients.items(), key=lambda c: c[1]) if all(w in p for w in wanted)]
        page, size = int(body.get("page", 1)), min(int(body.get("page_size", 25)), 200)
        shown = found[(page - 1) * size : page * size]
        rows = [{"id": i, "name": "Клиент", "phone": "+" + p} for p, i in shown]
        fields = body.get("fields") or ["id"]
        return _ok([{k: v for k, v in row.items() if k in fields} for row in rows], meta={"total_count": len(found)})

    def _records(self, request: httpx.Request) -> httpx.Response:
        """GET records with the Blueprint's client_id, start_date, end_date, page and count; others ignored."""
        params = request.url.params
        client_id = int(params.get("client_id", 0))
        start = date.fromisoformat(params["start_date"]) if "start_date" in params else date.min
        end = date.fromisoformat(params["end_date"]) if "end_date" in params else date.max
        found = [
            r
            for r in sorted(self.records.values(), key=lambda r: (r["datetime"], r["id"]))
            if client_id in (0, r["client"]["id"]) and start <= datetime.fromisoformat(r["datetime"]).date() <= end
        ]
        page, count = int(params.get("page", 1)), int(params.get("count", 300))
        return _ok(found[(page - 1) * count : page * count], meta={"page": page, "total_count": len(found)})

    def _delete(self, request: httpx.Request, record: str) -> httpx.Response:
        self.records.pop(int(record), None)
        return httpx.Response(204)

    def _put(self, request: httpx.Request, record: str) -> httpx.Response:
        body = orjson.loads(request.content)
        missing = [field for field in PUT_REQUIRED if field not in body]
        missing += [f"services.{s.get('id')}.cost" for s in body.get("services") or [] if "cost" not in s]
        if missing:
            return _error(None, "Не указаны обязательные поля: " + ", ".join(missing))
        if int(record) not in self.records:
            return _error(None, "Запись не найдена", status=404)
        current = self.records[int(record)]
        current["datetime"] = datetime.fromisoformat(body["datetime"]).isoformat()
        current["staff_id"] = int(body.get("staff_id", current["staff_id"]))
        return _ok(current)


def _llm_unauthorized(authorization: str | None) -> httpx.Response | None:
    """None for the right bearer key; otherwise OpenAI's 401 `invalid_api_key` (only the key's start shown)."""
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and given == LLM_API_KEY:
        return None
    message, code = "You didn't provide an API key.", None
    if scheme.lower() == "bearer" and given:
        message, code = f"Incorrect API key provided: {given[:3]}****.", "invalid_api_key"
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return httpx.Response(401, json={"error": error})


def _as_chosen(answer: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The scripted answer kept to the request's `tool_choice`, as OpenAI's reference defines it."""
    choice = request.get("tool_choice", "auto")
    calls = answer["choices"][0]["message"].get("tool_calls")
    if choice == "none" and calls:
        return say(FALLBACK_TEXT)
    offered = [t["function"]["name"] for t in request.get("tools") or ()]
    forced = choice["function"]["name"] if isinstance(choice, dict) else None
    if forced is None and choice == "required" and not calls and offered:
        forced = offered[0]
    if forced is not None and not any(c["function"]["name"] == forced for c in calls or ()):
        return call(forced)
    return answer


def _gated(handler: Callable[..., httpx.Response], *, allowed: set[str]) -> Callable[..., httpx.Response]:
    def gated(request: httpx.Request, **path: str) -> httpx.Response:
        if request.headers.get("authorization", "") not in allowed:
            return _error(None, "Партнёрский или пользовательский токен неверен", status=401)
        return handler(request, **path)

    return gated


def _digits(phone: str) -> str:
    return "".join(char for char in phone if char.isdigit())


def _record(
    record_id: int,
    *,
    client: int,
    phone: str,
    at: datetime,
    staff_id: int,
    service_id: int,
    api_id: str = "",
    name: str = "Клиент",
) -> dict[str, Any]:
    service = next(s for s in SERVICES if s["id"] == service_id)
    staff = next(s for s in STAFF if s["id"] == staff_id)
    return {
        "id": record_id,
        "staff_id": staff_id,
        "staff": {"id": staff_id, "name": staff["name"]},
        "services": [{"id": service_id, "title": service["title"], "cost": service["price_min"]}],
        "datetime": at.isoformat(),
        "seance_length": service["seance_length"],
        "client": {"id": client, "phone": "+" + _digits(phone), "name": name},
        "api_id": api_id,
        "deleted": False,
    }


def _ok(data: Any, *, meta: Any = None) -> httpx.Response:
    return httpx.Response(200, json={"success": True, "data": data, "meta": meta if meta is not None else []})


def _error(code: int | None, message: str, *, status: int = 422) -> httpx.Response:
    """An error in the Blueprint's envelope; the code, whose place the Blueprint leaves open, as a top-level field."""
    body: dict[str, Any] = {"success": False, "data": None, "meta": {"message": message}}
    if code is not None:
        body["code"] = code
    return httpx.Response(status, json=body)

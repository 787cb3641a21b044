"""The fake WhatsApp Cloud API: accepts the system's sends as Meta does, records them, and fails on demand.

`POST /{version}/{phone_number_id}/messages` (any `vNN.N`) with `Authorization: Bearer <token>` takes a text
message or a read receipt with a typing indicator. A message names its recipient by phone in `to`, or by
business-scoped user id (BSUID, `US.13491208655302741918`) in `recipient`; `to` wins when both are given, and
the answer's contact carries `wa_id` for a phone, `user_id` for a BSUID. Errors come as Meta's JSON `{"error":
{"message", "type", "code", "error_subcode"?, "error_data"?, "fbtrace_id"}}`. HTTP statuses follow Meta's
error-code table: 401 for 190 (a wrong token; no token at all is the Graph API's 2500, HTTP 400), 400 for
parameter errors and for the throughput and per-recipient limits (130429, 131056), 403 for policy blocks, 500
for 131000 and 131057, 503 for 131016. Some providers in front of Meta answer throttling with 429; the system's
sender reads `error.code` first, so either status classifies the same.

Meta reports some failures only later: a message to a client whose 24-hour window is closed, or who cannot
receive it, is accepted (200 and a `wamid`) and then fails in a `failed` status webhook with `errors[]`
(131047, 131026). The fake marks such a message with its `failure` code; `status_error` is the error object
of that webhook, and `simulator.delivery.WebhookDelivery.deliver_outcome` posts it.

`GET /_sim/messages?after=N&to=PHONE&wait_ms=MS` is not Meta's: it lets a load test see what its clients received.
It lists the accepted messages numbered after N (1-based, in order of acceptance), optionally to one recipient,
and long-polls up to `wait_ms` when there are none yet.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import itertools
import random
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from system.clock import Clock, wait_event

MAX_TEXT_CHARS = 4096
MAX_KEPT = 100_000  # records an Outbox keeps; a simulation run sends far fewer, a load test may not
PER_RECIPIENT_KEPT = 1000  # messages to one recipient the inspection index keeps (a client gets a few per visit)
MAX_LISTED = 1000  # messages one inspection answer lists; a caller pages on with `after`
MAX_WAIT_MS = 30_000  # longest long poll of the inspection route
_VERSION = re.compile(r"v\d{1,2}\.\d{1,2}")
_PHONE_NUMBER_ID = re.compile(r"\d{1,20}")
_RECIPIENT = re.compile(r"\+?(\d{8,15})")  # Meta takes the number with or without "+"; it answers with digits
# A business-scoped user id: ISO country code, ".", an alphanumeric id; a parent BSUID has "ENT." in between.
BSUID_SHAPE = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}")
_ERROR_CODES_HREF = "/documentation/business-messaging/whatsapp/support/error-codes"

# Meta's code → (HTTP status, type, message) for the errors this fake can produce.
_ERRORS: dict[int, tuple[int, str, str]] = {
    100: (400, "OAuthException", "(#100) Invalid parameter"),
    190: (401, "OAuthException", "Invalid OAuth access token - Cannot parse access token"),
    2500: (400, "OAuthException", "An active access token must be used to query information about the current user."),
    130429: (400, "OAuthException", "(#130429) Rate limit hit"),
    131056: (400, "OAuthException", "(#131056) (Business Account, Consumer Account) pair rate limit hit"),
    131047: (400, "OAuthException", "(#131047) Re-engagement message"),
    131026: (400, "OAuthException", "(#131026) Message undeliverable"),
    131000: (500, "OAuthException", "(#131000) Something went wrong"),
    131016: (503, "OAuthException", "(#131016) Service unavailable"),
    131057: (500, "OAuthException", "(#131057) Account in maintenance mode"),
    131048: (400, "OAuthException", "(#131048) Spam rate limit hit"),
    131049: (
        400,
        "OAuthException",
        "(#131049) This message was not delivered to maintain healthy ecosystem engagement.",
    ),
    131021: (400, "OAuthException", "(#131021) Recipient cannot be sender"),
    131062: (400, "OAuthException", "(#131062) Business-scoped User ID recipients are not supported for this message"),
    133010: (400, "OAuthException", "(#133010) Account not registered"),
    368: (403, "OAuthException", "(#368) Temporarily blocked for policies violations"),
}
_DETAILS: dict[int, str] = {
    130429: "Cloud API message throughput has been reached.",
    131056: "Message failed to send because there were too many messages sent from this phone number to the same "
    "phone number in a short period of time.",
    131047: "Message failed to send because more than 24 hours have passed since the customer last replied to "
    "this number.",
    131026: "Message failed to send because the recipient cannot receive it.",
    131000: "Message failed to send because of an unknown error.",
    131016: "A service is temporarily unavailable.",
    131057: "Business Account is in maintenance mode",
    131048: "Message failed to send because there are restrictions on how many messages can be sent from this "
    "phone number. This may be because too many previous messages were blocked or flagged as spam.",
}
# Meta's titles of the failures it reports in `failed` status webhooks rather than in the send's answer.
_STATUS_TITLES: dict[int, str] = {
    131047: "Re-engagement message",
    131026: "Message undeliverable",
}

RequestKind = Literal["message", "read"]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One text message the fake accepted, as the client will see it."""

    wamid: str
    phone_number_id: str
    to: str  # digits, as Meta's `wa_id`, or the business-scoped user id it was sent to
    text: str
    at_ms: int
    failure: int | None = None  # the code Meta reports later in a `failed` status webhook; None: it is delivered


@dataclass(frozen=True, slots=True)
class ReadReceipt:
    """A read receipt for an inbound message; `typing` when it also asked for the typing indicator."""

    message_id: str
    typing: bool
    at_ms: int
    phone_number_id: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the fake answered with an error (after authentication and validation too)."""

    code: int
    http_status: int
    kind: RequestKind | None  # None when the request never got far enough to tell
    to: str | None
    at_ms: int


class Outbox:
    """Everything the fake accepted and refused, in order; what the simulator's judges read."""

    def __init__(self, *, max_kept: int = MAX_KEPT) -> None:
        self.messages: deque[OutboundMessage] = deque(maxlen=max_kept)
        self.receipts: deque[ReadReceipt] = deque(maxlen=max_kept)
        self.refusals: deque[Refusal] = deque(maxlen=max_kept)
        self._count = 0
        self._max_kept = max_kept
        # Recipient → (number, message), so a long poll per client does not scan every message; bounded in both
        # directions (recipients in insertion order, the oldest dropped first).
        self._by_recipient: dict[str, deque[tuple[int, OutboundMessage]]] = {}

    @property
    def count(self) -> int:
        """Messages accepted since the start, including any no longer kept."""
        return self._count

    def messages_to(self, phone: str) -> list[OutboundMessage]:
        digits = phone.removeprefix("+")
        return [m for m in self.messages if m.to == digits]

    def texts_to(self, phone: str) -> list[str]:
        return [m.text for m in self.messages_to(phone)]

    def refused(self, code: int) -> list[Refusal]:
        return [r for r in self.refusals if r.code == code]

    def record_message(self, message: OutboundMessage) -> None:
        self.messages.append(message)
        self._count += 1
        kept = self._by_recipient.get(message.to)
        if kept is None:
            if len(self._by_recipient) >= self._max_kept:
                del self._by_recipient[next(iter(self._by_recipient))]
            kept = self._by_recipient[message.to] = deque(maxlen=PER_RECIPIENT_KEPT)
        kept.append((self._count, message))

    def since(self, after: int, *, to: str | None = None, limit: int = MAX_LISTED) -> list[tuple[int, OutboundMessage]]:
        """(number, message) of the kept messages numbered after `after` (1-based), oldest first; `to` filters."""
        if to is not None:
            kept = self._by_recipient.get(to.removeprefix("+"), ())
            return list(itertools.islice(((n, m) for n, m in kept if n > after), limit))
        first = self._count - len(self.messages) + 1  # the number of the oldest message still kept
        start = max(0, after + 1 - first)
        return [(first + i, m) for i, m in enumerate(itertools.islice(self.messages, start, start + limit), start)]

    def record_receipt(self, receipt: ReadReceipt) -> None:
        self.receipts.append(receipt)

    def record_refusal(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)


@dataclass
class WhatsAppFaults:
    """Errors the fake injects: probabilities per accepted-looking request, drawn from the seeded RNG.

    `throughput_p` (130429) and `server_error_p` (131000, HTTP 500) apply to messages and read receipts;
    `pair_rate_p` (131056) to messages only. Messages to `window_closed` (131047) and `unreachable` (131026) are
    accepted, as Meta accepts them, and fail later in a `failed` status webhook. Messages to `outside_window`
    are refused at once with 131047: Meta documents that an error may come synchronously, asynchronously or
    both, and some scenarios test the synchronous path.
    """

    throughput_p: float = 0.0
    pair_rate_p: float = 0.0
    server_error_p: float = 0.0
    outside_window: set[str] = field(default_factory=set)
    window_closed: set[str] = field(default_factory=set)
    unreachable: set[str] = field(default_factory=set)
    _pending: dict[str, deque[int]] = field(
        default_factory=lambda: {"message": deque(), "read": deque()}, init=False, repr=False
    )

    def __post_init__(self) -> None:
        probabilities = (self.throughput_p, self.pair_rate_p, self.server_error_p)
        if any(not 0.0 <= p <= 1.0 for p in probabilities) or sum(probabilities) > 1.0:
            raise ValueError(f"fault probabilities must be in [0, 1] and sum to at most 1, got {probabilities}")

    def fail_next(self, code: int, *, times: int = 1, kind: RequestKind = "message") -> None:
        """Answer the next `times` valid requests of `kind` with Meta's error `code` (any code; unknown ones: 400)."""
        self._pending[kind].extend([code] * times)

    def later_failure(self, to: str) -> int | None:
        """The code of the `failed` status webhook a message to `to` will get, if any."""
        if to in self.window_closed:
            return 131047
        if to in self.unreachable:
            return 131026
        return None

    def take_pending(self, kind: RequestKind) -> int | None:
        pending = self._pending[kind]
        return pending.popleft() if pending else None

    def draw(self, u: float, kind: RequestKind) -> int | None:
        """The error for a uniform draw `u`, or None; one draw per request keeps runs reproducible."""
        for code, p in ((131000, self.server_error_p), (130429, self.throughput_p), (131056, self.pair_rate_p)):
            if code == 131056 and kind != "message":
                return None
            if u < p:
                return code
            u -= p
        return None


class MetaError(Exception):
    """An error answer in Meta's shape."""

    def __init__(
        self, code: int, message: str | None = None, *, details: str | None = None, subcode: int | None = None
    ) -> None:
        status, kind, default = _ERRORS.get(code, (400, "OAuthException", f"(#{code}) Error"))
        super().__init__(message or default)
        self.code = code
        self.http_status = status
        self.type = kind
        self.message = message or default
        self.details = details if details is not None else _DETAILS.get(code)
        self.subcode = subcode

    def body(self, fbtrace_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.details:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        error["fbtrace_id"] = fbtrace_id
        return {"error": error}


def status_error(code: int) -> dict[str, Any]:
    """One entry of a `failed` status webhook's `errors[]`, shaped as Meta's webhook reference shows it."""
    message = _ERRORS.get(code, (400, "", f"(#{code}) Error"))[2]
    title = _STATUS_TITLES.get(code) or message.partition(") ")[2] or message
    error: dict[str, Any] = {"code": code, "title": title, "message": title}
    details = _DETAILS.get(code)
    if details:
        error["error_data"] = {"details": details}
    error["href"] = _ERROR_CODES_HREF
    return error


def _param_error(message: str, *, subcode: int | None = None) -> MetaError:
    return MetaError(100, f"(#100) {message}", details=message, subcode=subcode)


class FakeCloudApi:
    """The framework-free core: one request in (path parts, header, raw body), (status, JSON) out."""

    def __init__(self, *, token: str, clock: Clock, rng: random.Random, faults: WhatsAppFaults, outbox: Outbox) -> None:
        self._token = token
        self._clock = clock
        self.faults = faults
        self.outbox = outbox
        # Separate streams, so that an injected fault never shifts the wamids (or the reverse).
        self._ids = random.Random(rng.getrandbits(64))
        self._draws = random.Random(rng.getrandbits(64))
        self._traces = random.Random(rng.getrandbits(64))
        self._sent = 0

    def handle(
        self, *, version: str, phone_number_id: str, authorization: str | None, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        kind: RequestKind | None = None
        to: str | None = None
        try:
            self._authenticate(authorization)
            _check_path(version, phone_number_id)
            payload = _json_object(body)
            kind = "read" if "status" in payload else "message"
            if kind == "read":
                message_id, typing = _read_receipt(payload)
                self._fail_if_faulty(kind, to=None)
                receipt = ReadReceipt(message_id, typing, self._clock.now_ms(), phone_number_id)
                self.outbox.record_receipt(receipt)
                return 200, {"success": True}
            to_input, to, by_user_id, text = _text_message(payload)
            self._fail_if_faulty(kind, to=to)
            return 200, self._accept(
                phone_number_id=phone_number_id, to_input=to_input, to=to, by_user_id=by_user_id, text=text
            )
        except MetaError as exc:
            self.outbox.record_refusal(Refusal(exc.code, exc.http_status, kind, to, self._clock.now_ms()))
            return exc.http_status, exc.body(self._trace_id())

    def _authenticate(self, authorization: str | None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if not given.strip() or scheme.lower() != "bearer":
            # The Graph API answers a request without a token with 2500 and HTTP 400, not with 190.
            raise MetaError(2500)
        if not hmac.compare_digest(given.strip().encode(), self._token.encode()):
            raise MetaError(190)

    def _fail_if_faulty(self, kind: RequestKind, *, to: str | None) -> None:
        drawn = self.faults.draw(self._draws.random(), kind)  # drawn always: one draw per valid request
        code = self.faults.take_pending(kind)
        if code is None and kind == "message" and to in self.faults.outside_window:
            code = 131047
        if code is None:
            code = drawn
        if code is not None:
            raise MetaError(code)

    def _accept(self, *, phone_number_id: str, to_input: str, to: str, by_user_id: bool, text: str) -> dict[str, Any]:
        self._sent += 1
        wamid = _wamid(to, self._sent, self._ids.getrandbits(64))
        failure = self.faults.later_failure(to)
        self.outbox.record_message(OutboundMessage(wamid, phone_number_id, to, text, self._clock.now_ms(), failure))
        # Meta names the contact by the identifier the message was sent to: `wa_id` for a phone, `user_id` for a BSUID.
        contact = {"input": to_input, "user_id" if by_user_id else "wa_id": to}
        return {"messaging_product": "whatsapp", "contacts": [contact], "messages": [{"id": wamid}]}

    def _trace_id(self) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        return "".join(self._traces.choice(alphabet) for _ in range(27))


class Arrivals:
    """Wakes the inspection route's long polls: one for a recipient on that recipient's messages only, one for
    any recipient on every message.

    Waking every poll on every message cost the load runs a core: a thousand clients each long-poll for their own
    reply, and each wake re-arms two tasks.
    """

    def __init__(self) -> None:
        self._any = asyncio.Event()
        self._to: dict[str, tuple[asyncio.Event, int]] = {}  # recipient → (its event, polls waiting on it)

    @property
    def waiting(self) -> int:
        """Recipients with a poll waiting: bounded by the polls, not by the recipients ever seen."""
        return len(self._to)

    def notify(self, to: str) -> None:
        self._any.set()
        self._any = asyncio.Event()  # the woken waiters hold the old one; the next wait is for the next message
        waiting = self._to.pop(to, None)
        if waiting is not None:
            waiting[0].set()

    async def wait(self, clock: Clock, *, to: str | None, timeout_s: float) -> bool:
        if to is None:
            return await wait_event(clock, self._any, timeout_s=timeout_s)
        event, polls = self._to.get(to, (asyncio.Event(), 0))
        self._to[to] = (event, polls + 1)
        try:
            return await wait_event(clock, event, timeout_s=timeout_s)
        finally:
            current = self._to.get(to)
            if current is not None and current[0] is event:  # not yet woken: this poll no longer waits on it
                if current[1] <= 1:
                    del self._to[to]
                else:
                    self._to[to] = (event, current[1] - 1)


def _listed(seq: int, m: OutboundMessage) -> dict[str, Any]:
    """One message as the inspection route lists it; `at_ms` is when the fake accepted it, on its clock."""
    return {
        "seq": seq,
        "wamid": m.wamid,
        "phone_number_id": m.phone_number_id,
        "to": m.to,
        "text": m.text,
        "at_ms": m.at_ms,
    }


def _wamid(to: str, counter: int, salt: int) -> str:
    raw = f"{to}:{counter:010d}:{salt:016X}".encode()
    return "wamid." + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _check_path(version: str, phone_number_id: str) -> None:
    if not _VERSION.fullmatch(version):
        raise _param_error(f"Unknown path components: /{version}")
    if not _PHONE_NUMBER_ID.fullmatch(phone_number_id):
        raise _param_error(
            f"Unsupported post request. Object with ID '{phone_number_id}' does not exist, cannot be loaded due "
            "to missing permissions, or does not support this operation.",
            subcode=33,
        )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _param_error("The request body must be valid JSON") from None
    if not isinstance(payload, dict):
        raise _param_error("The request body must be a JSON object")
    product = payload.get("messaging_product")
    if product is None:
        raise _param_error("The parameter messaging_product is required.")
    if product != "whatsapp":
        raise _param_error("Param messaging_product must be 'whatsapp'")
    return payload


def _read_receipt(payload: dict[str, Any]) -> tuple[str, bool]:
    if payload.get("status") != "read":
        raise _param_error("Param status must be 'read'")
    message_id = payload.get("message_id")
    if not isinstance(message_id, str) or not message_id.strip():
        raise _param_error("The parameter message_id is required.")
    indicator = payload.get("typing_indicator")
    if indicator is not None and (not isinstance(indicator, dict) or indicator.get("type") != "text"):
        raise _param_error("Param typing_indicator['type'] must be 'text'")
    return message_id, indicator is not None


def _recipient(payload: dict[str, Any]) -> tuple[str, str, bool]:
    """(the recipient as given, as recorded, whether it is a BSUID): `to` (a phone) wins over `recipient` (a BSUID)."""
    to_input = payload.get("to")
    if to_input is not None:
        match = _RECIPIENT.fullmatch(to_input) if isinstance(to_input, str) else None
        if match is None:
            raise _param_error("Param to must be a phone number of 8 to 15 digits, with or without a leading '+'")
        return to_input, match.group(1), False
    user_id = payload.get("recipient")
    if user_id is None:
        raise _param_error("The parameter to is required.")
    if not isinstance(user_id, str) or BSUID_SHAPE.fullmatch(user_id) is None:
        raise _param_error("Param recipient must be a business-scoped user ID such as US.13491208655302741918")
    return user_id, user_id, True


def _text_message(payload: dict[str, Any]) -> tuple[str, str, bool, str]:
    """(the recipient as given, as recorded, whether it is a BSUID, the body) of a valid text message."""
    to_input, to, by_user_id = _recipient(payload)
    recipient_type = payload.get("recipient_type", "individual")
    if recipient_type != "individual":
        raise _param_error("Param recipient_type must be 'individual'")
    kind = payload.get("type", "text")  # Meta: an omitted type means text
    if kind != "text":
        raise _param_error(f"Param type {kind!r} is not supported by this API; expected 'text'")
    text = payload.get("text")
    if not isinstance(text, dict):
        raise _param_error("The parameter text is required.")
    body = text.get("body")
    if not isinstance(body, str) or not body.strip():
        raise _param_error("Param text['body'] is required and must be a non-empty string")
    if len(body) > MAX_TEXT_CHARS:
        raise _param_error(f"Param text['body'] must be at most {MAX_TEXT_CHARS} characters long")
    preview = text.get("preview_url", False)
    if not isinstance(preview, bool):
        raise _param_error("Param text['preview_url'] must be a boolean")
    return to_input, to, by_user_id, body


def create_app(
    *,
    token: str,
    clock: Clock,
    rng: random.Random,
    faults: WhatsAppFaults | None = None,
    outbox: Outbox | None = None,
) -> FastAPI:
    """The fake Cloud API; `app.state.api` is its core, with `.outbox` and `.faults`."""
    api = FakeCloudApi(token=token, clock=clock, rng=rng, faults=faults or WhatsAppFaults(), outbox=outbox or Outbox())
    app = FastAPI(title="Fake WhatsApp Cloud API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = api
    arrivals = Arrivals()

    @app.post("/{version}/{phone_number_id}/messages")
    async def messages(version: str, phone_number_id: str, request: Request) -> Response:
        before = api.outbox.count
        status, body = api.handle(
            version=version,
            phone_number_id=phone_number_id,
            authorization=request.headers.get("authorization"),
            body=await request.body(),
        )
        if api.outbox.count != before:
            arrivals.notify(api.outbox.messages[-1].to)
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    @app.get("/_sim/messages")
    async def sent_messages(
        after: int = Query(0, ge=0),
        to: str | None = Query(None, pattern=f"^(?:{_RECIPIENT.pattern}|{BSUID_SHAPE.pattern})$"),
        wait_ms: int = Query(0, ge=0, le=MAX_WAIT_MS),
        limit: int = Query(MAX_LISTED, ge=1, le=MAX_LISTED),
    ) -> Response:
        deadline_ms = clock.now_ms() + wait_ms
        while True:
            found = api.outbox.since(after, to=to, limit=limit)
            left_ms = deadline_ms - clock.now_ms()
            if found or left_ms <= 0:
                break
            await arrivals.wait(clock, to=None if to is None else to.removeprefix("+"), timeout_s=left_ms / 1000)
        body = {"messages": [_listed(n, m) for n, m in found], "last_seq": api.outbox.count}
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(orjson.dumps({"status": "ok"}), media_type="application/json")

    return app

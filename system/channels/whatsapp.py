"""Outbound WhatsApp: the Cloud API and gateway senders, their typed errors, and the splitting of long replies."""

from __future__ import annotations

import math
import random
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import httpx
import structlog

from system.clock import Clock
from system.errors import SendError, SettingsError
from system.phones import is_business_scoped_user_id, mask_phone
from system.retry import RetryPolicy, retrying
from system.settings import Settings

log = structlog.get_logger(__name__)

MAX_TEXT_CHARS = 4096  # Cloud API limit of one text body
RECIPIENT_BACKOFF_BASE_S = 6.0  # Meta: about one message per 6 s to one recipient, sustained
_MAX_TRACKED_RECIPIENTS = 10_000  # pacing memory beyond the recipients inside their gap; the oldest go first
# A sentence ends at whitespace after . ! ? … or at a line break; the cut goes before that whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s|\n")
_WHITESPACE = re.compile(r"\s")
# A Graph API URL that already names its version (the old form of AIADMIN_WHATSAPP_API_URL).
_VERSIONED_URL = re.compile(r"/v\d{1,2}\.\d{1,2}$")
# A phone number id is one path segment of the URL: blank or path-changing ids would POST elsewhere.
_PATH_SEGMENT = re.compile(r"[^/?#\s]+")


class ThroughputLimited(SendError):
    """130429: the sending number's throughput limit; back off and retry."""

    retryable = True


class RecipientThrottled(SendError):
    """131056: too many messages to one recipient; back off longer, for this recipient only."""

    retryable = True


class TransientSendError(SendError):
    """131000, 131016, 131057, 2, 5xx, timeouts and transport errors: retry."""

    retryable = True


class OutsideWindow(SendError):
    """131047: more than 24 h since the client's last message; only a template can be sent now."""


class Undeliverable(SendError):
    """131026: the recipient cannot receive the message (no WhatsApp, old app, blocked)."""


class TokenExpired(SendError):
    """190 or 0 (or HTTP 401): the access token is expired or invalid; a human must renew it."""


class AccountRestricted(SendError):
    """The business account or number may not send now (policy block, lock, payment, permission, spam limit).

    Every send from the number fails the same way until a human acts, so it is logged at ERROR.
    """


class SendRejected(SendError):
    """Any other refusal: a bad request, an unsupported message, an unknown code."""


# Meta's error codes (WhatsApp Cloud API "Error codes" reference) by what a retry can do about them.
# A code not listed here is classified by its HTTP status: 429 and 5xx retry, anything else is refused.
_BY_CODE: dict[int, type[SendError]] = {
    # Throughput: back off and retry.
    130429: ThroughputLimited,  # Cloud API message throughput reached
    4: ThroughputLimited,  # application request limit
    80007: ThroughputLimited,  # WhatsApp Business Account rate limit
    131056: RecipientThrottled,  # (business, consumer) pair rate limit
    # Passing trouble on Meta's side: retry.
    131000: TransientSendError,  # something went wrong
    131016: TransientSendError,  # service unavailable
    131057: TransientSendError,  # business account in maintenance mode (a throughput upgrade): it ends by itself
    2: TransientSendError,  # API service: temporary downtime or overload
    # The recipient: nothing a retry changes.
    131047: OutsideWindow,  # re-engagement message: the 24-hour customer service window is closed
    131026: Undeliverable,  # message undeliverable
    131021: SendRejected,  # recipient cannot be the sender
    131050: SendRejected,  # the user stopped marketing messages
    131062: SendRejected,  # a business-scoped user id cannot receive this kind of message
    130472: SendRejected,  # the user's number is part of an experiment
    # The request: retrying the same body fails the same way.
    100: SendRejected,  # invalid parameter
    131008: SendRejected,  # required parameter missing
    131009: SendRejected,  # parameter value not valid
    131051: SendRejected,  # unsupported message type
    131052: SendRejected,  # media download error
    131053: SendRejected,  # media upload error
    33: SendRejected,  # the business phone number id does not exist (deleted)
    # The token.
    190: TokenExpired,  # access token expired or invalid
    0: TokenExpired,  # AuthException: the app user could not be authenticated
    # The business account or number: a human must act; retrying only adds to the quality signal.
    131048: AccountRestricted,  # spam rate limit: too many of the number's messages were blocked or reported
    131049: AccountRestricted,  # Meta chose not to deliver, for ecosystem health: do not retry at once
    368: AccountRestricted,  # temporarily blocked for policy violations
    131031: AccountRestricted,  # business account locked
    131042: AccountRestricted,  # business eligibility: payment issue
    131045: AccountRestricted,  # incorrect certificate (the number's display name)
    131037: AccountRestricted,  # the number needs display name approval
    130497: AccountRestricted,  # messaging users in this country is restricted
    133010: AccountRestricted,  # the phone number is not registered on the Cloud API
    3: AccountRestricted,  # API method: capability or permissions issue
    10: AccountRestricted,  # permission denied
    131005: AccountRestricted,  # access denied
}
_PERMISSION_CODES = range(200, 300)  # Graph API permission errors (#200-#299)


def classify(code: int | None, *, http_status: int) -> type[SendError]:
    """The error type of a Cloud API refusal: by Meta's `error.code` first, then by the HTTP status."""
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if code is not None and code in _PERMISSION_CODES:
        return AccountRestricted
    if http_status == httpx.codes.UNAUTHORIZED:
        return TokenExpired
    return _by_status(http_status)


def cloud_api_base(api_url: str, api_version: str) -> str:
    """`{api_url}/{api_version}`, or `api_url` as is when it already ends with a version (the old setting form)."""
    url = api_url.rstrip("/")
    if _VERSIONED_URL.search(url):
        log.warning(
            "whatsapp_api_url_has_version",
            api_url=url,
            ignored_version=api_version,
            hint="set AIADMIN_WHATSAPP_API_URL without the version and AIADMIN_WHATSAPP_API_VERSION instead",
        )
        return url
    return f"{url}/{api_version}"


def recipient_fields(to: str) -> dict[str, str]:
    """How a message names its recipient: `to` for a phone, `recipient` for a business-scoped user id (Meta's BSUID)."""
    return {"recipient": to} if is_business_scoped_user_id(to) else {"to": to}


def split_text(text: str, *, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """Chunks of at most `limit` characters, cut at sentence ends, else at whitespace, else hard.

    Whitespace at the cuts and at both ends is dropped; every other character is kept, in order.
    A blank text gives no chunks.
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    chunks: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = _cut_at(rest, limit=limit)
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        chunks.append(rest)
    return chunks


def _cut_at(text: str, *, limit: int) -> int:
    """Where to end the first chunk of `text` (which starts with a non-space and is longer than `limit`)."""
    # One character past the limit: a boundary right after a full chunk still counts.
    window = text[: limit + 1]
    for pattern in (_SENTENCE_END, _WHITESPACE):
        cut = max((m.start() for m in pattern.finditer(window)), default=0)
        if cut > 0:
            return cut
    return limit


# Called after each part of a reply went out: (the part's index in the whole reply, its message id).
PartSent = Callable[[int, str], Awaitable[None]]


class Sender(Protocol):
    """Sends replies to one client over WhatsApp."""

    async def mark_read(self, *, phone_number_id: str, message_id: str) -> None:
        """Mark an inbound message read and show typing; failures are logged, never raised."""
        ...

    async def send_text(
        self, *, phone_number_id: str, to: str, text: str, first_part: int = 0, on_sent: PartSent | None = None
    ) -> list[str]:
        """Send `text` (split when long) to `to`, from part `first_part` on; the ids of the parts sent, in order.

        `to` is the client's phone or, for a username user without one, their business-scoped user id;
        `phone_number_id` is the business number the reply goes out from (a permanent SendError when blank).

        `on_sent` is awaited after each part, before the next one goes out, so a caller can record
        how far a reply got and resume it from the first unsent part.
        """
        ...


async def _send_parts(
    chunks: list[str],
    send: Callable[[str], Awaitable[str]],
    *,
    first_part: int,
    on_sent: PartSent | None,
) -> list[str]:
    """Send `chunks[first_part:]` one after another; each waits for the previous one, so they arrive in order."""
    ids: list[str] = []
    for index in range(first_part, len(chunks)):
        message_id = await send(chunks[index])
        ids.append(message_id)
        if on_sent is not None:
            await on_sent(index, message_id)
    return ids


class CloudApiSender:
    """The WhatsApp Cloud API: one POST per chunk, paced per recipient, retried only where Meta allows it."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_url: str,
        token: str,
        clock: Clock,
        rng: random.Random,
        retry: RetryPolicy,
        recipient_gap_ms: int = 1000,
        timeout_s: float = 15,
    ) -> None:
        self._http = http
        self._api_url = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._clock = clock
        self._rng = rng
        self._retry = retry
        self._pacer = _Pacer(clock, gap_ms=recipient_gap_ms)
        self._timeout_s = timeout_s

    @classmethod
    def from_settings(
        cls, settings: Settings, *, http: httpx.AsyncClient, clock: Clock, rng: random.Random
    ) -> CloudApiSender:
        """The sender the settings describe; SettingsError naming the variables when it could never reply."""
        if settings.whatsapp_token is None:
            raise SettingsError("AIADMIN_WHATSAPP_TOKEN must be set when AIADMIN_WHATSAPP_TRANSPORT=cloud")
        _check_sending_numbers(settings)
        return cls(
            http,
            api_url=cloud_api_base(settings.whatsapp_api_url, settings.whatsapp_api_version),
            token=settings.whatsapp_token.get_secret_value(),
            clock=clock,
            rng=rng,
            retry=RetryPolicy(retries=settings.whatsapp_max_retries),
            recipient_gap_ms=settings.whatsapp_recipient_gap_ms,
            timeout_s=settings.whatsapp_timeout_s,
        )

    async def mark_read(self, *, phone_number_id: str, message_id: str) -> None:
        payload = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
            "typing_indicator": {"type": "text"},
        }
        try:
            await self._post(phone_number_id, payload)
        except Exception as exc:  # a read receipt is cosmetic: it must never fail the turn
            _log_failure(exc, what="whatsapp_mark_read_failed", phone_number_id=phone_number_id)

    async def send_text(
        self, *, phone_number_id: str, to: str, text: str, first_part: int = 0, on_sent: PartSent | None = None
    ) -> list[str]:
        _require_number(phone_number_id)  # before any pacing wait: no number, no send, whatever the text
        send = partial(self._send_chunk, phone_number_id=phone_number_id, to=to)
        return await _send_parts(_chunks_to_send(text, to=to), send, first_part=first_part, on_sent=on_sent)

    async def _send_chunk(self, text: str, *, phone_number_id: str, to: str) -> str:
        payload = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            **recipient_fields(to),
            "type": "text",
            "text": {"body": text, "preview_url": False},
        }

        async def attempt() -> str:
            try:
                return _wamid(await self._post(phone_number_id, payload))
            except SendError as exc:
                _log_failure(exc, what="whatsapp_send_failed", phone_number_id=phone_number_id, to=to)
                raise

        # Paced once per message: retries are spaced by the backoff, and a refused attempt delivered nothing.
        await self._pacer.wait((phone_number_id, to))
        message_id = await self._retrying(attempt)
        self._pacer.sent((phone_number_id, to))
        _log_sent(message_id=message_id, to=to, text=text, phone_number_id=phone_number_id)
        return message_id

    async def _post(self, phone_number_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        _require_number(phone_number_id)
        url = f"{self._api_url}/{phone_number_id}/messages"
        response = await _post(self._http, url, payload=payload, headers=self._headers, timeout_s=self._timeout_s)
        if response.is_success:
            return _json_object(response)
        raise _cloud_error(response)

    async def _retrying(self, call: Callable[[], Awaitable[str]]) -> str:
        hints = _RetryHints(max_s=self._retry.max_s)
        return await retrying(
            call, policy=self._retry, retryable=hints, clock=self._clock, rng=self._rng, what="whatsapp_send"
        )


class GatewaySender:
    """A Baileys/venom-style bridge: POST {base_url}/send {phone, message}; any 2xx is success."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        clock: Clock,
        rng: random.Random,
        retry: RetryPolicy,
        timeout_s: float = 15,
    ) -> None:
        self._http = http
        self._url = f"{base_url.rstrip('/')}/send"
        self._clock = clock
        self._rng = rng
        self._retry = retry
        self._timeout_s = timeout_s

    @classmethod
    def from_settings(
        cls, settings: Settings, *, http: httpx.AsyncClient, clock: Clock, rng: random.Random
    ) -> GatewaySender:
        if settings.whatsapp_gateway_url is None:
            raise SettingsError("AIADMIN_WHATSAPP_GATEWAY_URL must be set when AIADMIN_WHATSAPP_TRANSPORT=gateway")
        return cls(
            http,
            base_url=settings.whatsapp_gateway_url,
            clock=clock,
            rng=rng,
            retry=RetryPolicy(retries=settings.whatsapp_max_retries),
            timeout_s=settings.whatsapp_timeout_s,
        )

    async def mark_read(self, *, phone_number_id: str, message_id: str) -> None:
        """Bridges have no read receipts to send: nothing to do."""

    async def send_text(
        self, *, phone_number_id: str, to: str, text: str, first_part: int = 0, on_sent: PartSent | None = None
    ) -> list[str]:
        send = partial(self._send_chunk, to=to)
        return await _send_parts(_chunks_to_send(text, to=to), send, first_part=first_part, on_sent=on_sent)

    async def _send_chunk(self, text: str, *, to: str) -> str:
        payload = {"phone": to, "message": text}

        async def attempt() -> str:
            response = await _post(self._http, self._url, payload=payload, headers={}, timeout_s=self._timeout_s)
            if response.is_success:
                return self._message_id(response)
            exc = _gateway_error(response)
            _log_failure(exc, what="whatsapp_send_failed", to=to)
            raise exc

        hints = _RetryHints(max_s=self._retry.max_s)
        message_id = await retrying(
            attempt, policy=self._retry, retryable=hints, clock=self._clock, rng=self._rng, what="gateway_send"
        )
        _log_sent(message_id=message_id, to=to, text=text)
        return message_id

    def _message_id(self, response: httpx.Response) -> str:
        answer = _json_object(response)
        for key in ("id", "messageId"):
            value = answer.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return str(value)
        return f"gw-out-{self._rng.randrange(10**12)}"


def build_sender(settings: Settings, *, http: httpx.AsyncClient, clock: Clock, rng: random.Random) -> Sender:
    """The sender of `settings.whatsapp_transport`; SettingsError naming the variable when its setting is missing."""
    if settings.whatsapp_transport == "gateway":
        return GatewaySender.from_settings(settings, http=http, clock=clock, rng=rng)
    return CloudApiSender.from_settings(settings, http=http, clock=clock, rng=rng)


class _Pacer:
    """Keeps the sends to one recipient at least `gap_ms` apart on the clock."""

    def __init__(self, clock: Clock, *, gap_ms: int, capacity: int = _MAX_TRACKED_RECIPIENTS) -> None:
        self._clock = clock
        self._gap_ms = gap_ms
        self._capacity = capacity
        self._next_ms: OrderedDict[tuple[str, str], int] = OrderedDict()

    async def wait(self, key: tuple[str, str]) -> None:
        now = self._clock.now_ms()
        at = max(now, self._next_ms.get(key, now))
        # Reserved before sleeping, so concurrent sends to one recipient queue up instead of all waking together.
        self._reserve(key, at + self._gap_ms)
        if at > now:
            await self._clock.sleep((at - now) / 1000)

    def sent(self, key: tuple[str, str]) -> None:
        """A message went out now (perhaps after retries): the next one waits a full gap from here."""
        self._reserve(key, max(self._next_ms.get(key, 0), self._clock.now_ms() + self._gap_ms))

    def _reserve(self, key: tuple[str, str], next_ms: int) -> None:
        self._next_ms[key] = next_ms
        self._next_ms.move_to_end(key)
        # A recipient whose gap has passed paces nothing: forget it, oldest reservations first.
        now = self._clock.now_ms()
        while self._next_ms:
            oldest, oldest_next_ms = next(iter(self._next_ms.items()))
            if oldest_next_ms > now and len(self._next_ms) <= self._capacity:
                break
            del self._next_ms[oldest]

    def __len__(self) -> int:
        return len(self._next_ms)


class _RetryHints:
    """The `retryable` of one send: Retry-After when given; a longer, growing floor while the recipient is throttled."""

    def __init__(self, *, max_s: float) -> None:
        self._max_s = max_s
        self._throttled = 0

    def __call__(self, exc: BaseException) -> float | None:
        if not isinstance(exc, SendError) or not exc.retryable:
            return None
        hint = min(exc.retry_after_s or 0.0, self._max_s)
        if isinstance(exc, RecipientThrottled):
            self._throttled += 1
            hint = max(hint, min(self._max_s, RECIPIENT_BACKOFF_BASE_S * 2 ** (self._throttled - 1)))
        return hint


async def _post(
    http: httpx.AsyncClient, url: str, *, payload: dict[str, Any], headers: dict[str, str], timeout_s: float
) -> httpx.Response:
    try:
        return await http.post(url, json=payload, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException as exc:
        raise TransientSendError(f"no answer within {timeout_s} s") from exc
    except httpx.RequestError as exc:
        raise TransientSendError(f"transport error: {type(exc).__name__}") from exc


def _cloud_error(response: httpx.Response) -> SendError:
    """Meta's error by `error.code` first, then by the HTTP status."""
    detail = _json_object(response).get("error")
    detail = detail if isinstance(detail, dict) else {}
    raw_code = detail.get("code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    status = response.status_code
    kind = classify(code, http_status=status)
    message = str(detail.get("message") or f"the Cloud API answered HTTP {status}")
    return kind(message, code=code, retry_after_s=_retry_after_s(response))


def _require_number(phone_number_id: str) -> None:
    if not _PATH_SEGMENT.fullmatch(phone_number_id):
        # Never POST to `{base}//messages`: Meta answers that with a confusing error, and no retry can help.
        raise SendRejected(
            f"no usable sending phone number id ({phone_number_id!r}): the reply has no number to go out from; "
            "set the tenant's phone_number_id or AIADMIN_WHATSAPP_PHONE_NUMBER_ID"
        )


def _check_sending_numbers(settings: Settings) -> None:
    """Refuse a configuration in which some salon's messages could never be answered over the Cloud API.

    A reply goes out from the number the client wrote to (the inbound `metadata.phone_number_id`), else from
    the tenant's `phone_number_id`, else from AIADMIN_WHATSAPP_PHONE_NUMBER_ID. A tenant listed in
    AIADMIN_TENANTS without a number receives no Meta webhooks (they are routed by number), only gateway-format
    messages, which name no number: with neither fallback set, nothing it receives can be answered.
    """
    if settings.whatsapp_phone_number_id is not None:
        return
    if settings.tenants_file is None:
        # The default salon answers Meta webhooks from the number they came to; a gateway-format message names
        # no number and is refused at send time (a permanent error, so it goes to the dead letters).
        log.warning(
            "whatsapp_gateway_messages_unanswerable",
            reason="AIADMIN_WHATSAPP_PHONE_NUMBER_ID is unset: only Meta webhook messages can be answered",
        )
        return
    silent = [t for t in settings.tenants if t.phone_number_id is None]
    if silent:
        names = ", ".join(f"{t.name!r} (company {t.company_id})" for t in silent)
        raise SettingsError(
            "AIADMIN_WHATSAPP_PHONE_NUMBER_ID must be set, or every tenant in AIADMIN_TENANTS must name its "
            f"phone_number_id, when AIADMIN_WHATSAPP_TRANSPORT=cloud: {names} could never be answered"
        )


def _gateway_error(response: httpx.Response) -> SendError:
    answer = _json_object(response)
    reason = answer.get("error") or answer.get("message")
    status = response.status_code
    message = reason if isinstance(reason, str) and reason else f"the gateway answered HTTP {status}"
    return _by_status(status)(message, retry_after_s=_retry_after_s(response))


def _by_status(status: int) -> type[SendError]:
    if status == httpx.codes.TOO_MANY_REQUESTS:
        return ThroughputLimited
    if status >= httpx.codes.INTERNAL_SERVER_ERROR:
        return TransientSendError
    return SendRejected


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds; the HTTP-date form is ignored (the backoff applies instead)."""
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _wamid(answer: dict[str, Any]) -> str:
    messages = answer.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        message_id = messages[0].get("id")
        if isinstance(message_id, str) and message_id:
            return message_id
    # Not retried: the message may well have gone out, and a retry would send it twice.
    raise SendRejected("the Cloud API answered success without a message id")


def _chunks_to_send(text: str, *, to: str) -> list[str]:
    chunks = split_text(text)
    if not chunks:
        log.warning("whatsapp_blank_text_not_sent", to=mask_phone(to))
    return chunks


def _log_sent(*, message_id: str, to: str, text: str, phone_number_id: str | None = None) -> None:
    log.info(
        "whatsapp_sent", message_id=message_id, to=mask_phone(to), phone_number_id=phone_number_id, chars=len(text)
    )
    log.debug("whatsapp_sent_text", message_id=message_id, to=mask_phone(to), text=text)


def _log_failure(exc: Exception, *, what: str, phone_number_id: str | None = None, to: str | None = None) -> None:
    fields: dict[str, Any] = {
        "error": type(exc).__name__,
        "code": getattr(exc, "code", None),
        "detail": getattr(exc, "message", None),
        "phone_number_id": phone_number_id,
    }
    if to is not None:
        fields["to"] = mask_phone(to)
    if isinstance(exc, TokenExpired):
        # Every send fails until a human renews the token: say so loudly.
        log.error("whatsapp_token_expired", **fields)
    elif isinstance(exc, AccountRestricted):
        # Every send from the number fails until a human acts in WhatsApp Manager or Business Manager.
        log.error("whatsapp_account_restricted", **fields)
    else:
        log.warning(what, retryable=getattr(exc, "retryable", False), **fields)

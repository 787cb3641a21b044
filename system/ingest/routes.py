"""The HTTP API: thin FastAPI routes over the ingest core, stats and health checks."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect

from system.errors import PayloadError
from system.ingest import signatures
from system.ingest.core import IngestReport
from system.ingest.payloads import ParseResult, parse_gateway, parse_meta
from system.runtime import Runtime

log = structlog.get_logger(__name__)

GATEWAY_ROUTE = "/webhook/whatsapp/batched"
META_ROUTE = "/webhook/whatsapp"
RETRY_AFTER_S = "5"
JSON_MEDIA_TYPE = "application/json"
# A gateway request may sign `X-Timestamp` (unix seconds) with its body; it is refused outside this window.
SIGNED_TIMESTAMP_WINDOW_S = 300


class HTTPProblem(Exception):
    """An answer other than success, with a JSON body naming the problem."""

    def __init__(self, status_code: int, code: str, message: str, *, errors: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.body: dict[str, Any] = {"error": code, "message": message, "errors": errors or []}


def json_response(body: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers)


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw body, refusing anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPProblem(413, "body_too_large", f"body is larger than {limit} bytes")
    # Straight from the ASGI channel: Starlette's body() goes through an async generator per request,
    # which costs more than the webhook's own parsing.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, "body_too_large", f"body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_content_type(request: Request) -> None:
    """Only JSON bodies are webhook bodies; a missing Content-Type is refused too (Meta always sends one)."""
    value = request.headers.get("content-type")
    media_type = (value or "").partition(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        problem = f"must be {JSON_MEDIA_TYPE}" + (f", not {media_type!r}" if media_type else "; it is missing")
        raise HTTPProblem(
            415,
            "unsupported_media_type",
            f"the body must be JSON (Content-Type: {JSON_MEDIA_TYPE})",
            errors=[{"field": "Content-Type", "problem": problem}],
        )


def verify_signature(
    raw: bytes, request: Request, secret: str, *, header: str, timestamped: bool, now_ms: int
) -> int | None:
    """Check the body's signature; with `timestamped`, an `X-Timestamp` header is signed as `<ts>.<body>`.

    Returns the signed timestamp in ms (None when the request had none). A signed timestamp outside
    `SIGNED_TIMESTAMP_WINDOW_S` of now is refused: an old request cannot be replayed after the window.
    """
    given = request.headers.get(header)
    stamp = request.headers.get("x-timestamp") if timestamped else None
    signed = raw if stamp is None else stamp.strip().encode() + b"." + raw
    try:
        signatures.verify(signed, given, secret, header=header)
    except signatures.SignatureError as exc:
        raise HTTPProblem(exc.status_code, "bad_signature", exc.message) from exc
    if stamp is None:
        return None
    stamp = stamp.strip()
    if not stamp.isdigit() or len(stamp) > 12:
        raise HTTPProblem(
            400,
            "bad_timestamp",
            "X-Timestamp must be unix seconds",
            errors=[{"field": "X-Timestamp", "problem": stamp}],
        )
    signed_ms = int(stamp) * 1000
    if abs(now_ms - signed_ms) > SIGNED_TIMESTAMP_WINDOW_S * 1000:
        raise HTTPProblem(
            403,
            "stale_timestamp",
            f"X-Timestamp is more than {SIGNED_TIMESTAMP_WINDOW_S} s away from now",
            errors=[{"field": "X-Timestamp", "problem": f"outside the {SIGNED_TIMESTAMP_WINDOW_S} s window"}],
        )
    return signed_ms


def create_app(rt: Runtime) -> FastAPI:
    """The API of one process over the given runtime."""
    settings = rt.settings
    app = FastAPI(title="AI Admin", version="0.1.0", docs_url=None, redoc_url=None)

    @app.exception_handler(HTTPProblem)
    async def _problem(_: Request, exc: HTTPProblem) -> Response:
        return json_response(exc.body, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        return json_response({"error": "invalid_request", "message": "invalid request", "errors": errors}, 422)

    @app.exception_handler(RedisError)
    async def _redis_down(_: Request, exc: RedisError) -> Response:
        log.error("redis_unavailable", error=str(exc))
        body = {"error": "unavailable", "message": "storage is unavailable, retry later", "errors": []}
        return json_response(body, 503, {"Retry-After": RETRY_AFTER_S})

    requests = RequestMetrics(rt)

    async def ingest(
        request: Request,
        route: str,
        secret: str | None,
        header: str,
        parse: Callable[[bytes, int, int | None], ParseResult],
    ) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            check_content_type(request)
            raw = await read_body(request, limit=settings.max_body_bytes)
            now_ms = rt.clock.now_ms()
            signed_ms = None
            if secret:
                timestamped = route == GATEWAY_ROUTE
                signed_ms = verify_signature(
                    raw, request, secret, header=header, timestamped=timestamped, now_ms=now_ms
                )
            try:
                parsed = parse(raw, now_ms, signed_ms)
            except PayloadError as exc:
                status = exc.status_code
                return json_response(exc.body(), exc.status_code)
            report = await rt.ingestor.ingest(parsed)
            status = _status_of(report, gateway=route == GATEWAY_ROUTE)
            headers = {"Retry-After": RETRY_AFTER_S} if status == 429 else None
            return json_response(report.body(), status, headers)
        except HTTPProblem as exc:
            status = exc.status_code
            raise
        except RedisError:
            status = 503
            raise
        finally:
            requests.observe(route, status, time.perf_counter() - started)

    gateway_secret = _secret(settings.webhook_secret)
    app_secret = _secret(settings.whatsapp_app_secret)

    def gateway_parse(raw: bytes, received_ms: int, signed_ms: int | None) -> ParseResult:
        return parse_gateway(raw, settings=settings, received_ms=received_ms, signed_ms=signed_ms)

    def meta_parse(raw: bytes, received_ms: int, _: int | None) -> ParseResult:
        return parse_meta(raw, settings=settings, received_ms=received_ms)

    async def gateway_webhook(request: Request) -> Response:
        return await ingest(request, GATEWAY_ROUTE, gateway_secret, "X-Signature", gateway_parse)

    async def meta_webhook(request: Request) -> Response:
        return await ingest(request, META_ROUTE, app_secret, "X-Hub-Signature-256", meta_parse)

    # The hot routes are plain Starlette routes inside the FastAPI app: they take the raw request and
    # skip FastAPI's parameter resolution, which is a fifth of the per-request cost at full load.
    app.router.add_route(GATEWAY_ROUTE, gateway_webhook, methods=["POST"])
    app.router.add_route(META_ROUTE, meta_webhook, methods=["POST"])

    @app.get(META_ROUTE)
    async def meta_verify(request: Request) -> Response:
        q = request.query_params
        expected = _secret(settings.whatsapp_verify_token)
        token = q.get("hub.verify_token", "")
        if q.get("hub.mode") != "subscribe" or "hub.challenge" not in q:
            raise HTTPProblem(400, "invalid_request", "hub.mode=subscribe and hub.challenge are required")
        if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
            raise HTTPProblem(403, "forbidden", "hub.verify_token does not match")
        return PlainTextResponse(q["hub.challenge"])

    @app.get(f"{GATEWAY_ROUTE}/stats")
    async def stats(request: Request) -> Response:
        _check_bearer(request, _secret(settings.stats_token))
        return json_response(await rt.stats.collect())

    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready")
    async def ready(request: Request) -> Response:
        checks = await rt.readiness()
        ok = all(v == "ok" for v in checks.values())
        # The details (error texts) are for the logs and for holders of the stats token, not for anyone.
        token = _secret(settings.stats_token)
        if not (token and _bearer_matches(request, token)):
            checks = {name: "ok" if v == "ok" else "unavailable" for name, v in checks.items()}
        return json_response({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


class RequestMetrics:
    """Webhook request metrics with their label children looked up once, not per request."""

    def __init__(self, rt: Runtime) -> None:
        self._metrics = rt.metrics
        self._counters: dict[tuple[str, int], Any] = {}
        self._timers = {r: rt.metrics.accept_seconds.labels(r) for r in (GATEWAY_ROUTE, META_ROUTE)}

    def observe(self, route: str, status: int, seconds: float) -> None:
        counter = self._counters.get((route, status))
        if counter is None:
            counter = self._counters[(route, status)] = self._metrics.requests.labels(route, str(status))
        counter.inc()
        self._timers[route].observe(seconds)


def _status_of(report: IngestReport, *, gateway: bool) -> int:
    if report.rate_limited:
        return 429  # the sender retries; what was accepted is de-duplicated then
    if gateway and report.rejected and not (report.accepted or report.duplicates):
        return 422
    return 200  # Meta: what can never succeed is acknowledged (and recorded), not retried for days


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _bearer_matches(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _check_bearer(request: Request, token: str | None) -> None:
    if not token:
        return
    header = request.headers.get("authorization", "")
    if not header:
        raise HTTPProblem(401, "unauthorized", "Authorization: Bearer <token> is required")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPProblem(403, "forbidden", "the bearer token does not match")

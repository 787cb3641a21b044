"""The HTTP API: the webhook routes (`system.ingest.webhooks`) in front of FastAPI routes for the rest."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from redis.exceptions import RedisError
from starlette.routing import Route

from system.ingest.webhooks import (
    GATEWAY_ROUTE,
    META_ROUTE,
    RETRY_AFTER_S,
    HTTPProblem,
    WebhookRoutes,
    unavailable_body,
    webhook_handlers,
)
from system.runtime import Runtime

__all__ = ["GATEWAY_ROUTE", "META_ROUTE", "WebhookRoutes", "create_app", "json_response"]

log = structlog.get_logger(__name__)


def json_response(body: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers)


def create_app(rt: Runtime) -> WebhookRoutes:
    """The API of one process over the given runtime: the webhook POSTs, then the FastAPI app."""
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
        return json_response(unavailable_body(), 503, {"Retry-After": RETRY_AFTER_S})

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
        await rt.metrics.read_queue(rt.queue)
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # The hot routes skip FastAPI's middleware stack and Starlette's Request (see `system.ingest.webhooks`).
    handlers = webhook_handlers(
        rt, gateway_secret=_secret(settings.webhook_secret), app_secret=_secret(settings.whatsapp_app_secret)
    )
    for path, handler in handlers.items():
        # Also in the app's route table (as ASGI endpoints), so that other methods get its 405 naming POST.
        app.router.routes.append(Route(path, handler, methods=["POST"]))
    return WebhookRoutes(app, handlers)


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

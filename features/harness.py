"""The runner: the whole system in this process, on a virtual clock, behind a synchronous facade for the steps.

It reuses the simulator's world (fake WhatsApp outbox, fake LLM, fake CRM salon, signed webhook delivery) and
touches the system only where a client or an operator could: the HTTP webhook, the stats route and the Redis
keys the README names.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import httpx
import orjson
from redis.asyncio import Redis

from simulator import crm, fake_llm
from simulator import meta_payloads as meta
from simulator import whatsapp as fake_whatsapp
from simulator.clock import VirtualClock
from simulator.delivery import META_PATH, BusinessNumber, WebhookDelivery, meta_webhook
from simulator.fakeredis_time import fakeredis_on
from simulator.judge import Booked, snapshot
from simulator.redis_server import RedisServer
from simulator.redis_target import Target, claim, mark
from simulator.salon import BARBERSHOP_FIXTURE, Salon
from simulator.simulation import TZ, ReplyBox, Transcript
from simulator.stack import APP_SECRET, TOKENS, ASGIApp, InProcessSystem, fakes_env, virtual_clock
from system.clock import Clock, WallClock
from system.ingest.signatures import sign
from system.settings import TENANTS_ENV, load_settings
from system.store.cluster import connect_cluster
from system.store.keys import Keys

START = datetime(2025, 11, 25, 13, 0, tzinfo=TZ)  # a Tuesday afternoon in Moscow: "завтра" is a Wednesday
SECOND_COMPANY_ID = 962303  # the second salon of a two-salon setup: the same fixture under another company id
SECOND_PHONE_NUMBER_ID = "106540352242923"
STATS_ROUTE = "/webhook/whatsapp/batched/stats"
T = TypeVar("T")


CONTEXT_KINDS = frozenset({"dialog", "messages", "preferences"})  # the reference's context keys, by their prefix


@dataclass
class Setup:
    """What a scenario's Given steps set before the system starts: the clock, the fakes' behaviour, settings."""

    start: datetime = START
    llm_latency_s: float | None = None  # every LLM answer takes this long; None: at once
    llm_faults: fake_llm.LlmFaults | None = None
    two_salons: bool = False
    env: dict[str, str] = field(default_factory=dict)
    realtime: bool = False  # the wall clock instead of the virtual one (and "now" instead of `start`)
    redis: RedisTarget | None = None  # a real Redis (the suite's --redis-url); None: fakeredis
    # A redis-server of the scenario's own that its steps may stop and start (`redis` then points at it).
    own_server: RedisServer | None = None


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """The QA suite's real Redis database (`--redis-url` / AIADMIN_FEATURES_REDIS_URL), never REDIS_URL."""

    target: Target
    flush: bool = False  # flush it even when it holds keys no test tool wrote


class ByCompany:
    """Routes a CRM request to the salon whose company id its path names (the first salon otherwise)."""

    def __init__(self, default: ASGIApp, others: Mapping[int, ASGIApp]) -> None:
        self._default = default
        self._others = {str(company): app for company, app in others.items()}

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        segments = str(scope.get("path", "")).split("/") if scope["type"] == "http" else []
        app = next((self._others[s] for s in segments if s in self._others), self._default)
        await app(scope, receive, send)


class LlmRequests:
    """Wraps the fake LLM's ASGI app and keeps every chat request body it receives."""

    def __init__(self, app: ASGIApp, clock: Clock) -> None:
        self._app = app
        self._clock = clock
        self.bodies: list[dict[str, Any]] = []
        self.times_ms: list[int] = []  # when each body arrived, in step with `bodies`

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        raw = b"".join(chunks)
        with contextlib.suppress(orjson.JSONDecodeError):
            self.bodies.append(orjson.loads(raw))
            self.times_ms.append(self._clock.now_ms())
        replayed = iter([{"type": "http.request", "body": raw, "more_body": False}])
        await self._app(scope, lambda: _next_or_wait(replayed, receive), send)

    def turn_texts(self) -> list[str]:
        """The client's text of each turn: the last message of a turn's first request is the user's."""
        return [text for text, _ in self.turns()]

    def turns(self) -> list[tuple[str, int]]:
        """Each turn's client text and when the administrator started thinking about it."""
        return [
            (str(body["messages"][-1]["content"]), at_ms)
            for body, at_ms in zip(self.bodies, self.times_ms, strict=True)
            if body.get("messages") and body["messages"][-1].get("role") == "user"
        ]


async def _next_or_wait(replayed: Any, receive: Callable[..., Any]) -> Any:
    event = next(replayed, None)
    return event if event is not None else await receive()


class Runner:
    """The system under test, driven synchronously: every call runs the owned event loop until it settles."""

    def __init__(self, setup: Setup | None = None, **env: str) -> None:
        setup = setup or Setup()
        self._loop = asyncio.new_event_loop()
        self._stack = contextlib.ExitStack()
        self._astack = contextlib.AsyncExitStack()
        self._ids = itertools.count(1)
        self._sent: dict[str, tuple[str, str, int]] = {}
        self._redis_target = setup.redis.target if setup.redis else None
        self.redis_url = self._redis_target.url if self._redis_target else None
        self.clock: Clock
        if setup.realtime:
            self.clock = WallClock()
            setup = replace(setup, start=datetime.fromtimestamp(self.clock.now_ms() / 1000, tz=TZ))
        else:
            self.clock = virtual_clock(start_ms=int(setup.start.timestamp() * 1000), real_redis=bool(self.redis_url))
        self.salon = Salon.from_fixture(BARBERSHOP_FIXTURE, start=setup.start)
        self.salons = {self.salon.company_id: self.salon}
        self._initial = {b.id for b in snapshot(self.salon)}
        self.outbox = ReplyBox(Transcript())
        self.whatsapp_faults = fake_whatsapp.WhatsAppFaults()
        latency = None if setup.llm_latency_s is None else fake_llm.LatencyModel(*(setup.llm_latency_s,) * 3)
        self.llm = LlmRequests(
            fake_llm.create_app(seed=1, clock=self.clock, latency=latency, faults=setup.llm_faults), self.clock
        )
        self._env = {**fakes_env(), **setup.env, **env}
        if self._redis_target and self._redis_target.cluster:
            self._env["AIADMIN_REDIS_CLUSTER"] = "true"
        self._numbers = {self.salon.company_id: BusinessNumber()}
        if setup.two_salons:
            data = json.loads(Path(BARBERSHOP_FIXTURE).read_text(encoding="utf-8"))
            self.salons[SECOND_COMPANY_ID] = Salon.from_dict(
                {**data, "company_id": SECOND_COMPANY_ID, "name": "Барбершоп «Усы»"}, start=setup.start
            )
            self._numbers[SECOND_COMPANY_ID] = BusinessNumber(phone_number_id=SECOND_PHONE_NUMBER_ID)
            self._env[TENANTS_ENV] = str(self._tenants_file())
        self.redis_server: fakeredis.FakeServer | None = None
        self.own_server = setup.own_server
        if self._redis_target and setup.redis:
            self.redis: Redis = (
                connect_cluster(self._redis_target.url)
                if self._redis_target.cluster
                else Redis.from_url(self._redis_target.url)
            )
            try:
                self._run(claim(self.redis, self._redis_target, flush=setup.redis.flush))
            except BaseException:
                self._run(self.redis.aclose())
                self._loop.close()
                self._stack.close()
                raise
        else:
            if isinstance(self.clock, VirtualClock):
                self._stack.enter_context(fakeredis_on(self.clock))
            self.redis_server = fakeredis.FakeServer(version=(7,))
            self.redis = fakeredis.FakeAsyncRedis(server=self.redis_server)
        self._run(self._start())

    def _tenants_file(self) -> Path:
        folder = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        tables = [
            f'[[tenant]]\ncompany_id = {company}\nphone_number_id = "{number.phone_number_id}"\n'
            f'name = "{self.salons[company].name}"\ntimezone = "Europe/Moscow"\n'
            for company, number in self._numbers.items()
        ]
        path = folder / "tenants.toml"
        path.write_text("\n".join(tables), encoding="utf-8")
        return path

    async def _start(self) -> None:
        crms = {
            company: crm.create_app(salon, partner_token=TOKENS["partner"], user_token=TOKENS["user"], clock=self.clock)
            for company, salon in self.salons.items()
        }
        first = crms.pop(self.salon.company_id)
        apps: dict[str, Any] = {
            "llm": self.llm,
            "crm": ByCompany(first, crms) if crms else first,
            "whatsapp": fake_whatsapp.create_app(
                token=TOKENS["whatsapp"],
                clock=self.clock,
                rng=random.Random(1),
                outbox=self.outbox,
                faults=self.whatsapp_faults,
            ),
        }
        self.system = InProcessSystem(
            load_settings(self._env), redis=self.redis, clock=self.clock, rng=random.Random(1), fakes=apps
        )
        self.http = self.system.inbound
        self.deliveries = {
            company: WebhookDelivery(self.http, clock=self.clock, mode="meta", secret=APP_SECRET, number=number)
            for company, number in self._numbers.items()
        }
        self.delivery = self.deliveries[self.salon.company_id]
        await self._astack.enter_async_context(self.system)

    def _run(self, coro: Awaitable[T]) -> T:
        async def settled() -> T:
            result = await coro
            if isinstance(self.clock, VirtualClock):
                await self.clock.settle()
            return result

        return self._loop.run_until_complete(settled())

    async def _stop(self) -> None:
        # Turns still in flight finish in virtual time: the worker drains them before it stops.
        clock = self.clock
        driver = asyncio.create_task(clock.drive() if isinstance(clock, VirtualClock) else asyncio.sleep(0))
        try:
            await self._astack.aclose()
        finally:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)

    def close(self) -> None:
        try:
            self._run(self._stop())
            if self._redis_target:
                self._run(self.redis.flushdb())
                self._run(mark(self.redis, self._redis_target))
            self._run(self.redis.aclose())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()
            self._stack.close()

    # --- the operator's side ---

    def kill_worker(self) -> None:
        """The worker dies where it stands, as a killed process would (`InProcessSystem.kill_worker`)."""
        self._run(self.system.kill_worker())

    def redis_off(self) -> None:
        """Redis stops answering: fakeredis disconnects, a server of the scenario's own is killed."""
        if self.own_server is not None:
            self.own_server.kill()
        else:
            assert self.redis_server is not None, "a shared real Redis is never switched off"
            self.redis_server.connected = False

    def redis_on(self) -> None:
        """Redis answers again, with what it had acknowledged (the own server replays its append-only file)."""
        if self.own_server is not None:
            self.own_server.start()
        else:
            assert self.redis_server is not None, "a shared real Redis is never switched off"
            self.redis_server.connected = True

    def start_worker(self, consumer: str) -> None:
        """Another worker process starts and joins the consumer group as `consumer`."""

        async def start() -> None:
            self.system.start_worker(consumer)

        self._run(start())

    # --- the client's side ---

    def send(self, phone: str, text: str, *, message_id: str | None = None, company: int | None = None) -> int:
        """A text from `phone` to a salon's number (the first salon's by default) through the signed Cloud API
        webhook, now; the HTTP status."""
        company = company or self.salon.company_id
        message_id = message_id or f"wamid.qa{next(self._ids)}"
        self._sent[message_id] = (phone, text, company)
        self.last_sent_s = time.perf_counter()  # the wall time the last message set off, for real-time timing
        return self._run(
            self.deliveries[company].deliver_text(
                sender=phone, text=text, message_id=message_id, at_ms=self.clock.now_ms()
            )
        )

    def redeliver(self, message_id: str) -> int:
        """WhatsApp delivers a message it delivered before again (same id, same text), now."""
        phone, text, company = self._sent[message_id]
        return self.send(phone, text, message_id=message_id, company=company)

    def post_webhook(self, raw: bytes, *, secret: str | None = APP_SECRET) -> httpx.Response:
        """Any bytes to the Cloud API webhook, signed with `secret` (None: unsigned), as anyone could send them."""
        headers = {"content-type": "application/json"}
        if secret is not None:
            headers["X-Hub-Signature-256"] = sign(raw, secret)
        return self._run(self.http.post(META_PATH, content=raw, headers=headers))

    def text_webhook(self, phone: str, text: str) -> bytes:
        """The Cloud API webhook body WhatsApp would send for a text from `phone`, now."""
        message = meta.message(phone, f"wamid.qa{next(self._ids)}", timestamp_s=self.clock.now_ms() // 1000, text=text)
        return orjson.dumps(meta_webhook(self.delivery.number, messages=[message]))

    def wait(self, seconds: float) -> None:
        """Let `seconds` of (virtual or, in real time, wall) time pass, the system running through every wait on
        the way."""
        if isinstance(self.clock, VirtualClock):
            self._run(self.clock.run_until(self.clock.now_ms() + round(seconds * 1000)))
        else:
            self._run(asyncio.sleep(seconds))

    def wait_for_reply(self, phone: str, *, timeout_s: float = 120) -> bool:
        """Let time pass, a second at a time, until `phone` gets one more reply; False if none came in time."""
        seen = len(self.outbox.replies(phone))
        for _ in range(round(timeout_s)):
            self.wait(1)
            if len(self.outbox.replies(phone)) > seen:
                return True
        return False

    # --- what can be observed ---

    def replies_to(self, phone: str) -> list[str]:
        return list(self.outbox.replies(phone))

    def reply_times_ms(self, phone: str) -> list[int]:
        return [m.at_ms for m in self.outbox.messages_to(phone)]

    def replies_from(self, company: int, phone: str) -> list[str]:
        """What `phone` got from the WhatsApp number of the salon `company`."""
        number = self._numbers[company].phone_number_id
        return [m.text for m in self.outbox.messages_to(phone) if m.phone_number_id == number]

    def refusals(self, code: int) -> list[fake_whatsapp.Refusal]:
        """Sends the fake WhatsApp refused with Meta's error `code`."""
        return self.outbox.refused(code)

    def redis_exists(self, key: str) -> bool:
        return bool(self._run(self.redis.exists(self._deployed(key))))

    def _deployed(self, key: str) -> str:
        """A context key as the scenario names it (the reference's name) as this deployment stores it."""
        kind, _, client = key.partition(":")
        company, _, phone = client.partition(":")
        if kind not in CONTEXT_KINDS or not company.isdigit():
            return key
        keys = Keys(cluster=bool(self._redis_target and self._redis_target.cluster)).context(int(company), phone)
        return str(getattr(keys, kind))

    def stats(self) -> dict[str, Any]:
        response = self._run(self.http.get(STATS_ROUTE))
        response.raise_for_status()
        return dict(response.json())

    def turn_texts(self) -> list[str]:
        return self.llm.turn_texts()

    def redis_ttl(self, key: str) -> int:
        return int(self._run(self.redis.ttl(self._deployed(key))))

    def bookings(self, phone: str) -> list[Booked]:
        """Records the system made in the fake CRM for `phone` (not the salon's own, not cancelled)."""
        return [b for b in snapshot(self.salon) if b.phone == phone and b.id not in self._initial and not b.deleted]

    def records(self, company: int | None = None) -> list[Booked]:
        """Every live record in a salon's CRM (the first salon's by default), the salon's own ones too."""
        return [b for b in snapshot(self.salons[company or self.salon.company_id]) if not b.deleted]

    def records_of(self, phone: str) -> list[Booked]:
        return [b for b in self.records() if b.phone == phone]

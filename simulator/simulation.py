"""One simulated salon day: the real system (webhook, batching, queue, worker, clients) against the fakes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import fakeredis
import httpx
import uvicorn
from redis.asyncio import Redis

from simulator import crm, fake_llm
from simulator import whatsapp as fake_whatsapp
from simulator.clock import VirtualClock
from simulator.delivery import WebhookDelivery
from simulator.fakeredis_time import fakeredis_on
from simulator.judge import Booked, Verdict, WorldVerdict, judge_user, judge_world, snapshot
from simulator.judges import TurnVerdict
from simulator.observed import CountingApp, HistoryReader, ReadHistory, judge_conversations, min_turns
from simulator.personas import PERSONAS, Goal, want_for
from simulator.redis_target import Target, check_target, claim
from simulator.salon import BARBERSHOP_FIXTURE, Appointment, Salon
from simulator.stack import (
    APP_SECRET,
    TOKENS,
    WHATSAPP_PHONE_NUMBER_ID,
    InProcessSystem,
    fakes_env,
    virtual_clock,
)
from simulator.users import REPLY_TIMEOUT_S, User
from system.clock import Clock, WallClock, wait_event
from system.settings import load_settings

TZ = ZoneInfo("Europe/Moscow")
DEFAULT_START = datetime(2026, 1, 12, 9, 0, tzinfo=TZ)  # a Monday morning: a fixed day keeps runs identical
WORKDAY_S = 8 * 3600
REALTIME_WINDOW_S = 60.0
USERS_PER_DAY = 100  # a barbershop of four masters hears from about this many clients a day
DRAIN_LIMIT_S = 3600.0
TRIAL_SEED_STEP = 1_000_003  # a trial's model seed: far from every other run's seed, the same for one trial
SALON_SEED_STEP = 7_000_003  # likewise for another salon of the chain
SALON_USERS = 500  # one salon's working week (USERS_PER_DAY × 5); a larger run is a chain of such salons
FAKE_PORTS = {"whatsapp": 8091, "llm": 8092, "crm": 8093}  # as `aiadmin fake` serves them by default
FAKE_PORT_BASE_ENV = "AIADMIN_SIM_FAKE_PORT_BASE"  # --system-url: the fakes on P, P+1, P+2 instead of 8091-8093


def fake_ports() -> dict[str, int]:
    """Where `--system-url` serves its fakes: FAKE_PORTS, or from AIADMIN_SIM_FAKE_PORT_BASE on."""
    base = os.environ.get(FAKE_PORT_BASE_ENV, "").strip()
    if not base:
        return dict(FAKE_PORTS)
    return {name: int(base) + i for i, name in enumerate(FAKE_PORTS)}


@dataclass(frozen=True, slots=True)
class SimOptions:
    users: int = 50
    seed: int = 1
    personas: tuple[str, ...] = tuple(PERSONAS)
    start: datetime = DEFAULT_START
    redis_url: str | None = None  # a real Redis database instead of fakeredis; claimed (simulator.redis_target)
    redis_flush: bool = False  # flush `redis_url` even when it holds keys no test tool wrote
    redis_force: bool = False  # allow database 0 or a non-loopback host
    llm_latency_s: tuple[float, float, float] = (5.0, 8.0, 15.0)  # min, mode, max: the reference's 5-15 s
    mode: str = "meta"  # how users' messages reach the webhook: "meta" (signed) or "gateway"
    realtime: bool = False  # the wall clock instead of the virtual one (users arrive within `window_s`)
    system_url: str | None = None  # drive separately started system processes (real time; fakes on FAKE_PORTS)
    window_s: float | None = None  # arrival window per day of users; default a working day, 60 s in real time
    trial: int = 0  # another trial of the same users and goals: other typing and model latency (pass^k)
    # A run of more users is a chain of salons of `salon_users` each (`simulator.worlds`). `salon` is which one this
    # world is: its users are the run's users from salon × salon_users on; salon 0 is the whole of a small run.
    salon_users: int = SALON_USERS
    salon: int = 0
    # How long a user waits for a reply: free in virtual time; in real time (`--realtime`, `--system-url`) a run
    # lasts at least this long after its last reply, so the CLI may shorten it there.
    reply_timeout_s: float = REPLY_TIMEOUT_S


@dataclass
class Transcript:
    """Every inbound and outbound event with its (virtual) time, in the order it happened."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **event: Any) -> None:
        self.events.append(event)


class ReplyBox(fake_whatsapp.Outbox):
    """The fake WhatsApp's outbox that also wakes the user a reply is for."""

    def __init__(self, transcript: Transcript) -> None:
        super().__init__()
        self._transcript = transcript
        self._events: dict[str, asyncio.Event] = {}
        self._texts: dict[str, list[str]] = {}
        self._on_message: Callable[[fake_whatsapp.OutboundMessage], None] | None = None

    def on_message(self, callback: Callable[[fake_whatsapp.OutboundMessage], None]) -> None:
        self._on_message = callback

    def record_message(self, message: fake_whatsapp.OutboundMessage) -> None:
        super().record_message(message)
        self._texts.setdefault(message.to, []).append(message.text)
        self._transcript.add(t=message.at_ms, dir="out", phone=message.to, id=message.wamid, text=message.text)
        self.event(message.to).set()
        if self._on_message is not None:
            self._on_message(message)

    def event(self, phone: str) -> asyncio.Event:
        return self._events.setdefault(phone, asyncio.Event())

    def replies(self, phone: str) -> list[str]:
        return self._texts.get(phone, [])


class SimChannel:
    """Users' side of WhatsApp: their messages go to the system's webhook; replies come from the fake."""

    def __init__(self, delivery: WebhookDelivery, box: ReplyBox, clock: Clock, transcript: Transcript) -> None:
        self._delivery = delivery
        self._box = box
        self._clock = clock
        self._transcript = transcript
        self._ids = iter(range(1, 10**9))
        self.inbound: dict[str, list[int]] = {}
        self._status_tasks: set[asyncio.Task[None]] = set()

    async def send_text(self, phone: str, text: str) -> None:
        message_id, now = f"wamid.sim{next(self._ids)}", self._clock.now_ms()
        self._note(phone, now, message_id, text=text)
        await self._delivery.deliver_text(sender=phone, text=text, message_id=message_id, at_ms=now)

    async def send_media(self, phone: str, kind: str) -> None:
        message_id, now = f"wamid.sim{next(self._ids)}", self._clock.now_ms()
        self._note(phone, now, message_id, kind=kind)
        await self._delivery.deliver_media(kind=kind, sender=phone, message_id=message_id, at_ms=now)  # type: ignore[arg-type]

    async def wait_reply(self, phone: str, *, seen: int, timeout_s: float) -> str | None:
        deadline_ms = self._clock.now_ms() + timeout_s * 1000
        while len(self._box.replies(phone)) <= seen:
            event = self._box.event(phone)
            event.clear()
            left_s = (deadline_ms - self._clock.now_ms()) / 1000
            if left_s <= 0 or not await wait_event(self._clock, event, timeout_s=left_s):
                return None
        return self._box.replies(phone)[seen]

    def report_statuses(self, message: fake_whatsapp.OutboundMessage) -> None:
        """WhatsApp tells the system what became of a reply: sent, delivered and read, or failed."""
        task = asyncio.get_running_loop().create_task(self._statuses(message))
        self._status_tasks.add(task)
        task.add_done_callback(self._status_tasks.discard)

    async def _statuses(self, message: fake_whatsapp.OutboundMessage) -> None:
        await self._delivery.deliver_outcome(message)

    def _note(self, phone: str, now: int, message_id: str, **content: str) -> None:
        self.inbound.setdefault(phone, []).append(now)
        self._transcript.add(t=now, dir="in", phone=phone, id=message_id, **content)


@dataclass
class SimResult:
    verdicts: list[Verdict]
    world: WorldVerdict
    transcript: Transcript
    stats: dict[str, Any]
    bookings_created: int
    reply_latency_ms: list[int]
    wall_s: float
    virtual_s: float
    users: list[User]
    turn_verdicts: list[TurnVerdict] = field(default_factory=list)
    model_calls: int = 0
    turns_observed: bool = True  # False when the system's history could not be read (separate processes)


def _settings(opts: SimOptions) -> dict[str, str]:
    env = fakes_env()
    if opts.redis_url:
        env["REDIS_URL"] = opts.redis_url
    return env


def make_users(opts: SimOptions, salon: Salon, rng: random.Random) -> list[User]:
    """Seeded users, about USERS_PER_DAY a day; cancellers and reschedulers get a booking of their own first."""
    personas = [PERSONAS[name] for name in opts.personas]
    users = []
    # In real time every user arrives today, the days' windows one after the other: a second simulated day must
    # not mean waiting for tomorrow on the wall clock.
    real_time = opts.realtime or opts.system_url is not None
    first = opts.salon * opts.salon_users
    for i in range(opts.users):
        persona = personas[(first + i) % len(personas)]
        day = i // USERS_PER_DAY
        arrival_day = opts.start + timedelta(days=0 if real_time else day)
        want = want_for(persona, rng)
        phone = f"7915{first + i:07d}"
        if want.goal in (Goal.CANCEL, Goal.RESCHEDULE):
            want = _own_booking(salon, phone, want, arrival_day, rng)
        window_ms = int(1000 * (opts.window_s or (REALTIME_WINDOW_S if opts.realtime else WORKDAY_S)))
        start_ms = int(arrival_day.timestamp() * 1000) + rng.randrange(max(1, window_ms))
        if real_time:
            start_ms += day * window_ms
        users.append(
            User(
                phone=phone,
                persona=persona,
                want=want,
                today=arrival_day.date(),
                rng=random.Random(f"{rng.random()}:{opts.trial}"),  # the goal stream stays; typing varies
                start_ms=start_ms,
                achieved=functools.partial(achieved, salon=salon, start=arrival_day),
                min_turns=min_turns(want, salon, arrival_day),
                reply_timeout_s=opts.reply_timeout_s,
            )
        )
    return users


def _own_booking(salon: Salon, phone: str, want: Any, start: datetime, rng: random.Random) -> Any:
    """Book a free slot for the user in the fake CRM (the booking they will cancel or move)."""
    service = next(s for s in salon.services.values() if s.title == want.service)
    for offset in range(want.day_offset, want.day_offset + 7):
        day = (start + timedelta(days=offset)).date()
        masters = [m.id for m in salon.masters_for((service.id,))]
        rng.shuffle(masters)  # spread the bookings over the masters, as clients choose them
        slots = [
            s
            for m in masters[:1]
            for s in salon.free_slots(m, day, (service.id,))
            if s.start.minute == 0 and 11 <= s.start.hour <= 17
        ]
        if slots:
            slot = rng.choice(slots)
            salon.book(
                phone=phone, client_name="Клиент", appointments=[Appointment((service.id,), slot.master_id, slot.start)]
            )
            return type(want)(
                **{
                    **_fields(want),
                    "day_offset": offset,
                    "hour": slot.start.hour,
                    "new_day_offset": offset + 1,
                    "new_hour": max(11, slot.start.hour - 1),
                }
            )
    return want


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _by_phone(records: Sequence[Booked]) -> dict[str, list[Booked]]:
    """Records grouped by client phone, so each user's verdict reads only its own."""
    out: dict[str, list[Booked]] = defaultdict(list)
    for b in records:
        out[b.phone].append(b)
    return out


def achieved(user: User, salon: Salon, start: datetime) -> bool:
    """Whether the user's goal is reached in the salon's records (what the user itself may look at)."""
    records = [b for b in snapshot(salon, phone=user.phone) if not b.deleted]
    match user.want.goal:
        case Goal.BOOK | Goal.BOOK_FLEXIBLE:
            return any(b.service_title == user.want.service for b in records)
        case Goal.CANCEL:
            return not records
        case Goal.RESCHEDULE:
            original = (start + timedelta(days=user.want.day_offset)).replace(hour=user.want.hour, minute=0)
            return len(records) == 1 and records[0].start != original
        case _:
            return True


def sim_target(opts: SimOptions) -> Target:
    """The simulation's Redis database; TargetRefused for db 0 or a remote host unless forced."""
    assert opts.redis_url
    return check_target(opts.redis_url, owner="aiadmin simulate", force=opts.redis_force)


@contextlib.asynccontextmanager
async def _redis(opts: SimOptions, clock: Clock) -> AsyncIterator[Redis]:
    if opts.redis_url:
        target = sim_target(opts)
        client: Redis = Redis.from_url(opts.redis_url)
        try:
            await claim(client, target, flush=opts.redis_flush)
            yield client
        finally:
            await client.aclose()
        return
    if not isinstance(clock, VirtualClock):
        yield fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
        return
    with fakeredis_on(clock):
        yield fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))


Scenario = Callable[[Salon, SimOptions], list[User]]  # fixed users instead of seeded ones (a replayed case)


async def simulate(
    opts: SimOptions, *, progress: Callable[[int, int], None] | None = None, scenario: Scenario | None = None
) -> SimResult:
    """Run `opts.users` users (or the `scenario`'s) through the whole system in virtual time."""
    wall_started = time.perf_counter()
    clock: Clock
    if opts.realtime or opts.system_url:
        clock = WallClock()
        opts = replace(opts, start=datetime.fromtimestamp(clock.now_ms() / 1000, tz=TZ))
    else:
        clock = virtual_clock(start_ms=int(opts.start.timestamp() * 1000), real_redis=bool(opts.redis_url))
    start_ms = int(opts.start.timestamp() * 1000)
    rng = random.Random(opts.seed if opts.salon == 0 else f"{opts.seed}:salon:{opts.salon}")
    transcript = Transcript()
    salon = Salon.from_fixture(BARBERSHOP_FIXTURE, start=opts.start)
    users = scenario(salon, opts) if scenario else make_users(opts, salon, rng)
    initial = snapshot(salon)
    box = ReplyBox(transcript)
    llm = CountingApp(
        fake_llm.create_app(
            seed=opts.seed + TRIAL_SEED_STEP * opts.trial + SALON_SEED_STEP * opts.salon,
            latency=fake_llm.LatencyModel(*opts.llm_latency_s),
            clock=clock,
            api_key=TOKENS["llm"],
        )
    )
    apps = {
        "llm": llm,
        "crm": crm.create_app(salon, partner_token=TOKENS["partner"], user_token=TOKENS["user"], clock=clock),
        "whatsapp": fake_whatsapp.create_app(
            token=TOKENS["whatsapp"], clock=clock, rng=random.Random(opts.seed), outbox=box
        ),
    }
    system = _remote_system(opts, apps) if opts.system_url else _in_process_system(opts, clock, apps)
    async with system as (inbound, read_stats, read_history):
        delivery = WebhookDelivery(
            inbound,
            clock=clock,
            mode=opts.mode,  # type: ignore[arg-type]
            secret=APP_SECRET if opts.mode == "meta" else None,
        )
        channel = SimChannel(delivery, box, clock, transcript)
        if opts.mode == "meta":  # the gateway format has no delivery statuses
            box.on_message(lambda m: channel.report_statuses(m))
        driver = asyncio.create_task(clock.drive() if isinstance(clock, VirtualClock) else asyncio.sleep(0))
        try:
            await _run_users(users, channel, clock, progress)
            await _drain(read_stats, clock)
            stats = await read_stats()
            histories = {u.phone: await read_history(u.phone) for u in users} if read_history else None
        finally:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
    final = snapshot(salon)
    initial_of, final_of = _by_phone(initial), _by_phone(final)
    verdicts = [
        judge_user(u, initial=initial_of.get(u.phone, ()), final=final_of.get(u.phone, ()), tz=salon.tz) for u in users
    ]
    world = judge_world(users, initial=initial, final=final, inbound=channel.inbound, outbound=list(box.messages))
    turn_verdicts = judge_conversations(users, histories or {}, box.messages, initial=initial, final=final)
    return SimResult(
        verdicts=verdicts,
        world=world,
        transcript=transcript,
        stats=stats,
        bookings_created=len(final) - len(initial),
        reply_latency_ms=_reply_latencies(transcript),
        wall_s=time.perf_counter() - wall_started,
        virtual_s=(clock.now_ms() - start_ms) / 1000,
        users=users,
        turn_verdicts=turn_verdicts,
        model_calls=llm.calls,
        turns_observed=histories is not None,
    )


StatsReader = Callable[[], Awaitable[dict[str, Any]]]
Wiring = tuple[httpx.AsyncClient, StatsReader, ReadHistory | None]


@contextlib.asynccontextmanager
async def _in_process_system(opts: SimOptions, clock: Clock, apps: dict[str, Any]) -> AsyncIterator[Wiring]:
    """The whole system in this process (`simulator.stack`); its conversations' history is readable."""
    async with _redis(opts, clock) as redis:
        settings = load_settings(_settings(opts))
        async with InProcessSystem(
            settings, redis=redis, clock=clock, rng=random.Random(opts.seed), fakes=apps
        ) as system:
            reader = HistoryReader(system.rt.redis, keys=system.rt.keys, company_id=settings.default_company_id)
            yield system.inbound, system.stats, reader.read
        await redis.aclose()


class _QuietServer(uvicorn.Server):
    """A fake served beside others in one process: the simulator, not uvicorn, handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _remote_system(opts: SimOptions, apps: dict[str, Any]) -> AsyncIterator[Wiring]:
    """Separately started system processes at `opts.system_url`; the fakes are served here on real ports."""
    ports = fake_ports()
    servers = [
        _QuietServer(uvicorn.Config(app, host="127.0.0.1", port=ports[name], log_config=None, access_log=False))
        for name, app in apps.items()
    ]
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    try:
        for _ in range(200):  # bounded wait for the three listeners
            if all(server.started for server in servers):
                break
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=opts.system_url or "", timeout=30) as inbound:

            async def read_stats() -> dict[str, Any]:
                response = await inbound.get("/webhook/whatsapp/batched/stats", headers=_stats_auth())
                response.raise_for_status()
                return dict(response.json())

            yield inbound, read_stats, None
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


def _stats_auth() -> dict[str, str]:
    token = os.environ.get("AIADMIN_STATS_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def system_env_for_fakes() -> dict[str, str]:
    """The settings a separately started system needs to talk to the simulator's fakes (a development setup)."""
    ports = fake_ports()
    return {
        "AIADMIN_ENV": "development",
        "AIADMIN_LLM_BASE_URL": f"http://127.0.0.1:{ports['llm']}/v1",
        "AIADMIN_LLM_API_KEY": TOKENS["llm"],
        "AIADMIN_YCLIENTS_BASE_URL": f"http://127.0.0.1:{ports['crm']}/api/v1",
        "AIADMIN_YCLIENTS_PARTNER_TOKEN": TOKENS["partner"],
        "AIADMIN_YCLIENTS_USER_TOKEN": TOKENS["user"],
        "AIADMIN_WHATSAPP_API_URL": f"http://127.0.0.1:{ports['whatsapp']}",
        "AIADMIN_WHATSAPP_TOKEN": TOKENS["whatsapp"],
        "AIADMIN_WHATSAPP_PHONE_NUMBER_ID": WHATSAPP_PHONE_NUMBER_ID,
        "AIADMIN_WHATSAPP_APP_SECRET": APP_SECRET,
    }


async def _run_users(
    users: list[User], channel: SimChannel, clock: Clock, progress: Callable[[int, int], None] | None
) -> None:
    done = 0

    async def one(user: User) -> None:
        nonlocal done
        await user.run(channel, clock)
        done += 1
        if progress:
            progress(done, len(users))

    await asyncio.gather(*(one(u) for u in users))


async def _drain(read_stats: StatsReader, clock: Clock) -> None:
    """Wait until nothing is buffered, queued or in flight."""
    deadline_ms = clock.now_ms() + DRAIN_LIMIT_S * 1000
    while clock.now_ms() < deadline_ms:
        stats = await read_stats()
        if not (stats["open_batches"] or stats["queue_length"] or stats["in_flight_jobs"]):
            return
        await clock.sleep(5)


def _reply_latencies(transcript: Transcript) -> list[int]:
    """From a client's last message to the bot's next reply, per reply."""
    last_in: dict[str, int] = {}
    out: list[int] = []
    for e in transcript.events:
        if e["dir"] == "in":
            last_in[e["phone"]] = e["t"]
        elif e["phone"] in last_in:
            out.append(e["t"] - last_in.pop(e["phone"]))
    return out

"""Issue 11: Redis stops and restarts mid-load; the batcher and worker processes ride it out and no accepted
message is lost: each ends in a reply turn or in the dead letters.

The test starts its own redis-server (AOF on, fsync always, in a temporary directory) so that it can kill
and restart it; the batcher and the worker run as real `aiadmin` processes against it, the fakes of the
outside world as `aiadmin fake …` servers, and messages enter through the real ingest path in-process.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from simulator.redis_server import RedisServer, free_port, wait_for_port
from system.clock import WallClock
from system.ingest.payloads import parse_gateway
from system.models import InboundMessage
from system.runtime import Runtime
from system.settings import load_settings
from system.store.keys import Keys
from system.store.notify import ChannelListener

from .conftest import IN_CI

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

COMPANY = 962302
PHONES = tuple(f"7900555{i:04d}" for i in range(6))
OUTAGE_S = 2.5  # how long Redis stays down: the "3-second restart"
LOAD_BEFORE_S = 1.5  # of load once the first turn is done, before Redis stops
LOAD_AFTER_S = 2.0  # of load once Redis is back
STARTUP_DEADLINE_S = 30.0
DRAIN_DEADLINE_S = 40.0  # every accepted message reaches a reply or a dead letter within this


@dataclass
class Process:
    """A running `aiadmin` command whose log lines (stderr) land in `log_path`."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_events(self) -> list[str]:
        events = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(str(orjson.loads(line).get("event")))
            except orjson.JSONDecodeError:
                events.append(line)  # a traceback, for the failure message
        return events


@contextmanager
def aiadmin(*args: str, env: dict[str, str], logs: Path) -> Iterator[Process]:
    log_path = logs / f"{'-'.join(args[:2])}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "system", *args], env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        yield Process(proc, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def stopped_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, not started yet."""
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("CI=true but there is no redis-server binary for the outage tests")
        pytest.skip("no redis-server binary")
    server = RedisServer(binary, tmp_path)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server(stopped_redis_server: RedisServer) -> RedisServer:
    stopped_redis_server.start()
    return stopped_redis_server


def system_env(redis_url: str, ports: dict[str, int]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIADMIN_") and k != "REDIS_URL"}
    return {
        **base,
        "REDIS_URL": redis_url,
        "AIADMIN_ENV": "development",
        "AIADMIN_LOG_LEVEL": "INFO",
        "AIADMIN_LOG_JSON": "true",
        "AIADMIN_BATCH_TIMEOUT_MS": "300",
        "AIADMIN_RATE_LIMIT_SENDER_BURST": "0",
        "AIADMIN_RATE_LIMIT_GLOBAL_PER_S": "0",
        "AIADMIN_VISIBILITY_TIMEOUT_S": "2",  # a turn cut off by the outage is reclaimed quickly
        "AIADMIN_RETRY_BACKOFF_BASE_S": "0.2",
        "AIADMIN_RETRY_BACKOFF_MAX_S": "1",
        "AIADMIN_WORKER_IDLE_POLL_S": "0.2",
        "AIADMIN_HEARTBEAT_INTERVAL_S": "0.5",
        "AIADMIN_LLM_BASE_URL": f"http://127.0.0.1:{ports['llm']}/v1",
        "AIADMIN_LLM_API_KEY": "sim",
        "AIADMIN_LLM_MAX_RETRIES": "1",
        "AIADMIN_YCLIENTS_BASE_URL": f"http://127.0.0.1:{ports['crm']}/api/v1",
        "AIADMIN_YCLIENTS_PARTNER_TOKEN": "sim-partner",
        "AIADMIN_YCLIENTS_USER_TOKEN": "sim-user",
        "AIADMIN_WHATSAPP_API_URL": f"http://127.0.0.1:{ports['whatsapp']}/v21.0",
        "AIADMIN_WHATSAPP_TOKEN": "sim-wa-token",
        "AIADMIN_WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
        "AIADMIN_WHATSAPP_RECIPIENT_GAP_MS": "0",
    }


@dataclass
class Load:
    """Clients writing through the ingest path; what was accepted is what must not be lost."""

    rt: Runtime
    rng: random.Random
    accepted: dict[str, str] = field(default_factory=dict)  # text (unique) -> phone
    refused: int = 0
    running: bool = True
    _sent: int = 0

    async def client(self, phone: str) -> None:
        clock = self.rt.clock
        while self.running:
            self._sent += 1
            text = f"Здравствуйте, вопрос <{self._sent}>"  # delimited: <1> is no part of <12>
            body = orjson.dumps({"from": phone, "message": text})
            try:
                report = await self.rt.ingestor.ingest(
                    parse_gateway(body, settings=self.rt.settings, received_ms=clock.now_ms())
                )
            except (RedisError, OSError):
                self.refused += 1  # the API answers 503 then: the sender retries, nothing was accepted
            else:
                if report.accepted:
                    self.accepted[text] = phone
            # Gaps around the 300 ms batch timeout: some batches time out, some fill up and are sealed.
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))


async def answered(redis: Redis, keys: Keys, phones: tuple[str, ...]) -> set[str]:
    """Client texts that reached a finished turn (saved with its reply) or a dead letter."""
    done: set[str] = set()
    for phone in phones:
        for raw in await redis.lrange(Keys().context(COMPANY, phone).messages, 0, -1):
            item = orjson.loads(raw)
            if item.get("role") == "client":
                done.add(item["text"])
    for shard in keys.all_shards:
        for _, entry in await redis.xrange(shard.dlq):
            job = orjson.loads(entry[b"job"])
            done.add(" ".join(m["text"] for m in job["messages"]))
    return done


def lost(accepted: dict[str, str], turns: set[str]) -> list[str]:
    # A turn's text is its fragments joined by spaces, so a fragment is in a turn when it is a part of it.
    return [text for text in accepted if not any(text in turn for turn in turns)]


async def test_batcher_and_worker_ride_out_a_redis_restart_and_no_accepted_message_is_lost(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    ports = {name: free_port() for name in ("whatsapp", "llm", "crm")}
    env = system_env(redis_server.url, ports)
    settings = load_settings({k: v for k, v in env.items() if k.startswith(("AIADMIN_", "REDIS_URL"))})
    with ExitStack() as stack:
        for name, port in ports.items():
            stack.enter_context(aiadmin("fake", name, "--port", str(port), env=env, logs=tmp_path))
        batcher = stack.enter_context(aiadmin("batcher", env=env, logs=tmp_path))
        worker = stack.enter_context(aiadmin("worker", env=env, logs=tmp_path))
        for port in ports.values():
            wait_for_port(port, deadline_s=STARTUP_DEADLINE_S)

        rt = Runtime.build(settings, clock=WallClock())
        load = Load(rt, random.Random(11))
        try:
            await rt.start()
            clients = [asyncio.create_task(load.client(phone)) for phone in PHONES]
            # Both processes are up once a first turn has gone all the way through.
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            while not await answered(rt.redis, rt.keys, PHONES):
                assert time.monotonic() < deadline, (batcher.log_events(), worker.log_events())
                await asyncio.sleep(0.1)
            await asyncio.sleep(LOAD_BEFORE_S)

            redis_server.kill()
            accepted_before = len(load.accepted)
            await asyncio.sleep(OUTAGE_S)  # the outage itself: the clients keep writing and are refused
            redis_server.start()
            await asyncio.sleep(LOAD_AFTER_S)
            load.running = False
            await asyncio.gather(*clients)

            assert load.refused > 0  # the outage was felt by the ingest
            assert len(load.accepted) > accepted_before  # and writing went on after it
            deadline = time.monotonic() + DRAIN_DEADLINE_S
            missing = lost(load.accepted, await answered(rt.redis, rt.keys, PHONES))
            while missing and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                missing = lost(load.accepted, await answered(rt.redis, rt.keys, PHONES))

            assert batcher.proc.poll() is None, batcher.log_events()[-20:]
            assert worker.proc.poll() is None, worker.log_events()[-20:]
            assert missing == [], f"{len(missing)} of {len(load.accepted)} accepted messages lost"
        finally:
            load.running = False
            await rt.close()

        batcher.proc.send_signal(signal.SIGTERM)
        assert batcher.proc.wait(timeout=15) == 0
        events = batcher.log_events()
        assert events.count("batcher_redis_error") == 1, events  # once per outage, not once per retry
        assert events.count("batcher_redis_recovered") == 1, events
        assert "batch_expired_unflushed" not in events


async def test_batcher_started_while_redis_is_down_waits_and_starts_when_it_answers(
    stopped_redis_server: RedisServer, tmp_path: Path
) -> None:
    env = system_env(stopped_redis_server.url, {"whatsapp": 9, "llm": 9, "crm": 9})
    settings = load_settings({k: v for k, v in env.items() if k.startswith(("AIADMIN_", "REDIS_URL"))})
    with aiadmin("batcher", env=env, logs=tmp_path) as batcher:
        # Nothing to observe but the process itself: it must still be there after a few of its retries.
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while "batcher_redis_error" not in batcher.log_events():
            assert batcher.proc.poll() is None, batcher.log_events()
            assert time.monotonic() < deadline, batcher.log_events()
            await asyncio.sleep(0.05)
        stopped_redis_server.start()
        rt = Runtime.build(settings, clock=WallClock())
        try:
            await rt.start()
            msg = InboundMessage(company_id=COMPANY, phone=PHONES[0], message_id="wamid.late-start", text="привет")
            await rt.store.append(msg, now_ms=rt.clock.now_ms())
            while not await rt.queue.length():  # flushed 300 ms after the message, once the batcher is up
                assert batcher.proc.poll() is None, batcher.log_events()
                assert time.monotonic() < deadline, batcher.log_events()
                await asyncio.sleep(0.05)
        finally:
            await rt.close()
        batcher.proc.send_signal(signal.SIGTERM)
        assert batcher.proc.wait(timeout=15) == 0
    events = batcher.log_events()
    assert events.count("batcher_redis_error") == 1, events
    assert events.count("batcher_redis_recovered") == 1, events


async def test_channel_listener_logs_an_outage_once_and_subscribes_again_when_redis_is_back(
    redis_server: RedisServer,
) -> None:
    redis: Redis = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=1)
    listener = ChannelListener(redis, ["outage-test"])
    try:
        with structlog.testing.capture_logs() as logs:
            await listener.start()
            redis_server.kill()
            await asyncio.sleep(OUTAGE_S)  # several resubscribe attempts fail meanwhile
            redis_server.start()
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            while not any(e["event"] == "pubsub_resubscribed" for e in logs):
                assert time.monotonic() < deadline, logs
                await asyncio.sleep(0.05)
            listener.event.clear()
            await redis.publish("outage-test", "1")
            await asyncio.wait_for(listener.event.wait(), timeout=5)
    finally:
        await listener.stop()
        await redis.aclose()
    assert [e["event"] for e in logs if e["event"].startswith("pubsub_")] == ["pubsub_lost", "pubsub_resubscribed"]

"""The `aiadmin` processes as an operator starts them: real ports, real signals."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from redis.asyncio import Redis

from system.keys import Keys
from system.models import InboundMessage
from system.queue import JobQueue, QueueConfig
from system.runtime import Runtime
from system.settings import load_settings

from .conftest import REAL_REDIS_URL

STARTUP_DEADLINE_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIADMIN_") and k != "REDIS_URL"}
    return {**env, "AIADMIN_LOG_LEVEL": "WARNING", **extra}


def aiadmin(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "system", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@contextmanager
def process(*args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A running `aiadmin` process whose log lines (stderr) land in `proc.log_path`."""
    with tempfile.NamedTemporaryFile(prefix="aiadmin-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen([sys.executable, "-m", "system", *args], env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log_path = log.name  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.unlink(log.name)


def wait_until_ready(url: str) -> httpx.Response:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    last: Exception | httpx.Response | None = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/ready", timeout=1)
            if last.status_code == 200:
                return last
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"not ready within {STARTUP_DEADLINE_S} s: {last!r}")


def test_a_bad_setting_stops_start_up_naming_the_variable() -> None:
    result = aiadmin("run", env=base_env(AIADMIN_BATCH_TIMEOUT_MS="soon"))
    assert result.returncode == 2
    assert "AIADMIN_BATCH_TIMEOUT_MS" in result.stderr


def test_separate_processes_need_redis_url() -> None:
    result = aiadmin("api", env=base_env())
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr


# The outside world is not needed until a turn runs; these addresses answer nothing.
OFFLINE_WORLD = {
    "AIADMIN_LLM_BASE_URL": "http://127.0.0.1:9/v1",
    "AIADMIN_YCLIENTS_BASE_URL": "http://127.0.0.1:9/api/v1",
    "AIADMIN_YCLIENTS_PARTNER_TOKEN": "partner",
    "AIADMIN_WHATSAPP_API_URL": "http://127.0.0.1:9",
    "AIADMIN_WHATSAPP_TOKEN": "token",
    "AIADMIN_WHATSAPP_PHONE_NUMBER_ID": "106540352242922",
}


def test_run_without_a_whatsapp_token_stops_naming_the_variable() -> None:
    env = base_env(**{k: v for k, v in OFFLINE_WORLD.items() if k != "AIADMIN_WHATSAPP_TOKEN"})
    result = aiadmin("run", env=env)
    assert result.returncode == 2
    assert "AIADMIN_WHATSAPP_TOKEN" in result.stderr


def test_run_serves_the_embedded_system_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process("run", "--port", str(port), env=base_env(AIADMIN_LOG_LEVEL="INFO", **OFFLINE_WORLD)) as proc:
        assert wait_until_ready(url).json()["checks"] == {"redis": "ok", "batch_processor": "ok"}
        r = httpx.post(f"{url}/webhook/whatsapp/batched", json={"from": "79001234567", "message": "привет"})
        assert (r.status_code, r.json()["accepted"]) == (200, 1)
        stats = httpx.get(f"{url}/webhook/whatsapp/batched/stats").json()
        assert stats["buffered_messages"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        with open(proc.log_path, encoding="utf-8") as log:  # type: ignore[attr-defined]
            assert "79001234567" not in log.read()


@pytest.mark.redis
async def test_api_and_batcher_as_separate_processes_hand_a_batch_to_the_queue(real_redis: Redis) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Long enough for both posts to land in one batch on a busy machine, short enough for the test.
    env = base_env(REDIS_URL=REAL_REDIS_URL, AIADMIN_BATCH_TIMEOUT_MS="1000", AIADMIN_REDIS_PREFIX="clitest")
    settings = load_settings({k: v for k, v in env.items() if k.startswith(("AIADMIN_", "REDIS_URL"))})
    queue = JobQueue(
        real_redis,
        keys=Keys(prefix="clitest", shards=settings.redis_shards),
        config=QueueConfig.from_settings(settings),
        rng=random.Random(0),
    )
    with process("api", "--port", str(port), env=env), process("batcher", env=env) as batcher:
        wait_until_ready(url)
        async with httpx.AsyncClient(base_url=url) as client:
            for text in ("Хочу записаться", "на стрижку машинкой"):
                r = await client.post("/webhook/whatsapp/batched", json={"from": "89001234567", "message": text})
                assert r.status_code == 200
        deadline = time.monotonic() + 5
        jobs = []
        while not jobs and time.monotonic() < deadline:
            jobs = await queue.read("test", count=10, now_ms=int(time.time() * 1000))
        batcher.send_signal(signal.SIGTERM)
        assert batcher.wait(timeout=10) == 0
    assert [d.job.text for d in jobs] == ["Хочу записаться на стрижку машинкой"]
    assert jobs[0].job.phone == "79001234567"


@pytest.mark.redis
async def test_dead_letters_can_be_listed_and_replayed(real_redis: Redis) -> None:
    env = base_env(REDIS_URL=REAL_REDIS_URL, AIADMIN_REDIS_PREFIX="dlqtest")
    settings = load_settings({k: v for k, v in env.items() if k.startswith(("AIADMIN_", "REDIS_URL"))})
    rt = Runtime.build(settings, redis=real_redis)
    await rt.start()
    msg = InboundMessage(company_id=962302, phone="79001234567", message_id="wamid.dlq", text="привет")
    await rt.store.append(msg, now_ms=1)
    await rt.store.claim(rt.keys.shard(0), ["962302:79001234567"], now_ms=10**13)
    [delivery] = await rt.queue.read("w", count=1, now_ms=10**13)
    await rt.queue.fail(delivery, "LLM: LLMUnavailable: down", now_ms=10**13, retryable=False)

    listed = aiadmin("dlq", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    shard, entry_id, batch_id, attempts, error = listed.stdout.strip().split("\t")
    assert (batch_id, attempts, error) == (delivery.job.batch_id, "attempts=1", "LLM: LLMUnavailable: down")

    replayed = aiadmin("dlq", "replay", f"{shard}/{entry_id}", env=env)
    assert replayed.stdout.strip() == "replayed 1 of 1"
    assert await rt.queue.dead_letter_count() == 0
    assert await rt.queue.length() == 1

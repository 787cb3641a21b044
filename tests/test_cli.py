"""The `aiadmin` processes as an operator starts them: real ports, real signals."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from simulator.redis_server import free_port
from system.models import InboundMessage
from system.runtime import Runtime
from system.settings import load_settings
from system.store.keys import Keys
from system.store.queue import JobQueue, QueueConfig

from .conftest import REAL_REDIS_URL

STARTUP_DEADLINE_S = 20.0


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


def wait_until_ready(url: str, *, path: str = "/ready") -> httpx.Response:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    last: Exception | httpx.Response | None = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}{path}", timeout=1)
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
        # Issue 12: state only in this process's memory is said once, loudly, at start-up.
        warned = [e for e in log_events(proc.log_path) if e["event"] == "insecure_for_production"]  # type: ignore[attr-defined]
        assert [str(e["problem"]).split(" ", 1)[0] for e in warned].count("REDIS_URL") == 1
        assert {e["level"] for e in warned} == {"warning"}


@pytest.mark.redis
async def test_api_and_batcher_as_separate_processes_hand_a_batch_to_the_queue(real_redis: Redis) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Long enough for both posts to land in one batch on a busy machine, short enough for the test.
    env = base_env(
        REDIS_URL=REAL_REDIS_URL,
        AIADMIN_ENV="development",
        AIADMIN_BATCH_TIMEOUT_MS="1000",
        AIADMIN_REDIS_PREFIX="clitest",
    )
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


# --- issue 12: production refuses to start insecure; development says loudly that it is --------------------

SECRETS = {
    "AIADMIN_WEBHOOK_SECRET": "gateway-secret",
    "AIADMIN_WHATSAPP_APP_SECRET": "app-secret",
    "AIADMIN_STATS_TOKEN": "stats-token",
}
INSECURE_VARIABLES = ("AIADMIN_WEBHOOK_SECRET", "AIADMIN_WHATSAPP_APP_SECRET", "AIADMIN_STATS_TOKEN")


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("configuration error: ")]


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def log_events(path: str) -> list[dict[str, object]]:
    with open(path, encoding="utf-8") as log:
        return [orjson.loads(line) for line in log if line.startswith("{")]


@pytest.mark.parametrize("command", ["api", "batcher", "worker"])
def test_production_is_the_default_and_refuses_to_keep_state_in_memory(command: str) -> None:
    result = aiadmin(command, env=base_env(**SECRETS, **OFFLINE_WORLD))
    assert result.returncode == 2
    [line] = error_lines(result)
    assert "REDIS_URL is required" in line


def test_production_api_with_unsigned_routes_and_open_stats_names_every_problem_at_once() -> None:
    result = aiadmin("api", env=base_env(REDIS_URL=closed_port_url()))
    assert result.returncode == 2
    lines = error_lines(result)
    assert [next(v for v in INSECURE_VARIABLES if v in line) for line in lines] == list(INSECURE_VARIABLES)


def test_production_worker_without_a_sending_number_names_it_with_the_other_missing_settings() -> None:
    env = base_env(
        REDIS_URL=closed_port_url(),
        **{
            k: v
            for k, v in OFFLINE_WORLD.items()
            if k not in {"AIADMIN_WHATSAPP_PHONE_NUMBER_ID", "AIADMIN_WHATSAPP_TOKEN", "AIADMIN_YCLIENTS_PARTNER_TOKEN"}
        },
    )
    result = aiadmin("worker", env=env)
    assert result.returncode == 2
    text = "\n".join(error_lines(result))
    assert "AIADMIN_YCLIENTS_PARTNER_TOKEN" in text and "AIADMIN_WHATSAPP_TOKEN" in text  # refused anywhere
    assert "AIADMIN_WHATSAPP_PHONE_NUMBER_ID is unset" in text  # refused in production


def test_run_in_production_refuses_the_embedded_in_memory_redis() -> None:
    result = aiadmin("run", "--port", "0", env=base_env(AIADMIN_ENV="production", **SECRETS, **OFFLINE_WORLD))
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith("configuration error: REDIS_URL is unset")


def test_invalid_values_and_production_problems_are_reported_together() -> None:
    result = aiadmin(
        "api", env=base_env(REDIS_URL=closed_port_url(), AIADMIN_BATCH_TIMEOUT_MS="soon", AIADMIN_PORT="http")
    )
    assert result.returncode == 2
    text = "\n".join(error_lines(result))
    for variable in ("AIADMIN_BATCH_TIMEOUT_MS", "AIADMIN_PORT", *INSECURE_VARIABLES):
        assert variable in text


def test_a_misspelled_variable_is_named_with_the_closest_setting_even_when_start_up_fails() -> None:
    result = aiadmin("api", env=base_env(AIADMIN_STATS_TOKN="stats-token", AIADMIN_BATCH_TIMEOUT_MS="soon"))
    assert result.returncode == 2
    assert "warning: AIADMIN_STATS_TOKN is not a setting; did you mean AIADMIN_STATS_TOKEN?" in result.stderr


@pytest.mark.parametrize(
    ("command", "url"),
    [
        ("api", "localhost:6379"),
        ("api", "redis://127.0.0.1:99999/0"),
        ("api", "CLOSED"),
        ("dlq", "CLOSED"),
    ],
)
def test_an_unusable_redis_url_is_one_line_naming_the_variable_and_exit_2(command: str, url: str) -> None:
    url = closed_port_url() if url == "CLOSED" else url
    args = ("dlq", "list") if command == "dlq" else (command, "--port", "0")
    result = aiadmin(*args, env=base_env(REDIS_URL=url, AIADMIN_ENV="development"))
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith("configuration error: REDIS_URL: ")


def test_a_password_in_an_unreachable_redis_url_is_not_printed() -> None:
    url = closed_port_url().replace("redis://", "redis://:hunter2@")
    result = aiadmin("dlq", "list", env=base_env(REDIS_URL=url))
    assert result.returncode == 2
    assert "hunter2" not in result.stderr
    assert ":***@" in result.stderr


@pytest.mark.redis
def test_development_api_warns_once_per_insecure_setting_and_logs_where_it_listens() -> None:
    port = free_port()
    env = base_env(
        REDIS_URL=REAL_REDIS_URL,
        AIADMIN_ENV="development",
        AIADMIN_LOG_LEVEL="INFO",
        AIADMIN_PORT=str(port),  # no --port: the variable is the only source
        AIADMIN_REDIS_PREFIX="devwarn",
        AIADMIN_WEBHOOK_SECRT="typo",
    )
    with process("api", env=env) as proc:
        wait_until_ready(f"http://127.0.0.1:{port}", path="/health")  # no batcher: never "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        events = log_events(proc.log_path)  # type: ignore[attr-defined]
    warned = [str(e["problem"]) for e in events if e["event"] == "insecure_for_production"]
    assert [next(v for v in INSECURE_VARIABLES if p.startswith(v)) for p in warned] == list(INSECURE_VARIABLES)
    assert all(e["level"] == "warning" for e in events if e["event"] == "insecure_for_production")
    [listening] = [e for e in events if e["event"] == "api_listening"]
    assert (listening["host"], listening["port"]) == ("127.0.0.1", port)
    [unknown] = [e for e in events if e["event"] == "unknown_setting"]
    assert (unknown["variable"], unknown["did_you_mean"]) == ("AIADMIN_WEBHOOK_SECRT", "AIADMIN_WEBHOOK_SECRET")


def test_the_host_flag_wins_over_the_variable() -> None:
    port = free_port()
    env = base_env(AIADMIN_HOST="203.0.113.1", AIADMIN_PORT="1", **OFFLINE_WORLD)
    with process("run", "--host", "127.0.0.1", "--port", str(port), env=env) as proc:
        wait_until_ready(f"http://127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0

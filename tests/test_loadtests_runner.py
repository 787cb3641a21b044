"""`python -m loadtests.run`: its Redis, ports and settings, the Locust command, the one process sampler, and one
short steady run of the whole chain.

Nothing here imports Locust: it monkey-patches the process with gevent on import, so it only ever runs as its
own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from loadtests._processes import Process, ResourceSampler, cpu_s, is_zombie, spawned, stop
from loadtests.run import _stack as stack
from loadtests.run.__main__ import locust_command
from simulator.redis_target import mark_sync

from .conftest import IN_CI, REAL_REDIS_URL, REDIS_FLUSH, REDIS_FORCE
from .loadtests_support import SUMMARY_KEYS

ROOT = Path(__file__).resolve().parents[1]
# The load run's database: the tests' own (AIADMIN_TEST_REDIS_URL) unless AIADMIN_LOAD_REDIS_URL names another.
LOAD_REDIS_URL = os.environ.get("AIADMIN_LOAD_REDIS_URL") or REAL_REDIS_URL


def test_runner_refuses_to_flush_db_0_or_a_remote_redis() -> None:
    assert stack.check_redis_url("redis://127.0.0.1:6379/11", force=False).db == 11
    with pytest.raises(stack.StackError, match=r"refusing database 0 .* without --force"):
        stack.check_redis_url("redis://127.0.0.1:6379/0", force=False)
    with pytest.raises(stack.StackError, match=r"non-loopback host .cache\.example. without --force"):
        stack.check_redis_url("redis://cache.example:6379/3", force=False)
    assert stack.check_redis_url("redis://cache.example:6379/0", force=True).db == 0


def test_runner_ports_are_chosen_free_at_run_time_not_fixed() -> None:
    ports = stack.Ports.free()
    chosen = [ports.system, *ports.fakes.values()]
    assert len(set(chosen)) == 4
    for port in chosen:  # each is free: a server can bind it now
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    with socket.socket() as held:  # a port in use is never chosen
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert all(taken not in (p.system, *p.fakes.values()) for p in (stack.Ports.free() for _ in range(20)))
    assert stack.Ports.from_base(18640).fakes == {"whatsapp": 18641, "llm": 18642, "crm": 18643}


def test_runner_points_the_system_at_its_fakes_and_masks_secrets() -> None:
    env = stack.system_env(
        stack.Ports.from_base(18640),
        redis_url="redis://127.0.0.1:6379/11",
        batch_timeout_ms=1200,
        overrides=stack.parse_overrides(["yclients_rps=50", "AIADMIN_LOG_LEVEL=INFO"]),
    )
    assert env["AIADMIN_WHATSAPP_API_URL"] == "http://127.0.0.1:18641"
    assert env["AIADMIN_LLM_BASE_URL"] == "http://127.0.0.1:18642/v1"
    assert env["AIADMIN_YCLIENTS_BASE_URL"] == "http://127.0.0.1:18643/api/v1"
    assert (env["AIADMIN_BATCH_TIMEOUT_MS"], env["AIADMIN_YCLIENTS_RPS"], env["AIADMIN_LOG_LEVEL"]) == (
        "1200",
        "50",
        "INFO",
    )
    public = stack.public_settings(env)
    assert public["AIADMIN_WHATSAPP_TOKEN"] == "***" and public["AIADMIN_WHATSAPP_APP_SECRET"] == "***"
    assert public["REDIS_URL"] == "redis://127.0.0.1:6379/11"
    with pytest.raises(stack.StackError, match="KEY=VALUE"):
        stack.parse_overrides(["nothing"])
    with pytest.raises(stack.StackError, match="--redis-url"):
        stack.parse_overrides(["redis_url=redis://127.0.0.1:6379/0"])


def test_locust_command_runs_the_folder_headless_with_the_profile() -> None:
    args = locust_command(
        profile="burst",
        host="http://127.0.0.1:18600",
        out_dir=Path("/tmp/x"),
        duration_scale=0.2,
        whatsapp_url="http://127.0.0.1:18601",
        redis_url="redis://127.0.0.1:6379/11",
        webhook_format="meta",
        app_secret="a",
        webhook_secret="",
        stats_token="",
        batch_timeout_ms=1500,
        llm_latency_s="0,0,0",
        reply_timeout_s=30,
        settle_s=1,
        seed=3,
        extra=["--loglevel", "WARNING"],
    )
    assert args[1:5] == ["-m", "locust", "-f", str(ROOT / "loadtests")]
    assert args[args.index("--profile") + 1] == "burst"
    assert args[args.index("--csv") + 1] == "/tmp/x/burst"
    assert "--headless" in args and args[-2:] == ["--loglevel", "WARNING"]


def test_locust_picks_up_only_the_locustfile_and_the_helpers_never_import_locust() -> None:
    """`locust -f loadtests/` imports every .py under it not starting with "_"; our pure modules stay gevent-free."""
    code = (
        "import sys\n"
        "import loadtests._drain, loadtests._ledger, loadtests._load, loadtests._probes, loadtests._script\n"
        "import loadtests._summary\n"
        "import loadtests._webhook, loadtests._processes, loadtests.run._stack, loadtests.run.__main__\n"
        "import loadtests.bench._cli, loadtests.bench._standins, loadtests.bench._empty_app\n"
        "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'a helper imported locust'\n"
        "from locust.util.directory import get_abspaths_in\n"
        "print(sorted(p.rsplit('/loadtests/', 1)[1] for p in get_abspaths_in('loadtests', extension='.py')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['locustfile.py']"


# --- the one process sampler ----------------------------------------------------------------------------------------

# A child that makes 64 MiB resident (one write per page) and says so; then the hungry one keeps a core busy.
RESIDENT_64_MIB = (
    "held = bytearray(64 * 2**20)\nheld[::4096] = b'x' * len(range(0, len(held), 4096))\nprint('ready', flush=True)\n"
)
HUNGRY_CHILD = RESIDENT_64_MIB + "while True:\n    pass\n"


def wait_for_line(proc: Process, line: str) -> None:
    """Poll the child's log until it prints `line` (bounded by the test's timeout, not by the machine's speed)."""
    while line not in proc.log_tail():
        proc.check_alive()
        time.sleep(0.02)


@pytest.mark.timeout(60)
def test_the_one_sampler_reads_memory_and_cpu_from_proc_without_psutil(tmp_path: Path) -> None:
    """`loadtests/run/_stack.py` sampled with psutil, which pyproject did not declare, beside `reports/procs.py`."""
    sampler = ResourceSampler(sample_s=3600)  # only the samples `watch` and `close` take: no race with a thread
    with spawned("hungry", [sys.executable, "-c", HUNGRY_CHILD], env=os.environ, log_dir=tmp_path) as proc:
        wait_for_line(proc, "ready")
        sampler.watch(proc)
        start_s = cpu_s(proc.pid)
        while cpu_s(proc.pid) - start_s < 0.05:  # it burns CPU: a twentieth of a second shows in /proc
            proc.check_alive()
            time.sleep(0.01)
        sampler.close()
        figures = sampler.figures(proc)
    assert (figures["name"], figures["pid"]) == ("hungry", proc.pid)
    assert figures["rss_peak_mb"] >= 64 and figures["rss_mb"] >= 64
    assert figures["cpu_pct"] is not None and figures["cpu_pct"] > 0
    assert "psutil" not in sys.modules


@pytest.mark.timeout(60)
def test_an_exited_process_keeps_its_last_sample(tmp_path: Path) -> None:
    """An exited, not yet reaped process reads as 0 MB; the sampler keeps what it last saw (Locust ends first)."""
    code = RESIDENT_64_MIB + "import sys\nsys.stdin.read()\n"  # it exits when its stdin closes
    sampler = ResourceSampler(sample_s=3600)
    log_path = tmp_path / "short.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=log)
    proc = Process(name="short", popen=popen, log_path=log_path)
    try:
        wait_for_line(proc, "ready")
        sampler.watch(proc)
        assert popen.stdin is not None
        popen.stdin.close()  # it exits now
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped: a zombie
        assert is_zombie(proc.pid)
        sampler.close()
        assert sampler.figures(proc)["rss_peak_mb"] >= 64 and sampler.figures(proc)["rss_mb"] >= 64
    finally:
        stop(proc)


# --- end to end -----------------------------------------------------------------------------------------------------


@pytest.fixture
def load_redis() -> Any:
    """The run's database (the run claims it itself); emptied afterwards and left marked as a test tool's."""
    try:
        target = stack.check_redis_url(LOAD_REDIS_URL, force=REDIS_FORCE)
    except stack.StackError as exc:
        pytest.fail(f"AIADMIN_LOAD_REDIS_URL: {exc} (AIADMIN_TEST_REDIS_FORCE=1 allows it)")
    client: Redis = Redis.from_url(LOAD_REDIS_URL)
    try:
        client.ping()
    except (RedisConnectionError, OSError) as exc:
        client.close()
        if IN_CI:
            pytest.fail(f"CI=true but Redis at {LOAD_REDIS_URL} does not answer: {exc}")
        pytest.skip(f"no Redis at {LOAD_REDIS_URL}")
    yield client
    client.flushdb()
    mark_sync(client, target)
    client.close()


@pytest.mark.redis
@pytest.mark.timeout(120)
@pytest.mark.parametrize("system", ["run", "split"])
def test_short_steady_run_answers_every_turn_once_with_exact_merges(
    load_redis: Redis, tmp_path: Path, system: str
) -> None:
    """`split`: the system as a deployment runs it, `aiadmin api`, `batcher` and `worker` as processes of their own."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.run",
            "--profile",
            "steady",
            "--duration-scale",
            "0.05",
            "--redis-url",
            LOAD_REDIS_URL,
            "--out-dir",
            str(tmp_path),
            *(["--flush"] if REDIS_FLUSH else []),
            *(["--force"] if REDIS_FORCE else []),
            "--batch-timeout-ms",
            "1000",
            "--llm-latency-s",
            "0.05,0.1,0.3",
            "--reply-timeout-s",
            "15",
            "--settle-s",
            "2",
            "--seed",
            "11",
            "--stack",
            system,
            # The profile's shape at a handful of clients: 1,100 of them are the 10-minute benchmark, not CI's.
            "--locust-arg=-u",
            "--locust-arg=8",
            "--locust-arg=-r",
            "--locust-arg=4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = orjson.loads((tmp_path / "steady.json").read_bytes())
    for key, kind in SUMMARY_KEYS.items():
        assert isinstance(summary[key], kind), key
    assert summary["turns_sent"] >= 8  # 8 clients open one conversation each at least
    assert summary["lost_turns"] == 0 and summary["double_replies"] == 0
    assert summary["turns_answered"] == summary["turns_sent"] == summary["replies"] == summary["e2e_ms"]["count"]
    merge = summary["merge"]
    assert merge["mismatched"] == 0 and merge["turns_checked"] == summary["turns_sent"]
    assert merge["fragments_sent"] == merge["fragments_processed"]
    assert summary["requests"]["failures"] == 0
    # A client stopped at the end while posting leaves one fragment without an answer, at most.
    answered = summary["requests"]["count"]
    assert answered <= merge["fragments_sent"] <= summary["fragments_sent"] <= answered + 8
    assert 1000 <= summary["e2e_ms"]["p50"] < 15_000  # at least the batch timeout, never the reply timeout
    assert summary["queue_lag_ms"]["count"] >= summary["turns_sent"]  # read from the worker's own metrics when split
    assert summary["settings"]["stack"] == system
    assert summary["flush_lateness_ms"]["p99"] is not None and summary["dead_letters"] == 0
    assert summary["settings"]["batch_timeout_ms"] == 1000 and summary["settings"]["llm_latency_s"] == "0.05,0.1,0.3"
    # The steady profile's stand-ins: the scripted LLM and the raised CRM budget, recorded.
    assert summary["settings"]["llm_mode"] == "scripted"
    assert summary["settings"]["system_env"]["AIADMIN_YCLIENTS_RPS"] == "500"
    assert 1 <= summary["peak_conversations"] <= 8
    windows = summary["windows"]
    assert windows["count"] == 3 and sum(windows["requests"]) == summary["requests"]["count"]
    # Every client opens in the first window (then thinks 20-40 s): a later window of this 30 s run may be quiet.
    assert len(windows["accept_p99_ms"]) == len(windows["queue_lag_p99_ms"]) == 3
    assert windows["accept_p99_ms"][0] is not None and windows["requests"][0] > 0
    assert summary["redis"]["keys"]["without_ttl"] <= 3  # the stats, lateness and queue structures only
    ours = ["aiadmin-run"] if system == "run" else ["aiadmin-api", "aiadmin-batcher", "aiadmin-worker"]
    assert [p["name"] for p in summary["processes"]] == ["fake-whatsapp", "fake-llm", "fake-crm", *ours, "locust"]
    assert all(p["rss_mb"] > 10 and p["cpu_pct"] is not None for p in summary["processes"])
    assert (tmp_path / "steady_stats.csv").read_text().count("E2E,reply") == 1

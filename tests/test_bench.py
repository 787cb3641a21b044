"""The benchmarks: the load generator against a tiny local server; quick ingest and worker runs on a real Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import phonenumbers
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from loadtests._processes import Process
from loadtests.bench._ingest import wrk_rows
from loadtests.bench._loadgen import GatewayRequests, Target, closed_loop, merged, open_loop, parse_response
from loadtests.bench._wrk import LUA_SCRIPT, Side, WrkOutputError, parse_wrk, run_wrk, wrk_comparison, wrk_path
from simulator.phones import russian_mobiles

from .conftest import IN_CI, REAL_REDIS_URL, REDIS_FLUSH, REDIS_FORCE

# The benchmark's database: the tests' own (AIADMIN_TEST_REDIS_URL) unless AIADMIN_BENCH_REDIS_URL names another.
BENCH_REDIS_URL = os.environ.get("AIADMIN_BENCH_REDIS_URL") or REAL_REDIS_URL
SECTIONS = ("accept_latency", "throughput", "append", "flush_lateness", "claim")
WORKER_CASES = ("llm_0ms", "llm_5s")
MUST_BE_ZERO = {
    "accept_latency": ("non_2xx", "errors"),
    "throughput": ("api_non_2xx", "api_errors", "api_requests_exhausted", "empty_non_2xx", "empty_errors"),
    "append": ("errors",),
    "flush_lateness": ("missing", "duplicates", "unexpected", "wrong_fragments", "append_errors"),
    "claim": ("errors",),
}


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, status: int, bodies: list[bytes] | None = None
) -> None:
    """A keep-alive HTTP/1.1 server that answers every request with `status` and `{}` (keeping bodies if asked)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.lower().split(b"\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length"))
            body = await reader.readexactly(length)
            if bodies is not None:
                bodies.append(body)
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}" % status)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def tiny_server() -> AsyncIterator[dict[int, Target]]:
    """Local servers answering 200 and 500, by status."""
    servers = {s: await asyncio.start_server(partial(_answer, status=s), "127.0.0.1", 0) for s in (200, 500)}
    yield {status: Target("127.0.0.1", s.sockets[0].getsockname()[1], "/x") for status, s in servers.items()}
    for server in servers.values():
        server.close()
        await server.wait_closed()


def test_russian_mobiles_are_distinct_and_valid() -> None:
    phones = russian_mobiles(500)
    assert len(set(phones)) == 500
    assert all(p.startswith("79") and len(p) == 11 for p in phones)
    assert all(phonenumbers.is_valid_number(phonenumbers.parse("+" + p)) for p in phones)


def test_requests_carry_unique_message_ids() -> None:
    requests = GatewayRequests(["79001234567", "79161234567"], tag="t").take(Target("127.0.0.1", 1, "/w"), 3)
    bodies = [orjson.loads(r.partition(b"\r\n\r\n")[2]) for r in requests]
    assert [b["messageId"] for b in bodies] == ["bench-t-0", "bench-t-1", "bench-t-2"]
    assert [b["from"] for b in bodies] == ["79001234567", "79161234567", "79001234567"]


def test_response_is_framed_by_content_length_only_when_complete() -> None:
    answer = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"
    assert parse_response(bytearray(answer)) == (202, len(answer))
    assert parse_response(bytearray(answer[:-1])) == (0, 0)


async def test_closed_loop_counts_every_answer(tiny_server: dict[int, Target]) -> None:
    target = tiny_server[200]
    requests = GatewayRequests(russian_mobiles(10), tag="c").take(target, 5000)
    tally = await closed_loop(target, requests, connections=4, duration_s=0.3)
    assert tally.completed == tally.sent > 0
    assert (tally.non_2xx, tally.errors) == (0, 0)


async def test_slices_of_one_server_merge_into_one_rate(tiny_server: dict[int, Target]) -> None:
    requests = GatewayRequests(russian_mobiles(5), tag="m").take(tiny_server[200], 400)
    slices = [
        await closed_loop(tiny_server[200], part, connections=2, duration_s=5)
        for part in (requests[:100], requests[100:])
    ]
    whole = merged(slices)
    assert whole.completed == whole.statuses[200] == 400
    assert whole.elapsed_s == pytest.approx(sum(s.elapsed_s for s in slices))
    assert whole.rate_per_s == pytest.approx(400 / whole.elapsed_s)


async def test_open_loop_keeps_its_rate_and_counts_non_2xx(tiny_server: dict[int, Target]) -> None:
    target = tiny_server[500]
    requests = GatewayRequests(russian_mobiles(10), tag="o").take(target, 100)
    tally = await open_loop(target, requests, rate_per_s=500, warm_connections=2)
    assert tally.non_2xx == tally.completed == 100
    assert tally.errors == 0
    assert 0.15 < tally.elapsed_s < 1.0  # 100 requests at 500/s take 0.2 s, answers included


def _bench_redis_or_skip() -> str:
    """The benchmark's own database (it flushes it); skipped without a server unless CI=true."""
    client = Redis.from_url(BENCH_REDIS_URL)
    try:
        client.ping()
    except (RedisConnectionError, OSError) as exc:
        if IN_CI:
            pytest.fail(f"CI=true but Redis at {BENCH_REDIS_URL} does not answer: {exc}")
        pytest.skip(f"no Redis at {BENCH_REDIS_URL}")
    finally:
        client.close()
    return BENCH_REDIS_URL


@pytest.fixture(scope="module")
def quick_stages() -> tuple[int, dict[str, Any]]:
    """One `aiadmin bench stages --quick` run (ingest, worker and turn stages) shared by the tests below."""
    redis_url = _bench_redis_or_skip()
    out = Path(tempfile.mkdtemp(prefix="stages-bench-")) / "bench-stages.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIADMIN_")}
    run = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "system",
                "bench",
                "stages",
                "--quick",
                "--redis-url",
                redis_url,
                "--out",
                str(out),
            ),
            *(["--flush"] if REDIS_FLUSH else []),
            *(["--force"] if REDIS_FORCE else []),
        ],
        env=env,
        capture_output=True,
        timeout=200,
        check=False,
    )
    assert out.exists(), run.stderr.decode()[-2000:]
    return run.returncode, orjson.loads(out.read_bytes())


@pytest.mark.redis
@pytest.mark.timeout(240)  # the shared run takes about 40 s
def test_quick_ingest_bench_reports_every_section_without_errors(quick_stages: tuple[int, dict[str, Any]]) -> None:
    _, stages = quick_stages
    report = stages["benchmarks"]["ingest"]
    assert report["problems"] == []
    for name in SECTIONS:
        median = report["sections"][name]["median"]
        assert median and all(isinstance(v, int | float) for v in median.values()), name
        assert all(median[key] == 0 for key in MUST_BE_ZERO[name]), name
    assert report["sections"]["flush_lateness"]["median"]["jobs"] == 200
    assert report["sections"]["throughput"]["api_rss_mb"] > 0
    assert [row["stage"] for row in report["summary"]]
    by_wrk = report["sections"]["wrk"]
    if wrk_path() is None:
        assert "apt-get install wrk" in by_wrk["skipped"]
    else:
        assert len(by_wrk["runs"]) == 1 and by_wrk["median"]["ratio"] > 0
        assert all(
            run[f"{side}_{what}"] == 0
            for run in by_wrk["runs"]
            for side in ("api", "empty")
            for what in ("non_2xx", "errors")
        )


@pytest.mark.redis
@pytest.mark.timeout(240)
def test_quick_worker_bench_reports_numbers_and_no_double_replies(quick_stages: tuple[int, dict[str, Any]]) -> None:
    _, stages = quick_stages
    report = stages["benchmarks"]["worker"]
    for name in WORKER_CASES:
        section = report["sections"][name]
        median = section["median"]
        assert median and all(isinstance(v, int | float) for v in median.values()), name
        assert median["messages_per_s"] > 0 and median["replies"] > 0, name
        assert median["double_replies"] == 0, name
        assert section["idle_rss_mb"] > 0 and section["after_rss_mb"] > 0, name
    fast = report["sections"]["llm_0ms"]["median"]
    assert (fast["replies"], fast["lost_replies"], fast["jobs_done"], fast["dead_letters"]) == (200, 0, 200, 0)
    slow = report["sections"]["llm_5s"]["median"]
    assert (slow["replies"], slow["lost_replies"], slow["double_replies"]) == (1000, 0, 0)
    assert report["problems"] == []


@pytest.mark.redis
@pytest.mark.timeout(240)
def test_quick_stages_set_every_reference_stage_beside_its_figure(quick_stages: tuple[int, dict[str, Any]]) -> None:
    returncode, stages = quick_stages
    assert returncode == 0 and stages["problems"] == []
    assert [s["key"] for s in stages["stages"]] == [
        "api_accept",
        "add_to_batch",
        "timeout",
        "batch_processing",
        "queue_handover",
        "ai_processing",
        "sending",
    ]
    for stage in stages["stages"]:
        assert 0 < stage["p50_ms"] <= stage["p99_ms"], stage["key"]
        assert stage["reference"] and stage["name"], stage["key"]
        assert stage["met"] in (True, False, None) and (stage["met"] is None) == (stage["goal"] is None)
    timeout = next(s for s in stages["stages"] if s["key"] == "timeout")
    assert 2000 <= timeout["p50_ms"] < 2100  # --quick runs the 2 s timeout; the real run the reference's 9 s
    assert {t["key"] for t in stages["throughput"]} >= {"api", "api_vs_empty", "batcher", "worker"}
    assert all(t["value"] > 0 for t in stages["throughput"])
    assert [p["name"] for p in stages["processes"]] == ["aiadmin api", "aiadmin batcher", "aiadmin worker"]
    assert all(p["rss_mb"] > 0 and p["met"] == (p["rss_mb"] <= p["goal_rss_mb"]) for p in stages["processes"])
    turn = stages["benchmarks"]["turn"]
    assert turn["handover"]["median"]["errors"] == 0 and turn["handover"]["median"]["calls"] == 50
    assert stages["config"]["batch_timeout_ms"] == 9000


# --- the wrk comparison ---------------------------------------------------------------------------------

WRK_REPORT = Path(__file__).parent / "data" / "wrk_report.txt"  # a real `wrk --latency` report, kept as printed
needs_wrk = pytest.mark.skipif(wrk_path() is None, reason="wrk is not installed (apt-get install wrk)")


def test_wrk_report_is_read_into_figures() -> None:
    result = parse_wrk(WRK_REPORT.read_text())
    assert (result.requests, result.rps) == (13556, 6731.52)
    assert (result.non_2xx, result.socket_errors) == (0, 0)
    assert result.latency_ms_p50 == pytest.approx(2.82)
    assert result.latency_ms_p99 == pytest.approx(30.53)


def test_a_wrk_report_without_figures_is_refused() -> None:
    with pytest.raises(WrkOutputError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


@needs_wrk
async def test_wrk_script_sends_a_new_valid_sender_and_message_id_every_request(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    server = await asyncio.start_server(partial(_answer, status=500, bodies=bodies), "127.0.0.1", 0)
    script = tmp_path / "webhook.lua"
    script.write_text(LUA_SCRIPT)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/w"
    wrk = wrk_path()
    assert wrk is not None
    try:
        result = await run_wrk(wrk, url, script, connections=2, duration_s=1, args=("t1", "500"))
    finally:
        server.close()
        await server.wait_closed()
    messages = [orjson.loads(b) for b in bodies]
    assert len(messages) >= result.requests > 0
    assert result.non_2xx == result.requests  # every answer was a 500, and wrk counted them
    assert len({m["from"] for m in messages}) == len({m["messageId"] for m in messages}) == len(messages)
    assert all(m["messageId"].startswith("t1-") for m in messages)
    assert min(int(m["from"]) for m in messages) > 79000000500  # the run's senders come after the given one
    assert all(phonenumbers.is_valid_number(phonenumbers.parse(m["from"])) for m in messages)


async def test_without_wrk_the_comparison_is_skipped_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no wrk on the path

    async def unused() -> None:
        raise AssertionError("no run may start without wrk")

    proc = Process(name="x", popen=subprocess.Popen([sys.executable, "-c", "pass"]), log_path=tmp_path / "x.log")
    proc.popen.wait()
    sides = (Side("api_", proc, "/a", unused), Side("empty_", proc, "/b", unused))
    result = await wrk_comparison(sides, repeats=3, connections=32, duration_s=1, tag="t")
    assert result["runs"] == []
    assert "apt-get install wrk" in result["skipped"]
    [row] = wrk_rows(result)
    assert row.met is None and "wrk" in row.ours

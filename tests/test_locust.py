"""`locust -f loadtests/` behaves like Locust: its own -u/-r/-t override the profile's shape, a run against a
system that does not answer stops early with a non-zero exit code, and the load tests' options are listed.

Locust monkey-patches the process with gevent on import, so the locustfile runs in a subprocess (bounded);
the shape's arithmetic and the early-stop rule are pure and tested here directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtests._abort import AbortRule
from loadtests._profiles import profile_named
from simulator.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
LOCUST_LIMIT_S = 40.0  # start-up (~2 s), the early stop and the drain; far below any profile's length


class _Failing(BaseHTTPRequestHandler):
    """A system that is up (GET /health answers) but refuses every webhook with a 500."""

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/health" else 404)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(500)

    def _answer(self, status: int) -> None:
        body = b'{"error":"internal","message":"down for the test"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads Locust's output
        pass


@pytest.fixture
def failing_system() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _locust(*args: str, timeout_s: float = LOCUST_LIMIT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _headless_against(port: int, out_dir: Path, *args: str) -> list[str]:
    target = f"http://127.0.0.1:{port}"
    return [
        "--headless",
        "--host",
        target,
        "--whatsapp-url",
        target,
        "--redis-url",
        "",
        "--settle-s",
        "0.2",
        "--out-dir",
        str(out_dir),
        "--loglevel",
        "INFO",
        *args,
    ]


# --- the shape: Locust's own flags win -----------------------------------------------------------------------


def test_locust_users_and_spawn_rate_flags_override_every_stage() -> None:
    spike = profile_named("spike").overridden(users=4, spawn_rate=0.5)
    assert {(s.users, s.spawn_rate) for s in spike.stages} == {(4, 0.5)}
    assert spike.duration_s == profile_named("spike").duration_s
    assert spike.tick(0) == (4, 0.5)


def test_locust_run_time_flag_cuts_the_profile_or_holds_its_last_stage() -> None:
    spike = profile_named("spike")
    first, second = spike.stages[0], spike.stages[1]
    cut_s = (first.until_s + second.until_s) / 2  # inside the second stage
    cut = spike.overridden(run_time_s=cut_s)
    assert cut.stages == (first, replace(second, until_s=cut_s))
    assert cut.tick(cut_s - 0.1) == (second.users, second.spawn_rate) and cut.tick(cut_s) is None
    burst = profile_named("burst", scale=0.1)
    last = burst.stages[-1]
    held = burst.overridden(run_time_s=last.until_s * 2)
    assert held.tick(last.until_s * 2 - 0.1) == (last.users, last.spawn_rate) and held.tick(last.until_s * 2) is None


def test_without_locust_flags_the_profile_is_unchanged() -> None:
    assert profile_named("spike").overridden() == profile_named("spike")


@pytest.mark.parametrize(("users", "spawn_rate", "run_time_s"), [(0, None, None), (None, 0.0, None), (None, None, 0.0)])
def test_nonsense_locust_flags_are_refused(
    users: int | None, spawn_rate: float | None, run_time_s: float | None
) -> None:
    with pytest.raises(ValueError, match="must"):
        profile_named("steady").overridden(users=users, spawn_rate=spawn_rate, run_time_s=run_time_s)


# --- the early stop ------------------------------------------------------------------------------------------


def test_a_silent_target_stops_the_run_after_the_window() -> None:
    rule = AbortRule(no_answer_s=10, failure_ratio=0.5, min_requests=20)
    assert rule.reason(now_s=109.9, last_answer_s=100, requests=0, failures=0) is None
    reason = rule.reason(now_s=110, last_answer_s=100, requests=0, failures=0)
    assert reason is not None and "not answered for 10 s" in reason


def test_failures_above_the_ratio_stop_the_run_once_enough_requests_were_made() -> None:
    rule = AbortRule(no_answer_s=10, failure_ratio=0.5, min_requests=20)
    assert rule.reason(now_s=1, last_answer_s=1, requests=19, failures=19) is None  # too few to judge
    assert rule.reason(now_s=1, last_answer_s=1, requests=20, failures=10) is None  # at the limit, not over it
    reason = rule.reason(now_s=1, last_answer_s=1, requests=20, failures=11)
    assert reason is not None and "11 of 20 requests failed" in reason


def test_zero_window_and_full_ratio_never_stop() -> None:
    rule = AbortRule(no_answer_s=0, failure_ratio=1, min_requests=1)
    assert rule.reason(now_s=10_000, last_answer_s=0, requests=100, failures=100) is None


@pytest.mark.parametrize(
    "kwargs", [{"no_answer_s": -1}, {"failure_ratio": 0}, {"failure_ratio": 1.5}, {"min_requests": 0}]
)
def test_nonsense_abort_options_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        AbortRule(**kwargs)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_locust_against_a_system_that_is_down_stops_within_seconds_with_exit_code_1(tmp_path: Path) -> None:
    started = time.monotonic()
    # Only the no-answer rule: 1,100 clients against nothing fail fast enough to trip the failure ratio first.
    done = _locust(*_headless_against(free_port(), tmp_path, "--abort-no-answer-s", "2", "--abort-failure-ratio", "1"))
    elapsed_s = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-3000:]
    assert elapsed_s < LOCUST_LIMIT_S  # the profile itself would run 600 s
    assert "stopping the run early (exit code 1): the target has not answered" in done.stderr
    summary = json.loads((tmp_path / "steady.json").read_text())
    assert summary["aborted"].startswith("the target has not answered")


@pytest.mark.timeout(60)
def test_locust_stops_early_with_exit_code_1_when_failures_exceed_the_ratio(
    failing_system: int, tmp_path: Path
) -> None:
    started = time.monotonic()
    done = _locust(
        *_headless_against(failing_system, tmp_path, "--abort-min-requests", "5", "--abort-no-answer-s", "0")
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert time.monotonic() - started < LOCUST_LIMIT_S
    summary = json.loads((tmp_path / "steady.json").read_text())
    assert "requests failed" in summary["aborted"]


@pytest.mark.timeout(60)
def test_locust_run_time_flag_ends_the_profile_and_is_announced(tmp_path: Path) -> None:
    # The early stop is off, so only -t can end this 10-minute profile against a target that is down.
    args = ("-u", "2", "-r", "2", "-t", "3s", "--abort-no-answer-s", "0", "--abort-failure-ratio", "1")
    started = time.monotonic()
    done = _locust(*_headless_against(free_port(), tmp_path, *args))
    assert time.monotonic() - started < LOCUST_LIMIT_S, done.stderr[-3000:]
    assert "profile steady (2 users at 2/s until 3 s), Locust's -u 2 -r 2.0 -t 3 override it" in done.stderr
    assert "have no impact on LoadShapes" not in done.stderr  # Locust's own warning that it ignores them
    summary = json.loads((tmp_path / "steady.json").read_text())
    assert summary["aborted"] is None
    assert summary["profile_definition"]["stages"] == [{"until_s": 3, "users": 2, "spawn_rate": 2.0}]


# --- the options ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_locust_lists_the_load_tests_options_with_their_defaults() -> None:
    done = _locust("--aiadmin-help")
    assert done.returncode == 0, done.stderr[-3000:]
    for option in ("--aiadmin-profile", "--abort-no-answer-s", "--abort-failure-ratio", "--abort-min-requests"):
        assert option in done.stdout
    words = " ".join(done.stdout.split())  # argparse wraps the help at the terminal's width
    assert "(default steady)" in words and "(default 15.0)" in words


@pytest.mark.timeout(60)
def test_locusts_own_profile_option_no_longer_picks_the_load_profile(tmp_path: Path) -> None:
    done = _locust(
        *_headless_against(free_port(), tmp_path, "--profile", "burst", "--abort-no-answer-s", "1", "-t", "2s")
    )
    assert "load shape: profile steady" in done.stderr, done.stderr[-3000:]
    assert (tmp_path / "steady.json").exists() and not (tmp_path / "burst.json").exists()

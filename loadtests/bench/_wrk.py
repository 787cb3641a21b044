"""The webhook against the empty endpoint, measured by `wrk`: a load generator we did not write.

One thread and 32 connections (as the closed loops), alternating API, empty, API, empty… in one run, so
that a shared machine's drifting speed hits both alike. A Lua script makes every request a new sender with
a new messageId: the API parses, validates and batches a phone it has never seen, as the issue measured it.
Signatures are off on both sides (the benchmark's processes run in development without secrets, and the
empty endpoint checks none). Skipped with a note when `wrk` is not installed (Debian/Ubuntu package `wrk`).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests._processes import LOCALHOST, CpuWindow, Process
from loadtests.bench._figures import section

WRK_THREADS = 1
WRK_TIMEOUT_S = 5  # wrk's own per-request timeout: an answer slower than this counts as an error
GOAL_RATIO = 0.70
APT_PACKAGE = "wrk"
# Senders each run starts after the last run's: none is in the API's phone caches from before.
SENDERS_PER_RUN = 1_000_000
# Every request a new sender (+7 900 …, a valid Russian mobile range) and a new messageId; `init` takes the
# run's tag and its first sender, so one run never repeats another's. Meant for one wrk thread (WRK_THREADS).
LUA_SCRIPT = r"""
local counter = 0
local tag = "wrk"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function init(args)
  tag = args[1] or tag
  counter = tonumber(args[2]) or 0
end
function request()
  counter = counter + 1
  local body = string.format(
    '{"from":"+7900%07d","message":"Хочу записаться на стрижку","messageId":"%s-%d"}',
    counter % 10000000, tag, counter)
  return wrk.format(nil, nil, nil, body)
end
"""
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_PERCENTILE = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)", re.MULTILINE)
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


class WrkOutputError(Exception):
    """wrk's report lacks a figure this module reads; the message holds the report."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one wrk run printed."""

    requests: int
    rps: float
    non_2xx: int
    socket_errors: int
    latency_ms_p50: float | None
    latency_ms_p99: float | None


def parse_wrk(output: str) -> WrkResult:
    """The figures of wrk's report (run with `--latency`)."""
    rps, total = _RPS.search(output), _TOTAL.search(output)
    if rps is None or total is None:
        raise WrkOutputError(f"no request count in wrk's report:\n{output}")
    non_2xx = _NON_2XX.search(output)
    errors = _SOCKET_ERRORS.search(output)
    latency = {q: float(v) * _SECONDS[unit] * 1000 for q, v, unit in _PERCENTILE.findall(output)}
    return WrkResult(
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        latency_ms_p50=latency.get("50"),
        latency_ms_p99=latency.get("99"),
    )


def wrk_path() -> str | None:
    return shutil.which("wrk")


async def run_wrk(
    wrk: str, url: str, script: Path, *, connections: int, duration_s: int, args: Sequence[str]
) -> WrkResult:
    """One wrk run (whole seconds; `args` go to the script); WrkOutputError when it fails or prints no figures."""
    options = [f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration_s}s", f"--timeout={WRK_TIMEOUT_S}s", "--latency"]
    proc = await asyncio.create_subprocess_exec(
        wrk,
        *options,
        "-s",
        str(script),
        url,
        "--",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise WrkOutputError(f"wrk exited with code {proc.returncode}:\n{text}")
    return parse_wrk(text)


def _schedstat_ns(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable but waiting for one) of a process's main thread; None where unreadable."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None  # not Linux, or the process is gone
    return int(on_cpu), int(waiting)


class RunQueueWindow:
    """How long named processes waited for a CPU while runnable over a block, in % of the block's time.

    On a shared machine this says what bounds a round trip: a Redis that waits for a CPU holds every
    request it has in hand, while the API, with nothing else to do, sits idle.
    """

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.wait_pct: dict[str, float] = {}

    def __enter__(self) -> RunQueueWindow:
        self._start_ns = time.perf_counter_ns()
        self._before = {name: _schedstat_ns(pid) for name, pid in self._pids.items()}
        return self

    def __exit__(self, *_: object) -> None:
        wall_ns = max(time.perf_counter_ns() - self._start_ns, 1)
        for name, pid in self._pids.items():
            before, after = self._before[name], _schedstat_ns(pid)
            if before is not None and after is not None:
                self.wait_pct[name] = 100 * (after[1] - before[1]) / wall_ns


@dataclass(frozen=True, slots=True)
class Side:
    """One server of the comparison: its process, the path it serves, and what runs before each of its runs."""

    prefix: str
    proc: Process
    path: str
    before: Callable[[], Awaitable[None]]
    redis_pid: int | None = None  # the local Redis it uses, sampled beside it (None: none, or a cluster's nodes)


async def wrk_comparison(
    sides: Sequence[Side],
    *,
    repeats: int,
    connections: int,
    duration_s: int,
    tag: str,
) -> dict[str, Any]:
    """`repeats` alternations of the sides; per side the median req/s and its ratio to the last side (the baseline).

    `ratio` is the first side's: the webhook against the empty endpoint.
    """
    wrk = wrk_path()
    if wrk is None:
        note = f"skipped: wrk is not installed (apt-get install {APT_PACKAGE})"
        return {"skipped": note, "median": {}, "runs": []}
    *measured, baseline = sides
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aiadmin-wrk-") as tmp:
        script = Path(tmp) / "webhook.lua"
        script.write_text(LUA_SCRIPT)
        for repeat in range(repeats):
            run: dict[str, Any] = {}
            for side in sides:
                await side.before()
                url = f"http://{LOCALHOST}:{side.proc.port}{side.path}"
                pids = {"server": side.proc.pid, "redis": side.redis_pid}
                with CpuWindow(pids) as cpu, RunQueueWindow(pids) as waits:
                    result = await run_wrk(
                        wrk,
                        url,
                        script,
                        connections=connections,
                        duration_s=duration_s,
                        args=(f"{tag}-{repeat}", str(repeat * SENDERS_PER_RUN)),
                    )
                side.proc.check_alive()
                run |= _side_figures(side.prefix, result, cpu.pct, waits.wait_pct)
            base = run[f"{baseline.prefix}rps"]
            for side in measured:
                run[f"{side.prefix}ratio"] = run[f"{side.prefix}rps"] / base if base else None
            run["ratio"] = run[f"{measured[0].prefix}ratio"]
            # CPU per request, empty over API: what the ratio would be if both got whole cores. It hardly moves
            # with a shared machine's load, which the req/s ratio follows (see the run-queue waits).
            api_us, empty_us = (
                run[f"{measured[0].prefix}cpu_us_per_request"],
                run[f"{baseline.prefix}cpu_us_per_request"],
            )
            run["cpu_ratio"] = empty_us / api_us if api_us and empty_us else None
            runs.append(run)
    return summarize(runs, first=measured[0].prefix, baseline=baseline.prefix) | {
        "tool": "wrk",
        "threads": WRK_THREADS,
        "connections": connections,
        "duration_s": duration_s,
        "goal_ratio": GOAL_RATIO,
        "order": [side.prefix.rstrip("_") for side in sides] * repeats,
    }


def _side_figures(
    prefix: str, result: WrkResult, cpu_pct: Mapping[str, float], wait_pct: Mapping[str, float]
) -> dict[str, Any]:
    server_pct = cpu_pct.get("server", 0.0)
    return {
        f"{prefix}rps": result.rps,
        f"{prefix}requests": result.requests,
        f"{prefix}non_2xx": result.non_2xx,
        f"{prefix}errors": result.socket_errors,
        f"{prefix}latency_ms_p50": result.latency_ms_p50,
        f"{prefix}latency_ms_p99": result.latency_ms_p99,
        f"{prefix}cpu_pct": server_pct,
        f"{prefix}redis_cpu_pct": cpu_pct.get("redis"),
        f"{prefix}runqueue_wait_pct": wait_pct.get("server"),
        f"{prefix}redis_runqueue_wait_pct": wait_pct.get("redis"),
        f"{prefix}cpu_us_per_request": 1e4 * server_pct / result.rps if result.rps else None,
    }


def summarize(runs: list[dict[str, Any]], *, first: str, baseline: str) -> dict[str, Any]:
    """Medians over the alternations: the ratio judged is the median of the per-alternation ratios."""
    out = section(runs)
    rps, base = out["median"][f"{first}rps"], out["median"][f"{baseline}rps"]
    out["median"]["ratio_of_medians"] = rps / base if rps is not None and base else None
    return out

"""The processes under test, for the load runner and the benchmarks: start, stop, readiness, memory and CPU.

Each is a separate OS process, as in production, logging to a file. Memory and CPU are read from `/proc`
(Linux, where the runs and CI live): psutil would be one more dependency for three numbers the kernel
already prints. Elsewhere the figures stay empty (0 MB, no CPU %) rather than failing the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

LOCALHOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0  # the worker finishes in-flight turns on SIGTERM; the others stop at once
POLL_S = 0.1
SAMPLE_S = 1.0
SERIES_EVERY_S = 10.0  # one RSS point per process this often (the soak's memory over time)
SERIES_MAX_POINTS = 720  # then every other point goes and the interval doubles: bounded for any length
LOG_TAIL_LINES = 20


class ProcessError(Exception):
    """A process under test exited, never became ready or cannot be read; the message shows its log's tail."""


@dataclass(frozen=True, slots=True)
class Process:
    """A started process, its log file and (for servers) its port."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ProcessError(f"{self.name} exited with code {code}:\n{self.log_tail()}")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` of a process's log, for an error message; empty when it cannot be read."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def spawn(
    name: str, args: list[str], *, env: Mapping[str, str], log_dir: Path, port: int = 0, cwd: Path | None = None
) -> Process:
    """Start a process with its output in `log_dir/<name>.log`; the caller stops it."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            args, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd
        )
    return Process(name=name, popen=popen, log_path=log_path, port=port)


def stop(proc: Process, *, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM, then SIGKILL after `timeout_s`; the exit code."""
    if proc.popen.poll() is None:
        proc.popen.terminate()
        try:
            proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(timeout_s)
    return proc.popen.returncode


@contextlib.contextmanager
def spawned(
    name: str, args: list[str], *, env: Mapping[str, str], log_dir: Path, port: int = 0, cwd: Path | None = None
) -> Iterator[Process]:
    """Start a process; it is stopped (SIGTERM, then SIGKILL) however the block ends."""
    proc = spawn(name, args, env=env, log_dir=log_dir, port=port, cwd=cwd)
    try:
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def stopping(procs: list[Process]) -> Iterator[list[Process]]:
    """Stop every process of `procs` (in reverse order of start) however the block ends."""
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            stop(proc)


def tee(source: IO[bytes], sinks: Sequence[IO[bytes]]) -> threading.Thread:
    """Copy a child's output line by line to every sink (its log file and our stderr) on a thread."""

    def copy() -> None:
        for line in iter(source.readline, b""):
            for sink in sinks:
                sink.write(line)
                sink.flush()

    thread = threading.Thread(target=copy, name="tee", daemon=True)
    thread.start()
    return thread


# --- memory and CPU, from /proc ---------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory in MiB, from /proc/<pid>/status; ProcessError when the kernel does not say."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ProcessError(f"no VmRSS for process {pid} (exited?)")


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses): state is [0]."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used, from /proc/<pid>/stat."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def is_zombie(pid: int) -> bool:
    """Exited but not yet reaped: its memory reads as nothing, so its last sample must stand."""
    return _stat_fields(pid)[0] == "Z"


def local_redis_pid(info: dict[str, Any]) -> int | None:
    """The Redis server's pid when it runs on this machine, so its CPU use can be read too."""
    pid = info.get("process_id")
    with contextlib.suppress(OSError, ValueError, TypeError):
        if Path(f"/proc/{int(pid)}/comm").read_text().startswith("redis"):  # type: ignore[arg-type]
            return int(pid)  # type: ignore[arg-type]
    return None


class CpuWindow:
    """CPU use of named processes and of this process over a block, in % of one core."""

    def __init__(self, pids: dict[str, int | None], *, own_name: str = "bench") -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._own_name = own_name
        self.pct: dict[str, float] = {}

    def __enter__(self) -> CpuWindow:
        self._start = time.perf_counter()
        self._own = time.process_time()
        self._cpu = {name: cpu_s(pid) for name, pid in self._pids.items()}
        return self

    def __exit__(self, *_: object) -> None:
        wall_s = max(time.perf_counter() - self._start, 1e-9)
        self.pct = {name: 100 * (cpu_s(pid) - self._cpu[name]) / wall_s for name, pid in self._pids.items()}
        self.pct[self._own_name] = 100 * (time.process_time() - self._own) / wall_s

    def figures(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}{name}_cpu_pct": pct for name, pct in self.pct.items()}


@dataclass
class Usage:
    """What one watched process used: RSS last and peak, CPU seconds between its first and last sample."""

    proc: Process
    cpu_start_s: float
    since: float
    cpu_last_s: float
    last: float
    rss_mb: float = 0.0
    rss_peak_mb: float = 0.0
    cpu_pct: float | None = None
    series: list[tuple[float, float]] = field(default_factory=list)  # (s since watched, RSS MB)
    series_every_s: float = SERIES_EVERY_S

    def record(self, now: float, rss: float) -> None:
        """One point of RSS over time, at most every `series_every_s`; thinned by half when full."""
        at = now - self.since
        if self.series and at - self.series[-1][0] < self.series_every_s:
            return
        self.series.append((round(at, 1), round(rss, 1)))
        if len(self.series) > SERIES_MAX_POINTS:
            self.series = self.series[::2]
            self.series_every_s *= 2

    def figures(self) -> dict[str, Any]:
        return {
            "name": self.proc.name,
            "pid": self.proc.pid,
            "rss_mb": round(self.rss_mb, 1),
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "cpu_pct": None if self.cpu_pct is None else round(self.cpu_pct, 1),
            "rss_series_mb": [list(point) for point in self.series],
        }


class ResourceSampler:
    """RSS of the watched processes every `sample_s` (last and peak), and their CPU % from `watch` to `close`.

    A process that has exited by `close` (Locust) is measured up to its last sample.
    """

    def __init__(self, *, sample_s: float = SAMPLE_S) -> None:
        self._sample_s = sample_s
        self._watched: dict[int, Usage] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()

    def watch(self, proc: Process) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            cpu, now = cpu_s(proc.pid), time.monotonic()
            with self._lock:
                self._watched[proc.pid] = Usage(proc, cpu, now, cpu, now)
        self._sample()

    def close(self) -> None:
        """Stop sampling and set each process's CPU %; again: nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        for u in self._snapshot():
            u.cpu_pct = 100 * (u.cpu_last_s - u.cpu_start_s) / max(u.last - u.since, 1e-9)

    def figures(self, proc: Process) -> dict[str, Any]:
        """`{"name", "pid", "rss_mb", "rss_peak_mb", "cpu_pct"}` of `proc`; zeros and null when never read."""
        with self._lock:
            usage = self._watched.get(proc.pid)
        return (usage or Usage(proc, 0.0, 0.0, 0.0, 0.0)).figures()

    def _snapshot(self) -> list[Usage]:
        with self._lock:
            return list(self._watched.values())

    def _loop(self) -> None:
        while not self._stop.wait(self._sample_s):
            self._sample()

    def _sample(self) -> None:
        for u in self._snapshot():
            with contextlib.suppress(OSError, ValueError, IndexError, ProcessError):
                if is_zombie(u.proc.pid):
                    continue
                rss = rss_mb(u.proc.pid)
                u.cpu_last_s, u.last = cpu_s(u.proc.pid), time.monotonic()
                u.rss_mb, u.rss_peak_mb = rss, max(u.rss_peak_mb, rss)
                u.record(u.last, rss)


# --- readiness --------------------------------------------------------------------------------------------------


def wait_http(proc: Process, url: str, *, ok: Sequence[int] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll `url` until it answers (with a status in `ok`, when given) while the process lives; bounded."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            proc.check_alive()
            try:
                response = http.get(url)
                if ok is None or response.status_code in ok:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(POLL_S)
    raise ProcessError(f"{proc.name} not ready at {url} within {timeout_s:.0f} s ({last}):\n{proc.log_tail()}")


async def wait_http_ready(proc: Process, *, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll GET /health on `proc.port` until the server answers with any HTTP status (bounded)."""
    request = f"GET /health HTTP/1.1\r\nHost: {LOCALHOST}\r\nConnection: close\r\n\r\n".encode()

    async def answers() -> bool:
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, proc.port), 1.0)
            try:
                writer.write(request)
                return (await asyncio.wait_for(reader.readuntil(b"\r\n"), 1.0)).startswith(b"HTTP/1.1 ")
            finally:
                writer.close()
        return False

    await wait_until(answers, proc, timeout_s=timeout_s, what="did not answer")


async def wait_until(
    ready: Callable[[], Awaitable[bool]], proc: Process, *, timeout_s: float = READY_TIMEOUT_S, what: str
) -> None:
    """Poll `ready` while `proc` lives (bounded); ProcessError with the log's tail when it never is."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        proc.check_alive()
        if await ready():
            return
        await asyncio.sleep(POLL_S)
    raise ProcessError(f"{proc.name} {what} within {timeout_s:.0f} s:\n{proc.log_tail()}")

"""The processes under test: their environment, start and stop, memory and CPU, and readiness waits.

Every benchmark runs the components as separate OS processes, as in production, on a Redis database it
flushes; it claims that database first through `simulator.redis_target` (loopback, not db 0, ours or empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from simulator.redis_target import Target, TargetRefused, TargetUnreachable, check_target, claim_url
from system.keys import Keys
from system.runtime import connect_redis
from system.settings import ENV_PREFIX, Settings

LOCALHOST = "127.0.0.1"
KEY_PREFIX = "bench"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.1


class BenchError(Exception):
    """The benchmark cannot run or a process under test misbehaved; the message says which."""


def check_redis_url(url: str, *, force: bool, who: str = "aiadmin bench") -> Target:
    """The benchmark's Redis database; BenchError for db 0 or a remote host unless forced (it is flushed)."""
    try:
        return check_target(url, owner=who, force=force)
    except TargetRefused as exc:
        raise BenchError(str(exc)) from exc


def claim_redis(url: str, *, force: bool, flush: bool, who: str = "aiadmin bench") -> Target:
    """Check `url`, then flush its database and mark it as ours; BenchError when it holds someone else's keys."""
    target = check_redis_url(url, force=force, who=who)
    try:
        claim_url(target, flush=flush)
    except (TargetRefused, TargetUnreachable) as exc:
        raise BenchError(str(exc)) from exc
    return target


def without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if "@" in rest else url


def settings_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The settings of every component under test: rate limits out of the way, quiet logs."""
    env = {
        "REDIS_URL": redis_url,
        "AIADMIN_ENV": "development",  # the processes under test run without webhook secrets or stats token
        "AIADMIN_REDIS_PREFIX": KEY_PREFIX,
        "AIADMIN_RATE_LIMIT_GLOBAL_PER_S": "0",
        "AIADMIN_RATE_LIMIT_SENDER_BURST": "1000000",
        "AIADMIN_RATE_LIMIT_SENDER_PER_MIN": "1000000",
        "AIADMIN_LOG_LEVEL": "WARNING",
    }
    return env | {f"{ENV_PREFIX}{k.upper()}": v for k, v in extra.items()}


def process_env(redis_url: str, **extra: str) -> dict[str, str]:
    # Inherited AIADMIN_* variables would make the figures depend on the caller's shell.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return inherited | settings_env(redis_url, **extra)


@contextlib.asynccontextmanager
async def redis_client(settings: Settings) -> AsyncIterator[Redis]:
    """A Redis client built as production builds it, closed however the block ends."""
    redis = connect_redis(settings)
    try:
        yield redis
    finally:
        await redis.aclose()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- processes ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Process:
    """A process under test, its log file and (for servers) its port."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` of a process's log, for an error message; empty when it cannot be read."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def spawned(name: str, args: list[str], *, env: dict[str, str], log_dir: Path, port: int = 0) -> Iterator[Process]:
    """Start a process; it is stopped (SIGTERM, then SIGKILL) however the block ends."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Process(name=name, popen=popen, log_path=log_path, port=port)
    finally:
        stop(popen)


def stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(STOP_TIMEOUT_S)


def rss_mb(pid: int) -> float:
    """Resident memory in MiB, from /proc (psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """CPU use of named processes and of the benchmark itself over a block, in % of one core."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.pct: dict[str, float] = {}

    def __enter__(self) -> CpuWindow:
        self._start = time.perf_counter()
        self._own = time.process_time()
        self._cpu = {name: cpu_s(pid) for name, pid in self._pids.items()}
        return self

    def __exit__(self, *_: object) -> None:
        wall_s = max(time.perf_counter() - self._start, 1e-9)
        self.pct = {name: 100 * (cpu_s(pid) - self._cpu[name]) / wall_s for name, pid in self._pids.items()}
        self.pct["bench"] = 100 * (time.process_time() - self._own) / wall_s

    def figures(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}{name}_cpu_pct": pct for name, pct in self.pct.items()}


def local_redis_pid(info: dict[str, Any]) -> int | None:
    """The Redis server's pid when it runs on this machine, so its CPU use can be read too."""
    pid = info.get("process_id")
    with contextlib.suppress(OSError, ValueError, TypeError):
        if Path(f"/proc/{int(pid)}/comm").read_text().startswith("redis"):  # type: ignore[arg-type]
            return int(pid)  # type: ignore[arg-type]
    return None


# --- readiness ------------------------------------------------------------------------------------------


async def wait_http_ready(proc: Process, *, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll GET /health until the server answers with any HTTP status (bounded)."""
    request = f"GET /health HTTP/1.1\r\nHost: {LOCALHOST}\r\nConnection: close\r\n\r\n".encode()
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        check_alive(proc)
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, proc.port), 1.0)
            try:
                writer.write(request)
                if (await asyncio.wait_for(reader.readuntil(b"\r\n"), 1.0)).startswith(b"HTTP/1.1 "):
                    return
            finally:
                writer.close()
        await asyncio.sleep(POLL_S)
    raise BenchError(f"{proc.name} did not answer within {timeout_s:.0f} s:\n{proc.log_tail()}")


async def wait_batcher_ready(redis: Redis, keys: Keys, proc: Process, *, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll the batchers' heartbeat set: a batcher beats after it has subscribed to its wake-ups."""

    async def beating() -> bool:
        return bool(await redis.zcard(keys.batchers))

    await wait_until(beating, proc, timeout_s=timeout_s, what="sent no heartbeat")


async def wait_until(
    ready: Callable[[], Awaitable[bool]], proc: Process, *, timeout_s: float = READY_TIMEOUT_S, what: str
) -> None:
    """Poll `ready` while `proc` lives (bounded); BenchError with the log's tail when it never is."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        check_alive(proc)
        if await ready():
            return
        await asyncio.sleep(POLL_S)
    raise BenchError(f"{proc.name} {what} within {timeout_s:.0f} s:\n{proc.log_tail()}")


def check_alive(proc: Process) -> None:
    code = proc.popen.poll()
    if code is not None:
        raise BenchError(f"{proc.name} exited with code {code}:\n{proc.log_tail()}")

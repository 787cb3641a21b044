"""The processes of a load run: the three fakes and `aiadmin run`, their settings, readiness, resources and stop.

Each is a separate OS process started with this interpreter (`python -m system …`), logging to a file; the
settings the system needs to reach the fakes are the simulator's (`system_env_for_fakes`) on our ports.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from reports import procs
from reports.procs import log_tail
from simulator.redis_target import Target, TargetRefused, TargetUnreachable, claim_url
from simulator.simulation import FAKE_PORTS, system_env_for_fakes

LOCALHOST = "127.0.0.1"
DEFAULT_DB = 11  # the load runs' own Redis database, flushed by each run
ENV_PREFIX = "AIADMIN_"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0  # the worker finishes in-flight turns on SIGTERM; the fakes stop at once
POLL_S = 0.2
SAMPLE_S = 1.0
SECRET_WORDS = ("SECRET", "TOKEN", "KEY", "PASSWORD")


class StackError(Exception):
    """The run cannot start or a process misbehaved; the message says which and shows its log's tail."""


@dataclass(frozen=True, slots=True)
class Ports:
    """The system's port and the fake WhatsApp's, LLM's and CRM's."""

    system: int
    whatsapp: int
    llm: int
    crm: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """The system on `base`, the fakes on the next three ports."""
        return cls(system=base, whatsapp=base + 1, llm=base + 2, crm=base + 3)

    @classmethod
    def free(cls) -> Ports:
        """Four ports free right now, chosen by the OS (held open together, so that they differ)."""
        with contextlib.ExitStack() as held:
            sockets = [held.enter_context(socket.socket()) for _ in range(4)]
            for sock in sockets:
                sock.bind((LOCALHOST, 0))
            system, whatsapp, llm, crm = (int(sock.getsockname()[1]) for sock in sockets)
        return cls(system=system, whatsapp=whatsapp, llm=llm, crm=crm)

    @property
    def fakes(self) -> dict[str, int]:
        return {"whatsapp": self.whatsapp, "llm": self.llm, "crm": self.crm}


def check_redis_url(url: str, *, force: bool) -> Target:
    """The run's Redis database; db 0 and remote servers are refused unless forced (the run flushes it)."""
    try:
        return procs.check_redis_url(url, force=force, who="the load run")
    except procs.BenchError as exc:
        raise StackError(str(exc)) from exc


def claim_redis(target: Target, *, flush: bool) -> None:
    """Flush the run's database and mark it as ours; StackError when it holds keys no test tool wrote."""
    try:
        claim_url(target, flush=flush)
    except (TargetRefused, TargetUnreachable) as exc:
        raise StackError(str(exc)) from exc


def system_env(
    ports: Ports, *, redis_url: str, batch_timeout_ms: int, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The system's settings: the fakes on our ports, real Redis, the batch timeout, quiet logs, then overrides."""
    env = system_env_for_fakes()
    for name, default_port in FAKE_PORTS.items():
        old, new = f"{LOCALHOST}:{default_port}", f"{LOCALHOST}:{ports.fakes[name]}"
        env = {k: v.replace(old, new) for k, v in env.items()}
    env |= {"REDIS_URL": redis_url, "AIADMIN_BATCH_TIMEOUT_MS": str(batch_timeout_ms), "AIADMIN_LOG_LEVEL": "WARNING"}
    env.setdefault("AIADMIN_ENV", "development")  # the stack under test runs without secrets unless overridden
    return env | dict(overrides or {})


def process_env(settings: Mapping[str, str]) -> dict[str, str]:
    # Inherited AIADMIN_* variables (a developer's shell) would change the system under test unseen.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "REDIS_URL"}
    return inherited | dict(settings)


def public_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """The settings as they go into the summary: secrets masked."""
    return {k: ("***" if any(w in k for w in SECRET_WORDS) else v) for k, v in sorted(settings.items())}


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs as settings; a key without the AIADMIN_ prefix gets it."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().upper()
        if not sep or not key:
            raise StackError(f"--set {pair!r}: expected KEY=VALUE")
        if key == "REDIS_URL":
            raise StackError("--set REDIS_URL: use --redis-url (the run flushes that database first)")
        out[key if key.startswith(ENV_PREFIX) else ENV_PREFIX + key] = value
    return out


# --- processes ------------------------------------------------------------------------------------------------


@dataclass
class Spawned:
    """A started process, its log and what it used."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    rss_peak_mb: float = 0.0
    rss_mb: float = 0.0
    cpu_pct: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise StackError(f"{self.name} exited with code {code}:\n{self.log_tail()}")

    def figures(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "rss_mb": round(self.rss_mb, 1),
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "cpu_pct": None if self.cpu_pct is None else round(self.cpu_pct, 1),
        }


def spawn(name: str, args: list[str], *, env: Mapping[str, str], log_dir: Path, port: int = 0) -> Spawned:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            args, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=repo_root()
        )
    return Spawned(name=name, popen=popen, log_path=log_path, port=port)


def stop(proc: Spawned, *, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM, then SIGKILL after `timeout_s`; the exit code."""
    if proc.popen.poll() is None:
        proc.popen.terminate()
        try:
            proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(timeout_s)
    return proc.popen.returncode


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def aiadmin(*args: str) -> list[str]:
    """`aiadmin …` with this interpreter, whatever is on PATH."""
    return [sys.executable, "-m", "system", *args]


def wait_http(proc: Spawned, url: str, *, ok: Sequence[int] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
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
    raise StackError(f"{proc.name} not ready at {url} within {timeout_s:.0f} s ({last}):\n{proc.log_tail()}")


@dataclass
class _Watch:
    proc: Spawned
    handle: psutil.Process
    cpu_start_s: float
    since: float
    cpu_last_s: float
    last: float


class ResourceSampler:
    """RSS of the watched processes every second (last and peak), and their CPU % from `watch` to `close`.

    A process that has exited by `close` (Locust) is measured up to its last sample.
    """

    def __init__(self) -> None:
        self._watched: list[_Watch] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()

    def watch(self, proc: Spawned) -> None:
        with contextlib.suppress(psutil.Error):
            handle = psutil.Process(proc.pid)
            cpu_s, now = _cpu_s(handle), time.monotonic()
            with self._lock:
                self._watched.append(_Watch(proc, handle, cpu_s, now, cpu_s, now))

    def close(self) -> None:
        """Stop sampling and set each process's CPU %; again: nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        for w in self._snapshot():
            w.proc.cpu_pct = 100 * (w.cpu_last_s - w.cpu_start_s) / max(w.last - w.since, 1e-9)

    def _snapshot(self) -> list[_Watch]:
        with self._lock:
            return list(self._watched)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        for w in self._snapshot():
            with contextlib.suppress(psutil.Error):
                with w.handle.oneshot():
                    if w.handle.status() == psutil.STATUS_ZOMBIE:
                        continue  # exited, not yet reaped: it reads as 0 MB; its last sample stands
                    rss_mb = w.handle.memory_info().rss / 2**20
                    w.cpu_last_s, w.last = _cpu_s(w.handle), time.monotonic()
                w.proc.rss_mb = rss_mb
                w.proc.rss_peak_mb = max(w.proc.rss_peak_mb, rss_mb)


def _cpu_s(handle: psutil.Process) -> float:
    times = handle.cpu_times()
    return float(times.user + times.system)


@contextlib.contextmanager
def stack(procs: list[Spawned]) -> Iterator[list[Spawned]]:
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

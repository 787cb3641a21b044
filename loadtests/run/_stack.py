"""The stack of a load run: the three fakes and `aiadmin run`, their ports, settings and Redis database.

Each is a separate OS process started with this interpreter (`python -m system …`) through
`loadtests._processes`; the settings the system needs to reach the fakes are the simulator's
(`system_env_for_fakes`) on our ports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import typer

from loadtests._processes import LOCALHOST, Process, spawn, stop, stopping, wait_http
from simulator.redis_server import free_port
from simulator.redis_target import Target, TargetRefused, TargetUnreachable, check_target, claim_url
from simulator.simulation import FAKE_PORTS, system_env_for_fakes

# `--serve`: the system on 8090 and the fakes on 8091-8093, the ports `aiadmin fake …` and the locustfile default to.
SERVE_PORT_BASE = 8090
DEFAULT_DB = 11  # the load runs' own Redis database, flushed by each run
ENV_PREFIX = "AIADMIN_"
SECRET_WORDS = ("SECRET", "TOKEN", "KEY", "PASSWORD")


class StackError(Exception):
    """The run cannot start: a setting or its Redis database is refused; the message says which."""


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
        return check_target(url, owner="the load run", force=force)
    except TargetRefused as exc:
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


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def aiadmin(*args: str) -> list[str]:
    """`aiadmin …` with this interpreter, whatever is on PATH."""
    return [sys.executable, "-m", "system", *args]


def start_stack(
    procs: list[Process], *, ports: Ports, env: dict[str, str], log_dir: Path, llm: LlmStandIn, split: bool = False
) -> SystemUnderTest:
    """The three fakes and the system, each ready, appended to `procs` (stopped by the caller).

    The system is `aiadmin run` (one process), or with `split` `aiadmin api`, `batcher` and `worker`, each a process
    of its own on its own event loop, as a deployment runs them.
    """
    fakes = ports.fakes
    for name in ("whatsapp", "llm", "crm"):
        extra = llm.args() if name == "llm" else []
        command = aiadmin("fake", name, "--host", LOCALHOST, "--port", str(fakes[name]), *extra)
        procs.append(spawn(f"fake-{name}", command, env=env, log_dir=log_dir, cwd=repo_root()))
    for proc, name in zip(procs, ("whatsapp", "llm", "crm"), strict=True):
        wait_http(proc, f"http://{LOCALHOST}:{fakes[name]}/health")  # any answer: the fake is serving
    api_url = f"http://{LOCALHOST}:{ports.system}"
    if not split:
        command = aiadmin("run", "--host", LOCALHOST, "--port", str(ports.system))
        system = spawn("aiadmin-run", command, env=env, log_dir=log_dir, cwd=repo_root())
        procs.append(system)
        wait_http(system, f"{api_url}/ready", ok=(200,))
        return SystemUnderTest((system,), (f"{api_url}/metrics",))
    worker_metrics = free_port()
    commands = {
        "aiadmin-api": aiadmin("api", "--host", LOCALHOST, "--port", str(ports.system)),
        "aiadmin-batcher": aiadmin("batcher"),
        "aiadmin-worker": aiadmin("worker", "--metrics-port", str(worker_metrics)),
    }
    started = tuple(
        spawn(name, command, env=env, log_dir=log_dir, cwd=repo_root()) for name, command in commands.items()
    )
    procs.extend(started)
    wait_http(started[0], f"{api_url}/ready", ok=(200,))  # ready: Redis answers and a batch processor is alive
    worker_url = f"http://{LOCALHOST}:{worker_metrics}/metrics"
    wait_http(started[2], worker_url, ok=(200,))
    return SystemUnderTest(started, (f"{api_url}/metrics", worker_url))


@dataclass(frozen=True, slots=True)
class SystemUnderTest:
    """The system's processes and the metrics URLs that cover them (the worker's queue wait among them)."""

    processes: tuple[Process, ...]
    metrics_urls: tuple[str, ...]

    def stop(self) -> int | None:
        """Stop every process; the first non-zero exit code, else the last one."""
        codes = [stop(proc) for proc in self.processes]
        return next((code for code in codes if code), codes[-1])


def serve(
    *,
    redis: Target,
    flush: bool,
    ports: Ports,
    batch_timeout_ms: int,
    llm: LlmStandIn,
    overrides: dict[str, str],
    out_dir: Path,
    profile: str,
) -> None:
    """Start the stack and keep it up for Locust's web UI until Ctrl-C (or SIGTERM); then stop it all."""
    claim_redis(redis, flush=flush)
    settings = system_env(ports, redis_url=redis.url, batch_timeout_ms=batch_timeout_ms, overrides=overrides)
    log_dir = out_dir.resolve() / "serve-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[Process] = []
    signal.signal(signal.SIGTERM, _interrupt)
    with stopping(procs):
        start_stack(procs, ports=ports, env=process_env(settings), log_dir=log_dir, llm=llm)
        typer.echo(
            f"the stack is up (logs in {log_dir}); in another shell:\n\n"
            f"  locust -f loadtests/ --aiadmin-profile {profile} --host http://{LOCALHOST}:{ports.system} "
            f"--whatsapp-url http://{LOCALHOST}:{ports.whatsapp} --redis-url {redis.url} "
            f"--batch-timeout-ms {batch_timeout_ms} --llm-latency-s {llm.latency_s}\n\n"
            "and open http://localhost:8089 (Locust's web UI). Ctrl-C here stops the stack."
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                for proc in procs:
                    proc.check_alive()
                time.sleep(1)


@dataclass(frozen=True, slots=True)
class LlmStandIn:
    """How the fake LLM runs: `full` (understands the text) or `scripted` (cheap), its latency and booking share."""

    mode: str
    latency_s: str
    book_share: float

    def args(self) -> list[str]:
        extra = ["--latency-s", self.latency_s, "--mode", self.mode]
        return [*extra, "--book-share", str(self.book_share)] if self.mode == "scripted" else extra


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the served stack as Ctrl-C does: every process is stopped

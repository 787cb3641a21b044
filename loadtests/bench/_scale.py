"""`aiadmin bench scale`: 2 APIs, 2 batchers and 3 workers on a Redis Cluster of its own, a master killed mid-run.

One run, in order, all on loopback servers the benchmark starts and stops itself (never the shared server):
1. ingest: 2 APIs on the cluster, on the cluster with WAIT 1, and on a single server, alternating; accepted
   messages/s, the cluster/single ratio and the accept latency of each;
2. worker scaling: jobs queued, then 1, 2 and 3 worker processes at a set LLM stand-in latency; messages/s;
3. the scale run without WAIT, then with `AIADMIN_REDIS_WAIT_REPLICAS=1` on a fresh cluster: the conversations
   through 2 APIs, 2 batchers and 3 workers while the master owning the most shards is `kill -9`ed;
4. the single server with AOF `appendfsync everysec`, killed and restarted mid-load.
Accepted vs answered is counted by message id (`loadtests.bench._scale_load`), batches per batcher from the
batchers' logs (`loadtests.bench._scale_stack`), the comeback from Redis's counters (`loadtests.bench._failover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from rich.console import Console

from loadtests._processes import LOCALHOST, spawned, wait_http_ready
from loadtests.bench._env import BenchError, process_env
from loadtests.bench._failover import kill_master, restart_server
from loadtests.bench._figures import machine
from loadtests.bench._scale_load import Drive, Ledger, drive, outcome
from loadtests.bench._scale_report import finish
from loadtests.bench._scale_stack import APP_SECRET, Stack, flushed_by_batcher, running_stack
from simulator.phones import russian_mobiles
from simulator.redis_server import RedisClusterServers, RedisServer, free_port

SETTLE_QUIET_S = 3.0  # no new reply and nothing queued for this long: the run is over
SETTLE_TIMEOUT_S = 120.0
SCALING_SHARES = (0.2, 0.8)  # the steady part of a scaling run, between these shares of the replies


@dataclass(frozen=True, slots=True)
class ScaleConfig:
    """Sizes of one run; `quick` is the test's smoke run."""

    conversations: int = 2000
    fragments: int = 3
    llm_latency_s: float = 0.5
    worker_concurrency: int = 8
    scaling_jobs: int = 240
    ingest_messages: int = 1500
    ingest_repeats: int = 3
    batch_timeout_ms: int = 1500
    kill_at: float = 0.4  # share of the conversations sent when the master is killed
    senders: int = 32
    aof_conversations: int = 500
    binary: str = "redis-server"

    @classmethod
    def quick(cls) -> ScaleConfig:
        return cls(conversations=150, scaling_jobs=48, ingest_messages=200, ingest_repeats=1, aof_conversations=60)


async def run_scale(cfg: ScaleConfig, console: Console, log_dir: Path) -> dict[str, Any]:
    started = datetime.now(UTC).isoformat()
    phones = iter(russian_mobiles(_phones_needed(cfg)))
    sections: dict[str, Any] = {}
    port = free_port()
    args = [sys.executable, "-m", "loadtests.bench._standins", "--host", LOCALHOST, "--port", str(port)]
    args += ["--llm-latency-s", str(cfg.llm_latency_s)]
    with (
        tempfile.TemporaryDirectory(prefix="aiadmin-scale-") as tmp,
        spawned("scale-standins", args, env=process_env(""), log_dir=log_dir, port=port) as si,
    ):
        await wait_http_ready(si)
        async with httpx.AsyncClient(base_url=f"http://{LOCALHOST}:{port}", timeout=5.0) as standins:

            def stack_on(name: str, url: str, **settings: str) -> Any:
                return running_stack(
                    name, url, standins=si, log_dir=log_dir, apis=2, batchers=2,
                    concurrency=cfg.worker_concurrency,
                    settings={"batch_timeout_ms": str(cfg.batch_timeout_ms), "visibility_timeout_s": "15", **settings},
                )  # fmt: skip

            with contextlib.ExitStack() as servers:  # every server is stopped however the run ends
                single = _started(servers, RedisServer(cfg.binary, Path(tmp), durable=False))
                cluster = _started(servers, RedisClusterServers(Path(tmp) / "a", binary=cfg.binary))
                sections["ingest"] = await _ingest(cfg, phones, cluster.url, single.url, log_dir, si)
                console.print(f"[1/4] ingest: {_ingest_line(sections['ingest'])}")
                async with stack_on("wait-off", cluster.url, redis_cluster="true") as s:
                    sections["scaling"] = await _scaling(cfg, s, phones, standins)
                    console.print(f"[2/4] workers: {_scaling_line(sections['scaling'])}")
                    sections["wait_off"] = await _scale_run(
                        cfg, s, phones, standins, tag="off", fault=lambda: kill_master(cluster, s.redis, s.keys)
                    )
                second = _started(servers, RedisClusterServers(Path(tmp) / "b", binary=cfg.binary))
                async with stack_on("wait-on", second.url, redis_cluster="true", redis_wait_replicas="1") as s:
                    sections["wait_on"] = await _scale_run(
                        cfg, s, phones, standins, tag="on", fault=lambda: kill_master(second, s.redis, s.keys)
                    )
                console.print(
                    f"[3/4] failover: WAIT on {_run_line(sections['wait_on'])}; off {_run_line(sections['wait_off'])}"
                )
                (Path(tmp) / "aof").mkdir()
                aof = _started(
                    servers, RedisServer(cfg.binary, Path(tmp) / "aof", durable=True, appendfsync="everysec")
                )
                async with stack_on("aof", aof.url) as s:
                    sections["aof"] = await _scale_run(
                        cfg, s, phones, standins, tag="aof", fault=lambda: restart_server(aof, s.redis, s.keys),
                        conversations=cfg.aof_conversations,
                    )  # fmt: skip
            console.print(f"[4/4] AOF everysec restart: {_run_line(sections['aof'])}")
    return finish(
        {
            "benchmark": "scale",
            "started_at": started,
            "finished_at": datetime.now(UTC).isoformat(),
            "machine": machine(None),
            "options": asdict(cfg),
            "sections": sections,
        }
    )


Server = TypeVar("Server", RedisServer, RedisClusterServers)


def _started(servers: contextlib.ExitStack, server: Server) -> Server:
    """Start `server`, to be stopped when `servers` closes (also when it failed half-way through starting)."""
    servers.callback(server.close)
    server.start()
    return server


def _phones_needed(cfg: ScaleConfig) -> int:
    ingest = len(INGEST_SIDES) * cfg.ingest_repeats * cfg.ingest_messages
    return ingest + 3 * cfg.scaling_jobs + 2 * cfg.conversations + cfg.aof_conversations


def _take(phones: Any, count: int) -> list[str]:
    return [next(phones) for _ in range(count)]


INGEST_SIDES = {
    "cluster": {"redis_cluster": "true"},
    "cluster_wait": {"redis_cluster": "true", "redis_wait_replicas": "1"},
    "single": {},
}


async def _ingest(
    cfg: ScaleConfig, phones: Any, cluster_url: str, single_url: str, log_dir: Path, standins: Any
) -> dict[str, Any]:
    """Accepted messages/s and accept latency of 2 APIs (no batchers: the accept path alone), alternating between
    the cluster, the cluster with WAIT for 1 replica, and the single server."""
    runs: dict[str, list[dict[str, float | None]]] = {side: [] for side in INGEST_SIDES}
    for repeat in range(cfg.ingest_repeats):
        for side, settings in INGEST_SIDES.items():
            url = single_url if side == "single" else cluster_url
            async with running_stack(
                f"ingest-{side}", url, standins=standins, log_dir=log_dir, apis=2, batchers=0,
                concurrency=cfg.worker_concurrency, settings={"redis_prefix": f"ingest{repeat}", **settings},
            ) as stack:  # fmt: skip
                ledger = Ledger(_take(phones, cfg.ingest_messages), fragments=1)
                tag = f"ingest-{side}-{repeat}"
                await drive(Drive(stack.api_ports, APP_SECRET, tag=tag, concurrency=cfg.senders), ledger)
            runs[side].append(
                {"per_s": ledger.accepted_per_s, "p50_ms": ledger.accept_ms(50), "p99_ms": ledger.accept_ms(99)}
            )
    medians = {
        side: {key: statistics.median([r[key] or 0.0 for r in side_runs]) for key in side_runs[0]}
        for side, side_runs in runs.items()
    }
    # The ratio of each alternation, then their median: a shared machine's drifting speed hits both sides of one
    # alternation alike, not two alternations.
    pairs = zip(runs["cluster"], runs["single"], strict=True)
    ratios = [(c["per_s"] or 0.0) / one["per_s"] for c, one in pairs if one["per_s"]]
    return {**medians, "ratio": statistics.median(ratios) if ratios else None, "ratios": ratios, "runs": runs}


async def _scaling(cfg: ScaleConfig, stack: Stack, phones: Any, standins: httpx.AsyncClient) -> dict[str, Any]:
    """Messages/s of 1, 2 and 3 worker processes draining the same number of queued jobs."""
    rates: dict[int, float] = {}
    for workers in (1, 2, 3):
        ledger = Ledger(_take(phones, cfg.scaling_jobs), fragments=1)
        await drive(Drive(stack.api_ports, APP_SECRET, tag=f"scaling-{workers}", concurrency=cfg.senders), ledger)
        await stack.wait_queued(len(ledger.accepted), timeout_s=60 + cfg.batch_timeout_ms / 1000)
        await standins.post("/stats/reset")
        stack.start_workers(workers)
        try:
            rates[workers] = await _steady_rate(stack, standins, jobs=len(ledger.accepted))
        finally:
            stack.stop_workers()
    return {
        "messages_per_s": {str(n): rate for n, rate in rates.items()},
        "ratio_2": rates[2] / rates[1] if rates[1] else None,
        "ratio_3": rates[3] / rates[1] if rates[1] else None,
        "bound_per_worker_per_s": cfg.worker_concurrency / cfg.llm_latency_s,
    }


async def _steady_rate(stack: Stack, standins: httpx.AsyncClient, *, jobs: int) -> float:
    """Replies/s between SCALING_SHARES of `jobs` replies: worker start-up and the last stragglers left out."""
    low, high = (int(jobs * share) for share in SCALING_SHARES)
    marks: dict[int, float] = {}
    deadline = time.perf_counter() + 120.0
    while time.perf_counter() < deadline:
        stack.check_alive()
        sends = int((await standins.get("/stats")).json()["sends"])
        for mark in (low, high):
            if sends >= mark and mark not in marks:
                marks[mark] = time.perf_counter()
        if sends >= jobs:
            return (high - low) / max(marks[high] - marks[low], 1e-9)
        await asyncio.sleep(0.05)
    raise BenchError(f"{stack.name}: the workers did not answer {jobs} queued jobs within 120 s")


async def _scale_run(
    cfg: ScaleConfig,
    stack: Stack,
    phones: Any,
    standins: httpx.AsyncClient,
    *,
    tag: str,
    fault: Callable[[], Awaitable[dict[str, Any]]],
    conversations: int | None = None,
) -> dict[str, Any]:
    """The conversations through the stack with 3 workers; the fault at `kill_at` of them; then the tally."""
    count = conversations or cfg.conversations
    ledger = Ledger(_take(phones, count), fragments=cfg.fragments)
    dead_before = await stack.dead_letters()
    await standins.post("/stats/reset")
    stack.start_workers(3)
    reached = asyncio.Event()

    def progress(done: int) -> None:
        if done >= cfg.kill_at * count:
            reached.set()

    sender = asyncio.create_task(
        drive(Drive(stack.api_ports, APP_SECRET, tag=tag, concurrency=cfg.senders), ledger, progress=progress)
    )
    waiting = asyncio.create_task(reached.wait())
    try:
        await asyncio.wait([sender, waiting], return_when=asyncio.FIRST_COMPLETED)
        failover = await fault()
        await sender
    finally:
        sender.cancel()  # when the fault failed: no client keeps sending into a stack that is being stopped
        waiting.cancel()
    await _settle(stack, standins)
    stack.check_alive()  # every process rode out the fault without a restart
    received = (await standins.get("/stats")).json()
    turns, replied_turns = await _turns(stack, ledger, tag=tag)
    result = outcome(
        ledger,
        history=await _history(stack, ledger),
        replies=int(received["sends"]),
        recipients=int(received["recipients"]),
        turns=turns,
        replied_turns=replied_turns,
    )
    stack.stop_workers()
    return {
        "conversations": count,
        "messages": count * cfg.fragments,
        **asdict(result),
        "dead_letters": await stack.dead_letters() - dead_before,
        "batches": flushed_by_batcher(stack.batcher_logs(), tag=tag),
        "failover": failover,
        "accept_p50_ms": ledger.accept_ms(50),
        "accept_p99_ms": ledger.accept_ms(99),
        "attempts": ledger.attempts,
        "retries": ledger.retries,
        "statuses": {str(k): v for k, v in sorted(ledger.statuses.items())},
        "send_s": ledger.elapsed_s,
    }


async def _settle(stack: Stack, standins: httpx.AsyncClient) -> None:
    """Until nothing is queued or open and no reply came for SETTLE_QUIET_S (bounded by SETTLE_TIMEOUT_S)."""
    started = time.perf_counter()
    last, quiet_since = -1, time.perf_counter()
    while time.perf_counter() - started < SETTLE_TIMEOUT_S:
        sends = int((await standins.get("/stats")).json()["sends"])
        if sends != last:
            last, quiet_since = sends, time.perf_counter()
        busy = await stack.queued() + await stack.open_batches()
        if not busy and time.perf_counter() - quiet_since > SETTLE_QUIET_S:
            return
        await asyncio.sleep(0.2)


async def _history(stack: Stack, ledger: Ledger) -> dict[int, str]:
    """Conversation number → the texts of its saved history (where an answered turn's messages go)."""
    company = stack.settings.default_company_id
    out: dict[int, str] = {}
    for number, phone in enumerate(ledger.phones):
        items = await stack.redis.lrange(stack.keys.context(company, phone).messages, 0, -1)
        out[number] = "\n".join(str(orjson.loads(item).get("text", "")) for item in items)
    return out


async def _turns(stack: Stack, ledger: Ledger, *, tag: str) -> tuple[int, int]:
    """(turn records of the run, those that sent a reply): a batch's id is its conversation and first message id,
    so each possible record is looked up. A turn whose draft was dropped as stale (the client wrote again) sent
    nothing; a reply is part 0 of the record (the stand-in's reply is one part), an apology fallback 0."""
    company = stack.settings.default_company_id
    turns = replied = 0
    for number, phone in enumerate(ledger.phones):
        for fragment in range(ledger.fragments):
            batch_id = f"{company}:{phone}:wamid.scale-{tag}-{number}-{fragment}"
            stage, part, fallback = await stack.redis.hmget(
                stack.keys.turn(company, phone, batch_id), ["stage", "part:0", "fallback:0"]
            )
            turns += stage is not None
            replied += (part is not None) + (fallback is not None)
    return turns, replied


def _ingest_line(s: dict[str, Any]) -> str:
    c, w, one = s["cluster"], s["cluster_wait"], s["single"]
    return (
        f"cluster {c['per_s']:,.0f}/s vs single {one['per_s']:,.0f}/s (ratio {s['ratio']:.2f}); "
        f"with WAIT {w['per_s']:,.0f}/s"
    )


def _scaling_line(s: dict[str, Any]) -> str:
    rates = ", ".join(f"{n}: {r:,.1f}/s" for n, r in s["messages_per_s"].items())
    return f"{rates} (2/1 = {s['ratio_2']:.2f}, 3/1 = {s['ratio_3']:.2f})"


def _run_line(s: dict[str, Any]) -> str:
    return f"accepted {s['accepted']}, answered {s['answered']}, lost {s['lost']}, twice {s['answered_twice']}"

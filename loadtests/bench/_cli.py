"""`aiadmin bench`: benchmarks on a real Redis, each flushing the database it is given.

The commands only parse options and run a benchmark: `ingest` lives in `loadtests.bench._ingest`, `worker`
in `loadtests.bench._worker`. Figures go to a table beside the reference report's figures and the goals,
and to JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
import uvloop
from rich.console import Console

from loadtests._processes import ProcessError
from loadtests.bench._env import BenchError, claim_redis
from loadtests.bench._figures import write_report
from loadtests.bench._ingest import render_ingest, run_ingest
from loadtests.bench._ingest_sections import BenchConfig
from loadtests.bench._lanes import LanesConfig, render_lanes, run_lanes
from loadtests.bench._scale import ScaleConfig, run_scale
from loadtests.bench._scale_report import render_scale
from loadtests.bench._sim_curve import SimCurveConfig, SimCurveError, render_sim_curve, run_sim_curve
from loadtests.bench._stages import StagesConfig, render_stages, run_stages
from loadtests.bench._worker import WORKER_DEFAULT_DB, WorkerBenchConfig, render_worker, run_worker_bench
from loadtests.bench._wrk_section import check_cluster_url
from simulator.redis_target import Target, TargetUnreachable, mark_url
from system.logs import configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Benchmarks on a real Redis.")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
DEFAULT_OUT = Path("out/bench-ingest.json")
# Its own database by default, so that it never flushes an ingest run going on beside it.
WORKER_REDIS_URL = f"redis://127.0.0.1:6379/{WORKER_DEFAULT_DB}"
WORKER_OUT = Path("out/bench-worker.json")
STAGES_OUT = Path("out/bench-stages.json")
SIM_OUT = Path("out/bench-sim.json")
SCALE_OUT = Path("out/bench-scale.json")
LANES_OUT = Path("out/bench-lanes.json")

# The options every benchmark shares.
RedisUrl = Annotated[
    str,
    typer.Option(
        "--redis-url",
        envvar="AIADMIN_BENCH_REDIS_URL",
        help="Redis to benchmark on; FLUSHED, when empty or written by an aiadmin test tool (else see --flush).",
    ),
]
Repeats = Annotated[int, typer.Option(min=1, max=20, help="Runs of each section; medians are reported.")]
DurationS = Annotated[float, typer.Option("--duration-s", min=0.5, max=120, help="Each HTTP phase.")]
Force = Annotated[bool, typer.Option("--force", help="Allow db 0 and a non-loopback Redis.")]
Flush = Annotated[
    bool, typer.Option("--flush", help="Flush --redis-url even when it holds keys no aiadmin tool wrote.")
]

Report = dict[str, Any]
Bench = Callable[[Console, Path], Coroutine[Any, Any, Report]]
Render = Callable[[Console, Report, Path], None]


@app.callback()
def bench() -> None:
    """Benchmarks against a real Redis; each flushes the database it is given."""


@app.command()
def ingest(
    redis_url: RedisUrl = DEFAULT_REDIS_URL,
    repeats: Repeats = 3,
    duration_s: DurationS = 5.0,
    rate: Annotated[int, typer.Option(min=1, max=5000, help="Open-loop rate for the accept latency.")] = 500,
    connections: Annotated[int, typer.Option(min=1, max=256, help="Connections of the closed loops.")] = 32,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke test: 1 repeat, 1 s phases, 200 batches.")] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go.")] = DEFAULT_OUT,
    cluster_url: Annotated[
        str | None,
        typer.Option(
            "--cluster-url",
            envvar="AIADMIN_BENCH_CLUSTER_URL",
            help="A Redis Cluster node; FLUSHED. The wrk section also runs an API on it, beside the single server.",
        ),
    ] = None,
    force: Force = False,
    flush: Flush = False,
) -> None:
    """The ingest path: accept latency, throughput (own load generator, wrk), append, flush lateness, claim."""
    target = _claim("ingest", redis_url, force=force, flush=flush)
    if cluster_url:
        try:
            check_cluster_url(cluster_url, force=force)
        except BenchError as exc:
            typer.echo(f"aiadmin bench ingest: {exc}", err=True)
            raise typer.Exit(2) from exc
    cfg = BenchConfig.build(
        redis_url=redis_url,
        repeats=repeats,
        duration_s=duration_s,
        rate_per_s=rate,
        connections=connections,
        quick=quick,
        cluster_url=cluster_url,
    )
    _run("ingest", lambda console, log_dir: run_ingest(cfg, console, log_dir), render_ingest, out=out, target=target)


@app.command()
def worker(
    redis_url: RedisUrl = WORKER_REDIS_URL,
    repeats: Annotated[int, typer.Option(min=1, max=20, help="Runs of the 0 ms case; medians are reported.")] = 3,
    slow_repeats: Annotated[
        int, typer.Option("--slow-repeats", min=1, max=20, help="Runs of the 5 s case (each takes a while).")
    ] = 1,
    quick: Annotated[
        bool, typer.Option("--quick", help="Smoke test: 1 repeat, 200 jobs at 0 ms, 1,000 at 5 s with 500 turns.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go.")] = WORKER_OUT,
    force: Force = False,
    flush: Flush = False,
) -> None:
    """One worker process against stand-ins for the LLM, YClients and WhatsApp: messages/s and RSS."""
    target = _claim("worker", redis_url, force=force, flush=flush)
    cfg = WorkerBenchConfig.build(redis_url=redis_url, repeats=repeats, slow_repeats=slow_repeats, quick=quick)
    _run(
        "worker",
        lambda console, log_dir: run_worker_bench(cfg, console, log_dir),
        render_worker,
        out=out,
        target=target,
    )


@app.command()
def stages(
    redis_url: RedisUrl = DEFAULT_REDIS_URL,
    repeats: Repeats = 3,
    duration_s: DurationS = 5.0,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke test: one short repeat of everything.")] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go (the monthly report reads it).")] = STAGES_OUT,
    force: Force = False,
    flush: Flush = False,
) -> None:
    """Every stage of the reference report's performance section: ingest, worker and turn stages."""
    target = _claim("stages", redis_url, force=force, flush=flush)
    cfg = StagesConfig.build(redis_url=redis_url, repeats=repeats, duration_s=duration_s, quick=quick)
    _run("stages", lambda console, log_dir: run_stages(cfg, console, log_dir), render_stages, out=out, target=target)


@app.command()
def scale(
    conversations: Annotated[int, typer.Option(min=10, max=100_000, help="Conversations of each scale run.")] = 2000,
    llm_latency_s: Annotated[float, typer.Option("--llm-latency-s", min=0.05, max=10, help="LLM stand-in.")] = 0.5,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke test: 150 conversations, short phases.")] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go.")] = SCALE_OUT,
) -> None:
    """2 APIs, 2 batchers, 3 workers on Redis Clusters of its own (a master killed mid-run); AOF restart."""
    cfg = ScaleConfig.quick() if quick else ScaleConfig(conversations=conversations, llm_latency_s=llm_latency_s)
    _run("scale", lambda console, log_dir: run_scale(cfg, console, log_dir), render_scale, out=out, target=None)


@app.command()
def lanes(
    cluster_url: Annotated[
        str,
        typer.Option("--cluster-url", envvar="AIADMIN_BENCH_CLUSTER_URL", help="A node of a loopback Redis Cluster."),
    ],
    rounds: Annotated[int, typer.Option(min=10, max=100_000, help="Round trips per lane and measurement.")] = 2000,
    repeats: Repeats = 3,
    force: Force = False,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go.")] = LANES_OUT,
) -> None:
    """Script round trips on a cluster: packed by node (the system's) vs redis-py's cluster pipeline."""
    try:
        check_cluster_url(cluster_url, force=force)
    except BenchError as exc:
        typer.echo(f"aiadmin bench lanes: {exc}", err=True)
        raise typer.Exit(2) from exc
    figures = asyncio.run(run_lanes(LanesConfig(cluster_url, rounds=rounds, repeats=repeats)))
    write_report(out, {"lanes": figures, "problems": []})
    typer.echo("\n".join(render_lanes(figures)))


@app.command()
def sim(
    long: Annotated[bool, typer.Option("--long", help="Also 10,000 users (several minutes).")] = False,
    users: Annotated[str | None, typer.Option(help="Comma-separated user counts instead of the default curve.")] = None,
    seed: Annotated[int, typer.Option(help="The simulations' seed.")] = 3,
    out: Annotated[Path, typer.Option(help="Where the JSON figures go.")] = SIM_OUT,
) -> None:
    """The simulation's cost curve on the embedded default (no Redis): wall time and per-user ms by users."""
    console = Console(width=None if sys.stdout.isatty() else 160)
    log_dir = out.parent / "bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        cfg = SimCurveConfig.build(users=users, long=long, seed=seed, log_dir=log_dir)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--users") from exc
    try:
        report = run_sim_curve(cfg, console)
    except SimCurveError as exc:
        typer.echo(f"aiadmin bench sim: {exc}", err=True)
        raise typer.Exit(1) from exc
    write_report(out, report)
    render_sim_curve(console, report, out)
    if report["problems"]:
        raise typer.Exit(1)


def _claim(command: str, redis_url: str, *, force: bool, flush: bool) -> Target:
    """Refuse db 0, a remote host or a database holding someone else's keys (exit 2); else flush and mark it."""
    try:
        return claim_redis(redis_url, force=force, flush=flush, who=f"aiadmin bench {command}")
    except BenchError as exc:
        typer.echo(str(exc), err=True)  # it names the command already
        raise typer.Exit(2) from exc


def _run(command: str, bench: Bench, render: Render, *, out: Path, target: Target | None) -> None:
    """Run a benchmark on uvloop, write its JSON, print its table; exit 1 on any correctness problem."""
    # A wide table when piped to a file or a CI log; the terminal's own width otherwise.
    console = Console(width=None if sys.stdout.isatty() else 160)
    configure_logging(level="WARNING")  # the clients under test log as in production, quietly
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / "bench-logs"
    log_dir.mkdir(exist_ok=True)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            report = runner.run(bench(console, log_dir))
    except (BenchError, ProcessError) as exc:
        typer.echo(f"aiadmin bench {command}: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        # The benchmarks flush the database between sections, which takes the marker away: put it back, so that
        # the next run knows the database for ours.
        if target is not None:  # `scale` runs on servers of its own
            with contextlib.suppress(TargetUnreachable):
                mark_url(target)
    write_report(out, report)
    render(console, report, out)
    if report["problems"]:
        raise typer.Exit(1)

"""`aiadmin simulate` and `aiadmin fake whatsapp|llm|crm` (registered as `aiadmin.commands` plugins)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from simulator.judges_report import judged, judges_failures, print_judges
from simulator.model_eval import ModelUsage, Prices, model_summary, read_usage
from simulator.personas import PERSONAS
from simulator.redis_target import TargetRefused, TargetUnreachable, claim_url
from simulator.simulation import (
    DEFAULT_START,
    SALON_USERS,
    SimOptions,
    SimResult,
    sim_target,
    simulate,
    system_env_for_fakes,
)
from simulator.stack import TOKENS
from simulator.users import REPLY_TIMEOUT_S
from simulator.worlds import run_worlds, salons_of
from system.clock import WallClock
from system.logs import configure_logging
from system.stats import percentile

BATCH_TIMEOUT_MS = 9000  # the simulation runs the system with its default quiet time

fake_app = typer.Typer(no_args_is_help=True, help="Stand-alone fakes of the outside world, as real HTTP servers.")


def simulate_command(
    users: Annotated[int, typer.Option(min=1, max=100_000, help="Simulated WhatsApp users.")] = 100,
    seed: Annotated[int, typer.Option(help="One seed, one transcript.")] = 1,
    personas: Annotated[str, typer.Option(help="Comma-separated persona names (default: all).")] = ",".join(PERSONAS),
    out: Annotated[Path, typer.Option(help="Where transcript.jsonl and summary.json go.")] = Path("out/sim"),
    start: Annotated[str, typer.Option(help="Simulated start, ISO with offset.")] = DEFAULT_START.isoformat(),
    mode: Annotated[str, typer.Option(help="Webhook format: meta (signed Cloud API) or gateway.")] = "meta",
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar="AIADMIN_SIM_REDIS_URL",
            help="A real Redis database instead of fakeredis (flushed only if empty or an aiadmin test tool wrote it).",
        ),
    ] = None,
    redis_flush: Annotated[
        bool, typer.Option("--flush", help="Flush --redis-url even when it holds keys no aiadmin test tool wrote.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Allow database 0 or a non-loopback --redis-url.")] = False,
    realtime: Annotated[bool, typer.Option(help="Run on the wall clock (users arrive within --window-s).")] = False,
    window_s: Annotated[float | None, typer.Option(help="Arrival window of a day's users, seconds.")] = None,
    llm_latency_s: Annotated[str, typer.Option(help="Fake LLM latency min,mode,max seconds.")] = "5,8,15",
    system_url: Annotated[
        str | None,
        typer.Option(help="Drive separately started system processes at this URL (real time; see the README)."),
    ] = None,
    trials: Annotated[
        int, typer.Option(min=1, max=16, help="Runs of the same users and goals, other typing and latency (pass^k).")
    ] = 1,
    salon_users: Annotated[
        int,
        typer.Option(min=1, help="Users per salon: a larger run is a chain of salons, each a world of its own."),
    ] = SALON_USERS,
    jobs: Annotated[
        int | None,
        typer.Option(min=1, help="Processes the trials and salons run in (default: one per CPU, at most one each)."),
    ] = None,
    reply_timeout_s: Annotated[
        float,
        typer.Option(min=1, help="How long a user waits for a reply (seconds of the run's clock) before giving up."),
    ] = REPLY_TIMEOUT_S,
    metrics_url: Annotated[
        list[str] | None,
        typer.Option(help="With --system-url: a worker's /metrics, read before and after (repeat for each worker)."),
    ] = None,
    price_input_per_1m: Annotated[
        float | None, typer.Option(min=0, help="The model's price per million prompt tokens (for the cost).")
    ] = None,
    price_output_per_1m: Annotated[
        float | None, typer.Option(min=0, help="The model's price per million completion tokens.")
    ] = None,
) -> None:
    """Run simulated users through the whole system in virtual time; write the transcript and a summary."""
    names = tuple(p.strip() for p in personas.split(",") if p.strip())
    unknown = [n for n in names if n not in PERSONAS]
    if unknown:
        raise typer.BadParameter(f"unknown personas {unknown}; known: {', '.join(PERSONAS)}", param_hint="--personas")
    if mode not in ("meta", "gateway"):
        raise typer.BadParameter("meta or gateway", param_hint="--mode")
    if trials > 1 and (redis_url or system_url or realtime):
        raise typer.BadParameter("trials run on fakeredis in virtual time only", param_hint="--trials")
    if metrics_url and not system_url:
        raise typer.BadParameter("reads the counters of a system started apart: needs --system-url")
    prices = None
    if price_input_per_1m is not None or price_output_per_1m is not None:
        prices = Prices(input_per_1m=price_input_per_1m or 0.0, output_per_1m=price_output_per_1m or 0.0)
    configure_logging(level="WARNING", json=True)
    low, likely, high = (float(x) for x in llm_latency_s.split(","))
    opts = SimOptions(
        users=users,
        seed=seed,
        personas=names,
        start=datetime.fromisoformat(start),
        redis_url=redis_url,
        redis_flush=redis_flush,
        redis_force=force,
        mode=mode,
        realtime=realtime,
        window_s=window_s,
        llm_latency_s=(low, likely, high),
        system_url=system_url,
        reply_timeout_s=reply_timeout_s,
        salon_users=salon_users,
    )
    if redis_url:
        _check_redis(opts)
    if system_url:
        env = " ".join(f"{k}={v}" for k, v in system_env_for_fakes().items())
        Console(stderr=True).print(f"the system at {system_url} must run with: {env}")
    console = Console(stderr=True)
    worlds = trials * len(salons_of(opts))
    workers = min(worlds, jobs or os.cpu_count() or 1)
    if worlds > 1:
        console.print(
            f"simulating {trials} × {users} users as {worlds} worlds in {workers} process{'es' if workers > 1 else ''}"
        )
    used = ModelUsage()
    with Progress(
        TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("users", total=trials * users)

        def advance(done: int, _: int) -> None:
            bar.update(task, completed=done)

        if worlds > 1:
            results = run_worlds(opts, trials=trials, jobs=workers, progress=advance)
        else:
            try:
                before = _usage(metrics_url)
                results = [asyncio.run(simulate(opts, progress=advance))]
                used = _usage(metrics_url) - before
            except (TargetRefused, TargetUnreachable) as exc:
                typer.echo(str(exc), err=True)  # it names the command
                raise typer.Exit(2) from exc
            except httpx.HTTPError as exc:
                typer.echo(f"aiadmin simulate: --metrics-url: {exc}", err=True)
                raise typer.Exit(2) from exc
    _finish(results, opts, out, model=(used, prices) if metrics_url else None)


def _usage(urls: list[str] | None) -> ModelUsage:
    """The workers' model counters now (nothing without --metrics-url)."""
    if not urls:
        return ModelUsage()

    async def read() -> ModelUsage:
        async with httpx.AsyncClient(timeout=10) as client:
            return await read_usage(client, urls)

    return asyncio.run(read())


def _finish(
    results: list[SimResult], opts: SimOptions, out: Path, *, model: tuple[ModelUsage, Prices | None] | None = None
) -> None:
    """Summarise the runs (trial 0 gives the transcript), write, print, and exit 1 on any failure."""
    summary = summarize(results[0], opts)
    if model is not None:
        used, prices = model
        summary["model"] = model_summary(used, bookings=summary["bookings_created"], prices=prices)
    summary["judges"] = judged(results)
    summary["failed"] = [*summary["failed"], *judges_failures(summary["judges"], results)]
    write(out, results[0], summary)
    print_summary(Console(), summary, out)
    if summary["failed"]:
        raise typer.Exit(1)


def _check_redis(opts: SimOptions) -> None:
    """Refuse db 0, a remote host or a database holding someone else's keys before anything starts (exit 2)."""
    try:
        claim_url(sim_target(opts), flush=opts.redis_flush)
    except (TargetRefused, TargetUnreachable) as exc:
        typer.echo(str(exc), err=True)  # it names the command
        raise typer.Exit(2) from exc


def summarize(result: SimResult, opts: SimOptions) -> dict[str, Any]:
    from simulator.judge import run_failures, success_rates

    latencies = sorted(result.reply_latency_ms)
    stats = result.stats
    cooperative = {n for n, p in PERSONAS.items() if p.cooperative}
    rates = success_rates(result.verdicts)
    return {
        "seed": opts.seed,
        "users": opts.users,
        "personas": rates,
        "cooperative_min_rate": min((r["rate"] for n, r in rates.items() if n in cooperative), default=None),
        "turns": stats["jobs_done"],
        "batches": stats["batches_flushed"],
        "fragments": stats["fragments_flushed"],
        "fragments_per_batch": round(stats["fragments_flushed"] / max(1, stats["batches_flushed"]), 3),
        "bookings_created": result.bookings_created,
        "dead_letters": stats["dead_letters"],
        "rate_limited_messages": stats["rate_limited_messages"],
        "world": {
            "double_bookings": result.world.double_bookings,
            "foreign_touched": result.world.foreign_touched,
            "turns_answered_twice": result.world.turns_answered_twice,
            "unanswered_users": result.world.unanswered_users,
        },
        "delivery_statuses": stats.get("delivery_statuses", {}),
        "latency_ms": _stages(latencies, stats),
        "clock": "wall" if opts.realtime or opts.system_url else "virtual",
        "llm_latency_s": list(opts.llm_latency_s),
        "virtual_s": round(result.virtual_s, 1),
        "wall_s": round(result.wall_s, 2),
        "failures": [_verdict(v) for v in result.verdicts if not v.success],
        # Why the run failed, empty when it passed: the exit code and the PASS/FAIL line come from this.
        "failed": run_failures(rates, world=result.world, dead_letters=stats["dead_letters"]),
    }


def _stages(latencies: list[int], stats: dict[str, Any]) -> dict[str, Any]:
    """Time per stage: batching (the quiet time plus the flush lateness), then the turn, then the whole reply."""
    lateness = stats["flush_lateness_ms"]
    batching = BATCH_TIMEOUT_MS + (lateness["p50"] or 0)
    reply_p50 = percentile(latencies, 50)
    return {
        "batching_p50": batching,
        "flush_lateness": lateness,
        "turn_p50": None if reply_p50 is None else reply_p50 - batching,  # queue, LLM and tools, CRM, send
        "reply_p50": reply_p50,
        "reply_p95": percentile(latencies, 95),
    }


def _verdict(v: Any) -> dict[str, Any]:
    return {"phone": v.phone, "persona": v.persona, "reason": v.reason}


def write(out: Path, result: SimResult, summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    transcript = b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in result.transcript.events)
    (out / "transcript.jsonl").write_bytes(transcript)
    summary = {**summary, "transcript_sha256": hashlib.sha256(transcript).hexdigest()}
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def print_summary(console: Console, s: dict[str, Any], out: Path) -> None:
    table = Table(title=f"aiadmin simulate — {s['users']} users, seed {s['seed']}")
    table.add_column("persona")
    table.add_column("users", justify="right")
    table.add_column("succeeded", justify="right")
    table.add_column("rate", justify="right")
    table.add_column("needed", justify="right")
    for name, r in s["personas"].items():
        needed = f"{100 * PERSONAS[name].min_rate:.0f}%" if name in PERSONAS else "—"
        table.add_row(name, str(r["users"]), str(r["succeeded"]), f"{100 * r['rate']:.1f}%", needed)
    console.print(table)
    w, lat = s["world"], s["latency_ms"]
    console.print(
        f"turns {s['turns']}, batches {s['batches']} from {s['fragments']} fragments "
        f"({s['fragments_per_batch']} per batch), bookings {s['bookings_created']}, dead letters {s['dead_letters']}"
    )
    console.print(
        f"double bookings {w['double_bookings']}, foreign bookings touched {w['foreign_touched']}, "
        f"turns answered twice {w['turns_answered_twice']}, users never answered {w['unanswered_users']}"
    )
    console.print(
        f"latency ({s['clock']} clock, fake LLM {'-'.join(f'{x:g}' for x in s['llm_latency_s'])} s): batching p50 "
        f"{lat['batching_p50']} ms (flush lateness p99 {lat['flush_lateness']['p99']} ms), turn p50 {lat['turn_p50']}"
        f" ms, reply p50 {lat['reply_p50']} ms, p95 {lat['reply_p95']} ms"
    )
    console.print(
        f"delivery statuses recorded: {s['delivery_statuses']}; {s['virtual_s']} s simulated in {s['wall_s']} s"
    )
    print_judges(console, s["judges"])
    if model := s.get("model"):
        console.print(
            f"model (the workers' counters): {model['turns']:g} turns, {model['tokens_per_turn']} tokens "
            f"({model['prompt_tokens_per_turn']} in, {model['completion_tokens_per_turn']} out) and "
            f"{model['model_calls_per_turn']} model calls per turn, malformed tool calls "
            f"{model['malformed_tool_call_rate']}, cost {model['cost']} "
            f"(per booked visit {model['cost_per_booked_visit']})"
        )
    console.print(f"written: {out / 'transcript.jsonl'}, {out / 'summary.json'}")
    console.print(verdict_line(s["failed"]), markup=False, soft_wrap=True)


def verdict_line(failed: list[str]) -> str:
    """The run's one-line outcome: PASS, or FAIL with every reason."""
    return "FAIL: " + "; ".join(failed) if failed else "PASS"


def _serve(app: Any, port: int, host: str) -> None:
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


@fake_app.command("whatsapp")
def fake_whatsapp(
    port: Annotated[int, typer.Option(help="Port.")] = 8091,
    host: Annotated[str, typer.Option(help="Interface.")] = "127.0.0.1",
    token: Annotated[str, typer.Option(envvar="AIADMIN_WHATSAPP_TOKEN", help="Bearer token it accepts.")] = TOKENS[
        "whatsapp"
    ],
    seed: Annotated[int, typer.Option(help="Seed of message ids and faults.")] = 1,
) -> None:
    """A fake WhatsApp Cloud API: point AIADMIN_WHATSAPP_API_URL at http://HOST:PORT."""
    from simulator import whatsapp

    _serve(whatsapp.create_app(token=token, clock=WallClock(), rng=random.Random(seed)), port, host)


@fake_app.command("llm")
def fake_llm_server(
    port: Annotated[int, typer.Option(help="Port.")] = 8092,
    host: Annotated[str, typer.Option(help="Interface.")] = "127.0.0.1",
    seed: Annotated[int, typer.Option(help="Seed of wording and faults.")] = 1,
    latency_s: Annotated[str, typer.Option(help="min,mode,max seconds of each answer (0,0,0 = instant).")] = "0,0,0",
    api_key: Annotated[
        str | None,
        typer.Option(envvar="AIADMIN_LLM_API_KEY", help="Bearer key it accepts (401 otherwise); unset accepts any."),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(help="full: understands the text (simulator, QA suite); scripted: a cheap booking script (load)."),
    ] = "full",
    book_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="scripted: the share of offers it books (the rest are not).")
    ] = 1.0,
) -> None:
    """A fake OpenAI-compatible LLM: point AIADMIN_LLM_BASE_URL at http://HOST:PORT/v1."""
    from simulator import fake_llm, scripted_llm

    if mode not in ("full", "scripted"):
        raise typer.BadParameter("must be full or scripted", param_hint="--mode")
    low, likely, high = (float(x) for x in latency_s.split(","))
    latency = fake_llm.LatencyModel(low, likely, high) if high > 0 else None
    if mode == "scripted":
        app = scripted_llm.create_app(
            seed=seed, latency=latency, clock=WallClock(), api_key=api_key, book_share=book_share
        )
    else:
        app = fake_llm.create_app(seed=seed, latency=latency, clock=WallClock(), api_key=api_key)
    _serve(app, port, host)


@fake_app.command("crm")
def fake_crm(
    port: Annotated[int, typer.Option(help="Port.")] = 8093,
    host: Annotated[str, typer.Option(help="Interface.")] = "127.0.0.1",
    partner_token: Annotated[str, typer.Option(envvar="AIADMIN_YCLIENTS_PARTNER_TOKEN")] = TOKENS["partner"],
    user_token: Annotated[str, typer.Option(envvar="AIADMIN_YCLIENTS_USER_TOKEN")] = TOKENS["user"],
) -> None:
    """A fake YClients salon from the barbershop fixture: point AIADMIN_YCLIENTS_BASE_URL at http://HOST:PORT/api/v1."""
    from simulator import crm
    from simulator.salon import BARBERSHOP_FIXTURE, Salon

    clock = WallClock()
    start = datetime.fromtimestamp(clock.now_ms() / 1000).astimezone()
    salon = Salon.from_fixture(BARBERSHOP_FIXTURE, start=start)
    _serve(crm.create_app(salon, partner_token=partner_token, user_token=user_token, clock=clock), port, host)

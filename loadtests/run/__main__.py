"""`python -m loadtests.run --profile steady [--duration-scale 0.2] [--redis-url …] [--out-dir out/load]`.

Claims the Redis database (`simulator.redis_target`: loopback, not db 0, empty or written by an aiadmin test
tool, unless `--force` / `--flush`) and flushes it, starts the fake WhatsApp, LLM and CRM (free ports unless
`--port-base`) and `aiadmin run` against them, waits for `/ready`, runs `locust -f loadtests/ --headless
--aiadmin-profile …` (CSVs and an HTML report beside the JSON), stops everything, adds each process's RSS and
CPU to `<out-dir>/<profile>.json` and exits 1 when Locust stopped the run early, a turn was lost or answered
twice or a merged message was wrong (2 when the run could not start).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from loadtests._processes import (
    LOCALHOST,
    Process,
    ProcessError,
    ResourceSampler,
    stop,
    stopping,
    tee,
)
from loadtests._profiles import PROFILES, profile_named
from loadtests.run._redis_memory import RedisMemory
from loadtests.run._stack import (
    DEFAULT_DB,
    SERVE_PORT_BASE,
    LlmStandIn,
    Ports,
    StackError,
    check_redis_url,
    claim_redis,
    parse_overrides,
    process_env,
    public_settings,
    repo_root,
    serve,
    start_stack,
    system_env,
)
from simulator.redis_target import Target

LOCUST_MARGIN_S = 180.0  # start-up, the drain after the last stage and the checks, beyond the profile's length

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    profile: Annotated[str, typer.Option(help=f"One of: {', '.join(PROFILES)}.")] = "steady",
    duration_scale: Annotated[float, typer.Option(min=0.001, help="Stretch every stage (0.2 = a fifth).")] = 1.0,
    redis_url: Annotated[
        str,
        typer.Option(
            envvar="AIADMIN_LOAD_REDIS_URL",
            help="Redis for the system; FLUSHED first, when empty or written by an aiadmin test tool (else --flush).",
        ),
    ] = f"redis://{LOCALHOST}:6379/{DEFAULT_DB}",
    out_dir: Annotated[Path, typer.Option(help="Where <profile>.json, CSVs, the HTML report and logs go.")] = Path(
        "out/load"
    ),
    webhook_format: Annotated[str, typer.Option("--format", help="meta (signed Cloud API) or gateway.")] = "meta",
    batch_timeout_ms: Annotated[int, typer.Option(min=100, help="AIADMIN_BATCH_TIMEOUT_MS of the system.")] = 1500,
    llm_latency_s: Annotated[
        str, typer.Option(help="The fake LLM's latency: min,mode,max seconds; default: the profile's.")
    ] = "",
    llm_mode: Annotated[
        str, typer.Option(help="The fake LLM: full or scripted; default: the profile's (steady, soak: scripted).")
    ] = "",
    book_share: Annotated[
        float, typer.Option(max=1.0, help="Scripted LLM: the share of offers it books; default: the profile's.")
    ] = -1.0,
    port_base: Annotated[
        int,
        typer.Option(
            envvar="AIADMIN_LOAD_PORT_BASE",
            min=0,
            max=65532,
            help="The system's port, the fakes on the next three; 0: four free ports chosen at run time.",
        ),
    ] = 0,
    reply_timeout_s: Annotated[float, typer.Option(min=1, help="A turn without a reply by then is lost.")] = 60.0,
    settle_s: Annotated[float, typer.Option(min=0, help="After the last reply, wait this long for doubles.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Seed of phones and typing (0: random).")] = 0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A system setting KEY=VALUE (AIADMIN_ optional); repeatable.")
    ] = None,
    locust_arg: Annotated[list[str] | None, typer.Option(help="One more argument for Locust; repeatable.")] = None,
    force: Annotated[bool, typer.Option(help="Allow flushing db 0 or a remote Redis.")] = False,
    flush: Annotated[
        bool, typer.Option(help="Flush --redis-url even when it holds keys no aiadmin tool wrote.")
    ] = False,
    stack: Annotated[
        str,
        typer.Option(
            help="The system as `run` (one `aiadmin run` process) or `split` (`aiadmin api`, `batcher` and `worker`, "
            "each its own process, as deployed)."
        ),
    ] = "run",
    serve_only: Annotated[
        bool,
        typer.Option(
            "--serve",
            help=f"Only start the stack (on --port-base, default {SERVE_PORT_BASE}) for `locust -f loadtests/` and its "
            "web UI; Ctrl-C stops it.",
        ),
    ] = False,
) -> None:
    """Run one load profile end to end and write its summary."""
    try:
        stand_ins = profile_named(profile).stand_ins
        if llm_mode not in ("", "full", "scripted"):
            raise StackError("--llm-mode must be full or scripted")
        if webhook_format not in ("meta", "gateway"):
            raise StackError("--format must be meta or gateway")
        if stack not in ("run", "split"):
            raise StackError("--stack must be run or split")
        target = check_redis_url(redis_url, force=force)
        llm = LlmStandIn(
            mode=llm_mode or stand_ins.llm_mode,
            latency_s=llm_latency_s or stand_ins.llm_latency_s,
            book_share=book_share if book_share >= 0 else stand_ins.book_share,
        )
        overrides = dict(stand_ins.system) | parse_overrides(set_ or [])
        if serve_only:
            serve(
                redis=target,
                flush=flush,
                ports=Ports.from_base(port_base or SERVE_PORT_BASE),
                batch_timeout_ms=batch_timeout_ms,
                llm=llm,
                overrides=overrides,
                out_dir=out_dir,
                profile=profile,
            )
            return
        summary = run(
            profile=profile,
            duration_scale=duration_scale,
            redis=target,
            flush=flush,
            out_dir=out_dir,
            webhook_format=webhook_format,
            batch_timeout_ms=batch_timeout_ms,
            llm=llm,
            ports=Ports.from_base(port_base) if port_base else Ports.free(),
            reply_timeout_s=reply_timeout_s,
            settle_s=settle_s,
            seed=seed,
            overrides=overrides,
            locust_args=locust_arg or [],
            split=stack == "split",
        )
    except (StackError, ProcessError, ValueError) as exc:
        typer.echo(f"loadtests.run: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(headline(summary))
    if summary.get("aborted"):  # Locust stopped the run early: the target did not answer, or failed too often
        typer.echo(f"loadtests.run: stopped early: {summary['aborted']}", err=True)
        raise typer.Exit(1)
    if summary["lost_turns"] or summary["double_replies"] or summary["merge"]["mismatched"]:
        raise typer.Exit(1)


def run(
    *,
    profile: str,
    duration_scale: float,
    redis: Target,
    flush: bool,
    out_dir: Path,
    webhook_format: str,
    batch_timeout_ms: int,
    llm: LlmStandIn,
    ports: Ports,
    reply_timeout_s: float,
    settle_s: float,
    seed: int,
    overrides: dict[str, str],
    locust_args: list[str],
    split: bool = False,
) -> dict[str, Any]:
    """Start everything, run Locust, stop everything; the summary JSON with the processes added."""
    started = time.monotonic()
    shape = profile_named(profile, scale=duration_scale)  # scaling changes the stages only, not the expiry wait
    out_dir = out_dir.resolve()
    log_dir = out_dir / f"{profile}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / f"{profile}.json"
    summary_path.unlink(missing_ok=True)  # a stale summary must never pass for this run's
    claim_redis(redis, flush=flush)
    redis_url = redis.url
    settings = system_env(ports, redis_url=redis_url, batch_timeout_ms=batch_timeout_ms, overrides=overrides)
    env = process_env(settings)
    fakes = ports.fakes
    system_url = f"http://{LOCALHOST}:{ports.system}"
    procs: list[Process] = []
    sampler = ResourceSampler()
    memory = RedisMemory(redis_url)
    memory.start()
    with contextlib.closing(sampler), stopping(procs):
        system = start_stack(procs, ports=ports, env=env, log_dir=log_dir, llm=llm, split=split)
        for proc in procs:
            sampler.watch(proc)
        args = locust_command(
            profile=profile,
            host=system_url,
            out_dir=out_dir,
            duration_scale=duration_scale,
            whatsapp_url=f"http://{LOCALHOST}:{fakes['whatsapp']}",
            redis_url=redis_url,
            webhook_format=webhook_format,
            app_secret=settings["AIADMIN_WHATSAPP_APP_SECRET"],
            webhook_secret=settings.get("AIADMIN_WEBHOOK_SECRET", ""),
            stats_token=settings.get("AIADMIN_STATS_TOKEN", ""),
            batch_timeout_ms=batch_timeout_ms,
            llm_latency_s=llm.latency_s,
            reply_timeout_s=reply_timeout_s,
            settle_s=settle_s,
            seed=seed,
            extra=[*locust_args, "--metrics-url", ",".join(system.metrics_urls)],
        )
        limit_s = shape.duration_s + reply_timeout_s + settle_s + LOCUST_MARGIN_S
        locust = run_locust(args, env=env, log_dir=log_dir, sampler=sampler, procs=procs, timeout_s=limit_s)
        sampler.close()
        system_exit = system.stop()
    redis_figures = memory.close(expire_wait_s=shape.expire_wait_s)
    if not summary_path.exists():
        raise StackError(f"Locust (exit {locust}) wrote no {summary_path}; see {log_dir / 'locust.log'}")
    summary: dict[str, Any] = orjson.loads(summary_path.read_bytes())
    summary["processes"] = [sampler.figures(p) for p in procs]
    summary["settings"] = {
        **summary.get("settings", {}),
        "system_env": public_settings(settings),
        "llm_mode": llm.mode,
        "stack": "split" if split else "run",
        "book_share": llm.book_share,
    }
    summary["redis"] = redis_figures
    summary["runner"] = {
        "locust_exit_code": locust,
        "system_exit_code": system_exit,
        "wall_s": round(time.monotonic() - started, 1),
        "logs": str(log_dir),
        "csv_prefix": str(out_dir / profile),
        "html": str(out_dir / f"{profile}.html"),
    }
    summary_path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


def locust_command(
    *,
    profile: str,
    host: str,
    out_dir: Path,
    duration_scale: float,
    whatsapp_url: str,
    redis_url: str,
    webhook_format: str,
    app_secret: str,
    webhook_secret: str,
    stats_token: str,
    batch_timeout_ms: int,
    llm_latency_s: str,
    reply_timeout_s: float,
    settle_s: float,
    seed: int,
    extra: list[str],
) -> list[str]:
    """`locust -f loadtests/ --headless --aiadmin-profile …` with everything the locustfile needs."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(repo_root() / "loadtests"),
        "--headless",
        "--only-summary",
        "--aiadmin-profile",
        profile,
        "--profile",  # Locust's own: labels the run with the profile's name
        profile,
        "--host",
        host,
        "--csv",
        str(out_dir / profile),
        "--html",
        str(out_dir / f"{profile}.html"),
        "--duration-scale",
        str(duration_scale),
        "--whatsapp-url",
        whatsapp_url,
        "--redis-url",
        redis_url,
        "--webhook-format",
        webhook_format,
        "--app-secret",
        app_secret,
        "--webhook-secret",
        webhook_secret,
        "--stats-token",
        stats_token,
        "--batch-timeout-ms",
        str(batch_timeout_ms),
        "--llm-latency-s",
        llm_latency_s,
        "--reply-timeout-s",
        str(reply_timeout_s),
        "--settle-s",
        str(settle_s),
        "--out-dir",
        str(out_dir),
        "--load-seed",
        str(seed),
        *extra,
    ]


def run_locust(
    args: list[str],
    *,
    env: dict[str, str],
    log_dir: Path,
    sampler: ResourceSampler,
    procs: list[Process],
    timeout_s: float,
) -> int:
    """Run Locust to its end (bounded), its output to our stderr and to `locust.log`; its exit code."""
    log_path = log_dir / "locust.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            args, env=env, cwd=repo_root(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        proc = Process(name="locust", popen=popen, log_path=log_path)
        procs.append(proc)
        sampler.watch(proc)
        assert popen.stdout is not None
        copier = tee(popen.stdout, [log, sys.stderr.buffer])
        try:
            code = popen.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            stop(proc)
            raise StackError(f"Locust still running after {timeout_s:.0f} s; stopped") from exc
        finally:
            copier.join(timeout=5)
    return code


def headline(s: dict[str, Any]) -> str:
    e2e, merge = s["e2e_ms"], s["merge"]
    return (
        f"{s['profile']}: {s['turns_sent']} turns from {s['fragments_sent']} fragments, {s['turns_answered']} answered,"
        f" {s['lost_turns']} lost, {s['double_replies']} answered twice; merge {merge['mismatched']} of"
        f" {merge['turns_checked']} wrong; e2e p50 {e2e['p50']:.0f} ms p99 {e2e['p99']:.0f} ms; accept p99"
        f" {s['accept_ms']['p99']:.1f} ms; summary in {s['runner']['csv_prefix']}.json"
    )


if __name__ == "__main__":
    app()

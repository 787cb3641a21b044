"""The `aiadmin` command line: production processes here, other packages' commands as plugins."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import structlog
import typer

from system.errors import SettingsError
from system.ingest.batch_processor import BatchProcessor
from system.lifecycle import Service, run_until_stopped
from system.logs import configure_logging
from system.runtime import RedisUnavailable, Runtime, build_worker
from system.settings import (
    Environment,
    Settings,
    environment_of,
    insecure_settings,
    load_settings,
    misspelled_variables,
)

if TYPE_CHECKING:
    import httpx

    from system.turn.worker import Worker

log = structlog.get_logger(__name__)

app = typer.Typer(no_args_is_help=True, add_completion=False, help="AI Admin: a WhatsApp administrator for salons.")

dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: jobs that failed for good.")
app.add_typer(dlq_app, name="dlq")


@dataclass(frozen=True)
class Role:
    """What a server command runs: its default AIADMIN_ENV and which start-up checks apply to it."""

    command: str
    default_env: Environment
    serves_http: bool = False
    sends_replies: bool = False
    separate: bool = True  # one component of several processes: REDIS_URL is needed in any environment


API = Role("api", "production", serves_http=True)
BATCHER = Role("batcher", "production")
WORKER = Role("worker", "production", sends_replies=True)
RUN = Role("run", "development", serves_http=True, sends_replies=True, separate=False)
# The variables the production checks read: checked even when other settings are invalid, so that one
# start-up names every problem.
_CHECKED_VARIABLES = (
    "REDIS_URL",
    "AIADMIN_ENV",
    "AIADMIN_WEBHOOK_SECRET",
    "AIADMIN_WHATSAPP_APP_SECRET",
    "AIADMIN_STATS_TOKEN",
    "AIADMIN_WHATSAPP_TRANSPORT",
    "AIADMIN_WHATSAPP_PHONE_NUMBER_ID",
    "AIADMIN_TENANTS",
)


def fail_start_up(problems: Sequence[str]) -> NoReturn:
    """Exit 2 with one `configuration error:` line per problem, no traceback."""
    for problem in problems:
        typer.echo(f"configuration error: {problem}", err=True)
    raise typer.Exit(2)


def settings_or_exit(*, require_redis: bool = False, command: str = "", role: Role | None = None) -> Settings:
    """Build the settings once; bad values stop start-up with exit 2 and one line per variable, all at once.

    A server command (`role`) then calls `warn_or_refuse` once its components are built.
    """
    environ = dict(os.environ)
    misspelled = misspelled_variables(environ)
    try:
        settings = load_settings()
    except SettingsError as exc:
        problems = str(exc).splitlines()
        if role is not None:
            problems += _refusals_of_partial(environ, role)
        _echo_misspelled(misspelled)  # a misspelling is often why a setting is missing
        fail_start_up(problems)
    if require_redis and not settings.redis_url:
        _echo_misspelled(misspelled)
        fail_start_up([_redis_required(command)])
    configure_logging(level=settings.log_level, json=settings.log_json)
    for name, closest in misspelled.items():
        log.warning("unknown_setting", variable=name, did_you_mean=closest)
    return settings


def _echo_misspelled(misspelled: Mapping[str, str | None]) -> None:
    for name, closest in misspelled.items():
        hint = f"; did you mean {closest}?" if closest else ""
        typer.echo(f"warning: {name} is not a setting{hint}", err=True)


def warn_or_refuse(settings: Settings, role: Role, *, errors: Sequence[str] = ()) -> None:
    """Exit 2 naming every problem at once: `errors` (the components' refusals), a missing REDIS_URL and, in
    production, each insecure setting; in development each insecure setting is one WARNING line instead.
    """
    refusals, warnings = _start_up_problems(settings, role)
    if errors or refusals:
        fail_start_up([*errors, *refusals])
    for problem in warnings:
        log.warning("insecure_for_production", command=role.command, problem=problem)


def _start_up_problems(settings: Settings, role: Role) -> tuple[list[str], list[str]]:
    """(what stops start-up, what is only warned about) for `role` under these settings."""
    refusals = []
    insecure = insecure_settings(settings, serves_http=role.serves_http, sends_replies=role.sends_replies)
    if role.separate and not settings.redis_url:
        refusals.append(_redis_required(role.command))
        insecure = [p for p in insecure if not p.startswith("REDIS_URL")]  # said once
    if environment_of(settings, default=role.default_env) == "production":
        return refusals + insecure, []
    # The Cloud API sender already warns of a missing sending number itself (whatsapp_gateway_messages_unanswerable).
    return refusals, [p for p in insecure if not p.startswith("AIADMIN_WHATSAPP_PHONE_NUMBER_ID")]


def _redis_required(command: str) -> str:
    return (
        f"REDIS_URL is required for `aiadmin {command}` as a separate process; "
        "`aiadmin run` runs every component in one process on an embedded Redis"
    )


def _refusals_of_partial(environ: Mapping[str, str], role: Role) -> list[str]:
    """What the checked variables alone would refuse, when other settings are invalid."""
    try:
        partial = load_settings({k: v for k, v in environ.items() if k.upper() in _CHECKED_VARIABLES})
    except SettingsError:
        return []  # those variables' own errors are already reported
    return _start_up_problems(partial, role)[0]


def runtime_or_exit(settings: Settings) -> Runtime:
    """The process's components; exit 2 when they cannot be built (no Redis to run on)."""
    try:
        return Runtime.build(settings)
    except SettingsError as exc:
        fail_start_up(str(exc).splitlines())


async def start_or_exit(rt: Runtime, *, prepare: bool = True) -> None:
    """Reach Redis (and prepare it); a REDIS_URL that does not answer stops start-up: one line, exit 2."""
    try:
        await (rt.start() if prepare else rt.ping())
    except RedisUnavailable as exc:
        fail_start_up([str(exc)])


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run on uvloop when it is installed (it is with uvicorn[standard])."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def processor_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


HOST_HELP = "Interface to listen on (default: AIADMIN_HOST, else 127.0.0.1)."
PORT_HELP = "Port to listen on (default: AIADMIN_PORT, else 8080)."


@app.command()
def api(
    host: str | None = typer.Option(None, help=HOST_HELP, show_default=False),
    port: int | None = typer.Option(None, help=PORT_HELP, show_default=False),
) -> None:
    """Serve the webhooks, stats, health and metrics (needs REDIS_URL)."""
    settings = settings_or_exit(role=API)
    warn_or_refuse(settings, API)

    async def main() -> None:
        rt = runtime_or_exit(settings)
        try:
            await start_or_exit(rt)
            from system.http_server import serve_http

            await serve_http(rt, host=host or settings.host, port=settings.port if port is None else port)
        finally:
            await rt.close()

    run_async(main)


METRICS_PORT_HELP = "Serve Prometheus metrics on this port of AIADMIN_HOST (0: not served)."


def serve_metrics(rt: Runtime, port: int) -> None:
    """Expose the registry of a process without an HTTP API (batcher, worker) for Prometheus to scrape."""
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=rt.settings.host, registry=rt.metrics.registry)
    except OSError as exc:
        fail_start_up([f"--metrics-port: cannot listen on {rt.settings.host}:{port}: {exc.strerror}"])


@app.command()
def batcher(metrics_port: int = typer.Option(0, help=METRICS_PORT_HELP)) -> None:
    """Run the batch processor (needs REDIS_URL); any number may run at once."""
    settings = settings_or_exit(role=BATCHER)
    warn_or_refuse(settings, BATCHER)

    async def main() -> None:
        rt = runtime_or_exit(settings)
        serve_metrics(rt, metrics_port)
        # No `rt.start()`: the processor loads its scripts itself and, when Redis is not up yet, waits for it
        # with backoff (its loop rides out outages), instead of dying at start.
        try:
            await run_until_stopped(new_batch_processor(rt))
        finally:
            await rt.close()

    run_async(main)


@app.command()
def worker(
    concurrency: int = typer.Option(0, help="Turns at once; 0 takes AIADMIN_WORKER_CONCURRENCY."),
    metrics_port: int = typer.Option(0, help=METRICS_PORT_HELP),
) -> None:
    """Run the AI worker (needs REDIS_URL); any number may run at once."""
    settings = settings_or_exit(role=WORKER)

    async def main() -> None:
        rt = runtime_or_exit(settings)
        serve_metrics(rt, metrics_port)
        # No `rt.start()`: the worker makes its consumer groups itself and, when Redis is not up yet, waits
        # for it with backoff (as the batcher does), instead of dying at start.
        try:
            from system.outbound_http import outbound_client  # only worker processes load the HTTP client stack

            async with outbound_client(concurrency=concurrency or settings.worker_concurrency) as http:
                service = new_worker(rt, http, concurrency, role=WORKER)
                await run_until_stopped(service)
        finally:
            await rt.close()

    run_async(main)


@app.command()
def run(
    host: str | None = typer.Option(None, help=HOST_HELP, show_default=False),
    port: int | None = typer.Option(None, help=PORT_HELP, show_default=False),
    concurrency: int = typer.Option(0, help="Worker turns at once; 0 takes AIADMIN_WORKER_CONCURRENCY."),
) -> None:
    """Run the API, the batch processor and the worker in one process (embedded Redis when REDIS_URL is unset)."""
    settings = settings_or_exit(role=RUN)

    async def main() -> None:
        rt = runtime_or_exit(settings)  # exit 2 naming the `sim` extra when the embedded Redis is not installed
        try:
            from system.outbound_http import outbound_client

            async with outbound_client(concurrency=concurrency or settings.worker_concurrency) as http:
                worker = new_worker(rt, http, concurrency, role=RUN)
                await start_or_exit(rt)
                services: list[Service] = [new_batch_processor(rt), worker]
                from system.http_server import serve_http

                await serve_http(
                    rt, host=host or settings.host, port=settings.port if port is None else port, services=services
                )
        finally:
            await rt.close()

    run_async(main)


def new_worker(rt: Runtime, http: httpx.AsyncClient, concurrency: int, *, role: Role) -> Worker:
    """The worker, or exit 2 naming every setting its clients refuse (and, in production, the insecure ones)."""
    try:
        worker = build_worker(rt, http=http, consumer=processor_id(), concurrency=concurrency or None)
    except SettingsError as exc:
        warn_or_refuse(rt.settings, role, errors=str(exc).splitlines())
        raise  # not reached: errors always stop start-up
    warn_or_refuse(rt.settings, role)
    return worker


def new_batch_processor(rt: Runtime) -> BatchProcessor:
    return rt.batcher(processor_id=processor_id())


@dlq_app.command("list")
def dlq_list(limit: int = typer.Option(50, help="How many dead letters to show.")) -> None:
    """List dead letters: shard, entry id, batch, attempts, error."""
    settings = settings_or_exit(require_redis=True, command="dlq list")

    async def main() -> None:
        rt = runtime_or_exit(settings)
        try:
            await start_or_exit(rt, prepare=False)
            for letter in await rt.queue.dead_letters(limit=limit):
                batch = letter.job.batch_id if letter.job else "(unreadable job)"
                attempts = letter.job.attempt if letter.job else "-"
                typer.echo(f"{letter.shard}\t{letter.entry_id}\t{batch}\tattempts={attempts}\t{letter.error}")
        finally:
            await rt.close()

    run_async(main)


@dlq_app.command("replay")
def dlq_replay(
    entries: Annotated[list[str] | None, typer.Argument(help="SHARD/ENTRY_ID as printed by `dlq list`.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
) -> None:
    """Put dead letters back into the queue (their idempotency records prevent double replies)."""
    settings = settings_or_exit(require_redis=True, command="dlq replay")

    async def main() -> None:
        rt = runtime_or_exit(settings)
        try:
            await start_or_exit(rt, prepare=False)
            targets = (
                [(d.shard, d.entry_id) for d in await rt.queue.dead_letters(limit=100_000)]
                if all_
                else [_parse_entry(e) for e in entries or []]
            )
            replayed = sum([await rt.queue.replay(shard, entry_id) for shard, entry_id in targets])
            typer.echo(f"replayed {replayed} of {len(targets)}")
        finally:
            await rt.close()

    run_async(main)


def _parse_entry(raw: str) -> tuple[int, str]:
    shard, sep, entry_id = raw.partition("/")
    if not sep or not shard.isdigit():
        raise typer.BadParameter(f"{raw!r}: expected SHARD/ENTRY_ID, e.g. 0/1732550000000-0")
    return int(shard), entry_id


def _load_plugins(argv: Sequence[str]) -> None:
    """Commands of the simulator, benchmarks and reports register as `aiadmin.commands` entry points.

    Only the command being run is imported (all of them for help), so production processes stay lean.
    """
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for ep in entry_points(group="aiadmin.commands"):
        if wanted is not None and ep.name != wanted:
            continue
        try:
            command = ep.load()
        except ImportError as exc:  # an optional part that is not installed
            # simulate and fake need the `sim` extra; bench and report the whole `dev` set.
            extra = "sim" if ep.name in ("simulate", "fake") else "dev"
            print(
                f"aiadmin: command {ep.name!r} unavailable ({exc}): pip install 'ai-admin[{extra}]'",
                file=sys.stderr,
            )
            continue
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=ep.name)
        else:
            app.command(ep.name)(command)


def main() -> None:
    _load_plugins(sys.argv[1:])
    app()

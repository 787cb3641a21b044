"""The `aiadmin` command line: production processes here, other packages' commands as plugins."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any

import typer

from system.batcher import BatchProcessor
from system.logs import configure_logging
from system.runtime import Runtime, build_worker
from system.services import Service, run_until_stopped
from system.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    import httpx

    from system.worker import Worker

app = typer.Typer(no_args_is_help=True, add_completion=False, help="AI Admin: a WhatsApp administrator for salons.")

dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: jobs that failed for good.")
app.add_typer(dlq_app, name="dlq")


def settings_or_exit(*, require_redis: bool = False, command: str = "") -> Settings:
    """Build the settings once; a bad value stops start-up with a message naming the variable."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if require_redis and not settings.redis_url:
        typer.echo(
            f"configuration error: REDIS_URL is required for `aiadmin {command}` as a separate process; "
            "`aiadmin run` runs every component in one process on an embedded Redis",
            err=True,
        )
        raise typer.Exit(2)
    configure_logging(level=settings.log_level, json=settings.log_json)
    return settings


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


@app.command()
def api(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
) -> None:
    """Serve the webhooks, stats, health and metrics (needs REDIS_URL)."""
    settings = settings_or_exit(require_redis=True, command="api")

    async def main() -> None:
        rt = Runtime.build(settings)
        await rt.start()
        try:
            from system.serve import serve_http

            await serve_http(rt, host=host, port=port)
        finally:
            await rt.close()

    run_async(main)


@app.command()
def batcher() -> None:
    """Run the batch processor (needs REDIS_URL); any number may run at once."""
    settings = settings_or_exit(require_redis=True, command="batcher")

    async def main() -> None:
        rt = Runtime.build(settings)
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
) -> None:
    """Run the AI worker (needs REDIS_URL); any number may run at once."""
    settings = settings_or_exit(require_redis=True, command="worker")

    async def main() -> None:
        rt = Runtime.build(settings)
        await rt.start()
        try:
            from system.http import outbound_client  # only worker processes load the HTTP client stack

            async with outbound_client(concurrency=concurrency or settings.worker_concurrency) as http:
                service = new_worker(rt, http, concurrency)
                await run_until_stopped(service)
        finally:
            await rt.close()

    run_async(main)


@app.command()
def run(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    concurrency: int = typer.Option(0, help="Worker turns at once; 0 takes AIADMIN_WORKER_CONCURRENCY."),
) -> None:
    """Run the API, the batch processor and the worker in one process (embedded Redis when REDIS_URL is unset)."""
    settings = settings_or_exit()

    async def main() -> None:
        rt = Runtime.build(settings)
        await rt.start()
        try:
            from system.http import outbound_client

            async with outbound_client(concurrency=concurrency or settings.worker_concurrency) as http:
                services: list[Service] = [new_batch_processor(rt), new_worker(rt, http, concurrency)]
                from system.serve import serve_http

                await serve_http(rt, host=host, port=port, services=services)
        finally:
            await rt.close()

    run_async(main)


def new_worker(rt: Runtime, http: httpx.AsyncClient, concurrency: int) -> Worker:
    try:
        return build_worker(rt, http=http, consumer=processor_id(), concurrency=concurrency or None)
    except (ValueError, SettingsError) as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


def new_batch_processor(rt: Runtime) -> BatchProcessor:
    return BatchProcessor(
        rt.redis,
        store=rt.store,
        clock=rt.clock,
        metrics=rt.metrics,
        processor_id=processor_id(),
        heartbeat_interval_s=rt.settings.heartbeat_interval_s,
    )


@dlq_app.command("list")
def dlq_list(limit: int = typer.Option(50, help="How many dead letters to show.")) -> None:
    """List dead letters: shard, entry id, batch, attempts, error."""
    settings = settings_or_exit(require_redis=True, command="dlq list")

    async def main() -> None:
        rt = Runtime.build(settings)
        try:
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
        rt = Runtime.build(settings)
        try:
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
            print(f"aiadmin: command {ep.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=ep.name)
        else:
            app.command(ep.name)(command)


def main() -> None:
    _load_plugins(sys.argv[1:])
    app()

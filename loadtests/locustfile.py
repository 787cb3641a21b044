# mypy: disable-error-code="untyped-decorator,no-untyped-call"
# (Locust's event hooks and response methods carry no annotations.)
"""Salon clients on WhatsApp against a running system: `locust -f loadtests/ --headless --aiadmin-profile steady …`.

Each Locust user is a stream of clients: a client gets a phone of its own, writes its booking in bursts of
fragments (the webhook in Meta's signed format, or the gateway's), waits for the bot's reply at the fake
WhatsApp (`GET /_sim/messages`), thinks, answers, until booked; then the next client comes. The load shape is
`--aiadmin-profile` (steady, burst, spike, soak), stretched by `--duration-scale`; Locust's own `-u`, `-r` and
`-t` override its users, spawn rate and length (printed at start).

A guard stops the run early with exit code 1 when the system has not answered its liveness probe for
`--abort-no-answer-s`, or more than `--abort-failure-ratio` of the requests failed.

Locust's own statistics show the webhook requests ("POST webhook") and the end-to-end latency of each turn,
from the client's last fragment to the reply arriving at the fake WhatsApp ("E2E reply"; a turn without a
reply within `--reply-timeout-s` is a failure there). When the test stops, the run waits for the replies
still due, then checks them and the merged messages, and writes `<out-dir>/<profile>.json` (see README.md).
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import sys
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import gevent
import httpx
import orjson
from locust import FastHttpUser, LoadTestShape, constant, events, task
from locust.argument_parser import LocustArgumentParser
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

try:
    import loadtests  # noqa: F401
except ImportError:  # `locust -f` from outside the repository: its root is not on the path (the cwd is)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests._abort import AbortRule
from loadtests._drain import check_merges, check_merges_as_they_close, collect_replies
from loadtests._edges import read_window_edges
from loadtests._ledger import Outcome, Reply, Turn, reconcile
from loadtests._load import LoadOptions, LoadRun, wall_ms
from loadtests._probes import FakeWhatsAppInbox, ProbeError, SystemProbe, stored_history
from loadtests._profiles import DEFAULT_PROFILE, PROFILES, profile_named
from loadtests._script import MAX_TURNS, tagged
from loadtests._summary import histogram_count, subtract_buckets
from loadtests._webhook import FORMATS, message_id
from loadtests._windows import Edge

log = logging.getLogger("loadtests")
POLL_MS = 10_000  # one long poll of the fake WhatsApp; a client waits in several up to its reply timeout
# The run's own reads (the guard, the edges, the drain) share one client; each Locust user long-polls for its
# replies on a client of its own: httpcore scans every connection of a pool on each request, and one pool of
# 1,250 users' long polls took a whole core of the load generator.
INBOX_CONNECTIONS = 64
_ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)


@functools.cache
def _inbox_tls() -> ssl.SSLContext:
    """One TLS context for every user's inbox client: each of its own would load the CA bundle (~0.6 MB each)."""
    return ssl.create_default_context()


GUARD_INTERVAL_S = 1.0  # how often the guard probes the system and reads Locust's totals
GUARD_PROBE_TIMEOUT_S = 5.0  # one liveness probe; a slower answer counts as none
DEFAULT_HOST = "http://127.0.0.1:8090"  # where `python -m loadtests.run --serve` puts the system (no --host given)
_RUNS: weakref.WeakKeyDictionary[Environment, LoadRun] = weakref.WeakKeyDictionary()
# One HTTP client per process for the fake WhatsApp: building one costs ~50 ms of CPU (its TLS context), which
# would stall every greenlet of the process while a spike starts its users.
_INBOX_HTTP: weakref.WeakKeyDictionary[Environment, httpx.Client] = weakref.WeakKeyDictionary()
_GUARDS: weakref.WeakKeyDictionary[Environment, gevent.Greenlet] = weakref.WeakKeyDictionary()
_EDGES: weakref.WeakKeyDictionary[Environment, gevent.Greenlet] = weakref.WeakKeyDictionary()
_MERGES: weakref.WeakKeyDictionary[Environment, gevent.Greenlet] = weakref.WeakKeyDictionary()


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    env = os.environ.get
    # Locust prints `--help` before it imports any locustfile (locustio/locust#2917), so these options cannot show
    # there; this flag prints the same help after the import, with them.
    parser.add_argument(
        "--aiadmin-help",
        action="help",
        include_in_web_ui=False,
        help="Show this help with the AI Admin load tests' options (Locust's --help omits every locustfile's options)",
    )
    # Not `--profile`: Locust has its own (a label grouping test runs).
    parser.add_argument(
        "--aiadmin-profile",
        choices=tuple(PROFILES),
        default=DEFAULT_PROFILE,
        help="The load profile (default %(default)s); Locust's -u, -r, -t override its users, spawn rate and length",
    )
    parser.add_argument(
        "--abort-no-answer-s",
        type=float,
        default=15.0,
        help="Stop early (exit code 1) when the host has not answered GET /health for this long; 0: never "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--abort-failure-ratio",
        type=float,
        default=0.5,
        help="Stop early (exit code 1) when more than this share of requests failed (default %(default)s); 1: never",
    )
    parser.add_argument(
        "--abort-min-requests",
        type=int,
        default=20,
        help="Requests made before the failure ratio is judged (default %(default)s)",
    )
    parser.add_argument(
        "--duration-scale", type=float, default=1.0, help="Multiply every stage of the profile by this (0.2 = short)"
    )
    parser.add_argument(
        "--webhook-format", choices=FORMATS, default="meta", help="meta (signed Cloud API) or gateway (batched route)"
    )
    parser.add_argument(
        "--whatsapp-url", default="http://127.0.0.1:8091", help="The fake WhatsApp the system sends replies to"
    )
    parser.add_argument(
        "--redis-url", default=env("REDIS_URL", ""), help="The system's Redis, read for the merge check (not written)"
    )
    parser.add_argument(
        "--app-secret",
        default=env("AIADMIN_WHATSAPP_APP_SECRET", "sim-app-secret"),
        is_secret=True,
        help="Meta's app secret: signs X-Hub-Signature-256 (meta format)",
    )
    parser.add_argument(
        "--webhook-secret",
        default=env("AIADMIN_WEBHOOK_SECRET", ""),
        is_secret=True,
        help="Signs X-Signature (gateway format); empty: unsigned",
    )
    parser.add_argument("--stats-token", default=env("AIADMIN_STATS_TOKEN", ""), is_secret=True, help="Stats bearer")
    parser.add_argument(
        "--metrics-url", default="", help="Comma-separated /metrics URLs with the worker's histograms (default: host)"
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=int,
        default=int(env("AIADMIN_BATCH_TIMEOUT_MS", "9000")),
        help="The system's batch timeout: fragment gaps stay under it (recorded in the summary)",
    )
    parser.add_argument("--llm-latency-s", default="unknown", help="The fake LLM's min,mode,max (recorded)")
    parser.add_argument("--company-id", type=int, default=int(env("AIADMIN_DEFAULT_COMPANY_ID", "962302")))
    parser.add_argument(
        "--phone-number-id", default=env("AIADMIN_WHATSAPP_PHONE_NUMBER_ID", "106540352242922"), help="Salon number"
    )
    parser.add_argument("--reply-timeout-s", type=float, default=60.0, help="A turn without a reply by then is lost")
    parser.add_argument("--settle-s", type=float, default=5.0, help="After the last reply, wait for late doubles")
    parser.add_argument("--out-dir", default="out/load", help="Where <profile>.json goes")
    parser.add_argument("--load-seed", type=int, default=0, help="Seed of phones and typing (0: a random one)")


def _load_options(environment: Environment) -> LoadOptions:
    o = environment.parsed_options
    if o is None:
        raise SystemExit("loadtests need Locust's command line options")
    try:
        profile = profile_named(o.aiadmin_profile, scale=o.duration_scale).overridden(
            users=o.num_users, spawn_rate=o.spawn_rate, run_time_s=o.run_time
        )
        abort = AbortRule(
            no_answer_s=o.abort_no_answer_s, failure_ratio=o.abort_failure_ratio, min_requests=o.abort_min_requests
        )
    except ValueError as exc:
        raise SystemExit(f"loadtests: {exc}") from exc
    metrics = tuple(u.strip() for u in o.metrics_url.split(",") if u.strip())
    return LoadOptions(
        profile=profile,
        host=(environment.host or o.host or "").rstrip("/"),
        format=o.webhook_format,
        whatsapp_url=o.whatsapp_url,
        redis_url=o.redis_url,
        secret=o.app_secret if o.webhook_format == "meta" else o.webhook_secret,
        stats_token=o.stats_token,
        metrics_urls=metrics,
        batch_timeout_ms=o.batch_timeout_ms,
        llm_latency_s=o.llm_latency_s,
        company_id=o.company_id,
        phone_number_id=o.phone_number_id,
        reply_timeout_s=o.reply_timeout_s,
        settle_s=o.settle_s,
        out_dir=Path(o.out_dir),
        seed=o.load_seed,
        duration_scale=o.duration_scale,
        abort=abort,
    )


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per long poll drowns Locust's own
    options = _load_options(environment)
    if not options.host:
        # The stack `python -m loadtests.run --serve` starts: so that `locust -f loadtests/` alone finds it.
        options = replace(options, host=DEFAULT_HOST)
    _RUNS[environment] = LoadRun.create(options)
    o = environment.parsed_options
    given = (("-u", o.num_users), ("-r", o.spawn_rate), ("-t", o.run_time)) if o is not None else ()
    overrides = [f"{flag} {value}" for flag, value in given if value]
    stages = ", ".join(f"{s.users} users at {s.spawn_rate:g}/s until {s.until_s:g} s" for s in options.profile.stages)
    log.info(
        "load shape: profile %s (%s)%s; early stop: no answer for %g s or over %.0f%% failures",
        options.profile.name,
        stages,
        f", Locust's {' '.join(overrides)} override it" if overrides else "",
        options.abort.no_answer_s,
        options.abort.failure_ratio * 100,
    )
    limits = httpx.Limits(max_connections=INBOX_CONNECTIONS, max_keepalive_connections=INBOX_CONNECTIONS)
    _INBOX_HTTP[environment] = httpx.Client(limits=limits)


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    _stop_guard(environment)
    http = _INBOX_HTTP.pop(environment, None)
    if http is not None:
        http.close()


def _run(environment: Environment) -> LoadRun:
    return _RUNS[environment]


class ProfileShape(LoadTestShape):
    """The stages of `--aiadmin-profile` times `--duration-scale`, with Locust's `-u`, `-r`, `-t` over them."""

    use_common_options = True  # -u/-r/-t reach the shape (applied in `_load_options`), not ignored with a warning

    def tick(self) -> tuple[int, float] | None:
        if self.runner is None:
            return None
        return _run(self.runner.environment).options.profile.tick(self.get_run_time())


class WhatsAppClient(FastHttpUser):
    """A stream of salon clients on WhatsApp, one conversation at a time, each with a phone of its own."""

    wait_time = constant(0)  # the clients pace themselves: gaps, thinking, pauses between clients
    host = DEFAULT_HOST  # when neither --host nor the web UI names one (the UI's empty field included)
    connection_timeout = 10.0
    network_timeout = 30.0

    def on_start(self) -> None:
        self.load = _run(self.environment)
        self.rng = self.load.user_rng()
        self.webhook = self.load.options.webhook()
        self.inbox_http = httpx.Client(limits=_ONE_CONNECTION, verify=_inbox_tls())
        self.inbox = FakeWhatsAppInbox(self.load.options.whatsapp_url, http=self.inbox_http)
        runner = self.environment.runner
        self.load.peak_users = max(self.load.peak_users, runner.user_count if runner is not None else 0)

    def on_stop(self) -> None:
        self.inbox_http.close()

    @task
    def visit(self) -> None:
        typing = self.load.options.profile.typing
        conversation = self.load.conversation(self.rng)
        fragments: list[str] | None = conversation.opening()
        after = self.load.start_seq
        self.load.conversation_opened(now_ms=wall_ms())
        try:
            for index in range(MAX_TURNS):
                if not fragments:
                    break
                turn = self._send(conversation.phone, index, fragments)
                reply = self._wait(turn, after=after)
                if reply is None:
                    break
                after = reply.seq
                fragments = conversation.answer(reply.text)
                if fragments:
                    gevent.sleep(self.rng.randint(*typing.think_ms) / 1000)
        finally:
            self.load.conversation_closed(conversation.phone, now_ms=wall_ms())
        gevent.sleep(self.rng.randint(*typing.pause_ms) / 1000)

    def _send(self, phone: str, index: int, parts: list[str]) -> Turn:
        load = self.load
        turn = load.begin_turn(phone, index, now_ms=wall_ms())
        low, high = load.options.profile.typing.gap_range_ms(load.options.batch_timeout_ms)
        for i, part in enumerate(parts):
            if i:
                gevent.sleep(self.rng.randint(low, high) / 1000)
            text = tagged(part, turn=index, fragment=i)
            now_ms = wall_ms()
            fragment = load.fragment(turn, text, now_ms=now_ms)
            request = self.webhook.text(
                sender=phone, text=text, message_id=message_id(load.run_tag, phone, index, i), at_ms=now_ms
            )
            started = time.perf_counter()
            # The body goes as these exact bytes (geventhttpclient sends bytes as they are): the signature covers them.
            with self.client.post(
                request.path,
                data=request.body,  # type: ignore[arg-type]
                headers=request.headers,
                name="webhook",
                catch_response=True,
            ) as response:
                accept_ms = (time.perf_counter() - started) * 1000
                outcome = _judge(response)
            load.answered(fragment, outcome=outcome, accept_ms=accept_ms, now_ms=wall_ms())
        return turn

    def _wait(self, turn: Turn, *, after: int) -> Reply | None:
        """The first reply to the turn's phone numbered after `after`, or None by the reply timeout."""
        if not turn.accepted:
            return None  # nothing was taken: the system owes no reply
        timeout_ms = round(self.load.options.reply_timeout_s * 1000)
        deadline_ms = turn.last_sent_ms + timeout_ms
        while (left_ms := deadline_ms - wall_ms()) > 0:
            try:
                replies, _ = self.inbox.read(after=after, to=turn.phone, wait_ms=min(left_ms, POLL_MS))
            except ProbeError as exc:
                self.load.error(str(exc))
                gevent.sleep(1)
                continue
            if replies:
                reply = replies[0]
                _report(self.environment, turn, float(max(0, reply.at_ms - turn.last_sent_ms)), len(reply.text))
                return reply
        _report(self.environment, turn, float(timeout_ms), 0, TimeoutError(f"no reply within {timeout_ms} ms"))
        return None


def _judge(response: ResponseContextManager) -> Outcome:
    """Accepted (200 with a message taken), refused (any other answer), or pending (no answer at all)."""
    if response.status_code == 0:
        response.failure(f"no answer: {getattr(response, 'error', None)}")
        return "pending"
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
        return "refused"
    try:
        accepted = int(orjson.loads(response.content or b"{}").get("accepted", 0))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        accepted = 0
    if accepted < 1:
        response.failure(f"200 without the message taken: {(response.text or '')[:200]}")
        return "refused"
    response.success()
    return "accepted"


def _report(
    environment: Environment, turn: Turn, e2e_ms: float, length: int, exception: Exception | None = None
) -> None:
    """The turn's end-to-end latency as a Locust request ("E2E reply"), once per turn."""
    if turn.reported:
        return
    turn.reported = True
    environment.events.request.fire(
        request_type="E2E",
        name="reply",
        response_time=e2e_ms,
        response_length=length,
        exception=exception,
        context={"phone": turn.phone, "turn": turn.index},
    )


def _guard(environment: Environment, load: LoadRun) -> None:
    """Quit the run with exit code 1 when the system stops answering or too many requests fail (`AbortRule`)."""
    rule, http, url = load.options.abort, _INBOX_HTTP[environment], f"{load.options.host}/health"
    last_answer_s = time.monotonic()
    while (runner := environment.runner) is not None:
        try:
            http.get(url, timeout=GUARD_PROBE_TIMEOUT_S)
            last_answer_s = time.monotonic()  # any HTTP answer: the process is there (failures are judged below)
        except httpx.HTTPError:
            pass
        total = runner.stats.total
        requests, failures = total.num_requests, total.num_failures
        reason = rule.reason(now_s=time.monotonic(), last_answer_s=last_answer_s, requests=requests, failures=failures)
        if reason is not None:
            log.error("stopping the run early (exit code 1): %s", reason)
            load.aborted = reason
            environment.process_exit_code = 1
            gevent.spawn(runner.quit)  # not from this greenlet: the stop hooks kill it
            return
        gevent.sleep(GUARD_INTERVAL_S)


def _stop_guard(environment: Environment) -> None:
    for greenlets in (_GUARDS, _EDGES, _MERGES):
        greenlet = greenlets.pop(environment, None)
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.kill(block=False)


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner) and environment in _RUNS:
        _stop_guard(environment)
        _GUARDS[environment] = gevent.spawn(_guard, environment, _run(environment))
    if isinstance(environment.runner, MasterRunner):
        return
    load = _run(environment)
    load.start(now_ms=wall_ms())
    load.stopped_ms = 0
    o = load.options
    http = _INBOX_HTTP[environment]
    try:
        load.start_seq = FakeWhatsAppInbox(o.whatsapp_url, http=http).last_seq()
    except ProbeError as exc:
        load.error(f"at start: {exc}")
        log.error("the fake WhatsApp does not answer, no reply can be seen: %s", exc)
    probe = SystemProbe(o.host, http=http, stats_token=o.stats_token, metrics_urls=o.metrics_urls)
    try:
        load.stats_before = probe.stats()
    except ProbeError as exc:
        load.error(f"at start: {exc}")
    try:
        load.queue_wait_before = probe.queue_wait()
    except ProbeError as exc:
        load.error(f"at start: {exc}")
    load.edges = [Edge(at_ms=load.started_ms, stats=load.stats_before, queue_wait=load.queue_wait_before)]
    _EDGES[environment] = gevent.spawn(read_window_edges, load, probe)
    if o.redis_url:
        _MERGES[environment] = gevent.spawn(check_merges_as_they_close, load, history=stored_history)


@events.test_stop.add_listener
def _test_stop(environment: Environment, **_: Any) -> None:
    _stop_guard(environment)
    if isinstance(environment.runner, MasterRunner) or environment not in _RUNS:
        return
    load = _run(environment)
    if load.stopped_ms:  # Locust stops twice when the guard quits while the shape is ending: one summary
        return
    load.stopped_ms = wall_ms()
    summary = _finish(environment, load)
    suffix = f"-worker-{os.getpid()}" if isinstance(environment.runner, WorkerRunner) else ""
    path = load.options.out_dir / f"{load.options.profile.name}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    e2e = summary["e2e_ms"]
    log.info(
        "load summary %s: %d turns, %d answered, %d lost, %d answered twice, merge %d/%d mismatched, "
        "e2e p50 %.0f ms p99 %.0f ms, written to %s",
        summary["profile"],
        summary["turns_sent"],
        summary["turns_answered"],
        summary["lost_turns"],
        summary["double_replies"],
        summary["merge"]["mismatched"],
        summary["merge"]["turns_checked"],
        e2e["p50"],
        e2e["p99"],
        path,
    )
    if summary["lost_turns"] or summary["double_replies"] or summary["merge"]["mismatched"]:
        environment.process_exit_code = 1


def _finish(environment: Environment, load: LoadRun) -> dict[str, Any]:
    """Wait for the replies still due and late doubles, then judge the turns and the merged messages."""
    o = load.options
    drain_started = time.perf_counter()
    http = _INBOX_HTTP[environment]
    replies = collect_replies(FakeWhatsAppInbox(o.whatsapp_url, http=http), load)
    drain_s = time.perf_counter() - drain_started
    timeout_ms = round(o.reply_timeout_s * 1000)
    reconciliation = reconcile(load.turns, replies, reply_timeout_ms=timeout_ms)
    for verdict in reconciliation.verdicts:  # clients stopped while waiting: their turns count in Locust's stats
        if verdict.answered and verdict.e2e_ms is not None:
            _report(environment, verdict.turn, verdict.e2e_ms, len(verdict.replies[0].text))
        elif verdict.lost:
            _report(environment, verdict.turn, float(timeout_ms), 0, TimeoutError("no reply (after the stop)"))
    merge = None
    if o.redis_url:
        try:
            merge = check_merges(load, history=stored_history)
        except ProbeError as exc:
            load.error(str(exc))
    else:
        load.error("no --redis-url: merge correctness not checked")
    probe = SystemProbe(o.host, http=http, stats_token=o.stats_token, metrics_urls=o.metrics_urls)
    stats_after = None
    try:
        stats_after = probe.stats()
    except ProbeError as exc:
        load.error(str(exc))
    queue_wait = []
    queue_wait_now = None
    try:
        queue_wait_now = probe.queue_wait()
        queue_wait = subtract_buckets(queue_wait_now, load.queue_wait_before)
    except (ProbeError, ValueError) as exc:
        load.error(str(exc))
    load.edges.append(Edge(at_ms=load.stopped_ms, stats=stats_after, queue_wait=queue_wait_now))
    if reconciliation.turns_answered and not histogram_count(queue_wait):
        load.error("no queue wait observed at the metrics URL: a separate `aiadmin worker` serves no /metrics")
    return load.summary(
        reconciliation=reconciliation, merge=merge, stats_after=stats_after, queue_wait=queue_wait, drain_s=drain_s
    )

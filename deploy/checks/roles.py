"""The image's roles from the runtime venv: they start, serve, survive a rolling worker, stop on SIGTERM, are measured.

Run by `.ci/deploy-checks` with the dev venv's Python (it drives the run; the fakes come from the `sim` extra) and
`--bin` pointing at the runtime venv that `deploy/image/install.sh` built from the wheel alone. On a Redis of its
own (a free port, a temporary directory) it starts the stand-alone fakes of WhatsApp, the LLM (scripted, with a
latency) and YClients, then `aiadmin api`, `aiadmin batcher --metrics-port` and `aiadmin worker --metrics-port` in
production mode, and:

1. waits for `/ready` = 200 and reads each role's RSS and CPU at rest;
2. posts `--conversations` clients' signed Meta webhooks (3 fragments each) and, with turns in flight, rolls the
   worker as a Deployment update would: SIGTERM to the first (its shutdown time set to 1 s, so that turns are left
   for the reclaim) which must exit 0 in time, then a second worker that must reclaim and finish them;
3. waits until every turn is acknowledged exactly once, no dead letter, and each client got one reply;
4. checks that every metric the Grafana dashboard and the alerting rules name is exported;
5. stops every role with SIGTERM and expects exit 0.

Exit 1 on any failure. The figures go to `--json`; the runbook's capacity table quotes them.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deploy.checks.metric_names import exposed_names, missing_metrics
from loadtests._probes import FakeWhatsAppInbox
from loadtests._processes import (
    CpuWindow,
    Process,
    ProcessError,
    ResourceSampler,
    rss_mb,
    spawn,
    stop,
    stopping,
    wait_http,
)
from loadtests._webhook import Webhook, message_id
from loadtests.run._stack import Ports, aiadmin, process_env, system_env
from simulator.redis_server import LOCALHOST, RedisServer, free_port

IDLE_WINDOW_S = 3.0
DRAIN_TIMEOUT_S = 120.0
POLL_S = 0.25
POST_THREADS = 16
# The first worker's AIADMIN_WORKER_SHUTDOWN_S: short, so that SIGTERM leaves turns for the second to reclaim.
ROLLED_SHUTDOWN_S = 1.0
# The fake LLM's min,mode,max seconds per answer: every turn outlasts ROLLED_SHUTDOWN_S, so the turns that began
# shortly before the SIGTERM are always left unfinished, and the reclaim is exercised on every run.
LLM_LATENCY_S = "1,1.2,1.5"
# How long a stopped role may take beyond its shutdown time (interpreter exit, closing connections).
STOP_MARGIN_S = 10.0
# Above AIADMIN_WORKER_SHUTDOWN_S (30 s): an idle worker stops at once, a busy one within that time.
STOP_TIMEOUT_S = 40.0
FRAGMENTS = ("Здравствуйте", "хочу записаться на стрижку", "завтра после обеда")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", type=Path, required=True, help="bin/ of the runtime venv (holds `aiadmin`)")
    parser.add_argument("--dashboard", type=Path, default=Path("deploy/grafana/aiadmin.json"))
    parser.add_argument("--alerts", type=Path, default=Path("deploy/prometheus/alerts.yaml"))
    parser.add_argument("--conversations", type=int, default=300, help="clients of the load, 3 fragments each")
    parser.add_argument("--json", type=Path, default=None, help="where the figures go")
    args = parser.parse_args(argv)
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        print("FAIL: redis-server is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="aiadmin-roles-") as tmp:
        redis = RedisServer(redis_binary, Path(tmp), durable=False)
        redis.start()
        try:
            report = run(args, redis_url=redis.url, work=Path(tmp))
        except ProcessError as exc:
            print(f"FAIL: {exc}", file=sys.stderr)
            return 1
        finally:
            redis.close()
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for failure in report["failures"]:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if report["failures"] else 0


@dataclass
class Stack:
    """How this run starts a role of the runtime venv: its binary, settings, log folder and the API's address."""

    bin: Path
    env: dict[str, str]
    work: Path
    base: str
    stats_token: str
    procs: list[Process]

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Process:
        proc = spawn(name, [str(self.bin / "aiadmin"), *args], env=self.env | dict(env or {}), log_dir=self.work)
        self.procs.append(proc)
        return proc

    def metrics_role(self, name: str, role: str, *, env: Mapping[str, str] | None = None) -> tuple[Process, str]:
        """A batcher or worker serving its metrics on a free port, once that answers; (process, metrics URL)."""
        url = f"http://{LOCALHOST}:{(port := free_port())}/metrics"
        proc = self.start(name, role, "--metrics-port", str(port), env=env)
        wait_http(proc, url, ok=[200])
        return proc, url

    def stats(self, http: httpx.Client) -> dict[str, Any]:
        response = http.get(f"{self.base}/webhook/whatsapp/batched/stats", headers={"authorization": self.token})
        response.raise_for_status()
        return dict(response.json())

    @property
    def token(self) -> str:
        return f"Bearer {self.stats_token}"


def run(args: argparse.Namespace, *, redis_url: str, work: Path) -> dict[str, Any]:
    ports = Ports.free()
    app_secret, stats_token = secrets.token_hex(16), secrets.token_hex(16)
    settings = system_env(
        ports,
        redis_url=redis_url,
        batch_timeout_ms=300,
        overrides={
            "AIADMIN_ENV": "production",
            "AIADMIN_LOG_LEVEL": "INFO",
            "AIADMIN_WHATSAPP_APP_SECRET": app_secret,
            "AIADMIN_WEBHOOK_SECRET": secrets.token_hex(16),
            "AIADMIN_STATS_TOKEN": stats_token,
            # The fake CRM is local: the client-side YClients limit (5/s) would only make the run slower.
            "AIADMIN_YCLIENTS_RPS": "1000",
            "AIADMIN_YCLIENTS_RPM": "60000",
            # The load posts faster than one salon's default 200 messages/s: no 429 is what is checked.
            "AIADMIN_RATE_LIMIT_GLOBAL_PER_S": "0",
            # Turns the rolled worker leaves are reclaimed after this (60 s by default).
            "AIADMIN_VISIBILITY_TIMEOUT_S": "5",
        },
    )
    base = f"http://{LOCALHOST}:{ports.system}"
    stack = Stack(args.bin, process_env(settings), work, base, stats_token, procs=[])
    report: dict[str, Any] = {"failures": []}
    with stopping(stack.procs), httpx.Client(timeout=10.0) as http:
        for name, port in ports.fakes.items():
            extra = ["--mode", "scripted", "--latency-s", LLM_LATENCY_S] if name == "llm" else []
            fake = spawn(
                f"fake-{name}", aiadmin("fake", name, "--port", str(port), *extra), env=stack.env, log_dir=work
            )
            stack.procs.append(fake)
            wait_http(fake, f"http://{LOCALHOST}:{port}/")
        api = stack.start("api", "api", "--port", str(ports.system))
        batcher, batcher_metrics = stack.metrics_role("batcher", "batcher")
        rolled, _ = stack.metrics_role("worker-1", "worker", env={"AIADMIN_WORKER_SHUTDOWN_S": str(ROLLED_SHUTDOWN_S)})
        wait_http(api, f"{base}/ready", ok=[200])
        report["ready"] = f"{base}/ready answered 200"
        report["idle"] = measure_idle({"api": api, "batcher": batcher, "worker": rolled})

        sampler = ResourceSampler(sample_s=POLL_S)
        for proc in (api, batcher, rolled):
            sampler.watch(proc)
        started = time.monotonic()
        statuses = post_load(base, app_secret, args.conversations)
        posted_s = time.monotonic() - started
        in_flight = poll(lambda: stack.stats(http)["in_flight_jobs"], lambda n: n > 0, rolled, timeout_s=30.0)
        stopping_at = time.monotonic()
        rolled_code = stop(rolled, timeout_s=STOP_TIMEOUT_S)
        rolled_stop_s = time.monotonic() - stopping_at
        worker, worker_metrics = stack.metrics_role("worker-2", "worker")
        sampler.watch(worker)
        final = poll(lambda: stack.stats(http), lambda s: drained(s, args.conversations), worker, DRAIN_TIMEOUT_S)
        sampler.close()
        replies = collections.Counter(
            r.to for r in FakeWhatsAppInbox(f"http://{LOCALHOST}:{ports.whatsapp}", http=http).everything_after(0)
        )
        report["load"] = {
            "requests": len(statuses),
            "non_200": sum(1 for s in statuses if s != 200),
            "post_s": round(posted_s, 2),
            "requests_per_s": round(len(statuses) / max(posted_s, 1e-9), 1),
            "drain_s": round(time.monotonic() - started, 2),
            "processes": {p.name: _without_series(sampler.figures(p)) for p in (api, batcher, rolled, worker)},
        }
        report["rolling_worker"] = {
            "in_flight_at_sigterm": in_flight,
            "exit_code": rolled_code,
            "stopped_in_s": round(rolled_stop_s, 2),
            "left_for_reclaim": left_for_reclaim(rolled),
        }
        report["turns"] = {
            k: final[k] for k in ("jobs_done", "jobs_retried", "queue_length", "in_flight_jobs", "dead_letters")
        }
        report["replies"] = {"clients": len(replies), "most_to_one_client": max(replies.values(), default=0)}

        exported = exported_names(
            {"api": f"{base}/metrics", "batcher": batcher_metrics, "worker": worker_metrics}, http
        )
        report["metrics_exported"] = len(exported)
        for source in (args.dashboard, args.alerts):
            report[f"unexported_in_{source.name}"] = missing_metrics(source, exported)
        report["exit_codes"] = {p.name: stop(p, timeout_s=STOP_TIMEOUT_S) for p in (api, batcher, worker)}
        report["failures"] = judge(report, conversations=args.conversations)
        for proc in (api, batcher, rolled, worker):
            if report["exit_codes"].get(proc.name, report["rolling_worker"]["exit_code"]) != 0:
                report["failures"].append(f"{proc.name}'s log:\n{proc.log_tail()}")
    return report


def judge(report: dict[str, Any], *, conversations: int) -> list[str]:
    """What the run must show: every request taken, the rolled worker stopped in time, every turn once, no loss."""
    failures = []
    if report["load"]["non_200"]:
        failures.append(f"{report['load']['non_200']} webhook requests were not answered 200")
    rolled = report["rolling_worker"]
    if rolled["exit_code"] != 0 or rolled["stopped_in_s"] > ROLLED_SHUTDOWN_S + STOP_MARGIN_S:
        failures.append(f"the rolled worker exited {rolled['exit_code']} after {rolled['stopped_in_s']} s")
    if not rolled["left_for_reclaim"]:
        failures.append("the rolled worker left no turn for the reclaim: the reclaim went unchecked")
    turns = report["turns"]
    if turns["jobs_done"] != conversations or turns["dead_letters"] or turns["queue_length"]:
        failures.append(f"{conversations} turns expected done once, got {turns}")
    if report["replies"] != {"clients": conversations, "most_to_one_client": 1}:
        failures.append(f"{conversations} clients expected one reply each, got {report['replies']}")
    for key in ("unexported_in_aiadmin.json", "unexported_in_alerts.yaml"):
        if report.get(key):
            failures.append(f"{key.removeprefix('unexported_in_')} names metrics no role exports: {report[key]}")
    failures += [f"{name} exited {code} on SIGTERM" for name, code in report["exit_codes"].items() if code != 0]
    return failures


def drained(stats: Mapping[str, Any], conversations: int) -> bool:
    return bool(stats["jobs_done"] >= conversations and not stats["queue_length"] and not stats["in_flight_jobs"])


def poll(read: Callable[[], Any], done: Callable[[Any], bool], proc: Process, timeout_s: float) -> Any:
    """`read()` until `done` holds of it while `proc` lives (bounded); the last value read."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        proc.check_alive()
        time.sleep(POLL_S)  # polling state other processes advance; bounded by the deadline
        value = read()
    return value


def measure_idle(roles: dict[str, Process]) -> dict[str, Any]:
    """RSS and CPU of each role with nothing to do, over IDLE_WINDOW_S."""
    with CpuWindow({role: proc.pid for role, proc in roles.items()}, own_name="checker") as cpu:
        time.sleep(IDLE_WINDOW_S)  # a measuring window: nothing is awaited
    return {
        role: {"rss_mb": round(rss_mb(proc.pid), 1), "cpu_pct": round(cpu.pct[role], 1)} for role, proc in roles.items()
    }


def post_load(base: str, app_secret: str, conversations: int) -> list[int]:
    """Every client's fragments as signed Meta webhooks, from POST_THREADS threads; the status of each."""
    webhook = Webhook(format="meta", secret=app_secret)
    now_ms = int(time.time() * 1000)
    requests = [
        webhook.text(sender=phone, text=text, message_id=message_id("deploy", phone, 0, n), at_ms=now_ms)
        for phone in (f"7916{i:07d}" for i in range(conversations))
        for n, text in enumerate(FRAGMENTS)
    ]
    with httpx.Client(base_url=base, timeout=10.0) as http:

        def post(index: int) -> int:
            request = requests[index]
            return http.post(request.path, content=request.body, headers=request.headers).status_code

        with concurrent.futures.ThreadPoolExecutor(POST_THREADS) as pool:
            return list(pool.map(post, range(len(requests))))


def left_for_reclaim(proc: Process) -> int:
    """Turns the worker's log says it left for the reclaim when its shutdown time ran out."""
    left = 0
    for line in proc.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "turns_left_for_reclaim":
                left += int(event["count"])
    return left


def exported_names(metrics_urls: dict[str, str], http: httpx.Client) -> set[str]:
    """Every series name the roles' /metrics pages declare (a family's TYPE counts even before a first sample)."""
    names: set[str] = set()
    for url in metrics_urls.values():
        names |= exposed_names(text_string_to_metric_families(http.get(url).text))
    return names


def _without_series(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k != "rss_series_mb"}


if __name__ == "__main__":
    sys.exit(main())

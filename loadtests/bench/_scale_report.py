"""The scale benchmark's table: every figure beside its goal; the correctness problems that fail the run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtests.bench._figures import Row, ge, le, num, render

TITLE = "aiadmin bench scale — 2 APIs, 2 batchers, 3 workers on a 3+3 Redis Cluster (machine shared: figures contended)"
ALL_CLEAR = "with WAIT: 0 lost; every run: 0 answered twice, 0 dead letters, 0 batches flushed twice"
GOAL_RATIO_2 = 1.8
GOAL_RESUME_S = 10.0
GOAL_CONVERSATIONS = 2000


def summary_rows(s: dict[str, Any]) -> list[Row]:
    rows = [*_ingest(s["ingest"]), *_scaling(s["scaling"])]
    for name, label in (
        ("wait_on", "WAIT 1 replica"),
        ("wait_off", "WAIT off"),
        ("aof", "single server, AOF everysec"),
    ):
        rows += _run(s[name], label, strict=name == "wait_on")
    return rows


def _ingest(i: dict[str, Any]) -> list[Row]:
    c, w, one = i["cluster"], i["cluster_wait"], i["single"]
    return [
        Row(
            "Ingest, 2 APIs: accepted messages/s (medians), cluster vs single server (same run, alternating)",
            f"{c['per_s']:,.0f} vs {one['per_s']:,.0f}/s: ratio {num('{:.2f}', i['ratio'])} (median of "
            f"{', '.join(f'{r:.2f}' for r in i.get('ratios', []))})",
            "—",
            "a ratio (no goal)",
        ),
        Row(
            "Accept latency p50 / p99: cluster, cluster + WAIT 1 replica, single server (no fault)",
            f"{_ms(c)}; {_ms(w)} ({w['per_s']:,.0f}/s); {_ms(one)}",
            "—",
            "the cost of WAIT (no goal)",
        ),
    ]


def _ms(side: dict[str, Any]) -> str:
    return f"{num('{:.1f}', side['p50_ms'])} / {num('{:.1f}', side['p99_ms'])} ms"


def _scaling(c: dict[str, Any]) -> list[Row]:
    rates = ", ".join(f"{n}: {r:,.1f}/s" for n, r in c["messages_per_s"].items())
    return [
        Row(
            "Worker processes 1 / 2 / 3 at the LLM stand-in latency (messages/s)",
            f"{rates}; bound {c['bound_per_worker_per_s']:.0f}/s per process (concurrency / latency)",
            "—",
            "—",
        ),
        Row(
            "Scaling ratio, 2 vs 1 worker processes (3 vs 1)",
            f"{num('{:.2f}', c['ratio_2'])}× ({num('{:.2f}', c['ratio_3'])}×)",
            "—",
            f"≥ {GOAL_RATIO_2}×",
            ge(c["ratio_2"], GOAL_RATIO_2),
        ),
    ]


def _run(r: dict[str, Any], label: str, *, strict: bool) -> list[Row]:
    f, b = r["failover"], r["batches"]
    down = (
        f"promotion {num('{:.1f}', f.get('promotion_s'))} s after kill -9 of the master owning shards {f.get('shards')}"
        if "promotion_s" in f
        else f"restarted in {num('{:.1f}', f.get('restart_s'))} s (kill -9, AOF replayed)"
    )
    resume = max((v for k, v in f.items() if k.endswith("_resume_s") and v is not None), default=None)
    back = (
        f" (the killed node back as a synced replica {num('{:.1f}', f['replica_back_s'])} s later)"
        if "replica_back_s" in f
        else ""
    )
    all_resumed = all(f.get(k) is not None for k in ("jobs_done_resume_s", "batches_flushed_resume_s"))
    return [
        Row(
            f"{label}: conversations × messages; accepted, answered, lost",
            f"{r['conversations']} × {r['messages'] // r['conversations']}; {r['accepted']} accepted, "
            f"{r['answered']} answered, {r['lost']} lost ({r['replied']}/{r['conversations']} conversations replied)",
            "—",
            "0 lost" if strict else "report",
            r["lost"] == 0 if strict else None,
        ),
        Row(
            f"{label}: answered twice, dead letters, batches flushed twice",
            f"{r['answered_twice']}, {r['dead_letters']}, {b['flushed_twice']} "
            f"({b['batches']} batches: {', '.join(str(n) for n in b['per_batcher'].values())} per batcher; "
            f"{r['replies']} replies to {r['replied_turns']} replying turns of {r['turns']})",
            "—",
            "0, 0, 0",
            not (r["answered_twice"] or r["dead_letters"] or b["flushed_twice"]),
        ),
        Row(
            f"{label}: accept latency (retries {r['retries']})",
            f"{num('{:.1f}', r['accept_p50_ms'])} / {num('{:.1f}', r['accept_p99_ms'])} ms (p50 / p99)",
            "—",
            "—",
        ),
        Row(
            f"{label}: workers and batchers resume",
            f"{down}; acks again after {num('{:.1f}', f.get('jobs_done_resume_s'))} s, "
            f"claims after {num('{:.1f}', f.get('batches_flushed_resume_s'))} s{back}",
            "—",
            f"≤ {GOAL_RESUME_S:.0f} s",
            all_resumed and le(resume, GOAL_RESUME_S),
        ),
    ]


def problems(s: dict[str, Any]) -> list[str]:
    """What fails the run: a lost message with WAIT, a double answer, a dead letter, a batch flushed twice."""
    found = [f"wait_on: {s['wait_on']['lost']} accepted messages lost"] if s["wait_on"]["lost"] else []
    for name in ("wait_on", "wait_off", "aof"):
        r = s[name]
        found += [f"{name}: {key}={r[key]}" for key in ("answered_twice", "dead_letters") if r[key]]
        if r["batches"]["flushed_twice"]:
            found.append(f"{name}: {r['batches']['flushed_twice']} batches flushed twice")
    return found


def finish(report: dict[str, Any]) -> dict[str, Any]:
    """The report with its table rows and problems."""
    s = report["sections"]
    return report | {"summary": [asdict(row) for row in summary_rows(s)], "problems": problems(s)}


def render_scale(console: Console, report: dict[str, Any], out: Path) -> None:
    rows = [Row(**row) for row in report["summary"]]
    render(console, rows, report["problems"], out, title=TITLE, all_clear=ALL_CLEAR)

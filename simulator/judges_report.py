"""The turn-level judges and pass^k in `aiadmin simulate`'s summary: figures, failure reasons, the printed table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from simulator.judge import run_failures, success_rates
from simulator.simulation import SimResult
from simulator.trials import aggregate, outcomes

EXAMPLES_KEPT = 100
FAILURE_NAMES = {
    "unrequested_booking": "unrequested bookings",
    "last_word": "bookings against the user's last word",
    "asked_twice": "questions asked twice",
    "unanswered_fragment": "fragments never answered",
}


def judged(results: Sequence[SimResult]) -> dict[str, Any]:
    """pass^k and the turn-level verdicts over every trial, the stale replies and the model calls per conversation."""
    if not all(r.turns_observed for r in results):
        return {"observed": False}
    conversations = sum(len(r.verdicts) for r in results)
    return {
        "observed": True,
        **aggregate([outcomes(r) for r in results]),
        "examples": _examples(results),
        "model_calls": sum(r.model_calls for r in results),
        "model_calls_per_conversation": round(sum(r.model_calls for r in results) / max(1, conversations), 3),
    }


def judges_failures(j: dict[str, Any], results: Sequence[SimResult]) -> list[str]:
    """Why the judges fail the run: any turn-level violation, a simulated user misreading, a later trial's failure."""
    reasons: list[str] = []
    for i, r in enumerate(results[1:], 1):
        rates = success_rates(r.verdicts)
        reasons.extend(
            f"trial {i}: {why}" for why in run_failures(rates, world=r.world, dead_letters=r.stats["dead_letters"])
        )
    if not j.get("observed"):
        return reasons
    reasons.extend(f"{FAILURE_NAMES[kind]} {n}" for kind, n in j["violations"].items() if n)
    if j["misfit_accepted"]:
        reasons.append(f"simulated users took offers that did not fit their goal {j['misfit_accepted']}")
    return reasons


def print_judges(console: Console, j: dict[str, Any]) -> None:
    if not j.get("observed"):
        console.print("turn-level judges: not run (the system's turns are not observable in separate processes)")
        return
    k = j["trials"]
    table = Table(title=f"turn-level judges over {k} trial{'s' if k > 1 else ''} (end state, pass^k, violations)")
    passes = ("pass^1", f"pass^{k}") if k > 1 else ("pass^1",)
    for column in ("persona", "end", *passes, "unreq.", "last", "twice", "unans.", "stale"):
        table.add_column(column, justify="left" if column == "persona" else "right")
    table.add_column("turns p50/p95 (min)", justify="right")
    for name, p in j["personas"].items():
        v = p["violations"]
        turns = f"{_n(p['turns_median'])}/{_n(p['turns_p95'])} ({_n(p['min_turns_median'])})"
        table.add_row(
            name,
            f"{100 * p['reached']:.1f}%",
            *(f"{100 * p[column]:.1f}%" for column in passes),
            str(v["unrequested_booking"]),
            str(v["last_word"]),
            str(v["asked_twice"]),
            str(v["unanswered_fragment"]),
            str(p["stale_replies"]),
            turns,
        )
    Console(width=max(console.width, 112), file=console.file).print(table)
    total = ", ".join(f"{FAILURE_NAMES[kind]} {n}" for kind, n in j["violations"].items())
    console.print(
        f"judges: {total}; stale replies sent {j['stale_replies']}; model calls {j['model_calls']} "
        f"({j['model_calls_per_conversation']} per conversation)"
    )


def _examples(results: Sequence[SimResult]) -> list[dict[str, Any]]:
    """The users with turn-level violations (the first EXAMPLES_KEPT), with every finding, to read the transcript."""
    out: list[dict[str, Any]] = []
    for trial, r in enumerate(results):
        for v in r.turn_verdicts:
            if v.violations and len(out) < EXAMPLES_KEPT:
                findings = {kind: getattr(v, kind) for kind in FAILURE_NAMES if getattr(v, kind)}
                out.append({"trial": trial, "phone": v.phone, "persona": v.persona, **findings})
    return out


def _n(x: float | None) -> str:
    return "—" if x is None else f"{x:g}"

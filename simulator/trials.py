"""pass^k: the same users with the same goals, run k times with other typing and model latency (as τ²-bench does).

A user passes a trial when it reaches its goal (the end-state verdict) and no turn-level judge finds a violation.
pass^k of a persona is the chance that all of k trials of one of its users pass, estimated over n ≥ k trials as
τ²-bench does: the mean over users of C(c, k) / C(n, k), c being the user's passed trials.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simulator.judges import VIOLATIONS
from simulator.simulation import SimResult


@dataclass(frozen=True, slots=True)
class UserOutcome:
    """One user in one trial, as the aggregate needs it (small and picklable)."""

    phone: str
    persona: str
    reached: bool  # the end-state verdict
    violations: tuple[tuple[str, int], ...]  # (kind, count) of each turn-level violation found
    stale_replies: int
    misfit_accepted: int
    turns_to_goal: int | None
    min_turns: int

    @property
    def passed(self) -> bool:
        return self.reached and not any(n for _, n in self.violations) and not self.misfit_accepted


def outcomes(result: SimResult) -> list[UserOutcome]:
    """Each user's outcome in one run (turn-level verdicts are empty when the system's turns were not observed)."""
    turns = {v.phone: v for v in result.turn_verdicts}
    out = []
    for verdict in result.verdicts:
        t = turns.get(verdict.phone)
        out.append(
            UserOutcome(
                phone=verdict.phone,
                persona=verdict.persona,
                reached=verdict.success,
                violations=tuple((kind, len(getattr(t, kind))) for kind in VIOLATIONS) if t else (),
                stale_replies=t.stale_replies if t else 0,
                misfit_accepted=t.misfit_accepted if t else 0,
                turns_to_goal=t.turns_to_goal if t else None,
                min_turns=t.min_turns if t else 1,
            )
        )
    return out


def pass_hat_k(passed_per_user: Sequence[int], *, n: int, k: int) -> float:
    """τ²-bench's pass^k over users with `passed_per_user` successes in n trials each."""
    if not passed_per_user or k > n:
        return 0.0
    return statistics.fmean(math.comb(c, k) / math.comb(n, k) for c in passed_per_user)


def aggregate(runs: Sequence[Sequence[UserOutcome]]) -> dict[str, Any]:
    """Per persona: pass^1 and pass^k, the end-state rate, turn-level violations, turns to the goal."""
    n = len(runs)
    by_phone: dict[str, list[UserOutcome]] = {}
    for trial in runs:
        for o in trial:
            by_phone.setdefault(o.phone, []).append(o)
    by_persona: dict[str, list[list[UserOutcome]]] = {}
    for user in by_phone.values():
        by_persona.setdefault(user[0].persona, []).append(user)
    personas: dict[str, Any] = {}
    for name, users in sorted(by_persona.items()):
        flat = [o for u in users for o in u]
        passed = [sum(o.passed for o in u) for u in users]
        turns = sorted(o.turns_to_goal for o in flat if o.turns_to_goal is not None)
        kinds: Counter[str] = Counter()
        for o in flat:
            kinds.update({kind: count for kind, count in o.violations})
        personas[name] = {
            "users": len(users),
            "reached": round(statistics.fmean(o.reached for o in flat), 4),
            "pass^1": round(pass_hat_k(passed, n=n, k=1), 4),
            f"pass^{n}": round(pass_hat_k(passed, n=n, k=n), 4),
            "violations": {kind: kinds[kind] for kind in VIOLATIONS},
            "stale_replies": sum(o.stale_replies for o in flat),
            "misfit_accepted": sum(o.misfit_accepted for o in flat),
            "turns_median": statistics.median(turns) if turns else None,
            "turns_p95": turns[min(len(turns) - 1, math.ceil(0.95 * len(turns)) - 1)] if turns else None,
            "min_turns_median": statistics.median(o.min_turns for o in flat) if flat else None,
        }
    totals = {kind: sum(p["violations"][kind] for p in personas.values()) for kind in VIOLATIONS}
    return {
        "trials": n,
        "personas": personas,
        "violations": totals,
        "stale_replies": sum(p["stale_replies"] for p in personas.values()),
        "misfit_accepted": sum(p["misfit_accepted"] for p in personas.values()),
    }

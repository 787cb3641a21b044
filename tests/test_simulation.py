"""A small simulation through the whole system: the world's invariants hold and one seed gives one transcript."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from datetime import UTC, date
from pathlib import Path

import orjson
import pytest
import typer
from redis.asyncio import Redis
from typer.testing import CliRunner, Result

from simulator.cli import simulate_command
from simulator.judge import WorldVerdict, judge_user, run_failures
from simulator.personas import PERSONAS, want_for
from simulator.simulation import SimOptions, SimResult, simulate
from simulator.users import User
from system.turn.worker import CONFUSED_REPLY, FALLBACK_REPLY

from .conftest import REAL_REDIS_URL


def digest(result: SimResult) -> str:
    lines = b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in result.transcript.events)
    return hashlib.sha256(lines).hexdigest()


async def test_a_small_salon_day_keeps_every_invariant() -> None:
    result = await simulate(SimOptions(users=2 * len(PERSONAS), seed=7))
    world = result.world
    assert (world.double_bookings, world.foreign_touched, world.turns_answered_twice) == (0, 0, 0)
    assert world.unanswered_users == 0
    assert result.stats["dead_letters"] == 0
    assert result.stats["fragments_flushed"] > result.stats["batches_flushed"]  # fragments were merged
    assert result.bookings_created == 10
    assert {v.persona for v in result.verdicts} == set(PERSONAS)
    # Seed 7 is deterministic (see the next test): every one of its users gets what they came for.
    assert [(v.persona, v.reason) for v in result.verdicts if not v.success] == []
    # ... and the turn-level judges, who watched every user's turns, find nothing a good administrator would do wrong.
    assert len(result.turn_verdicts) == len(result.users)
    assert [(v.persona, v.violations) for v in result.turn_verdicts if v.violations or v.misfit_accepted] == []


async def test_one_seed_gives_one_transcript() -> None:
    first = await simulate(SimOptions(users=12, seed=3))
    second = await simulate(SimOptions(users=12, seed=3))
    other = await simulate(SimOptions(users=12, seed=4))
    assert digest(first) == digest(second)
    assert digest(first) != digest(other)


async def test_another_trial_keeps_the_goals_and_changes_the_typing_and_latency() -> None:
    first = await simulate(SimOptions(users=12, seed=3, trial=1))
    again = await simulate(SimOptions(users=12, seed=3, trial=1))
    base = await simulate(SimOptions(users=12, seed=3))
    assert digest(first) == digest(again)
    assert digest(first) != digest(base)
    assert [(u.phone, u.want, u.start_ms) for u in first.users] == [(u.phone, u.want, u.start_ms) for u in base.users]


def test_simulate_trials_reports_pass_hat_k_per_persona(tmp_path: Path) -> None:
    result = simulate_cli(tmp_path, "--users", str(len(PERSONAS)), "--seed", "7", "--trials", "2", "--jobs", "1")

    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    judges = summary["judges"]
    assert judges["trials"] == 2 and set(judges["personas"]) == set(PERSONAS)
    assert all(
        {"pass^1", "pass^2", "turns_median", "turns_p95", "min_turns_median"} <= set(p)
        for p in judges["personas"].values()
    )
    assert "pass^2" in result.stdout
    verdict = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert verdict == ["PASS" if not summary["failed"] else "FAIL: " + "; ".join(summary["failed"])]
    assert result.exit_code == (1 if summary["failed"] else 0)


@pytest.mark.redis
async def test_a_small_salon_day_on_real_redis(real_redis: Redis) -> None:
    result = await simulate(SimOptions(users=len(PERSONAS), seed=11, redis_url=REAL_REDIS_URL))
    world = result.world
    assert (world.double_bookings, world.foreign_touched, world.turns_answered_twice, world.unanswered_users) == (
        0,
        0,
        0,
        0,
    )
    assert result.stats["dead_letters"] == 0
    assert result.stats["flush_lateness_ms"]["p99"] <= 20


def simulate_cli(tmp_path: Path, *args: str) -> Result:
    app = typer.Typer()
    app.command()(simulate_command)
    # No Redis URL in the environment: the run stays on fakeredis whatever the shell exports.
    env = {"REDIS_URL": None, "AIADMIN_SIM_REDIS_URL": None}
    return CliRunner().invoke(app, ["--out", str(tmp_path), *args], env=env)


def test_simulate_exits_1_when_every_model_call_times_out(tmp_path: Path) -> None:
    result = simulate_cli(tmp_path, "--users", str(len(PERSONAS)), "--llm-latency-s", "100,100,100")

    assert result.exit_code == 1, result.output
    verdict = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(verdict) == 1
    assert verdict[0].startswith("FAIL: ")
    assert "dead letters" in verdict[0]
    # Every persona fails, the ones with nothing to book too: an apology for a failed turn is no answer.
    assert all(f"{name} 0.0%" in verdict[0] for name in PERSONAS)
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    # Seed 1 is deterministic: exactly 20 turns end as dead letters (the later ones refused by the open circuit).
    assert summary["failed"] and summary["dead_letters"] == 20


def test_simulate_prints_pass_and_exits_0_when_every_persona_reaches_its_rate(tmp_path: Path) -> None:
    result = simulate_cli(tmp_path, "--users", str(len(PERSONAS)), "--seed", "7")

    assert result.exit_code == 0, result.output
    assert [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))] == ["PASS"]


def run_user(persona: str, replies: list[str], *, service: str = "Мужская стрижка") -> User:
    p = PERSONAS[persona]
    want = want_for(p, random.Random(1))
    if want.service:
        want = replace(want, service=service)
    return User(
        phone="79150000001",
        persona=p,
        want=want,
        today=date(2026, 1, 12),
        rng=random.Random(1),
        start_ms=0,
        achieved=lambda _: False,
        replies=replies,
    )


@pytest.mark.parametrize("persona", ["gibberish", "injector", "media_sender", "price_asker"])
def test_a_persona_with_nothing_to_book_fails_on_the_fault_apology_alone(persona: str) -> None:
    verdict = judge_user(run_user(persona, [FALLBACK_REPLY]), initial=[], final=[], tz=UTC)

    assert (verdict.success, verdict.reason) == (False, "only the fault apology")


@pytest.mark.parametrize("persona", ["gibberish", "injector", "media_sender"])
def test_a_non_cooperative_persona_passes_on_a_polite_reply_with_nothing_changed(persona: str) -> None:
    verdict = judge_user(run_user(persona, [FALLBACK_REPLY, CONFUSED_REPLY]), initial=[], final=[], tz=UTC)

    assert verdict.success, verdict.reason


def test_a_price_asker_needs_the_price_of_the_service_asked_about() -> None:
    # Мужская стрижка costs 1500-1800 in the fixture; Стрижка машинкой 800.
    vague = judge_user(run_user("price_asker", ["Уточню и вернусь 🙂"]), initial=[], final=[], tz=UTC)
    wrong = judge_user(run_user("price_asker", ["Стрижка машинкой — 800 ₽"]), initial=[], final=[], tz=UTC)
    priced = judge_user(
        run_user("price_asker", ["Мужская стрижка — от 1 500 ₽, 60 мин."]), initial=[], final=[], tz=UTC
    )

    assert (vague.success, vague.reason) == (False, "no price of Мужская стрижка")
    assert not wrong.success
    assert priced.success, priced.reason


def test_run_failures_names_every_reason_and_nothing_on_a_clean_run() -> None:
    clean = WorldVerdict(double_bookings=0, foreign_touched=0, turns_answered_twice=0, unanswered_users=0)
    rates: dict[str, dict[str, float | int]] = {
        "rapid_booker": {"users": 4, "succeeded": 3, "rate": 0.75},
        "gibberish": {"users": 4, "succeeded": 4, "rate": 1.0},
    }
    assert run_failures(rates, world=clean, dead_letters=0) == []

    below = {**rates, "rapid_booker": {"users": 4, "succeeded": 2, "rate": 0.5}, "injector": {"rate": 0.75}}
    broken = WorldVerdict(double_bookings=1, foreign_touched=2, turns_answered_twice=3, unanswered_users=4)
    assert run_failures(below, world=broken, dead_letters=5) == [
        "rapid_booker 50.0% < 75%",
        "injector 75.0% < 100%",
        "dead letters 5",
        "users never answered 4",
        "double bookings 1",
        "foreign bookings touched 2",
        "turns answered twice 3",
    ]

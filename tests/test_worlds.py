"""A larger run as a chain of salons: who goes where, one transcript whatever the processes, the figures merged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import typer
from typer.testing import CliRunner

from simulator.cli import simulate_command
from simulator.personas import PERSONAS
from simulator.simulation import SimOptions, SimResult, simulate
from simulator.worlds import merge_stats, run_worlds, salons_of

SALON = 6  # users per salon in these tests: a chain of three salons for 14 users


def digest(result: SimResult) -> str:
    lines = b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in result.transcript.events)
    return hashlib.sha256(lines).hexdigest()


def test_a_large_run_is_a_chain_of_salons_of_consecutive_users() -> None:
    salons = salons_of(SimOptions(users=14, seed=3, salon_users=SALON))
    assert [(s.salon, s.users) for s in salons] == [(0, 6), (1, 6), (2, 2)]


def test_a_small_run_and_a_run_on_real_redis_or_real_time_are_one_salon() -> None:
    assert salons_of(SimOptions(users=SALON, salon_users=SALON)) == [SimOptions(users=SALON, salon_users=SALON)]
    for opts in (
        SimOptions(users=14, salon_users=SALON, redis_url="redis://127.0.0.1:6379/15"),
        SimOptions(users=14, salon_users=SALON, realtime=True),
        SimOptions(users=14, salon_users=SALON, system_url="http://127.0.0.1:8000"),
    ):
        assert salons_of(opts) == [opts]


async def test_the_first_salon_of_a_chain_is_the_small_run_of_its_users() -> None:
    alone = await simulate(SimOptions(users=SALON, seed=3))
    first = await simulate(SimOptions(users=SALON, seed=3, salon_users=SALON, salon=0))
    second = await simulate(SimOptions(users=SALON, seed=3, salon_users=SALON, salon=1))
    assert digest(first) == digest(alone)
    assert [u.phone for u in second.users] == [f"7915{i:07d}" for i in range(SALON, 2 * SALON)]
    # The chain's users take the personas in turn across the salons, as one salon's users would.
    assert [u.persona.name for u in second.users] == [list(PERSONAS)[i % len(PERSONAS)] for i in range(SALON, 12)]
    assert digest(second) != digest(first)


def test_one_seed_gives_one_transcript_in_one_process_or_in_two() -> None:
    opts = SimOptions(users=14, seed=3, salon_users=SALON)
    (alone,) = run_worlds(opts, trials=1, jobs=1)
    (side_by_side,) = run_worlds(opts, trials=1, jobs=2)
    assert digest(alone) == digest(side_by_side)
    assert [v.phone for v in alone.verdicts] == [f"7915{i:07d}" for i in range(14)]
    assert alone.stats["jobs_done"] == side_by_side.stats["jobs_done"] > 14
    world = alone.world
    assert (world.double_bookings, world.foreign_touched, world.turns_answered_twice, world.unanswered_users) == (
        0,
        0,
        0,
        0,
    )


def test_trials_of_a_chain_come_back_one_merged_result_per_trial() -> None:
    results = run_worlds(SimOptions(users=8, seed=3, salon_users=SALON), trials=2, jobs=2)
    assert len(results) == 2
    assert [[v.phone for v in r.verdicts] for r in results] == [[f"7915{i:07d}" for i in range(8)]] * 2
    assert digest(results[0]) != digest(results[1])  # another trial types and waits otherwise


def test_the_systems_stats_add_up_and_a_percentile_is_the_worst_salon_s() -> None:
    merged = merge_stats(
        [
            {
                "jobs_done": 3,
                "flush_lateness_ms": {"p50": 1, "p99": 7, "max": 9, "samples": 4},
                "open_batches": 0,
                "delivery_statuses": {"sent": 2},
                "batch_processors": [{"id": "a"}],
                "queue_length": None,
            },
            {
                "jobs_done": 5,
                "flush_lateness_ms": {"p50": 2, "p99": 4, "max": 12, "samples": 6},
                "open_batches": 1,
                "delivery_statuses": {"sent": 1, "read": 1},
                "batch_processors": [{"id": "b"}],
                "queue_length": 2,
            },
        ]
    )
    assert merged == {
        "jobs_done": 8,
        "flush_lateness_ms": {"p50": 2, "p99": 7, "max": 12, "samples": 10},
        "open_batches": 1,
        "delivery_statuses": {"sent": 3, "read": 1},
        "batch_processors": [{"id": "a"}, {"id": "b"}],
        "queue_length": 2,
    }


def test_simulate_runs_a_chain_in_processes_and_reports_every_user(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(simulate_command)
    args = ["--users", "14", "--seed", "7", "--salon-users", str(SALON), "--jobs", "2", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args, env={"REDIS_URL": None, "AIADMIN_SIM_REDIS_URL": None})
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["users"] == 14
    assert sum(p["users"] for p in summary["personas"].values()) == 14
    assert "as 3 worlds in 2 processes" in result.output
    assert result.exit_code == (1 if summary["failed"] else 0)
    lines = (tmp_path / "transcript.jsonl").read_bytes().splitlines()
    assert {orjson.loads(line)["phone"] for line in lines} == {f"7915{i:07d}" for i in range(14)}

"""`aiadmin bench sim`: the simulation's cost curve, one `aiadmin simulate` process per point."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from loadtests.bench._cli import app
from loadtests.bench._sim_curve import CURVE_USERS, LONG_USERS, SimCurveConfig, _growth


def test_the_curve_is_the_default_points_and_ten_thousand_only_when_asked(tmp_path: Path) -> None:
    assert SimCurveConfig.build(users=None, long=False, seed=3, log_dir=tmp_path).users == CURVE_USERS
    assert SimCurveConfig.build(users=None, long=True, seed=3, log_dir=tmp_path).users == (*CURVE_USERS, LONG_USERS)
    assert SimCurveConfig.build(users="250,100,250", long=False, seed=3, log_dir=tmp_path).users == (100, 250)


def test_flat_means_no_point_costs_much_more_per_user_than_a_smaller_one() -> None:
    assert _growth([40.0, 44.0, 30.0]) == 1.1  # 44 after 40; falling to 30 (salons side by side) is no growth
    assert _growth([20.0, 30.0, 25.0]) == 1.5
    assert _growth([40.0, 20.0]) == 0.5
    assert _growth([40.0]) is None


@pytest.mark.parametrize("users", ["a,b", "0", "100,200000", ","])
def test_bad_user_counts_are_refused_naming_the_option(users: str) -> None:
    result = CliRunner().invoke(app, ["sim", "--users", users])

    assert result.exit_code == 2
    assert "--users" in result.output


@pytest.mark.timeout(300)
def test_each_point_is_a_simulation_process_with_its_time_and_verdict(tmp_path: Path) -> None:
    out = tmp_path / "bench-sim.json"

    result = CliRunner().invoke(app, ["sim", "--users", "2,4", "--seed", "5", "--out", str(out)])

    assert result.exit_code == 0, result.output
    report = orjson.loads(out.read_bytes())
    assert [p["users"] for p in report["points"]] == [2, 4]
    for point in report["points"]:
        assert point["exit_code"] == 0 and point["failed"] == []
        assert point["wall_s"] >= point["sim_wall_s"] > 0  # the process also starts up
        assert point["cpu_s"] > 0 and len(point["transcript_sha256"]) == 64
        assert point["sim_per_user_ms"] == pytest.approx(1000 * point["sim_wall_s"] / point["users"], abs=0.01)
    assert report["per_user_spread"] >= 1 and report["cpu_per_user_spread"] >= 1
    assert report["per_user_growth"] == _growth([p["sim_per_user_ms"] for p in report["points"]])
    assert (tmp_path / "bench-logs" / "sim-4.log").exists()
    assert "per-user wall time" in result.output
    hyperfine = report["hyperfine"]  # an outside tool's time of the same command, beside ours
    if shutil.which("hyperfine"):
        assert hyperfine["users"] == 4 and hyperfine["runs"] == 2
        assert hyperfine["ratio_ours_to_hyperfine"] == pytest.approx(hyperfine["ours_s"] / hyperfine["median_s"], 0.01)
        assert "ratio ours/hyperfine" in result.output
    else:
        assert "not installed" in hyperfine["skipped"]

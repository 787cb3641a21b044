"""`aiadmin bench sim`: what a simulation costs as its users grow, on the embedded default (no servers).

Each point is a fresh `aiadmin simulate --users N --seed S` process, so that no point inherits another's warm
caches or heap. The wall time a user waits (the process, start-up included) is judged against the goals of 1,000
users under 30 s and 10,000 under 5 minutes; the simulation's own wall time per user (start-up excluded) must not
grow with the users: no point may cost more than `FLAT_SPREAD_MAX` times a smaller point (a run of more than one
salon's users runs its salons side by side, so its cost per user may fall; that is not growth). CPU time is printed
beside it: on a shared machine it shows the cost when the wall time also shows the neighbours.

Beside our own timing, `hyperfine` (a tool we did not write) times the same command for the point nearest 1,000
users in the same run, and the two are quoted as a ratio; skipped with a note when it is not installed (Debian
package `hyperfine`).
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from loadtests._processes import spawned

CURVE_USERS = (100, 250, 500, 1000, 2500)
LONG_USERS = 10_000  # only with --long: it takes minutes
# Wall time of the whole command, seconds (issue 16, point 6).
GOAL_WALL_S = {1000: 30.0, 10_000: 300.0}
# The most a point's simulation wall time per user may be of a smaller point's (flat: no growth with the users).
FLAT_SPREAD_MAX = 1.5
POINT_TIMEOUT_S = 3600.0
# A simulation reads this to run on a real Redis instead of fakeredis: the curve is of the embedded default.
SIM_REDIS_ENV = "AIADMIN_SIM_REDIS_URL"
TITLE = "aiadmin bench sim — one `aiadmin simulate` process per point, embedded default"
REFERENCE_WALL_S = {250: "19 s", 500: "48 s", 1000: "95-98 s"}  # the measurements before the work
HYPERFINE_USERS = 1000  # hyperfine times the curve's point nearest this
HYPERFINE_RUNS = 2


class SimCurveError(Exception):
    """A simulation process could not run or left no summary; the message shows its log's tail."""


@dataclass(frozen=True, slots=True)
class SimCurveConfig:
    """The points of the curve, fixed once from the command line."""

    users: tuple[int, ...]
    seed: int
    log_dir: Path
    timeout_s: float = POINT_TIMEOUT_S

    @classmethod
    def build(cls, *, users: str | None, long: bool, seed: int, log_dir: Path) -> SimCurveConfig:
        points = _parse_users(users) if users else CURVE_USERS
        if long and LONG_USERS not in points:
            points = (*points, LONG_USERS)
        return cls(users=tuple(sorted(set(points))), seed=seed, log_dir=log_dir)


def _parse_users(text: str) -> tuple[int, ...]:
    try:
        points = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--users: comma-separated whole numbers, not {text!r}") from None
    if not points or any(not 1 <= n <= 100_000 for n in points):
        raise ValueError("--users: each count from 1 to 100000")
    return points


def run_sim_curve(cfg: SimCurveConfig, console: Console) -> dict[str, Any]:
    """Every point in turn, smallest first; the figures, the goals and the problems found."""
    points = []
    with tempfile.TemporaryDirectory(prefix="aiadmin-bench-sim-") as work:
        for users in cfg.users:
            console.print(f"simulating {users} users…")
            point = run_point(users, seed=cfg.seed, out_dir=Path(work) / str(users), cfg=cfg)
            points.append(point)
            console.print(
                f"  {users} users: {point['wall_s']:.1f} s, {point['sim_per_user_ms']:.1f} ms per user, "
                f"CPU {point['cpu_s']:.1f} s"
            )
        hyperfine = run_hyperfine(points, seed=cfg.seed, out_dir=Path(work), cfg=cfg)
    problems = [f"{p['users']} users: {p['failed']}" for p in points if p["failed"]]
    return {
        "seed": cfg.seed,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg_1m": _load()},
        "points": points,
        "goals": {
            "wall_s": {str(users): bound for users, bound in GOAL_WALL_S.items()},
            "flat_spread_max": FLAT_SPREAD_MAX,
        },
        "per_user_growth": _growth([p["sim_per_user_ms"] for p in points]),
        "per_user_spread": _spread([p["sim_per_user_ms"] for p in points]),
        "cpu_per_user_spread": _spread([p["cpu_per_user_ms"] for p in points]),
        "hyperfine": hyperfine,
        "problems": problems,
    }


def _command(users: int, *, seed: int, out_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "system",
        "simulate",
        "--users",
        str(users),
        "--seed",
        str(seed),
        "--out",
        str(out_dir),
    ]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != SIM_REDIS_ENV}


def run_point(users: int, *, seed: int, out_dir: Path, cfg: SimCurveConfig) -> dict[str, Any]:
    """One `aiadmin simulate` process: its wall and CPU time and what its summary says."""
    command = _command(users, seed=seed, out_dir=out_dir)
    env = _env()
    cpu_before = _children_cpu_s()  # of reaped children: the simulation, once waited for
    started = time.perf_counter()
    with spawned(f"sim-{users}", command, env=env, log_dir=cfg.log_dir) as proc:
        try:
            exit_code = proc.popen.wait(cfg.timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise SimCurveError(
                f"{users} users: no result within {cfg.timeout_s:.0f} s (log: {proc.log_path})"
            ) from exc
    wall_s = time.perf_counter() - started
    cpu_s = _children_cpu_s() - cpu_before
    summary_path = out_dir / "summary.json"
    if not summary_path.exists():
        raise SimCurveError(f"{users} users: exit code {exit_code}, no summary:\n{proc.log_tail()}")
    summary = orjson.loads(summary_path.read_bytes())
    sim_wall_s = float(summary["wall_s"])
    return {
        "users": users,
        "wall_s": round(wall_s, 2),
        "sim_wall_s": sim_wall_s,
        "sim_per_user_ms": round(1000 * sim_wall_s / users, 2),
        "cpu_s": round(cpu_s, 2),
        "cpu_per_user_ms": round(1000 * cpu_s / users, 2),
        "turns": summary.get("turns"),
        "exit_code": exit_code,
        "failed": summary.get("failed") or ([] if exit_code == 0 else [f"exit code {exit_code}"]),
        "transcript_sha256": summary.get("transcript_sha256"),
    }


def run_hyperfine(points: list[dict[str, Any]], *, seed: int, out_dir: Path, cfg: SimCurveConfig) -> dict[str, Any]:
    """hyperfine's wall time of the point nearest HYPERFINE_USERS, beside ours (a ratio near 1 agrees)."""
    tool = shutil.which("hyperfine")
    if tool is None or not points:
        return {"skipped": "hyperfine is not installed (Debian package hyperfine)" if points else "no points"}
    point = min(points, key=lambda p: abs(p["users"] - HYPERFINE_USERS))
    export = out_dir / "hyperfine.json"
    command = shlex.join(_command(point["users"], seed=seed, out_dir=out_dir / "hyperfine"))
    hyperfine = [tool, "--runs", str(HYPERFINE_RUNS), "--style", "none", "--export-json", str(export), command]
    done = subprocess.run(hyperfine, env=_env(), capture_output=True, text=True, timeout=cfg.timeout_s, check=False)
    if done.returncode != 0 or not export.exists():
        return {"skipped": f"hyperfine exited {done.returncode}: {done.stderr.strip()[-500:]}"}
    result = orjson.loads(export.read_bytes())["results"][0]
    return {
        "users": point["users"],
        "runs": len(result["times"]),
        "median_s": round(result["median"], 2),
        "min_s": round(result["min"], 2),
        "max_s": round(result["max"], 2),
        "ours_s": point["wall_s"],
        "ratio_ours_to_hyperfine": round(point["wall_s"] / result["median"], 3),
    }


def render_sim_curve(console: Console, report: dict[str, Any], out: Path) -> None:
    """The curve beside the goals and the issue's figures before the work."""
    table = Table(title=TITLE)
    for column in ("users", "wall", "sim wall", "per user", "CPU", "CPU per user", "before", "goal", "met?"):
        table.add_column(column, justify="right")
    for p in report["points"]:
        bound = GOAL_WALL_S.get(p["users"])
        table.add_row(
            f"{p['users']:,}",
            f"{p['wall_s']:.1f} s",
            f"{p['sim_wall_s']:.1f} s",
            f"{p['sim_per_user_ms']:.1f} ms",
            f"{p['cpu_s']:.1f} s",
            f"{p['cpu_per_user_ms']:.1f} ms",
            REFERENCE_WALL_S.get(p["users"], "—"),
            "—" if bound is None else f"< {bound:.0f} s",
            "—" if bound is None else _met(p["wall_s"] < bound),
        )
    console.print(table)
    growth, spread, cpu_spread = report["per_user_growth"], report["per_user_spread"], report["cpu_per_user_spread"]
    if growth is not None:
        console.print(
            f"per-user wall time, most a point costs over a smaller point: {growth:.2f} "
            f"(flat: ≤ {FLAT_SPREAD_MAX}) {_met(growth <= FLAT_SPREAD_MAX)}; dearest over cheapest {spread:.2f}; "
            f"per-user CPU time, dearest over cheapest: {cpu_spread or 0:.2f}"
        )
    hyperfine = report["hyperfine"]
    if "skipped" in hyperfine:
        console.print(f"hyperfine: not measured ({hyperfine['skipped']})")
    else:
        console.print(
            f"hyperfine, {hyperfine['users']:,} users, {hyperfine['runs']} runs: median {hyperfine['median_s']:.1f} s "
            f"(min {hyperfine['min_s']:.1f}, max {hyperfine['max_s']:.1f}); ours {hyperfine['ours_s']:.1f} s, "
            f"ratio ours/hyperfine {hyperfine['ratio_ours_to_hyperfine']:.2f}"
        )
    console.print(f"load average (1 min) at the end: {report['machine']['load_avg_1m']}")
    if report["problems"]:
        console.print("[red]failed simulations:[/] " + "; ".join(report["problems"]))
    console.print(f"figures written to {out}")


def _growth(per_user: list[float]) -> float | None:
    """The most a point costs per user over a smaller point (the points in order of users); None with fewer than two."""
    if len(per_user) < 2 or min(per_user) <= 0:
        return None
    return round(max(later / per_user[i] for i in range(len(per_user)) for later in per_user[i + 1 :]), 3)


def _spread(per_user: list[float]) -> float | None:
    """The dearest point's cost per user over the cheapest's; None with fewer than two points."""
    if len(per_user) < 2 or min(per_user) <= 0:
        return None
    return round(max(per_user) / min(per_user), 3)


def _met(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None

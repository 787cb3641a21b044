"""A Redis URL never means "wipe this" unless the user says so (simulator.redis_target and every tool using it).

The guard's decisions run on fakeredis; the tools (simulate, the QA suite, the benchmarks, the load runner and
the tests' own fixtures) run against a redis-server of this module's own, whose database 13 holds a key another
program stored there.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
from redis import Redis as SyncRedis

from simulator.redis_server import RedisServer, free_port
from simulator.redis_target import (
    MARKER_KEY,
    TargetRefused,
    TargetUnreachable,
    check_target,
    claim,
    claim_sync,
    claim_url,
)

from .conftest import IN_CI, ClaimedDatabase, real_redis_or_skip, target_of_tests

ROOT = Path(__file__).resolve().parents[1]
FOREIGN_KEY = "other-program:session"
FOREIGN_VALUE = b"keep me"


# --- the URL: loopback and not database 0, unless forced ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/13",
        "redis://127.0.0.2:6379/13",
        "redis://localhost:6379/13",
        "redis://[::1]:6379/13",
        "unix:///tmp/redis.sock?db=13",
        "redis://:secret@127.0.0.1:6379/13",
    ],
)
def test_a_loopback_database_other_than_0_is_accepted(url: str) -> None:
    assert check_target(url, owner="the test", force=False).db == 13


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://127.0.0.1:6379/0", "refusing database 0"),
        ("redis://127.0.0.1:6379", "refusing database 0"),
        ("redis://cache.example:6379/13", "non-loopback host 'cache.example'"),
        ("redis://10.0.0.5:6379/13", "non-loopback host '10.0.0.5'"),
        ("rediss://redis.prod.internal/13", "non-loopback host 'redis.prod.internal'"),
    ],
)
def test_a_remote_host_or_database_0_is_refused_without_force(url: str, problem: str) -> None:
    with pytest.raises(TargetRefused, match=re.escape(problem)) as refused:
        check_target(url, owner="the test", force=False, force_option="--force")
    assert "--force" in str(refused.value)
    assert check_target(url, owner="the test", force=True).url == url


def test_a_refusal_never_shows_the_password() -> None:
    with pytest.raises(TargetRefused) as refused:
        check_target("redis://:s3cret@127.0.0.1:6379/0", owner="the test", force=False)
    assert "s3cret" not in str(refused.value)


# --- the marker key: a database holding keys no test tool wrote is refused, not flushed -----------------------


async def test_a_database_holding_keys_without_the_marker_is_refused_and_kept() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
    await redis.set(FOREIGN_KEY, FOREIGN_VALUE)
    t = check_target("redis://127.0.0.1:6379/13", owner="aiadmin simulate", force=False, flush_option="--flush")
    with pytest.raises(TargetRefused, match=r"holds 1 key.*pass --flush to flush it anyway"):
        await claim(redis, t, flush=False)
    assert await redis.get(FOREIGN_KEY) == FOREIGN_VALUE
    assert await redis.get(MARKER_KEY) is None


async def test_an_empty_database_is_claimed_and_marked_with_its_owner() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
    await claim(redis, check_target("redis://127.0.0.1/13", owner="aiadmin simulate", force=False), flush=False)
    assert await redis.get(MARKER_KEY) == b"aiadmin simulate"
    assert await redis.dbsize() == 1


async def test_a_marked_database_is_flushed_and_marked_again() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
    await redis.set(MARKER_KEY, "pytest features")
    await redis.set("aiadmin:stats", "left by the last run")
    await claim(redis, check_target("redis://127.0.0.1/13", owner="aiadmin bench ingest", force=False), flush=False)
    assert await redis.keys("*") == [MARKER_KEY.encode()]
    assert await redis.get(MARKER_KEY) == b"aiadmin bench ingest"


def test_an_explicit_flush_empties_a_database_someone_else_wrote() -> None:
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7,)))
    redis.set(FOREIGN_KEY, FOREIGN_VALUE)
    t = check_target("redis://127.0.0.1/13", owner="loadtests.run", force=False)
    with pytest.raises(TargetRefused):
        claim_sync(redis, t, flush=False)
    assert redis.get(FOREIGN_KEY) == FOREIGN_VALUE
    claim_sync(redis, t, flush=True)
    assert redis.get(FOREIGN_KEY) is None
    assert redis.get(MARKER_KEY) == b"loadtests.run"


def test_an_unreachable_server_is_a_retryable_error_not_a_refusal() -> None:
    port = free_port()  # nothing listens there once the socket is closed
    with pytest.raises(TargetUnreachable, match="aiadmin simulate"):
        claim_url(check_target(f"redis://127.0.0.1:{port}/13", owner="aiadmin simulate", force=False), flush=False)


# --- every tool, against a server of our own holding another program's key in db 13 ----------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own on a free port; its URL without a database."""
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("CI=true but there is no redis-server binary for the Redis-target tests")
        pytest.skip("no redis-server binary")
    server = RedisServer(binary, tmp_path, durable=False)
    server.start()
    try:
        yield server.base_url
    finally:
        server.close()


@pytest.fixture
def foreign_db(own_server: str) -> Iterator[str]:
    """Database 13 of our own server, holding a key another program stored; its URL."""
    url = f"{own_server}/13"
    client = SyncRedis.from_url(url)
    client.set(FOREIGN_KEY, FOREIGN_VALUE)
    yield url
    client.close()


def _db(url: str) -> dict[bytes, bytes | None]:
    """Every key of the database, with its value when it is a string."""
    client = SyncRedis.from_url(url)
    try:
        return {key: client.get(key) if client.type(key) == b"string" else None for key in client.keys("*")}
    finally:
        client.close()


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIADMIN_") and k != "REDIS_URL"}
    return base | extra


def _run(
    args: list[str], *, env: dict[str, str], cwd: Path = ROOT, timeout_s: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.mark.timeout(120)
def test_simulate_refuses_a_database_holding_another_programs_key(foreign_db: str, tmp_path: Path) -> None:
    sim = [sys.executable, "-m", "system", "simulate", "--users", "5", "--out", str(tmp_path / "sim")]
    refused = _run(sim, env=_env(AIADMIN_SIM_REDIS_URL=foreign_db))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "refusing to flush it" in refused.stderr and "--flush" in refused.stderr
    assert _db(foreign_db) == {FOREIGN_KEY.encode(): FOREIGN_VALUE}
    # REDIS_URL, the production variable, is no test target: the simulation runs on fakeredis.
    on_fakeredis = _run(sim, env=_env(REDIS_URL=foreign_db))
    assert on_fakeredis.returncode == 0, on_fakeredis.stderr[-2000:]
    assert _db(foreign_db) == {FOREIGN_KEY.encode(): FOREIGN_VALUE}


@pytest.mark.timeout(120)
def test_simulate_flushes_only_when_asked_and_marks_the_database(foreign_db: str, tmp_path: Path) -> None:
    sim = [sys.executable, "-m", "system", "simulate", "--users", "2", "--out", str(tmp_path / "sim")]
    done = _run([*sim, "--redis-url", foreign_db, "--flush"], env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    after = _db(foreign_db)
    assert FOREIGN_KEY.encode() not in after and after[MARKER_KEY.encode()] == b"aiadmin simulate"
    again = _run([*sim, "--redis-url", foreign_db], env=_env())  # its own data now: no --flush needed
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.timeout(60)
def test_simulate_refuses_database_0_without_force(own_server: str, tmp_path: Path) -> None:
    done = _run(
        [sys.executable, "-m", "system", "simulate", "--users", "1", "--redis-url", f"{own_server}/0"], env=_env()
    )
    assert done.returncode == 2 and "refusing database 0" in done.stderr and "--force" in done.stderr


# One scenario, by its name in the (Russian) feature file: «Три быстрых сообщения становятся одним ходом».
FEATURE = ["-m", "pytest", "features", "-q", "-p", "no:cacheprovider", "-k", "три_быстрых_сообщения"]


@pytest.mark.timeout(180)
def test_the_qa_suite_never_takes_redis_url_as_its_target(foreign_db: str) -> None:
    done = _run([sys.executable, *FEATURE], env=_env(REDIS_URL=foreign_db), timeout_s=150)
    assert done.returncode == 0, done.stdout[-3000:]
    assert _db(foreign_db) == {FOREIGN_KEY.encode(): FOREIGN_VALUE}


@pytest.mark.timeout(180)
def test_the_qa_suite_refuses_its_own_target_when_it_holds_another_programs_key(foreign_db: str) -> None:
    refused = _run([sys.executable, *FEATURE], env=_env(AIADMIN_FEATURES_REDIS_URL=foreign_db), timeout_s=150)
    assert refused.returncode != 0
    assert "refusing to flush it" in refused.stdout and "--redis-flush" in refused.stdout, refused.stdout[-3000:]
    assert _db(foreign_db) == {FOREIGN_KEY.encode(): FOREIGN_VALUE}


@pytest.mark.timeout(120)
def test_the_load_runner_and_the_benchmarks_refuse_a_foreign_database(foreign_db: str, tmp_path: Path) -> None:
    load = [sys.executable, "-m", "loadtests.run", "--out-dir", str(tmp_path / "load"), "--duration-scale", "0.01"]
    refused = _run(load, env=_env(AIADMIN_LOAD_REDIS_URL=foreign_db))
    assert refused.returncode == 2 and "refusing to flush it" in refused.stderr, refused.stderr[-2000:]
    for command in ("ingest", "worker", "stages"):
        bench = [sys.executable, "-m", "system", "bench", command, "--quick", "--out", str(tmp_path / "b.json")]
        refused = _run(bench, env=_env(AIADMIN_BENCH_REDIS_URL=foreign_db))
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert f"aiadmin bench {command}" in refused.stderr and "--flush" in refused.stderr
    assert _db(foreign_db) == {FOREIGN_KEY.encode(): FOREIGN_VALUE}


async def test_the_tests_fixtures_refuse_a_database_holding_another_programs_key(foreign_db: str) -> None:
    db = ClaimedDatabase(target_of_tests(foreign_db, force=False))
    with pytest.raises(pytest.fail.Exception, match="AIADMIN_TEST_REDIS_FLUSH=1"):
        await real_redis_or_skip(db)
    assert _db(foreign_db) == {FOREIGN_KEY.encode(): FOREIGN_VALUE}


def test_the_quick_start_pytest_uses_only_the_tests_database() -> None:
    """Without their own variables the load-run and benchmark tests use AIADMIN_TEST_REDIS_URL, nothing else."""
    code = (
        "from tests import conftest, test_bench, test_loadtests_runner\n"
        "print(conftest.REAL_REDIS_URL, test_bench.BENCH_REDIS_URL, test_loadtests_runner.LOAD_REDIS_URL)\n"
    )
    env = _env(AIADMIN_TEST_REDIS_URL="redis://127.0.0.1:6399/7")
    done = _run([sys.executable, "-c", code], env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["redis://127.0.0.1:6399/7"] * 3


def test_every_test_redis_variable_is_in_the_readme_table_and_passed_through_by_tox() -> None:
    sources = [*ROOT.glob("tests/*.py"), *ROOT.glob("features/*.py"), ROOT / "simulator/cli.py"]
    sources += [ROOT / "loadtests/bench/_cli.py", ROOT / "loadtests/run/__main__.py"]
    used = {m for path in sources for m in re.findall(r"AIADMIN_[A-Z]+_REDIS_[A-Z_]*[A-Z]", path.read_text())}
    assert {"AIADMIN_TEST_REDIS_URL", "AIADMIN_FEATURES_REDIS_URL", "AIADMIN_SIM_REDIS_URL"} <= used
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Test databases and ports", 1)[1].split("\n\n#", 1)[0]
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    passed = set(re.split(r"[,\s]+", tox["testenv"]["pass_env"].strip()))
    assert "REDIS_URL" not in passed  # the production variable stays out of the tests' environment
    for name in sorted(used):
        assert f"`{name}`" in table, f"{name} is not in the README's table"
        assert name in passed, f"tox does not pass {name} through"

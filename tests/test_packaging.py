"""The production install carries no simulator: `system/` never imports the simulator's language libraries or
fakeredis at module level (they are the `sim` extra), and the embedded default says so when they are missing.

Each check runs in a fresh interpreter: this test process has long imported all of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from system.errors import SettingsError
from system.runtime import connect_redis
from system.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
SIM_ONLY = ("pymorphy3", "dateparser", "rapidfuzz", "fakeredis")
PRODUCTION_MODULES = (
    "system.ingest.routes",
    "system.turn.worker",
    "system.ingest.batch_processor",
    "system.cli",
    "system.runtime",
    "system.http_server",
)


def _python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_production_modules_import_none_of_the_sim_extra() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {PRODUCTION_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SIM_ONLY!r}))\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_the_production_commands_start_without_the_sim_extra() -> None:
    # A finder that refuses the sim extra's packages: the interpreter behaves as a `pip install .` without extras.
    code = (
        "import sys\n"
        f"for name in {SIM_ONLY!r}:\n"
        "    sys.modules[name] = None\n"
        "from system.cli import main\n"
        "for command in ('api', 'batcher', 'worker'):\n"
        "    sys.argv = ['aiadmin', command, '--help']\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (command, exc.code)\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Usage: aiadmin worker" in done.stdout


def test_embedded_redis_without_the_sim_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fakeredis", None)  # `import fakeredis` now raises ImportError
    with pytest.raises(SettingsError, match=r"ai-admin\[sim\]"):
        connect_redis(load_settings({}))


def test_aiadmin_run_without_the_sim_extra_exits_2_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    code = (
        "import sys\n"
        "sys.modules['fakeredis'] = None\n"
        "from system.cli import main\n"
        "sys.argv = ['aiadmin', 'run', '--port', '1']\n"
        "main()\n"
    )
    done = _python(code, env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "configuration error: REDIS_URL is unset and the embedded Redis needs the `sim` extra" in done.stderr
    assert "Traceback" not in done.stderr


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_the_dev_lock_pins_every_declared_dependency() -> None:
    """requirements/dev.txt is regenerated when pyproject.toml gains a dependency (tox and CI install from it)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        declared |= {_name(r) for r in requirements if _name(r) != project["name"]}
        assert extra in {"dev", "sim", "load", "report"}, f"a new extra {extra!r}: is it in the dev set?"
    lock = (ROOT / "requirements" / "dev.txt").read_text(encoding="utf-8")
    pinned = {_name(line) for line in lock.splitlines() if "==" in line and not line.startswith((" ", "#"))}
    assert declared - pinned == set(), "regenerate requirements/dev.txt (see the README's quick start)"

"""Where performance work and the report live: `loadtests/` (load profiles, benchmarks, the process sampler) imports
only `system/` and `simulator/`; `reports/` holds the report generator and the monthly reports, nothing else.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import tomllib
from datetime import date
from pathlib import Path

from reports.generator.cli import report
from reports.generator.model import find_previous

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"system", "simulator", "loadtests", "reports", "features", "tests"}


def first_party_imports(folder: str) -> dict[str, set[str]]:
    """Each first-party (or undeclared) package a folder's modules import, with the modules that do."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.partition(".")[0]
                if top in FIRST_PARTY or top == "psutil":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_loadtests_import_only_system_and_simulator() -> None:
    """`loadtests/_load.py` imported `reports.loadgen` for its phones and `run/_stack.py` `reports.procs` (issue 13)."""
    imported = first_party_imports("loadtests")
    assert set(imported) <= {"loadtests", "system", "simulator"}, imported


def test_one_process_sampler_and_no_undeclared_psutil() -> None:
    """`reports/procs.py` and `loadtests/run/_stack.py` each spawned, stopped and sampled processes; one with psutil."""
    assert "psutil" not in first_party_imports("loadtests")
    samplers = [p for p in (ROOT / "loadtests").rglob("*.py") if "def rss_mb" in p.read_text(encoding="utf-8")]
    assert [p.relative_to(ROOT).as_posix() for p in samplers] == ["loadtests/_processes.py"]
    spawners = [p for p in (ROOT / "loadtests").rglob("*.py") if "subprocess.Popen(" in p.read_text(encoding="utf-8")]
    # The runner starts Locust itself, to tee its output; every other process starts in the one module.
    assert sorted(p.relative_to(ROOT).as_posix() for p in spawners) == [
        "loadtests/_processes.py",
        "loadtests/run/__main__.py",
    ]


def test_reports_holds_only_the_generator_and_the_monthly_reports() -> None:
    """29 flat files, 12 of them benchmarks, lived in `reports/` (issue 13)."""
    entries = {p.name for p in (ROOT / "reports").iterdir() if p.name != "__pycache__"}
    assert entries == {"__init__.py", "__main__.py", "generator", "monthly"}
    assert not [p.name for p in (ROOT / "reports" / "generator").glob("report_*.py")]
    assert set(first_party_imports("reports")) == {"reports"}


def test_the_monthly_reports_images_resolve_beside_them() -> None:
    markdowns = sorted((ROOT / "reports" / "monthly").glob("*.md"))
    assert markdowns
    for markdown in markdowns:
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown.read_text(encoding="utf-8"))
        assert links and all((markdown.parent / link).is_file() for link in links), (markdown.name, links)


def test_the_bench_and_report_commands_point_at_their_new_homes() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    commands = pyproject["project"]["entry-points"]["aiadmin.commands"]
    assert commands["bench"].startswith("loadtests.bench.") and commands["report"].startswith("reports.generator.")
    for name in ("bench", "report"):
        module, _, attr = commands[name].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name
    tox = (ROOT / "tox.ini").read_text(encoding="utf-8")
    assert "--out-dir reports/monthly" in tox
    workflow = (ROOT / ".github" / "workflows" / "monthly-report.yml").read_text(encoding="utf-8")
    assert "git add reports/monthly/" in workflow


def test_the_report_reads_the_previous_reports_from_their_new_folder() -> None:
    """The generator's default `--out-dir` was `reports`; the reports moved to `reports/monthly/` (issue 13)."""
    out_dir = inspect.signature(report).parameters["out_dir"].default
    assert out_dir == Path("reports/monthly")
    previous, skipped = find_previous(ROOT / out_dir, date(2026, 12, 1))
    assert skipped == [] and previous is not None and previous.date == "2026-11-25"

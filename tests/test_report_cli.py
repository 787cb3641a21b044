"""`aiadmin report` and `python -m reports` as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from datetime import date
from importlib.metadata import EntryPoint
from pathlib import Path

import typer
from typer.testing import CliRunner

from reports.report import app

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "report"


def options(out_dir: Path, *extra: str, cucumber: Path = DATA / "cucumber.json") -> list[str]:
    return [
        "--cucumber",
        str(cucumber),
        "--stages",
        str(DATA / "bench-stages.json"),
        "--load-dir",
        str(DATA / "load"),
        "--out-dir",
        str(out_dir),
        "--features-root",
        str(DATA),
        *extra,
    ]


def test_the_typer_app_writes_the_report_its_figures_and_images(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, options(tmp_path, "--date", "2026-11-25"))

    assert result.exit_code == 0, result.output
    assert f"report written: {tmp_path / '2026-11-25.md'}" in result.stdout
    assert "3 images" in result.stdout
    assert (tmp_path / "2026-11-25.json").exists()
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [
        "2026-11-25-e2e.png",
        "2026-11-25-lateness.png",
        "2026-11-25-stages.png",
    ]


def test_the_date_defaults_to_today(tmp_path: Path) -> None:
    before = date.today()
    result = CliRunner().invoke(app, options(tmp_path))
    after = date.today()

    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.glob("*.md")} <= {f"{before}.md", f"{after}.md"}
    assert len(list(tmp_path.glob("*.md"))) == 1


def test_a_missing_input_is_reported_and_not_fatal(tmp_path: Path) -> None:
    absent = tmp_path / "absent.json"

    result = CliRunner().invoke(app, options(tmp_path / "out", "--date", "2026-11-25", cucumber=absent))

    assert result.exit_code == 0, result.output
    assert f"missing input, marked «нет данных»: {absent}: файл не найден" in result.stderr
    assert "нет данных — результаты сценариев" in (tmp_path / "out" / "2026-11-25.md").read_text(encoding="utf-8")


def test_strict_makes_a_missing_input_exit_2(tmp_path: Path) -> None:
    absent = tmp_path / "absent.json"

    result = CliRunner().invoke(app, options(tmp_path / "out", "--strict", cucumber=absent))

    assert result.exit_code == 2
    assert f"cucumber: {absent}: файл не найден" in result.stderr
    assert "--strict: no report written" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_malformed_date_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, options(tmp_path, "--date", "25.11.2026"))

    assert result.exit_code == 2
    assert not list(tmp_path.glob("*.md"))


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "reports", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_python_m_reports_runs_the_same_command(tmp_path: Path) -> None:
    done = run_module(*options(tmp_path, "--date", "2026-11-25"))

    assert done.returncode == 0, done.stderr
    assert "report written" in done.stdout
    markdown = (tmp_path / "2026-11-25.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Отчет о комплексном тестировании системы AI Admin")
    assert "![Задержка ответа клиенту (e2e) по профилям нагрузки](img/2026-11-25-e2e.png)" in markdown


def test_python_m_reports_strict_exits_2(tmp_path: Path) -> None:
    done = run_module(*options(tmp_path, "--strict", "--date", "2026-11-25", cucumber=tmp_path / "absent.json"))

    assert done.returncode == 2
    assert "no report written" in done.stderr


def test_aiadmin_report_is_the_declared_plugin(tmp_path: Path) -> None:
    """Registered the way `system.cli` loads `aiadmin.commands` entry points (read from pyproject.toml)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    value = pyproject["project"]["entry-points"]["aiadmin.commands"]["report"]
    command = EntryPoint(name="report", value=value, group="aiadmin.commands").load()
    aiadmin = typer.Typer()

    @aiadmin.callback()
    def root() -> None:
        """Stands in for the `aiadmin` group."""

    if isinstance(command, typer.Typer):
        aiadmin.add_typer(command, name="report")
    else:
        aiadmin.command("report")(command)

    result = CliRunner().invoke(aiadmin, ["report", *options(tmp_path, "--date", "2026-11-25")])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "2026-11-25.md").exists()

"""The features run: pytest-bdd's cucumber JSON parsed into scenarios, and the components their tags prove."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gherkin.errors import ParserError
from gherkin.parser import Parser
from pydantic import BaseModel, ConfigDict, TypeAdapter

Status = Literal["passed", "failed", "skipped"]

# Cucumber's step results that mean the scenario did not do what it says (strict mode).
FAILING = frozenset({"failed", "undefined", "pending", "ambiguous"})

# Component of the summary table <- the tags that test it, the first tag with scenarios wins.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Redis батчинг", ("batching",)),
    ("Контекст диалога", ("context",)),
    ("API Webhook", ("api",)),
    ("Batch Processor", ("batcher", "batching")),
    ("Очередь сообщений", ("queue",)),
    ("Worker", ("worker",)),
    ("WhatsApp клиент", ("whatsapp",)),
    ("Запись в YClients", ("booking",)),
    ("Надёжность", ("reliability",)),
    ("Безопасность", ("security",)),
)


class _Raw(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class _Tag(_Raw):
    name: str


class _Result(_Raw):
    status: str
    duration: int | float = 0  # nanoseconds
    error_message: str | None = None


class _Step(_Raw):
    keyword: str = ""
    name: str = ""
    result: _Result


class _Element(_Raw):
    id: str = ""
    name: str
    line: int | None = None
    type: str = "scenario"
    tags: tuple[_Tag, ...] = ()
    steps: tuple[_Step, ...] = ()


class _Feature(_Raw):
    uri: str = ""
    name: str
    tags: tuple[_Tag, ...] = ()
    elements: tuple[_Element, ...] = ()


CUCUMBER = TypeAdapter(tuple[_Feature, ...])


@dataclass(frozen=True, slots=True)
class Scenario:
    """One executed scenario (an outline's example is a scenario of its own)."""

    feature: str
    uri: str
    id: str
    name: str
    example: str | None
    tags: frozenset[str]
    status: Status
    duration_s: float
    error: str | None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.example}]" if self.example else self.name


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    uri: str
    tags: tuple[str, ...]
    scenarios: tuple[Scenario, ...]


@dataclass(frozen=True, slots=True)
class Component:
    """A row of the summary table: what the scenarios of its tag say about one component."""

    name: str
    tags: tuple[str, ...]  # the tags that may test it, in order of preference
    tag: str | None  # the one whose scenarios were counted
    passed: int
    failed: int
    skipped: int
    failed_names: tuple[str, ...]

    @property
    def status(self) -> Literal["passed", "failed", "untested"]:
        if self.failed:
            return "failed"
        return "passed" if self.passed else "untested"


def parse_cucumber(data: bytes, *, features_root: Path | None) -> tuple[Feature, ...]:
    """Features and scenarios of a cucumber JSON; `features_root` resolves each feature's `uri`.

    pytest-bdd records a scenario skipped in one of its steps as passed, listing only the steps that ran;
    when the feature file is at hand, a scenario with fewer steps than the file has is counted as skipped.
    """
    features = []
    for raw in CUCUMBER.validate_json(data):
        source = _feature_text(features_root, raw.uri)
        feature_tags = tuple(_tag(t.name) for t in raw.tags)
        scenarios = tuple(
            _scenario(raw, element, feature_tags, source) for element in raw.elements if element.type == "scenario"
        )
        features.append(Feature(name=raw.name, uri=raw.uri, tags=feature_tags, scenarios=scenarios))
    return tuple(features)


def components(features: Sequence[Feature]) -> tuple[Component, ...]:
    scenarios = [s for f in features for s in f.scenarios]
    rows = []
    for name, tags in COMPONENTS:
        tag = next((t for t in tags if any(t in s.tags for s in scenarios)), None)
        tagged = [s for s in scenarios if tag in s.tags] if tag else []
        rows.append(
            Component(
                name=name,
                tags=tags,
                tag=tag,
                passed=sum(s.status == "passed" for s in tagged),
                failed=sum(s.status == "failed" for s in tagged),
                skipped=sum(s.status == "skipped" for s in tagged),
                failed_names=tuple(s.title for s in tagged if s.status == "failed"),
            )
        )
    return tuple(rows)


def _scenario(raw: _Feature, element: _Element, feature_tags: tuple[str, ...], source: str | None) -> Scenario:
    statuses = [step.result.status.lower() for step in element.steps]
    written = written_steps(source, element.line) if source is not None and element.line else None
    status: Status
    if any(s in FAILING for s in statuses):
        status = "failed"
    elif not statuses or "skipped" in statuses or (written is not None and len(statuses) < written):
        status = "skipped"
    else:
        status = "passed"
    errors = [step.result.error_message for step in element.steps if step.result.error_message]
    example = re.search(r"\[(.*)\]$", element.id)
    return Scenario(
        feature=raw.name,
        uri=raw.uri,
        id=element.id or element.name,
        name=element.name,
        example=unescape_id(example.group(1)) if example else None,
        tags=frozenset((*feature_tags, *(_tag(t.name) for t in element.tags))),
        status=status,
        duration_s=sum(step.result.duration for step in element.steps) / 1e9,
        error=error_summary(errors[0]) if errors else None,
    )


def unescape_id(text: str) -> str:
    """pytest writes non-ASCII parameters of a test id as `\\u0417...`; the report shows them as written."""
    return ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2) or m.group(3), 16)), text)


def error_summary(message: str, *, limit: int = 200) -> str:
    """The assertion of a pytest traceback (its `E   ` lines), else its last line, shortened."""
    lines = [line for line in message.splitlines() if line.strip()]
    raised = [line[1:].strip() for line in lines if line.startswith("E ")]
    text = " ".join(raised[:2]) if raised else (lines[-1].strip() if lines else "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})")


def written_steps(source: str, line: int) -> int | None:
    """Steps of the scenario starting at `line` (1-based), with its backgrounds; None if not found.

    Read by the official Gherkin parser (the one pytest-bdd runs), so a feature file in any of Gherkin's
    languages counts alike: `# language: ru` with Предыстория, Сценарий, Дано, Когда, Тогда.
    """
    try:
        document = Parser().parse(source)
    except ParserError:  # not Gherkin, or a language Gherkin does not know
        return None
    feature = document.get("feature")
    return _steps_at(feature["children"], line) if feature else None


def _steps_at(children: Sequence[Mapping[str, Any]], line: int, *, background: int = 0) -> int | None:
    """Steps of the scenario at `line` among a feature's or a rule's children, the backgrounds above it included."""
    for child in children:
        if "background" in child:
            background += len(child["background"]["steps"])
        elif "scenario" in child and child["scenario"]["location"]["line"] == line:
            return background + len(child["scenario"]["steps"])
        elif "rule" in child:
            found = _steps_at(child["rule"]["children"], line, background=background)
            if found is not None:
                return found
    return None


def _feature_text(root: Path | None, uri: str) -> str | None:
    if root is None or not uri:
        return None
    try:
        return (root / uri).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _tag(name: str) -> str:
    return name.removeprefix("@").lower()

"""The AI Admin metric names a Grafana dashboard or a Prometheus rules file queries, and those no role exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics_core import Metric

METRIC = re.compile(r"\baiadmin_[a-z0-9_]+\b")
# The series names a family of each type is queried by (a labelled family has no sample before its first use).
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def exposed_names(families: Iterable[Metric]) -> set[str]:
    """Every series name the families expose or will expose: from a registry's collect() or a parsed /metrics."""
    names: set[str] = set()
    for family in families:
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
    return names


def queried_metrics(path: Path) -> set[str]:
    """Every `aiadmin_*` name in the PromQL of a dashboard (`.json`, its targets' `expr`) or a rules file (`.yaml`)."""
    text = path.read_text()
    doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return {name for expr in _exprs(doc) for name in METRIC.findall(expr)}


def missing_metrics(path: Path, exported: set[str]) -> list[str]:
    """The names `path` queries that are not in `exported`, sorted."""
    return sorted(queried_metrics(path) - exported)


def _exprs(node: Any) -> Iterator[str]:
    """The values of every `expr` key, at any depth (dashboard targets, rule groups)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)
